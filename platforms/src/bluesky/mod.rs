//! Bluesky (AT Protocol): `com.atproto.repo.createRecord` of an `app.bsky.feed.post` with link
//! and mention facets and an `app.bsky.embed.external` link card, read-back by record key, and
//! follower lists through the PDS's AppView proxy.
//!
//! Written by hand on `reqwest` + `serde_json` rather than with `atrium-api`: the client needs about
//! ten XRPC calls and a few record fields, every request must go through [`http::send`] (metrics,
//! outcome classes) and the SSRF-guarded client, and atrium-api is 2.8 MB of generated lexicon code
//! with its own transport trait.
//!
//! # Connection conventions
//! - `Account::platform_account_id` is the DID; `extras.pds_url` (required) is the PDS base URL;
//!   `Account::handle` the handle.
//! - `extras.auth` says how the connection authenticates and is never mixed:
//!   - `"app_password"`: `Credentials::access_token` holds the **app password** itself (encrypted by
//!     the vault like any token). The client logs in with `com.atproto.server.createSession`
//!     (identifier = the DID), keeps the session in a bounded in-memory cache keyed by PDS and DID,
//!     and renews it with `refreshSession` (or a new login) when the PDS answers `ExpiredToken` /
//!     `InvalidToken` / 401, then replays the call once. Sessions are never stored: they live at
//!     most as long as the process, so a restart costs one `createSession` per account (the PDS
//!     allows 30 per 5 minutes). Logging in and renewing are single-flight per account in the
//!     process: concurrent calls wait for the one login or renewal under way and use its session.
//!   - `"oauth"`: DPoP-bound OAuth tokens from the connect flow (`connect/bluesky.rs`):
//!     `Credentials::dpop_key` is the session's private key (base64url PKCS#8), and the extras
//!     carry `auth_server` (the issuer), `token_endpoint`, `client_id` (the client the session was
//!     granted to) and `client_kid` (the key that signed for it). Every call carries
//!     `Authorization: DPoP <token>` and a proof ([`dpop`]); an expired token is
//!     [`PlatformError::TokenExpired`], so the share job refreshes it through the single-flight
//!     refresh and tries again; the refresh spends the rotating refresh token at the token
//!     endpoint ([`oauth::refresh`]).
//!   - absent: OAuth if the credentials carry a DPoP key or a refresh token (OAuth tokens are
//!     preferred whenever present), else the app password.
//!
//! # Record keys
//! `app.bsky.feed.post` records are keyed by TID (`key: tid`; the PDS checks the syntax). The key is
//! derived from the share's idempotency key, so every attempt of a share writes the same record and a
//! repeat finds it: the TID's timestamp is the share id's UUIDv7 millisecond, its microsecond
//! remainder and 10-bit clock id come from a SHA-256 of the whole id. Two shares of one account
//! created in the same millisecond collide with a chance of about one in a million; a read-back
//! compares the stored text, so a collision is refused rather than reported as the other's post.
//! A second `createRecord` with the same key fails on the reference PDS with a bare 500
//! `InternalServerError` (checked against `@atproto/dev-env`; the cause, "There is already a value at
//! key", stays in the server's log), so any failed create is settled by `getRecord` before it is
//! reported.

pub mod dpop;
pub mod identity;
pub mod jwt;
pub mod oauth;

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::{
    Client, RequestBuilder, Response, StatusCode,
    header::{CONTENT_TYPE, HeaderMap, LOCATION},
};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use unicode_segmentation::UnicodeSegmentation;
use url::Url;
use uuid::Uuid;

use crate::{
    error::{LimitScope, PlatformError},
    http,
    kind::PlatformKind,
    oauth::{OAuthApp, Revoked},
    platform::{Capabilities, Platform},
    ssrf::SsrfGuard,
    types::{
        Account, Credentials, FollowerAccount, FollowerPage, Invalid, PostRequest, Profile,
        Published, Relation, TokenSet,
    },
};

const POST_COLLECTION: &str = "app.bsky.feed.post";
/// `app.bsky.feed.post#text`: `maxGraphemes: 300`, `maxLength: 3000` (bytes).
pub const MAX_GRAPHEMES: usize = 300;
pub const MAX_TEXT_BYTES: usize = 3000;
/// `app.bsky.embed.external#external.thumb`: `maxSize: 1000000`.
pub const MAX_THUMB_BYTES: usize = 1_000_000;
/// How much of a linked page is read for its OpenGraph tags; they live in `<head>`.
const MAX_PAGE_BYTES: usize = 1_000_000;
/// An XRPC answer larger than this is not a JSON answer we want to hold in memory.
const MAX_ANSWER_BYTES: usize = 4_000_000;
/// Each card fetch, and the whole card, must leave the share call most of its time budget.
const CARD_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const CARD_BUDGET: Duration = Duration::from_secs(8);
const CARD_REDIRECTS: usize = 3;
/// A record key stays taken as long as the post exists: a retry within this long cannot post
/// twice (unless the user deleted the post in between).
const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);
/// Sessions cached per process; beyond this the oldest is dropped (it is re-created on demand).
const SESSION_CACHE_CAPACITY: usize = 1024;
const FOLLOWERS_PAGE_SIZE: u32 = 100;

#[derive(Debug, Clone)]
pub struct Bluesky {
    http: Client,
    guard: SsrfGuard,
    sessions: Arc<SessionCache>,
    /// Herald's OAuth client: refreshes need it (a confidential client signs an assertion).
    oauth: Option<oauth::ClientConfig>,
}

impl Bluesky {
    /// `http` is the shared guarded client ([`http::client`]); `guard` checks the user-supplied
    /// URLs (the linked page, its image, the PDS) that IP literals would otherwise take past the
    /// guarded resolver.
    pub fn new(http: Client, guard: SsrfGuard) -> Self {
        Self {
            http,
            guard,
            sessions: Arc::new(SessionCache::new(SESSION_CACHE_CAPACITY)),
            oauth: None,
        }
    }

    /// With Herald's OAuth client, so OAuth sessions can be refreshed.
    pub fn with_oauth(mut self, client: oauth::ClientConfig) -> Self {
        self.oauth = Some(client);
        self
    }

    fn pds(&self, account: &Account) -> Result<String, PlatformError> {
        let raw = account
            .extra_str("pds_url")
            .ok_or_else(|| PlatformError::Rejected {
                status: 0,
                reason: "connection has no pds_url".into(),
            })?;
        self.guard
            .check_url(raw)
            .map_err(|e| PlatformError::Rejected {
                status: 0,
                reason: format!("pds_url refused: {e}"),
            })?;
        Ok(raw.trim_end_matches('/').to_owned())
    }

    /// The post text: the text (or else the title), a blank line, the URL, unless the text already
    /// carries the URL.
    pub fn compose(post: &PostRequest) -> String {
        let lead = post
            .text
            .as_deref()
            .or(post.title.as_deref())
            .map(str::trim)
            .filter(|s| !s.is_empty());
        match lead {
            Some(lead) if lead.contains(&post.url) => lead.to_owned(),
            Some(lead) => format!("{lead}\n\n{}", post.url),
            None => post.url.clone(),
        }
    }

    fn post_url(account: &Account, rkey: &str) -> String {
        let who = if account.handle.is_empty() {
            &account.platform_account_id
        } else {
            &account.handle
        };
        format!("https://bsky.app/profile/{who}/post/{rkey}")
    }
}

// ---------------------------------------------------------------------------------------------
// Record keys
// ---------------------------------------------------------------------------------------------

const S32: &[u8; 32] = b"234567abcdefghijklmnopqrstuvwxyz";

/// Encodes a 64-bit TID value (top bit zero) as its 13-character base32-sortable form.
fn tid_encode(value: u64) -> String {
    (0..13)
        .map(|i| S32[((value >> (60 - 5 * i)) & 31) as usize] as char)
        .collect()
}

/// Whether `s` is a syntactically valid TID (the PDS's own check).
pub fn is_valid_tid(s: &str) -> bool {
    s.len() == 13
        && s.bytes().enumerate().all(|(i, b)| {
            let allowed: &[u8] = if i == 0 {
                b"234567abcdefghij"
            } else {
                &S32[..]
            };
            allowed.contains(&b)
        })
}

/// The record key of a share's post: the same for every attempt of that share. See the module
/// documentation for the layout.
pub fn record_key(idempotency_key: &str) -> String {
    let hash = Sha256::digest(idempotency_key.as_bytes());
    let h = u64::from_be_bytes(hash[..8].try_into().expect("8 bytes"));
    let hex = idempotency_key
        .rsplit('_')
        .next()
        .unwrap_or(idempotency_key);
    let micros = match Uuid::try_parse(hex)
        .ok()
        .filter(|u| u.get_version_num() == 7)
    {
        Some(u) => {
            let (secs, nanos) = u
                .get_timestamp()
                .expect("a UUIDv7 has a timestamp")
                .to_unix();
            let millis = secs * 1000 + u64::from(nanos / 1_000_000);
            millis * 1000 + h % 1000
        }
        // Not a share id: the timestamp bits come from the hash too (still a valid TID).
        None => h >> 11,
    };
    let clock_id = (h >> 20) & 0x3ff;
    tid_encode(((micros & ((1 << 53) - 1)) << 10) | clock_id)
}

// ---------------------------------------------------------------------------------------------
// Text: validation and facets
// ---------------------------------------------------------------------------------------------

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

fn text_problem(text: &str) -> Option<String> {
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

// ---------------------------------------------------------------------------------------------
// Link card: a careful OpenGraph reader
// ---------------------------------------------------------------------------------------------

/// What a page says about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageMeta {
    pub title: Option<String>,
    pub description: Option<String>,
    pub image: Option<String>,
}

/// Reads `og:title`, `og:description`, `og:image` (then `twitter:*`, `<meta name=description>` and
/// `<title>` as fallbacks) from an HTML prefix. Not a full HTML parser: it scans `<meta ...>` tags'
/// attributes and the first `<title>`, which is what link cards need, and never panics on
/// malformed or truncated input.
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

/// Cuts `s` to at most `max` characters, on a character boundary.
fn clip(s: &str, max: usize) -> String {
    s.char_indices()
        .nth(max)
        .map_or_else(|| s.to_owned(), |(i, _)| format!("{}…", &s[..i]))
}

// ---------------------------------------------------------------------------------------------
// Sessions (app-password path)
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
struct Session {
    access: SecretString,
    refresh: SecretString,
    /// Which app password the session came from: a changed password is a cache miss.
    password_fingerprint: [u8; 32],
    created: Instant,
}

/// Sessions by PDS and DID. Bounded; `Debug` shows only how many are held.
struct SessionCache {
    capacity: usize,
    entries: Mutex<HashMap<String, Session>>,
    /// One login or renewal at a time per key. Weak, so a gate lives only while someone holds
    /// or waits on it, and the map holds no more than the logins under way.
    gates: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl fmt::Debug for SessionCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let held = self.entries.lock().map(|e| e.len()).unwrap_or(0);
        f.debug_struct("SessionCache")
            .field("capacity", &self.capacity)
            .field("held", &held)
            .finish()
    }
}

impl SessionCache {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: Mutex::new(HashMap::new()),
            gates: Mutex::new(HashMap::new()),
        }
    }

    /// The gate a login or renewal for `key` takes, shared by every caller while it is alive.
    fn gate(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(gate) = gates.get(key).and_then(Weak::upgrade) {
            return gate;
        }
        gates.retain(|_, g| g.strong_count() > 0);
        let gate = Arc::new(tokio::sync::Mutex::new(()));
        gates.insert(key.to_owned(), Arc::downgrade(&gate));
        gate
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        // A panic while holding the lock leaves a plain map behind: still usable.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, key: &str, fingerprint: &[u8; 32]) -> Option<Session> {
        self.lock()
            .get(key)
            .filter(|s| &s.password_fingerprint == fingerprint)
            .cloned()
    }

    fn put(&self, key: String, session: Session) {
        let mut entries = self.lock();
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            let oldest = entries
                .iter()
                .min_by_key(|(_, s)| s.created)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                entries.remove(&k);
            }
        }
        entries.insert(key, session);
    }

    fn remove(&self, key: &str) {
        self.lock().remove(key);
    }
}

fn fingerprint(password: &SecretString) -> [u8; 32] {
    Sha256::digest(password.expose_secret().as_bytes()).into()
}

#[derive(Deserialize)]
struct SessionBody {
    #[serde(rename = "accessJwt")]
    access_jwt: String,
    #[serde(rename = "refreshJwt")]
    refresh_jwt: String,
    did: String,
}

/// How a connection authenticates.
enum Auth<'a> {
    AppPassword(&'a SecretString),
    OAuth,
}

fn auth_mode<'a>(account: &Account, creds: &'a Credentials) -> Result<Auth<'a>, PlatformError> {
    let app_password = || {
        creds
            .access_token
            .as_ref()
            .map(Auth::AppPassword)
            .ok_or_else(|| PlatformError::Unauthorized {
                reason: "no app password stored".into(),
            })
    };
    match account.extra_str("auth") {
        Some("oauth") => Ok(Auth::OAuth),
        Some("app_password") => app_password(),
        None if creds.dpop_key.is_some() || creds.refresh_token.is_some() => Ok(Auth::OAuth),
        None => app_password(),
        Some(other) => Err(PlatformError::Rejected {
            status: 0,
            reason: format!("unknown auth kind {other:?}"),
        }),
    }
}

/// The DPoP key and access token of an OAuth connection.
fn oauth_session(creds: &Credentials) -> Result<(jwt::EsKey, &SecretString), PlatformError> {
    let dead = |reason: &str| PlatformError::Unauthorized {
        reason: reason.to_owned(),
    };
    let key = creds
        .dpop_key
        .as_ref()
        .ok_or_else(|| dead("the OAuth session has no DPoP key; connect it again"))?;
    let key = jwt::read_key(key).map_err(|_| dead("the stored DPoP key is unreadable"))?;
    let token = creds
        .access_token
        .as_ref()
        .ok_or_else(|| dead("no access token stored"))?;
    Ok((key, token))
}

// ---------------------------------------------------------------------------------------------
// XRPC answers and their classification
// ---------------------------------------------------------------------------------------------

/// An XRPC answer, read whole (bounded) so it can be inspected before it is classified.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

#[derive(Deserialize, Default)]
struct XrpcErrorBody {
    #[serde(default)]
    error: String,
    #[serde(default)]
    message: Option<String>,
}

impl Answer {
    fn ok(&self) -> bool {
        self.status.is_success()
    }

    fn error_name(&self) -> String {
        serde_json::from_slice::<XrpcErrorBody>(&self.body)
            .map(|b| b.error)
            .unwrap_or_default()
    }

    /// The session is unusable: expired or revoked access token, or a 401 of any kind.
    fn session_expired(&self) -> bool {
        match self.status {
            StatusCode::UNAUTHORIZED => true,
            StatusCode::BAD_REQUEST => {
                matches!(self.error_name().as_str(), "ExpiredToken" | "InvalidToken")
            }
            _ => false,
        }
    }

    fn json<T: serde::de::DeserializeOwned>(&self, creates: bool) -> Result<T, PlatformError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            let reason = format!("unreadable answer: {e}");
            // The record exists now; an unreadable body is not a reason to post again.
            if creates {
                PlatformError::OutcomeUnknown { reason }
            } else {
                PlatformError::Transient {
                    status: None,
                    reason,
                }
            }
        })
    }

    fn classify(&self) -> PlatformError {
        let body = serde_json::from_slice::<XrpcErrorBody>(&self.body).unwrap_or_default();
        let name = body.error.as_str();
        // Error pages may be HTML: only a JSON `{error, message}` reaches the reason.
        let reason = match (name, body.message.as_deref()) {
            ("", _) => format!("HTTP {}", self.status.as_u16()),
            (n, Some(m)) => format!("{n}: {}", clip(m, 300)),
            (n, None) => n.to_owned(),
        };
        match (self.status, name) {
            (StatusCode::TOO_MANY_REQUESTS, _) => PlatformError::RateLimited {
                retry_after: rate_limit_wait(&self.headers, Utc::now()),
                // Per account (or per IP): neither has an app shared by every tenant.
                scope: LimitScope::Account,
            },
            (_, "AccountTakedown" | "AccountDeactivated" | "AccountSuspended") => {
                PlatformError::Unauthorized { reason }
            }
            (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN, _) => {
                PlatformError::Unauthorized { reason }
            }
            (StatusCode::BAD_REQUEST, "ExpiredToken" | "InvalidToken") => {
                PlatformError::Unauthorized { reason }
            }
            (StatusCode::NOT_IMPLEMENTED, _) => PlatformError::Rejected {
                status: 501,
                reason,
            },
            (s, _) if s.is_server_error() => PlatformError::Transient {
                status: Some(s.as_u16()),
                reason,
            },
            (s, _) => PlatformError::Rejected {
                status: s.as_u16(),
                reason,
            },
        }
    }
}

/// The wait a 429 asks for: `Retry-After` (seconds) if present, else `RateLimit-Reset` (epoch
/// seconds), corrected for clock skew with `Date`.
pub fn rate_limit_wait(headers: &HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(secs) = get("retry-after").and_then(|v| v.parse::<u64>().ok()) {
        return Some(Duration::from_secs(secs));
    }
    let reset_at = get("ratelimit-reset")
        .and_then(|v| v.parse::<i64>().ok())
        .and_then(|s| DateTime::from_timestamp(s, 0))?;
    let server_now = get("date")
        .and_then(|d| DateTime::parse_from_rfc2822(d).ok())
        .map_or(now, |d| d.with_timezone(&Utc));
    Some((reset_at - server_now).to_std().unwrap_or(Duration::ZERO))
}

/// Reads a body up to `limit` bytes. `Ok(None)` when it is larger.
async fn read_capped(mut res: Response, limit: usize) -> Result<Option<Vec<u8>>, reqwest::Error> {
    if res.content_length().is_some_and(|n| n > limit as u64) {
        return Ok(None);
    }
    let mut body = Vec::new();
    while let Some(chunk) = res.chunk().await? {
        if body.len() + chunk.len() > limit {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

async fn answer(res: Response, creates: bool) -> Result<Answer, PlatformError> {
    let status = res.status();
    let headers = res.headers().clone();
    let lost = |reason: String| {
        if creates && status.is_success() {
            PlatformError::OutcomeUnknown { reason }
        } else {
            PlatformError::Transient {
                status: Some(status.as_u16()),
                reason,
            }
        }
    };
    match read_capped(res, MAX_ANSWER_BYTES).await {
        Ok(Some(body)) => Ok(Answer {
            status,
            headers,
            body,
        }),
        Ok(None) => Err(lost("answer too large".into())),
        Err(_) => Err(lost("answer cut off".into())),
    }
}

#[derive(Deserialize)]
struct RecordBody {
    uri: String,
    #[serde(default)]
    value: Value,
}

#[derive(Deserialize)]
struct ActorRef {
    did: String,
    handle: String,
}

// ---------------------------------------------------------------------------------------------
// Calls
// ---------------------------------------------------------------------------------------------

impl Bluesky {
    fn xrpc(pds: &str, nsid: &str) -> String {
        format!("{pds}/xrpc/{nsid}")
    }

    fn cache_key(pds: &str, account: &Account) -> String {
        format!("{pds} {}", account.platform_account_id)
    }

    /// Logs in with the app password. A refused password is `Unauthorized`.
    async fn create_session(
        &self,
        pds: &str,
        account: &Account,
        password: &SecretString,
    ) -> Result<Session, PlatformError> {
        let identifier = if account.platform_account_id.is_empty() {
            &account.handle
        } else {
            &account.platform_account_id
        };
        let req = self
            .http
            .post(Self::xrpc(pds, "com.atproto.server.createSession"))
            .json(&json!({ "identifier": identifier, "password": password.expose_secret() }));
        let a = answer(
            http::send(self.kind(), "create_session", false, req).await?,
            false,
        )
        .await?;
        if !a.ok() {
            return Err(match a.classify() {
                // `AuthenticationRequired` / 400 `InvalidRequest` for a wrong identifier or password.
                PlatformError::Rejected {
                    status: 400,
                    reason,
                } => PlatformError::Unauthorized {
                    reason: format!("app password refused: {reason}"),
                },
                PlatformError::Unauthorized { reason } => PlatformError::Unauthorized {
                    reason: format!("app password refused: {reason}"),
                },
                e => e,
            });
        }
        let body: SessionBody = a.json(false)?;
        if !account.platform_account_id.is_empty() && body.did != account.platform_account_id {
            return Err(PlatformError::Unauthorized {
                reason: "the app password belongs to another account".into(),
            });
        }
        let session = Session {
            access: body.access_jwt.into(),
            refresh: body.refresh_jwt.into(),
            password_fingerprint: fingerprint(password),
            created: Instant::now(),
        };
        self.sessions
            .put(Self::cache_key(pds, account), session.clone());
        Ok(session)
    }

    /// The cached session, else a new login. Single-flight: concurrent calls for an account
    /// with no session wait for one login and share it, rather than each spending one of
    /// Bluesky's 30 logins per 5 minutes.
    async fn session(
        &self,
        pds: &str,
        account: &Account,
        password: &SecretString,
    ) -> Result<Session, PlatformError> {
        let key = Self::cache_key(pds, account);
        let fingerprint = fingerprint(password);
        if let Some(s) = self.sessions.get(&key, &fingerprint) {
            return Ok(s);
        }
        let gate = self.sessions.gate(&key);
        let _turn = gate.lock().await;
        if let Some(s) = self.sessions.get(&key, &fingerprint) {
            return Ok(s);
        }
        self.create_session(pds, account, password).await
    }

    /// A new access token from the refresh token; a refused refresh token falls back to a login.
    /// Single-flight like [`Self::session`]: a call that waited finds the session renewed.
    async fn renew(
        &self,
        pds: &str,
        account: &Account,
        password: &SecretString,
        old: &Session,
    ) -> Result<Session, PlatformError> {
        let key = Self::cache_key(pds, account);
        let gate = self.sessions.gate(&key);
        let _turn = gate.lock().await;
        if let Some(s) = self.sessions.get(&key, &old.password_fingerprint)
            && s.created > old.created
        {
            return Ok(s);
        }
        let req = self
            .http
            .post(Self::xrpc(pds, "com.atproto.server.refreshSession"))
            .bearer_auth(old.refresh.expose_secret());
        let a = answer(
            http::send(self.kind(), "refresh_session", false, req).await?,
            false,
        )
        .await?;
        if a.ok() {
            let body: SessionBody = a.json(false)?;
            let session = Session {
                access: body.access_jwt.into(),
                refresh: body.refresh_jwt.into(),
                password_fingerprint: old.password_fingerprint,
                created: Instant::now(),
            };
            self.sessions
                .put(Self::cache_key(pds, account), session.clone());
            return Ok(session);
        }
        self.sessions.remove(&Self::cache_key(pds, account));
        // A refused refresh token (`ExpiredToken`, `InvalidToken`, 401) means logging in again; a
        // taken-down account, a rate limit or a server error is reported as it is.
        let refused = matches!(a.status, StatusCode::BAD_REQUEST | StatusCode::UNAUTHORIZED)
            && !a.error_name().starts_with("Account");
        if refused {
            self.create_session(pds, account, password).await
        } else {
            Err(a.classify())
        }
    }

    /// Sends an authenticated XRPC call; on an expired or revoked session renews it and replays
    /// once. Any other answer, success or not, is returned for the caller to read.
    async fn call(
        &self,
        pds: &str,
        account: &Account,
        creds: &Credentials,
        operation: &'static str,
        creates: bool,
        build: impl Fn(&Client) -> RequestBuilder + Send + Sync,
    ) -> Result<Answer, PlatformError> {
        let password = match auth_mode(account, creds)? {
            Auth::AppPassword(p) => p,
            Auth::OAuth => return self.call_oauth(creds, operation, creates, build).await,
        };
        let key = Self::cache_key(pds, account);
        let session = self.session(pds, account, password).await?;
        let req = build(&self.http).bearer_auth(session.access.expose_secret());
        let first = answer(
            http::send(self.kind(), operation, creates, req).await?,
            creates,
        )
        .await?;
        if !first.session_expired() {
            return Ok(first);
        }
        let session = self.renew(pds, account, password, &session).await?;
        let req = build(&self.http).bearer_auth(session.access.expose_secret());
        let second = answer(
            http::send(self.kind(), operation, creates, req).await?,
            creates,
        )
        .await?;
        if second.session_expired() {
            // A brand-new session refused: the account, not the token, is the problem.
            self.sessions.remove(&key);
        }
        Ok(second)
    }

    /// An XRPC call with the OAuth session: `Authorization: DPoP`, a proof, the PDS's nonce.
    /// An expired or revoked token is `TokenExpired` when a refresh token may revive it.
    async fn call_oauth(
        &self,
        creds: &Credentials,
        operation: &'static str,
        creates: bool,
        build: impl Fn(&Client) -> RequestBuilder + Send + Sync,
    ) -> Result<Answer, PlatformError> {
        let (key, token) = oauth_session(creds)?;
        let a = dpop::send(&self.http, &key, Some(token), operation, creates, build).await?;
        if a.session_expired() {
            return Err(if creds.refresh_token.is_some() {
                PlatformError::TokenExpired
            } else {
                a.classify()
            });
        }
        Ok(a)
    }

    /// The refresh-token grant at the session's token endpoint, with the session's DPoP key and
    /// the client it was granted to. The answer must still name the connection's DID and grant
    /// what posting needs.
    async fn refresh_oauth(
        &self,
        account: &Account,
        creds: &Credentials,
    ) -> Result<TokenSet, PlatformError> {
        let (key, _) = oauth_session(creds)?;
        let refresh_token =
            creds
                .refresh_token
                .as_ref()
                .ok_or_else(|| PlatformError::InvalidGrant {
                    reason: "no refresh token stored".into(),
                })?;
        let missing = |what: &str| PlatformError::InvalidGrant {
            reason: format!("the connection has no {what}; connect it again"),
        };
        let client = self
            .oauth
            .as_ref()
            .ok_or_else(|| missing("OAuth client configured"))?;
        let issuer = account
            .extra_str("auth_server")
            .ok_or_else(|| missing("authorization server"))?;
        let token_endpoint = account
            .extra_str("token_endpoint")
            .ok_or_else(|| missing("token endpoint"))?;
        self.guard
            .check_url(token_endpoint)
            .map_err(|e| PlatformError::Rejected {
                status: 0,
                reason: format!("token endpoint refused: {e}"),
            })?;
        let client_id = account
            .extra_str("client_id")
            .map_or_else(|| client.client_id(), str::to_owned);
        let grant = oauth::Grant {
            token_endpoint,
            issuer,
            client_id: &client_id,
            kid: account.extra_str("client_kid"),
        };
        let tokens = oauth::refresh(&self.http, client, &key, &grant, refresh_token).await?;
        if tokens.sub != account.platform_account_id {
            return Err(PlatformError::InvalidGrant {
                reason: format!(
                    "the refreshed session belongs to {}, not {}",
                    tokens.sub, account.platform_account_id
                ),
            });
        }
        // A narrowed grant would otherwise be stored and fail every share as a rejection.
        if !tokens.grants(oauth::POSTING_SCOPE) {
            return Err(PlatformError::InvalidGrant {
                reason: format!(
                    "the renewed session no longer grants `{}` (granted: `{}`), so nothing can be \
                     posted",
                    oauth::POSTING_SCOPE,
                    tokens.scope
                ),
            });
        }
        Ok(tokens.into_token_set())
    }

    /// Ends an OAuth session at its authorization server (the connection is being removed).
    /// `Ok(false)`: nothing to revoke there (an app password, or no revocation endpoint).
    pub async fn revoke_oauth(
        &self,
        account: &Account,
        creds: &Credentials,
    ) -> Result<bool, PlatformError> {
        let (Auth::OAuth, Some(endpoint), Some(refresh_token), Some(client)) = (
            auth_mode(account, creds)?,
            account.extra_str("revocation_endpoint"),
            creds.refresh_token.as_ref(),
            self.oauth.as_ref(),
        ) else {
            return Ok(false);
        };
        self.guard
            .check_url(endpoint)
            .map_err(|e| PlatformError::Rejected {
                status: 0,
                reason: format!("revocation endpoint refused: {e}"),
            })?;
        let (key, _) = oauth_session(creds)?;
        let client_id = account
            .extra_str("client_id")
            .map_or_else(|| client.client_id(), str::to_owned);
        let grant = oauth::Grant {
            token_endpoint: account.extra_str("token_endpoint").unwrap_or(endpoint),
            issuer: account.extra_str("auth_server").unwrap_or_default(),
            client_id: &client_id,
            kid: account.extra_str("client_kid"),
        };
        oauth::revoke(&self.http, client, &key, endpoint, &grant, refresh_token).await?;
        Ok(true)
    }

    async fn get_record(
        &self,
        pds: &str,
        account: &Account,
        rkey: &str,
    ) -> Result<Option<RecordBody>, PlatformError> {
        let req = self
            .http
            .get(Self::xrpc(pds, "com.atproto.repo.getRecord"))
            .query(&[
                ("repo", account.platform_account_id.as_str()),
                ("collection", POST_COLLECTION),
                ("rkey", rkey),
            ]);
        let a = answer(
            http::send(self.kind(), "get_record", false, req).await?,
            false,
        )
        .await?;
        if a.ok() {
            return a.json(false).map(Some);
        }
        if a.status == StatusCode::BAD_REQUEST && a.error_name() == "RecordNotFound" {
            return Ok(None);
        }
        Err(a.classify())
    }

    /// Our post under `rkey`, if it is there: a record with another text is someone else's
    /// (a record key collision), never reported as ours.
    async fn read_back(
        &self,
        pds: &str,
        account: &Account,
        rkey: &str,
        text: &str,
    ) -> Result<Option<Published>, PlatformError> {
        match self.get_record(pds, account, rkey).await? {
            None => Ok(None),
            Some(r) if r.value.get("text").and_then(Value::as_str) == Some(text) => {
                Ok(Some(Published {
                    post_id: r.uri,
                    post_url: Some(Self::post_url(account, rkey)),
                    app_budget: None,
                }))
            }
            Some(r) => Err(PlatformError::Rejected {
                status: 409,
                reason: format!("record key {rkey} already holds another post ({})", r.uri),
            }),
        }
    }

    async fn resolve_handle(&self, pds: &str, handle: &str) -> Option<String> {
        #[derive(Deserialize)]
        struct Resolved {
            did: String,
        }
        let req = self
            .http
            .get(Self::xrpc(pds, "com.atproto.identity.resolveHandle"))
            .query(&[("handle", handle)]);
        let a = answer(
            http::send(self.kind(), "resolve_handle", false, req)
                .await
                .ok()?,
            false,
        )
        .await
        .ok()?;
        let did = a
            .ok()
            .then(|| a.json::<Resolved>(false).ok())
            .flatten()?
            .did;
        did.starts_with("did:").then_some(did)
    }

    /// Facets for the text: links as written, mentions whose handle resolves (an unresolvable
    /// mention stays plain text rather than failing the share).
    async fn facets(&self, pds: &str, text: &str) -> Vec<Value> {
        let mut out = Vec::new();
        for span in detect_spans(text) {
            match span {
                Span::Link { start, end, uri } => out.push(json!({
                    "index": { "byteStart": start, "byteEnd": end },
                    "features": [{ "$type": "app.bsky.richtext.facet#link", "uri": uri }],
                })),
                Span::Mention { start, end, handle } => {
                    if let Some(did) = self.resolve_handle(pds, &handle).await {
                        out.push(json!({
                            "index": { "byteStart": start, "byteEnd": end },
                            "features": [{ "$type": "app.bsky.richtext.facet#mention", "did": did }],
                        }));
                    }
                }
            }
        }
        out
    }

    /// GETs a user-supplied URL through the guard, following a few redirects (each checked), and
    /// reads at most `limit` bytes. `truncate` keeps the first `limit` bytes of a longer body
    /// instead of giving up (enough for a page's `<head>`).
    async fn fetch_guarded(
        &self,
        raw: &str,
        accept: &str,
        limit: usize,
        truncate: bool,
    ) -> Option<(Url, String, Vec<u8>)> {
        let mut url = self.guard.check_url(raw).ok()?;
        for _ in 0..=CARD_REDIRECTS {
            let req = self
                .http
                .get(url.clone())
                .header("accept", accept)
                .timeout(CARD_FETCH_TIMEOUT);
            let mut res = http::send(self.kind(), "link_card", false, req)
                .await
                .ok()?;
            if res.status().is_redirection() {
                let next = res.headers().get(LOCATION)?.to_str().ok()?;
                url = self.guard.check_url(url.join(next).ok()?.as_str()).ok()?;
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

    /// The `app.bsky.embed.external` card for the link, or `None` when the page cannot be read.
    /// The thumbnail is best effort: a card without one is still a card.
    async fn link_card(
        &self,
        pds: &str,
        account: &Account,
        creds: &Credentials,
        post: &PostRequest,
    ) -> Option<Value> {
        let (page_url, content_type, body) = self
            .fetch_guarded(
                &post.url,
                "text/html,application/xhtml+xml",
                MAX_PAGE_BYTES,
                true,
            )
            .await?;
        if !(content_type.starts_with("text/html") || content_type.starts_with("application/xhtml"))
        {
            return None;
        }
        let meta = parse_page_meta(&String::from_utf8_lossy(&body));
        let title = meta
            .title
            .or_else(|| post.title.clone())
            .unwrap_or_default();
        let mut external = json!({
            "uri": post.url,
            "title": clip(&title, 300),
            "description": clip(meta.description.as_deref().unwrap_or(""), 1000),
        });
        // The share's own image wins over the page's.
        let image = post.image_url.clone().or_else(|| {
            meta.image
                .and_then(|i| page_url.join(&i).ok())
                .map(String::from)
        });
        if let Some(image) = image
            && let Some(blob) = self.upload_thumb(pds, account, creds, &image).await
        {
            external["thumb"] = blob;
        }
        Some(json!({ "$type": "app.bsky.embed.external", "external": external }))
    }

    async fn upload_thumb(
        &self,
        pds: &str,
        account: &Account,
        creds: &Credentials,
        image_url: &str,
    ) -> Option<Value> {
        let (_, content_type, bytes) = self
            .fetch_guarded(image_url, "image/*", MAX_THUMB_BYTES, false)
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
        let url = Self::xrpc(pds, "com.atproto.repo.uploadBlob");
        let a = self
            .call(pds, account, creds, "upload_blob", false, |c| {
                c.post(&url).header(CONTENT_TYPE, &mime).body(bytes.clone())
            })
            .await
            .ok()?;
        if !a.ok() {
            return None;
        }
        a.json::<Value>(false).ok()?.get("blob").cloned()
    }
}

#[async_trait]
impl Platform for Bluesky {
    fn kind(&self) -> PlatformKind {
        PlatformKind::Bluesky
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            idempotency_window: Some(IDEMPOTENCY_WINDOW),
            refresh: true,
            followers: true,
            requires_image: false,
        }
    }

    fn validate(&self, _account: &Account, post: &PostRequest) -> Result<(), Invalid> {
        match text_problem(&Self::compose(post)) {
            Some(message) => Err(Invalid {
                field: "text",
                code: "text_too_long",
                message,
            }),
            None => Ok(()),
        }
    }

    async fn verify(
        &self,
        account: &Account,
        creds: &Credentials,
    ) -> Result<Profile, PlatformError> {
        let pds = self.pds(account)?;
        let url = Self::xrpc(&pds, "com.atproto.server.getSession");
        let a = self
            .call(&pds, account, creds, "verify", false, |c| c.get(&url))
            .await?;
        if !a.ok() {
            return Err(a.classify());
        }
        let me: ActorRef = a.json(false)?;
        // The count is an AppView figure: nice to have, never a reason to fail the check.
        let profile_url = Self::xrpc(&pds, "app.bsky.actor.getProfile");
        let followers_count = match self
            .call(&pds, account, creds, "get_profile", false, |c| {
                c.get(&profile_url).query(&[("actor", &me.did)])
            })
            .await
        {
            Ok(p) if p.ok() => p
                .json::<Value>(false)
                .ok()
                .and_then(|v| v.get("followersCount")?.as_u64()),
            _ => None,
        };
        Ok(Profile {
            platform_account_id: me.did,
            handle: me.handle,
            followers_count,
        })
    }

    async fn share(
        &self,
        account: &Account,
        creds: &Credentials,
        post: &PostRequest,
    ) -> Result<Published, PlatformError> {
        let pds = self.pds(account)?;
        let text = Self::compose(post);
        if let Some(message) = text_problem(&text) {
            return Err(PlatformError::Rejected {
                status: 0,
                reason: message,
            });
        }
        let rkey = record_key(&post.idempotency_key);
        let facets = self.facets(&pds, &text).await;
        let embed = tokio::time::timeout(CARD_BUDGET, self.link_card(&pds, account, creds, post))
            .await
            .ok()
            .flatten();
        let mut record = json!({
            "$type": POST_COLLECTION,
            "text": text,
            "createdAt": Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
        });
        if !facets.is_empty() {
            record["facets"] = Value::Array(facets);
        }
        if let Some(embed) = embed {
            record["embed"] = embed;
        }
        let body = json!({
            "repo": account.platform_account_id,
            "collection": POST_COLLECTION,
            "rkey": rkey,
            "record": record,
        });
        let url = Self::xrpc(&pds, "com.atproto.repo.createRecord");
        let created = self
            .call(&pds, account, creds, "share", true, |c| {
                c.post(&url).json(&body)
            })
            .await;
        let failure = match created {
            Ok(a) if a.ok() => {
                #[derive(Deserialize)]
                struct Created {
                    uri: String,
                }
                let c: Created = a.json(true)?;
                return Ok(Published {
                    post_id: c.uri,
                    post_url: Some(Self::post_url(account, &rkey)),
                    app_budget: None,
                });
            }
            Ok(a) => a.classify(),
            Err(e) => e,
        };
        // A repeat of a create that went through is refused (the reference PDS answers 500
        // "There is already a value at key"): the record under our key settles it. Auth and rate
        // limits are reported as they are.
        match failure {
            PlatformError::Rejected { .. }
            | PlatformError::Transient { .. }
            | PlatformError::OutcomeUnknown { .. } => {
                match self.read_back(&pds, account, &rkey, &text).await {
                    Ok(Some(published)) => Ok(published),
                    Ok(None) => Err(failure),
                    Err(e @ PlatformError::Rejected { status: 409, .. }) => Err(e),
                    Err(_) => Err(failure),
                }
            }
            other => Err(other),
        }
    }

    async fn find_published(
        &self,
        account: &Account,
        _creds: &Credentials,
        post: &PostRequest,
    ) -> Result<Option<Published>, PlatformError> {
        let pds = self.pds(account)?;
        let rkey = record_key(&post.idempotency_key);
        match self
            .read_back(&pds, account, &rkey, &Self::compose(post))
            .await
        {
            Err(PlatformError::Rejected { status: 409, .. }) => Ok(None),
            other => other,
        }
    }

    /// For OAuth: the refresh-token grant (see [`Bluesky::refresh_oauth`]). For an app password:
    /// logs in afresh (replacing the cached session) and hands the app password back unchanged,
    /// since it, not the session, is what the store keeps. A refused password is `InvalidGrant`.
    async fn refresh(
        &self,
        account: &Account,
        creds: &Credentials,
    ) -> Result<TokenSet, PlatformError> {
        let pds = self.pds(account)?;
        let password = match auth_mode(account, creds)? {
            Auth::AppPassword(p) => p,
            Auth::OAuth => return self.refresh_oauth(account, creds).await,
        };
        match self.create_session(&pds, account, password).await {
            Ok(_) => Ok(TokenSet {
                access_token: password.clone(),
                refresh_token: None,
                expires_at: None,
            }),
            Err(PlatformError::Unauthorized { reason }) => {
                Err(PlatformError::InvalidGrant { reason })
            }
            Err(e) => Err(e),
        }
    }

    /// An OAuth session is ended at its authorization server (`revocation_endpoint`, with
    /// DPoP); an app password has nothing to revoke there.
    async fn revoke(
        &self,
        _http: &Client,
        account: &Account,
        creds: &Credentials,
        _app: Option<&OAuthApp>,
    ) -> Revoked {
        match self.revoke_oauth(account, creds).await {
            Ok(true) => Revoked::Revoked,
            Ok(false) => Revoked::NoEndpoint,
            Err(e) => Revoked::Failed(e.to_string()),
        }
    }

    async fn followers_page(
        &self,
        account: &Account,
        creds: &Credentials,
        relation: Relation,
        cursor: Option<&str>,
    ) -> Result<FollowerPage, PlatformError> {
        #[derive(Deserialize)]
        struct Page {
            #[serde(alias = "follows", default)]
            followers: Vec<ActorRef>,
            cursor: Option<String>,
        }
        let pds = self.pds(account)?;
        let nsid = match relation {
            Relation::Followers => "app.bsky.graph.getFollowers",
            Relation::Follows => "app.bsky.graph.getFollows",
        };
        let url = Self::xrpc(&pds, nsid);
        let limit = FOLLOWERS_PAGE_SIZE.to_string();
        let a = self
            .call(&pds, account, creds, "followers", false, |c| {
                let mut q = vec![
                    ("actor", account.platform_account_id.as_str()),
                    ("limit", limit.as_str()),
                ];
                if let Some(cursor) = cursor {
                    q.push(("cursor", cursor));
                }
                c.get(&url).query(&q)
            })
            .await?;
        if !a.ok() {
            return Err(a.classify());
        }
        let page: Page = a.json(false)?;
        // An empty page with a cursor would page forever.
        let next_cursor = page
            .cursor
            .filter(|c| !c.is_empty() && !page.followers.is_empty() && Some(c.as_str()) != cursor);
        Ok(FollowerPage {
            accounts: page
                .followers
                .into_iter()
                .map(|a| FollowerAccount {
                    platform_account_id: a.did,
                    handle: a.handle,
                })
                .collect(),
            next_cursor,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_keys_are_stable_valid_tids_in_the_share_ids_millisecond() {
        let id = format!("shr_{}", Uuid::now_v7().simple());
        let k = record_key(&id);
        assert_eq!(k, record_key(&id));
        assert!(is_valid_tid(&k), "{k}");
        assert_ne!(k, record_key(&format!("shr_{}", Uuid::now_v7().simple())));
        assert!(is_valid_tid(&record_key("not-a-share-id")));
        // Decoding the TID gives back the UUIDv7's millisecond.
        let v = k.bytes().fold(0u64, |acc, b| {
            (acc << 5) | S32.iter().position(|&c| c == b).unwrap() as u64
        });
        let uuid = Uuid::try_parse(id.strip_prefix("shr_").unwrap()).unwrap();
        let (secs, nanos) = uuid.get_timestamp().unwrap().to_unix();
        assert_eq!((v >> 10) / 1000, secs * 1000 + u64::from(nanos / 1_000_000));
    }

    #[test]
    fn tid_encoding_matches_the_reference() {
        // @atproto/common-web: TID.fromTime(1_700_000_000_000_000, 0)
        assert_eq!(tid_encode(1_700_000_000_000_000 << 10), "3ke6kg3wk2222");
        assert!(!is_valid_tid("kke6kg3wk2222"));
        assert!(!is_valid_tid("3ke6kg3wk222"));
    }

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

    #[test]
    fn auth_mode_prefers_oauth_tokens_and_never_mixes() {
        let acct = |auth: Option<&str>| Account {
            platform_account_id: "did:plc:x".into(),
            handle: "x.test".into(),
            extras: auth
                .map(|a| [("auth".to_owned(), Value::from(a))].into_iter().collect())
                .unwrap_or_default(),
        };
        let pw = Credentials {
            access_token: Some("app-pass".into()),
            ..Default::default()
        };
        let oauth = Credentials {
            access_token: Some("t".into()),
            dpop_key: Some("k".into()),
            ..Default::default()
        };
        assert!(matches!(
            auth_mode(&acct(None), &pw),
            Ok(Auth::AppPassword(_))
        ));
        assert!(matches!(auth_mode(&acct(None), &oauth), Ok(Auth::OAuth)));
        assert!(matches!(
            auth_mode(&acct(Some("oauth")), &pw),
            Ok(Auth::OAuth)
        ));
        assert!(matches!(
            auth_mode(&acct(Some("app_password")), &oauth),
            Ok(Auth::AppPassword(_))
        ));
        assert!(matches!(
            auth_mode(&acct(Some("app_password")), &Credentials::default()),
            Err(PlatformError::Unauthorized { .. })
        ));
    }

    #[test]
    fn the_session_cache_is_bounded_and_shows_no_tokens() {
        let cache = SessionCache::new(2);
        let s = |t: &str| Session {
            access: t.to_owned().into(),
            refresh: t.to_owned().into(),
            password_fingerprint: [0; 32],
            created: Instant::now(),
        };
        cache.put("a".into(), s("secret-a"));
        cache.put("b".into(), s("secret-b"));
        cache.put("c".into(), s("secret-c"));
        assert!(cache.get("a", &[0; 32]).is_none());
        assert!(cache.get("c", &[0; 32]).is_some());
        assert!(
            cache.get("c", &[1; 32]).is_none(),
            "another password misses"
        );
        let shown = format!("{cache:?}");
        assert!(!shown.contains("secret"), "{shown}");
    }

    #[test]
    fn rate_limit_reset_is_epoch_seconds() {
        let now = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut h = HeaderMap::new();
        h.insert(
            "ratelimit-reset",
            (now.timestamp() + 40).to_string().parse().unwrap(),
        );
        assert_eq!(rate_limit_wait(&h, now), Some(Duration::from_secs(40)));
        h.insert("retry-after", "5".parse().unwrap());
        assert_eq!(rate_limit_wait(&h, now), Some(Duration::from_secs(5)));
    }
}
