//! The X client against the local X (`testing::x`).

use std::time::Duration;

use base64::Engine;
use chrono::Utc;
use herald_platforms::{
    LimitScope, Platform, PlatformError, Relation,
    oauth::OAuthClient,
    testing::{
        account, client, creds, impatient_client, post,
        x::{Failure, FakeX, USER},
    },
    x::X,
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

fn oauth(fake: &FakeX, secret: Option<&str>) -> OAuthClient {
    OAuthClient {
        client_id: fake.client_id.clone(),
        client_secret: secret.map(|s| SecretString::from(s.to_owned())),
        token_url: fake.token_url(),
    }
}

fn x(fake: &FakeX) -> X {
    X::new(client(), &fake.base, oauth(fake, Some(&fake.client_secret)))
}

#[tokio::test]
async fn a_share_posts_the_text_and_the_url_and_returns_the_post() {
    let fake = FakeX::start().await;
    let (at, rt) = fake.grant(USER);
    let published = x(&fake)
        .share(&account(USER, json!({})), &creds(&at, Some(&rt)), &post())
        .await
        .unwrap();
    let tweets = fake.tweets();
    assert_eq!(published.post_id, tweets[0]["id"].as_str().unwrap());
    assert_eq!(
        published.post_url,
        Some(format!("https://x.com/i/web/status/{}", published.post_id))
    );
    let req = &fake.recorder.to("/2/tweets")[0];
    assert_eq!(
        req.header("authorization"),
        Some(format!("Bearer {at}").as_str())
    );
    assert_eq!(
        req.json,
        Some(json!({"text": "Worth reading\n\nhttps://example.com/articles/1"}))
    );
}

#[tokio::test]
async fn a_401_is_an_expired_token_with_a_refresh_token_and_dead_credentials_without() {
    let fake = FakeX::start().await;
    // A token X no longer takes (expired or revoked): 401 with problem JSON.
    let err = x(&fake)
        .share(&account(USER, json!({})), &creds("at", Some("rt")), &post())
        .await
        .unwrap_err();
    assert!(matches!(err, PlatformError::TokenExpired), "{err:?}");
    let err = x(&fake)
        .share(&account(USER, json!({})), &creds("at", None), &post())
        .await
        .unwrap_err();
    assert!(matches!(err, PlatformError::Unauthorized { .. }), "{err:?}");
}

#[tokio::test]
async fn duplicate_content_is_rejected_for_good() {
    let fake = FakeX::start().await;
    let (at, rt) = fake.grant(USER);
    let (acct, creds) = (account(USER, json!({})), creds(&at, Some(&rt)));
    x(&fake).share(&acct, &creds, &post()).await.unwrap();
    let err = x(&fake).share(&acct, &creds, &post()).await.unwrap_err();
    match err {
        PlatformError::Rejected {
            status: 403,
            reason,
        } => assert!(reason.contains("duplicate content"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_429_waits_until_the_window_resets_by_the_servers_clock() {
    let fake = FakeX::start().await;
    let (at, _) = fake.grant(USER);
    fake.spend_window(&at, Duration::from_secs(120));
    let err = x(&fake)
        .share(&account(USER, json!({})), &creds(&at, None), &post())
        .await
        .unwrap_err();
    match err {
        PlatformError::RateLimited {
            retry_after: Some(wait),
            scope: LimitScope::Account,
        } => {
            // Date has whole-second resolution.
            assert!((119..=120).contains(&wait.as_secs()), "{wait:?}");
        }
        other => panic!("{other:?}"),
    }
    let req = &fake.recorder.to("/2/tweets")[0];
    assert_eq!(
        req.header("authorization"),
        Some(format!("Bearer {at}").as_str())
    );
}

#[tokio::test]
async fn a_post_reports_the_apps_daily_budget_and_a_spent_one_is_the_apps_limit() {
    let fake = FakeX::start().await;
    fake.limit_app(10_000, Duration::from_secs(3600));
    fake.spend_the_app_budget(Some(9_958));
    let (at, _) = fake.grant(USER);
    let published = x(&fake)
        .share(&account(USER, json!({})), &creds(&at, None), &post())
        .await
        .unwrap();
    let budget = published.app_budget.expect("the app's budget is reported");
    assert_eq!((budget.limit, budget.remaining), (10_000, 41));
    let until_reset = (budget.resets_at - Utc::now()).num_seconds();
    assert!((3590..=3601).contains(&until_reset), "{until_reset}");

    fake.spend_the_app_budget(None);
    let mut other = post();
    other.text = Some("Worth reading again".into());
    let err = x(&fake)
        .share(&account(USER, json!({})), &creds(&at, None), &other)
        .await
        .unwrap_err();
    match err {
        PlatformError::RateLimited {
            retry_after: Some(wait),
            scope: LimitScope::App,
        } => assert!((3590..=3601).contains(&wait.as_secs()), "{wait:?}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_spent_user_limit_is_the_accounts_alone() {
    let fake = FakeX::start().await;
    fake.limit_app(10_000, Duration::from_secs(3600));
    let (at, _) = fake.grant(USER);
    fake.limit_user(&at, Duration::from_secs(600));
    let err = x(&fake)
        .share(&account(USER, json!({})), &creds(&at, None), &post())
        .await
        .unwrap_err();
    match err {
        PlatformError::RateLimited {
            retry_after: Some(wait),
            scope: LimitScope::Account,
        } => assert!((590..=601).contains(&wait.as_secs()), "{wait:?}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_usage_cap_waits_a_day_and_a_5xx_is_transient() {
    let fake = FakeX::start().await;
    let (at, _) = fake.grant(USER);
    fake.fail_next(Failure::UsageCapped);
    fake.fail_next(Failure::Unavailable);
    let err = x(&fake)
        .share(&account(USER, json!({})), &creds(&at, None), &post())
        .await
        .unwrap_err();
    assert!(
        matches!(err, PlatformError::RateLimited { retry_after: Some(w), scope: LimitScope::App } if w == Duration::from_secs(86_400)),
        "{err:?}"
    );
    let err = x(&fake)
        .verify(&account(USER, json!({})), &creds(&at, None))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            PlatformError::Transient {
                status: Some(503),
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn no_answer_after_the_post_was_sent_is_an_unknown_outcome() {
    let fake = FakeX::start().await;
    let (at, _) = fake.grant(USER);
    fake.fail_next(Failure::Hang);
    let x = X::new(impatient_client(), &fake.base, oauth(&fake, None));
    let err = x
        .share(&account(USER, json!({})), &creds(&at, None), &post())
        .await
        .unwrap_err();
    assert!(
        matches!(err, PlatformError::OutcomeUnknown { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn verify_reads_the_user_behind_the_token() {
    let fake = FakeX::start().await;
    let (at, _) = fake.grant(USER);
    let profile = x(&fake)
        .verify(&account("", json!({})), &creds(&at, None))
        .await
        .unwrap();
    assert_eq!(
        (
            profile.platform_account_id.as_str(),
            profile.handle.as_str(),
            profile.followers_count
        ),
        (USER, format!("user{USER}").as_str(), Some(7))
    );
    assert_eq!(
        fake.recorder.to("/2/users/me")[0].q("user.fields"),
        Some("public_metrics")
    );
}

#[tokio::test]
async fn a_confidential_refresh_uses_basic_auth_and_rotates_the_refresh_token() {
    let fake = FakeX::start().await;
    let (at, rt1) = fake.grant(USER);
    let tokens = x(&fake)
        .refresh(&account(USER, json!({})), &creds(&at, Some(&rt1)))
        .await
        .unwrap();
    let rt2 = fake.current_refresh_token(USER).unwrap();
    assert_ne!(rt2, rt1);
    assert_ne!(tokens.access_token.expose_secret(), at);
    assert_eq!(
        tokens.refresh_token.as_ref().map(|t| t.expose_secret()),
        Some(rt2.as_str())
    );
    let left = tokens.expires_at.unwrap() - Utc::now();
    assert!((7100..=7200).contains(&left.num_seconds()), "{left}");
    let req = &fake.recorder.to("/2/oauth2/token")[0];
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", fake.client_id, fake.client_secret));
    assert_eq!(
        req.header("authorization"),
        Some(format!("Basic {basic}").as_str())
    );
    assert_eq!(
        req.form.get("grant_type").map(String::as_str),
        Some("refresh_token")
    );
    assert_eq!(
        req.form.get("refresh_token").map(String::as_str),
        Some(rt1.as_str())
    );
    assert!(!req.form.contains_key("client_id"));
}

#[tokio::test]
async fn a_public_client_sends_its_id_and_no_returned_refresh_token_keeps_the_stored_one() {
    let fake = FakeX::start().await;
    fake.rotate_refresh_tokens(false);
    let (at, rt1) = fake.grant(USER);
    let x = X::new(client(), &fake.base, oauth(&fake, None));
    let tokens = x
        .refresh(&account(USER, json!({})), &creds(&at, Some(&rt1)))
        .await
        .unwrap();
    assert!(tokens.refresh_token.is_none());
    let req = &fake.recorder.to("/2/oauth2/token")[0];
    assert_eq!(req.header("authorization"), None);
    assert_eq!(
        req.form.get("client_id").map(String::as_str),
        Some(fake.client_id.as_str())
    );
}

#[tokio::test]
async fn a_refused_refresh_token_is_an_invalid_grant_and_a_refused_client_is_not() {
    let fake = FakeX::start().await;
    let (at, _) = fake.grant(USER);
    // X answers a dead refresh token with `invalid_request`.
    let err = x(&fake)
        .refresh(&account(USER, json!({})), &creds(&at, Some("dead")))
        .await
        .unwrap_err();
    assert!(matches!(err, PlatformError::InvalidGrant { .. }), "{err:?}");
    let (_, rt) = fake.grant(USER);
    let wrong_secret = X::new(client(), &fake.base, oauth(&fake, Some("not-the-secret")));
    let err = wrong_secret
        .refresh(&account(USER, json!({})), &creds(&at, Some(&rt)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, PlatformError::Rejected { status: 401, .. }),
        "{err:?}"
    );
    let err = x(&fake)
        .refresh(&account(USER, json!({})), &creds(&at, None))
        .await
        .unwrap_err();
    assert!(matches!(err, PlatformError::InvalidGrant { .. }), "{err:?}");
    let bodies: Vec<_> = fake.recorder.to("/2/oauth2/token");
    assert_eq!(bodies.len(), 2, "no request without a refresh token");
}

#[tokio::test]
async fn followers_are_paged_by_the_next_token() {
    let fake = FakeX::start().await;
    fake.set_graph(USER, &[("1", "a"), ("2", "b"), ("3", "c")], &[], 2);
    let (at, _) = fake.grant(USER);
    let x = x(&fake);
    let (acct, creds) = (account(USER, json!({})), creds(&at, None));
    let first = x
        .followers_page(&acct, &creds, Relation::Followers, None)
        .await
        .unwrap();
    assert_eq!(
        first
            .accounts
            .iter()
            .map(|a| a.handle.as_str())
            .collect::<Vec<_>>(),
        ["a", "b"]
    );
    let next = first.next_cursor.unwrap();
    let second = x
        .followers_page(&acct, &creds, Relation::Followers, Some(&next))
        .await
        .unwrap();
    assert_eq!(second.accounts[0].platform_account_id, "3");
    assert!(second.next_cursor.is_none());
    let follows = x
        .followers_page(&acct, &creds, Relation::Follows, None)
        .await
        .unwrap();
    assert!(follows.accounts.is_empty() && follows.next_cursor.is_none());
    assert_eq!(
        fake.recorder.to(&format!("/2/users/{USER}/followers"))[0].q("max_results"),
        Some("1000")
    );
}

#[tokio::test]
async fn read_back_finds_the_post_by_its_expanded_link() {
    let fake = FakeX::start().await;
    let (at, _) = fake.grant(USER);
    let (acct, creds) = (account(USER, json!({})), creds(&at, None));
    fake.seed_post(
        USER,
        "Something else https://example.com/other",
        Utc::now() - chrono::Duration::minutes(5),
    );
    let ours = fake.seed_post(
        USER,
        "Worth reading\n\nhttps://example.com/articles/1",
        Utc::now() - chrono::Duration::minutes(1),
    );
    fake.seed_post(
        USER,
        "Worth reading\n\nhttps://example.com/other",
        Utc::now(),
    );
    let found = x(&fake)
        .find_published(&acct, &creds, &post())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.post_id, ours);
    let req = &fake.recorder.to(&format!("/2/users/{USER}/tweets"))[0];
    assert_eq!(req.q("exclude"), Some("replies,retweets"));
    assert!(req.q("start_time").is_some_and(|t| t.ends_with('Z')));
    assert!(
        req.q("tweet.fields")
            .is_some_and(|f| f.contains("entities"))
    );
}

mod images {
    use std::sync::Arc;

    use herald_platforms::{
        Checkpoint, Platform, PlatformError, PostRequest,
        testing::{
            Checkpoints, account, creds, image, post,
            x::{Failure, FakeX, USER},
        },
    };
    use serde_json::json;

    use super::x;

    fn with_images(saved: Option<&str>, sink: Arc<Checkpoints>) -> PostRequest {
        PostRequest {
            image_url: None,
            media: vec![
                image(1200, 675, 1, Some("A chart of the week")),
                image(675, 1200, 2, None),
            ],
            checkpoint: Checkpoint::new(saved.map(str::to_owned), sink),
            ..post()
        }
    }

    #[tokio::test]
    async fn images_are_uploaded_with_alt_text_and_attached_in_order() {
        let fake = FakeX::start().await;
        let (at, rt) = fake.grant(USER);
        let sink = Arc::new(Checkpoints::default());
        let post = with_images(None, sink.clone());
        x(&fake)
            .share(&account(USER, json!({})), &creds(&at, Some(&rt)), &post)
            .await
            .unwrap();
        let media = fake.media();
        assert_eq!(media.len(), 2);
        for (m, img) in media.iter().zip(&post.media) {
            assert_eq!(m.bytes, img.bytes.as_ref());
            assert_eq!(m.media_type.as_deref(), Some("image/png"));
            assert_eq!(m.media_category.as_deref(), Some("tweet_image"));
            assert_eq!(m.alt_text, img.alt);
        }
        let ids: Vec<String> = media.iter().map(|m| m.id.clone()).collect();
        assert_eq!(fake.posts()[0].media_ids, ids);
        assert_eq!(
            sink.saved().len(),
            2,
            "each upload saved before the next step"
        );
    }

    #[tokio::test]
    async fn saved_uploads_are_reused_and_uploaded_again_once_x_forgot_them() {
        let fake = FakeX::start().await;
        let (at, rt) = fake.grant(USER);
        let sink = Arc::new(Checkpoints::default());
        let (acct, creds) = (account(USER, json!({})), creds(&at, Some(&rt)));
        let client = x(&fake);
        client
            .share(&acct, &creds, &with_images(None, sink.clone()))
            .await
            .unwrap();
        let saved = sink.saved().pop().unwrap();
        // A later attempt from that checkpoint uploads nothing.
        let reuse = PostRequest {
            text: Some("Again".into()),
            ..with_images(Some(&saved), sink.clone())
        };
        client.share(&acct, &creds, &reuse).await.unwrap();
        assert_eq!(fake.media().len(), 2);
        let posts = fake.posts();
        assert_eq!(posts[1].media_ids, posts[0].media_ids);
        // X forgot them before the time it gave: refused once, uploaded afresh, posted.
        fake.expire_media();
        let stale = PostRequest {
            text: Some("Once more".into()),
            ..with_images(Some(&saved), sink.clone())
        };
        client.share(&acct, &creds, &stale).await.unwrap();
        let media = fake.media();
        assert_eq!(media.len(), 4);
        assert_eq!(
            fake.posts()[2].media_ids,
            [media[2].id.clone(), media[3].id.clone()]
        );
        assert_eq!(media[2].alt_text.as_deref(), Some("A chart of the week"));
    }

    #[tokio::test]
    async fn a_refused_upload_posts_nothing() {
        let fake = FakeX::start().await;
        let (at, rt) = fake.grant(USER);
        fake.fail_next(Failure::Unavailable);
        let err = x(&fake)
            .share(
                &account(USER, json!({})),
                &creds(&at, Some(&rt)),
                &with_images(None, Arc::new(Checkpoints::default())),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, PlatformError::Transient { .. }), "{err:?}");
        assert!(fake.posts().is_empty());
    }
}
