//! A Page post's images: each uploaded as an unpublished page photo (`POST /{page}/photos` with
//! `url`, Herald's signed URL of the captured bytes, `published=false` and `alt_text_custom`),
//! then attached to one feed post (`attached_media[i]={"media_fbid": id}`), in order. Facts and
//! sources: `platforms/README.md`, "Facebook Pages photos".
//!
//! A feed post with attached photos has no link preview: the link goes into the message. The
//! photo ids are the share's checkpoint: a retry reuses them (unpublished photos stay until used).

use serde::{Deserialize, Serialize};

use super::Facebook;
use crate::{
    error::PlatformError,
    meta::{container::Created as Photo, graph::checked_id},
    types::PostRequest,
};

#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    facebook_photos: Vec<SavedPhoto>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SavedPhoto {
    sha256: String,
    id: String,
}

impl Facebook {
    /// The `attached_media[i]` fields of the post, one per image, in order.
    pub(super) async fn attach_photos(
        &self,
        page: &str,
        token: &str,
        post: &PostRequest,
    ) -> Result<Vec<(String, String)>, PlatformError> {
        let saved: Saved = post
            .checkpoint
            .saved
            .as_deref()
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default();
        let mut done: Vec<SavedPhoto> = Vec::with_capacity(post.media.len());
        for (i, image) in post.media.iter().enumerate() {
            if let Some(s) = saved
                .facebook_photos
                .get(i)
                .filter(|s| s.sha256 == image.sha256)
            {
                done.push(s.clone());
                continue;
            }
            let url = image
                .public_url
                .as_deref()
                .ok_or_else(|| PlatformError::Rejected {
                    status: 0,
                    reason: "the image has no public URL for Facebook to fetch".into(),
                })?;
            let mut form = vec![
                ("url", url),
                ("published", "false"),
                ("access_token", token),
            ];
            if let Some(alt) = &image.alt {
                form.push(("alt_text_custom", alt));
            }
            // An unpublished photo shows nowhere: a lost answer is only transient.
            let photo: Photo = self
                .graph
                .post_form("upload_photo", false, &format!("{page}/photos"), &form)
                .await?;
            done.push(SavedPhoto {
                sha256: image.sha256.clone(),
                id: checked_id(&photo.id)?.to_owned(),
            });
            let value = serde_json::to_string(&Saved {
                facebook_photos: done.clone(),
            })
            .map_err(|e| PlatformError::Transient {
                status: None,
                reason: format!("the checkpoint could not be written: {e}"),
            })?;
            post.checkpoint.save(&value).await?;
        }
        Ok(done
            .iter()
            .enumerate()
            .map(|(i, p)| {
                (
                    format!("attached_media[{i}]"),
                    serde_json::json!({ "media_fbid": p.id }).to_string(),
                )
            })
            .collect())
    }
}
