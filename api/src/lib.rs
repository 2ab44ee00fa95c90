#![doc = include_str!("../README.md")]

pub mod auth;
pub mod error;
pub mod openapi;
pub mod routes;

use std::time::Instant;

use axum::{
    Router,
    extract::{DefaultBodyLimit, MatchedPath, Request},
    middleware::{self, Next},
    response::Response,
    routing::get,
};
use herald_jobs::{Ctx, metrics as m};
use metrics_exporter_prometheus::PrometheusHandle;

/// Request bodies larger than this are refused with 413 `body_too_large`.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What every route sees.
#[derive(Clone)]
pub struct ApiState {
    pub ctx: Ctx,
    pub prometheus: PrometheusHandle,
    /// When set, `/metrics` needs `Authorization: Bearer <token>`.
    pub metrics_token: Option<String>,
}

/// The whole API.
pub fn router(state: ApiState) -> Router {
    use routes::{
        connect, connection_runs, connections, followers, health, jobs, keys, media, metrics,
        oauth_client, ops, platforms, shares, webhooks,
    };
    Router::new()
        .route("/v1/shares", get(shares::list).post(shares::create))
        .route(
            "/v1/shares/{id}",
            get(shares::get).delete(shares::cancel).patch(shares::edit),
        )
        .route("/v1/shares/{id}/retry", axum::routing::post(shares::retry))
        .route(
            "/v1/connections",
            get(connections::list).post(connections::create),
        )
        .route(
            "/v1/connections/{id}",
            get(connections::get).delete(connections::remove),
        )
        .route(
            "/v1/connections/{id}/refresh",
            axum::routing::post(connection_runs::refresh),
        )
        .route(
            "/v1/connections/{id}/sync",
            axum::routing::post(connection_runs::sync),
        )
        .route("/v1/connections/{id}/followers", get(followers::list))
        .route(
            "/v1/connections/{id}/follower-changes",
            get(followers::changes),
        )
        .route(
            "/v1/connect/{platform}",
            axum::routing::post(connect::start),
        )
        .route("/v1/connect/{platform}/callback", get(connect::callback))
        .route("/v1/platforms", get(platforms::list))
        .route("/v1/media/{sha256}", get(media::get))
        .route(
            herald_platforms::bluesky::oauth::CLIENT_METADATA_PATH,
            get(oauth_client::client_metadata),
        )
        .route(
            herald_platforms::bluesky::oauth::JWKS_PATH,
            get(oauth_client::jwks),
        )
        .route("/v1/webhooks", get(webhooks::list).post(webhooks::create))
        .route(
            "/v1/webhooks/{id}",
            get(webhooks::get)
                .patch(webhooks::update)
                .delete(webhooks::remove),
        )
        .route(
            "/v1/webhooks/{id}/rotate-secret",
            axum::routing::post(webhooks::rotate_secret),
        )
        .route(
            "/v1/webhooks/{id}/test",
            axum::routing::post(webhooks::test),
        )
        .route("/v1/webhooks/{id}/deliveries", get(webhooks::deliveries))
        .route(
            "/v1/webhooks/{id}/deliveries/{delivery}/resend",
            axum::routing::post(webhooks::resend),
        )
        .route(
            "/v1/webhooks/{id}/replay",
            axum::routing::post(webhooks::replay),
        )
        .route("/v1/jobs", get(jobs::list))
        .route("/v1/jobs/replay", axum::routing::post(jobs::replay_bulk))
        .route("/v1/jobs/{id}", get(jobs::get))
        .route(
            "/v1/jobs/{id}/replay",
            axum::routing::post(jobs::replay_one),
        )
        .route("/v1/ops/connections", get(ops::connections))
        .route("/v1/keys", get(keys::list).post(keys::create))
        .route("/v1/keys/{id}", axum::routing::delete(keys::revoke))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::metrics))
        .route("/openapi.json", get(openapi::document))
        .fallback(|| async { error::ApiError::no_route() })
        .method_not_allowed_fallback(|| async { error::ApiError::method_not_allowed() })
        .layer(middleware::from_fn(routes::reject_nul_in_path_and_query))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(track))
        .with_state(state)
}

/// Only `/metrics`, `/healthz` and `/readyz`: for a worker process, or a separate metrics address.
pub fn ops_router(state: ApiState) -> Router {
    use routes::{health, metrics};
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::metrics))
        .fallback(|| async { error::ApiError::no_route() })
        .method_not_allowed_fallback(|| async { error::ApiError::method_not_allowed() })
        .with_state(state)
}

/// Counts requests by method, matched route (never the raw path) and status.
async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let method = req.method().as_str().to_owned();
    let started = Instant::now();
    let res = next.run(req).await;
    let status = res.status().as_u16().to_string();
    metrics::counter!(m::API_REQUESTS_TOTAL, "method" => method.clone(), "route" => route.clone(), "status" => status).increment(1);
    metrics::histogram!(m::API_REQUEST_DURATION_SECONDS, "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    res
}
