//! Lineage: where a record came from. Every stored record carries its source, the id of the
//! raw message it was decoded from, and the version of the mapping that decoded it, so any
//! decision can be traced back to the bytes a device sent.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::Timestamp;

/// The connector instance a record came through, e.g. `http`, `mqtt:plant-broker`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SourceId(pub String);

impl SourceId {
    /// The source name of records written through the HTTP API.
    pub fn http() -> Self {
        Self("http".to_owned())
    }
}

/// The id of one raw message (an HTTP request body, an MQTT publish, a Modbus poll).
///
/// Ids are unique per node and grow with time: they start from the receipt time in
/// nanoseconds, so they sort in arrival order and survive restarts without a counter file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RawMessageId(pub u64);

/// Hands out [`RawMessageId`]s: `max(now_ns, last + 1)`, lock-free.
#[derive(Debug, Default)]
pub struct RawMessageIds {
    last: AtomicU64,
}

impl RawMessageIds {
    /// A new generator.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next id; strictly greater than every id this generator returned before.
    pub fn next(&self) -> RawMessageId {
        let now = u64::try_from(Timestamp::now().nanos()).unwrap_or(0);
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let candidate = now.max(last + 1);
            match self.last.compare_exchange_weak(
                last,
                candidate,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return RawMessageId(candidate),
                Err(actual) => last = actual,
            }
        }
    }
}

/// The lineage stamp every stored record carries.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Lineage {
    /// The connector instance.
    pub source: SourceId,
    /// The raw message the record was decoded from.
    pub raw_id: RawMessageId,
    /// The version of the normalisation mapping that decoded it; 0 when no mapping was
    /// involved (line protocol and JSON samples are stored as sent).
    pub mapping_version: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_message_ids_strictly_increase() {
        let ids = RawMessageIds::new();
        let mut last = ids.next();
        for _ in 0..10_000 {
            let next = ids.next();
            assert!(next > last);
            last = next;
        }
    }
}
