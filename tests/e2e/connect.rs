//! Connect flows end to end: `POST /v1/connect/{platform}`, the browser's trip through the
//! provider (followed here with a client that does not follow redirects), the callback, and what
//! the stored connection then does; `DELETE /v1/connections/{id}`; and the token lifecycle under
//! racing refreshes against a provider that rotates refresh tokens.

use std::{collections::HashMap, time::Duration};

use herald_jobs::{
    handlers::refresh::{self, Refresh},
    payloads::RefreshV1,
    store::{Pool, StoredTokens, TokenWrite},
};
use reqwest::{StatusCode, header};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use crate::{
    on_every_backend,
    support::{FakeX, TestApp, eventually, fast_settings},
};

pub(crate) const RETURN_URL: &str = "https://app.example/after";
const X_USER: &str = "2244994945";

pub(crate) async fn with_x(engine: crate::support::Engine) -> (TestApp, FakeX) {
    with_x_and(engine, fast_settings()).await
}

/// Herald with `settings` and its X app at the local X.
pub(crate) async fn with_x_and(
    engine: crate::support::Engine,
    mut settings: herald_jobs::Settings,
) -> (TestApp, FakeX) {
    let provider = FakeX::start().await;
    settings.apps.x = Some(provider.app());
    (TestApp::spawn_with(engine, true, settings).await, provider)
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

pub(crate) fn location(res: &reqwest::Response) -> url::Url {
    url::Url::parse(res.headers()[header::LOCATION].to_str().unwrap()).unwrap()
}

pub(crate) fn query(url: &url::Url) -> HashMap<String, String> {
    url.query_pairs().into_owned().collect()
}

/// Starts a flow as `key`'s tenant and answers the authorization URL.
pub(crate) async fn start(app: &TestApp, key: &str, platform: &str, body: Value) -> String {
    let (status, res) = app
        .call(
            reqwest::Method::POST,
            &format!("/v1/connect/{platform}"),
            Some(key),
            Some(body),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{res}");
    assert!(res["state_expires_at"].is_string());
    res["authorization_url"].as_str().unwrap().to_owned()
}

/// The user approves at the provider: answers the callback URL the provider sends the browser to.
pub(crate) async fn authorize(authorization_url: &str) -> url::Url {
    let res = no_redirects().get(authorization_url).send().await.unwrap();
    assert!(res.status().is_redirection(), "{}", res.status());
    location(&res)
}

/// The browser arrives at Herald's callback: answers where Herald sends it.
pub(crate) async fn callback(callback_url: &str) -> reqwest::Response {
    no_redirects().get(callback_url).send().await.unwrap()
}

/// A whole flow for `key`'s tenant; answers the query Herald put on the return URL.
pub(crate) async fn connect(
    app: &TestApp,
    key: &str,
    platform: &str,
    body: Value,
) -> HashMap<String, String> {
    let auth = start(app, key, platform, body).await;
    let back = authorize(&auth).await;
    let res = callback(back.as_str()).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let to = location(&res);
    assert!(to.as_str().starts_with(RETURN_URL), "{to}");
    query(&to)
}

pub(crate) async fn connect_x(app: &TestApp) -> String {
    let q = connect(
        app,
        &app.key,
        "x",
        json!({ "user_id": "u-1", "return_url": RETURN_URL }),
    )
    .await;
    q.get("connection_id")
        .cloned()
        .unwrap_or_else(|| panic!("no connection: {q:?}"))
}

async fn stored_refresh_token(app: &TestApp, id: &str) -> Option<String> {
    let row = app.parts.ctx.store.connection(id).await.unwrap().unwrap();
    row.credentials(&app.parts.ctx.vault)
        .unwrap()
        .refresh_token
        .map(|t| t.expose_secret().to_owned())
}

async fn x_connect_share_refresh_revoke_and_reconnect_resume_the_parked_share(
    engine: crate::support::Engine,
) {
    let (app, provider) = with_x(engine).await;
    let auth = start(
        &app,
        &app.key,
        "x",
        json!({ "user_id": "u-1", "return_url": RETURN_URL }),
    )
    .await;
    let auth_url = url::Url::parse(&auth).unwrap();
    let q = query(&auth_url);
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(
        q["redirect_uri"],
        format!("{}/v1/connect/x/callback", app.base)
    );
    assert!(q["scope"].contains("offline.access"));
    let back = callback(authorize(&auth).await.as_str()).await;
    assert_eq!(back.status(), StatusCode::SEE_OTHER);
    let id = query(&location(&back))["connection_id"].clone();

    let (_, conn) = app.get(&format!("/v1/connections/{id}")).await;
    assert_eq!(conn["platform_account_id"], X_USER);
    assert_eq!(conn["user_id"], "u-1");
    assert_eq!(conn["has_refresh_token"], true);
    assert_eq!(conn["needs_reauth"], false);

    // The tokens work: a share posts.
    let first = app.share(&id, "first").await;
    assert_eq!(app.settled(&first).await["state"], "succeeded");
    assert_eq!(provider.tweets().len(), 1);

    // A refresh rotates the refresh token, and the new one is what is stored.
    let ctx = &app.parts.ctx;
    assert!(matches!(
        refresh::refresh_connection(ctx, &id).await.unwrap(),
        Refresh::Refreshed(_)
    ));
    assert_eq!(provider.refreshes(), 1);
    assert_eq!(
        stored_refresh_token(&app, &id).await,
        provider.current_refresh_token(X_USER)
    );

    // The user revokes the app at the provider: the next refresh is refused for good.
    provider.revoke_user(X_USER);
    assert!(matches!(
        refresh::refresh_connection(ctx, &id).await.unwrap(),
        Refresh::Dead(_)
    ));
    let (_, conn) = app.get(&format!("/v1/connections/{id}")).await;
    assert_eq!(conn["needs_reauth"], true);
    let parked = app.share(&id, "second").await;
    assert_eq!(app.settled(&parked).await["state"], "parked");

    // Connecting again updates the same connection; the worker verifies it and the share posts.
    assert_eq!(connect_x(&app).await, id);
    app.share_until(&parked, Duration::from_secs(20), |s| {
        s["state"] == "succeeded"
    })
    .await;
    let (_, conn) = app.get(&format!("/v1/connections/{id}")).await;
    assert_eq!(conn["needs_reauth"], false);
    assert_eq!(provider.tweets().len(), 2);

    let metrics = app
        .http
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("herald_oauth_callbacks_total{platform=\"x\",result=\"succeeded\"}"));
    assert!(metrics.contains("herald_oauth_starts_total{platform=\"x\"}"));
}

async fn mastodon_connect_registers_one_app_per_instance_and_reuses_it(
    engine: crate::support::Engine,
) {
    let app = TestApp::spawn(engine).await;
    let body =
        json!({ "user_id": "u-7", "return_url": RETURN_URL, "instance_url": app.mastodon.base });
    let auth = start(&app, &app.key, "mastodon", body.clone()).await;
    assert!(auth.starts_with(&format!("{}/oauth/authorize", app.mastodon.base)));
    assert_eq!(
        query(&url::Url::parse(&auth).unwrap())["code_challenge_method"],
        "S256"
    );
    let back = callback(authorize(&auth).await.as_str()).await;
    let id = query(&location(&back))["connection_id"].clone();
    assert_eq!(app.mastodon.apps_registered(), 1);

    let (_, conn) = app.get(&format!("/v1/connections/{id}")).await;
    assert_eq!(conn["platform"], "mastodon");
    assert_eq!(conn["platform_account_id"], "109");
    assert_eq!(conn["extras"]["instance_url"], app.mastodon.base);
    let share = app.share(&id, "hello").await;
    assert_eq!(app.settled(&share).await["state"], "succeeded");

    // A second connect on the same instance reuses the cached app and the connection.
    let again = connect(&app, &app.key, "mastodon", body).await;
    assert_eq!(again["connection_id"], id);
    assert_eq!(app.mastodon.apps_registered(), 1);

    // Removing it revokes the token with the cached app's credentials, then erases the tokens.
    let (status, _) = app
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/connections/{id}"),
            Some(&app.key),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app.mastodon.revoked(), vec![app.mastodon.token.clone()]);
    let row = app.parts.ctx.store.connection(&id).await.unwrap().unwrap();
    assert!(row.revoked_at.is_some() && row.access_token_enc.is_none());
}

async fn a_replayed_expired_unknown_or_misdirected_state_is_refused(
    engine: crate::support::Engine,
) {
    let (app, _provider) = with_x(engine).await;
    let body = json!({ "user_id": "u-1", "return_url": RETURN_URL });

    // Replayed: the second use of a state that already connected is refused.
    let back = authorize(&start(&app, &app.key, "x", body.clone()).await).await;
    assert!(query(&location(&callback(back.as_str()).await)).contains_key("connection_id"));
    let replay = callback(back.as_str()).await;
    assert_eq!(replay.status(), StatusCode::SEE_OTHER);
    assert_eq!(query(&location(&replay))["error"], "invalid_state");

    // Expired.
    let back = authorize(&start(&app, &app.key, "x", body.clone()).await).await;
    let past = chrono::Utc::now() - chrono::Duration::minutes(1);
    match app.parts.ctx.store.pool() {
        Pool::Sqlite(p) => {
            sqlx::query("UPDATE oauth_states SET expires_at = ?1 WHERE consumed_at IS NULL")
                .bind(past)
                .execute(p)
                .await
                .unwrap();
        }
        Pool::Postgres(p) => {
            sqlx::query("UPDATE oauth_states SET expires_at = $1 WHERE consumed_at IS NULL")
                .bind(past)
                .execute(p)
                .await
                .unwrap();
        }
    }
    assert_eq!(
        query(&location(&callback(back.as_str()).await))["error"],
        "invalid_state"
    );

    // Bound to its platform: an X state brought to Mastodon's callback is refused (and spent).
    let back = authorize(&start(&app, &app.key, "x", body.clone()).await).await;
    let moved = back
        .as_str()
        .replace("/v1/connect/x/", "/v1/connect/mastodon/");
    assert_eq!(
        query(&location(&callback(&moved).await))["error"],
        "invalid_state"
    );
    assert_eq!(
        query(&location(&callback(back.as_str()).await))["error"],
        "invalid_state"
    );

    // Unknown: no return URL to trust, so Herald answers itself.
    let res = callback(&format!(
        "{}/v1/connect/x/callback?code=c&state=forged",
        app.base
    ))
    .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let err: Value = res.json().await.unwrap();
    assert_eq!(err["error"]["code"], "invalid_state");
    assert_eq!(err["error"]["field"], "state");
}

/// Another tenant's state with this tenant's code: the state carries the other flow's PKCE
/// verifier, so the provider refuses the exchange, and nobody gets a connection.
async fn a_code_brought_back_with_another_tenants_state_fails_pkce_as_exchange_failed(
    engine: crate::support::Engine,
) {
    let (app, _provider) = with_x(engine).await;
    let other = app.key_for("globex").await;
    let body = json!({ "user_id": "u-1", "return_url": RETURN_URL });
    let ours = authorize(&start(&app, &app.key, "x", body.clone()).await).await;
    let theirs = authorize(&start(&app, &other, "x", body).await).await;
    let mut spliced = ours.clone();
    spliced.query_pairs_mut().clear();
    spliced
        .query_pairs_mut()
        .append_pair("code", &query(&ours)["code"])
        .append_pair("state", &query(&theirs)["state"]);
    let res = callback(spliced.as_str()).await;
    assert_eq!(query(&location(&res))["error"], "exchange_failed");
    for key in [&app.key, &other] {
        let (_, list) = app
            .call(reqwest::Method::GET, "/v1/connections", Some(key), None)
            .await;
        assert_eq!(list["connections"].as_array().unwrap().len(), 0, "{list}");
    }
}

async fn a_second_connect_keeps_the_connection_and_its_refresh_token(
    engine: crate::support::Engine,
) {
    let (app, provider) = with_x(engine).await;
    let id = connect_x(&app).await;
    let refresh_token = stored_refresh_token(&app, &id).await.unwrap();
    provider.issue_refresh_tokens(false);
    assert_eq!(connect_x(&app).await, id);
    assert_eq!(
        stored_refresh_token(&app, &id).await.unwrap(),
        refresh_token
    );
}

async fn denied_authorization_and_unconfigured_platforms_are_refused(
    engine: crate::support::Engine,
) {
    let (app, provider) = with_x(engine).await;
    provider.deny_next();
    let q = connect(
        &app,
        &app.key,
        "x",
        json!({ "user_id": "u-1", "return_url": RETURN_URL }),
    )
    .await;
    assert_eq!(q["error"], "denied");

    let (status, err) = app
        .post(
            "/v1/connect/linkedin",
            json!({ "user_id": "u-1", "return_url": RETURN_URL }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(err["error"]["code"], "platform_unavailable");
    assert_eq!(err["error"]["field"], "platform");

    let (status, err) = app
        .post(
            "/v1/connect/x",
            json!({ "user_id": "u-1", "return_url": "ftp://app.example/" }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(err["error"]["field"], "return_url");
    let (status, err) = app
        .post(
            "/v1/connect/mastodon",
            json!({ "user_id": "u-1", "return_url": RETURN_URL }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(err["error"]["field"], "instance_url");
}

async fn delete_revokes_at_the_provider_and_erases_the_tokens(engine: crate::support::Engine) {
    let (app, provider) = with_x(engine).await;
    let id = connect_x(&app).await;
    let refresh_token = stored_refresh_token(&app, &id).await.unwrap();

    let other = app.key_for("globex").await;
    let path = format!("/v1/connections/{id}");
    let (status, _) = app
        .call(reqwest::Method::DELETE, &path, Some(&other), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, removed) = app
        .call(reqwest::Method::DELETE, &path, Some(&app.key), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{removed}");
    assert_eq!(
        (
            removed["revoked_at_platform"].as_bool(),
            removed["revocation"].as_str()
        ),
        (Some(true), Some("revoked")),
        "{removed}"
    );
    assert_eq!(provider.revocations(), vec![refresh_token]);
    assert!(provider.all_revoked(X_USER));
    let row = app.parts.ctx.store.connection(&id).await.unwrap().unwrap();
    assert!(row.revoked_at.is_some());
    assert!(row.access_token_enc.is_none() && row.refresh_token_enc.is_none());
    let (status, _) = app.get(&path).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app
        .call(reqwest::Method::DELETE, &path, Some(&app.key), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// A standard OAuth server (RFC 7009) puts revocation where it likes: Herald calls the configured
/// `HERALD_<P>_REVOKE_URL`, never a URL guessed from the token URL, and says whether the platform
/// confirmed the revocation.
async fn revocation_goes_to_the_configured_url_and_the_answer_says_whether_it_was_confirmed(
    engine: crate::support::Engine,
) {
    // No revocation URL configured beside a non-X token URL: nothing is guessed.
    let (app, provider, _, removed) = connect_then_delete_x(engine, |_| None).await;
    assert_eq!(
        (
            removed["revoked_at_platform"].as_bool(),
            removed["revocation"].as_str()
        ),
        (Some(false), Some("no_endpoint")),
        "{removed}"
    );
    assert!(
        provider.revocations().is_empty(),
        "a revocation URL was guessed"
    );
    drop(app);

    // A revocation endpoint that refuses: the connection is removed, the answer says so.
    let (app, _, id, removed) = connect_then_delete_x(engine, |p| {
        Some(format!("{}/oauth2/revocation-is-elsewhere", p.base))
    })
    .await;
    assert_eq!(
        (
            removed["revoked_at_platform"].as_bool(),
            removed["revocation"].as_str()
        ),
        (Some(false), Some("failed")),
        "{removed}"
    );
    let (status, _) = app.get(&format!("/v1/connections/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// Connects an X account with the revocation URL `revoke_url` gives, then deletes the connection;
/// returns the app, the provider, the connection id and the answer to the DELETE (200).
async fn connect_then_delete_x(
    engine: crate::support::Engine,
    revoke_url: impl FnOnce(&FakeX) -> Option<String>,
) -> (TestApp, FakeX, String, Value) {
    let provider = FakeX::start().await;
    let mut settings = fast_settings();
    settings.apps.x = Some(herald_platforms::config::PlatformApp {
        revoke_url: revoke_url(&provider),
        ..provider.app()
    });
    let app = TestApp::spawn_with(engine, true, settings).await;
    let id = connect_x(&app).await;
    let (status, removed) = app
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/connections/{id}"),
            Some(&app.key),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{removed}");
    (app, provider, id, removed)
}

/// Issue 4: refreshes racing on one connection against a provider that rotates refresh tokens
/// and kills the grant on reuse. Exactly one refresh reaches the provider, the connection stays
/// healthy, and a write from a stale generation never replaces newer tokens.
async fn racing_refreshes_spend_a_rotating_refresh_token_once(engine: crate::support::Engine) {
    let (app, provider) = with_x(engine).await;
    let id = connect_x(&app).await;
    let ctx = &app.parts.ctx;
    // A slow token endpoint keeps the first refresh in flight while the second one starts.
    provider.slow_refreshes(Duration::from_millis(600));

    // Two callers at once.
    let (a, b) = tokio::join!(
        refresh::refresh_connection(ctx, &id),
        refresh::refresh_connection(ctx, &id)
    );
    let outcomes = [a.unwrap(), b.unwrap()];
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| matches!(o, Refresh::Refreshed(_)))
            .count(),
        1
    );
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| matches!(o, Refresh::Busy))
            .count(),
        1
    );
    assert_eq!(provider.refresh_requests(), 1);

    // Two refresh jobs handled at once.
    let job = RefreshV1 {
        connection_id: id.clone(),
        retry: 0,
        run: None,
    };
    let (a, b) = tokio::join!(refresh::run(ctx, &job), refresh::run(ctx, &job));
    a.unwrap();
    b.unwrap();
    assert_eq!(provider.refresh_requests(), 2);
    assert_eq!(provider.refreshes(), 2);

    let (_, conn) = app.get(&format!("/v1/connections/{id}")).await;
    assert_eq!(conn["needs_reauth"], false, "{conn}");
    assert!(!provider.all_revoked(X_USER));
    assert_eq!(
        stored_refresh_token(&app, &id).await,
        provider.current_refresh_token(X_USER)
    );

    // A worker that read generation N writes after N moved on: dropped.
    let row = ctx.store.connection(&id).await.unwrap().unwrap();
    let stale = StoredTokens {
        access_token: Some(SecretString::from("stale-access")),
        refresh_token: Some(SecretString::from("stale-refresh")),
        dpop_key: None,
        expires_at: None,
    };
    let written = ctx
        .store
        .store_refreshed_tokens(
            &id,
            row.token_generation - 1,
            &stale,
            &ctx.vault,
            chrono::Utc::now(),
        )
        .await
        .unwrap();
    assert_eq!(written, TokenWrite::Stale);
    assert_eq!(
        stored_refresh_token(&app, &id).await,
        provider.current_refresh_token(X_USER)
    );

    // And the tokens still work after all of it.
    provider.slow_refreshes(Duration::ZERO);
    let share = app.share(&id, "after the race").await;
    assert_eq!(app.settled(&share).await["state"], "succeeded");
    assert!(
        eventually(Duration::from_secs(5), || async {
            (provider.tweets().len() == 1).then_some(())
        })
        .await
        .is_some()
    );
}

/// Issue 11: shares that find another worker refreshing their connection's token wait for it
/// without spending an attempt (a share once used three attempts, two of them waits).
async fn shares_waiting_on_another_workers_refresh_spend_no_attempt(
    engine: crate::support::Engine,
) {
    let mut settings = fast_settings();
    // Every token counts as about to lapse, so every share refreshes before it posts.
    settings.refresh_skew = Duration::from_secs(3 * 3600);
    let (app, provider) = with_x_and(engine, settings).await;
    let id = connect_x(&app).await;
    provider.slow_refreshes(Duration::from_millis(800));
    let mut shares = Vec::new();
    for i in 0..3 {
        shares.push(app.share(&id, &format!("waits for the refresh {i}")).await);
    }
    for share in &shares {
        let s = app
            .share_until(share, Duration::from_secs(30), |s| {
                !matches!(s["state"].as_str(), Some("queued" | "running"))
            })
            .await;
        assert_eq!(s["state"], "succeeded", "{s}");
        assert_eq!(s["attempts"], 1, "a wait spent an attempt: {s}");
    }
    assert!(provider.refresh_requests() >= 1);
}

on_every_backend!(
    x_connect_share_refresh_revoke_and_reconnect_resume_the_parked_share,
    mastodon_connect_registers_one_app_per_instance_and_reuses_it,
    a_replayed_expired_unknown_or_misdirected_state_is_refused,
    a_code_brought_back_with_another_tenants_state_fails_pkce_as_exchange_failed,
    a_second_connect_keeps_the_connection_and_its_refresh_token,
    denied_authorization_and_unconfigured_platforms_are_refused,
    delete_revokes_at_the_provider_and_erases_the_tokens,
    revocation_goes_to_the_configured_url_and_the_answer_says_whether_it_was_confirmed,
    racing_refreshes_spend_a_rotating_refresh_token_once,
    shares_waiting_on_another_workers_refresh_spend_no_attempt,
    connections_are_listed_by_the_apps_user_and_by_platform,
);

/// An app's "my connected accounts" panel: one user's accounts, or one platform's.
async fn connections_are_listed_by_the_apps_user_and_by_platform(engine: crate::support::Engine) {
    let (app, _provider) = with_x(engine).await;
    let x = connect_x(&app).await;
    let mastodon = app.mastodon_connection().await;
    let ids = |list: &Value| -> Vec<String> {
        list["connections"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_owned())
            .collect()
    };
    for (query, want) in [
        ("", vec![&x, &mastodon]),
        ("?user_id=u-1", vec![&x]),
        ("?user_id=u-2", vec![]),
        ("?platform=mastodon", vec![&mastodon]),
        ("?platform=x&user_id=u-1", vec![&x]),
        ("?platform=bluesky", vec![]),
    ] {
        let (status, list) = app.get(&format!("/v1/connections{query}")).await;
        assert_eq!(status, StatusCode::OK, "{query}: {list}");
        let mut want: Vec<String> = want.into_iter().cloned().collect();
        want.sort();
        assert_eq!(ids(&list), want, "{query}");
    }
    let (status, err) = app.get("/v1/connections?platform=myspace").await;
    assert!(status.is_client_error(), "{status}");
    assert!(err["error"]["code"].is_string(), "{err}");
    let (status, err) = app.get("/v1/connections?user_id=").await;
    assert_eq!(
        (
            status,
            err["error"]["code"].as_str(),
            err["error"]["field"].as_str()
        ),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("invalid_user_id"),
            Some("user_id")
        )
    );
}
