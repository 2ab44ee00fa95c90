//! `/oauth/bluesky/client-metadata.json` and `/oauth/bluesky/jwks.json`: Herald's AT Protocol
//! OAuth client, as authorization servers fetch it. The metadata document's URL is the
//! `client_id`; it must answer 200 with JSON, no redirect. Both exist only when Herald is a
//! confidential client (`HERALD_BLUESKY_CLIENT_KEYS`); the loopback development client has no
//! document (the authorization server derives it from the id).

use axum::{
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::Value;

use crate::{
    ApiState,
    error::{ApiError, ApiResult},
};

fn document(body: Value) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            // Servers cache it; a key rotation shows within minutes.
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body.to_string(),
    )
        .into_response()
}

fn not_confidential() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_configured",
        "Herald has no Bluesky client keys (HERALD_BLUESKY_CLIENT_KEYS): it uses the loopback development client, which has no metadata document",
    )
}

/// The client metadata document.
#[utoipa::path(get, path = "/oauth/bluesky/client-metadata.json", tag = "oauth",
    responses(
        (status = 200, description = "AT Protocol OAuth client metadata (`client_id` is this URL)"),
        (status = 404, description = "No client keys configured", body = crate::error::ErrorBody),
    ))]
pub async fn client_metadata(State(state): State<ApiState>) -> ApiResult<Response> {
    state
        .ctx
        .settings
        .bluesky_client()
        .metadata()
        .map(document)
        .ok_or_else(not_confidential)
}

/// The client's public keys (the metadata's `jwks_uri`).
#[utoipa::path(get, path = "/oauth/bluesky/jwks.json", tag = "oauth",
    responses(
        (status = 200, description = "The public ES256 keys that sign Herald's client assertions"),
        (status = 404, description = "No client keys configured", body = crate::error::ErrorBody),
    ))]
pub async fn jwks(State(state): State<ApiState>) -> ApiResult<Response> {
    let client = state.ctx.settings.bluesky_client();
    if !client.confidential() {
        return Err(not_confidential());
    }
    Ok(document(client.jwks()))
}
