//! The MQTT device endpoint: an MQTT 3.1.1 and 5.0 server built on the `rmqtt-codec` packet
//! codec with Fabrik's own session layer, so that authentication, deny-by-default topic ACLs,
//! storage-backed acknowledgements and a clean shutdown are part of the design rather than
//! hooks bolted onto someone else's broker (see `docs/decisions/0006-mqtt-endpoint.md`).
//!
//! It owns listeners, connections, sessions, retained messages and routing. It does not know
//! how payloads are decoded or stored: every accepted publish is handed to [`MqttHooks::ingest`],
//! and a QoS 1/2 publish is acknowledged once the hook reports it stored.

pub mod acl;
pub mod broker;
mod connection;
pub mod persist;
pub mod subscriptions;
pub mod tls;
pub mod topic;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fabrik_core::Timestamp;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use acl::{Acl, AclAction, AclRule, ClientIdentity};
pub use broker::{Broker, BrokerLimits, BrokerStats};
pub use wire::ConnectRefusal;

/// The lineage source (`_source`) of messages from the device endpoint.
pub const SOURCE: &str = "mqtt";

/// What a client presented in its CONNECT.
#[derive(Debug, Clone)]
pub struct ConnectRequest {
    /// Client id (generated if the client sent none).
    pub client_id: String,
    /// User name.
    pub username: Option<String>,
    /// Password.
    pub password: Option<Bytes>,
    /// The subject common name of a verified client certificate (mTLS).
    pub cert_identity: Option<String>,
    /// Peer address.
    pub peer: SocketAddr,
}

/// An accepted publish, handed to the ingest path.
#[derive(Debug)]
pub struct Inbound {
    /// Publishing client.
    pub client_id: Arc<str>,
    /// Who it is.
    pub identity: Arc<ClientIdentity>,
    /// Topic name.
    pub topic: Arc<str>,
    /// Payload.
    pub payload: Bytes,
    /// QoS.
    pub qos: u8,
    /// Retain flag.
    pub retain: bool,
    /// When Fabrik received it.
    pub received_at: Timestamp,
    /// For QoS 1/2: resolved once the message is durably stored (or dead-lettered), or with
    /// an error; the client's acknowledgement waits for it.
    pub done: Option<oneshot::Sender<Result<(), String>>>,
    /// Its trace span, if it carried a `traceparent` (see [`crate::message_trace`]).
    pub trace: crate::message_trace::MessageTrace,
}

/// What the endpoint asks of the rest of Fabrik.
#[async_trait::async_trait]
pub trait MqttHooks: Send + Sync + 'static {
    /// Checks a CONNECT's credentials and says who the client is.
    async fn authenticate(
        &self,
        request: &ConnectRequest,
    ) -> Result<ClientIdentity, ConnectRefusal>;
    /// Takes an accepted publish; waits while the ingest queue is full (backpressure).
    async fn ingest(&self, message: Inbound);
    /// Takes a publish without waiting (wills); drops and counts it if the queue is full.
    fn offer(&self, message: Inbound);
    /// A client connected.
    fn connected(&self, identity: &ClientIdentity, peer: SocketAddr);
    /// A client went away (`reason`: `disconnect`, `keepalive_timeout`, ...).
    fn disconnected(&self, identity: &ClientIdentity, reason: &str);
}

/// Limits of the endpoint.
#[derive(Debug, Clone, Copy)]
pub struct MqttLimits {
    /// Largest packet accepted (bytes).
    pub max_packet_size: u32,
    /// Unacknowledged QoS 1/2 publishes a client may have outstanding (receive maximum).
    pub receive_maximum: u16,
    /// Publishes per second per connection (0: unlimited).
    pub max_message_rate: u32,
    /// Concurrent connections.
    pub max_connections: usize,
    /// Time allowed between accepting a socket and its CONNECT.
    pub connect_timeout: Duration,
    /// Longest a disconnected session is kept.
    pub max_session_expiry: Duration,
    /// Topic aliases a client may set, and at most as many the broker assigns for messages to
    /// a client that accepts them.
    pub topic_alias_max: u16,
    /// Longest keepalive (seconds) an MQTT 5 client may use; a longer one (or none) is
    /// replaced by this value, announced as Server Keep Alive in CONNACK. 0: the client's own.
    pub max_keep_alive: u16,
    /// MQTT 5: answer a subscription the ACLs refuse with 0x80 (unspecified error) rather
    /// than 0x87 (not authorized); some clients, the Eclipse Paho test client among them,
    /// accept only 0x80.
    pub subscribe_denied_unspecified: bool,
}

impl Default for MqttLimits {
    fn default() -> Self {
        Self {
            max_packet_size: 1 << 20,
            receive_maximum: 100,
            max_message_rate: 1000,
            max_connections: 10_000,
            connect_timeout: Duration::from_secs(10),
            max_session_expiry: Duration::from_secs(86_400),
            topic_alias_max: 16,
            max_keep_alive: 0,
            subscribe_denied_unspecified: false,
        }
    }
}

/// A running endpoint: its broker and the handle to stop it.
pub struct MqttEndpoint {
    /// The broker core (sessions, retained messages, routing).
    pub broker: Arc<Broker>,
    shared: Arc<connection::Shared>,
    connections: Arc<Semaphore>,
}

impl std::fmt::Debug for MqttEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttEndpoint")
            .field("broker", &self.broker)
            .finish()
    }
}

impl MqttEndpoint {
    /// An endpoint; nothing listens until [`MqttEndpoint::serve`] is called.
    pub fn new(
        broker: Arc<Broker>,
        acl: Acl,
        hooks: Arc<dyn MqttHooks>,
        limits: MqttLimits,
        shutdown: CancellationToken,
    ) -> Self {
        let connections = Arc::new(Semaphore::new(limits.max_connections));
        Self {
            broker: broker.clone(),
            shared: Arc::new(connection::Shared {
                broker,
                acl,
                hooks,
                limits,
                shutdown,
                tasks: TaskTracker::new(),
                received_counter: metrics::counter!("fabrik_mqtt_messages_received_total"),
                sent_counter: metrics::counter!("fabrik_mqtt_messages_sent_total"),
            }),
            connections,
        }
    }

    /// Accepts connections on `listener` (TLS when `tls` is given) until shutdown.
    pub async fn serve(&self, listener: TcpListener, tls: Option<tls::TlsAcceptor>) {
        let shared = self.shared.clone();
        loop {
            let accepted = tokio::select! {
                _ = shared.shutdown.cancelled() => break,
                a = listener.accept() => a,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "MQTT accept failed.");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let permit = self.connections.clone().try_acquire_owned().ok();
            let conn_shared = shared.clone();
            let tls = tls.clone();
            shared.tasks.spawn(async move {
                let Some(_permit) = permit else {
                    metrics::counter!("fabrik_mqtt_connects_refused_total", "reason" => "max_connections").increment(1);
                    tracing::warn!(%peer, "MQTT connection refused: mqtt.max_connections reached.");
                    return;
                };
                match tls {
                    None => connection::serve(stream, peer, None, conn_shared).await,
                    // Boxed: the TLS stream and its handshake make this future several KiB
                    // larger, and every plain connection's task would otherwise carry that
                    // space for its whole life.
                    Some(acceptor) => Box::pin(serve_tls(acceptor, stream, peer, conn_shared)).await,
                }
            });
        }
    }

    /// Waits until every connection task has ended (after the shutdown token fired), at most
    /// `deadline`.
    pub async fn drain(&self, deadline: Duration) -> bool {
        self.shared.tasks.close();
        tokio::time::timeout(deadline, self.shared.tasks.wait())
            .await
            .is_ok()
    }
}

/// Completes the TLS handshake (the client certificate, if any, names the device) and serves
/// the connection.
async fn serve_tls(
    acceptor: tls::TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<connection::Shared>,
) {
    match acceptor.accept(stream).await {
        Ok((tls_stream, identity)) => connection::serve(tls_stream, peer, identity, shared).await,
        Err(e) => {
            metrics::counter!("fabrik_mqtt_connects_refused_total", "reason" => "tls").increment(1);
            tracing::info!(%peer, error = %e, "MQTT TLS handshake failed.");
        }
    }
}
