//! Bad input never becomes a 5xx, a panic or a stored surprise: each case answers a 4xx with a
//! stable `code` and the `field` at fault, and writes no row.

use std::net::IpAddr;

use herald_jobs::store::Pool;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{
    on_every_backend,
    support::{Engine, TestApp, fast_settings},
};
use herald_platforms::ssrf::SsrfGuard;

on_every_backend!(
    spans_and_times_out_of_range_are_refused_not_overflowed,
    nul_characters_are_refused_in_bodies_paths_and_queries,
    urls_with_control_characters_are_refused,
    ipv6_addresses_embedding_a_private_ipv4_address_are_refused,
    a_mastodon_instance_whose_name_resolves_to_a_private_address_is_refused_up_front,
    unknown_routes_wrong_methods_and_bad_parameters_answer_the_error_shape,
    herald_replay_refuses_a_span_reaching_before_the_year_1_without_panicking,
    mastodon_counts_a_family_emoji_as_one_character,
);

/// Rows in each table a refused request could have written.
async fn rows(app: &TestApp) -> Vec<(&'static str, i64)> {
    let mut out = Vec::new();
    for table in [
        "shares",
        "connections",
        "idempotency_keys",
        "oauth_states",
        "mastodon_apps",
        "share_replays",
    ] {
        let sql = format!("SELECT COUNT(*) FROM {table}");
        let n: i64 = match app.parts.ctx.store.pool() {
            Pool::Sqlite(p) => sqlx::query_scalar(sqlx::AssertSqlSafe(sql.clone()))
                .fetch_one(p)
                .await
                .unwrap(),
            Pool::Postgres(p) => sqlx::query_scalar(sqlx::AssertSqlSafe(sql.clone()))
                .fetch_one(p)
                .await
                .unwrap(),
        };
        out.push((table, n));
    }
    out
}

/// Sends the request and checks the answer is 422 with `code` and `field`.
async fn refused(
    app: &TestApp,
    method: Method,
    path: &str,
    key: &str,
    body: Option<Value>,
    code: &str,
    field: &str,
) {
    let (status, err) = app
        .call(method.clone(), path, Some(key), body.clone())
        .await;
    let what = format!("{method} {path} {}", body.unwrap_or_default());
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{what} -> {err}");
    assert_eq!(err["error"]["code"], code, "{what} -> {err}");
    assert_eq!(err["error"]["field"], field, "{what} -> {err}");
}

fn share(conn: &str) -> Value {
    json!({ "url": "https://blog.example/post/1", "title": "A post", "text": "Read this", "connection_ids": [conn] })
}

fn with(base: &Value, f: impl Fn(&mut Value)) -> Value {
    let mut b = base.clone();
    f(&mut b);
    b
}

async fn spans_and_times_out_of_range_are_refused_not_overflowed(engine: Engine) {
    let app = TestApp::spawn_with(engine, false, fast_settings()).await;
    let conn = app.mastodon_connection().await;
    let op = app.operator_key().await;
    let before = rows(&app).await;
    for since in [
        "100000000d",
        "2000000000h",
        "9223372036854775807s",
        "800000d",
    ] {
        refused(
            &app,
            Method::GET,
            &format!("/v1/jobs?since={since}"),
            &op,
            None,
            "time_out_of_range",
            "since",
        )
        .await;
        refused(
            &app,
            Method::POST,
            "/v1/jobs/replay",
            &op,
            Some(json!({ "state": "failed", "since": since })),
            "time_out_of_range",
            "since",
        )
        .await;
    }
    let ok = share(&conn);
    for (field, value) in [
        ("publish_at", "9999-06-01T00:00:00Z"),
        ("not_after", "9999-12-31T23:59:59Z"),
        ("publish_at", "0000-01-01T00:00:00+01:00"),
    ] {
        refused(
            &app,
            Method::POST,
            "/v1/shares",
            &app.key,
            Some(with(&ok, |b| b[field] = json!(value))),
            "time_out_of_range",
            field,
        )
        .await;
    }
    let conn_body = json!({
        "platform": "mastodon", "platform_account_id": "77", "handle": "a", "access_token": "t",
        "expires_at": "0000-01-01T00:00:00+23:00", "extras": { "instance_url": app.mastodon.base },
    });
    refused(
        &app,
        Method::POST,
        "/v1/connections",
        &app.key,
        Some(conn_body),
        "time_out_of_range",
        "expires_at",
    )
    .await;
    assert_eq!(rows(&app).await, before, "a refused request wrote a row");

    // The latest publish time accepted still gives times that print as RFC 3339.
    let (status, body) = app
        .post(
            "/v1/shares",
            with(&ok, |b| b["publish_at"] = json!("9998-12-31T23:00:00Z")),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    for field in ["run_at", "not_after", "created_at", "updated_at"] {
        let t = body["shares"][0][field].as_str().unwrap();
        assert!(
            chrono::DateTime::parse_from_rfc3339(t).is_ok() && t.as_bytes()[4] == b'-',
            "{field} = {t} is not RFC 3339"
        );
    }
}

async fn nul_characters_are_refused_in_bodies_paths_and_queries(engine: Engine) {
    let app = TestApp::spawn_with(engine, false, fast_settings()).await;
    let conn = app.mastodon_connection().await;
    let op = app.operator_key().await;
    let before = rows(&app).await;
    let nul = "a\u{0}b";
    let ok = share(&conn);
    let mut cases: Vec<(Value, &str)> = [
        "url",
        "title",
        "text",
        "image_url",
        "publish_at",
        "not_after",
    ]
    .into_iter()
    .map(|f| (with(&ok, |b| b[f] = json!(nul)), f))
    .collect();
    cases.push((
        with(&ok, |b| b["connection_ids"] = json!([conn, nul])),
        "connection_ids[1]",
    ));
    for (body, field) in cases {
        refused(
            &app,
            Method::POST,
            "/v1/shares",
            &app.key,
            Some(body),
            "nul_character",
            field,
        )
        .await;
    }
    let import = json!({
        "platform": "mastodon", "platform_account_id": "88", "handle": "a", "access_token": "t",
        "refresh_token": "r", "scopes": ["read"], "extras": { "instance_url": app.mastodon.base },
    });
    let mut cases: Vec<(Value, &str)> = [
        "platform",
        "platform_account_id",
        "handle",
        "access_token",
        "refresh_token",
        "expires_at",
    ]
    .into_iter()
    .map(|f| (with(&import, |b| b[f] = json!(nul)), f))
    .collect();
    cases.push((
        with(&import, |b| b["scopes"] = json!(["read", nul])),
        "scopes[1]",
    ));
    cases.push((
        with(&import, |b| {
            b["extras"]["instance_url"] = json!(format!("{}/{nul}", app.mastodon.base))
        }),
        "extras.instance_url",
    ));
    cases.push((
        with(&import, |b| b["extras"]["note"] = json!(nul)),
        "extras.note",
    ));
    for (body, field) in cases {
        refused(
            &app,
            Method::POST,
            "/v1/connections",
            &app.key,
            Some(body),
            "nul_character",
            field,
        )
        .await;
    }
    let start = json!({ "user_id": "u1", "return_url": "https://app.example/done", "instance_url": app.mastodon.base });
    for field in ["user_id", "return_url", "instance_url"] {
        refused(
            &app,
            Method::POST,
            "/v1/connect/mastodon",
            &app.key,
            Some(with(&start, |b| b[field] = json!(nul))),
            "nul_character",
            field,
        )
        .await;
    }
    refused(
        &app,
        Method::POST,
        "/v1/jobs/replay",
        &op,
        Some(json!({ "state": "failed", "force": true, "reason": nul })),
        "nul_character",
        "reason",
    )
    .await;
    refused(
        &app,
        Method::POST,
        "/v1/jobs/shr_x/replay",
        &op,
        Some(json!({ "force": true, "reason": nul })),
        "nul_character",
        "reason",
    )
    .await;
    for (method, path, key, field) in [
        (Method::GET, "/v1/shares/shr_%00", app.key.as_str(), "id"),
        (Method::DELETE, "/v1/shares/%00", app.key.as_str(), "id"),
        (
            Method::GET,
            "/v1/connections/con_%00x",
            app.key.as_str(),
            "id",
        ),
        (
            Method::DELETE,
            "/v1/connections/%00",
            app.key.as_str(),
            "id",
        ),
        (Method::GET, "/v1/jobs/shr_%00", op.as_str(), "id"),
        (Method::POST, "/v1/jobs/shr_%00/replay", op.as_str(), "id"),
        (
            Method::GET,
            "/v1/connect/mastodon%00/callback?state=s",
            app.key.as_str(),
            "platform",
        ),
        (
            Method::GET,
            "/v1/shares?url=https%3A%2F%2Fa.example%2F%00",
            app.key.as_str(),
            "url",
        ),
        (
            Method::GET,
            "/v1/shares?before=shr_%00",
            app.key.as_str(),
            "before",
        ),
        (
            Method::GET,
            "/v1/connections?after=%00",
            app.key.as_str(),
            "after",
        ),
        (
            Method::GET,
            "/v1/jobs?platform=x%00",
            op.as_str(),
            "platform",
        ),
        (Method::GET, "/v1/jobs?since=%00", op.as_str(), "since"),
        (
            Method::GET,
            "/v1/connect/mastodon/callback?state=%00&code=c",
            app.key.as_str(),
            "state",
        ),
    ] {
        refused(&app, method, path, key, None, "nul_character", field).await;
    }
    assert_eq!(rows(&app).await, before, "a refused request wrote a row");
}

async fn urls_with_control_characters_are_refused(engine: Engine) {
    let app = TestApp::spawn_with(engine, false, fast_settings()).await;
    let conn = app.mastodon_connection().await;
    let before = rows(&app).await;
    let ok = share(&conn);
    for (field, value) in [
        ("url", "https://blog.example/a\r\nSet-Cookie: x=1"),
        ("url", "https://blog.example/\ta"),
        ("url", "https://blog.example/a\u{7f}"),
        ("image_url", "https://img.example/a\n.png"),
    ] {
        refused(
            &app,
            Method::POST,
            "/v1/shares",
            &app.key,
            Some(with(&ok, |b| b[field] = json!(value))),
            "invalid_url",
            field,
        )
        .await;
    }
    let import = json!({
        "platform": "mastodon", "platform_account_id": "88", "handle": "a", "access_token": "t",
        "extras": { "instance_url": format!("{}\r\n", app.mastodon.base) },
    });
    refused(
        &app,
        Method::POST,
        "/v1/connections",
        &app.key,
        Some(import),
        "invalid_url",
        "extras.instance_url",
    )
    .await;
    let start = json!({ "user_id": "u1", "return_url": "https://app.example/done\r\nx", "instance_url": app.mastodon.base });
    refused(
        &app,
        Method::POST,
        "/v1/connect/mastodon",
        &app.key,
        Some(start),
        "invalid_url",
        "return_url",
    )
    .await;
    let start = json!({ "user_id": "u1", "return_url": "https://app.example/done", "instance_url": format!("{}/a\nb", app.mastodon.base) });
    refused(
        &app,
        Method::POST,
        "/v1/connect/mastodon",
        &app.key,
        Some(start),
        "invalid_url",
        "instance_url",
    )
    .await;
    assert_eq!(rows(&app).await, before, "a refused request wrote a row");
}

async fn ipv6_addresses_embedding_a_private_ipv4_address_are_refused(engine: Engine) {
    let mut settings = fast_settings();
    settings.ssrf = SsrfGuard::strict();
    let app = TestApp::spawn_with(engine, false, settings).await;
    let before = rows(&app).await;
    for instance in [
        "http://[::127.0.0.1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[2002:7f00:1::1]/",
        "http://[64:ff9b::10.0.0.1]/",
        "http://[64:ff9b:1:a9fe:a9:fe00::]/",
        "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/",
    ] {
        let body = json!({ "platform": "mastodon", "platform_account_id": "1", "handle": "a", "access_token": "t", "extras": { "instance_url": instance } });
        refused(
            &app,
            Method::POST,
            "/v1/connections",
            &app.key,
            Some(body),
            "invalid_url",
            "extras.instance_url",
        )
        .await;
        let start = json!({ "user_id": "u1", "return_url": "https://app.example/done", "instance_url": instance });
        refused(
            &app,
            Method::POST,
            "/v1/connect/mastodon",
            &app.key,
            Some(start),
            "invalid_url",
            "instance_url",
        )
        .await;
    }
    assert_eq!(rows(&app).await, before, "a refused request wrote a row");
}

async fn a_mastodon_instance_whose_name_resolves_to_a_private_address_is_refused_up_front(
    engine: Engine,
) {
    let mut settings = fast_settings();
    let private: IpAddr = "10.0.0.7".parse().unwrap();
    settings.ssrf = SsrfGuard::strict().with_host("social.internal.example", &[private]);
    let app = TestApp::spawn_with(engine, false, settings).await;
    let before = rows(&app).await;
    let instance = "https://social.internal.example";
    let body = json!({ "platform": "mastodon", "platform_account_id": "1", "handle": "a", "access_token": "t", "extras": { "instance_url": instance } });
    refused(
        &app,
        Method::POST,
        "/v1/connections",
        &app.key,
        Some(body),
        "invalid_url",
        "extras.instance_url",
    )
    .await;
    let start = json!({ "user_id": "u1", "return_url": "https://app.example/done", "instance_url": instance });
    refused(
        &app,
        Method::POST,
        "/v1/connect/mastodon",
        &app.key,
        Some(start),
        "invalid_url",
        "instance_url",
    )
    .await;
    assert_eq!(rows(&app).await, before, "a refused request wrote a row");
}

async fn unknown_routes_wrong_methods_and_bad_parameters_answer_the_error_shape(engine: Engine) {
    let app = TestApp::spawn_with(engine, false, fast_settings()).await;
    let op = app.operator_key().await;
    let (status, err) = app.get("/v1/nothing-here").await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("no_route")),
        "{err}"
    );
    let (status, err) = app
        .call(Method::PUT, "/v1/shares", Some(&app.key), None)
        .await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed")),
        "{err}"
    );
    // A worker's ops listener answers the same shape.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ops = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(herald::app::serve_ops(
        listener,
        herald::app::api_state(app.parts.ctx.clone(), None),
        std::future::pending(),
    ));
    let res = app
        .http
        .get(format!("{ops}/v1/shares"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let err: Value = res.json().await.unwrap();
    assert_eq!(err["error"]["code"], "no_route", "{err}");
    for (path, key, field) in [
        ("/v1/shares?limit=abc", app.key.as_str(), "limit"),
        (
            "/v1/shares?limit=99999999999999999999",
            app.key.as_str(),
            "limit",
        ),
        (
            "/v1/connections?needs_reauth=maybe",
            app.key.as_str(),
            "needs_reauth",
        ),
        ("/v1/jobs?limit=1.5", op.as_str(), "limit"),
    ] {
        refused(&app, Method::GET, path, key, None, "invalid_field", field).await;
    }
}

async fn herald_replay_refuses_a_span_reaching_before_the_year_1_without_panicking(engine: Engine) {
    let app = TestApp::spawn_with(engine, false, fast_settings()).await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args([
            "replay",
            "--state",
            "failed",
            "--since",
            "100000000d",
            "--dry-run",
        ])
        .env("DATABASE_URL", &app.db.url)
        .env("HERALD_ENCRYPTION_KEYS", &app.key_spec)
        .envs(
            app.backends
                .redis_url
                .iter()
                .map(|u| ("REDIS_URL", u.clone())),
        )
        .env("HERALD_REDIS_PREFIX", &app.backends.redis_prefix)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--since") && !stderr.contains("panicked"),
        "{stderr}"
    );
}

/// Every parameter a path template names is declared `in: path` on each of its operations, and
/// every `in: path` parameter appears in its path; list filters are `in: query`; every secured
/// operation documents 401 and 403 and every operation its error answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_declares_each_parameter_where_herald_reads_it() {
    let app = TestApp::spawn_with(Engine::Sqlite, false, fast_settings()).await;
    let (status, doc) = app.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let mut problems = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let named: Vec<&str> = path
            .split('{')
            .skip(1)
            .filter_map(|s| s.split('}').next())
            .collect();
        for (method, op) in item.as_object().unwrap() {
            let params = op["parameters"].as_array().cloned().unwrap_or_default();
            let in_path: Vec<&str> = params
                .iter()
                .filter(|p| p["in"] == "path")
                .map(|p| p["name"].as_str().unwrap())
                .collect();
            for n in &named {
                if !in_path.contains(n) {
                    problems.push(format!("{method} {path}: `{n}` is not declared in: path"));
                }
            }
            for n in &in_path {
                if !named.contains(n) {
                    problems.push(format!(
                        "{method} {path}: `{n}` is in: path but not in the path"
                    ));
                }
            }
            for p in params.iter().filter(|p| p["in"] == "path") {
                if p["required"] != true {
                    problems.push(format!(
                        "{method} {path}: path parameter {} is not required",
                        p["name"]
                    ));
                }
            }
            let secured = op["security"].as_array().is_some_and(|s| !s.is_empty());
            for status in ["401", "403"] {
                if secured && op["responses"].get(status).is_none() {
                    problems.push(format!("{method} {path}: {status} undocumented"));
                }
            }
        }
    }
    for (path, names) in [
        ("/v1/shares", &["url", "before", "limit"][..]),
        (
            "/v1/connections",
            &["needs_reauth", "refresh_failing", "after", "limit"][..],
        ),
        (
            "/v1/jobs",
            &["queue", "state", "platform", "since", "before", "limit"][..],
        ),
    ] {
        for name in names {
            let declared = doc["paths"][path]["get"]["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == *name && p["in"] == "query" && p["required"] != true);
            if !declared {
                problems.push(format!(
                    "GET {path}: `{name}` is not an optional query parameter"
                ));
            }
        }
    }
    for (path, method, status) in [
        ("/v1/connect/{platform}", "post", "404"),
        ("/v1/shares", "post", "415"),
        ("/v1/shares", "post", "400"),
        ("/v1/connections", "post", "415"),
        ("/v1/jobs", "get", "403"),
    ] {
        if doc["paths"][path][method]["responses"]
            .get(status)
            .is_none()
        {
            problems.push(format!("{method} {path}: {status} undocumented"));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

async fn mastodon_counts_a_family_emoji_as_one_character(engine: Engine) {
    let app = TestApp::spawn_with(engine, false, fast_settings()).await;
    let conn = app.mastodon_connection().await;
    let family = "\u{1F468}\u{200D}\u{1F469}\u{200D}\u{1F467}\u{200D}\u{1F466}";
    // 475 families, the blank line and a URL counted as 23: exactly Mastodon's 500.
    let (status, body) = app
        .post("/v1/shares", json!({ "url": "https://blog.example/family", "text": family.repeat(475), "connection_ids": [conn] }))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (status, err) = app
        .post("/v1/shares", json!({ "url": "https://blog.example/family", "text": family.repeat(476), "connection_ids": [conn] }))
        .await;
    assert_eq!(
        (
            status,
            err["error"]["code"].as_str(),
            err["error"]["field"].as_str()
        ),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("text_too_long"),
            Some("text")
        ),
        "{err}"
    );
}
