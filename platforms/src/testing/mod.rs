//! Test doubles: one local server per platform that answers as the platform documents, errors
//! included, and keeps the state a real one would (tokens, grants, posts, containers), so a test
//! can drive a client, or all of Herald, against it and then look at what the platform holds and
//! what it was sent ([`Recorder`]). This crate's client tests and Herald's end-to-end suite use the
//! same fakes. A failure the platform documents but a test cannot provoke by state alone (a 503,
//! a throttle, an answer that never comes) is queued with the fake's `fail_next`.
//!
//! Every fake listens on `127.0.0.1:0`; point a client at its `base` (the clients' guard must
//! allow private addresses: `SsrfGuard::allowing_private()`).

pub mod atproto;
pub mod images;
pub mod linkedin;
pub mod mastodon;
pub mod meta;
pub mod recorder;
pub mod x;

pub use atproto::FakeAtproto;
pub use images::ImageHost;
pub use linkedin::FakeLinkedin;
pub use mastodon::FakeMastodon;
pub use meta::{FakeMeta, MetaApi};
pub use recorder::{Recorder, Seen, serve};
pub use x::FakeX;

use std::{sync::Arc, time::Duration};

use secrecy::SecretString;

use crate::{
    http,
    ssrf::SsrfGuard,
    types::{Account, Checkpoint, CheckpointSink, Credentials, PostRequest},
};

/// A guarded client that may reach the fakes on loopback, with a 5 s timeout.
pub fn client() -> reqwest::Client {
    http::client(&SsrfGuard::allowing_private(), Duration::from_secs(5))
}

/// The same with a 1 s timeout, for answers that never come.
pub fn impatient_client() -> reqwest::Client {
    http::client(&SsrfGuard::allowing_private(), Duration::from_secs(1))
}

/// An account with these extras (a JSON object).
pub fn account(id: &str, extras: serde_json::Value) -> Account {
    Account {
        platform_account_id: id.into(),
        handle: "someone".into(),
        extras: extras.as_object().cloned().unwrap_or_default(),
    }
}

/// Credentials holding these tokens.
pub fn creds(access: &str, refresh: Option<&str>) -> Credentials {
    Credentials {
        access_token: Some(SecretString::from(access.to_owned())),
        refresh_token: refresh.map(|r| SecretString::from(r.to_owned())),
        dpop_key: None,
        expires_at: None,
    }
}

/// A share of `https://example.com/articles/1` with a title, words and an image.
pub fn post() -> PostRequest {
    PostRequest {
        share_id: "shr_1".into(),
        url: "https://example.com/articles/1".into(),
        title: Some("A title".into()),
        text: Some("Worth reading".into()),
        image_url: Some("https://cdn.example.com/cover.jpg".into()),
        media: Vec::new(),
        idempotency_key: "shr_1".into(),
        checkpoint: Default::default(),
    }
}

/// Where a client's checkpoints go in a client test (the share job writes them to the share row).
/// Watching a fake's [`Recorder`], it also notes how many requests the fake had received when
/// each checkpoint was stored, so a test can tell it was stored before the step it protects.
#[derive(Default)]
pub struct Checkpoints {
    saved: std::sync::Mutex<Vec<(String, usize)>>,
    recorder: Option<Recorder>,
}

#[async_trait::async_trait]
impl CheckpointSink for Checkpoints {
    async fn save(&self, value: &str) -> Result<(), String> {
        let seen = self.recorder.as_ref().map_or(0, |r| r.all().len());
        self.saved.lock().unwrap().push((value.to_owned(), seen));
        Ok(())
    }
}

impl Checkpoints {
    pub fn watching(recorder: &Recorder) -> Self {
        Self {
            saved: Default::default(),
            recorder: Some(recorder.clone()),
        }
    }

    pub fn saved(&self) -> Vec<String> {
        self.saved
            .lock()
            .unwrap()
            .iter()
            .map(|(v, _)| v.clone())
            .collect()
    }

    /// How many requests the watched fake had received when each checkpoint was stored.
    pub fn saved_after(&self) -> Vec<usize> {
        self.saved.lock().unwrap().iter().map(|(_, n)| *n).collect()
    }
}

/// [`post`], resuming from `saved` and storing new checkpoints in `sink`.
pub fn post_resuming(saved: Option<&str>, sink: Arc<Checkpoints>) -> PostRequest {
    PostRequest {
        checkpoint: Checkpoint::new(saved.map(str::to_owned), sink),
        ..post()
    }
}

/// A PNG of `width`×`height` as far as any reader of its header can tell, made distinct by
/// `seed` (no pixels: nothing in Herald decodes them).
pub fn png(width: u32, height: u32, seed: u8) -> Vec<u8> {
    let mut b = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    b.extend_from_slice(&width.to_be_bytes());
    b.extend_from_slice(&height.to_be_bytes());
    b.extend_from_slice(&[8, 6, 0, 0, 0, 0, 0, 0, 0]);
    b.extend_from_slice(&[seed; 32]);
    b
}

/// A captured image of [`png`]'s bytes, with this alt text.
pub fn image(width: u32, height: u32, seed: u8, alt: Option<&str>) -> crate::media::Image {
    let bytes = png(width, height, seed);
    crate::media::Image {
        sha256: crate::media::sha256_hex(&bytes),
        kind: crate::media::ImageType::Png,
        bytes: bytes.into(),
        width,
        height,
        alt: alt.map(str::to_owned),
        public_url: None,
    }
}

/// A baseline JPEG of `width`×`height` as far as any reader of its header can tell (SOI, JFIF,
/// a start-of-frame, EOI), made distinct by `seed`.
pub fn jpeg(width: u16, height: u16, seed: u8) -> Vec<u8> {
    let mut b = vec![0xff, 0xd8, 0xff, 0xe0, 0x00, 0x10];
    b.extend_from_slice(b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0");
    b.extend_from_slice(&[0xff, 0xfe, 0x00, 0x22]);
    b.extend_from_slice(&[seed; 32]);
    b.extend_from_slice(&[0xff, 0xc0, 0x00, 0x11, 0x08]);
    b.extend_from_slice(&height.to_be_bytes());
    b.extend_from_slice(&width.to_be_bytes());
    b.extend_from_slice(&[0x03, 0x01, 0x22, 0x00, 0x02, 0x11, 0x01, 0x03, 0x11, 0x01]);
    b.extend_from_slice(&[0xff, 0xd9]);
    b
}

/// A complete, valid PNG of `width`×`height` in one colour (8-bit RGB, unfiltered rows in one
/// stored deflate block), for servers that read the whole file (a real PDS).
pub fn solid_png(width: u32, height: u32, rgb: [u8; 3]) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
    }
    // Each row: filter type 0 (none), then its pixels.
    let row: Vec<u8> = std::iter::once(0)
        .chain(std::iter::repeat_n(rgb, width as usize).flatten())
        .collect();
    let raw = row.repeat(height as usize);
    assert!(
        raw.len() <= 0xffff,
        "one stored block: keep the image small"
    );
    let (mut a, mut b) = (1u32, 0u32);
    for &x in &raw {
        a = (a + u32::from(x)) % 65_521;
        b = (b + a) % 65_521;
    }
    let len = raw.len() as u16;
    let mut zlib = vec![0x78, 0x01, 0x01];
    zlib.extend_from_slice(&len.to_le_bytes());
    zlib.extend_from_slice(&(!len).to_le_bytes());
    zlib.extend_from_slice(&raw);
    zlib.extend_from_slice(&((b << 16) | a).to_be_bytes());
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &zlib);
    chunk(&mut out, b"IEND", &[]);
    out
}
