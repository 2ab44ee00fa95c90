//! LinkedIn's images: each registered with the Images API (`POST /rest/images?action=
//! initializeUpload`, owned by the post's author), its bytes `PUT` to the upload URL LinkedIn
//! answers, then referenced from the post: `content.media` for one image, `content.multiImage`
//! for 2 to 20, each with its `altText`. Facts and sources: `platforms/README.md`, "LinkedIn
//! images".
//!
//! A post has one content: with images there is no article card, and the link goes into the
//! commentary. The image URNs are the share's checkpoint: a retry reuses them.

use reqwest::header::CONTENT_TYPE;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Linkedin, classify};
use crate::{
    error::PlatformError,
    http,
    kind::PlatformKind,
    media::Image,
    oauth::bearer,
    types::{Credentials, PostRequest},
};

#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    linkedin_images: Vec<SavedImage>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SavedImage {
    sha256: String,
    urn: String,
}

#[derive(Deserialize)]
struct Initialized {
    value: InitializedValue,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct InitializedValue {
    upload_url: String,
    image: String,
}

impl Linkedin {
    /// The post's `content` for its images (`None` for a share without images).
    pub(super) async fn image_content(
        &self,
        author: &str,
        creds: &Credentials,
        post: &PostRequest,
    ) -> Result<Option<Value>, PlatformError> {
        if post.media.is_empty() {
            return Ok(None);
        }
        let saved: Saved = post
            .checkpoint
            .saved
            .as_deref()
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default();
        let mut done: Vec<SavedImage> = Vec::with_capacity(post.media.len());
        for (i, image) in post.media.iter().enumerate() {
            if let Some(s) = saved
                .linkedin_images
                .get(i)
                .filter(|s| s.sha256 == image.sha256)
            {
                done.push(s.clone());
                continue;
            }
            let urn = self.upload(author, creds, image).await?;
            done.push(SavedImage {
                sha256: image.sha256.clone(),
                urn,
            });
            let value = serde_json::to_string(&Saved {
                linkedin_images: done.clone(),
            })
            .map_err(|e| PlatformError::Transient {
                status: None,
                reason: format!("the checkpoint could not be written: {e}"),
            })?;
            post.checkpoint.save(&value).await?;
        }
        let entry = |image: &Image, s: &SavedImage| match &image.alt {
            Some(alt) => json!({ "id": s.urn, "altText": alt }),
            None => json!({ "id": s.urn }),
        };
        Ok(Some(match done.as_slice() {
            [one] => json!({ "media": entry(&post.media[0], one) }),
            many => json!({ "multiImage": { "images": post
                .media
                .iter()
                .zip(many)
                .map(|(image, s)| entry(image, s))
                .collect::<Vec<_>>() } }),
        }))
    }

    /// Registers one image and uploads its bytes; answers its URN.
    async fn upload(
        &self,
        author: &str,
        creds: &Credentials,
        image: &Image,
    ) -> Result<String, PlatformError> {
        let has_refresh = creds.refresh_token.is_some();
        let body = json!({ "initializeUploadRequest": { "owner": author } });
        let req = self
            .rest(
                self.http
                    .post(format!("{}/rest/images?action=initializeUpload", self.base)),
                creds,
            )?
            .json(&body);
        let res = http::send(PlatformKind::Linkedin, "initialize_upload", false, req).await?;
        if !res.status().is_success() {
            return Err(classify(res, has_refresh).await);
        }
        let init: Initialized = res.json().await.map_err(|e| PlatformError::Transient {
            status: None,
            reason: format!("unreadable upload registration: {e}"),
        })?;
        // The member's token goes with the bytes: only to LinkedIn's own hosts (or the API's).
        if !self.trusted_upload_url(&init.value.upload_url) {
            return Err(PlatformError::Rejected {
                status: 0,
                reason: "LinkedIn answered an upload URL off its own hosts".into(),
            });
        }
        let req = self
            .http
            .put(&init.value.upload_url)
            .header("authorization", bearer(creds)?)
            .header(CONTENT_TYPE, image.kind.mime())
            .body(image.bytes.clone());
        // An image no post uses shows nowhere: a lost answer is only transient.
        let res = http::send(PlatformKind::Linkedin, "upload_image", false, req).await?;
        if !res.status().is_success() {
            return Err(match classify(res, has_refresh).await {
                PlatformError::Rejected { status, reason } => PlatformError::Rejected {
                    status,
                    reason: format!("the image upload was refused: {reason}"),
                },
                other => other,
            });
        }
        Ok(init.value.image)
    }

    fn trusted_upload_url(&self, raw: &str) -> bool {
        let (Ok(upload), Ok(api)) = (url::Url::parse(raw), url::Url::parse(&self.base)) else {
            return false;
        };
        let host = upload.host_str().unwrap_or_default();
        let same_as_api = upload.host_str() == api.host_str() && upload.port() == api.port();
        same_as_api
            || (upload.scheme() == "https"
                && (host == "linkedin.com" || host.ends_with(".linkedin.com")))
    }
}
