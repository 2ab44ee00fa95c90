//! The web pages a link card is built from, on an origin of their own: `/page` (OpenGraph title,
//! description and a relative image), `/big-image-page` (an image over the thumbnail limit),
//! `/moved` (a redirect to `/page`), `/counted-missing` (a 404 that counts its visits), and the
//! images.

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};

use super::world::Shared;
use crate::bluesky::link_card::MAX_THUMB_BYTES;

/// A 1x1 PNG.
pub const PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4,
    0x89, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0xf8, 0xcf, 0xc0, 0xf0,
    0x1f, 0x00, 0x05, 0x00, 0x01, 0xff, 0x89, 0x99, 0x3d, 0x1d, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45,
    0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

fn page(image: &str) -> Response {
    let html = format!(
        r#"<!doctype html><html><head><title>Ignored</title>
        <meta property="og:title" content="Herald &amp; friends">
        <meta property="og:description" content="Durable jobs — for sharing">
        <meta property="og:image" content="{image}"></head><body>hi</body></html>"#
    );
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
}

pub(super) fn router(world: Shared) -> Router {
    Router::new()
        .route("/page", get(|| async { page("/img.png") }))
        .route(
            "/counted-missing",
            get(|State(w): State<Shared>| async move {
                w.lock().unwrap().page_hits += 1;
                StatusCode::NOT_FOUND
            }),
        )
        .route("/big-image-page", get(|| async { page("/big.png") }))
        .route(
            "/moved",
            get(|| async { (StatusCode::FOUND, [(header::LOCATION, "/page")]).into_response() }),
        )
        .route(
            "/img.png",
            get(|| async { ([(header::CONTENT_TYPE, "image/png")], PNG).into_response() }),
        )
        .route(
            "/big.png",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "image/png")],
                    vec![0u8; MAX_THUMB_BYTES + 1],
                )
                    .into_response()
            }),
        )
        .with_state(world)
}
