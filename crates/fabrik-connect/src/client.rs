//! A small MQTT client (3.1.1, or 5 with `mqtt5`: its packets in [`crate::client_wire`]) on
//! the same codec as the endpoint, used by the MQTT bridge, the alerts' MQTT notifier and the
//! simulated plant: TCP or TLS, credentials, publish at QoS 0/1 (under MQTT 5 with user
//! properties, and a refusal in the PUBACK's reason code reported), subscribe, keepalive pings,
//! and reconnection with exponential backoff that resubscribes and re-sends unacknowledged
//! publishes. Messages received at QoS 1 are acknowledged to the broker only once the consumer
//! says they are stored, so a crash never loses an acknowledged message.

use std::collections::{BTreeMap, VecDeque};
use std::num::NonZeroU16;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use bytestring::ByteString;
use futures::stream::FuturesOrdered;
use futures::{SinkExt, StreamExt};
use rmqtt_codec::error::EncodeError;
use rmqtt_codec::types::{Publish, QoS};
use rmqtt_codec::v5::PublishProperties;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use crate::ConnectError;
use crate::client_wire::{Granted, Inbound, Wire, pid, qos};

/// TLS settings of a client connection.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    /// CA certificates (PEM) to trust; none: the server certificate is not verified against a
    /// CA (only for tests against self-signed brokers — the bridge refuses this unless
    /// `insecure` is set).
    pub ca: Option<PathBuf>,
    /// Skip certificate verification (tests only).
    pub insecure: bool,
    /// Name the server certificate must carry.
    pub server_name: String,
}

/// A retained message by which the client shows the broker's other clients whether it is
/// connected (a Sparkplug host's `STATE`): the offline form is its will, which the broker
/// publishes when the connection is lost, and is published before a deliberate disconnect; the
/// online form is the first publish on every connection. Both carry the time their connection
/// was made, so a late will of an earlier connection can be told from the current one's.
#[derive(Clone)]
pub struct Presence {
    /// Topic (published at QoS 1, retained).
    pub topic: String,
    /// The payload saying online (`true`) or offline for the connection made at `since_ms`.
    pub payload: Arc<dyn Fn(bool, u64) -> Bytes + Send + Sync>,
}

impl std::fmt::Debug for Presence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presence")
            .field("topic", &self.topic)
            .finish()
    }
}

/// How to reach a broker.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// host:port.
    pub address: String,
    /// Client id.
    pub client_id: String,
    /// User name.
    pub username: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// Keepalive.
    pub keep_alive: Duration,
    /// Start a fresh session on every connection.
    pub clean_session: bool,
    /// TLS, if the broker wants it.
    pub tls: Option<ClientTls>,
    /// Longest wait between reconnection attempts.
    pub max_backoff: Duration,
    /// Speak MQTT 5 (else 3.1.1).
    pub mqtt5: bool,
    /// The presence the client keeps on the broker, if any.
    pub presence: Option<Presence>,
    /// Filters (with their QoS) subscribed on every connection from the first, before the
    /// presence says online: what a Sparkplug host must hear before its nodes birth.
    pub subscriptions: Vec<(String, u8)>,
}

impl ClientOptions {
    /// Plain TCP with defaults.
    pub fn new(address: impl Into<String>, client_id: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            client_id: client_id.into(),
            username: None,
            password: None,
            keep_alive: Duration::from_secs(30),
            clean_session: true,
            tls: None,
            max_backoff: Duration::from_secs(30),
            mqtt5: false,
            presence: None,
            subscriptions: Vec::new(),
        }
    }
}

/// Whether a configuration's `mqtt_version` asks for MQTT 5: `3.1.1` (or none) or `5`.
pub fn speaks_mqtt5(mqtt_version: Option<&str>) -> Result<bool, String> {
    match mqtt_version.map(str::trim) {
        None | Some("3.1.1") => Ok(false),
        Some("5" | "5.0") => Ok(true),
        Some(other) => Err(format!("`{other}`: expected `3.1.1` or `5`")),
    }
}

/// A message received from the broker.
#[derive(Debug)]
pub struct Received {
    /// Topic.
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// QoS it arrived with.
    pub qos: u8,
    /// Retained message.
    pub retain: bool,
    /// Its MQTT 5 user properties (none under 3.1.1).
    pub user_properties: Vec<(String, String)>,
    /// Answer `Ok` once the message is stored; only then is a QoS 1 message acknowledged.
    /// Dropping it without answering leaves the message unacknowledged (the broker re-sends
    /// it after a reconnect).
    pub done: Option<oneshot::Sender<Result<(), String>>>,
}

/// What the client reports.
#[derive(Debug)]
pub enum ClientEvent {
    /// Connected (again); subscriptions are restored.
    Connected,
    /// The connection was lost; the client reconnects by itself.
    Disconnected(String),
    /// A message arrived.
    Message(Received),
}

enum Command {
    Publish {
        topic: String,
        payload: Bytes,
        qos: u8,
        retain: bool,
        user_properties: Vec<(String, String)>,
        done: Option<oneshot::Sender<Result<(), String>>>,
        /// Dropped unsent if the connection cannot take it before then.
        expires_at: Option<tokio::time::Instant>,
    },
    Subscribe(Vec<(String, u8)>),
}

/// A handle to a client running in the background until its shutdown token fires.
#[derive(Clone)]
pub struct MqttClient {
    commands: mpsc::Sender<Command>,
    connected: Arc<AtomicBool>,
}

impl std::fmt::Debug for MqttClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MqttClient")
    }
}

impl MqttClient {
    /// Starts a client; events arrive on the returned receiver (bounded: a slow consumer
    /// slows the client down rather than losing messages).
    pub fn start(
        options: ClientOptions,
        shutdown: CancellationToken,
    ) -> Result<(Self, mpsc::Receiver<ClientEvent>), ConnectError> {
        let tls = match &options.tls {
            None => None,
            Some(t) => Some(tls_connector(t)?),
        };
        let (commands, rx) = mpsc::channel(1024);
        let (events_tx, events_rx) = mpsc::channel(1024);
        let connected = Arc::new(AtomicBool::new(false));
        tokio::spawn(run(
            options,
            tls,
            rx,
            events_tx,
            shutdown,
            connected.clone(),
        ));
        Ok((
            Self {
                commands,
                connected,
            },
            events_rx,
        ))
    }

    /// Whether the client holds a connection the broker accepted.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Queues a QoS 0 publish (not retained) without waiting: dropped unsent if the
    /// connection cannot take it before `expires_at`. False when nothing was queued: not
    /// connected, the client's queue full, or the client stopped.
    pub fn try_publish_until(
        &self,
        topic: &str,
        payload: Bytes,
        expires_at: tokio::time::Instant,
    ) -> bool {
        self.is_connected()
            && self
                .commands
                .try_send(Command::Publish {
                    topic: topic.to_owned(),
                    payload,
                    qos: 0,
                    retain: false,
                    user_properties: Vec::new(),
                    done: None,
                    expires_at: Some(expires_at),
                })
                .is_ok()
    }

    /// Publishes; for QoS 1 the returned future resolves once the broker acknowledged.
    pub async fn publish(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        qos: u8,
        retain: bool,
    ) -> Result<(), String> {
        self.publish_with(topic, payload, qos, retain, Vec::new())
            .await
    }

    /// [`MqttClient::publish`] with MQTT 5 user properties (dropped under 3.1.1, whose
    /// messages carry none). Under MQTT 5 a QoS 1 message the broker refuses (its PUBACK's
    /// reason code: not authorized, quota exceeded) is an error naming the reason.
    pub async fn publish_with(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        qos: u8,
        retain: bool,
        user_properties: Vec<(String, String)>,
    ) -> Result<(), String> {
        let (done, answer) = if qos > 0 {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        self.commands
            .send(Command::Publish {
                topic: topic.to_owned(),
                payload: payload.into(),
                qos: qos.min(1),
                retain,
                user_properties,
                done,
                expires_at: None,
            })
            .await
            .map_err(|_| "the MQTT client has stopped".to_owned())?;
        match answer {
            None => Ok(()),
            Some(rx) => rx
                .await
                .map_err(|_| "the MQTT client has stopped".to_owned())?,
        }
    }

    /// Subscribes (kept across reconnections).
    pub async fn subscribe(&self, filters: Vec<(String, u8)>) -> Result<(), String> {
        self.commands
            .send(Command::Subscribe(filters))
            .await
            .map_err(|_| "the MQTT client has stopped".to_owned())
    }
}

fn tls_connector(t: &ClientTls) -> Result<tokio_rustls::TlsConnector, ConnectError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnectError::Tls(e.to_string()))?;
    let config = if t.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        let ca = t.ca.as_ref().ok_or_else(|| {
            ConnectError::Tls("a TLS bridge needs a CA file (or insecure = true for tests)".into())
        })?;
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        for cert in CertificateDer::pem_file_iter(ca)
            .map_err(|e| ConnectError::Tls(format!("{}: {e}", ca.display())))?
        {
            let cert = cert.map_err(|e| ConnectError::Tls(format!("{}: {e}", ca.display())))?;
            roots
                .add(cert)
                .map_err(|e| ConnectError::Tls(format!("{}: {e}", ca.display())))?;
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// Accepts any server certificate (tests against self-signed brokers only).
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Who waits for a publish to be acknowledged.
type Answer = oneshot::Sender<Result<(), String>>;

/// State that survives reconnections.
struct Session {
    subscriptions: BTreeMap<String, u8>,
    /// Sent QoS 1 publishes waiting for PUBACK, by packet id.
    inflight: BTreeMap<u16, (Publish, Option<Answer>)>,
    /// Of those, the ones not sent yet on this connection (re-sent after a reconnect as the
    /// broker's receive maximum lets them go), by packet id.
    unsent: VecDeque<u16>,
    next_id: u16,
    /// When this process's connections were made (ms since the epoch), the current one last:
    /// the times the presence messages carry. Bounded: only a recent connection's will can
    /// still be on its way.
    presence_since: VecDeque<u64>,
    /// The packet ids of online presences sent on this connection and not yet acknowledged
    /// (in `inflight` too, so the broker's receive maximum is counted right; never re-sent on
    /// a later connection).
    presence_births: Vec<u16>,
}

/// How many earlier connections' wills are still recognised as this process's own.
const PRESENCE_HISTORY: usize = 16;

impl Session {
    /// The time of a new connection: now, and always later than the previous one's, so each
    /// connection's presence messages differ from every earlier one's.
    fn new_presence_since(&mut self) -> u64 {
        let now = u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis(),
        )
        .unwrap_or(u64::MAX);
        let since = match self.presence_since.back() {
            Some(last) if *last >= now => last.saturating_add(1),
            _ => now,
        };
        if self.presence_since.len() == PRESENCE_HISTORY {
            self.presence_since.pop_front();
        }
        self.presence_since.push_back(since);
        since
    }

    fn next_packet_id(&mut self) -> u16 {
        loop {
            let id = self.next_id;
            self.next_id = self.next_id.checked_add(1).unwrap_or(1);
            if !self.inflight.contains_key(&id) {
                return id;
            }
        }
    }
}

async fn run(
    options: ClientOptions,
    tls: Option<tokio_rustls::TlsConnector>,
    mut commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<ClientEvent>,
    shutdown: CancellationToken,
    is_connected: Arc<AtomicBool>,
) {
    let mut session = Session {
        subscriptions: BTreeMap::new(),
        inflight: BTreeMap::new(),
        unsent: VecDeque::new(),
        next_id: 1,
        presence_since: VecDeque::new(),
        presence_births: Vec::new(),
    };
    session
        .subscriptions
        .extend(options.subscriptions.iter().cloned());
    // Its own presence topic, so a late will of an earlier connection is seen and answered.
    if let Some(presence) = &options.presence {
        session.subscriptions.insert(presence.topic.clone(), 1);
    }
    let mut backoff = Duration::from_millis(200);
    loop {
        let attempt = async {
            let tcp = tokio::time::timeout(
                Duration::from_secs(10),
                tokio::net::TcpStream::connect(&options.address),
            )
            .await
            .map_err(|_| "connect timed out".to_owned())?
            .map_err(|e| e.to_string())?;
            let _ = tcp.set_nodelay(true);
            match &tls {
                None => {
                    connected(
                        tcp,
                        &options,
                        &mut session,
                        &mut commands,
                        &events,
                        &shutdown,
                        &is_connected,
                    )
                    .await
                }
                Some(connector) => {
                    let name = options
                        .tls
                        .as_ref()
                        .map(|t| t.server_name.clone())
                        .unwrap_or_default();
                    let name = rustls::pki_types::ServerName::try_from(name)
                        .map_err(|e| format!("TLS server name: {e}"))?;
                    let stream = connector
                        .connect(name, tcp)
                        .await
                        .map_err(|e| format!("TLS: {e}"))?;
                    connected(
                        stream,
                        &options,
                        &mut session,
                        &mut commands,
                        &events,
                        &shutdown,
                        &is_connected,
                    )
                    .await
                }
            }
        };
        tokio::pin!(attempt);
        let outcome = tokio::select! {
            biased;
            r = &mut attempt => r,
            _ = shutdown.cancelled(), if options.presence.is_none() => return,
            _ = shutdown.cancelled() => {
                // A connection with a presence ends by saying it is offline: let it finish,
                // for a moment.
                match tokio::time::timeout(Duration::from_secs(3), &mut attempt).await {
                    Ok(r) => r,
                    Err(_) => return,
                }
            }
        };
        let was_connected = is_connected.swap(false, Ordering::AcqRel);
        match outcome {
            Ok(Stop::Shutdown) => return,
            Ok(Stop::Lost(reason)) => {
                backoff = Duration::from_millis(200);
                let _ = events.send(ClientEvent::Disconnected(reason)).await;
            }
            // A write that failed on an accepted connection: a loss the consumer must hear of
            // (a Sparkplug host marks its nodes stale), however full its queue.
            Err(reason) if was_connected => {
                backoff = Duration::from_millis(200);
                let _ = events.send(ClientEvent::Disconnected(reason)).await;
            }
            Err(reason) => {
                tracing::debug!(broker = %options.address, reason = %reason, "MQTT connection attempt failed.");
                let _ = events.try_send(ClientEvent::Disconnected(reason));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.cancelled() => return,
        }
        backoff = (backoff * 2).min(options.max_backoff);
    }
}

enum Stop {
    Shutdown,
    Lost(String),
}

type AckFuture = futures::future::BoxFuture<'static, Option<u16>>;

/// Unacknowledged QoS 1 publishes at once: the broker's receive maximum, and one packet id
/// short of all, so a new id is always free for a SUBSCRIBE.
fn send_window_size(granted: &Granted) -> usize {
    usize::from(granted.receive_max.clamp(1, u16::MAX - 1))
}

/// Why the broker's CONNACK does not take a publish at QoS `q` (retained when `retain`).
fn not_granted(granted: &Granted, q: u8, retain: bool) -> Option<String> {
    if q > 0 && !granted.qos1 {
        Some("the broker takes QoS 0 publishes only (its CONNACK's maximum QoS)".into())
    } else if retain && !granted.retain {
        Some("the broker takes no retained messages (its CONNACK)".into())
    } else {
        None
    }
}

/// Sends the publishes not yet sent on this connection (after a reconnect) while fewer than
/// the broker's receive maximum wait for their PUBACK; one the codec cannot send (larger than
/// the broker takes) fails on its own.
async fn send_window<S>(
    framed: &mut Framed<S, rmqtt_codec::MqttCodec>,
    wire: Wire,
    session: &mut Session,
    granted: &Granted,
) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let window = send_window_size(granted);
    while session.inflight.len().saturating_sub(session.unsent.len()) < window {
        let Some(id) = session.unsent.pop_front() else {
            break;
        };
        let Some((publish, _)) = session.inflight.get(&id) else {
            continue;
        };
        // The broker now connected to may take less than the one it was first sent to.
        if let Some(why) = not_granted(granted, publish.qos.value(), publish.retain) {
            if let Some((_, Some(done))) = session.inflight.remove(&id) {
                let _ = done.send(Err(why));
            }
            continue;
        }
        let mut again = publish.clone();
        again.dup = true;
        match framed.send(wire.publish(again)).await {
            Ok(()) => {}
            Err(e) if !matches!(e, EncodeError::Io(_)) => {
                // A failed encode may have left part of the packet in the buffer.
                framed.write_buffer_mut().clear();
                if let Some((_, Some(done))) = session.inflight.remove(&id) {
                    let _ = done.send(Err(format!("not sent: {e}")));
                }
            }
            Err(e) => {
                session.unsent.push_front(id);
                return Err(e.to_string());
            }
        }
    }
    Ok(())
}

async fn connected<S>(
    stream: S,
    options: &ClientOptions,
    session: &mut Session,
    commands: &mut mpsc::Receiver<Command>,
    events: &mpsc::Sender<ClientEvent>,
    shutdown: &CancellationToken,
    is_connected: &AtomicBool,
) -> Result<Stop, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let wire = Wire { v5: options.mqtt5 };
    let mut framed = Framed::new(stream, wire.codec());
    // A new connection, a new presence: the last one's online messages, if still unanswered,
    // are not sent again (they would say an older connection is the current one).
    let since = options
        .presence
        .as_ref()
        .map(|_| session.new_presence_since());
    for id in std::mem::take(&mut session.presence_births) {
        session.inflight.remove(&id);
    }
    let will = options
        .presence
        .as_ref()
        .zip(since)
        .map(|(p, since)| (p.topic.as_str(), (p.payload)(false, since)));
    framed
        .send(wire.connect(options, will))
        .await
        .map_err(|e| e.to_string())?;
    let ack = tokio::time::timeout(Duration::from_secs(10), framed.next())
        .await
        .map_err(|_| "no CONNACK within 10 s".to_owned())?;
    let granted = match ack {
        Some(Ok((packet, _))) => wire.accepted(packet)?,
        Some(Err(e)) => return Err(e.to_string()),
        None => return Err("closed before CONNACK".into()),
    };
    if let Some(max) = granted.max_packet_size {
        Wire::limit_outbound(framed.codec_mut(), max);
    }
    let presence = options.presence.as_ref().zip(since);
    if shutdown.is_cancelled() {
        // Connected while shutting down: gone again at once.
        if let Some((presence, since)) = presence {
            say_offline(&mut framed, wire, session, &granted, presence, since).await;
        }
        let _ = framed.send(wire.disconnect()).await;
        return Ok(Stop::Shutdown);
    }
    is_connected.store(true, Ordering::Release);
    let _ = events.send(ClientEvent::Connected).await;
    // Subscriptions first, then the presence (as Sparkplug asks of a host), then the rest.
    if !session.subscriptions.is_empty() {
        let filters: Vec<(String, u8)> = session
            .subscriptions
            .iter()
            .map(|(f, q)| (f.clone(), *q))
            .collect();
        let id = session.next_packet_id();
        framed
            .send(wire.subscribe(id, &filters))
            .await
            .map_err(|e| e.to_string())?;
    }
    if let Some((presence, since)) = presence {
        say_online(&mut framed, wire, session, &granted, presence, since).await?;
    }
    // Every publish not acknowledged is sent again, as many at once as the broker takes.
    session.unsent = session
        .inflight
        .keys()
        .copied()
        .filter(|id| !session.presence_births.contains(id))
        .collect();
    send_window(&mut framed, wire, session, &granted).await?;
    let mut acks: FuturesOrdered<AckFuture> = FuturesOrdered::new();
    // The broker's keepalive, when it names one, instead of ours (MQTT 5 §3.2.2.3.14).
    let keep_alive = granted.keep_alive.unwrap_or(options.keep_alive);
    let (ping_every, silence_limit) = if keep_alive.is_zero() {
        // No keepalive: no pings, and silence is no sign of a dead broker.
        (
            Duration::from_secs(3600),
            Duration::from_secs(100 * 365 * 86_400),
        )
    } else {
        (keep_alive / 2, keep_alive.max(Duration::from_secs(1)) * 2)
    };
    let mut ping = tokio::time::interval(ping_every);
    ping.tick().await;
    // When the broker was last heard from: pings do not reset it, answers do.
    let mut heard = tokio::time::Instant::now();
    let window = send_window_size(&granted);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                if let Some((presence, since)) = presence {
                    say_offline(&mut framed, wire, session, &granted, presence, since).await;
                }
                let _ = framed.send(wire.disconnect()).await;
                return Ok(Stop::Shutdown);
            }
            Some(acked) = acks.next(), if !acks.is_empty() => {
                if let Some(id) = acked {
                    framed.send(wire.pub_ack(id)).await.map_err(|e| e.to_string())?;
                }
            }
            // A new publish waits while the broker's receive maximum is taken up.
            command = commands.recv(), if session.unsent.is_empty() && session.inflight.len() < window => {
                let Some(command) = command else {
                    if let Some((presence, since)) = presence {
                        say_offline(&mut framed, wire, session, &granted, presence, since).await;
                    }
                    let _ = framed.send(wire.disconnect()).await;
                    return Ok(Stop::Shutdown);
                };
                match command {
                    Command::Publish { expires_at: Some(at), done, .. } if at <= tokio::time::Instant::now() => {
                        if let Some(done) = done {
                            let _ = done.send(Err("expired before the connection could take it".into()));
                        }
                    }
                    Command::Publish { topic, payload, qos: q, retain, user_properties, done, expires_at: _ } => {
                        if let Some(why) = not_granted(&granted, q, retain) {
                            if let Some(done) = done {
                                let _ = done.send(Err(why));
                            }
                            continue;
                        }
                        let packet_id = (q > 0).then(|| session.next_packet_id());
                        let properties = (wire.v5 && !user_properties.is_empty()).then(|| {
                            PublishProperties {
                                user_properties: user_properties
                                    .into_iter()
                                    .map(|(k, v)| (ByteString::from(k), ByteString::from(v)))
                                    .collect(),
                                ..PublishProperties::default()
                            }
                        });
                        let publish = Publish {
                            dup: false,
                            retain,
                            qos: qos(q),
                            topic: ByteString::from(topic),
                            packet_id: packet_id.map(pid),
                            payload,
                            properties,
                        };
                        match framed.send(wire.publish(publish.clone())).await {
                            Ok(()) => {
                                if let Some(id) = packet_id {
                                    session.inflight.insert(id, (publish, done));
                                } else if let Some(done) = done {
                                    let _ = done.send(Ok(()));
                                }
                            }
                            // Too large for the broker, say: this publish fails, not the link.
                            Err(e) if !matches!(e, EncodeError::Io(_)) => {
                                // A failed encode may have left part of the packet in the
                                // buffer, which the next send would flush ahead of its own.
                                framed.write_buffer_mut().clear();
                                if let Some(done) = done {
                                    let _ = done.send(Err(format!("not sent: {e}")));
                                }
                            }
                            Err(e) => {
                                // Sent again after the reconnect.
                                if let Some(id) = packet_id {
                                    session.inflight.insert(id, (publish, done));
                                }
                                return Err(e.to_string());
                            }
                        }
                    }
                    Command::Subscribe(filters) => {
                        for (f, q) in &filters {
                            session.subscriptions.insert(f.clone(), *q);
                        }
                        let id = session.next_packet_id();
                        framed.send(wire.subscribe(id, &filters)).await.map_err(|e| e.to_string())?;
                    }
                }
            }
            _ = ping.tick() => {
                framed.send(wire.ping()).await.map_err(|e| e.to_string())?;
            }
            () = tokio::time::sleep_until(heard + silence_limit) => {
                return Ok(Stop::Lost("no answer from the broker within 2 × keepalive".into()));
            }
            frame = framed.next() => {
                heard = tokio::time::Instant::now();
                let frame = match frame {
                    None => return Ok(Stop::Lost("connection closed by the broker".into())),
                    Some(Err(e)) => return Ok(Stop::Lost(e.to_string())),
                    Some(Ok((packet, _))) => packet,
                };
                match Wire::inbound(frame) {
                    // A PUBACK for a publish not sent on this connection is a broker's mistake:
                    // ignored, so the window's count stays right.
                    Inbound::PubAck(packet_id, result) if !session.unsent.contains(&packet_id) => {
                        session.presence_births.retain(|id| *id != packet_id);
                        if let Some((_, done)) = session.inflight.remove(&packet_id)
                            && let Some(done) = done
                        {
                            let _ = done.send(result);
                        }
                        send_window(&mut framed, wire, session, &granted).await?;
                    }
                    Inbound::Disconnect(why) => {
                        return Ok(Stop::Lost(format!("the broker disconnected: {why}")));
                    }
                    Inbound::Publish(p) if presence.is_some_and(|(pr, _)| p.topic == pr.topic.as_str()) => {
                        // Its own presence topic: not the consumer's. Acknowledged in turn.
                        if let Some(id) = p.packet_id.map(NonZeroU16::get) {
                            acks.push_back(Box::pin(async move { Some(id) }));
                        }
                        // A retained one came with the subscription, before this connection's
                        // own presence replaced it; only a live one came after.
                        if let Some((presence, since)) = presence
                            && !p.retain
                            && is_earlier_will(session, presence, since, &p.payload)
                        {
                            // An earlier connection's will, published by the broker after this
                            // connection said it is online (a lost connection noticed late):
                            // said again, so the retained message is true.
                            tracing::info!(broker = %options.address, topic = %presence.topic, "An earlier connection's will replaced the presence; publishing it again.");
                            say_online(&mut framed, wire, session, &granted, presence, since).await?;
                        }
                    }
                    Inbound::Publish(p) => {
                        let id = p.packet_id.map(NonZeroU16::get);
                        let wants_ack = p.qos != QoS::AtMostOnce;
                        let (done, stored) = if wants_ack {
                            let (tx, rx) = oneshot::channel();
                            (Some(tx), Some(rx))
                        } else {
                            (None, None)
                        };
                        let user_properties = p
                            .properties
                            .as_ref()
                            .map(|props| {
                                props
                                    .user_properties
                                    .iter()
                                    .map(|(k, v)| (k.to_string(), v.to_string()))
                                    .collect()
                            })
                            .unwrap_or_default();
                        let received = Received {
                            topic: p.topic.to_string(),
                            payload: p.payload,
                            qos: p.qos.value(),
                            retain: p.retain,
                            user_properties,
                            done,
                        };
                        if events.send(ClientEvent::Message(received)).await.is_err() {
                            if let Some((presence, since)) = presence {
                                say_offline(&mut framed, wire, session, &granted, presence, since).await;
                            }
                            let _ = framed.send(wire.disconnect()).await;
                            return Ok(Stop::Shutdown);
                        }
                        if let (Some(rx), Some(id)) = (stored, id) {
                            acks.push_back(Box::pin(async move {
                                matches!(rx.await, Ok(Ok(()))).then_some(id)
                            }));
                        }
                    }
                    Inbound::SubscribeRefused(why) => {
                        tracing::warn!(broker = %options.address, reason = %why, "The broker refused a subscription.");
                    }
                    Inbound::PubAck(..) | Inbound::Other => {}
                }
            }
        }
    }
}

/// Whether `payload` is the offline presence of one of this process's earlier connections.
fn is_earlier_will(session: &Session, presence: &Presence, current: u64, payload: &[u8]) -> bool {
    session
        .presence_since
        .iter()
        .filter(|since| **since != current)
        .any(|since| (presence.payload)(false, *since).as_ref() == payload)
}

/// Publishes the connection's online presence (QoS 1, retained) ahead of everything else it
/// sends, and keeps it in flight until acknowledged.
async fn say_online<S>(
    framed: &mut Framed<S, rmqtt_codec::MqttCodec>,
    wire: Wire,
    session: &mut Session,
    granted: &Granted,
    presence: &Presence,
    since: u64,
) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    if let Some(why) = not_granted(granted, 1, true) {
        tracing::warn!(topic = %presence.topic, reason = %why, "The presence cannot be published.");
        return Ok(());
    }
    let id = session.next_packet_id();
    let publish = presence_publish(presence, id, true, since);
    framed
        .send(wire.publish(publish.clone()))
        .await
        .map_err(|e| e.to_string())?;
    session.presence_births.push(id);
    session.inflight.insert(id, (publish, None));
    Ok(())
}

/// Publishes the connection's offline presence before a deliberate disconnect (whose will the
/// broker drops), and waits a moment for the broker to acknowledge it.
async fn say_offline<S>(
    framed: &mut Framed<S, rmqtt_codec::MqttCodec>,
    wire: Wire,
    session: &mut Session,
    granted: &Granted,
    presence: &Presence,
    since: u64,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    if not_granted(granted, 1, true).is_some() {
        return;
    }
    let id = session.next_packet_id();
    if framed
        .send(wire.publish(presence_publish(presence, id, false, since)))
        .await
        .is_err()
    {
        return;
    }
    let acknowledged = async {
        while let Some(Ok((packet, _))) = framed.next().await {
            if matches!(Wire::inbound(packet), Inbound::PubAck(acked, _) if acked == id) {
                return;
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(2), acknowledged)
        .await
        .is_err()
    {
        tracing::warn!(topic = %presence.topic, "The broker did not acknowledge the offline presence within 2 s.");
    }
}

fn presence_publish(presence: &Presence, id: u16, online: bool, since: u64) -> Publish {
    Publish {
        dup: false,
        retain: true,
        qos: QoS::AtLeastOnce,
        topic: ByteString::from(presence.topic.as_str()),
        packet_id: Some(pid(id)),
        payload: (presence.payload)(online, since),
        properties: None,
    }
}
