//! API keys with a lifecycle: scopes enforced on the routes, expiry, revocation within seconds
//! (from the API, and from `herald keys revoke` in another process), `last_used_at`, and the
//! operators' `/v1/keys`.

use std::time::{Duration, Instant};

use herald_jobs::store::{KEY_CACHE_TTL, Pool};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{
    on_every_backend,
    support::{Engine, TestApp, eventually, fast_settings},
};

on_every_backend!(
    a_key_revoked_by_another_process_stops_working_within_seconds,
    a_key_revoked_through_the_api_stops_working_at_once,
    an_expired_key_stops_working,
    scopes_are_enforced_on_the_routes,
    keys_made_before_scopes_keep_what_they_could_do,
    operators_list_create_and_revoke_keys_and_see_when_each_was_last_used,
    bad_key_requests_get_a_code_and_the_field,
);

fn herald(app: &TestApp) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &app.db.url)
        .env("RUST_LOG", "warn");
    c
}

async fn run(app: &TestApp, args: &[&str]) -> String {
    let out = herald(app).args(args).output().await.unwrap();
    assert!(
        out.status.success(),
        "herald {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The key id of `hk_<key id>_<secret>`.
fn key_id(key: &str) -> &str {
    &key[3..39]
}

async fn status(
    app: &TestApp,
    method: Method,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> StatusCode {
    app.call(method, path, Some(key), body).await.0
}

async fn a_key_revoked_by_another_process_stops_working_within_seconds(engine: Engine) {
    let app = TestApp::spawn_with(engine, false, fast_settings()).await;
    let key = run(&app, &["keys", "create", "--tenant", "beta"]).await;
    let key = key.trim();
    // In use, so this process holds the key's row in memory.
    assert_eq!(
        status(&app, Method::GET, "/v1/shares", key, None).await,
        StatusCode::OK
    );
    let out = run(&app, &["keys", "revoke", key_id(key)]).await;
    assert!(out.contains("revoked"), "{out}");
    let revoked = Instant::now();
    let bound = KEY_CACHE_TTL + Duration::from_secs(5);
    let refused = eventually(bound, || async {
        (status(&app, Method::GET, "/v1/shares", key, None).await == StatusCode::UNAUTHORIZED)
            .then_some(())
    })
    .await;
    assert!(
        refused.is_some(),
        "a revoked key still worked {bound:?} after `herald keys revoke`"
    );
    let took = revoked.elapsed();
    eprintln!("a key revoked by another process was refused after {took:?}");
    assert!(took <= bound);
    // And it stays refused.
    assert_eq!(
        status(&app, Method::GET, "/v1/shares", key, None).await,
        StatusCode::UNAUTHORIZED
    );
    // `herald keys list` shows it only with --all, as revoked.
    let list = run(&app, &["keys", "list"]).await;
    assert!(!list.contains(key_id(key)), "{list}");
    let list = run(&app, &["keys", "list", "--all", "--tenant", "beta"]).await;
    let line = list.lines().find(|l| l.starts_with(key_id(key))).unwrap();
    assert!(
        line.contains("\trevoked\t") && line.contains("beta"),
        "{line}"
    );
}

async fn a_key_revoked_through_the_api_stops_working_at_once(engine: Engine) {
    let app = TestApp::spawn_with(engine, false, fast_settings()).await;
    let op = app.operator_key().await;
    let key = app.key_for("beta").await;
    assert_eq!(
        status(&app, Method::GET, "/v1/shares", &key, None).await,
        StatusCode::OK
    );
    let (s, body) = app
        .call(
            Method::DELETE,
            &format!("/v1/keys/{}", key_id(&key)),
            Some(&op),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "revoked");
    assert!(body["revoked_at"].is_string());
    // This process forgot the key's row: refused on the next request.
    assert_eq!(
        status(&app, Method::GET, "/v1/shares", &key, None).await,
        StatusCode::UNAUTHORIZED
    );
    // Revoking again answers the same; an unknown key is 404.
    let (s, again) = app
        .call(
            Method::DELETE,
            &format!("/v1/keys/{}", key_id(&key)),
            Some(&op),
            None,
        )
        .await;
    assert_eq!(
        (s, &again["revoked_at"]),
        (StatusCode::OK, &body["revoked_at"])
    );
    let (s, body) = app
        .call(
            Method::DELETE,
            "/v1/keys/key_00000000000000000000000000000000",
            Some(&op),
            None,
        )
        .await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
}

async fn an_expired_key_stops_working(engine: Engine) {
    let app = TestApp::spawn_with(engine, false, fast_settings()).await;
    let op = app.operator_key().await;
    let (s, created) = app
        .call(
            Method::POST,
            "/v1/keys",
            Some(&op),
            Some(json!({ "tenant": "beta", "expires_in": "2s" })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let key = created["key"].as_str().unwrap();
    assert!(created["expires_at"].is_string());
    assert_eq!(
        status(&app, Method::GET, "/v1/shares", key, None).await,
        StatusCode::OK
    );
    let refused = eventually(Duration::from_secs(10), || async {
        (status(&app, Method::GET, "/v1/shares", key, None).await == StatusCode::UNAUTHORIZED)
            .then_some(())
    })
    .await;
    assert!(refused.is_some(), "an expired key still works");
    let (_, all) = app
        .call(
            Method::GET,
            "/v1/keys?all=true&tenant=beta",
            Some(&op),
            None,
        )
        .await;
    assert_eq!(all["keys"][0]["status"], "expired", "{all}");
    // The CLI takes the same span.
    let key = run(
        &app,
        &["keys", "create", "--tenant", "beta", "--expires-in", "1h"],
    )
    .await;
    let list = run(&app, &["keys", "list", "--tenant", "beta"]).await;
    let line = list
        .lines()
        .find(|l| l.starts_with(key_id(key.trim())))
        .unwrap();
    assert!(line.contains("\tactive\t"), "{line}");
    let out = herald(&app)
        .args(["keys", "create", "--tenant", "beta", "--expires-in", "soon"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--expires-in"));
}

async fn scopes_are_enforced_on_the_routes(engine: Engine) {
    let app = TestApp::spawn_with(engine, false, fast_settings()).await;
    let conn = app.mastodon_connection().await;
    let share = json!({ "url": "https://blog.example/1", "text": "hi", "connection_ids": [conn] });
    // acme's keys, with one scope each.
    let scoped = |scopes: &'static [&'static str]| {
        let store = app.parts.ctx.store.clone();
        async move {
            let req = herald_jobs::api_keys::KeyRequest {
                tenant: Some("acme".into()),
                scopes: Some(scopes.iter().map(|s| s.to_string()).collect()),
                ..Default::default()
            };
            herald_jobs::api_keys::create(&store, &req, chrono::Utc::now())
                .await
                .unwrap()
                .key
        }
    };
    let read = scoped(&["read"]).await;
    let share_only = scoped(&["share"]).await;
    let connect = scoped(&["connect"]).await;
    let forbidden = |s: StatusCode| s == StatusCode::FORBIDDEN;

    assert_eq!(
        status(&app, Method::GET, "/v1/shares", &read, None).await,
        StatusCode::OK
    );
    assert_eq!(
        status(&app, Method::GET, "/v1/connections", &read, None).await,
        StatusCode::OK
    );
    let (s, body) = app
        .call(Method::POST, "/v1/shares", Some(&read), Some(share.clone()))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "insufficient_scope");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`share`")
    );
    assert!(forbidden(
        status(
            &app,
            Method::POST,
            "/v1/connect/mastodon",
            &read,
            Some(json!({}))
        )
        .await
    ));

    let (s, body) = app
        .call(
            Method::POST,
            "/v1/shares",
            Some(&share_only),
            Some(share.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    let id = body["shares"][0]["id"].as_str().unwrap();
    assert!(forbidden(
        status(
            &app,
            Method::GET,
            &format!("/v1/shares/{id}"),
            &share_only,
            None
        )
        .await
    ));
    assert!(forbidden(
        status(&app, Method::GET, "/v1/platforms", &share_only, None).await
    ));
    assert!(forbidden(
        status(
            &app,
            Method::DELETE,
            &format!("/v1/connections/{conn}"),
            &share_only,
            None
        )
        .await
    ));

    assert!(forbidden(
        status(&app, Method::POST, "/v1/shares", &connect, Some(share)).await
    ));
    let (s, body) = app
        .call(Method::POST, "/v1/connections", Some(&connect), Some(json!({
            "platform": "mastodon", "platform_account_id": "110", "handle": "bob@social.example",
            "access_token": "t", "extras": { "instance_url": app.mastodon.base },
        })))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");

    // An operator key that only reads: inspects jobs, but neither replays nor manages keys.
    let op_read = herald_jobs::api_keys::create(
        &app.parts.ctx.store,
        &herald_jobs::api_keys::KeyRequest {
            operator: true,
            scopes: Some(vec!["read".into()]),
            ..Default::default()
        },
        chrono::Utc::now(),
    )
    .await
    .unwrap()
    .key;
    assert_eq!(
        status(&app, Method::GET, "/v1/jobs", &op_read, None).await,
        StatusCode::OK
    );
    assert_eq!(
        status(&app, Method::GET, "/v1/ops/connections", &op_read, None).await,
        StatusCode::OK
    );
    let (s, body) = app
        .call(
            Method::POST,
            &format!("/v1/jobs/{id}/replay"),
            Some(&op_read),
            Some(json!({})),
        )
        .await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("insufficient_scope"))
    );
    assert!(forbidden(
        status(&app, Method::GET, "/v1/keys", &op_read, None).await
    ));
    // A role is still checked before a scope.
    let (s, body) = app.call(Method::GET, "/v1/jobs", Some(&read), None).await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden"))
    );
}

async fn keys_made_before_scopes_keep_what_they_could_do(engine: Engine) {
    let app = TestApp::spawn_with(engine, false, fast_settings()).await;
    let op = app.operator_key().await;
    // A row as an older binary writes it: no scopes at all.
    let clear = "UPDATE api_keys SET scopes = NULL";
    match app.parts.ctx.store.pool() {
        Pool::Sqlite(p) => sqlx::query(clear).execute(p).await.map(drop),
        Pool::Postgres(p) => sqlx::query(clear).execute(p).await.map(drop),
    }
    .unwrap();
    let conn = app.mastodon_connection().await;
    app.share(&conn, "still works").await;
    assert_eq!(
        status(&app, Method::GET, "/v1/jobs", &op, None).await,
        StatusCode::OK
    );
    let (s, body) = app.call(Method::GET, "/v1/keys", Some(&op), None).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let scopes = |role: &str| {
        body["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["role"] == role)
            .unwrap()["scopes"]
            .clone()
    };
    assert_eq!(scopes("tenant"), json!(["read", "share", "connect"]));
    assert_eq!(scopes("operator"), json!(["read", "admin"]));
}

async fn operators_list_create_and_revoke_keys_and_see_when_each_was_last_used(engine: Engine) {
    let app = TestApp::spawn_with(engine, false, fast_settings()).await;
    let op = app.operator_key().await;
    let (s, created) = app
        .call(
            Method::POST,
            "/v1/keys",
            Some(&op),
            Some(json!({
                "tenant": "beta", "scopes": ["read"], "label": "dashboard",
            })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let key = created["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("hk_key_"));
    assert_eq!(created["scopes"], json!(["read"]));
    assert_eq!(
        (created["tenant"].as_str(), created["status"].as_str()),
        (Some("beta"), Some("active"))
    );
    assert!(created["last_used_at"].is_null());
    let id = created["id"].as_str().unwrap().to_owned();

    // Listed without its secret; one tenant's keys by name.
    let (_, list) = app
        .call(Method::GET, "/v1/keys?tenant=beta", Some(&op), None)
        .await;
    assert_eq!(list["keys"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["keys"][0]["label"], "dashboard");
    assert!(!list.to_string().contains(&key[40..]));
    let (_, none) = app
        .call(Method::GET, "/v1/keys?tenant=nobody", Some(&op), None)
        .await;
    assert_eq!(none["keys"], json!([]));
    // Paged by id.
    let (_, page) = app
        .call(Method::GET, "/v1/keys?limit=1", Some(&op), None)
        .await;
    assert_eq!(page["keys"].as_array().unwrap().len(), 1);
    let after = page["next_after"].as_str().unwrap();
    let (_, next) = app
        .call(
            Method::GET,
            &format!("/v1/keys?limit=200&after={after}"),
            Some(&op),
            None,
        )
        .await;
    assert!(
        next["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["id"].as_str().unwrap() > after)
    );

    // A use is recorded (off the request's path, at most once a minute).
    assert_eq!(
        status(&app, Method::GET, "/v1/shares", &key, None).await,
        StatusCode::OK
    );
    let used = eventually(Duration::from_secs(10), || async {
        let (_, list) = app
            .call(Method::GET, "/v1/keys?tenant=beta", Some(&op), None)
            .await;
        list["keys"][0]["last_used_at"].as_str().map(str::to_owned)
    })
    .await
    .expect("last_used_at was never written");
    assert_eq!(
        status(&app, Method::GET, "/v1/shares", &key, None).await,
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, list) = app
        .call(Method::GET, "/v1/keys?tenant=beta", Some(&op), None)
        .await;
    assert_eq!(
        list["keys"][0]["last_used_at"].as_str(),
        Some(used.as_str()),
        "written twice in a minute"
    );

    // An operator key made through the API works as one.
    let (s, op2) = app
        .call(
            Method::POST,
            "/v1/keys",
            Some(&op),
            Some(json!({ "operator": true })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{op2}");
    assert_eq!(op2["scopes"], json!(["read", "admin"]));
    let op2 = op2["key"].as_str().unwrap();
    assert_eq!(
        status(&app, Method::GET, "/v1/keys", op2, None).await,
        StatusCode::OK
    );

    let (s, _) = app
        .call(Method::DELETE, &format!("/v1/keys/{id}"), Some(&op), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    // Not its own key, though.
    let (s, body) = app
        .call(
            Method::DELETE,
            &format!("/v1/keys/{}", key_id(&op)),
            Some(&op),
            None,
        )
        .await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("own_key"))
    );
    assert_eq!(
        status(&app, Method::GET, "/v1/keys", &op, None).await,
        StatusCode::OK
    );
    let (_, active) = app
        .call(Method::GET, "/v1/keys?tenant=beta", Some(&op), None)
        .await;
    assert_eq!(active["keys"], json!([]));
    let (_, all) = app
        .call(
            Method::GET,
            "/v1/keys?tenant=beta&all=true",
            Some(&op),
            None,
        )
        .await;
    assert_eq!(all["keys"][0]["status"], "revoked");
    // Tenant keys never manage keys.
    let (s, body) = app
        .call(Method::GET, "/v1/keys", Some(&app.key), None)
        .await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden"))
    );
}

async fn bad_key_requests_get_a_code_and_the_field(engine: Engine) {
    let app = TestApp::spawn_with(engine, false, fast_settings()).await;
    let op = app.operator_key().await;
    for (body, code, field) in [
        (json!({}), "missing_field", "tenant"),
        (
            json!({ "tenant": "a", "operator": true }),
            "invalid_field",
            "operator",
        ),
        (json!({ "tenant": "  " }), "invalid_field", "tenant"),
        (
            json!({ "tenant": "a", "scopes": ["read", "admin"] }),
            "scope_not_allowed",
            "scopes[1]",
        ),
        (
            json!({ "operator": true, "scopes": ["share"] }),
            "scope_not_allowed",
            "scopes[0]",
        ),
        (
            json!({ "tenant": "a", "scopes": ["write"] }),
            "unknown_scope",
            "scopes[0]",
        ),
        (
            json!({ "tenant": "a", "scopes": [] }),
            "invalid_field",
            "scopes",
        ),
        (
            json!({ "tenant": "a", "expires_in": "0s" }),
            "invalid_span",
            "expires_in",
        ),
        (
            json!({ "tenant": "a", "expires_at": "2001-01-01T00:00:00Z" }),
            "expires_at_in_past",
            "expires_at",
        ),
        (
            json!({ "tenant": "a", "expires_in": "1d", "expires_at": "2999-01-01T00:00:00Z" }),
            "invalid_field",
            "expires_at",
        ),
        (
            json!({ "tenant": "a", "role": "tenant" }),
            "unknown_field",
            "role",
        ),
    ] {
        let (s, res) = app
            .call(Method::POST, "/v1/keys", Some(&op), Some(body.clone()))
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body} → {res}");
        assert_eq!(
            (
                res["error"]["code"].as_str(),
                res["error"]["field"].as_str()
            ),
            (Some(code), Some(field)),
            "{body} → {res}"
        );
    }
    let (_, all) = app
        .call(Method::GET, "/v1/keys?all=true", Some(&op), None)
        .await;
    assert_eq!(
        all["keys"].as_array().unwrap().len(),
        2,
        "a refused request wrote a key: {all}"
    );
}
