//! What the platform clients are configured with: Herald's app on each platform that has one
//! (`HERALD_<X|LINKEDIN|FACEBOOK|INSTAGRAM|THREADS>_*`). The binary reads them once at start
//! (see `.env.example`); tests build them directly. Bluesky's client is Herald itself
//! (`bluesky::oauth::ClientConfig`).

use secrecy::SecretString;

use crate::{kind::PlatformKind, oauth::OAuthClient};

/// A platform app's credentials (X, LinkedIn and Meta need one; Mastodon registers an app per
/// instance and Bluesky's client is Herald itself). The URLs default to the platform's own.
#[derive(Debug, Clone)]
pub struct PlatformApp {
    pub client_id: String,
    pub client_secret: Option<SecretString>,
    pub api_base: Option<String>,
    pub token_url: Option<String>,
    pub authorize_url: Option<String>,
    /// The RFC 7009 revocation endpoint (`HERALD_<P>_REVOKE_URL`). Unset: X's documented one
    /// while the token URL is X's own, and no revocation otherwise.
    pub revoke_url: Option<String>,
}

impl PlatformApp {
    /// Herald's client at the token endpoint: `token_url`, else the platform's own.
    pub fn client(&self, default_token_url: &str) -> OAuthClient {
        OAuthClient {
            client_id: self.client_id.clone(),
            client_secret: self.client_secret.clone(),
            token_url: self
                .token_url
                .clone()
                .unwrap_or_else(|| default_token_url.to_owned()),
        }
    }

    /// The app on a platform whose web flow takes the app secret in the token request instead of
    /// PKCE (LinkedIn, Meta's three), with the operator's endpoints where configured and no
    /// revocation endpoint unless the operator names one (none of them documents RFC 7009).
    pub fn secret_flow(
        &self,
        default_token_url: &str,
        default_authorize_url: &str,
        scopes: &'static str,
    ) -> crate::oauth::OAuthApp {
        crate::oauth::OAuthApp {
            client: self.client(default_token_url),
            authorize_url: self
                .authorize_url
                .clone()
                .unwrap_or_else(|| default_authorize_url.to_owned()),
            revoke_url: self.revoke_url.clone(),
            scopes,
            pkce: false,
            auth: oauth2::AuthType::RequestBody,
        }
    }

    /// Where the platform's API is: `api_base`, else the platform's own.
    pub fn api_base_or(&self, default: &str) -> String {
        self.api_base.clone().unwrap_or_else(|| default.to_owned())
    }
}

/// Configured platform apps. A platform without one is unavailable.
#[derive(Debug, Clone, Default)]
pub struct PlatformApps {
    pub x: Option<PlatformApp>,
    pub linkedin: Option<PlatformApp>,
    pub facebook: Option<PlatformApp>,
    pub instagram: Option<PlatformApp>,
    pub threads: Option<PlatformApp>,
}

impl PlatformApps {
    pub fn get(&self, kind: PlatformKind) -> Option<&PlatformApp> {
        match kind {
            PlatformKind::X => self.x.as_ref(),
            PlatformKind::Linkedin => self.linkedin.as_ref(),
            PlatformKind::FacebookPages => self.facebook.as_ref(),
            PlatformKind::Instagram => self.instagram.as_ref(),
            PlatformKind::Threads => self.threads.as_ref(),
            PlatformKind::Mastodon | PlatformKind::Bluesky => None,
        }
    }

    /// Reads `HERALD_<X|LINKEDIN|FACEBOOK|INSTAGRAM|THREADS>_CLIENT_ID` (required for the app to
    /// exist), `_CLIENT_SECRET`, `_API_BASE`, `_TOKEN_URL` and `_AUTHORIZE_URL`.
    pub fn from_env() -> Self {
        let read = |name: &str| {
            let var = |suffix: &str| {
                std::env::var(format!("HERALD_{name}_{suffix}"))
                    .ok()
                    .filter(|v| !v.trim().is_empty())
            };
            var("CLIENT_ID").map(|client_id| PlatformApp {
                client_id,
                client_secret: var("CLIENT_SECRET").map(SecretString::from),
                api_base: var("API_BASE"),
                token_url: var("TOKEN_URL"),
                authorize_url: var("AUTHORIZE_URL"),
                revoke_url: var("REVOKE_URL"),
            })
        };
        Self {
            x: read("X"),
            linkedin: read("LINKEDIN"),
            facebook: read("FACEBOOK"),
            instagram: read("INSTAGRAM"),
            threads: read("THREADS"),
        }
    }
}
