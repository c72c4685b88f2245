//! What an operator asks a connector to write to a device's point (decision 0090), and what
//! the write came to, whatever the protocol.

/// A value to set, as the caller gave it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SetValue {
    /// For number points, in engineering units.
    Number(f64),
    /// For switches (coils, `bool` registers, Boolean nodes).
    Bool(bool),
}

impl std::fmt::Display for SetValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Number(v) => write!(f, "{v}"),
            Self::Bool(v) => write!(f, "{v}"),
        }
    }
}

/// A write the device acknowledged, with its point's value type.
#[derive(Debug, Clone, PartialEq)]
pub struct Written<V> {
    /// The point's value read back after the write, or why it could not be read (the write
    /// was acknowledged all the same: a write-only register, a read that timed out).
    pub read_back: Result<V, String>,
    /// Whether the device holds exactly what was written. False when it answered the write
    /// but kept a value of its own (a drive that clamps, a program that overwrites it), or
    /// when it could not be read back.
    pub confirmed: bool,
}
