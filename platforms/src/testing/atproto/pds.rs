//! The network's PDS, which also serves the PLC directory and `resolveHandle`. Its XRPC calls
//! take either credential the reference PDS takes: an app-password session
//! (`createSession`, `refreshSession`, `Authorization: Bearer`; an expired access token answers
//! `400 ExpiredToken`) or a DPoP-bound OAuth token (`Authorization: DPoP` with a proof carrying
//! `ath` and the PDS's nonce: `401 WWW-Authenticate: DPoP error="use_dpop_nonce"`). Records are
//! keyed by TID; a second create under a taken key fails with a bare 500, as the reference PDS
//! does.

use std::collections::HashMap;

use axum::{
    Json,
    body::Bytes,
    extract::{Path, Query, State},
    http::{HeaderMap, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use super::world::{
    DID, DpopFail, FRIEND_DID, HANDLE, OTHER_DID, Shared, World, with_nonce, xrpc_error,
};
use crate::bluesky::tid;

const CID: &str = "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm";

pub(super) async fn protected_resource(State(w): State<Shared>) -> Response {
    let w = w.lock().unwrap();
    let resource = w.resource_override.as_ref().unwrap_or(&w.pds);
    Json(json!({ "resource": resource, "authorization_servers": [w.issuer] })).into_response()
}

pub(super) async fn plc(State(w): State<Shared>, Path(did): Path<String>) -> Response {
    let w = w.lock().unwrap();
    let handle = match did.as_str() {
        DID => HANDLE,
        OTHER_DID => "other.test",
        _ => {
            return (
                StatusCode::NOT_FOUND,
                Json(json!({ "message": "DID not registered" })),
            )
                .into_response();
        }
    };
    Json(json!({
        "@context": ["https://www.w3.org/ns/did/v1"],
        "id": did,
        "alsoKnownAs": [format!("at://{handle}")],
        "verificationMethod": [],
        "service": [{ "id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": w.pds }],
    }))
    .into_response()
}

fn handle_of(did: &str) -> &'static str {
    if did == DID { HANDLE } else { "other.test" }
}

fn did_of(identifier: &str) -> &str {
    match identifier {
        HANDLE => DID,
        "other.test" => OTHER_DID,
        did => did,
    }
}

/// A new app-password session of `did`.
fn new_session(w: &mut World, did: &str) -> Value {
    let (a, r) = (w.next("access"), w.next("refresh"));
    w.password_access.push(a.clone());
    w.password_refresh.push(r.clone());
    w.password_dids.insert(a.clone(), did.to_owned());
    w.password_dids.insert(r.clone(), did.to_owned());
    json!({ "accessJwt": a, "refreshJwt": r, "did": did, "handle": handle_of(did), "active": true })
}

pub(super) async fn xrpc(
    State(shared): State<Shared>,
    Path(nsid): Path<String>,
    method: Method,
    uri: Uri,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let held = shared.lock().unwrap().hold.clone();
    if let Some((held_nsid, gate)) = held
        && held_nsid == nsid
    {
        let _permit = gate.acquire().await;
    }
    let mut w = shared.lock().unwrap();
    let json_body = || serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null);
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    match nsid.as_str() {
        "com.atproto.identity.resolveHandle" => {
            return match q.get("handle").map(String::as_str) {
                Some(HANDLE) => Json(json!({ "did": DID })).into_response(),
                Some("other.test") => Json(json!({ "did": OTHER_DID })).into_response(),
                Some("friend.test") => Json(json!({ "did": FRIEND_DID })).into_response(),
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
                Some(v)
                    if [DID, OTHER_DID]
                        .map(Some)
                        .contains(&q.get("repo").map(String::as_str)) =>
                {
                    Json(json!({
                        "uri": format!("at://{}/app.bsky.feed.post/{rkey}", q["repo"]),
                        "cid": CID,
                        "value": v,
                    }))
                    .into_response()
                }
                _ => xrpc_error(
                    StatusCode::BAD_REQUEST,
                    "RecordNotFound",
                    "Could not locate record",
                ),
            };
        }
        "com.atproto.server.createSession" => {
            w.create_sessions += 1;
            let b = json_body();
            if w.taken_down {
                return xrpc_error(
                    StatusCode::UNAUTHORIZED,
                    "AccountTakedown",
                    "Account has been taken down",
                );
            }
            let did = did_of(b["identifier"].as_str().unwrap_or_default()).to_owned();
            if w.app_passwords.get(&did).map(String::as_str) != b["password"].as_str() {
                return xrpc_error(
                    StatusCode::UNAUTHORIZED,
                    "AuthenticationRequired",
                    "Invalid identifier or password",
                );
            }
            w.app_password_logins += 1;
            return Json(new_session(&mut w, &did)).into_response();
        }
        "com.atproto.server.refreshSession" => {
            w.refresh_sessions += 1;
            return match bearer {
                Some(t) if w.password_refresh.contains(&t) => {
                    let did = w
                        .password_dids
                        .get(&t)
                        .cloned()
                        .unwrap_or_else(|| DID.into());
                    Json(new_session(&mut w, &did)).into_response()
                }
                _ => xrpc_error(StatusCode::BAD_REQUEST, "ExpiredToken", "Token has expired"),
            };
        }
        _ => {}
    }
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let (sub, nonce) = if let Some(token) = auth.strip_prefix("DPoP ") {
        match dpop_session(&mut w, &headers, &method, &uri, token) {
            Ok(sub) => (sub, Some(w.pds_nonce.clone())),
            Err(res) => return *res,
        }
    } else {
        let token = bearer.unwrap_or_default();
        if w.access.contains_key(&token) {
            // A DPoP-bound token sent as Bearer is refused (the reference PDS: 400 InvalidToken).
            return xrpc_error(
                StatusCode::BAD_REQUEST,
                "InvalidToken",
                "DPoP token required",
            );
        }
        if !w.password_access.contains(&token) {
            // The reference PDS answers an expired access JWT with 400 ExpiredToken.
            w.expired_answers += 1;
            return xrpc_error(StatusCode::BAD_REQUEST, "ExpiredToken", "Token has expired");
        }
        let did = w
            .password_dids
            .get(&token)
            .cloned()
            .unwrap_or_else(|| DID.into());
        (did, None)
    };
    let res = call(&mut w, &nsid, &q, &headers, &body, &sub);
    match nonce {
        Some(n) => with_nonce(&n, res),
        None => res,
    }
}

/// The account of a live OAuth session whose proof checks out, or the PDS's refusal.
fn dpop_session(
    w: &mut World,
    headers: &HeaderMap,
    method: &Method,
    uri: &Uri,
    token: &str,
) -> Result<String, Box<Response>> {
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
            return Err(Box::new(res));
        }
        Err(DpopFail::Invalid(e)) => {
            return Err(Box::new(xrpc_error(
                StatusCode::BAD_REQUEST,
                "InvalidDpopProof",
                &e,
            )));
        }
    };
    let session = w.access.get(token).copied();
    let live = session.filter(|s| w.sessions[*s].alive && w.sessions[*s].jkt == jkt);
    match live {
        Some(s) if !w.expire_next_access => Ok(w.sessions[s].sub.clone()),
        _ => {
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
            Err(Box::new(res))
        }
    }
}

/// An authenticated call of account `sub`.
fn call(
    w: &mut World,
    nsid: &str,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &Bytes,
    sub: &str,
) -> Response {
    let handle = handle_of(sub);
    match nsid {
        "com.atproto.server.getSession" => {
            Json(json!({ "did": sub, "handle": handle, "active": true })).into_response()
        }
        "app.bsky.actor.getProfile" => {
            Json(json!({ "did": sub, "handle": handle, "displayName": "Alice on Bluesky", "followersCount": 3 })).into_response()
        }
        "com.atproto.repo.uploadBlob" => {
            let mime = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            w.blobs.push((mime.clone(), body.len()));
            // Content-addressed, as the PDS's CIDs are (not a real CID: a stand-in per content).
            let digest = crate::media::sha256_hex(body);
            let cid = format!("bafkrei{}", &digest[..52]);
            w.blob_store
                .insert(cid.clone(), (mime.clone(), body.to_vec()));
            Json(json!({ "blob": {
                "$type": "blob",
                "ref": { "$link": cid },
                "mimeType": mime,
                "size": body.len(),
            }}))
            .into_response()
        }
        "com.atproto.repo.createRecord" => create_record(w, body, sub),
        "app.bsky.graph.getFollowers" | "app.bsky.graph.getFollows" => {
            if q.get("actor").map(String::as_str) != Some(sub) {
                return xrpc_error(StatusCode::BAD_REQUEST, "InvalidRequest", "unknown actor");
            }
            let key = if nsid.ends_with("Followers") {
                "followers"
            } else {
                "follows"
            };
            let actor =
                |n: u32| json!({ "did": format!("did:plc:f{n}"), "handle": format!("f{n}.test") });
            let subject = json!({ "did": sub, "handle": handle });
            match q.get("cursor").map(String::as_str) {
                None => Json(
                    json!({ "subject": subject, key: [actor(1), actor(2)], "cursor": "page2" }),
                )
                .into_response(),
                Some("page2") => {
                    Json(json!({ "subject": subject, key: [actor(3)] })).into_response()
                }
                Some(_) => xrpc_error(StatusCode::BAD_REQUEST, "InvalidRequest", "bad cursor"),
            }
        }
        _ => xrpc_error(
            StatusCode::NOT_IMPLEMENTED,
            "MethodNotImplemented",
            "Method Not Implemented",
        ),
    }
}

fn create_record(w: &mut World, body: &Bytes, sub: &str) -> Response {
    let b: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    w.create_bodies.push(b.clone());
    if std::mem::take(&mut w.rate_limit_next) {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [
                ("ratelimit-limit", "5000"),
                ("ratelimit-remaining", "0"),
                ("retry-after", "42"),
            ],
            Json(json!({ "error": "RateLimitExceeded", "message": "Rate Limit Exceeded" })),
        )
            .into_response();
    }
    if let Some((status, body)) = w.fail_next_create.take() {
        return (status, Json(body)).into_response();
    }
    if b["repo"] != sub {
        return xrpc_error(
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            "repo is not the session's",
        );
    }
    let rkey = b["rkey"].as_str().unwrap_or("").to_owned();
    if !tid::is_valid_tid(&rkey) {
        return xrpc_error(
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            "Invalid record key",
        );
    }
    if b["record"]["text"]
        .as_str()
        .is_some_and(|t| t.chars().count() > 300)
    {
        return xrpc_error(
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            "Invalid app.bsky.feed.post record",
        );
    }
    let embed = &b["record"]["embed"];
    let images = embed["images"].as_array().cloned().unwrap_or_default();
    if images.len() > 4 {
        return xrpc_error(
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            "Invalid app.bsky.feed.post record: Record/embed/images must not have more than 4 elements",
        );
    }
    // Every blob a record references must be one the PDS holds (it deletes unreferenced ones).
    let refs = images
        .iter()
        .map(|i| &i["image"])
        .chain(std::iter::once(&embed["external"]["thumb"]))
        .filter_map(|blob| blob["ref"]["$link"].as_str());
    for cid in refs {
        if !w.blob_store.contains_key(cid) {
            return xrpc_error(
                StatusCode::BAD_REQUEST,
                "BlobNotFound",
                &format!("Could not find blob: {cid}"),
            );
        }
    }
    if w.records.contains_key(&rkey) {
        // What the reference PDS does with a taken key: a bare 500.
        return xrpc_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerError",
            "Internal Server Error",
        );
    }
    w.records.insert(rkey.clone(), b["record"].clone());
    Json(json!({
        "uri": format!("at://{sub}/app.bsky.feed.post/{rkey}"),
        "cid": CID,
        "validationStatus": "valid",
    }))
    .into_response()
}
