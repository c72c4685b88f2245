//! Time: nanosecond timestamps and the precisions clients send them in.

use serde::{Deserialize, Serialize};

use crate::CoreError;

/// Nanoseconds since the Unix epoch, UTC. Negative values are before 1970.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        // i64 nanoseconds last until the year 2262.
        Self(i64::try_from(now.as_nanos()).unwrap_or(i64::MAX))
    }

    /// Nanoseconds since the epoch.
    pub fn nanos(self) -> i64 {
        self.0
    }
}

/// The unit of timestamps in a write request (the InfluxDB `precision` parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Nanoseconds (the default).
    #[default]
    Ns,
    /// Microseconds.
    Us,
    /// Milliseconds.
    Ms,
    /// Seconds.
    S,
}

impl Precision {
    /// Parses the names InfluxDB 1.x and 2.x accept (`n`, `ns`, `u`, `us`, `µ`, `ms`, `s`).
    pub fn parse(text: &str) -> Result<Self, CoreError> {
        match text {
            "ns" | "n" | "nanosecond" => Ok(Self::Ns),
            "us" | "u" | "µ" | "µs" | "microsecond" => Ok(Self::Us),
            "ms" | "millisecond" => Ok(Self::Ms),
            "s" | "second" => Ok(Self::S),
            other => Err(CoreError::InvalidPrecision(other.to_owned())),
        }
    }

    /// Nanoseconds per unit.
    pub fn multiplier(self) -> i64 {
        match self {
            Self::Ns => 1,
            Self::Us => 1_000,
            Self::Ms => 1_000_000,
            Self::S => 1_000_000_000,
        }
    }

    /// The canonical short name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ns => "ns",
            Self::Us => "us",
            Self::Ms => "ms",
            Self::S => "s",
        }
    }

    /// Converts a timestamp in this precision to nanoseconds.
    pub fn to_nanos(self, value: i64) -> Result<i64, CoreError> {
        value
            .checked_mul(self.multiplier())
            .ok_or(CoreError::TimestampOverflow {
                value,
                precision: self.name(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_names_and_overflow() {
        assert_eq!(Precision::parse("ms"), Ok(Precision::Ms));
        assert_eq!(Precision::parse("u"), Ok(Precision::Us));
        assert!(Precision::parse("h").is_err());
        assert_eq!(Precision::S.to_nanos(2), Ok(2_000_000_000));
        assert!(Precision::S.to_nanos(i64::MAX / 10).is_err());
    }
}
