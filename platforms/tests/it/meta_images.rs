//! Images on Instagram and Threads: Meta fetches each from Herald's signed URL; one image is an
//! image container with its alt text, several a carousel of item containers (in order, each
//! finished) published as one post; the carousel is the checkpoint, so a lost publish answer
//! publishes nothing twice.

use std::{sync::Arc, time::Duration};

use herald_platforms::{
    Platform, PostRequest,
    instagram::Instagram,
    media::Image,
    meta::container::ContainerWait,
    testing::{
        Checkpoints, account, client, creds, image,
        meta::{Failure, FakeMeta, MetaApi, TokenKind},
        post_resuming,
    },
    threads::Threads,
};
use serde_json::json;

const FAST: ContainerWait = ContainerWait {
    checks: 3,
    interval: Duration::from_millis(1),
};

fn signed(mut img: Image, n: u8) -> Image {
    img.public_url = Some(format!(
        "https://herald.example/v1/media/{}?expires=1&sig=s{n}",
        img.sha256
    ));
    img
}

fn images(n: u8) -> Vec<Image> {
    (1..=n)
        .map(|i| {
            let alt = (i % 2 == 1).then(|| format!("Picture {i}"));
            signed(image(1080, 1080, i, alt.as_deref()), i)
        })
        .collect()
}

fn with(media: Vec<Image>, sink: Arc<Checkpoints>) -> PostRequest {
    PostRequest {
        image_url: None,
        media,
        ..post_resuming(None, sink)
    }
}

async fn share(api: MetaApi, fake: &FakeMeta, post: &PostRequest) {
    let token = fake.issue_token(TokenKind::LongUser);
    let acct = account(api.user_id(), json!({}));
    let res = match api {
        MetaApi::Instagram => {
            Instagram::new(client(), &fake.base)
                .with_container_wait(FAST)
                .share(&acct, &creds(&token, None), post)
                .await
        }
        _ => {
            Threads::new(client(), &fake.base)
                .with_container_wait(FAST)
                .share(&acct, &creds(&token, None), post)
                .await
        }
    };
    res.unwrap();
}

#[tokio::test]
async fn one_image_is_an_image_container_with_its_alt_text() {
    for api in [MetaApi::Instagram, MetaApi::Threads] {
        let fake = FakeMeta::start(api).await;
        let post = with(images(1), Arc::default());
        share(api, &fake, &post).await;
        let made = &fake.posts()[0];
        assert_eq!(made["media_type"], "IMAGE", "{api:?}");
        assert_eq!(made["image_url"], post.media[0].public_url.clone().unwrap());
        assert_eq!(made["alt_text"], "Picture 1");
        assert!(made["text"].as_str().unwrap().contains(&post.url));
    }
}

#[tokio::test]
async fn several_images_are_one_carousel_in_order_with_their_alt_text() {
    for api in [MetaApi::Instagram, MetaApi::Threads] {
        let fake = FakeMeta::start(api).await;
        let sink = Arc::new(Checkpoints::watching(&fake.recorder));
        let post = with(images(3), sink.clone());
        share(api, &fake, &post).await;
        let posts = fake.posts();
        assert_eq!(posts.len(), 1, "one post, the carousel");
        let made = &posts[0];
        assert_eq!(made["media_type"], "CAROUSEL", "{api:?}");
        let expect: Vec<_> = post
            .media
            .iter()
            .map(|m| json!({ "image_url": m.public_url, "alt_text": m.alt }))
            .collect();
        assert_eq!(made["children"], json!(expect));
        // The carousel, not an item, is what was saved before the publish.
        assert_eq!(sink.saved(), [made["container"].as_str().unwrap()]);
    }
}

#[tokio::test]
async fn a_lost_carousel_publish_answer_is_settled_without_a_second_post() {
    let api = MetaApi::Threads;
    let fake = FakeMeta::start(api).await;
    let sink = Arc::new(Checkpoints::default());
    fake.fail_next(Failure::LoseAnswer);
    let token = fake.issue_token(TokenKind::LongUser);
    let acct = account(api.user_id(), json!({}));
    let client = Threads::new(herald_platforms::testing::impatient_client(), &fake.base)
        .with_container_wait(FAST);
    let first = with(images(2), sink.clone());
    client
        .share(&acct, &creds(&token, None), &first)
        .await
        .unwrap_err();
    let saved = sink.saved().pop().unwrap();
    let retry = PostRequest {
        checkpoint: herald_platforms::Checkpoint::new(Some(saved), sink.clone()),
        ..with(images(2), sink.clone())
    };
    fake.list(fake.posts()[0]["id"].as_str().unwrap());
    client
        .share(&acct, &creds(&token, None), &retry)
        .await
        .unwrap();
    assert_eq!(fake.posts().len(), 1);
    assert_eq!(fake.publish_requests(), 1);
}
