//! `_point_errors`: the rows that explain a point whose value is missing — a Modbus or OPC UA
//! point that could not be read, a Sparkplug metric gone stale with its node's or device's
//! death — so a gap in the data is explained rather than silent, and a rollup's time-weighted
//! means (decision 0087) stop counting the value before it.

use fabrik_core::{Point, Quality, Timestamp, Value};

/// Table of points whose value could not be had.
pub const POINT_ERRORS_TABLE: &str = "_point_errors";

/// Where a missing point's value would have gone: its device, signal and table.
pub struct PointOf<'a> {
    /// The device (the `device` tag of the table's rows).
    pub device: &'a str,
    /// The signal (the table's field).
    pub signal: &'a str,
    /// The table.
    pub table: &'a str,
}

/// The `_point_errors` row for a point that `source` could not read. It names the table the
/// value would have gone to (`table_name`), so a rollup of that table ends the value standing
/// there and no other table's.
pub fn point_error(point: PointOf<'_>, source: &str, reason: String, time_ns: i64) -> Point {
    Point {
        measurement: POINT_ERRORS_TABLE.into(),
        tags: vec![
            ("device".into(), point.device.to_owned()),
            ("signal".into(), point.signal.to_owned()),
            ("source".into(), source.to_owned()),
            ("table_name".into(), point.table.to_owned()),
        ],
        fields: vec![("reason".into(), Value::Str(reason))],
        time: Timestamp(time_ns),
        quality: Quality::Bad,
    }
}
