//! The Bluesky client against a local server answering as the AT Protocol documents: a PDS's
//! XRPC endpoints (sessions, records, blobs, handles, the AppView's graph proxied) and the web
//! pages a link card is built from. The real network is in `bluesky_devnet.rs`. The OAuth
//! client (PAR, DPoP, client assertions, refresh) is in `bluesky/oauth.rs`, against the local
//! AT Protocol network the end-to-end suite uses too.

#[path = "../../tests/e2e/support/atproto.rs"]
mod atproto;
#[path = "bluesky/oauth.rs"]
mod oauth;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use herald_platforms::{
    Account, Credentials, LimitScope, Platform, PlatformError, PostRequest, Relation,
    bluesky::{self, Bluesky},
    http,
    ssrf::SsrfGuard,
};
use serde_json::{Value, json};

const DID: &str = "did:plc:ewvi7nxzyoun6zhxrhs64oiz";
const HANDLE: &str = "herald.test";
const APP_PASSWORD: &str = "abcd-efgh-ijkl-mnop";
const FRIEND_DID: &str = "did:plc:friendfriendfriendfriend";

/// What the fake PDS has seen and holds.
#[derive(Default)]
struct Pds {
    records: HashMap<String, Value>,
    create_bodies: Vec<Value>,
    blobs: Vec<(String, usize)>,
    create_sessions: usize,
    refresh_sessions: usize,
    next_token: usize,
    access: Vec<String>,
    refresh: Vec<String>,
    /// Answers every create with this status and body, once.
    fail_next_create: Option<(StatusCode, Value)>,
    rate_limit_next: bool,
    taken_down: bool,
    /// Requests of this method wait for a permit (a slow login the test lets go of).
    hold: Option<(&'static str, Arc<tokio::sync::Semaphore>)>,
    /// Pages fetched from `/counted-missing` (each answered 404: no card).
    page_hits: usize,
    /// Calls refused for an expired access token.
    expired_answers: usize,
}

type Shared = Arc<Mutex<Pds>>;

fn xrpc_error(status: StatusCode, error: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({ "error": error, "message": message })),
    )
        .into_response()
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::to_owned)
}

fn new_session(pds: &mut Pds) -> Value {
    pds.next_token += 1;
    let (a, r) = (
        format!("access-{}", pds.next_token),
        format!("refresh-{}", pds.next_token),
    );
    pds.access.push(a.clone());
    pds.refresh.push(r.clone());
    json!({ "accessJwt": a, "refreshJwt": r, "did": DID, "handle": HANDLE, "active": true })
}

async fn xrpc(
    State(shared): State<Shared>,
    Path(nsid): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let held = shared.lock().unwrap().hold.clone();
    if let Some((method, gate)) = held
        && method == nsid
    {
        let _permit = gate.acquire().await;
    }
    let mut pds = shared.lock().unwrap();
    let token = bearer(&headers);
    let authed = token.as_ref().is_some_and(|t| pds.access.contains(t));
    let needs_auth = matches!(
        nsid.as_str(),
        "com.atproto.server.getSession"
            | "com.atproto.repo.createRecord"
            | "com.atproto.repo.uploadBlob"
            | "app.bsky.graph.getFollowers"
            | "app.bsky.graph.getFollows"
            | "app.bsky.actor.getProfile"
    );
    if needs_auth && !authed {
        // The reference PDS answers an expired access JWT with 400 ExpiredToken.
        pds.expired_answers += 1;
        return xrpc_error(StatusCode::BAD_REQUEST, "ExpiredToken", "Token has expired");
    }
    let json_body = || serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null);
    match nsid.as_str() {
        "com.atproto.server.createSession" => {
            pds.create_sessions += 1;
            let b = json_body();
            if pds.taken_down {
                return xrpc_error(
                    StatusCode::UNAUTHORIZED,
                    "AccountTakedown",
                    "Account has been taken down",
                );
            }
            if b["password"] != APP_PASSWORD
                || (b["identifier"] != DID && b["identifier"] != HANDLE)
            {
                return xrpc_error(
                    StatusCode::UNAUTHORIZED,
                    "AuthenticationRequired",
                    "Invalid identifier or password",
                );
            }
            axum::Json(new_session(&mut pds)).into_response()
        }
        "com.atproto.server.refreshSession" => {
            pds.refresh_sessions += 1;
            match token {
                Some(t) if pds.refresh.contains(&t) => {
                    axum::Json(new_session(&mut pds)).into_response()
                }
                _ => xrpc_error(StatusCode::BAD_REQUEST, "ExpiredToken", "Token has expired"),
            }
        }
        "com.atproto.server.getSession" => {
            axum::Json(json!({ "did": DID, "handle": HANDLE, "active": true })).into_response()
        }
        "com.atproto.identity.resolveHandle" => match q.get("handle").map(String::as_str) {
            Some("friend.test") => axum::Json(json!({ "did": FRIEND_DID })).into_response(),
            _ => xrpc_error(
                StatusCode::BAD_REQUEST,
                "InvalidRequest",
                "Unable to resolve handle",
            ),
        },
        "com.atproto.repo.uploadBlob" => {
            let mime = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            pds.blobs.push((mime.clone(), body.len()));
            axum::Json(json!({ "blob": {
                "$type": "blob",
                "ref": { "$link": "bafkreibme22gw2h7y2h7tg2fhqotaqjucnbc24deqo72b6mkl2egezxhvy" },
                "mimeType": mime,
                "size": body.len(),
            }}))
            .into_response()
        }
        "com.atproto.repo.createRecord" => {
            let b = json_body();
            pds.create_bodies.push(b.clone());
            if pds.rate_limit_next {
                pds.rate_limit_next = false;
                return (
                    StatusCode::TOO_MANY_REQUESTS,
                    [
                        ("ratelimit-limit", "5000"),
                        ("ratelimit-remaining", "0"),
                        ("retry-after", "42"),
                    ],
                    axum::Json(
                        json!({ "error": "RateLimitExceeded", "message": "Rate Limit Exceeded" }),
                    ),
                )
                    .into_response();
            }
            if let Some((status, body)) = pds.fail_next_create.take() {
                return (status, axum::Json(body)).into_response();
            }
            let rkey = b["rkey"].as_str().unwrap_or("").to_owned();
            if !bluesky::tid::is_valid_tid(&rkey) {
                return xrpc_error(
                    StatusCode::BAD_REQUEST,
                    "InvalidRequest",
                    "Invalid record key",
                );
            }
            if b["record"]["text"]
                .as_str()
                .is_some_and(|t| t.chars().count() > 300)
            {
                return xrpc_error(
                    StatusCode::BAD_REQUEST,
                    "InvalidRequest",
                    "Invalid app.bsky.feed.post record",
                );
            }
            if pds.records.contains_key(&rkey) {
                // What the reference PDS does with a taken key: a bare 500.
                return xrpc_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalServerError",
                    "Internal Server Error",
                );
            }
            pds.records.insert(rkey.clone(), b["record"].clone());
            axum::Json(json!({
                "uri": format!("at://{DID}/app.bsky.feed.post/{rkey}"),
                "cid": "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm",
                "validationStatus": "valid",
            }))
            .into_response()
        }
        "com.atproto.repo.getRecord" => {
            let rkey = q.get("rkey").cloned().unwrap_or_default();
            match pds.records.get(&rkey) {
                Some(v) if q.get("repo").map(String::as_str) == Some(DID) => axum::Json(json!({
                    "uri": format!("at://{DID}/app.bsky.feed.post/{rkey}"),
                    "cid": "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm",
                    "value": v,
                }))
                .into_response(),
                _ => xrpc_error(
                    StatusCode::BAD_REQUEST,
                    "RecordNotFound",
                    "Could not locate record",
                ),
            }
        }
        "app.bsky.graph.getFollowers" | "app.bsky.graph.getFollows" => {
            assert_eq!(q.get("actor").map(String::as_str), Some(DID));
            assert_eq!(q.get("limit").map(String::as_str), Some("100"));
            let key = if nsid.ends_with("Followers") {
                "followers"
            } else {
                "follows"
            };
            let actor =
                |n: u32| json!({ "did": format!("did:plc:f{n}"), "handle": format!("f{n}.test") });
            match q.get("cursor").map(String::as_str) {
                None => axum::Json(
                    json!({ "subject": actor(0), key: [actor(1), actor(2)], "cursor": "page2" }),
                )
                .into_response(),
                Some("page2") => {
                    axum::Json(json!({ "subject": actor(0), key: [actor(3)] })).into_response()
                }
                Some(_) => xrpc_error(StatusCode::BAD_REQUEST, "InvalidRequest", "bad cursor"),
            }
        }
        "app.bsky.actor.getProfile" => {
            axum::Json(json!({ "did": DID, "handle": HANDLE, "followersCount": 3 })).into_response()
        }
        _ => xrpc_error(
            StatusCode::NOT_IMPLEMENTED,
            "MethodNotImplemented",
            "Method Not Implemented",
        ),
    }
}

/// A 1x1 PNG.
const PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4,
    0x89, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0xf8, 0xcf, 0xc0, 0xf0,
    0x1f, 0x00, 0x05, 0x00, 0x01, 0xff, 0x89, 0x99, 0x3d, 0x1d, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45,
    0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

fn page(image: &str) -> Response {
    let html = format!(
        r#"<!doctype html><html><head><title>Ignored</title>
        <meta property="og:title" content="Herald &amp; friends">
        <meta property="og:description" content="Durable jobs — for sharing">
        <meta property="og:image" content="{image}"></head><body>hi</body></html>"#
    );
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
}

struct Server {
    base: String,
    pds: Shared,
    client: Bluesky,
}

async fn server() -> Server {
    let pds: Shared = Arc::default();
    let app = Router::new()
        .route("/xrpc/{nsid}", get(xrpc).post(xrpc))
        .route("/page", get(|| async { page("/img.png") }))
        .route(
            "/counted-missing",
            get(|State(pds): State<Shared>| async move {
                pds.lock().unwrap().page_hits += 1;
                StatusCode::NOT_FOUND
            }),
        )
        .route("/big-image-page", get(|| async { page("/big.png") }))
        .route(
            "/moved",
            get(|| async { (StatusCode::FOUND, [(header::LOCATION, "/page")]).into_response() }),
        )
        .route(
            "/img.png",
            get(|| async { ([(header::CONTENT_TYPE, "image/png")], PNG).into_response() }),
        )
        .route(
            "/big.png",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "image/png")],
                    vec![0u8; bluesky::link_card::MAX_THUMB_BYTES + 1],
                )
                    .into_response()
            }),
        )
        .with_state(pds.clone());
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let guard = SsrfGuard::allowing_private();
    let client = Bluesky::new(http::client(&guard, Duration::from_secs(10)), guard);
    Server { base, pds, client }
}

impl Server {
    fn account(&self) -> Account {
        let extras = [
            ("pds_url".to_owned(), Value::from(self.base.clone())),
            ("auth".to_owned(), "app_password".into()),
        ];
        Account {
            platform_account_id: DID.into(),
            handle: HANDLE.into(),
            extras: extras.into_iter().collect(),
        }
    }

    fn post(&self, id: &str, text: &str, path: &str) -> PostRequest {
        PostRequest {
            share_id: id.into(),
            url: format!("{}{path}", self.base),
            title: Some("A title".into()),
            text: Some(text.into()),
            image_url: None,
            idempotency_key: id.into(),
            checkpoint: Default::default(),
        }
    }

    fn pds(&self) -> std::sync::MutexGuard<'_, Pds> {
        self.pds.lock().unwrap()
    }
}

impl Pds {
    /// Logins and refreshes so far (read under one lock).
    fn counts(&self) -> (usize, usize) {
        (self.create_sessions, self.refresh_sessions)
    }
}

fn creds(password: &str) -> Credentials {
    Credentials {
        access_token: Some(password.to_owned().into()),
        ..Default::default()
    }
}

fn share_id() -> String {
    format!("shr_{}", uuid::Uuid::now_v7().simple())
}

#[tokio::test]
async fn a_share_posts_text_facets_at_byte_offsets_and_a_link_card_with_thumbnail() {
    let s = server().await;
    let id = share_id();
    let post = s.post(
        &id,
        "Café ☕ 👨‍👩‍👧 with @friend.test and @nobody.test —",
        "/page",
    );
    let published = s
        .client
        .share(&s.account(), &creds(APP_PASSWORD), &post)
        .await
        .unwrap();

    let rkey = bluesky::tid::record_key(&id);
    assert!(bluesky::tid::is_valid_tid(&rkey));
    assert_eq!(
        published.post_id,
        format!("at://{DID}/app.bsky.feed.post/{rkey}")
    );
    assert_eq!(
        published.post_url.as_deref(),
        Some(format!("https://bsky.app/profile/{HANDLE}/post/{rkey}").as_str())
    );

    let pds = s.pds();
    assert_eq!(pds.create_sessions, 1);
    let body = &pds.create_bodies[0];
    assert_eq!(body["repo"], DID);
    assert_eq!(body["collection"], "app.bsky.feed.post");
    assert_eq!(body["rkey"], rkey.as_str());
    let record = &body["record"];
    let text = record["text"].as_str().unwrap();
    assert_eq!(
        text,
        format!("{}\n\n{}", post.text.as_deref().unwrap(), post.url)
    );
    assert_eq!(record["$type"], "app.bsky.feed.post");
    assert!(record["createdAt"].as_str().unwrap().ends_with('Z'));

    // Facets index UTF-8 bytes: the mention starts after multi-byte characters.
    let facets = record["facets"].as_array().unwrap();
    assert_eq!(
        facets.len(),
        2,
        "the unresolvable mention stays plain text: {facets:#?}"
    );
    let mention_at = text.find("@friend.test").unwrap();
    assert!(
        mention_at > text[..mention_at].chars().count(),
        "the text before it is not ASCII"
    );
    assert_eq!(
        facets[0]["index"],
        json!({ "byteStart": mention_at, "byteEnd": mention_at + "@friend.test".len() })
    );
    assert_eq!(
        facets[0]["features"][0],
        json!({ "$type": "app.bsky.richtext.facet#mention", "did": FRIEND_DID })
    );
    let link_at = text.find(&post.url).unwrap();
    assert_eq!(
        facets[1]["index"],
        json!({ "byteStart": link_at, "byteEnd": text.len() })
    );
    assert_eq!(
        facets[1]["features"][0],
        json!({ "$type": "app.bsky.richtext.facet#link", "uri": post.url })
    );
    assert_eq!(&text.as_bytes()[link_at..], post.url.as_bytes());

    // The card: OpenGraph title and description, the image uploaded as a blob and referenced.
    let external = &record["embed"]["external"];
    assert_eq!(record["embed"]["$type"], "app.bsky.embed.external");
    assert_eq!(external["uri"], post.url);
    assert_eq!(external["title"], "Herald & friends");
    assert_eq!(external["description"], "Durable jobs — for sharing");
    assert_eq!(pds.blobs, vec![("image/png".to_owned(), PNG.len())]);
    assert_eq!(external["thumb"]["$type"], "blob");
    assert_eq!(external["thumb"]["mimeType"], "image/png");
    assert!(external["thumb"]["ref"]["$link"].is_string());
}

#[tokio::test]
async fn a_retry_of_the_same_share_writes_the_same_record_key_and_reads_it_back() {
    let s = server().await;
    let (account, creds) = (s.account(), creds(APP_PASSWORD));
    let post = s.post(&share_id(), "once only", "/missing");
    assert_eq!(
        s.client
            .find_published(&account, &creds, &post)
            .await
            .unwrap(),
        None
    );

    let first = s.client.share(&account, &creds, &post).await.unwrap();
    let second = s.client.share(&account, &creds, &post).await.unwrap();
    assert_eq!(first, second);
    {
        let pds = s.pds();
        assert_eq!(pds.records.len(), 1, "the PDS holds one post");
        assert_eq!(pds.create_bodies.len(), 2);
        assert_eq!(pds.create_bodies[0]["rkey"], pds.create_bodies[1]["rkey"]);
        assert_eq!(pds.create_sessions, 1, "the session is cached");
    }
    assert_eq!(
        s.client
            .find_published(&account, &creds, &post)
            .await
            .unwrap(),
        Some(first)
    );

    // Another share never takes that key.
    let other = s
        .client
        .share(
            &account,
            &creds,
            &s.post(&share_id(), "another", "/missing"),
        )
        .await
        .unwrap();
    assert_ne!(other.post_id, second.post_id);
}

#[tokio::test]
async fn a_lost_answer_is_settled_by_reading_the_record_back() {
    let s = server().await;
    let (account, creds) = (s.account(), creds(APP_PASSWORD));
    let post = s.post(&share_id(), "the answer was lost", "/missing");
    let first = s.client.share(&account, &creds, &post).await.unwrap();
    // A 503 on the repeat (a proxy in front of the PDS, say): the record under our key settles it.
    s.pds().fail_next_create = Some((
        StatusCode::SERVICE_UNAVAILABLE,
        json!({ "error": "Unavailable" }),
    ));
    assert_eq!(
        s.client.share(&account, &creds, &post).await.unwrap(),
        first
    );
}

#[tokio::test]
async fn an_expired_session_is_refreshed_then_recreated_and_the_call_replayed() {
    let s = server().await;
    let (account, creds) = (s.account(), creds(APP_PASSWORD));
    s.client.verify(&account, &creds).await.unwrap();

    // The access token expires: one refreshSession, then the call goes through.
    s.pds().access.clear();
    let profile = s.client.verify(&account, &creds).await.unwrap();
    assert_eq!(
        (
            profile.platform_account_id.as_str(),
            profile.handle.as_str()
        ),
        (DID, HANDLE)
    );
    assert_eq!(profile.followers_count, Some(3));
    assert_eq!(s.pds().counts(), (1, 1));

    // Both tokens dead: the refresh is refused, so the app password logs in again.
    {
        let mut pds = s.pds();
        pds.access.clear();
        pds.refresh.clear();
    }
    s.client
        .share(
            &account,
            &creds,
            &s.post(&share_id(), "after expiry", "/missing"),
        )
        .await
        .unwrap();
    assert_eq!(s.pds().counts(), (2, 2));
}

/// Polls `done` until it holds (a deadline keeps a broken test from hanging).
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Starts `n` shares of the one connection at once, each reaching its first authenticated call
/// after fetching `/counted-missing`.
fn concurrent_shares(
    s: &Server,
    n: usize,
) -> Vec<tokio::task::JoinHandle<Result<herald_platforms::Published, PlatformError>>> {
    (0..n)
        .map(|i| {
            let (client, account) = (s.client.clone(), s.account());
            let post = s.post(&share_id(), &format!("share {i}"), "/counted-missing");
            tokio::spawn(async move { client.share(&account, &creds(APP_PASSWORD), &post).await })
        })
        .collect()
}

#[tokio::test]
async fn concurrent_shares_of_a_connection_with_no_session_log_in_once() {
    // Bluesky allows 30 createSession per 5 minutes (300 a day) per account: a burst of shares
    // must not spend one each.
    const SHARES: usize = 6;
    let s = server().await;
    let login = Arc::new(tokio::sync::Semaphore::new(0));
    s.pds().hold = Some(("com.atproto.server.createSession", login.clone()));
    let shares = concurrent_shares(&s, SHARES);
    // Every share is past its card and on its way to log in; the first login is still held.
    until("every share fetched its page", || {
        s.pds().page_hits == SHARES
    })
    .await;
    login.add_permits(SHARES);
    for share in shares {
        share.await.unwrap().unwrap();
    }
    assert_eq!(s.pds().counts(), (1, 0), "one login served every share");
    assert_eq!(s.pds().records.len(), SHARES);
}

#[tokio::test]
async fn concurrent_calls_on_an_expired_session_renew_it_once() {
    const SHARES: usize = 6;
    let s = server().await;
    let (account, creds) = (s.account(), creds(APP_PASSWORD));
    s.client.verify(&account, &creds).await.unwrap();
    s.pds().access.clear();
    let renew = Arc::new(tokio::sync::Semaphore::new(0));
    s.pds().hold = Some(("com.atproto.server.refreshSession", renew.clone()));
    let shares = concurrent_shares(&s, SHARES);
    until("every share met the expired token", || {
        s.pds().expired_answers == SHARES
    })
    .await;
    renew.add_permits(SHARES);
    for share in shares {
        share.await.unwrap().unwrap();
    }
    assert_eq!(s.pds().counts(), (1, 1), "one renewal served every share");
    assert_eq!(s.pds().records.len(), SHARES);
}

#[tokio::test]
async fn refresh_logs_in_again_and_keeps_the_app_password() {
    let s = server().await;
    let tokens = s
        .client
        .refresh(&s.account(), &creds(APP_PASSWORD))
        .await
        .unwrap();
    use secrecy::ExposeSecret;
    assert_eq!(
        tokens.access_token.expose_secret(),
        APP_PASSWORD,
        "the store keeps the app password, not a session"
    );
    assert!(tokens.refresh_token.is_none() && tokens.expires_at.is_none());
    assert_eq!(s.pds().create_sessions, 1);
    assert!(!format!("{tokens:?}").contains(APP_PASSWORD));
}

#[tokio::test]
async fn a_refused_app_password_needs_reauth() {
    let s = server().await;
    let wrong = creds("wxyz-wxyz-wxyz-wxyz");
    let err = s.client.refresh(&s.account(), &wrong).await.unwrap_err();
    assert!(matches!(err, PlatformError::InvalidGrant { .. }), "{err:?}");
    let err = s
        .client
        .share(&s.account(), &wrong, &s.post(&share_id(), "x", "/missing"))
        .await
        .unwrap_err();
    assert!(matches!(err, PlatformError::Unauthorized { .. }), "{err:?}");
    assert!(s.pds().create_bodies.is_empty());
    assert!(!err.to_string().contains("wxyz"));

    s.pds().taken_down = true;
    let err = s
        .client
        .verify(&s.account(), &creds(APP_PASSWORD))
        .await
        .unwrap_err();
    assert!(
        matches!(err, PlatformError::Unauthorized { ref reason } if reason.contains("AccountTakedown")),
        "{err:?}"
    );
}

#[tokio::test]
async fn rate_limits_carry_the_wait_and_errors_are_classified() {
    let s = server().await;
    let (account, creds) = (s.account(), creds(APP_PASSWORD));
    s.pds().rate_limit_next = true;
    let err = s
        .client
        .share(&account, &creds, &s.post(&share_id(), "x", "/missing"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, PlatformError::RateLimited { retry_after: Some(d), scope: LimitScope::Account } if d == Duration::from_secs(42)),
        "{err:?}"
    );

    s.pds().fail_next_create = Some((
        StatusCode::BAD_REQUEST,
        json!({ "error": "InvalidRequest", "message": "Invalid app.bsky.feed.post record: Record/text must not be longer than 300 graphemes" }),
    ));
    let err = s
        .client
        .share(&account, &creds, &s.post(&share_id(), "x", "/missing"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, PlatformError::Rejected { status: 400, ref reason } if reason.contains("300 graphemes")),
        "{err:?}"
    );

    s.pds().fail_next_create = Some((
        StatusCode::BAD_GATEWAY,
        json!({ "error": "UpstreamFailure" }),
    ));
    let err = s
        .client
        .share(&account, &creds, &s.post(&share_id(), "x", "/missing"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            PlatformError::Transient {
                status: Some(502),
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_overlong_text_is_refused_before_anything_is_sent() {
    let s = server().await;
    let long = s.post(&share_id(), &"🦋".repeat(290), "/page");
    let invalid = s.client.validate(&s.account(), &long).unwrap_err();
    assert_eq!((invalid.field, invalid.code), ("text", "text_too_long"));
    let err = s
        .client
        .share(&s.account(), &creds(APP_PASSWORD), &long)
        .await
        .unwrap_err();
    assert!(matches!(err, PlatformError::Rejected { .. }), "{err:?}");
    assert_eq!(s.pds().create_sessions, 0);
    // 260 butterflies (1040 bytes) and the URL: within 300 graphemes.
    assert!(
        s.client
            .validate(
                &s.account(),
                &s.post(&share_id(), &"🦋".repeat(260), "/page")
            )
            .is_ok()
    );
}

#[tokio::test]
async fn a_card_that_cannot_be_built_is_left_out_and_a_big_image_is_skipped() {
    let s = server().await;
    let (account, creds) = (s.account(), creds(APP_PASSWORD));
    s.client
        .share(
            &account,
            &creds,
            &s.post(&share_id(), "no page", "/missing"),
        )
        .await
        .unwrap();
    s.client
        .share(
            &account,
            &creds,
            &s.post(&share_id(), "big image", "/big-image-page"),
        )
        .await
        .unwrap();
    s.client
        .share(
            &account,
            &creds,
            &s.post(&share_id(), "redirected", "/moved"),
        )
        .await
        .unwrap();
    let pds = s.pds();
    assert!(pds.create_bodies[0]["record"].get("embed").is_none());
    let big = &pds.create_bodies[1]["record"]["embed"]["external"];
    assert_eq!(big["title"], "Herald & friends");
    assert!(
        big.get("thumb").is_none(),
        "an image over 1 MB is not uploaded"
    );
    assert_eq!(
        pds.create_bodies[2]["record"]["embed"]["external"]["title"],
        "Herald & friends"
    );
    assert_eq!(pds.blobs.len(), 1, "only the redirected page's image");
}

#[tokio::test]
async fn a_pds_on_a_private_address_is_refused_under_the_strict_guard() {
    let s = server().await;
    // The DNS-level guard cannot see IP literals, so the client checks `pds_url` itself.
    let client = Bluesky::new(
        http::client(&SsrfGuard::allowing_private(), Duration::from_secs(5)),
        SsrfGuard::strict(),
    );
    let err = client
        .share(
            &s.account(),
            &creds(APP_PASSWORD),
            &s.post(&share_id(), "x", "/page"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, PlatformError::Rejected { status: 0, ref reason } if reason.contains("pds_url")),
        "{err:?}"
    );
    assert!(s.pds().create_bodies.is_empty());
}

#[tokio::test]
async fn followers_and_follows_are_paged_by_cursor() {
    let s = server().await;
    let (account, creds) = (s.account(), creds(APP_PASSWORD));
    for relation in [Relation::Followers, Relation::Follows] {
        let first = s
            .client
            .followers_page(&account, &creds, relation, None)
            .await
            .unwrap();
        assert_eq!(first.accounts.len(), 2);
        assert_eq!(first.accounts[0].platform_account_id, "did:plc:f1");
        assert_eq!(first.accounts[0].handle, "f1.test");
        let second = s
            .client
            .followers_page(&account, &creds, relation, first.next_cursor.as_deref())
            .await
            .unwrap();
        assert_eq!(second.accounts.len(), 1);
        assert_eq!(second.next_cursor, None);
    }
}

#[tokio::test]
async fn an_oauth_connection_never_falls_back_to_an_app_password() {
    let s = server().await;
    let mut account = s.account();
    account.extras.insert("auth".into(), "oauth".into());
    let oauth = Credentials {
        access_token: Some("dpop-bound".to_owned().into()),
        dpop_key: Some("{}".to_owned().into()),
        ..Default::default()
    };
    let err = s
        .client
        .share(&account, &oauth, &s.post(&share_id(), "x", "/page"))
        .await
        .unwrap_err();
    // The stored key is unreadable: the connection is dead, and no app password is tried.
    assert!(matches!(err, PlatformError::Unauthorized { .. }), "{err:?}");
    assert_eq!(s.pds().create_sessions, 0);
}
