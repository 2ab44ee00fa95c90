//! `GET /v1/media/{sha256}`: a share's image, for the platforms that fetch images themselves
//! (Instagram, Threads). No API key: the URL is signed (`expires`, `sig`; see
//! `herald_jobs::media::signed_url`) and works for an hour; anything else is a plain 404, so the
//! route says nothing about which images exist.

use axum::{
    extract::State,
    http::header,
    response::{IntoResponse, Response},
};
use chrono::Utc;
use serde::Deserialize;
use utoipa::IntoParams;

use super::{ApiPath, ApiQuery};
use crate::{
    ApiState,
    error::{ApiError, ApiResult},
};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Signature {
    /// When the URL stops working (Unix seconds).
    pub expires: Option<String>,
    /// The signature Herald made for this image and expiry.
    pub sig: Option<String>,
}

/// One captured image, by a signed URL Herald hands to a platform.
#[utoipa::path(get, path = "/v1/media/{sha256}", tag = "media",
    params(("sha256" = String, Path, description = "The image's SHA-256"), Signature),
    responses(
        (status = 200, description = "The image", content_type = "image/*"),
        (status = 404, description = "No such image, or the signature is wrong or expired", body = crate::error::ErrorBody),
    ))]
pub async fn get(
    State(state): State<ApiState>,
    ApiPath(sha256): ApiPath<String>,
    ApiQuery(sig): ApiQuery<Signature>,
) -> ApiResult<Response> {
    let (Some(expires), Some(sig)) = (sig.expires, sig.sig) else {
        return Err(ApiError::not_found("image"));
    };
    if !herald_jobs::media::verify(&state.ctx.vault, &sha256, &expires, &sig, Utc::now()) {
        return Err(ApiError::not_found("image"));
    }
    let (content_type, bytes) = state
        .ctx
        .store
        .media_blob(&sha256)
        .await?
        .ok_or_else(|| ApiError::not_found("image"))?;
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "private, max-age=3600".to_owned()),
        ],
        bytes,
    )
        .into_response())
}
