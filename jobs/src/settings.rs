//! Runtime settings shared by the API and the workers. The binary reads them once from the
//! environment (see `.env.example`); tests build them directly.

use std::time::Duration;

use herald_platforms::{
    PlatformKind,
    bluesky::{jwt::EsKey, oauth::ClientConfig},
    config::PlatformApps,
    ssrf::SsrfGuard,
};

use crate::retry::RetryPolicy;

/// Bluesky's OAuth client and where identities are looked up.
#[derive(Debug, Clone)]
pub struct BlueskySettings {
    /// `HERALD_BLUESKY_CLIENT_KEYS`: ES256 keys for `private_key_jwt` (the first signs new
    /// sessions, all are published). Empty: the loopback development client.
    pub client_keys: Vec<EsKey>,
    /// `HERALD_BLUESKY_PLC_URL`: where `did:plc` documents are read.
    pub plc_url: String,
    /// `HERALD_BLUESKY_HANDLE_RESOLVER`: a service answering `com.atproto.identity.resolveHandle`
    /// for handles that `https://<handle>/.well-known/atproto-did` does not resolve.
    pub handle_resolver: String,
    /// `HERALD_BLUESKY_APP_PASSWORDS`: whether app-password connections are still taken.
    pub app_passwords: AppPasswords,
}

/// The app-password sunset (`HERALD_BLUESKY_APP_PASSWORDS`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AppPasswords {
    /// App-password connections are imported and used.
    #[default]
    Allow,
    /// Existing app-password connections keep working; importing a new one (or turning an
    /// OAuth connection into one) answers `422 app_passwords_retired`.
    RefuseNew,
    /// As `RefuseNew`, and the existing ones are no longer used: their shares park and the
    /// connection is flagged `needs_reauth`, asking for an OAuth reconnect.
    Refuse,
}

/// Why a share of an app-password connection parks under [`AppPasswords::Refuse`].
pub const APP_PASSWORDS_REFUSED: &str = "Bluesky app passwords are retired here (HERALD_BLUESKY_APP_PASSWORDS=refuse): reconnect the account with OAuth";

impl AppPasswords {
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "allow" => Some(Self::Allow),
            "refuse_new" => Some(Self::RefuseNew),
            "refuse" => Some(Self::Refuse),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::RefuseNew => "refuse_new",
            Self::Refuse => "refuse",
        }
    }

    /// Whether storing `new` over the tenant's live connection of the same account
    /// (`existing`) is allowed: anything but an app-password connection always is; one that
    /// already was an app-password connection is under `refuse_new`, a new one only under
    /// `allow`.
    pub fn admits(
        self,
        new: &crate::store::NewConnection,
        existing: Option<&crate::store::ConnectionRow>,
    ) -> bool {
        if !new.is_app_password(existing) {
            return true;
        }
        match self {
            Self::Allow => true,
            Self::RefuseNew => existing.is_some_and(|e| e.is_app_password()),
            Self::Refuse => false,
        }
    }

    /// Why this connection may not be used now, if that is so.
    pub fn refuses(self, conn: &crate::store::ConnectionRow) -> Option<&'static str> {
        (self == Self::Refuse && conn.is_app_password()).then_some(APP_PASSWORDS_REFUSED)
    }
}

pub const DEFAULT_PLC_URL: &str = "https://plc.directory";
pub const DEFAULT_HANDLE_RESOLVER: &str = "https://public.api.bsky.app";

impl Default for BlueskySettings {
    fn default() -> Self {
        Self {
            client_keys: Vec::new(),
            plc_url: DEFAULT_PLC_URL.into(),
            handle_resolver: DEFAULT_HANDLE_RESOLVER.into(),
            app_passwords: AppPasswords::Allow,
        }
    }
}

/// `HERALD_MEDIA_MAX_BYTES` when unset: Mastodon's 16 MiB, the most any platform takes.
pub const DEFAULT_MEDIA_MAX_BYTES: usize = 16 * 1024 * 1024;

/// `HERALD_PUBLIC_URL` when unset: the default listen address.
pub const DEFAULT_PUBLIC_URL: &str = "http://127.0.0.1:8080";

#[derive(Debug, Clone)]
pub struct Settings {
    pub retry: RetryPolicy,
    /// The longest one platform HTTP call may take.
    pub platform_timeout: Duration,
    /// How long a worker holds a share before another may take it over. Longer than
    /// `platform_timeout`, so a live worker never loses its lease mid-call.
    pub lease: Duration,
    /// A share not run within this long after it was due expires (unless the request sets its own).
    pub share_lateness: Duration,
    /// A share of the same normalized URL and text to the same connection within this long of an
    /// earlier one is refused (409 `already_shared`) unless the request allows it; zero turns the
    /// guard off.
    pub duplicate_window: Duration,
    /// A share due for longer than this without being picked up is pushed to the queue again.
    pub redelivery_grace: Duration,
    /// How often the reconciler looks for lost deliveries and lapsed leases.
    pub reconcile_every: Duration,
    /// Jobs one worker runs at once, per queue.
    pub concurrency: usize,
    pub ssrf: SsrfGuard,
    /// A token expiring within this long is refreshed before a call uses it.
    pub refresh_skew: Duration,
    /// The refresh sweep enqueues connections whose tokens expire within this window.
    pub refresh_window: Duration,
    /// How far ahead the refresh sweep renews Instagram's and Threads' 60-day tokens, which are
    /// renewed with themselves and die for good once expired.
    pub long_lived_refresh_window: Duration,
    /// Cron expressions (with seconds) of the sweeps.
    pub refresh_sweep_cron: String,
    pub follower_sync_cron: String,
    pub apps: PlatformApps,
    /// Where browsers reach this deployment's API (`HERALD_PUBLIC_URL`): OAuth redirect URIs are
    /// `{public_url}/v1/connect/{platform}/callback`, and must be registered with each platform app.
    pub public_url: String,
    /// How long a started connect flow may take before its state is refused.
    pub oauth_state_ttl: Duration,
    pub bluesky: BlueskySettings,
    /// How long a tenant held back by fair sharing of a scarce app budget waits before it is
    /// looked at again (at most until the app's window reopens), in case others leave budget
    /// unused.
    pub fair_share_recheck: Duration,
    pub webhooks: WebhookSettings,
    /// `HERALD_MEDIA_MAX_BYTES`: the largest image fetched at enqueue (each platform's own limit
    /// is then checked; 16 MiB is the largest any of them takes).
    pub media_max_bytes: usize,
    /// `HERALD_MEDIA_FETCH_TIMEOUT_SECS`: how long fetching one image at enqueue may take.
    pub media_fetch_timeout: Duration,
}

/// How webhooks are delivered (`HERALD_WEBHOOK_*`).
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// The longest one delivery may take, the response's body included (15 s).
    pub timeout: Duration,
    /// The delays before attempts 2, 3, ... (Svix's schedule by default; see
    /// `webhooks::schedule`).
    pub retry_schedule: Vec<Duration>,
    /// Deliveries to one endpoint in flight at once, across every worker (two claims at the
    /// same moment may briefly pass it), so a slow or dead endpoint holds only that many slots.
    pub per_endpoint: usize,
    /// An endpoint failing for this long is disabled (5 days).
    pub disable_after: Duration,
}

impl WebhookSettings {
    /// How long a claim holds a delivery: twice the timeout, so a live worker never loses it.
    pub fn lease(&self) -> Duration {
        self.timeout * 2
    }
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(15),
            retry_schedule: crate::webhooks::schedule::default_schedule(),
            per_endpoint: 4,
            disable_after: Duration::from_secs(5 * 86_400),
        }
    }
}

impl Settings {
    /// The OAuth redirect URI of one platform's connect flow.
    pub fn redirect_uri(&self, platform: PlatformKind) -> String {
        format!(
            "{}/v1/connect/{}/callback",
            self.public_url.trim_end_matches('/'),
            platform.as_str()
        )
    }

    /// Herald's AT Protocol OAuth client as configured.
    pub fn bluesky_client(&self) -> ClientConfig {
        ClientConfig {
            public_url: self.public_url.trim_end_matches('/').to_owned(),
            keys: self.bluesky.client_keys.clone(),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            platform_timeout: Duration::from_secs(30),
            lease: Duration::from_secs(90),
            share_lateness: Duration::from_secs(24 * 3600),
            duplicate_window: Duration::from_secs(48 * 3600),
            redelivery_grace: Duration::from_secs(120),
            reconcile_every: Duration::from_secs(30),
            concurrency: 16,
            ssrf: SsrfGuard::strict(),
            refresh_skew: Duration::from_secs(300),
            refresh_window: Duration::from_secs(2 * 3600),
            long_lived_refresh_window: Duration::from_secs(7 * 86_400),
            refresh_sweep_cron: "0 */30 * * * *".into(),
            follower_sync_cron: "0 15 3 * * *".into(),
            apps: PlatformApps::default(),
            public_url: DEFAULT_PUBLIC_URL.into(),
            oauth_state_ttl: Duration::from_secs(600),
            bluesky: BlueskySettings::default(),
            fair_share_recheck: Duration::from_secs(600),
            webhooks: WebhookSettings::default(),
            media_max_bytes: DEFAULT_MEDIA_MAX_BYTES,
            media_fetch_timeout: Duration::from_secs(10),
        }
    }
}
