//! Holds every platform client this process has, by kind: the one place that dispatches on the
//! platform, and the one list of what the configuration turns on.

use std::{collections::HashMap, fmt, sync::Arc};

use reqwest::Client;

use crate::{
    bluesky::{Bluesky, oauth::ClientConfig},
    config::PlatformApps,
    facebook::Facebook,
    instagram::Instagram,
    kind::PlatformKind,
    linkedin::Linkedin,
    mastodon::Mastodon,
    platform::Platform,
    ssrf::SsrfGuard,
    threads::Threads,
    x::X,
};

/// The platform clients this process has, by kind.
#[derive(Clone, Default)]
pub struct Platforms {
    clients: HashMap<PlatformKind, Arc<dyn Platform>>,
}

impl fmt::Debug for Platforms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.clients.keys()).finish()
    }
}

impl Platforms {
    /// Every client this configuration allows, sharing one guarded HTTP client
    /// ([`crate::http::client`]): Mastodon (which needs no app) and Bluesky (whose OAuth client is
    /// Herald itself, `bluesky`) always, the others when their app is configured.
    pub fn configured(
        http: Client,
        guard: &SsrfGuard,
        apps: &PlatformApps,
        bluesky: ClientConfig,
    ) -> Self {
        let mut p = Self::default()
            .with(Arc::new(Mastodon::new(http.clone())))
            .with(Arc::new(
                Bluesky::new(http.clone(), guard.clone()).with_oauth(bluesky),
            ));
        if let Some(app) = &apps.x {
            p = p.with(Arc::new(X::from_config(http.clone(), app)));
        }
        if let Some(app) = &apps.linkedin {
            p = p.with(Arc::new(Linkedin::from_config(http.clone(), app)));
        }
        if let Some(app) = &apps.facebook {
            p = p.with(Arc::new(Facebook::from_config(http.clone(), app)));
        }
        if let Some(app) = &apps.instagram {
            p = p.with(Arc::new(Instagram::from_config(http.clone(), app)));
        }
        if let Some(app) = &apps.threads {
            p = p.with(Arc::new(Threads::from_config(http, app)));
        }
        p
    }

    pub fn with(mut self, client: Arc<dyn Platform>) -> Self {
        self.clients.insert(client.kind(), client);
        self
    }

    pub fn get(&self, kind: PlatformKind) -> Option<&Arc<dyn Platform>> {
        self.clients.get(&kind)
    }
}
