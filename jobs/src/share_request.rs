//! A share request, validated as a domain type: everything `POST /v1/shares` checks in the body
//! itself, before it looks at any connection. The route stays a thin adapter; the rules live here.

use std::{collections::HashSet, time::Duration};

use chrono::{DateTime, Utc};
use herald_platforms::{PlatformKind, ssrf::SsrfGuard};

use crate::times;

pub(crate) const MAX_TARGETS: usize = 50;
pub(crate) const MAX_URL: usize = 2048;
pub(crate) const MAX_TITLE: usize = 300;
pub const MAX_TEXT: usize = 10_000;
/// Images one request may carry; each target's own limit is checked against its platform.
pub const MAX_MEDIA: usize = 20;
/// The longest alt text taken at all; each platform's own limit is lower.
pub const MAX_ALT: usize = 5_000;

/// A field at fault: the API answers 422 with `code` and `field`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: String,
    pub code: &'static str,
    pub message: String,
    /// The target platform whose rules refuse it, when it is one target's refusal.
    pub platform: Option<PlatformKind>,
}

impl Invalid {
    pub(crate) fn new(
        field: impl Into<String>,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            field: field.into(),
            code,
            message: message.into(),
            platform: None,
        }
    }
}

/// The body as it arrived.
#[derive(Debug, Clone, Copy)]
pub struct ShareRequestBody<'a> {
    pub url: &'a str,
    pub title: Option<&'a str>,
    pub text: Option<&'a str>,
    pub image_url: Option<&'a str>,
    /// `media`: each image's URL and alt text, in order.
    pub media: &'a [(&'a str, Option<&'a str>)],
    pub publish_at: Option<&'a str>,
    pub not_after: Option<&'a str>,
    pub connection_ids: &'a [String],
}

/// A share request whose own fields are valid: trimmed, URLs through the SSRF guard, times in
/// range and in order, 1 to [`MAX_TARGETS`] distinct targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareRequest {
    pub url: String,
    pub title: Option<String>,
    pub text: Option<String>,
    pub image_url: Option<String>,
    /// The images to capture: `media` as sent, or `image_url` as one image without alt text.
    pub media: Vec<MediaItem>,
    pub run_at: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
    pub connection_ids: Vec<String>,
}

/// One image as requested: where to fetch it, and its alt text (trimmed; empty is none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaItem {
    pub url: String,
    pub alt: Option<String>,
    /// The request field it came from (`media[2]`, or `image_url`).
    pub field: String,
}

/// `media` (or `image_url`, as one image without alt text): at most [`MAX_MEDIA`] images, each
/// URL through the SSRF guard, each alt text at most [`MAX_ALT`] characters as sent.
pub fn parse_media(
    image_url: Option<&str>,
    media: &[(&str, Option<&str>)],
    ssrf: &SsrfGuard,
) -> Result<Vec<MediaItem>, Invalid> {
    if let Some(url) = trimmed(image_url) {
        if !media.is_empty() {
            return Err(Invalid::new(
                "image_url",
                "image_url_with_media",
                "send the images in `media` (with their alt text), or one in `image_url`, not both",
            ));
        }
        return Ok(vec![MediaItem {
            url,
            alt: None,
            field: "image_url".into(),
        }]);
    }
    if media.len() > MAX_MEDIA {
        return Err(Invalid::new(
            "media",
            "too_many_images",
            format!("`media` holds at most {MAX_MEDIA} images"),
        ));
    }
    media
        .iter()
        .enumerate()
        .map(|(i, (url, alt))| {
            let field = format!("media[{i}]");
            if url.chars().count() > MAX_URL {
                return Err(Invalid::new(
                    format!("{field}.url"),
                    "invalid_url",
                    format!("`{field}.url` is longer than {MAX_URL} characters"),
                ));
            }
            if alt.is_some_and(|a| a.chars().count() > MAX_ALT) {
                return Err(Invalid::new(
                    format!("{field}.alt"),
                    "alt_text_too_long",
                    format!("`{field}.alt` is longer than {MAX_ALT} characters"),
                ));
            }
            let url = url.trim().to_owned();
            check_url(ssrf, &format!("{field}.url"), &url)?;
            Ok(MediaItem {
                url,
                alt: trimmed(*alt),
                field,
            })
        })
        .collect()
}

/// What a share posts, its own rules checked: lengths as sent, trimmed, URLs through the SSRF
/// guard. Shared by `POST /v1/shares` and `PATCH /v1/shares/{id}` (which checks the share as it
/// would be after the edit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareContent {
    pub url: String,
    pub title: Option<String>,
    pub text: Option<String>,
    pub image_url: Option<String>,
}

impl ShareContent {
    pub fn parse(
        url: &str,
        title: Option<&str>,
        text: Option<&str>,
        image_url: Option<&str>,
        ssrf: &SsrfGuard,
    ) -> Result<Self, Invalid> {
        // Lengths are limits on what was sent (the document's maxLength), before trimming.
        for (field, raw, max) in [
            ("url", Some(url), MAX_URL),
            ("title", title, MAX_TITLE),
            ("text", text, MAX_TEXT),
            ("image_url", image_url, MAX_URL),
        ] {
            if raw.is_some_and(|r| r.chars().count() > max) {
                let code = match field {
                    "title" => "title_too_long",
                    "text" => "text_too_long",
                    _ => "invalid_url",
                };
                return Err(Invalid::new(
                    field,
                    code,
                    format!("`{field}` is longer than {max} characters"),
                ));
            }
        }
        let url = url.trim().to_owned();
        if url.is_empty() {
            return Err(Invalid::new("url", "missing_url", "`url` is required"));
        }
        check_url(ssrf, "url", &url)?;
        let image_url = trimmed(image_url);
        if let Some(img) = &image_url {
            check_url(ssrf, "image_url", img)?;
        }
        Ok(Self {
            url,
            title: trimmed(title),
            text: trimmed(text),
            image_url,
        })
    }

    /// The duplicate guard's key of this content ([`duplicate_key`]).
    pub fn duplicate_key(&self) -> String {
        duplicate_key(&self.url, self.text.as_deref())
    }
}

/// A publish time as requested: a minute of clock skew is forgiven, and an earlier time means now.
pub(crate) fn publish_time(
    publish_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, Invalid> {
    if publish_at.is_some_and(|t| t < now - chrono::Duration::seconds(60)) {
        return Err(Invalid::new(
            "publish_at",
            "publish_at_in_past",
            "`publish_at` is in the past",
        ));
    }
    Ok(publish_at.unwrap_or(now).max(now))
}

/// `not_after` must leave the share a moment to run.
pub(crate) fn check_not_after(
    not_after: DateTime<Utc>,
    run_at: DateTime<Utc>,
) -> Result<(), Invalid> {
    if not_after <= run_at {
        return Err(Invalid::new(
            "not_after",
            "not_after_before_publish",
            "`not_after` must be later than the publish time",
        ));
    }
    Ok(())
}

/// A queued share's new schedule: `publish_at` and `not_after` as the edit gives them (absent:
/// unchanged). A moved publish time moves an unchanged `not_after` with it, so the share keeps as
/// long a window to run in as it had.
pub fn reschedule(
    run_at: DateTime<Utc>,
    not_after: Option<DateTime<Utc>>,
    publish_at: Option<DateTime<Utc>>,
    new_not_after: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<(DateTime<Utc>, Option<DateTime<Utc>>), Invalid> {
    let new_run_at = match publish_at {
        Some(t) => publish_time(Some(t), now)?,
        None => run_at,
    };
    let new_not_after = match (new_not_after, not_after) {
        (Some(t), _) => Some(t),
        (None, Some(old)) => Some(times::add_capped(old, new_run_at - run_at)),
        (None, None) => None,
    };
    if let Some(t) = new_not_after {
        check_not_after(t, new_run_at.max(now))?;
    }
    Ok((new_run_at, new_not_after))
}

impl ShareRequest {
    /// `lateness`: how long after `run_at` a share may still go out when the body names no
    /// `not_after`.
    pub fn parse(
        body: ShareRequestBody<'_>,
        ssrf: &SsrfGuard,
        lateness: Duration,
        now: DateTime<Utc>,
    ) -> Result<Self, Invalid> {
        let ShareContent {
            url,
            title,
            text,
            image_url,
        } = ShareContent::parse(body.url, body.title, body.text, body.image_url, ssrf)?;
        let media = parse_media(body.image_url, body.media, ssrf)?;
        let run_at = publish_time(parse_time("publish_at", body.publish_at)?, now)?;
        let not_after = match parse_time("not_after", body.not_after)? {
            Some(t) => {
                check_not_after(t, run_at)?;
                t
            }
            None => times::add_capped(
                run_at,
                chrono::Duration::from_std(lateness).unwrap_or_default(),
            ),
        };
        let ids = body.connection_ids;
        if ids.is_empty() || ids.len() > MAX_TARGETS {
            return Err(Invalid::new(
                "connection_ids",
                "invalid_targets",
                format!("`connection_ids` needs 1 to {MAX_TARGETS} connection ids"),
            ));
        }
        let mut seen = HashSet::new();
        for (i, id) in ids.iter().enumerate() {
            if !seen.insert(id.as_str()) {
                return Err(Invalid::new(
                    format!("connection_ids[{i}]"),
                    "duplicate_connection",
                    format!("connection `{id}` is listed twice"),
                ));
            }
        }
        Ok(Self {
            url,
            title,
            text,
            image_url,
            media,
            run_at,
            not_after,
            connection_ids: ids.to_vec(),
        })
    }
}

/// Query parameters that only say where a click came from: two links differing only in them are
/// the same link to the duplicate guard.
const TRACKING_PARAMS: &[&str] = &[
    "fbclid", "gclid", "dclid", "msclkid", "mc_cid", "mc_eid", "igshid",
];

/// What the duplicate guard compares: a digest of the link and the text as a reader would see
/// them. The URL loses its fragment, its `utm_*` and click-id parameters and the case of its
/// scheme and host (and a default port); the text its outer whitespace and the width of inner
/// runs of whitespace. Case and everything else in the text count.
pub fn duplicate_key(url: &str, text: Option<&str>) -> String {
    use sha2::{Digest, Sha256};
    let url = match url::Url::parse(url.trim()) {
        Ok(mut u) => {
            u.set_fragment(None);
            let kept: Vec<(String, String)> = u
                .query_pairs()
                .filter(|(k, _)| {
                    let k = k.to_ascii_lowercase();
                    !k.starts_with("utm_") && !TRACKING_PARAMS.contains(&k.as_str())
                })
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            if kept.is_empty() {
                u.set_query(None);
            } else {
                u.query_pairs_mut().clear().extend_pairs(kept);
            }
            u.to_string()
        }
        Err(_) => url.trim().to_owned(),
    };
    let text = text
        .map(|t| t.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    let digest = Sha256::new()
        .chain_update(url.as_bytes())
        .chain_update([0u8])
        .chain_update(text.as_bytes())
        .finalize();
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// An RFC 3339 time within the years Herald stores.
pub fn parse_time(field: &str, raw: Option<&str>) -> Result<Option<DateTime<Utc>>, Invalid> {
    raw.map(|s| {
        let t = DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| {
                Invalid::new(
                    field,
                    "invalid_time",
                    format!("`{field}` must be an RFC 3339 time such as 2026-01-02T15:04:05Z"),
                )
            })?;
        if !times::in_range(t) {
            return Err(Invalid::new(
                field,
                "time_out_of_range",
                format!("`{field}` must be between 0001-01-01T00:00:00Z and 9999-01-01T00:00:00Z"),
            ));
        }
        Ok(t)
    })
    .transpose()
}

fn check_url(ssrf: &SsrfGuard, field: &str, raw: &str) -> Result<(), Invalid> {
    ssrf.check_url(raw)
        .map(|_| ())
        .map_err(|e| Invalid::new(field, "invalid_url", format!("`{field}`: {e}")))
}

fn trimmed(v: Option<&str>) -> Option<String> {
    v.map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body<'a>(ids: &'a [String]) -> ShareRequestBody<'a> {
        ShareRequestBody {
            url: " https://blog.example/post ",
            title: Some("  "),
            text: Some(" Read this "),
            image_url: None,
            media: &[],
            publish_at: None,
            not_after: None,
            connection_ids: ids,
        }
    }

    fn parse(body: ShareRequestBody<'_>) -> Result<ShareRequest, Invalid> {
        let now = DateTime::parse_from_rfc3339("2026-12-06T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        ShareRequest::parse(body, &SsrfGuard::default(), Duration::from_secs(3600), now)
    }

    #[test]
    fn the_duplicate_key_sees_the_link_and_text_a_reader_sees() {
        let key = |u: &str, t: Option<&str>| duplicate_key(u, t);
        let base = key("https://blog.example/post?id=7", Some("New post"));
        assert_eq!(
            base,
            key(
                "HTTPS://Blog.Example:443/post?utm_source=x&id=7&fbclid=abc#top",
                Some("  New \n post ")
            )
        );
        assert_ne!(
            base,
            key("https://blog.example/post?id=8", Some("New post"))
        );
        assert_ne!(
            base,
            key("https://blog.example/post?id=7", Some("new post"))
        );
        assert_ne!(base, key("https://blog.example/post?id=7", None));
        assert_eq!(
            key("https://a.example/", None),
            key("https://a.example", Some("  "))
        );
    }

    #[test]
    fn fields_are_trimmed_and_the_lateness_limit_applies() {
        let ids = vec!["con_a".to_owned()];
        let req = parse(body(&ids)).unwrap();
        assert_eq!(req.url, "https://blog.example/post");
        assert_eq!(req.title, None);
        assert_eq!(req.text.as_deref(), Some("Read this"));
        assert_eq!(req.not_after - req.run_at, chrono::Duration::hours(1));
    }

    #[test]
    fn each_refusal_names_its_field_and_code() {
        let ids = vec!["con_a".to_owned(), "con_a".to_owned()];
        let err = parse(body(&ids)).unwrap_err();
        assert_eq!(
            (err.field.as_str(), err.code),
            ("connection_ids[1]", "duplicate_connection")
        );
        let ids = vec!["con_a".to_owned()];
        // 300 characters once trimmed, 301 as sent: over the limit.
        let long_title = format!(" {}", "t".repeat(MAX_TITLE));
        for (b, field, code) in [
            (
                ShareRequestBody {
                    url: " ",
                    ..body(&ids)
                },
                "url",
                "missing_url",
            ),
            (
                ShareRequestBody {
                    url: "http://127.0.0.1/x",
                    ..body(&ids)
                },
                "url",
                "invalid_url",
            ),
            (
                ShareRequestBody {
                    publish_at: Some("tomorrow"),
                    ..body(&ids)
                },
                "publish_at",
                "invalid_time",
            ),
            (
                ShareRequestBody {
                    publish_at: Some("2020-01-01T00:00:00Z"),
                    ..body(&ids)
                },
                "publish_at",
                "publish_at_in_past",
            ),
            (
                ShareRequestBody {
                    not_after: Some("2026-12-06T11:00:00Z"),
                    ..body(&ids)
                },
                "not_after",
                "not_after_before_publish",
            ),
            (
                ShareRequestBody {
                    connection_ids: &[],
                    ..body(&ids)
                },
                "connection_ids",
                "invalid_targets",
            ),
            (
                ShareRequestBody {
                    title: Some(&long_title),
                    ..body(&ids)
                },
                "title",
                "title_too_long",
            ),
        ] {
            let err = parse(b).unwrap_err();
            assert_eq!((err.field.as_str(), err.code), (field, code), "{err:?}");
        }
    }
}
