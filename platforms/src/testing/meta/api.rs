//! The Graph API calls of a local Meta host: every call needs a live token; Facebook's pages,
//! page feed and posts; Instagram's and Threads' accounts, publishing quota, containers, publish,
//! permalinks and post lists.

use axum::{
    Json,
    body::Bytes,
    extract::State,
    http::{HeaderMap, Method, Uri},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::{
    oauth,
    state::{AppState, Inner, MetaApi, PAGE_ID, PAGE_NAME, TokenKind, graph_error, unknown_token},
};
use crate::testing::recorder::Seen;

pub(super) async fn handle(
    State(s): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let seen = Seen::new(method, &uri, headers, &body);
    let mut lost = false;
    let res = respond(&s, &seen, &mut lost);
    if lost {
        // The call went through; its answer never comes.
        std::future::pending::<()>().await;
    }
    res
}

/// The answer to one call; `lost` when it is never to reach the caller.
fn respond(s: &AppState, seen: &Seen, lost: &mut bool) -> Response {
    let mut g = s.inner.lock().unwrap();
    let api = s.api;
    let path = seen.path.clone();
    let method = seen.method.as_str();
    if method == "GET" && path == api.authorize_path() {
        return oauth::authorize(&mut g, s, seen);
    }
    if path == api.code_path()
        && seen.param("grant_type") != Some(api.exchange_grant())
        && (method == "POST" || api == MetaApi::Facebook)
    {
        return oauth::exchange_code(&mut g, s, seen);
    }
    let long_lived_path = match api {
        MetaApi::Facebook => api.code_path(),
        MetaApi::Instagram | MetaApi::Threads => "/access_token".into(),
    };
    if method == "GET" && path == long_lived_path {
        return oauth::exchange_long_lived(&mut g, s, seen);
    }
    if method == "GET" && path == "/refresh_access_token" && api.refresh_grant().is_some() {
        return oauth::refresh(&mut g, s, seen);
    }
    let Some(node_path) = path.strip_prefix(&format!("/{}/", api.version())) else {
        return graph_error(2500, None, &format!("Unknown path components: {path}"));
    };
    // Every Graph call needs a live token.
    let token = seen.param("access_token").unwrap_or_default().to_owned();
    let kind = match g.tokens.get(&token) {
        None => return unknown_token(),
        Some(t) if t.revoked => return api.revoked_error(&s.client_id),
        Some(t) if t.expires_at.is_some_and(|e| e <= Utc::now()) => {
            return graph_error(
                190,
                Some(463),
                "Error validating access token: Session has expired.",
            );
        }
        Some(t) => t.kind,
    };
    let parts: Vec<&str> = node_path.split('/').collect();
    let user = api.user_id();
    match (api, method, parts.as_slice()) {
        (MetaApi::Facebook, "GET", ["me", "accounts"]) => {
            if kind == TokenKind::Page {
                return graph_error(
                    100,
                    None,
                    "(#100) Tried accessing nonexisting field (accounts) on node type (Page)",
                );
            }
            // A page token read with a long-lived user token does not expire.
            let ttl = (kind == TokenKind::ShortUser).then_some(3600);
            let page_token = g.mint_token(TokenKind::Page, ttl);
            Json(json!({
                "data": [{
                    "access_token": page_token,
                    "category": "Cafe",
                    "category_list": [{ "id": "128673187201735", "name": "Cafe" }],
                    "name": PAGE_NAME,
                    "id": PAGE_ID,
                    "tasks": ["ANALYZE", "ADVERTISE", "MESSAGING", "MODERATE", "CREATE_CONTENT", "MANAGE"],
                }],
                "paging": { "cursors": { "before": "QVFIUmx", "after": "QVFIUmx" } },
            }))
            .into_response()
        }
        (MetaApi::Facebook, "GET", [page]) if *page == PAGE_ID => {
            Json(json!({ "id": PAGE_ID, "name": PAGE_NAME })).into_response()
        }
        (MetaApi::Facebook, "POST", [page, "feed"]) if *page == PAGE_ID => {
            page_post(&mut g, seen, kind)
        }
        (MetaApi::Facebook, "POST", [page, "photos"]) if *page == PAGE_ID => {
            page_photo(&mut g, seen, kind)
        }
        (MetaApi::Instagram, "GET", [u]) if *u == user || *u == "me" => {
            Json(json!({ "id": user, "username": "herald.cafe", "name": "Herald Café", "followers_count": 1284 }))
                .into_response()
        }
        (MetaApi::Threads, "GET", ["me"]) => {
            Json(json!({ "id": user, "username": "herald", "name": "Herald" })).into_response()
        }
        (MetaApi::Instagram, "GET", [u, "content_publishing_limit"])
        | (MetaApi::Threads, "GET", [u, "threads_publishing_limit"])
            if *u == user =>
        {
            let used = g.posts.len() + g.quota_used;
            let total = if api == MetaApi::Instagram { 100 } else { 250 };
            Json(json!({ "data": [{ "quota_usage": used, "config": { "quota_total": total, "quota_duration": 86400 } }] }))
                .into_response()
        }
        (MetaApi::Instagram, "POST", [u, "media"]) if *u == user => {
            if let Some(res) = g.failure(false).and_then(|f| f.answer(user)) {
                return res;
            }
            match seen.param("media_type") {
                // Instagram's limit: 10 items.
                Some("CAROUSEL") => carousel(&mut g, seen, "caption", 10),
                None | Some("IMAGE") => image_container(&mut g, seen, "caption"),
                Some(other) => graph_error(
                    100,
                    None,
                    &format!("(#100) media_type {other} is not handled here"),
                ),
            }
        }
        (MetaApi::Threads, "POST", [u, "threads"]) if *u == user => {
            if let Some(res) = g.failure(false).and_then(|f| f.answer(user)) {
                return res;
            }
            match seen.param("media_type") {
                Some("IMAGE") => image_container(&mut g, seen, "text"),
                // Threads' limit: 20 items.
                Some("CAROUSEL") => carousel(&mut g, seen, "text", 20),
                Some("TEXT") => {
                    let text = seen.param("text").unwrap_or_default();
                    if text.is_empty() {
                        return graph_error(100, None, "(#100) The parameter text is required");
                    }
                    let link = seen.param("link_attachment");
                    let id = g.new_container(text, link, None);
                    Json(json!({ "id": id })).into_response()
                }
                _ => graph_error(100, None, "(#100) The parameter media_type is required"),
            }
        }
        (MetaApi::Instagram, "POST", [u, "media_publish"])
        | (MetaApi::Threads, "POST", [u, "threads_publish"])
            if *u == user =>
        {
            g.publish_requests += 1;
            let failure = g.failure(true);
            if let Some(f) = failure.as_ref().filter(|f| f.answer(user).is_some()) {
                return f.answer(user).expect("an answer");
            }
            let creation = seen.param("creation_id").unwrap_or_default().to_owned();
            *lost = failure.is_some();
            publish(&mut g, &creation)
        }
        (MetaApi::Facebook, "GET", [page, "feed"]) if *page == PAGE_ID => listing(&g, seen, api),
        (MetaApi::Instagram, "GET", [u, "media"]) | (MetaApi::Threads, "GET", [u, "threads"])
            if *u == user =>
        {
            listing(&g, seen, api)
        }
        (MetaApi::Instagram | MetaApi::Threads, "GET", [node]) => {
            let fields = seen.param("fields").unwrap_or_default();
            if let Some(c) = g.containers.get_mut(*node) {
                let state = c.read_state();
                let error = (state == "ERROR")
                    .then(|| c.error_message.clone())
                    .flatten();
                return if api == MetaApi::Instagram {
                    let status = match &error {
                        Some(e) => format!("Error: {e}"),
                        None => format!("{state}: the container is {}", state.to_lowercase()),
                    };
                    Json(json!({ "id": node, "status_code": state, "status": status }))
                        .into_response()
                } else {
                    let mut body = json!({ "id": node, "status": state });
                    if let Some(e) = error {
                        body["error_message"] = e.into();
                    }
                    Json(body).into_response()
                };
            }
            if fields.contains("permalink") && g.posts.iter().any(|p| p["id"] == *node) {
                return Json(json!({ "id": node, "permalink": permalink(api, node) }))
                    .into_response();
            }
            graph_error(
                100,
                Some(33),
                &format!("Unsupported get request. Object with ID '{node}' does not exist"),
            )
        }
        _ => graph_error(
            100,
            Some(33),
            &format!("Unsupported {method} request. Object with ID '{node_path}' does not exist"),
        ),
    }
}

/// `POST /{page}/feed`: a page token only; a message or a link; a repeat of the page's last
/// post is a duplicate (506).
fn page_post(g: &mut Inner, seen: &Seen, kind: TokenKind) -> Response {
    if kind != TokenKind::Page {
        return graph_error(
            200,
            None,
            "(#200) If posting to a page, requires both pages_read_engagement and pages_manage_posts as an admin with sufficient administrative permission",
        );
    }
    if let Some(res) = g.failure(false).and_then(|f| f.answer(PAGE_ID)) {
        return res;
    }
    let (message, link) = (seen.param("message"), seen.param("link"));
    // `attached_media[i]={"media_fbid": id}`: unpublished page photos not used before.
    let attached: Vec<String> = (0..)
        .map_while(|i| seen.param(&format!("attached_media[{i}]")))
        .filter_map(|v| serde_json::from_str::<Value>(v).ok())
        .filter_map(|v| v["media_fbid"].as_str().map(str::to_owned))
        .collect();
    let usable = |id: &String| {
        g.photos
            .get(id)
            .is_some_and(|p| p["published"] == false && p["used"] == false)
    };
    if !attached.iter().all(usable) {
        return graph_error(
            100,
            None,
            "(#100) param attached_media must be unpublished photos",
        );
    }
    if message.is_none() && link.is_none() && attached.is_empty() {
        return graph_error(100, None, "(#100) Missing message or attachment");
    }
    if g.posts
        .last()
        .is_some_and(|p| p["text"].as_str() == message && p["link"].as_str() == link)
    {
        return graph_error(506, None, "(#506) Duplicate status message");
    }
    let id = format!("{PAGE_ID}_{}", g.mint_id());
    let mut photos = Vec::with_capacity(attached.len());
    for a in &attached {
        if let Some(p) = g.photos.get_mut(a) {
            p["used"] = true.into();
            photos.push(json!({ "url": p["url"], "alt_text": p["alt_text"] }));
        }
    }
    g.posts.push(json!({
        "id": id, "text": message, "link": link, "created": Utc::now().timestamp(),
        "photos": photos,
    }));
    // The Pages API answers the new post's id, and (read-after-write) what `fields` asks of it.
    let mut answer = json!({ "id": id });
    if seen
        .param("fields")
        .is_some_and(|f| f.contains("permalink_url"))
    {
        answer["permalink_url"] = permalink(MetaApi::Facebook, &id).into();
    }
    Json(answer).into_response()
}

/// Publishes a container: once only.
fn publish(g: &mut Inner, creation: &str) -> Response {
    let media = g.mint_id();
    let Some(c) = g.containers.get_mut(creation) else {
        return graph_error(
            100,
            Some(2_207_027),
            "The media is not ready to be published",
        );
    };
    if c.published {
        return graph_error(
            9_007,
            Some(2_207_006),
            "The media has already been published",
        );
    }
    if c.carousel_item {
        return graph_error(
            100,
            None,
            "(#100) A carousel item can only be published as part of a carousel",
        );
    }
    c.published = true;
    let children = c.children.clone();
    let mut post = json!({
        "id": media, "container": creation, "text": c.text, "link": c.link,
        "image_url": c.image_url, "alt_text": c.alt_text, "media_type": c.media_type,
        "created": Utc::now().timestamp(),
    });
    if !children.is_empty() {
        post["children"] = children
            .iter()
            .filter_map(|id| g.containers.get(id))
            .map(|c| json!({ "image_url": c.image_url, "alt_text": c.alt_text }))
            .collect();
    }
    g.posts.push(post);
    Json(json!({ "id": media })).into_response()
}

/// A post's public URL.
pub(super) fn permalink(api: MetaApi, id: &str) -> String {
    match api {
        MetaApi::Facebook => {
            let post = id.split_once('_').map_or(id, |(_, p)| p);
            format!("https://www.facebook.com/{PAGE_ID}/posts/{post}")
        }
        MetaApi::Instagram => format!("https://www.instagram.com/p/C{id}/"),
        MetaApi::Threads => format!("https://www.threads.net/@herald/post/C{id}"),
    }
}

/// The account's posts, newest first, from `since` (epoch seconds), at most `limit`: the page
/// feed, the IG user's media or the user's threads, each with its own field names.
fn listing(g: &Inner, seen: &Seen, api: MetaApi) -> Response {
    let since: i64 = seen
        .param("since")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let limit: usize = seen
        .param("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(25);
    let data: Vec<Value> = g
        .posts
        .iter()
        .rev()
        .filter(|p| p["created"].as_i64().unwrap_or(0) >= since)
        .filter(|p| !g.unlisted.iter().any(|u| p["id"] == u.as_str()))
        .take(limit)
        .map(|p| {
            let id = p["id"].as_str().unwrap_or_default();
            let time = DateTime::from_timestamp(p["created"].as_i64().unwrap_or(0), 0)
                .unwrap_or_default()
                .format("%Y-%m-%dT%H:%M:%S+0000")
                .to_string();
            match api {
                MetaApi::Facebook => json!({
                    "id": id, "message": p["text"], "link": p["link"], "created_time": time,
                    "permalink_url": permalink(api, id),
                }),
                MetaApi::Instagram => json!({
                    "id": id, "caption": p["text"], "timestamp": time, "permalink": permalink(api, id),
                }),
                MetaApi::Threads => json!({
                    "id": id, "text": p["text"], "timestamp": time, "permalink": permalink(api, id),
                    "link_attachment_url": p["link"],
                }),
            }
        })
        .collect();
    Json(json!({ "data": data, "paging": { "cursors": { "before": "a", "after": "b" } } }))
        .into_response()
}

/// An image container: `image_url` (fetched by Meta, so an absolute http(s) URL), the text in
/// `text_field` (not on a carousel item), `alt_text`, `is_carousel_item`.
fn image_container(g: &mut Inner, seen: &Seen, text_field: &str) -> Response {
    let Some(image_url) = seen
        .param("image_url")
        .filter(|u| u.starts_with("https://") || u.starts_with("http://"))
    else {
        return graph_error(
            100,
            Some(2_207_052),
            "The media could not be fetched from this uri",
        );
    };
    let item = seen.param("is_carousel_item") == Some("true");
    let text = seen.param(text_field).unwrap_or_default();
    let id = g.new_container(text, None, Some(image_url));
    if let Some(c) = g.containers.get_mut(&id) {
        c.alt_text = seen.param("alt_text").map(str::to_owned);
        c.carousel_item = item;
    }
    Json(json!({ "id": id })).into_response()
}

/// A carousel container: `children` (comma-separated item containers, 2 to `max`, each an
/// unpublished carousel item that has finished), the text in `text_field`.
fn carousel(g: &mut Inner, seen: &Seen, text_field: &str, max: usize) -> Response {
    let children: Vec<String> = seen
        .param("children")
        .unwrap_or_default()
        .split(',')
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
        .collect();
    if !(2..=max).contains(&children.len()) {
        return graph_error(
            100,
            None,
            &format!("(#100) A carousel needs 2 to {max} children"),
        );
    }
    let usable = |id: &String| {
        g.containers
            .get(id)
            .is_some_and(|c| c.carousel_item && !c.published)
    };
    if !children.iter().all(usable) {
        return graph_error(100, Some(2_207_001), "(#100) Invalid carousel item");
    }
    let text = seen.param(text_field).unwrap_or_default();
    let id = g.new_container(text, None, None);
    if let Some(c) = g.containers.get_mut(&id) {
        c.media_type = "CAROUSEL";
        c.children = children;
    }
    Json(json!({ "id": id })).into_response()
}

/// `POST /{page}/photos`: a photo Facebook fetches from `url`; `published=false` keeps it off the
/// page until a post attaches it. `alt_text_custom` is its alt text. Queued failures are left
/// for the post that attaches the photos.
fn page_photo(g: &mut Inner, seen: &Seen, kind: TokenKind) -> Response {
    if kind != TokenKind::Page {
        return graph_error(200, None, "(#200) Requires pages_manage_posts");
    }
    let Some(url) = seen
        .param("url")
        .filter(|u| u.starts_with("https://") || u.starts_with("http://"))
    else {
        return graph_error(324, None, "(#324) Requires upload file");
    };
    let id = g.mint_id();
    let photo = json!({
        "url": url,
        "alt_text": seen.param("alt_text_custom"),
        "published": seen.param("published") != Some("false"),
        "used": false,
    });
    g.photos.insert(id.clone(), photo);
    Json(json!({ "id": id })).into_response()
}
