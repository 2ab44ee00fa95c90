//! Creating, changing and rotating a tenant's endpoints: validation as a domain type, so the
//! routes only adapt HTTP to it.

use chrono::{DateTime, Utc};
use herald_platforms::ssrf::SsrfGuard;
use secrecy::SecretString;

use super::{EventType, send, signing};
use crate::{
    Ctx, ids,
    share_request::Invalid,
    store::{EndpointPatch, EndpointRow, NewEndpoint, StoreError},
    vault::VaultError,
};

/// How long the previous secret keeps signing after a rotation.
pub const ROTATION_OVERLAP: chrono::Duration = chrono::Duration::hours(24);

pub const MAX_URL: usize = 2000;
pub const MAX_DESCRIPTION: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("{}", .0.message)]
    Invalid(Invalid),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Vault(#[from] VaultError),
}

impl From<Invalid> for EndpointError {
    fn from(i: Invalid) -> Self {
        Self::Invalid(i)
    }
}

fn invalid(field: &str, code: &'static str, message: impl Into<String>) -> Invalid {
    Invalid::new(field, code, message)
}

/// An endpoint's URL: the SSRF guard (a name resolving only to private addresses is refused up
/// front), and https unless private addresses are allowed (tests, local development).
pub async fn check_url(ssrf: &SsrfGuard, raw: &str) -> Result<String, Invalid> {
    if raw.chars().count() > MAX_URL {
        return Err(invalid(
            "url",
            "invalid_url",
            format!("`url` is longer than {MAX_URL} characters"),
        ));
    }
    let url = ssrf
        .check_url_resolved(raw)
        .await
        .map_err(|e| invalid("url", "invalid_url", format!("`url`: {e}")))?;
    if url.scheme() != "https" && !ssrf.allows_private() {
        return Err(invalid("url", "invalid_url", "`url` must be https"));
    }
    Ok(raw.to_owned())
}

/// The subscribed types: `None` (every type), or a non-empty list of known names.
pub fn parse_types(raw: Option<Vec<String>>) -> Result<Option<Vec<EventType>>, Invalid> {
    let Some(raw) = raw else { return Ok(None) };
    if raw.is_empty() {
        return Err(invalid(
            "event_types",
            "invalid_event_types",
            "`event_types` needs at least one type; leave it out for every type",
        ));
    }
    let mut types = Vec::new();
    for (i, name) in raw.iter().enumerate() {
        let t = EventType::parse(name).ok_or_else(|| {
            invalid(
                &format!("event_types[{i}]"),
                "unknown_event_type",
                format!("`{name}` is not an event type"),
            )
        })?;
        if !types.contains(&t) {
            types.push(t);
        }
    }
    Ok(Some(types))
}

fn check_description(d: Option<String>) -> Result<Option<String>, Invalid> {
    match d {
        Some(d) if d.chars().count() > MAX_DESCRIPTION => Err(invalid(
            "description",
            "description_too_long",
            format!("`description` is longer than {MAX_DESCRIPTION} characters"),
        )),
        d => Ok(d),
    }
}

/// An endpoint just created, with its secret: the only time the secret is shown.
#[derive(Debug)]
pub struct Created {
    pub row: EndpointRow,
    pub secret: SecretString,
}

pub async fn create(
    ctx: &Ctx,
    tenant_id: &str,
    url: &str,
    event_types: Option<Vec<String>>,
    description: Option<String>,
    now: DateTime<Utc>,
) -> Result<Created, EndpointError> {
    let url = check_url(&ctx.settings.ssrf, url).await?;
    let event_types = parse_types(event_types)?;
    let description = check_description(description)?;
    let id = ids::new(ids::WEBHOOK_ENDPOINT);
    let secret = signing::new_secret();
    let secret_enc = ctx.vault.encrypt(send::secret_slot(&id), &secret)?;
    let row = ctx
        .store
        .create_webhook_endpoint(
            &NewEndpoint {
                id,
                tenant_id: tenant_id.to_owned(),
                url,
                description,
                event_types,
                secret_enc,
            },
            now,
        )
        .await?;
    Ok(Created { row, secret })
}

/// A `PATCH`'s fields, as sent (`event_types: Some(None)` is an explicit null: every type).
#[derive(Debug, Default)]
pub struct Change {
    pub url: Option<String>,
    pub description: Option<Option<String>>,
    pub event_types: Option<Option<Vec<String>>>,
    pub enabled: Option<bool>,
}

pub async fn update(
    ctx: &Ctx,
    tenant_id: &str,
    id: &str,
    change: Change,
    now: DateTime<Utc>,
) -> Result<Option<EndpointRow>, EndpointError> {
    let url = match change.url {
        Some(u) => Some(check_url(&ctx.settings.ssrf, &u).await?),
        None => None,
    };
    let patch = EndpointPatch {
        url,
        description: change.description.map(check_description).transpose()?,
        event_types: change.event_types.map(parse_types).transpose()?,
        enabled: change.enabled,
    };
    Ok(ctx
        .store
        .update_webhook_endpoint(tenant_id, id, &patch, now)
        .await?)
}

/// A new secret; the current one keeps signing beside it for [`ROTATION_OVERLAP`].
pub async fn rotate(
    ctx: &Ctx,
    tenant_id: &str,
    id: &str,
    now: DateTime<Utc>,
) -> Result<Option<Created>, EndpointError> {
    let Some(row) = ctx.store.webhook_endpoint(tenant_id, id).await? else {
        return Ok(None);
    };
    let current = ctx.vault.decrypt(send::secret_slot(id), &row.secret_enc)?;
    let previous_enc = ctx
        .vault
        .encrypt(send::previous_secret_slot(id), &current)?;
    let secret = signing::new_secret();
    let secret_enc = ctx.vault.encrypt(send::secret_slot(id), &secret)?;
    let row = ctx
        .store
        .rotate_webhook_secret(
            tenant_id,
            id,
            &secret_enc,
            &previous_enc,
            now + ROTATION_OVERLAP,
            now,
        )
        .await?;
    Ok(row.map(|row| Created { row, secret }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_endpoint_url_is_https_and_public_unless_allowed() {
        let strict = SsrfGuard::strict();
        for bad in [
            "http://hooks.example.com/x",
            "https://127.0.0.1/x",
            "https://10.0.0.1/x",
            "https://user:pw@hooks.example.com/",
            "ftp://hooks.example.com/",
        ] {
            assert!(check_url(&strict, bad).await.is_err(), "{bad}");
        }
        assert!(
            check_url(&SsrfGuard::allowing_private(), "http://127.0.0.1:9/x")
                .await
                .is_ok()
        );
    }

    #[test]
    fn event_types_are_known_names_or_every_type() {
        assert_eq!(parse_types(None).unwrap(), None);
        assert!(parse_types(Some(vec![])).is_err());
        let e = parse_types(Some(vec!["share.failed".into(), "nope".into()])).unwrap_err();
        assert_eq!(e.field, "event_types[1]");
    }
}
