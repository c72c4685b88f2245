//! Writing the items declared `writable` (decision 0090): the node's `DataType` (and value) is
//! read first, with its declared `EURange` (decision 0094), and the operator's value is
//! converted to that type (a server answers `BadTypeMismatch` to a Double written to an Int16
//! node), checked against the item's range, the node's `EURange` and the type's; then written
//! on the server's current session and read back.
//!
//! A write goes out on the session the server's task keeps connected, concurrently with its
//! subscription (OPC UA sessions take concurrent requests; the task polls the session's event
//! loop, which sends them, whatever the store's pace); while that session is down, a write is
//! refused at once rather than queued for a reconnect.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use opcua::client::Session;
use opcua::types::{
    AttributeId, DataValue, NodeId, ReadValueId, StatusCode, TimestampsToReturn, Variant,
    WriteValue,
};
use parking_lot::Mutex;

use super::convert;
use super::declared::{Declared, LookupFailed, disjoint, read_declared};
use super::plan::ServerPlan;
use super::{OpcUaError, Value};
use crate::setpoint::{NumberType, SetValue, checked_number, checked_text};

/// What a server's task shares with the writer: its connected session (set and cleared by the
/// task), the lock that lets one write at a time use the session, and what the server last
/// said its writable nodes declare (read on connecting and at each write).
#[derive(Default)]
pub(crate) struct ServerLink {
    session: Mutex<Option<Arc<Session>>>,
    writing: tokio::sync::Mutex<()>,
    declared: Mutex<HashMap<NodeId, Declared>>,
}

impl ServerLink {
    pub(crate) fn set_session(&self, session: Option<Arc<Session>>) {
        *self.session.lock() = session;
    }

    /// Keeps what nodes declare, for the list of writable points: all at once, so the list
    /// shows one lookup's answers together.
    pub(crate) fn remember(&self, declared: impl IntoIterator<Item = (NodeId, Declared)>) {
        self.declared.lock().extend(declared);
    }

    fn declared(&self, node: &NodeId) -> Option<Declared> {
        self.declared.lock().get(node).cloned()
    }

    /// The session to write on now, or why there is none; nothing was sent.
    fn usable(&self, server: &Arc<str>) -> Result<Arc<Session>, OpcUaError> {
        self.session
            .lock()
            .clone()
            .ok_or_else(|| OpcUaError::NotConnected {
                server: Arc::clone(server),
                why: "it is not connected",
            })
    }
}

/// An OPC UA write the server accepted; `confirmed` compares the variant read back with the
/// one written.
pub type Written = crate::setpoint::Written<Value>;

/// A writable item, as the writer finds it.
#[derive(Debug, Clone)]
pub struct WritableItem {
    /// The server's id.
    pub server: Arc<str>,
    /// Device id.
    pub device: Arc<str>,
    /// Signal name.
    pub signal: Arc<str>,
    /// The node.
    pub node_id: NodeId,
    /// The node id as configured.
    pub node_text: String,
    /// The range a write may set (numeric nodes), as configured.
    pub range: Option<(f64, f64)>,
    /// What the node declares (its `EURange` and unit), as last read: on connecting and at
    /// each write; `None` until then.
    pub declared: Option<Declared>,
}

impl WritableItem {
    /// The range a write may set as far as known now, and where it comes from (decision
    /// 0094): `configuration`; `device`, the node's `EURange`; `configuration and device`, the
    /// configured range narrowed by the declared one; `configuration outside the device's`,
    /// a configured range the declared one does not overlap (every write is refused; the
    /// configured range is given).
    pub fn write_range(&self) -> Option<((f64, f64), &'static str)> {
        let declared = self.declared.as_ref().and_then(Declared::usable_range);
        match (self.range, declared) {
            (Some(configured), Some(declared)) if disjoint(configured, declared) => {
                Some((configured, "configuration outside the device's"))
            }
            (Some((min, max)), Some((low, high))) if low > min || high < max => {
                Some(((min.max(low), max.min(high)), "configuration and device"))
            }
            (Some(range), _) => Some((range, "configuration")),
            (None, Some(range)) => Some((range, "device")),
            (None, None) => None,
        }
    }
}

/// A server's link and its request timeout.
type ServerEntry = (Arc<ServerLink>, Duration);

/// The writable items of the configured servers, and the sessions to write them on.
#[derive(Clone, Default)]
pub struct OpcUaWriter {
    items: Arc<Vec<WritableItem>>,
    /// Devices with any item, writable or not.
    devices: Arc<Vec<Arc<str>>>,
    /// Per server: its link and its request timeout.
    links: Arc<HashMap<Arc<str>, ServerEntry>>,
}

impl std::fmt::Debug for OpcUaWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpcUaWriter")
            .field("items", &self.items)
            .field("servers", &self.links.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl OpcUaWriter {
    /// The writer of `servers`, and per server the link its task keeps up to date.
    pub(crate) fn new(servers: &[ServerPlan]) -> (Self, Vec<Arc<ServerLink>>) {
        let mut items = Vec::new();
        let mut devices: Vec<Arc<str>> = Vec::new();
        let mut links = HashMap::new();
        let mut handed = Vec::with_capacity(servers.len());
        for server in servers {
            for item in &server.items {
                if !devices.contains(&item.device) {
                    devices.push(Arc::clone(&item.device));
                }
                if item.writable {
                    items.push(WritableItem {
                        server: Arc::clone(&server.id),
                        device: Arc::clone(&item.device),
                        signal: Arc::clone(&item.signal),
                        node_id: item.node_id.clone(),
                        node_text: item.node_text.clone(),
                        range: item.range,
                        declared: None,
                    });
                }
            }
            let link = Arc::new(ServerLink::default());
            handed.push(Arc::clone(&link));
            links.insert(Arc::clone(&server.id), (link, server.request_timeout));
        }
        devices.sort();
        (
            Self {
                items: Arc::new(items),
                devices: Arc::new(devices),
                links: Arc::new(links),
            },
            handed,
        )
    }

    /// Every writable item, with what its node declared when last read.
    pub fn items(&self) -> Vec<WritableItem> {
        self.items
            .iter()
            .map(|item| WritableItem {
                declared: self
                    .links
                    .get(&item.server)
                    .and_then(|(link, _)| link.declared(&item.node_id)),
                ..item.clone()
            })
            .collect()
    }

    /// Whether `device` has items on one of the servers.
    pub fn serves(&self, device: &str) -> bool {
        self.devices.iter().any(|d| &**d == device)
    }

    /// Reads the node, converts `value` to its type, writes it and reads it back. One write at
    /// a time per server: two operators setting one node each see the value they wrote.
    pub async fn write(
        &self,
        device: &str,
        signal: &str,
        value: SetValue,
    ) -> Result<Written, OpcUaError> {
        if !self.serves(device) {
            return Err(OpcUaError::UnknownDevice(device.to_owned()));
        }
        let item = self
            .items
            .iter()
            .find(|i| &*i.device == device && &*i.signal == signal)
            .ok_or_else(|| OpcUaError::NotWritable {
                device: device.to_owned(),
                signal: signal.to_owned(),
            })?;
        let (link, timeout) =
            self.links
                .get(&item.server)
                .ok_or_else(|| OpcUaError::NotConnected {
                    server: Arc::clone(&item.server),
                    why: "it is not configured",
                })?;
        let _turn = tokio::time::timeout(*timeout, link.writing.lock())
            .await
            .map_err(|_| OpcUaError::Busy(Arc::clone(&item.server)))?;
        let session = link.usable(&item.server)?;
        // Nothing is sent until this read has answered: its failure is "not written".
        let invalid = |reason: String| OpcUaError::InvalidValue {
            device: device.to_owned(),
            signal: signal.to_owned(),
            reason,
        };
        let read_before = |status| OpcUaError::ReadBefore {
            server: Arc::clone(&item.server),
            node_id: item.node_text.clone(),
            status,
        };
        let nodes = [item.node_id.clone()];
        let (template, declared) = tokio::join!(
            node_type(&session, &item.node_id, *timeout),
            read_declared(&session, &nodes, *timeout)
        );
        let template = template.map_err(read_before)?.map_err(invalid)?;
        let failed = |why: String| LookupFailed {
            why,
            data_type: None,
        };
        let declared = match declared {
            Ok(declared) => declared
                .into_iter()
                .next()
                .unwrap_or_else(|| Err(failed("the server's answer was empty".to_owned()))),
            Err(status) => Err(failed(format!(
                "looking up its EURange: {}",
                convert::status_text(status)
            ))),
        };
        let declared = match declared {
            Ok(declared) => {
                link.remember([(item.node_id.clone(), declared.clone())]);
                declared
            }
            // A Boolean or a String has no range: what the lookup could not tell does not
            // concern it.
            Err(_) if matches!(template, Variant::Boolean(_) | Variant::String(_)) => {
                Declared::default()
            }
            // Unknown is not "none": the node may declare a narrower range than configured.
            Err(LookupFailed { why, .. }) => return Err(read_before(why)),
        };
        let variant = to_variant(&template, value, item.range, declared.eu_range.as_ref())
            .map_err(invalid)?;
        // The session may have been lost while the read was answered.
        let session = link.usable(&item.server)?;
        let write = WriteValue {
            node_id: item.node_id.clone(),
            attribute_id: AttributeId::Value as u32,
            index_range: Default::default(),
            value: DataValue::value_only(variant.clone()),
        };
        let statuses = with_timeout(*timeout, session.write(&[write]))
            .await
            .map_err(|status| OpcUaError::Request {
                server: Arc::clone(&item.server),
                what: format!("write {}", item.node_text),
                status,
            })?;
        let status = statuses
            .first()
            .copied()
            .unwrap_or(StatusCode::BadUnexpectedError);
        // Bad: refused. Good (GoodClamped too) and Uncertain: taken, as the read-back tells.
        if status.is_bad() {
            return Err(OpcUaError::WriteRefused {
                device: device.to_owned(),
                signal: signal.to_owned(),
                node_id: item.node_text.clone(),
                status: convert::status_text(status),
            });
        }
        Ok(match read_value(&session, &item.node_id, *timeout).await {
            Ok(after) => Written {
                read_back: Ok(convert::value(&after).unwrap_or(Value::Str(after.to_string()))),
                confirmed: after == variant,
            },
            Err(status) => Written {
                read_back: Err(format!(
                    "server `{}`: read back {}: {status}",
                    item.server, item.node_text
                )),
                confirmed: false,
            },
        })
    }
}

/// A value of the type a write to the node must have: its `DataType` attribute when that is a
/// concrete Boolean, number or String type (a node without a value yet can then be written), else
/// its current value's (an abstract `Number` or `BaseDataType` node takes what it holds). The
/// outer error is the read's; the inner one says why the node's type cannot be known.
async fn node_type(
    session: &Session,
    node_id: &NodeId,
    timeout: Duration,
) -> Result<Result<Variant, String>, String> {
    let read = |attribute: AttributeId| ReadValueId {
        node_id: node_id.clone(),
        attribute_id: attribute as u32,
        ..Default::default()
    };
    let values = with_timeout(
        timeout,
        session.read(
            &[read(AttributeId::DataType), read(AttributeId::Value)],
            TimestampsToReturn::Neither,
            0.0,
        ),
    )
    .await?;
    let mut values = values.into_iter();
    let data_type = values
        .next()
        .ok_or_else(|| "no value in the answer".to_owned())?;
    // The attribute every variable has could not be read (an unknown node id, access
    // refused): a problem of the node or the server, not of the value.
    if let Some(status) = data_type.status
        && status.is_bad()
    {
        return Err(convert::status_text(status));
    }
    let declared = match data_type.value {
        Some(Variant::NodeId(id)) => template_of(&id),
        _ => None,
    };
    if let Some(template) = declared {
        return Ok(Ok(template));
    }
    let Some(current) = values.next() else {
        return Err("no value in the answer".to_owned());
    };
    if let Some(status) = current.status
        && status.is_bad()
    {
        return Ok(Err(format!(
            "the node's type is not a number, Boolean or String type Fabrik knows, and its value, \
             which would say what it holds, is {}",
            convert::status_text(status)
        )));
    }
    let mut variant = current.value.unwrap_or(Variant::Empty);
    while let Variant::Variant(inner) = variant {
        variant = *inner;
    }
    Ok(Ok(variant))
}

/// A value of `data_type` when it is a concrete Boolean, number or String type.
pub(crate) fn template_of(data_type: &NodeId) -> Option<Variant> {
    use opcua::types::DataTypeId as T;
    Some(match data_type.as_data_type_id().ok()? {
        T::Boolean => Variant::Boolean(false),
        T::String => Variant::String(opcua::types::UAString::null()),
        T::SByte => Variant::SByte(0),
        T::Byte => Variant::Byte(0),
        T::Int16 => Variant::Int16(0),
        T::UInt16 => Variant::UInt16(0),
        T::Int32 => Variant::Int32(0),
        T::UInt32 => Variant::UInt32(0),
        T::Int64 => Variant::Int64(0),
        T::UInt64 => Variant::UInt64(0),
        T::Float => Variant::Float(0.0),
        T::Double => Variant::Double(0.0),
        _ => return None,
    })
}

/// The node's current value (read from the device, not a cache), nested variants unwrapped.
async fn read_value(
    session: &Session,
    node_id: &NodeId,
    timeout: Duration,
) -> Result<Variant, String> {
    let read = ReadValueId {
        node_id: node_id.clone(),
        attribute_id: AttributeId::Value as u32,
        ..Default::default()
    };
    let values = with_timeout(
        timeout,
        session.read(&[read], TimestampsToReturn::Neither, 0.0),
    )
    .await?;
    let value = values
        .into_iter()
        .next()
        .ok_or_else(|| "no value in the answer".to_owned())?;
    if let Some(status) = value.status
        && status.is_bad()
    {
        return Err(convert::status_text(status));
    }
    let mut variant = value
        .value
        .ok_or_else(|| "no value was read back".to_owned())?;
    while let Variant::Variant(inner) = variant {
        variant = *inner;
    }
    Ok(variant)
}

/// A service call within the request timeout (a second more than the session's own).
async fn with_timeout<T>(
    timeout: Duration,
    call: impl Future<Output = Result<T, opcua::types::Error>>,
) -> Result<T, String> {
    call_within(timeout, call)
        .await
        .map_err(convert::status_text)
}

/// [`with_timeout`], its failure as the status code.
pub(crate) async fn call_within<T>(
    timeout: Duration,
    call: impl Future<Output = Result<T, opcua::types::Error>>,
) -> Result<T, StatusCode> {
    match tokio::time::timeout(timeout + Duration::from_secs(1), call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(e.status()),
        Err(_) => Err(StatusCode::BadTimeout),
    }
}

/// `value` as a variant of `current`'s type, within the configured `range`, the node's
/// declared `eu_range` (either alone suffices; a number needs one of them) and the type's own
/// bounds. An unusable `EURange` is passed over when the configuration gives a range.
pub fn to_variant(
    current: &Variant,
    value: SetValue,
    range: Option<(f64, f64)>,
    eu_range: Option<&Result<(f64, f64), String>>,
) -> Result<Variant, String> {
    let kind = type_name(current);
    let number = match (current, value) {
        (Variant::Boolean(_), SetValue::Bool(b)) => return Ok(Variant::Boolean(b)),
        (Variant::Boolean(_), _) => {
            return Err("the node is a Boolean: give true or false".into());
        }
        (Variant::String(_), SetValue::Text(text)) => {
            return Ok(Variant::String(checked_text(text)?.into()));
        }
        (Variant::String(_), _) => return Err("the node holds a String: give text".into()),
        (numeric, SetValue::Bool(_) | SetValue::Text(_)) if numeric.is_numeric() => {
            return Err(format!("the node holds a {kind}: give a number"));
        }
        (numeric, SetValue::Number(v)) if numeric.is_numeric() => v,
        (Variant::Empty, _) => {
            return Err(
                "the node has no value yet, and its DataType is not a number, Boolean or \
                 String type Fabrik knows: nothing says what to write it as"
                    .into(),
            );
        }
        (_, _) => {
            return Err(format!(
                "the node holds a {kind}; only numbers, Booleans and Strings are written"
            ));
        }
    };
    if !number.is_finite() {
        return Err(format!("{number} is not a finite number"));
    }
    let eu_range = match eu_range {
        Some(Ok(declared)) => Some(*declared),
        Some(Err(why)) if range.is_none() => {
            return Err(format!(
                "the node holds a number, its item declares no `min` and `max`, and {why}: \
                 nothing is written to it until the configuration says what range operators \
                 may set"
            ));
        }
        _ => None,
    };
    let Some(limits) = range.or(eu_range) else {
        return Err(
            "the node holds a number, its item declares no `min` and `max` and the node no \
             `EURange`: nothing is written to it until the configuration says what range \
             operators may set"
                .into(),
        );
    };
    if let Some((low, high)) = eu_range
        && !(low..=high).contains(&number)
    {
        return Err(format!(
            "{number} is outside the node's EURange {low}..={high} (the range its server \
             declares for it)"
        ));
    }
    let checked = |ty| checked_number(number, ty, limits, "the node", &kind);
    // Each cast is exact: `checked_number` kept the value whole and inside the type.
    Ok(match current {
        Variant::SByte(_) => Variant::SByte(checked(NumberType::Int8)? as i8),
        Variant::Byte(_) => Variant::Byte(checked(NumberType::UInt8)? as u8),
        Variant::Int16(_) => Variant::Int16(checked(NumberType::Int16)? as i16),
        Variant::UInt16(_) => Variant::UInt16(checked(NumberType::UInt16)? as u16),
        Variant::Int32(_) => Variant::Int32(checked(NumberType::Int32)? as i32),
        Variant::UInt32(_) => Variant::UInt32(checked(NumberType::UInt32)? as u32),
        Variant::Int64(_) => Variant::Int64(checked(NumberType::Int64)? as i64),
        Variant::UInt64(_) => Variant::UInt64(checked(NumberType::UInt64)? as u64),
        Variant::Float(_) => Variant::Float(checked(NumberType::Float)? as f32),
        _ => Variant::Double(checked(NumberType::Double)?),
    })
}

/// The variant's OPC UA type name (`Int16`, `Double`, ...).
pub(crate) fn type_name(variant: &Variant) -> String {
    variant
        .scalar_type_id()
        .map_or_else(|| "empty value".to_owned(), |t| format!("{t:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_take_the_type_the_node_holds() {
        let range = Some((-1e6, 1e6));
        let cases = [
            (Variant::Double(0.0), 7.25, Variant::Double(7.25)),
            (Variant::Float(0.0), 7.25, Variant::Float(7.25)),
            (Variant::Int16(0), -300.0, Variant::Int16(-300)),
            (Variant::UInt16(0), 300.0, Variant::UInt16(300)),
            (Variant::Int32(0), 70_000.0, Variant::Int32(70_000)),
            (Variant::UInt32(0), 70_000.0, Variant::UInt32(70_000)),
            (Variant::Int64(0), -5.0, Variant::Int64(-5)),
            (Variant::UInt64(0), 5.0, Variant::UInt64(5)),
            (Variant::SByte(0), -5.0, Variant::SByte(-5)),
            (Variant::Byte(0), 200.0, Variant::Byte(200)),
        ];
        for (current, value, want) in cases {
            assert_eq!(
                to_variant(&current, SetValue::Number(value), range, None),
                Ok(want),
                "{current:?}"
            );
        }
        assert_eq!(
            to_variant(&Variant::Boolean(false), SetValue::Bool(true), None, None),
            Ok(Variant::Boolean(true))
        );
    }

    #[test]
    fn a_declared_data_type_gives_the_type_to_write() {
        use opcua::types::DataTypeId;
        assert_eq!(
            template_of(&DataTypeId::Int16.into()),
            Some(Variant::Int16(0))
        );
        assert_eq!(
            template_of(&DataTypeId::SByte.into()),
            Some(Variant::SByte(0))
        );
        // Abstract types leave it to the node's current value.
        assert_eq!(template_of(&DataTypeId::Number.into()), None);
        assert_eq!(template_of(&DataTypeId::BaseDataType.into()), None);
        assert_eq!(template_of(&NodeId::new(2, "Custom")), None);
    }

    #[test]
    fn values_that_the_node_cannot_hold_or_the_item_forbids_are_refused() {
        let range = Some((-1e6, 1e6));
        let refused = |current: Variant, value: SetValue, range| {
            to_variant(&current, value, range, None).expect_err("refused")
        };
        let e = refused(Variant::Int16(0), SetValue::Number(1.5), range);
        assert!(e.contains("not a whole number"), "{e}");
        let e = refused(Variant::Byte(0), SetValue::Number(300.0), range);
        assert!(e.contains("does not fit a Byte (0..=255)"), "{e}");
        let e = refused(Variant::UInt16(0), SetValue::Number(-1.0), range);
        assert!(e.contains("does not fit"), "{e}");
        let e = refused(
            Variant::Double(0.0),
            SetValue::Number(7.0),
            Some((0.0, 6.5)),
        );
        assert_eq!(e, "7 is outside the point's range 0..=6.5");
        let e = refused(Variant::Double(0.0), SetValue::Number(7.0), None);
        assert!(e.contains("declares no `min` and `max`"), "{e}");
        let e = refused(Variant::Double(0.0), SetValue::Bool(true), range);
        assert!(e.contains("give a number"), "{e}");
        let e = refused(Variant::Boolean(true), SetValue::Number(1.0), range);
        assert!(e.contains("give true or false"), "{e}");
        let e = refused(Variant::String("a".into()), SetValue::Number(1.0), range);
        assert_eq!(e, "the node holds a String: give text");
        let e = refused(Variant::Double(0.0), SetValue::Text("1".into()), range);
        assert_eq!(e, "the node holds a Double: give a number");
        let e = refused(
            Variant::DateTime(Box::default()),
            SetValue::Number(1.0),
            range,
        );
        assert!(e.contains("only numbers, Booleans and Strings"), "{e}");
        // A String node (or one whose DataType is String and has no value yet) takes text,
        // whatever range is configured.
        let template = template_of(&opcua::types::DataTypeId::String.into()).expect("String");
        assert_eq!(
            to_variant(&template, SetValue::Text("B-7".into()), range, None),
            Ok(Variant::String("B-7".into()))
        );
        let e = refused(Variant::Double(0.0), SetValue::Number(f64::NAN), range);
        assert!(e.contains("not a finite number"), "{e}");
        let e = refused(
            Variant::Float(0.0),
            SetValue::Number(1e300),
            Some((0.0, f64::MAX)),
        );
        assert!(e.contains("does not fit a Float"), "{e}");
    }

    #[test]
    fn a_declared_eu_range_limits_writes_alone_or_with_the_configuration() {
        let double = Variant::Double(0.0);
        let set = |value: f64, range, eu: Option<Result<(f64, f64), String>>| {
            to_variant(&double, SetValue::Number(value), range, eu.as_ref())
        };
        // The node's EURange alone is enough to write.
        assert_eq!(
            set(75.0, None, Some(Ok((0.0, 80.0)))),
            Ok(Variant::Double(75.0))
        );
        let e = set(90.0, None, Some(Ok((0.0, 80.0)))).unwrap_err();
        assert_eq!(
            e,
            "90 is outside the node's EURange 0..=80 (the range its server declares for it)"
        );
        // Both: a value must lie inside each, and each refusal names its own range.
        let both = Some((10.0, 200.0));
        assert_eq!(
            set(50.0, both, Some(Ok((0.0, 100.0)))),
            Ok(Variant::Double(50.0))
        );
        let e = set(150.0, both, Some(Ok((0.0, 100.0)))).unwrap_err();
        assert!(e.contains("outside the node's EURange 0..=100"), "{e}");
        let e = set(5.0, both, Some(Ok((0.0, 100.0)))).unwrap_err();
        assert_eq!(e, "5 is outside the point's range 10..=200");
        // An EURange that is not a usable range: passed over when the configuration gives one,
        // named when it would have been the only one.
        let broken = || Some(Err("its EURange's low 50 is above its high 10".to_owned()));
        assert_eq!(set(150.0, both, broken()), Ok(Variant::Double(150.0)));
        let e = set(20.0, None, broken()).unwrap_err();
        assert!(
            e.contains(
                "declares no `min` and `max`, and its EURange's low 50 is above its high 10"
            ),
            "{e}"
        );
        let e = set(20.0, None, None).unwrap_err();
        assert!(e.contains("the node no `EURange`"), "{e}");
        let e = set(f64::NAN, None, Some(Ok((0.0, 80.0)))).unwrap_err();
        assert!(e.contains("not a finite number"), "{e}");
        // The type's own bounds still hold inside a declared range.
        let e = to_variant(
            &Variant::Byte(0),
            SetValue::Number(300.0),
            None,
            Some(&Ok((0.0, 1000.0))),
        )
        .unwrap_err();
        assert!(e.contains("does not fit a Byte"), "{e}");
    }

    #[test]
    fn the_listed_range_is_the_configured_one_narrowed_to_the_declared_one() {
        let item = |range, eu_range| WritableItem {
            server: "s".into(),
            device: "d".into(),
            signal: "x".into(),
            node_id: NodeId::new(2, "X"),
            node_text: "ns=2;s=X".into(),
            range,
            declared: Some(Declared {
                data_type: Some("Double".into()),
                eu_range,
                unit: None,
            }),
        };
        assert_eq!(
            item(Some((10.0, 200.0)), Some(Ok((0.0, 100.0)))).write_range(),
            Some(((10.0, 100.0), "configuration and device"))
        );
        // Inside the declared range: nothing narrowed.
        assert_eq!(
            item(Some((2.0, 6.5)), Some(Ok((0.0, 100.0)))).write_range(),
            Some(((2.0, 6.5), "configuration"))
        );
        // No overlap: the configured range, said to be outside the device's.
        assert_eq!(
            item(Some((1000.0, 2000.0)), Some(Ok((0.0, 900.0)))).write_range(),
            Some(((1000.0, 2000.0), "configuration outside the device's"))
        );
        assert_eq!(
            item(None, Some(Ok((0.0, 100.0)))).write_range(),
            Some(((0.0, 100.0), "device"))
        );
        assert_eq!(
            item(Some((1.0, 2.0)), Some(Err("broken".into()))).write_range(),
            Some(((1.0, 2.0), "configuration"))
        );
        assert_eq!(item(None, None).write_range(), None);
    }
}
