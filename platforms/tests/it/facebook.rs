//! The Facebook Pages client against the local Graph API in its Facebook shape
//! (`testing::meta`).

use std::time::Duration;

use herald_platforms::{
    Account, LimitScope, Platform, PlatformError, Relation,
    facebook::{API_VERSION, Facebook},
    oauth::OAuthClient,
    testing::{
        account, client, creds,
        meta::{Failure, FakeMeta, MetaApi, PAGE_ID, PAGE_NAME, TokenKind},
        post,
    },
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

fn page() -> Account {
    account("user-1", json!({"page_id": PAGE_ID}))
}

async fn facebook() -> (FakeMeta, Facebook, String) {
    let fake = FakeMeta::start(MetaApi::Facebook).await;
    let fb = Facebook::new(client(), &fake.base);
    let token = fake.issue_token(TokenKind::Page);
    (fake, fb, token)
}

#[tokio::test]
async fn a_share_posts_message_and_link_to_the_page_feed_with_the_page_token() {
    let (fake, fb, token) = facebook().await;
    let published = fb
        .share(&page(), &creds(&token, None), &post())
        .await
        .unwrap();
    let id = fake.posts()[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(published.post_id, id);
    assert_eq!(published.post_url, Some(fake.permalink(&id)));
    let req = &fake.recorder.to(&format!("/{API_VERSION}/{PAGE_ID}/feed"))[0];
    assert_eq!(
        req.form.get("message").map(String::as_str),
        Some("Worth reading")
    );
    assert_eq!(
        req.form.get("link").map(String::as_str),
        Some("https://example.com/articles/1")
    );
    assert_eq!(req.form.get("access_token"), Some(&token));
    assert_eq!(req.form.get("published").map(String::as_str), Some("true"));
}

#[tokio::test]
async fn graph_error_codes_decide_the_class() {
    let (fake, fb, token) = facebook().await;
    let class = |token: String| {
        let fb = fb.clone();
        async move {
            fb.share(&page(), &creds(&token, None), &post())
                .await
                .unwrap_err()
        }
    };
    for (failure, expect) in [
        (Failure::LinkError, "rejected"),
        (Failure::Abusive, "rejected"),
        (Failure::InvalidParameter, "rejected"),
    ] {
        fake.fail_next(failure);
        let err = class(token.clone()).await;
        assert!(
            matches!(err, PlatformError::Rejected { status: 400, .. }),
            "{err:?}"
        );
        assert_eq!(err.class(), expect);
    }
    fake.fail_next(Failure::Unexpected);
    assert!(matches!(
        class(token.clone()).await,
        PlatformError::Transient {
            status: Some(500),
            ..
        }
    ));
    // A repeat of the page's last post: 506.
    fb.share(&page(), &creds(&token, None), &post())
        .await
        .unwrap();
    assert!(matches!(
        class(token.clone()).await,
        PlatformError::Rejected { status: 400, .. }
    ));
    // The user changed their password: 190 with subcode 460.
    fake.revoke_user();
    let dead = class(token.clone()).await;
    assert!(
        matches!(dead, PlatformError::Unauthorized { ref reason } if reason.contains("code 190, subcode 460")),
        "{dead:?}"
    );
    assert!(
        !dead.to_string().contains(&token),
        "the token never appears in an error"
    );
}

#[tokio::test]
async fn an_unreadable_answer_to_a_post_is_an_unknown_outcome_that_never_shows_the_token() {
    let (fake, fb, token) = facebook().await;
    fake.fail_next(Failure::NotJson);
    let err = fb
        .share(&page(), &creds(&token, None), &post())
        .await
        .unwrap_err();
    assert!(
        matches!(err, PlatformError::OutcomeUnknown { .. }),
        "{err:?}"
    );
    assert!(!format!("{err} {err:?}").contains(&token));
}

#[tokio::test]
async fn throttling_waits_for_the_business_use_case_estimate() {
    let (fake, fb, token) = facebook().await;
    fake.fail_next(Failure::PageThrottled { regain_minutes: 12 });
    let err = fb
        .share(&page(), &creds(&token, None), &post())
        .await
        .unwrap_err();
    assert!(
        matches!(err, PlatformError::RateLimited { retry_after: Some(w), scope: LimitScope::Account } if w == Duration::from_secs(720)),
        "{err:?}"
    );
}

#[tokio::test]
async fn the_apps_limit_is_told_from_a_users_by_code_and_app_usage() {
    let (fake, fb, token) = facebook().await;
    let scope = |failure: Failure| {
        fake.fail_next(failure);
        let (fb, token) = (fb.clone(), token.clone());
        async move {
            match fb.share(&page(), &creds(&token, None), &post()).await {
                Err(PlatformError::RateLimited { scope, .. }) => scope,
                other => panic!("{other:?}"),
            }
        }
    };
    assert_eq!(
        scope(Failure::AppLimit {
            regain_minutes: None
        })
        .await,
        LimitScope::App
    );
    // A page-level code while the app's usage is spent: every page of the app waits.
    assert_eq!(
        scope(Failure::PageLimit {
            app_usage_spent: true
        })
        .await,
        LimitScope::App
    );
    assert_eq!(scope(Failure::UserLimit).await, LimitScope::Account);
}

#[tokio::test]
async fn verify_reads_the_page_and_read_back_matches_the_link() {
    let (fake, fb, token) = facebook().await;
    let recent = chrono::Utc::now() - chrono::Duration::minutes(5);
    fake.seed_post("Worth reading", Some("https://example.com/other"), recent);
    let ours = fake.seed_post(
        "Worth reading",
        Some("https://example.com/articles/1"),
        recent,
    );
    fake.seed_post("Worth reading", Some("https://example.com/third"), recent);
    let profile = fb.verify(&page(), &creds(&token, None)).await.unwrap();
    assert_eq!(
        (
            profile.platform_account_id.as_str(),
            profile.handle.as_str()
        ),
        (PAGE_ID, PAGE_NAME)
    );
    assert_eq!(fake.recorder.all()[0].q("fields"), Some("id,name"));
    let found = fb
        .find_published(&page(), &creds(&token, None), &post())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.post_id, ours);
    assert!(fake.recorder.all()[1].q("since").is_some());
}

#[tokio::test]
async fn refresh_is_unsupported_but_a_long_lived_exchange_is_offered() {
    let (fake, fb, token) = facebook().await;
    assert!(matches!(
        fb.refresh(&page(), &creds(&token, None)).await,
        Err(PlatformError::Unsupported(_))
    ));
    assert!(matches!(
        fb.followers_page(&page(), &creds(&token, None), Relation::Followers, None)
            .await,
        Err(PlatformError::Unsupported("followers"))
    ));
    let app = OAuthClient {
        client_id: fake.client_id.clone(),
        client_secret: Some(SecretString::from(fake.client_secret.clone())),
        token_url: fake.token_url(),
    };
    let short = fake.issue_token(TokenKind::ShortUser);
    let tokens = fb
        .exchange_long_lived(&app, &SecretString::from(short.clone()))
        .await
        .unwrap();
    let (kind, _, live) = fake.token(tokens.access_token.expose_secret()).unwrap();
    assert_eq!((kind, live), (TokenKind::LongUser, true));
    assert!(tokens.refresh_token.is_none());
    let req = &fake.recorder.all()[0];
    assert_eq!(
        (
            req.q("client_id"),
            req.q("client_secret"),
            req.q("fb_exchange_token")
        ),
        (
            Some(fake.client_id.as_str()),
            Some(fake.client_secret.as_str()),
            Some(short.as_str())
        )
    );
}

mod photos {
    use std::sync::Arc;

    use herald_platforms::{
        Checkpoint, Platform, PostRequest,
        testing::{Checkpoints, creds, image, meta::Failure, post},
    };
    use serde_json::json;

    use super::{facebook, page};

    fn with(saved: Option<&str>, sink: Arc<Checkpoints>) -> PostRequest {
        let media = (1..=3u8)
            .map(|i| {
                let mut img = image(800, 600, i, (i != 2).then_some("A photo"));
                img.public_url = Some(format!(
                    "https://herald.example/v1/media/{}?s={i}",
                    img.sha256
                ));
                img
            })
            .collect();
        PostRequest {
            image_url: None,
            media,
            checkpoint: Checkpoint::new(saved.map(str::to_owned), sink),
            ..post()
        }
    }

    #[tokio::test]
    async fn images_are_unpublished_page_photos_attached_to_one_post_in_order() {
        let (fake, fb, token) = facebook().await;
        let sink = Arc::new(Checkpoints::default());
        let post = with(None, sink.clone());
        fb.share(&page(), &creds(&token, None), &post)
            .await
            .unwrap();
        let made = &fake.posts()[0];
        let expect: Vec<_> = post
            .media
            .iter()
            .map(|m| json!({ "url": m.public_url, "alt_text": m.alt }))
            .collect();
        assert_eq!(made["photos"], json!(expect));
        assert!(made["link"].is_null(), "no link preview beside photos");
        assert!(made["text"].as_str().unwrap().ends_with(&post.url));
        assert_eq!(sink.saved().len(), 3);
    }

    #[tokio::test]
    async fn a_retry_attaches_the_photos_already_uploaded() {
        let (fake, fb, token) = facebook().await;
        let sink = Arc::new(Checkpoints::default());
        fake.fail_next(Failure::Unexpected);
        fb.share(&page(), &creds(&token, None), &with(None, sink.clone()))
            .await
            .unwrap_err();
        let uploads = fake
            .recorder
            .lines()
            .iter()
            .filter(|l| l.ends_with("/photos"))
            .count();
        assert_eq!(uploads, 3);
        let saved = sink.saved().pop().unwrap();
        fb.share(
            &page(),
            &creds(&token, None),
            &with(Some(&saved), sink.clone()),
        )
        .await
        .unwrap();
        let again = fake
            .recorder
            .lines()
            .iter()
            .filter(|l| l.ends_with("/photos"))
            .count();
        assert_eq!(again, 3, "no photo uploaded twice");
        assert_eq!(fake.posts()[0]["photos"].as_array().map(Vec::len), Some(3));
    }
}
