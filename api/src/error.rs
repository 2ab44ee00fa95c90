//! The one error type every route returns: a status, a stable code, the field at fault.

use axum::{
    Json,
    extract::rejection::{JsonRejection, PathRejection, QueryRejection},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    /// With `already_shared`: the earlier share of the same post.
    pub share_id: Option<String>,
    /// With a refusal of one target's rules (an image it cannot take): that target's platform.
    pub platform: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `invalid_url`, `text_too_long`, `unknown_connection`, ...
    pub code: String,
    pub message: String,
    /// The request field at fault (`url`, `connection_ids[1]`, `extras.instance_url`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// With `already_shared`: the earlier share of the same post to that connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub share_id: Option<String>,
    /// With a refusal of one target's rules (`too_many_images`, `alt_text_too_long`, ...): the
    /// platform of the target that refuses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
            share_id: None,
            platform: None,
        }
    }

    /// A 422 naming the field at fault.
    pub fn invalid(
        field: impl Into<String>,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code,
            message: message.into(),
            field: Some(field.into()),
            share_id: None,
            platform: None,
        }
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid API key is required: Authorization: Bearer hk_...",
        )
    }

    /// A 422 for a NUL character in a request field, path segment or query value: no store
    /// keeps it faithfully (Postgres refuses it, SQLite would truncate it in places).
    pub fn nul(field: impl Into<String>) -> Self {
        let field = field.into();
        Self::invalid(
            field.clone(),
            "nul_character",
            format!("`{field}` contains a NUL character (\\u0000)"),
        )
    }

    /// A 404 for a path no route has.
    pub fn no_route() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "no_route",
            "no such path; see /openapi.json",
        )
    }

    /// A 405 for a path whose route does not take this method.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this path does not take this method; see /openapi.json",
        )
    }

    pub fn forbidden(message: &str) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// A 403 for a key of the right role without the scope the route needs.
    pub fn insufficient_scope(scope: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            format!("this key lacks the `{scope}` scope this endpoint needs"),
        )
    }

    /// A failure of ours: logged here, once, and shown to the caller without internals.
    pub fn internal(err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "something went wrong on our side; try again",
        )
    }
}

impl ApiError {
    /// A failure from the domain: 503 `store_unavailable` when the store could not be reached
    /// (anywhere in the error's chain), else `internal`.
    pub fn from_anyhow(e: anyhow::Error) -> Self {
        let unavailable = e.chain().any(|c| {
            c.downcast_ref::<herald_jobs::store::StoreError>()
                .is_some_and(|s| s.is_unavailable())
        });
        if unavailable {
            return Self::store_unavailable(&e);
        }
        Self::internal(format!("{e:#}"))
    }

    fn store_unavailable(e: &dyn std::fmt::Display) -> Self {
        tracing::warn!(error = %e, "the store is unreachable");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "the store cannot be reached; try again shortly",
        )
    }
}

impl From<herald_jobs::store::StoreError> for ApiError {
    fn from(e: herald_jobs::store::StoreError) -> Self {
        if e.is_unavailable() {
            return Self::store_unavailable(&e);
        }
        Self::internal(e)
    }
}

impl ApiError {
    /// A 422 from serde's message about a well-formed body or query of the wrong shape.
    pub(crate) fn from_data_error(text: String) -> Self {
        let (code, field) = data_error_field(&text);
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code,
            message: text,
            field,
            share_id: None,
            platform: None,
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::from_data_error(r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        let text = r.body_text();
        // "Invalid URL: Invalid UTF-8 in `id`", or a parse error naming the key.
        let field = text
            .split_once('`')
            .and_then(|(_, rest)| rest.split('`').next())
            .map(str::to_owned);
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "invalid_field",
            message: text,
            field,
            share_id: None,
            platform: None,
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::MissingJsonContentType(_) => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send Content-Type: application/json",
            ),
            JsonRejection::BytesRejection(b) if b.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Self::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    "the request body is too large",
                )
            }
            JsonRejection::JsonDataError(e) => Self::from_data_error(e.body_text()),
            other => Self::new(StatusCode::BAD_REQUEST, "invalid_json", other.body_text()),
        }
    }
}

/// Reads the field at fault out of serde's message, e.g. ``missing field `url` ``,
/// ``unknown field `foo` ``, or `connection_ids[0]: invalid type: ...`.
fn data_error_field(text: &str) -> (&'static str, Option<String>) {
    let inner = ["target type: ", "query string: "]
        .iter()
        .find_map(|p| text.split_once(p).map(|(_, rest)| rest))
        .unwrap_or(text);
    let quoted = |marker: &str| {
        inner
            .split_once(marker)
            .and_then(|(_, rest)| rest.split('`').next())
            .map(str::to_owned)
    };
    if let Some(f) = quoted("missing field `") {
        return ("missing_field", Some(f));
    }
    if let Some(f) = quoted("unknown field `") {
        return ("unknown_field", Some(f));
    }
    let path = inner
        .split_once(": ")
        .map(|(p, _)| p)
        .filter(|p| !p.is_empty() && *p != "." && !p.contains(' '));
    ("invalid_field", path.map(str::to_owned))
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
                field: self.field,
                share_id: self.share_id,
                platform: self.platform,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

impl From<herald_jobs::share_request::Invalid> for ApiError {
    fn from(e: herald_jobs::share_request::Invalid) -> Self {
        Self {
            platform: e.platform.map(|p| p.as_str().to_owned()),
            ..Self::invalid(e.field, e.code, e.message)
        }
    }
}
