//! Text helpers the clients share: the share's own words, and whether a post read back from a
//! platform is this share (X, LinkedIn and Meta's three settle a lost answer by reading back).

use crate::types::PostRequest;

/// The share's own words: its text, or else its title, if either has any.
pub fn lead(post: &PostRequest) -> Option<&str> {
    [post.text.as_deref(), post.title.as_deref()]
        .into_iter()
        .flatten()
        .map(str::trim)
        .find(|s| !s.is_empty())
}

/// Whether a post read back from a platform is this share: the share's URL is in the post (as its
/// link or in its text) and, when the share has words of its own, they are in the text too.
/// Platforms escape and re-space text, so both sides are normalized first.
pub fn post_matches(post: &PostRequest, words: Option<&str>, text: &str, links: &[&str]) -> bool {
    let want = normalize_url(&post.url);
    let text = normalize_text(text);
    let url_found = links.iter().any(|l| normalize_url(l) == want) || text.contains(want);
    let words_found = words.is_none_or(|w| text.contains(&normalize_text(w)));
    url_found && words_found
}

fn normalize_url(u: &str) -> &str {
    u.trim().trim_end_matches('/')
}

fn normalize_text(s: &str) -> String {
    let unescaped = s
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&amp;", "&");
    unescaped.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(text: &str) -> PostRequest {
        PostRequest {
            share_id: "shr_1".into(),
            url: "https://example.com/a/very/long/path/that/is/far/longer/than/twenty/three/characters".into(),
            title: None,
            text: Some(text.into()),
            image_url: None,
            media: Vec::new(),
            idempotency_key: "k".into(),
            checkpoint: Default::default(),
        }
    }

    #[test]
    fn a_post_matches_on_its_url_and_its_words_despite_escaping() {
        let mut p = post("Tom & Jerry");
        assert!(post_matches(
            &p,
            lead(&p),
            "Tom &amp; Jerry\n\nhttps://t.co/abc",
            &[p.url.as_str()]
        ));
        assert!(!post_matches(
            &p,
            lead(&p),
            "Tom &amp; Jerry\n\nhttps://t.co/abc",
            &["https://example.com/other"]
        ));
        assert!(!post_matches(
            &p,
            lead(&p),
            "Something else https://t.co/abc",
            &[p.url.as_str()]
        ));
        p.text = None;
        let url = format!("{}/", p.url);
        assert!(post_matches(
            &p,
            lead(&p),
            "https://t.co/abc",
            &[url.as_str()]
        ));
    }
}
