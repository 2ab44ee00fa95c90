#![doc = include_str!("../README.md")]

pub mod api_keys;
pub mod connect;
pub mod context;
pub mod error_class;
pub mod fair_share;
pub mod handlers;
pub mod ids;
pub mod metrics;
pub mod payloads;
pub mod queue;
pub mod replay;
pub mod retry;
pub mod settings;
pub mod share_feed;
pub mod share_request;
pub mod store;
pub mod times;
pub mod vault;

pub use context::Ctx;
pub use settings::Settings;
