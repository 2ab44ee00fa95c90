//! What a call to a platform takes and gives back: the account and its credentials, the post,
//! the checkpoint a publish in several steps keeps, and what the platform answers.

use std::{fmt, sync::Arc};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::error::PlatformError;

/// The account a call acts for: ids and the platform extras stored with the connection.
#[derive(Debug, Clone)]
pub struct Account {
    /// The platform's own id of the account (Mastodon account id, Bluesky DID, page id, ...).
    pub platform_account_id: String,
    pub handle: String,
    /// Platform-specific settings: `instance_url` (Mastodon), `pds_url` (Bluesky),
    /// `max_characters` (an instance's own limit), ...
    pub extras: serde_json::Map<String, serde_json::Value>,
}

impl Account {
    pub fn extra_str(&self, key: &str) -> Option<&str> {
        self.extras.get(key).and_then(|v| v.as_str())
    }
}

/// Tokens for one call. `Debug` shows which parts are present, never their values.
#[derive(Clone, Default)]
pub struct Credentials {
    pub access_token: Option<SecretString>,
    pub refresh_token: Option<SecretString>,
    /// The private key (JWK) a DPoP-bound token is tied to.
    pub dpop_key: Option<SecretString>,
    pub expires_at: Option<DateTime<Utc>>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field(
                "access_token",
                &self.access_token.as_ref().map(|_| "[redacted]"),
            )
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "[redacted]"),
            )
            .field("dpop_key", &self.dpop_key.as_ref().map(|_| "[redacted]"))
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// What to publish. Built by the share job from the share row.
#[derive(Debug, Clone, Default)]
pub struct PostRequest {
    pub share_id: String,
    pub url: String,
    pub title: Option<String>,
    pub text: Option<String>,
    /// The share's `image_url` as sent. Its image, captured at enqueue, is `media[0]` (without
    /// alt text); Bluesky makes it its link card's thumbnail rather than an attached image.
    pub image_url: Option<String>,
    /// The images to attach, in order, captured at enqueue (empty for a text share).
    pub media: Vec<crate::media::Image>,
    /// Stable across every attempt of one share: platforms with duplicate protection use it
    /// (Mastodon's `Idempotency-Key`, a Bluesky record key).
    pub idempotency_key: String,
    /// Where a publish in several steps resumes from on a later attempt of the same share.
    pub checkpoint: Checkpoint,
}

/// Progress a publish in several steps keeps across the attempts of one share (Instagram and
/// Threads: the media container, which can be published only once). `saved` is what an earlier
/// attempt stored; [`Checkpoint::save`] stores a new value durably, and a client calls it before
/// the step that has an effect, so a retry after a lost answer resumes instead of starting over.
#[derive(Clone, Default)]
pub struct Checkpoint {
    pub saved: Option<String>,
    sink: Option<Arc<dyn CheckpointSink>>,
}

/// Where checkpoints go: the share job writes them to the share row.
#[async_trait]
pub trait CheckpointSink: Send + Sync {
    /// Stores `value` durably, or says why it could not.
    async fn save(&self, value: &str) -> Result<(), String>;
}

impl Checkpoint {
    pub fn new(saved: Option<String>, sink: Arc<dyn CheckpointSink>) -> Self {
        Self {
            saved,
            sink: Some(sink),
        }
    }

    /// Stores a checkpoint before the step it protects. Without a sink (a client called outside
    /// a share job) there is nothing to resume later, and nothing is stored. A failed write is
    /// transient: the step it protects has not run.
    pub async fn save(&self, value: &str) -> Result<(), PlatformError> {
        match &self.sink {
            Some(sink) => sink
                .save(value)
                .await
                .map_err(|reason| PlatformError::Transient {
                    status: None,
                    reason: format!("the checkpoint could not be stored: {reason}"),
                }),
            None => Ok(()),
        }
    }
}

impl fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Checkpoint")
            .field("saved", &self.saved)
            .field("stored", &self.sink.is_some())
            .finish()
    }
}

/// A post the platform accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    pub post_id: String,
    pub post_url: Option<String>,
    /// What the answer said of the app-wide budget, where the platform says it.
    #[serde(skip)]
    pub app_budget: Option<AppBudget>,
}

/// An app-wide rate limit's state as the platform reported it: the budget every tenant's calls
/// share in the current window (X's `x-app-limit-24hour-*` on `POST /2/tweets`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppBudget {
    pub limit: u32,
    pub remaining: u32,
    /// When the window reopens, on Herald's clock.
    pub resets_at: DateTime<Utc>,
}

/// The identity a token belongs to, as the platform reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub platform_account_id: String,
    pub handle: String,
    /// What the platform shows as the account's name, where it gives one (never empty).
    pub display_name: Option<String>,
    pub followers_count: Option<u64>,
}

/// A name the platform gave, or `None` for a missing or blank one.
pub fn display_name(name: Option<String>) -> Option<String> {
    name.map(|n| n.trim().to_owned()).filter(|n| !n.is_empty())
}

/// A fresh token set from a refresh or a long-lived token exchange.
#[derive(Clone)]
pub struct TokenSet {
    pub access_token: SecretString,
    /// `None` when the platform returned no refresh token: the stored one is kept.
    pub refresh_token: Option<SecretString>,
    pub expires_at: Option<DateTime<Utc>>,
}

impl fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSet")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "[redacted]"),
            )
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Which side of the graph to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Relation {
    Followers,
    Follows,
}

/// One page of followers or follows.
#[derive(Debug, Clone, Default)]
pub struct FollowerPage {
    pub accounts: Vec<FollowerAccount>,
    /// Where the next page starts; `None` at the end.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowerAccount {
    pub platform_account_id: String,
    pub handle: String,
}

/// A share that cannot be posted as written, found before any call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: &'static str,
    pub code: &'static str,
    pub message: String,
}
