//! What a local platform server received, kept in order so a test can check the documented
//! request shape (headers, form, JSON body) and count the calls a step made.

use std::collections::HashMap;

use axum::http::{HeaderMap, Method, Uri, header};
use serde_json::Value;

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
}

impl Seen {
    pub fn new(method: Method, uri: &Uri, headers: HeaderMap, body: &[u8]) -> Self {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let form = if content_type.starts_with("application/x-www-form-urlencoded") {
            url::form_urlencoded::parse(body).into_owned().collect()
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
            query: url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
                .into_owned()
                .collect(),
            form,
            json,
            headers,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
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
