//! The error type of `fabrik-core`: invalid identifiers, values and timestamps.

/// Everything that can be wrong with a domain value built from user input.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CoreError {
    /// An identifier (device id, signal name) broke the naming rules.
    #[error("invalid {kind} `{value}`: {reason}")]
    InvalidId {
        /// What kind of identifier it was meant to be.
        kind: &'static str,
        /// The rejected text.
        value: String,
        /// Which rule it broke.
        reason: &'static str,
    },
    /// A timestamp precision name that is not one of ns, us, ms, s.
    #[error("invalid precision `{0}`: expected one of ns, us, ms, s")]
    InvalidPrecision(String),
    /// A timestamp that does not fit in i64 nanoseconds after applying its precision.
    #[error("timestamp {value} with precision {precision} overflows the nanosecond range")]
    TimestampOverflow {
        /// The raw timestamp.
        value: i64,
        /// The precision it was given in.
        precision: &'static str,
    },
    /// A quality name that is not good, uncertain or bad.
    #[error("invalid quality `{0}`: expected good, uncertain or bad")]
    InvalidQuality(String),
    /// A WAV clip Fabrik cannot read.
    #[error("not a WAV clip Fabrik can read: {0}")]
    InvalidWav(String),
}
