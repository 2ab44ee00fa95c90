//! The HTTP client every platform client uses: the SSRF guard's resolver, no redirects to
//! unchecked hosts, a timeout, and a metric per request.

use std::time::{Duration, Instant};

use reqwest::{Client, RequestBuilder, Response};

use crate::{error::PlatformError, kind::PlatformKind, metrics as m, ssrf::SsrfGuard};

/// Builds the shared client. Redirects are not followed: a platform API that redirects is
/// answered as an error, and no request reaches a host the guard has not seen. System proxies
/// (`HTTP(S)_PROXY`, `ALL_PROXY`) are ignored: a proxy would resolve user-supplied host names
/// itself, where the guard's resolver never sees them.
pub fn client(guard: &SsrfGuard, timeout: Duration) -> Client {
    Client::builder()
        .no_proxy()
        .dns_resolver(guard.resolver())
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .user_agent(concat!("Herald/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("the HTTP client builds")
}

/// Whether the request was sent when an error happened: a connect failure or a timeout before
/// the connection was made means nothing reached the platform.
pub fn sent_before_error(e: &reqwest::Error) -> bool {
    !e.is_connect() && !e.is_builder()
}

/// Sends one request, counts it by status class, and maps transport errors into the outcome
/// classes. `creates` marks a call that creates something: a timeout after sending it means the
/// outcome is unknown.
pub async fn send(
    platform: PlatformKind,
    operation: &'static str,
    creates: bool,
    req: RequestBuilder,
) -> Result<Response, PlatformError> {
    let started = Instant::now();
    let res = req.send().await;
    let class = match &res {
        Ok(r) => match r.status().as_u16() {
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        },
        Err(e) if e.is_timeout() => "timeout",
        Err(_) => "network",
    };
    metrics::counter!(m::PLATFORM_REQUESTS_TOTAL, "platform" => platform.as_str(), "operation" => operation, "status_class" => class).increment(1);
    metrics::histogram!(m::PLATFORM_REQUEST_DURATION_SECONDS, "platform" => platform.as_str(), "operation" => operation)
        .record(started.elapsed().as_secs_f64());
    res.map_err(|e| {
        let reason = if e.is_timeout() {
            "timed out".to_owned()
        } else {
            "network error".to_owned()
        };
        if creates && sent_before_error(&e) {
            PlatformError::OutcomeUnknown { reason }
        } else {
            PlatformError::Transient {
                status: None,
                reason,
            }
        }
    })
}
