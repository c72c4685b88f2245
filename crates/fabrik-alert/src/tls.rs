//! The TLS client settings of the notifiers (rustls with ring): the CAs an e-mail or webhook
//! notifier trusts, read from its `ca` file or the system's bundle.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, pem::PemObject};

/// Where the Debian/Ubuntu/Alpine family keeps the system's trusted CAs.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A client configuration trusting the CAs of the PEM file `ca`, or of the system bundle
/// when `None`.
pub(crate) fn client_config(ca: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let path = ca.map_or_else(|| PathBuf::from(SYSTEM_CA_BUNDLE), Path::to_path_buf);
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(&path).map_err(|e| {
        let hint = if ca.is_none() {
            " (the system's CA bundle; set the notifier's `ca` to a PEM file of the CAs to trust)"
        } else {
            ""
        };
        format!("cannot read CA file {}: {e}{hint}", path.display())
    })?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("CA file {}: {e}", path.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("CA file {}: {e}", path.display()))?;
    }
    trusting(roots)
}

/// A client configuration that trusts no CA: for an HTTP client that talks plain `http://`
/// only, which reqwest still builds TLS settings for.
pub(crate) fn trust_nothing() -> Result<rustls::ClientConfig, String> {
    trusting(rustls::RootCertStore::empty())
}

fn trusting(roots: rustls::RootCertStore) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
