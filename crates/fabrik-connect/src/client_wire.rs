//! The packets of the MQTT client ([`crate::client`]) in the protocol version it speaks to a
//! broker: 3.1.1, or 5 (user properties on publishes, reason codes on acknowledgements).

use std::num::NonZeroU16;

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

/// What the client does with a packet from the broker.
pub(crate) enum Inbound {
    /// PUBACK for a packet id: taken, or refused with the broker's reason (MQTT 5).
    PubAck(u16, Result<(), String>),
    /// A message.
    Publish(Box<Publish>),
    /// SUBACK refusing some filters, with the reasons.
    SubscribeRefused(String),
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

    pub(crate) fn connect(self, options: &ClientOptions) -> MqttPacket {
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
                ..v5::Connect::default()
            })))
        } else {
            MqttPacket::V3(v3::Packet::Connect(Box::new(v3::Connect {
                protocol: Protocol::default(),
                clean_session: options.clean_session,
                keep_alive,
                last_will: None,
                client_id,
                username,
                password,
                cert: None,
            })))
        }
    }

    /// Whether `packet` is a CONNACK that accepts the connection; else why not.
    pub(crate) fn accepted(self, packet: MqttPacket) -> Result<(), String> {
        match packet {
            MqttPacket::V3(v3::Packet::ConnectAck(a)) => {
                if a.return_code == v3::ConnectAckReason::ConnectionAccepted {
                    Ok(())
                } else {
                    Err(format!("refused: {}", a.return_code.reason()))
                }
            }
            MqttPacket::V5(v5::Packet::ConnectAck(a)) => {
                if a.reason_code == v5::ConnectAckReason::Success {
                    Ok(())
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
            _ => Err("expected CONNACK".into()),
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
            _ => Inbound::Other,
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
