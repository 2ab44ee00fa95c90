//! Job payloads: small, versioned, ids only. The wire name of each queue is fixed here and never
//! derived from a Rust type name. A worker re-reads the row; a payload never carries a snapshot.

use serde::{Deserialize, Serialize};

/// The queues Herald runs, one worker each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueName {
    Share,
    Refresh,
    FollowerSync,
}

impl QueueName {
    pub const ALL: [QueueName; 3] = [Self::Share, Self::Refresh, Self::FollowerSync];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Share => "share",
            Self::Refresh => "refresh",
            Self::FollowerSync => "follower_sync",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|q| q.as_str() == s)
    }
}

/// Post one share row to its platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "v", rename = "1")]
pub struct ShareV1 {
    pub share_id: String,
}

/// Make one connection's credentials good: refresh its tokens, or, when it is flagged
/// `needs_reauth` and fresh tokens were stored, verify them and resume its parked work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "v", rename = "1")]
pub struct RefreshV1 {
    pub connection_id: String,
    /// Which try this is after transient failures (0 for the first).
    #[serde(default)]
    pub retry: u32,
}

/// Sync one connection's followers and follows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "v", rename = "1")]
pub struct FollowerSyncV1 {
    pub connection_id: String,
    /// Continue the runs a rate limit or an outage paused, and start none.
    #[serde(default)]
    pub resume: bool,
    /// Which try this is after transient failures (0 for the first).
    #[serde(default)]
    pub retry: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_have_a_stable_versioned_wire_form() {
        let json = serde_json::to_string(&ShareV1 {
            share_id: "shr_1".into(),
        })
        .unwrap();
        assert_eq!(json, r#"{"v":"1","share_id":"shr_1"}"#);
        let back: ShareV1 = serde_json::from_str(&json).unwrap();
        assert_eq!(back.share_id, "shr_1");
    }
}
