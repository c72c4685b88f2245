//! One client connection: the CONNECT handshake (version detection, authentication, session
//! attach), then a loop that reads packets, writes what the session has due, sends
//! acknowledgements once the ingest path has stored a message, enforces keepalive and limits,
//! and publishes the will when the connection ends without a DISCONNECT.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::FuturesOrdered;
use futures::{FutureExt, SinkExt, StreamExt};
use rmqtt_codec::types::Publish;
use rmqtt_codec::{MqttCodec, MqttPacket, v3, v5, version::ProtocolVersion};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use v5::DisconnectReasonCode as Reason;

use super::acl::{Acl, ClientIdentity};
use super::broker::{Broker, Link, Message, Outgoing};
use super::topic;
use super::wire::{
    AliasUse, ConnectInfo, ConnectRefusal, Inbound, PubResult, SubResult, Version, Will, Wire,
    connack, connect_info,
};
use super::{ConnectRequest, Inbound as IngestMessage, MqttHooks, MqttLimits};
use crate::message_trace::{self, MessageTrace};

/// Everything a connection shares with the endpoint.
pub(crate) struct Shared {
    pub(crate) broker: Arc<Broker>,
    pub(crate) acl: Acl,
    pub(crate) hooks: Arc<dyn MqttHooks>,
    pub(crate) limits: MqttLimits,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tasks: TaskTracker,
    /// Per-message counters, looked up once rather than by name on every message.
    pub(crate) received_counter: metrics::Counter,
    pub(crate) sent_counter: metrics::Counter,
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// DISCONNECT received (with MQTT 5 reason 0x04 the will is still sent).
    Disconnect { send_will: bool },
    /// The peer closed the socket or it failed.
    Lost,
    /// No packet within 1.5 × keepalive.
    KeepAlive,
    /// Another connection took the session over.
    TakenOver,
    /// The device may no longer be connected (its attestation failed or expired).
    Revoked,
    /// The server is stopping.
    Shutdown,
    /// A protocol violation or a limit; the reason was sent to MQTT 5 clients.
    Violation,
}

impl Ended {
    fn label(self) -> &'static str {
        match self {
            Ended::Disconnect { .. } => "disconnect",
            Ended::Lost => "connection_lost",
            Ended::KeepAlive => "keepalive_timeout",
            Ended::TakenOver => "session_taken_over",
            Ended::Revoked => "attestation_revoked",
            Ended::Shutdown => "server_shutdown",
            Ended::Violation => "protocol_violation",
        }
    }
}

/// Token bucket for the per-connection message rate.
struct RateLimit {
    per_second: f64,
    tokens: f64,
    at: Instant,
}

impl RateLimit {
    fn new(per_second: u32) -> Option<Self> {
        (per_second > 0).then(|| Self {
            per_second: f64::from(per_second),
            tokens: f64::from(per_second),
            at: Instant::now(),
        })
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * self.per_second;
        self.tokens = (self.tokens + refill).min(self.per_second);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// When the next message may be taken, if the bucket is empty now.
    fn ready_at(&self) -> Option<Instant> {
        let missing = 1.0 - self.tokens;
        if missing <= 0.0 {
            return None;
        }
        let ready = self.at + Duration::from_secs_f64(missing / self.per_second);
        (ready > Instant::now()).then_some(ready)
    }
}

type AckFuture = futures::future::BoxFuture<'static, (bool, u16, PubResult)>;

struct Conn<S> {
    framed: Framed<S, MqttCodec>,
    wire: Wire,
    shared: Arc<Shared>,
    client_id: Arc<str>,
    identity: Arc<ClientIdentity>,
    link: Link,
    keep_alive: Option<Duration>,
    last_received: Instant,
    /// Inbound QoS 1/2 publishes not yet acknowledged (receive maximum).
    unacked_inbound: usize,
    pending_acks: FuturesOrdered<AckFuture>,
    rate: Option<RateLimit>,
    topic_aliases: Vec<Option<Arc<str>>>,
    /// Topic aliases this connection assigned for messages to the client (MQTT 5).
    outgoing_aliases: HashMap<Arc<str>, u16>,
    /// How many the client accepts (its Topic Alias Maximum, capped by ours).
    outgoing_alias_max: u16,
    peer: SocketAddr,
}

/// Serves one accepted connection until it ends.
/// Initial read and write buffer of a connection.
const IDLE_BUFFER: usize = 256;
/// Read buffer of a connection that sends bursts of packets.
const BUSY_BUFFER: usize = 8192;

pub(crate) async fn serve<S>(
    stream: S,
    peer: SocketAddr,
    cert_identity: Option<String>,
    shared: Arc<Shared>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let max = shared.limits.max_packet_size;
    // Small initial buffers: most device connections are idle between small packets, and the
    // default 8 KiB read plus 8 KiB write buffer per connection dominated the memory of tens of
    // thousands of them. Buffers grow when a large packet needs it.
    let mut framed = Framed::with_capacity(
        stream,
        MqttCodec::Version(rmqtt_codec::version::VersionCodec),
        IDLE_BUFFER,
    );
    *framed.write_buffer_mut() = bytes::BytesMut::with_capacity(IDLE_BUFFER);
    // Err((why, Some(version))): answer with a CONNACK refusing the client id before closing.
    let handshake = tokio::time::timeout(shared.limits.connect_timeout, async {
        let version = match framed.next().await {
            Some(Ok((MqttPacket::Version(v), _))) => v,
            Some(Err(e)) => return Err((format!("not an MQTT CONNECT: {e}"), None)),
            _ => return Err(("closed before CONNECT".to_owned(), None)),
        };
        *framed.codec_mut() = match version {
            ProtocolVersion::MQTT3 => MqttCodec::V3(v3::Codec::new(max)),
            ProtocolVersion::MQTT5 => MqttCodec::V5(v5::Codec::new(max, 0)),
        };
        match framed.next().await {
            Some(Ok((packet, _))) => {
                connect_info(packet).ok_or_else(|| ("first packet is not CONNECT".to_owned(), None))
            }
            // The codec refuses an empty client id without clean session; [MQTT-3.1.3-9] wants
            // a CONNACK with "identifier rejected" (0x02 / 0x85) before the close.
            Some(Err(rmqtt_codec::error::DecodeError::InvalidClientId)) => Err((
                "empty client id without clean session".to_owned(),
                Some(match version {
                    ProtocolVersion::MQTT3 => Version::V3,
                    ProtocolVersion::MQTT5 => Version::V5,
                }),
            )),
            Some(Err(e)) => Err((format!("malformed CONNECT: {e}"), None)),
            None => Err(("closed during CONNECT".to_owned(), None)),
        }
    })
    .await;
    let info = match handshake {
        Ok(Ok(info)) => info,
        Ok(Err((reason, refuse_in))) => {
            tracing::debug!(%peer, %reason, "MQTT handshake failed.");
            match refuse_in {
                Some(version) => {
                    let _ =
                        conn_refuse(&mut framed, Wire(version), ConnectRefusal::ClientIdRejected)
                            .await;
                }
                None => {
                    metrics::counter!("fabrik_mqtt_connects_refused_total", "reason" => "malformed")
                        .increment(1);
                }
            }
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "No MQTT CONNECT within the connect timeout.");
            metrics::counter!("fabrik_mqtt_connects_refused_total", "reason" => "timeout")
                .increment(1);
            return;
        }
    };
    let wire = Wire(info.version);
    if let MqttCodec::V5(codec) = framed.codec_mut()
        && let Some(limit) = info.max_packet_size
    {
        codec.set_max_outbound_size(limit);
    }
    let outgoing_alias_max = info.topic_alias_max.min(shared.limits.topic_alias_max);
    match accept(&mut framed, info, peer, cert_identity, &shared).await {
        Ok((conn_parts, will)) => {
            let (client_id, identity, link, keep_alive, session_present) = conn_parts;
            let mut conn = Conn {
                framed,
                wire,
                shared: shared.clone(),
                client_id: client_id.clone(),
                identity: identity.clone(),
                link: link.clone(),
                keep_alive,
                last_received: Instant::now(),
                unacked_inbound: 0,
                pending_acks: FuturesOrdered::new(),
                rate: RateLimit::new(shared.limits.max_message_rate),
                topic_aliases: vec![None; usize::from(shared.limits.topic_alias_max)],
                outgoing_aliases: HashMap::new(),
                outgoing_alias_max,
                peer,
            };
            metrics::gauge!("fabrik_mqtt_connections").increment(1.0);
            shared.hooks.connected(&identity, peer);
            tracing::debug!(client_id = %client_id, %peer, session_present, "MQTT client connected.");
            let ended = conn.run().await;
            metrics::gauge!("fabrik_mqtt_connections").decrement(1.0);
            metrics::counter!("fabrik_mqtt_disconnects_total", "reason" => ended.label())
                .increment(1);
            let lives_on = shared.broker.detach(&client_id, link.generation);
            shared.hooks.disconnected(&identity, ended.label());
            tracing::debug!(client_id = %client_id, %peer, reason = ended.label(), "MQTT client disconnected.");
            let send_will = match ended {
                Ended::Disconnect { send_will } => send_will,
                // A device shut out for its attestation may be compromised: its will (a
                // message it chose) is not published for it.
                Ended::Shutdown | Ended::Revoked => false,
                _ => true,
            };
            if send_will && let Some(will) = will {
                // `None`: the session never expires.
                let session_expiry = if lives_on {
                    shared.broker.session_expiry(&client_id)
                } else {
                    Some(Duration::ZERO)
                };
                publish_will(
                    &shared,
                    &client_id,
                    &identity,
                    link.generation,
                    will,
                    session_expiry,
                );
            }
        }
        Err(refusal) => {
            let _ = conn_refuse(&mut framed, wire, refusal).await;
        }
    }
}

async fn conn_refuse<S>(
    framed: &mut Framed<S, MqttCodec>,
    wire: Wire,
    refusal: ConnectRefusal,
) -> Result<(), ()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let label = match refusal {
        ConnectRefusal::ClientIdRejected => "client_id_rejected",
        ConnectRefusal::BadCredentials => "bad_credentials",
        ConnectRefusal::NotAuthorized => "not_authorized",
        ConnectRefusal::ServerBusy => "server_busy",
        ConnectRefusal::ProtocolError => "protocol_error",
    };
    metrics::counter!("fabrik_mqtt_connects_refused_total", "reason" => label).increment(1);
    framed
        .send(connack(wire.0, false, Some(refusal), |_| {}))
        .await
        .map_err(|_| ())
}

type Accepted = (Arc<str>, Arc<ClientIdentity>, Link, Option<Duration>, bool);

/// Authenticates, attaches the session and sends CONNACK.
async fn accept<S>(
    framed: &mut Framed<S, MqttCodec>,
    info: ConnectInfo,
    peer: SocketAddr,
    cert_identity: Option<String>,
    shared: &Arc<Shared>,
) -> Result<(Accepted, Option<Will>), ConnectRefusal>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // An empty client id gets a generated one, unless a 3.1.1 client wants its session kept.
    let mut assigned = None;
    let client_id = if info.client_id.is_empty() {
        if info.version == Version::V3 && !info.clean_start {
            return Err(ConnectRefusal::ClientIdRejected);
        }
        let id = format!("fabrik-{:016x}", rand_id());
        assigned = Some(id.clone());
        id
    } else {
        info.client_id.clone()
    };
    if let Some(will) = &info.will
        && topic::validate_name(&will.topic).is_err()
    {
        return Err(ConnectRefusal::ProtocolError);
    }
    let request = ConnectRequest {
        client_id: client_id.clone(),
        username: info.username.clone(),
        password: info.password.clone(),
        cert_identity,
        peer,
    };
    let identity = match shared.hooks.authenticate(&request).await {
        Ok(identity) => identity,
        Err(refusal) => {
            tracing::info!(client_id = %client_id, username = info.username.as_deref().unwrap_or(""), %peer, "MQTT authentication failed.");
            return Err(refusal);
        }
    };
    if let Some(will) = &info.will
        && !shared.acl.may_publish(&identity, &will.topic)
    {
        tracing::info!(client_id = %client_id, topic = %will.topic, "MQTT will topic not allowed by the ACLs.");
        metrics::counter!("fabrik_mqtt_publish_denied_total").increment(1);
        return Err(ConnectRefusal::NotAuthorized);
    }
    let max_expiry = shared.limits.max_session_expiry;
    let expiry = match info.session_expiry {
        None => Some(max_expiry),
        Some(e) => Some(e.min(max_expiry)),
    };
    let client_id: Arc<str> = Arc::from(client_id);
    let attached = shared.broker.attach(
        &client_id,
        identity.clone(),
        info.clean_start,
        expiry,
        info.receive_max,
        shared.acl.read_denies(&identity),
    );
    let limits = shared.limits;
    // MQTT 5: the server may impose its own keepalive (Server Keep Alive, §3.2.2.3.14).
    let keep_alive_secs = match (info.version, limits.max_keep_alive) {
        (Version::V5, max) if max > 0 && (info.keep_alive == 0 || info.keep_alive > max) => max,
        _ => info.keep_alive,
    };
    let ack = connack(info.version, attached.session_present, None, |ack| {
        if keep_alive_secs != info.keep_alive {
            ack.server_keepalive_sec = Some(keep_alive_secs);
        }
        ack.receive_max =
            std::num::NonZeroU16::new(limits.receive_maximum).unwrap_or(std::num::NonZeroU16::MIN);
        ack.max_packet_size = Some(limits.max_packet_size);
        ack.topic_alias_max = limits.topic_alias_max;
        ack.shared_subscription_available = true;
        ack.assigned_client_id = assigned.map(Into::into);
        if info.session_expiry != expiry {
            ack.session_expiry_interval_secs =
                expiry.map(|e| u32::try_from(e.as_secs()).unwrap_or(u32::MAX));
        }
    });
    if framed.send(ack).await.is_err() {
        shared.broker.detach(&client_id, attached.link.generation);
        return Err(ConnectRefusal::ProtocolError);
    }
    let keep_alive =
        (keep_alive_secs > 0).then(|| Duration::from_millis(u64::from(keep_alive_secs) * 1500));
    Ok((
        (
            client_id,
            Arc::new(identity),
            attached.link,
            keep_alive,
            attached.session_present,
        ),
        info.will,
    ))
}

fn rand_id() -> u64 {
    let mut buf = [0u8; 8];
    if getrandom::fill(&mut buf).is_err() {
        return u64::try_from(fabrik_core::Timestamp::now().nanos()).unwrap_or(0);
    }
    u64::from_le_bytes(buf)
}

fn publish_will(
    shared: &Arc<Shared>,
    client_id: &Arc<str>,
    identity: &Arc<ClientIdentity>,
    generation: u64,
    will: Will,
    session_expiry: Option<Duration>,
) {
    let message = Message {
        topic: Arc::from(will.topic.as_str()),
        payload: will.payload,
        qos: will.qos,
        retain: will.retain,
        expires_at: will
            .properties
            .as_ref()
            .and_then(|p| p.message_expiry_interval)
            .map(|s| Instant::now() + Duration::from_secs(u64::from(s.get()))),
        properties: will.properties,
        publisher: Some(client_id.clone()),
    };
    let send = {
        let shared = shared.clone();
        let identity = identity.clone();
        let client_id = client_id.clone();
        move || {
            let inbound = IngestMessage {
                client_id: client_id.clone(),
                identity: identity.clone(),
                topic: message.topic.clone(),
                payload: message.payload.clone(),
                qos: message.qos,
                retain: message.retain,
                received_at: fabrik_core::Timestamp::now(),
                done: None,
                // A will is the broker's publish, made long after the client's trace.
                trace: MessageTrace::none(),
            };
            shared.broker.publish(message);
            shared.hooks.offer(inbound);
        }
    };
    // The will waits for its delay or for the end of the session, whichever comes first
    // (MQTT 5 §3.1.3.2.2).
    let delay = session_expiry.map_or(will.delay, |e| will.delay.min(e));
    if delay.is_zero() {
        send();
        return;
    }
    let tracker_shared = shared.clone();
    let client_id = client_id.clone();
    shared.tasks.spawn(async move {
        tokio::select! {
            _ = tokio::time::sleep(delay) => {
                if tracker_shared.broker.is_gone(&client_id, generation) {
                    send();
                }
            }
            _ = tracker_shared.shutdown.cancelled() => {}
        }
    });
}

impl<S> Conn<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async fn run(&mut self) -> Ended {
        // Messages left in flight by an earlier connection go first.
        for out in self
            .shared
            .broker
            .resend_inflight(&self.client_id, self.link.generation)
        {
            if self.write_outgoing(out).await.is_err() {
                return Ended::Lost;
            }
        }
        if self.flush_due().await.is_err() {
            return Ended::Lost;
        }
        loop {
            // An empty read buffer means the next frame comes from a fresh socket read.
            let fresh_read = self.framed.read_buffer().is_empty();
            let shutdown = self.shared.shutdown.clone();
            let kicked = self.link.kicked.clone();
            let revoked = self.link.revoked.clone();
            let notify = self.link.notify.clone();
            // Flow control instead of disconnection, so a client that re-sends its whole
            // offline queue at once (paho does, ignoring its own in-flight limit) is slowed by
            // TCP, not cut off and locked out at every reconnect: reading pauses while the
            // message rate's bucket is empty, and while the receive maximum of this client's
            // QoS 1/2 messages waits for the store (only then: with none waiting for the
            // store, the unacknowledged ones are QoS 2 messages whose PUBRELs come next).
            let throttled = self.rate.as_ref().and_then(RateLimit::ready_at);
            let may_read = throttled.is_none()
                && (self.pending_acks.is_empty()
                    || self.unacked_inbound < usize::from(self.shared.limits.receive_maximum));
            // While this side does not read, a PINGREQ waits unread in the socket: the pause is
            // not the client's silence, so keepalive counts from when reading resumes.
            let deadline = if may_read {
                self.keep_alive.map(|k| self.last_received + k)
            } else {
                self.last_received = Instant::now();
                None
            };
            let event = tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    self.goodbye(Reason::ServerShuttingDown, "server shutting down").await;
                    return Ended::Shutdown;
                }
                _ = kicked.cancelled() => {
                    self.goodbye(Reason::SessionTakenOver, "another connection took over the session").await;
                    return Ended::TakenOver;
                }
                _ = revoked.cancelled() => {
                    self.goodbye(Reason::NotAuthorized, "the device's attestation is no longer current").await;
                    return Ended::Revoked;
                }
                Some(first) = self.pending_acks.next(), if !self.pending_acks.is_empty() => {
                    // One store write usually completes several of this client's messages:
                    // their acknowledgements go out in one write, not one syscall each.
                    let mut ack = Some(first);
                    while let Some((qos2, id, result)) = ack {
                        // A PUBACK ends a QoS 1 exchange, and so does a PUBREC with an error
                        // code; a successful PUBREC keeps the QoS 2 message counted against the
                        // receive maximum until its PUBREL arrives (MQTT 5 §4.9).
                        if !qos2 || result != PubResult::Success {
                            self.unacked_inbound = self.unacked_inbound.saturating_sub(1);
                        }
                        let packet = if qos2 { self.wire.pubrec(id, result) } else { self.wire.puback(id, result) };
                        if self.framed.feed(packet).await.is_err() {
                            return Ended::Lost;
                        }
                        // Polled again with the task's waker at the top of the loop, so a
                        // completion after this check is not missed.
                        ack = self.pending_acks.next().now_or_never().flatten();
                    }
                    if self.framed.flush().await.is_err() {
                        return Ended::Lost;
                    }
                    continue;
                }
                _ = notify.notified() => None,
                frame = self.framed.next(), if may_read => Some(frame),
                _ = sleep_until(throttled), if throttled.is_some() => {
                    metrics::counter!("fabrik_mqtt_reads_throttled_total").increment(1);
                    continue;
                }
                _ = sleep_until(deadline) => {
                    self.goodbye(Reason::KeepAliveTimeout, "keepalive timeout").await;
                    return Ended::KeepAlive;
                }
            };
            if let Some(frame) = event {
                let packet = match frame {
                    None => return Ended::Lost,
                    Some(Err(e)) => {
                        let (reason, text) = match e {
                            rmqtt_codec::error::DecodeError::MaxSizeExceeded { .. } => (
                                Reason::PacketTooLarge,
                                "packet larger than the maximum packet size",
                            ),
                            _ => (Reason::MalformedPacket, "malformed packet"),
                        };
                        tracing::info!(client_id = %self.client_id, peer = %self.peer, error = %e, "MQTT packet rejected.");
                        self.goodbye(reason, text).await;
                        return Ended::Violation;
                    }
                    Some(Ok((packet, _))) => packet,
                };
                // More bytes already buffered behind this packet: the client sends bursts, so
                // it gets a larger read buffer (one read per burst instead of one per 256
                // bytes). A device that sends now and then keeps the small one.
                let buffered = self.framed.read_buffer();
                if !buffered.is_empty() && buffered.capacity() < BUSY_BUFFER {
                    self.framed.read_buffer_mut().reserve(BUSY_BUFFER);
                }
                self.last_received = Instant::now();
                let inbound = Inbound::from_packet(packet);
                if fresh_read && matches!(inbound, Inbound::Publish(_)) {
                    // Tokio runs the most recently woken task first (its LIFO slot), so of two
                    // connections whose packets arrived together the later one would be handled
                    // first: a PUBLISH could overtake another client's SUBSCRIBE sent just
                    // before it, and miss it. Yielding once per read lets connections woken
                    // together be handled closer to arrival order, at one extra poll per read.
                    tokio::task::yield_now().await;
                }
                // Only an acknowledgement of ours can open the in-flight window; anything
                // queued for this session rings `notify`. So a publishing device does not
                // take the broker's lock after every packet just to find nothing due.
                let opens_window = matches!(
                    inbound,
                    Inbound::PubAck(_) | Inbound::PubRec(_) | Inbound::PubComp(_)
                );
                match self.handle(inbound).await {
                    Ok(None) => {}
                    Ok(Some(ended)) => return ended,
                    Err(()) => return Ended::Lost,
                }
                if !opens_window {
                    continue;
                }
            }
            if self.flush_due().await.is_err() {
                return Ended::Lost;
            }
        }
    }

    /// Sends an MQTT 5 DISCONNECT with a reason (3.1.1 has none) before closing.
    async fn goodbye(&mut self, reason: Reason, text: &str) {
        if let Some(packet) = self.wire.disconnect(reason, text) {
            let _ = tokio::time::timeout(Duration::from_secs(1), self.framed.send(packet)).await;
        }
    }

    async fn write_outgoing(&mut self, out: Outgoing) -> Result<(), ()> {
        self.feed_outgoing(out).await?;
        self.framed.flush().await.map_err(|_| ())
    }

    /// Queues one outgoing packet. A PUBLISH larger than the client's Maximum Packet Size is
    /// dropped as if it had been delivered (MQTT 5 [MQTT-3.1.2-25]), not treated as a failed
    /// connection.
    async fn feed_outgoing(&mut self, out: Outgoing) -> Result<(), ()> {
        // `publish`: Some(packet id) for a PUBLISH (None inside for QoS 0), None for a PUBREL.
        let mut assigned_alias = None;
        let (packet, publish) = match out {
            Outgoing::Publish {
                packet_id,
                delivery,
                dup,
            } => {
                let alias = self.outgoing_alias(&delivery.message.topic);
                if let Some((_, AliasUse::Set)) = alias {
                    assigned_alias = Some(delivery.message.topic.clone());
                }
                (
                    self.wire.publish(packet_id, &delivery, dup, alias),
                    Some(packet_id),
                )
            }
            Outgoing::Release(id) => (self.wire.pubrel(id), None),
        };
        let fed = self.framed.feed(packet).await;
        if fed.is_err()
            && let Some(topic) = assigned_alias
        {
            // The client never learnt this alias.
            self.outgoing_aliases.remove(&topic);
        }
        match fed {
            Ok(()) => {
                if publish.is_some() {
                    self.shared.sent_counter.increment(1);
                }
                Ok(())
            }
            Err(rmqtt_codec::error::EncodeError::OverMaxPacketSize { size, max }) => {
                metrics::counter!("fabrik_mqtt_messages_dropped_total", "reason" => "client_max_packet_size")
                    .increment(1);
                tracing::debug!(client_id = %self.client_id, size, max, "Message larger than the client's maximum packet size dropped.");
                if let Some(Some(id)) = publish {
                    self.shared.broker.discard(&self.client_id, id);
                }
                Ok(())
            }
            Err(_) => Err(()),
        }
    }

    /// The server topic alias for a message to the client: the one this connection assigned to
    /// the topic earlier, or a new one while the client accepts more. Aliases live as long as
    /// the network connection (MQTT 5 §3.3.2.3.4), so a resumed session starts without any.
    fn outgoing_alias(&mut self, topic: &Arc<str>) -> Option<(u16, AliasUse)> {
        if self.outgoing_alias_max == 0 {
            return None;
        }
        if let Some(&alias) = self.outgoing_aliases.get(topic) {
            return Some((alias, AliasUse::Reuse));
        }
        let taken = self.outgoing_aliases.len();
        if taken >= usize::from(self.outgoing_alias_max) {
            return None;
        }
        // Aliases are handed out 1, 2, ... and only the newest is ever taken back (when the
        // PUBLISH that set it could not be sent), so those in use are always 1..=taken.
        let alias = u16::try_from(taken + 1).ok()?;
        self.outgoing_aliases.insert(topic.clone(), alias);
        Some((alias, AliasUse::Set))
    }

    /// Writes what the session has due, as far as the client's in-flight window allows.
    async fn flush_due(&mut self) -> Result<(), ()> {
        loop {
            let due = self
                .shared
                .broker
                .take_outgoing(&self.client_id, self.link.generation, 256);
            if due.is_empty() {
                return Ok(());
            }
            for out in due {
                self.feed_outgoing(out).await?;
            }
            self.framed.flush().await.map_err(|_| ())?;
        }
    }

    async fn violation(&mut self, reason: Reason, text: &str) -> Result<Option<Ended>, ()> {
        tracing::info!(client_id = %self.client_id, peer = %self.peer, reason = text, "MQTT client disconnected for a protocol violation or limit.");
        self.goodbye(reason, text).await;
        self.linger().await;
        Ok(Some(Ended::Violation))
    }

    /// After a DISCONNECT for a violation the client is usually still sending: closing at once
    /// would answer its data with a TCP reset, which can destroy the DISCONNECT before the
    /// client reads it. Half-close and discard what arrives, for at most a second.
    async fn linger(&mut self) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let io = self.framed.get_mut();
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = io.shutdown().await;
            let mut discard = [0u8; 4096];
            while let Ok(n) = io.read(&mut discard).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
    }

    async fn handle(&mut self, inbound: Inbound) -> Result<Option<Ended>, ()> {
        match inbound {
            Inbound::Publish(publish) => return self.on_publish(*publish).await,
            Inbound::PubAck(id) => {
                self.shared.broker.acked(&self.client_id, id);
            }
            Inbound::PubRec(id) => {
                let known = self.shared.broker.received(&self.client_id, id);
                if known || self.wire.0 == Version::V3 {
                    self.framed
                        .send(self.wire.pubrel(id))
                        .await
                        .map_err(|_| ())?;
                }
            }
            Inbound::PubComp(id) => {
                self.shared.broker.completed(&self.client_id, id);
            }
            Inbound::PubRel(id) => {
                let found = self.shared.broker.incoming_released(&self.client_id, id);
                if found {
                    // The QoS 2 exchange ends with our PUBCOMP: its receive-maximum slot is free.
                    self.unacked_inbound = self.unacked_inbound.saturating_sub(1);
                }
                self.framed
                    .send(self.wire.pubcomp(id, found))
                    .await
                    .map_err(|_| ())?;
            }
            Inbound::Subscribe {
                packet_id,
                id,
                filters,
            } => {
                let mut results = Vec::with_capacity(filters.len());
                let mut accepted = Vec::new();
                for request in &filters {
                    // A shared subscription is authorised by the filter proper.
                    let checked = match topic::split_shared(&request.filter) {
                        Ok(Some((_, inner))) => {
                            if request.no_local {
                                return self
                                    .violation(
                                        Reason::ProtocolError,
                                        "No Local set on a shared subscription",
                                    )
                                    .await;
                            }
                            Some(inner)
                        }
                        Ok(None) => topic::validate_filter(&request.filter)
                            .ok()
                            .map(|()| &*request.filter),
                        Err(_) => None,
                    };
                    let result = match checked {
                        None => SubResult::Invalid,
                        Some(filter) if !self.shared.acl.may_subscribe(&self.identity, filter) => {
                            metrics::counter!("fabrik_mqtt_subscribe_denied_total").increment(1);
                            tracing::info!(client_id = %self.client_id, filter = %request.filter, "MQTT subscribe denied by the ACLs.");
                            if self.shared.limits.subscribe_denied_unspecified {
                                SubResult::Refused
                            } else {
                                SubResult::NotAuthorized
                            }
                        }
                        Some(_) => {
                            accepted.push(request.clone());
                            SubResult::Granted(request.qos.min(2))
                        }
                    };
                    results.push(result);
                }
                // The subscriptions take effect before the SUBACK leaves, so a message
                // published once the client has its SUBACK is never missed. The retained
                // messages they bring are only queued here; the SUBACK is written first and
                // they follow when the queue is flushed after this packet.
                for request in accepted {
                    let options = super::subscriptions::SubOptions {
                        qos: request.qos.min(2),
                        no_local: request.no_local,
                        retain_as_published: request.retain_as_published,
                        id,
                    };
                    let handling = request.retain_handling;
                    self.shared.broker.subscribe(
                        &self.client_id,
                        &request.filter,
                        options,
                        |existed| handling == 0 || (handling == 1 && !existed),
                    );
                }
                self.framed
                    .send(self.wire.suback(packet_id, &results))
                    .await
                    .map_err(|_| ())?;
            }
            Inbound::Unsubscribe { packet_id, filters } => {
                let existed: Vec<bool> = filters
                    .iter()
                    .map(|f| self.shared.broker.unsubscribe(&self.client_id, f))
                    .collect();
                self.framed
                    .send(self.wire.unsuback(packet_id, &existed))
                    .await
                    .map_err(|_| ())?;
            }
            Inbound::Ping => {
                self.framed
                    .send(self.wire.pingresp())
                    .await
                    .map_err(|_| ())?;
            }
            Inbound::Disconnect {
                reason,
                session_expiry,
            } => {
                if let Some(secs) = session_expiry {
                    let expiry = match secs {
                        u32::MAX => Some(self.shared.limits.max_session_expiry),
                        s => Some(
                            Duration::from_secs(u64::from(s))
                                .min(self.shared.limits.max_session_expiry),
                        ),
                    };
                    self.shared
                        .broker
                        .set_expiry(&self.client_id, self.link.generation, expiry);
                }
                // Let acknowledgements already owed reach the client.
                while let Some((qos2, id, result)) = self.pending_acks.next().await {
                    let packet = if qos2 {
                        self.wire.pubrec(id, result)
                    } else {
                        self.wire.puback(id, result)
                    };
                    if self.framed.send(packet).await.is_err() {
                        break;
                    }
                }
                return Ok(Some(Ended::Disconnect {
                    send_will: reason == 0x04,
                }));
            }
            Inbound::Connect => {
                // [MQTT-3.1.0-2]: close the connection. No DISCONNECT: a client that sent a
                // second CONNECT is reading for a CONNACK, and Paho's test client reads from
                // two threads at that moment, which can tear a DISCONNECT apart (its reason
                // code 0x82 then reads as a continued length byte) and leave it spinning.
                tracing::info!(client_id = %self.client_id, peer = %self.peer, "MQTT client closed: second CONNECT on one connection.");
                self.linger().await;
                return Ok(Some(Ended::Violation));
            }
            Inbound::Unexpected(what) => {
                let text = format!("{what} is not a packet a client sends here");
                return self.violation(Reason::ProtocolError, &text).await;
            }
        }
        Ok(None)
    }

    async fn on_publish(&mut self, mut publish: Publish) -> Result<Option<Ended>, ()> {
        // Reading pauses while the bucket is empty (see `run`), so this publish has its
        // token; rounding may leave it a hair short, which is not worth a disconnection.
        if let Some(rate) = &mut self.rate {
            rate.take();
        }
        // MQTT 5 topic aliases: a publish may set one, or use one set earlier.
        if let Some(alias) = publish.properties.as_ref().and_then(|p| p.topic_alias) {
            let slot = usize::from(alias.get()) - 1;
            if slot >= self.topic_aliases.len() {
                return self
                    .violation(Reason::TopicAliasInvalid, "topic alias above the maximum")
                    .await;
            }
            if publish.topic.is_empty() {
                match &self.topic_aliases[slot] {
                    Some(t) => publish.topic = bytestring::ByteString::from(&**t),
                    None => {
                        return self
                            .violation(Reason::ProtocolError, "unknown topic alias")
                            .await;
                    }
                }
            } else {
                self.topic_aliases[slot] = Some(Arc::from(&*publish.topic));
            }
        }
        if let Err(e) = topic::validate_name(&publish.topic) {
            let text = format!("invalid topic name: {e}");
            return self.violation(Reason::TopicNameInvalid, &text).await;
        }
        let qos = publish.qos.value();
        let packet_id = publish.packet_id.map(|p| p.get());
        if qos > 0 {
            self.unacked_inbound += 1;
            // Reading pauses at the receive maximum while acknowledgements are due, so only a
            // client that keeps QoS 2 messages unreleased gets here. MQTT 3.1.1 has no
            // receive maximum to exceed.
            if self.wire.0 == Version::V5
                && self.unacked_inbound > usize::from(self.shared.limits.receive_maximum)
            {
                return self
                    .violation(
                        Reason::ReceiveMaximumExceeded,
                        "more unacknowledged QoS 1/2 messages than the receive maximum",
                    )
                    .await;
            }
        }
        self.shared.received_counter.increment(1);
        let id = packet_id.unwrap_or(0);
        if !self.shared.acl.may_publish(&self.identity, &publish.topic) {
            metrics::counter!("fabrik_mqtt_publish_denied_total").increment(1);
            tracing::info!(client_id = %self.client_id, topic = %publish.topic, "MQTT publish denied by the ACLs.");
            if qos > 0 {
                self.pending_acks.push_back(Box::pin(async move {
                    (qos == 2, id, PubResult::NotAuthorized)
                }));
            }
            return Ok(None);
        }
        // A QoS 2 re-send of a message not yet released must not be routed twice, nor
        // counted twice against the receive maximum.
        if qos == 2 && !self.shared.broker.incoming_qos2(&self.client_id, id) {
            self.unacked_inbound = self.unacked_inbound.saturating_sub(1);
            self.pending_acks
                .push_back(Box::pin(async move { (true, id, PubResult::Success) }));
            return Ok(None);
        }
        let topic: Arc<str> = Arc::from(&*publish.topic);
        let (done, stored) = if qos > 0 {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let received_at = fabrik_core::Timestamp::now();
        let trace = MessageTrace::start(
            message_trace::Arrival {
                source: super::SOURCE,
                topic: &topic,
                client_id: Some(&self.client_id),
                payload_bytes: publish.payload.len(),
            },
            publish
                .properties
                .as_ref()
                .and_then(|p| message_trace::traceparent(&p.user_properties)),
        );
        let inbound = IngestMessage {
            client_id: self.client_id.clone(),
            identity: self.identity.clone(),
            topic: topic.clone(),
            payload: publish.payload.clone(),
            qos,
            retain: publish.retain,
            received_at,
            done,
            trace,
        };
        let expires_at = publish
            .properties
            .as_ref()
            .and_then(|p| p.message_expiry_interval)
            .map(|s| Instant::now() + Duration::from_secs(u64::from(s.get())));
        self.shared.broker.publish(Message {
            topic,
            payload: publish.payload,
            qos,
            retain: publish.retain,
            properties: publish.properties,
            expires_at,
            publisher: Some(self.client_id.clone()),
        });
        // Backpressure: waits while the ingest queue is full.
        self.shared.hooks.ingest(inbound).await;
        if let Some(stored) = stored {
            self.pending_acks.push_back(Box::pin(async move {
                let result = match stored.await {
                    Ok(Ok(())) => PubResult::Success,
                    Ok(Err(_)) | Err(_) => PubResult::Failed,
                };
                (qos == 2, id, result)
            }));
        }
        Ok(None)
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}
