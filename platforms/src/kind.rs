//! Which platforms Herald knows.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The platforms Herald knows. The string form is the wire name used in the API and the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PlatformKind {
    Mastodon,
    Bluesky,
    X,
    Linkedin,
    FacebookPages,
    Instagram,
    Threads,
}

impl PlatformKind {
    pub const ALL: [PlatformKind; 7] = [
        Self::Mastodon,
        Self::Bluesky,
        Self::X,
        Self::Linkedin,
        Self::FacebookPages,
        Self::Instagram,
        Self::Threads,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mastodon => "mastodon",
            Self::Bluesky => "bluesky",
            Self::X => "x",
            Self::Linkedin => "linkedin",
            Self::FacebookPages => "facebook_pages",
            Self::Instagram => "instagram",
            Self::Threads => "threads",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Instagram and Threads issue no refresh token: the long-lived access token is itself what
    /// is exchanged for a new one (`ig_refresh_token`, `th_refresh_token`). The refresh sweep's
    /// query and partial index name these two platforms as well.
    pub fn refreshes_access_token(self) -> bool {
        matches!(self, Self::Instagram | Self::Threads)
    }
}

impl fmt::Display for PlatformKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
