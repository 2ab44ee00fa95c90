//! An app's own view of a connection's runs and followers: `POST /v1/connections/{id}/refresh`
//! and `/sync` (the run id answered is the run the worker executes; a second request while one is
//! queued or running gets the same run and queues nothing), `GET .../followers` and
//! `.../follower-changes` from what the sync stored, and `display_name`.

use std::time::Duration;

use herald_jobs::handlers::sweeps;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{
    connect::connect_x,
    on_every_backend,
    support::{Engine, FakeX, ListReply, Reply, TestApp, eventually, fast_settings},
};

async fn with_x(engine: Engine) -> (TestApp, FakeX) {
    let x = FakeX::start().await;
    let mut settings = fast_settings();
    settings.apps.x = Some(x.app());
    // X's tokens live two hours: a sweep tick in the test takes them.
    settings.refresh_window = Duration::from_secs(3 * 3600);
    (TestApp::spawn_with(engine, true, settings).await, x)
}

async fn post_run(app: &TestApp, conn: &str, what: &str) -> (StatusCode, Value) {
    app.call(
        Method::POST,
        &format!("/v1/connections/{conn}/{what}"),
        Some(&app.key),
        None,
    )
    .await
}

/// Asks for a run and expects it accepted.
async fn accepted(app: &TestApp, conn: &str, what: &str) -> Value {
    let (status, body) = post_run(app, conn, what).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["connection_id"], conn);
    body
}

/// The run as operators see it once it has an outcome.
async fn settled_run(app: &TestApp, op: &str, run: &str) -> Value {
    eventually(Duration::from_secs(20), || async {
        let (status, job) = app
            .call(Method::GET, &format!("/v1/jobs/{run}"), Some(op), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{job}");
        (!matches!(job["state"].as_str(), Some("queued" | "running"))).then_some(job)
    })
    .await
    .unwrap_or_else(|| panic!("run {run} did not settle"))
}

/// The refresh runs operators see for one connection.
async fn refresh_runs_of(app: &TestApp, op: &str, conn: &str) -> Vec<Value> {
    let (status, list) = app
        .call(Method::GET, "/v1/jobs?queue=refresh", Some(op), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["connection_id"] == conn)
        .cloned()
        .collect()
}

async fn a_refresh_asked_for_runs_as_the_run_it_answers_and_a_second_ask_finds_it(engine: Engine) {
    let (app, x) = with_x(engine).await;
    let op = app.operator_key().await;
    let conn = connect_x(&app).await;

    let first = accepted(&app, &conn, "refresh").await;
    let run = first["run_id"].as_str().unwrap().to_owned();
    assert!(run.starts_with("rfr_"), "{first}");
    assert_eq!(first["queued_now"], true);
    assert_eq!(settled_run(&app, &op, &run).await["state"], "succeeded");
    assert_eq!(x.refreshes(), 1);

    // While a refresh is under way, asking again answers that run and queues nothing.
    x.slow_refreshes(Duration::from_millis(1200));
    let second = accepted(&app, &conn, "refresh").await;
    let again = accepted(&app, &conn, "refresh").await;
    assert_eq!(again["run_id"], second["run_id"], "{again}");
    assert_eq!(again["queued_now"], false);
    assert!(matches!(
        again["state"].as_str(),
        Some("queued" | "running")
    ));
    let second_run = second["run_id"].as_str().unwrap();
    assert_ne!(second_run, run);
    assert_eq!(
        settled_run(&app, &op, second_run).await["state"],
        "succeeded"
    );
    assert_eq!(x.refresh_requests(), 2, "a second refresh was queued");
    assert_eq!(refresh_runs_of(&app, &op, &conn).await.len(), 2);
}

async fn a_refresh_the_sweep_queued_is_the_one_an_app_gets(engine: Engine) {
    let (app, x) = with_x(engine).await;
    let op = app.operator_key().await;
    let conn = connect_x(&app).await;
    x.slow_refreshes(Duration::from_millis(1200));
    let pushed = sweeps::refresh_sweep(&app.parts.ctx, "tick-1")
        .await
        .unwrap();
    assert_eq!(pushed, Some(1));
    let asked = accepted(&app, &conn, "refresh").await;
    assert_eq!(asked["queued_now"], false, "{asked}");
    let run = asked["run_id"].as_str().unwrap();
    assert_eq!(settled_run(&app, &op, run).await["state"], "succeeded");
    let runs = refresh_runs_of(&app, &op, &conn).await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["id"], run);
    assert_eq!(x.refresh_requests(), 1);
}

async fn runs_are_refused_where_they_cannot_run_and_other_tenants_connections_are_unknown(
    engine: Engine,
) {
    let app = TestApp::spawn(engine).await;
    let conn = app.mastodon_connection().await;
    // Mastodon's tokens do not expire: nothing to refresh.
    let (status, body) = post_run(&app, &conn, "refresh").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "refresh_unsupported", "{body}");
    // X is not configured on this Herald.
    let (status, imported) = app
        .post(
            "/v1/connections",
            json!({ "platform": "x", "platform_account_id": "42", "handle": "someone", "access_token": "t" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{imported}");
    let (status, body) = post_run(&app, imported["id"].as_str().unwrap(), "sync").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "platform_unavailable", "{body}");
    // Dead credentials: the user must reconnect first.
    app.mastodon.script([Reply::InvalidToken]);
    let parked = app.share(&conn, "parked").await;
    assert_eq!(app.settled(&parked).await["state"], "parked");
    for what in ["sync", "refresh"] {
        let (status, body) = post_run(&app, &conn, what).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert_eq!(body["error"]["code"], "needs_reauth", "{body}");
    }
    // Another tenant's connection is unknown, exactly like one that does not exist.
    let other = app.key_for("globex").await;
    for path in [
        format!("/v1/connections/{conn}/sync"),
        format!("/v1/connections/{conn}/refresh"),
        "/v1/connections/con_nope/sync".to_owned(),
    ] {
        let (status, body) = app.call(Method::POST, &path, Some(&other), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
    }
    for path in [
        format!("/v1/connections/{conn}/followers"),
        format!("/v1/connections/{conn}/follower-changes"),
    ] {
        let (status, body) = app.call(Method::GET, &path, Some(&other), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
    }
    // Bad parameters name themselves.
    for (query, field) in [
        ("followers?relation=fans", "relation"),
        ("followers?before=nonsense", "before"),
        ("followers?limit=0", "limit"),
        ("follower-changes?since=yesterday", "since"),
        ("follower-changes?before=-3", "before"),
    ] {
        let (status, body) = app.get(&format!("/v1/connections/{conn}/{query}")).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {body}");
        assert_eq!(body["error"]["field"], field, "{query}: {body}");
    }
    // A read-only key cannot ask for runs (they take the `connect` scope).
    let req = herald_jobs::api_keys::KeyRequest {
        tenant: Some("acme".into()),
        scopes: Some(vec!["read".into()]),
        ..Default::default()
    };
    let read_only = herald_jobs::api_keys::create(&app.parts.ctx.store, &req, chrono::Utc::now())
        .await
        .unwrap()
        .key;
    let (status, body) = app
        .call(
            Method::POST,
            &format!("/v1/connections/{conn}/sync"),
            Some(&read_only),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "insufficient_scope", "{body}");
}

/// The followers page of `relation` (`limit` and `before` as given).
async fn followers(app: &TestApp, conn: &str, query: &str) -> Value {
    let (status, body) = app
        .get(&format!("/v1/connections/{conn}/followers?{query}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// The local Mastodon's handles (`a@social.example`) by their user name.
fn short(handle: &Value) -> String {
    let h = handle.as_str().unwrap();
    h.split('@').next().unwrap_or(h).to_owned()
}

fn handles(list: &Value, key: &str) -> Vec<String> {
    list[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| short(&a["handle"]))
        .collect()
}

/// Waits until the sync named `run` and every run after it have finished (both relations).
async fn sync_done(app: &TestApp, conn: &str, run: &str) {
    eventually(Duration::from_secs(30), || async {
        let runs = app.parts.ctx.store.sync_runs(conn, 20).await.unwrap();
        let mine = runs.iter().find(|r| r.id == run)?;
        let open = runs
            .iter()
            .any(|r| matches!(r.state.as_str(), "queued" | "running"));
        (mine.state == "finished" && !open).then_some(())
    })
    .await
    .unwrap_or_else(|| {
        panic!("the sync {run} did not finish");
    });
}

async fn a_sync_asked_for_is_listed_with_its_gains_and_losses(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let conn = app.mastodon_connection().await;
    app.mastodon.set_graph(&["a", "b", "c"], &["x"], 2);
    // The first page is rate-limited: the run waits (paused, still running) for a second.
    app.mastodon.script_lists([ListReply::RateLimited {
        retry_after_secs: 1,
    }]);
    let first = accepted(&app, &conn, "sync").await;
    let run = first["run_id"].as_str().unwrap().to_owned();
    assert!(run.starts_with("fsr_"), "{first}");
    assert_eq!(first["queued_now"], true);
    let again = accepted(&app, &conn, "sync").await;
    assert_eq!(again["run_id"], run.as_str(), "{again}");
    assert_eq!(again["queued_now"], false);
    sync_done(&app, &conn, &run).await;

    let page = followers(&app, &conn, "").await;
    assert_eq!(page["relation"], "followers");
    assert_eq!(page["counts"], json!({ "followers": 3, "follows": 1 }));
    assert!(page["synced_at"].is_string(), "{page}");
    let mut seen = handles(&page, "accounts");
    seen.sort();
    assert_eq!(seen.len(), 3, "{page}");
    let follows = followers(&app, &conn, "relation=follows").await;
    assert_eq!(
        follows["accounts"].as_array().unwrap().len(),
        1,
        "{follows}"
    );

    // Paged newest first, two then one, each account once.
    let one = followers(&app, &conn, "limit=2").await;
    let before = one["next_before"].as_str().expect("a next page").to_owned();
    let two = followers(
        &app,
        &conn,
        &format!("limit=2&before={}", urlencoding(&before)),
    )
    .await;
    assert!(two["next_before"].is_null(), "{two}");
    let mut paged = handles(&one, "accounts");
    paged.extend(handles(&two, "accounts"));
    paged.sort();
    assert_eq!(paged, seen);

    // The next sync loses one follower and gains another.
    app.mastodon.set_graph(&["b", "c", "d"], &["x"], 2);
    let next = accepted(&app, &conn, "sync").await;
    let next_run = next["run_id"].as_str().unwrap().to_owned();
    assert_eq!(next["queued_now"], true, "{next}");
    assert_ne!(next_run, run);
    sync_done(&app, &conn, &next_run).await;

    let (status, changes) = app
        .get(&format!("/v1/connections/{conn}/follower-changes"))
        .await;
    assert_eq!(status, StatusCode::OK, "{changes}");
    let changes = changes["changes"].as_array().unwrap().clone();
    let of = |run: &str| -> Vec<(String, String, String)> {
        let mut v: Vec<_> = changes
            .iter()
            .filter(|c| c["run_id"] == run)
            .map(|c| {
                (
                    c["relation"].as_str().unwrap().to_owned(),
                    c["change"].as_str().unwrap().to_owned(),
                    short(&c["handle"]),
                )
            })
            .collect();
        v.sort();
        v
    };
    let t = |r: &str, c: &str, h: &str| (r.to_owned(), c.to_owned(), h.to_owned());
    assert_eq!(
        of(&next_run),
        vec![t("followers", "gained", "d"), t("followers", "lost", "a")]
    );
    assert_eq!(
        of(&run),
        vec![
            t("followers", "gained", "a"),
            t("followers", "gained", "b"),
            t("followers", "gained", "c"),
        ]
    );
    // The follows run of the first sync gained x; it is its own run.
    assert!(
        changes.iter().any(|c| c["relation"] == "follows"
            && short(&c["handle"]) == "x"
            && c["change"] == "gained"),
        "{changes:?}"
    );
    // Newest run first.
    assert_eq!(changes[0]["run_id"], next_run.as_str(), "{changes:?}");

    // `since` after the second sync finished leaves nothing; paging by one walks them all.
    let later = (chrono::Utc::now() + chrono::Duration::seconds(1)).to_rfc3339();
    let (_, none) = app
        .get(&format!(
            "/v1/connections/{conn}/follower-changes?since={}",
            urlencoding(&later)
        ))
        .await;
    assert_eq!(none["changes"], json!([]), "{none}");
    let mut walked = 0;
    let mut before: Option<String> = None;
    loop {
        let q = before
            .as_ref()
            .map_or("limit=1".to_owned(), |b| format!("limit=1&before={b}"));
        let (status, page) = app
            .get(&format!("/v1/connections/{conn}/follower-changes?{q}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        walked += page["changes"].as_array().unwrap().len();
        match page["next_before"].as_str() {
            Some(b) => before = Some(b.to_owned()),
            None => break,
        }
        assert!(walked <= changes.len(), "paging did not end");
    }
    assert_eq!(walked, changes.len());
}

fn urlencoding(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

async fn connections_show_the_name_the_platform_gives(engine: Engine) {
    let (app, _x) = with_x(engine).await;
    // Connected through X: X's name for the account.
    let conn = connect_x(&app).await;
    let (_, c) = app.get(&format!("/v1/connections/{conn}")).await;
    assert!(
        c["display_name"]
            .as_str()
            .is_some_and(|n| n.starts_with("User ")),
        "{c}"
    );
    // Imported: the name the app gives, or none.
    let (status, named) = app
        .post(
            "/v1/connections",
            json!({ "platform": "mastodon", "platform_account_id": "109", "handle": "alice@social.example",
                    "display_name": "  Alice L.  ", "access_token": app.mastodon.token,
                    "extras": { "instance_url": app.mastodon.base } }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{named}");
    assert_eq!(named["display_name"], "Alice L.");
    let unnamed = app
        .mastodon_connection_with(&app.key, "110", &app.mastodon.token.clone())
        .await;
    let (_, c) = app.get(&format!("/v1/connections/{unnamed}")).await;
    assert!(c["display_name"].is_null(), "{c}");
    let (status, body) = app
        .post(
            "/v1/connections",
            json!({ "platform": "mastodon", "platform_account_id": "111", "handle": "h",
                    "display_name": "n".repeat(256), "access_token": "t",
                    "extras": { "instance_url": app.mastodon.base } }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["field"], "display_name");
    // A reconnect verified by the platform takes the platform's name.
    let id = named["id"].as_str().unwrap();
    app.mastodon.script([Reply::InvalidToken]);
    let parked = app.share(id, "parked").await;
    assert_eq!(app.settled(&parked).await["state"], "parked");
    app.mastodon_connection().await;
    eventually(Duration::from_secs(20), || async {
        let (_, c) = app.get(&format!("/v1/connections/{id}")).await;
        (c["display_name"] == "Alice Liddell" && c["needs_reauth"] == false).then_some(())
    })
    .await
    .expect("the verified reconnect did not take Mastodon's display name");
}

on_every_backend!(
    a_refresh_asked_for_runs_as_the_run_it_answers_and_a_second_ask_finds_it,
    a_refresh_the_sweep_queued_is_the_one_an_app_gets,
    runs_are_refused_where_they_cannot_run_and_other_tenants_connections_are_unknown,
    a_sync_asked_for_is_listed_with_its_gains_and_losses,
    connections_show_the_name_the_platform_gives,
);
