//! The LinkedIn client against the local LinkedIn (`testing::linkedin`).

use std::time::Duration;

use herald_platforms::{
    LimitScope, Platform, PlatformError, Relation,
    linkedin::{DEFAULT_VERSION, Linkedin, until_midnight_utc},
    oauth::OAuthClient,
    testing::{
        account, client, creds,
        linkedin::{Failure, FakeLinkedin, MEMBER, ORGANIZATION},
        post,
    },
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

fn linkedin(fake: &FakeLinkedin) -> Linkedin {
    Linkedin::new(
        client(),
        &fake.base,
        OAuthClient {
            client_id: fake.client_id.clone(),
            client_secret: Some(SecretString::from(fake.client_secret.clone())),
            token_url: fake.token_url(),
        },
    )
}

#[tokio::test]
async fn a_share_sends_an_article_with_versioned_headers_and_reads_the_id_header() {
    let fake = FakeLinkedin::start(false).await;
    let (at, _) = fake.grant();
    let mut p = post();
    p.text = Some("Read (this) #now".into());
    let published = linkedin(&fake)
        .share(&account(MEMBER, json!({})), &creds(&at, None), &p)
        .await
        .unwrap();
    let urn = fake.posts()[0]["id"].as_str().unwrap().to_owned();
    assert!(urn.starts_with("urn:li:share:"), "{urn}");
    assert_eq!(published.post_id, urn);
    assert_eq!(
        published.post_url,
        Some(format!("https://www.linkedin.com/feed/update/{urn}/"))
    );
    let req = &fake.recorder.to("/rest/posts")[0];
    assert_eq!(
        req.header("authorization"),
        Some(format!("Bearer {at}").as_str())
    );
    assert_eq!(req.header("linkedin-version"), Some(DEFAULT_VERSION));
    assert_eq!(req.header("x-restli-protocol-version"), Some("2.0.0"));
    let body = req.json.clone().unwrap();
    assert_eq!(body["author"], format!("urn:li:person:{MEMBER}"));
    assert_eq!(body["commentary"], r"Read \(this\) \#now");
    assert_eq!(body["visibility"], "PUBLIC");
    assert_eq!(body["lifecycleState"], "PUBLISHED");
    assert_eq!(body["distribution"]["feedDistribution"], "MAIN_FEED");
    assert_eq!(
        body["content"]["article"],
        json!({"source": "https://example.com/articles/1", "title": "A title"})
    );
}

#[tokio::test]
async fn a_401_is_expired_with_a_refresh_token_unless_revoked_and_403_is_dead() {
    let fake = FakeLinkedin::start(true).await;
    let li = linkedin(&fake);
    let acct = account(MEMBER, json!({}));
    // A token LinkedIn does not take (65600 INVALID_ACCESS_TOKEN): a refresh may revive it.
    let err = li
        .share(&acct, &creds("expired", Some("rt")), &post())
        .await
        .unwrap_err();
    assert!(matches!(err, PlatformError::TokenExpired), "{err:?}");
    let err = li
        .share(&acct, &creds("expired", None), &post())
        .await
        .unwrap_err();
    assert!(matches!(err, PlatformError::Unauthorized { .. }), "{err:?}");
    // The member revoked the app (65601 REVOKED_ACCESS_TOKEN): no refresh helps.
    let (revoked, rt) = fake.grant();
    fake.revoke_member();
    let err = li
        .share(&acct, &creds(&revoked, rt.as_deref()), &post())
        .await
        .unwrap_err();
    assert!(matches!(err, PlatformError::Unauthorized { .. }), "{err:?}");
    // A live token without the permission to post as this author: 403 ACCESS_DENIED.
    let (live, rt) = fake.grant();
    let err = li
        .share(
            &account("SomeoneElse", json!({})),
            &creds(&live, rt.as_deref()),
            &post(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, PlatformError::Unauthorized { ref reason } if reason.contains("Not enough permissions")),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_429_waits_until_midnight_utc_and_a_duplicate_is_rejected() {
    let fake = FakeLinkedin::start(false).await;
    let (at, _) = fake.grant();
    let li = linkedin(&fake);
    let acct = account(MEMBER, json!({}));
    fake.fail_next(Failure::Throttled);
    let err = li
        .share(&acct, &creds(&at, None), &post())
        .await
        .unwrap_err();
    match err {
        PlatformError::RateLimited {
            retry_after: Some(wait),
            scope: LimitScope::Account,
        } => {
            let expected = until_midnight_utc(chrono::Utc::now());
            assert!(
                wait >= expected && wait - expected < Duration::from_secs(5),
                "{wait:?} vs {expected:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    fake.fail_next(Failure::GatewayTimeout);
    let err = li
        .share(&acct, &creds(&at, None), &post())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            PlatformError::Transient {
                status: Some(504),
                ..
            }
        ),
        "{err:?}"
    );
    li.share(&acct, &creds(&at, None), &post()).await.unwrap();
    let err = li
        .share(&acct, &creds(&at, None), &post())
        .await
        .unwrap_err();
    assert!(
        matches!(err, PlatformError::Rejected { status: 422, ref reason } if reason.contains("duplicate")),
        "{err:?}"
    );
}

#[tokio::test]
async fn verify_reads_userinfo() {
    let fake = FakeLinkedin::start(false).await;
    let (at, _) = fake.grant();
    let p = linkedin(&fake)
        .verify(&account("", json!({})), &creds(&at, None))
        .await
        .unwrap();
    assert_eq!(
        (p.platform_account_id.as_str(), p.handle.as_str()),
        (MEMBER, "Ada Lovelace")
    );
}

#[tokio::test]
async fn refresh_needs_a_refresh_token_and_sends_client_credentials_in_the_form() {
    let fake = FakeLinkedin::start(true).await;
    let (at, rt1) = fake.grant();
    let rt1 = rt1.unwrap();
    let li = linkedin(&fake);
    let acct = account(MEMBER, json!({}));
    let err = li.refresh(&acct, &creds(&at, None)).await.unwrap_err();
    assert!(matches!(err, PlatformError::Unsupported(_)), "{err:?}");
    let tokens = li.refresh(&acct, &creds(&at, Some(&rt1))).await.unwrap();
    assert_eq!(
        Some(tokens.access_token.expose_secret()),
        fake.current_access_token().as_deref()
    );
    assert_ne!(tokens.access_token.expose_secret(), at);
    assert_eq!(
        tokens.refresh_token.as_ref().map(|t| t.expose_secret()),
        Some(rt1.as_str())
    );
    let req = &fake.recorder.to("/oauth/v2/accessToken")[0];
    assert_eq!(
        req.form.get("client_id").map(String::as_str),
        Some(fake.client_id.as_str())
    );
    assert_eq!(
        req.form.get("client_secret").map(String::as_str),
        Some(fake.client_secret.as_str())
    );
    assert_eq!(
        req.form.get("grant_type").map(String::as_str),
        Some("refresh_token")
    );
    let err = li
        .refresh(&acct, &creds(&at, Some("gone")))
        .await
        .unwrap_err();
    assert!(matches!(err, PlatformError::InvalidGrant { .. }), "{err:?}");
}

#[tokio::test]
async fn read_back_works_for_pages_only_and_followers_are_not_listed() {
    let fake = FakeLinkedin::start(false).await;
    let (at, _) = fake.grant();
    let org = format!("urn:li:organization:{ORGANIZATION}");
    let now = chrono::Utc::now().timestamp_millis();
    fake.seed_post(
        &org,
        "Old",
        "https://example.com/articles/1",
        now - 10 * 86_400_000,
    );
    let ours = fake.seed_post(
        &org,
        "Worth reading",
        "https://example.com/articles/1",
        now - 60_000,
    );
    let li = linkedin(&fake);
    let page = account(MEMBER, json!({"organization_id": ORGANIZATION}));
    let found = li
        .find_published(&page, &creds(&at, None), &post())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.post_id, ours);
    let req = &fake.recorder.to("/rest/posts")[0];
    assert_eq!(
        (req.q("q"), req.q("author")),
        (Some("author"), Some(org.as_str()))
    );
    assert_eq!(req.header("linkedin-version"), Some(DEFAULT_VERSION));
    let member = account(MEMBER, json!({}));
    assert!(matches!(
        li.find_published(&member, &creds(&at, None), &post()).await,
        Err(PlatformError::Unsupported(_))
    ));
    assert!(matches!(
        li.followers_page(&member, &creds(&at, None), Relation::Followers, None)
            .await,
        Err(PlatformError::Unsupported(_))
    ));
}

mod images {
    use std::sync::Arc;

    use herald_platforms::{
        Checkpoint, Platform, PostRequest,
        testing::{
            Checkpoints, account, creds, image,
            linkedin::{FakeLinkedin, MEMBER},
            post,
        },
    };
    use serde_json::json;

    use super::linkedin;

    fn with(n: u8, saved: Option<&str>, sink: Arc<Checkpoints>) -> PostRequest {
        PostRequest {
            image_url: None,
            media: (1..=n)
                .map(|i| image(800, 600, i, (i == 1).then_some("The first picture")))
                .collect(),
            checkpoint: Checkpoint::new(saved.map(str::to_owned), sink),
            ..post()
        }
    }

    #[tokio::test]
    async fn one_image_is_the_posts_media_and_several_a_multi_image_post_with_alt_text() {
        let fake = FakeLinkedin::start(false).await;
        let (at, _) = fake.grant();
        let client = linkedin(&fake);
        let acct = account(MEMBER, json!({}));
        let one = with(1, None, Arc::default());
        client.share(&acct, &creds(&at, None), &one).await.unwrap();
        let content = &fake.posts()[0]["content"];
        let urn = content["media"]["id"].as_str().unwrap();
        assert_eq!(content["media"]["altText"], "The first picture");
        assert_eq!(
            fake.image(urn),
            Some(("image/png".to_owned(), one.media[0].bytes.to_vec()))
        );
        // No article card beside images: the link is in the commentary.
        let commentary = fake.posts()[0]["commentary"].as_str().unwrap().to_owned();
        assert!(
            commentary.ends_with("https://example.com/articles/1"),
            "{commentary}"
        );

        let sink = Arc::new(Checkpoints::default());
        let three = PostRequest {
            text: Some("Three".into()),
            ..with(3, None, sink.clone())
        };
        client
            .share(&acct, &creds(&at, None), &three)
            .await
            .unwrap();
        let images = fake.posts()[1]["content"]["multiImage"]["images"].clone();
        let images = images.as_array().unwrap();
        assert_eq!(images.len(), 3);
        for (entry, img) in images.iter().zip(&three.media) {
            let urn = entry["id"].as_str().unwrap();
            assert_eq!(fake.image(urn).unwrap().1, img.bytes.to_vec(), "in order");
            assert_eq!(
                entry.get("altText").and_then(|a| a.as_str()),
                img.alt.as_deref()
            );
        }
        // A retry from the checkpoint registers nothing new.
        let before = fake.recorder.to("/rest/images").len();
        let saved = sink.saved().pop().unwrap();
        let again = PostRequest {
            text: Some("Three again".into()),
            ..with(3, Some(&saved), sink.clone())
        };
        client
            .share(&acct, &creds(&at, None), &again)
            .await
            .unwrap();
        assert_eq!(fake.recorder.to("/rest/images").len(), before);
        assert_eq!(
            fake.posts()[2]["content"]["multiImage"],
            fake.posts()[1]["content"]["multiImage"]
        );
    }
}
