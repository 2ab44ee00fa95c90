//! The Instagram client against the local Graph API in its Instagram shape (`testing::meta`).

use std::{sync::Arc, time::Duration};

use herald_platforms::{
    LimitScope, Platform, PlatformError, Published,
    instagram::{API_VERSION, Instagram},
    meta::container::ContainerWait,
    testing::{
        Checkpoints, account, client, creds, impatient_client,
        meta::{Failure, FakeMeta, MetaApi, TokenKind},
        post, post_resuming,
    },
};
use secrecy::ExposeSecret;
use serde_json::json;

const FAST: ContainerWait = ContainerWait {
    checks: 3,
    interval: Duration::from_millis(1),
};
const USER: &str = "17841405793187218";
const CAPTION: &str = "Worth reading\n\nhttps://example.com/articles/1";

fn ig(fake: &FakeMeta) -> Instagram {
    Instagram::new(client(), &fake.base).with_container_wait(FAST)
}

fn v(path: &str) -> String {
    format!("/{API_VERSION}/{path}")
}

async fn instagram() -> (FakeMeta, String) {
    let fake = FakeMeta::start(MetaApi::Instagram).await;
    assert_eq!(MetaApi::Instagram.user_id(), USER);
    let token = fake.issue_token(TokenKind::LongUser);
    (fake, token)
}

#[tokio::test]
async fn a_share_creates_a_container_waits_for_it_and_publishes_it() {
    let (fake, token) = instagram().await;
    fake.container_states(&["IN_PROGRESS", "FINISHED"], None);
    let published = ig(&fake)
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
    assert_eq!(
        fake.recorder.lines(),
        [
            format!("GET {}", v(&format!("{USER}/content_publishing_limit"))),
            format!("POST {}", v(&format!("{USER}/media"))),
            format!("GET {}", v(container)),
            format!("GET {}", v(container)),
            format!("POST {}", v(&format!("{USER}/media_publish"))),
            format!("GET {}", v(media)),
        ]
    );
    let reqs = fake.recorder.all();
    let create = &reqs[1].form;
    assert_eq!(
        create.get("image_url").map(String::as_str),
        Some("https://cdn.example.com/cover.jpg")
    );
    assert_eq!(create.get("caption").map(String::as_str), Some(CAPTION));
    assert_eq!(create.get("access_token"), Some(&token));
    assert_eq!(reqs[2].q("fields"), Some("status_code,status"));
    assert_eq!(
        reqs[4].form.get("creation_id").map(String::as_str),
        Some(container)
    );
}

#[tokio::test]
async fn a_failed_container_is_rejected_and_never_published() {
    let (fake, token) = instagram().await;
    fake.container_states(
        &["ERROR"],
        Some("2207001: the media could not be processed"),
    );
    let err = ig(&fake)
        .share(&account(USER, json!({})), &creds(&token, None), &post())
        .await
        .unwrap_err();
    assert!(
        matches!(err, PlatformError::Rejected { ref reason, .. } if reason.contains("2207001: the media could not be processed")),
        "{err:?}"
    );
    assert!(
        !fake
            .recorder
            .lines()
            .iter()
            .any(|p| p.ends_with("media_publish"))
    );
}

#[tokio::test]
async fn a_container_still_in_progress_past_the_bound_is_transient() {
    let (fake, token) = instagram().await;
    fake.container_states(&["IN_PROGRESS"], None);
    let err = ig(&fake)
        .share(&account(USER, json!({})), &creds(&token, None), &post())
        .await
        .unwrap_err();
    assert!(matches!(err, PlatformError::Transient { .. }), "{err:?}");
    let lines = fake.recorder.lines();
    let status_reads = lines
        .iter()
        .filter(|p| p.starts_with("GET") && !p.ends_with("content_publishing_limit"))
        .count();
    assert_eq!(status_reads, 3, "{lines:?}");
    assert!(!lines.iter().any(|p| p.ends_with("media_publish")));
}

#[tokio::test]
async fn a_spent_publishing_quota_is_a_rate_limit_before_any_container() {
    let (fake, token) = instagram().await;
    fake.use_quota(100);
    let err = ig(&fake)
        .share(&account(USER, json!({})), &creds(&token, None), &post())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            PlatformError::RateLimited {
                retry_after: Some(_),
                scope: LimitScope::Account,
            }
        ),
        "{err:?}"
    );
    assert_eq!(fake.recorder.lines().len(), 1);
}

#[tokio::test]
async fn the_publish_limit_error_is_a_rate_limit_and_a_lost_publish_is_unknown() {
    let (fake, token) = instagram().await;
    let account = account(USER, json!({}));
    fake.fail_next(Failure::PublishLimit);
    let err = ig(&fake)
        .share(&account, &creds(&token, None), &post())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            PlatformError::RateLimited {
                retry_after: Some(_),
                scope: LimitScope::Account,
            }
        ),
        "{err:?}"
    );
    fake.fail_next(Failure::LoseAnswer);
    let impatient = Instagram::new(impatient_client(), &fake.base).with_container_wait(FAST);
    let err = impatient
        .share(&account, &creds(&token, None), &post())
        .await
        .unwrap_err();
    assert!(
        matches!(err, PlatformError::OutcomeUnknown { .. }),
        "{err:?}"
    );
}

/// A share on `fake` that resumes from `saved` and stores new checkpoints in `saves`.
async fn share_resuming(
    fake: &FakeMeta,
    token: &str,
    saved: Option<&str>,
    saves: &Arc<Checkpoints>,
) -> Result<Published, PlatformError> {
    ig(fake)
        .share(
            &account(USER, json!({})),
            &creds(token, None),
            &post_resuming(saved, saves.clone()),
        )
        .await
}

/// The containers `fake` was asked to publish, in order.
fn publishes(fake: &FakeMeta) -> Vec<String> {
    fake.recorder
        .all()
        .into_iter()
        .filter(|r| r.path.ends_with("media_publish"))
        .map(|r| r.form["creation_id"].clone())
        .collect()
}

#[tokio::test]
async fn a_new_container_is_saved_as_the_checkpoint_before_it_is_published() {
    let (fake, token) = instagram().await;
    let saves = Arc::new(Checkpoints::watching(&fake.recorder));
    let published = share_resuming(&fake, &token, None, &saves).await.unwrap();
    let made = &fake.posts()[0];
    let (media, container) = (
        made["id"].as_str().unwrap(),
        made["container"].as_str().unwrap(),
    );
    assert_eq!(published.post_id, media);
    assert_eq!(saves.saved(), [container]);
    assert_eq!(
        fake.recorder.lines(),
        [
            format!("GET {}", v(&format!("{USER}/content_publishing_limit"))),
            format!("POST {}", v(&format!("{USER}/media"))),
            format!("GET {}", v(container)),
            format!("POST {}", v(&format!("{USER}/media_publish"))),
            format!("GET {}", v(media)),
        ]
    );
    // The container was stored before the publish call reached Instagram.
    assert!(saves.saved_after()[0] < 4, "{:?}", saves.saved_after());
}

#[tokio::test]
async fn a_saved_container_not_yet_published_is_published_without_creating_another() {
    for state in ["FINISHED", "IN_PROGRESS"] {
        let (fake, token) = instagram().await;
        let saved = fake.seed_container(CAPTION, state);
        let saves = Arc::new(Checkpoints::default());
        let result = share_resuming(&fake, &token, Some(&saved), &saves).await;
        let lines = fake.recorder.lines();
        assert!(
            !lines.contains(&format!("POST {}", v(&format!("{USER}/media")))),
            "{lines:?}"
        );
        assert!(saves.saved().is_empty());
        match state {
            "FINISHED" => {
                assert_eq!(
                    result.unwrap().post_id,
                    fake.posts()[0]["id"].as_str().unwrap()
                );
                assert_eq!(publishes(&fake), [saved]);
            }
            // Still processing past the bound: try again later, with the same container.
            _ => assert!(
                matches!(result, Err(PlatformError::Transient { .. })),
                "{result:?}"
            ),
        }
    }
}

#[tokio::test]
async fn a_saved_container_already_published_is_settled_by_read_back_and_never_published_again() {
    let (fake, token) = instagram().await;
    let saved = fake.seed_container(CAPTION, "PUBLISHED");
    let media = fake.posts()[0]["id"].as_str().unwrap().to_owned();
    fake.list(&media);
    let saves = Arc::new(Checkpoints::default());
    let found = share_resuming(&fake, &token, Some(&saved), &saves)
        .await
        .unwrap();
    assert_eq!(
        (found.post_id.as_str(), found.post_url),
        (media.as_str(), Some(fake.permalink(&media)))
    );
    assert_eq!(
        fake.recorder.lines(),
        [
            format!("GET {}", v(&saved)),
            format!("GET {}", v(&format!("{USER}/media")))
        ]
    );

    // Published, but the media list does not show it yet: still unknown, and still not posted again.
    let (fake, token) = instagram().await;
    let saved = fake.seed_container(CAPTION, "PUBLISHED");
    let err = share_resuming(&fake, &token, Some(&saved), &saves)
        .await
        .unwrap_err();
    assert!(
        matches!(err, PlatformError::OutcomeUnknown { .. }),
        "{err:?}"
    );
    assert!(publishes(&fake).is_empty());
    assert_eq!(
        fake.recorder.lines(),
        [
            format!("GET {}", v(&saved)),
            format!("GET {}", v(&format!("{USER}/media")))
        ]
    );
}

#[tokio::test]
async fn an_expired_saved_container_is_replaced_by_a_new_one_saved_before_publishing() {
    let (fake, token) = instagram().await;
    let expired = fake.seed_container(CAPTION, "EXPIRED");
    let saves = Arc::new(Checkpoints::default());
    let published = share_resuming(&fake, &token, Some(&expired), &saves)
        .await
        .unwrap();
    let made = &fake.posts()[0];
    let container = made["container"].as_str().unwrap();
    assert_ne!(container, expired);
    assert_eq!(published.post_id, made["id"].as_str().unwrap());
    assert_eq!(saves.saved(), [container]);
    assert_eq!(publishes(&fake), [container]);
}

#[tokio::test]
async fn refresh_exchanges_the_long_lived_token_and_a_dead_one_is_an_invalid_grant() {
    let (fake, token) = instagram().await;
    let acct = account(USER, json!({}));
    let tokens = ig(&fake)
        .refresh(&acct, &creds(&token, None))
        .await
        .unwrap();
    let fresh = tokens.access_token.expose_secret();
    assert_ne!(fresh, token);
    assert_eq!(fake.token(fresh).map(|t| t.2), Some(true));
    assert!(
        tokens.refresh_token.is_none(),
        "Instagram returns no refresh token: the store keeps what it has"
    );
    assert!(tokens.expires_at.is_some());
    assert_eq!(
        fake.recorder.all()[0].q("grant_type"),
        Some("ig_refresh_token")
    );
    let err = ig(&fake)
        .refresh(&acct, &creds("expired", None))
        .await
        .unwrap_err();
    assert!(matches!(err, PlatformError::InvalidGrant { .. }), "{err:?}");
}

#[tokio::test]
async fn verify_reads_the_account_and_read_back_matches_the_caption() {
    let (fake, token) = instagram().await;
    let recent = fake.seed_post(
        CAPTION,
        None,
        chrono::Utc::now() - chrono::Duration::minutes(5),
    );
    // Listed first, and too old: Instagram ignores `since`, so the client checks the time.
    fake.seed_post(
        CAPTION,
        None,
        chrono::Utc::now() - chrono::Duration::days(30),
    );
    let acct = account(USER, json!({}));
    let profile = ig(&fake).verify(&acct, &creds(&token, None)).await.unwrap();
    assert_eq!(
        (
            profile.handle.as_str(),
            profile.display_name.as_deref(),
            profile.followers_count
        ),
        ("herald.cafe", Some("Herald Café"), Some(1284))
    );
    assert_eq!(
        fake.recorder.all()[0].q("fields"),
        Some("id,username,name,followers_count")
    );
    let found = ig(&fake)
        .find_published(&acct, &creds(&token, None), &post())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (found.post_id.as_str(), found.post_url),
        (recent.as_str(), Some(fake.permalink(&recent)))
    );
}

#[tokio::test]
async fn validate_requires_an_image() {
    let (fake, _) = instagram().await;
    let mut p = post();
    p.image_url = None;
    let err = ig(&fake)
        .validate(&account(USER, json!({})), &p)
        .unwrap_err();
    assert_eq!((err.field, err.code), ("image_url", "image_required"));
    assert!(ig(&fake).capabilities().requires_image);
}
