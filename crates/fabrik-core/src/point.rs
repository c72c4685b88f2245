//! Points and samples: the records the store holds.
//!
//! A *point* is one row of a table: a measurement (the table), tags (the series key), typed
//! fields and a time — the InfluxDB model. A device *sample* is one signal's value at one time;
//! it maps onto a point with the device id as the `device` tag and the signal as the field.

use serde::{Deserialize, Serialize};

use crate::{DeviceId, Lineage, Quality, SignalName, Timestamp, Value};

/// One row of a measurement. Tags identify the series; the same series and time written twice
/// keep the last value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// The measurement, stored as the SQL table of the same name.
    pub measurement: String,
    /// Tag key/value pairs (the series key).
    pub tags: Vec<(String, String)>,
    /// Field name/value pairs; at least one.
    pub fields: Vec<(String, Value)>,
    /// The time of the point.
    pub time: Timestamp,
    /// How far the values can be trusted.
    pub quality: Quality,
}

/// One signal of one device at one time, as connectors produce it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// The device.
    pub device: DeviceId,
    /// The measurement (table) the device's signals are stored in, e.g. `pump`.
    pub measurement: String,
    /// The signal, stored as a field.
    pub signal: SignalName,
    /// When the value was measured (or received, when the device sends no time).
    pub time: Timestamp,
    /// The value.
    pub value: Value,
    /// Its quality.
    pub quality: Quality,
    /// Where it came from.
    pub lineage: Lineage,
}

/// The tag that carries the device id when a sample becomes a point.
pub const DEVICE_TAG: &str = "device";

impl Sample {
    /// The point this sample is stored as.
    pub fn to_point(&self) -> Point {
        Point {
            measurement: self.measurement.clone(),
            tags: vec![(DEVICE_TAG.to_owned(), self.device.as_str().to_owned())],
            fields: vec![(self.signal.as_str().to_owned(), self.value.clone())],
            time: self.time,
            quality: self.quality,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{RawMessageId, SourceId};

    #[test]
    fn a_sample_maps_onto_a_device_tagged_point() {
        let sample = Sample {
            device: DeviceId::new("pump-7").expect("id"),
            measurement: "pump".into(),
            signal: SignalName::new("vibration_rms").expect("name"),
            time: Timestamp(5),
            value: Value::F64(0.25),
            quality: Quality::Uncertain,
            lineage: Lineage {
                source: SourceId("mqtt".into()),
                raw_id: RawMessageId(9),
                mapping_version: 3,
            },
        };
        let point = sample.to_point();
        assert_eq!(point.measurement, "pump");
        assert_eq!(point.tags, vec![("device".into(), "pump-7".into())]);
        assert_eq!(
            point.fields,
            vec![("vibration_rms".into(), Value::F64(0.25))]
        );
        assert_eq!(point.quality, Quality::Uncertain);
    }
}
