//! Validated identifiers: device ids and signal names.

use serde::{Deserialize, Serialize};

use crate::CoreError;

/// Maximum length of a device id, in bytes.
pub const MAX_ID_LEN: usize = 128;

fn validate(kind: &'static str, value: &str) -> Result<(), CoreError> {
    let fail = |reason| {
        Err(CoreError::InvalidId {
            kind,
            value: value.to_owned(),
            reason,
        })
    };
    if value.is_empty() {
        return fail("must not be empty");
    }
    if value.len() > MAX_ID_LEN {
        return fail("longer than 128 bytes");
    }
    // MQTT wildcards and separators must never be part of an id: a device id is spliced into
    // topic patterns, and `+`, `#` or `/` there would widen an ACL.
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
    {
        return fail("may contain only ASCII letters, digits, '-', '_', '.' and ':'");
    }
    Ok(())
}

/// The identity of a device: a stable, human-chosen name such as `pump-7`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DeviceId(String);

impl DeviceId {
    /// Validates and wraps a device id.
    pub fn new(value: impl Into<String>) -> Result<Self, CoreError> {
        let value = value.into();
        validate("device id", &value)?;
        Ok(Self(value))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for DeviceId {
    type Error = CoreError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<DeviceId> for String {
    fn from(id: DeviceId) -> Self {
        id.0
    }
}

impl std::fmt::Display for DeviceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The name of one signal of a device (`vibration_rms`, `motor_current`): a field in the store.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SignalName(String);

impl SignalName {
    /// Validates and wraps a signal name.
    pub fn new(value: impl Into<String>) -> Result<Self, CoreError> {
        let value = value.into();
        validate("signal name", &value)?;
        Ok(Self(value))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for SignalName {
    type Error = CoreError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<SignalName> for String {
    fn from(id: SignalName) -> Self {
        id.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_reject_wildcards_and_separators() {
        assert!(DeviceId::new("pump-7").is_ok());
        assert!(DeviceId::new("plant1:line2.pump_7").is_ok());
        for bad in ["", "+", "#", "a/b", "pump 7", "pümpe"] {
            let err = DeviceId::new(bad).expect_err(bad);
            assert!(err.to_string().contains("invalid device id"), "{err}");
        }
        assert!(DeviceId::new("x".repeat(129)).is_err());
    }

    #[test]
    fn device_id_deserialisation_validates() {
        let ok: DeviceId = serde_json::from_str("\"pump-7\"").expect("valid");
        assert_eq!(ok.as_str(), "pump-7");
        assert!(serde_json::from_str::<DeviceId>("\"a/#\"").is_err());
    }
}
