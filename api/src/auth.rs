//! Who is calling: a tenant key scopes every query to its tenant; an operator key is for the
//! operator endpoints only. Each route also needs a scope ([`ROUTE_SCOPES`]), which the
//! extractors check after the role.
//!
//! The key lookup is on every request's path; `Store::authenticate` keeps each key's row in
//! memory for `KEY_CACHE_TTL` (5 s), so a revoked or expired key stops working within that long.

use axum::{
    extract::{FromRequestParts, MatchedPath},
    http::{Method, request::Parts},
};
use herald_jobs::store::{ApiKeyRole, AuthedKey, Scope};

use crate::{ApiState, error::ApiError};

/// The scope each route needs, by method and matched path. A key without it gets 403
/// `insufficient_scope`. Tenant keys hold `read`, `share` and `connect`; operator keys `read`
/// and `admin`; keys made before scopes existed hold all of their role's.
///
/// A route missing here needs `read` for GET and otherwise `share` (tenant) or `admin`
/// (operator); `every_secured_route_has_a_scope` fails until it is listed.
pub const ROUTE_SCOPES: &[(&str, &str, Scope)] = &[
    // Tenant keys.
    ("GET", "/v1/shares", Scope::Read),
    ("GET", "/v1/shares/{id}", Scope::Read),
    ("POST", "/v1/shares", Scope::Share),
    ("DELETE", "/v1/shares/{id}", Scope::Share),
    ("PATCH", "/v1/shares/{id}", Scope::Share),
    ("POST", "/v1/shares/{id}/retry", Scope::Share),
    ("GET", "/v1/connections", Scope::Read),
    ("GET", "/v1/connections/{id}", Scope::Read),
    ("POST", "/v1/connections", Scope::Connect),
    ("DELETE", "/v1/connections/{id}", Scope::Connect),
    // Asking for a refresh or a sync manages the account's credentials and calls the platform
    // on the user's behalf: a connection's business, not posting and not a read.
    ("POST", "/v1/connections/{id}/refresh", Scope::Connect),
    ("POST", "/v1/connections/{id}/sync", Scope::Connect),
    ("GET", "/v1/connections/{id}/followers", Scope::Read),
    ("GET", "/v1/connections/{id}/follower-changes", Scope::Read),
    ("POST", "/v1/connect/{platform}", Scope::Connect),
    ("GET", "/v1/platforms", Scope::Read),
    // Operator keys.
    ("GET", "/v1/jobs", Scope::Read),
    ("GET", "/v1/jobs/{id}", Scope::Read),
    ("GET", "/v1/ops/connections", Scope::Read),
    ("POST", "/v1/jobs/replay", Scope::Admin),
    ("POST", "/v1/jobs/{id}/replay", Scope::Admin),
    ("GET", "/v1/keys", Scope::Admin),
    ("POST", "/v1/keys", Scope::Admin),
    ("DELETE", "/v1/keys/{id}", Scope::Admin),
];

/// The scope a request to `route` with `method` needs from a key of `role`.
pub fn scope_for(method: &Method, route: Option<&str>, role: ApiKeyRole) -> Scope {
    let listed = route.and_then(|r| {
        ROUTE_SCOPES
            .iter()
            .find(|(m, p, _)| *m == method.as_str() && *p == r)
    });
    match (listed, role) {
        (Some((_, _, s)), _) => *s,
        _ if method == Method::GET || method == Method::HEAD => Scope::Read,
        (None, ApiKeyRole::Tenant) => Scope::Share,
        (None, ApiKeyRole::Operator) => Scope::Admin,
    }
}

/// A caller authenticated with a tenant key.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub id: String,
    pub key_id: String,
}

fn bearer(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

async fn authenticate(parts: &Parts, state: &ApiState) -> Result<AuthedKey, ApiError> {
    let key = bearer(parts).ok_or_else(ApiError::unauthorized)?;
    state
        .ctx
        .store
        .authenticate(key)
        .await?
        .ok_or_else(ApiError::unauthorized)
}

/// 403 `insufficient_scope` unless the key holds the scope this route needs.
fn require_scope(parts: &Parts, key: &AuthedKey) -> Result<(), ApiError> {
    let route = parts.extensions.get::<MatchedPath>().map(|p| p.as_str());
    let needed = scope_for(&parts.method, route, key.role);
    if key.scopes.contains(needed) {
        Ok(())
    } else {
        Err(ApiError::insufficient_scope(needed.as_str()))
    }
}

impl FromRequestParts<ApiState> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ApiState,
    ) -> Result<Self, Self::Rejection> {
        let authed = authenticate(parts, state).await?;
        let AuthedKey {
            role: ApiKeyRole::Tenant,
            tenant_id: Some(id),
            ..
        } = &authed
        else {
            return Err(ApiError::forbidden("this endpoint needs a tenant key"));
        };
        require_scope(parts, &authed)?;
        Ok(Tenant {
            id: id.clone(),
            key_id: authed.key_id,
        })
    }
}

/// A caller authenticated with an operator key: inspects and replays jobs across tenants.
#[derive(Debug, Clone)]
pub struct Operator {
    pub key_id: String,
}

impl FromRequestParts<ApiState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ApiState,
    ) -> Result<Self, Self::Rejection> {
        let authed = authenticate(parts, state).await?;
        match authed.role {
            ApiKeyRole::Operator => {
                require_scope(parts, &authed)?;
                Ok(Operator {
                    key_id: authed.key_id,
                })
            }
            ApiKeyRole::Tenant => Err(ApiError::forbidden(
                "this endpoint needs an operator key (herald keys create --operator)",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openapi::ApiDoc;
    use utoipa::OpenApi;

    #[test]
    fn every_secured_route_has_a_scope() {
        let doc = ApiDoc::openapi();
        let mut missing = Vec::new();
        for (path, item) in &doc.paths.paths {
            let ops = [
                ("GET", item.get.as_ref()),
                ("POST", item.post.as_ref()),
                ("PUT", item.put.as_ref()),
                ("PATCH", item.patch.as_ref()),
                ("DELETE", item.delete.as_ref()),
            ];
            for (method, op) in ops {
                let Some(op) = op else { continue };
                if op.security.as_ref().is_some_and(|s| !s.is_empty())
                    && !ROUTE_SCOPES
                        .iter()
                        .any(|(m, p, _)| *m == method && p == path)
                {
                    missing.push(format!("{method} {path}"));
                }
            }
        }
        assert!(
            missing.is_empty(),
            "routes without a scope in auth::ROUTE_SCOPES: {missing:?}"
        );
    }

    #[test]
    fn an_unlisted_write_needs_the_roles_strongest_scope() {
        assert_eq!(
            scope_for(&Method::POST, Some("/v1/new"), ApiKeyRole::Tenant),
            Scope::Share
        );
        assert_eq!(
            scope_for(&Method::GET, Some("/v1/new"), ApiKeyRole::Operator),
            Scope::Read
        );
        assert_eq!(
            scope_for(&Method::POST, Some("/v1/jobs/replay"), ApiKeyRole::Operator),
            Scope::Admin
        );
    }
}
