//! The OpenAPI document served at `/openapi.json`.

use axum::Json;
use utoipa::{
    Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};

use crate::routes::{connect, connections, health, jobs, oauth_client, platforms, shares};

#[derive(OpenApi)]
#[openapi(
    info(title = "Herald", description = "Durable jobs that publish on behalf of people to social networks."),
    paths(
        shares::create, shares::get, shares::list, shares::cancel,
        connections::create, connections::get, connections::list, connections::remove,
        connect::start, connect::callback,
        oauth_client::client_metadata, oauth_client::jwks,
        jobs::list, jobs::get, jobs::replay_one, jobs::replay_bulk,
        platforms::list,
        health::healthz, health::readyz,
    ),
    components(schemas(crate::error::ErrorBody, crate::error::ErrorDetail)),
    modifiers(&ApiKeyAuth),
)]
pub struct ApiDoc;

struct ApiKeyAuth;

impl Modify for ApiKeyAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("hk_...")
                    .build(),
            ),
        );
    }
}

pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
