//! What a local platform server received, kept in order so a test can check the documented
//! request shape (headers, query, form, JSON body) and count the calls a step made. Every fake
//! records through [`Recorder::layer`], before its handlers run, and is served by [`serve`].

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Request, State},
    http::{HeaderMap, Method, Uri, header},
    middleware::{self, Next},
    response::Response,
};
use serde_json::Value;

/// One request a fake received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub query: HashMap<String, String>,
    /// The `application/x-www-form-urlencoded` body, if it was one.
    pub form: HashMap<String, String>,
    /// The JSON body, if it was one.
    pub json: Option<Value>,
    pub headers: HeaderMap,
    /// The body as received.
    pub body: Bytes,
}

impl Seen {
    pub fn new(method: Method, uri: &Uri, headers: HeaderMap, body: &[u8]) -> Self {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let form = if content_type.starts_with("application/x-www-form-urlencoded") {
            parse_form(body)
        } else {
            HashMap::new()
        };
        let json = content_type
            .starts_with("application/json")
            .then(|| serde_json::from_slice(body).ok())
            .flatten();
        Self {
            method,
            path: uri.path().to_owned(),
            query: parse_form(uri.query().unwrap_or_default().as_bytes()),
            form,
            json,
            headers,
            body: Bytes::copy_from_slice(body),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// A query parameter.
    pub fn q(&self, name: &str) -> Option<&str> {
        self.query.get(name).map(String::as_str)
    }

    /// A parameter from the query string or, failing that, the form body (Graph takes either).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .get(name)
            .or_else(|| self.form.get(name))
            .map(String::as_str)
    }

    pub fn bearer(&self) -> Option<&str> {
        self.header("authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
    }

    /// `METHOD /path`, for comparing call sequences.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// An `application/x-www-form-urlencoded` body or query string (axum's `Form` needs a feature
/// Herald leaves off).
pub fn parse_form(body: &[u8]) -> HashMap<String, String> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

/// Every request one fake received, in order. Cheap to clone; clones share the list.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Recorder {
    /// `router` with every request recorded (its body read whole and handed on) before it is
    /// handled.
    pub fn layer<S: Clone + Send + Sync + 'static>(&self, router: Router<S>) -> Router<S> {
        router.layer(middleware::from_fn_with_state(self.clone(), record))
    }

    pub fn all(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// `METHOD /path` of every request, in order.
    pub fn lines(&self) -> Vec<String> {
        self.all().iter().map(Seen::line).collect()
    }

    /// The requests to one path, in order.
    pub fn to(&self, path: &str) -> Vec<Seen> {
        self.all().into_iter().filter(|s| s.path == path).collect()
    }
}

async fn record(State(recorder): State<Recorder>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let seen = Seen::new(
        parts.method.clone(),
        &parts.uri,
        parts.headers.clone(),
        &body,
    );
    recorder.seen.lock().unwrap().push(seen);
    next.run(Request::from_parts(parts, Body::from(body))).await
}

/// Serves `router` on `127.0.0.1:0` for the rest of the test; answers its base URL.
pub async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a local port");
    let base = format!("http://{}", listener.local_addr().expect("a local address"));
    tokio::spawn(async move {
        axum::serve(listener, router)
            .await
            .expect("the fake serves")
    });
    base
}
