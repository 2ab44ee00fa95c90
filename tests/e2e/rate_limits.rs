//! Rate limits against a local X that sends its app-wide and per-user limits as X documents them:
//! an app-wide budget is shared fairly between tenants, an app-wide 429 holds every tenant's
//! shares of the platform without calling, and an account's own limit holds only that account.

use std::time::Duration;

use chrono::Utc;
use herald_jobs::store::AppKey;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{
    on_every_backend,
    support::{Engine, FakeX, TestApp, eventually, fast_settings},
};

on_every_backend!(
    one_tenants_burst_leaves_the_others_their_fair_share_of_the_apps_budget,
    an_app_wide_limit_holds_every_tenants_shares_without_calling,
    an_accounts_own_limit_holds_only_that_accounts_shares,
);

/// The X app's key in the store: its client id at the local X.
fn x_app(x: &FakeX) -> AppKey<'_> {
    AppKey {
        platform: "x",
        app_id: &x.client_id,
    }
}

/// The local X, whose app may post `budget` times per window of `length`.
async fn limited_x(budget: u32, length: Duration) -> FakeX {
    let x = FakeX::start().await;
    x.limit_app(budget, length);
    x
}

async fn spawn(engine: Engine, x: &FakeX) -> TestApp {
    let mut settings = fast_settings();
    settings.apps.x = Some(x.app());
    // X's resets are whole epoch seconds: let a wait run to the reset rather than cut it short.
    settings.retry.max_rate_limit_wait = Duration::from_secs(30);
    TestApp::spawn_with(engine, true, settings).await
}

/// Imports `user`'s X account with `token` (which the local X then takes as theirs).
async fn x_connection(app: &TestApp, x: &FakeX, key: &str, user: &str, token: &str) -> String {
    x.accept(token, user);
    let (status, body) = app
        .call(
            Method::POST,
            "/v1/connections",
            Some(key),
            Some(json!({ "platform": "x", "platform_account_id": user, "handle": user, "access_token": token })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

/// Enqueues one share, due at `publish_at` (RFC 3339) or now.
async fn share(
    app: &TestApp,
    key: &str,
    connection: &str,
    text: &str,
    publish_at: Option<&str>,
) -> String {
    let mut body = json!({ "url": "https://blog.example/post/1", "text": text, "connection_ids": [connection] });
    if let Some(at) = publish_at {
        body["publish_at"] = at.into();
    }
    let (status, body) = app
        .call(Method::POST, "/v1/shares", Some(key), Some(body))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    body["shares"][0]["id"].as_str().unwrap().to_owned()
}

/// Polls one of `key`'s tenant's shares until `done` holds.
async fn share_until(app: &TestApp, key: &str, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let path = format!("/v1/shares/{id}");
    eventually(Duration::from_secs(40), || async {
        let (status, body) = app.call(Method::GET, &path, Some(key), None).await;
        (status == StatusCode::OK && done(&body)).then_some(body)
    })
    .await
    .unwrap_or_else(|| panic!("share {id} did not reach the expected state"))
}

async fn succeeded(app: &TestApp, key: &str, id: &str) -> Value {
    share_until(app, key, id, |s| s["state"] == "succeeded").await
}

fn tried(share: &Value) -> bool {
    share["attempt_history"]
        .as_array()
        .is_some_and(|h| !h.is_empty())
}

/// Held back without a call: queued, no attempt spent, a rate limit named as the reason.
fn held(share: &Value) -> bool {
    share["state"] == "queued"
        && share["attempts"] == 0
        && share["last_error"]["class"] == "rate_limited"
}

/// `herald_rate_limit_deferrals_total` of X shares with this scope, as `/metrics` shows it.
async fn deferrals(app: &TestApp, scope: &str) -> f64 {
    let text = app
        .http
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("herald_rate_limit_deferrals_total{"))
        .filter(|l| {
            [
                "queue=\"share\"",
                "platform=\"x\"",
                &format!("scope=\"{scope}\""),
            ]
            .iter()
            .all(|label| l.contains(label))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn one_tenants_burst_leaves_the_others_their_fair_share_of_the_apps_budget(engine: Engine) {
    // The app may post 10 times per 6-second window; tenant acme wants 16 posts, beta 3.
    let x = limited_x(10, Duration::from_secs(6)).await;
    let app = spawn(engine, &x).await;
    let beta = app.key_for("beta").await;
    let mut acme_accounts = Vec::new();
    for i in 0..16 {
        acme_accounts.push(
            x_connection(
                &app,
                &x,
                &app.key,
                &format!("10{i:02}"),
                &format!("tok-a-{i}"),
            )
            .await,
        );
    }
    let mut beta_accounts = Vec::new();
    for i in 0..3 {
        beta_accounts
            .push(x_connection(&app, &x, &beta, &format!("20{i:02}"), &format!("tok-b-{i}")).await);
    }
    // One request per tenant, all due at once: both tenants have work waiting when the budget
    // turns out to be scarce.
    let at = (Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    let mut shares = Vec::new();
    for (key, accounts) in [(&app.key, &acme_accounts), (&beta, &beta_accounts)] {
        let (status, body) = app
            .call(
                Method::POST,
                "/v1/shares",
                Some(key),
                Some(json!({ "url": "https://blog.example/post/1", "text": "Worth reading", "publish_at": at, "connection_ids": accounts })),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        for s in body["shares"].as_array().unwrap() {
            shares.push((key.clone(), s["id"].as_str().unwrap().to_owned()));
        }
    }

    for (key, id) in &shares {
        let s = succeeded(&app, key, id).await;
        assert_eq!(s["attempts"], 1, "a held share spent an attempt: {s}");
    }
    let posts = x.posts();
    let posted = |tenant: &str, window: u32| {
        posts
            .iter()
            .filter(|p| p.token.starts_with(&format!("tok-{tenant}-")) && p.window == window)
            .count()
    };
    // beta's three fit in the first window; acme takes the rest of it and posts its excess in the
    // next one. Nothing was refused: every share asked Herald, not the platform.
    assert_eq!(posted("b", 0), 3, "{posts:?}");
    assert!(posted("a", 0) <= 7, "{posts:?}");
    assert_eq!(posted("a", 0) + posted("a", 1), 16, "{posts:?}");
    assert_eq!(x.app_refusals(), 0, "{posts:?}");
    assert_eq!(x.requests().len(), 19);
    // Shares held back were counted: as over their tenant's share when acme's burst was decided
    // first, or as waiting for the spent window when beta's three happened to go first (the
    // order the workers take the due shares in is not fixed).
    let held = deferrals(&app, "fair_share").await + deferrals(&app, "app").await;
    assert!(held >= 1.0, "no deferral counted");
}

async fn an_app_wide_limit_holds_every_tenants_shares_without_calling(engine: Engine) {
    let x = limited_x(5, Duration::from_secs(5)).await;
    let app = spawn(engine, &x).await;
    let beta = app.key_for("beta").await;
    let a = x_connection(&app, &x, &app.key, "1001", "tok-a").await;
    let b = x_connection(&app, &x, &beta, "2002", "tok-b").await;
    x.spend_the_app_budget(None);

    let first = share(&app, &app.key, &a, "first", None).await;
    let s = share_until(&app, &app.key, &first, tried).await;
    assert_eq!(
        s["attempt_history"][0]["error_class"], "rate_limited",
        "{s}"
    );
    assert_eq!(x.app_refusals(), 1);

    // Every tenant's shares of X now wait for the window to reopen, without a call.
    let mut waiting = vec![
        (
            app.key.clone(),
            share(&app, &app.key, &a, "second", None).await,
        ),
        (beta.clone(), share(&app, &beta, &b, "third", None).await),
        (beta.clone(), share(&app, &beta, &b, "fourth", None).await),
    ];
    for (key, id) in &waiting {
        let s = share_until(&app, key, id, held).await;
        assert!(
            s["last_error"]["message"]
                .as_str()
                .unwrap()
                .contains("every account"),
            "{s}"
        );
    }
    assert_eq!(x.requests().len(), 1, "a held share called the platform");
    let window = app
        .parts
        .ctx
        .store
        .app_limit(x_app(&x))
        .await
        .unwrap()
        .unwrap();
    assert!(window.closed_until.is_some_and(|t| t > Utc::now()));
    assert!(deferrals(&app, "app").await >= 4.0);

    waiting.push((app.key.clone(), first));
    for (key, id) in &waiting {
        succeeded(&app, key, id).await;
    }
    assert_eq!(x.posts().len(), 4);
    assert!(x.posts().iter().all(|p| p.window == 1), "{:?}", x.posts());
    assert_eq!(x.requests().len(), 5);
}

async fn an_accounts_own_limit_holds_only_that_accounts_shares(engine: Engine) {
    let x = limited_x(100, Duration::from_secs(60)).await;
    let app = spawn(engine, &x).await;
    let limited = x_connection(&app, &x, &app.key, "1001", "tok-1").await;
    let other = x_connection(&app, &x, &app.key, "1002", "tok-2").await;
    x.limit_user("tok-1", Duration::from_secs(3));

    let first = share(&app, &app.key, &limited, "first", None).await;
    share_until(&app, &app.key, &first, tried).await;
    let elsewhere = share(&app, &app.key, &other, "elsewhere", None).await;
    let later = share(&app, &app.key, &limited, "later", None).await;
    // The other account posts at once; the limited one's next share waits without a call.
    succeeded(&app, &app.key, &elsewhere).await;
    let s = share_until(&app, &app.key, &later, held).await;
    assert!(
        s["last_error"]["message"]
            .as_str()
            .unwrap()
            .contains("the account is rate limited"),
        "{s}"
    );
    let calls = |token: &str| x.requests().iter().filter(|t| *t == token).count();
    assert_eq!(calls("tok-1"), 1);
    let window = app
        .parts
        .ctx
        .store
        .app_limit(x_app(&x))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        window.closed_until, None,
        "an account's limit closed the app"
    );
    assert!(deferrals(&app, "account").await >= 2.0);

    for id in [&first, &later] {
        succeeded(&app, &app.key, id).await;
    }
    assert_eq!(calls("tok-1"), 3);
    assert_eq!(x.app_refusals(), 0);
}
