//! A publish in two steps resumes from its checkpoint: Instagram's container is stored with the
//! share before it is published, so a retry after a lost publish answer settles what happened
//! instead of creating a second container or posting twice.

use herald_platforms::testing::meta::{Failure, TokenKind};
use reqwest::StatusCode;
use serde_json::json;

use crate::{
    on_every_backend,
    support::{Engine, FakeMeta, MetaApi, TestApp, fast_settings},
};

on_every_backend!(a_lost_publish_answer_is_settled_from_the_saved_container_and_posts_once);

async fn a_lost_publish_answer_is_settled_from_the_saved_container_and_posts_once(engine: Engine) {
    let instagram = FakeMeta::start(MetaApi::Instagram).await;
    let token = instagram.issue_token(TokenKind::LongUser);
    let mut settings = fast_settings();
    settings.apps.instagram = Some(instagram.app());
    let app = TestApp::spawn_with(engine, true, settings).await;
    let images = herald_platforms::testing::ImageHost::start().await;
    let cover = images.put(
        "cover.jpg",
        "image/jpeg",
        herald_platforms::testing::jpeg(1080, 1080, 1),
    );
    let (status, conn) = app
        .post(
            "/v1/connections",
            json!({ "platform": "instagram", "platform_account_id": MetaApi::Instagram.user_id(), "handle": "herald.test", "access_token": token }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{conn}");
    instagram.fail_next(Failure::LoseAnswer);
    let (status, body) = app
        .post(
            "/v1/shares",
            json!({
                "url": "https://blog.example/post/1",
                "text": "Worth reading",
                "image_url": cover,
                "connection_ids": [conn["id"]],
            }),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["shares"][0]["id"].as_str().unwrap();

    let share = app.settled(id).await;
    assert_eq!(share["state"], "succeeded", "{share}");
    assert_eq!(
        instagram.containers_created(),
        1,
        "a second container was created"
    );
    assert_eq!(
        instagram.publish_requests(),
        1,
        "the container was published again"
    );
    let media = instagram.posts();
    assert_eq!(media.len(), 1);
    assert_eq!(share["post"]["id"], media[0]["id"]);
    assert_eq!(share["attempts"], 2);
    assert_eq!(share["attempt_history"][0]["error_class"], "transient");
}
