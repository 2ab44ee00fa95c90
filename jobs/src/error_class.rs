//! Why an attempt did not succeed, as Herald records it: the class stored with the attempt
//! (`share_attempts.error_class`) and on the share (`shares.last_error_class`), shown by the API
//! and logged as `error.class`. The share job decides on the variant, never on the string.

/// The class of an attempt that did not succeed, or of what holds a share back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The credentials are dead: the connection needs to be reconnected.
    NeedsReauth,
    /// The access token expired before Herald's clock said so; it was refreshed.
    TokenExpired,
    /// A rate limit: the platform's, or Herald's own for a shared app budget.
    RateLimited,
    /// The platform refused the share for good.
    Rejected,
    /// Worth retrying: an outage, a 5xx, a timeout before anything was sent.
    Transient,
    /// The request was sent and no answer came back.
    OutcomeUnknown,
    /// The platform does not offer what the share needed.
    Unsupported,
    /// The connection was removed before the share ran.
    ConnectionRemoved,
    /// No client of the connection's platform is configured on this Herald.
    PlatformUnavailable,
    /// The stored tokens cannot be decrypted.
    Vault,
    /// Another worker is refreshing the connection's token.
    WaitingForRefresh,
}

impl ErrorClass {
    /// The stored and shown name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NeedsReauth => "needs_reauth",
            Self::TokenExpired => "token_expired",
            Self::RateLimited => "rate_limited",
            Self::Rejected => "rejected",
            Self::Transient => "transient",
            Self::OutcomeUnknown => "outcome_unknown",
            Self::Unsupported => "unsupported",
            Self::ConnectionRemoved => "connection_removed",
            Self::PlatformUnavailable => "platform_unavailable",
            Self::Vault => "vault",
            Self::WaitingForRefresh => "waiting_for_refresh",
        }
    }
}
