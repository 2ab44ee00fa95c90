//! Fetching a share's images at enqueue (`herald_platforms::media::fetch`): through the SSRF
//! guard at every hop, within a size cap and a time limit, the type read from the bytes.

use std::time::Duration;

use herald_platforms::{
    http,
    media::{FetchError, ImageType, fetch},
    ssrf::SsrfGuard,
    testing::{ImageHost, client, jpeg},
};

const CAP: usize = 64 * 1024;
const LIMIT: Duration = Duration::from_secs(2);

#[tokio::test]
async fn an_image_is_fetched_through_checked_redirects_and_read_from_its_bytes() {
    let host = ImageHost::start().await;
    let bytes = jpeg(640, 480, 1);
    // Served with a misleading type: the bytes decide.
    let url = host.put("photo", "application/octet-stream", bytes.clone());
    let hop = host.redirect("hop", &url);
    let f = fetch(&client(), &SsrfGuard::allowing_private(), &hop, CAP, LIMIT)
        .await
        .unwrap();
    assert_eq!((f.kind, f.width, f.height), (ImageType::Jpeg, 640, 480));
    assert_eq!(f.bytes.as_ref(), bytes.as_slice());
}

#[tokio::test]
async fn too_large_too_many_redirects_and_no_answer_are_refused() {
    let host = ImageHost::start().await;
    let guard = SsrfGuard::allowing_private();
    let mut big = jpeg(10, 10, 2);
    big.resize(CAP + 1, 0);
    let big = host.put("big.jpg", "image/jpeg", big);
    assert_eq!(
        fetch(&client(), &guard, &big, CAP, LIMIT)
            .await
            .unwrap_err(),
        FetchError::TooLarge(CAP)
    );
    let a = host.url("a");
    host.redirect("b", &a);
    host.redirect("a", &host.url("b"));
    assert_eq!(
        fetch(&client(), &guard, &a, CAP, LIMIT).await.unwrap_err(),
        FetchError::Redirects
    );
    // A server that accepts the connection and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let err = fetch(
        &client(),
        &guard,
        &format!("http://{addr}/slow.jpg"),
        CAP,
        Duration::from_millis(300),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), "media_unreachable", "{err:?}");
}

#[tokio::test]
async fn private_addresses_are_refused_as_literals_and_behind_names() {
    let strict = SsrfGuard::strict().with_host("images.example", &["127.0.0.1".parse().unwrap()]);
    let guarded = http::client(&strict, LIMIT);
    let err = fetch(&guarded, &strict, "http://127.0.0.1/x.jpg", CAP, LIMIT)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "invalid_url", "{err:?}");
    let err = fetch(&guarded, &strict, "http://images.example/x.jpg", CAP, LIMIT)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        FetchError::Unreachable(
            "the host resolves to a private, loopback or link-local address".into()
        )
    );
}
