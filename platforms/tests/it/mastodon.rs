//! The Mastodon client's images against the local instance (`testing::mastodon`): uploads with
//! their alt text, in order, attached to the status by id, the instance's refusals, and retries
//! that reuse what a lost answer left uploaded.

use std::sync::Arc;

use herald_platforms::{
    Platform, PlatformError, PostRequest,
    mastodon::Mastodon,
    testing::{
        Checkpoints, account, client, creds, image,
        mastodon::{FakeMastodon, MediaReply},
        post_resuming,
    },
};
use serde_json::json;

fn with_images(fake: &FakeMastodon, saved: Option<&str>) -> (PostRequest, Arc<Checkpoints>) {
    let sink = Arc::new(Checkpoints::watching(&fake.recorder));
    let post = PostRequest {
        image_url: None,
        media: vec![
            image(800, 600, 1, Some("A red kite over a field")),
            image(600, 800, 2, None),
            image(1024, 1024, 3, Some("The field at dusk")),
        ],
        ..post_resuming(saved, sink.clone())
    };
    (post, sink)
}

async fn share(fake: &FakeMastodon, post: &PostRequest) -> Result<String, PlatformError> {
    let acct = account("109", json!({ "instance_url": fake.base }));
    Mastodon::new(client())
        .with_processing_checks(3)
        .share(&acct, &creds(&fake.token, None), post)
        .await
        .map(|p| p.post_id)
}

#[tokio::test]
async fn images_are_uploaded_in_order_with_their_alt_text_and_attached_to_the_status() {
    let fake = FakeMastodon::start().await;
    let (post, sink) = with_images(&fake, None);
    share(&fake, &post).await.unwrap();
    let uploads = fake.uploads();
    assert_eq!(uploads.len(), 3);
    for (u, img) in uploads.iter().zip(&post.media) {
        assert_eq!(u.bytes, img.bytes.as_ref(), "the bytes as captured");
        assert_eq!(u.content_type, "image/png");
        assert_eq!(u.description, img.alt);
    }
    let status = &fake.statuses()[0];
    let attached: Vec<&str> = status["media_attachments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    let ids: Vec<&str> = uploads.iter().map(|u| u.id.as_str()).collect();
    assert_eq!(attached, ids, "the status references the uploads, in order");
    // Each upload was saved before the next step, so a retry can reuse it.
    let saved = sink.saved();
    assert_eq!(saved.len(), 3);
    assert!(saved[2].contains(&uploads[2].id), "{saved:?}");
}

#[tokio::test]
async fn an_upload_still_processing_is_waited_for_before_the_status() {
    let fake = FakeMastodon::start().await;
    fake.script_media([MediaReply::Processing(2)]);
    let (post, _) = with_images(&fake, None);
    share(&fake, &post).await.unwrap();
    let lines = fake.recorder.lines();
    let first = &fake.uploads()[0].id;
    let checks = lines
        .iter()
        .filter(|l| **l == format!("GET /api/v1/media/{first}"))
        .count();
    assert_eq!(checks, 3, "206, 206, then 200: {lines:?}");
    assert_eq!(fake.statuses().len(), 1);
}

#[tokio::test]
async fn a_retry_reuses_the_uploads_the_instance_still_holds() {
    let fake = FakeMastodon::start().await;
    // The first attempt uploads all three, then the status is refused for now.
    fake.script([herald_platforms::testing::mastodon::Reply::Unavailable]);
    let (post, sink) = with_images(&fake, None);
    assert!(matches!(
        share(&fake, &post).await,
        Err(PlatformError::Transient { .. })
    ));
    let saved = sink.saved().pop().unwrap();
    let (retry, _) = with_images(&fake, Some(&saved));
    share(&fake, &retry).await.unwrap();
    assert_eq!(fake.uploads().len(), 3, "nothing uploaded twice");
    assert_eq!(fake.statuses().len(), 1);
}

#[tokio::test]
async fn a_retry_uploads_again_what_the_instance_deleted() {
    let fake = FakeMastodon::start().await;
    fake.script([herald_platforms::testing::mastodon::Reply::Unavailable]);
    let (post, sink) = with_images(&fake, None);
    share(&fake, &post).await.unwrap_err();
    fake.delete_unattached_media();
    let saved = sink.saved().pop().unwrap();
    let (retry, _) = with_images(&fake, Some(&saved));
    share(&fake, &retry).await.unwrap();
    let uploads = fake.uploads();
    assert_eq!(uploads.len(), 3, "three fresh uploads, all attached");
    assert!(uploads.iter().all(|u| u.status_id.is_some()));
    assert_eq!(
        uploads[0].description.as_deref(),
        Some("A red kite over a field")
    );
}

#[tokio::test]
async fn the_instances_refusals_of_an_upload_are_classified() {
    for (reply, expect) in [
        (MediaReply::TooLarge, "rejected"),
        (MediaReply::UnsupportedType, "rejected"),
        (MediaReply::OutsideScopes, "rejected"),
        (MediaReply::Unavailable, "transient"),
        (MediaReply::NeverProcessed, "transient"),
    ] {
        let fake = FakeMastodon::start().await;
        fake.script_media([reply.clone()]);
        let (post, _) = with_images(&fake, None);
        let err = share(&fake, &post).await.unwrap_err();
        let class = match &err {
            PlatformError::Rejected { .. } => "rejected",
            PlatformError::Transient { .. } => "transient",
            _ => "other",
        };
        assert_eq!(class, expect, "{reply:?}: {err:?}");
        assert!(fake.statuses().is_empty(), "no status without its images");
        if matches!(reply, MediaReply::OutsideScopes) {
            assert!(format!("{err:?}").contains("write:media"), "{err:?}");
        }
    }
}

#[test]
fn the_solid_test_png_is_a_whole_valid_png() {
    let png = herald_platforms::testing::solid_png(3, 2, [1, 2, 3]);
    assert_eq!(
        herald_platforms::media::inspect(&png).unwrap(),
        (herald_platforms::media::ImageType::Png, 3, 2)
    );
}
