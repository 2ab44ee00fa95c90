//! The Bluesky client against the real Bluesky development network (`@atproto/dev-env`: PLC, PDS
//! and AppView, the Bluesky team's own servers). Started by `tests/bluesky-devnet/run.sh`, which
//! passes the network's accounts in `HERALD_BLUESKY_DEVNET`; without it every test fails, on
//! purpose, rather than skipping.

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
use herald_jobs::{
    platform::{
        Account, Credentials, Platform, PostRequest, Relation,
        bluesky::{self, Bluesky},
        http,
    },
    ssrf::SsrfGuard,
};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Debug, Deserialize)]
struct Devnet {
    pds_url: String,
    alice_did: String,
    alice_handle: String,
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

    let rkey = bluesky::record_key(&share_id);
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
