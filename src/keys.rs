//! `herald keys`: API keys for tenants and operators, encryption keys, and rotation.

use chrono::Utc;
use herald_jobs::{
    store::{ApiKeyRole, Store},
    vault::KeyRing,
};

pub async fn create(store: &Store, tenant: Option<&str>, operator: bool) -> anyhow::Result<String> {
    let now = Utc::now();
    if operator {
        return Ok(store
            .create_api_key(ApiKeyRole::Operator, None, Some("operator"), now)
            .await?);
    }
    let name =
        tenant.ok_or_else(|| anyhow::anyhow!("name the tenant: --tenant NAME (or --operator)"))?;
    anyhow::ensure!(
        !name.trim().is_empty() && name.len() <= 100,
        "the tenant name must be 1 to 100 characters"
    );
    let tenant_id = store.ensure_tenant(name.trim(), now).await?;
    Ok(store
        .create_api_key(ApiKeyRole::Tenant, Some(&tenant_id), None, now)
        .await?)
}

/// Re-encrypts every stored token under the ring's first key. Returns how many rows changed.
pub async fn rotate(store: &Store, ring: &KeyRing) -> anyhow::Result<u64> {
    Ok(store.reencrypt_connections(ring, Utc::now()).await?)
}
