//! The HTTP API: authentication, validation with stable codes, idempotent enqueue, tenancy.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{
    on_every_backend,
    support::{Engine, TestApp, fast_settings},
};

on_every_backend!(
    requests_without_a_valid_key_are_refused,
    imported_tokens_are_encrypted_at_rest_and_never_shown,
    a_second_import_of_the_same_account_updates_it_and_keeps_the_refresh_token,
    bad_input_gets_a_stable_code_and_the_field_and_writes_nothing,
    an_oversized_or_malformed_body_is_refused,
    repeating_a_request_with_its_idempotency_key_returns_the_same_shares,
    requests_arriving_together_each_get_their_own_answer,
    a_tenant_never_sees_or_uses_another_tenants_connections_or_shares,
    shares_are_listed_by_url,
    a_share_to_a_connection_removed_moments_ago_is_refused_and_writes_nothing,
    a_scheduled_share_can_be_cancelled_but_a_finished_one_cannot,
    health_readiness_and_the_openapi_document_answer,
    the_ssrf_guard_refuses_private_instance_and_share_urls,
);

fn share_body(conn: &str) -> Value {
    json!({ "url": "https://blog.example/post/1", "title": "A post", "text": "Read this", "connection_ids": [conn] })
}

async fn requests_without_a_valid_key_are_refused(engine: Engine) {
    let app = TestApp::spawn_with(engine, false, fast_settings()).await;
    for key in [
        None,
        Some("nope"),
        Some("hk_key_00000000000000000000000000000000_secret"),
    ] {
        let (status, body) = app.call(Method::GET, "/v1/shares", key, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    // A real key id with a wrong secret is refused too.
    let forged = format!("{}x", &app.key[..app.key.len() - 1]);
    let (status, _) = app
        .call(Method::GET, "/v1/shares", Some(&forged), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

async fn imported_tokens_are_encrypted_at_rest_and_never_shown(engine: Engine) {
    let app = TestApp::spawn_with(engine, false, fast_settings()).await;
    let token = app.mastodon.token.clone();
    let (status, body) = app
        .post("/v1/connections", json!({
            "platform": "mastodon", "platform_account_id": "109", "handle": "alice@social.example",
            "access_token": token, "refresh_token": "refresh-secret-123",
            "extras": { "instance_url": app.mastodon.base },
        }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let text = body.to_string();
    assert!(!text.contains(&token) && !text.contains("refresh-secret-123"));
    assert_eq!(body["has_refresh_token"], true);
    let row = app
        .parts
        .ctx
        .store
        .connection(body["id"].as_str().unwrap())
        .await
        .unwrap()
        .unwrap();
    let stored = format!("{:?}", row);
    assert!(
        !stored.contains(&token) && !stored.contains("refresh-secret-123"),
        "tokens stored in clear"
    );
    assert!(row.access_token_enc.as_deref().unwrap().starts_with("v1."));
    let creds = row.credentials(&app.parts.ctx.vault).unwrap();
    assert!(
        !format!("{creds:?}").contains(&token),
        "Debug shows a token"
    );
}

async fn a_second_import_of_the_same_account_updates_it_and_keeps_the_refresh_token(
    engine: Engine,
) {
    let app = TestApp::spawn_with(engine, false, fast_settings()).await;
    let base = json!({
        "platform": "mastodon", "platform_account_id": "109", "handle": "alice@social.example",
        "access_token": "first", "refresh_token": "keep-me", "extras": { "instance_url": app.mastodon.base },
    });
    let (_, first) = app.post("/v1/connections", base.clone()).await;
    let mut second = base;
    second["access_token"] = json!("second");
    second["refresh_token"] = Value::Null;
    second["handle"] = json!("alice2@social.example");
    let (status, again) = app.post("/v1/connections", second).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(first["id"], again["id"]);
    assert_eq!(again["handle"], "alice2@social.example");
    let row = app
        .parts
        .ctx
        .store
        .connection(first["id"].as_str().unwrap())
        .await
        .unwrap()
        .unwrap();
    let creds = row.credentials(&app.parts.ctx.vault).unwrap();
    use secrecy::ExposeSecret;
    assert_eq!(creds.access_token.unwrap().expose_secret(), "second");
    assert_eq!(creds.refresh_token.unwrap().expose_secret(), "keep-me");
}

async fn bad_input_gets_a_stable_code_and_the_field_and_writes_nothing(engine: Engine) {
    let app = TestApp::spawn_with(engine, false, fast_settings()).await;
    let conn = app.mastodon_connection().await;
    let other_key = app.key_for("globex").await;
    let foreign = app.mastodon_connection_with(&other_key, "200", "t").await;
    let ok = share_body(&conn);
    let with = |f: &dyn Fn(&mut Value)| {
        let mut b = ok.clone();
        f(&mut b);
        b
    };
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            with(&|b| {
                b.as_object_mut().unwrap().remove("url");
            }),
            "url",
            "missing_field",
        ),
        (
            with(&|b| b["colour"] = json!("red")),
            "colour",
            "unknown_field",
        ),
        (
            with(&|b| b["connection_ids"] = json!([1])),
            "connection_ids[0]",
            "invalid_field",
        ),
        (with(&|b| b["url"] = json!("")), "url", "missing_url"),
        (
            with(&|b| b["url"] = json!("not a url")),
            "url",
            "invalid_url",
        ),
        (
            with(&|b| b["url"] = json!("ftp://blog.example/x")),
            "url",
            "invalid_url",
        ),
        (
            with(&|b| b["image_url"] = json!("file:///etc/passwd")),
            "image_url",
            "invalid_url",
        ),
        (
            with(&|b| b["text"] = json!("x".repeat(480))),
            "text",
            "text_too_long",
        ),
        (
            with(&|b| b["connection_ids"] = json!([])),
            "connection_ids",
            "invalid_targets",
        ),
        (
            with(&|b| b["connection_ids"] = json!(["con_nope"])),
            "connection_ids[0]",
            "unknown_connection",
        ),
        (
            with(&|b| b["connection_ids"] = json!([conn.clone(), foreign.clone()])),
            "connection_ids[1]",
            "unknown_connection",
        ),
        (
            with(&|b| b["connection_ids"] = json!([conn.clone(), conn.clone()])),
            "connection_ids[1]",
            "duplicate_connection",
        ),
        (
            with(&|b| b["publish_at"] = json!("2020-01-01T00:00:00Z")),
            "publish_at",
            "publish_at_in_past",
        ),
        (
            with(&|b| b["publish_at"] = json!("tomorrow at noon")),
            "publish_at",
            "invalid_time",
        ),
        (
            with(&|b| b["title"] = json!("t".repeat(301))),
            "title",
            "title_too_long",
        ),
    ];
    for (body, field, code) in cases {
        let (status, err) = app.post("/v1/shares", body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body} -> {err}");
        assert_eq!(err["error"]["code"], code, "{body} -> {err}");
        assert_eq!(err["error"]["field"], field, "{body} -> {err}");
    }
    let (_, list) = app.get("/v1/shares").await;
    assert_eq!(
        list["shares"].as_array().unwrap().len(),
        0,
        "a refused request wrote shares"
    );

    let (status, err) = app
        .post("/v1/connections", json!({ "platform": "myspace", "platform_account_id": "1", "handle": "a", "access_token": "t" }))
        .await;
    assert_eq!(
        (status, err["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("platform"))
    );
    let (status, err) = app
        .post("/v1/connections", json!({ "platform": "mastodon", "platform_account_id": "1", "handle": "a", "access_token": "t" }))
        .await;
    assert_eq!(
        (status, err["error"]["field"].as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("extras.instance_url")
        )
    );
    let (status, err) = app
        .post("/v1/connections", json!({ "platform": "mastodon", "platform_account_id": "1", "handle": "a", "access_token": " " , "extras": { "instance_url": app.mastodon.base }}))
        .await;
    assert_eq!(
        (status, err["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("access_token"))
    );
}

async fn an_oversized_or_malformed_body_is_refused(engine: Engine) {
    let app = TestApp::spawn_with(engine, false, fast_settings()).await;
    let conn = app.mastodon_connection().await;
    let mut big = share_body(&conn);
    big["text"] = json!("x".repeat(100_000));
    let (status, err) = app.post("/v1/shares", big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(err["error"]["code"], "body_too_large");
    let res = app
        .http
        .post(format!("{}/v1/shares", app.base))
        .bearer_auth(&app.key)
        .header("content-type", "application/json")
        .body("{\"url\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let err: Value = res.json().await.unwrap();
    assert_eq!(err["error"]["code"], "invalid_json");
    let (_, list) = app.get("/v1/shares").await;
    assert_eq!(list["shares"].as_array().unwrap().len(), 0);
}

async fn repeating_a_request_with_its_idempotency_key_returns_the_same_shares(engine: Engine) {
    let app = TestApp::spawn_with(engine, false, fast_settings()).await;
    let conn = app.mastodon_connection().await;
    let send = |body: Value, key: &'static str| {
        app.http
            .post(format!("{}/v1/shares", app.base))
            .bearer_auth(&app.key)
            .header("idempotency-key", key)
            .json(&body)
            .send()
    };
    let first: Value = send(share_body(&conn), "req-1")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let res = send(share_body(&conn), "req-1").await.unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let second: Value = res.json().await.unwrap();
    assert_eq!(first["shares"][0]["id"], second["shares"][0]["id"]);
    let (_, list) = app.get("/v1/shares").await;
    assert_eq!(list["shares"].as_array().unwrap().len(), 1);
    let mut changed = share_body(&conn);
    changed["text"] = json!("Something else");
    let res = send(changed, "req-1").await.unwrap();
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let err: Value = res.json().await.unwrap();
    assert_eq!(err["error"]["code"], "idempotency_key_reused");
    assert_eq!(err["error"]["field"], "Idempotency-Key");
}

/// Requests that arrive at once are written together (on Postgres as one statement per check for
/// the whole batch): each still gets the answer it would get alone.
async fn requests_arriving_together_each_get_their_own_answer(engine: Engine) {
    let mut settings = fast_settings();
    settings.duplicate_window = std::time::Duration::from_secs(3600);
    let app = TestApp::spawn_with(engine, false, settings).await;
    let conn = app.mastodon_connection().await;
    let gone = app
        .mastodon_connection_with(&app.key, "110", &app.mastodon.token.clone())
        .await;
    let body =
        |url: &str, conn: &str| json!({ "url": url, "text": "Together", "connection_ids": [conn] });
    let send = |body: Value, key: String| {
        let req = app
            .http
            .post(format!("{}/v1/shares", app.base))
            .bearer_auth(&app.key)
            .header("idempotency-key", key)
            .json(&body);
        async move {
            let res = req.send().await.unwrap();
            (res.status(), res.json::<Value>().await.unwrap())
        }
    };
    let mut earlier = Vec::new();
    for (url, target, key) in [
        ("https://blog.example/kept", &conn, "kept"),
        ("https://blog.example/reused", &conn, "reused"),
        ("https://blog.example/posted", &conn, "posted"),
        ("https://blog.example/gone", &gone, "gone-0"),
    ] {
        let (status, res) = send(body(url, target), key.to_owned()).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{res}");
        earlier.push(res["shares"][0]["id"].as_str().unwrap().to_owned());
    }
    let (status, _) = app
        .call(
            Method::DELETE,
            &format!("/v1/connections/{gone}"),
            Some(&app.key),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let mut burst: Vec<(Value, String, &str)> = (0..16)
        .map(|i| {
            let url = format!("https://blog.example/new/{i}");
            (body(&url, &conn), format!("new-{i}"), "created")
        })
        .collect();
    burst.extend([
        (
            body("https://blog.example/kept", &conn),
            "kept".to_owned(),
            "replayed",
        ),
        (
            body("https://blog.example/other", &conn),
            "reused".to_owned(),
            "idempotency_key_reused",
        ),
        (
            body("https://blog.example/posted", &conn),
            "posted-again".to_owned(),
            "already_shared",
        ),
        (
            body("https://blog.example/gone/1", &gone),
            "gone-1".to_owned(),
            "unknown_connection",
        ),
    ]);
    let answers =
        futures::future::join_all(burst.iter().map(|(b, k, _)| send(b.clone(), k.clone()))).await;
    let mut created = Vec::new();
    for ((sent, key, expected), (status, res)) in burst.iter().zip(&answers) {
        match *expected {
            "created" => {
                assert_eq!(status, &StatusCode::ACCEPTED, "{key}: {res}");
                assert_eq!(res["shares"][0]["url"], sent["url"], "{key}: {res}");
                created.push(res["shares"][0]["id"].as_str().unwrap().to_owned());
            }
            "replayed" => {
                assert_eq!(status, &StatusCode::ACCEPTED, "{key}: {res}");
                assert_eq!(res["shares"][0]["id"], earlier[0].as_str(), "{key}: {res}");
            }
            "already_shared" => {
                assert_eq!(status, &StatusCode::CONFLICT, "{key}: {res}");
                assert_eq!(res["error"]["code"], "already_shared", "{key}: {res}");
                assert_eq!(
                    res["error"]["share_id"],
                    earlier[2].as_str(),
                    "{key}: {res}"
                );
            }
            code => {
                assert!(status.is_client_error(), "{key}: {status} {res}");
                assert_eq!(res["error"]["code"], code, "{key}: {res}");
            }
        }
    }
    created.sort();
    created.dedup();
    assert_eq!(created.len(), 16, "{created:?}");
    // Nothing else was written: the four earlier shares and the sixteen new ones.
    let (_, list) = app.get("/v1/shares?limit=100").await;
    assert_eq!(list["shares"].as_array().unwrap().len(), 20, "{list}");
}

async fn a_tenant_never_sees_or_uses_another_tenants_connections_or_shares(engine: Engine) {
    let app = TestApp::spawn_with(engine, false, fast_settings()).await;
    let conn = app.mastodon_connection().await;
    let share = {
        let (_, b) = app.post("/v1/shares", share_body(&conn)).await;
        b["shares"][0]["id"].as_str().unwrap().to_owned()
    };
    let other = app.key_for("globex").await;
    for path in [
        format!("/v1/shares/{share}"),
        format!("/v1/connections/{conn}"),
    ] {
        let (status, _) = app.call(Method::GET, &path, Some(&other), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }
    let (status, _) = app
        .call(
            Method::DELETE,
            &format!("/v1/shares/{share}"),
            Some(&other),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, list) = app
        .call(Method::GET, "/v1/shares", Some(&other), None)
        .await;
    assert_eq!(list["shares"].as_array().unwrap().len(), 0);
    let (_, list) = app
        .call(Method::GET, "/v1/connections", Some(&other), None)
        .await;
    assert_eq!(list["connections"].as_array().unwrap().len(), 0);
    let (status, err) = app
        .call(
            Method::POST,
            "/v1/shares",
            Some(&other),
            Some(share_body(&conn)),
        )
        .await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("unknown_connection"))
    );
    // The owner still sees its share, untouched.
    let (status, mine) = app.get(&format!("/v1/shares/{share}")).await;
    assert_eq!(
        (status, mine["state"].as_str()),
        (StatusCode::OK, Some("queued"))
    );
}

/// The API validates a share against a connection it may have read seconds ago; the write checks
/// the connection again, so a removal in between refuses the share and writes nothing.
async fn a_share_to_a_connection_removed_moments_ago_is_refused_and_writes_nothing(engine: Engine) {
    let app = TestApp::spawn_with(engine, false, fast_settings()).await;
    let conn = app.mastodon_connection().await;
    let (status, _) = app.post("/v1/shares", share_body(&conn)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _) = app
        .call(
            Method::DELETE,
            &format!("/v1/connections/{conn}"),
            Some(&app.key),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, err) = app.post("/v1/shares", share_body(&conn)).await;
    assert_eq!(
        (
            status,
            err["error"]["code"].as_str(),
            err["error"]["field"].as_str()
        ),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("unknown_connection"),
            Some("connection_ids[0]")
        ),
        "{err}"
    );
    let (_, list) = app.get("/v1/shares").await;
    assert_eq!(list["shares"].as_array().unwrap().len(), 1, "{list}");
}

async fn shares_are_listed_by_url(engine: Engine) {
    let app = TestApp::spawn_with(engine, false, fast_settings()).await;
    let conn = app.mastodon_connection().await;
    for url in [
        "https://blog.example/a",
        "https://blog.example/b",
        "https://blog.example/a",
    ] {
        let (status, _) = app
            .post(
                "/v1/shares",
                json!({ "url": url, "connection_ids": [conn] }),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    let (_, a) = app
        .get("/v1/shares?url=https%3A%2F%2Fblog.example%2Fa")
        .await;
    let a = a["shares"].as_array().unwrap();
    assert_eq!(a.len(), 2);
    assert!(a.iter().all(|s| s["url"] == "https://blog.example/a"));
    let (_, page) = app.get("/v1/shares?limit=2").await;
    assert_eq!(page["shares"].as_array().unwrap().len(), 2);
    let before = page["next_before"].as_str().unwrap();
    let (_, rest) = app
        .get(&format!("/v1/shares?limit=2&before={before}"))
        .await;
    assert_eq!(rest["shares"].as_array().unwrap().len(), 1);
    let (status, err) = app.get("/v1/shares?limit=0").await;
    assert_eq!(
        (status, err["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("limit"))
    );
}

async fn a_scheduled_share_can_be_cancelled_but_a_finished_one_cannot(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let conn = app.mastodon_connection().await;
    let later = (TestApp::now() + chrono::Duration::hours(1)).to_rfc3339();
    let (status, body) = app
        .post("/v1/shares", json!({ "url": "https://blog.example/later", "publish_at": later, "connection_ids": [conn] }))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["shares"][0]["id"].as_str().unwrap();
    let (status, cancelled) = app
        .call(
            Method::DELETE,
            &format!("/v1/shares/{id}"),
            Some(&app.key),
            None,
        )
        .await;
    assert_eq!(
        (status, cancelled["state"].as_str()),
        (StatusCode::OK, Some("cancelled"))
    );

    let done = app.share(&conn, "now").await;
    app.share_until(&done, std::time::Duration::from_secs(15), |s| {
        s["state"] == "succeeded"
    })
    .await;
    let (status, err) = app
        .call(
            Method::DELETE,
            &format!("/v1/shares/{done}"),
            Some(&app.key),
            None,
        )
        .await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("share_not_cancellable"))
    );
    assert_eq!(
        app.mastodon.statuses().len(),
        1,
        "the cancelled share was posted"
    );
}

async fn health_readiness_and_the_openapi_document_answer(engine: Engine) {
    let app = TestApp::spawn_with(engine, false, fast_settings()).await;
    let (status, _) = app.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, ready) = app.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, StatusCode::OK, "{ready}");
    assert_eq!(ready["store"]["status"], "ok");
    let (status, doc) = app.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    for path in [
        "/v1/shares",
        "/v1/shares/{id}",
        "/v1/connections",
        "/v1/connections/{id}",
        "/readyz",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} missing from the OpenAPI document"
        );
    }
}

async fn the_ssrf_guard_refuses_private_instance_and_share_urls(engine: Engine) {
    let mut settings = fast_settings();
    settings.ssrf = herald_platforms::ssrf::SsrfGuard::strict();
    let app = TestApp::spawn_with(engine, false, settings).await;
    for instance in [
        "http://127.0.0.1:3000",
        "http://169.254.169.254",
        "http://[::1]/",
        "http://10.0.0.8",
        "http://localhost",
    ] {
        let (status, err) = app
            .post("/v1/connections", json!({ "platform": "mastodon", "platform_account_id": "1", "handle": "a", "access_token": "t", "extras": { "instance_url": instance } }))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{instance}");
        assert_eq!(
            (
                err["error"]["code"].as_str(),
                err["error"]["field"].as_str()
            ),
            (Some("invalid_url"), Some("extras.instance_url"))
        );
    }
    let (_, conns) = app.get("/v1/connections").await;
    assert_eq!(conns["connections"].as_array().unwrap().len(), 0);
}
