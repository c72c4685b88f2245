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
    /// Token generation or hashing failed.
    #[error("token handling failed: {0}")]
    Token(String),
}
