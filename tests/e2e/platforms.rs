//! LinkedIn, Facebook Pages, Instagram and Threads end to end, each through Herald's API and a
//! real worker against a local server that answers as the platform documents: the connect flow
//! (with each platform's token exchanges), a share (checked as the platform received it), the
//! refresh as the platform does it (or what Herald says when it cannot), then the user takes the
//! app's access away: the next share meets the platform's dead-credential answer and parks,
//! flagging the connection `needs_reauth`; a further share parks without a call; the user
//! connects again, and the parked shares post, once each. X and Mastodon are in `connect.rs`.

use std::{collections::HashMap, time::Duration};

use chrono::{DateTime, Utc};
use herald_jobs::handlers::{
    refresh::{self, Refresh},
    sweeps,
};
use herald_platforms::{
    config::PlatformApps,
    linkedin::DEFAULT_VERSION,
    testing::{
        Seen,
        linkedin::MEMBER,
        meta::{LONG_LIVED_SECS, PAGE_ID, PAGE_NAME, TokenKind},
    },
};
use reqwest::StatusCode;
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use crate::{
    connect::{RETURN_URL, authorize, callback, connect, location, query, start},
    on_every_backend,
    support::{Engine, FakeLinkedin, FakeMeta, MetaApi, TestApp, eventually, fast_settings},
};

const ARTICLE: &str = "https://blog.example/post/1";
const SIXTY_DAYS: i64 = 5_184_000;

async fn spawn(engine: Engine, apps: impl FnOnce(&mut PlatformApps)) -> TestApp {
    let mut settings = fast_settings();
    // Wide enough to hold a 60-day token: one sweep tick then refreshes it at once.
    settings.refresh_window = Duration::from_secs(61 * 86_400);
    apps(&mut settings.apps);
    TestApp::spawn_with(engine, true, settings).await
}

fn user() -> Value {
    json!({ "user_id": "u-1", "return_url": RETURN_URL })
}

/// Connects as the user; answers the authorization URL's query and the connection id.
async fn first_connect(app: &TestApp, platform: &str) -> (HashMap<String, String>, String) {
    let auth = start(app, &app.key, platform, user()).await;
    let auth_query = query(&url::Url::parse(&auth).unwrap());
    let back = callback(authorize(&auth).await.as_str()).await;
    assert_eq!(back.status(), StatusCode::SEE_OTHER);
    let to = query(&location(&back));
    let id = to
        .get("connection_id")
        .cloned()
        .unwrap_or_else(|| panic!("no connection: {to:?}"));
    assert!(!id.contains(','), "one account, one connection: {id}");
    (auth_query, id)
}

async fn reconnect(app: &TestApp, platform: &str) -> String {
    let q = connect(app, &app.key, platform, user()).await;
    q.get("connection_id")
        .cloned()
        .unwrap_or_else(|| panic!("no connection: {q:?}"))
}

async fn connection(app: &TestApp, id: &str) -> Value {
    let (status, conn) = app.get(&format!("/v1/connections/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{conn}");
    conn
}

async fn stored_access_token(app: &TestApp, id: &str) -> String {
    let row = app.parts.ctx.store.connection(id).await.unwrap().unwrap();
    let creds = row.credentials(&app.parts.ctx.vault).unwrap();
    creds.access_token.unwrap().expose_secret().to_owned()
}

/// `at` (RFC 3339) is `secs` from now, give or take a minute.
fn about(at: &Value, secs: i64) {
    let at: DateTime<Utc> = at
        .as_str()
        .unwrap_or_else(|| panic!("no time: {at}"))
        .parse()
        .unwrap();
    let off = (at - (Utc::now() + chrono::Duration::seconds(secs))).num_seconds();
    assert!(off.abs() < 60, "{at} is {off} s off now + {secs} s");
}

fn cover() -> Vec<u8> {
    herald_platforms::testing::jpeg(1080, 1080, 7)
}

async fn share(app: &TestApp, connection: &str, text: &str, image: bool) -> String {
    let mut body =
        json!({ "url": ARTICLE, "title": "A post", "text": text, "connection_ids": [connection] });
    if image {
        // Captured at enqueue: the host may go away once the share is accepted.
        let host = herald_platforms::testing::ImageHost::start().await;
        body["image_url"] = host.put("cover.jpg", "image/jpeg", cover()).into();
    }
    let (status, res) = app.post("/v1/shares", body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{res}");
    res["shares"][0]["id"].as_str().unwrap().to_owned()
}

async fn posted(app: &TestApp, id: &str) -> Value {
    let s = app.settled(id).await;
    assert_eq!(s["state"], "succeeded", "{s}");
    s["post"].clone()
}

/// One refresh-sweep tick, as the cron runs it; answers how many refreshes it enqueued.
async fn sweep(app: &TestApp, tick: &str) -> usize {
    sweeps::refresh_sweep(&app.parts.ctx, tick)
        .await
        .unwrap()
        .expect("the tick was claimed")
}

/// Waits until the worker has stored a refreshed token different from `old`.
async fn refreshed_token(app: &TestApp, id: &str, old: &str) -> String {
    eventually(Duration::from_secs(10), || async {
        let now = stored_access_token(app, id).await;
        (now != old).then_some(now)
    })
    .await
    .expect("the refresh job did not store a new token")
}

/// The platform no longer honours the grant. The first share meets its dead-credential answer,
/// parks, and flags the connection with the platform's reason; the second parks without a call.
async fn shares_park_once_access_is_revoked(
    app: &TestApp,
    id: &str,
    image: bool,
    calls: impl Fn() -> usize,
    reason: &str,
) -> [String; 2] {
    let first = share(app, id, "after revocation", image).await;
    let s = app.settled(&first).await;
    assert_eq!(s["state"], "parked", "{s}");
    assert_eq!(s["last_error"]["class"], "needs_reauth", "{s}");
    let conn = connection(app, id).await;
    assert_eq!(conn["needs_reauth"], true, "{conn}");
    let last_error = conn["last_error"].as_str().unwrap_or_default();
    assert!(last_error.contains(reason), "{last_error}");

    let before = calls();
    let second = share(app, id, "while flagged", image).await;
    assert_eq!(app.settled(&second).await["state"], "parked");
    assert_eq!(
        calls(),
        before,
        "a flagged connection's share called the platform"
    );
    [first, second]
}

/// The user connects again: the same connection; once the worker has verified the new token,
/// both parked shares post, each exactly once.
async fn reconnecting_posts_the_parked_shares_once(
    app: &TestApp,
    platform: &str,
    id: &str,
    parked: &[String; 2],
    posted_texts: impl Fn() -> Vec<String>,
) {
    assert_eq!(reconnect(app, platform).await, id);
    for share in parked {
        app.share_until(share, Duration::from_secs(20), |s| {
            s["state"] == "succeeded"
        })
        .await;
    }
    assert_eq!(connection(app, id).await["needs_reauth"], false);
    let texts = posted_texts();
    assert_eq!(texts.len(), 3, "{texts:?}");
    for text in ["after revocation", "while flagged"] {
        assert_eq!(
            texts.iter().filter(|t| t.contains(text)).count(),
            1,
            "{text:?} in {texts:?}"
        );
    }
}

/// The calls one step made: those received after the first `from`.
fn since(seen: &[Seen], from: usize) -> Vec<String> {
    seen[from..].iter().map(Seen::line).collect()
}

fn last<'a>(seen: &'a [Seen], line: &str) -> &'a Seen {
    seen.iter()
        .rev()
        .find(|s| s.line() == line)
        .unwrap_or_else(|| panic!("no {line}"))
}

async fn linkedin_connect_share_refresh_revoke_and_reconnect_post_the_parked_shares_once(
    engine: Engine,
) {
    let li = FakeLinkedin::start(true).await;
    let app = spawn(engine, |apps| apps.linkedin = Some(li.app())).await;

    // LinkedIn takes the client secret from a web app; PKCE is for native apps only.
    let (auth, id) = first_connect(&app, "linkedin").await;
    assert_eq!(auth["scope"], "openid profile w_member_social");
    assert!(!auth.contains_key("code_challenge"));
    let conn = connection(&app, &id).await;
    assert_eq!(conn["platform_account_id"], MEMBER);
    assert_eq!(conn["handle"], "Ada Lovelace");
    assert_eq!(conn["user_id"], "u-1");
    assert_eq!(conn["has_refresh_token"], true);
    about(&conn["token_expires_at"], SIXTY_DAYS);
    assert!(conn["reconnect_by"].is_null(), "{conn}");

    // A share is a Posts API call with the version headers and an article card Herald fills in.
    let post = posted(&app, &share(&app, &id, "Read (this) #now", false).await).await;
    let urn = post["id"].as_str().unwrap();
    assert!(urn.starts_with("urn:li:share:"), "{post}");
    assert_eq!(
        post["url"],
        format!("https://www.linkedin.com/feed/update/{urn}/")
    );
    let seen = li.seen();
    let req = last(&seen, "POST /rest/posts");
    assert_eq!(req.header("linkedin-version"), Some(DEFAULT_VERSION));
    assert_eq!(req.header("x-restli-protocol-version"), Some("2.0.0"));
    assert_eq!(
        req.bearer(),
        Some(stored_access_token(&app, &id).await.as_str())
    );
    let body = req.json.clone().unwrap();
    assert_eq!(body["author"], format!("urn:li:person:{MEMBER}"));
    assert_eq!(body["commentary"], r"Read \(this\) \#now");
    assert_eq!(
        body["content"]["article"],
        json!({ "source": ARTICLE, "title": "A post" })
    );
    assert_eq!(body["visibility"], "PUBLIC");
    assert_eq!(body["lifecycleState"], "PUBLISHED");
    assert_eq!(body["distribution"]["feedDistribution"], "MAIN_FEED");

    // The sweep refreshes with the refresh token; LinkedIn returns the same one, its clock not reset.
    let old = stored_access_token(&app, &id).await;
    assert_eq!(sweep(&app, "linkedin-1").await, 1);
    let new = refreshed_token(&app, &id, &old).await;
    assert_eq!(li.refreshes(), 1);
    assert_eq!(Some(new), li.current_access_token());
    let seen = li.seen();
    let grant = last(&seen, "POST /oauth/v2/accessToken");
    assert_eq!(
        grant.form.get("grant_type").map(String::as_str),
        Some("refresh_token")
    );
    assert_eq!(
        grant.form.get("client_id").map(String::as_str),
        Some(li.client_id.as_str())
    );
    let conn = connection(&app, &id).await;
    assert_eq!(conn["has_refresh_token"], true);
    about(&conn["token_expires_at"], SIXTY_DAYS);

    // The member revokes the app: 401 REVOKED_ACCESS_TOKEN (65601) is dead, not expired.
    li.revoke_member();
    let parked = shares_park_once_access_is_revoked(
        &app,
        &id,
        false,
        || li.seen().len(),
        "revoked by the user (65601)",
    )
    .await;
    reconnecting_posts_the_parked_shares_once(&app, "linkedin", &id, &parked, || {
        li.posts()
            .iter()
            .map(|p| p["commentary"].as_str().unwrap_or_default().to_owned())
            .collect()
    })
    .await;
    assert_eq!(
        last(&li.seen(), "POST /rest/posts").bearer(),
        li.current_access_token().as_deref()
    );
}

/// Most LinkedIn apps get no refresh token: the token lapses after 60 days, and Herald says when
/// the member must connect again instead of trying a refresh it cannot make.
async fn linkedin_without_refresh_tokens_says_when_the_member_must_reconnect(engine: Engine) {
    let li = FakeLinkedin::start(false).await;
    let app = spawn(engine, |apps| apps.linkedin = Some(li.app())).await;
    let (_, id) = first_connect(&app, "linkedin").await;
    let conn = connection(&app, &id).await;
    assert_eq!(conn["has_refresh_token"], false);
    about(&conn["token_expires_at"], SIXTY_DAYS);
    assert_eq!(conn["reconnect_by"], conn["token_expires_at"], "{conn}");
    let (_, list) = app.get("/v1/connections").await;
    assert_eq!(
        list["connections"][0]["reconnect_by"],
        conn["token_expires_at"]
    );

    let calls = li.seen().len();
    assert_eq!(sweep(&app, "linkedin-1").await, 0);
    assert!(matches!(
        refresh::refresh_connection(&app.parts.ctx, &id)
            .await
            .unwrap(),
        Refresh::Skipped
    ));
    assert_eq!(li.seen().len(), calls, "{:?}", since(&li.seen(), calls));

    // Until then the token works.
    posted(&app, &share(&app, &id, "still fine", false).await).await;
    assert_eq!(li.posts().len(), 1);
}

async fn facebook_pages_connect_share_revoke_and_reconnect_post_the_parked_shares_once(
    engine: Engine,
) {
    let fb = FakeMeta::start(MetaApi::Facebook).await;
    let app = spawn(engine, |apps| apps.facebook = Some(fb.app())).await;
    let v = herald_platforms::facebook::API_VERSION;

    // The code gives a short-lived user token, exchanged for a long-lived one, which reads the
    // page token; the page token is what is verified and stored.
    let (auth, id) = first_connect(&app, "facebook_pages").await;
    assert!(auth["scope"].split(',').any(|s| s == "pages_manage_posts"));
    assert!(!auth.contains_key("code_challenge"));
    let seen = fb.seen();
    assert_eq!(
        since(&seen, 1),
        [
            format!("POST /{v}/oauth/access_token"),
            format!("GET /{v}/oauth/access_token"),
            format!("GET /{v}/me/accounts"),
            format!("GET /{v}/{PAGE_ID}"),
        ]
    );
    assert_eq!(seen[2].param("grant_type"), Some("fb_exchange_token"));
    let user_token = seen[3].param("access_token").unwrap();
    assert_eq!(fb.token(user_token).unwrap().0, TokenKind::LongUser);
    let page_token = stored_access_token(&app, &id).await;
    assert_eq!(fb.token(&page_token), Some((TokenKind::Page, None, true)));

    let conn = connection(&app, &id).await;
    assert_eq!(conn["platform_account_id"], PAGE_ID);
    assert_eq!(conn["handle"], PAGE_NAME);
    assert_eq!(conn["extras"]["page_id"], PAGE_ID);
    // A page token read with a long-lived user token does not expire: nothing will lapse.
    assert!(conn["token_expires_at"].is_null(), "{conn}");
    assert!(conn["reconnect_by"].is_null(), "{conn}");

    // A share is a page feed post with the page token; Facebook scrapes the link for the card.
    let post = posted(&app, &share(&app, &id, "Read this", false).await).await;
    let post_id = post["id"].as_str().unwrap();
    assert!(post_id.starts_with(&format!("{PAGE_ID}_")), "{post}");
    // Read-after-write: the post's `permalink_url` comes back with its id.
    assert_eq!(post["url"], fb.permalink(post_id));
    let seen = fb.seen();
    let req = last(&seen, &format!("POST /{v}/{PAGE_ID}/feed"));
    assert_eq!(req.form.get("access_token"), Some(&page_token));
    assert_eq!(req.form.get("link").map(String::as_str), Some(ARTICLE));
    assert_eq!(
        req.form.get("message").map(String::as_str),
        Some("Read this")
    );
    assert_eq!(req.form.get("published").map(String::as_str), Some("true"));

    // There is nothing to refresh: no sweep entry, no call.
    let calls = fb.seen().len();
    assert_eq!(sweep(&app, "facebook-1").await, 0);
    assert!(matches!(
        refresh::refresh_connection(&app.parts.ctx, &id)
            .await
            .unwrap(),
        Refresh::Skipped
    ));
    assert_eq!(fb.seen().len(), calls);

    // The user changes their password: Graph answers code 190, subcode 460.
    fb.revoke_user();
    let parked = shares_park_once_access_is_revoked(
        &app,
        &id,
        false,
        || fb.seen().len(),
        "code 190, subcode 460",
    )
    .await;
    reconnecting_posts_the_parked_shares_once(&app, "facebook_pages", &id, &parked, || {
        fb.posts()
            .iter()
            .map(|p| p["text"].as_str().unwrap_or_default().to_owned())
            .collect()
    })
    .await;
    let new_token = stored_access_token(&app, &id).await;
    assert_ne!(new_token, page_token);
    assert_eq!(
        last(&fb.seen(), &format!("POST /{v}/{PAGE_ID}/feed"))
            .form
            .get("access_token"),
        Some(&new_token)
    );
}

/// Instagram and Threads: the same Meta shape (long-lived exchange, a refresh of the access token
/// itself, container → `FINISHED` → publish), each with its own paths and names.
struct ContainerPlatform {
    api: MetaApi,
    name: &'static str,
    image: bool,
    /// The `grant_type` of the long-lived exchange, and of the refresh.
    exchange: &'static str,
    refresh: &'static str,
    /// The call that verifies a token, and the publishing-limit edge.
    verify_path: String,
    limit: &'static str,
    create: &'static str,
    publish: &'static str,
    /// The container field that holds its state.
    status_field: &'static str,
    /// What the user revoking access answers with, as Herald records it.
    dead: &'static str,
}

async fn container_platform_end_to_end(engine: Engine, p: ContainerPlatform) {
    let meta = FakeMeta::start(p.api).await;
    let app = spawn(engine, |apps| match p.api {
        MetaApi::Instagram => apps.instagram = Some(meta.app()),
        _ => apps.threads = Some(meta.app()),
    })
    .await;
    let user = p.api.user_id();
    let v = match p.api {
        MetaApi::Instagram => herald_platforms::instagram::API_VERSION,
        _ => herald_platforms::threads::API_VERSION,
    };

    // Code → short-lived token (with the user id) → long-lived token, verified, stored.
    let (auth, id) = first_connect(&app, p.name).await;
    assert!(!auth.contains_key("code_challenge"));
    let seen = meta.seen();
    assert_eq!(
        since(&seen, 1),
        [
            "POST /oauth/access_token".to_owned(),
            "GET /access_token".to_owned(),
            p.verify_path.clone(),
        ]
    );
    assert_eq!(
        seen[1].form.get("grant_type").map(String::as_str),
        Some("authorization_code")
    );
    assert_eq!(seen[2].param("grant_type"), Some(p.exchange));
    let token = stored_access_token(&app, &id).await;
    assert_eq!(meta.token(&token).unwrap().0, TokenKind::LongUser);
    let conn = connection(&app, &id).await;
    assert_eq!(conn["platform_account_id"], user);
    about(&conn["token_expires_at"], LONG_LIVED_SECS);
    // No refresh token, yet Herald renews the token itself: nothing to prompt the user about.
    assert_eq!(conn["has_refresh_token"], false);
    assert!(conn["reconnect_by"].is_null(), "{conn}");

    if p.image {
        let (status, err) = app
            .post(
                "/v1/shares",
                json!({ "url": ARTICLE, "text": "no picture", "connection_ids": [id] }),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
        assert_eq!(err["error"]["code"], "image_required");
        // The field names the target whose platform refused it, then the share's field.
        assert_eq!(err["error"]["field"], "connection_ids[0].image_url");
        let (_, list) = app.get(&format!("/v1/shares?url={ARTICLE}")).await;
        assert_eq!(list["shares"].as_array().map(Vec::len), Some(0), "{list}");
    }

    // A share: the publishing limit, a container, its status (FINISHED), the publish, the permalink.
    let calls = meta.seen().len();
    let post = posted(&app, &share(&app, &id, "Read this", p.image).await).await;
    let seen = meta.seen();
    let media = post["id"].as_str().unwrap();
    let steps = since(&seen, calls);
    assert_eq!(
        steps,
        [
            format!("GET /{v}/{user}/{}", p.limit),
            format!("POST /{v}/{user}/{}", p.create),
            steps[2].clone(),
            format!("POST /{v}/{user}/{}", p.publish),
            format!("GET /{v}/{media}"),
        ]
    );
    // The container polled is the one created, and it is what gets published.
    let status = &seen[calls + 2];
    let container = status.path.rsplit('/').next().unwrap();
    assert_ne!(container, user);
    assert!(status.param("fields").unwrap().contains(p.status_field));
    assert_eq!(
        seen[calls + 3].form.get("creation_id").map(String::as_str),
        Some(container)
    );
    let created = &seen[calls + 1];
    let text = format!("Read this\n\n{ARTICLE}");
    match p.api {
        MetaApi::Instagram => {
            // Meta fetches the image Herald captured, from Herald, by a signed URL.
            let signed = created.param("image_url").unwrap();
            assert!(
                signed.starts_with(&format!("{}/v1/media/", app.base)),
                "{signed}"
            );
            let served = reqwest::get(signed).await.unwrap();
            assert_eq!(served.status(), StatusCode::OK);
            assert_eq!(served.bytes().await.unwrap().as_ref(), cover().as_slice());
            let unsigned = signed.split('?').next().unwrap();
            assert_eq!(
                reqwest::get(unsigned).await.unwrap().status(),
                StatusCode::NOT_FOUND
            );
            assert_eq!(created.param("caption"), Some(text.as_str()));
            assert_eq!(
                post["url"],
                format!("https://www.instagram.com/p/C{media}/")
            );
        }
        _ => {
            assert_eq!(created.param("media_type"), Some("TEXT"));
            assert_eq!(created.param("text"), Some(text.as_str()));
            assert_eq!(created.param("link_attachment"), Some(ARTICLE));
            assert_eq!(
                post["url"],
                format!("https://www.threads.net/@herald/post/C{media}")
            );
        }
    }
    assert!(
        seen[calls..]
            .iter()
            .all(|s| s.param("access_token") == Some(token.as_str()))
    );

    // The sweep renews the long-lived token with itself; the new one is stored and used.
    assert_eq!(sweep(&app, &format!("{}-1", p.name)).await, 1);
    let new = refreshed_token(&app, &id, &token).await;
    assert_eq!(meta.refreshes(), 1);
    let seen = meta.seen();
    let grant = last(&seen, "GET /refresh_access_token");
    assert_eq!(grant.param("grant_type"), Some(p.refresh));
    assert_eq!(grant.param("access_token"), Some(token.as_str()));
    assert_eq!(meta.token(&new).unwrap().0, TokenKind::LongUser);
    let conn = connection(&app, &id).await;
    about(&conn["token_expires_at"], LONG_LIVED_SECS);
    assert!(conn["last_error"].is_null(), "{conn}");

    // The user removes the app: Graph answers code 190 to every token of theirs.
    meta.revoke_user();
    let parked =
        shares_park_once_access_is_revoked(&app, &id, p.image, || meta.seen().len(), p.dead).await;
    reconnecting_posts_the_parked_shares_once(&app, p.name, &id, &parked, || {
        meta.posts()
            .iter()
            .map(|post| post["text"].as_str().unwrap_or_default().to_owned())
            .collect()
    })
    .await;
}

async fn instagram_connect_share_refresh_revoke_and_reconnect_post_the_parked_shares_once(
    engine: Engine,
) {
    let v = herald_platforms::instagram::API_VERSION;
    container_platform_end_to_end(
        engine,
        ContainerPlatform {
            api: MetaApi::Instagram,
            name: "instagram",
            image: true,
            exchange: "ig_exchange_token",
            refresh: "ig_refresh_token",
            verify_path: format!("GET /{v}/{}", MetaApi::Instagram.user_id()),
            limit: "content_publishing_limit",
            create: "media",
            publish: "media_publish",
            status_field: "status_code",
            dead: "code 190, subcode 458",
        },
    )
    .await;
}

async fn threads_connect_share_refresh_revoke_and_reconnect_post_the_parked_shares_once(
    engine: Engine,
) {
    let v = herald_platforms::threads::API_VERSION;
    container_platform_end_to_end(
        engine,
        ContainerPlatform {
            api: MetaApi::Threads,
            name: "threads",
            image: false,
            exchange: "th_exchange_token",
            refresh: "th_refresh_token",
            verify_path: format!("GET /{v}/me"),
            limit: "threads_publishing_limit",
            create: "threads",
            publish: "threads_publish",
            status_field: "status",
            dead: "has not authorized application",
        },
    )
    .await;
}

/// Meta's 60-day tokens are renewed with themselves and are dead once expired, so the sweep
/// renews them a week ahead (`long_lived_refresh_window`), not in the two-hour refresh window.
async fn a_long_lived_meta_token_is_renewed_days_before_it_expires(engine: Engine) {
    let meta = FakeMeta::start(MetaApi::Threads).await;
    let mut settings = fast_settings();
    assert!(settings.refresh_window < Duration::from_secs(86_400));
    settings.long_lived_refresh_window = Duration::from_secs(7 * 86_400);
    settings.apps.threads = Some(meta.app());
    let app = TestApp::spawn_with(engine, true, settings).await;
    let (_, id) = first_connect(&app, "threads").await;
    let token = stored_access_token(&app, &id).await;
    // Sixty days out: no pass of the sweep takes it.
    assert_eq!(sweep(&app, "long-lived-1").await, 0);
    // Three days out: past the refresh window, inside the long-lived one.
    let soon = Utc::now() + chrono::Duration::days(3);
    let store = app.parts.ctx.store.clone();
    match store.pool() {
        herald_jobs::store::Pool::Sqlite(p) => {
            sqlx::query("UPDATE connections SET token_expires_at = ?1 WHERE id = ?2")
                .bind(soon)
                .bind(&id)
                .execute(p)
                .await
                .unwrap();
        }
        herald_jobs::store::Pool::Postgres(p) => {
            sqlx::query("UPDATE connections SET token_expires_at = $1 WHERE id = $2")
                .bind(soon)
                .bind(&id)
                .execute(p)
                .await
                .unwrap();
        }
    }
    assert_eq!(sweep(&app, "long-lived-2").await, 1);
    let new = refreshed_token(&app, &id, &token).await;
    assert_eq!(meta.refreshes(), 1);
    assert_eq!(meta.token(&new).unwrap().0, TokenKind::LongUser);
    about(
        &connection(&app, &id).await["token_expires_at"],
        LONG_LIVED_SECS,
    );
    // Renewed: sixty days out again, so the next tick leaves it alone.
    assert_eq!(sweep(&app, "long-lived-3").await, 0);
}

on_every_backend!(
    linkedin_connect_share_refresh_revoke_and_reconnect_post_the_parked_shares_once,
    linkedin_without_refresh_tokens_says_when_the_member_must_reconnect,
    facebook_pages_connect_share_revoke_and_reconnect_post_the_parked_shares_once,
    instagram_connect_share_refresh_revoke_and_reconnect_post_the_parked_shares_once,
    threads_connect_share_refresh_revoke_and_reconnect_post_the_parked_shares_once,
    a_long_lived_meta_token_is_renewed_days_before_it_expires,
);
