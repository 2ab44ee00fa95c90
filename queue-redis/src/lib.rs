#![doc = include_str!("../README.md")]

mod ack;
mod config;
mod connection;
mod consumer;
mod error;
mod keys;
mod listing;
mod push;
mod queue;
mod scripts;
mod storage;
mod tools;
mod types;
mod worker;

pub use ack::{AckLayer, AckService};
pub use config::Config;
pub use connection::RedisConn;
pub use error::Error;
pub use queue::RedisQueue;
pub use storage::{Health, RedisStorage};
pub use types::{DeadJob, JobId, Pushed, QueueStats};
