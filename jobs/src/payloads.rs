//! Job payloads: small, versioned, ids only. The wire name of each queue is fixed here and never
//! derived from a Rust type name. A worker re-reads the row; a payload never carries a snapshot.
//!
//! Each payload is a [`Job`]: its type says which queue it runs on and which version of its wire
//! form it is, so a push names the type (`JobQueue::enqueue`) and never a queue and JSON by hand.

use serde::{Deserialize, Serialize, de::DeserializeOwned};

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

/// A job type: a payload bound to the queue it runs on and the version of its wire form (the
/// `"v"` its JSON carries). A new version is a new type (`ShareV2`) running beside the old one
/// until the old one's jobs are drained.
pub trait Job: Serialize + DeserializeOwned + Send + Sync + Unpin + 'static {
    const QUEUE: QueueName;
    const VERSION: &'static str;
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
    /// The queued run (`rfr_…`) this job executes and settles; a job whose run is already
    /// settled has nothing to do. Absent on a reconnect check and on jobs from before runs were
    /// queued (optional, so both wire forms read the same).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
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
    /// The queued sync (its first run, `fsr_…`) this job executes; a job whose sync already
    /// finished has nothing to do. Absent on resumes, which continue whatever is paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
}

impl Job for ShareV1 {
    const QUEUE: QueueName = QueueName::Share;
    const VERSION: &'static str = "1";
}

impl Job for RefreshV1 {
    const QUEUE: QueueName = QueueName::Refresh;
    const VERSION: &'static str = "1";
}

impl Job for FollowerSyncV1 {
    const QUEUE: QueueName = QueueName::FollowerSync;
    const VERSION: &'static str = "1";
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The version a job type claims is the one its JSON carries.
    fn version_of<J: Job>(job: &J) -> String {
        serde_json::to_value(job).unwrap()["v"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    #[test]
    fn each_job_type_carries_its_version_and_names_its_queue() {
        let share = ShareV1 {
            share_id: "shr_1".into(),
        };
        let refresh = RefreshV1 {
            connection_id: "con_1".into(),
            retry: 0,
            run: Some("rfr_1".into()),
        };
        let sync = FollowerSyncV1 {
            connection_id: "con_1".into(),
            resume: false,
            retry: 0,
            run: None,
        };
        assert_eq!(version_of(&share), ShareV1::VERSION);
        assert_eq!(version_of(&refresh), RefreshV1::VERSION);
        assert_eq!(version_of(&sync), FollowerSyncV1::VERSION);
        assert_eq!(
            [ShareV1::QUEUE, RefreshV1::QUEUE, FollowerSyncV1::QUEUE],
            QueueName::ALL
        );
    }

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

    #[test]
    fn a_refresh_pushed_before_runs_were_queued_still_reads() {
        let old: RefreshV1 =
            serde_json::from_str(r#"{"v":"1","connection_id":"con_1","retry":2}"#).unwrap();
        assert_eq!(old.run, None);
        let json = serde_json::to_string(&RefreshV1 {
            connection_id: "con_1".into(),
            retry: 0,
            run: Some("rfr_1".into()),
        })
        .unwrap();
        assert_eq!(
            json,
            r#"{"v":"1","connection_id":"con_1","retry":0,"run":"rfr_1"}"#
        );
    }
}
