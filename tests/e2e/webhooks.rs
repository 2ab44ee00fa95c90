//! Signed lifecycle webhooks: a local receiver records what Herald sends, and the PyPI
//! `standardwebhooks` library verifies the signatures as an app would.

use std::time::Duration;

use herald_jobs::payloads::FollowerSyncV1;
use herald_platforms::testing::x::Failure;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{
    on_every_backend,
    support::{
        Engine, FakeX, Reply, TestApp, eventually, fast_settings,
        receiver::{Answer, Hook, Receiver, verify},
    },
};

on_every_backend!(
    a_share_outcome_reaches_only_its_tenants_endpoint_signed_as_standard_webhooks_verify,
    each_event_type_fires_once_for_its_cause_in_the_order_it_happened,
    a_receiver_down_for_a_while_gets_every_event_later_in_order,
    a_410_disables_the_endpoint_and_the_tenant_sees_why,
    resend_and_replay_send_the_same_event_again,
    a_rotated_secret_signs_beside_the_new_one,
    a_worker_killed_mid_delivery_leaves_it_to_another_that_delivers_it,
    a_dead_endpoint_does_not_delay_another_tenants,
    bad_endpoints_are_refused_and_nothing_is_written,
    a_share_whose_answer_was_lost_for_good_is_announced_outcome_unknown,
    the_third_failed_refresh_in_a_day_announces_refresh_failing_once,
    an_endpoint_failing_for_five_days_is_disabled_with_its_reason,
    a_huge_or_endless_answer_is_read_only_in_part_and_never_holds_a_worker,
    two_worker_processes_send_each_event_once,
);

/// Creates an endpoint with `key`; returns its id and secret.
async fn endpoint(app: &TestApp, key: &str, url: &str, types: Option<&[&str]>) -> (String, String) {
    let mut body = json!({ "url": url, "description": "the app's receiver" });
    if let Some(types) = types {
        body["event_types"] = json!(types);
    }
    let (status, created) = app
        .call(Method::POST, "/v1/webhooks", Some(key), Some(body))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    (
        created["id"].as_str().unwrap().to_owned(),
        created["secret"].as_str().unwrap().to_owned(),
    )
}

async fn deliveries(app: &TestApp, key: &str, hook: &str) -> Vec<Value> {
    let (status, list) = app
        .call(
            Method::GET,
            &format!("/v1/webhooks/{hook}/deliveries"),
            Some(key),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    list["deliveries"].as_array().unwrap().clone()
}

/// The endpoint's delivery log once no delivery is mid-send: the receiver has an event a moment
/// before the worker records its answer.
async fn settled_deliveries(app: &TestApp, key: &str, hook: &str) -> Vec<Value> {
    eventually(Duration::from_secs(10), || async {
        let log = deliveries(app, key, hook).await;
        log.iter().all(|d| d["state"] != "sending").then_some(log)
    })
    .await
    .unwrap_or_else(|| panic!("a delivery to {hook} stayed in flight for 10 s"))
}

fn kinds(hooks: &[Hook]) -> Vec<String> {
    hooks.iter().map(Hook::kind).collect()
}

async fn a_share_outcome_reaches_only_its_tenants_endpoint_signed_as_standard_webhooks_verify(
    engine: Engine,
) {
    let app = TestApp::spawn(engine).await;
    let (ours, theirs) = (Receiver::start().await, Receiver::start().await);
    let (hook, secret) = endpoint(&app, &app.key, &ours.url, None).await;
    assert!(secret.starts_with("whsec_"), "{secret}");
    // The secret is shown once.
    let (status, shown) = app.get(&format!("/v1/webhooks/{hook}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(shown.get("secret").is_none(), "{shown}");
    assert!(shown["event_types"].is_null());
    let globex = app.key_for("globex").await;
    let (their_hook, _) = endpoint(&app, &globex, &theirs.url, None).await;
    // Another tenant's endpoint is not found with our key.
    let (status, _) = app.get(&format!("/v1/webhooks/{their_hook}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let conn = app.mastodon_connection().await;
    let share = app.share(&conn, "hello").await;
    let got = ours.first("share.succeeded").await;
    let body = got.json();
    assert_eq!(body["id"], got.id().as_str());
    assert_eq!(body["data"]["share_id"], share.as_str());
    assert_eq!(body["data"]["connection_id"], conn.as_str());
    assert!(body["data"]["post_id"].is_string(), "{body}");
    assert!(body["data"]["post_url"].is_string(), "{body}");
    assert!(
        !got.body.contains(&app.mastodon.token),
        "a token in a webhook"
    );
    assert!(got.headers["webhook-signature"].starts_with("v1,"));

    assert_eq!(verify(&secret, std::slice::from_ref(&got)), vec![Ok(())]);
    let mut tampered = got.clone();
    tampered.body.push(' ');
    let mut old = got.clone();
    old.headers.insert(
        "webhook-timestamp".into(),
        (chrono::Utc::now().timestamp() - 600).to_string(),
    );
    let refused = verify(&secret, &[tampered, old]);
    assert!(
        refused[0]
            .as_ref()
            .unwrap_err()
            .contains("No matching signature"),
        "{refused:?}"
    );
    assert!(
        refused[1].as_ref().unwrap_err().contains("too old"),
        "{refused:?}"
    );
    // Another secret does not verify it.
    let other = verify(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        std::slice::from_ref(&got),
    );
    assert!(other[0].is_err(), "{other:?}");

    // A test event, to this endpoint only.
    let (status, sent) = app
        .post(&format!("/v1/webhooks/{hook}/test"), json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{sent}");
    let test = ours.first("webhook.test").await;
    assert_eq!(test.id(), sent["event_id"].as_str().unwrap());
    assert_eq!(verify(&secret, &[test]), vec![Ok(())]);

    // The other tenant's endpoint was never given an event of ours: its delivery log is empty
    // (deliveries are written with the event, in the share's transaction).
    assert!(deliveries(&app, &globex, &their_hook).await.is_empty());
    assert!(theirs.hooks().is_empty());
    let log = settled_deliveries(&app, &app.key, &hook).await;
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[1]["event_type"], "share.succeeded");
    assert_eq!(log[1]["state"], "delivered");
    assert_eq!(log[1]["last_status"], 200);
    assert_eq!(log[1]["last_response"], "thanks");
    assert_eq!(log[1]["attempts"], 1);
}

async fn reimport(app: &TestApp) {
    let (status, body) = app
        .post("/v1/connections", json!({
            "platform": "mastodon", "platform_account_id": "109", "handle": "alice@social.example",
            "access_token": app.mastodon.token, "extras": { "instance_url": app.mastodon.base },
        }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

async fn each_event_type_fires_once_for_its_cause_in_the_order_it_happened(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let receiver = Receiver::start().await;
    let (_, secret) = endpoint(&app, &app.key, &receiver.url, None).await;
    let conn = app.mastodon_connection().await;

    // Rejected: share.failed.
    app.mastodon
        .script([Reply::Unprocessable("Validation failed: Text is too long")]);
    let failed = app.share(&conn, "too long").await;
    assert_eq!(app.settled(&failed).await["state"], "failed");

    // Dead credentials: the share parks and the connection is flagged; a share after it parks
    // too, and so does one that will be past its lateness limit when the account is back.
    app.mastodon.script([Reply::InvalidToken]);
    let first = app.share(&conn, "first").await;
    assert_eq!(app.settled(&first).await["state"], "parked");
    let second = app.share(&conn, "second").await;
    assert_eq!(app.settled(&second).await["state"], "parked");
    let not_after = (chrono::Utc::now() + chrono::Duration::milliseconds(1500)).to_rfc3339();
    let (_, late) = app
        .post("/v1/shares", json!({ "url": "https://blog.example/late", "text": "late", "not_after": not_after, "connection_ids": [conn] }))
        .await;
    let late = late["shares"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(app.settled(&late).await["state"], "parked");
    eventually(Duration::from_secs(5), || async {
        (chrono::Utc::now().to_rfc3339() > not_after).then_some(())
    })
    .await;

    // Reconnected: the parked shares resume (and post), the late one expires.
    reimport(&app).await;
    for id in [&first, &second] {
        app.share_until(id, Duration::from_secs(20), |s| s["state"] == "succeeded")
            .await;
    }

    // Cancelled before it ran.
    let publish_at = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let (_, later) = app
        .post("/v1/shares", json!({ "url": "https://blog.example/later", "text": "later", "publish_at": publish_at, "connection_ids": [conn] }))
        .await;
    let later = later["shares"][0]["id"].as_str().unwrap().to_owned();
    let (status, _) = app
        .call(
            Method::DELETE,
            &format!("/v1/shares/{later}"),
            Some(&app.key),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // A follower sync: one event per relation.
    app.mastodon.set_graph(&["a", "b", "c"], &["x"], 2);
    app.enqueue(
        &FollowerSyncV1 {
            connection_id: conn.clone(),
            resume: false,
            retry: 0,
            run: None,
        },
        "sync-1",
    )
    .await;
    receiver
        .until("two followers.synced", |got| {
            got.iter()
                .filter(|h| h.kind() == "followers.synced")
                .count()
                == 2
        })
        .await;

    // Removed: connection.revoked, the last event.
    let (status, _) = app
        .call(
            Method::DELETE,
            &format!("/v1/connections/{conn}"),
            Some(&app.key),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let got = receiver
        .until("connection.revoked", |got| {
            got.iter().any(|h| h.kind() == "connection.revoked")
        })
        .await;

    let count = |kind: &str| got.iter().filter(|h| h.kind() == kind).count();
    for (kind, n) in [
        ("share.failed", 1),
        ("share.parked", 3),
        ("connection.needs_reauth", 1),
        ("connection.reconnected", 1),
        ("share.succeeded", 2),
        ("share.expired", 1),
        ("share.cancelled", 1),
        ("followers.synced", 2),
        ("connection.revoked", 1),
    ] {
        assert_eq!(count(kind), n, "{kind} in {:?}", kinds(&got));
    }
    // Every id once: nothing was sent twice.
    let mut ids: Vec<String> = got.iter().map(Hook::id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), got.len());
    assert!(verify(&secret, &got).iter().all(Result::is_ok));

    // What each says, and the order of each subject's events.
    let of = |id: &str| -> Vec<String> {
        got.iter()
            .filter(|h| h.json()["data"]["share_id"] == id)
            .map(Hook::kind)
            .collect()
    };
    assert_eq!(of(&first), ["share.parked", "share.succeeded"]);
    assert_eq!(of(&second), ["share.parked", "share.succeeded"]);
    assert_eq!(of(&late), ["share.parked", "share.expired"]);
    let failed_event = got
        .iter()
        .find(|h| h.kind() == "share.failed")
        .unwrap()
        .json();
    assert_eq!(failed_event["data"]["error"]["class"], "rejected");
    assert_eq!(failed_event["data"]["error"]["platform_status"], 422);
    assert!(
        failed_event["data"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Text is too long")
    );
    let connection: Vec<Value> = got
        .iter()
        .filter(|h| h.kind().starts_with("connection."))
        .map(Hook::json)
        .collect();
    let connection_kinds: Vec<&str> = connection
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        connection_kinds,
        [
            "connection.needs_reauth",
            "connection.reconnected",
            "connection.revoked"
        ]
    );
    assert!(
        connection[0]["data"]["reason"].is_string(),
        "{}",
        connection[0]
    );
    let synced = got
        .iter()
        .find(|h| h.json()["data"]["relation"] == "followers")
        .unwrap()
        .json();
    assert_eq!(synced["data"]["count"], 3);
    assert_eq!(synced["data"]["gained"], 3);
    assert_eq!(synced["data"]["lost"], 0);
}

async fn a_receiver_down_for_a_while_gets_every_event_later_in_order(engine: Engine) {
    let mut settings = fast_settings();
    settings.webhooks.retry_schedule =
        herald_jobs::webhooks::schedule::parse_schedule("300ms,600ms,1200ms,2400ms,4800ms")
            .unwrap();
    let app = TestApp::spawn_with(engine, true, settings).await;
    let receiver = Receiver::start().await;
    let (hook, _) = endpoint(&app, &app.key, &receiver.url, None).await;
    // Down: 503 for its first few requests, then a 429 asking for a second.
    receiver.script([
        Answer::Status(503),
        Answer::Status(503),
        Answer::Status(502),
        Answer::RetryAfter(429, 1),
    ]);
    let conn = app.mastodon_connection().await;
    app.mastodon.script([Reply::InvalidToken]);
    let first = app.share(&conn, "first").await;
    assert_eq!(app.settled(&first).await["state"], "parked");
    reimport(&app).await;
    app.share_until(&first, Duration::from_secs(20), |s| {
        s["state"] == "succeeded"
    })
    .await;
    let got = receiver
        .until("every event", |got| {
            let ok: Vec<&Hook> = got.iter().skip(4).collect();
            ok.iter().any(|h| h.kind() == "share.succeeded")
                && ok.iter().any(|h| h.kind() == "connection.reconnected")
        })
        .await;
    // The share's events and the connection's, each in the order they happened, every one
    // accepted once the receiver was back (a refused attempt is sent again under the same id).
    let accepted: Vec<&Hook> = got.iter().skip(4).collect();
    let order = |prefix: &str| -> Vec<String> {
        let mut seen: Vec<String> = Vec::new();
        for h in &accepted {
            if h.kind().starts_with(prefix) && !seen.contains(&h.kind()) {
                seen.push(h.kind());
            }
        }
        seen
    };
    assert_eq!(order("share."), ["share.parked", "share.succeeded"]);
    assert_eq!(
        order("connection."),
        ["connection.needs_reauth", "connection.reconnected"]
    );
    let refused: Vec<String> = got.iter().take(4).map(Hook::id).collect();
    for id in refused {
        assert!(
            accepted.iter().any(|h| h.id() == id),
            "{id} was never resent"
        );
    }
    let log = settled_deliveries(&app, &app.key, &hook).await;
    assert!(log.iter().all(|d| d["state"] == "delivered"), "{log:?}");
    assert!(
        log.iter().any(|d| d["attempts"].as_i64().unwrap() > 1),
        "{log:?}"
    );
    let (_, shown) = app.get(&format!("/v1/webhooks/{hook}")).await;
    assert!(shown["failing_since"].is_null(), "{shown}");
}

async fn a_410_disables_the_endpoint_and_the_tenant_sees_why(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let receiver = Receiver::start().await;
    receiver.answer(Answer::Status(410));
    let (hook, _) = endpoint(&app, &app.key, &receiver.url, None).await;
    let (status, _) = app
        .post(&format!("/v1/webhooks/{hook}/test"), json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let shown = eventually(Duration::from_secs(10), || async {
        let (_, shown) = app.get(&format!("/v1/webhooks/{hook}")).await;
        (shown["enabled"] == false).then_some(shown)
    })
    .await
    .expect("a 410 never disabled the endpoint");
    assert!(
        shown["disabled_reason"].as_str().unwrap().contains("410"),
        "{shown}"
    );
    let log = deliveries(&app, &app.key, &hook).await;
    assert_eq!(log[0]["state"], "failed");
    assert_eq!(log[0]["last_status"], 410);
    assert_eq!(log[0]["attempts"], 1);
    // Disabled: nothing more is sent, and a test is refused.
    let conn = app.mastodon_connection().await;
    let share = app.share(&conn, "unheard").await;
    assert_eq!(app.settled(&share).await["state"], "succeeded");
    let (status, body) = app
        .post(&format!("/v1/webhooks/{hook}/test"), json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "endpoint_disabled");
    assert_eq!(receiver.hooks().len(), 1);
    // Enabled again, it gets what it missed through a replay.
    receiver.answer(Answer::Ok);
    let (status, body) = app
        .call(
            Method::PATCH,
            &format!("/v1/webhooks/{hook}"),
            Some(&app.key),
            Some(json!({ "enabled": true })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["disabled_reason"].is_null());
    let (status, body) = app
        .post(&format!("/v1/webhooks/{hook}/replay?since=1h"), json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    receiver.first("share.succeeded").await;
}

async fn resend_and_replay_send_the_same_event_again(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let receiver = Receiver::start().await;
    let (hook, secret) = endpoint(&app, &app.key, &receiver.url, Some(&["share.succeeded"])).await;
    let conn = app.mastodon_connection().await;
    app.mastodon.script([Reply::Unprocessable("no")]);
    let failed = app.share(&conn, "unwanted").await;
    assert_eq!(app.settled(&failed).await["state"], "failed");
    let first = app.share(&conn, "one").await;
    let second = app.share(&conn, "two").await;
    receiver.until("two successes", |got| got.len() == 2).await;
    let log = deliveries(&app, &app.key, &hook).await;
    assert_eq!(log.len(), 2, "only the subscribed type: {log:?}");
    let newest = log[0]["id"].as_str().unwrap();
    let (status, resent) = app
        .post(
            &format!("/v1/webhooks/{hook}/deliveries/{newest}/resend"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{resent}");
    let got = receiver.until("the resend", |got| got.len() == 3).await;
    assert_eq!(got[2].id(), log[0]["event_id"].as_str().unwrap());
    let (status, _) = app
        .post(
            &format!("/v1/webhooks/{hook}/deliveries/whd_unknown/resend"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, replay) = app
        .post(&format!("/v1/webhooks/{hook}/replay?since=1h"), json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{replay}");
    assert_eq!(replay["deliveries"], 2);
    let got = receiver.until("the replay", |got| got.len() == 5).await;
    let shares: Vec<String> = got[3..]
        .iter()
        .map(|h| h.json()["data"]["share_id"].as_str().unwrap().to_owned())
        .collect();
    let mut expected = vec![first, second];
    expected.sort();
    let mut shares_sorted = shares.clone();
    shares_sorted.sort();
    assert_eq!(shares_sorted, expected);
    assert!(verify(&secret, &got).iter().all(Result::is_ok));
    let (status, body) = app
        .post(
            &format!("/v1/webhooks/{hook}/replay?since=yesterday"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["field"], "since");
}

async fn a_rotated_secret_signs_beside_the_new_one(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let receiver = Receiver::start().await;
    let (hook, old) = endpoint(&app, &app.key, &receiver.url, None).await;
    let (status, rotated) = app
        .post(&format!("/v1/webhooks/{hook}/rotate-secret"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let new = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert!(
        rotated["previous_secret_expires_at"].is_string(),
        "{rotated}"
    );
    app.post(&format!("/v1/webhooks/{hook}/test"), json!({}))
        .await;
    let got = receiver.first("webhook.test").await;
    assert_eq!(got.headers["webhook-signature"].split(' ').count(), 2);
    assert_eq!(verify(&new, std::slice::from_ref(&got)), vec![Ok(())]);
    assert_eq!(verify(&old, &[got]), vec![Ok(())]);
}

async fn a_worker_killed_mid_delivery_leaves_it_to_another_that_delivers_it(engine: Engine) {
    let app = TestApp::spawn_with(engine, false, fast_settings()).await;
    let receiver = Receiver::start().await;
    receiver.script([Answer::Hang]);
    let (hook, secret) = endpoint(&app, &app.key, &receiver.url, None).await;
    let conn = app.mastodon_connection().await;
    let env = [("HERALD_WEBHOOK_TIMEOUT_SECS", "2")];
    let mut first = app.worker_process(&env);
    let share = app.share(&conn, "crash").await;
    receiver.first("share.succeeded").await;
    // The share's outcome is committed and its event is being sent: kill the worker.
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    assert_eq!(app.settled(&share).await["state"], "succeeded");

    // Another worker sends it again once the dead worker's lease (4 s) lapses.
    let _second = app.worker_process(&env);
    let got = receiver
        .until("the event again", |got| got.len() == 2)
        .await;
    assert_eq!(
        got[0].id(),
        got[1].id(),
        "the same event, the same webhook-id"
    );
    assert_eq!(verify(&secret, &got[1..]), vec![Ok(())]);
    let log = eventually(Duration::from_secs(10), || async {
        let log = deliveries(&app, &app.key, &hook).await;
        (log[0]["state"] == "delivered").then_some(log)
    })
    .await
    .expect("the delivery was never recorded as delivered");
    assert_eq!(log[0]["attempts"], 2);
}

async fn a_dead_endpoint_does_not_delay_another_tenants(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let dead = Receiver::start().await;
    dead.answer(Answer::Hang);
    let alive = Receiver::start().await;
    let (dead_hook, _) = endpoint(&app, &app.key, &dead.url, None).await;
    // Many events to the dead endpoint, each held for the whole 2 s timeout.
    for _ in 0..6 {
        app.post(&format!("/v1/webhooks/{dead_hook}/test"), json!({}))
            .await;
    }
    let globex = app.key_for("globex").await;
    let (alive_hook, _) = endpoint(&app, &globex, &alive.url, None).await;
    let started = std::time::Instant::now();
    let (status, _) = app
        .call(
            Method::POST,
            &format!("/v1/webhooks/{alive_hook}/test"),
            Some(&globex),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    alive.first("webhook.test").await;
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "the live endpoint waited {:?} behind the dead one",
        started.elapsed()
    );
}

async fn bad_endpoints_are_refused_and_nothing_is_written(engine: Engine) {
    let mut settings = fast_settings();
    settings.ssrf = herald_platforms::ssrf::SsrfGuard::strict();
    let app = TestApp::spawn_with(engine, false, settings).await;
    for (body, field, code) in [
        (
            json!({ "url": "https://127.0.0.1/hook" }),
            "url",
            "invalid_url",
        ),
        (
            json!({ "url": "https://10.1.2.3/hook" }),
            "url",
            "invalid_url",
        ),
        (
            json!({ "url": "http://hooks.example.com/hook" }),
            "url",
            "invalid_url",
        ),
        (
            json!({ "url": "https://[::ffff:127.0.0.1]/hook" }),
            "url",
            "invalid_url",
        ),
        (
            json!({ "url": "https://hooks.example.com/x", "event_types": [] }),
            "event_types",
            "invalid_event_types",
        ),
        (
            json!({ "url": "https://hooks.example.com/x", "event_types": ["share.posted"] }),
            "event_types[0]",
            "unknown_event_type",
        ),
        (
            json!({ "url": "https://hooks.example.com/x", "secret": "mine" }),
            "secret",
            "unknown_field",
        ),
    ] {
        let (status, refused) = app.post("/v1/webhooks", body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body} {refused}");
        assert_eq!(refused["error"]["field"], field, "{body} {refused}");
        assert_eq!(refused["error"]["code"], code, "{body} {refused}");
    }
    let (_, list) = app.get("/v1/webhooks").await;
    assert_eq!(list["webhooks"], json!([]));
    let (status, created) = app
        .post(
            "/v1/webhooks",
            json!({ "url": "https://hooks.example.com/x" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap();
    let (status, refused) = app
        .call(
            Method::PATCH,
            &format!("/v1/webhooks/{id}"),
            Some(&app.key),
            Some(json!({ "url": "https://192.168.0.1/x" })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    let (_, shown) = app.get(&format!("/v1/webhooks/{id}")).await;
    assert_eq!(shown["url"], "https://hooks.example.com/x");
    let (status, _) = app
        .call(
            Method::DELETE,
            &format!("/v1/webhooks/{id}"),
            Some(&app.key),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = app.get(&format!("/v1/webhooks/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// A Herald with X's fake configured, a receiver, and an X connection made through the connect
/// flow.
async fn with_x(engine: Engine) -> (TestApp, FakeX, Receiver, String) {
    let x = FakeX::start().await;
    let mut settings = fast_settings();
    settings.apps.x = Some(x.app());
    let app = TestApp::spawn_with(engine, true, settings).await;
    let receiver = Receiver::start().await;
    let conn = crate::connect::connect_x(&app).await;
    (app, x, receiver, conn)
}

async fn a_share_whose_answer_was_lost_for_good_is_announced_outcome_unknown(engine: Engine) {
    let (app, x, receiver, conn) = with_x(engine).await;
    endpoint(&app, &app.key, &receiver.url, None).await;
    // X does not deduplicate a repeated create: a post whose answer never came is not retried.
    x.fail_next(Failure::Hang);
    let share = app.share(&conn, "lost").await;
    assert_eq!(app.settled(&share).await["state"], "outcome_unknown");
    let got = receiver.first("share.outcome_unknown").await.json();
    assert_eq!(got["data"]["share_id"], share.as_str());
    assert_eq!(got["data"]["error"]["class"], "outcome_unknown");
    assert_eq!(kinds(&receiver.hooks()), ["share.outcome_unknown"]);
}

async fn the_third_failed_refresh_in_a_day_announces_refresh_failing_once(engine: Engine) {
    use herald_jobs::handlers::refresh::{Refresh, refresh_connection};
    let (app, x, receiver, conn) = with_x(engine).await;
    let (hook, _) = endpoint(
        &app,
        &app.key,
        &receiver.url,
        Some(&["connection.refresh_failing"]),
    )
    .await;
    // X's token endpoint answers slower than the platform timeout: each refresh fails, transient.
    x.slow_refreshes(Duration::from_secs(3));
    for _ in 0..4 {
        let r = refresh_connection(&app.parts.ctx, &conn).await.unwrap();
        assert!(matches!(r, Refresh::Transient(_)), "{r:?}");
    }
    let got = receiver.first("connection.refresh_failing").await.json();
    assert_eq!(got["data"]["connection_id"], conn.as_str());
    assert_eq!(got["data"]["platform"], "x");
    let reason = got["data"]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("3 failed token refreshes in 24 hours"),
        "{reason}"
    );
    // The fourth failure is the same streak: no second event.
    assert_eq!(deliveries(&app, &app.key, &hook).await.len(), 1);
}

async fn an_endpoint_failing_for_five_days_is_disabled_with_its_reason(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let receiver = Receiver::start().await;
    receiver.answer(Answer::Status(500));
    let (hook, _) = endpoint(&app, &app.key, &receiver.url, None).await;
    // Failing since six days ago (the streak a week of 500s would have left).
    let since = chrono::Utc::now() - chrono::Duration::days(6);
    let sql = "UPDATE webhook_endpoints SET failing_since = $1 WHERE id = $2";
    match app.parts.ctx.store.pool() {
        herald_jobs::store::Pool::Sqlite(p) => {
            sqlx::query(sql)
                .bind(since)
                .bind(&hook)
                .execute(p)
                .await
                .unwrap();
        }
        herald_jobs::store::Pool::Postgres(p) => {
            sqlx::query(sql)
                .bind(since)
                .bind(&hook)
                .execute(p)
                .await
                .unwrap();
        }
    }
    app.post(&format!("/v1/webhooks/{hook}/test"), json!({}))
        .await;
    let shown = eventually(Duration::from_secs(10), || async {
        let (_, shown) = app.get(&format!("/v1/webhooks/{hook}")).await;
        (shown["enabled"] == false).then_some(shown)
    })
    .await
    .expect("the endpoint was never disabled");
    let reason = shown["disabled_reason"].as_str().unwrap();
    assert!(
        reason.starts_with("every delivery has failed since"),
        "{reason}"
    );
    assert!(reason.contains("500"), "{reason}");
    assert_eq!(receiver.hooks().len(), 1);
}

async fn a_huge_or_endless_answer_is_read_only_in_part_and_never_holds_a_worker(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let receiver = Receiver::start().await;
    // An endless body, then a 200 whose body stops after a byte: both took the event.
    receiver.script([Answer::Endless, Answer::Trickle]);
    let (hook, _) = endpoint(&app, &app.key, &receiver.url, None).await;
    let started = std::time::Instant::now();
    for _ in 0..2 {
        let (status, _) = app
            .post(&format!("/v1/webhooks/{hook}/test"), json!({}))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    let log = eventually(Duration::from_secs(15), || async {
        let log = deliveries(&app, &app.key, &hook).await;
        log.iter().all(|d| d["state"] == "delivered").then_some(log)
    })
    .await
    .expect("the deliveries were never recorded");
    // The trickle is cut at the 2 s timeout; nothing waits for the endless body to end.
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    let (trickled, endless) = (&log[0], &log[1]);
    assert_eq!(
        endless["last_response"].as_str().unwrap().len(),
        1024,
        "{endless}"
    );
    assert_eq!(endless["attempts"], 1);
    assert_eq!(trickled["last_response"], "x", "{trickled}");
    assert_eq!(trickled["attempts"], 1);
}

async fn two_worker_processes_send_each_event_once(engine: Engine) {
    // This process's workers and a `herald worker` beside them claim from the same rows.
    let app = TestApp::spawn(engine).await;
    let _other = app.worker_process(&[]);
    let receiver = Receiver::start().await;
    let (hook, _) = endpoint(&app, &app.key, &receiver.url, None).await;
    for _ in 0..12 {
        app.post(&format!("/v1/webhooks/{hook}/test"), json!({}))
            .await;
    }
    let conn = app.mastodon_connection().await;
    let mut shares = Vec::new();
    for i in 0..12 {
        shares.push(app.share(&conn, &format!("post {i}")).await);
    }
    let got = receiver.until("24 events", |got| got.len() >= 24).await;
    // Settle: nothing more arrives once every delivery is recorded.
    eventually(Duration::from_secs(15), || async {
        let log = deliveries(&app, &app.key, &hook).await;
        (log.len() == 24 && log.iter().all(|d| d["state"] == "delivered")).then_some(())
    })
    .await
    .expect("not every delivery was recorded as delivered");
    let got = if receiver.hooks().len() > got.len() {
        receiver.hooks()
    } else {
        got
    };
    let mut ids: Vec<String> = got.iter().map(Hook::id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), got.len(), "an event was sent twice");
    assert_eq!(got.len(), 24);
    // The test events share one subject (the endpoint): they arrive in the order they were made.
    let tests: Vec<String> = got
        .iter()
        .filter(|h| h.kind() == "webhook.test")
        .map(Hook::id)
        .collect();
    let mut sorted = tests.clone();
    sorted.sort();
    assert_eq!(tests, sorted, "test events out of order");
}
