//! The metrics the platform clients record, with their help text: one request counter and one
//! latency histogram, labelled by platform, operation and status class. Herald's own list of
//! every metric it exports (`herald_jobs::metrics::ALL`) includes these, so dashboards and alert
//! rules are checked against both.

/// One declared metric: its name, kind and help text.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

// Labels: platform_requests_total{platform,operation,status_class};
// platform_request_duration_seconds{platform,operation}.
pub const PLATFORM_REQUESTS_TOTAL: &str = "herald_platform_requests_total";
pub const PLATFORM_REQUEST_DURATION_SECONDS: &str = "herald_platform_request_duration_seconds";

/// The metrics of this crate, in declaration order.
pub const ALL: &[Metric] = &[
    Metric {
        name: PLATFORM_REQUESTS_TOTAL,
        kind: Kind::Counter,
        help: "HTTP requests to platforms by platform, operation and status class (2xx, 4xx, 5xx, timeout, network).",
    },
    Metric {
        name: PLATFORM_REQUEST_DURATION_SECONDS,
        kind: Kind::Histogram,
        help: "Latency of HTTP requests to platforms, by platform and operation.",
    },
];
