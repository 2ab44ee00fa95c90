//! Retiring Bluesky app passwords: `HERALD_BLUESKY_APP_PASSWORDS=refuse_new` keeps existing
//! app-password connections working and refuses new ones; `refuse` parks their shares until the
//! account is reconnected with OAuth; `herald bluesky purge-app-passwords` erases the app
//! passwords still stored for accounts that have moved to OAuth.

use herald_jobs::{
    settings::{APP_PASSWORDS_REFUSED, AppPasswords},
    store::{APP_PASSWORD_ERASED, NewConnection, StoredTokens},
};
use herald_platforms::{
    PlatformKind,
    testing::atproto::{DID, FakeAtproto, HANDLE, OTHER_DID},
};
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::{
    connect::{RETURN_URL, connect},
    on_every_backend,
    support::{Engine, TestApp, fast_settings},
};

on_every_backend!(
    refuse_new_keeps_existing_app_password_connections_and_refuses_new_ones,
    refuse_parks_app_password_shares_until_the_account_reconnects_with_oauth,
    purge_erases_the_app_passwords_of_accounts_that_moved_to_oauth,
);

const PASSWORD: &str = "abcd-efgh-ijkl-mnop";

async fn with_network(engine: Engine, policy: AppPasswords) -> (TestApp, FakeAtproto) {
    let net = FakeAtproto::start().await;
    net.world()
        .app_passwords
        .insert(DID.into(), PASSWORD.into());
    let mut settings = fast_settings();
    settings.bluesky.plc_url = net.pds.clone();
    settings.bluesky.handle_resolver = net.pds.clone();
    settings.bluesky.client_keys = vec![herald_platforms::bluesky::jwt::EsKey::generate()];
    settings.bluesky.app_passwords = policy;
    (TestApp::spawn_with(engine, true, settings).await, net)
}

/// A connection stored as it was before the policy changed (not through the API, which the
/// policy guards).
async fn stored(app: &TestApp, tenant: &str, did: &str, auth: &str, pds: &str) -> String {
    let tenant_id = app
        .parts
        .ctx
        .store
        .ensure_tenant(tenant, chrono::Utc::now())
        .await
        .unwrap();
    let mut extras = serde_json::Map::new();
    extras.insert("pds_url".into(), pds.into());
    extras.insert("auth".into(), auth.into());
    let oauth = auth == "oauth";
    let new = NewConnection {
        platform: PlatformKind::Bluesky,
        platform_account_id: did.into(),
        handle: if did == DID {
            HANDLE.into()
        } else {
            "other.test".into()
        },
        display_name: None,
        extras,
        scopes: Vec::new(),
        tokens: StoredTokens {
            access_token: Some(SecretString::from(if oauth { "at" } else { PASSWORD })),
            refresh_token: oauth.then(|| SecretString::from("rt")),
            dpop_key: None,
            expires_at: None,
        },
    };
    app.parts
        .ctx
        .store
        .upsert_connection(&tenant_id, &new, &app.parts.ctx.vault, chrono::Utc::now())
        .await
        .unwrap()
        .id
}

fn import(did: &str, extras: Value) -> Value {
    json!({
        "platform": "bluesky", "platform_account_id": did, "handle": HANDLE,
        "access_token": PASSWORD, "extras": extras,
    })
}

async fn share(app: &TestApp, net: &FakeAtproto, connection: &str, text: &str) -> String {
    let (status, body) = app
        .post(
            "/v1/shares",
            json!({ "url": format!("{}/post/1", net.pds), "text": text, "connection_ids": [connection] }),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    body["shares"][0]["id"].as_str().unwrap().to_owned()
}

async fn refuse_new_keeps_existing_app_password_connections_and_refuses_new_ones(engine: Engine) {
    let (app, net) = with_network(engine, AppPasswords::RefuseNew).await;
    let id = stored(&app, "acme", DID, "app_password", &net.pds).await;
    let (_, view) = app.get(&format!("/v1/connections/{id}")).await;
    assert_eq!(view["auth"], "app_password");

    // The existing connection keeps posting with its app password.
    let posted = share(&app, &net, &id, "still with an app password").await;
    assert_eq!(app.settled(&posted).await["state"], "succeeded");
    assert_eq!(net.world().app_password_logins, 1);
    // And its app password can be replaced (a rotated password).
    let (status, body) = app
        .post(
            "/v1/connections",
            import(DID, json!({ "pds_url": net.pds, "auth": "app_password" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["id"], id.as_str());

    // A new one is refused, whether it says it is an app password or only looks like one.
    for extras in [
        json!({ "pds_url": net.pds, "auth": "app_password" }),
        json!({ "pds_url": net.pds }),
    ] {
        let (status, body) = app.post("/v1/connections", import(OTHER_DID, extras)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["error"]["code"], "app_passwords_retired");
        assert_eq!(body["error"]["field"], "access_token");
    }
    // So is another tenant's app password for the same account: it is new for that tenant.
    let beta = app.key_for("beta").await;
    let (status, _) = app
        .call(
            reqwest::Method::POST,
            "/v1/connections",
            Some(&beta),
            Some(import(DID, json!({ "pds_url": net.pds }))),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    // Other platforms and OAuth tokens are not app passwords.
    app.mastodon_connection().await;

    // The gauge's split: one Bluesky app-password connection, one Mastodon OAuth one.
    let counts = app
        .parts
        .ctx
        .store
        .connection_counts(chrono::Utc::now())
        .await
        .unwrap();
    let live = |platform: &str, auth: &str| {
        counts
            .iter()
            .find(|c| c.platform == platform && c.auth == auth)
            .map_or(0, |c| c.live)
    };
    assert_eq!(
        (live("bluesky", "app_password"), live("bluesky", "oauth")),
        (1, 0)
    );
    assert_eq!(live("mastodon", "oauth"), 1);
}

async fn refuse_parks_app_password_shares_until_the_account_reconnects_with_oauth(engine: Engine) {
    let (app, net) = with_network(engine, AppPasswords::Refuse).await;
    let id = stored(&app, "acme", DID, "app_password", &net.pds).await;
    let parked = share(&app, &net, &id, "waits for OAuth").await;
    let settled = app.settled(&parked).await;
    assert_eq!(settled["state"], "parked", "{settled}");
    assert_eq!(
        settled["last_error"]["message"], APP_PASSWORDS_REFUSED,
        "{settled}"
    );
    assert_eq!(
        net.world().app_password_logins,
        0,
        "the app password was used"
    );
    let (_, conn) = app.get(&format!("/v1/connections/{id}")).await;
    assert_eq!(conn["needs_reauth"], true);
    assert_eq!(conn["last_error"], APP_PASSWORDS_REFUSED);
    assert!(conn["needs_reauth_since"].is_string(), "{conn}");
    // Its app password cannot be stored again either.
    let (status, body) = app
        .post(
            "/v1/connections",
            import(DID, json!({ "pds_url": net.pds, "auth": "app_password" })),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("app_passwords_retired")
        )
    );

    // The person connects the account with OAuth: same connection, verified, and the parked
    // share posts over OAuth.
    let q = connect(
        &app,
        &app.key,
        "bluesky",
        json!({ "user_id": "u-bsky", "return_url": RETURN_URL, "handle": HANDLE }),
    )
    .await;
    assert_eq!(q.get("connection_id"), Some(&id), "{q:?}");
    app.share_until(&parked, std::time::Duration::from_secs(20), |s| {
        s["state"] == "succeeded"
    })
    .await;
    assert_eq!(net.world().records.len(), 1);
    let (_, conn) = app.get(&format!("/v1/connections/{id}")).await;
    assert_eq!(
        (conn["auth"].as_str(), conn["needs_reauth"].as_bool()),
        (Some("oauth"), Some(false))
    );
    assert!(conn["needs_reauth_since"].is_null());
    assert_eq!(net.world().app_password_logins, 0);
}

async fn purge_erases_the_app_passwords_of_accounts_that_moved_to_oauth(engine: Engine) {
    let (app, net) = with_network(engine, AppPasswords::Allow).await;
    // acme still logs in to DID with an app password; gamma connected DID with OAuth; beta's
    // account (OTHER_DID) never moved.
    let moved = stored(&app, "acme", DID, "app_password", &net.pds).await;
    let kept = stored(&app, "beta", OTHER_DID, "app_password", &net.pds).await;
    let oauth = stored(&app, "gamma", DID, "oauth", &net.pds).await;
    let herald = |args: &'static [&'static str]| {
        let db = app.db.url.clone();
        async move {
            let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .env("DATABASE_URL", db)
                .env("RUST_LOG", "warn")
                .args(args)
                .output()
                .await
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        }
    };
    let store = &app.parts.ctx.store;
    let row = |id: String| async move { store.connection(&id).await.unwrap().unwrap() };

    let dry = herald(&["bluesky", "purge-app-passwords", "--dry-run"]).await;
    let lines: Vec<&str> = dry.lines().filter(|l| l.starts_with("con_")).collect();
    assert_eq!(lines.len(), 1, "{dry}");
    assert!(
        lines[0].starts_with(&moved) && lines[0].ends_with("would_erase"),
        "{dry}"
    );
    assert!(
        row(moved.clone()).await.access_token_enc.is_some(),
        "a dry run changed something"
    );

    let done = herald(&["bluesky", "purge-app-passwords"]).await;
    assert!(
        done.contains(&format!("{moved}\t")) && done.contains("erased"),
        "{done}"
    );
    let erased = row(moved.clone()).await;
    assert!(erased.access_token_enc.is_none());
    assert!(erased.needs_reauth && erased.needs_reauth_since.is_some());
    assert_eq!(erased.last_error.as_deref(), Some(APP_PASSWORD_ERASED));
    assert!(
        row(kept).await.access_token_enc.is_some(),
        "an account that never moved lost its app password"
    );
    let still = row(oauth).await;
    assert!(still.access_token_enc.is_some() && !still.needs_reauth);

    // Nothing is left to erase; its shares park without a call.
    let again = herald(&["bluesky", "purge-app-passwords"]).await;
    assert!(again.contains("0 app password(s) erased"), "{again}");
    let acme = app.key_for("acme").await;
    let (status, body) = app
        .call(
            reqwest::Method::POST,
            "/v1/shares",
            Some(&acme),
            Some(json!({ "url": format!("{}/post/1", net.pds), "text": "parked", "connection_ids": [moved] })),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["shares"][0]["id"].as_str().unwrap();
    let settled = crate::support::eventually(std::time::Duration::from_secs(20), || async {
        let (_, s) = app
            .call(
                reqwest::Method::GET,
                &format!("/v1/shares/{id}"),
                Some(&acme),
                None,
            )
            .await;
        (s["state"] == "parked").then_some(s)
    })
    .await
    .expect("the share of a purged connection did not park");
    assert_eq!(settled["last_error"]["message"], APP_PASSWORD_ERASED);
    assert_eq!(net.world().app_password_logins, 0);
}
