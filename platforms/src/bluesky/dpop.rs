//! DPoP (RFC 9449) as the AT Protocol uses it: a proof per request signed by the session's key,
//! with `htm`, `htu` (no query or fragment), `iat`, a fresh `jti`, `ath` on resource requests,
//! and the server's nonce; the `use_dpop_nonce` challenge (400 JSON from an authorization server,
//! 401 `WWW-Authenticate: DPoP error="use_dpop_nonce"` from a PDS) answered by one retry.
//!
//! Nonces are remembered per server origin in one process-wide map: the connect flow, the refresh
//! and the platform calls all talk to the same servers, and a nonce learned by one saves the
//! others a round trip. Servers rotate nonces every few minutes and accept slightly stale ones, so
//! losing the map (a restart) costs one retry per server, nothing more.

use std::{
    collections::HashMap,
    sync::{LazyLock, Mutex},
    time::{Duration, Instant},
};

use chrono::Utc;
use reqwest::{
    Client, RequestBuilder, StatusCode,
    header::{AUTHORIZATION, HeaderValue, WWW_AUTHENTICATE},
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use url::Url;

use super::{
    jwt::{EsKey, random_token, sha256_b64},
    xrpc::{Answer, answer},
};
use crate::{error::PlatformError, http, kind::PlatformKind};

/// Origins remembered at most; beyond this the stalest is dropped.
const NONCE_CAPACITY: usize = 4096;
/// A nonce older than this is not sent (servers rotate within 5 minutes).
const NONCE_MAX_AGE: Duration = Duration::from_secs(10 * 60);

struct Nonces {
    by_origin: Mutex<HashMap<String, (String, Instant)>>,
}

static NONCES: LazyLock<Nonces> = LazyLock::new(|| Nonces {
    by_origin: Mutex::new(HashMap::new()),
});

impl Nonces {
    fn get(&self, origin: &str) -> Option<String> {
        let map = self.by_origin.lock().unwrap_or_else(|p| p.into_inner());
        map.get(origin)
            .filter(|(_, at)| at.elapsed() < NONCE_MAX_AGE)
            .map(|(n, _)| n.clone())
    }

    fn put(&self, origin: &str, nonce: &str) {
        let mut map = self.by_origin.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= NONCE_CAPACITY && !map.contains_key(origin) {
            let stalest = map
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(k, _)| k.clone());
            if let Some(k) = stalest {
                map.remove(&k);
            }
        }
        map.insert(origin.to_owned(), (nonce.to_owned(), Instant::now()));
    }
}

/// A DPoP proof for one request.
pub fn proof(
    key: &EsKey,
    method: &str,
    url: &Url,
    nonce: Option<&str>,
    access_token: Option<&SecretString>,
) -> String {
    let mut htu = url.clone();
    htu.set_query(None);
    htu.set_fragment(None);
    let mut claims = json!({
        "jti": random_token(16),
        "htm": method,
        "htu": htu.as_str(),
        "iat": Utc::now().timestamp(),
    });
    if let Some(n) = nonce {
        claims["nonce"] = n.into();
    }
    if let Some(t) = access_token {
        claims["ath"] = sha256_b64(t.expose_secret()).into();
    }
    key.sign(
        json!({ "typ": "dpop+jwt", "jwk": key.public_jwk() }),
        &claims,
    )
}

impl Answer {
    /// The server wants (another) nonce: RFC 9449 §8 (authorization server) and §9 (resource).
    fn wants_nonce(&self) -> bool {
        let in_header = self
            .headers
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.contains("use_dpop_nonce"));
        matches!(
            self.status,
            StatusCode::BAD_REQUEST | StatusCode::UNAUTHORIZED
        ) && (in_header || self.oauth_error() == "use_dpop_nonce")
    }

    /// The `error` of an OAuth error body (`{"error": "invalid_grant", ...}`), or "".
    pub(super) fn oauth_error(&self) -> String {
        self.error_name()
    }
}

/// Sends a request with a DPoP proof (and `Authorization: DPoP <token>` when `access_token` is
/// given), answering a nonce challenge once. `build` is called for every attempt, so whatever it
/// signs (a client assertion) is fresh each time.
pub(super) async fn send(
    http_client: &Client,
    key: &EsKey,
    access_token: Option<&SecretString>,
    operation: &'static str,
    creates: bool,
    build: impl Fn(&Client) -> RequestBuilder,
) -> Result<Answer, PlatformError> {
    let mut sent_nonce: Option<String> = None;
    for attempt in 0..2 {
        let (client, request) = build(http_client).build_split();
        let mut request = request.map_err(|e| PlatformError::Rejected {
            status: 0,
            reason: format!("request could not be built: {e}"),
        })?;
        let origin = request.url().origin().ascii_serialization();
        let nonce = NONCES.get(&origin);
        let dpop = proof(
            key,
            request.method().as_str(),
            request.url(),
            nonce.as_deref(),
            access_token,
        );
        let headers = request.headers_mut();
        headers.insert("dpop", header(&dpop)?);
        if let Some(t) = access_token {
            headers.insert(
                AUTHORIZATION,
                header(&format!("DPoP {}", t.expose_secret()))?,
            );
        }
        let res = http::send(
            PlatformKind::Bluesky,
            operation,
            creates,
            RequestBuilder::from_parts(client, request),
        )
        .await?;
        let a = answer(res, creates).await?;
        let fresh = a
            .headers
            .get("dpop-nonce")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if let Some(n) = &fresh {
            NONCES.put(&origin, n);
        }
        sent_nonce = nonce;
        // Retry only when the server gave a nonce other than the one just refused.
        if attempt == 0 && a.wants_nonce() && fresh.is_some() && fresh != sent_nonce {
            continue;
        }
        return Ok(a);
    }
    unreachable!("the loop returns on its second attempt (nonce {sent_nonce:?})")
}

fn header(v: &str) -> Result<HeaderValue, PlatformError> {
    let mut h = HeaderValue::from_str(v).map_err(|_| PlatformError::Rejected {
        status: 0,
        reason: "a token is not a valid header value".into(),
    })?;
    h.set_sensitive(true);
    Ok(h)
}

#[cfg(test)]
mod tests {
    use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
    use serde_json::Value;

    use super::*;

    fn claims(jws: &str) -> (Value, Value) {
        let mut parts = jws.split('.');
        let mut part = || {
            serde_json::from_slice::<Value>(&URL_SAFE_NO_PAD.decode(parts.next().unwrap()).unwrap())
                .unwrap()
        };
        (part(), part())
    }

    #[test]
    fn proofs_carry_htm_htu_without_query_nonce_and_ath() {
        let key = EsKey::generate();
        let url =
            Url::parse("https://pds.example/xrpc/app.bsky.graph.getFollowers?actor=x#f").unwrap();
        let token = SecretString::from("tok");
        let (header, c) = claims(&proof(&key, "GET", &url, Some("n1"), Some(&token)));
        assert_eq!(header["typ"], "dpop+jwt");
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["jwk"], key.public_jwk());
        assert!(header["jwk"].get("d").is_none());
        assert_eq!(c["htm"], "GET");
        assert_eq!(
            c["htu"],
            "https://pds.example/xrpc/app.bsky.graph.getFollowers"
        );
        assert_eq!(c["nonce"], "n1");
        assert_eq!(c["ath"], sha256_b64("tok"));
        assert!(
            c.get("iss").is_none(),
            "the AT Protocol says not to send iss"
        );
        let (_, again) = claims(&proof(&key, "GET", &url, None, None));
        assert_ne!(c["jti"], again["jti"]);
        assert!(again.get("nonce").is_none() && again.get("ath").is_none());
    }

    #[test]
    fn nonces_are_kept_per_origin() {
        NONCES.put("https://a.example", "na");
        NONCES.put("https://b.example", "nb");
        assert_eq!(NONCES.get("https://a.example").as_deref(), Some("na"));
        NONCES.put("https://a.example", "na2");
        assert_eq!(NONCES.get("https://a.example").as_deref(), Some("na2"));
        assert_eq!(NONCES.get("https://c.example"), None);
    }
}
