//! Every metric Herald exports, with its help text.
//!
//! Dashboards and alert rules in `dashboards/` may only use the names declared here; a test in
//! `tests/` reads `ALL` and fails on any other `herald_` name. Labels stay low-cardinality: queue,
//! platform, outcome, result, status class, route. Never a tenant, connection, share or job id.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

pub use herald_platforms::metrics::{Kind, Metric};

macro_rules! declare {
    ($( $ident:ident = $name:literal, $kind:ident, $help:literal; )*) => {
        $( pub const $ident: &str = $name; )*
        /// The metrics declared here, in declaration order.
        const OWN: &[Metric] = &[ $( Metric { name: $name, kind: Kind::$kind, help: $help }, )* ];
    };
}

/// Every metric Herald exports: those declared here, then the platform clients' own
/// (`herald_platforms::metrics`).
pub const ALL: &[Metric] = &concat::<{ OWN.len() + herald_platforms::metrics::ALL.len() }>(
    OWN,
    herald_platforms::metrics::ALL,
);

/// `a` then `b`, as one array (slices cannot be joined in a constant otherwise).
const fn concat<const N: usize>(a: &[Metric], b: &[Metric]) -> [Metric; N] {
    let mut out = [a[0]; N];
    let mut i = 0;
    while i < N {
        out[i] = if i < a.len() { a[i] } else { b[i - a.len()] };
        i += 1;
    }
    out
}

// Labels, by metric (a dashboard may only use these):
// jobs_total{queue,platform,outcome}; job_duration_seconds{queue,platform};
// job_retries_total, jobs_parked_total, jobs_dead_total{queue,platform};
// rate_limit_deferrals_total{queue,platform,scope};
// queue_depth{queue,state}; queue_oldest_age_seconds{queue};
// connections{platform,auth}; connections_needing_reauth, connections_needing_reauth_over_48h,
// connections_refresh_failing, reauth_cleared_seconds{platform};
// token_refreshes_total{platform,result}; oauth_starts_total{platform};
// oauth_callbacks_total{platform,result}; platform_requests_total{platform,operation,status_class};
// platform_request_duration_seconds{platform,operation}; api_requests_total{method,route,status};
// api_request_duration_seconds{method,route}; workers_alive{queue}; sweep_runs_total{sweep,result};
// build_info{version}.
declare! {
    JOBS_TOTAL = "herald_jobs_total", Counter,
        "Job attempts finished, by queue, platform and outcome (succeeded, retried, rate_limited, parked, failed, outcome_unknown, skipped).";
    JOB_DURATION_SECONDS = "herald_job_duration_seconds", Histogram,
        "Wall time of one job attempt, by queue and platform.";
    JOB_RETRIES_TOTAL = "herald_job_retries_total", Counter,
        "Attempts scheduled again after a transient failure, by queue and platform.";
    JOBS_PARKED_TOTAL = "herald_jobs_parked_total", Counter,
        "Jobs parked without a platform call because the connection needs reauth, by queue and platform.";
    JOBS_DEAD_TOTAL = "herald_jobs_dead_total", Counter,
        "Jobs that ended in a terminal failure (failed or outcome_unknown), by queue and platform.";
    QUEUE_DEPTH = "herald_queue_depth", Gauge,
        "Jobs in the queue backend by queue and state (ready, scheduled, running, dead), read at scrape time.";
    QUEUE_OLDEST_AGE_SECONDS = "herald_queue_oldest_age_seconds", Gauge,
        "Age of the oldest job that is due and not yet started, by queue, read at scrape time.";
    CONNECTIONS = "herald_connections", Gauge,
        "Connected accounts by platform and auth (oauth; app_password: a Bluesky app password), read at scrape time.";
    CONNECTIONS_NEEDING_REAUTH = "herald_connections_needing_reauth", Gauge,
        "Connected accounts flagged needs_reauth, by platform, read at scrape time.";
    CONNECTIONS_NEEDING_REAUTH_OVER_48H = "herald_connections_needing_reauth_over_48h", Gauge,
        "Connected accounts flagged needs_reauth for more than 48 hours (a reauthorize prompt not answered in time), by platform, read at scrape time.";
    REAUTH_CLEARED_SECONDS = "herald_reauth_cleared_seconds", Histogram,
        "Time from a connection being flagged needs_reauth to its reconnect being verified and the flag cleared, by platform.";
    CONNECTIONS_REFRESH_FAILING = "herald_connections_refresh_failing", Gauge,
        "Connections with 3 or more token refresh failures in the last 24 hours, by platform, read at scrape time.";
    TOKEN_REFRESHES_TOTAL = "herald_token_refreshes_total", Counter,
        "Token refreshes by platform and result (succeeded, invalid_grant, transient, skipped).";
    OAUTH_STARTS_TOTAL = "herald_oauth_starts_total", Counter,
        "OAuth connect flows started, by platform.";
    OAUTH_CALLBACKS_TOTAL = "herald_oauth_callbacks_total", Counter,
        "OAuth callbacks by platform and result (succeeded, denied, invalid_state, exchange_failed, verify_failed).";
    RATE_LIMIT_DEFERRALS_TOTAL = "herald_rate_limit_deferrals_total", Counter,
        "Jobs deferred by a rate limit, by queue, platform and scope (account: the account's own limit; app: the platform app's limit, which every tenant shares; fair_share: the app's budget is scarce and the tenant has used its share).";
    API_REQUESTS_TOTAL = "herald_api_requests_total", Counter,
        "API requests by method, matched route and status code.";
    API_REQUEST_DURATION_SECONDS = "herald_api_request_duration_seconds", Histogram,
        "API request latency by method and matched route.";
    WORKERS_ALIVE = "herald_workers_alive", Gauge,
        "Queue workers running in this process, by queue.";
    SWEEP_RUNS_TOTAL = "herald_sweep_runs_total", Counter,
        "Scheduled sweeps run, by sweep and result.";
    BUILD_INFO = "herald_build_info", Gauge,
        "Always 1; the version label says which Herald build is running.";
}

/// Registers the help text of every metric with the installed recorder.
pub fn describe() {
    for m in ALL {
        let unit = if m.name.ends_with("_seconds") {
            Some(Unit::Seconds)
        } else {
            None
        };
        match (m.kind, unit) {
            (Kind::Counter, _) => describe_counter!(m.name, m.help),
            (Kind::Gauge, Some(u)) => describe_gauge!(m.name, u, m.help),
            (Kind::Gauge, None) => describe_gauge!(m.name, m.help),
            (Kind::Histogram, Some(u)) => describe_histogram!(m.name, u, m.help),
            (Kind::Histogram, None) => describe_histogram!(m.name, m.help),
        }
    }
}

/// Results of a token refresh, as `herald_token_refreshes_total{result}` labels them.
pub const REFRESH_RESULTS: &[&str] = &[
    "succeeded",
    "invalid_grant",
    "transient",
    "skipped",
    "stale",
];
/// Results of an OAuth callback, as `herald_oauth_callbacks_total{result}` labels them.
pub(crate) const CALLBACK_RESULTS: &[&str] = &[
    "succeeded",
    "denied",
    "invalid_state",
    "exchange_failed",
    "verify_failed",
];

/// How a connection authenticates, as `herald_connections{auth}` labels it.
pub(crate) const CONNECTION_AUTHS: &[&str] = &["oauth", "app_password"];

/// Scopes of a rate-limit deferral, as `herald_rate_limit_deferrals_total{scope}` labels them.
pub(crate) const DEFERRAL_SCOPES: &[&str] = &["account", "app", "fair_share"];

/// Creates the counters whose label values are known in advance at zero, so Prometheus sees them
/// before their first increment and `rate()` counts that increment (a series that first appears
/// at 1 shows no increase). A few hundred series: platforms times results and buckets.
pub fn zero_known_series() {
    use crate::payloads::QueueName;
    use herald_platforms::PlatformKind;
    for platform in PlatformKind::ALL.map(PlatformKind::as_str) {
        metrics::counter!(OAUTH_STARTS_TOTAL, "platform" => platform).increment(0);
        // Registered without a sample: exported at zero, so the first prompt cleared is an
        // increase (the 48-hour rule reads `increase()` of its buckets).
        let _ = metrics::histogram!(REAUTH_CLEARED_SECONDS, "platform" => platform);
        for result in CALLBACK_RESULTS {
            metrics::counter!(OAUTH_CALLBACKS_TOTAL, "platform" => platform, "result" => *result)
                .increment(0);
        }
        for result in REFRESH_RESULTS {
            metrics::counter!(TOKEN_REFRESHES_TOTAL, "platform" => platform, "result" => *result)
                .increment(0);
        }
        for queue in QueueName::ALL.map(QueueName::as_str) {
            for counter in [JOBS_PARKED_TOTAL, JOBS_DEAD_TOTAL, JOB_RETRIES_TOTAL] {
                metrics::counter!(counter, "queue" => queue, "platform" => platform).increment(0);
            }
            for scope in DEFERRAL_SCOPES {
                metrics::counter!(RATE_LIMIT_DEFERRALS_TOTAL, "queue" => queue, "platform" => platform, "scope" => *scope)
                    .increment(0);
            }
        }
    }
}

/// How long a reauthorize prompt stays unanswered before `herald_connections_needing_reauth_over_48h`
/// counts it (the Bluesky plan's target: 90 % cleared within 48 hours).
pub(crate) const REAUTH_PROMPT_TARGET: std::time::Duration =
    std::time::Duration::from_secs(48 * 3600);

/// Buckets of `herald_reauth_cleared_seconds`: minutes to weeks, with 48 h (172800) among them
/// so the share cleared within the target is one bucket over the count.
pub const REAUTH_CLEARED_BUCKETS: &[f64] = &[
    300.0,
    900.0,
    3600.0,
    14_400.0,
    43_200.0,
    86_400.0,
    172_800.0,
    259_200.0,
    604_800.0,
    2_592_000.0,
];

/// Histogram buckets for job and request durations, in seconds.
pub const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
