//! Keeping accounts connected and letting operators fix what went wrong: reconnect and resume,
//! follower sync, sweeps, inspection and replay.

use std::time::Duration;

use herald_jobs::payloads::FollowerSyncV1;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{
    on_every_backend,
    support::{Engine, ListReply, Reply, TestApp, eventually, fast_settings},
};

on_every_backend!(
    a_reconnect_is_verified_before_parked_shares_resume_in_order_and_late_ones_expire,
    a_reconnect_with_tokens_the_platform_refuses_keeps_the_connection_flagged,
    follower_sync_pages_through_both_lists_and_records_gains_and_losses,
    follower_sync_resumes_from_its_checkpoint_after_a_rate_limit,
    a_401_mid_sync_flags_the_connection_and_parks_the_sync,
    operators_inspect_and_replay_jobs_and_tenants_cannot,
    an_outcome_unknown_share_is_replayed_only_with_force_and_a_reason,
    a_sweep_runs_once_per_tick_however_many_workers_run,
);

async fn reimport(app: &TestApp, token: &str) -> Value {
    let (status, body) = app
        .post("/v1/connections", json!({
            "platform": "mastodon", "platform_account_id": "109", "handle": "alice@social.example",
            "access_token": token, "extras": { "instance_url": app.mastodon.base },
        }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body
}

async fn connection(app: &TestApp, id: &str) -> Value {
    app.get(&format!("/v1/connections/{id}")).await.1
}

async fn a_reconnect_is_verified_before_parked_shares_resume_in_order_and_late_ones_expire(
    engine: Engine,
) {
    let app = TestApp::spawn(engine).await;
    let conn = app.mastodon_connection().await;
    app.mastodon.script([Reply::InvalidToken]);
    let first = app.share(&conn, "first").await;
    assert_eq!(app.settled(&first).await["state"], "parked");
    // More parked shares after it, so that workers running several at once would show any
    // reordering.
    let mut parked = vec![first.clone()];
    for text in ["second", "third", "fourth", "fifth"] {
        let id = app.share(&conn, text).await;
        assert_eq!(app.settled(&id).await["state"], "parked");
        parked.push(id);
    }
    let not_after = (chrono::Utc::now() + chrono::Duration::milliseconds(1500)).to_rfc3339();
    let (_, late) = app
        .post("/v1/shares", json!({ "url": "https://blog.example/late", "text": "late", "not_after": not_after, "connection_ids": [conn] }))
        .await;
    let late = late["shares"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(app.settled(&late).await["state"], "parked");
    // Let the late share pass its lateness limit while parked.
    eventually(Duration::from_secs(5), || async {
        (chrono::Utc::now().to_rfc3339() > not_after).then_some(())
    })
    .await;

    let body = reimport(&app, &app.mastodon.token.clone()).await;
    assert_eq!(
        body["needs_reauth"], true,
        "the flag must stay until a verify call succeeds"
    );
    let c = eventually(Duration::from_secs(15), || async {
        let c = connection(&app, &conn).await;
        (c["needs_reauth"] == false).then_some(c)
    })
    .await
    .expect("the reconnect was never verified");
    assert!(c["last_error"].is_null());
    let mut due = Vec::new();
    for id in &parked {
        let s = app
            .share_until(id, Duration::from_secs(15), |s| s["state"] == "succeeded")
            .await;
        due.push(chrono::DateTime::parse_from_rfc3339(s["run_at"].as_str().unwrap()).unwrap());
    }
    // Re-enqueued in their original order, and posted in it: each waits for the one before.
    assert!(due.is_sorted(), "resumed out of order: {due:?}");
    assert_eq!(app.settled(&late).await["state"], "expired");
    let posted: Vec<_> = app
        .mastodon
        .statuses()
        .iter()
        .map(|s| s["idempotency_key"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(posted, parked, "posted out of order");
}

async fn a_reconnect_with_tokens_the_platform_refuses_keeps_the_connection_flagged(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let conn = app.mastodon_connection().await;
    app.mastodon.script([Reply::InvalidToken]);
    let share = app.share(&conn, "parked").await;
    assert_eq!(app.settled(&share).await["state"], "parked");
    reimport(&app, "a-token-the-instance-does-not-know").await;
    let c = eventually(Duration::from_secs(15), || async {
        let c = connection(&app, &conn).await;
        c["last_error"]
            .as_str()
            .is_some_and(|e| e.starts_with("the new tokens were refused"))
            .then_some(c)
    })
    .await
    .expect("the refused verify was not recorded");
    assert_eq!(c["needs_reauth"], true);
    let (_, s) = app.get(&format!("/v1/shares/{share}")).await;
    assert_eq!(s["state"], "parked");
    assert!(app.mastodon.statuses().is_empty());
}

async fn sync(app: &TestApp, conn: &str, key: &str) {
    let job = FollowerSyncV1 {
        connection_id: conn.to_owned(),
        resume: false,
        retry: 0,
        run: None,
    };
    app.enqueue(&job, key).await;
}

async fn finished_runs(app: &TestApp, conn: &str, n: usize) -> Vec<herald_jobs::store::SyncRun> {
    eventually(Duration::from_secs(20), || async {
        let runs = app.parts.ctx.store.sync_runs(conn, 20).await.unwrap();
        let done: Vec<_> = runs.into_iter().filter(|r| r.state == "finished").collect();
        (done.len() >= n).then_some(done)
    })
    .await
    .unwrap_or_else(|| panic!("{n} follower sync runs did not finish"))
}

async fn follower_sync_pages_through_both_lists_and_records_gains_and_losses(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let conn = app.mastodon_connection().await;
    app.mastodon
        .set_graph(&["a", "b", "c", "d", "e"], &["x", "y"], 2);
    sync(&app, &conn, "sync-1").await;
    let runs = finished_runs(&app, &conn, 2).await;
    // Operators see the runs as follower_sync jobs, and can replay one.
    let op = app.operator_key().await;
    let (status, list) = app
        .call(
            Method::GET,
            "/v1/jobs?queue=follower_sync&state=finished",
            Some(&op),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["jobs"].as_array().unwrap().len(), 2);
    assert_eq!(list["jobs"][0]["queue"], "follower_sync");
    let run_id = list["jobs"][0]["id"].as_str().unwrap().to_owned();
    let (status, one) = app
        .call(Method::GET, &format!("/v1/jobs/{run_id}"), Some(&op), None)
        .await;
    assert_eq!(
        (status, one["connection_id"].as_str()),
        (StatusCode::OK, Some(conn.as_str()))
    );
    let followers = runs.iter().find(|r| r.relation == "followers").unwrap();
    assert_eq!(
        (
            followers.pages,
            followers.seen,
            followers.gained,
            followers.lost
        ),
        (3, 5, 5, 0)
    );
    assert_eq!(
        app.parts
            .ctx
            .store
            .follower_count(&conn, "followers")
            .await
            .unwrap(),
        5
    );
    assert_eq!(
        app.parts
            .ctx
            .store
            .follower_count(&conn, "follows")
            .await
            .unwrap(),
        2
    );

    app.mastodon
        .set_graph(&["a", "c", "d", "e", "f", "g"], &["x", "y"], 2);
    sync(&app, &conn, "sync-2").await;
    let runs = finished_runs(&app, &conn, 4).await;
    let latest = runs
        .iter()
        .filter(|r| r.relation == "followers")
        .max_by_key(|r| r.started_at)
        .unwrap();
    assert_eq!(
        (latest.gained, latest.lost, latest.seen),
        (2, 1, 6),
        "b left; f and g arrived"
    );
    assert_eq!(
        app.parts
            .ctx
            .store
            .follower_count(&conn, "followers")
            .await
            .unwrap(),
        6
    );
}

async fn follower_sync_resumes_from_its_checkpoint_after_a_rate_limit(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let conn = app.mastodon_connection().await;
    app.mastodon.set_graph(&["a", "b", "c", "d", "e"], &[], 2);
    // Page 1 answers; page 2 is rate limited once.
    app.mastodon.script_lists([
        ListReply::Page,
        ListReply::RateLimited {
            retry_after_secs: 1,
        },
    ]);
    sync(&app, &conn, "sync-1").await;
    let runs = finished_runs(&app, &conn, 2).await;
    assert_eq!(runs.len(), 2, "a resume started a new run: {runs:?}");
    let followers = runs.iter().find(|r| r.relation == "followers").unwrap();
    assert_eq!(
        (followers.seen, followers.gained, followers.pages),
        (5, 5, 3)
    );
    let firsts = app
        .mastodon
        .list_requests()
        .iter()
        .filter(|(rel, max_id)| rel == "followers" && max_id.is_none())
        .count();
    assert_eq!(
        firsts,
        1,
        "the sync started over instead of resuming: {:?}",
        app.mastodon.list_requests()
    );
}

async fn a_401_mid_sync_flags_the_connection_and_parks_the_sync(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let conn = app.mastodon_connection().await;
    app.mastodon.set_graph(&["a", "b", "c"], &[], 1);
    app.mastodon
        .script_lists([ListReply::Page, ListReply::InvalidToken]);
    sync(&app, &conn, "sync-1").await;
    let c = eventually(Duration::from_secs(15), || async {
        let c = connection(&app, &conn).await;
        (c["needs_reauth"] == true).then_some(c)
    })
    .await
    .expect("a 401 mid-sync did not flag the connection");
    assert_eq!(c["last_error"], "The access token is invalid");
    // The run records its error in a write of its own after the connection is flagged.
    let parked = eventually(Duration::from_secs(15), || async {
        let runs = app.parts.ctx.store.sync_runs(&conn, 5).await.unwrap();
        runs.iter()
            .any(|r| r.state == "running" && r.last_error.is_some())
            .then_some(())
    })
    .await;
    assert!(
        parked.is_some(),
        "{:?}",
        app.parts.ctx.store.sync_runs(&conn, 5).await.unwrap()
    );
}

async fn operators_inspect_and_replay_jobs_and_tenants_cannot(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let conn = app.mastodon_connection().await;
    app.mastodon
        .script([Reply::Unprocessable("Validation failed: try again later")]);
    let share = app.share(&conn, "replay me").await;
    assert_eq!(app.settled(&share).await["state"], "failed");

    let (status, _) = app.get("/v1/jobs?state=failed").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a tenant key listed jobs");
    let op = app.operator_key().await;
    let (status, list) = app
        .call(
            Method::GET,
            "/v1/jobs?queue=share&state=failed&platform=mastodon&since=1h",
            Some(&op),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["jobs"][0]["id"], share.as_str());
    assert_eq!(list["jobs"][0]["last_error"]["platform_status"], 422);

    let (status, dry) = app
        .call(Method::POST, "/v1/jobs/replay", Some(&op), Some(json!({ "state": "failed", "platform": "mastodon", "since": "2h", "dry_run": true })))
        .await;
    assert_eq!(status, StatusCode::OK, "{dry}");
    assert_eq!(dry["jobs"][0]["result"], "would_replay");
    let (_, unchanged) = app.get(&format!("/v1/shares/{share}")).await;
    assert_eq!(unchanged["state"], "failed", "a dry run changed the share");

    // The CLI lists the same.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args([
            "replay",
            "--queue",
            "share",
            "--state",
            "failed",
            "--platform",
            "mastodon",
            "--since",
            "2h",
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
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains(&share) && stdout.contains("would_replay"),
        "{stdout}"
    );

    let (status, replayed) = app
        .call(
            Method::POST,
            &format!("/v1/jobs/{share}/replay"),
            Some(&op),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{replayed}");
    let done = app
        .share_until(&share, Duration::from_secs(15), |s| {
            s["state"] == "succeeded"
        })
        .await;
    assert_eq!(done["attempts"], 2);
    let (_, job) = app
        .call(Method::GET, &format!("/v1/jobs/{share}"), Some(&op), None)
        .await;
    assert_eq!(job["replays"][0]["from_state"], "failed");
    assert_eq!(job["attempt_history"].as_array().unwrap().len(), 2);
    let (status, again) = app
        .call(
            Method::POST,
            &format!("/v1/jobs/{share}/replay"),
            Some(&op),
            None,
        )
        .await;
    assert_eq!(
        (status, again["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("not_replayable"))
    );
    assert_eq!(app.mastodon.statuses().len(), 1);
}

async fn an_outcome_unknown_share_is_replayed_only_with_force_and_a_reason(engine: Engine) {
    let app = TestApp::spawn_with(engine, false, fast_settings()).await;
    let conn = app.mastodon_connection().await;
    let share = app.share(&conn, "maybe posted").await;
    // Put the share where a lost answer on a platform without idempotency leaves it.
    let sql = "UPDATE shares SET state = 'outcome_unknown', attempts = 1 WHERE id = ";
    match app.parts.ctx.store.pool() {
        herald_jobs::store::Pool::Sqlite(p) => {
            sqlx::query(sqlx::AssertSqlSafe(format!("{sql}'{share}'")))
                .execute(p)
                .await
                .unwrap();
        }
        herald_jobs::store::Pool::Postgres(p) => {
            sqlx::query(sqlx::AssertSqlSafe(format!("{sql}'{share}'")))
                .execute(p)
                .await
                .unwrap();
        }
    }
    let op = app.operator_key().await;
    let path = format!("/v1/jobs/{share}/replay");
    let (status, err) = app.call(Method::POST, &path, Some(&op), None).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("needs_force"))
    );
    let (status, err) = app
        .call(
            Method::POST,
            &path,
            Some(&op),
            Some(json!({ "force": true })),
        )
        .await;
    assert_eq!(
        (status, err["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("reason"))
    );
    let (status, ok) = app
        .call(
            Method::POST,
            &path,
            Some(&op),
            Some(json!({ "force": true, "reason": "checked the account: not posted" })),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{ok}");
    let (_, job) = app
        .call(Method::GET, &format!("/v1/jobs/{share}"), Some(&op), None)
        .await;
    assert_eq!(job["state"], "queued");
    assert_eq!(job["replays"][0]["forced"], true);
    assert_eq!(
        job["replays"][0]["reason"],
        "checked the account: not posted"
    );
}

async fn a_sweep_runs_once_per_tick_however_many_workers_run(engine: Engine) {
    let mut settings = fast_settings();
    settings.refresh_sweep_cron = "* * * * * *".into();
    let app = TestApp::spawn_with(engine, false, settings).await;
    let expires = (chrono::Utc::now() + chrono::Duration::minutes(30)).to_rfc3339();
    let mut ids = Vec::new();
    for account in ["1", "2", "3"] {
        let (status, body) = app
            .post("/v1/connections", json!({
                "platform": "mastodon", "platform_account_id": account, "handle": "a", "access_token": app.mastodon.token,
                "refresh_token": "r", "expires_at": expires, "extras": { "instance_url": app.mastodon.base },
            }))
            .await;
        assert_eq!(status, StatusCode::CREATED);
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    // Two worker processes' worth of workers and crons on the same store and queue.
    let (stop, rx) = tokio::sync::watch::channel(false);
    for _ in 0..2 {
        let mut rx = rx.clone();
        tokio::spawn(herald::app::run_worker(app.parts.clone(), async move {
            let _ = rx.wait_for(|s| *s).await;
        }));
    }
    let count = |table: &'static str| {
        let store = app.parts.ctx.store.clone();
        async move {
            let q = format!("SELECT COUNT(*) FROM {table}");
            match store.pool() {
                herald_jobs::store::Pool::Sqlite(p) => {
                    sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(q))
                        .fetch_one(p)
                        .await
                        .unwrap()
                }
                herald_jobs::store::Pool::Postgres(p) => {
                    sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(q))
                        .fetch_one(p)
                        .await
                        .unwrap()
                }
            }
        }
    };
    eventually(Duration::from_secs(20), || async {
        (count("sweep_ticks").await >= 3).then_some(())
    })
    .await
    .expect("the sweep did not tick");
    let _ = stop.send(true);
    let ticks = count("sweep_ticks").await;
    // Mastodon has no refresh: each swept connection records one `skipped` refresh per tick.
    let refreshes = count("token_refreshes").await;
    assert!(
        refreshes <= ticks * ids.len() as i64,
        "{refreshes} refreshes for {ticks} ticks of {} connections",
        ids.len()
    );
    assert!(
        refreshes >= (ticks - 1) * ids.len() as i64,
        "{refreshes} refreshes for {ticks} ticks"
    );
    // Each refresh is a job operators can list and replay.
    let op = app.operator_key().await;
    let (status, list) = app
        .call(
            Method::GET,
            "/v1/jobs?queue=refresh&state=skipped&platform=mastodon",
            Some(&op),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let jobs = list["jobs"].as_array().unwrap();
    assert!(!jobs.is_empty());
    assert!(
        jobs.iter()
            .all(|j| j["queue"] == "refresh" && j["state"] == "skipped")
    );
    let id = jobs[0]["id"].as_str().unwrap();
    let (status, replayed) = app
        .call(
            Method::POST,
            &format!("/v1/jobs/{id}/replay"),
            Some(&op),
            None,
        )
        .await;
    assert_eq!(
        (status, replayed["result"].as_str()),
        (StatusCode::ACCEPTED, Some("replayed"))
    );
    let (status, err) = app
        .call(Method::GET, "/v1/jobs?queue=nope", Some(&op), None)
        .await;
    assert_eq!(
        (status, err["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("queue"))
    );
}
