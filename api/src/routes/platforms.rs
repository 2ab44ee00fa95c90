//! `/v1/platforms`: which platforms this Herald can post to, and what each offers.

use axum::extract::State;
use herald_platforms::PlatformKind;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::ApiJson;
use crate::{ApiState, auth::Tenant};

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PlatformView {
    pub platform: PlatformKind,
    /// False when the platform's app is not configured on this Herald.
    pub available: bool,
    pub refresh: bool,
    pub followers: bool,
    /// Instagram posts need an image.
    pub requires_image: bool,
    /// The platform deduplicates a repeated create, so a lost answer is retried safely.
    pub idempotent_create: bool,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PlatformList {
    pub platforms: Vec<PlatformView>,
}

#[utoipa::path(get, path = "/v1/platforms", tag = "platforms",
    responses((status = 200, body = PlatformList)), security(("api_key" = [])))]
pub async fn list(State(state): State<ApiState>, _tenant: Tenant) -> ApiJson<PlatformList> {
    let platforms = PlatformKind::ALL
        .into_iter()
        .map(|kind| match state.ctx.platforms.get(kind) {
            Some(p) => {
                let c = p.capabilities();
                PlatformView {
                    platform: kind,
                    available: true,
                    refresh: c.refresh,
                    followers: c.followers,
                    requires_image: c.requires_image,
                    idempotent_create: c.idempotency_window.is_some(),
                }
            }
            None => PlatformView {
                platform: kind,
                available: false,
                refresh: false,
                followers: false,
                requires_image: false,
                idempotent_create: false,
            },
        })
        .collect();
    ApiJson(PlatformList { platforms })
}
