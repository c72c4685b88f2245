//! The packets of the MQTT client ([`crate::client`]) in the protocol version it speaks to a
//! broker: 3.1.1, or 5 (user properties on publishes, reason codes on acknowledgements).

use std::num::{NonZeroU16, NonZeroU32};
use std::time::Duration;

use bytes::Bytes;
use bytestring::ByteString;
use rmqtt_codec::types::{Protocol, Publish, QoS};
use rmqtt_codec::{MqttCodec, MqttPacket, v3, v5};

use crate::client::ClientOptions;

/// A session kept by the broker after a disconnect, under MQTT 5 (3.1.1's `clean_session =
/// false` keeps it without end; 5 asks for an expiry): the most the protocol allows, so a
/// bridge's QoS 1 messages wait for it as they did under 3.1.1.
const SESSION_EXPIRY_NEVER: u32 = u32::MAX;

/// Largest packet the client takes.
const MAX_PACKET: u32 = 64 << 20;

/// The version the client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Wire {
    pub(crate) v5: bool,
}

/// What the broker's CONNACK granted, under MQTT 5 (3.1.1's grants nothing: the defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Granted {
    /// The keepalive the broker asks for instead of the client's (MQTT 5 §3.2.2.3.14: the
    /// client must use it).
    pub(crate) keep_alive: Option<Duration>,
    /// Unacknowledged QoS 1 publishes the broker takes at once.
    pub(crate) receive_max: u16,
    /// The largest packet the broker takes.
    pub(crate) max_packet_size: Option<u32>,
    /// Whether the broker takes QoS 1 publishes, and retained messages.
    pub(crate) qos1: bool,
    pub(crate) retain: bool,
}

impl Default for Granted {
    fn default() -> Self {
        Self {
            keep_alive: None,
            receive_max: u16::MAX,
            max_packet_size: None,
            qos1: true,
            retain: true,
        }
    }
}

/// What the client does with a packet from the broker.
pub(crate) enum Inbound {
    /// PUBACK for a packet id: taken, or refused with the broker's reason (MQTT 5).
    PubAck(u16, Result<(), String>),
    /// A message.
    Publish(Box<Publish>),
    /// SUBACK refusing some filters, with the reasons.
    SubscribeRefused(String),
    /// The broker ends the connection (MQTT 5), saying why.
    Disconnect(String),
    /// Anything else (PINGRESP, a SUBACK that granted all).
    Other,
}

impl Wire {
    pub(crate) fn codec(self) -> MqttCodec {
        if self.v5 {
            MqttCodec::V5(v5::Codec::new(MAX_PACKET, MAX_PACKET))
        } else {
            MqttCodec::V3(v3::Codec::new(MAX_PACKET))
        }
    }

    /// CONNECT, with `will` (topic, payload) as a retained QoS 1 will.
    pub(crate) fn connect(
        self,
        options: &ClientOptions,
        will: Option<(&str, Bytes)>,
    ) -> MqttPacket {
        let keep_alive = u16::try_from(options.keep_alive.as_secs()).unwrap_or(u16::MAX);
        let client_id = ByteString::from(options.client_id.as_str());
        let username = options.username.as_deref().map(ByteString::from);
        let password = options.password.as_ref().map(|p| Bytes::from(p.clone()));
        if self.v5 {
            MqttPacket::V5(v5::Packet::Connect(Box::new(v5::Connect {
                clean_start: options.clean_session,
                keep_alive,
                session_expiry_interval_secs: if options.clean_session {
                    0
                } else {
                    SESSION_EXPIRY_NEVER
                },
                client_id,
                username,
                password,
                // A larger message is then dropped by the broker rather than sent to a
                // client that cannot take it (and would get it again at every reconnect).
                max_packet_size: NonZeroU32::new(MAX_PACKET),
                last_will: will.map(|(topic, message)| v5::LastWill {
                    qos: QoS::AtLeastOnce,
                    retain: true,
                    topic: ByteString::from(topic),
                    message,
                    will_delay_interval_sec: None,
                    correlation_data: None,
                    message_expiry_interval: None,
                    content_type: None,
                    user_properties: Vec::new(),
                    is_utf8_payload: None,
                    response_topic: None,
                }),
                ..v5::Connect::default()
            })))
        } else {
            MqttPacket::V3(v3::Packet::Connect(Box::new(v3::Connect {
                protocol: Protocol::default(),
                clean_session: options.clean_session,
                keep_alive,
                last_will: will.map(|(topic, message)| v3::LastWill {
                    qos: QoS::AtLeastOnce,
                    retain: true,
                    topic: ByteString::from(topic),
                    message,
                }),
                client_id,
                username,
                password,
                cert: None,
            })))
        }
    }

    /// What a CONNACK that accepts the connection grants; else why it refused.
    pub(crate) fn accepted(self, packet: MqttPacket) -> Result<Granted, String> {
        match packet {
            MqttPacket::V3(v3::Packet::ConnectAck(a)) => {
                if a.return_code == v3::ConnectAckReason::ConnectionAccepted {
                    Ok(Granted::default())
                } else {
                    Err(format!("refused: {}", a.return_code.reason()))
                }
            }
            MqttPacket::V5(v5::Packet::ConnectAck(a)) => {
                if a.reason_code == v5::ConnectAckReason::Success {
                    Ok(Granted {
                        keep_alive: a
                            .server_keepalive_sec
                            .map(|secs| Duration::from_secs(u64::from(secs))),
                        receive_max: a.receive_max.get(),
                        max_packet_size: a.max_packet_size,
                        qos1: a.max_qos != QoS::AtMostOnce,
                        retain: a.retain_available,
                    })
                } else {
                    Err(format!(
                        "refused: {:?}{}",
                        a.reason_code,
                        a.reason_string
                            .as_ref()
                            .map(|why| format!(" ({why})"))
                            .unwrap_or_default()
                    ))
                }
            }
            MqttPacket::V3(_) | MqttPacket::V5(_) => Err("expected CONNACK".into()),
            MqttPacket::Version(_) => Err(
                "the broker answered with a bare protocol version: does it speak this MQTT \
                 version?"
                    .into(),
            ),
        }
    }

    pub(crate) fn publish(self, publish: Publish) -> MqttPacket {
        if self.v5 {
            MqttPacket::V5(v5::Packet::Publish(Box::new(publish)))
        } else {
            MqttPacket::V3(v3::Packet::Publish(Box::new(publish)))
        }
    }

    pub(crate) fn pub_ack(self, id: u16) -> MqttPacket {
        let packet_id = pid(id);
        if self.v5 {
            MqttPacket::V5(v5::Packet::PublishAck(v5::PublishAck {
                packet_id,
                reason_code: v5::PublishAckReason::Success,
                properties: Vec::new(),
                reason_string: None,
            }))
        } else {
            MqttPacket::V3(v3::Packet::PublishAck { packet_id })
        }
    }

    pub(crate) fn subscribe(self, id: u16, filters: &[(String, u8)]) -> MqttPacket {
        let packet_id = pid(id);
        if self.v5 {
            MqttPacket::V5(v5::Packet::Subscribe(v5::Subscribe {
                packet_id,
                id: None,
                user_properties: Vec::new(),
                topic_filters: filters
                    .iter()
                    .map(|(filter, q)| {
                        (
                            ByteString::from(filter.as_str()),
                            v5::SubscriptionOptions {
                                qos: qos(*q),
                                ..v5::SubscriptionOptions::default()
                            },
                        )
                    })
                    .collect(),
            }))
        } else {
            MqttPacket::V3(v3::Packet::Subscribe {
                packet_id,
                topic_filters: filters
                    .iter()
                    .map(|(filter, q)| (ByteString::from(filter.as_str()), qos(*q)))
                    .collect(),
            })
        }
    }

    pub(crate) fn ping(self) -> MqttPacket {
        if self.v5 {
            MqttPacket::V5(v5::Packet::PingRequest)
        } else {
            MqttPacket::V3(v3::Packet::PingRequest)
        }
    }

    pub(crate) fn disconnect(self) -> MqttPacket {
        if self.v5 {
            MqttPacket::V5(v5::Packet::Disconnect(v5::Disconnect {
                reason_code: v5::DisconnectReasonCode::NormalDisconnection,
                session_expiry_interval_secs: None,
                server_reference: None,
                reason_string: None,
                user_properties: Vec::new(),
            }))
        } else {
            MqttPacket::V3(v3::Packet::Disconnect)
        }
    }

    pub(crate) fn inbound(packet: MqttPacket) -> Inbound {
        match packet {
            MqttPacket::V3(v3::Packet::PublishAck { packet_id }) => {
                Inbound::PubAck(packet_id.get(), Ok(()))
            }
            MqttPacket::V5(v5::Packet::PublishAck(ack)) => {
                // Reason codes below 0x80 are successes (`NoMatchingSubscribers` included).
                let taken = u8::from(ack.reason_code) < 0x80;
                let result = if taken {
                    Ok(())
                } else {
                    Err(format!(
                        "the broker refused the message: {:?}{}",
                        ack.reason_code,
                        ack.reason_string
                            .as_ref()
                            .map(|why| format!(" ({why})"))
                            .unwrap_or_default()
                    ))
                };
                Inbound::PubAck(ack.packet_id.get(), result)
            }
            MqttPacket::V3(v3::Packet::Publish(p)) | MqttPacket::V5(v5::Packet::Publish(p)) => {
                Inbound::Publish(p)
            }
            MqttPacket::V3(v3::Packet::SubscribeAck { status, .. })
                if status
                    .iter()
                    .any(|s| matches!(s, v3::SubscribeReturnCode::Failure)) =>
            {
                Inbound::SubscribeRefused("failure".into())
            }
            MqttPacket::V5(v5::Packet::SubscribeAck(ack)) => {
                let refused: Vec<String> = ack
                    .status
                    .iter()
                    .filter(|s| u8::from(**s) >= 0x80)
                    .map(|s| format!("{s:?}"))
                    .collect();
                if refused.is_empty() {
                    Inbound::Other
                } else {
                    Inbound::SubscribeRefused(refused.join(", "))
                }
            }
            MqttPacket::V5(v5::Packet::Disconnect(d)) => Inbound::Disconnect(format!(
                "{:?}{}{}",
                d.reason_code,
                d.reason_string
                    .as_ref()
                    .map(|why| format!(" ({why})"))
                    .unwrap_or_default(),
                d.server_reference
                    .as_ref()
                    .map(|to| format!(", use {to}"))
                    .unwrap_or_default()
            )),
            _ => Inbound::Other,
        }
    }

    /// Makes the codec refuse to send packets larger than the broker takes (never larger
    /// than the client's own limit: the codec cannot encode beyond 256 MiB).
    pub(crate) fn limit_outbound(codec: &mut MqttCodec, max: u32) {
        if let MqttCodec::V5(codec) = codec {
            codec.set_max_outbound_size(max.min(MAX_PACKET));
        }
    }
}

pub(crate) fn pid(id: u16) -> NonZeroU16 {
    NonZeroU16::new(id).unwrap_or(NonZeroU16::MIN)
}

pub(crate) fn qos(q: u8) -> QoS {
    if q == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_mqtt_5_connect_keeps_a_persistent_session_and_bounds_packets() {
        let mut options = ClientOptions::new("broker:1883", "fabrik-bridge-plant");
        options.clean_session = false;
        let MqttPacket::V5(v5::Packet::Connect(connect)) =
            Wire { v5: true }.connect(&options, None)
        else {
            panic!("an MQTT 5 CONNECT");
        };
        assert!(!connect.clean_start);
        assert_eq!(connect.session_expiry_interval_secs, u32::MAX);
        assert_eq!(connect.max_packet_size, NonZeroU32::new(MAX_PACKET));
        assert_eq!(connect.topic_alias_max, 0, "the broker sends whole topics");
        options.clean_session = true;
        let MqttPacket::V5(v5::Packet::Connect(clean)) = Wire { v5: true }.connect(&options, None)
        else {
            panic!("an MQTT 5 CONNECT");
        };
        assert_eq!(clean.session_expiry_interval_secs, 0);
        assert!(matches!(
            Wire { v5: false }.connect(&options, None),
            MqttPacket::V3(v3::Packet::Connect(_))
        ));
    }

    #[test]
    fn a_connack_grants_what_the_broker_says() {
        let ack = v5::ConnectAck {
            server_keepalive_sec: Some(10),
            receive_max: NonZeroU16::new(20).expect("20"),
            max_packet_size: Some(1 << 20),
            max_qos: QoS::AtMostOnce,
            retain_available: false,
            ..v5::ConnectAck::default()
        };
        let granted = Wire { v5: true }
            .accepted(MqttPacket::V5(v5::Packet::ConnectAck(Box::new(ack))))
            .expect("accepted");
        assert_eq!(
            granted,
            Granted {
                keep_alive: Some(Duration::from_secs(10)),
                receive_max: 20,
                max_packet_size: Some(1 << 20),
                qos1: false,
                retain: false,
            }
        );
        let refused = v5::ConnectAck {
            reason_code: v5::ConnectAckReason::NotAuthorized,
            reason_string: Some("no such user".into()),
            ..v5::ConnectAck::default()
        };
        let why = Wire { v5: true }
            .accepted(MqttPacket::V5(v5::Packet::ConnectAck(Box::new(refused))))
            .expect_err("refused");
        assert!(
            why.contains("NotAuthorized") && why.contains("no such user"),
            "{why}"
        );
    }

    #[test]
    fn refusals_and_disconnects_say_why() {
        let refused = MqttPacket::V5(v5::Packet::PublishAck(v5::PublishAck {
            packet_id: pid(7),
            reason_code: v5::PublishAckReason::NotAuthorized,
            properties: Vec::new(),
            reason_string: None,
        }));
        let Inbound::PubAck(7, Err(why)) = Wire::inbound(refused) else {
            panic!("a refused PUBACK");
        };
        assert!(why.contains("NotAuthorized"), "{why}");
        // Below 0x80 is a success: no subscriber is not a refusal.
        let taken = MqttPacket::V5(v5::Packet::PublishAck(v5::PublishAck {
            packet_id: pid(8),
            reason_code: v5::PublishAckReason::NoMatchingSubscribers,
            properties: Vec::new(),
            reason_string: None,
        }));
        assert!(matches!(Wire::inbound(taken), Inbound::PubAck(8, Ok(()))));
        let taken_over = MqttPacket::V5(v5::Packet::Disconnect(v5::Disconnect {
            reason_code: v5::DisconnectReasonCode::SessionTakenOver,
            session_expiry_interval_secs: None,
            server_reference: None,
            reason_string: None,
            user_properties: Vec::new(),
        }));
        let Inbound::Disconnect(why) = Wire::inbound(taken_over) else {
            panic!("a DISCONNECT");
        };
        assert!(why.contains("SessionTakenOver"), "{why}");
    }
}
