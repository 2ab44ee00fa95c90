pub mod connect;
pub mod connections;
pub mod health;
pub mod jobs;
pub mod metrics;
pub mod oauth_client;
pub mod platforms;
pub mod shares;

use axum::{
    extract::{FromRequest, Request},
    response::{IntoResponse, Response},
};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// `axum::Json` with Herald's error body on a bad request.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let axum::Json(v) = axum::Json::<T>::from_request(req, state).await?;
        Ok(Self(v))
    }
}

impl<T: serde::Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// Checks an optional RFC 3339 time field.
pub(crate) fn parse_time(
    field: &str,
    raw: Option<&str>,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, ApiError> {
    raw.map(|s| {
        chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&chrono::Utc))
            .map_err(|_| {
                ApiError::invalid(
                    field,
                    "invalid_time",
                    format!("`{field}` must be an RFC 3339 time such as 2026-01-02T15:04:05Z"),
                )
            })
    })
    .transpose()
}

pub(crate) const MAX_PAGE: i64 = 200;

pub(crate) fn page_limit(limit: Option<i64>) -> Result<i64, ApiError> {
    match limit {
        None => Ok(50),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::invalid(
            "limit",
            "invalid_limit",
            format!("`limit` must be between 1 and {MAX_PAGE}"),
        )),
    }
}
