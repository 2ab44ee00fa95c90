//! What an app does with its own shares after enqueueing them: retry a failed one, edit or
//! reschedule one that has not started (racing a worker for it), find them again by state,
//! connection, user, platform and time, and be stopped from posting the same thing twice.

use std::time::Duration;

use chrono::Utc;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{
    connect::{connect_x, with_x},
    on_every_backend,
    support::{Engine, Reply, TestApp, fast_settings},
};

on_every_backend!(
    a_tenant_retries_its_failed_share_with_a_fresh_budget,
    a_share_that_has_not_started_is_edited_and_posts_as_edited,
    an_edit_racing_a_worker_either_posts_or_is_refused,
    the_same_post_to_the_same_connection_is_refused_within_the_window,
    shares_are_listed_by_state_connection_user_platform_and_time,
);

fn code(body: &Value) -> (&str, &str) {
    (
        body["error"]["code"].as_str().unwrap_or(""),
        body["error"]["field"].as_str().unwrap_or(""),
    )
}

async fn patch(app: &TestApp, id: &str, body: Value) -> (StatusCode, Value) {
    app.call(
        Method::PATCH,
        &format!("/v1/shares/{id}"),
        Some(&app.key),
        Some(body),
    )
    .await
}

fn in_an_hour() -> String {
    (Utc::now() + chrono::Duration::hours(1)).to_rfc3339()
}

/// Enqueues a share for later and returns its id.
async fn later(app: &TestApp, conn: &str, text: &str) -> String {
    let (status, body) = app
        .post(
            "/v1/shares",
            json!({ "url": "https://blog.example/later", "text": text,
                    "publish_at": in_an_hour(), "connection_ids": [conn] }),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    body["shares"][0]["id"].as_str().unwrap().to_owned()
}

async fn a_tenant_retries_its_failed_share_with_a_fresh_budget(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let conn = app.mastodon_connection().await;
    app.mastodon
        .script([Reply::Unprocessable("Validation failed: try again later")]);
    let id = app.share(&conn, "Read this").await;
    let failed = app.settled(&id).await;
    assert_eq!(failed["state"], "failed", "{failed}");

    let (status, queued) = app.post(&format!("/v1/shares/{id}/retry"), json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{queued}");
    assert_eq!(queued["state"], "queued");
    let done = app.settled(&id).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let outcomes: Vec<&str> = done["attempt_history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["failed", "succeeded"]);
    assert_eq!(app.mastodon.statuses().len(), 1);

    // Only failed and expired shares are a tenant's to retry; the history says who asked.
    let (status, err) = app.post(&format!("/v1/shares/{id}/retry"), json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    assert_eq!(code(&err).0, "share_not_retryable");
    let op = app.operator_key().await;
    let (_, job) = app
        .call(Method::GET, &format!("/v1/jobs/{id}"), Some(&op), None)
        .await;
    assert_eq!(job["replays"][0]["from_state"], "failed", "{job}");

    // `force` needs a reason; another tenant's share is not found; an empty body is a retry.
    let (status, err) = app
        .post(&format!("/v1/shares/{id}/retry"), json!({ "force": true }))
        .await;
    assert_eq!(
        (status, code(&err)),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            ("reason_required", "reason")
        )
    );
    let other = app.key_for("globex").await;
    let (status, _) = app
        .call(
            Method::POST,
            &format!("/v1/shares/{id}/retry"),
            Some(&other),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app
        .call(
            Method::POST,
            "/v1/shares/shr_nope/retry",
            Some(&app.key),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn a_share_that_has_not_started_is_edited_and_posts_as_edited(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let conn = app.mastodon_connection().await;
    let id = later(&app, &conn, "first draft").await;
    let (_, before) = app.get(&format!("/v1/shares/{id}")).await;

    // Refused edits change nothing.
    for (body, want) in [
        (
            json!({ "text": "x".repeat(501) }),
            ("text_too_long", "text"),
        ),
        (
            json!({ "url": "ftp://blog.example/" }),
            ("invalid_url", "url"),
        ),
        (
            json!({ "publish_at": "2001-01-01T00:00:00Z" }),
            ("publish_at_in_past", "publish_at"),
        ),
        (
            json!({ "not_after": Utc::now().to_rfc3339() }),
            ("not_after_before_publish", "not_after"),
        ),
        (json!({ "state": "succeeded" }), ("unknown_field", "state")),
    ] {
        let (status, err) = patch(&app, &id, body.clone()).await;
        assert_eq!(
            (status, code(&err)),
            (StatusCode::UNPROCESSABLE_ENTITY, want),
            "{body}: {err}"
        );
    }
    let (_, unchanged) = app.get(&format!("/v1/shares/{id}")).await;
    assert_eq!(unchanged["text"], before["text"]);
    assert_eq!(unchanged["updated_at"], before["updated_at"]);

    // A new publish time moves the latest time with it.
    let publish = Utc::now() + chrono::Duration::hours(2);
    let (status, edited) = patch(
        &app,
        &id,
        json!({ "text": "final text", "url": "https://blog.example/final", "title": "",
                "publish_at": publish.to_rfc3339() }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{edited}");
    assert_eq!(edited["text"], "final text");
    assert_eq!(edited["url"], "https://blog.example/final");
    assert!(edited["title"].is_null(), "{edited}");
    let time = |v: &Value, f: &str| {
        chrono::DateTime::parse_from_rfc3339(v[f].as_str().unwrap())
            .unwrap()
            .with_timezone(&Utc)
    };
    assert_eq!(
        time(&edited, "not_after") - time(&edited, "run_at"),
        time(&before, "not_after") - time(&before, "run_at")
    );
    assert!(app.mastodon.statuses().is_empty());

    // Brought forward to now, it posts what the edit says.
    let (status, edited) = patch(&app, &id, json!({ "publish_at": Utc::now().to_rfc3339() })).await;
    assert_eq!(status, StatusCode::OK, "{edited}");
    let done = app.settled(&id).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(
        app.mastodon.received()[0].body["status"],
        "final text\n\nhttps://blog.example/final"
    );

    // Started is too late; another tenant's share is not found.
    let (status, err) = patch(&app, &id, json!({ "text": "too late" })).await;
    assert_eq!(
        (status, code(&err).0),
        (StatusCode::CONFLICT, "share_not_editable")
    );
    let other = app.key_for("globex").await;
    let (status, _) = app
        .call(
            Method::PATCH,
            &format!("/v1/shares/{id}"),
            Some(&other),
            Some(json!({ "text": "mine" })),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// Edits keep arriving while the share falls due and a worker claims it: whatever the
/// interleaving, the post carries the text of the last edit that was accepted, and every edit
/// after the claim is refused.
async fn an_edit_racing_a_worker_either_posts_or_is_refused(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let conn = app.mastodon_connection().await;
    let publish = Utc::now() + chrono::Duration::milliseconds(300);
    let (status, body) = app
        .post(
            "/v1/shares",
            json!({ "url": "https://blog.example/race", "text": "v0",
                    "publish_at": publish.to_rfc3339(), "connection_ids": [conn] }),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["shares"][0]["id"].as_str().unwrap().to_owned();
    let mut last = 0;
    let mut n = 0;
    loop {
        n += 1;
        let (status, body) = patch(&app, &id, json!({ "text": format!("v{n}") })).await;
        match status {
            StatusCode::OK => last = n,
            StatusCode::CONFLICT => {
                assert_eq!(code(&body).0, "share_not_editable", "{body}");
                break;
            }
            other => panic!("edit {n}: {other} {body}"),
        }
        assert!(n < 10_000, "the share was never claimed");
    }
    let done = app.settled(&id).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(
        app.mastodon.received()[0].body["status"],
        format!("v{last}\n\nhttps://blog.example/race")
    );
    assert_eq!(done["text"], format!("v{last}"));
}

async fn the_same_post_to_the_same_connection_is_refused_within_the_window(engine: Engine) {
    let mut settings = fast_settings();
    settings.duplicate_window = Duration::from_secs(48 * 3600);
    let app = TestApp::spawn_with(engine, true, settings).await;
    let conn = app.mastodon_connection().await;
    let other_conn = app
        .mastodon_connection_with(&app.key, "110", &app.mastodon.token.clone())
        .await;
    let post = |url: &str, text: &str, extra: Value| {
        let mut body = json!({ "url": url, "text": text, "connection_ids": [conn] });
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    let (status, first) = app
        .post(
            "/v1/shares",
            post("https://blog.example/a", "Read this", json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    let first_id = first["shares"][0]["id"].as_str().unwrap().to_owned();

    // The same link (tracking parameters and fragment aside) and text: refused, pointing at it.
    let (status, err) = app
        .post(
            "/v1/shares",
            post(
                "https://BLOG.example/a?utm_source=newsletter#comments",
                "  Read   this ",
                json!({}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    assert_eq!(code(&err), ("already_shared", "connection_ids[0]"));
    assert_eq!(err["error"]["share_id"], first_id.as_str());
    // Refused as a whole: the other target got nothing either.
    let mut both = post("https://blog.example/a", "Read this", json!({}));
    both["connection_ids"] = json!([other_conn, conn]);
    let (status, err) = app.post("/v1/shares", both).await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    assert_eq!(code(&err), ("already_shared", "connection_ids[1]"));
    let (_, listed) = app
        .get(&format!("/v1/shares?connection_id={other_conn}"))
        .await;
    assert_eq!(listed["shares"].as_array().unwrap().len(), 0, "{listed}");

    // Other text, or another connection, or saying so: accepted.
    for body in [
        post("https://blog.example/a", "Read this again", json!({})),
        post(
            "https://blog.example/a",
            "Read this",
            json!({ "allow_duplicate": true }),
        ),
        json!({ "url": "https://blog.example/a", "text": "Read this", "connection_ids": [other_conn] }),
    ] {
        let (status, res) = app.post("/v1/shares", body.clone()).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}: {res}");
    }

    // A repeated request with its Idempotency-Key gets its own shares back, not a refusal.
    let keyed = post("https://blog.example/keyed", "Keyed", json!({}));
    let send = || {
        app.http
            .post(format!("{}/v1/shares", app.base))
            .bearer_auth(&app.key)
            .header("Idempotency-Key", "k-1")
            .json(&keyed)
            .send()
    };
    let a: Value = send().await.unwrap().json().await.unwrap();
    let res = send().await.unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let b: Value = res.json().await.unwrap();
    assert_eq!(a["shares"][0]["id"], b["shares"][0]["id"]);

    // A share that was cancelled did not post: the same post may go again.
    let (status, res) = app
        .post(
            "/v1/shares",
            post(
                "https://blog.example/b",
                "Later",
                json!({ "publish_at": in_an_hour() }),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{res}");
    let cancelled = res["shares"][0]["id"].as_str().unwrap();
    let (status, _) = app
        .call(
            Method::DELETE,
            &format!("/v1/shares/{cancelled}"),
            Some(&app.key),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, res) = app
        .post(
            "/v1/shares",
            post("https://blog.example/b", "Later", json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{res}");

    // Requests racing each other with the same post: exactly one is accepted.
    let racers = (0..8).map(|_| {
        app.post(
            "/v1/shares",
            post("https://blog.example/race", "Racing", json!({})),
        )
    });
    let answers = futures::future::join_all(racers).await;
    let accepted = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::ACCEPTED)
        .count();
    assert_eq!(accepted, 1, "{answers:?}");
    assert!(
        answers
            .iter()
            .all(|(s, b)| *s == StatusCode::ACCEPTED || code(b).0 == "already_shared"),
        "{answers:?}"
    );
}

async fn shares_are_listed_by_state_connection_user_platform_and_time(engine: Engine) {
    let (app, _x) = with_x(engine).await;
    let x = connect_x(&app).await;
    let mastodon = app.mastodon_connection().await;
    app.mastodon
        .script([Reply::Unprocessable("Validation failed: no")]);
    let failed = app.share(&mastodon, "one").await;
    app.settled(&failed).await;
    let between = Utc::now();
    let posted = app.share(&mastodon, "two").await;
    let to_x = app.share(&x, "three").await;
    app.settled(&posted).await;

    let ids = |list: &Value| -> Vec<String> {
        list["shares"]
            .as_array()
            .unwrap_or_else(|| panic!("{list}"))
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let since = urlencoding(&between.to_rfc3339());
    for (query, want) in [
        (String::new(), vec![&to_x, &posted, &failed]),
        ("?state=failed".into(), vec![&failed]),
        (format!("?connection_id={x}"), vec![&to_x]),
        ("?user_id=u-1".into(), vec![&to_x]),
        ("?user_id=u-2".into(), vec![]),
        ("?platform=mastodon".into(), vec![&posted, &failed]),
        (format!("?created_since={since}"), vec![&to_x, &posted]),
        (format!("?created_before={since}"), vec![&failed]),
        (
            format!("?created_since={since}&platform=mastodon&state=succeeded"),
            vec![&posted],
        ),
        ("?limit=1".into(), vec![&to_x]),
        (format!("?limit=1&before={to_x}"), vec![&posted]),
    ] {
        let (status, list) = app.get(&format!("/v1/shares{query}")).await;
        assert_eq!(status, StatusCode::OK, "{query}: {list}");
        let want: Vec<String> = want.into_iter().cloned().collect();
        assert_eq!(ids(&list), want, "{query}");
    }
    // Another tenant's filters see none of them.
    let other = app.key_for("globex").await;
    let (_, list) = app
        .call(
            Method::GET,
            &format!("/v1/shares?connection_id={x}"),
            Some(&other),
            None,
        )
        .await;
    assert_eq!(ids(&list), Vec::<String>::new());
    for (query, want) in [
        ("?state=sent", ("invalid_state", "state")),
        ("?platform=myspace", ("unknown_platform", "platform")),
        (
            "?created_since=yesterday",
            ("invalid_time", "created_since"),
        ),
        (
            "?created_before=99999-01-01T00:00:00Z",
            ("invalid_time", "created_before"),
        ),
    ] {
        let (status, err) = app.get(&format!("/v1/shares{query}")).await;
        assert_eq!(
            (status, code(&err)),
            (StatusCode::UNPROCESSABLE_ENTITY, want),
            "{query}: {err}"
        );
    }
}

fn urlencoding(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
