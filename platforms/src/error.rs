//! The outcome classes of a platform call, classified where the platform's answer is understood;
//! the jobs decide on the variant, never on a string.

use std::time::Duration;

/// Whose limit a platform said is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitScope {
    /// The account's own limit: only its work waits. Also where the platform does not say whose
    /// limit it is (LinkedIn's 429s, Mastodon, Bluesky).
    Account,
    /// The limit of Herald's app on the platform, which every tenant's calls share: all of the
    /// platform's work waits (X's `x-app-limit-24hour-*` spent or its usage cap, Meta's code 4).
    App,
}

impl LimitScope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Account => "account",
            Self::App => "app",
        }
    }
}

/// The outcome classes of a platform call. The share job maps each to a share state.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    /// The credentials are dead (revoked, deleted, missing scope): reauthorize.
    #[error("credentials rejected: {reason}")]
    Unauthorized { reason: String },
    /// The access token expired but a refresh may revive it.
    #[error("access token expired")]
    TokenExpired,
    /// The refresh grant itself is dead (`invalid_grant` or the platform's equivalent).
    #[error("refresh refused: {reason}")]
    InvalidGrant { reason: String },
    /// Wait before trying again; `retry_after` is what the platform said, if anything, and
    /// `scope` whose limit it is.
    #[error("rate limited ({})", scope.as_str())]
    RateLimited {
        retry_after: Option<Duration>,
        scope: LimitScope,
    },
    /// The platform refused the content or request for good.
    #[error("rejected ({status}): {reason}")]
    Rejected { status: u16, reason: String },
    /// Worth retrying: a 5xx, a dropped connection, a timeout before anything was sent.
    #[error("transient failure: {reason}")]
    Transient { status: Option<u16>, reason: String },
    /// The request was sent and no answer came back: the post may or may not exist.
    #[error("no answer after the request was sent: {reason}")]
    OutcomeUnknown { reason: String },
    /// The platform does not offer this operation.
    #[error("{0} is not supported by this platform")]
    Unsupported(&'static str),
}

impl PlatformError {
    /// The class name stored with an attempt and shown by the API.
    pub fn class(&self) -> &'static str {
        match self {
            Self::Unauthorized { .. } | Self::InvalidGrant { .. } => "needs_reauth",
            Self::TokenExpired => "token_expired",
            Self::RateLimited { .. } => "rate_limited",
            Self::Rejected { .. } => "rejected",
            Self::Transient { .. } => "transient",
            Self::OutcomeUnknown { .. } => "outcome_unknown",
            Self::Unsupported(_) => "unsupported",
        }
    }

    /// The HTTP status the platform answered with, where there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Rejected { status, .. } => Some(*status),
            Self::Transient { status, .. } => *status,
            _ => None,
        }
    }
}
