//! Images a share carries: what each platform takes ([`MediaRules`]), how Herald fetches one at
//! enqueue ([`fetch`]: through the SSRF guard, a size cap, a timeout and checked redirects) and
//! what it is ([`inspect`]: the type from the bytes themselves, never from the sender's
//! `Content-Type`, and the dimensions from the header, without decoding the pixels).
//!
//! The bytes are captured once, at enqueue, and kept content-addressed in the store, so what a
//! platform receives is what was checked, whatever the source URL does later.

use std::{fmt, time::Duration};

use bytes::Bytes;
use reqwest::{
    Client,
    header::{CONTENT_TYPE, LOCATION},
};
use sha2::{Digest, Sha256};
use unicode_segmentation::UnicodeSegmentation;

use crate::{kind::PlatformKind, ssrf::SsrfGuard};

/// The image types Herald captures. Anything else (HEIC, AVIF, SVG, TIFF, ...) is refused at
/// enqueue: no platform takes all of them, and a type a target cannot show is never sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageType {
    Jpeg,
    Png,
    Gif,
    Webp,
}

impl ImageType {
    pub const ALL: [ImageType; 4] = [Self::Jpeg, Self::Png, Self::Gif, Self::Webp];

    pub fn mime(self) -> &'static str {
        match self {
            Self::Jpeg => "image/jpeg",
            Self::Png => "image/png",
            Self::Gif => "image/gif",
            Self::Webp => "image/webp",
        }
    }

    pub fn from_mime(mime: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.mime() == mime)
    }

    /// The short name used in messages (`JPEG`, `PNG`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::Jpeg => "JPEG",
            Self::Png => "PNG",
            Self::Gif => "GIF",
            Self::Webp => "WebP",
        }
    }
}

/// How a platform counts the characters of an alt text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    Chars,
    /// User-perceived characters (Bluesky counts graphemes, as it does for post text).
    Graphemes,
}

/// What one platform takes, as Herald posts to it. `max_images == 0`: Herald does not post
/// images there (yet), and a share with images to such a target is refused at enqueue.
#[derive(Debug, Clone, Copy)]
pub struct MediaRules {
    pub max_images: usize,
    /// `None`: the platform has no place for alt text, and a share with alt text is refused
    /// rather than posted without it.
    pub max_alt: Option<(usize, Count)>,
    pub types: &'static [ImageType],
    pub max_bytes: usize,
    /// Width times height.
    pub max_pixels: Option<u64>,
}

impl MediaRules {
    /// A platform Herald posts no images to.
    pub const NONE: Self = Self {
        max_images: 0,
        max_alt: None,
        types: &[],
        max_bytes: 0,
        max_pixels: None,
    };
}

/// One image of a share, as captured at enqueue and handed to the platform client.
#[derive(Clone)]
pub struct Image {
    /// The SHA-256 of the bytes, hex: the store's key, and a stable name for the upload.
    pub sha256: String,
    pub kind: ImageType,
    pub bytes: Bytes,
    pub width: u32,
    pub height: u32,
    pub alt: Option<String>,
    /// A signed, expiring URL of these bytes under `HERALD_PUBLIC_URL`, for platforms that fetch
    /// the image themselves (Instagram, Threads).
    pub public_url: Option<String>,
}

impl fmt::Debug for Image {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Image")
            .field("sha256", &self.sha256)
            .field("kind", &self.kind)
            .field("bytes", &self.bytes.len())
            .field("width", &self.width)
            .field("height", &self.height)
            .field("alt", &self.alt)
            .finish_non_exhaustive()
    }
}

/// Why an image is refused, checked against one platform's rules. Each has a stable code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{platform} takes no images from Herald")]
    NoImages { platform: PlatformKind },
    #[error("{platform} takes at most {max} images; this share has {count}")]
    TooMany {
        platform: PlatformKind,
        max: usize,
        count: usize,
    },
    #[error("{platform} has no place for alt text")]
    NoAlt { platform: PlatformKind },
    #[error("{platform} allows {max} characters of alt text; this one has {count}")]
    AltTooLong {
        platform: PlatformKind,
        max: usize,
        count: usize,
    },
    #[error("{platform} does not take {kind} images")]
    Type {
        platform: PlatformKind,
        kind: &'static str,
    },
    #[error("{platform} takes images up to {max} bytes; this one has {size}")]
    TooLarge {
        platform: PlatformKind,
        max: usize,
        size: usize,
    },
    #[error("{platform} takes images up to {max} pixels; this one is {width}×{height}")]
    TooManyPixels {
        platform: PlatformKind,
        max: u64,
        width: u32,
        height: u32,
    },
}

impl Refusal {
    pub fn code(&self) -> &'static str {
        match self {
            Self::NoImages { .. } => "media_not_supported",
            Self::TooMany { .. } => "too_many_images",
            Self::NoAlt { .. } => "alt_text_not_supported",
            Self::AltTooLong { .. } => "alt_text_too_long",
            Self::Type { .. } => "unsupported_image_type",
            Self::TooLarge { .. } => "image_too_large",
            Self::TooManyPixels { .. } => "image_too_large",
        }
    }

    pub fn platform(&self) -> PlatformKind {
        match self {
            Self::NoImages { platform }
            | Self::TooMany { platform, .. }
            | Self::NoAlt { platform }
            | Self::AltTooLong { platform, .. }
            | Self::Type { platform, .. }
            | Self::TooLarge { platform, .. }
            | Self::TooManyPixels { platform, .. } => *platform,
        }
    }
}

/// What can be checked before any image is fetched: the count and each alt text. `Err` carries
/// the index of the image at fault (`None`: the list as a whole).
pub fn check_declared(
    platform: PlatformKind,
    rules: &MediaRules,
    alts: &[Option<&str>],
) -> Result<(), (Option<usize>, Refusal)> {
    if alts.is_empty() {
        return Ok(());
    }
    if rules.max_images == 0 {
        return Err((None, Refusal::NoImages { platform }));
    }
    if alts.len() > rules.max_images {
        return Err((
            None,
            Refusal::TooMany {
                platform,
                max: rules.max_images,
                count: alts.len(),
            },
        ));
    }
    for (i, alt) in alts.iter().enumerate() {
        let Some(alt) = alt else { continue };
        let Some((max, count)) = rules.max_alt else {
            return Err((Some(i), Refusal::NoAlt { platform }));
        };
        let n = match count {
            Count::Chars => alt.chars().count(),
            Count::Graphemes => alt.graphemes(true).count(),
        };
        if n > max {
            return Err((
                Some(i),
                Refusal::AltTooLong {
                    platform,
                    max,
                    count: n,
                },
            ));
        }
    }
    Ok(())
}

/// Checks one fetched image against a platform's rules.
pub fn check_image(
    platform: PlatformKind,
    rules: &MediaRules,
    kind: ImageType,
    size: usize,
    width: u32,
    height: u32,
) -> Result<(), Refusal> {
    if !rules.types.contains(&kind) {
        return Err(Refusal::Type {
            platform,
            kind: kind.name(),
        });
    }
    if size > rules.max_bytes {
        return Err(Refusal::TooLarge {
            platform,
            max: rules.max_bytes,
            size,
        });
    }
    if let Some(max) = rules.max_pixels
        && u64::from(width) * u64::from(height) > max
    {
        return Err(Refusal::TooManyPixels {
            platform,
            max,
            width,
            height,
        });
    }
    Ok(())
}

/// Why an image could not be captured at enqueue. Each has a stable code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("the URL is refused: {0}")]
    Refused(String),
    #[error("the image could not be fetched: {0}")]
    Unreachable(String),
    #[error("the image server answered {0}")]
    Status(u16),
    #[error("more than {MAX_REDIRECTS} redirects")]
    Redirects,
    #[error("the image is larger than {0} bytes")]
    TooLarge(usize),
    #[error("videos are not supported yet")]
    Video,
    #[error("not an image Herald can post (JPEG, PNG, GIF or WebP)")]
    NotAnImage,
    #[error("the image's dimensions cannot be read")]
    Unreadable,
}

impl FetchError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Refused(_) => "invalid_url",
            Self::Unreachable(_) | Self::Status(_) | Self::Redirects => "media_unreachable",
            Self::TooLarge(_) => "image_too_large",
            Self::Video => "video_not_supported",
            Self::NotAnImage | Self::Unreadable => "unsupported_image_type",
        }
    }
}

/// Redirects followed when fetching an image, each one checked by the guard.
pub const MAX_REDIRECTS: usize = 3;

/// An image fetched and inspected, not yet checked against any platform.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub sha256: String,
    pub kind: ImageType,
    pub bytes: Bytes,
    pub width: u32,
    pub height: u32,
}

/// GETs `raw` through the guard with the guarded client (which follows no redirects itself):
/// each redirect target is checked before it is requested, at most [`MAX_REDIRECTS`]; the body is
/// read up to `max_bytes` and the whole fetch bounded by `timeout`.
pub async fn fetch(
    client: &Client,
    guard: &SsrfGuard,
    raw: &str,
    max_bytes: usize,
    timeout: Duration,
) -> Result<Fetched, FetchError> {
    match tokio::time::timeout(timeout, fetch_inner(client, guard, raw, max_bytes)).await {
        Ok(r) => r,
        Err(_) => Err(FetchError::Unreachable(format!(
            "no answer within {} s",
            timeout.as_secs()
        ))),
    }
}

async fn fetch_inner(
    client: &Client,
    guard: &SsrfGuard,
    raw: &str,
    max_bytes: usize,
) -> Result<Fetched, FetchError> {
    let refused = |e: crate::ssrf::SsrfError| FetchError::Refused(e.to_string());
    let mut url = guard.check_url(raw).map_err(refused)?;
    for _ in 0..=MAX_REDIRECTS {
        let res = client
            .get(url.clone())
            .header(
                "accept",
                "image/jpeg,image/png,image/gif,image/webp,image/*;q=0.8",
            )
            .send()
            .await
            .map_err(|e| FetchError::Unreachable(transport_reason(&e)))?;
        let status = res.status();
        if status.is_redirection() {
            let next = res
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or(FetchError::Status(status.as_u16()))?;
            let joined = url
                .join(next)
                .map_err(|_| FetchError::Refused("a redirect to an invalid URL".into()))?;
            url = guard.check_url(joined.as_str()).map_err(refused)?;
            continue;
        }
        if !status.is_success() {
            return Err(FetchError::Status(status.as_u16()));
        }
        let declared_video = res
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().to_ascii_lowercase().starts_with("video/"));
        if declared_video {
            return Err(FetchError::Video);
        }
        let bytes = read_capped(res, max_bytes).await?;
        let (kind, width, height) = inspect(&bytes)?;
        return Ok(Fetched {
            sha256: sha256_hex(&bytes),
            kind,
            bytes,
            width,
            height,
        });
    }
    Err(FetchError::Redirects)
}

fn transport_reason(e: &reqwest::Error) -> String {
    // The guarded resolver refuses private addresses at connect time: say so plainly.
    let chain = std::iter::successors(Some(e as &dyn std::error::Error), |e| e.source())
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ");
    if chain.contains("private, loopback or link-local") {
        "the host resolves to a private, loopback or link-local address".into()
    } else if e.is_timeout() {
        "timed out".into()
    } else {
        "network error".into()
    }
}

async fn read_capped(mut res: reqwest::Response, limit: usize) -> Result<Bytes, FetchError> {
    if res.content_length().is_some_and(|n| n > limit as u64) {
        return Err(FetchError::TooLarge(limit));
    }
    let mut body = Vec::new();
    while let Some(chunk) = res
        .chunk()
        .await
        .map_err(|e| FetchError::Unreachable(transport_reason(&e)))?
    {
        if body.len() + chunk.len() > limit {
            return Err(FetchError::TooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(body))
}

/// The image's type, from its leading bytes, and its dimensions, from its header. A video
/// (MP4/QuickTime, WebM/Matroska, AVI) is told apart so the refusal can say so.
pub fn inspect(bytes: &[u8]) -> Result<(ImageType, u32, u32), FetchError> {
    if is_video(bytes) {
        return Err(FetchError::Video);
    }
    let kind = match imagesize::image_type(bytes) {
        Ok(imagesize::ImageType::Jpeg) => ImageType::Jpeg,
        Ok(imagesize::ImageType::Png) => ImageType::Png,
        Ok(imagesize::ImageType::Gif) => ImageType::Gif,
        Ok(imagesize::ImageType::Webp) => ImageType::Webp,
        _ => return Err(FetchError::NotAnImage),
    };
    let size = imagesize::blob_size(bytes).map_err(|_| FetchError::Unreadable)?;
    let (w, h) = (
        u32::try_from(size.width).map_err(|_| FetchError::Unreadable)?,
        u32::try_from(size.height).map_err(|_| FetchError::Unreadable)?,
    );
    if w == 0 || h == 0 {
        return Err(FetchError::Unreadable);
    }
    Ok((kind, w, h))
}

fn is_video(b: &[u8]) -> bool {
    // ISO base media (MP4, MOV, 3GP): a `ftyp` box whose brand is a video one. HEIF and AVIF
    // share the box with image brands, and are refused as unsupported images instead.
    if b.len() >= 12 && &b[4..8] == b"ftyp" {
        let brand = &b[8..12];
        return !matches!(
            brand,
            b"heic" | b"heix" | b"hevc" | b"hevx" | b"mif1" | b"msf1" | b"avif" | b"avis"
        );
    }
    // Matroska / WebM (EBML), and AVI (RIFF....AVI ).
    b.starts_with(&[0x1a, 0x45, 0xdf, 0xa3])
        || (b.len() >= 12 && &b[0..4] == b"RIFF" && &b[8..12] == b"AVI ")
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest valid PNG header with the given dimensions (the IHDR chunk is all that is read).
    fn png(width: u32, height: u32) -> Vec<u8> {
        let mut b = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        b.extend_from_slice(&width.to_be_bytes());
        b.extend_from_slice(&height.to_be_bytes());
        b.extend_from_slice(&[8, 6, 0, 0, 0, 0, 0, 0, 0]);
        b
    }

    #[test]
    fn the_type_comes_from_the_bytes_and_videos_are_told_apart() {
        assert_eq!(inspect(&png(640, 480)).unwrap(), (ImageType::Png, 640, 480));
        let mp4 = b"\0\0\0\x18ftypisom\0\0\x02\0isomiso2";
        assert_eq!(inspect(mp4).unwrap_err(), FetchError::Video);
        let webm = [0x1a, 0x45, 0xdf, 0xa3, 0x9f, 0x42, 0x86, 0x81];
        assert_eq!(inspect(&webm).unwrap_err(), FetchError::Video);
        assert_eq!(
            inspect(b"<svg xmlns='http://www.w3.org/2000/svg'/>").unwrap_err(),
            FetchError::NotAnImage
        );
    }

    #[test]
    fn declared_media_is_checked_before_anything_is_fetched() {
        let rules = MediaRules {
            max_images: 2,
            max_alt: Some((5, Count::Graphemes)),
            types: &[ImageType::Png],
            max_bytes: 100,
            max_pixels: Some(100),
        };
        let p = PlatformKind::Bluesky;
        assert!(check_declared(p, &rules, &[Some("ok"), None]).is_ok());
        let family = "\u{1F468}\u{200D}\u{1F469}\u{200D}\u{1F467}";
        assert!(check_declared(p, &rules, &[Some(&family.repeat(5))]).is_ok());
        let (at, r) = check_declared(p, &rules, &[None, Some("too long")]).unwrap_err();
        assert_eq!((at, r.code()), (Some(1), "alt_text_too_long"));
        let (at, r) = check_declared(p, &rules, &[None, None, None]).unwrap_err();
        assert_eq!((at, r.code()), (None, "too_many_images"));
        let (_, r) = check_declared(p, &MediaRules::NONE, &[None]).unwrap_err();
        assert_eq!(r.code(), "media_not_supported");
        assert_eq!(
            check_image(p, &rules, ImageType::Jpeg, 1, 1, 1)
                .unwrap_err()
                .code(),
            "unsupported_image_type"
        );
        assert!(check_image(p, &rules, ImageType::Png, 100, 10, 10).is_ok());
        assert!(check_image(p, &rules, ImageType::Png, 101, 10, 10).is_err());
        assert!(check_image(p, &rules, ImageType::Png, 100, 11, 10).is_err());
    }
}
