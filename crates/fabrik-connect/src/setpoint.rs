//! What an operator asks a connector to write to a device's point (decision 0090), whatever
//! the protocol.

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
