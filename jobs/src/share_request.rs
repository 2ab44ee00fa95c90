//! A share request, validated as a domain type: everything `POST /v1/shares` checks in the body
//! itself, before it looks at any connection. The route stays a thin adapter; the rules live here.

use std::{collections::HashSet, time::Duration};

use chrono::{DateTime, Utc};
use herald_platforms::ssrf::SsrfGuard;

use crate::times;

pub const MAX_TARGETS: usize = 50;
pub const MAX_URL: usize = 2048;
pub const MAX_TITLE: usize = 300;
pub const MAX_TEXT: usize = 10_000;

/// A field at fault: the API answers 422 with `code` and `field`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: String,
    pub code: &'static str,
    pub message: String,
}

impl Invalid {
    fn new(field: impl Into<String>, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            code,
            message: message.into(),
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
    pub run_at: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
    pub connection_ids: Vec<String>,
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
        // Lengths are limits on what was sent (the document's maxLength), before trimming.
        for (field, raw, max) in [
            ("url", Some(body.url), MAX_URL),
            ("title", body.title, MAX_TITLE),
            ("text", body.text, MAX_TEXT),
            ("image_url", body.image_url, MAX_URL),
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
        let url = body.url.trim().to_owned();
        if url.is_empty() {
            return Err(Invalid::new("url", "missing_url", "`url` is required"));
        }
        check_url(ssrf, "url", &url)?;
        let title = trimmed(body.title);
        if title
            .as_ref()
            .is_some_and(|t| t.chars().count() > MAX_TITLE)
        {
            return Err(Invalid::new(
                "title",
                "title_too_long",
                format!("`title` is longer than {MAX_TITLE} characters"),
            ));
        }
        let text = trimmed(body.text);
        if text.as_ref().is_some_and(|t| t.chars().count() > MAX_TEXT) {
            return Err(Invalid::new(
                "text",
                "text_too_long",
                format!("`text` is longer than {MAX_TEXT} characters"),
            ));
        }
        let image_url = trimmed(body.image_url);
        if let Some(img) = &image_url {
            check_url(ssrf, "image_url", img)?;
        }
        let publish_at = parse_time("publish_at", body.publish_at)?;
        if publish_at.is_some_and(|t| t < now - chrono::Duration::seconds(60)) {
            return Err(Invalid::new(
                "publish_at",
                "publish_at_in_past",
                "`publish_at` is in the past",
            ));
        }
        let run_at = publish_at.unwrap_or(now).max(now);
        let not_after = parse_time("not_after", body.not_after)?;
        if not_after.is_some_and(|t| t <= run_at) {
            return Err(Invalid::new(
                "not_after",
                "not_after_before_publish",
                "`not_after` must be later than the publish time",
            ));
        }
        let not_after = not_after.unwrap_or_else(|| {
            times::add_capped(
                run_at,
                chrono::Duration::from_std(lateness).unwrap_or_default(),
            )
        });
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
            run_at,
            not_after,
            connection_ids: ids.to_vec(),
        })
    }
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
