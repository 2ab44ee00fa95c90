//! A share's images on Bluesky: uploaded as blobs, in order, with their alt text and aspect
//! ratio in an `app.bsky.embed.images` embed; the blobs kept on the checkpoint and uploaded again
//! only when the PDS no longer has them; `image_url`'s one image as the card's thumbnail.

use std::sync::Arc;

use herald_platforms::{
    Platform, PostRequest,
    testing::{Checkpoints, atproto::APP_PASSWORD, image},
};
use serde_json::{Value, json};

use super::{creds, server, share_id};

fn with_images(post: PostRequest, saved: Option<&str>, sink: Arc<Checkpoints>) -> PostRequest {
    PostRequest {
        media: vec![
            image(1200, 800, 1, Some("A kite over the field")),
            image(800, 1200, 2, None),
        ],
        checkpoint: herald_platforms::Checkpoint::new(saved.map(str::to_owned), sink),
        ..post
    }
}

fn embed_of(body: &Value) -> Value {
    body["record"]["embed"].clone()
}

#[tokio::test]
async fn images_are_uploaded_and_embedded_in_order_with_alt_text_and_aspect_ratio() {
    let s = server().await;
    let sink = Arc::new(Checkpoints::default());
    let post = with_images(
        s.post(&share_id(), "Two pictures", "/page"),
        None,
        sink.clone(),
    );
    s.client
        .share(&s.account(), &creds(APP_PASSWORD), &post)
        .await
        .unwrap();
    let pds = s.pds();
    assert_eq!(
        pds.blobs.len(),
        2,
        "no card thumbnail: the images are the embed"
    );
    let embed = embed_of(&pds.create_bodies[0]);
    assert_eq!(embed["$type"], "app.bsky.embed.images");
    let images = embed["images"].as_array().unwrap();
    for (i, img) in post.media.iter().enumerate() {
        let cid = images[i]["image"]["ref"]["$link"].as_str().unwrap();
        let (mime, bytes) = &pds.blob_store[cid];
        assert_eq!(
            (mime.as_str(), bytes.as_slice()),
            ("image/png", img.bytes.as_ref())
        );
        assert_eq!(images[i]["alt"], img.alt.clone().unwrap_or_default());
        assert_eq!(
            images[i]["aspectRatio"],
            json!({ "width": img.width, "height": img.height })
        );
    }
    // The link stays in the text, as a link facet.
    let record = &pds.create_bodies[0]["record"];
    assert!(record["text"].as_str().unwrap().ends_with(&post.url));
    assert_eq!(
        record["facets"][0]["features"][0]["$type"],
        "app.bsky.richtext.facet#link"
    );
    assert_eq!(sink.saved().len(), 1, "the blobs are the checkpoint");
}

#[tokio::test]
async fn a_retry_reuses_the_saved_blobs_and_uploads_again_only_what_the_pds_deleted() {
    let s = server().await;
    let id = share_id();
    let sink = Arc::new(Checkpoints::default());
    s.pds().fail_next_create = Some((
        reqwest::StatusCode::SERVICE_UNAVAILABLE,
        json!({ "error": "InternalServerError", "message": "down" }),
    ));
    let first = with_images(s.post(&id, "Two pictures", "/page"), None, sink.clone());
    s.client
        .share(&s.account(), &creds(APP_PASSWORD), &first)
        .await
        .unwrap_err();
    let saved = sink.saved().pop().unwrap();
    assert_eq!(s.pds().blobs.len(), 2);

    let retry = with_images(
        s.post(&id, "Two pictures", "/page"),
        Some(&saved),
        sink.clone(),
    );
    s.client
        .share(&s.account(), &creds(APP_PASSWORD), &retry)
        .await
        .unwrap();
    assert_eq!(s.pds().blobs.len(), 2, "the saved blobs were reused");

    // Another share whose saved blobs the PDS has deleted meanwhile: uploaded again, once.
    let id = share_id();
    let sink = Arc::new(Checkpoints::default());
    let stale = s.pds().create_bodies[1]["record"]["embed"]["images"][0]["image"].clone();
    s.pds().blob_store.clear();
    let again = with_images(
        s.post(&id, "Two more", "/page"),
        Some(
            &serde_json::to_string(&json!({
                "bluesky_blobs": [{ "sha256": first.media[0].sha256, "blob": stale }],
            }))
            .unwrap(),
        ),
        sink.clone(),
    );
    s.client
        .share(&s.account(), &creds(APP_PASSWORD), &again)
        .await
        .unwrap();
    let pds = s.pds();
    let bodies = &pds.create_bodies;
    assert_eq!(
        bodies[bodies.len() - 2]["record"]["embed"]["images"][0]["image"],
        stale,
        "the saved blob was tried first"
    );
    assert_eq!(
        pds.blobs.len(),
        2 + 1 + 2,
        "then every image uploaded afresh"
    );
}

#[tokio::test]
async fn image_url_is_the_cards_thumbnail_from_the_captured_bytes() {
    let s = server().await;
    let captured = image(640, 480, 5, None);
    let post = PostRequest {
        image_url: Some("https://cdn.example/gone.png".into()),
        media: vec![captured.clone()],
        ..s.post(&share_id(), "With a cover", "/page")
    };
    s.client
        .share(&s.account(), &creds(APP_PASSWORD), &post)
        .await
        .unwrap();
    let pds = s.pds();
    let embed = embed_of(&pds.create_bodies[0]);
    assert_eq!(embed["$type"], "app.bsky.embed.external");
    let cid = embed["external"]["thumb"]["ref"]["$link"].as_str().unwrap();
    assert_eq!(pds.blob_store[cid].1, captured.bytes.as_ref());
}
