//! The Bluesky client against the real Bluesky development network (`@atproto/dev-env`: PLC, PDS
//! and AppView, the Bluesky team's own servers). Started by `tests/bluesky-devnet/run.sh`, which
//! passes the network's accounts in `HERALD_BLUESKY_DEVNET`; without it every test fails, on
//! purpose, rather than skipping. The OAuth tests run Herald's connect flow against the PDS's
//! authorization server and sign in on its real page through `HERALD_BLUESKY_CONSENT`
//! (`tests/bluesky-devnet/consent.mjs`, headless Chromium).

use std::{
    net::SocketAddr,
    sync::OnceLock,
    time::{Duration, Instant},
};

use axum::{
    Router,
    http::header,
    response::{IntoResponse, Response},
    routing::get,
};
use herald_platforms::{
    Account, Credentials, Platform, PostRequest, Relation,
    bluesky::{self, Bluesky},
    http,
    ssrf::SsrfGuard,
};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Debug, Deserialize)]
struct Devnet {
    pds_url: String,
    /// The PDS is its own OAuth authorization server: `http://localhost:PORT`.
    pds_issuer: String,
    plc_url: String,
    /// `https://loopback-{port}.devnet.internal`: the network fetches it from
    /// `http://localhost:{port}` (start.mjs), so a confidential client on 127.0.0.1 can be one.
    loopback_public_url: String,
    alice_did: String,
    alice_handle: String,
    /// The account password: the OAuth sign-in page refuses app passwords.
    alice_password: String,
    alice_app_password: String,
    bob_did: String,
    bob_handle: String,
    bob_password: String,
}

fn devnet() -> &'static Devnet {
    static NET: OnceLock<Devnet> = OnceLock::new();
    NET.get_or_init(|| {
        let raw = std::env::var("HERALD_BLUESKY_DEVNET").unwrap_or_else(|_| {
            panic!(
                "HERALD_BLUESKY_DEVNET is not set: these tests need the real Bluesky dev network. \
                 Run tests/bluesky-devnet/run.sh; see its header."
            )
        });
        serde_json::from_str(&raw).expect("HERALD_BLUESKY_DEVNET holds start.mjs's JSON line")
    })
}

fn client() -> Bluesky {
    // Everything here is on 127.0.0.1: the guard must let loopback through.
    let guard = SsrfGuard::allowing_private();
    Bluesky::new(http::client(&guard, Duration::from_secs(20)), guard)
}

fn account(did: &str, handle: &str) -> Account {
    let net = devnet();
    let extras = [
        ("pds_url".to_owned(), Value::from(net.pds_url.clone())),
        ("auth".to_owned(), "app_password".into()),
    ];
    Account {
        platform_account_id: did.into(),
        handle: handle.into(),
        extras: extras.into_iter().collect(),
    }
}

fn alice() -> (Account, Credentials) {
    let net = devnet();
    let creds = Credentials {
        access_token: Some(net.alice_app_password.clone().into()),
        ..Default::default()
    };
    (account(&net.alice_did, &net.alice_handle), creds)
}

/// Raw XRPC for what the test checks behind the client's back.
async fn xrpc_get(nsid: &str, query: &[(&str, &str)]) -> (u16, Value) {
    let res = reqwest::Client::new()
        .get(format!("{}/xrpc/{nsid}", devnet().pds_url))
        .query(query)
        .send()
        .await
        .unwrap();
    (
        res.status().as_u16(),
        res.json().await.unwrap_or(Value::Null),
    )
}

async fn xrpc_post(nsid: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{}/xrpc/{nsid}", devnet().pds_url))
        .json(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.unwrap();
    (
        res.status().as_u16(),
        res.json().await.unwrap_or(Value::Null),
    )
}

async fn login(identifier: &str, password: &str) -> String {
    let (status, body) = xrpc_post(
        "com.atproto.server.createSession",
        None,
        &json!({ "identifier": identifier, "password": password }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["accessJwt"].as_str().unwrap().to_owned()
}

/// A 1x1 PNG.
const PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4,
    0x89, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0xf8, 0xcf, 0xc0, 0xf0,
    0x1f, 0x00, 0x05, 0x00, 0x01, 0xff, 0x89, 0x99, 0x3d, 0x1d, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45,
    0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

/// The linked page: OpenGraph tags and an image, served locally.
async fn serve_page() -> String {
    let page = || async {
        let html = r#"<!doctype html><html><head><title>fallback</title>
            <meta property="og:title" content="Herald on the dev network">
            <meta property="og:description" content="A card built by the client &amp; checked on the PDS">
            <meta property="og:image" content="/card.png"></head><body></body></html>"#;
        ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
    };
    let image =
        || async { ([(header::CONTENT_TYPE, "image/png")], PNG).into_response() as Response };
    let app = Router::new()
        .route("/article", get(page))
        .route("/card.png", get(image));
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

#[tokio::test]
async fn connect_with_an_app_password_and_verify() {
    let net = devnet();
    let (account, creds) = alice();
    let profile = client().verify(&account, &creds).await.unwrap();
    assert_eq!(profile.platform_account_id, net.alice_did);
    assert_eq!(profile.handle, net.alice_handle);
    let tokens = client().refresh(&account, &creds).await.unwrap();
    use secrecy::ExposeSecret;
    assert_eq!(tokens.access_token.expose_secret(), net.alice_app_password);
}

#[tokio::test]
async fn a_share_lands_on_the_pds_with_text_facets_and_card_and_a_retry_does_not_post_twice() {
    let net = devnet();
    let (account, creds) = alice();
    let base = serve_page().await;
    let share_id = format!("shr_{}", uuid::Uuid::now_v7().simple());
    let post = PostRequest {
        share_id: share_id.clone(),
        url: format!("{base}/article"),
        title: Some("unused title".into()),
        text: Some(format!(
            "Ünïcödé 🦋 — an invitation for @{}:",
            net.bob_handle
        )),
        image_url: None,
        media: Vec::new(),
        idempotency_key: share_id.clone(),
        checkpoint: Default::default(),
    };
    let bsky = client();
    assert!(bsky.validate(&account, &post).is_ok());
    assert_eq!(
        bsky.find_published(&account, &creds, &post).await.unwrap(),
        None
    );
    let published = bsky.share(&account, &creds, &post).await.unwrap();

    let rkey = bluesky::tid::record_key(&share_id);
    assert_eq!(
        published.post_id,
        format!("at://{}/app.bsky.feed.post/{rkey}", net.alice_did)
    );
    assert_eq!(
        published.post_url.as_deref(),
        Some(format!("https://bsky.app/profile/{}/post/{rkey}", net.alice_handle).as_str())
    );

    // The record as the PDS stores it.
    let (status, got) = xrpc_get(
        "com.atproto.repo.getRecord",
        &[
            ("repo", &net.alice_did),
            ("collection", "app.bsky.feed.post"),
            ("rkey", &rkey),
        ],
    )
    .await;
    assert_eq!(status, 200, "{got}");
    let record = &got["value"];
    let text = record["text"].as_str().unwrap();
    assert_eq!(
        text,
        format!("{}\n\n{}", post.text.as_deref().unwrap(), post.url)
    );
    let facets = record["facets"].as_array().unwrap();
    let mention = format!("@{}", net.bob_handle);
    let m = text.find(&mention).unwrap();
    assert_eq!(
        facets[0]["index"],
        json!({ "byteStart": m, "byteEnd": m + mention.len() })
    );
    assert_eq!(
        facets[0]["features"][0],
        json!({ "$type": "app.bsky.richtext.facet#mention", "did": net.bob_did })
    );
    let l = text.find(&post.url).unwrap();
    assert_eq!(
        facets[1]["index"],
        json!({ "byteStart": l, "byteEnd": l + post.url.len() })
    );
    assert_eq!(
        facets[1]["features"][0],
        json!({ "$type": "app.bsky.richtext.facet#link", "uri": post.url })
    );
    let external = &record["embed"]["external"];
    assert_eq!(record["embed"]["$type"], "app.bsky.embed.external");
    assert_eq!(external["uri"], post.url);
    assert_eq!(external["title"], "Herald on the dev network");
    assert_eq!(
        external["description"],
        "A card built by the client & checked on the PDS"
    );
    assert_eq!(external["thumb"]["mimeType"], "image/png");
    assert_eq!(external["thumb"]["size"], PNG.len());
    // The thumbnail blob is stored and referenced (so the PDS keeps it).
    let cid = external["thumb"]["ref"]["$link"].as_str().unwrap();
    let blob = reqwest::Client::new()
        .get(format!("{}/xrpc/com.atproto.sync.getBlob", net.pds_url))
        .query(&[("did", net.alice_did.as_str()), ("cid", cid)])
        .send()
        .await
        .unwrap();
    assert_eq!(blob.status().as_u16(), 200);
    assert_eq!(blob.bytes().await.unwrap().as_ref(), PNG);

    // What the real PDS answers to a second create under the same key (documented in the client).
    let token = login(&net.alice_did, &net.alice_app_password).await;
    let (status, answer) = xrpc_post(
        "com.atproto.repo.createRecord",
        Some(&token),
        &json!({ "repo": net.alice_did, "collection": "app.bsky.feed.post", "rkey": rkey,
                 "record": { "$type": "app.bsky.feed.post", "text": "dup", "createdAt": "2026-01-01T00:00:00.000Z" } }),
    )
    .await;
    eprintln!("a repeated createRecord answers {status} {answer}");
    assert!(!(200..300).contains(&status));

    // A retry of the share is a success that names the same post, and writes nothing new.
    let count = || async {
        let (_, list) = xrpc_get(
            "com.atproto.repo.listRecords",
            &[
                ("repo", &net.alice_did),
                ("collection", "app.bsky.feed.post"),
                ("limit", "100"),
            ],
        )
        .await;
        list["records"].as_array().unwrap().len()
    };
    let before = count().await;
    assert_eq!(
        client().share(&account, &creds, &post).await.unwrap(),
        published
    );
    assert_eq!(count().await, before);
    assert_eq!(
        bsky.find_published(&account, &creds, &post).await.unwrap(),
        Some(published)
    );
}

#[tokio::test]
async fn two_images_with_alt_text_land_on_the_pds_in_order_and_their_blobs_read_back() {
    use herald_platforms::{
        media::{Image, ImageType, sha256_hex},
        testing::solid_png,
    };
    let net = devnet();
    let (account, creds) = alice();
    let image = |w: u32, h: u32, rgb: [u8; 3], alt: &str| {
        let bytes = solid_png(w, h, rgb);
        Image {
            sha256: sha256_hex(&bytes),
            kind: ImageType::Png,
            bytes: bytes.into(),
            width: w,
            height: h,
            alt: Some(alt.to_owned()),
            public_url: None,
        }
    };
    let images = vec![
        image(40, 30, [200, 30, 30], "A red field, wider than tall"),
        image(30, 40, [30, 30, 200], "A blue field, taller than wide 🦋"),
    ];
    let share_id = format!("shr_{}", uuid::Uuid::now_v7().simple());
    let post = PostRequest {
        share_id: share_id.clone(),
        url: "https://blog.example/two-pictures".into(),
        title: None,
        text: Some("Two pictures".into()),
        image_url: None,
        media: images.clone(),
        idempotency_key: share_id.clone(),
        checkpoint: Default::default(),
    };
    client().share(&account, &creds, &post).await.unwrap();

    let rkey = bluesky::tid::record_key(&share_id);
    let (status, got) = xrpc_get(
        "com.atproto.repo.getRecord",
        &[
            ("repo", &net.alice_did),
            ("collection", "app.bsky.feed.post"),
            ("rkey", &rkey),
        ],
    )
    .await;
    assert_eq!(status, 200, "{got}");
    let embed = &got["value"]["embed"];
    assert_eq!(embed["$type"], "app.bsky.embed.images", "{got}");
    let stored = embed["images"].as_array().unwrap();
    assert_eq!(stored.len(), 2);
    for (s, img) in stored.iter().zip(&images) {
        assert_eq!(s["alt"], img.alt.clone().unwrap());
        assert_eq!(
            s["aspectRatio"],
            json!({ "width": img.width, "height": img.height })
        );
        assert_eq!(s["image"]["mimeType"], "image/png");
        let cid = s["image"]["ref"]["$link"].as_str().unwrap();
        let blob = reqwest::Client::new()
            .get(format!("{}/xrpc/com.atproto.sync.getBlob", net.pds_url))
            .query(&[("did", net.alice_did.as_str()), ("cid", cid)])
            .send()
            .await
            .unwrap();
        assert_eq!(blob.status().as_u16(), 200);
        assert_eq!(blob.bytes().await.unwrap().as_ref(), img.bytes.as_ref());
    }
}

#[tokio::test]
async fn the_pds_counts_graphemes_as_the_client_does() {
    let net = devnet();
    let token = login(&net.alice_did, &net.alice_app_password).await;
    let family = "👨‍👩‍👧"; // one grapheme, 18 bytes
    for (n, accepted) in [(150, true), (301, false)] {
        let text = family.repeat(n);
        let (status, body) = xrpc_post(
            "com.atproto.repo.createRecord",
            Some(&token),
            &json!({ "repo": net.alice_did, "collection": "app.bsky.feed.post",
                     "record": { "$type": "app.bsky.feed.post", "text": text, "createdAt": "2026-01-01T00:00:00.000Z" } }),
        )
        .await;
        assert_eq!(status == 200, accepted, "{n} graphemes: {status} {body}");
        let post = PostRequest {
            share_id: "shr_x".into(),
            url: text.clone(),
            title: None,
            text: None,
            image_url: None,
            media: Vec::new(),
            idempotency_key: "shr_x".into(),
            checkpoint: Default::default(),
        };
        assert_eq!(client().validate(&alice().0, &post).is_ok(), accepted);
    }
}

#[tokio::test]
async fn follower_sync_sees_a_new_follower_once_the_appview_indexes_it() {
    let net = devnet();
    let bob_token = login(&net.bob_did, &net.bob_password).await;
    let (status, body) = xrpc_post(
        "com.atproto.repo.createRecord",
        Some(&bob_token),
        &json!({ "repo": net.bob_did, "collection": "app.bsky.graph.follow",
                 "record": { "$type": "app.bsky.graph.follow", "subject": net.alice_did,
                             "createdAt": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true) } }),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    let (alice, alice_creds) = alice();
    let bsky = client();
    // The AppView indexes the follow from the PDS's firehose, asynchronously: poll.
    let started = Instant::now();
    loop {
        let page = bsky
            .followers_page(&alice, &alice_creds, Relation::Followers, None)
            .await
            .unwrap();
        if page
            .accounts
            .iter()
            .any(|a| a.platform_account_id == net.bob_did && a.handle == net.bob_handle)
        {
            eprintln!("the follower showed up after {:?}", started.elapsed());
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "bob never showed up among alice's followers: {page:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // And from bob's side, with his own (account) password in the app-password slot.
    let bob = account(&net.bob_did, &net.bob_handle);
    let bob_creds = Credentials {
        access_token: Some(net.bob_password.clone().into()),
        ..Default::default()
    };
    let follows = bsky
        .followers_page(&bob, &bob_creds, Relation::Follows, None)
        .await
        .unwrap();
    assert!(
        follows
            .accounts
            .iter()
            .any(|a| a.platform_account_id == net.alice_did),
        "{follows:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// AT Protocol OAuth through the PDS's authorization page
// ---------------------------------------------------------------------------------------------

mod oauth {
    use std::sync::Arc;

    use axum::{Router, routing::get};
    use herald_jobs::{
        Ctx, Settings,
        connect::{self, Callback, CallbackParams, StartRequest},
        handlers::refresh::{self, Refresh},
        queue::{SqliteQueue, Wakeups},
        settings::BlueskySettings,
        store::{Pool, Store, StoredTokens},
        vault::KeyRing,
    };
    use herald_platforms::{
        PlatformKind, Platforms, PostRequest,
        bluesky::{
            Bluesky,
            jwt::EsKey,
            oauth::{CLIENT_METADATA_PATH, JWKS_PATH},
        },
        http,
        ssrf::SsrfGuard,
    };
    use secrecy::ExposeSecret;
    use std::time::Duration;

    use super::{devnet, xrpc_get};

    const RETURN_URL: &str = "https://app.example/after";

    /// A Herald process's context on a fresh SQLite store, pointed at the dev network: its PLC,
    /// the PDS as handle resolver, and `public_url` as this Herald's public origin.
    async fn herald(public_url: String, keys: Vec<EsKey>) -> (Ctx, String) {
        let net = devnet();
        let path = std::env::temp_dir().join(format!(
            "herald-devnet-oauth-{}.db",
            uuid::Uuid::now_v7().simple()
        ));
        let store = Store::connect(&format!("sqlite:{}", path.display()))
            .await
            .unwrap();
        store.migrate().await.unwrap();
        let Pool::Sqlite(pool) = store.pool() else {
            unreachable!("a sqlite: URL")
        };
        let pool = pool.clone();
        let tenant = store
            .ensure_tenant("devnet", chrono::Utc::now())
            .await
            .unwrap();
        let guard = SsrfGuard::allowing_private();
        let settings = Settings {
            ssrf: guard.clone(),
            platform_timeout: Duration::from_secs(20),
            public_url,
            bluesky: BlueskySettings {
                client_keys: keys,
                plc_url: net.plc_url.clone(),
                handle_resolver: net.pds_url.clone(),
                ..BlueskySettings::default()
            },
            ..Settings::default()
        };
        let bsky = Bluesky::new(http::client(&guard, settings.platform_timeout), guard)
            .with_oauth(settings.bluesky_client());
        let ctx = Ctx {
            store,
            // The flows below push nothing; the queue is there because every context has one.
            queue: Arc::new(SqliteQueue::new(pool, Wakeups::new())),
            vault: Arc::new(KeyRing::parse(&KeyRing::generate_spec()).unwrap()),
            platforms: Platforms::default().with(Arc::new(bsky)),
            http: http::client(&settings.ssrf, settings.platform_timeout),
            settings: Arc::new(settings),
        };
        (ctx, tenant)
    }

    /// A confidential Herald: its client metadata and JWKS served on 127.0.0.1:PORT, which the
    /// network reaches as `https://loopback-PORT.devnet.internal`.
    async fn confidential_herald() -> (Ctx, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let public = devnet()
            .loopback_public_url
            .replace("{port}", &port.to_string());
        let (ctx, tenant) = herald(public, vec![EsKey::generate()]).await;
        let client = ctx.settings.bluesky_client();
        let (meta, jwks) = (client.metadata().unwrap(), client.jwks());
        let app = Router::new()
            .route(
                CLIENT_METADATA_PATH,
                get(move || async move { axum::Json(meta) }),
            )
            .route(JWKS_PATH, get(move || async move { axum::Json(jwks) }));
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (ctx, tenant)
    }

    /// `POST /v1/connect/bluesky`'s work: answers the authorization URL.
    async fn start(ctx: &Ctx, tenant: &str) -> String {
        let started = connect::start(
            ctx,
            &StartRequest {
                tenant_id: tenant,
                user_id: "devnet-user",
                platform: PlatformKind::Bluesky,
                return_url: RETURN_URL,
                instance_url: None,
                handle: Some(&devnet().alice_handle),
                server_url: None,
            },
        )
        .await
        .unwrap_or_else(|e| panic!("the flow did not start: {e}"));
        assert!(
            started
                .authorization_url
                .starts_with(&format!("{}/oauth/authorize?", devnet().pds_issuer)),
            "{}",
            started.authorization_url
        );
        started.authorization_url
    }

    /// Alice signs in on the PDS's page and consents (or denies): answers the URL the page sends
    /// the browser back to. Awaited, not blocking: the page makes the PDS fetch this test's
    /// client metadata meanwhile.
    async fn consent(authorization_url: &str, deny: bool) -> url::Url {
        let driver = std::env::var("HERALD_BLUESKY_CONSENT").unwrap_or_else(|_| {
            panic!(
                "HERALD_BLUESKY_CONSENT is not set: run tests/bluesky-devnet/run.sh, which points \
                 it at consent.mjs"
            )
        });
        let net = devnet();
        let mut cmd = tokio::process::Command::new(driver);
        if deny {
            cmd.arg("--deny");
        }
        let out = cmd
            .args([authorization_url, &net.alice_handle, &net.alice_password])
            .output()
            .await
            .expect("consent.mjs runs");
        assert!(
            out.status.success(),
            "consent.mjs failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        url::Url::parse(String::from_utf8_lossy(&out.stdout).trim()).unwrap()
    }

    /// The browser arrives at Herald's callback: answers the query put on the return URL.
    async fn finish(ctx: &Ctx, back: &url::Url) -> std::collections::HashMap<String, String> {
        let q: std::collections::HashMap<_, _> = back.query_pairs().into_owned().collect();
        assert!(
            back.as_str()
                .starts_with(&ctx.settings.redirect_uri(PlatformKind::Bluesky)),
            "{back}"
        );
        let params = CallbackParams {
            code: q.get("code").cloned(),
            state: q.get("state").cloned(),
            error: q.get("error").cloned(),
            iss: q.get("iss").cloned(),
        };
        match connect::finish(ctx, PlatformKind::Bluesky, &params)
            .await
            .unwrap()
        {
            Callback::Redirect(to) => {
                assert!(to.as_str().starts_with(RETURN_URL), "{to}");
                to.query_pairs().into_owned().collect()
            }
            Callback::UnknownState => panic!("the state was not recognised"),
        }
    }

    fn post(text: &str) -> PostRequest {
        let id = format!("shr_{}", uuid::Uuid::now_v7().simple());
        PostRequest {
            share_id: id.clone(),
            // Not fetched: a loopback port nothing listens on, so no card, no DNS.
            url: "http://127.0.0.1:9/devnet-oauth".into(),
            title: None,
            text: Some(text.into()),
            image_url: None,
            media: Vec::new(),
            idempotency_key: id,
            checkpoint: Default::default(),
        }
    }

    #[tokio::test]
    async fn a_confidential_client_connects_through_the_page_posts_refreshes_and_a_replay_needs_reauth()
     {
        let net = devnet();
        let (ctx, tenant) = confidential_herald().await;
        let auth = start(&ctx, &tenant).await;
        let q = finish(&ctx, &consent(&auth, false).await).await;
        let id = q
            .get("connection_id")
            .unwrap_or_else(|| panic!("no connection: {q:?}"))
            .clone();

        let row = ctx.store.connection(&id).await.unwrap().unwrap();
        assert_eq!(row.platform_account_id, net.alice_did);
        assert_eq!(row.handle, net.alice_handle);
        assert!(row.scopes.contains("atproto"), "{}", row.scopes);
        let account = row.account();
        assert_eq!(account.extra_str("auth"), Some("oauth"));
        assert_eq!(
            account.extra_str("auth_server"),
            Some(net.pds_issuer.as_str())
        );

        // A post with the OAuth session, read back from the PDS.
        let bsky = ctx.platforms.get(PlatformKind::Bluesky).unwrap();
        let creds = row.credentials(&ctx.vault).unwrap();
        let published = bsky
            .share(
                &account,
                &creds,
                &post("Posted by Herald over AT Protocol OAuth"),
            )
            .await
            .unwrap();
        let rkey = published.post_id.rsplit('/').next().unwrap().to_owned();
        let (status, got) = xrpc_get(
            "com.atproto.repo.getRecord",
            &[
                ("repo", &net.alice_did),
                ("collection", "app.bsky.feed.post"),
                ("rkey", &rkey),
            ],
        )
        .await;
        assert_eq!(status, 200, "{got}");
        assert_eq!(
            got["value"]["text"]
                .as_str()
                .map(|t| t.starts_with("Posted by Herald over AT Protocol OAuth")),
            Some(true),
            "{got}"
        );

        // The single-flight refresh spends the refresh token and stores the rotated pair.
        let spent = creds.refresh_token.clone().unwrap();
        assert!(matches!(
            refresh::refresh_connection(&ctx, &id).await.unwrap(),
            Refresh::Refreshed(_)
        ));
        let row = ctx.store.connection(&id).await.unwrap().unwrap();
        let fresh = row.credentials(&ctx.vault).unwrap();
        assert_ne!(
            fresh.refresh_token.as_ref().unwrap().expose_secret(),
            spent.expose_secret()
        );
        let verified = bsky.verify(&row.account(), &fresh).await.unwrap();
        assert_eq!(verified.platform_account_id, net.alice_did);

        // The spent refresh token comes back (a stale copy written over the new one): spending
        // it is a replay, the PDS ends the session, and the connection needs reauth.
        ctx.store
            .store_refreshed_tokens(
                &id,
                row.token_generation,
                &StoredTokens {
                    refresh_token: Some(spent),
                    expires_at: row.token_expires_at,
                    ..Default::default()
                },
                &ctx.vault,
                chrono::Utc::now(),
            )
            .await
            .unwrap();
        assert!(matches!(
            refresh::refresh_connection(&ctx, &id).await.unwrap(),
            Refresh::Dead(_)
        ));
        let row = ctx.store.connection(&id).await.unwrap().unwrap();
        assert!(row.needs_reauth);
        assert!(
            row.last_error
                .as_deref()
                .unwrap_or("")
                .contains("invalid_grant"),
            "{:?}",
            row.last_error
        );
        // The session is gone at the PDS: the newest tokens are refused too.
        let err = bsky.refresh(&row.account(), &fresh).await.unwrap_err();
        assert!(
            matches!(err, herald_platforms::PlatformError::InvalidGrant { .. }),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn the_loopback_development_client_connects_refreshes_is_revoked_and_a_denial_comes_back_as_denied()
     {
        let net = devnet();
        // No keys: the public loopback client; the redirect URI is on 127.0.0.1 (nothing needs
        // to listen there: the test calls the callback itself).
        let (ctx, tenant) = herald("http://127.0.0.1:8080".into(), vec![]).await;
        let auth = start(&ctx, &tenant).await;
        assert!(
            auth.contains("client_id=http%3A%2F%2Flocalhost%3F"),
            "{auth}"
        );
        let q = finish(&ctx, &consent(&auth, false).await).await;
        let id = q
            .get("connection_id")
            .unwrap_or_else(|| panic!("no connection: {q:?}"))
            .clone();
        let row = ctx.store.connection(&id).await.unwrap().unwrap();
        assert_eq!(row.platform_account_id, net.alice_did);
        assert!(matches!(
            refresh::refresh_connection(&ctx, &id).await.unwrap(),
            Refresh::Refreshed(_)
        ));
        let row = ctx.store.connection(&id).await.unwrap().unwrap();
        let bsky = ctx.platforms.get(PlatformKind::Bluesky).unwrap();
        let creds = row.credentials(&ctx.vault).unwrap();
        assert_eq!(
            bsky.verify(&row.account(), &creds).await.unwrap().handle,
            net.alice_handle
        );
        // Removing the connection revokes the session at the PDS: its refresh token is dead.
        assert_eq!(
            connect::revoke(&ctx, &row).await,
            herald_platforms::oauth::Revoked::Revoked
        );
        let err = bsky.refresh(&row.account(), &creds).await.unwrap_err();
        assert!(
            matches!(err, herald_platforms::PlatformError::InvalidGrant { .. }),
            "{err:?}"
        );

        let auth = start(&ctx, &tenant).await;
        let q = finish(&ctx, &consent(&auth, true).await).await;
        assert_eq!(q.get("error").map(String::as_str), Some("denied"), "{q:?}");
    }
}
