//! The AT Protocol OAuth client against the local network (`testing::atproto`): the identity
//! steps, PAR with a client assertion, the code exchange, DPoP calls on the PDS with its
//! nonce challenge, refresh with rotation, and a replayed refresh token killing the session.
//! (The whole connect flow through the API is in the end-to-end suite.)

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, routing::get};
use herald_platforms::{
    Account, Credentials, Platform, PlatformError, PostRequest, Relation,
    bluesky::{
        Bluesky,
        identity::Directory,
        jwt::{self, EsKey},
        oauth::{self, CLIENT_METADATA_PATH, ClientConfig, JWKS_PATH},
    },
    http,
    ssrf::SsrfGuard,
};
use reqwest::header;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use herald_platforms::testing::atproto::{DID, FakeAtproto, HANDLE, OTHER_DID};

/// Serves the client's metadata and keys, as Herald's API does, so the authorization server
/// can fetch them by `client_id`.
async fn serve_client(keys: Vec<EsKey>) -> ClientConfig {
    serve_rotating_client(keys).await.0
}

/// The same, with a way to change the configured keys later (a rotation): the documents are
/// read from the configuration at each fetch, as the API serves them.
async fn serve_rotating_client(keys: Vec<EsKey>) -> (ClientConfig, Arc<Mutex<ClientConfig>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = ClientConfig {
        public_url: format!("http://{}", listener.local_addr().unwrap()),
        keys,
    };
    let served = Arc::new(Mutex::new(client.clone()));
    let (m, j) = (served.clone(), served.clone());
    let app =
        Router::new()
            .route(
                CLIENT_METADATA_PATH,
                get(move || async move {
                    axum::Json(m.lock().unwrap().metadata().unwrap_or(Value::Null))
                }),
            )
            .route(
                JWKS_PATH,
                get(move || async move { axum::Json(j.lock().unwrap().jwks()) }),
            );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (client, served)
}

fn guarded() -> (reqwest::Client, SsrfGuard) {
    let guard = SsrfGuard::allowing_private();
    (http::client(&guard, Duration::from_secs(10)), guard)
}

/// An OAuth connection as the connect flow stores it.
struct Connected {
    account: Account,
    creds: Credentials,
    client: Bluesky,
}

/// Resolves the handle, pushes the request, approves at the fake, exchanges the code.
async fn connect(net: &FakeAtproto, config: &ClientConfig) -> Connected {
    try_connect(net, config).await.unwrap()
}

/// [`connect`], answering the code exchange's refusal.
async fn try_connect(net: &FakeAtproto, config: &ClientConfig) -> Result<Connected, PlatformError> {
    let (http, guard) = guarded();
    let dir = Directory {
        http: http.clone(),
        guard: guard.clone(),
        plc_url: net.pds.clone(),
        handle_resolver: net.pds.clone(),
    };
    let did = dir.resolve_handle(HANDLE).await.unwrap();
    assert_eq!(did, DID);
    let doc = dir.did_document(&did).await.unwrap();
    assert!(doc.lists_handle(HANDLE));
    let pds = doc.pds().unwrap();
    let issuer = dir.auth_server_of(&pds).await.unwrap();
    assert_eq!(issuer, net.issuer);
    let meta = dir
        .server_metadata(&issuer, config.confidential())
        .await
        .unwrap();

    let key = EsKey::generate();
    let verifier = SecretString::from(jwt::random_token(32));
    let state = jwt::random_token(32);
    let request_uri = oauth::push(
        &http,
        config,
        &key,
        &oauth::Push {
            par_endpoint: &meta.pushed_authorization_request_endpoint,
            issuer: &meta.issuer,
            state: &state,
            code_challenge: &jwt::sha256_b64(verifier.expose_secret()),
            login_hint: Some(HANDLE),
        },
    )
    .await
    .unwrap();
    // The browser's trip: the fake approves at once and redirects with code, state and iss.
    let res = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(&meta.authorization_endpoint)
        .query(&[
            ("client_id", config.client_id()),
            ("request_uri", request_uri),
        ])
        .send()
        .await
        .unwrap();
    let back = url::Url::parse(res.headers()[header::LOCATION].to_str().unwrap()).unwrap();
    assert!(back.as_str().starts_with(&config.redirect_uri()), "{back}");
    let q: std::collections::HashMap<_, _> = back.query_pairs().into_owned().collect();
    assert_eq!(q["state"], state);
    assert_eq!(q["iss"], issuer);

    let client_id = config.client_id();
    let tokens = oauth::exchange_code(
        &http,
        config,
        &key,
        &oauth::Grant {
            token_endpoint: &meta.token_endpoint,
            issuer: &issuer,
            client_id: &client_id,
            kid: None,
        },
        &q["code"],
        &verifier,
    )
    .await?;
    assert_eq!(tokens.sub, DID);
    assert!(tokens.scopes().contains(&"atproto".to_owned()));
    let expires_at = tokens.expires_at();
    let set = tokens.into_token_set();

    let mut extras = serde_json::Map::new();
    extras.insert("auth".into(), "oauth".into());
    extras.insert("pds_url".into(), pds.into());
    extras.insert("auth_server".into(), issuer.into());
    extras.insert("token_endpoint".into(), meta.token_endpoint.into());
    extras.insert("client_id".into(), client_id.into());
    if let Some(kid) = config.current_kid() {
        extras.insert("client_kid".into(), kid.into());
    }
    Ok(Connected {
        account: Account {
            platform_account_id: DID.into(),
            handle: HANDLE.into(),
            extras,
        },
        creds: Credentials {
            access_token: Some(set.access_token),
            refresh_token: set.refresh_token,
            dpop_key: Some(key.pkcs8().clone()),
            expires_at,
        },
        client: Bluesky::new(http, guard).with_oauth(config.clone()),
    })
}

fn post(net: &FakeAtproto, text: &str) -> PostRequest {
    let id = format!("shr_{}", uuid::Uuid::now_v7().simple());
    PostRequest {
        share_id: id.clone(),
        // A 404 on loopback: the card is left out, the post goes on.
        url: format!("{}/post/1", net.pds),
        title: None,
        text: Some(text.into()),
        image_url: None,
        media: Vec::new(),
        idempotency_key: id,
        checkpoint: Default::default(),
    }
}

#[tokio::test]
async fn a_confidential_client_connects_with_par_and_assertions_and_posts_with_dpop() {
    let net = FakeAtproto::start().await;
    let config = serve_client(vec![EsKey::generate()]).await;
    let c = connect(&net, &config).await;
    {
        let w = net.world();
        // PAR was challenged for a nonce once; the token request reused the nonce it learned.
        assert_eq!(w.as_nonce_challenges, 1);
        // The PAR (once it had the nonce) and the token request each carried a fresh, valid
        // assertion.
        assert_eq!(w.assertions_checked, 2);
        assert_eq!(w.last_par["login_hint"], HANDLE);
        assert_eq!(w.last_par["scope"], "atproto transition:generic");
        assert_eq!(w.last_par["code_challenge_method"], "S256");
    }

    let profile = c.client.verify(&c.account, &c.creds).await.unwrap();
    assert_eq!(profile.platform_account_id, DID);
    assert_eq!(profile.followers_count, Some(3));
    assert_eq!(net.world().pds_nonce_challenges, 1, "the PDS asked once");

    let published = c
        .client
        .share(&c.account, &c.creds, &post(&net, "Hello over DPoP"))
        .await
        .unwrap();
    assert!(published.post_id.starts_with(&format!("at://{DID}/")));
    assert_eq!(net.world().records.len(), 1);

    // The servers rotate their nonces: the next call is challenged and retried once.
    net.world().rotate_nonces();
    let page = c
        .client
        .followers_page(&c.account, &c.creds, Relation::Followers, None)
        .await
        .unwrap();
    assert_eq!(page.accounts.len(), 2);
    assert_eq!(net.world().pds_nonce_challenges, 2);
}

#[tokio::test]
async fn refresh_rotates_tokens_and_a_replayed_refresh_token_is_invalid_grant() {
    let net = FakeAtproto::start().await;
    let config = serve_client(vec![EsKey::generate()]).await;
    let c = connect(&net, &config).await;
    net.world().rotate_nonces(); // the refresh meets a stale AS nonce first

    let fresh = c.client.refresh(&c.account, &c.creds).await.unwrap();
    let new_refresh = fresh
        .refresh_token
        .clone()
        .expect("a rotated refresh token");
    assert_ne!(
        new_refresh.expose_secret(),
        c.creds.refresh_token.as_ref().unwrap().expose_secret()
    );
    assert!(fresh.expires_at.is_some());
    let mut renewed = c.creds.clone();
    renewed.access_token = Some(fresh.access_token);
    renewed.refresh_token = Some(new_refresh);
    c.client
        .share(&c.account, &renewed, &post(&net, "after a refresh"))
        .await
        .unwrap();
    assert_eq!(net.world().assertions_checked, 3);

    // The spent token again: the server kills the session, so even the newest token is dead.
    let err = c.client.refresh(&c.account, &c.creds).await.unwrap_err();
    assert!(matches!(err, PlatformError::InvalidGrant { .. }), "{err:?}");
    let err = c.client.refresh(&c.account, &renewed).await.unwrap_err();
    assert!(matches!(err, PlatformError::InvalidGrant { .. }), "{err:?}");
    assert_eq!(net.world().replays, 1);
}

#[tokio::test]
async fn an_expired_access_token_asks_for_a_refresh() {
    let net = FakeAtproto::start().await;
    let config = serve_client(vec![EsKey::generate()]).await;
    let c = connect(&net, &config).await;
    net.world().expire_next_access = true;
    let err = c
        .client
        .share(&c.account, &c.creds, &post(&net, "expired"))
        .await
        .unwrap_err();
    assert!(matches!(err, PlatformError::TokenExpired), "{err:?}");
    assert!(net.world().records.is_empty());
}

#[tokio::test]
async fn the_loopback_client_connects_and_refreshes_without_an_assertion() {
    let net = FakeAtproto::start().await;
    let config = ClientConfig {
        public_url: "http://127.0.0.1:9".into(),
        keys: vec![],
    };
    let c = connect(&net, &config).await;
    c.client.refresh(&c.account, &c.creds).await.unwrap();
    assert_eq!(net.world().assertions_checked, 0);
    assert_eq!(net.world().refreshes, 1);
}

#[tokio::test]
async fn a_refresh_that_names_another_account_is_refused() {
    let net = FakeAtproto::start().await;
    let config = serve_client(vec![EsKey::generate()]).await;
    let mut c = connect(&net, &config).await;
    // The stored DID is not the session's: the answer's `sub` gives it away.
    c.account.platform_account_id = OTHER_DID.into();
    let err = c.client.refresh(&c.account, &c.creds).await.unwrap_err();
    assert!(matches!(err, PlatformError::InvalidGrant { .. }), "{err:?}");
}

#[tokio::test]
async fn resolution_refuses_unknown_handles_and_unusable_servers() {
    let net = FakeAtproto::start().await;
    let (http, guard) = guarded();
    let dir = Directory {
        http,
        guard,
        plc_url: net.pds.clone(),
        handle_resolver: net.pds.clone(),
    };
    assert_eq!(
        dir.resolve_handle("nobody.test").await.unwrap_err().code,
        "handle_not_found"
    );
    assert_eq!(
        dir.resolve_handle("not a handle").await.unwrap_err().code,
        "invalid_handle"
    );
    // The PDS is not an authorization server: its metadata is not there.
    assert!(dir.server_metadata(&net.pds, true).await.is_err());
    // Under the strict guard, nothing on loopback is fetched at all.
    let strict = Directory {
        guard: SsrfGuard::strict(),
        ..dir
    };
    assert_eq!(
        strict.auth_server_of(&net.pds).await.unwrap_err().code,
        "url_refused"
    );
}

#[tokio::test]
async fn a_pds_whose_resource_metadata_names_another_resource_is_refused() {
    // RFC 9728 §3.3: the document must be about the server it was fetched from, or a PDS could
    // lend out another server's authorization server (and the reference client refuses it too).
    let net = FakeAtproto::start().await;
    net.world().resource_override = Some("https://elsewhere.example".into());
    let (http, guard) = guarded();
    let dir = Directory {
        http,
        guard,
        plc_url: net.pds.clone(),
        handle_resolver: net.pds.clone(),
    };
    let err = dir.auth_server_of(&net.pds).await.unwrap_err();
    assert_eq!(err.code, "no_authorization_server", "{err:?}");
    // The same document with a trailing slash on the resource is the same server.
    net.world().resource_override = Some(format!("{}/", net.pds));
    assert_eq!(dir.auth_server_of(&net.pds).await.unwrap(), net.issuer);
}

#[tokio::test]
async fn a_refresh_that_loses_transition_generic_is_invalid_grant_saying_so() {
    let net = FakeAtproto::start().await;
    let config = serve_client(vec![EsKey::generate()]).await;
    let c = connect(&net, &config).await;
    // The server still grants `atproto`, but no longer what posting needs.
    net.world().granted_scope = Some("atproto".into());
    let err = c.client.refresh(&c.account, &c.creds).await.unwrap_err();
    match err {
        PlatformError::InvalidGrant { reason } => {
            assert!(reason.contains("transition:generic"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    // Without `atproto` the answer is no AT Protocol session at all.
    net.world().granted_scope = Some("transition:generic".into());
    let err = try_connect(&net, &config).await.err().unwrap();
    assert!(matches!(err, PlatformError::Rejected { .. }), "{err:?}");
}

#[tokio::test]
async fn a_rotated_client_key_signs_new_sessions_while_old_sessions_keep_theirs() {
    let net = FakeAtproto::start().await;
    let (old, new) = (EsKey::generate(), EsKey::generate());
    let (before, served) = serve_rotating_client(vec![old.clone()]).await;
    let session = connect(&net, &before).await;
    assert_eq!(session.account.extra_str("client_kid"), Some(old.kid()));

    // Rotation: the new key goes first (it signs new sessions); the old one stays published
    // for the sessions it started.
    let after = ClientConfig {
        public_url: before.public_url.clone(),
        keys: vec![new.clone(), old.clone()],
    };
    *served.lock().unwrap() = after.clone();
    let published: Vec<String> = after.jwks()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(published, [new.kid(), old.kid()]);
    assert_eq!(after.client_id(), before.client_id(), "the same client");

    // The old session, refreshed under the new configuration, still signs with its own key.
    let running = Bluesky::new(guarded().0, guarded().1).with_oauth(after.clone());
    net.world().assertion_kids.clear();
    running
        .refresh(&session.account, &session.creds)
        .await
        .unwrap();
    assert_eq!(net.world().assertion_kids, [old.kid()]);

    // A new session is signed (PAR, code exchange) and recorded with the newest key.
    net.world().assertion_kids.clear();
    let fresh = connect(&net, &after).await;
    assert_eq!(fresh.account.extra_str("client_kid"), Some(new.kid()));
    assert_eq!(net.world().assertion_kids, [new.kid(), new.kid()]);
    net.world().assertion_kids.clear();
    fresh
        .client
        .refresh(&fresh.account, &fresh.creds)
        .await
        .unwrap();
    assert_eq!(net.world().assertion_kids, [new.kid()]);
}
