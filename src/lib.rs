//! The `herald` binary's library half: configuration and process assembly, shared by the CLI
//! and the end-to-end tests in `tests/`.

pub mod app;
pub mod bluesky;
pub mod config;
pub mod keys;
