//! The error type of `fabrik-alert`.

/// What can go wrong in alerting.
#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    /// The alert database failed.
    #[error("alert database: {0}")]
    Database(#[from] sqlx::Error),
    /// A stored row could not be decoded.
    #[error("alert database: corrupt {what}: {reason}")]
    Corrupt {
        /// Which record.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// No alert or silence with this id.
    #[error("no {what} with id `{id}`")]
    NotFound {
        /// `alert` or `silence`.
        what: &'static str,
        /// The id asked for.
        id: String,
    },
    /// A request that cannot be applied (e.g. acknowledging a pending alert).
    #[error("{0}")]
    Invalid(String),
    /// A request that would overwrite someone's record (acknowledging an acknowledged alert
    /// without saying to replace the verdict).
    #[error("{0}")]
    Conflict(String),
    /// A notification could not be delivered (it stays in the outbox).
    #[error("notifier `{notifier}`: {reason}")]
    Delivery {
        /// The notifier's name.
        notifier: String,
        /// Why.
        reason: String,
    },
}
