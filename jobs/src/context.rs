//! What every job handler and API route shares.

use std::sync::Arc;

use herald_platforms::Platforms;

use crate::{queue::JobQueue, settings::Settings, store::Store, vault::KeyRing};

/// Shared state of one Herald process. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Ctx {
    pub store: Store,
    pub queue: Arc<dyn JobQueue>,
    pub vault: Arc<KeyRing>,
    pub platforms: Platforms,
    pub settings: Arc<Settings>,
    /// The guarded HTTP client for user-supplied URLs fetched by Herald itself (a share's images
    /// at enqueue): the SSRF guard's resolver, no redirects of its own.
    pub http: reqwest::Client,
}
