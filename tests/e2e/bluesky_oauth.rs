//! Bluesky's AT Protocol OAuth end to end, against the local network
//! (`herald_platforms::testing::atproto`):
//! `POST /v1/connect/bluesky` with a handle (resolution, PAR with a client assertion and DPoP),
//! the authorization server's redirect to the callback (`iss` and `sub` checked, the code
//! exchanged), shares posted with DPoP, a just-in-time refresh, and a replayed refresh token that
//! leaves the connection `needs_reauth`. Also the client metadata and JWKS the API serves, and
//! the session's revocation when the connection is removed.

use herald_jobs::{
    handlers::refresh::{self, Refresh},
    store::StoredTokens,
};
use herald_platforms::{
    bluesky::jwt::EsKey,
    testing::atproto::{DID, FakeAtproto, HANDLE, OTHER_DID},
};
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use crate::{
    connect::{RETURN_URL, connect},
    on_every_backend,
    support::{Engine, TestApp, fast_settings},
};

/// Herald pointed at the local network: its PLC directory and handle resolver are the fake PDS.
/// `confidential` gives Herald a client key (else it is the loopback development client).
async fn with_network(engine: Engine, confidential: bool) -> (TestApp, FakeAtproto) {
    let net = FakeAtproto::start().await;
    let mut settings = fast_settings();
    settings.bluesky.plc_url = net.pds.clone();
    settings.bluesky.handle_resolver = net.pds.clone();
    if confidential {
        settings.bluesky.client_keys = vec![EsKey::generate()];
    }
    (TestApp::spawn_with(engine, true, settings).await, net)
}

fn start_body(handle: &str) -> Value {
    json!({ "user_id": "u-bsky", "return_url": RETURN_URL, "handle": handle })
}

/// Enqueues a share whose link is on loopback (it has no card: the page answers 404), so no DNS
/// lookup of a public name slows the post.
async fn share(app: &TestApp, net: &FakeAtproto, connection: &str, text: &str) -> String {
    let (status, body) = app
        .post(
            "/v1/shares",
            json!({ "url": format!("{}/post/1", net.pds), "text": text, "connection_ids": [connection] }),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    body["shares"][0]["id"].as_str().unwrap().to_owned()
}

async fn stored_refresh_token(app: &TestApp, id: &str) -> SecretString {
    let row = app.parts.ctx.store.connection(id).await.unwrap().unwrap();
    row.credentials(&app.parts.ctx.vault)
        .unwrap()
        .refresh_token
        .expect("a refresh token is stored")
}

async fn an_app_password_account_moves_to_oauth_posts_refreshes_and_a_replayed_token_needs_reauth(
    engine: Engine,
) {
    let (app, net) = with_network(engine, true).await;
    // The account was connected with an app password first.
    let (status, imported) = app
        .post(
            "/v1/connections",
            json!({
                "platform": "bluesky",
                "platform_account_id": DID,
                "handle": HANDLE,
                "access_token": "abcd-efgh-ijkl-mnop",
                "extras": { "pds_url": net.pds, "auth": "app_password" },
            }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{imported}");
    let id = imported["id"].as_str().unwrap().to_owned();

    let q = connect(&app, &app.key, "bluesky", start_body(&format!("@{HANDLE}"))).await;
    assert_eq!(q.get("connection_id"), Some(&id), "{q:?}: same connection");
    {
        let w = net.world();
        assert_eq!(w.last_par["login_hint"], HANDLE);
        assert_eq!(
            w.last_par["client_id"],
            format!("{}/oauth/bluesky/client-metadata.json", app.base)
        );
        assert_eq!(w.assertions_checked, 2, "PAR and the code exchange");
        assert_eq!(w.as_nonce_challenges, 1);
    }
    let (_, conn) = app.get(&format!("/v1/connections/{id}")).await;
    assert_eq!(conn["handle"], HANDLE);
    assert_eq!(conn["user_id"], "u-bsky");
    assert_eq!(conn["has_refresh_token"], true);
    assert_eq!(conn["extras"]["auth"], "oauth");
    assert_eq!(conn["extras"]["auth_server"], net.issuer);
    let row = app.parts.ctx.store.connection(&id).await.unwrap().unwrap();
    assert!(
        row.dpop_key_enc.is_some(),
        "the session's DPoP key is stored, sealed"
    );
    assert!(row.token_expires_at.is_some());

    // Shares go out with DPoP (the PDS challenged the first call for its nonce).
    let first = share(&app, &net, &id, "posted over OAuth").await;
    assert_eq!(app.settled(&first).await["state"], "succeeded");
    assert_eq!(net.world().records.len(), 1);
    assert!(net.world().pds_nonce_challenges >= 1);

    // The PDS says the token expired before Herald's clock did: refresh, then post.
    let spent = stored_refresh_token(&app, &id).await;
    net.world().expire_next_access = true;
    let second = share(&app, &net, &id, "after a refresh").await;
    assert_eq!(app.settled(&second).await["state"], "succeeded");
    assert_eq!(net.world().refreshes, 1);
    let rotated = stored_refresh_token(&app, &id).await;
    assert_ne!(rotated.expose_secret(), spent.expose_secret());

    // A stale copy of the spent refresh token is written back (a restored backup, a lost
    // update): spending it is a replay, the server ends the session, the connection is flagged.
    let row = app.parts.ctx.store.connection(&id).await.unwrap().unwrap();
    app.parts
        .ctx
        .store
        .store_refreshed_tokens(
            &id,
            row.token_generation,
            &StoredTokens {
                refresh_token: Some(spent),
                expires_at: row.token_expires_at,
                ..Default::default()
            },
            &app.parts.ctx.vault,
            chrono::Utc::now(),
        )
        .await
        .unwrap();
    assert!(matches!(
        refresh::refresh_connection(&app.parts.ctx, &id)
            .await
            .unwrap(),
        Refresh::Dead(_)
    ));
    assert_eq!(net.world().replays, 1);
    let (_, conn) = app.get(&format!("/v1/connections/{id}")).await;
    assert_eq!(conn["needs_reauth"], true);
    let parked = share(&app, &net, &id, "parked").await;
    assert_eq!(app.settled(&parked).await["state"], "parked");

    // The client's published documents.
    let (status, meta) = app
        .call(
            reqwest::Method::GET,
            "/oauth/bluesky/client-metadata.json",
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        meta["client_id"],
        format!("{}/oauth/bluesky/client-metadata.json", app.base)
    );
    assert_eq!(
        meta["redirect_uris"][0],
        format!("{}/v1/connect/bluesky/callback", app.base)
    );
    assert_eq!(meta["token_endpoint_auth_method"], "private_key_jwt");
    let (status, jwks) = app
        .call(reqwest::Method::GET, "/oauth/bluesky/jwks.json", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
    assert!(jwks["keys"][0].get("d").is_none());
}

async fn the_callback_refuses_another_issuer_and_another_account(engine: Engine) {
    let (app, net) = with_network(engine, true).await;

    net.world().iss_override = Some("https://evil.example".into());
    let q = connect(&app, &app.key, "bluesky", start_body(HANDLE)).await;
    assert_eq!(
        q.get("error").map(String::as_str),
        Some("issuer_mismatch"),
        "{q:?}"
    );

    // A code from the wrong server is never exchanged, so there is nothing to give back.
    assert_eq!(net.world().revocations, 0);

    net.world().iss_override = None;
    net.world().sub_override = Some(OTHER_DID.into());
    let q = connect(&app, &app.key, "bluesky", start_body(HANDLE)).await;
    assert_eq!(
        q.get("error").map(String::as_str),
        Some("account_mismatch"),
        "{q:?}"
    );
    // Refused tokens are revoked, not left live at the server.
    assert_eq!(net.world().revocations, 1);

    // The server grants `atproto` without the posting scope Herald asked for.
    net.world().sub_override = None;
    net.world().granted_scope = Some("atproto".into());
    let q = connect(&app, &app.key, "bluesky", start_body(HANDLE)).await;
    assert_eq!(
        q.get("error").map(String::as_str),
        Some("insufficient_scope"),
        "{q:?}"
    );
    assert_eq!(net.world().revocations, 2);

    let (_, list) = app.get("/v1/connections").await;
    assert_eq!(
        list["connections"].as_array().map(Vec::len),
        Some(0),
        "{list}"
    );

    // Bad input is refused before anything is pushed, naming the field.
    for (body, field, code) in [
        (start_body("nobody.test"), "handle", "handle_not_found"),
        (start_body("not a handle"), "handle", "invalid_handle"),
        (
            json!({ "user_id": "u", "return_url": RETURN_URL }),
            "handle",
            "missing_field",
        ),
        (
            json!({ "user_id": "u", "return_url": RETURN_URL, "handle": HANDLE, "server_url": net.pds }),
            "server_url",
            "conflicting_fields",
        ),
    ] {
        let (status, err) = app.post("/v1/connect/bluesky", body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
        assert_eq!(err["error"]["field"], field, "{err}");
        assert_eq!(err["error"]["code"], code, "{err}");
    }
    let (status, err) = app
        .post(
            "/v1/connect/x",
            json!({ "user_id": "u", "return_url": RETURN_URL, "handle": HANDLE }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
}

async fn the_loopback_client_connects_from_a_server_url_without_keys(engine: Engine) {
    let (app, net) = with_network(engine, false).await;
    let q = connect(
        &app,
        &app.key,
        "bluesky",
        json!({ "user_id": "u", "return_url": RETURN_URL, "server_url": net.pds }),
    )
    .await;
    let id = q
        .get("connection_id")
        .cloned()
        .unwrap_or_else(|| panic!("{q:?}"));
    {
        let w = net.world();
        assert!(w.last_par["client_id"].starts_with("http://localhost?redirect_uri="));
        assert!(
            !w.last_par.contains_key("login_hint"),
            "no account was named"
        );
        assert_eq!(
            w.assertions_checked, 0,
            "a public client sends no assertion"
        );
    }
    let (_, conn) = app.get(&format!("/v1/connections/{id}")).await;
    assert_eq!(conn["platform_account_id"], DID);
    assert_eq!(conn["handle"], HANDLE);
    let share = share(&app, &net, &id, "from the loopback client").await;
    assert_eq!(app.settled(&share).await["state"], "succeeded");
    assert!(matches!(
        refresh::refresh_connection(&app.parts.ctx, &id)
            .await
            .unwrap(),
        Refresh::Refreshed(_)
    ));
    let (status, _) = app
        .call(
            reqwest::Method::GET,
            "/oauth/bluesky/client-metadata.json",
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Removing the connection ends the session at the authorization server first.
    let (status, _) = app
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/connections/{id}"),
            Some(&app.key),
            None,
        )
        .await;
    assert!(status.is_success(), "{status}");
    assert_eq!(net.world().revocations, 1);
}

/// A refresh that comes back without `transition:generic` leaves the connection flagged, saying
/// why, rather than holding tokens that can no longer post.
async fn a_refresh_that_loses_the_posting_scope_needs_reauth_saying_so(engine: Engine) {
    let (app, net) = with_network(engine, true).await;
    let q = connect(&app, &app.key, "bluesky", start_body(HANDLE)).await;
    let id = q
        .get("connection_id")
        .cloned()
        .unwrap_or_else(|| panic!("{q:?}"));
    net.world().granted_scope = Some("atproto".into());
    let refreshed = refresh::refresh_connection(&app.parts.ctx, &id)
        .await
        .unwrap();
    assert!(matches!(refreshed, Refresh::Dead(_)), "{refreshed:?}");
    let (_, conn) = app.get(&format!("/v1/connections/{id}")).await;
    assert_eq!(conn["needs_reauth"], true);
    let why = conn["last_error"].as_str().unwrap_or_default();
    assert!(why.contains("transition:generic"), "{conn}");
    let parked = share(&app, &net, &id, "parked").await;
    assert_eq!(app.settled(&parked).await["state"], "parked");
}

on_every_backend!(
    a_refresh_that_loses_the_posting_scope_needs_reauth_saying_so,
    an_app_password_account_moves_to_oauth_posts_refreshes_and_a_replayed_token_needs_reauth,
    the_callback_refuses_another_issuer_and_another_account,
    the_loopback_client_connects_from_a_server_url_without_keys,
);
