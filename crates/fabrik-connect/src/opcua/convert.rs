//! Conversion of one OPC UA `DataValue` into a [`Reading`]: the value into [`Value`], the
//! status code severity into [`Quality`], and the timestamp (source, else server, else the
//! time of receipt). Pure functions; the runtime calls them from the subscription callback.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use opcua::types::{DataValue, DateTime, StatusCode, Variant};

use super::{Quality, Reading, Value};

/// 100 ns ticks between 1601-01-01 (the OPC UA epoch) and 1970-01-01.
const TICKS_TO_UNIX_EPOCH: i64 = 116_444_736_000_000_000;

/// Builds the reading of one data change.
pub fn reading(
    device: &Arc<str>,
    signal: &Arc<str>,
    data: &DataValue,
    received_ns: i64,
) -> Reading {
    let status = data.status.unwrap_or(StatusCode::Good);
    Reading {
        device_id: Arc::clone(device),
        signal: Arc::clone(signal),
        timestamp_ns: timestamp_ns(data, received_ns),
        value: data.value.as_ref().and_then(value),
        quality: quality(status),
        status: status_text(status),
    }
}

/// Quality from the severity bits 30–31 (00 Good, 01 Uncertain, 10/11 Bad).
pub fn quality(status: StatusCode) -> Quality {
    match status.bits() >> 30 {
        0 => Quality::Good,
        1 => Quality::Uncertain,
        _ => Quality::Bad,
    }
}

/// The status code's symbolic name (`BadSensorFailure`), else its hex form.
pub fn status_text(status: StatusCode) -> String {
    let name = status.sub_code().name();
    if name.is_empty() || name == "Unknown" {
        format!("{:#010X}", status.bits())
    } else {
        name.to_owned()
    }
}

/// The timestamp in ns since the Unix epoch: source, else server, else `received_ns`.
pub fn timestamp_ns(data: &DataValue, received_ns: i64) -> i64 {
    [
        data.source_timestamp.as_ref(),
        data.server_timestamp.as_ref(),
    ]
    .into_iter()
    .flatten()
    .find_map(unix_ns)
    .unwrap_or(received_ns)
}

fn unix_ns(time: &DateTime) -> Option<i64> {
    if time.is_null() {
        return None;
    }
    let ticks = time.checked_ticks();
    if ticks <= 0 {
        return None;
    }
    (ticks - TICKS_TO_UNIX_EPOCH).checked_mul(100)
}

/// Converts a scalar variant; `None` for Empty, arrays and structures that have no scalar form.
pub fn value(variant: &Variant) -> Option<Value> {
    Some(match variant {
        Variant::Empty => return None,
        Variant::Boolean(b) => Value::Bool(*b),
        Variant::SByte(v) => Value::I64(i64::from(*v)),
        Variant::Byte(v) => Value::I64(i64::from(*v)),
        Variant::Int16(v) => Value::I64(i64::from(*v)),
        Variant::UInt16(v) => Value::I64(i64::from(*v)),
        Variant::Int32(v) => Value::I64(i64::from(*v)),
        Variant::UInt32(v) => Value::I64(i64::from(*v)),
        Variant::Int64(v) => Value::I64(*v),
        Variant::UInt64(v) => match i64::try_from(*v) {
            Ok(v) => Value::I64(v),
            Err(_) => Value::F64(*v as f64),
        },
        Variant::Float(v) => Value::F64(f64::from(*v)),
        Variant::Double(v) => Value::F64(*v),
        Variant::String(s) => Value::Str(s.as_ref().to_owned()),
        Variant::LocalizedText(t) => Value::Str(t.text.as_ref().to_owned()),
        Variant::DateTime(t) => Value::I64(unix_ns(t).unwrap_or(0)),
        Variant::StatusCode(s) => Value::Str(status_text(*s)),
        Variant::Variant(inner) => return value(inner),
        Variant::Array(_) | Variant::ExtensionObject(_) | Variant::ByteString(_) => return None,
        other => Value::Str(other.to_string()),
    })
}

/// Wall-clock now in ns since the Unix epoch (0 before it, saturating far after it).
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severity_bits_give_quality() {
        assert_eq!(quality(StatusCode::Good), Quality::Good);
        assert_eq!(
            quality(StatusCode::UncertainLastUsableValue),
            Quality::Uncertain
        );
        assert_eq!(quality(StatusCode::BadSensorFailure), Quality::Bad);
        assert_eq!(quality(StatusCode::BadNodeIdUnknown), Quality::Bad);
        // Info bits (overflow, limits) do not change the severity.
        assert_eq!(quality(StatusCode::from(0x0000_0480u32)), Quality::Good);
        assert_eq!(
            status_text(StatusCode::BadSensorFailure),
            "BadSensorFailure"
        );
    }

    #[test]
    fn variants_convert() {
        assert_eq!(value(&Variant::Double(1.5)), Some(Value::F64(1.5)));
        assert_eq!(value(&Variant::Float(0.5)), Some(Value::F64(0.5)));
        assert_eq!(value(&Variant::Int32(-3)), Some(Value::I64(-3)));
        assert_eq!(
            value(&Variant::UInt64(u64::MAX)),
            Some(Value::F64(u64::MAX as f64))
        );
        assert_eq!(value(&Variant::Boolean(true)), Some(Value::Bool(true)));
        assert_eq!(value(&Variant::from("on")), Some(Value::Str("on".into())));
        assert_eq!(value(&Variant::Empty), None);
    }

    #[test]
    fn timestamps_prefer_source_then_server_then_receipt() {
        let t = DateTime::ymd_hms(2024, 1, 2, 3, 4, 5);
        let expected = 1_704_164_645_000_000_000i64;
        let mut dv = DataValue::null();
        assert_eq!(timestamp_ns(&dv, 42), 42);
        dv.server_timestamp = Some(t);
        assert_eq!(timestamp_ns(&dv, 42), expected);
        dv.source_timestamp = Some(DateTime::ymd_hms(2024, 1, 2, 3, 4, 6));
        assert_eq!(timestamp_ns(&dv, 42), expected + 1_000_000_000);
        dv.source_timestamp = Some(DateTime::null());
        assert_eq!(timestamp_ns(&dv, 42), expected);
    }
}
