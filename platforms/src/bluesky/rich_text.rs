//! Post text as Bluesky counts and marks it up: the lexicon's limits (graphemes and bytes), links
//! and `@handle` mentions found at UTF-8 byte offsets for facets, and the AT Protocol handle
//! syntax.

use unicode_segmentation::UnicodeSegmentation;
use url::Url;

/// `app.bsky.feed.post#text`: `maxGraphemes: 300`, `maxLength: 3000` (bytes).
pub const MAX_GRAPHEMES: usize = 300;
pub const MAX_TEXT_BYTES: usize = 3000;

/// A facet before mentions are resolved: byte range and what it points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Span {
    Link {
        start: usize,
        end: usize,
        uri: String,
    },
    Mention {
        start: usize,
        end: usize,
        handle: String,
    },
}

/// Characters that end a URL when they are its last one ("see https://x.y/a." ends at "a").
const URL_TRAILING: &[char] = &['.', ',', ';', ':', '!', '?', '"', '\'', '>', ']', '}'];

/// Finds links (`http://` and `https://` runs up to whitespace) and `@handle` mentions, with UTF-8
/// byte offsets into `text`.
pub fn detect_spans(text: &str) -> Vec<Span> {
    let mut spans = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < text.len() {
        let starts_word = i == 0 || !is_word_byte(bytes[i - 1]);
        let rest = &text[i..];
        if starts_word && (rest.starts_with("https://") || rest.starts_with("http://")) {
            let run = rest.find(char::is_whitespace).unwrap_or(rest.len());
            let mut candidate = &rest[..run];
            loop {
                let mut trimmed = candidate.trim_end_matches(URL_TRAILING);
                // A closing parenthesis belongs to the URL only if it closes one the URL opened
                // (Wikipedia links), not the sentence's.
                if trimmed.ends_with(')')
                    && trimmed.matches(')').count() > trimmed.matches('(').count()
                {
                    trimmed = &trimmed[..trimmed.len() - 1];
                }
                if trimmed.len() == candidate.len() {
                    break;
                }
                candidate = trimmed;
            }
            if Url::parse(candidate).is_ok_and(|u| {
                u.host_str()
                    .is_some_and(|h| h.contains('.') || h == "localhost")
            }) {
                spans.push(Span::Link {
                    start: i,
                    end: i + candidate.len(),
                    uri: candidate.to_owned(),
                });
            }
            i += run.max(1);
            continue;
        }
        if starts_word && bytes[i] == b'@' {
            let body = &rest[1..];
            let run = body
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '-'))
                .unwrap_or(body.len());
            let handle = body[..run].trim_end_matches('.');
            if is_valid_handle(handle) {
                spans.push(Span::Mention {
                    start: i,
                    end: i + 1 + handle.len(),
                    handle: handle.to_ascii_lowercase(),
                });
            }
            i += 1 + run;
            continue;
        }
        i += rest.chars().next().map_or(1, char::len_utf8);
    }
    spans
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'@' || b == b'/'
}

/// The handle syntax of the AT Protocol: at least two dot-separated labels of letters, digits and
/// inner hyphens, the last one not starting with a digit, 253 characters at most.
pub fn is_valid_handle(h: &str) -> bool {
    let labels: Vec<&str> = h.split('.').collect();
    h.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|l| {
            (1..=63).contains(&l.len())
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
        && labels
            .last()
            .is_some_and(|l| l.as_bytes()[0].is_ascii_alphabetic())
}

pub(super) fn text_problem(text: &str) -> Option<String> {
    let graphemes = text.graphemes(true).count();
    if graphemes > MAX_GRAPHEMES {
        return Some(format!(
            "Bluesky allows {MAX_GRAPHEMES} characters; this share has {graphemes}"
        ));
    }
    if text.len() > MAX_TEXT_BYTES {
        return Some(format!(
            "Bluesky allows {MAX_TEXT_BYTES} bytes of text; this share has {}",
            text.len()
        ));
    }
    None
}

/// Cuts `s` to at most `max` characters, on a character boundary.
pub(super) fn clip(s: &str, max: usize) -> String {
    s.char_indices()
        .nth(max)
        .map_or_else(|| s.to_owned(), |(i, _)| format!("{}…", &s[..i]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_use_utf8_byte_offsets() {
        let text = "Café ☕ by @alice.test: https://example.com/a?b=1. (see https://en.wikipedia.org/wiki/X_(y))";
        let spans = detect_spans(text);
        let expect_link = "https://example.com/a?b=1";
        let start = text.find(expect_link).unwrap();
        assert!(spans.contains(&Span::Link {
            start,
            end: start + expect_link.len(),
            uri: expect_link.into()
        }));
        let m = text.find("@alice").unwrap();
        assert!(spans.contains(&Span::Mention {
            start: m,
            end: m + "@alice.test".len(),
            handle: "alice.test".into()
        }));
        let wiki = "https://en.wikipedia.org/wiki/X_(y)";
        let w = text.find(wiki).unwrap();
        assert!(spans.contains(&Span::Link {
            start: w,
            end: w + wiki.len(),
            uri: wiki.into()
        }));
        assert_eq!(detect_spans("mail me@example.com or @nodot"), vec![]);
    }

    #[test]
    fn graphemes_not_bytes_or_chars_are_counted() {
        let family = "👨‍👩‍👧"; // one grapheme, five chars, 18 bytes
        assert!(text_problem(&family.repeat(150)).is_none());
        assert!(text_problem(&"é".repeat(300)).is_none());
        assert!(text_problem(&"x".repeat(301)).is_some());
        assert!(text_problem(&family.repeat(200)).unwrap().contains("bytes"));
    }
}
