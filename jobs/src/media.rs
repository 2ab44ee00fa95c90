//! A share's images, from the request to the platform client.
//!
//! At enqueue (`POST /v1/shares`): each target's platform rules are checked against what was
//! declared (count, alt text) before anything is fetched; then each image is fetched once
//! through the SSRF guard ([`herald_platforms::media::fetch`]), its type and dimensions read from
//! the bytes, and checked against every target's rules again; the bytes go to the store with the
//! shares, content-addressed. At run time the worker reads them back ([`load`]), with a signed,
//! expiring URL of each ([`signed_url`]) for the platforms that fetch images themselves.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use herald_platforms::{
    Platform,
    media::{self, Fetched, Image, ImageType, Refusal},
};
use secrecy::{ExposeSecret, SecretString};

use crate::{
    Ctx,
    share_request::{Invalid, MediaItem},
    store::{NewBlob, NewShareMedia, ShareMediaRow},
    vault::{KeyRing, Slot},
};

/// How long a signed media URL works: a platform fetches the image while the share runs.
pub const SIGNED_URL_TTL: chrono::Duration = chrono::Duration::hours(1);

fn refusal(item_field: &str, target: &str, r: Refusal) -> Invalid {
    Invalid {
        field: item_field.to_owned(),
        code: r.code(),
        message: format!("{target} refuses it: {r}"),
        platform: Some(r.platform()),
    }
}

/// What can be checked of one target before anything is fetched: whether its platform takes
/// images at all, how many, and each alt text. `target` names the target (`connection_ids[0]`).
pub fn check_declared(
    platform: &dyn Platform,
    items: &[MediaItem],
    target: &str,
) -> Result<(), Invalid> {
    let alts: Vec<Option<&str>> = items.iter().map(|i| i.alt.as_deref()).collect();
    media::check_declared(platform.kind(), &platform.media_rules(), &alts).map_err(|(at, r)| {
        let field = match at {
            Some(i) => format!("{}.alt", items[i].field),
            None if items.len() == 1 => items[0].field.clone(),
            None => "media".to_owned(),
        };
        refusal(&field, target, r)
    })
}

/// Images fetched at once by one request: a request of many images waits for the slowest few,
/// not for their sum.
const FETCHES_AT_ONCE: usize = 4;

/// Fetches each distinct image once, a few at a time; the answer is in the items' order.
pub async fn capture(ctx: &Ctx, items: &[MediaItem]) -> Result<Vec<Fetched>, Invalid> {
    use futures::{StreamExt, TryStreamExt};
    // Owned, so the fetches are futures of their own (a borrowed item in a stream's closure is
    // not general enough for a handler's `Send` future).
    let mut distinct: Vec<MediaItem> = Vec::new();
    for item in items {
        if !distinct.iter().any(|d| d.url == item.url) {
            distinct.push(item.clone());
        }
    }
    let fetched: Vec<(String, Fetched)> = futures::stream::iter(distinct)
        .map(|item| {
            let ctx = ctx.clone();
            async move {
                media::fetch(
                    &ctx.http,
                    &ctx.settings.ssrf,
                    &item.url,
                    ctx.settings.media_max_bytes,
                    ctx.settings.media_fetch_timeout,
                )
                .await
                .map(|f| (item.url.clone(), f))
                .map_err(|e| {
                    let field = if item.field == "image_url" {
                        item.field.clone()
                    } else {
                        format!("{}.url", item.field)
                    };
                    Invalid::new(field.clone(), e.code(), format!("`{field}`: {e}"))
                })
            }
        })
        .buffered(FETCHES_AT_ONCE)
        .try_collect()
        .await?;
    let by_url: HashMap<String, Fetched> = fetched.into_iter().collect();
    Ok(items.iter().map(|i| by_url[&i.url].clone()).collect())
}

/// Each fetched image against one target's rules (type, bytes, pixels).
pub fn check_fetched(
    platform: &dyn Platform,
    items: &[MediaItem],
    fetched: &[Fetched],
    target: &str,
) -> Result<(), Invalid> {
    let rules = platform.media_rules();
    for (item, f) in items.iter().zip(fetched) {
        media::check_image(
            platform.kind(),
            &rules,
            f.kind,
            f.bytes.len(),
            f.width,
            f.height,
        )
        .map_err(|r| refusal(&item.field, target, r))?;
    }
    Ok(())
}

/// The share's list of images and the blobs to store (each content once).
pub fn to_store(items: &[MediaItem], fetched: &[Fetched]) -> (Vec<NewShareMedia>, Vec<NewBlob>) {
    let list = items
        .iter()
        .zip(fetched)
        .map(|(i, f)| NewShareMedia {
            sha256: f.sha256.clone(),
            alt: i.alt.clone(),
            source_url: i.url.clone(),
        })
        .collect();
    let mut blobs: Vec<NewBlob> = Vec::new();
    for f in fetched {
        if !blobs.iter().any(|b| b.sha256 == f.sha256) {
            blobs.push(NewBlob {
                sha256: f.sha256.clone(),
                content_type: f.kind.mime().to_owned(),
                bytes: f.bytes.clone(),
                width: f.width,
                height: f.height,
            });
        }
    }
    (list, blobs)
}

/// A share's images as the platform client takes them, or the reason they cannot be posted (a
/// blob removed after the share finished once: a later retry cannot post what it no longer has).
pub(crate) fn images(
    ctx: &Ctx,
    rows: Vec<ShareMediaRow>,
    now: DateTime<Utc>,
) -> Result<Vec<Image>, String> {
    rows.into_iter()
        .map(|r| {
            let (Some(bytes), Some(kind)) = (
                r.bytes,
                r.content_type.as_deref().and_then(ImageType::from_mime),
            ) else {
                return Err(format!(
                    "image {} ({}) is no longer stored: images are kept until the share finishes; \
                     send the share again",
                    r.position + 1,
                    r.source_url
                ));
            };
            Ok(Image {
                public_url: Some(signed_url(ctx, &r.sha256, now + SIGNED_URL_TTL)),
                sha256: r.sha256,
                kind,
                bytes: bytes.into(),
                width: r.width.unwrap_or_default().max(0) as u32,
                height: r.height.unwrap_or_default().max(0) as u32,
                alt: r.alt,
            })
        })
        .collect()
}

fn slot<'a>(sha256: &'a str, expires: &'a str) -> Slot<'a> {
    Slot {
        table: "media_urls",
        row: sha256,
        column: expires,
    }
}

/// `{HERALD_PUBLIC_URL}/v1/media/{sha256}?expires=…&sig=…`. The signature is the vault's AEAD
/// over nothing, bound to the blob and the expiry as associated data: no new secret to
/// configure, and it follows key rotation (the first key signs, every key verifies).
pub fn signed_url(ctx: &Ctx, sha256: &str, expires_at: DateTime<Utc>) -> String {
    let expires = expires_at.timestamp().to_string();
    let sig = sign(&ctx.vault, sha256, &expires);
    let mut url = url::Url::parse(&format!(
        "{}/v1/media/{sha256}",
        ctx.settings.public_url.trim_end_matches('/')
    ))
    .expect("HERALD_PUBLIC_URL is a URL (checked at start)");
    url.query_pairs_mut()
        .append_pair("expires", &expires)
        .append_pair("sig", &sig);
    url.into()
}

fn sign(vault: &KeyRing, sha256: &str, expires: &str) -> String {
    vault
        .encrypt(slot(sha256, expires), &SecretString::from(String::new()))
        .expect("encrypting an empty text cannot fail")
}

/// Whether a signed URL's parts are genuine and not expired.
pub fn verify(vault: &KeyRing, sha256: &str, expires: &str, sig: &str, now: DateTime<Utc>) -> bool {
    let Ok(at) = expires.parse::<i64>() else {
        return false;
    };
    if at < now.timestamp() {
        return false;
    }
    vault
        .decrypt(slot(sha256, expires), sig)
        .is_ok_and(|s| s.expose_secret().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_holds_for_its_blob_and_expiry_only() {
        let vault = KeyRing::parse(&KeyRing::generate_spec()).unwrap();
        let now = Utc::now();
        let exp = (now.timestamp() + 60).to_string();
        let sig = sign(&vault, "abc", &exp);
        assert!(verify(&vault, "abc", &exp, &sig, now));
        assert!(!verify(&vault, "abd", &exp, &sig, now));
        let later = (now.timestamp() + 61).to_string();
        assert!(!verify(&vault, "abc", &later, &sig, now));
        assert!(!verify(
            &vault,
            "abc",
            &exp,
            &sig,
            now + chrono::Duration::seconds(61)
        ));
        let other = KeyRing::parse(&KeyRing::generate_spec()).unwrap();
        assert!(!verify(&other, "abc", &exp, &sig, now));
    }
}
