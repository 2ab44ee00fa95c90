//! The OpenAPI document served at `/openapi.json`.

use axum::Json;
use utoipa::{
    Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};

use crate::routes::{
    connect, connection_runs, connections, followers, health, jobs, keys, media, oauth_client, ops,
    platforms, shares, webhooks,
};

#[derive(OpenApi)]
#[openapi(
    info(title = "Herald", description = "Durable jobs that publish on behalf of people to social networks."),
    paths(
        shares::create, shares::get, shares::list, shares::cancel, shares::edit, shares::retry,
        connections::create, connections::get, connections::list, connections::remove,
        connection_runs::refresh, connection_runs::sync, followers::list, followers::changes,
        connect::start, connect::callback,
        oauth_client::client_metadata, oauth_client::jwks,
        jobs::list, jobs::get, jobs::replay_one, jobs::replay_bulk,
        ops::connections,
        keys::list, keys::create, keys::revoke,
        platforms::list,
        webhooks::create, webhooks::list, webhooks::get, webhooks::update, webhooks::remove,
        webhooks::rotate_secret, webhooks::test, webhooks::deliveries, webhooks::resend,
        webhooks::replay,
        media::get,
        health::healthz, health::readyz,
    ),
    components(schemas(
        crate::error::ErrorBody, crate::error::ErrorDetail,
        jobs::JobState, jobs::JobQueueName, jobs::ShareQueueName, keys::KeyScope,
        herald_platforms::PlatformKind, herald_jobs::store::ShareState,
        herald_jobs::webhooks::EventType,
    )),
    modifiers(&ApiKeyAuth, &CommonResponses),
)]
pub struct ApiDoc;

/// The answers every operation of a kind can give, documented once here rather than on each
/// route: 401 and 403 where a key is needed, 400/413/415 where a JSON body is read, 422 where a
/// body or a parameter can be refused, and 503 when the store cannot be reached.
struct CommonResponses;

/// Any string without a NUL character.
const NO_NUL: &str = "^[^\\u0000]*$";

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use axum::http::Method;
        use herald_jobs::store::ApiKeyRole;
        use utoipa::openapi::{
            ContentBuilder, Ref, RefOr, ResponseBuilder,
            path::{Operation, ParameterIn},
            schema::{Schema, SchemaType, Type},
            security::SecurityRequirement,
        };
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
        };
        let add = |op: &mut Operation, status: &str, description: &str| {
            op.responses
                .responses
                .entry(status.to_owned())
                .or_insert_with(|| error(description).into());
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            let ops = [
                (Method::GET, item.get.as_mut()),
                (Method::PUT, item.put.as_mut()),
                (Method::POST, item.post.as_mut()),
                (Method::DELETE, item.delete.as_mut()),
                (Method::PATCH, item.patch.as_mut()),
            ];
            for (method, op) in ops {
                let Some(op) = op else { continue };
                let method = &method;
                let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
                if secured {
                    add(
                        op,
                        "401",
                        "`unauthorized`: no API key, or not a valid one (unknown, revoked or expired)",
                    );
                    // The scope the route needs (`auth::ROUTE_SCOPES`), as the requirement's
                    // scope list and in the 403's description.
                    let role = if op.tags.iter().flatten().any(|t| t == "operators") {
                        ApiKeyRole::Operator
                    } else {
                        ApiKeyRole::Tenant
                    };
                    let scope = crate::auth::scope_for(method, Some(path.as_str()), role).as_str();
                    op.security = Some(vec![SecurityRequirement::new("api_key", [scope])]);
                    let forbidden = match role {
                        ApiKeyRole::Operator => "`forbidden`: not an operator key",
                        ApiKeyRole::Tenant => {
                            "`forbidden`: an operator key where a tenant key is needed"
                        }
                    };
                    add(
                        op,
                        "403",
                        &format!(
                            "{forbidden}; `insufficient_scope`: the key lacks the `{scope}` scope"
                        ),
                    );
                }
                if op.request_body.is_some() {
                    add(op, "400", "`invalid_json`: the body is not JSON");
                    add(
                        op,
                        "413",
                        "`body_too_large`: the body is larger than 64 KiB",
                    );
                    add(
                        op,
                        "415",
                        "`unsupported_media_type`: send `Content-Type: application/json`",
                    );
                    add(
                        op,
                        "422",
                        "A field is invalid; `code` says why and `field` names it",
                    );
                }
                // A query or path string refuses NUL characters (`nul_character`).
                for p in op.parameters.iter_mut().flatten() {
                    if !matches!(p.parameter_in, ParameterIn::Path | ParameterIn::Query) {
                        continue;
                    }
                    if let Some(RefOr::T(Schema::Object(o))) = p.schema.as_mut() {
                        let string = match &o.schema_type {
                            SchemaType::Type(Type::String) => true,
                            SchemaType::Array(ts) => ts.contains(&Type::String),
                            _ => false,
                        };
                        if string && o.pattern.is_none() && o.enum_values.is_none() {
                            o.pattern = Some(NO_NUL.into());
                        }
                    }
                }
                let params = op.parameters.iter().flatten();
                if params
                    .clone()
                    .any(|p| matches!(p.parameter_in, ParameterIn::Path | ParameterIn::Query))
                {
                    add(
                        op,
                        "422",
                        "A parameter is invalid (`nul_character`, `invalid_field`, ...); `field` names it",
                    );
                }
                if path.starts_with("/v1/") {
                    add(
                        op,
                        "503",
                        "`store_unavailable`: the store cannot be reached; try again",
                    );
                }
            }
        }
    }
}

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
