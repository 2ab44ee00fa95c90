//! Who is calling: a tenant key scopes every query to its tenant; an operator key is for the
//! operator endpoints only.

use axum::{extract::FromRequestParts, http::request::Parts};
use herald_jobs::store::ApiKeyRole;

use crate::{ApiState, error::ApiError};

/// A caller authenticated with a tenant key.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub id: String,
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

impl FromRequestParts<ApiState> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ApiState,
    ) -> Result<Self, Self::Rejection> {
        let key = bearer(parts).ok_or_else(ApiError::unauthorized)?;
        let authed = state
            .ctx
            .store
            .authenticate(key)
            .await?
            .ok_or_else(ApiError::unauthorized)?;
        match (authed.role, authed.tenant_id) {
            (ApiKeyRole::Tenant, Some(id)) => Ok(Tenant { id }),
            _ => Err(ApiError::forbidden("this endpoint needs a tenant key")),
        }
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
        let key = bearer(parts).ok_or_else(ApiError::unauthorized)?;
        let authed = state
            .ctx
            .store
            .authenticate(key)
            .await?
            .ok_or_else(ApiError::unauthorized)?;
        match authed.role {
            ApiKeyRole::Operator => Ok(Operator {
                key_id: authed.key_id,
            }),
            ApiKeyRole::Tenant => Err(ApiError::forbidden(
                "this endpoint needs an operator key (herald keys create --operator)",
            )),
        }
    }
}
