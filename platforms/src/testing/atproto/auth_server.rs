//! The network's OAuth authorization server, on an origin of its own as an entryway has it:
//! metadata, PAR, the authorization page (which approves at once), the token endpoint (code and
//! refresh grants, DPoP-bound, refresh tokens rotating, a replayed one ending the session) and
//! revocation. Clients authenticate with assertions checked against the JWKS fetched from their
//! `client_id` URL, as the reference server does, or are the loopback client with none.

use std::collections::HashMap;

use axum::{
    body::Bytes,
    extract::{Query, State},
    http::{HeaderMap, Method, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use super::world::{
    ACCESS_LIFETIME_SECS, DID, DpopFail, Par, Session, Shared, World, b64d, form, now, oauth_error,
    sha_b64, verify_jws, with_nonce,
};

pub(super) async fn as_metadata(State(w): State<Shared>) -> Response {
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

pub(super) async fn par(State(w): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
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
pub(super) async fn authorize(
    State(w): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
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

pub(super) async fn token(State(w): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
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
pub(super) async fn revoke(State(w): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
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
