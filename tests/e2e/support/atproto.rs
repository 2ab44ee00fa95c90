//! A local AT Protocol network answering as the specs and the reference servers do: a PDS (which
//! also serves the PLC directory and `resolveHandle`) and its OAuth authorization server on a
//! second origin, as an entryway deployment has them.
//!
//! The authorization server requires PAR, PKCE S256 and DPoP with server nonces (the first PAR
//! and token request always get `400 use_dpop_nonce`), checks client assertions against the
//! client's published JWKS (fetched from its `client_id` URL, as the reference server does) or
//! accepts the loopback client id with no authentication, binds codes and tokens to the DPoP key,
//! rotates refresh tokens and kills the whole session when a spent one is replayed. The PDS
//! demands `Authorization: DPoP` with a proof carrying `ath` and its own nonce (`401
//! WWW-Authenticate: DPoP error="use_dpop_nonce"`).
//!
//! Shared by the jobs crate's Bluesky tests (`#[path]` include) and the end-to-end suite.

#![allow(dead_code)]

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    body::Bytes,
    extract::{Path, Query, State},
    http::{HeaderMap, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub const DID: &str = "did:plc:ewvi7nxzyoun6zhxrhs64oiz";
pub const HANDLE: &str = "alice.test";
pub const OTHER_DID: &str = "did:plc:otherotherotherotherothe";
pub const ACCESS_LIFETIME_SECS: i64 = 3600;

#[derive(Clone)]
struct Par {
    client_id: String,
    redirect_uri: String,
    state: String,
    code_challenge: String,
    jkt: String,
    login_hint: Option<String>,
    scope: String,
}

struct Session {
    jkt: String,
    sub: String,
    client_id: String,
    alive: bool,
}

/// What the network holds and has seen.
#[derive(Default)]
pub struct World {
    pub pds: String,
    pub issuer: String,
    as_nonce: String,
    pds_nonce: String,
    nonce_counter: usize,
    pub as_nonce_challenges: usize,
    pub pds_nonce_challenges: usize,
    pars: HashMap<String, Par>,
    codes: HashMap<String, Par>,
    sessions: Vec<Session>,
    /// token → session index
    access: HashMap<String, usize>,
    /// token → (session index, spent)
    refresh: HashMap<String, (usize, bool)>,
    jtis: HashSet<String>,
    counter: usize,
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
    pub records: HashMap<String, Value>,
    pub create_bodies: Vec<Value>,
    /// App passwords by DID: `createSession` with one opens a legacy (Bearer) session.
    pub app_passwords: HashMap<String, String>,
    /// `createSession` calls that succeeded.
    pub app_password_logins: usize,
    /// Legacy access tokens → DID.
    legacy: HashMap<String, String>,
}

type Shared = Arc<Mutex<World>>;

/// The running network.
pub struct FakeAtproto {
    pub pds: String,
    pub issuer: String,
    pub world: Shared,
}

fn b64d(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s).ok()
}

fn sha_b64(s: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(s.as_bytes()))
}

fn thumbprint(jwk: &Value) -> String {
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

fn form(body: &[u8]) -> HashMap<String, String> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

enum DpopFail {
    Nonce,
    Invalid(String),
}

impl World {
    fn next(&mut self, prefix: &str) -> String {
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
    fn check_dpop(
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

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        axum::Json(json!({ "error": error, "error_description": description })),
    )
        .into_response()
}

fn xrpc_error(status: StatusCode, error: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({ "error": error, "message": message })),
    )
        .into_response()
}

fn with_nonce(nonce: &str, res: Response) -> Response {
    let mut res = res;
    res.headers_mut()
        .insert("dpop-nonce", nonce.parse().unwrap());
    res
}

// ---------------------------------------------------------------------------------------------
// The authorization server
// ---------------------------------------------------------------------------------------------

async fn as_metadata(State(w): State<Shared>) -> Response {
    let issuer = w.lock().unwrap().issuer.clone();
    axum::Json(json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/oauth/authorize"),
        "token_endpoint": format!("{issuer}/oauth/token"),
        "pushed_authorization_request_endpoint": format!("{issuer}/oauth/par"),
        "revocation_endpoint": format!("{issuer}/oauth/revoke"),
        "require_pushed_authorization_requests": true,
        "authorization_response_iss_parameter_supported": true,
        "client_id_metadata_document_supported": true,
        "scopes_supported": ["atproto", "transition:generic", "transition:chat.bsky"],
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "dpop_signing_alg_values_supported": ["ES256"],
        "token_endpoint_auth_methods_supported": ["none", "private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["ES256"],
    }))
    .into_response()
}

/// The client's metadata as the authorization server sees it: fetched from its URL, or derived
/// from a loopback client id.
async fn client_metadata(client_id: &str) -> Result<Value, String> {
    if let Some(query) = client_id.strip_prefix("http://localhost") {
        let url =
            url::Url::parse(&format!("http://localhost/{query}")).map_err(|e| e.to_string())?;
        let redirects: Vec<String> = url
            .query_pairs()
            .filter(|(k, _)| k == "redirect_uri")
            .map(|(_, v)| v.into_owned())
            .collect();
        return Ok(json!({
            "client_id": client_id,
            "redirect_uris": redirects,
            "token_endpoint_auth_method": "none",
        }));
    }
    let http = reqwest::Client::new();
    let res = http
        .get(client_id)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if res.status() != 200 {
        return Err(format!("client metadata answered {}", res.status()));
    }
    let mut meta: Value = res.json().await.map_err(|e| e.to_string())?;
    if meta["client_id"] != client_id {
        return Err("client_id in the document differs from its URL".into());
    }
    if let Some(uri) = meta["jwks_uri"].as_str() {
        let jwks: Value = http
            .get(uri)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        meta["jwks"] = jwks;
    }
    Ok(meta)
}

/// Client authentication as the reference server does it; a refusal is `401 invalid_client`.
fn authenticate(w: &mut World, meta: &Value, form: &HashMap<String, String>) -> Result<(), String> {
    let refuse = |why: &str| Err(why.to_owned());
    let assertion = form.get("client_assertion");
    if meta["token_endpoint_auth_method"] == "none" {
        return match assertion {
            Some(_) => refuse("a public client must not authenticate"),
            None => Ok(()),
        };
    }
    let Some(assertion) = assertion else {
        return refuse("client authentication required");
    };
    if form.get("client_assertion_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    {
        return refuse("bad client_assertion_type");
    }
    let header: Value = assertion
        .split('.')
        .next()
        .and_then(b64d)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    let kid = header["kid"].as_str().unwrap_or("");
    let Some(jwk) = meta["jwks"]["keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["kid"] == kid))
    else {
        return refuse("unknown kid");
    };
    let claims = match verify_jws(assertion, Some(jwk)) {
        Ok((_, c)) => c,
        Err(e) => return refuse(&e),
    };
    let client_id = meta["client_id"].as_str().unwrap_or("");
    if claims["iss"] != client_id || claims["sub"] != client_id {
        return refuse("iss and sub must be the client_id");
    }
    if claims["aud"] != w.issuer.as_str() {
        return refuse("aud must be the issuer");
    }
    let (iat, exp) = (
        claims["iat"].as_i64().unwrap_or(0),
        claims["exp"].as_i64().unwrap_or(0),
    );
    if exp < now() || now() - iat > 60 {
        return refuse("assertion expired");
    }
    let jti = claims["jti"].as_str().unwrap_or("").to_owned();
    if jti.is_empty() || !w.jtis.insert(format!("assertion:{jti}")) {
        return refuse("assertion replayed");
    }
    w.assertions_checked += 1;
    w.assertion_kids.push(kid.to_owned());
    Ok(())
}

async fn par(State(w): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let form = form(&body);
    let client_id = form.get("client_id").cloned().unwrap_or_default();
    let meta = match client_metadata(&client_id).await {
        Ok(m) => m,
        Err(e) => return oauth_error(StatusCode::BAD_REQUEST, "invalid_client", &e),
    };
    let mut w = w.lock().unwrap();
    let htu = format!("{}/oauth/par", w.issuer);
    let nonce = w.as_nonce.clone();
    let jkt = match w.check_dpop(&headers, &Method::POST, &htu, &nonce, None) {
        Ok(jkt) => jkt,
        Err(DpopFail::Nonce) => {
            w.as_nonce_challenges += 1;
            return with_nonce(
                &nonce,
                oauth_error(StatusCode::BAD_REQUEST, "use_dpop_nonce", "nonce required"),
            );
        }
        Err(DpopFail::Invalid(e)) => {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_dpop_proof", &e);
        }
    };
    if let Err(why) = authenticate(&mut w, &meta, &form) {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", &why);
    }
    let get = |k: &str| form.get(k).cloned().unwrap_or_default();
    let redirect_uri = get("redirect_uri");
    let allowed = meta["redirect_uris"]
        .as_array()
        .is_some_and(|r| r.iter().any(|u| u == redirect_uri.as_str()));
    if !allowed {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "redirect_uri not registered",
        );
    }
    if get("response_type") != "code"
        || get("code_challenge_method") != "S256"
        || get("code_challenge").len() != 43
        || get("state").is_empty()
        || !get("scope").split(' ').any(|s| s == "atproto")
    {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "bad authorization request",
        );
    }
    w.last_par = form.clone();
    let request_uri = format!("urn:ietf:params:oauth:request_uri:{}", w.next("req"));
    w.pars.insert(
        request_uri.clone(),
        Par {
            client_id,
            redirect_uri,
            state: get("state"),
            code_challenge: get("code_challenge"),
            jkt,
            login_hint: form.get("login_hint").cloned(),
            scope: get("scope"),
        },
    );
    with_nonce(
        &nonce,
        (
            StatusCode::CREATED,
            axum::Json(json!({ "request_uri": request_uri, "expires_in": 299 })),
        )
            .into_response(),
    )
}

/// The user signs in and approves at once.
async fn authorize(State(w): State<Shared>, Query(q): Query<HashMap<String, String>>) -> Response {
    let mut w = w.lock().unwrap();
    let request_uri = q.get("request_uri").cloned().unwrap_or_default();
    let Some(par) = w.pars.remove(&request_uri) else {
        return (StatusCode::BAD_REQUEST, "unknown request_uri").into_response();
    };
    if q.get("client_id") != Some(&par.client_id) {
        return (StatusCode::BAD_REQUEST, "client_id mismatch").into_response();
    }
    let code = w.next("code");
    let iss = w.iss_override.clone().unwrap_or_else(|| w.issuer.clone());
    let mut to = url::Url::parse(&par.redirect_uri).unwrap();
    to.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &par.state)
        .append_pair("iss", &iss);
    w.codes.insert(code, par);
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_string())]).into_response()
}

fn issue(w: &mut World, session: usize) -> Value {
    let access = w.next("at");
    let refresh = w.next("rt");
    w.access.insert(access.clone(), session);
    w.refresh.insert(refresh.clone(), (session, false));
    let scope = w
        .granted_scope
        .clone()
        .unwrap_or_else(|| "atproto transition:generic".to_owned());
    json!({
        "access_token": access,
        "token_type": "DPoP",
        "expires_in": ACCESS_LIFETIME_SECS,
        "refresh_token": refresh,
        "scope": scope,
        "sub": w.sessions[session].sub,
    })
}

async fn token(State(w): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let form = form(&body);
    let client_id = form.get("client_id").cloned().unwrap_or_default();
    let meta = match client_metadata(&client_id).await {
        Ok(m) => m,
        Err(e) => return oauth_error(StatusCode::BAD_REQUEST, "invalid_client", &e),
    };
    let mut w = w.lock().unwrap();
    let htu = format!("{}/oauth/token", w.issuer);
    let nonce = w.as_nonce.clone();
    let jkt = match w.check_dpop(&headers, &Method::POST, &htu, &nonce, None) {
        Ok(jkt) => jkt,
        Err(DpopFail::Nonce) => {
            w.as_nonce_challenges += 1;
            return with_nonce(
                &nonce,
                oauth_error(StatusCode::BAD_REQUEST, "use_dpop_nonce", "nonce required"),
            );
        }
        Err(DpopFail::Invalid(e)) => {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_dpop_proof", &e);
        }
    };
    if let Err(why) = authenticate(&mut w, &meta, &form) {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", &why);
    }
    let get = |k: &str| form.get(k).cloned().unwrap_or_default();
    let answer = match get("grant_type").as_str() {
        "authorization_code" => {
            let Some(par) = w.codes.remove(&get("code")) else {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "unknown code");
            };
            if par.client_id != client_id || par.redirect_uri != get("redirect_uri") {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "client mismatch");
            }
            if sha_b64(&get("code_verifier")) != par.code_challenge {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "PKCE failed");
            }
            if par.jkt != jkt {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_dpop_key",
                    "DPoP key mismatch",
                );
            }
            let sub = w.sub_override.clone().unwrap_or_else(|| DID.to_owned());
            w.sessions.push(Session {
                jkt,
                sub,
                client_id,
                alive: true,
            });
            let session = w.sessions.len() - 1;
            issue(&mut w, session)
        }
        "refresh_token" => {
            let Some((session, spent)) = w.refresh.get(&get("refresh_token")).copied() else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "unknown refresh token",
                );
            };
            if spent {
                // The reference server deletes the whole session on a replay.
                w.replays += 1;
                w.sessions[session].alive = false;
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "refresh token replayed",
                );
            }
            let s = &w.sessions[session];
            if !s.alive {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "session revoked");
            }
            if s.jkt != jkt || s.client_id != client_id {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "session binding mismatch",
                );
            }
            w.refresh.insert(get("refresh_token"), (session, true));
            w.refreshes += 1;
            issue(&mut w, session)
        }
        _ => return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type", "no"),
    };
    with_nonce(&nonce, axum::Json(answer).into_response())
}

/// RFC 7009 with DPoP and client authentication: revoking a refresh token ends its session.
async fn revoke(State(w): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let form = form(&body);
    let client_id = form.get("client_id").cloned().unwrap_or_default();
    let meta = match client_metadata(&client_id).await {
        Ok(m) => m,
        Err(e) => return oauth_error(StatusCode::BAD_REQUEST, "invalid_client", &e),
    };
    let mut w = w.lock().unwrap();
    let htu = format!("{}/oauth/revoke", w.issuer);
    let nonce = w.as_nonce.clone();
    match w.check_dpop(&headers, &Method::POST, &htu, &nonce, None) {
        Ok(_) => {}
        Err(DpopFail::Nonce) => {
            w.as_nonce_challenges += 1;
            return with_nonce(
                &nonce,
                oauth_error(StatusCode::BAD_REQUEST, "use_dpop_nonce", "nonce required"),
            );
        }
        Err(DpopFail::Invalid(e)) => {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_dpop_proof", &e);
        }
    }
    if let Err(why) = authenticate(&mut w, &meta, &form) {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", &why);
    }
    let token = form.get("token").cloned().unwrap_or_default();
    if let Some((session, _)) = w.refresh.get(&token).copied() {
        w.sessions[session].alive = false;
        w.revocations += 1;
    }
    // RFC 7009 §2.2: 200 whether or not the token was known.
    with_nonce(&nonce, StatusCode::OK.into_response())
}

// ---------------------------------------------------------------------------------------------
// The PDS (with the PLC directory and handle resolution)
// ---------------------------------------------------------------------------------------------

async fn protected_resource(State(w): State<Shared>) -> Response {
    let w = w.lock().unwrap();
    let resource = w.resource_override.as_ref().unwrap_or(&w.pds);
    axum::Json(json!({ "resource": resource, "authorization_servers": [w.issuer] })).into_response()
}

async fn plc(State(w): State<Shared>, Path(did): Path<String>) -> Response {
    let w = w.lock().unwrap();
    let handle = match did.as_str() {
        DID => HANDLE,
        OTHER_DID => "other.test",
        _ => {
            return (
                StatusCode::NOT_FOUND,
                axum::Json(json!({ "message": "DID not registered" })),
            )
                .into_response();
        }
    };
    axum::Json(json!({
        "@context": ["https://www.w3.org/ns/did/v1"],
        "id": did,
        "alsoKnownAs": [format!("at://{handle}")],
        "verificationMethod": [],
        "service": [{ "id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": w.pds }],
    }))
    .into_response()
}

async fn xrpc(
    State(w): State<Shared>,
    Path(nsid): Path<String>,
    method: Method,
    uri: Uri,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut w = w.lock().unwrap();
    match nsid.as_str() {
        "com.atproto.identity.resolveHandle" => {
            return match q.get("handle").map(String::as_str) {
                Some(HANDLE) => axum::Json(json!({ "did": DID })).into_response(),
                Some("other.test") => axum::Json(json!({ "did": OTHER_DID })).into_response(),
                _ => xrpc_error(
                    StatusCode::BAD_REQUEST,
                    "InvalidRequest",
                    "Unable to resolve handle",
                ),
            };
        }
        "com.atproto.repo.getRecord" => {
            let rkey = q.get("rkey").cloned().unwrap_or_default();
            return match w.records.get(&rkey) {
                Some(v) => axum::Json(json!({
                    "uri": format!("at://{DID}/app.bsky.feed.post/{rkey}"),
                    "cid": "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm",
                    "value": v,
                }))
                .into_response(),
                None => xrpc_error(
                    StatusCode::BAD_REQUEST,
                    "RecordNotFound",
                    "Could not locate record",
                ),
            };
        }
        // The legacy login of an app password (no DPoP; Bearer tokens after it).
        "com.atproto.server.createSession" => {
            let b: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let did = b["identifier"].as_str().unwrap_or("").to_owned();
            if w.app_passwords.get(&did).map(String::as_str) != b["password"].as_str() {
                return xrpc_error(
                    StatusCode::UNAUTHORIZED,
                    "AuthenticationRequired",
                    "Invalid identifier or password",
                );
            }
            w.app_password_logins += 1;
            w.counter += 1;
            let access = format!("legacy-access-{}", w.counter);
            w.legacy.insert(access.clone(), did.clone());
            let handle = if did == DID { HANDLE } else { "other.test" };
            return axum::Json(json!({
                "accessJwt": access,
                "refreshJwt": format!("legacy-refresh-{}", w.counter),
                "did": did,
                "handle": handle,
            }))
            .into_response();
        }
        _ => {}
    }
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let legacy = auth
        .strip_prefix("Bearer ")
        .and_then(|t| w.legacy.get(t).cloned());
    let (sub, nonce) = match legacy {
        Some(did) => (did, None),
        None => match dpop_session(&mut w, auth, &headers, &method, &uri) {
            Ok((sub, nonce)) => (sub, Some(nonce)),
            Err(res) => return res,
        },
    };
    let handle = if sub == DID { HANDLE } else { "other.test" };
    let res = match nsid.as_str() {
        "com.atproto.server.getSession" => {
            axum::Json(json!({ "did": sub, "handle": handle, "active": true })).into_response()
        }
        "app.bsky.actor.getProfile" => {
            axum::Json(json!({ "did": sub, "handle": handle, "followersCount": 2 })).into_response()
        }
        "com.atproto.repo.createRecord" => {
            let b: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            w.create_bodies.push(b.clone());
            if b["repo"] != sub.as_str() {
                return xrpc_error(
                    StatusCode::BAD_REQUEST,
                    "InvalidRequest",
                    "repo is not the session's",
                );
            }
            let rkey = b["rkey"].as_str().unwrap_or("").to_owned();
            if w.records.contains_key(&rkey) {
                return xrpc_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalServerError",
                    "Internal Server Error",
                );
            }
            w.records.insert(rkey.clone(), b["record"].clone());
            axum::Json(json!({
                "uri": format!("at://{sub}/app.bsky.feed.post/{rkey}"),
                "cid": "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm",
                "validationStatus": "valid",
            }))
            .into_response()
        }
        "app.bsky.graph.getFollowers" | "app.bsky.graph.getFollows" => {
            let key = if nsid.ends_with("Followers") {
                "followers"
            } else {
                "follows"
            };
            axum::Json(json!({
                "subject": { "did": sub, "handle": handle },
                key: [{ "did": "did:plc:f1", "handle": "f1.test" }, { "did": "did:plc:f2", "handle": "f2.test" }],
            }))
            .into_response()
        }
        _ => xrpc_error(
            StatusCode::NOT_IMPLEMENTED,
            "MethodNotImplemented",
            "Method Not Implemented",
        ),
    };
    match nonce {
        Some(nonce) => with_nonce(&nonce, res),
        None => res,
    }
}

/// The DID of the live OAuth session a DPoP-bound call belongs to, and the PDS's nonce; or the
/// answer refusing the call.
#[allow(clippy::result_large_err)]
fn dpop_session(
    w: &mut World,
    auth: &str,
    headers: &HeaderMap,
    method: &Method,
    uri: &Uri,
) -> Result<(String, String), Response> {
    let Some(token) = auth.strip_prefix("DPoP ") else {
        // A DPoP-bound token sent as Bearer is refused (the reference PDS: 400 InvalidToken).
        return Err(xrpc_error(
            StatusCode::BAD_REQUEST,
            "InvalidToken",
            "DPoP token required",
        ));
    };
    let htu = format!("{}{}", w.pds, uri.path());
    let nonce = w.pds_nonce.clone();
    let jkt = match w.check_dpop(headers, method, &htu, &nonce, Some(token)) {
        Ok(jkt) => jkt,
        Err(DpopFail::Nonce) => {
            w.pds_nonce_challenges += 1;
            let mut res = with_nonce(
                &nonce,
                xrpc_error(
                    StatusCode::UNAUTHORIZED,
                    "use_dpop_nonce",
                    "DPoP nonce required",
                ),
            );
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                r#"DPoP error="use_dpop_nonce", error_description="Resource server requires nonce in DPoP proof""#
                    .parse()
                    .unwrap(),
            );
            return Err(res);
        }
        Err(DpopFail::Invalid(e)) => {
            return Err(xrpc_error(StatusCode::BAD_REQUEST, "InvalidDpopProof", &e));
        }
    };
    let session = w.access.get(token).copied();
    let live = session.filter(|s| w.sessions[*s].alive && w.sessions[*s].jkt == jkt);
    if w.expire_next_access || live.is_none() {
        w.expire_next_access = false;
        let mut res = with_nonce(
            &nonce,
            xrpc_error(
                StatusCode::UNAUTHORIZED,
                "InvalidToken",
                "\"exp\" claim timestamp check failed",
            ),
        );
        res.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            r#"DPoP error="invalid_token", error_description="\"exp\" claim timestamp check failed""#
                .parse()
                .unwrap(),
        );
        return Err(res);
    }
    Ok((w.sessions[live.unwrap()].sub.clone(), nonce))
}

impl FakeAtproto {
    pub async fn start() -> Self {
        let world: Shared = Arc::new(Mutex::new(World::default()));
        let pds_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let as_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pds = format!("http://{}", pds_listener.local_addr().unwrap());
        let issuer = format!("http://{}", as_listener.local_addr().unwrap());
        {
            let mut w = world.lock().unwrap();
            w.pds = pds.clone();
            w.issuer = issuer.clone();
            w.rotate_nonces();
        }
        let pds_app = Router::new()
            .route(
                "/.well-known/oauth-protected-resource",
                get(protected_resource),
            )
            .route("/xrpc/{nsid}", get(xrpc).post(xrpc))
            .route("/{did}", get(plc))
            .with_state(world.clone());
        let as_app = Router::new()
            .route("/.well-known/oauth-authorization-server", get(as_metadata))
            .route("/oauth/par", post(par))
            .route("/oauth/authorize", get(authorize))
            .route("/oauth/token", post(token))
            .route("/oauth/revoke", post(revoke))
            .with_state(world.clone());
        tokio::spawn(async move { axum::serve(pds_listener, pds_app).await.unwrap() });
        tokio::spawn(async move { axum::serve(as_listener, as_app).await.unwrap() });
        Self { pds, issuer, world }
    }

    pub fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.world.lock().unwrap()
    }
}
