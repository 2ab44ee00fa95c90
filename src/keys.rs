//! `herald keys`: API keys for tenants and operators (create, list, revoke), encryption keys,
//! and rotation.

use chrono::Utc;
use herald_jobs::{
    api_keys::{self, KeyRequest},
    store::{ApiKeyRow, Store},
    vault::KeyRing,
};

/// A key with its role's default scopes and no expiry (what `herald keys create` did before keys
/// had scopes).
pub async fn create(store: &Store, tenant: Option<&str>, operator: bool) -> anyhow::Result<String> {
    let req = KeyRequest {
        tenant: tenant.map(str::to_owned),
        operator,
        ..Default::default()
    };
    Ok(create_with(store, &req).await?.key)
}

/// A key as asked for (scopes, expiry, label).
pub async fn create_with(
    store: &Store,
    req: &KeyRequest,
) -> anyhow::Result<herald_jobs::store::CreatedKey> {
    api_keys::create(store, req, Utc::now())
        .await
        .map_err(|e| match e {
            api_keys::CreateError::Invalid(i) => {
                let flag = match i.field.split('[').next().unwrap_or("") {
                    "tenant" => "--tenant".to_owned(),
                    "operator" => "--operator".to_owned(),
                    "scopes" => "--scopes".to_owned(),
                    "expires_in" => "--expires-in".to_owned(),
                    "label" => "--label".to_owned(),
                    other => other.to_owned(),
                };
                anyhow::anyhow!("{flag}: {}", i.message)
            }
            api_keys::CreateError::Store(e) => e.into(),
        })
}

/// Every key (one tenant's with `tenant`), active ones only unless `all`, oldest first.
pub async fn list(
    store: &Store,
    tenant: Option<&str>,
    all: bool,
) -> anyhow::Result<Vec<ApiKeyRow>> {
    let tenant_id = match tenant {
        Some(name) => Some(
            store
                .tenant_id_by_name(name)
                .await?
                .ok_or_else(|| anyhow::anyhow!("--tenant: no tenant named `{name}`"))?,
        ),
        None => None,
    };
    let now = Utc::now();
    let mut out = Vec::new();
    loop {
        let page = store
            .list_api_keys(
                tenant_id.as_deref(),
                all,
                out.last().map(|r: &ApiKeyRow| r.id.as_str()),
                200,
                now,
            )
            .await?;
        let done = page.len() < 200;
        out.extend(page);
        if done {
            return Ok(out);
        }
    }
}

/// One line per key: id, role, tenant, scopes, status, expiry, last use, label.
pub fn format_list(rows: &[ApiKeyRow]) -> String {
    let now = Utc::now();
    let time = |t: Option<chrono::DateTime<Utc>>| {
        t.map_or("-".to_owned(), |t| {
            t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        })
    };
    let mut out = String::from("ID\tROLE\tTENANT\tSCOPES\tSTATUS\tEXPIRES\tLAST USED\tLABEL\n");
    for r in rows {
        out.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
            r.id,
            r.role.as_str(),
            r.tenant_name.as_deref().unwrap_or("-"),
            r.scopes,
            r.status(now),
            time(r.expires_at),
            time(r.last_used_at),
            r.label.as_deref().unwrap_or("-"),
        ));
    }
    out
}

/// Revokes a key by id. API processes stop accepting it within `KEY_CACHE_TTL` (5 s).
pub async fn revoke(store: &Store, id: &str) -> anyhow::Result<ApiKeyRow> {
    store
        .revoke_api_key(id.trim(), Utc::now())
        .await?
        .ok_or_else(|| anyhow::anyhow!("no API key `{id}` (see `herald keys list --all`)"))
}

/// Re-encrypts every stored token under the ring's first key. Returns how many rows changed.
pub async fn rotate(store: &Store, ring: &KeyRing) -> anyhow::Result<u64> {
    Ok(store.reencrypt_connections(ring, Utc::now()).await?)
}
