//! Meta's OAuth on a Graph host: the login dialog, the code exchange (Instagram and Threads add
//! the user id), the long-lived exchange (`fb_exchange_token`, `ig_exchange_token`,
//! `th_exchange_token`) and the refresh of a long-lived token (`ig_refresh_token`,
//! `th_refresh_token`).

use axum::{
    Json,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use chrono::Utc;
use serde_json::json;

use super::state::{
    AppState, Inner, LONG_LIVED_SECS, MetaApi, SHORT_LIVED_SECS, TokenKind, graph_error,
    unknown_token,
};
use crate::testing::recorder::Seen;

pub(super) fn authorize(g: &mut Inner, s: &AppState, seen: &Seen) -> Response {
    let (Some(redirect), Some(state)) = (seen.param("redirect_uri"), seen.param("state")) else {
        return graph_error(100, None, "redirect_uri and state are required");
    };
    let scopes: Vec<&str> = seen
        .param("scope")
        .unwrap_or_default()
        .split([',', ' '])
        .collect();
    if seen.param("client_id") != Some(s.client_id.as_str())
        || seen.param("response_type") != Some("code")
        || !scopes.contains(&s.api.publish_scope())
    {
        return graph_error(100, None, "Invalid client_id, response_type or scope");
    }
    g.counter += 1;
    let code = format!("AQ{}{}", g.counter, uuid::Uuid::new_v4().simple());
    g.codes.insert(code.clone(), redirect.to_owned());
    let mut to = url::Url::parse(redirect).unwrap();
    to.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", state);
    if s.api == MetaApi::Instagram {
        // Instagram appends `#_` to the redirect; a browser never sends the fragment on.
        to.set_fragment(Some("_"));
    }
    (StatusCode::FOUND, [(header::LOCATION, to.to_string())]).into_response()
}

fn client_ok(s: &AppState, seen: &Seen) -> bool {
    seen.param("client_id") == Some(s.client_id.as_str())
        && seen.param("client_secret") == Some(s.client_secret.as_str())
}

pub(super) fn exchange_code(g: &mut Inner, s: &AppState, seen: &Seen) -> Response {
    if !client_ok(s, seen) {
        return graph_error(
            101,
            None,
            "Error validating application. Invalid application ID.",
        );
    }
    let code = seen.param("code").unwrap_or_default();
    let Some(redirect) = g.codes.remove(code) else {
        return graph_error(100, Some(36_009), "This authorization code has been used.");
    };
    if seen.param("redirect_uri") != Some(redirect.as_str()) {
        return graph_error(
            100,
            Some(36_008),
            "Error validating verification code. Please make sure your redirect_uri is identical to the one you used in the OAuth dialog request",
        );
    }
    if s.api != MetaApi::Facebook && seen.param("grant_type") != Some("authorization_code") {
        return graph_error(100, None, "Invalid grant_type");
    }
    let ttl = if s.api == MetaApi::Facebook {
        SHORT_LIVED_SECS
    } else {
        3600
    };
    let token = g.mint_token(TokenKind::ShortUser, Some(ttl));
    match s.api {
        MetaApi::Facebook => {
            Json(json!({ "access_token": token, "token_type": "bearer", "expires_in": ttl }))
                .into_response()
        }
        // Instagram and Threads add the user id, a JSON number.
        MetaApi::Instagram | MetaApi::Threads => Json(json!({
            "access_token": token,
            "user_id": s.api.user_id().parse::<u64>().unwrap(),
        }))
        .into_response(),
    }
}

pub(super) fn exchange_long_lived(g: &mut Inner, s: &AppState, seen: &Seen) -> Response {
    if seen.param("grant_type") != Some(s.api.exchange_grant()) {
        return graph_error(100, None, "Invalid grant_type");
    }
    // Facebook names the client in full; Instagram and Threads take the secret only.
    let client_ok = match s.api {
        MetaApi::Facebook => client_ok(s, seen),
        _ => seen.param("client_secret") == Some(s.client_secret.as_str()),
    };
    if !client_ok {
        return graph_error(101, None, "Error validating client secret.");
    }
    let short = match s.api {
        MetaApi::Facebook => seen.param("fb_exchange_token"),
        _ => seen.param("access_token"),
    }
    .unwrap_or_default();
    match g.tokens.get(short) {
        Some(t) if t.revoked => return s.api.revoked_error(&s.client_id),
        // An expired token cannot be exchanged: the user logs in again.
        Some(t)
            if t.kind == TokenKind::ShortUser && t.expires_at.is_some_and(|e| e > Utc::now()) => {}
        _ => return unknown_token(),
    }
    let long = g.mint_token(TokenKind::LongUser, Some(LONG_LIVED_SECS));
    Json(json!({ "access_token": long, "token_type": "bearer", "expires_in": LONG_LIVED_SECS }))
        .into_response()
}

pub(super) fn refresh(g: &mut Inner, s: &AppState, seen: &Seen) -> Response {
    if seen.param("grant_type") != s.api.refresh_grant() {
        return graph_error(100, None, "Invalid grant_type");
    }
    let presented = seen.param("access_token").unwrap_or_default();
    match g.tokens.get(presented) {
        Some(t) if t.revoked => return s.api.revoked_error(&s.client_id),
        // Only an unexpired long-lived token can be refreshed.
        Some(t)
            if t.kind == TokenKind::LongUser && t.expires_at.is_some_and(|e| e > Utc::now()) => {}
        Some(_) => {
            return graph_error(
                190,
                Some(463),
                "Error validating access token: Session has expired.",
            );
        }
        None => return unknown_token(),
    }
    let fresh = g.mint_token(TokenKind::LongUser, Some(LONG_LIVED_SECS));
    g.refreshes += 1;
    Json(json!({ "access_token": fresh, "token_type": "bearer", "expires_in": LONG_LIVED_SECS }))
        .into_response()
}
