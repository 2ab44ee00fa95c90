//! The boundary to each social platform.
//!
//! Every platform client implements [`Platform`]. Credentials are passed per call in
//! [`Credentials`], whose `Debug` prints nothing secret. Errors are classified here, where the
//! platform's answer is understood, into [`PlatformError`] variants; the jobs decide on the variant,
//! never on a string.
//!
//! The trait is shaped for all seven platforms: per-instance apps (Mastodon's `instance_url` in
//! [`Account::extras`]), page tokens (Facebook's page id in `extras`, the page token as the access
//! token), DPoP-bound tokens ([`Credentials::dpop_key`]), and two-step container publishing
//! (Instagram and Threads create a container, then publish it; [`Platform::find_published`] is how a
//! lost answer is settled).

pub mod bluesky;
pub mod facebook;
pub mod http;
pub mod instagram;
pub mod linkedin;
pub mod mastodon;
pub mod meta;
pub mod threads;
pub mod x;

use std::{collections::HashMap, fmt, sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use secrecy::SecretString;
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
    pub image_url: Option<String>,
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

/// The identity a token belongs to, as the platform reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub platform_account_id: String,
    pub handle: String,
    pub followers_count: Option<u64>,
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

/// What a platform offers, so jobs and the API can decide without calling it.
#[derive(Debug, Clone, Copy)]
pub struct Capabilities {
    /// How long the platform remembers an idempotency key, if it has one. A create retried within
    /// this window cannot post twice.
    pub idempotency_window: Option<Duration>,
    pub refresh: bool,
    pub followers: bool,
    pub requires_image: bool,
}

/// A share that cannot be posted as written, found before any call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: &'static str,
    pub code: &'static str,
    pub message: String,
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

/// One platform's client. Implementations hold no per-account state.
#[async_trait]
pub trait Platform: Send + Sync + 'static {
    fn kind(&self) -> PlatformKind;

    fn capabilities(&self) -> Capabilities;

    /// Checks a share against the platform's rules before anything is written.
    fn validate(&self, account: &Account, post: &PostRequest) -> Result<(), Invalid>;

    /// Confirms the credentials work and reports whose they are.
    async fn verify(
        &self,
        account: &Account,
        creds: &Credentials,
    ) -> Result<Profile, PlatformError>;

    /// Publishes one post.
    async fn share(
        &self,
        account: &Account,
        creds: &Credentials,
        post: &PostRequest,
    ) -> Result<Published, PlatformError>;

    /// Looks for a post this share already made (used to settle `outcome_unknown`).
    async fn find_published(
        &self,
        _account: &Account,
        _creds: &Credentials,
        _post: &PostRequest,
    ) -> Result<Option<Published>, PlatformError> {
        Err(PlatformError::Unsupported("read-back"))
    }

    /// Renews the access token.
    async fn refresh(
        &self,
        _account: &Account,
        _creds: &Credentials,
    ) -> Result<TokenSet, PlatformError> {
        Err(PlatformError::Unsupported("refresh"))
    }

    /// One page of followers or follows.
    async fn followers_page(
        &self,
        _account: &Account,
        _creds: &Credentials,
        _relation: Relation,
        _cursor: Option<&str>,
    ) -> Result<FollowerPage, PlatformError> {
        Err(PlatformError::Unsupported("followers"))
    }
}

/// The platform clients this process has, by kind.
#[derive(Clone, Default)]
pub struct Platforms {
    clients: HashMap<PlatformKind, Arc<dyn Platform>>,
}

impl fmt::Debug for Platforms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.clients.keys()).finish()
    }
}

impl Platforms {
    pub fn with(mut self, client: Arc<dyn Platform>) -> Self {
        self.clients.insert(client.kind(), client);
        self
    }

    pub fn get(&self, kind: PlatformKind) -> Option<&Arc<dyn Platform>> {
        self.clients.get(&kind)
    }
}
