//! Mastodon's images: each one uploaded with `POST /api/v2/media` (multipart `file`, and
//! `description`, its alt text), waited on while the instance processes it (a `202` upload, then
//! `GET /api/v1/media/{id}` answers `206` until it is done and `200` after), and attached to the
//! status by id (`media_ids[]`). Facts and sources: `platforms/README.md`, "Mastodon media".
//!
//! The ids are the share's checkpoint, saved after each upload: a retry reuses each one the
//! instance still holds unattached and uploads again only those it no longer has (Mastodon
//! deletes unattached media after a day; a `404` says so).

use std::time::Duration;

use reqwest::{StatusCode, multipart};
use serde::{Deserialize, Serialize};

use super::{Mastodon, classify};
use crate::{
    error::PlatformError,
    http,
    kind::PlatformKind,
    media::Image,
    oauth::bearer,
    types::{Credentials, PostRequest},
};

/// How long an image may take to process, checked at growing intervals (0.1 s doubling to 1 s):
/// about 12 s, inside the share's 30 s timeout. Still processing after that is transient, and
/// the retry polls the same upload again.
pub(super) const PROCESSING_CHECKS: u32 = 16;

/// What the checkpoint holds: the upload of each image, by position.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    mastodon_media: Vec<SavedMedia>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SavedMedia {
    sha256: String,
    id: String,
}

#[derive(Deserialize)]
struct Attachment {
    id: String,
}

/// Where an upload stands at the instance.
enum State {
    Ready,
    Processing,
    Gone,
}

impl Mastodon {
    /// The ids to attach, in the share's order: uploaded now, or reused from the checkpoint.
    pub(super) async fn upload_media(
        &self,
        base: &str,
        creds: &Credentials,
        post: &PostRequest,
    ) -> Result<Vec<String>, PlatformError> {
        let saved: Saved = post
            .checkpoint
            .saved
            .as_deref()
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default();
        let mut done: Vec<SavedMedia> = Vec::with_capacity(post.media.len());
        for (i, image) in post.media.iter().enumerate() {
            if let Some(s) = saved
                .mastodon_media
                .get(i)
                .filter(|s| s.sha256 == image.sha256)
            {
                match self.media_state(base, creds, &s.id).await? {
                    State::Ready => {
                        done.push(s.clone());
                        continue;
                    }
                    State::Processing => {
                        self.wait_processed(base, creds, &s.id).await?;
                        done.push(s.clone());
                        continue;
                    }
                    State::Gone => {}
                }
            }
            let (id, processed) = self.upload(base, creds, image).await?;
            done.push(SavedMedia {
                sha256: image.sha256.clone(),
                id: id.clone(),
            });
            let value = serde_json::to_string(&Saved {
                mastodon_media: done.clone(),
            })
            .map_err(|e| PlatformError::Transient {
                status: None,
                reason: format!("the checkpoint could not be written: {e}"),
            })?;
            post.checkpoint.save(&value).await?;
            if !processed {
                self.wait_processed(base, creds, &id).await?;
            }
        }
        Ok(done.into_iter().map(|s| s.id).collect())
    }

    /// `POST /api/v2/media`: `(id, processed)`; a `202` is still being processed.
    async fn upload(
        &self,
        base: &str,
        creds: &Credentials,
        image: &Image,
    ) -> Result<(String, bool), PlatformError> {
        let ext = image.kind.name().to_ascii_lowercase();
        let file = multipart::Part::stream(reqwest::Body::from(image.bytes.clone()))
            .file_name(format!("{}.{ext}", &image.sha256[..16]))
            .mime_str(image.kind.mime())
            .map_err(|e| PlatformError::Rejected {
                status: 0,
                reason: format!("image type: {e}"),
            })?;
        let mut form = multipart::Form::new().part("file", file);
        if let Some(alt) = &image.alt {
            form = form.text("description", alt.clone());
        }
        let req = self
            .http
            .post(format!("{base}/api/v2/media"))
            .header("authorization", bearer(creds)?)
            .multipart(form);
        // An upload nobody attaches is deleted by the instance: a lost answer is only transient.
        let res = http::send(PlatformKind::Mastodon, "upload_media", false, req).await?;
        let status = res.status();
        if !status.is_success() {
            return Err(upload_error(classify(res).await, status));
        }
        let a: Attachment = res.json().await.map_err(|e| PlatformError::Transient {
            status: None,
            reason: format!("unreadable media attachment: {e}"),
        })?;
        Ok((a.id, status != StatusCode::ACCEPTED))
    }

    async fn media_state(
        &self,
        base: &str,
        creds: &Credentials,
        id: &str,
    ) -> Result<State, PlatformError> {
        let req = self
            .http
            .get(format!("{base}/api/v1/media/{id}"))
            .header("authorization", bearer(creds)?);
        let res = http::send(PlatformKind::Mastodon, "media_status", false, req).await?;
        match res.status() {
            StatusCode::OK => Ok(State::Ready),
            StatusCode::PARTIAL_CONTENT => Ok(State::Processing),
            // Deleted, or already attached to a status (which only a lost answer can have done).
            StatusCode::NOT_FOUND => Ok(State::Gone),
            _ => Err(classify(res).await),
        }
    }

    async fn wait_processed(
        &self,
        base: &str,
        creds: &Credentials,
        id: &str,
    ) -> Result<(), PlatformError> {
        let mut delay = Duration::from_millis(100);
        for _ in 0..self.processing_checks {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(1));
            match self.media_state(base, creds, id).await? {
                State::Ready => return Ok(()),
                State::Processing => {}
                State::Gone => {
                    return Err(PlatformError::Transient {
                        status: Some(404),
                        reason: format!("media {id} vanished while it was being processed"),
                    });
                }
            }
        }
        Err(PlatformError::Transient {
            status: Some(206),
            reason: format!("media {id} was still being processed"),
        })
    }
}

/// An upload's refusal. A 403 is a grant without `write:media` (connections made before Herald
/// asked for it): the share fails with what to do, the account is not flagged, since its text
/// posts still work.
fn upload_error(e: PlatformError, status: StatusCode) -> PlatformError {
    match (e, status) {
        (PlatformError::Unauthorized { reason }, StatusCode::FORBIDDEN) => {
            PlatformError::Rejected {
                status: 403,
                reason: format!(
                    "the instance refused the image upload ({reason}): reconnect the account so \
                     Herald is granted `write:media`"
                ),
            }
        }
        (PlatformError::Rejected { status, reason }, _) => PlatformError::Rejected {
            status,
            reason: format!("the image upload was refused: {reason}"),
        },
        (other, _) => other,
    }
}
