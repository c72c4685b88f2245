//! Translation between the wire packets of MQTT 3.1.1 and 5.0 (`rmqtt-codec`) and the
//! version-neutral events the connection handler works with, so the session logic is written
//! once for both versions.

use std::num::{NonZeroU16, NonZeroU32};
use std::time::{Duration, Instant};

use bytes::Bytes;
use bytestring::ByteString;
use rmqtt_codec::types::{Publish, QoS};
use rmqtt_codec::{MqttPacket, v3, v5};

use super::broker::Delivery;

/// Protocol version of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1 / 3.1.1.
    V3,
    /// MQTT 5.0.
    V5,
}

/// A subscription request of one filter.
#[derive(Debug, Clone)]
pub struct SubRequest {
    /// Topic filter.
    pub filter: String,
    /// Requested maximum QoS.
    pub qos: u8,
    /// MQTT 5 no-local.
    pub no_local: bool,
    /// MQTT 5 retain-as-published.
    pub retain_as_published: bool,
    /// MQTT 5 retain handling: 0 always, 1 only for a new subscription, 2 never.
    pub retain_handling: u8,
}

/// What a client sent, whatever its protocol version.
#[derive(Debug)]
pub enum Inbound {
    /// A second CONNECT (a protocol error).
    Connect,
    /// PUBLISH.
    Publish(Box<Publish>),
    /// PUBACK.
    PubAck(u16),
    /// PUBREC.
    PubRec(u16),
    /// PUBREL.
    PubRel(u16),
    /// PUBCOMP.
    PubComp(u16),
    /// SUBSCRIBE.
    Subscribe {
        /// Packet id.
        packet_id: u16,
        /// MQTT 5 subscription identifier.
        id: Option<NonZeroU32>,
        /// Filters.
        filters: Vec<SubRequest>,
    },
    /// UNSUBSCRIBE.
    Unsubscribe {
        /// Packet id.
        packet_id: u16,
        /// Filters.
        filters: Vec<String>,
    },
    /// PINGREQ.
    Ping,
    /// DISCONNECT.
    Disconnect {
        /// MQTT 5 reason code (0 for 3.1.1).
        reason: u8,
        /// MQTT 5 new session expiry.
        session_expiry: Option<u32>,
    },
    /// A packet a client must not send (CONNACK, SUBACK, ...), or AUTH, which Fabrik does not
    /// support.
    Unexpected(&'static str),
}

fn qos_u8(q: QoS) -> u8 {
    q.value()
}

/// The QoS wire value for a number (0, 1 or 2; anything else is QoS 2).
pub fn qos_of(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

impl Inbound {
    /// Converts a decoded packet.
    pub fn from_packet(packet: MqttPacket) -> Inbound {
        match packet {
            MqttPacket::V3(p) => match p {
                v3::Packet::Connect(_) => Inbound::Connect,
                v3::Packet::Publish(p) => Inbound::Publish(p),
                v3::Packet::PublishAck { packet_id } => Inbound::PubAck(packet_id.get()),
                v3::Packet::PublishReceived { packet_id } => Inbound::PubRec(packet_id.get()),
                v3::Packet::PublishRelease { packet_id } => Inbound::PubRel(packet_id.get()),
                v3::Packet::PublishComplete { packet_id } => Inbound::PubComp(packet_id.get()),
                v3::Packet::Subscribe {
                    packet_id,
                    topic_filters,
                } => Inbound::Subscribe {
                    packet_id: packet_id.get(),
                    id: None,
                    filters: topic_filters
                        .into_iter()
                        .map(|(f, q)| SubRequest {
                            filter: f.to_string(),
                            qos: qos_u8(q),
                            no_local: false,
                            retain_as_published: false,
                            retain_handling: 0,
                        })
                        .collect(),
                },
                v3::Packet::Unsubscribe {
                    packet_id,
                    topic_filters,
                } => Inbound::Unsubscribe {
                    packet_id: packet_id.get(),
                    filters: topic_filters.into_iter().map(|f| f.to_string()).collect(),
                },
                v3::Packet::PingRequest => Inbound::Ping,
                v3::Packet::Disconnect => Inbound::Disconnect {
                    reason: 0,
                    session_expiry: None,
                },
                v3::Packet::ConnectAck(_) => Inbound::Unexpected("CONNACK"),
                v3::Packet::SubscribeAck { .. } => Inbound::Unexpected("SUBACK"),
                v3::Packet::UnsubscribeAck { .. } => Inbound::Unexpected("UNSUBACK"),
                v3::Packet::PingResponse => Inbound::Unexpected("PINGRESP"),
            },
            MqttPacket::V5(p) => match p {
                v5::Packet::Connect(_) => Inbound::Connect,
                v5::Packet::Publish(p) => Inbound::Publish(p),
                v5::Packet::PublishAck(a) => Inbound::PubAck(a.packet_id.get()),
                v5::Packet::PublishReceived(a) => Inbound::PubRec(a.packet_id.get()),
                v5::Packet::PublishRelease(a) => Inbound::PubRel(a.packet_id.get()),
                v5::Packet::PublishComplete(a) => Inbound::PubComp(a.packet_id.get()),
                v5::Packet::Subscribe(s) => Inbound::Subscribe {
                    packet_id: s.packet_id.get(),
                    id: s.id,
                    filters: s
                        .topic_filters
                        .into_iter()
                        .map(|(f, o)| SubRequest {
                            filter: f.to_string(),
                            qos: qos_u8(o.qos),
                            no_local: o.no_local,
                            retain_as_published: o.retain_as_published,
                            retain_handling: match o.retain_handling {
                                v5::RetainHandling::AtSubscribe => 0,
                                v5::RetainHandling::AtSubscribeNew => 1,
                                v5::RetainHandling::NoAtSubscribe => 2,
                            },
                        })
                        .collect(),
                },
                v5::Packet::Unsubscribe(u) => Inbound::Unsubscribe {
                    packet_id: u.packet_id.get(),
                    filters: u.topic_filters.into_iter().map(|f| f.to_string()).collect(),
                },
                v5::Packet::PingRequest => Inbound::Ping,
                v5::Packet::Disconnect(d) => Inbound::Disconnect {
                    reason: u8::from(d.reason_code),
                    session_expiry: d.session_expiry_interval_secs,
                },
                v5::Packet::ConnectAck(_) => Inbound::Unexpected("CONNACK"),
                v5::Packet::SubscribeAck(_) => Inbound::Unexpected("SUBACK"),
                v5::Packet::UnsubscribeAck(_) => Inbound::Unexpected("UNSUBACK"),
                v5::Packet::PingResponse => Inbound::Unexpected("PINGRESP"),
                v5::Packet::Auth(_) => Inbound::Unexpected("AUTH"),
            },
            MqttPacket::Version(_) => Inbound::Connect,
        }
    }
}

/// Outcome of one filter of a SUBSCRIBE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubResult {
    /// Granted with this QoS.
    Granted(u8),
    /// Denied by the ACLs.
    NotAuthorized,
    /// Denied by the ACLs, reported as "unspecified error" (0x80).
    Refused,
    /// Not a valid filter.
    Invalid,
}

/// How an outgoing PUBLISH uses a server-assigned topic alias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AliasUse {
    /// First use on this connection: topic and alias together.
    Set,
    /// The client knows it: alias only, empty topic.
    Reuse,
}

/// Outcome of a PUBLISH, for its acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PubResult {
    /// Accepted (stored where a mapping applies, routed to subscribers).
    Success,
    /// Denied by the ACLs (MQTT 5 reason 0x87; MQTT 3.1.1 has no negative acknowledgement).
    NotAuthorized,
    /// Could not be stored (MQTT 5 0x80).
    Failed,
}

/// Builds the packets Fabrik sends, in the connection's protocol version.
#[derive(Debug, Clone, Copy)]
pub struct Wire(pub Version);

fn pid(id: u16) -> NonZeroU16 {
    NonZeroU16::new(id).unwrap_or(NonZeroU16::MIN)
}

impl Wire {
    /// PUBLISH of a delivery.
    /// PUBLISH of a delivery. `alias` (MQTT 5 only) is the topic alias to send: with
    /// `AliasUse::Set` the topic goes along and the client learns the alias, with
    /// `AliasUse::Reuse` the topic is left empty.
    pub fn publish(
        self,
        packet_id: Option<u16>,
        delivery: &Delivery,
        dup: bool,
        alias: Option<(u16, AliasUse)>,
    ) -> MqttPacket {
        let message = &delivery.message;
        let alias = alias.filter(|_| self.0 == Version::V5);
        let properties = match self.0 {
            Version::V3 => None,
            Version::V5 => {
                let mut props = message.properties.clone().unwrap_or_default();
                props.topic_alias = alias.and_then(|(a, _)| NonZeroU16::new(a));
                props.subscription_ids = delivery.subscription_ids.clone();
                if let Some(at) = message.expires_at {
                    let left = at.saturating_duration_since(Instant::now()).as_secs();
                    props.message_expiry_interval =
                        NonZeroU32::new(u32::try_from(left.max(1)).unwrap_or(u32::MAX));
                }
                Some(props)
            }
        };
        let publish = Publish {
            dup,
            retain: delivery.retain,
            qos: qos_of(delivery.qos),
            topic: match alias {
                Some((_, AliasUse::Reuse)) => ByteString::new(),
                _ => ByteString::from(&*message.topic),
            },
            packet_id: packet_id.map(pid),
            payload: message.payload.clone(),
            properties,
        };
        match self.0 {
            Version::V3 => MqttPacket::V3(v3::Packet::Publish(Box::new(publish))),
            Version::V5 => MqttPacket::V5(v5::Packet::Publish(Box::new(publish))),
        }
    }

    fn pub_ack_v5(id: u16, result: PubResult) -> v5::PublishAck {
        v5::PublishAck {
            packet_id: pid(id),
            reason_code: match result {
                PubResult::Success => v5::PublishAckReason::Success,
                PubResult::NotAuthorized => v5::PublishAckReason::NotAuthorized,
                PubResult::Failed => v5::PublishAckReason::UnspecifiedError,
            },
            properties: Vec::new(),
            reason_string: None,
        }
    }

    /// PUBACK.
    pub fn puback(self, id: u16, result: PubResult) -> MqttPacket {
        match self.0 {
            Version::V3 => MqttPacket::V3(v3::Packet::PublishAck { packet_id: pid(id) }),
            Version::V5 => MqttPacket::V5(v5::Packet::PublishAck(Self::pub_ack_v5(id, result))),
        }
    }

    /// PUBREC.
    pub fn pubrec(self, id: u16, result: PubResult) -> MqttPacket {
        match self.0 {
            Version::V3 => MqttPacket::V3(v3::Packet::PublishReceived { packet_id: pid(id) }),
            Version::V5 => {
                MqttPacket::V5(v5::Packet::PublishReceived(Self::pub_ack_v5(id, result)))
            }
        }
    }

    fn ack2(id: u16, found: bool) -> v5::PublishAck2 {
        v5::PublishAck2 {
            packet_id: pid(id),
            reason_code: if found {
                v5::PublishAck2Reason::Success
            } else {
                v5::PublishAck2Reason::PacketIdNotFound
            },
            properties: Vec::new(),
            reason_string: None,
        }
    }

    /// PUBREL.
    pub fn pubrel(self, id: u16) -> MqttPacket {
        match self.0 {
            Version::V3 => MqttPacket::V3(v3::Packet::PublishRelease { packet_id: pid(id) }),
            Version::V5 => MqttPacket::V5(v5::Packet::PublishRelease(Self::ack2(id, true))),
        }
    }

    /// PUBCOMP (`found`: the packet id was pending).
    pub fn pubcomp(self, id: u16, found: bool) -> MqttPacket {
        match self.0 {
            Version::V3 => MqttPacket::V3(v3::Packet::PublishComplete { packet_id: pid(id) }),
            Version::V5 => MqttPacket::V5(v5::Packet::PublishComplete(Self::ack2(id, found))),
        }
    }

    /// SUBACK.
    pub fn suback(self, id: u16, results: &[SubResult]) -> MqttPacket {
        match self.0 {
            Version::V3 => MqttPacket::V3(v3::Packet::SubscribeAck {
                packet_id: pid(id),
                status: results
                    .iter()
                    .map(|r| match r {
                        SubResult::Granted(q) => v3::SubscribeReturnCode::Success(qos_of(*q)),
                        _ => v3::SubscribeReturnCode::Failure,
                    })
                    .collect(),
            }),
            Version::V5 => MqttPacket::V5(v5::Packet::SubscribeAck(v5::SubscribeAck {
                packet_id: pid(id),
                properties: Vec::new(),
                reason_string: None,
                status: results
                    .iter()
                    .map(|r| match r {
                        SubResult::Granted(0) => v5::SubscribeAckReason::GrantedQos0,
                        SubResult::Granted(1) => v5::SubscribeAckReason::GrantedQos1,
                        SubResult::Granted(_) => v5::SubscribeAckReason::GrantedQos2,
                        SubResult::NotAuthorized => v5::SubscribeAckReason::NotAuthorized,
                        SubResult::Refused => v5::SubscribeAckReason::UnspecifiedError,
                        SubResult::Invalid => v5::SubscribeAckReason::TopicFilterInvalid,
                    })
                    .collect(),
            })),
        }
    }

    /// UNSUBACK (`existed` per filter, for MQTT 5 reason codes).
    pub fn unsuback(self, id: u16, existed: &[bool]) -> MqttPacket {
        match self.0 {
            Version::V3 => MqttPacket::V3(v3::Packet::UnsubscribeAck { packet_id: pid(id) }),
            Version::V5 => MqttPacket::V5(v5::Packet::UnsubscribeAck(v5::UnsubscribeAck {
                packet_id: pid(id),
                properties: Vec::new(),
                reason_string: None,
                status: existed
                    .iter()
                    .map(|&e| {
                        if e {
                            v5::UnsubscribeAckReason::Success
                        } else {
                            v5::UnsubscribeAckReason::NoSubscriptionExisted
                        }
                    })
                    .collect(),
            })),
        }
    }

    /// PINGRESP.
    pub fn pingresp(self) -> MqttPacket {
        match self.0 {
            Version::V3 => MqttPacket::V3(v3::Packet::PingResponse),
            Version::V5 => MqttPacket::V5(v5::Packet::PingResponse),
        }
    }

    /// DISCONNECT with a reason (MQTT 5 only; 3.1.1 servers just close the connection).
    pub fn disconnect(self, reason: v5::DisconnectReasonCode, text: &str) -> Option<MqttPacket> {
        match self.0 {
            Version::V3 => None,
            Version::V5 => Some(MqttPacket::V5(v5::Packet::Disconnect(v5::Disconnect {
                reason_code: reason,
                session_expiry_interval_secs: None,
                server_reference: None,
                reason_string: Some(ByteString::from(text)),
                user_properties: Vec::new(),
            }))),
        }
    }
}

/// Why a CONNECT was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectRefusal {
    /// Bad client identifier.
    ClientIdRejected,
    /// Wrong user name or password.
    BadCredentials,
    /// Authenticated but not allowed (e.g. will topic outside its namespace).
    NotAuthorized,
    /// Too many connections.
    ServerBusy,
    /// Protocol error in the CONNECT.
    ProtocolError,
}

/// CONNACK.
pub fn connack(
    version: Version,
    session_present: bool,
    refusal: Option<ConnectRefusal>,
    v5_properties: impl FnOnce(&mut v5::ConnectAck),
) -> MqttPacket {
    match version {
        Version::V3 => MqttPacket::V3(v3::Packet::ConnectAck(v3::ConnectAck {
            session_present: session_present && refusal.is_none(),
            return_code: match refusal {
                None => v3::ConnectAckReason::ConnectionAccepted,
                Some(ConnectRefusal::ClientIdRejected) => v3::ConnectAckReason::IdentifierRejected,
                Some(ConnectRefusal::BadCredentials) => v3::ConnectAckReason::BadUserNameOrPassword,
                Some(ConnectRefusal::NotAuthorized) => v3::ConnectAckReason::NotAuthorized,
                Some(ConnectRefusal::ServerBusy) => v3::ConnectAckReason::ServiceUnavailable,
                Some(ConnectRefusal::ProtocolError) => {
                    v3::ConnectAckReason::UnacceptableProtocolVersion
                }
            },
        })),
        Version::V5 => {
            let mut ack = v5::ConnectAck {
                session_present: session_present && refusal.is_none(),
                reason_code: match refusal {
                    None => v5::ConnectAckReason::Success,
                    Some(ConnectRefusal::ClientIdRejected) => {
                        v5::ConnectAckReason::ClientIdentifierNotValid
                    }
                    Some(ConnectRefusal::BadCredentials) => {
                        v5::ConnectAckReason::BadUserNameOrPassword
                    }
                    Some(ConnectRefusal::NotAuthorized) => v5::ConnectAckReason::NotAuthorized,
                    Some(ConnectRefusal::ServerBusy) => v5::ConnectAckReason::ServerBusy,
                    Some(ConnectRefusal::ProtocolError) => v5::ConnectAckReason::ProtocolError,
                },
                ..v5::ConnectAck::default()
            };
            if refusal.is_none() {
                v5_properties(&mut ack);
            }
            MqttPacket::V5(v5::Packet::ConnectAck(Box::new(ack)))
        }
    }
}

/// The CONNECT fields Fabrik uses, from either version.
#[derive(Debug, Clone)]
pub struct ConnectInfo {
    /// Protocol version.
    pub version: Version,
    /// Client id (possibly empty).
    pub client_id: String,
    /// User name.
    pub username: Option<String>,
    /// Password.
    pub password: Option<Bytes>,
    /// Clean session (3.1.1) / clean start (5.0).
    pub clean_start: bool,
    /// Keepalive in seconds (0: none).
    pub keep_alive: u16,
    /// MQTT 5 session expiry interval (3.1.1: derived from clean session).
    pub session_expiry: Option<Duration>,
    /// The client's receive maximum (in-flight window for messages to it).
    pub receive_max: u16,
    /// Largest packet the client accepts.
    pub max_packet_size: Option<u32>,
    /// Topic aliases the client accepts from us (MQTT 5 Topic Alias Maximum; 0: none).
    pub topic_alias_max: u16,
    /// The last will, if any.
    pub will: Option<Will>,
}

/// A last-will message.
#[derive(Debug, Clone)]
pub struct Will {
    /// Topic.
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// QoS.
    pub qos: u8,
    /// Retain flag.
    pub retain: bool,
    /// MQTT 5 will delay.
    pub delay: Duration,
    /// MQTT 5 properties to forward.
    pub properties: Option<v5::PublishProperties>,
}

/// Reads the CONNECT fields of a decoded CONNECT packet; `None` if it is not a CONNECT.
pub fn connect_info(packet: MqttPacket) -> Option<ConnectInfo> {
    match packet {
        MqttPacket::V3(v3::Packet::Connect(c)) => Some(ConnectInfo {
            version: Version::V3,
            client_id: c.client_id.to_string(),
            username: c.username.map(|u| u.to_string()),
            password: c.password,
            clean_start: c.clean_session,
            keep_alive: c.keep_alive,
            // 3.1.1: a persistent session never expires; a clean one ends with the connection.
            session_expiry: if c.clean_session {
                Some(Duration::ZERO)
            } else {
                None
            },
            receive_max: 65_535,
            max_packet_size: None,
            topic_alias_max: 0,
            will: c.last_will.map(|w| Will {
                topic: w.topic.to_string(),
                payload: w.message,
                qos: qos_u8(w.qos),
                retain: w.retain,
                delay: Duration::ZERO,
                properties: None,
            }),
        }),
        MqttPacket::V5(v5::Packet::Connect(c)) => Some(ConnectInfo {
            version: Version::V5,
            client_id: c.client_id.to_string(),
            username: c.username.map(|u| u.to_string()),
            password: c.password,
            clean_start: c.clean_start,
            keep_alive: c.keep_alive,
            session_expiry: match c.session_expiry_interval_secs {
                u32::MAX => None,
                secs => Some(Duration::from_secs(u64::from(secs))),
            },
            receive_max: c.receive_max.map(NonZeroU16::get).unwrap_or(65_535),
            max_packet_size: c.max_packet_size.map(NonZeroU32::get),
            topic_alias_max: c.topic_alias_max,
            will: c.last_will.map(|w| Will {
                topic: w.topic.to_string(),
                payload: w.message,
                qos: qos_u8(w.qos),
                retain: w.retain,
                delay: Duration::from_secs(u64::from(w.will_delay_interval_sec.unwrap_or(0))),
                properties: Some(v5::PublishProperties {
                    correlation_data: w.correlation_data,
                    message_expiry_interval: w.message_expiry_interval,
                    content_type: w.content_type,
                    user_properties: w.user_properties,
                    is_utf8_payload: w.is_utf8_payload.unwrap_or(false),
                    response_topic: w.response_topic,
                    ..Default::default()
                }),
            }),
        }),
        _ => None,
    }
}
