//! The boundary to each social platform.
//!
//! Every platform client implements [`Platform`]. Credentials are passed per call in
//! [`Credentials`], whose `Debug` prints nothing secret. Errors are classified here, where the
//! platform's answer is understood, into [`PlatformError`] variants; the jobs decide on the variant,
//! never on a string.
//!
//! The trait is shaped for all seven platforms: per-instance apps (Mastodon's `instance_url` in
//! [`Account::extras`]), page tokens (Facebook's page id in `extras`, the page token as the access
//! token), DPoP-bound tokens ([`Credentials::dpop_key`]), and two-step container publishing
//! (Instagram and Threads create a container, then publish it; [`Platform::find_published`] is how a
//! lost answer is settled).

use std::time::Duration;

use async_trait::async_trait;

use crate::{
    error::PlatformError,
    kind::PlatformKind,
    media::MediaRules,
    oauth::{self, CodeToken, Granted, OAuthApp, Revoked},
    types::{
        Account, Credentials, FollowerPage, Invalid, PostRequest, Profile, Published, Relation,
        TokenSet,
    },
};

/// What a platform offers, so jobs and the API can decide without calling it.
#[derive(Debug, Clone, Copy)]
pub struct Capabilities {
    /// How long the platform remembers an idempotency key, if it has one. A create retried within
    /// this window cannot post twice.
    pub idempotency_window: Option<Duration>,
    pub refresh: bool,
    pub followers: bool,
    pub requires_image: bool,
    /// A saved checkpoint tells what a lost answer did (Instagram's and Threads' container can be
    /// read: published or not), so a share with one may be tried again after an unknown outcome.
    /// Where the checkpoint only holds uploads (Mastodon's media ids, Bluesky's blobs), it says
    /// nothing about the post, and the platform's own duplicate protection decides.
    pub checkpoint_settles_outcome: bool,
}

/// One platform's client. Implementations hold no per-account state.
#[async_trait]
pub trait Platform: Send + Sync + 'static {
    fn kind(&self) -> PlatformKind;

    fn capabilities(&self) -> Capabilities;

    /// The images Herald posts to this platform: how many, which types and sizes, how much alt
    /// text. By default none: a share with images to such a target is refused at enqueue.
    fn media_rules(&self) -> MediaRules {
        MediaRules::NONE
    }

    /// Checks a share against the platform's rules before anything is written.
    fn validate(&self, account: &Account, post: &PostRequest) -> Result<(), Invalid>;

    /// Confirms the credentials work and reports whose they are.
    async fn verify(
        &self,
        account: &Account,
        creds: &Credentials,
    ) -> Result<Profile, PlatformError>;

    /// Publishes one post.
    async fn share(
        &self,
        account: &Account,
        creds: &Credentials,
        post: &PostRequest,
    ) -> Result<Published, PlatformError>;

    /// Looks for a post this share already made (used to settle `outcome_unknown`).
    async fn find_published(
        &self,
        _account: &Account,
        _creds: &Credentials,
        _post: &PostRequest,
    ) -> Result<Option<Published>, PlatformError> {
        Err(PlatformError::Unsupported("read-back"))
    }

    /// Renews the access token.
    async fn refresh(
        &self,
        _account: &Account,
        _creds: &Credentials,
    ) -> Result<TokenSet, PlatformError> {
        Err(PlatformError::Unsupported("refresh"))
    }

    /// One page of followers or follows.
    async fn followers_page(
        &self,
        _account: &Account,
        _creds: &Credentials,
        _relation: Relation,
        _cursor: Option<&str>,
    ) -> Result<FollowerPage, PlatformError> {
        Err(PlatformError::Unsupported("followers"))
    }

    /// Herald's OAuth app on this platform, where one app serves every tenant (X, LinkedIn and
    /// Meta's three, when configured). Mastodon registers an app per instance
    /// (`mastodon::oauth_app`); Bluesky's AT Protocol client is Herald itself.
    fn oauth_app(&self) -> Option<&OAuthApp> {
        None
    }

    /// The accounts the tokens of a code exchange grant, with the tokens to store. `instance` is
    /// the Mastodon instance the flow was started for. By default the one account of the code's
    /// own tokens; Meta's short-lived answers are exchanged for long-lived ones here, and
    /// Facebook grants one account per page.
    async fn exchange(
        &self,
        _app: &OAuthApp,
        token: &CodeToken,
        _instance: Option<&str>,
    ) -> Result<Vec<Granted>, PlatformError> {
        Ok(vec![Granted::from_code(token)])
    }

    /// Revokes the account's grant at the platform, before its tokens are erased. `app` is the
    /// app the grant belongs to (a Mastodon instance's registered app, else [`Self::oauth_app`]);
    /// by default its RFC 7009 endpoint, where it has one.
    async fn revoke(
        &self,
        http: &reqwest::Client,
        _account: &Account,
        creds: &Credentials,
        app: Option<&OAuthApp>,
    ) -> Revoked {
        match app {
            Some(app) => oauth::revoke(http, self.kind(), app, creds).await,
            None => Revoked::NoApp,
        }
    }
}
