//! A share from request to post, against a local server answering as Mastodon documents:
//! success, dead credentials, rejection, rate limits, outages, a lost answer, and a worker killed
//! mid-share.

use std::time::Duration;

use serde_json::Value;

use crate::{
    on_every_backend,
    support::{Engine, Reply, TestApp, eventually, fast_settings},
};

on_every_backend!(
    a_share_is_posted_once_with_the_share_id_as_idempotency_key,
    dead_credentials_park_the_share_and_later_shares_without_calling_the_platform,
    a_rejected_share_fails_with_the_platforms_reason,
    a_rate_limit_waits_as_long_as_the_platform_says,
    a_rate_limited_account_holds_its_other_shares_without_calling,
    an_outage_is_retried_with_the_same_idempotency_key,
    a_lost_answer_is_retried_under_the_same_key_and_posts_once,
    retries_are_bounded,
    a_worker_killed_mid_share_leaves_it_to_another_that_posts_it_once,
);

fn attempts(share: &Value) -> Vec<(String, Option<String>)> {
    share["attempt_history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["outcome"].as_str().unwrap_or("").to_owned(),
                a["error_class"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

async fn a_share_is_posted_once_with_the_share_id_as_idempotency_key(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let conn = app.mastodon_connection().await;
    let id = app.share(&conn, "Read this").await;
    let share = app.settled(&id).await;
    assert_eq!(share["state"], "succeeded", "{share}");
    assert_eq!(share["attempts"], 1);
    let statuses = app.mastodon.statuses();
    assert_eq!(statuses.len(), 1);
    assert_eq!(share["post"]["id"], statuses[0]["id"]);
    assert_eq!(share["post"]["url"], statuses[0]["url"]);
    let req = &app.mastodon.received()[0];
    assert_eq!(req.headers["idempotency-key"], id.as_str());
    assert_eq!(
        req.headers["authorization"],
        format!("Bearer {}", app.mastodon.token).as_str()
    );
    assert_eq!(
        req.body["status"],
        "Read this\n\nhttps://blog.example/post/1"
    );
    assert_eq!(req.body["visibility"], "public");
    assert_eq!(attempts(&share), vec![("succeeded".to_owned(), None)]);
}

async fn dead_credentials_park_the_share_and_later_shares_without_calling_the_platform(
    engine: Engine,
) {
    let app = TestApp::spawn(engine).await;
    let conn = app.mastodon_connection().await;
    app.mastodon.script([Reply::InvalidToken]);
    let first = app.share(&conn, "one").await;
    let share = app.settled(&first).await;
    assert_eq!(share["state"], "parked", "{share}");
    assert_eq!(share["last_error"]["class"], "needs_reauth");
    let (_, c) = app.get(&format!("/v1/connections/{conn}")).await;
    assert_eq!(c["needs_reauth"], true);
    assert_eq!(c["last_error"], "The access token is invalid");
    let (_, flagged) = app.get("/v1/connections?needs_reauth=true").await;
    assert_eq!(flagged["connections"][0]["id"], conn.as_str());

    let calls = app.mastodon.received().len();
    let second = app.share(&conn, "two").await;
    let share = app.settled(&second).await;
    assert_eq!(share["state"], "parked");
    assert_eq!(
        app.mastodon.received().len(),
        calls,
        "a parked share called the platform"
    );
    let metrics = app
        .http
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("herald_jobs_parked_total{"), "{metrics}");
}

async fn a_rejected_share_fails_with_the_platforms_reason(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let conn = app.mastodon_connection().await;
    app.mastodon.script([Reply::Unprocessable(
        "Validation failed: Text character limit of 500 exceeded",
    )]);
    let id = app.share(&conn, "too long for this instance").await;
    let share = app.settled(&id).await;
    assert_eq!(share["state"], "failed");
    assert_eq!(share["attempts"], 1, "a rejection was retried");
    assert_eq!(share["last_error"]["class"], "rejected");
    assert_eq!(share["last_error"]["platform_status"], 422);
    assert_eq!(
        share["last_error"]["message"],
        "Validation failed: Text character limit of 500 exceeded"
    );
    assert!(share["post"].is_null());
}

async fn a_rate_limit_waits_as_long_as_the_platform_says(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let conn = app.mastodon_connection().await;
    let reset = (chrono::Utc::now() + chrono::Duration::seconds(2))
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    app.mastodon.script([
        Reply::RateLimited(vec![("retry-after", "1".into())]),
        Reply::RateLimited(vec![
            ("x-ratelimit-limit", "300".into()),
            ("x-ratelimit-remaining", "0".into()),
            ("x-ratelimit-reset", reset),
        ]),
    ]);
    let id = app.share(&conn, "later").await;
    let share = app
        .share_until(&id, Duration::from_secs(20), |s| s["state"] == "succeeded")
        .await;
    let outcomes = attempts(&share);
    assert_eq!(outcomes.len(), 3, "{share}");
    assert_eq!(outcomes[0].1.as_deref(), Some("rate_limited"));
    assert_eq!(outcomes[1].1.as_deref(), Some("rate_limited"));
    let history = share["attempt_history"].as_array().unwrap();
    let at = |i: usize, k: &str| {
        chrono::DateTime::parse_from_rfc3339(history[i][k].as_str().unwrap()).unwrap()
    };
    // Retry-After: 1 s; then X-RateLimit-Reset about 2 s after the share was made.
    assert!(at(1, "started_at") - at(0, "finished_at") >= chrono::Duration::milliseconds(950));
    assert!(at(2, "started_at") - at(1, "finished_at") >= chrono::Duration::milliseconds(500));
    assert_eq!(app.mastodon.statuses().len(), 1);
}

async fn an_outage_is_retried_with_the_same_idempotency_key(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let conn = app.mastodon_connection().await;
    app.mastodon
        .script([Reply::Unavailable, Reply::Unavailable]);
    let id = app.share(&conn, "again").await;
    let share = app
        .share_until(&id, Duration::from_secs(20), |s| s["state"] == "succeeded")
        .await;
    assert_eq!(share["attempts"], 3);
    let outcomes = attempts(&share);
    assert_eq!(
        outcomes[0],
        ("retried".to_owned(), Some("transient".to_owned()))
    );
    assert_eq!(share["attempt_history"][0]["platform_status"], 503);
    let keys: Vec<String> = app
        .mastodon
        .received()
        .iter()
        .map(|r| r.headers["idempotency-key"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(keys, vec![id.clone(), id.clone(), id]);
}

async fn a_lost_answer_is_retried_under_the_same_key_and_posts_once(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let conn = app.mastodon_connection().await;
    app.mastodon.script([Reply::CreateThenHang]);
    let id = app.share(&conn, "once").await;
    let share = app
        .share_until(&id, Duration::from_secs(20), |s| s["state"] == "succeeded")
        .await;
    assert_eq!(
        app.mastodon.received().len(),
        2,
        "the lost answer was not retried exactly once"
    );
    assert_eq!(app.mastodon.statuses().len(), 1, "the retry posted twice");
    assert_eq!(share["post"]["id"], app.mastodon.statuses()[0]["id"]);
    assert_eq!(attempts(&share)[0].1.as_deref(), Some("transient"));
}

async fn retries_are_bounded(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let conn = app.mastodon_connection().await;
    app.mastodon
        .script(std::iter::repeat_n(Reply::Unavailable, 10));
    let id = app.share(&conn, "never").await;
    let share = app.settled(&id).await;
    assert_eq!(share["state"], "failed", "{share}");
    assert_eq!(share["attempts"], 4);
    assert!(
        share["last_error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("gave up after 4 attempts")
    );
    assert_eq!(app.mastodon.received().len(), 4);
}

async fn a_worker_killed_mid_share_leaves_it_to_another_that_posts_it_once(engine: Engine) {
    let app = TestApp::spawn_with(engine, false, fast_settings()).await;
    let conn = app.mastodon_connection().await;
    app.mastodon.script([Reply::CreateThenHang]);
    let id = app.share(&conn, "crash").await;
    let mut first = app.worker_process(&[]);
    eventually(Duration::from_secs(20), || async {
        (!app.mastodon.received().is_empty()).then_some(())
    })
    .await
    .expect("the first worker never called the platform");
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    let (_, running) = app.get(&format!("/v1/shares/{id}")).await;
    assert_eq!(running["state"], "running", "{running}");

    // Another worker takes the share over once the dead worker's lease (3 s) lapses.
    let _second = app.worker_process(&[]);
    let share = app
        .share_until(&id, Duration::from_secs(30), |s| s["state"] == "succeeded")
        .await;
    assert_eq!(
        app.mastodon.statuses().len(),
        1,
        "the share was posted twice"
    );
    assert_eq!(share["attempts"], 2);
    let keys: Vec<String> = app
        .mastodon
        .received()
        .iter()
        .map(|r| r.headers["idempotency-key"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(keys, vec![id.clone(), id]);
}

async fn a_rate_limited_account_holds_its_other_shares_without_calling(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let conn = app.mastodon_connection().await;
    app.mastodon
        .script([Reply::RateLimited(vec![("retry-after", "2".into())])]);
    let first = app.share(&conn, "first").await;
    app.share_until(&first, Duration::from_secs(10), |s| {
        s["attempt_history"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    })
    .await;
    let second = app.share(&conn, "second").await;
    for id in [&first, &second] {
        app.share_until(id, Duration::from_secs(20), |s| s["state"] == "succeeded")
            .await;
    }
    // One 429, then one post each: the second share waited out the limit without a call.
    assert_eq!(
        app.mastodon.received().len(),
        3,
        "{:?}",
        app.mastodon.received().len()
    );
    let (_, s) = app.get(&format!("/v1/shares/{second}")).await;
    assert_eq!(s["attempts"], 1);
    assert_eq!(attempts(&s), vec![("succeeded".to_owned(), None)]);
}
