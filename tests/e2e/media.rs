//! Images with alt text (issue 17): captured at enqueue through the SSRF guard, checked against
//! each target's rules before anything is written, kept content-addressed until no unfinished
//! share needs them, and posted as captured whatever the source URL does later.

use herald_platforms::{
    ssrf::SsrfGuard,
    testing::{
        ImageHost,
        atproto::{APP_PASSWORD, DID, FakeAtproto, HANDLE},
        mastodon::Reply,
        png,
    },
};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    on_every_backend,
    support::{Engine, TestApp, fast_settings},
};

on_every_backend!(
    images_reach_mastodon_as_captured_with_alt_text_in_order_even_after_the_source_changes,
    image_url_alone_is_posted_to_mastodon_as_one_image,
    every_refusal_names_the_field_the_platform_and_the_reason_and_writes_nothing,
    blobs_are_shared_and_removed_once_no_unfinished_share_needs_them,
    images_reach_bluesky_with_alt_text_and_each_target_applies_its_own_limits,
    a_retry_after_a_refused_status_reuses_the_uploaded_media,
    a_failed_share_retried_after_its_images_were_removed_says_so,
);

async fn share_with(app: &TestApp, body: Value) -> (StatusCode, Value) {
    app.post("/v1/shares", body).await
}

async fn rows(app: &TestApp) -> usize {
    let (_, list) = app.get("/v1/shares").await;
    list["shares"].as_array().map_or(0, Vec::len)
}

async fn images_reach_mastodon_as_captured_with_alt_text_in_order_even_after_the_source_changes(
    engine: Engine,
) {
    let app = TestApp::spawn(engine).await;
    let conn = app.mastodon_connection().await;
    let host = ImageHost::start().await;
    let (a, b) = (png(1200, 800, 1), png(800, 1200, 2));
    let url_a = host.put("a.png", "image/png", a.clone());
    let url_b = host.put("b.png", "image/png", b.clone());
    let (status, body) = share_with(
        &app,
        json!({
            "url": "https://blog.example/post/1", "text": "Two pictures",
            "media": [{ "url": url_a, "alt": "A kite" }, { "url": url_b }],
            "connection_ids": [conn],
        }),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    // The source changes and then disappears the moment the share is accepted.
    host.put("a.png", "image/png", png(10, 10, 9));
    host.remove("b.png");
    let id = body["shares"][0]["id"].as_str().unwrap();
    let done = app.settled(id).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(
        (host.hits("a.png"), host.hits("b.png")),
        (1, 1),
        "fetched once, at enqueue"
    );
    let uploads = app.mastodon.uploads();
    assert_eq!(uploads.len(), 2);
    assert_eq!(uploads[0].bytes, a);
    assert_eq!(uploads[0].description.as_deref(), Some("A kite"));
    assert_eq!(uploads[1].bytes, b);
    assert_eq!(uploads[1].description, None);
    assert_eq!(
        done["media"],
        json!([{ "url": url_a, "alt": "A kite" }, { "url": url_b, "alt": null }])
    );
    let status = &app.mastodon.statuses()[0];
    assert_eq!(
        status["media_attachments"],
        json!([
            { "id": uploads[0].id, "type": "image", "description": "A kite" },
            { "id": uploads[1].id, "type": "image", "description": null },
        ])
    );
}

/// The bug the issue opened with: a Mastodon share with `image_url` posted text only.
async fn image_url_alone_is_posted_to_mastodon_as_one_image(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let conn = app.mastodon_connection().await;
    let host = ImageHost::start().await;
    let cover = png(640, 480, 3);
    let (status, body) = share_with(
        &app,
        json!({
            "url": "https://blog.example/post/1", "text": "With a cover",
            "image_url": host.put("cover.png", "image/png", cover.clone()),
            "connection_ids": [conn],
        }),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let done = app.settled(body["shares"][0]["id"].as_str().unwrap()).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let uploads = app.mastodon.uploads();
    assert_eq!(uploads.len(), 1);
    assert_eq!(uploads[0].bytes, cover);
    assert_eq!(uploads[0].status_id.as_deref(), done["post"]["id"].as_str());
}

async fn every_refusal_names_the_field_the_platform_and_the_reason_and_writes_nothing(
    engine: Engine,
) {
    let mut settings = fast_settings();
    settings.media_max_bytes = 4096;
    let app = TestApp::spawn_with(engine, false, settings).await;
    let conn = app.mastodon_connection().await;
    let host = ImageHost::start().await;
    let ok = host.put("ok.png", "image/png", png(100, 100, 1));
    let mp4 = host.put(
        "clip.mp4",
        "video/mp4",
        b"\0\0\0\x18ftypisom\0\0\x02\0isomiso2".to_vec(),
    );
    let mp4_as_image = host.put(
        "clip.png",
        "image/png",
        b"\0\0\0\x18ftypisom\0\0\x02\0isomiso2".to_vec(),
    );
    let svg = host.put("x.svg", "image/svg+xml", b"<svg/>".to_vec());
    let huge = host.put("huge.png", "image/png", {
        let mut b = png(100, 100, 2);
        b.resize(5000, 0);
        b
    });
    let giant = host.put("giant.png", "image/png", png(10_000, 10_000, 3));
    let hop = host.redirect("hop.png", &ok);
    let five: Vec<Value> = (0..5).map(|_| json!({ "url": ok })).collect();
    let cases: Vec<(Value, &str, &str, Option<&str>)> = vec![
        (json!(five), "media", "too_many_images", Some("mastodon")),
        (
            json!([{ "url": ok, "alt": "a".repeat(1501) }]),
            "media[0].alt",
            "alt_text_too_long",
            Some("mastodon"),
        ),
        (
            json!([{ "url": ok }, { "url": mp4 }]),
            "media[1].url",
            "video_not_supported",
            None,
        ),
        (
            json!([{ "url": mp4_as_image }]),
            "media[0].url",
            "video_not_supported",
            None,
        ),
        (
            json!([{ "url": svg }]),
            "media[0].url",
            "unsupported_image_type",
            None,
        ),
        (
            json!([{ "url": huge }]),
            "media[0].url",
            "image_too_large",
            None,
        ),
        (
            json!([{ "url": giant }]),
            "media[0]",
            "image_too_large",
            Some("mastodon"),
        ),
        (
            json!([{ "url": host.url("gone.png") }]),
            "media[0].url",
            "media_unreachable",
            None,
        ),
        (
            json!([{ "url": "file:///etc/passwd" }]),
            "media[0].url",
            "invalid_url",
            None,
        ),
    ];
    for (media, field, code, platform) in cases {
        let (status, err) = share_with(
            &app,
            json!({ "url": "https://blog.example/p", "media": media, "connection_ids": [conn] }),
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{code}: {err}");
        assert_eq!(err["error"]["code"], code, "{err}");
        assert_eq!(err["error"]["field"], field, "{err}");
        assert_eq!(err["error"]["platform"].as_str(), platform, "{err}");
    }
    let (status, err) = share_with(
        &app,
        json!({ "url": "https://blog.example/p", "image_url": ok, "media": [{ "url": ok }], "connection_ids": [conn] }),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(err["error"]["code"], "image_url_with_media");
    assert_eq!(rows(&app).await, 0, "nothing written");
    // A redirect is followed (checked by the guard) and the image taken.
    let (status, body) = share_with(
        &app,
        json!({ "url": "https://blog.example/p", "media": [{ "url": hop }], "connection_ids": [conn] }),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");

    // Under the strict guard, a private address is refused before anything is fetched.
    let mut strict = fast_settings();
    strict.ssrf = SsrfGuard::strict();
    let strict_app = TestApp::spawn_with(engine, false, strict).await;
    for url in [ok.as_str(), "http://169.254.169.254/latest/meta-data"] {
        let (status, err) = share_with(
            &strict_app,
            json!({ "url": "https://blog.example/p", "media": [{ "url": url }], "connection_ids": ["con_x"] }),
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
        assert_eq!(
            (
                err["error"]["field"].as_str(),
                err["error"]["code"].as_str()
            ),
            (Some("media[0].url"), Some("invalid_url"))
        );
    }
    assert_eq!(host.hits("x.svg"), 1);
}

async fn blobs_are_shared_and_removed_once_no_unfinished_share_needs_them(engine: Engine) {
    let app = TestApp::spawn_with(engine, false, fast_settings()).await;
    let conn = app.mastodon_connection().await;
    let host = ImageHost::start().await;
    let bytes = png(300, 300, 4);
    let sha = herald_platforms::media::sha256_hex(&bytes);
    let url = host.put("same.png", "image/png", bytes);
    let mut ids = Vec::new();
    for text in ["first", "second"] {
        let (status, body) = share_with(
            &app,
            json!({ "url": "https://blog.example/p", "text": text, "media": [{ "url": url }], "connection_ids": [conn] }),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        ids.push(body["shares"][0]["id"].as_str().unwrap().to_owned());
    }
    let store = &app.parts.ctx.store;
    let later = chrono::Utc::now() + chrono::Duration::hours(2);
    assert_eq!(
        store.prune_media(later).await.unwrap(),
        0,
        "both still queued"
    );
    let (status, _) = app
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/shares/{}", ids[0]),
            Some(&app.key),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        store.prune_media(later).await.unwrap(),
        0,
        "the second still needs it"
    );
    assert!(store.media_blob_exists(&sha).await.unwrap());
    let (status, _) = app
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/shares/{}", ids[1]),
            Some(&app.key),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // Within the grace after its last use it stays (an enqueue may be writing a new use).
    assert_eq!(
        store
            .prune_media(chrono::Utc::now() - chrono::Duration::hours(1))
            .await
            .unwrap(),
        0
    );
    assert_eq!(store.prune_media(later).await.unwrap(), 1);
    assert!(!store.media_blob_exists(&sha).await.unwrap());
}

async fn images_reach_bluesky_with_alt_text_and_each_target_applies_its_own_limits(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let net = FakeAtproto::start().await;
    let (status, imported) = app
        .post(
            "/v1/connections",
            json!({
                "platform": "bluesky", "platform_account_id": DID, "handle": HANDLE,
                "access_token": APP_PASSWORD,
                "extras": { "pds_url": net.pds, "auth": "app_password" },
            }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{imported}");
    let bsky = imported["id"].as_str().unwrap().to_owned();
    let masto = app.mastodon_connection().await;
    let host = ImageHost::start().await;
    let (a, b) = (png(1200, 800, 1), png(800, 1200, 2));
    let media = json!([
        { "url": host.put("a.png", "image/png", a.clone()), "alt": "A kite" },
        { "url": host.put("b.png", "image/png", b.clone()), "alt": "The field" },
    ]);
    let (status, body) = share_with(
        &app,
        json!({ "url": format!("{}/page", net.web), "text": "Two pictures", "media": media, "connection_ids": [bsky] }),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let done = app.settled(body["shares"][0]["id"].as_str().unwrap()).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    {
        let pds = net.world();
        let embed = &pds.create_bodies[0]["record"]["embed"];
        assert_eq!(embed["$type"], "app.bsky.embed.images");
        for (i, (bytes, alt)) in [(&a, "A kite"), (&b, "The field")].into_iter().enumerate() {
            let img = &embed["images"][i];
            let cid = img["image"]["ref"]["$link"].as_str().unwrap();
            assert_eq!(&pds.blob_store[cid].1, bytes);
            assert_eq!(img["alt"], alt);
        }
    }

    // Over Bluesky's 1,000,000 bytes but within Mastodon's 16 MiB: Bluesky refuses, by name.
    let mut big = png(2000, 2000, 3);
    big.resize(1_100_000, 0);
    let big = host.put("big.png", "image/png", big);
    let (status, err) = share_with(
        &app,
        json!({ "url": "https://blog.example/p", "media": [{ "url": big }], "connection_ids": [masto, bsky] }),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert_eq!(err["error"]["code"], "image_too_large");
    assert_eq!(err["error"]["field"], "media[0]");
    assert_eq!(err["error"]["platform"], "bluesky");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("connection_ids[1]"),
        "{err}"
    );
}

async fn a_retry_after_a_refused_status_reuses_the_uploaded_media(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let conn = app.mastodon_connection().await;
    app.mastodon.script([Reply::Unavailable]);
    let host = ImageHost::start().await;
    let (status, body) = share_with(
        &app,
        json!({
            "url": "https://blog.example/p",
            "media": [
                { "url": host.put("a.png", "image/png", png(10, 10, 1)), "alt": "one" },
                { "url": host.put("b.png", "image/png", png(10, 10, 2)), "alt": "two" },
            ],
            "connection_ids": [conn],
        }),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let done = app.settled(body["shares"][0]["id"].as_str().unwrap()).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["attempts"], 2, "{done}");
    let uploads = app.mastodon.uploads();
    assert_eq!(uploads.len(), 2, "the retry reused both uploads");
    assert!(
        uploads
            .iter()
            .all(|u| u.status_id.as_deref() == done["post"]["id"].as_str())
    );
}

/// Blobs stay while a share may still post; a failed share is finished, and once its images are
/// removed a tenant's retry fails saying why rather than posting without them.
async fn a_failed_share_retried_after_its_images_were_removed_says_so(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let conn = app.mastodon_connection().await;
    app.mastodon
        .script([Reply::Unprocessable("Validation failed: Text is too long")]);
    let host = ImageHost::start().await;
    let (status, body) = share_with(
        &app,
        json!({
            "url": "https://blog.example/p",
            "media": [{ "url": host.put("a.png", "image/png", png(10, 10, 7)), "alt": "one" }],
            "connection_ids": [conn],
        }),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["shares"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(app.settled(&id).await["state"], "failed");
    let later = chrono::Utc::now() + chrono::Duration::hours(2);
    assert_eq!(app.parts.ctx.store.prune_media(later).await.unwrap(), 1);
    let (status, body) = app
        .call(
            reqwest::Method::POST,
            &format!("/v1/shares/{id}/retry"),
            Some(&app.key),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let done = app
        .share_until(&id, std::time::Duration::from_secs(20), |s| {
            s["state"] == "failed" && s["attempts"] == 2
        })
        .await;
    let message = done["last_error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("no longer stored"), "{done}");
    assert_eq!(
        app.mastodon.statuses().len(),
        0,
        "nothing posted without its image"
    );
}
