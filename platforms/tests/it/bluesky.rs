//! The Bluesky client against the local AT Protocol network (`testing::atproto`): a PDS's XRPC
//! endpoints (sessions, records, blobs, handles, the AppView's graph proxied) and the web pages
//! a link card is built from. The real network is in `herald-jobs`' `bluesky_devnet.rs`. The
//! OAuth client (PAR, DPoP, client assertions, refresh) is in `bluesky/oauth.rs`.

mod images;
mod oauth;

use std::{sync::Arc, time::Duration};

use herald_platforms::{
    Account, Credentials, LimitScope, Platform, PlatformError, PostRequest, Relation,
    bluesky::{Bluesky, tid},
    http,
    ssrf::SsrfGuard,
    testing::atproto::{APP_PASSWORD, DID, FRIEND_DID, FakeAtproto, HANDLE, PNG, World},
};
use reqwest::StatusCode;
use serde_json::{Value, json};

struct Server {
    net: FakeAtproto,
    client: Bluesky,
}

async fn server() -> Server {
    let net = FakeAtproto::start().await;
    let guard = SsrfGuard::allowing_private();
    let client = Bluesky::new(http::client(&guard, Duration::from_secs(10)), guard);
    Server { net, client }
}

impl Server {
    fn account(&self) -> Account {
        let extras = [
            ("pds_url".to_owned(), Value::from(self.net.pds.clone())),
            ("auth".to_owned(), "app_password".into()),
        ];
        Account {
            platform_account_id: DID.into(),
            handle: HANDLE.into(),
            extras: extras.into_iter().collect(),
        }
    }

    /// A share of a page on the network's web server.
    fn post(&self, id: &str, text: &str, path: &str) -> PostRequest {
        PostRequest {
            share_id: id.into(),
            url: format!("{}{path}", self.net.web),
            title: Some("A title".into()),
            text: Some(text.into()),
            image_url: None,
            media: Vec::new(),
            idempotency_key: id.into(),
            checkpoint: Default::default(),
        }
    }

    fn pds(&self) -> std::sync::MutexGuard<'_, World> {
        self.net.world()
    }
}

/// Logins and refreshes so far (read under one lock).
fn counts(w: &World) -> (usize, usize) {
    (w.create_sessions, w.refresh_sessions)
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

    let rkey = tid::record_key(&id);
    assert!(tid::is_valid_tid(&rkey));
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
    s.pds().password_access.clear();
    let profile = s.client.verify(&account, &creds).await.unwrap();
    assert_eq!(
        (
            profile.platform_account_id.as_str(),
            profile.handle.as_str()
        ),
        (DID, HANDLE)
    );
    assert_eq!(profile.followers_count, Some(3));
    assert_eq!(counts(&s.pds()), (1, 1));

    // Both tokens dead: the refresh is refused, so the app password logs in again.
    {
        let mut pds = s.pds();
        pds.password_access.clear();
        pds.password_refresh.clear();
    }
    s.client
        .share(
            &account,
            &creds,
            &s.post(&share_id(), "after expiry", "/missing"),
        )
        .await
        .unwrap();
    assert_eq!(counts(&s.pds()), (2, 2));
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
    assert_eq!(counts(&s.pds()), (1, 0), "one login served every share");
    assert_eq!(s.pds().records.len(), SHARES);
}

#[tokio::test]
async fn concurrent_calls_on_an_expired_session_renew_it_once() {
    const SHARES: usize = 6;
    let s = server().await;
    let (account, creds) = (s.account(), creds(APP_PASSWORD));
    s.client.verify(&account, &creds).await.unwrap();
    s.pds().password_access.clear();
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
    assert_eq!(counts(&s.pds()), (1, 1), "one renewal served every share");
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
    for nsid in ["app.bsky.graph.getFollowers", "app.bsky.graph.getFollows"] {
        let asked = &s.net.recorder.to(&format!("/xrpc/{nsid}"))[0];
        assert_eq!(
            (asked.q("actor"), asked.q("limit")),
            (Some(DID), Some("100"))
        );
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
