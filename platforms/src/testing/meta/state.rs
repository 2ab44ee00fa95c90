//! What a local Graph API host holds: its shape ([`MetaApi`]), tokens, containers, posts, and the
//! documented failures a test queues; and the Graph error envelope every answer uses.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
};

use axum::{
    Json,
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::{facebook, instagram, threads};

/// Meta's long-lived tokens: about 60 days.
pub const LONG_LIVED_SECS: i64 = 5_183_944;
/// A short-lived Facebook user token (hours); Instagram's and Threads' last one hour.
pub(super) const SHORT_LIVED_SECS: i64 = 5_400;

/// The Facebook page the user manages.
pub const PAGE_ID: &str = "101123456789";
pub const PAGE_NAME: &str = "Herald Café";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaApi {
    Facebook,
    Instagram,
    Threads,
}

impl MetaApi {
    pub fn version(self) -> &'static str {
        match self {
            Self::Facebook => facebook::API_VERSION,
            Self::Instagram => instagram::API_VERSION,
            Self::Threads => threads::API_VERSION,
        }
    }

    pub(super) fn authorize_path(self) -> String {
        match self {
            Self::Facebook => format!("/{}/dialog/oauth", self.version()),
            Self::Instagram | Self::Threads => "/oauth/authorize".into(),
        }
    }

    /// Where the code is exchanged (on Facebook, also the long-lived exchange).
    pub(super) fn code_path(self) -> String {
        match self {
            Self::Facebook => format!("/{}/oauth/access_token", self.version()),
            Self::Instagram | Self::Threads => "/oauth/access_token".into(),
        }
    }

    /// The permission a post needs, which the login must ask for.
    pub(super) fn publish_scope(self) -> &'static str {
        match self {
            Self::Facebook => "pages_manage_posts",
            Self::Instagram => "instagram_business_content_publish",
            Self::Threads => "threads_content_publish",
        }
    }

    pub(super) fn exchange_grant(self) -> &'static str {
        match self {
            Self::Facebook => "fb_exchange_token",
            Self::Instagram => "ig_exchange_token",
            Self::Threads => "th_exchange_token",
        }
    }

    pub(super) fn refresh_grant(self) -> Option<&'static str> {
        match self {
            Self::Facebook => None,
            Self::Instagram => Some("ig_refresh_token"),
            Self::Threads => Some("th_refresh_token"),
        }
    }

    /// The user (Facebook), IG professional account or Threads user who signs in.
    pub fn user_id(self) -> &'static str {
        match self {
            Self::Facebook => "10224857",
            Self::Instagram => "17841405793187218",
            Self::Threads => "7001234567",
        }
    }

    /// The account a post is made as: the page on Facebook, the user elsewhere.
    pub fn poster(self) -> &'static str {
        match self {
            Self::Facebook => PAGE_ID,
            Self::Instagram | Self::Threads => self.user_id(),
        }
    }

    /// What Meta answers once the user took the app's access away.
    pub(super) fn revoked_error(self, app: &str) -> Response {
        let (message, subcode) = match self {
            Self::Facebook => (
                "Error validating access token: The session has been invalidated because the user changed their password or Facebook has changed the session for security reasons.".to_owned(),
                Some(460),
            ),
            Self::Instagram => (
                format!("Error validating access token: The user has not authorized application {app}."),
                Some(458),
            ),
            Self::Threads => (
                format!("Error validating access token: The user has not authorized application {app}."),
                None,
            ),
        };
        graph_error(190, subcode, &message)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    ShortUser,
    LongUser,
    Page,
}

/// A failure Graph documents, answered by the next call it applies to: a post's creation (the
/// page feed post or a container), or the publish of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Code 100: `(#100) Invalid parameter`.
    InvalidParameter,
    /// Code 100, subcode 1609005: the link could not be posted.
    LinkError,
    /// Code 368: the action is deemed abusive.
    Abusive,
    /// Code 2, HTTP 500: an unexpected error, retry later.
    Unexpected,
    /// HTTP 200 with an HTML body, as a proxy in front of Graph may send.
    NotJson,
    /// Code 4 (the app's request limit), with `X-App-Usage` spent and, if given, the
    /// `X-Business-Use-Case-Usage` estimate in minutes.
    AppLimit { regain_minutes: Option<u64> },
    /// Code 17 (the user's request limit), the app's usage low.
    UserLimit,
    /// Code 32 (the page's request limit); `app_usage_spent`: `X-App-Usage` shows the app's
    /// budget spent too.
    PageLimit { app_usage_spent: bool },
    /// Code 80001 (too many calls to this page) with the `X-Business-Use-Case-Usage` estimate.
    PageThrottled { regain_minutes: u64 },
    /// On a publish: code 9, subcode 2207042 ("Max posts reached").
    PublishLimit,
    /// On a publish: it goes through, but its answer never comes back.
    LoseAnswer,
}

impl Failure {
    pub(super) fn on_publish(&self) -> bool {
        matches!(self, Self::PublishLimit | Self::LoseAnswer)
    }

    /// The answer, or `None` for one that never comes.
    pub(super) fn answer(&self, poster: &str) -> Option<Response> {
        let usage = |spent: bool| {
            if spent {
                r#"{"call_count":100,"total_cputime":20,"total_time":31}"#
            } else {
                r#"{"call_count":12,"total_cputime":4,"total_time":9}"#
            }
        };
        let buc = |minutes: u64| {
            format!(
                r#"{{"{poster}":[{{"type":"pages","call_count":100,"total_cputime":45,"total_time":60,"estimated_time_to_regain_access":{minutes}}}]}}"#
            )
        };
        Some(match self {
            Self::InvalidParameter => graph_error(100, None, "(#100) Invalid parameter"),
            Self::LinkError => graph_error(100, Some(1_609_005), "Error posting link"),
            Self::Abusive => graph_error(
                368,
                None,
                "The action attempted has been deemed abusive or is otherwise disallowed",
            ),
            Self::Unexpected => with_status(
                StatusCode::INTERNAL_SERVER_ERROR,
                graph_error(
                    2,
                    None,
                    "An unexpected error has occurred. Please retry your request later.",
                ),
            ),
            Self::NotJson => (StatusCode::OK, "<html>not json</html>").into_response(),
            Self::AppLimit { regain_minutes } => {
                let mut h = vec![("x-app-usage", usage(true).to_owned())];
                if let Some(m) = regain_minutes {
                    h.push(("x-business-use-case-usage", buc(*m)));
                }
                with_headers(
                    &h,
                    graph_error(4, None, "(#4) Application request limit reached"),
                )
            }
            Self::UserLimit => with_headers(
                &[("x-app-usage", usage(false).to_owned())],
                graph_error(17, None, "(#17) User request limit reached"),
            ),
            Self::PageLimit { app_usage_spent } => with_headers(
                &[(
                    "x-app-usage",
                    if *app_usage_spent {
                        r#"{"call_count":12,"total_cputime":100,"total_time":40}"#
                    } else {
                        usage(false)
                    }
                    .to_owned(),
                )],
                graph_error(32, None, "(#32) Page request limit reached"),
            ),
            Self::PageThrottled { regain_minutes } => with_headers(
                &[("x-business-use-case-usage", buc(*regain_minutes))],
                graph_error(
                    80_001,
                    None,
                    "(#80001) There have been too many calls to this Page account. Wait a bit and try again.",
                ),
            ),
            Self::PublishLimit => graph_error_with(
                9,
                Some(2_207_042),
                "Application request limit reached",
                json!({ "is_transient": false, "error_user_title": "Max posts reached",
                        "error_user_msg": "The maximum number of posts that can be published has been reached." }),
            ),
            Self::LoseAnswer => return None,
        })
    }
}

/// What every handler of one fake shares.
#[derive(Clone)]
pub(super) struct AppState {
    pub(super) api: MetaApi,
    pub(super) client_id: String,
    pub(super) client_secret: String,
    pub(super) inner: Arc<Mutex<Inner>>,
}

pub(super) struct Token {
    pub(super) kind: TokenKind,
    pub(super) expires_at: Option<DateTime<Utc>>,
    pub(super) revoked: bool,
}

pub(super) struct Container {
    pub(super) text: String,
    pub(super) link: Option<String>,
    pub(super) image_url: Option<String>,
    /// `IMAGE`, `TEXT` or `CAROUSEL`.
    pub(super) media_type: &'static str,
    pub(super) alt_text: Option<String>,
    /// A carousel's items, in order.
    pub(super) children: Vec<String>,
    /// Made with `is_carousel_item=true`: only a carousel may use it.
    pub(super) carousel_item: bool,
    /// The states it reports, one a read, staying at the last.
    pub(super) states: VecDeque<&'static str>,
    pub(super) error_message: Option<String>,
    pub(super) published: bool,
}

impl Container {
    /// The state a status read sees, advancing the container through its states.
    pub(super) fn read_state(&mut self) -> &'static str {
        if self.published {
            return "PUBLISHED";
        }
        if self.states.len() > 1 {
            self.states.pop_front().unwrap_or("FINISHED")
        } else {
            self.states.front().copied().unwrap_or("FINISHED")
        }
    }
}

#[derive(Default)]
pub(super) struct Inner {
    pub(super) codes: HashMap<String, String>,
    pub(super) tokens: HashMap<String, Token>,
    pub(super) containers: HashMap<String, Container>,
    /// Published posts, oldest first: `{id, container, text, link, image_url, created}`.
    pub(super) posts: Vec<Value>,
    /// Posts published but not yet listed on the account's edge.
    pub(super) unlisted: Vec<String>,
    pub(super) refreshes: usize,
    pub(super) publish_requests: usize,
    /// The states new containers go through (default: `FINISHED` at once).
    pub(super) container_states: Vec<&'static str>,
    pub(super) container_error: Option<String>,
    /// The publishing quota's usage on top of the posts made.
    pub(super) quota_used: usize,
    pub(super) script: VecDeque<Failure>,
    pub(super) counter: u64,
    /// Page photos by id: `{url, alt_text, published, used}`.
    pub(super) photos: HashMap<String, Value>,
}

impl Inner {
    pub(super) fn mint_id(&mut self) -> String {
        self.counter += 1;
        (17_900_000_000_000_000u64 + self.counter).to_string()
    }

    pub(super) fn mint_token(&mut self, kind: TokenKind, ttl: Option<i64>) -> String {
        self.counter += 1;
        let prefix = match kind {
            TokenKind::ShortUser => "short",
            TokenKind::LongUser => "long",
            TokenKind::Page => "page",
        };
        let token = format!(
            "EAA{prefix}{}{}",
            self.counter,
            uuid::Uuid::new_v4().simple()
        );
        self.tokens.insert(
            token.clone(),
            Token {
                kind,
                expires_at: ttl.map(|s| Utc::now() + chrono::Duration::seconds(s)),
                revoked: false,
            },
        );
        token
    }

    pub(super) fn new_container(
        &mut self,
        text: &str,
        link: Option<&str>,
        image_url: Option<&str>,
    ) -> String {
        let states = if self.container_states.is_empty() {
            VecDeque::from(["FINISHED"])
        } else {
            self.container_states.iter().copied().collect()
        };
        let container = Container {
            text: text.to_owned(),
            link: link.map(str::to_owned),
            media_type: if image_url.is_some() { "IMAGE" } else { "TEXT" },
            image_url: image_url.map(str::to_owned),
            alt_text: None,
            children: Vec::new(),
            carousel_item: false,
            states,
            error_message: self.container_error.clone(),
            published: false,
        };
        let id = self.mint_id();
        self.containers.insert(id.clone(), container);
        id
    }

    /// The next queued failure that applies to this call, if any.
    pub(super) fn failure(&mut self, publish: bool) -> Option<Failure> {
        let at = self.script.iter().position(|f| f.on_publish() == publish)?;
        self.script.remove(at)
    }
}

pub(super) fn graph_error(code: i64, subcode: Option<i64>, message: &str) -> Response {
    graph_error_with(code, subcode, message, json!({}))
}

/// The Graph error envelope `{"error":{"message","type","code","error_subcode","fbtrace_id"}}`,
/// with HTTP 400 as Graph answers an `OAuthException`, and `extra` fields in `error`.
pub(super) fn graph_error_with(
    code: i64,
    subcode: Option<i64>,
    message: &str,
    extra: Value,
) -> Response {
    let mut error = json!({
        "message": message,
        "type": "OAuthException",
        "code": code,
        "fbtrace_id": "AbCdEfGhIjK",
    });
    if let Some(s) = subcode {
        error["error_subcode"] = s.into();
    }
    if let (Some(e), Some(x)) = (error.as_object_mut(), extra.as_object()) {
        e.extend(x.clone());
    }
    (StatusCode::BAD_REQUEST, Json(json!({ "error": error }))).into_response()
}

pub(super) fn unknown_token() -> Response {
    graph_error(
        190,
        None,
        "Invalid OAuth access token - Cannot parse access token",
    )
}

fn with_status(status: StatusCode, mut res: Response) -> Response {
    *res.status_mut() = status;
    res
}

fn with_headers(headers: &[(&'static str, String)], mut res: Response) -> Response {
    let h: &mut HeaderMap = res.headers_mut();
    for (name, value) in headers {
        h.insert(
            HeaderName::from_static(name),
            HeaderValue::from_str(value).expect("a header value"),
        );
    }
    res
}
