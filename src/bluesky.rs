//! `herald bluesky`: the app-password sunset.

use chrono::Utc;
use herald_jobs::store::Store;

/// What `purge-app-passwords` did (or, with `dry_run`, would do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purge {
    pub dry_run: bool,
    /// (connection id, tenant id, DID, handle, erased)
    pub connections: Vec<(String, String, String, String, bool)>,
}

impl std::fmt::Display for Purge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (id, tenant, did, handle, erased) in &self.connections {
            let what = match (self.dry_run, erased) {
                (true, _) => "would_erase",
                (false, true) => "erased",
                (false, false) => "unchanged",
            };
            writeln!(f, "{id}\t{tenant}\t{did}\t{handle}\t{what}")?;
        }
        let n = self.connections.iter().filter(|c| c.4).count();
        if self.dry_run {
            writeln!(
                f,
                "{} app password(s) of accounts that moved to OAuth would be erased (dry run: nothing changed)",
                self.connections.len()
            )
        } else {
            writeln!(
                f,
                "{n} app password(s) erased; those connections need an OAuth reconnect"
            )
        }
    }
}

/// Erases the stored app passwords of Bluesky accounts that have a live OAuth connection.
pub async fn purge_app_passwords(store: &Store, dry_run: bool) -> anyhow::Result<Purge> {
    let rows = store.app_passwords_moved_to_oauth().await?;
    let mut connections = Vec::with_capacity(rows.len());
    for row in rows {
        let erased = if dry_run {
            false
        } else {
            let erased = store.erase_app_password(&row.id, Utc::now()).await?;
            if erased {
                tracing::info!(connection.id = %row.id, platform = "bluesky", "app password erased: the account has moved to OAuth");
            }
            erased
        };
        connections.push((
            row.id,
            row.tenant_id,
            row.platform_account_id,
            row.handle,
            erased,
        ));
    }
    Ok(Purge {
        dry_run,
        connections,
    })
}
