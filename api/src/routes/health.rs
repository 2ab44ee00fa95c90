//! `/healthz`: the process is up. `/readyz`: the store and the queue answer.

use axum::{Json, extract::State, http::StatusCode};
use serde_json::{Value, json};

use crate::ApiState;

#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "The process is up")))]
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

#[utoipa::path(get, path = "/readyz", tag = "health", responses(
    (status = 200, description = "Store and queue reachable"),
    (status = 503, description = "Store or queue unreachable"),
))]
pub async fn readyz(State(state): State<ApiState>) -> (StatusCode, Json<Value>) {
    // Both at once: with the database down each waits for the pool's acquire timeout.
    let (store, queue) = tokio::join!(state.ctx.store.ping(), state.ctx.queue.ping());
    let (store, queue) = (store.is_ok(), queue.is_ok());
    let status = if store && queue {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let word = |ok: bool| if ok { "ok" } else { "unreachable" };
    (
        status,
        Json(json!({
            "status": word(store && queue),
            "store": { "engine": state.ctx.store.engine(), "status": word(store) },
            "queue": { "backend": state.ctx.queue.backend(), "status": word(queue) },
        })),
    )
}
