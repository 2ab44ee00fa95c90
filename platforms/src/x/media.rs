//! X's images: each uploaded with `POST /2/media/upload` (the one-shot upload for images: the
//! bytes in base64, `media_category=tweet_image`, its `media_type`), its alt text set with
//! `POST /2/media/metadata`, then attached to the post as `media.media_ids`. Facts and sources:
//! `platforms/README.md`, "X media".
//!
//! The ids are the share's checkpoint with the time X forgets each (`expires_after_secs`): a
//! retry reuses those still good for a while and uploads the others again. X has no idempotency
//! key, so the checkpoint says nothing of a lost post answer (read-back settles that).

use base64::Engine as _;
use chrono::Utc;
use serde::{Deserialize, Serialize};

use super::{X, classify};
use crate::{
    error::PlatformError,
    http,
    kind::PlatformKind,
    media::Image,
    oauth::bearer,
    types::{Credentials, PostRequest},
};

/// A saved upload is reused only if X keeps it at least this much longer (seconds).
const REUSE_MARGIN_SECS: i64 = 600;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    x_media: Vec<SavedMedia>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SavedMedia {
    sha256: String,
    id: String,
    /// Unix seconds.
    expires_at: i64,
}

#[derive(Deserialize)]
struct Uploaded {
    data: UploadedData,
}

#[derive(Deserialize)]
struct UploadedData {
    id: String,
    expires_after_secs: Option<i64>,
}

impl X {
    /// The media ids to attach, in the share's order, and whether any was reused from the
    /// checkpoint. `fresh`: upload every image again (X refused the saved ids).
    pub(super) async fn upload_media(
        &self,
        creds: &Credentials,
        post: &PostRequest,
        fresh: bool,
    ) -> Result<(Vec<String>, bool), PlatformError> {
        let saved: Saved = post
            .checkpoint
            .saved
            .as_deref()
            .filter(|_| !fresh)
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default();
        let mut reused = false;
        let now = Utc::now().timestamp();
        let mut done: Vec<SavedMedia> = Vec::with_capacity(post.media.len());
        for (i, image) in post.media.iter().enumerate() {
            if let Some(s) = saved
                .x_media
                .get(i)
                .filter(|s| s.sha256 == image.sha256 && s.expires_at > now + REUSE_MARGIN_SECS)
            {
                done.push(s.clone());
                reused = true;
                continue;
            }
            done.push(self.upload(creds, image).await?);
            let value = serde_json::to_string(&Saved {
                x_media: done.clone(),
            })
            .map_err(|e| PlatformError::Transient {
                status: None,
                reason: format!("the checkpoint could not be written: {e}"),
            })?;
            post.checkpoint.save(&value).await?;
        }
        Ok((done.into_iter().map(|s| s.id).collect(), reused))
    }

    /// One image, and its alt text: both before it counts as uploaded.
    async fn upload(
        &self,
        creds: &Credentials,
        image: &Image,
    ) -> Result<SavedMedia, PlatformError> {
        let has_refresh = creds.refresh_token.is_some();
        let body = serde_json::json!({
            "media": base64::engine::general_purpose::STANDARD.encode(&image.bytes),
            "media_category": "tweet_image",
            "media_type": image.kind.mime(),
        });
        let req = self
            .http
            .post(format!("{}/2/media/upload", self.base))
            .header("authorization", bearer(creds)?)
            .json(&body);
        // An upload no post uses is forgotten by X: a lost answer is only transient.
        let res = http::send(PlatformKind::X, "upload_media", false, req).await?;
        if !res.status().is_success() {
            return Err(refused(classify(res, has_refresh).await));
        }
        let up: Uploaded = res.json().await.map_err(|e| PlatformError::Transient {
            status: None,
            reason: format!("unreadable media upload answer: {e}"),
        })?;
        if let Some(alt) = &image.alt {
            let body = serde_json::json!({
                "id": up.data.id,
                "metadata": { "alt_text": { "text": alt } },
            });
            let req = self
                .http
                .post(format!("{}/2/media/metadata", self.base))
                .header("authorization", bearer(creds)?)
                .json(&body);
            let res = http::send(PlatformKind::X, "media_metadata", false, req).await?;
            if !res.status().is_success() {
                return Err(refused(classify(res, has_refresh).await));
            }
        }
        Ok(SavedMedia {
            sha256: image.sha256.clone(),
            expires_at: Utc::now().timestamp() + up.data.expires_after_secs.unwrap_or(86_400),
            id: up.data.id,
        })
    }
}

fn refused(e: PlatformError) -> PlatformError {
    match e {
        PlatformError::Rejected { status, reason } => PlatformError::Rejected {
            status,
            reason: format!("the image upload was refused: {reason}"),
        },
        other => other,
    }
}
