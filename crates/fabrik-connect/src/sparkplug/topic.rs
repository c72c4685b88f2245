//! Sparkplug B topic namespace: `spBv1.0/<group>/<type>/<edge_node>[/<device>]`, the v3.0 host
//! state topic `spBv1.0/STATE/<host>` and the v2.2 one `STATE/<host>`.

use super::{Result, SparkplugError};
use std::fmt;

/// The Sparkplug B namespace, first topic level.
pub const NAMESPACE: &str = "spBv1.0";

/// The message type, third topic level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// Edge node birth.
    NBirth,
    /// Edge node death (will message).
    NDeath,
    /// Device birth.
    DBirth,
    /// Device death.
    DDeath,
    /// Edge node data.
    NData,
    /// Device data.
    DData,
    /// Command to an edge node.
    NCmd,
    /// Command to a device.
    DCmd,
    /// Host application state (in the `<group>/STATE/<id>` position).
    State,
}

impl MessageType {
    /// The topic token, e.g. `NBIRTH`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NBirth => "NBIRTH",
            Self::NDeath => "NDEATH",
            Self::DBirth => "DBIRTH",
            Self::DDeath => "DDEATH",
            Self::NData => "NDATA",
            Self::DData => "DDATA",
            Self::NCmd => "NCMD",
            Self::DCmd => "DCMD",
            Self::State => "STATE",
        }
    }

    /// Parses a topic token (case-sensitive, as the spec requires).
    pub fn from_token(token: &str) -> Option<Self> {
        Some(match token {
            "NBIRTH" => Self::NBirth,
            "NDEATH" => Self::NDeath,
            "DBIRTH" => Self::DBirth,
            "DDEATH" => Self::DDeath,
            "NDATA" => Self::NData,
            "DDATA" => Self::DData,
            "NCMD" => Self::NCmd,
            "DCMD" => Self::DCmd,
            "STATE" => Self::State,
            _ => return None,
        })
    }

    /// Whether the topic must name a device (`DBIRTH`, `DDEATH`, `DDATA`, `DCMD`).
    pub fn is_device(self) -> bool {
        matches!(self, Self::DBirth | Self::DDeath | Self::DData | Self::DCmd)
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed Sparkplug B topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SparkplugTopic {
    /// `spBv1.0/<group>/<type>/<edge_node>[/<device>]`.
    Node {
        /// Group id.
        group: String,
        /// Message type.
        kind: MessageType,
        /// Edge node id.
        edge_node: String,
        /// Device id, present exactly for the device message types.
        device: Option<String>,
    },
    /// Host application state: `spBv1.0/STATE/<host>` (v3.0) or `STATE/<host>` (v2.2).
    HostState {
        /// Host application id.
        host: String,
    },
}

impl SparkplugTopic {
    /// Parses an MQTT topic name.
    pub fn parse(topic: &str) -> Result<Self> {
        let err = |reason: &str| SparkplugError::InvalidTopic {
            topic: topic.to_owned(),
            reason: reason.to_owned(),
        };
        let parts: Vec<&str> = topic.split('/').collect();
        if let Some(bad) = parts.iter().find(|p| p.contains(['+', '#'])) {
            return Err(err(&format!(
                "level {bad:?} holds an MQTT wildcard; a topic name may not"
            )));
        }
        match parts.as_slice() {
            ["STATE", host] => {
                return Ok(Self::HostState {
                    host: id(host, "host id", &err)?,
                });
            }
            [ns, ..] if *ns != NAMESPACE => {
                return Err(err(&format!(
                    "namespace is {ns:?}, expected {NAMESPACE:?} (Sparkplug B)"
                )));
            }
            [_, "STATE", host] => {
                return Ok(Self::HostState {
                    host: id(host, "host id", &err)?,
                });
            }
            _ => {}
        }
        let (group, token, edge, device) = match parts.as_slice() {
            [_, g, t, e] => (g, t, e, None),
            [_, g, t, e, d] => (g, t, e, Some(d)),
            [_] | [_, _] | [_, _, _] => {
                return Err(err(
                    "too few levels: expected spBv1.0/<group>/<type>/<edge_node>[/<device>]",
                ));
            }
            _ => {
                return Err(err(
                    "too many levels: expected spBv1.0/<group>/<type>/<edge_node>[/<device>]",
                ));
            }
        };
        let kind = MessageType::from_token(token).ok_or_else(|| {
            err(&format!(
                "unknown message type {token:?} (expected NBIRTH, NDEATH, DBIRTH, DDEATH, NDATA, \
                 DDATA, NCMD, DCMD or STATE)"
            ))
        })?;
        let group = id(group, "group id", &err)?;
        let edge_node = id(edge, "edge node id", &err)?;
        let device = match (kind.is_device(), device) {
            (true, Some(d)) => Some(id(d, "device id", &err)?),
            (true, None) => return Err(err(&format!("{kind} needs a device id level"))),
            (false, Some(_)) => return Err(err(&format!("{kind} takes no device id level"))),
            (false, None) => None,
        };
        Ok(Self::Node {
            group,
            kind,
            edge_node,
            device,
        })
    }

    /// The topic of a node-level message, e.g. `spBv1.0/<group>/NCMD/<edge_node>`.
    pub fn node_topic(group: &str, kind: MessageType, edge_node: &str) -> String {
        format!("{NAMESPACE}/{group}/{kind}/{edge_node}")
    }
}

impl fmt::Display for SparkplugTopic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Node {
                group,
                kind,
                edge_node,
                device: None,
            } => write!(f, "{NAMESPACE}/{group}/{kind}/{edge_node}"),
            Self::Node {
                group,
                kind,
                edge_node,
                device: Some(d),
            } => write!(f, "{NAMESPACE}/{group}/{kind}/{edge_node}/{d}"),
            Self::HostState { host } => write!(f, "{NAMESPACE}/STATE/{host}"),
        }
    }
}

fn id(level: &str, what: &str, err: &dyn Fn(&str) -> SparkplugError) -> Result<String> {
    if level.is_empty() {
        Err(err(&format!("empty {what}")))
    } else {
        Ok(level.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(g: &str, kind: MessageType, e: &str, d: Option<&str>) -> SparkplugTopic {
        SparkplugTopic::Node {
            group: g.into(),
            kind,
            edge_node: e.into(),
            device: d.map(Into::into),
        }
    }

    #[test]
    fn parses_every_node_message_type() {
        for kind in [
            MessageType::NBirth,
            MessageType::NDeath,
            MessageType::NData,
            MessageType::NCmd,
            MessageType::State,
        ] {
            let t = format!("spBv1.0/plant1/{kind}/edge-a");
            assert_eq!(
                SparkplugTopic::parse(&t).unwrap(),
                node("plant1", kind, "edge-a", None)
            );
            assert_eq!(SparkplugTopic::parse(&t).unwrap().to_string(), t);
        }
    }

    #[test]
    fn parses_every_device_message_type() {
        for kind in [
            MessageType::DBirth,
            MessageType::DDeath,
            MessageType::DData,
            MessageType::DCmd,
        ] {
            let t = format!("spBv1.0/plant1/{kind}/edge-a/pump 7");
            assert_eq!(
                SparkplugTopic::parse(&t).unwrap(),
                node("plant1", kind, "edge-a", Some("pump 7"))
            );
            assert_eq!(SparkplugTopic::parse(&t).unwrap().to_string(), t);
        }
    }

    #[test]
    fn parses_host_state_topics() {
        let want = SparkplugTopic::HostState {
            host: "scada".into(),
        };
        assert_eq!(SparkplugTopic::parse("spBv1.0/STATE/scada").unwrap(), want);
        assert_eq!(SparkplugTopic::parse("STATE/scada").unwrap(), want);
        assert_eq!(want.to_string(), "spBv1.0/STATE/scada");
    }

    #[test]
    fn node_topic_builds_ncmd() {
        assert_eq!(
            SparkplugTopic::node_topic("g", MessageType::NCmd, "e"),
            "spBv1.0/g/NCMD/e"
        );
    }

    fn reason(topic: &str) -> String {
        match SparkplugTopic::parse(topic) {
            Err(SparkplugError::InvalidTopic { topic: t, reason }) => {
                assert_eq!(t, topic);
                reason
            }
            other => panic!("{topic}: expected InvalidTopic, got {other:?}"),
        }
    }

    #[test]
    fn rejects_bad_topics_with_reasons() {
        assert!(reason("spAv1.0/g/NDATA/e").contains("namespace"));
        assert!(reason("spBv1.0/g/NDATA").contains("too few"));
        assert!(reason("spBv1.0").contains("too few"));
        assert!(reason("spBv1.0/g/DDATA/e/d/x").contains("too many"));
        assert!(reason("spBv1.0/g/NFOO/e").contains("unknown message type"));
        assert!(reason("spBv1.0/g/ndata/e").contains("unknown message type"));
        assert!(reason("spBv1.0/g/DDATA/e").contains("needs a device"));
        assert!(reason("spBv1.0/g/NDATA/e/d").contains("takes no device"));
        assert!(reason("spBv1.0//NDATA/e").contains("empty group"));
        assert!(reason("spBv1.0/g/NDATA/").contains("empty edge node"));
        assert!(reason("spBv1.0/g/DDATA/e/").contains("empty device"));
        assert!(reason("spBv1.0/STATE/").contains("empty host"));
        assert!(reason("spBv1.0/g/NDATA/+").contains("wildcard"));
        assert!(reason("").contains("namespace"));
    }
}
