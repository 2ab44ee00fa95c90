//! What a worker does with each job. Handlers take the shared [`Ctx`](crate::Ctx) and a payload,
//! re-read their rows, and treat a missing row as a clean finish.

pub mod follower_sync;
pub mod gauges;
pub mod reconcile;
pub mod refresh;
pub mod share;
pub mod sweeps;
