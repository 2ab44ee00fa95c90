//! The operators' cross-tenant view of connections: the accounts behind the
//! `HeraldConnectionRefreshFailing` alert, found through the route the runbook gives.

use std::time::Duration;

use herald_jobs::payloads::RefreshV1;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{
    on_every_backend,
    support::{Engine, TestApp, eventually, fast_settings},
};

on_every_backend!(
    three_refresh_failures_in_a_day_are_found_through_the_runbooks_route,
    operators_list_every_tenants_connections_needing_reauth,
);

/// The route `dashboards/RUNBOOK.md` and the alert's annotation send operators to.
const RUNBOOK_ROUTE: &str = "/v1/ops/connections?refresh_failing=true";

fn ids(list: &Value) -> Vec<&str> {
    list["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect()
}

async fn three_refresh_failures_in_a_day_are_found_through_the_runbooks_route(engine: Engine) {
    // X's token endpoint is unreachable: each refresh fails as transient and is retried.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let token_url = format!("http://{}/2/oauth2/token", closed.local_addr().unwrap());
    drop(closed);
    let mut settings = fast_settings();
    settings.apps.x = Some(herald_platforms::config::PlatformApp {
        client_id: "herald".into(),
        client_secret: None,
        api_base: Some("http://127.0.0.1:9".into()),
        token_url: Some(token_url),
        authorize_url: None,
        revoke_url: None,
    });
    let app = TestApp::spawn_with(engine, true, settings).await;
    let op = app.operator_key().await;
    let other = app.key_for("beta").await;
    let expires = (chrono::Utc::now() + chrono::Duration::minutes(1)).to_rfc3339();
    let (status, conn) = app
        .call(
            Method::POST,
            "/v1/connections",
            Some(&other),
            Some(json!({
                "platform": "x", "platform_account_id": "4242", "handle": "beta_news",
                "access_token": "at", "refresh_token": "rt", "expires_at": expires,
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{conn}");
    let id = conn["id"].as_str().unwrap().to_owned();
    // A healthy connection of another tenant stays out of the list.
    let healthy = app.mastodon_connection().await;

    // Nothing failing yet.
    let (status, list) = app.call(Method::GET, RUNBOOK_ROUTE, Some(&op), None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert!(ids(&list).is_empty(), "{list}");

    // One refresh job, as a sweep pushes it; its transient failures retry with backoff.
    let job = RefreshV1 {
        connection_id: id.clone(),
        retry: 0,
        run: None,
    };
    app.enqueue(&job, &format!("refresh:{id}:test")).await;
    let found = eventually(Duration::from_secs(30), || async {
        let (status, list) = app.call(Method::GET, RUNBOOK_ROUTE, Some(&op), None).await;
        (status == StatusCode::OK && ids(&list) == [id.as_str()]).then_some(list)
    })
    .await
    .expect("the connection with 3 refresh failures never showed on the runbook's route");
    let listed = &found["connections"][0];
    assert_eq!(listed["platform"], "x");
    assert_eq!(listed["needs_reauth"], false);
    assert!(listed["last_error"].is_string() || listed["last_error"].is_null());
    // The tenant is named, so the operator knows whose app to tell.
    let (_, beta_keys) = app
        .call(Method::GET, "/v1/keys?tenant=beta", Some(&op), None)
        .await;
    assert_eq!(listed["tenant_id"], beta_keys["keys"][0]["tenant_id"]);
    assert!(!ids(&found).contains(&healthy.as_str()));
    // The failures are jobs the operator can read too.
    let (_, runs) = app
        .call(
            Method::GET,
            "/v1/jobs?queue=refresh&state=transient&platform=x",
            Some(&op),
            None,
        )
        .await;
    assert!(runs["jobs"].as_array().unwrap().len() >= 3, "{runs}");
    // The filters combine, and page by id.
    let (_, by_platform) = app
        .call(
            Method::GET,
            &format!("{RUNBOOK_ROUTE}&platform=mastodon"),
            Some(&op),
            None,
        )
        .await;
    assert!(ids(&by_platform).is_empty());
    let (_, page) = app
        .call(Method::GET, "/v1/ops/connections?limit=1", Some(&op), None)
        .await;
    let after = page["next_after"].as_str().expect("a second page");
    let (_, rest) = app
        .call(
            Method::GET,
            &format!("/v1/ops/connections?after={after}"),
            Some(&op),
            None,
        )
        .await;
    assert_eq!(ids(&page).len() + ids(&rest).len(), 2);

    // The route the runbook used to give answers 403 to an operator key; the tenant's own
    // view still lists its connection.
    let (status, body) = app
        .call(
            Method::GET,
            "/v1/connections?refresh_failing=true",
            Some(&op),
            None,
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden"))
    );
    let (_, own) = app
        .call(
            Method::GET,
            "/v1/connections?refresh_failing=true",
            Some(&other),
            None,
        )
        .await;
    assert_eq!(ids(&own), [id.as_str()]);
    // And tenant keys cannot use the operators' view.
    let (status, _) = app
        .call(Method::GET, RUNBOOK_ROUTE, Some(&other), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

async fn operators_list_every_tenants_connections_needing_reauth(engine: Engine) {
    let app = TestApp::spawn_with(engine, false, fast_settings()).await;
    let op = app.operator_key().await;
    let beta = app.key_for("beta").await;
    let mine = app.mastodon_connection().await;
    let theirs = app
        .mastodon_connection_with(&beta, "110", &app.mastodon.token.clone())
        .await;
    let fine = app
        .mastodon_connection_with(&beta, "111", &app.mastodon.token.clone())
        .await;
    let store = &app.parts.ctx.store;
    let flagged_at = chrono::Utc::now();
    for id in [&mine, &theirs] {
        store
            .mark_needs_reauth(id, "the token was revoked", flagged_at)
            .await
            .unwrap();
    }
    // Flagging again keeps the first time.
    store
        .mark_needs_reauth(
            &mine,
            "still revoked",
            flagged_at + chrono::Duration::hours(1),
        )
        .await
        .unwrap();
    let (status, list) = app
        .call(
            Method::GET,
            "/v1/ops/connections?needs_reauth=true",
            Some(&op),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let mut expected = vec![mine.as_str(), theirs.as_str()];
    expected.sort();
    assert_eq!(ids(&list), expected);
    for c in list["connections"].as_array().unwrap() {
        let since = chrono::DateTime::parse_from_rfc3339(c["needs_reauth_since"].as_str().unwrap())
            .unwrap();
        assert!(
            (since.timestamp_millis() - flagged_at.timestamp_millis()).abs() < 1000,
            "{c}"
        );
        assert_eq!(c["auth"], "oauth");
    }
    let (_, healthy) = app
        .call(
            Method::GET,
            "/v1/ops/connections?needs_reauth=false",
            Some(&op),
            None,
        )
        .await;
    assert_eq!(ids(&healthy), [fine.as_str()]);
    let (status, body) = app
        .call(
            Method::GET,
            "/v1/ops/connections?platform=myspace",
            Some(&op),
            None,
        )
        .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("platform"))
    );
}
