//! The X API calls: `GET /2/users/me`, `POST /2/tweets` with its limits and duplicate check,
//! the user's timeline, followers and follows.

use axum::{
    Json,
    body::Bytes,
    extract::State,
    http::{HeaderMap, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::{
    oauth,
    state::{AppState, Failure, Inner, Post, problem, put, too_many, unauthorized},
};
use crate::testing::recorder::Seen;

pub(super) async fn handle(
    State((inner, client_id, secret)): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let seen = Seen::new(method, &uri, headers, &body);
    match (seen.method.as_str(), seen.path.as_str()) {
        ("GET", "/i/oauth2/authorize") => return oauth::authorize(&inner, &seen, &client_id),
        ("POST", "/2/oauth2/token") => {
            return oauth::token(&inner, &seen, &client_id, &secret).await;
        }
        ("POST", "/2/oauth2/revoke") => return oauth::revoke(&inner, &seen, &client_id, &secret),
        _ => {}
    }
    let failure = inner.lock().unwrap().script.pop_front();
    match failure {
        Some(Failure::Hang) => std::future::pending().await,
        Some(Failure::Unavailable) => {
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "about:blank",
                "Service Unavailable",
                "Service Unavailable",
                HeaderMap::new(),
            );
        }
        Some(Failure::UsageCapped) => {
            return problem(
                StatusCode::TOO_MANY_REQUESTS,
                "https://api.twitter.com/2/problems/usage-capped",
                "UsageCapExceeded",
                "Usage cap exceeded: Monthly product cap",
                HeaderMap::new(),
            );
        }
        None => {}
    }
    let mut g = inner.lock().unwrap();
    let token = seen.bearer().unwrap_or_default().to_owned();
    let Some(user) = g.live_grant_of_access(&token).map(|gr| gr.user.clone()) else {
        return unauthorized();
    };
    let parts: Vec<&str> = seen.path.trim_start_matches('/').split('/').collect();
    match (seen.method.as_str(), parts.as_slice()) {
        ("GET", ["2", "users", "me"]) => Json(json!({ "data": {
            "id": user,
            "name": format!("User {user}"),
            "username": format!("user{user}"),
            "public_metrics": { "followers_count": 7, "following_count": 2 },
        }}))
        .into_response(),
        ("POST", ["2", "tweets"]) => tweet(&mut g, &seen, &token, &user),
        ("POST", ["2", "media", "upload"]) => upload(&mut g, &seen, &user),
        ("POST", ["2", "media", "metadata"]) => metadata(&mut g, &seen, &user),
        ("GET", ["2", "users", id, "tweets"]) if *id == user => timeline(&g, &seen, &user),
        ("GET", ["2", "users", id, relation @ ("followers" | "following")]) if *id == user => {
            graph_page(&g, &seen, &user, relation)
        }
        _ => problem(
            StatusCode::NOT_FOUND,
            "https://api.twitter.com/2/problems/resource-not-found",
            "Not Found Error",
            &format!("Could not find {}", seen.path),
            HeaderMap::new(),
        ),
    }
}

fn tweet(g: &mut Inner, seen: &Seen, token: &str, user: &str) -> Response {
    let now = Utc::now();
    let mut headers = HeaderMap::new();
    if let Some(b) = g.budget.as_mut() {
        b.roll(now);
        b.headers(&mut headers);
    }
    if let Some(until) = g.windows_spent.get(token).copied().filter(|t| *t > now) {
        put(&mut headers, "x-rate-limit-limit", "100");
        put(&mut headers, "x-rate-limit-remaining", "0");
        put(
            &mut headers,
            "x-rate-limit-reset",
            &until.timestamp().to_string(),
        );
        return problem(
            StatusCode::TOO_MANY_REQUESTS,
            "https://api.twitter.com/2/problems/rate-limit-exceeded",
            "Too Many Requests",
            "Too Many Requests",
            headers,
        );
    }
    if let Some(until) = g.users_limited.get(token).copied().filter(|t| *t > now) {
        put(&mut headers, "x-user-limit-24hour-limit", "100");
        put(&mut headers, "x-user-limit-24hour-remaining", "0");
        put(
            &mut headers,
            "x-user-limit-24hour-reset",
            &until.timestamp().to_string(),
        );
        return too_many(headers);
    }
    if g.budget.as_ref().is_some_and(|b| b.used >= b.budget) {
        g.app_refusals += 1;
        return too_many(headers);
    }
    let text = seen
        .json
        .as_ref()
        .and_then(|b| b["text"].as_str())
        .unwrap_or_default()
        .to_owned();
    let media_ids: Vec<String> = seen
        .json
        .as_ref()
        .and_then(|b| b["media"]["media_ids"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    let known = |id: &String| {
        g.media
            .iter()
            .any(|m| &m.id == id && m.user == user && !m.expired)
    };
    if media_ids.len() > 4 || !media_ids.iter().all(known) {
        return problem(
            StatusCode::BAD_REQUEST,
            "https://api.twitter.com/2/problems/invalid-request",
            "Invalid Request",
            "Your media IDs are invalid.",
            HeaderMap::new(),
        );
    }
    if g.posts.iter().any(|p| p.user == user && p.text == text) {
        return problem(
            StatusCode::FORBIDDEN,
            "about:blank",
            "Forbidden",
            "You are not allowed to create a Tweet with duplicate content.",
            HeaderMap::new(),
        );
    }
    let window = g.budget.as_mut().map_or(0, |b| {
        b.used += 1;
        b.window.unwrap_or_default()
    });
    let id = (1_800_000_000_000_000_000u64 + g.posts.len() as u64).to_string();
    g.posts.push(Post {
        id: id.clone(),
        token: token.into(),
        user: user.into(),
        text: text.clone(),
        created_at: now,
        window,
        media_ids,
    });
    let mut headers = HeaderMap::new();
    if let Some(b) = &g.budget {
        b.headers(&mut headers);
    }
    (
        StatusCode::CREATED,
        headers,
        Json(json!({ "data": { "id": id, "text": wrapped(&text).0, "edit_history_tweet_ids": [id] } })),
    )
        .into_response()
}

/// The text as X shows it, every link wrapped in `t.co`, and the `entities.urls` it lists.
fn wrapped(text: &str) -> (String, Vec<Value>) {
    let mut out = String::new();
    let mut urls = Vec::new();
    for (i, piece) in text.split_inclusive(char::is_whitespace).enumerate() {
        let word = piece.trim_end_matches(char::is_whitespace);
        if word.starts_with("https://") || word.starts_with("http://") {
            let short = format!("https://t.co/{i:x}");
            let start = out.chars().count();
            urls.push(json!({
                "start": start, "end": start + short.chars().count(), "url": short,
                "expanded_url": word, "display_url": word.split_once("://").map_or(word, |w| w.1),
            }));
            out.push_str(&short);
            out.push_str(&piece[word.len()..]);
        } else {
            out.push_str(piece);
        }
    }
    (out, urls)
}

/// `GET /2/users/{id}/tweets`: newest first, from `start_time`, at most `max_results`.
fn timeline(g: &Inner, seen: &Seen, user: &str) -> Response {
    let since = seen
        .q("start_time")
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc));
    let max: usize = seen
        .q("max_results")
        .and_then(|m| m.parse().ok())
        .unwrap_or(10);
    let data: Vec<Value> = g
        .posts
        .iter()
        .rev()
        .filter(|p| p.user == user && since.is_none_or(|s| p.created_at >= s))
        .take(max)
        .map(|p| {
            let (text, urls) = wrapped(&p.text);
            json!({ "id": p.id, "text": text, "created_at": p.created_at.to_rfc3339(),
                    "entities": { "urls": urls } })
        })
        .collect();
    Json(json!({ "data": data, "meta": { "result_count": data.len() } })).into_response()
}

/// Followers or follows, paged by `pagination_token` (X's `next_token`).
fn graph_page(g: &Inner, seen: &Seen, user: &str, relation: &str) -> Response {
    let relation: &'static str = if relation == "followers" {
        "followers"
    } else {
        "following"
    };
    let all = g
        .graph
        .get(&(user.to_owned(), relation))
        .cloned()
        .unwrap_or_default();
    let max: usize = seen
        .q("max_results")
        .and_then(|m| m.parse().ok())
        .unwrap_or(100);
    let size = max.min(g.page_size).max(1);
    let start: usize = seen
        .q("pagination_token")
        .and_then(|t| t.strip_prefix("next-"))
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let page: Vec<Value> = all
        .iter()
        .skip(start)
        .take(size)
        .map(|(id, username)| json!({ "id": id, "name": username.to_uppercase(), "username": username }))
        .collect();
    let mut meta = json!({ "result_count": page.len() });
    if start + size < all.len() {
        meta["next_token"] = format!("next-{}", start + size).into();
    }
    if start > 0 {
        meta["previous_token"] = format!("prev-{start}").into();
    }
    let mut body = json!({ "meta": meta });
    if !page.is_empty() {
        body["data"] = page.into();
    }
    Json(body).into_response()
}

fn invalid(detail: &str) -> Response {
    problem(
        StatusCode::BAD_REQUEST,
        "https://api.twitter.com/2/problems/invalid-request",
        "Invalid Request",
        detail,
        HeaderMap::new(),
    )
}

/// `POST /2/media/upload` (one-shot, JSON): `media` in base64, `media_category`, `media_type`.
/// Images of up to 5 MB; answers `{"data": {"id", "media_key", "expires_after_secs"}}`.
fn upload(g: &mut Inner, seen: &Seen, user: &str) -> Response {
    use base64::Engine as _;
    let Some(body) = seen.json.as_ref() else {
        return invalid("The request body must be JSON or multipart.");
    };
    let Some(bytes) = body["media"]
        .as_str()
        .and_then(|m| base64::engine::general_purpose::STANDARD.decode(m).ok())
    else {
        return invalid("media: must be base64");
    };
    if body["media_category"] != "tweet_image" {
        return invalid("media_category: must be one of [tweet_image, dm_image, subtitles]");
    }
    if bytes.len() > 5 * 1024 * 1024 {
        return invalid("File size exceeds 5242880 bytes.");
    }
    g.counter += 1;
    let id = (1_900_000_000_000_000_000u64 + g.counter).to_string();
    g.media.push(super::state::Media {
        id: id.clone(),
        user: user.to_owned(),
        bytes,
        media_type: body["media_type"].as_str().map(str::to_owned),
        media_category: body["media_category"].as_str().map(str::to_owned),
        alt_text: None,
        expired: false,
    });
    Json(json!({ "data": {
        "id": id, "media_key": format!("3_{id}"), "expires_after_secs": 86_400, "size": 0,
    }}))
    .into_response()
}

/// `POST /2/media/metadata`: `{"id", "metadata": {"alt_text": {"text"}}}`, alt text up to 1,000
/// characters, on the caller's own upload.
fn metadata(g: &mut Inner, seen: &Seen, user: &str) -> Response {
    let body = seen.json.clone().unwrap_or_default();
    let id = body["id"].as_str().unwrap_or_default();
    let Some(text) = body["metadata"]["alt_text"]["text"].as_str() else {
        return invalid("metadata.alt_text.text is required");
    };
    if text.chars().count() > 1000 {
        return invalid("alt_text.text: must be at most 1000 characters");
    }
    let Some(m) = g
        .media
        .iter_mut()
        .find(|m| m.id == id && m.user == user && !m.expired)
    else {
        return problem(
            StatusCode::NOT_FOUND,
            "https://api.twitter.com/2/problems/resource-not-found",
            "Not Found Error",
            "Could not find media",
            HeaderMap::new(),
        );
    };
    m.alt_text = Some(text.to_owned());
    Json(json!({ "data": { "id": id, "associated_metadata": { "alt_text": { "text": text } } } }))
        .into_response()
}
