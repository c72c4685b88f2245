//! The registry's error type.

/// What can go wrong in the registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The database file could not be opened.
    #[error("cannot open the registry database {0}")]
    Open(String),
    /// A database operation failed.
    #[error("registry database: {0}")]
    Db(#[from] sqlx::Error),
    /// No such device.
    #[error("device `{0}` is not registered")]
    NotFound(String),
    /// The id is taken.
    #[error("device `{0}` is already registered")]
    Exists(String),
    /// Input that cannot be stored.
    #[error("{0}")]
    Invalid(String),
    /// Unknown device, wrong token or disabled device (deliberately not told apart).
    #[error("unknown device or wrong token")]
    BadCredentials,
    /// No such user.
    #[error("user `{0}` does not exist")]
    UserNotFound(String),
    /// The user name is taken.
    #[error("user `{0}` already exists")]
    UserExists(String),
    /// Too many failed sign-ins for this name.
    #[error("too many failed sign-ins; try again in {} s", retry_after.as_secs().max(1))]
    Locked {
        /// How long until the next attempt is checked.
        retry_after: std::time::Duration,
    },
    /// No such use case.
    #[error("use case `{0}` is not defined")]
    UseCaseNotFound(String),
    /// A stored record that cannot be read back.
    #[error("{0}")]
    Corrupt(String),
    /// The caller may not do this to this device (a token holder replacing a key bound to
    /// another TPM).
    #[error("{0}")]
    Refused(String),
    /// Something other than a device that the request names does not exist (a policy).
    #[error("{0}")]
    Absent(String),
    /// The change was overtaken by another.
    #[error("{0}")]
    Conflict(String),
    /// Token generation or hashing failed.
    #[error("token handling failed: {0}")]
    Token(String),
}
