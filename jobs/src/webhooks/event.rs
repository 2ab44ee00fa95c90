//! The events and their bodies. A body is written once, to the outbox, and sent as stored, so
//! every attempt and every replay carries the same bytes under the same `webhook-id`.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{
    ids,
    store::{ConnectionRow, ShareRow, ShareState},
};

/// Every event type an endpoint can subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum EventType {
    #[serde(rename = "share.succeeded")]
    ShareSucceeded,
    #[serde(rename = "share.failed")]
    ShareFailed,
    #[serde(rename = "share.parked")]
    ShareParked,
    #[serde(rename = "share.outcome_unknown")]
    ShareOutcomeUnknown,
    #[serde(rename = "share.expired")]
    ShareExpired,
    #[serde(rename = "share.cancelled")]
    ShareCancelled,
    #[serde(rename = "connection.needs_reauth")]
    ConnectionNeedsReauth,
    #[serde(rename = "connection.reconnected")]
    ConnectionReconnected,
    #[serde(rename = "connection.refresh_failing")]
    ConnectionRefreshFailing,
    #[serde(rename = "connection.revoked")]
    ConnectionRevoked,
    #[serde(rename = "followers.synced")]
    FollowersSynced,
    #[serde(rename = "webhook.test")]
    WebhookTest,
}

impl EventType {
    pub const ALL: [EventType; 12] = [
        Self::ShareSucceeded,
        Self::ShareFailed,
        Self::ShareParked,
        Self::ShareOutcomeUnknown,
        Self::ShareExpired,
        Self::ShareCancelled,
        Self::ConnectionNeedsReauth,
        Self::ConnectionReconnected,
        Self::ConnectionRefreshFailing,
        Self::ConnectionRevoked,
        Self::FollowersSynced,
        Self::WebhookTest,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ShareSucceeded => "share.succeeded",
            Self::ShareFailed => "share.failed",
            Self::ShareParked => "share.parked",
            Self::ShareOutcomeUnknown => "share.outcome_unknown",
            Self::ShareExpired => "share.expired",
            Self::ShareCancelled => "share.cancelled",
            Self::ConnectionNeedsReauth => "connection.needs_reauth",
            Self::ConnectionReconnected => "connection.reconnected",
            Self::ConnectionRefreshFailing => "connection.refresh_failing",
            Self::ConnectionRevoked => "connection.revoked",
            Self::FollowersSynced => "followers.synced",
            Self::WebhookTest => "webhook.test",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// The share event a share entering `state` causes, if any.
    pub fn of_share_state(state: ShareState) -> Option<Self> {
        Some(match state {
            ShareState::Succeeded => Self::ShareSucceeded,
            ShareState::Failed => Self::ShareFailed,
            ShareState::Parked => Self::ShareParked,
            ShareState::OutcomeUnknown => Self::ShareOutcomeUnknown,
            ShareState::Expired => Self::ShareExpired,
            ShareState::Cancelled => Self::ShareCancelled,
            ShareState::Queued | ShareState::Running => return None,
        })
    }
}

/// An event to write to the outbox.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub id: String,
    pub tenant_id: String,
    pub kind: EventType,
    /// What the event is about (`share:shr_…`, `connection:con_…`): an endpoint gets the events
    /// of one subject in the order they happened.
    pub subject: String,
    /// The body sent, exactly: `{"id", "type", "timestamp", "data"}`.
    pub body: String,
    pub created_at: DateTime<Utc>,
}

impl NewEvent {
    fn new(
        tenant_id: &str,
        kind: EventType,
        subject: String,
        data: Value,
        now: DateTime<Utc>,
    ) -> Self {
        let id = ids::new(ids::EVENT);
        let body = json!({
            "id": id,
            "type": kind.as_str(),
            "timestamp": now.to_rfc3339_opts(SecondsFormat::Millis, true),
            "data": data,
        })
        .to_string();
        Self {
            id,
            tenant_id: tenant_id.to_owned(),
            kind,
            subject,
            body,
            created_at: now,
        }
    }

    /// The event a share's new row announces (`None` while it is queued or running).
    pub fn share(row: &ShareRow, now: DateTime<Utc>) -> Option<Self> {
        let kind = EventType::of_share_state(ShareState::parse(&row.state)?)?;
        let mut data = json!({
            "share_id": row.id,
            "connection_id": row.connection_id,
            "platform": row.platform,
            "url": row.url,
            "state": row.state,
            "attempts": row.attempts,
        });
        if kind == EventType::ShareSucceeded {
            data["post_id"] = json!(row.post_id);
            data["post_url"] = json!(row.post_url);
        } else {
            data["error"] = json!({
                "class": row.last_error_class,
                "message": row.last_error,
                "platform_status": row.last_status,
            });
        }
        Some(Self::new(
            &row.tenant_id,
            kind,
            format!("share:{}", row.id),
            data,
            now,
        ))
    }

    /// A connection's event; `reason` says why, where there is one.
    pub fn connection(
        kind: EventType,
        row: &ConnectionRow,
        reason: Option<&str>,
        now: DateTime<Utc>,
    ) -> Self {
        let mut data = json!({
            "connection_id": row.id,
            "platform": row.platform,
            "platform_account_id": row.platform_account_id,
            "handle": row.handle,
            "display_name": row.display_name,
            "user_id": row.user_id,
        });
        if let Some(reason) = reason {
            data["reason"] = json!(reason);
        }
        Self::new(
            &row.tenant_id,
            kind,
            format!("connection:{}", row.id),
            data,
            now,
        )
    }

    /// A follower sync run finished: the connection's counts, and who came and went.
    pub fn followers_synced(
        row: &ConnectionRow,
        relation: &str,
        count: i64,
        gained: i64,
        lost: i64,
        now: DateTime<Utc>,
    ) -> Self {
        let data = json!({
            "connection_id": row.id,
            "platform": row.platform,
            "user_id": row.user_id,
            "relation": relation,
            "count": count,
            "gained": gained,
            "lost": lost,
        });
        Self::new(
            &row.tenant_id,
            EventType::FollowersSynced,
            format!("connection:{}", row.id),
            data,
            now,
        )
    }

    /// `POST /v1/webhooks/{id}/test`: for that endpoint only.
    pub fn test(tenant_id: &str, endpoint_id: &str, now: DateTime<Utc>) -> Self {
        Self::new(
            tenant_id,
            EventType::WebhookTest,
            format!("webhook:{endpoint_id}"),
            json!({ "endpoint_id": endpoint_id }),
            now,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_has_a_stable_wire_name() {
        for t in EventType::ALL {
            let json = serde_json::to_value(t).unwrap();
            assert_eq!(json, t.as_str());
            assert_eq!(EventType::parse(t.as_str()), Some(t));
        }
    }

    #[test]
    fn a_test_event_carries_its_id_type_and_time() {
        let e = NewEvent::test("ten_1", "whe_1", Utc::now());
        let body: Value = serde_json::from_str(&e.body).unwrap();
        assert_eq!(body["id"], e.id.as_str());
        assert_eq!(body["type"], "webhook.test");
        assert_eq!(body["data"]["endpoint_id"], "whe_1");
        assert!(body["timestamp"].as_str().unwrap().ends_with('Z'));
    }
}
