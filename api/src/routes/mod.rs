pub mod connect;
pub mod connection_runs;
pub mod connections;
pub mod followers;
pub mod health;
pub mod jobs;
pub mod keys;
pub mod media;
pub mod metrics;
pub mod oauth_client;
pub mod ops;
pub mod platforms;
pub mod shares;
pub mod webhooks;

use axum::{
    extract::{FromRequest, FromRequestParts, Request},
    http::request::Parts,
    response::{IntoResponse, Response},
};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::ApiError;

/// `axum::Json` with Herald's error body on a bad request. A NUL character in any string of the
/// body (a value or a key) is refused with 422 `nul_character` naming where it is.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let axum::Json(v) = axum::Json::<Value>::from_request(req, state).await?;
        decode_json(v).map(Self)
    }
}

/// A body that may be left out (an empty one is `T::default()`), else JSON read like [`ApiJson`].
pub(crate) fn optional_json<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    let v = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "invalid_json",
            e.to_string(),
        )
    })?;
    decode_json(v)
}

/// A replay or retry of a share whose outcome is unknown needs `force` and a reason, which is
/// kept: the share may already be posted.
pub(crate) fn force_reason(force: bool, reason: Option<&str>) -> Result<Option<String>, ApiError> {
    let reason = reason.map(str::trim).filter(|r| !r.is_empty());
    match (force, reason) {
        (true, None) => Err(ApiError::invalid(
            "reason",
            "reason_required",
            "`force` needs a `reason`: the share may already be posted",
        )),
        (true, Some(r)) if r.chars().count() > 500 => Err(ApiError::invalid(
            "reason",
            "reason_too_long",
            "`reason` is longer than 500 characters",
        )),
        (true, Some(r)) => Ok(Some(r.to_owned())),
        (false, _) => Ok(None),
    }
}

/// Checks a parsed body for NUL characters, then reads it into `T`, naming the field at fault.
pub(crate) fn decode_json<T: DeserializeOwned>(v: Value) -> Result<T, ApiError> {
    if let Some(field) = find_nul(&v, String::new()) {
        return Err(ApiError::nul(field));
    }
    serde_path_to_error::deserialize(v).map_err(|e| {
        let text = format!("{}: {}", e.path(), e.inner());
        ApiError::from_data_error(text)
    })
}

/// The path (`text`, `connection_ids[1]`, `extras.instance_url`) of the first string holding a
/// NUL character.
fn find_nul(v: &Value, at: String) -> Option<String> {
    let join = |k: &str| {
        let k = k.replace('\0', "\\0");
        if at.is_empty() {
            k
        } else {
            format!("{at}.{k}")
        }
    };
    match v {
        Value::String(s) => s.contains('\0').then_some(at),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| find_nul(item, format!("{at}[{i}]"))),
        Value::Object(map) => map.iter().find_map(|(k, item)| {
            if k.contains('\0') {
                Some(join(k))
            } else {
                find_nul(item, join(k))
            }
        }),
        _ => None,
    }
}

/// `axum::extract::Query` with Herald's error body (422 naming the parameter) on a bad value.
/// NUL characters were refused before the handler (`reject_nul_in_path_and_query`).
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Query(v) =
            axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(Self(v))
    }
}

/// `axum::extract::Path` with Herald's error body.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(v) =
            axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(Self(v))
    }
}

/// Refuses a NUL character in a path segment or a query value (or name) with 422
/// `nul_character` naming the parameter, on every route, before any handler reads it.
pub(crate) async fn reject_nul_in_path_and_query(
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let (mut parts, body) = req.into_parts();
    match axum::extract::RawPathParams::from_request_parts(&mut parts, &()).await {
        Ok(params) => {
            for (key, value) in &params {
                if value.contains('\0') {
                    return ApiError::nul(key).into_response();
                }
            }
        }
        Err(axum::extract::rejection::RawPathParamsRejection::InvalidUtf8InPathParam(e)) => {
            let text = e.body_text();
            let field = text
                .split_once('`')
                .and_then(|(_, rest)| rest.split('`').next())
                .map(str::to_owned);
            return ApiError {
                status: axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                code: "invalid_field",
                message: text,
                field,
                share_id: None,
                platform: None,
            }
            .into_response();
        }
        Err(_) => {}
    }
    if let Some(q) = parts.uri.query() {
        for (key, value) in url::form_urlencoded::parse(q.as_bytes()) {
            if key.contains('\0') || value.contains('\0') {
                return ApiError::nul(key.replace('\0', "\\0")).into_response();
            }
        }
    }
    next.run(Request::from_parts(parts, body)).await
}

impl<T: serde::Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// Checks an optional RFC 3339 time field, within the years Herald accepts (1 to 9998).
pub(crate) fn parse_time(
    field: &str,
    raw: Option<&str>,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, ApiError> {
    Ok(herald_jobs::share_request::parse_time(field, raw)?)
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
