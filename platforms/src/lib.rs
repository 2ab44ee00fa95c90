#![doc = include_str!("../README.md")]

pub mod bluesky;
pub mod config;
mod error;
pub mod facebook;
pub mod http;
pub mod instagram;
mod kind;
pub mod linkedin;
pub mod mastodon;
pub mod media;
pub mod meta;
pub mod metrics;
pub mod oauth;
mod platform;
mod registry;
pub mod ssrf;
#[cfg(feature = "testing")]
pub mod testing;
pub mod text;
pub mod threads;
mod types;
pub mod x;

pub use error::{LimitScope, PlatformError};
pub use kind::PlatformKind;
pub use platform::{Capabilities, Platform};
pub use registry::Platforms;
pub use types::{
    Account, AppBudget, Checkpoint, CheckpointSink, Credentials, FollowerAccount, FollowerPage,
    Invalid, PostRequest, Profile, Published, Relation, TokenSet,
};
