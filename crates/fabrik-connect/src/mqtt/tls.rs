//! Server TLS (rustls with the `ring` provider) for the MQTT endpoint and the HTTP API: a
//! server certificate from PEM files or, when none is configured, a self-signed one generated
//! on first start and kept in the data directory; for MQTT, optional client certificates
//! verified against a CA (mTLS), whose subject common name becomes the device identity.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::ConnectError;

/// How the TLS listener is set up.
#[derive(Debug, Clone, Default)]
pub struct TlsSettings {
    /// Server certificate chain (PEM). Empty: self-signed, generated in `generated_dir`.
    pub cert: Option<PathBuf>,
    /// Server private key (PEM).
    pub key: Option<PathBuf>,
    /// CA certificates (PEM) that client certificates must chain to; enables mTLS.
    pub client_ca: Option<PathBuf>,
    /// Refuse clients without a certificate (otherwise a certificate is optional and user
    /// name/password remain possible).
    pub require_client_cert: bool,
    /// Where a generated self-signed certificate is kept.
    pub generated_dir: PathBuf,
    /// Host names the generated certificate is valid for.
    pub generated_names: Vec<String>,
    /// The configuration section the files are set in (`mqtt` when empty, or `http`): it
    /// names the generated files (`<section>-cert.pem`) and the settings in messages.
    pub section: &'static str,
}

impl TlsSettings {
    fn section(&self) -> &'static str {
        if self.section.is_empty() {
            "mqtt"
        } else {
            self.section
        }
    }
}

/// Accepts TLS connections and reports the client certificate's identity.
#[derive(Clone)]
pub struct TlsAcceptor {
    inner: tokio_rustls::TlsAcceptor,
}

impl std::fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsAcceptor")
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ConnectError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| ConnectError::Tls(format!("{}: {e}", path.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| ConnectError::Tls(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(ConnectError::Tls(format!(
            "{}: no certificate in the file",
            path.display()
        )));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, ConnectError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| ConnectError::Tls(format!("{}: no usable private key: {e}", path.display())))
}

/// Writes a file readable only by the owner.
fn write_private(path: &Path, contents: &str) -> Result<(), ConnectError> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options
        .open(path)
        .map_err(|e| ConnectError::Tls(format!("{}: {e}", path.display())))?;
    file.write_all(contents.as_bytes())
        .map_err(|e| ConnectError::Tls(format!("{}: {e}", path.display())))
}

/// Where the self-signed certificate of configuration section `section` (`mqtt`, `http`) is
/// generated in the data directory's `tls` folder `dir`.
pub fn generated_cert_path(dir: &Path, section: &str) -> PathBuf {
    dir.join(format!("{section}-cert.pem"))
}

/// The self-signed certificate in `dir`, generated on first use.
fn self_signed(
    dir: &Path,
    names: &[String],
    section: &str,
) -> Result<(PathBuf, PathBuf), ConnectError> {
    let cert_path = generated_cert_path(dir, section);
    let key_path = dir.join(format!("{section}-key.pem"));
    if cert_path.exists() && key_path.exists() {
        // A certificate generated for other names (the listen address changed) is made
        // afresh: clients that check the host name would refuse it.
        if covers(&cert_path, names) {
            return Ok((cert_path, key_path));
        }
        tracing::warn!(cert = %cert_path.display(), ?names, "The generated certificate does not name this address; generating a new one (clients must trust the new file).");
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| ConnectError::Tls(format!("{}: {e}", dir.display())))?;
    let mut names = names.to_vec();
    if names.is_empty() {
        names = vec!["localhost".into(), "127.0.0.1".into()];
    }
    let generated = rcgen::generate_simple_self_signed(names)
        .map_err(|e| ConnectError::Tls(format!("generating a self-signed certificate: {e}")))?;
    write_private(&key_path, &generated.signing_key.serialize_pem())?;
    std::fs::write(&cert_path, generated.cert.pem())
        .map_err(|e| ConnectError::Tls(format!("{}: {e}", cert_path.display())))?;
    let label = section.to_uppercase();
    tracing::warn!(cert = %cert_path.display(), "{label} TLS uses a generated self-signed certificate; configure {section}.tls_cert and {section}.tls_key for production.");
    Ok((cert_path, key_path))
}

/// Checks the files `settings` names, as [`TlsAcceptor::new`] would read them, without
/// generating anything: a configured certificate with its key (that they load and belong
/// together) and a client CA. A certificate to be generated is not checked.
pub fn check_files(settings: &TlsSettings) -> Result<(), ConnectError> {
    if settings.cert.is_some() || settings.key.is_some() {
        return TlsAcceptor::new(settings).map(|_| ());
    }
    if let Some(ca) = &settings.client_ca {
        let mut roots = rustls::RootCertStore::empty();
        for cert in read_certs(ca)? {
            roots
                .add(cert)
                .map_err(|e| ConnectError::Tls(format!("{}: {e}", ca.display())))?;
        }
    }
    Ok(())
}

impl TlsAcceptor {
    /// Builds the acceptor; every problem with the files is reported with their path.
    pub fn new(settings: &TlsSettings) -> Result<Self, ConnectError> {
        let section = settings.section();
        let (cert_path, key_path) = match (&settings.cert, &settings.key) {
            (Some(c), Some(k)) => (c.clone(), k.clone()),
            (None, None) => {
                self_signed(&settings.generated_dir, &settings.generated_names, section)?
            }
            _ => {
                return Err(ConnectError::Tls(format!(
                    "{section}.tls_cert and {section}.tls_key must be given together"
                )));
            }
        };
        let certs = read_certs(&cert_path)?;
        let key = read_key(&key_path)?;
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| ConnectError::Tls(e.to_string()))?;
        let builder = match &settings.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in read_certs(ca)? {
                    roots
                        .add(cert)
                        .map_err(|e| ConnectError::Tls(format!("{}: {e}", ca.display())))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
                let verifier = if settings.require_client_cert {
                    verifier.build()
                } else {
                    verifier.allow_unauthenticated().build()
                }
                .map_err(|e| ConnectError::Tls(format!("client CA {}: {e}", ca.display())))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder.with_single_cert(certs, key).map_err(|e| {
            ConnectError::Tls(format!(
                "{} / {}: {e}",
                cert_path.display(),
                key_path.display()
            ))
        })?;
        Ok(Self {
            inner: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// The rustls acceptor itself, for a server that runs its own handshakes (the HTTP API).
    pub fn rustls(&self) -> tokio_rustls::TlsAcceptor {
        self.inner.clone()
    }

    /// Completes the TLS handshake; returns the stream and the common name of a verified
    /// client certificate, if one was presented.
    pub async fn accept(
        &self,
        stream: TcpStream,
    ) -> std::io::Result<(TlsStream<TcpStream>, Option<String>)> {
        let stream = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            self.inner.accept(stream),
        )
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
        })??;
        let identity = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| common_name(leaf.as_ref()));
        Ok((stream, identity))
    }
}

/// Whether the PEM certificate at `path` names every one of `names` (DNS names and IP
/// addresses among its subject alternative names).
fn covers(path: &Path, names: &[String]) -> bool {
    use x509_parser::extensions::GeneralName;
    let Ok(certs) = read_certs(path) else {
        return false;
    };
    let Some(leaf) = certs.first() else {
        return false;
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf.as_ref()) else {
        return false;
    };
    let Ok(Some(alternatives)) = cert.subject_alternative_name() else {
        return names.is_empty();
    };
    let named: Vec<String> = alternatives
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some((*dns).to_owned()),
            GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => <[u8; 4]>::try_from(*bytes)
                    .ok()
                    .map(|b| std::net::IpAddr::from(b).to_string()),
                16 => <[u8; 16]>::try_from(*bytes)
                    .ok()
                    .map(|b| std::net::IpAddr::from(b).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect();
    names.iter().all(|n| named.contains(n))
}

/// The subject common name of a DER certificate.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}
