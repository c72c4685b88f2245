//! The broker core, free of I/O: sessions (subscriptions, queued and in-flight messages,
//! QoS 2 state), routing a publish to matching sessions, and retained messages. Connection
//! tasks attach to a session, take what is due for sending, and report acknowledgements; the
//! state survives their disconnects for as long as the session's expiry allows.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use bytestring::ByteString;
use parking_lot::Mutex;
/// A message's MQTT 5 properties (re-exported: in-process publishers set them too).
pub use rmqtt_codec::v5::PublishProperties;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::acl::ClientIdentity;
use super::persist::{
    self, BrokerSnapshot, SavedDelivery, SavedInflight, SavedMessage, SavedSession,
    SavedSubscription,
};
use super::subscriptions::{Availability, SubOptions, SubscriptionIndex};
use super::topic;

/// A message as the broker routes it.
#[derive(Debug, Clone)]
pub struct Message {
    /// Topic name.
    pub topic: Arc<str>,
    /// Payload bytes.
    pub payload: Bytes,
    /// QoS it was published with.
    pub qos: u8,
    /// Retain flag it was published with.
    pub retain: bool,
    /// MQTT 5 properties to forward (content type, user properties, response topic, ...).
    pub properties: Option<PublishProperties>,
    /// When it stops being deliverable (MQTT 5 message expiry).
    pub expires_at: Option<Instant>,
    /// The client that published it (for MQTT 5 `no_local`).
    pub publisher: Option<Arc<str>>,
}

/// One message due to one session.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The message.
    pub message: Arc<Message>,
    /// QoS of this delivery (the lower of publish and subscription QoS).
    pub qos: u8,
    /// Retain flag to send.
    pub retain: bool,
    /// MQTT 5 subscription identifiers of the matching subscriptions.
    pub subscription_ids: Vec<NonZeroU32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)] // the names read as the protocol's states
enum InflightState {
    /// QoS 1 sent, waiting for PUBACK.
    WaitAck,
    /// QoS 2 sent, waiting for PUBREC.
    WaitRec,
    /// PUBREL sent, waiting for PUBCOMP.
    WaitComp,
}

#[derive(Debug)]
struct Inflight {
    delivery: Delivery,
    state: InflightState,
}

/// Something a connection must write.
#[derive(Debug)]
pub enum Outgoing {
    /// A PUBLISH (`packet_id` is `None` for QoS 0).
    Publish {
        /// Packet identifier.
        packet_id: Option<u16>,
        /// What to send.
        delivery: Delivery,
        /// Set when re-sent after a reconnect.
        dup: bool,
    },
    /// A PUBREL for an in-flight QoS 2 message (re-sent after a reconnect).
    Release(u16),
}

/// The handle a connection holds on its session.
#[derive(Debug, Clone)]
pub struct Link {
    /// Distinguishes this connection from earlier ones of the same client id.
    pub generation: u64,
    /// Woken when messages are queued for the session.
    pub notify: Arc<Notify>,
    /// Cancelled when another connection takes the session over.
    pub kicked: CancellationToken,
    /// Cancelled when the device may no longer be connected (its attestation failed or
    /// expired).
    pub revoked: CancellationToken,
}

struct Session {
    identity: ClientIdentity,
    subscriptions: HashMap<String, SubOptions>,
    queue: VecDeque<Delivery>,
    inflight: BTreeMap<u16, Inflight>,
    incoming_qos2: HashSet<u16>,
    next_packet_id: u16,
    /// `None`: never expires; `Some(0)`: ends with the connection.
    expiry: Option<Duration>,
    link: Option<Link>,
    receive_max: u16,
    disconnected_at: Option<Instant>,
    /// Subscribe-deny ACL patterns (variables substituted): a message whose topic one of them
    /// matches is never delivered to this session, whatever filter it subscribed with.
    read_denies: Vec<String>,
}

impl Session {
    fn new(identity: ClientIdentity) -> Self {
        Self {
            identity,
            subscriptions: HashMap::new(),
            queue: VecDeque::new(),
            inflight: BTreeMap::new(),
            incoming_qos2: HashSet::new(),
            next_packet_id: 1,
            expiry: Some(Duration::ZERO),
            link: None,
            receive_max: 20,
            disconnected_at: None,
            read_denies: Vec::new(),
        }
    }

    /// True if the session is disconnected and its expiry interval has passed.
    fn has_expired(&self, now: Instant) -> bool {
        self.link.is_none()
            && match (self.expiry, self.disconnected_at) {
                (Some(e), Some(at)) => now.saturating_duration_since(at) >= e,
                _ => false,
            }
    }

    /// True if a subscribe-deny ACL pattern of this client matches the topic name.
    fn may_not_read(&self, topic_name: &str) -> bool {
        self.read_denies
            .iter()
            .any(|p| topic::matches(p, topic_name))
    }

    fn allocate_packet_id(&mut self) -> Option<u16> {
        for _ in 0..u16::MAX {
            let id = self.next_packet_id;
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            if !self.inflight.contains_key(&id) {
                return Some(id);
            }
        }
        None
    }
}

/// Limits of the broker core.
#[derive(Debug, Clone, Copy)]
pub struct BrokerLimits {
    /// Messages queued per session beyond the in-flight window; more are dropped and counted.
    pub max_queued_messages: usize,
    /// Retained messages kept; more are refused and counted.
    pub max_retained_messages: usize,
}

impl Default for BrokerLimits {
    fn default() -> Self {
        Self {
            max_queued_messages: 1000,
            max_retained_messages: 100_000,
        }
    }
}

#[derive(Default)]
struct State {
    sessions: HashMap<Arc<str>, Session>,
    index: SubscriptionIndex,
    retained: BTreeMap<Arc<str>, Arc<Message>>,
    next_generation: u64,
}

/// What attaching a connection to a session gave.
#[derive(Debug)]
pub struct Attached {
    /// The connection's handle.
    pub link: Link,
    /// True if an earlier session was resumed.
    pub session_present: bool,
}

/// Counts for `/metrics` and the API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BrokerStats {
    /// Sessions (connected or not).
    pub sessions: usize,
    /// Sessions with a live connection.
    pub connected: usize,
    /// Subscriptions.
    pub subscriptions: usize,
    /// Retained messages.
    pub retained: usize,
    /// Messages queued or in flight across sessions.
    pub queued: usize,
}

/// The broker core. Cheap to share; every method takes the lock briefly and never awaits.
pub struct Broker {
    state: Mutex<State>,
    limits: BrokerLimits,
    /// Bumped by every change a snapshot would see (see [`Broker::changes`]).
    changes: AtomicU64,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("stats", &self.stats())
            .finish()
    }
}

impl Broker {
    /// An empty broker.
    pub fn new(limits: BrokerLimits) -> Self {
        Self {
            state: Mutex::new(State::default()),
            limits,
            changes: AtomicU64::new(0),
        }
    }

    /// A counter that moves whenever retained messages or sessions change; a saver compares
    /// it with the value at its last snapshot.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }

    fn changed(&self) {
        self.changes.fetch_add(1, Ordering::Relaxed);
    }

    /// Attaches a new connection to the session of `client_id`, taking it over from an
    /// earlier connection (which is kicked). `clean_start` discards an existing session.
    /// `read_denies` are the client's subscribe-deny ACL patterns ([`super::Acl::read_denies`]).
    pub fn attach(
        &self,
        client_id: &Arc<str>,
        identity: ClientIdentity,
        clean_start: bool,
        expiry: Option<Duration>,
        receive_max: u16,
        read_denies: Vec<String>,
    ) -> Attached {
        self.changed();
        let mut state = self.state.lock();
        state.next_generation += 1;
        let generation = state.next_generation;
        if let Some(old) = state.sessions.get(client_id)
            && let Some(link) = &old.link
        {
            link.kicked.cancel();
        }
        // A session whose expiry passed while disconnected is gone, even if the sweeper has
        // not removed it yet (it runs every few seconds).
        let now = Instant::now();
        let resumable = !clean_start
            && state
                .sessions
                .get(client_id)
                .is_some_and(|s| s.identity.device_id == identity.device_id && !s.has_expired(now));
        if !resumable && let Some(old) = state.sessions.remove(client_id) {
            for filter in old.subscriptions.keys() {
                state.index.remove(filter, client_id);
            }
        }
        let session = state
            .sessions
            .entry(client_id.clone())
            .or_insert_with(|| Session::new(identity.clone()));
        session.identity = identity;
        session.read_denies = read_denies;
        session.expiry = expiry;
        session.receive_max = receive_max.max(1);
        session.disconnected_at = None;
        let link = Link {
            generation,
            notify: Arc::new(Notify::new()),
            kicked: CancellationToken::new(),
            revoked: CancellationToken::new(),
        };
        session.link = Some(link.clone());
        Attached {
            link,
            session_present: resumable,
        }
    }

    /// Ends every connection of device `device_id` (their sessions stay, to expire as any
    /// other's); returns how many there were.
    pub fn revoke_device(&self, device_id: &str) -> usize {
        let state = self.state.lock();
        let mut ended = 0;
        for session in state.sessions.values() {
            if session.identity.device_id.as_deref() == Some(device_id)
                && let Some(link) = &session.link
            {
                link.revoked.cancel();
                ended += 1;
            }
        }
        ended
    }

    /// The devices connected now (each once).
    pub fn connected_devices(&self) -> Vec<String> {
        let state = self.state.lock();
        let mut devices: Vec<String> = state
            .sessions
            .values()
            .filter(|s| s.link.is_some())
            .filter_map(|s| s.identity.device_id.clone())
            .collect();
        devices.sort_unstable();
        devices.dedup();
        devices
    }

    /// Detaches connection `generation` from its session. The session ends now if its expiry
    /// is zero; otherwise it waits for a reconnect. Returns true if the session lives on.
    pub fn detach(&self, client_id: &str, generation: u64) -> bool {
        self.changed();
        let mut state = self.state.lock();
        let State {
            sessions, index, ..
        } = &mut *state;
        let Some(session) = sessions.get_mut(client_id) else {
            return false;
        };
        if session.link.as_ref().map(|l| l.generation) != Some(generation) {
            // Taken over: the session belongs to the newer connection.
            return true;
        }
        session.link = None;
        if session.expiry == Some(Duration::ZERO) {
            if let Some((key, old)) = sessions.remove_entry(client_id) {
                for filter in old.subscriptions.keys() {
                    index.remove(filter, &key);
                }
            }
            return false;
        }
        session.disconnected_at = Some(Instant::now());
        // Messages go back to the queue; in-flight ones are re-sent on reconnect.
        true
    }

    /// True if `generation` is still the connection attached to `client_id` (used before a
    /// delayed will is published: a reconnect cancels it).
    pub fn is_gone(&self, client_id: &str, generation: u64) -> bool {
        let state = self.state.lock();
        match state.sessions.get(client_id) {
            None => true,
            Some(s) => match &s.link {
                None => true,
                Some(l) => l.generation == generation,
            },
        }
    }

    /// The expiry interval of the session of `client_id` (`None`: it never expires, or there
    /// is no session).
    pub fn session_expiry(&self, client_id: &str) -> Option<Duration> {
        self.state
            .lock()
            .sessions
            .get(client_id)
            .and_then(|s| s.expiry)
    }

    /// Changes the expiry of a session (MQTT 5 DISCONNECT may do so).
    pub fn set_expiry(&self, client_id: &str, generation: u64, expiry: Option<Duration>) {
        self.changed();
        let mut state = self.state.lock();
        if let Some(s) = state.sessions.get_mut(client_id)
            && s.link.as_ref().map(|l| l.generation) == Some(generation)
        {
            s.expiry = expiry;
        }
    }

    /// Routes a message to every matching session and updates the retained store. Returns the
    /// number of sessions it was queued for.
    pub fn publish(&self, message: Message) -> usize {
        let message = Arc::new(message);
        if message.retain || message.qos > 0 {
            self.changed();
        }
        let mut state = self.state.lock();
        if message.retain {
            if message.payload.is_empty() {
                state.retained.remove(&message.topic);
            } else if state.retained.len() < self.limits.max_retained_messages
                || state.retained.contains_key(&message.topic)
            {
                state
                    .retained
                    .insert(message.topic.clone(), message.clone());
            } else {
                metrics::counter!("fabrik_mqtt_messages_dropped_total", "reason" => "retained_limit")
                    .increment(1);
            }
        }
        // One delivery per session: the highest QoS of its matching subscriptions.
        let mut targets: HashMap<Arc<str>, (SubOptions, Vec<NonZeroU32>)> = HashMap::new();
        let mut add = |client: &Arc<str>, options: &SubOptions| {
            let entry = targets
                .entry(client.clone())
                .or_insert((*options, Vec::new()));
            if options.qos > entry.0.qos {
                entry.0.qos = options.qos;
            }
            entry.0.retain_as_published |= options.retain_as_published;
            if let Some(id) = options.id {
                entry.1.push(id);
            }
        };
        let State {
            sessions, index, ..
        } = &mut *state;
        index.for_each_match(&message.topic, |client, options| {
            if !(options.no_local && message.publisher.as_deref() == Some(&**client)) {
                add(client, options);
            }
        });
        index.pick_shared(
            &message.topic,
            |client| match sessions.get(client) {
                Some(s) if !s.may_not_read(&message.topic) => {
                    if s.link.is_some() {
                        Availability::Connected
                    } else {
                        Availability::Offline
                    }
                }
                _ => Availability::Unavailable,
            },
            &mut add,
        );
        let mut delivered = 0;
        for (client, (options, ids)) in targets {
            let delivery = Delivery {
                message: message.clone(),
                qos: message.qos.min(options.qos),
                retain: options.retain_as_published && message.retain,
                subscription_ids: ids,
            };
            if let Some(session) = state.sessions.get_mut(&client)
                && !session.may_not_read(&message.topic)
                && enqueue(session, delivery, self.limits.max_queued_messages)
            {
                delivered += 1;
            }
        }
        delivered
    }

    /// Routes a message to one session only (a command for one client), if that session is
    /// subscribed to its topic and may read it; whether it was queued (not for a QoS 0 message
    /// while the session is offline, or with its queue full). Not retained.
    pub fn publish_to(&self, client_id: &str, message: Message) -> bool {
        let message = Arc::new(message);
        let mut state = self.state.lock();
        let State {
            sessions, index, ..
        } = &mut *state;
        let mut matched: Option<(u8, Vec<NonZeroU32>)> = None;
        index.for_each_match(&message.topic, |client, options| {
            if &**client == client_id {
                let (qos, ids) = matched.get_or_insert((0, Vec::new()));
                *qos = (*qos).max(options.qos);
                ids.extend(options.id);
            }
        });
        let Some((qos, ids)) = matched else {
            return false;
        };
        match sessions.get_mut(client_id) {
            Some(session) if !session.may_not_read(&message.topic) => {
                let delivery = Delivery {
                    qos: message.qos.min(qos),
                    message,
                    retain: false,
                    subscription_ids: ids,
                };
                enqueue(session, delivery, self.limits.max_queued_messages)
            }
            _ => false,
        }
    }

    /// Adds (or replaces) a subscription and returns the retained messages to send for it,
    /// already queued. `send_retained` decides whether they are (MQTT 5 retain handling).
    pub fn subscribe(
        &self,
        client_id: &Arc<str>,
        filter: &str,
        options: SubOptions,
        send_retained: impl FnOnce(bool) -> bool,
    ) -> bool {
        self.changed();
        let mut state = self.state.lock();
        let State {
            sessions,
            index,
            retained,
            ..
        } = &mut *state;
        let Some(session) = sessions.get_mut(client_id) else {
            return false;
        };
        let existed = session
            .subscriptions
            .insert(filter.to_owned(), options)
            .is_some();
        index.insert(filter, client_id, options);
        // Retained messages are not sent for shared subscriptions (MQTT 5 §4.8.2).
        let shared = matches!(topic::split_shared(filter), Ok(Some(_)));
        if !shared && send_retained(existed) {
            for message in retained.values() {
                if topic::matches(filter, &message.topic) && !session.may_not_read(&message.topic) {
                    let delivery = Delivery {
                        message: message.clone(),
                        qos: message.qos.min(options.qos),
                        retain: true,
                        subscription_ids: options.id.into_iter().collect(),
                    };
                    let _ = enqueue(session, delivery, self.limits.max_queued_messages);
                }
            }
        }
        existed
    }

    /// Removes a subscription; true if it existed.
    pub fn unsubscribe(&self, client_id: &str, filter: &str) -> bool {
        self.changed();
        let mut state = self.state.lock();
        let State {
            sessions, index, ..
        } = &mut *state;
        let Some(session) = sessions.get_mut(client_id) else {
            return false;
        };
        if session.subscriptions.remove(filter).is_some() {
            index.remove(filter, client_id);
            true
        } else {
            false
        }
    }

    /// In-flight messages to send again after a reconnect (PUBLISH with DUP, or PUBREL).
    pub fn resend_inflight(&self, client_id: &str, generation: u64) -> Vec<Outgoing> {
        let state = self.state.lock();
        let Some(session) = state.sessions.get(client_id) else {
            return Vec::new();
        };
        if session.link.as_ref().map(|l| l.generation) != Some(generation) {
            return Vec::new();
        }
        session
            .inflight
            .iter()
            .map(|(&id, f)| match f.state {
                InflightState::WaitComp => Outgoing::Release(id),
                _ => Outgoing::Publish {
                    packet_id: Some(id),
                    delivery: f.delivery.clone(),
                    dup: true,
                },
            })
            .collect()
    }

    /// Takes queued messages as far as the in-flight window allows, assigning packet ids.
    pub fn take_outgoing(&self, client_id: &str, generation: u64, max: usize) -> Vec<Outgoing> {
        self.changed();
        let mut state = self.state.lock();
        let Some(session) = state.sessions.get_mut(client_id) else {
            return Vec::new();
        };
        if session.link.as_ref().map(|l| l.generation) != Some(generation) {
            return Vec::new();
        }
        let now = Instant::now();
        let mut out = Vec::new();
        while out.len() < max {
            if session.inflight.len() >= usize::from(session.receive_max)
                && session.queue.front().is_some_and(|d| d.qos > 0)
            {
                break;
            }
            let Some(delivery) = session.queue.pop_front() else {
                break;
            };
            if delivery.message.expires_at.is_some_and(|t| t <= now) {
                metrics::counter!("fabrik_mqtt_messages_dropped_total", "reason" => "expired")
                    .increment(1);
                continue;
            }
            if delivery.qos == 0 {
                out.push(Outgoing::Publish {
                    packet_id: None,
                    delivery,
                    dup: false,
                });
                continue;
            }
            let Some(id) = session.allocate_packet_id() else {
                session.queue.push_front(delivery);
                break;
            };
            let state = if delivery.qos == 1 {
                InflightState::WaitAck
            } else {
                InflightState::WaitRec
            };
            session.inflight.insert(
                id,
                Inflight {
                    delivery: delivery.clone(),
                    state,
                },
            );
            out.push(Outgoing::Publish {
                packet_id: Some(id),
                delivery,
                dup: false,
            });
        }
        out
    }

    /// An in-flight message that could not be sent because it exceeds the client's Maximum
    /// Packet Size: it is done, as if delivered (MQTT 5 [MQTT-3.1.2-25]). True if it was in
    /// flight.
    pub fn discard(&self, client_id: &str, packet_id: u16) -> bool {
        let mut state = self.state.lock();
        state
            .sessions
            .get_mut(client_id)
            .is_some_and(|s| s.inflight.remove(&packet_id).is_some())
    }

    /// PUBACK from the client: the QoS 1 message is done. True if it was in flight.
    pub fn acked(&self, client_id: &str, packet_id: u16) -> bool {
        self.finish(client_id, packet_id, InflightState::WaitAck)
    }

    /// PUBCOMP from the client: the QoS 2 message is done.
    pub fn completed(&self, client_id: &str, packet_id: u16) -> bool {
        self.finish(client_id, packet_id, InflightState::WaitComp)
    }

    fn finish(&self, client_id: &str, packet_id: u16, expected: InflightState) -> bool {
        self.changed();
        let mut state = self.state.lock();
        let Some(session) = state.sessions.get_mut(client_id) else {
            return false;
        };
        match session.inflight.get(&packet_id) {
            Some(f) if f.state == expected => {
                session.inflight.remove(&packet_id);
                true
            }
            _ => false,
        }
    }

    /// PUBREC from the client: the QoS 2 message moves to "PUBREL sent". True if it was
    /// waiting for that.
    pub fn received(&self, client_id: &str, packet_id: u16) -> bool {
        self.changed();
        let mut state = self.state.lock();
        let Some(session) = state.sessions.get_mut(client_id) else {
            return false;
        };
        match session.inflight.get_mut(&packet_id) {
            Some(f) if matches!(f.state, InflightState::WaitRec | InflightState::WaitComp) => {
                f.state = InflightState::WaitComp;
                true
            }
            _ => false,
        }
    }

    /// A QoS 2 PUBLISH arrived from the client: true if it is new (route it), false if it is
    /// a re-send of one not yet released (do not route it twice).
    pub fn incoming_qos2(&self, client_id: &str, packet_id: u16) -> bool {
        let mut state = self.state.lock();
        state
            .sessions
            .get_mut(client_id)
            .is_some_and(|s| s.incoming_qos2.insert(packet_id))
    }

    /// PUBREL from the client; true if the packet id was pending.
    pub fn incoming_released(&self, client_id: &str, packet_id: u16) -> bool {
        let mut state = self.state.lock();
        state
            .sessions
            .get_mut(client_id)
            .is_some_and(|s| s.incoming_qos2.remove(&packet_id))
    }

    /// Ends sessions whose expiry has passed since their connection went away. Returns how
    /// many ended.
    pub fn expire_sessions(&self, now: Instant) -> usize {
        let mut state = self.state.lock();
        let State {
            sessions, index, ..
        } = &mut *state;
        let expired: Vec<Arc<str>> = sessions
            .iter()
            .filter(|(_, s)| s.has_expired(now))
            .map(|(k, _)| k.clone())
            .collect();
        for key in &expired {
            if let Some(old) = sessions.remove(key) {
                for filter in old.subscriptions.keys() {
                    index.remove(filter, key);
                }
            }
        }
        if !expired.is_empty() {
            self.changed();
        }
        expired.len()
    }

    /// Current counts.
    pub fn stats(&self) -> BrokerStats {
        let state = self.state.lock();
        BrokerStats {
            sessions: state.sessions.len(),
            connected: state.sessions.values().filter(|s| s.link.is_some()).count(),
            subscriptions: state.index.len(),
            retained: state.retained.len(),
            queued: state
                .sessions
                .values()
                .map(|s| s.queue.len() + s.inflight.len())
                .sum(),
        }
    }

    /// The retained messages and every session that outlives its connection, for
    /// [`persist::save`]. Only cheap clones (`Arc`s) happen under the lock; encoding happens
    /// after it is released, so routing is not held up by a large snapshot.
    pub fn snapshot(&self) -> BrokerSnapshot {
        struct Copied {
            client_id: String,
            identity: ClientIdentity,
            expiry: Option<Duration>,
            receive_max: u16,
            read_denies: Vec<String>,
            subscriptions: Vec<(String, SubOptions)>,
            queue: Vec<Delivery>,
            inflight: Vec<(u16, Delivery, InflightState)>,
            next_packet_id: u16,
        }
        let now = Instant::now();
        let (retained, copied) = {
            let state = self.state.lock();
            let retained: Vec<Arc<Message>> = state
                .retained
                .values()
                .filter(|m| m.expires_at.is_none_or(|t| t > now))
                .cloned()
                .collect();
            let copied: Vec<Copied> = state
                .sessions
                .iter()
                .filter(|(_, s)| s.expiry != Some(Duration::ZERO) && !s.has_expired(now))
                .map(|(id, s)| Copied {
                    client_id: id.to_string(),
                    identity: s.identity.clone(),
                    expiry: s.expiry,
                    receive_max: s.receive_max,
                    read_denies: s.read_denies.clone(),
                    subscriptions: s
                        .subscriptions
                        .iter()
                        .map(|(f, o)| (f.clone(), *o))
                        .collect(),
                    // QoS 0 messages are not kept for offline sessions.
                    queue: s.queue.iter().filter(|d| d.qos > 0).cloned().collect(),
                    inflight: s
                        .inflight
                        .iter()
                        .map(|(&id, f)| (id, f.delivery.clone(), f.state))
                        .collect(),
                    next_packet_id: s.next_packet_id,
                })
                .collect();
            (retained, copied)
        };
        let mut sessions: Vec<SavedSession> = copied
            .into_iter()
            .map(|c| {
                let mut subscriptions: Vec<SavedSubscription> = c
                    .subscriptions
                    .into_iter()
                    .map(|(filter, o)| SavedSubscription {
                        filter,
                        qos: o.qos,
                        no_local: o.no_local,
                        retain_as_published: o.retain_as_published,
                        id: o.id.map(NonZeroU32::get),
                    })
                    .collect();
                // Stable order: the same state gives the same file.
                subscriptions.sort_by(|a, b| a.filter.cmp(&b.filter));
                SavedSession {
                    client_id: c.client_id,
                    username: c.identity.username,
                    device_id: c.identity.device_id,
                    sparkplug: c.identity.sparkplug,
                    unrestricted: c.identity.unrestricted,
                    expiry_secs: c.expiry.map(|e| e.as_secs()),
                    receive_max: c.receive_max,
                    read_denies: c.read_denies,
                    subscriptions,
                    queue: c.queue.iter().map(|d| save_delivery(d, now)).collect(),
                    inflight: c
                        .inflight
                        .iter()
                        .map(|(packet_id, d, state)| SavedInflight {
                            packet_id: *packet_id,
                            delivery: save_delivery(d, now),
                            state: match state {
                                InflightState::WaitAck => "ack",
                                InflightState::WaitRec => "rec",
                                InflightState::WaitComp => "comp",
                            }
                            .to_owned(),
                        })
                        .collect(),
                    next_packet_id: c.next_packet_id,
                }
            })
            .collect();
        sessions.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        let mut retained: Vec<SavedMessage> =
            retained.iter().map(|m| save_message(m, now)).collect();
        retained.sort_by(|a, b| a.topic.cmp(&b.topic));
        BrokerSnapshot {
            format: persist::FORMAT,
            retained,
            sessions,
        }
    }

    /// Restores a snapshot into an empty broker: retained messages, and sessions waiting for
    /// their clients (their expiry counts from now). Returns (retained, sessions) restored.
    pub fn restore(&self, snapshot: BrokerSnapshot) -> Result<(usize, usize), String> {
        let now = Instant::now();
        let mut state = self.state.lock();
        let retained = snapshot.retained.len();
        for m in snapshot.retained {
            let m = restore_message(m, now)?;
            state.retained.insert(m.topic.clone(), Arc::new(m));
        }
        let sessions = snapshot.sessions.len();
        for saved in snapshot.sessions {
            let client_id: Arc<str> = Arc::from(saved.client_id.as_str());
            let mut session = Session::new(ClientIdentity {
                client_id: saved.client_id.clone(),
                username: saved.username,
                device_id: saved.device_id,
                sparkplug: saved.sparkplug,
                unrestricted: saved.unrestricted,
            });
            session.expiry = saved.expiry_secs.map(Duration::from_secs);
            session.receive_max = saved.receive_max.max(1);
            session.read_denies = saved.read_denies;
            session.disconnected_at = Some(now);
            session.next_packet_id = saved.next_packet_id.max(1);
            for sub in saved.subscriptions {
                let options = SubOptions {
                    qos: sub.qos.min(2),
                    no_local: sub.no_local,
                    retain_as_published: sub.retain_as_published,
                    id: sub.id.and_then(NonZeroU32::new),
                };
                state.index.insert(&sub.filter, &client_id, options);
                session.subscriptions.insert(sub.filter, options);
            }
            for d in saved.queue {
                session.queue.push_back(restore_delivery(d, now)?);
            }
            for f in saved.inflight {
                let state = match f.state.as_str() {
                    "ack" => InflightState::WaitAck,
                    "rec" => InflightState::WaitRec,
                    "comp" => InflightState::WaitComp,
                    other => return Err(format!("unknown in-flight state `{other}`")),
                };
                session.inflight.insert(
                    f.packet_id,
                    Inflight {
                        delivery: restore_delivery(f.delivery, now)?,
                        state,
                    },
                );
            }
            state.sessions.insert(client_id, session);
        }
        Ok((retained, sessions))
    }
}

fn save_message(m: &Message, now: Instant) -> SavedMessage {
    let p = m.properties.as_ref();
    SavedMessage {
        topic: m.topic.to_string(),
        payload: persist::encode_bytes(&m.payload),
        qos: m.qos,
        retain: m.retain,
        expires_in_ms: m.expires_at.map(|t| {
            u64::try_from(t.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX)
        }),
        content_type: p
            .and_then(|p| p.content_type.as_ref())
            .map(|s| s.to_string()),
        response_topic: p
            .and_then(|p| p.response_topic.as_ref())
            .map(|s| s.to_string()),
        correlation_data: p
            .and_then(|p| p.correlation_data.as_ref())
            .map(|b| persist::encode_bytes(b)),
        user_properties: p
            .map(|p| {
                p.user_properties
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            })
            .unwrap_or_default(),
        utf8_payload: p.is_some_and(|p| p.is_utf8_payload),
        publisher: m.publisher.as_ref().map(|s| s.to_string()),
    }
}

fn restore_message(m: SavedMessage, now: Instant) -> Result<Message, String> {
    let has_properties = m.content_type.is_some()
        || m.response_topic.is_some()
        || m.correlation_data.is_some()
        || !m.user_properties.is_empty()
        || m.utf8_payload;
    let properties = if has_properties {
        Some(PublishProperties {
            content_type: m.content_type.map(ByteString::from),
            response_topic: m.response_topic.map(ByteString::from),
            correlation_data: m
                .correlation_data
                .map(|c| persist::decode_bytes(&c).map(Bytes::from))
                .transpose()?,
            user_properties: m
                .user_properties
                .into_iter()
                .map(|(k, v)| (ByteString::from(k), ByteString::from(v)))
                .collect(),
            is_utf8_payload: m.utf8_payload,
            ..PublishProperties::default()
        })
    } else {
        None
    };
    Ok(Message {
        topic: Arc::from(m.topic.as_str()),
        payload: Bytes::from(persist::decode_bytes(&m.payload)?),
        qos: m.qos.min(2),
        retain: m.retain,
        properties,
        expires_at: m.expires_in_ms.map(|ms| now + Duration::from_millis(ms)),
        publisher: m.publisher.map(|p| Arc::from(p.as_str())),
    })
}

fn save_delivery(d: &Delivery, now: Instant) -> SavedDelivery {
    SavedDelivery {
        message: save_message(&d.message, now),
        qos: d.qos,
        retain: d.retain,
        subscription_ids: d.subscription_ids.iter().map(|i| i.get()).collect(),
    }
}

fn restore_delivery(d: SavedDelivery, now: Instant) -> Result<Delivery, String> {
    Ok(Delivery {
        message: Arc::new(restore_message(d.message, now)?),
        qos: d.qos.min(2),
        retain: d.retain,
        subscription_ids: d
            .subscription_ids
            .into_iter()
            .filter_map(NonZeroU32::new)
            .collect(),
    })
}

/// Queues `delivery` for `session`; false when it is not kept (QoS 0 for an offline session,
/// or a full queue).
fn enqueue(session: &mut Session, delivery: Delivery, max_queued: usize) -> bool {
    // QoS 0 messages are not kept for offline sessions.
    if session.link.is_none() && delivery.qos == 0 {
        return false;
    }
    if session.queue.len() >= max_queued {
        metrics::counter!("fabrik_mqtt_messages_dropped_total", "reason" => "queue_full")
            .increment(1);
        return false;
    }
    session.queue.push_back(delivery);
    if let Some(link) = &session.link {
        link.notify.notify_one();
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    fn msg(topic: &str, qos: u8, retain: bool, payload: &str) -> Message {
        Message {
            topic: id(topic),
            payload: Bytes::from(payload.to_owned()),
            qos,
            retain,
            properties: None,
            expires_at: None,
            publisher: None,
        }
    }

    fn sub(qos: u8) -> SubOptions {
        SubOptions {
            qos,
            no_local: false,
            retain_as_published: false,
            id: None,
        }
    }

    fn payloads(out: &[Outgoing]) -> Vec<(Option<u16>, u8, String)> {
        out.iter()
            .filter_map(|o| match o {
                Outgoing::Publish {
                    packet_id,
                    delivery,
                    ..
                } => Some((
                    *packet_id,
                    delivery.qos,
                    String::from_utf8_lossy(&delivery.message.payload).into_owned(),
                )),
                Outgoing::Release(_) => None,
            })
            .collect()
    }

    #[test]
    fn one_delivery_per_session_at_the_highest_matching_qos() {
        let broker = Broker::new(BrokerLimits::default());
        let a = id("a");
        let att = broker.attach(
            &a,
            ClientIdentity::default(),
            true,
            Some(Duration::ZERO),
            10,
            Vec::new(),
        );
        broker.subscribe(&a, "x/#", sub(1), |_| true);
        broker.subscribe(&a, "x/+", sub(2), |_| true);
        assert_eq!(broker.publish(msg("x/y", 2, false, "p")), 1);
        let out = broker.take_outgoing(&a, att.link.generation, 10);
        assert_eq!(payloads(&out), vec![(Some(1), 2, "p".into())]);
    }

    #[test]
    fn a_shared_group_prefers_connected_members_and_survives_a_snapshot() {
        let broker = Broker::new(BrokerLimits::default());
        let (a, b) = (id("a"), id("b"));
        let keep = Some(Duration::from_secs(3600));
        let att_a = broker.attach(&a, ClientIdentity::default(), true, keep, 10, Vec::new());
        let att_b = broker.attach(&b, ClientIdentity::default(), true, keep, 10, Vec::new());
        broker.publish(msg("jobs/old", 1, true, "retained"));
        for c in [&a, &b] {
            broker.subscribe(c, "$share/workers/jobs/+", sub(1), |_| true);
        }
        assert!(
            broker
                .take_outgoing(&a, att_a.link.generation, 10)
                .is_empty(),
            "no retained message for a shared subscription"
        );
        for i in 0..4 {
            assert_eq!(broker.publish(msg(&format!("jobs/{i}"), 1, false, "j")), 1);
        }
        let to_a = broker.take_outgoing(&a, att_a.link.generation, 10).len();
        let to_b = broker.take_outgoing(&b, att_b.link.generation, 10).len();
        assert_eq!((to_a, to_b), (2, 2), "round robin");
        // With `b` offline, everything goes to the connected `a`.
        broker.detach(&b, att_b.link.generation);
        for i in 0..3 {
            broker.publish(msg(&format!("jobs/{i}"), 1, false, "j"));
        }
        assert_eq!(broker.take_outgoing(&a, att_a.link.generation, 10).len(), 3);
        // Alone in the group and offline, `b` still queues what it is handed.
        assert!(broker.unsubscribe(&a, "$share/workers/jobs/+"));
        broker.publish(msg("jobs/9", 1, false, "for-b"));
        let restored = Broker::new(BrokerLimits::default());
        restored.restore(broker.snapshot()).unwrap();
        let att_b = restored.attach(&b, ClientIdentity::default(), false, keep, 10, Vec::new());
        let out = restored.take_outgoing(&b, att_b.link.generation, 10);
        // (Packet id 3: the two handed to `b` earlier are still unacknowledged.)
        assert_eq!(payloads(&out), vec![(Some(3), 1, "for-b".into())]);
        restored.publish(msg("jobs/10", 0, false, "again"));
        let out = restored.take_outgoing(&b, att_b.link.generation, 10);
        assert_eq!(
            payloads(&out),
            vec![(None, 0, "again".into())],
            "restored shared subscription routes"
        );
    }

    #[test]
    fn a_snapshot_restores_retained_messages_sessions_queues_and_in_flight() {
        let broker = Broker::new(BrokerLimits::default());
        let a = id("a");
        let who = ClientIdentity {
            client_id: "a".into(),
            username: "pump-1".into(),
            device_id: Some("pump-1".into()),
            sparkplug: None,
            unrestricted: false,
        };
        let att = broker.attach(
            &a,
            who.clone(),
            true,
            Some(Duration::from_secs(3600)),
            10,
            vec!["secret/#".into()],
        );
        let b = id("b");
        broker.attach(
            &b,
            ClientIdentity::default(),
            true,
            Some(Duration::ZERO),
            10,
            Vec::new(),
        );
        broker.subscribe(&b, "t", sub(1), |_| true);
        broker.subscribe(&a, "t", sub(1), |_| true);
        broker.subscribe(&a, "u/+", sub(2), |_| true);
        let before = broker.changes();
        let mut with_props = msg("t", 1, true, "retained");
        with_props.properties = Some(PublishProperties {
            content_type: Some("application/json".into()),
            user_properties: vec![("site".into(), "north".into())],
            ..PublishProperties::default()
        });
        broker.publish(with_props);
        assert!(broker.changes() > before, "a retained publish is a change");
        let out = broker.take_outgoing(&a, att.link.generation, 10);
        assert_eq!(out.len(), 1, "one in flight");
        broker.detach(&a, att.link.generation);
        broker.publish(msg("u/1", 2, false, "queued"));
        let snapshot = broker.snapshot();
        // `b` ends with its connection: not saved.
        assert_eq!(snapshot.sessions.len(), 1);
        let text = serde_json::to_string(&snapshot).unwrap();

        let restored = Broker::new(BrokerLimits::default());
        let counts = restored
            .restore(serde_json::from_str(&text).unwrap())
            .unwrap();
        assert_eq!(counts, (1, 1));
        assert_eq!(restored.snapshot(), snapshot);
        let att = restored.attach(
            &a,
            who,
            false,
            Some(Duration::from_secs(3600)),
            10,
            Vec::new(),
        );
        assert!(att.session_present, "the device resumes its session");
        let again = restored.resend_inflight(&a, att.link.generation);
        assert!(matches!(&again[..], [Outgoing::Publish { dup: true, .. }]));
        let queued = restored.take_outgoing(&a, att.link.generation, 10);
        assert_eq!(payloads(&queued), vec![(Some(2), 2, "queued".into())]);
        // A new subscriber gets the retained message with its properties.
        let c = id("c");
        let att_c = restored.attach(
            &c,
            ClientIdentity::default(),
            true,
            Some(Duration::ZERO),
            10,
            Vec::new(),
        );
        restored.subscribe(&c, "t", sub(1), |_| true);
        let out = restored.take_outgoing(&c, att_c.link.generation, 10);
        let Outgoing::Publish { delivery, .. } = &out[0] else {
            panic!("{out:?}")
        };
        let props = delivery.message.properties.as_ref().unwrap();
        assert_eq!(props.content_type.as_deref(), Some("application/json"));
        assert_eq!(props.user_properties[0].1, "north");
    }

    #[test]
    fn a_persistent_session_keeps_qos1_for_later_and_resends_in_flight() {
        let broker = Broker::new(BrokerLimits::default());
        let a = id("a");
        let att = broker.attach(&a, ClientIdentity::default(), true, None, 10, Vec::new());
        broker.subscribe(&a, "t", sub(2), |_| true);
        broker.publish(msg("t", 1, false, "sent"));
        let out = broker.take_outgoing(&a, att.link.generation, 10);
        assert_eq!(out.len(), 1);
        assert!(broker.detach(&a, att.link.generation), "session lives on");
        broker.publish(msg("t", 0, false, "qos0-dropped-offline"));
        broker.publish(msg("t", 1, false, "queued"));
        let att2 = broker.attach(&a, ClientIdentity::default(), false, None, 10, Vec::new());
        assert!(att2.session_present);
        let again = broker.resend_inflight(&a, att2.link.generation);
        assert!(matches!(
            &again[..],
            [Outgoing::Publish {
                dup: true,
                packet_id: Some(1),
                ..
            }]
        ));
        let next = broker.take_outgoing(&a, att2.link.generation, 10);
        assert_eq!(payloads(&next), vec![(Some(2), 1, "queued".into())]);
        assert!(broker.acked(&a, 1));
        assert!(!broker.acked(&a, 1), "a second PUBACK is ignored");
    }

    #[test]
    fn a_qos_0_message_counts_only_connected_sessions() {
        // A Sparkplug command (QoS 0) for an edge node whose persistent session is offline is
        // not kept: the count says nobody got it, so its writer can say nothing was sent.
        let broker = Broker::new(BrokerLimits::default());
        let a = id("a");
        let att = broker.attach(
            &a,
            ClientIdentity::default(),
            false,
            Some(Duration::from_secs(3600)),
            10,
            Vec::new(),
        );
        broker.subscribe(&a, "cmd/#", sub(1), |_| true);
        assert_eq!(broker.publish(msg("cmd/x", 0, false, "online")), 1);
        broker.detach(&a, att.link.generation);
        assert_eq!(broker.publish(msg("cmd/x", 0, false, "offline")), 0);
        // QoS 1 is kept for the offline session, and counted.
        assert_eq!(broker.publish(msg("cmd/x", 1, false, "kept")), 1);
    }

    #[test]
    fn a_message_for_one_client_reaches_only_that_subscriber() {
        let broker = Broker::new(BrokerLimits::default());
        let (node, monitor) = (id("node"), id("monitor"));
        let attach = |c: &Arc<str>| {
            broker.attach(
                c,
                ClientIdentity::default(),
                true,
                Some(Duration::ZERO),
                10,
                Vec::new(),
            )
        };
        let (node_att, monitor_att) = (attach(&node), attach(&monitor));
        broker.subscribe(&monitor, "spBv1.0/#", sub(0), |_| true);
        // Not subscribed yet: nothing queued, though another client listens.
        assert!(!broker.publish_to("node", msg("spBv1.0/g/NCMD/n", 0, false, "a")));
        broker.subscribe(&node, "spBv1.0/g/NCMD/n", sub(1), |_| true);
        assert!(broker.publish_to("node", msg("spBv1.0/g/NCMD/n", 0, false, "b")));
        assert!(!broker.publish_to("other", msg("spBv1.0/g/NCMD/n", 0, false, "c")));
        let out = broker.take_outgoing(&node, node_att.link.generation, 10);
        assert_eq!(payloads(&out), vec![(None, 0, "b".into())]);
        let out = broker.take_outgoing(&monitor, monitor_att.link.generation, 10);
        assert!(payloads(&out).is_empty(), "{:?}", payloads(&out));
    }

    #[test]
    fn clean_start_discards_the_session_and_its_subscriptions() {
        let broker = Broker::new(BrokerLimits::default());
        let a = id("a");
        let att = broker.attach(&a, ClientIdentity::default(), true, None, 10, Vec::new());
        broker.subscribe(&a, "t", sub(1), |_| true);
        broker.detach(&a, att.link.generation);
        let att2 = broker.attach(
            &a,
            ClientIdentity::default(),
            true,
            Some(Duration::ZERO),
            10,
            Vec::new(),
        );
        assert!(!att2.session_present);
        assert_eq!(broker.publish(msg("t", 1, false, "x")), 0);
        assert_eq!(broker.stats().subscriptions, 0);
    }

    #[test]
    fn takeover_kicks_the_old_connection() {
        let broker = Broker::new(BrokerLimits::default());
        let a = id("a");
        let first = broker.attach(&a, ClientIdentity::default(), true, None, 10, Vec::new());
        let second = broker.attach(&a, ClientIdentity::default(), false, None, 10, Vec::new());
        assert!(first.link.kicked.is_cancelled());
        assert!(!second.link.kicked.is_cancelled());
        // The old connection's detach leaves the new one attached.
        assert!(broker.detach(&a, first.link.generation));
        assert!(!broker.is_gone(&a, first.link.generation));
        assert_eq!(broker.stats().connected, 1);
    }

    #[test]
    fn retained_messages_are_stored_replaced_and_cleared() {
        let broker = Broker::new(BrokerLimits::default());
        broker.publish(msg("r/1", 1, true, "one"));
        broker.publish(msg("r/2", 0, true, "two"));
        broker.publish(msg("r/2", 0, true, "two-b"));
        let a = id("a");
        let att = broker.attach(
            &a,
            ClientIdentity::default(),
            true,
            Some(Duration::ZERO),
            10,
            Vec::new(),
        );
        broker.subscribe(&a, "r/+", sub(2), |_| true);
        let mut got = payloads(&broker.take_outgoing(&a, att.link.generation, 10));
        got.sort_by(|x, y| x.2.cmp(&y.2));
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].2, "one");
        assert_eq!(got[1].2, "two-b");
        broker.publish(msg("r/1", 0, true, ""));
        broker.publish(msg("r/2", 0, true, ""));
        assert_eq!(broker.stats().retained, 0);
    }

    #[test]
    fn the_inflight_window_holds_back_qos1_but_not_qos0() {
        let broker = Broker::new(BrokerLimits::default());
        let a = id("a");
        let att = broker.attach(
            &a,
            ClientIdentity::default(),
            true,
            Some(Duration::ZERO),
            2,
            Vec::new(),
        );
        broker.subscribe(&a, "t", sub(1), |_| true);
        for i in 0..4 {
            broker.publish(msg("t", 1, false, &format!("m{i}")));
        }
        let first = broker.take_outgoing(&a, att.link.generation, 100);
        assert_eq!(first.len(), 2);
        assert!(
            broker
                .take_outgoing(&a, att.link.generation, 100)
                .is_empty()
        );
        assert!(broker.acked(&a, 1));
        let next = broker.take_outgoing(&a, att.link.generation, 100);
        assert_eq!(payloads(&next), vec![(Some(3), 1, "m2".into())]);
    }

    #[test]
    fn qos2_incoming_is_routed_once_until_released() {
        let broker = Broker::new(BrokerLimits::default());
        let a = id("a");
        broker.attach(
            &a,
            ClientIdentity::default(),
            true,
            Some(Duration::ZERO),
            10,
            Vec::new(),
        );
        assert!(broker.incoming_qos2(&a, 7));
        assert!(!broker.incoming_qos2(&a, 7));
        assert!(broker.incoming_released(&a, 7));
        assert!(broker.incoming_qos2(&a, 7));
    }

    #[test]
    fn sessions_expire_after_their_interval() {
        let broker = Broker::new(BrokerLimits::default());
        let a = id("a");
        let att = broker.attach(
            &a,
            ClientIdentity::default(),
            true,
            Some(Duration::from_secs(5)),
            10,
            Vec::new(),
        );
        broker.subscribe(&a, "t", sub(1), |_| true);
        broker.detach(&a, att.link.generation);
        assert_eq!(broker.expire_sessions(Instant::now()), 0);
        assert_eq!(
            broker.expire_sessions(Instant::now() + Duration::from_secs(6)),
            1
        );
        assert_eq!(broker.stats(), BrokerStats::default());
    }
}
