//! `herald`: one binary, a subcommand per process role.

use std::net::SocketAddr;

use anyhow::Context as _;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use herald::{
    app,
    config::{
        ApiListenArgs, Config, LogArgs, PlatformArgs, QueueArgs, SharesArgs, StoreArgs, VaultArgs,
        WorkerArgs, WorkerListenArgs,
    },
    keys,
};
use herald_jobs::{store::Store, vault::KeyRing};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "herald",
    version,
    about = "Durable jobs that publish on behalf of people to social networks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The settings every long-running process reads: `serve`, `api` and `worker`.
#[derive(Args)]
struct ProcessArgs {
    #[command(flatten)]
    log: LogArgs,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    queue: QueueArgs,
    #[command(flatten)]
    vault: VaultArgs,
    #[command(flatten)]
    shares: SharesArgs,
    #[command(flatten)]
    platform: PlatformArgs,
}

impl ProcessArgs {
    fn config(&self) -> Config {
        Config::new(&self.log, &self.store)
            .queue(&self.queue)
            .vault(&self.vault)
            .shares(&self.shares)
            .platform(&self.platform)
    }
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    process: ProcessArgs,
    #[command(flatten)]
    listen: ApiListenArgs,
    #[command(flatten)]
    worker: WorkerArgs,
}

#[derive(Args)]
struct ApiArgs {
    #[command(flatten)]
    process: ProcessArgs,
    #[command(flatten)]
    listen: ApiListenArgs,
}

#[derive(Args)]
struct WorkerCommandArgs {
    #[command(flatten)]
    process: ProcessArgs,
    #[command(flatten)]
    listen: WorkerListenArgs,
    #[command(flatten)]
    worker: WorkerArgs,
}

#[derive(Args)]
struct StoreOnlyArgs {
    #[command(flatten)]
    log: LogArgs,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Subcommand)]
enum Command {
    /// API, workers and sweeps in one process (the embedded default: one SQLite file).
    Serve(ServeArgs),
    /// The HTTP API only.
    Api(ApiArgs),
    /// The queue workers only (serves /metrics, /healthz, /readyz on HERALD_WORKER_LISTEN).
    Worker(WorkerCommandArgs),
    /// Applies the store's and the queue's migrations.
    Migrate(StoreOnlyArgs),
    /// Replays one job by id, or every job matching a filter (`--dry-run` lists them).
    Replay(ReplayArgs),
    /// API keys and encryption keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Bluesky maintenance: the app-password sunset.
    Bluesky {
        #[command(subcommand)]
        command: BlueskyCommand,
    },
}

#[derive(Subcommand)]
enum BlueskyCommand {
    /// Erases the stored app passwords of Bluesky accounts that have moved to OAuth (an account
    /// with a live OAuth connection): other tenants' connections of the account that still log
    /// in with an app password. Each is flagged needs_reauth, so its work parks until it is
    /// reconnected with OAuth. Lists them with --dry-run and changes nothing.
    PurgeAppPasswords {
        /// List what would be erased; change nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        store: StoreOnlyArgs,
    },
}

#[derive(clap::Args)]
struct ReplayArgs {
    /// One job's id (a share id). Without it, the filter flags choose the jobs.
    id: Option<String>,
    #[arg(long, default_value = "share")]
    queue: String,
    /// failed, parked, expired, cancelled or outcome_unknown.
    #[arg(long)]
    state: Option<String>,
    #[arg(long)]
    platform: Option<String>,
    /// Only jobs changed within this span (90s, 15m, 2h, 7d) or since this RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
    /// List what would be replayed; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Replay shares whose outcome is unknown (they may already be posted); needs --reason.
    #[arg(long, requires = "reason")]
    force: bool,
    #[arg(long)]
    reason: Option<String>,
    #[arg(long, default_value_t = 1000)]
    limit: i64,
    #[command(flatten)]
    log: LogArgs,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    queue_backend: QueueArgs,
    #[command(flatten)]
    vault: VaultArgs,
    #[command(flatten)]
    shares: SharesArgs,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Creates an API key for a tenant (created if new), or an operator key. Shown once.
    Create {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long, conflicts_with = "tenant")]
        operator: bool,
        /// What the key may do, comma-separated: read, share, connect (tenant keys), read,
        /// admin (operator keys). Default: all of the role's.
        #[arg(long)]
        scopes: Option<String>,
        /// The key stops working after this span: 90s, 15m, 12h, 30d. Default: never.
        #[arg(long)]
        expires_in: Option<String>,
        /// A note shown by `herald keys list`.
        #[arg(long)]
        label: Option<String>,
        #[command(flatten)]
        store: StoreOnlyArgs,
    },
    /// Lists API keys (never their secrets): id, role, tenant, scopes, status, expiry, last use.
    List {
        /// Only this tenant's keys.
        #[arg(long)]
        tenant: Option<String>,
        /// Revoked and expired keys too.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        store: StoreOnlyArgs,
    },
    /// Revokes an API key by id (`key_...`). API processes refuse it within 5 seconds.
    Revoke {
        id: String,
        #[command(flatten)]
        store: StoreOnlyArgs,
    },
    /// Prints a fresh encryption key for HERALD_ENCRYPTION_KEYS.
    Generate,
    /// Prints a fresh ES256 key for HERALD_BLUESKY_CLIENT_KEYS (and its key id).
    GenerateBluesky,
    /// Re-encrypts every stored token under the first key of HERALD_ENCRYPTION_KEYS.
    Rotate {
        #[command(flatten)]
        store: StoreOnlyArgs,
        #[command(flatten)]
        vault: VaultArgs,
    },
}

/// Opens the store of a command that does not migrate, refusing a database Herald's migrations
/// have not (all) been applied to: creating the schema is `herald migrate`'s job alone.
async fn migrated_store(database_url: &str) -> anyhow::Result<Store> {
    let store = Store::connect(database_url).await?;
    require_migrated(&store, database_url).await?;
    Ok(store)
}

async fn require_migrated(store: &Store, database_url: &str) -> anyhow::Result<()> {
    let pending = store.pending_migrations().await?;
    anyhow::ensure!(
        pending.is_empty(),
        "the database at {} is not migrated ({} of Herald's migrations not applied): run `herald migrate` with the same DATABASE_URL first",
        app::redact_url(database_url),
        pending.len()
    );
    Ok(())
}

fn init_logs(format: &str) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,apalis=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the {what} to {addr}"))
}

/// A worker holds hundreds of small buffers per share in flight (its HTTP connections, the jobs)
/// and frees them on whichever runtime thread finishes the job. glibc gives each thread an arena
/// of its own, and each grew to its own peak: one arena kept the worker's peak RSS 3.7 MiB lower
/// at 512 in flight (49.8 -> 46.1 MiB) and 6.8 MiB at 1,024, at no measurable CPU (`cargo bench
/// --bench shares`). Not `herald serve`: its SQLite connections run on threads of their own, and
/// one arena cost it about 15 % more CPU per share. The arena count is read when the process
/// starts, so a worker starts itself again with it set; an operator's own `MALLOC_ARENA_MAX` is
/// kept, and a failed restart leaves the process running as it is.
#[cfg(target_env = "gnu")]
fn one_malloc_arena() {
    use std::os::unix::process::CommandExt as _;
    let mut args = std::env::args_os().skip(1);
    let worker = matches!(args.next(), Some(a) if a == "worker");
    if !worker || std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    // `exec` returns only if it failed; the process then runs as it is.
    let _ = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("MALLOC_ARENA_MAX", "1")
        .exec();
}

fn main() -> anyhow::Result<()> {
    #[cfg(target_env = "gnu")]
    one_malloc_arena();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let matches = herald::config::empty_env_is_unset(Cli::command()).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match cli.command {
        Command::Serve(args) => {
            let config = args.process.config().worker(&args.worker);
            init_logs(&config.log.log_format);
            let settings = config.settings()?;
            let ring = app::key_ring(
                config.vault.encryption_keys.as_deref(),
                config.database_url(),
                true,
            )?;
            let parts = app::connect(&config.backends(), settings, ring).await?;
            app::migrate(&parts.ctx.store).await?;
            let listener = bind(args.listen.listen, "API").await?;
            let state = app::api_state(parts.ctx.clone(), args.listen.metrics_token.clone());
            println!("Herald is listening on http://{}", listener.local_addr()?);
            println!(
                "  store and queue: {}",
                app::redact_url(config.database_url())
            );
            println!("  get an API key:  herald keys create --tenant NAME   (same DATABASE_URL)");
            println!(
                "  API reference:   http://{}/openapi.json",
                listener.local_addr()?
            );
            let (tx, rx) = tokio::sync::watch::channel(false);
            let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
                let _ = rx.wait_for(|stop| *stop).await;
            };
            let api = tokio::spawn(app::serve_api(listener, state, wait(rx.clone())));
            let worker = tokio::spawn(app::run_worker(parts, wait(rx)));
            shutdown_signal().await;
            let _ = tx.send(true);
            api.await??;
            worker.await??;
        }
        Command::Api(args) => {
            let config = args.process.config();
            init_logs(&config.log.log_format);
            let ring = app::key_ring(
                config.vault.encryption_keys.as_deref(),
                config.database_url(),
                false,
            )?;
            let parts = app::connect(&config.backends(), config.settings()?, ring).await?;
            require_migrated(&parts.ctx.store, config.database_url()).await?;
            let listener = bind(args.listen.listen, "API").await?;
            tracing::info!(addr = %listener.local_addr()?, "API listening");
            app::serve_api(
                listener,
                app::api_state(parts.ctx, args.listen.metrics_token.clone()),
                shutdown_signal(),
            )
            .await?;
        }
        Command::Worker(args) => {
            let config = args.process.config().worker(&args.worker);
            init_logs(&config.log.log_format);
            let ring = app::key_ring(
                config.vault.encryption_keys.as_deref(),
                config.database_url(),
                false,
            )?;
            let parts = app::connect(&config.backends(), config.settings()?, ring).await?;
            require_migrated(&parts.ctx.store, config.database_url()).await?;
            let listener = bind(args.listen.worker_listen, "worker's ops listener").await?;
            tracing::info!(addr = %listener.local_addr()?, "worker ops endpoints listening");
            let state = app::api_state(parts.ctx.clone(), args.listen.metrics_token.clone());
            let (tx, rx) = tokio::sync::watch::channel(false);
            let mut ops_rx = rx.clone();
            let ops = tokio::spawn(app::serve_ops(listener, state, async move {
                let _ = ops_rx.wait_for(|stop| *stop).await;
            }));
            let mut worker_rx = rx;
            let worker = tokio::spawn(app::run_worker(parts, async move {
                let _ = worker_rx.wait_for(|stop| *stop).await;
            }));
            shutdown_signal().await;
            let _ = tx.send(true);
            worker.await??;
            ops.await??;
        }
        Command::Replay(args) => {
            init_logs(&args.log.log_format);
            replay(args).await?;
        }
        Command::Migrate(args) => {
            init_logs(&args.log.log_format);
            let store = Store::connect(&args.store.database_url).await?;
            app::migrate(&store).await?;
            println!(
                "migrations applied to {}",
                app::redact_url(&args.store.database_url)
            );
        }
        Command::Bluesky {
            command: BlueskyCommand::PurgeAppPasswords { dry_run, store },
        } => {
            init_logs(&store.log.log_format);
            let store = migrated_store(&store.store.database_url).await?;
            let report = herald::bluesky::purge_app_passwords(&store, dry_run).await?;
            print!("{report}");
        }
        Command::Keys { command } => match command {
            KeysCommand::Generate => println!("{}", KeyRing::generate_spec()),
            KeysCommand::GenerateBluesky => {
                let key = herald_platforms::bluesky::jwt::EsKey::generate();
                // The key id goes to stderr, so `$(herald keys generate-bluesky)` is the key alone.
                eprintln!("key id (kid): {}", key.kid());
                println!("{}", secrecy::ExposeSecret::expose_secret(key.pkcs8()));
            }
            KeysCommand::Create {
                tenant,
                operator,
                scopes,
                expires_in,
                label,
                store,
            } => {
                init_logs(&store.log.log_format);
                let store = migrated_store(&store.store.database_url).await?;
                let req = herald_jobs::api_keys::KeyRequest {
                    tenant,
                    operator,
                    scopes: scopes.map(|s| {
                        s.split(',')
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(str::to_owned)
                            .collect()
                    }),
                    expires_in,
                    expires_at: None,
                    label,
                };
                let created = keys::create_with(&store, &req).await?;
                println!("{}", created.key);
                eprintln!(
                    "Key {} ({}), shown once; Herald stores only its hash. Send it as `Authorization: Bearer <key>`.",
                    created.row.id, created.row.scopes
                );
            }
            KeysCommand::List { tenant, all, store } => {
                init_logs(&store.log.log_format);
                let store = migrated_store(&store.store.database_url).await?;
                let rows = keys::list(&store, tenant.as_deref(), all).await?;
                print!("{}", keys::format_list(&rows));
            }
            KeysCommand::Revoke { id, store } => {
                init_logs(&store.log.log_format);
                let store = migrated_store(&store.store.database_url).await?;
                let row = keys::revoke(&store, &id).await?;
                println!("{}\trevoked", row.id);
                eprintln!(
                    "API processes refuse it within {} seconds.",
                    herald_jobs::store::KEY_CACHE_TTL.as_secs()
                );
            }
            KeysCommand::Rotate { store, vault } => {
                init_logs(&store.log.log_format);
                let database_url = &store.store.database_url;
                let ring = app::key_ring(vault.encryption_keys.as_deref(), database_url, false)?;
                let store = migrated_store(database_url).await?;
                let n = keys::rotate(&store, &ring).await?;
                println!(
                    "re-encrypted {n} connections under key `{}`",
                    ring.primary_id()
                );
            }
        },
    }
    Ok(())
}

async fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    use herald_jobs::{replay, store::JobFilter};
    let config = Config::new(&args.log, &args.store)
        .queue(&args.queue_backend)
        .vault(&args.vault)
        .shares(&args.shares);
    let ring = app::key_ring(
        config.vault.encryption_keys.as_deref(),
        config.database_url(),
        false,
    )?;
    let parts = app::connect(&config.backends(), config.settings()?, ring).await?;
    require_migrated(&parts.ctx.store, config.database_url()).await?;
    let force = args.force.then_some(args.reason.as_deref()).flatten();
    let results = match &args.id {
        Some(id) => vec![replay::replay_one(&parts.ctx, id, "cli", force).await?],
        None => {
            anyhow::ensure!(
                args.queue == "share",
                "only the share queue's jobs can be replayed (got --queue {})",
                args.queue
            );
            let state = args.state.clone().ok_or_else(|| {
                anyhow::anyhow!("name the --state to replay (failed, parked, expired, ...)")
            })?;
            let since = match &args.since {
                Some(s) => Some(
                    replay::since(s, chrono::Utc::now(), true)
                        .map_err(|e| anyhow::anyhow!("--since {s:?}: {e}"))?,
                ),
                None => None,
            };
            let filter = JobFilter {
                state: Some(state),
                platform: args.platform.clone(),
                since,
            };
            replay::replay_matching(&parts.ctx, &filter, "cli", force, args.dry_run, args.limit)
                .await?
        }
    };
    for r in &results {
        println!(
            "{}\t{}\t{}",
            r.id,
            r.state.as_deref().unwrap_or("-"),
            r.result
        );
    }
    let done = results
        .iter()
        .filter(|r| r.result == "replayed" || r.result == "would_replay")
        .count();
    eprintln!(
        "{done} of {} job(s) {}",
        results.len(),
        if args.dry_run {
            "would be replayed"
        } else {
            "replayed"
        }
    );
    Ok(())
}
