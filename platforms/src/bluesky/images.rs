//! A share's images on Bluesky: each uploaded with `com.atproto.repo.uploadBlob` (the raw bytes,
//! their MIME type), then referenced from an `app.bsky.embed.images` embed with its `alt` and an
//! `aspectRatio` (so apps lay it out before loading it). Facts and sources: `platforms/README.md`,
//! "Bluesky images".
//!
//! A post has one embed: images and a link card cannot both be on it (`recordWithMedia` pairs
//! media with a quoted record, not with a card). With images, the link stays in the text as a
//! link facet and no card is made.
//!
//! The blob references are the share's checkpoint: a retry reuses them, and uploads again only
//! if the PDS answers `BlobNotFound` (it deletes blobs no record references within minutes).

use reqwest::header::CONTENT_TYPE;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Bluesky, xrpc};
use crate::{
    error::PlatformError,
    media::Image,
    types::{Account, Credentials, PostRequest},
};

/// What the checkpoint holds: the blob of each image, by position.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    bluesky_blobs: Vec<SavedBlob>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SavedBlob {
    sha256: String,
    blob: Value,
}

impl Bluesky {
    /// The `app.bsky.embed.images` embed of the share's images. `fresh`: upload every image
    /// again, whatever the checkpoint holds (the PDS no longer has the blobs it names).
    pub(super) async fn images_embed(
        &self,
        pds: &str,
        account: &Account,
        creds: &Credentials,
        post: &PostRequest,
        fresh: bool,
    ) -> Result<Value, PlatformError> {
        let saved: Saved = post
            .checkpoint
            .saved
            .as_deref()
            .filter(|_| !fresh)
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default();
        let mut blobs = Vec::with_capacity(post.media.len());
        let mut uploaded = false;
        for (i, image) in post.media.iter().enumerate() {
            match saved
                .bluesky_blobs
                .get(i)
                .filter(|s| s.sha256 == image.sha256)
            {
                Some(s) => blobs.push(s.clone()),
                None => {
                    let blob = self.upload_blob(pds, account, creds, image).await?;
                    blobs.push(SavedBlob {
                        sha256: image.sha256.clone(),
                        blob,
                    });
                    uploaded = true;
                }
            }
        }
        if uploaded {
            let value = serde_json::to_string(&Saved {
                bluesky_blobs: blobs.clone(),
            })
            .map_err(|e| PlatformError::Transient {
                status: None,
                reason: format!("the checkpoint could not be written: {e}"),
            })?;
            post.checkpoint.save(&value).await?;
        }
        let images: Vec<Value> = post
            .media
            .iter()
            .zip(blobs)
            .map(|(image, saved)| {
                json!({
                    "image": saved.blob,
                    // Required by the lexicon; empty means "no description".
                    "alt": image.alt.as_deref().unwrap_or(""),
                    "aspectRatio": { "width": image.width, "height": image.height },
                })
            })
            .collect();
        Ok(json!({ "$type": "app.bsky.embed.images", "images": images }))
    }

    /// `com.atproto.repo.uploadBlob`: the blob reference to put in a record.
    pub(super) async fn upload_blob(
        &self,
        pds: &str,
        account: &Account,
        creds: &Credentials,
        image: &Image,
    ) -> Result<Value, PlatformError> {
        #[derive(Deserialize)]
        struct Uploaded {
            blob: Value,
        }
        let url = xrpc::url(pds, "com.atproto.repo.uploadBlob");
        // Unreferenced blobs are deleted by the PDS: a lost answer here is only transient.
        let a = self
            .call(pds, account, creds, "upload_blob", false, |c| {
                c.post(&url)
                    .header(CONTENT_TYPE, image.kind.mime())
                    .body(image.bytes.clone())
            })
            .await?;
        if !a.ok() {
            return Err(match a.classify() {
                PlatformError::Rejected { status, reason } => PlatformError::Rejected {
                    status,
                    reason: format!("the image upload was refused: {reason}"),
                },
                other => other,
            });
        }
        Ok(a.json::<Uploaded>(false)?.blob)
    }
}
