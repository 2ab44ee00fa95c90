//! The Threads client against the local Graph API in its Threads shape (`testing::meta`).

use std::{sync::Arc, time::Duration};

use herald_platforms::{
    LimitScope, Platform, PlatformError,
    meta::container::ContainerWait,
    testing::{
        Checkpoints, account, client, creds,
        meta::{Failure, FakeMeta, MetaApi, TokenKind},
        post, post_resuming,
    },
    threads::{API_VERSION, Threads},
};
use secrecy::ExposeSecret;
use serde_json::json;

const USER: &str = "7001234567";

fn threads(fake: &FakeMeta) -> Threads {
    Threads::new(client(), &fake.base).with_container_wait(ContainerWait {
        checks: 3,
        interval: Duration::from_millis(1),
    })
}

fn v(path: &str) -> String {
    format!("/{API_VERSION}/{path}")
}

async fn platform() -> (FakeMeta, String) {
    let fake = FakeMeta::start(MetaApi::Threads).await;
    assert_eq!(MetaApi::Threads.user_id(), USER);
    let token = fake.issue_token(TokenKind::LongUser);
    (fake, token)
}

#[tokio::test]
async fn a_share_creates_a_text_container_with_the_link_and_publishes_it() {
    let (fake, token) = platform().await;
    fake.container_states(&["IN_PROGRESS", "FINISHED"], None);
    let published = threads(&fake)
        .share(&account(USER, json!({})), &creds(&token, None), &post())
        .await
        .unwrap();
    let made = &fake.posts()[0];
    let (media, container) = (
        made["id"].as_str().unwrap(),
        made["container"].as_str().unwrap(),
    );
    assert_eq!(published.post_id, media);
    assert_eq!(published.post_url, Some(fake.permalink(media)));
    let reqs = fake.recorder.all();
    let create = &reqs
        .iter()
        .find(|r| r.path == v(&format!("{USER}/threads")))
        .unwrap()
        .form;
    assert_eq!(create.get("media_type").map(String::as_str), Some("TEXT"));
    assert_eq!(
        create.get("text").map(String::as_str),
        Some("Worth reading\n\nhttps://example.com/articles/1")
    );
    assert_eq!(
        create.get("link_attachment").map(String::as_str),
        Some("https://example.com/articles/1")
    );
    let status = reqs.iter().find(|r| r.path == v(container)).unwrap();
    assert_eq!(status.q("fields"), Some("status,error_message"));
    let publish = &reqs
        .iter()
        .find(|r| r.path == v(&format!("{USER}/threads_publish")))
        .unwrap()
        .form;
    assert_eq!(
        publish.get("creation_id").map(String::as_str),
        Some(container)
    );
}

#[tokio::test]
async fn a_saved_thread_container_is_resumed_by_its_status_field() {
    let (fake, token) = platform().await;
    let saved = fake.seed_container(
        "Worth reading\n\nhttps://example.com/articles/1",
        "FINISHED",
    );
    let saves = Arc::new(Checkpoints::default());
    let published = threads(&fake)
        .share(
            &account(USER, json!({})),
            &creds(&token, None),
            &post_resuming(Some(&saved), saves.clone()),
        )
        .await
        .unwrap();
    let media = fake.posts()[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(published.post_id, media);
    assert!(saves.saved().is_empty());
    assert_eq!(
        fake.recorder.lines(),
        [
            format!("GET {}", v(&saved)),
            format!("GET {}", v(&saved)),
            format!("POST {}", v(&format!("{USER}/threads_publish"))),
            format!("GET {}", v(&media)),
        ]
    );
    assert_eq!(
        fake.recorder.all()[0].q("fields"),
        Some("status,error_message")
    );
}

#[tokio::test]
async fn a_container_error_is_rejected_with_its_message() {
    let (fake, token) = platform().await;
    fake.container_states(&["ERROR"], Some("FAILED_PROCESSING_VIDEO"));
    let err = threads(&fake)
        .share(&account(USER, json!({})), &creds(&token, None), &post())
        .await
        .unwrap_err();
    assert!(
        matches!(err, PlatformError::Rejected { ref reason, .. } if reason.contains("FAILED_PROCESSING_VIDEO")),
        "{err:?}"
    );
    assert!(
        !fake
            .recorder
            .lines()
            .iter()
            .any(|p| p.ends_with("threads_publish"))
    );
}

#[tokio::test]
async fn a_throttled_create_waits_for_the_estimate() {
    let (fake, token) = platform().await;
    fake.fail_next(Failure::AppLimit {
        regain_minutes: Some(3),
    });
    let err = threads(&fake)
        .share(&account(USER, json!({})), &creds(&token, None), &post())
        .await
        .unwrap_err();
    assert!(
        matches!(err, PlatformError::RateLimited { retry_after: Some(w), scope: LimitScope::App } if w == Duration::from_secs(180)),
        "{err:?}"
    );
}

#[tokio::test]
async fn refresh_uses_th_refresh_token() {
    let (fake, token) = platform().await;
    let tokens = threads(&fake)
        .refresh(&account(USER, json!({})), &creds(&token, None))
        .await
        .unwrap();
    let fresh = tokens.access_token.expose_secret();
    assert_ne!(fresh, token);
    assert_eq!(fake.token(fresh).map(|t| t.0), Some(TokenKind::LongUser));
    assert!(tokens.refresh_token.is_none());
    let req = &fake.recorder.all()[0];
    assert_eq!(
        (req.q("grant_type"), req.q("access_token")),
        (Some("th_refresh_token"), Some(token.as_str()))
    );
}

#[tokio::test]
async fn verify_reads_me_and_read_back_matches_the_link_attachment() {
    let (fake, token) = platform().await;
    let recent = chrono::Utc::now() - chrono::Duration::minutes(2);
    let ours = fake.seed_post(
        "Worth reading",
        Some("https://example.com/articles/1"),
        recent,
    );
    fake.seed_post(
        "Worth reading",
        Some("https://example.com/articles/2"),
        recent,
    );
    let acct = account(USER, json!({}));
    let me = threads(&fake)
        .verify(&acct, &creds(&token, None))
        .await
        .unwrap();
    assert_eq!(
        (me.platform_account_id.as_str(), me.handle.as_str()),
        (USER, "herald")
    );
    let found = threads(&fake)
        .find_published(&acct, &creds(&token, None), &post())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.post_id, ours);
}

#[tokio::test]
async fn validate_counts_emoji_as_bytes_and_limits_links() {
    let (fake, _) = platform().await;
    let t = threads(&fake);
    let acct = account(USER, json!({}));
    let mut p = post();
    // 468 + "\n\n" + a 30-character URL = 500.
    p.text = Some("a".repeat(468));
    assert!(t.validate(&acct, &p).is_ok());
    p.text = Some("a".repeat(469));
    assert_eq!(t.validate(&acct, &p).unwrap_err().code, "text_too_long");
    p.text = Some("😀".repeat(117));
    assert!(t.validate(&acct, &p).is_ok(), "117 × 4 + 32 = 500");
    p.text = Some("😀".repeat(118));
    assert!(t.validate(&acct, &p).is_err());
    p.text =
        Some("https://a.test https://b.test https://c.test https://d.test https://e.test".into());
    assert_eq!(t.validate(&acct, &p).unwrap_err().code, "too_many_links");
}
