//! Every setting Herald reads, in one place. Each is a flag and an environment variable; the
//! variable names are what `.env.example` documents. Settings come in groups, and each
//! subcommand takes (and its `--help` lists) only the groups it reads. An environment variable
//! set to the empty string counts as unset, so the empty lines of `.env.example` mean "default".

use std::{net::SocketAddr, time::Duration};

use clap::{Args, FromArgMatches};
use herald_jobs::{Settings, retry::RetryPolicy};
use herald_platforms::{bluesky::jwt::EsKey, ssrf::SsrfGuard};

/// Drops the environment value of every argument whose variable is set but empty (recursively
/// through subcommands): `HERALD_METRICS_TOKEN=` means no token, not the empty token.
pub fn empty_env_is_unset(cmd: clap::Command) -> clap::Command {
    cmd.mut_args(|a| match a.get_env() {
        Some(name) if std::env::var_os(name).is_some_and(|v| v.is_empty()) => a.env(None::<&str>),
        _ => a,
    })
    .mut_subcommands(empty_env_is_unset)
}

/// A group's values when the command does not take it: the documented defaults, no
/// environment read.
fn defaults<T: Args + FromArgMatches>() -> T {
    let cmd = T::augment_args(clap::Command::new("herald")).mut_args(|a| a.env(None::<&str>));
    let m = cmd
        .try_get_matches_from(["herald"])
        .expect("every setting of the group has a default");
    T::from_arg_matches(&m).expect("the defaults parse")
}

/// How log lines look (every command that runs Herald).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Logs")]
pub struct LogArgs {
    /// `text` or `json` log lines.
    #[arg(long, env = "HERALD_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}

/// Where the store lives.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Store")]
pub struct StoreArgs {
    /// Where the store lives: `sqlite:PATH` (embedded default) or `postgres://...`.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite:herald.db")]
    pub database_url: String,
}

/// Where the queue lives.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Queue")]
pub struct QueueArgs {
    /// Herald's Redis queue backend (`redis://...`); without it the queue lives in the store's
    /// database.
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,

    /// The prefix of every Redis key this deployment uses.
    #[arg(long, env = "HERALD_REDIS_PREFIX", default_value = "herald")]
    pub redis_prefix: String,
}

/// The keys tokens are encrypted with.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Encryption")]
pub struct VaultArgs {
    /// Encryption keys for tokens at rest, `id:base64key[,id:base64key...]`; the first encrypts.
    /// `herald serve` on SQLite creates one beside the database file if this is unset.
    #[arg(long, env = "HERALD_ENCRYPTION_KEYS", hide_env_values = true)]
    pub encryption_keys: Option<String>,
}

/// The API's listener (`serve`, `api`).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "HTTP")]
pub struct ApiListenArgs {
    /// The API's listen address.
    #[arg(long, env = "HERALD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// If set, /metrics needs `Authorization: Bearer <token>`.
    #[arg(long, env = "HERALD_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
}

/// A worker process's /metrics, /healthz and /readyz listener.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "HTTP")]
pub struct WorkerListenArgs {
    /// Where a worker process serves /metrics, /healthz and /readyz.
    #[arg(long, env = "HERALD_WORKER_LISTEN", default_value = "127.0.0.1:9090")]
    pub worker_listen: SocketAddr,

    /// If set, /metrics needs `Authorization: Bearer <token>`.
    #[arg(long, env = "HERALD_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
}

/// How shares are scheduled (`serve`, `api`, `worker`, `replay`).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Shares")]
pub struct SharesArgs {
    /// A share not run within this many seconds of its publish time expires.
    #[arg(long, env = "HERALD_SHARE_LATENESS_SECS", default_value_t = 86_400)]
    pub share_lateness_secs: u64,
    /// A share of the same normalized URL and text to the same connection within this many
    /// seconds of an earlier one is refused (409 `already_shared`) unless the request says
    /// `allow_duplicate`; 0 turns the guard off.
    #[arg(long, env = "HERALD_DUPLICATE_WINDOW_SECS", default_value_t = 172_800)]
    pub duplicate_window_secs: u64,
    /// The largest image fetched at enqueue, in bytes (each target platform's own limit is then
    /// checked: Bluesky 1,000,000, Instagram 8 MiB, Mastodon 16 MiB).
    #[arg(long, env = "HERALD_MEDIA_MAX_BYTES", default_value_t = herald_jobs::settings::DEFAULT_MEDIA_MAX_BYTES)]
    pub media_max_bytes: usize,
    /// How long fetching one image at enqueue may take, in seconds.
    #[arg(long, env = "HERALD_MEDIA_FETCH_TIMEOUT_SECS", default_value_t = 10)]
    pub media_fetch_timeout_secs: u64,
}

/// Calls to platforms and user-supplied URLs (`serve`, `api`, `worker`).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Platforms")]
pub struct PlatformArgs {
    /// The URL browsers reach the API at. OAuth redirect URIs are
    /// `{HERALD_PUBLIC_URL}/v1/connect/{platform}/callback`; register them with each platform app.
    #[arg(long, env = "HERALD_PUBLIC_URL", default_value = herald_jobs::settings::DEFAULT_PUBLIC_URL)]
    pub public_url: String,

    /// Let user-supplied URLs point at private and loopback addresses. Tests and local
    /// development only: it disables the SSRF guard.
    #[arg(long, env = "HERALD_SSRF_ALLOW_PRIVATE", default_value_t = false)]
    pub ssrf_allow_private: bool,

    /// The longest one platform call may take, in seconds.
    #[arg(long, env = "HERALD_PLATFORM_TIMEOUT_SECS", default_value_t = 30)]
    pub platform_timeout_secs: u64,

    /// Bluesky's OAuth client keys: ES256 (P-256) private keys as base64 PKCS#8, comma-separated
    /// (`herald keys generate-bluesky` prints one). The first signs new sessions; all are
    /// published at /oauth/bluesky/jwks.json, so an old key stays listed until its sessions are
    /// gone. Unset: the loopback development client (HERALD_PUBLIC_URL on 127.0.0.1).
    #[arg(long, env = "HERALD_BLUESKY_CLIENT_KEYS", hide_env_values = true)]
    pub bluesky_client_keys: Option<String>,

    /// Where `did:plc` documents are read.
    #[arg(long, env = "HERALD_BLUESKY_PLC_URL", default_value = herald_jobs::settings::DEFAULT_PLC_URL)]
    pub bluesky_plc_url: String,

    /// A service answering `com.atproto.identity.resolveHandle`, asked for handles that
    /// `https://<handle>/.well-known/atproto-did` does not resolve.
    #[arg(long, env = "HERALD_BLUESKY_HANDLE_RESOLVER", default_value = herald_jobs::settings::DEFAULT_HANDLE_RESOLVER)]
    pub bluesky_handle_resolver: String,

    /// Bluesky app passwords: `allow`; `refuse_new` (existing app-password connections keep
    /// working, importing a new one answers 422 app_passwords_retired); `refuse` (as refuse_new,
    /// and their shares park with the connection flagged needs_reauth until it is reconnected
    /// with OAuth).
    #[arg(long, env = "HERALD_BLUESKY_APP_PASSWORDS", default_value = "allow")]
    pub bluesky_app_passwords: String,
}

/// A bound on `HERALD_CONCURRENCY` that only catches typos: what limits it in practice is memory
/// and open files (one socket per call in flight), which the operator sets.
const MAX_CONCURRENCY: usize = 1_000_000;

/// How workers run jobs, retry, refresh and sweep (`serve`, `worker`).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Workers")]
pub struct WorkerArgs {
    /// Jobs one worker runs at once. Each share in flight is a task and, while it calls the
    /// platform, one socket: memory (about 80 KiB each, measured by `cargo bench --bench shares`)
    /// and the open-file limit (`ulimit -n`) bound it, not a constant. Against a platform that
    /// answers in 200 ms, a worker posts at most concurrency / 0.2 shares a second: 256 is
    /// about 1,280/s in about 40 MiB.
    #[arg(long, env = "HERALD_CONCURRENCY", default_value_t = 256)]
    pub concurrency: usize,

    /// Attempts per share, the first included.
    #[arg(long, env = "HERALD_MAX_ATTEMPTS", default_value_t = 8)]
    pub max_attempts: u32,

    /// The first retry's base delay, in milliseconds; later ones double, with jitter.
    #[arg(long, env = "HERALD_RETRY_BASE_MS", default_value_t = 5_000)]
    pub retry_base_ms: u64,

    /// The longest retry delay, in seconds.
    #[arg(long, env = "HERALD_RETRY_MAX_SECS", default_value_t = 1_800)]
    pub retry_max_secs: u64,

    /// How long a worker holds a share, in seconds; must exceed the platform timeout.
    #[arg(long, env = "HERALD_LEASE_SECS", default_value_t = 90)]
    pub lease_secs: u64,

    /// A share due for this many seconds without being picked up is delivered again.
    #[arg(long, env = "HERALD_REDELIVERY_GRACE_SECS", default_value_t = 120)]
    pub redelivery_grace_secs: u64,

    /// A token expiring within this many seconds is refreshed before a call uses it.
    #[arg(long, env = "HERALD_REFRESH_SKEW_SECS", default_value_t = 300)]
    pub refresh_skew_secs: u64,

    /// The refresh sweep takes connections whose tokens expire within this many seconds.
    #[arg(long, env = "HERALD_REFRESH_WINDOW_SECS", default_value_t = 7200)]
    pub refresh_window_secs: u64,

    /// The refresh sweep renews Instagram's and Threads' 60-day tokens (renewed with themselves,
    /// dead for good once expired) this many seconds before they expire (default 7 days).
    #[arg(
        long,
        env = "HERALD_LONG_LIVED_REFRESH_WINDOW_SECS",
        default_value_t = 604_800
    )]
    pub long_lived_refresh_window_secs: u64,

    /// When the refresh sweep runs (cron with seconds; default every 30 minutes).
    #[arg(
        long,
        env = "HERALD_REFRESH_SWEEP_CRON",
        default_value = "0 */30 * * * *"
    )]
    pub refresh_sweep_cron: String,

    /// When the follower-sync sweep runs (cron with seconds; default daily at 03:15 UTC).
    #[arg(
        long,
        env = "HERALD_FOLLOWER_SYNC_CRON",
        default_value = "0 15 3 * * *"
    )]
    pub follower_sync_cron: String,

    /// How often the reconciler runs, in seconds.
    #[arg(long, env = "HERALD_RECONCILE_SECS", default_value_t = 30)]
    pub reconcile_secs: u64,

    /// How long a tenant held back by fair sharing of a platform app's scarce budget waits, in
    /// seconds, before it is looked at again (never past the app's window end).
    #[arg(long, env = "HERALD_FAIR_SHARE_RECHECK_SECS", default_value_t = 600)]
    pub fair_share_recheck_secs: u64,

    /// The longest one webhook delivery may take, in seconds, the start of the response's body
    /// included.
    #[arg(long, env = "HERALD_WEBHOOK_TIMEOUT_SECS", default_value_t = 15)]
    pub webhook_timeout_secs: u64,

    /// The delays before a failed webhook delivery's attempts 2, 3, ... (`ms`, `s`, `m`, `h`,
    /// `d`); the delivery fails for good after the last. Each gets ±20 % jitter, and a longer
    /// `Retry-After` wins.
    #[arg(
        long,
        env = "HERALD_WEBHOOK_RETRY_SCHEDULE",
        default_value = "5s,5m,30m,2h,5h,10h,10h,10h,10h,10h,10h"
    )]
    pub webhook_retry_schedule: String,

    /// Webhook deliveries to one endpoint in flight at once, across every worker: a slow or
    /// dead endpoint holds at most this many workers' slots.
    #[arg(long, env = "HERALD_WEBHOOK_ENDPOINT_CONCURRENCY", default_value_t = 4)]
    pub webhook_endpoint_concurrency: usize,
}

/// What one process runs with: the groups its command takes, the defaults for the others.
#[derive(Debug, Clone)]
pub struct Config {
    pub log: LogArgs,
    pub store: StoreArgs,
    pub queue: QueueArgs,
    pub vault: VaultArgs,
    pub shares: SharesArgs,
    pub platform: PlatformArgs,
    pub worker: WorkerArgs,
}

impl Config {
    pub fn new(log: &LogArgs, store: &StoreArgs) -> Self {
        Self {
            log: log.clone(),
            store: store.clone(),
            queue: defaults(),
            vault: defaults(),
            shares: defaults(),
            platform: defaults(),
            worker: defaults(),
        }
    }

    pub fn queue(mut self, queue: &QueueArgs) -> Self {
        self.queue = queue.clone();
        self
    }

    pub fn vault(mut self, vault: &VaultArgs) -> Self {
        self.vault = vault.clone();
        self
    }

    pub fn shares(mut self, shares: &SharesArgs) -> Self {
        self.shares = shares.clone();
        self
    }

    pub fn platform(mut self, platform: &PlatformArgs) -> Self {
        self.platform = platform.clone();
        self
    }

    pub fn worker(mut self, worker: &WorkerArgs) -> Self {
        self.worker = worker.clone();
        self
    }

    pub fn database_url(&self) -> &str {
        &self.store.database_url
    }

    fn bluesky(&self) -> anyhow::Result<herald_jobs::settings::BlueskySettings> {
        let client_keys = self
            .platform
            .bluesky_client_keys
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .enumerate()
            .map(|(i, k)| {
                EsKey::from_pkcs8(k).map_err(|e| {
                    anyhow::anyhow!("HERALD_BLUESKY_CLIENT_KEYS: key {} is unusable: {e}", i + 1)
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        for (name, value) in [
            ("HERALD_BLUESKY_PLC_URL", &self.platform.bluesky_plc_url),
            (
                "HERALD_BLUESKY_HANDLE_RESOLVER",
                &self.platform.bluesky_handle_resolver,
            ),
        ] {
            let u = url::Url::parse(value)
                .map_err(|e| anyhow::anyhow!("{name} `{value}` is not a URL: {e}"))?;
            anyhow::ensure!(
                matches!(u.scheme(), "http" | "https"),
                "{name} must be an http(s) URL"
            );
        }
        let app_passwords =
            herald_jobs::settings::AppPasswords::parse(&self.platform.bluesky_app_passwords)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "HERALD_BLUESKY_APP_PASSWORDS `{}` must be allow, refuse_new or refuse",
                        self.platform.bluesky_app_passwords
                    )
                })?;
        Ok(herald_jobs::settings::BlueskySettings {
            app_passwords,
            client_keys,
            plc_url: self
                .platform
                .bluesky_plc_url
                .trim_end_matches('/')
                .to_owned(),
            handle_resolver: self
                .platform
                .bluesky_handle_resolver
                .trim_end_matches('/')
                .to_owned(),
        })
    }

    pub fn backends(&self) -> crate::app::Backends {
        crate::app::Backends {
            database_url: self.store.database_url.clone(),
            redis_url: self
                .queue
                .redis_url
                .clone()
                .filter(|u| !u.trim().is_empty()),
            redis_prefix: self.queue.redis_prefix.clone(),
        }
    }

    /// The settings the jobs and the API use, checked for unsafe combinations.
    pub fn settings(&self) -> anyhow::Result<Settings> {
        anyhow::ensure!(
            self.worker.lease_secs > self.platform.platform_timeout_secs,
            "HERALD_LEASE_SECS ({}) must exceed HERALD_PLATFORM_TIMEOUT_SECS ({}), or a live worker could lose its share mid-call",
            self.worker.lease_secs,
            self.platform.platform_timeout_secs
        );
        anyhow::ensure!(
            self.worker.max_attempts >= 1,
            "HERALD_MAX_ATTEMPTS must be at least 1"
        );
        anyhow::ensure!(
            (1..=MAX_CONCURRENCY).contains(&self.worker.concurrency),
            "HERALD_CONCURRENCY must be between 1 and {MAX_CONCURRENCY}"
        );
        let public = url::Url::parse(&self.platform.public_url).map_err(|e| {
            anyhow::anyhow!(
                "HERALD_PUBLIC_URL `{}` is not a URL: {e}",
                self.platform.public_url
            )
        })?;
        anyhow::ensure!(
            matches!(public.scheme(), "http" | "https") && public.query().is_none(),
            "HERALD_PUBLIC_URL must be an http(s) URL without a query"
        );
        if public.scheme() == "http"
            && public
                .host_str()
                .is_some_and(|h| h != "127.0.0.1" && h != "localhost")
        {
            tracing::warn!(
                "HERALD_PUBLIC_URL is plain http: OAuth codes would cross the network unencrypted"
            );
        }
        if self.platform.ssrf_allow_private {
            tracing::warn!(
                "HERALD_SSRF_ALLOW_PRIVATE is on: user-supplied URLs may reach private addresses"
            );
        }
        let bluesky = self.bluesky()?;
        if !bluesky.client_keys.is_empty() && public.scheme() != "https" {
            tracing::warn!(
                "HERALD_BLUESKY_CLIENT_KEYS is set but HERALD_PUBLIC_URL is not https: Bluesky's authorization servers only fetch https client metadata"
            );
        }
        let retry_schedule =
            herald_jobs::webhooks::schedule::parse_schedule(&self.worker.webhook_retry_schedule)
                .map_err(|e| anyhow::anyhow!("HERALD_WEBHOOK_RETRY_SCHEDULE: {e}"))?;
        anyhow::ensure!(
            self.worker.webhook_timeout_secs >= 1,
            "HERALD_WEBHOOK_TIMEOUT_SECS must be at least 1"
        );
        anyhow::ensure!(
            self.worker.webhook_endpoint_concurrency >= 1,
            "HERALD_WEBHOOK_ENDPOINT_CONCURRENCY must be at least 1"
        );
        Ok(Settings {
            webhooks: herald_jobs::settings::WebhookSettings {
                timeout: Duration::from_secs(self.worker.webhook_timeout_secs),
                retry_schedule,
                per_endpoint: self.worker.webhook_endpoint_concurrency,
                ..Default::default()
            },
            bluesky,
            retry: RetryPolicy {
                max_attempts: self.worker.max_attempts,
                base_delay: Duration::from_millis(self.worker.retry_base_ms),
                max_delay: Duration::from_secs(self.worker.retry_max_secs),
                ..RetryPolicy::default()
            },
            platform_timeout: Duration::from_secs(self.platform.platform_timeout_secs),
            lease: Duration::from_secs(self.worker.lease_secs),
            share_lateness: Duration::from_secs(self.shares.share_lateness_secs),
            duplicate_window: Duration::from_secs(self.shares.duplicate_window_secs),
            media_max_bytes: self.shares.media_max_bytes,
            media_fetch_timeout: Duration::from_secs(self.shares.media_fetch_timeout_secs.max(1)),
            redelivery_grace: Duration::from_secs(self.worker.redelivery_grace_secs),
            reconcile_every: Duration::from_secs(self.worker.reconcile_secs.max(1)),
            concurrency: self.worker.concurrency,
            refresh_skew: Duration::from_secs(self.worker.refresh_skew_secs),
            refresh_window: Duration::from_secs(self.worker.refresh_window_secs),
            long_lived_refresh_window: Duration::from_secs(
                self.worker.long_lived_refresh_window_secs,
            ),
            refresh_sweep_cron: self.worker.refresh_sweep_cron.clone(),
            follower_sync_cron: self.worker.follower_sync_cron.clone(),
            apps: herald_platforms::config::PlatformApps::from_env(),
            public_url: self.platform.public_url.trim_end_matches('/').to_owned(),
            oauth_state_ttl: Duration::from_secs(600),
            fair_share_recheck: Duration::from_secs(self.worker.fair_share_recheck_secs.max(1)),
            ssrf: if self.platform.ssrf_allow_private {
                SsrfGuard::allowing_private()
            } else {
                SsrfGuard::strict()
            },
        })
    }
}
