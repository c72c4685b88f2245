//! Everything needed before a session runs: the `async-opcua` client (own key pair in the PKI
//! directory, trust mode, retry policy), the trust list, endpoint selection (GetEndpoints, then
//! the configured URL path, policy and mode), and the one-shot [`browse`] helper for a CLI.
//!
//! Trust: with [`TrustMode::TrustList`] only certificates in `pki_dir/trusted/` are accepted.
//! `async-opcua` looks them up under a canonical file name (`<CN> [<thumbprint>].der`), so
//! [`sync_trust_dir`] first copies every other DER or PEM file found there under that name;
//! operators may simply drop a server certificate into `trusted/` (or move it from
//! `rejected/`, where refused certificates land). The server certificate must also name the
//! endpoint host (SAN) and be within its validity period.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opcua::client::transport::TcpConnector;
use opcua::client::{Client, ClientBuilder, IdentityToken, Session, SessionEventLoop};
use opcua::crypto::{CertificateStore, SecurityPolicy, X509};
use opcua::types::{
    BrowseDescription, BrowseDirection, BrowseResultMask, MessageSecurityMode, NodeClass, NodeId,
    ReferenceTypeId,
};

use super::OpcUaError;
use super::config::{SecurityMode, SecurityPolicyName, TrustMode};
use super::plan::ServerPlan;

/// Application URI of the Fabrik client (also written into its generated certificate).
pub const APPLICATION_URI: &str = "urn:fabrik:opcua:client";

/// One reference found by [`browse`].
#[derive(Debug, Clone, PartialEq)]
pub struct BrowsedNode {
    /// Target node id in text form (`ns=2;s=Pump1.Pressure`).
    pub node_id: String,
    /// Browse name, `ns:name` when the namespace is not 0.
    pub browse_name: String,
    /// Node class (`Object`, `Variable`, `Method`, …).
    pub node_class: String,
    /// For a variable: its type, and the range and unit it declares (decision 0094), as far
    /// as the server answered; `None` for other classes or when the lookup failed.
    pub declared: Option<super::declared::Declared>,
}

/// How [`browse`] connects: the endpoint's security, whom to trust, and a user. The default is
/// the server's `None` endpoint, anonymous, trusting only `pki_dir/trusted/` (which `None`
/// does not consult).
#[derive(Debug, Clone, Default)]
pub struct BrowseSecurity {
    /// The endpoint's security policy.
    pub policy: SecurityPolicyName,
    /// The endpoint's security mode.
    pub mode: SecurityMode,
    /// How the server's certificate is trusted.
    pub trust: TrustMode,
    /// User name and password; anonymous without.
    pub user: Option<(String, String)>,
}

/// Connection settings shared by the runtime and [`browse`].
#[derive(Debug, Clone)]
pub(crate) struct ConnectSettings {
    pub(crate) label: Arc<str>,
    pub(crate) endpoint: String,
    pub(crate) policy: SecurityPolicyName,
    pub(crate) mode: SecurityMode,
    pub(crate) pki_dir: PathBuf,
    pub(crate) trust: TrustMode,
    pub(crate) user: Option<(String, String)>,
    pub(crate) reconnect_min: Duration,
    pub(crate) reconnect_max: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) keep_alive: Duration,
}

impl ConnectSettings {
    pub(crate) fn from_plan(plan: &ServerPlan) -> Self {
        Self {
            label: Arc::clone(&plan.id),
            endpoint: plan.endpoint.clone(),
            policy: plan.security_policy,
            mode: plan.security_mode,
            pki_dir: plan.pki_dir.clone(),
            trust: plan.trust,
            user: plan.user.clone(),
            reconnect_min: plan.reconnect_min,
            reconnect_max: plan.reconnect_max,
            request_timeout: plan.request_timeout,
            keep_alive: plan.keep_alive,
        }
    }

    fn pki_error(&self, reason: impl Into<String>) -> OpcUaError {
        OpcUaError::Pki {
            server: Arc::clone(&self.label),
            dir: self.pki_dir.display().to_string(),
            reason: reason.into(),
        }
    }

    fn connect_error(&self, reason: impl Into<String>) -> OpcUaError {
        OpcUaError::Connect {
            server: Arc::clone(&self.label),
            endpoint: self.endpoint.clone(),
            reason: reason.into(),
        }
    }
}

/// Builds the client: PKI directory, own key pair (created on first use), trust list.
/// Blocking (RSA key generation, file I/O): call it from `spawn_blocking`.
pub(crate) fn build_client(settings: &ConnectSettings) -> Result<Client, OpcUaError> {
    // Servers may share a PKI directory: two tasks creating the key pair at once could leave
    // one's certificate next to the other's key. Setup is rare and quick, so serialize it.
    static SETUP: Mutex<()> = Mutex::new(());
    let _guard = SETUP
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    std::fs::create_dir_all(settings.pki_dir.join("trusted"))
        .map_err(|e| settings.pki_error(format!("cannot create: {e}")))?;
    std::fs::create_dir_all(settings.pki_dir.join("rejected"))
        .map_err(|e| settings.pki_error(format!("cannot create: {e}")))?;
    sync_trust_dir(&settings.pki_dir).map_err(|reason| settings.pki_error(reason))?;

    let client = ClientBuilder::new()
        .application_name("Fabrik")
        .application_uri(APPLICATION_URI)
        .product_uri("urn:fabrik")
        .create_sample_keypair(true)
        .pki_dir(&settings.pki_dir)
        .trust_server_certs(settings.trust == TrustMode::TrustOnFirstUse)
        .verify_server_certs(true)
        .session_name(format!("fabrik-{}", settings.label))
        // -1: the library reconnects forever, with its own capped exponential backoff.
        .session_retry_limit(-1)
        .session_retry_initial(settings.reconnect_min)
        .session_retry_max(settings.reconnect_max)
        .request_timeout(settings.request_timeout)
        .keep_alive_interval(settings.keep_alive)
        .max_failed_keep_alive_count(3)
        .recreate_subscriptions(true)
        .session_timeout(60_000)
        .client()
        .map_err(|errors| settings.pki_error(errors.join("; ")))?;

    if settings.policy != SecurityPolicyName::None {
        let store = client.certificate_store().read();
        store
            .read_own_cert()
            .and_then(|_| store.read_own_pkey().map(|_| ()))
            .map_err(|e| settings.pki_error(format!("no usable client key pair: {e}")))?;
    }
    Ok(client)
}

/// Asks the server for its endpoints and creates (but does not yet open) a session on the one
/// that matches the configured URL path, security policy and mode. The session connects when
/// the returned event loop is polled.
pub(crate) async fn open_session(
    client: &mut Client,
    settings: &ConnectSettings,
) -> Result<(Arc<Session>, SessionEventLoop<TcpConnector>), OpcUaError> {
    // The library retries GetEndpoints' connection under the session retry policy (forever
    // here), so a refused connection would surface as a bare timeout: probe TCP first for a
    // precise reason.
    probe(&settings.endpoint, settings.request_timeout)
        .await
        .map_err(|reason| settings.connect_error(reason))?;
    let endpoints = tokio::time::timeout(
        settings.request_timeout,
        client.get_server_endpoints_from_url(settings.endpoint.as_str()),
    )
    .await
    .map_err(|_| {
        settings.connect_error(format!(
            "GetEndpoints: no answer within {} ms",
            settings.request_timeout.as_millis()
        ))
    })?
    .map_err(|e| settings.connect_error(format!("GetEndpoints: {e}")))?;

    let policy = security_policy(settings.policy);
    let mode = security_mode(settings.mode);
    let mut endpoint = Client::find_matching_endpoint(&endpoints, &settings.endpoint, policy, mode)
        .ok_or_else(|| OpcUaError::NoMatchingEndpoint {
            server: Arc::clone(&settings.label),
            endpoint: settings.endpoint.clone(),
            policy: settings.policy.name().to_owned(),
            mode: settings.mode.name().to_owned(),
            offered: endpoints
                .iter()
                .map(|e| {
                    let policy = SecurityPolicy::from_uri(e.security_policy_uri.as_ref());
                    format!("{} {}/{}", e.endpoint_url, policy, e.security_mode)
                })
                .collect::<Vec<_>>()
                .join(", "),
        })?;

    // Connect where the configuration says, not where the server says it is: behind NAT, a
    // port forward or a proxy the advertised port is often unreachable (the library keeps
    // the advertised port and replaces only the host).
    endpoint.endpoint_url = settings.endpoint.as_str().into();

    let identity = match &settings.user {
        Some((user, password)) => IdentityToken::new_user_name(user.as_str(), password.as_str()),
        None => IdentityToken::Anonymous,
    };
    client
        .connect_to_endpoint_directly(endpoint, identity)
        .map_err(|e| settings.connect_error(e.to_string()))
}

/// Opens and closes a TCP connection to the endpoint's `host:port` (default port 4840).
async fn probe(endpoint: &str, timeout: Duration) -> Result<(), String> {
    let authority = endpoint
        .strip_prefix("opc.tcp://")
        .and_then(|rest| rest.split('/').next())
        .ok_or_else(|| "not an opc.tcp:// URL".to_owned())?;
    let has_port = match authority.rfind(']') {
        Some(i) => authority[i..].contains(':'),
        None => authority.contains(':'),
    };
    let address = if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:4840")
    };
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address.as_str())).await {
        Ok(Ok(_stream)) => Ok(()),
        Ok(Err(e)) => Err(format!("TCP {address}: {e}")),
        Err(_) => Err(format!(
            "TCP {address}: no answer within {} ms",
            timeout.as_millis()
        )),
    }
}

/// Copies every DER/PEM certificate in `pki_dir/trusted/` that is not yet stored under the
/// canonical name `async-opcua` looks up. Unreadable files are skipped with a warning.
pub fn sync_trust_dir(pki_dir: &Path) -> Result<(), String> {
    let dir = pki_dir.join("trusted");
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("cannot list {}: {e}", dir.display())),
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(cert) = read_cert_any(&path) else {
            continue;
        };
        let name = CertificateStore::cert_file_name(&cert);
        // A certificate once refused stays refused while a copy sits in rejected/, even when
        // an operator copied it to trusted/: trusted wins.
        let rejected = pki_dir.join("rejected").join(&name);
        if rejected.exists() {
            std::fs::remove_file(&rejected)
                .map_err(|e| format!("cannot remove {}: {e}", rejected.display()))?;
        }
        let canonical = dir.join(name);
        if canonical != path && !canonical.exists() {
            let der = cert
                .to_der()
                .map_err(|e| format!("cannot encode {}: {e}", path.display()))?;
            std::fs::write(&canonical, der)
                .map_err(|e| format!("cannot write {}: {e}", canonical.display()))?;
            tracing::info!(from = %path.display(), to = %canonical.display(), "OPC UA server certificate added to the trust list.");
        }
    }
    Ok(())
}

/// Installs a server certificate (DER or PEM file) into `pki_dir/trusted/` under its
/// canonical name and returns that path.
pub fn trust_server_certificate(pki_dir: &Path, cert_file: &Path) -> Result<PathBuf, OpcUaError> {
    let pki_error = |reason: String| OpcUaError::Pki {
        server: Arc::from(cert_file.display().to_string()),
        dir: pki_dir.display().to_string(),
        reason,
    };
    let cert = read_cert_any(cert_file).ok_or_else(|| {
        pki_error(format!(
            "{} is not a DER or PEM certificate",
            cert_file.display()
        ))
    })?;
    let dir = pki_dir.join("trusted");
    std::fs::create_dir_all(&dir).map_err(|e| pki_error(format!("cannot create: {e}")))?;
    let name = CertificateStore::cert_file_name(&cert);
    let path = dir.join(&name);
    let der = cert.to_der().map_err(|e| pki_error(e.to_string()))?;
    std::fs::write(&path, der).map_err(|e| pki_error(format!("cannot write: {e}")))?;
    let rejected = pki_dir.join("rejected").join(name);
    if rejected.exists() {
        std::fs::remove_file(&rejected)
            .map_err(|e| pki_error(format!("cannot remove {}: {e}", rejected.display())))?;
    }
    Ok(path)
}

fn read_cert_any(path: &Path) -> Option<X509> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    if !matches!(ext.as_str(), "der" | "pem" | "crt" | "cer") {
        return None;
    }
    let bytes = std::fs::read(path).ok()?;
    let cert = X509::from_der(&bytes).or_else(|_| X509::from_pem(&bytes));
    match cert {
        Ok(cert) => Some(cert),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "Not a certificate; ignored.");
            None
        }
    }
}

pub(crate) fn security_policy(policy: SecurityPolicyName) -> SecurityPolicy {
    match policy {
        SecurityPolicyName::None => SecurityPolicy::None,
        SecurityPolicyName::Basic256Sha256 => SecurityPolicy::Basic256Sha256,
    }
}

pub(crate) fn security_mode(mode: SecurityMode) -> MessageSecurityMode {
    match mode {
        SecurityMode::None => MessageSecurityMode::None,
        SecurityMode::Sign => MessageSecurityMode::Sign,
        SecurityMode::SignAndEncrypt => MessageSecurityMode::SignAndEncrypt,
    }
}

/// Browses the forward hierarchical references of `start_node` (e.g. `i=85`, the Objects
/// folder) on the endpoint `security` names, following continuation points; each variable
/// found comes with its type and what it declares (decision 0094).
///
/// The client's own key pair is created in `pki_dir` if missing (a secured endpoint needs it,
/// and the server must accept its certificate); with [`TrustMode::TrustList`] the server's
/// certificate must be in `pki_dir/trusted/`.
pub async fn browse(
    endpoint: &str,
    start_node: &str,
    pki_dir: &Path,
    timeout: Duration,
    security: &BrowseSecurity,
) -> Result<Vec<BrowsedNode>, OpcUaError> {
    let browse_error = |reason: String| OpcUaError::Browse {
        endpoint: endpoint.to_owned(),
        node_id: start_node.to_owned(),
        reason,
    };
    let node_id = NodeId::from_str(start_node.trim())
        .map_err(|e| browse_error(format!("not a node id: {e}")))?;
    let settings = ConnectSettings {
        label: Arc::from(endpoint),
        endpoint: endpoint.to_owned(),
        policy: security.policy,
        mode: security.mode,
        pki_dir: pki_dir.to_path_buf(),
        trust: security.trust,
        user: security.user.clone(),
        reconnect_min: Duration::from_millis(200),
        reconnect_max: Duration::from_millis(200),
        request_timeout: timeout,
        keep_alive: Duration::from_secs(30),
    };
    let client_settings = settings.clone();
    let mut client = tokio::task::spawn_blocking(move || build_client(&client_settings))
        .await
        .map_err(|e| browse_error(format!("client setup panicked: {e}")))??;
    let (session, event_loop) = open_session(&mut client, &settings).await?;
    // Browse is one-shot: never retry the connection.
    session.disable_reconnects();
    let driver = event_loop.spawn();

    let work = async {
        if !session.wait_for_connection().await {
            return Err(browse_error("session could not be opened".to_owned()));
        }
        let description = BrowseDescription {
            node_id,
            browse_direction: BrowseDirection::Forward,
            reference_type_id: ReferenceTypeId::HierarchicalReferences.into(),
            include_subtypes: true,
            node_class_mask: 0,
            result_mask: BrowseResultMask::All as u32,
        };
        let mut found = Vec::new();
        let mut results = session
            .browse(&[description], 1000, None)
            .await
            .map_err(|e| browse_error(e.to_string()))?;
        while let Some(result) = results.into_iter().next() {
            if !result.status_code.is_good() {
                return Err(browse_error(format!("status {}", result.status_code)));
            }
            for reference in result.references.unwrap_or_default() {
                let ns = reference.browse_name.namespace_index;
                let name = reference.browse_name.name.as_ref().to_owned();
                found.push((
                    reference.node_id.node_id.clone(),
                    BrowsedNode {
                        node_id: reference.node_id.node_id.to_string(),
                        browse_name: if ns == 0 {
                            name
                        } else {
                            format!("{ns}:{name}")
                        },
                        node_class: node_class_name(reference.node_class).to_owned(),
                        declared: None,
                    },
                ));
            }
            if result.continuation_point.is_null_or_empty() {
                break;
            }
            results = session
                .browse_next(false, &[result.continuation_point])
                .await
                .map_err(|e| browse_error(e.to_string()))?;
        }
        // What each variable declares, so a commissioning engineer sees the type, range and
        // unit to configure. Best effort: a server that will not say leaves them out.
        let variables: Vec<usize> = (0..found.len())
            .filter(|&i| found[i].1.node_class == "Variable")
            .collect();
        for chunk in variables.chunks(super::declared::NODES_PER_REQUEST) {
            let nodes: Vec<NodeId> = chunk.iter().map(|&i| found[i].0.clone()).collect();
            let Ok(answers) = super::declared::read_declared(&session, &nodes, timeout).await
            else {
                continue;
            };
            for (&i, answer) in chunk.iter().zip(answers) {
                found[i].1.declared = answer.ok();
            }
        }
        Ok(found.into_iter().map(|(_, node)| node).collect())
    };
    let outcome = match tokio::time::timeout(timeout * 4, work).await {
        Ok(outcome) => outcome,
        Err(_) => Err(browse_error(format!(
            "no result within {} ms",
            (timeout * 4).as_millis()
        ))),
    };
    let _ = tokio::time::timeout(timeout, session.disconnect()).await;
    driver.abort();
    outcome
}

fn node_class_name(class: NodeClass) -> &'static str {
    match class {
        NodeClass::Object => "Object",
        NodeClass::Variable => "Variable",
        NodeClass::Method => "Method",
        NodeClass::ObjectType => "ObjectType",
        NodeClass::VariableType => "VariableType",
        NodeClass::ReferenceType => "ReferenceType",
        NodeClass::DataType => "DataType",
        NodeClass::View => "View",
        NodeClass::Unspecified => "Unspecified",
    }
}
