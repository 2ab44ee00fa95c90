#![doc = include_str!("../README.md")]

pub mod api_keys;
pub mod connect;
pub(crate) mod context;
pub(crate) mod error_class;
pub(crate) mod fair_share;
pub mod handlers;
pub(crate) mod ids;
pub mod media;
pub mod metrics;
pub mod payloads;
pub mod queue;
pub mod replay;
pub mod retry;
pub mod settings;
pub mod share_feed;
pub mod share_request;
pub mod store;
pub(crate) mod times;
pub mod vault;
pub mod webhooks;

pub use context::Ctx;
pub use settings::Settings;
