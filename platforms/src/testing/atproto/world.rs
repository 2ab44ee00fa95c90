//! What the local AT Protocol network holds and has seen ([`World`]), the checks both of its
//! servers make (ES256 JWS, DPoP proofs and their nonces), and the error bodies they answer with.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

use axum::{
    http::{HeaderMap, Method, StatusCode},
    response::{IntoResponse, Response},
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The account that signs in (OAuth) or logs in with its app password.
pub const DID: &str = "did:plc:ewvi7nxzyoun6zhxrhs64oiz";
pub const HANDLE: &str = "alice.test";
/// Another account the network knows (its handle is `other.test`).
pub const OTHER_DID: &str = "did:plc:otherotherotherotherothe";
/// An account that can be mentioned: `@friend.test` resolves to it.
pub const FRIEND_DID: &str = "did:plc:friendfriendfriendfriend";
pub const ACCESS_LIFETIME_SECS: i64 = 3600;
/// The app password of [`DID`].
pub const APP_PASSWORD: &str = "abcd-efgh-ijkl-mnop";

#[derive(Clone)]
pub(super) struct Par {
    pub(super) client_id: String,
    pub(super) redirect_uri: String,
    pub(super) state: String,
    pub(super) code_challenge: String,
    pub(super) jkt: String,
}

pub(super) struct Session {
    pub(super) jkt: String,
    pub(super) sub: String,
    pub(super) client_id: String,
    pub(super) alive: bool,
}

/// What the network holds and has seen.
#[derive(Default)]
pub struct World {
    pub pds: String,
    pub issuer: String,
    pub(super) as_nonce: String,
    pub(super) pds_nonce: String,
    pub(super) nonce_counter: usize,
    pub as_nonce_challenges: usize,
    pub pds_nonce_challenges: usize,
    pub(super) pars: HashMap<String, Par>,
    pub(super) codes: HashMap<String, Par>,
    pub(super) sessions: Vec<Session>,
    /// token → session index
    pub(super) access: HashMap<String, usize>,
    /// token → (session index, spent)
    pub(super) refresh: HashMap<String, (usize, bool)>,
    pub(super) jtis: HashSet<String>,
    pub(super) counter: usize,
    pub assertions_checked: usize,
    pub last_par: HashMap<String, String>,
    pub refreshes: usize,
    pub replays: usize,
    pub revocations: usize,
    /// Issue tokens for this DID instead of the one that signed in.
    pub sub_override: Option<String>,
    /// Put this `iss` on the redirect instead of the real one.
    pub iss_override: Option<String>,
    /// The next resource call answers as an expired token would.
    pub expire_next_access: bool,
    /// The PDS's protected-resource document names this `resource` instead of the PDS itself.
    pub resource_override: Option<String>,
    /// Grant this scope instead of the requested one (from the next token answer on).
    pub granted_scope: Option<String>,
    /// The `kid` of every client assertion checked, in order.
    pub assertion_kids: Vec<String>,
    /// Records by key, as the PDS stores them.
    pub records: HashMap<String, Value>,
    /// Every `createRecord` body, accepted or not.
    pub create_bodies: Vec<Value>,
    /// App passwords by DID: `createSession` with one opens an app-password (Bearer) session.
    /// [`DID`] has [`APP_PASSWORD`] from the start.
    pub app_passwords: HashMap<String, String>,
    /// App-password sessions: live access tokens, then live refresh tokens.
    pub password_access: Vec<String>,
    pub password_refresh: Vec<String>,
    /// The account each app-password token belongs to.
    pub(super) password_dids: HashMap<String, String>,
    /// `createSession` calls, answered or refused.
    pub create_sessions: usize,
    /// `createSession` calls that succeeded.
    pub app_password_logins: usize,
    pub refresh_sessions: usize,
    /// Blobs uploaded: (MIME type, size).
    pub blobs: Vec<(String, usize)>,
    /// Blobs the PDS holds, by their reference: (MIME type, bytes).
    pub blob_store: HashMap<String, (String, Vec<u8>)>,
    /// Answers the next create with this status and body, once.
    pub fail_next_create: Option<(StatusCode, Value)>,
    /// Answers the next create with a 429 (`Retry-After: 42`), once.
    pub rate_limit_next: bool,
    /// The account is taken down: logins are refused.
    pub taken_down: bool,
    /// Requests of this method wait for a permit (a slow login the test lets go of).
    pub hold: Option<(&'static str, Arc<tokio::sync::Semaphore>)>,
    /// Pages fetched from the web server's `/counted-missing` (each answered 404: no card).
    pub page_hits: usize,
    /// App-password calls refused for an expired access token.
    pub expired_answers: usize,
}

pub(super) type Shared = Arc<Mutex<World>>;

pub(super) fn b64d(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s).ok()
}

pub(super) fn sha_b64(s: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(s.as_bytes()))
}

pub(super) fn thumbprint(jwk: &Value) -> String {
    sha_b64(&format!(
        r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
        jwk["x"].as_str().unwrap_or(""),
        jwk["y"].as_str().unwrap_or("")
    ))
}

/// Verifies a compact ES256 JWS with a P-256 JWK; answers (header, claims).
pub fn verify_jws(jws: &str, jwk: Option<&Value>) -> Result<(Value, Value), String> {
    let parts: Vec<&str> = jws.split('.').collect();
    if parts.len() != 3 {
        return Err("not a compact JWS".into());
    }
    let header: Value =
        serde_json::from_slice(&b64d(parts[0]).ok_or("bad header")?).map_err(|e| e.to_string())?;
    let claims: Value =
        serde_json::from_slice(&b64d(parts[1]).ok_or("bad claims")?).map_err(|e| e.to_string())?;
    if header["alg"] != "ES256" {
        return Err("alg is not ES256".into());
    }
    let jwk = jwk.unwrap_or(&header["jwk"]);
    if jwk.get("d").is_some() {
        return Err("a private key was sent".into());
    }
    let mut point = vec![4u8];
    for c in ["x", "y"] {
        point.extend(b64d(jwk[c].as_str().ok_or("no coordinate")?).ok_or("bad coordinate")?);
    }
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
        .verify(
            format!("{}.{}", parts[0], parts[1]).as_bytes(),
            &b64d(parts[2]).ok_or("bad signature encoding")?,
        )
        .map_err(|_| "bad signature".to_owned())?;
    Ok((header, claims))
}

pub(super) fn form(body: &[u8]) -> HashMap<String, String> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

pub(super) fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

pub(super) enum DpopFail {
    Nonce,
    Invalid(String),
}

impl World {
    pub(super) fn next(&mut self, prefix: &str) -> String {
        self.counter += 1;
        format!("{prefix}-{}", self.counter)
    }

    /// Both servers change their nonces (as they do every few minutes).
    pub fn rotate_nonces(&mut self) {
        self.nonce_counter += 1;
        self.as_nonce = format!("as-nonce-{}", self.nonce_counter);
        self.pds_nonce = format!("pds-nonce-{}", self.nonce_counter);
    }

    /// Checks a DPoP proof; answers the key's thumbprint.
    pub(super) fn check_dpop(
        &mut self,
        headers: &HeaderMap,
        method: &Method,
        htu: &str,
        nonce: &str,
        token: Option<&str>,
    ) -> Result<String, DpopFail> {
        let proof = headers
            .get("dpop")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| DpopFail::Invalid("DPoP proof required".into()))?;
        let (header, claims) = verify_jws(proof, None).map_err(DpopFail::Invalid)?;
        let bad = |why: &str| Err(DpopFail::Invalid(why.into()));
        if header["typ"] != "dpop+jwt" {
            return bad("typ must be dpop+jwt");
        }
        if claims["htm"] != method.as_str() {
            return bad("htm mismatch");
        }
        if claims["htu"] != htu {
            return bad("htu mismatch");
        }
        if (claims["iat"].as_i64().unwrap_or(0) - now()).abs() > 60 {
            return bad("iat out of range");
        }
        let jti = claims["jti"].as_str().unwrap_or("").to_owned();
        if jti.is_empty() || !self.jtis.insert(jti) {
            return bad("jti replayed");
        }
        if claims.get("iss").is_some() {
            return bad("iss must not be sent");
        }
        match token {
            Some(t) if claims["ath"] != sha_b64(t) => return bad("ath mismatch"),
            None if claims.get("ath").is_some() => return bad("unexpected ath"),
            _ => {}
        }
        if claims["nonce"] != nonce {
            return Err(DpopFail::Nonce);
        }
        Ok(thumbprint(&header["jwk"]))
    }
}

pub(super) fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        axum::Json(json!({ "error": error, "error_description": description })),
    )
        .into_response()
}

pub(super) fn xrpc_error(status: StatusCode, error: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({ "error": error, "message": message })),
    )
        .into_response()
}

pub(super) fn with_nonce(nonce: &str, res: Response) -> Response {
    let mut res = res;
    res.headers_mut()
        .insert("dpop-nonce", nonce.parse().unwrap());
    res
}
