//! `/metrics`: the Prometheus exposition, with the scrape-time gauges refreshed first.

use axum::{
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};

use crate::ApiState;

pub async fn metrics(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    if let Some(token) = &state.metrics_token {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if presented != Some(token.as_str()) {
            return (
                StatusCode::UNAUTHORIZED,
                "metrics need Authorization: Bearer <HERALD_METRICS_TOKEN>\n",
            )
                .into_response();
        }
    }
    if let Err(e) = herald_jobs::handlers::gauges::refresh(&state.ctx).await {
        tracing::warn!(error = %e, "scrape-time gauges not refreshed");
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.prometheus.render(),
    )
        .into_response()
}
