//! The link card: an `app.bsky.embed.external` built from the linked page's OpenGraph tags (read
//! through the SSRF guard, a bounded prefix, a few checked redirects) and a thumbnail from the
//! share's image or the page's. Not a full HTML parser: it scans `<meta ...>` tags' attributes and
//! the first `<title>`, which is what link cards need, and never panics on malformed or truncated
//! input.

use std::{collections::HashMap, time::Duration};

use reqwest::{
    Client,
    header::{CONTENT_TYPE, LOCATION},
};
use serde_json::{Value, json};
use url::Url;

use super::{rich_text::clip, xrpc::read_capped};
use crate::{http, kind::PlatformKind, ssrf::SsrfGuard, types::PostRequest};

/// `app.bsky.embed.external#external.thumb`: `maxSize: 1000000`.
pub const MAX_THUMB_BYTES: usize = 1_000_000;
/// How much of a linked page is read for its OpenGraph tags; they live in `<head>`.
const MAX_PAGE_BYTES: usize = 1_000_000;
/// Each card fetch, and the whole card, must leave the share call most of its time budget.
const CARD_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
pub(super) const CARD_BUDGET: Duration = Duration::from_secs(8);
const CARD_REDIRECTS: usize = 3;

/// The card's `external` object for the share's link, without its thumbnail, and the image to
/// make the thumbnail of (the share's own wins over the page's); `None` when the page cannot be
/// read.
pub(super) async fn card(
    http_client: &Client,
    guard: &SsrfGuard,
    post: &PostRequest,
) -> Option<(Value, Option<String>)> {
    let (page_url, content_type, body) = fetch_guarded(
        http_client,
        guard,
        &post.url,
        "text/html,application/xhtml+xml",
        MAX_PAGE_BYTES,
        true,
    )
    .await?;
    if !(content_type.starts_with("text/html") || content_type.starts_with("application/xhtml")) {
        return None;
    }
    let meta = parse_page_meta(&String::from_utf8_lossy(&body));
    let title = meta
        .title
        .or_else(|| post.title.clone())
        .unwrap_or_default();
    let external = json!({
        "uri": post.url,
        "title": clip(&title, 300),
        "description": clip(meta.description.as_deref().unwrap_or(""), 1000),
    });
    let image = post.image_url.clone().or_else(|| {
        meta.image
            .and_then(|i| page_url.join(&i).ok())
            .map(String::from)
    });
    Some((external, image))
}

/// A thumbnail to upload: its MIME type and bytes, if the URL serves an image of at most
/// [`MAX_THUMB_BYTES`].
pub(super) async fn thumbnail(
    http_client: &Client,
    guard: &SsrfGuard,
    image_url: &str,
) -> Option<(String, Vec<u8>)> {
    let (_, content_type, bytes) = fetch_guarded(
        http_client,
        guard,
        image_url,
        "image/*",
        MAX_THUMB_BYTES,
        false,
    )
    .await?;
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_owned();
    if !mime.starts_with("image/") || bytes.is_empty() {
        return None;
    }
    Some((mime, bytes))
}

/// GETs a user-supplied URL through the guard, following a few redirects (each checked), and
/// reads at most `limit` bytes. `truncate` keeps the first `limit` bytes of a longer body
/// instead of giving up (enough for a page's `<head>`).
async fn fetch_guarded(
    http_client: &Client,
    guard: &SsrfGuard,
    raw: &str,
    accept: &str,
    limit: usize,
    truncate: bool,
) -> Option<(Url, String, Vec<u8>)> {
    let mut url = guard.check_url(raw).ok()?;
    for _ in 0..=CARD_REDIRECTS {
        let req = http_client
            .get(url.clone())
            .header("accept", accept)
            .timeout(CARD_FETCH_TIMEOUT);
        let mut res = http::send(PlatformKind::Bluesky, "link_card", false, req)
            .await
            .ok()?;
        if res.status().is_redirection() {
            let next = res.headers().get(LOCATION)?.to_str().ok()?;
            url = guard.check_url(url.join(next).ok()?.as_str()).ok()?;
            continue;
        }
        if !res.status().is_success() {
            return None;
        }
        let content_type = res
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        if !truncate {
            return Some((url, content_type, read_capped(res, limit).await.ok()??));
        }
        let mut body = Vec::new();
        while let Ok(Some(chunk)) = res.chunk().await {
            body.extend_from_slice(&chunk);
            if body.len() >= limit {
                body.truncate(limit);
                break;
            }
        }
        return Some((url, content_type, body));
    }
    None
}

/// What a page says about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageMeta {
    pub title: Option<String>,
    pub description: Option<String>,
    pub image: Option<String>,
}

/// Reads `og:title`, `og:description`, `og:image` (then `twitter:*`, `<meta name=description>` and
/// `<title>` as fallbacks) from an HTML prefix.
pub fn parse_page_meta(html: &str) -> PageMeta {
    let lower = html.to_ascii_lowercase();
    let mut found: HashMap<String, String> = HashMap::new();
    let mut at = 0;
    while let Some(pos) = lower[at..].find("<meta") {
        let start = at + pos + 5;
        let end = lower[start..].find('>').map_or(html.len(), |e| start + e);
        let attrs = parse_attributes(&html[start..end]);
        let key = attrs
            .get("property")
            .or_else(|| attrs.get("name"))
            .map(|k| k.to_ascii_lowercase());
        if let (Some(key), Some(content)) = (key, attrs.get("content")) {
            let content = decode_entities(content).trim().to_owned();
            if !content.is_empty() {
                found.entry(key).or_insert(content);
            }
        }
        at = end;
    }
    let title_tag = lower.find("<title").and_then(|t| {
        let open_end = t + lower[t..].find('>')? + 1;
        let close = open_end + lower[open_end..].find("</title")?;
        Some(decode_entities(html[open_end..close].trim()))
    });
    let pick = |keys: &[&str]| keys.iter().find_map(|k| found.get(*k).cloned());
    PageMeta {
        title: pick(&["og:title", "twitter:title"])
            .or(title_tag)
            .filter(|t| !t.is_empty()),
        description: pick(&["og:description", "twitter:description", "description"]),
        image: pick(&[
            "og:image",
            "og:image:url",
            "og:image:secure_url",
            "twitter:image",
        ]),
    }
}

/// `name="value"`, `name='value'` and `name=value` pairs of one tag, names lowercased.
fn parse_attributes(tag: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = tag.trim_start();
    while !rest.is_empty() {
        let name_len = rest
            .find(|c: char| c == '=' || c.is_whitespace() || c == '/' || c == '>')
            .unwrap_or(rest.len());
        if name_len == 0 {
            rest = rest[rest.chars().next().map_or(1, char::len_utf8)..].trim_start();
            continue;
        }
        let name = rest[..name_len].to_ascii_lowercase();
        rest = rest[name_len..].trim_start();
        let Some(after_eq) = rest.strip_prefix('=') else {
            continue;
        };
        let after_eq = after_eq.trim_start();
        let (value, remaining) = match after_eq.chars().next() {
            Some(q @ ('"' | '\'')) => {
                let body = &after_eq[1..];
                let close = body.find(q).unwrap_or(body.len());
                (&body[..close], body.get(close + 1..).unwrap_or(""))
            }
            _ => {
                let end = after_eq.find(char::is_whitespace).unwrap_or(after_eq.len());
                (&after_eq[..end], &after_eq[end..])
            }
        };
        out.entry(name).or_insert_with(|| value.to_owned());
        rest = remaining.trim_start();
    }
    out
}

/// Decodes the character references a `content` attribute or title commonly carries.
fn decode_entities(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let tail = &rest[amp..];
        let decoded = tail.find(';').filter(|&semi| semi <= 10).and_then(|semi| {
            let name = &tail[1..semi];
            let c = match name {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" | "#39" => Some('\''),
                "nbsp" => Some(' '),
                n if n.starts_with("#x") || n.starts_with("#X") => u32::from_str_radix(&n[2..], 16)
                    .ok()
                    .and_then(char::from_u32),
                n if n.starts_with('#') => n[1..].parse().ok().and_then(char::from_u32),
                _ => None,
            }?;
            Some((c, semi + 1))
        });
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = &tail[len..];
            }
            None => {
                out.push('&');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_meta_is_read_from_messy_html() {
        let html = r#"<html><head><TITLE>Fallback &amp; title</TITLE>
            <meta charset=utf-8><meta content="A &quot;card&quot; &#x2014; desc" property='og:description'>
            <meta property="og:title" content="Hello &amp; welcome"/>
            <meta name=twitter:image content=/img.png>
            <meta property="og:image" content="https://cdn.example/i.jpg"><meta property="og:image" content="second">"#;
        let m = parse_page_meta(html);
        assert_eq!(m.title.as_deref(), Some("Hello & welcome"));
        assert_eq!(m.description.as_deref(), Some("A \"card\" \u{2014} desc"));
        assert_eq!(m.image.as_deref(), Some("https://cdn.example/i.jpg"));
        assert_eq!(parse_page_meta("<title>Only").title, None);
        assert_eq!(
            parse_page_meta("<head><title> T </title><meta name=x")
                .title
                .as_deref(),
            Some("T")
        );
        assert_eq!(
            parse_page_meta("<meta property=\"og:title\" content=\"&bogus; & more\">")
                .title
                .as_deref(),
            Some("&bogus; & more")
        );
    }
}
