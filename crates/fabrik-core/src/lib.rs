//! Fabrik's domain types, shared by every other crate: series and points, typed values,
//! OPC UA-style quality, events, lineage, time, blob references, the InfluxDB line-protocol
//! parser and the WAV reader.
//!
//! This crate does no I/O and knows nothing about storage formats (no Arrow here), so every
//! crate can depend on it without pulling in the world.

pub mod blob;
pub mod error;
pub mod event;
pub mod id;
pub mod line_protocol;
pub mod lineage;
pub mod point;
pub mod time;
pub mod value;
pub mod wav;

pub use blob::{BlobId, BlobRow};
pub use error::CoreError;
pub use event::{Event, Severity};
pub use id::{DeviceId, SignalName};
pub use lineage::{Lineage, RawMessageId, RawMessageIds, SourceId};
pub use point::{Point, Sample};
pub use time::{Precision, Timestamp};
pub use value::{FieldType, Quality, Value};
