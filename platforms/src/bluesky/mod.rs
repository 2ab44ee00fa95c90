//! Bluesky (AT Protocol): `com.atproto.repo.createRecord` of an `app.bsky.feed.post` with link
//! and mention facets and an `app.bsky.embed.external` link card, read-back by record key, and
//! follower lists through the PDS's AppView proxy.
//!
//! Written by hand on `reqwest` + `serde_json` rather than with `atrium-api`: the client needs about
//! ten XRPC calls and a few record fields, every request must go through [`http::send`] (metrics,
//! outcome classes) and the SSRF-guarded client, and atrium-api is 2.8 MB of generated lexicon code
//! with its own transport trait.
//!
//! # Connection conventions
//! - `Account::platform_account_id` is the DID; `extras.pds_url` (required) is the PDS base URL;
//!   `Account::handle` the handle.
//! - `extras.auth` says how the connection authenticates and is never mixed:
//!   - `"app_password"`: `Credentials::access_token` holds the **app password** itself (encrypted by
//!     the vault like any token). The client logs in with `com.atproto.server.createSession`
//!     (identifier = the DID), keeps the session in a bounded in-memory cache keyed by PDS and DID,
//!     and renews it with `refreshSession` (or a new login) when the PDS answers `ExpiredToken` /
//!     `InvalidToken` / 401, then replays the call once ([`session`]). Sessions are never stored:
//!     they live at most as long as the process, so a restart costs one `createSession` per
//!     account (the PDS allows 30 per 5 minutes). Logging in and renewing are single-flight per
//!     account in the process: concurrent calls wait for the one login or renewal under way and
//!     use its session.
//!   - `"oauth"`: DPoP-bound OAuth tokens from the connect flow (`connect/bluesky.rs`):
//!     `Credentials::dpop_key` is the session's private key (base64url PKCS#8), and the extras
//!     carry `auth_server` (the issuer), `token_endpoint`, `client_id` (the client the session was
//!     granted to) and `client_kid` (the key that signed for it). Every call carries
//!     `Authorization: DPoP <token>` and a proof ([`dpop`]); an expired token is
//!     [`PlatformError::TokenExpired`], so the share job refreshes it through the single-flight
//!     refresh and tries again; the refresh spends the rotating refresh token at the token
//!     endpoint ([`oauth::refresh`]).
//!   - absent: OAuth if the credentials carry a DPoP key or a refresh token (OAuth tokens are
//!     preferred whenever present), else the app password.
//!
//! # Record keys
//! Every attempt of a share writes the same record key ([`tid::record_key`]), so a repeat finds
//! it. A second `createRecord` with the same key fails on the reference PDS with a bare 500
//! `InternalServerError` (checked against `@atproto/dev-env`; the cause, "There is already a value
//! at key", stays in the server's log), so any failed create is settled by `getRecord` before it
//! is reported.
//!
//! # The modules
//! The leaves import from each other, never from this client: [`xrpc`] (answers and their
//! classification), [`tid`] (record keys), [`rich_text`] (limits, facets, handles),
//! [`link_card`] (the OpenGraph card), [`session`] (how a connection authenticates, and
//! app-password sessions), and the AT Protocol OAuth client: [`identity`] (handle → DID → PDS →
//! authorization server), [`oauth`] (client metadata, PAR, token grants, revocation), [`dpop`]
//! (proofs and nonces), [`jwt`] (ES256 keys on `ring`).

pub mod dpop;
pub mod identity;
mod images;
pub mod jwt;
pub mod link_card;
pub mod oauth;
pub mod rich_text;
pub mod session;
pub mod tid;
pub mod xrpc;

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::{SecondsFormat, Utc};
use reqwest::{Client, RequestBuilder, StatusCode, header::CONTENT_TYPE};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{Value, json};

use self::{
    rich_text::{Span, detect_spans, text_problem},
    session::{Auth, Sessions, auth_mode, oauth_session},
    tid::record_key,
    xrpc::{ActorRef, Answer, RecordBody, answer},
};
use crate::{
    error::PlatformError,
    http,
    kind::PlatformKind,
    media::{Count, ImageType, MediaRules},
    oauth::{OAuthApp, Revoked},
    platform::{Capabilities, Platform},
    ssrf::SsrfGuard,
    types::{
        Account, Credentials, FollowerAccount, FollowerPage, Invalid, PostRequest, Profile,
        Published, Relation, TokenSet,
    },
};

const POST_COLLECTION: &str = "app.bsky.feed.post";
/// A record key stays taken as long as the post exists: a retry within this long cannot post
/// twice (unless the user deleted the post in between).
const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);
/// Sessions cached per process; beyond this the oldest is dropped (it is re-created on demand).
const SESSION_CACHE_CAPACITY: usize = 1024;
const FOLLOWERS_PAGE_SIZE: u32 = 100;

#[derive(Debug, Clone)]
pub struct Bluesky {
    http: Client,
    guard: SsrfGuard,
    sessions: Arc<Sessions>,
    /// Herald's OAuth client: refreshes need it (a confidential client signs an assertion).
    oauth: Option<oauth::ClientConfig>,
}

impl Bluesky {
    /// `http` is the shared guarded client ([`http::client`]); `guard` checks the user-supplied
    /// URLs (the linked page, its image, the PDS) that IP literals would otherwise take past the
    /// guarded resolver.
    pub fn new(http: Client, guard: SsrfGuard) -> Self {
        Self {
            sessions: Arc::new(Sessions::new(http.clone(), SESSION_CACHE_CAPACITY)),
            http,
            guard,
            oauth: None,
        }
    }

    /// With Herald's OAuth client, so OAuth sessions can be refreshed.
    pub fn with_oauth(mut self, client: oauth::ClientConfig) -> Self {
        self.oauth = Some(client);
        self
    }

    fn pds(&self, account: &Account) -> Result<String, PlatformError> {
        let raw = account
            .extra_str("pds_url")
            .ok_or_else(|| PlatformError::Rejected {
                status: 0,
                reason: "connection has no pds_url".into(),
            })?;
        self.guard
            .check_url(raw)
            .map_err(|e| PlatformError::Rejected {
                status: 0,
                reason: format!("pds_url refused: {e}"),
            })?;
        Ok(raw.trim_end_matches('/').to_owned())
    }

    /// The post text: the text (or else the title), a blank line, the URL, unless the text already
    /// carries the URL.
    pub fn compose(post: &PostRequest) -> String {
        let lead = post
            .text
            .as_deref()
            .or(post.title.as_deref())
            .map(str::trim)
            .filter(|s| !s.is_empty());
        match lead {
            Some(lead) if lead.contains(&post.url) => lead.to_owned(),
            Some(lead) => format!("{lead}\n\n{}", post.url),
            None => post.url.clone(),
        }
    }

    fn post_url(account: &Account, rkey: &str) -> String {
        let who = if account.handle.is_empty() {
            &account.platform_account_id
        } else {
            &account.handle
        };
        format!("https://bsky.app/profile/{who}/post/{rkey}")
    }
}

// ---------------------------------------------------------------------------------------------
// Calls
// ---------------------------------------------------------------------------------------------

impl Bluesky {
    /// Sends an authenticated XRPC call; on an expired or revoked session renews it and replays
    /// once. Any other answer, success or not, is returned for the caller to read.
    async fn call(
        &self,
        pds: &str,
        account: &Account,
        creds: &Credentials,
        operation: &'static str,
        creates: bool,
        build: impl Fn(&Client) -> RequestBuilder + Send + Sync,
    ) -> Result<Answer, PlatformError> {
        let password = match auth_mode(account, creds)? {
            Auth::AppPassword(p) => p,
            Auth::OAuth => return self.call_oauth(creds, operation, creates, build).await,
        };
        let session = self.sessions.get(pds, account, password).await?;
        let req = build(&self.http).bearer_auth(session.access.expose_secret());
        let first = answer(
            http::send(self.kind(), operation, creates, req).await?,
            creates,
        )
        .await?;
        if !first.session_expired() {
            return Ok(first);
        }
        let session = self
            .sessions
            .renew(pds, account, password, &session)
            .await?;
        let req = build(&self.http).bearer_auth(session.access.expose_secret());
        let second = answer(
            http::send(self.kind(), operation, creates, req).await?,
            creates,
        )
        .await?;
        if second.session_expired() {
            // A brand-new session refused: the account, not the token, is the problem.
            self.sessions.forget(pds, account);
        }
        Ok(second)
    }

    /// An XRPC call with the OAuth session: `Authorization: DPoP`, a proof, the PDS's nonce.
    /// An expired or revoked token is `TokenExpired` when a refresh token may revive it.
    async fn call_oauth(
        &self,
        creds: &Credentials,
        operation: &'static str,
        creates: bool,
        build: impl Fn(&Client) -> RequestBuilder + Send + Sync,
    ) -> Result<Answer, PlatformError> {
        let (key, token) = oauth_session(creds)?;
        let a = dpop::send(&self.http, &key, Some(token), operation, creates, build).await?;
        if a.session_expired() {
            return Err(if creds.refresh_token.is_some() {
                PlatformError::TokenExpired
            } else {
                a.classify()
            });
        }
        Ok(a)
    }

    /// The refresh-token grant at the session's token endpoint, with the session's DPoP key and
    /// the client it was granted to. The answer must still name the connection's DID and grant
    /// what posting needs.
    async fn refresh_oauth(
        &self,
        account: &Account,
        creds: &Credentials,
    ) -> Result<TokenSet, PlatformError> {
        let (key, _) = oauth_session(creds)?;
        let refresh_token =
            creds
                .refresh_token
                .as_ref()
                .ok_or_else(|| PlatformError::InvalidGrant {
                    reason: "no refresh token stored".into(),
                })?;
        let missing = |what: &str| PlatformError::InvalidGrant {
            reason: format!("the connection has no {what}; connect it again"),
        };
        let client = self
            .oauth
            .as_ref()
            .ok_or_else(|| missing("OAuth client configured"))?;
        let issuer = account
            .extra_str("auth_server")
            .ok_or_else(|| missing("authorization server"))?;
        let token_endpoint = account
            .extra_str("token_endpoint")
            .ok_or_else(|| missing("token endpoint"))?;
        self.guard
            .check_url(token_endpoint)
            .map_err(|e| PlatformError::Rejected {
                status: 0,
                reason: format!("token endpoint refused: {e}"),
            })?;
        let client_id = account
            .extra_str("client_id")
            .map_or_else(|| client.client_id(), str::to_owned);
        let grant = oauth::Grant {
            token_endpoint,
            issuer,
            client_id: &client_id,
            kid: account.extra_str("client_kid"),
        };
        let tokens = oauth::refresh(&self.http, client, &key, &grant, refresh_token).await?;
        if tokens.sub != account.platform_account_id {
            return Err(PlatformError::InvalidGrant {
                reason: format!(
                    "the refreshed session belongs to {}, not {}",
                    tokens.sub, account.platform_account_id
                ),
            });
        }
        // A narrowed grant would otherwise be stored and fail every share as a rejection.
        if !tokens.grants(oauth::POSTING_SCOPE) {
            return Err(PlatformError::InvalidGrant {
                reason: format!(
                    "the renewed session no longer grants `{}` (granted: `{}`), so nothing can be \
                     posted",
                    oauth::POSTING_SCOPE,
                    tokens.scope
                ),
            });
        }
        Ok(tokens.into_token_set())
    }

    /// Ends an OAuth session at its authorization server (the connection is being removed).
    /// `Ok(false)`: nothing to revoke there (an app password, or no revocation endpoint).
    pub async fn revoke_oauth(
        &self,
        account: &Account,
        creds: &Credentials,
    ) -> Result<bool, PlatformError> {
        let (Auth::OAuth, Some(endpoint), Some(refresh_token), Some(client)) = (
            auth_mode(account, creds)?,
            account.extra_str("revocation_endpoint"),
            creds.refresh_token.as_ref(),
            self.oauth.as_ref(),
        ) else {
            return Ok(false);
        };
        self.guard
            .check_url(endpoint)
            .map_err(|e| PlatformError::Rejected {
                status: 0,
                reason: format!("revocation endpoint refused: {e}"),
            })?;
        let (key, _) = oauth_session(creds)?;
        let client_id = account
            .extra_str("client_id")
            .map_or_else(|| client.client_id(), str::to_owned);
        let grant = oauth::Grant {
            token_endpoint: account.extra_str("token_endpoint").unwrap_or(endpoint),
            issuer: account.extra_str("auth_server").unwrap_or_default(),
            client_id: &client_id,
            kid: account.extra_str("client_kid"),
        };
        oauth::revoke(&self.http, client, &key, endpoint, &grant, refresh_token).await?;
        Ok(true)
    }

    async fn get_record(
        &self,
        pds: &str,
        account: &Account,
        rkey: &str,
    ) -> Result<Option<RecordBody>, PlatformError> {
        let req = self
            .http
            .get(xrpc::url(pds, "com.atproto.repo.getRecord"))
            .query(&[
                ("repo", account.platform_account_id.as_str()),
                ("collection", POST_COLLECTION),
                ("rkey", rkey),
            ]);
        let a = answer(
            http::send(self.kind(), "get_record", false, req).await?,
            false,
        )
        .await?;
        if a.ok() {
            return a.json(false).map(Some);
        }
        if a.status == StatusCode::BAD_REQUEST && a.error_name() == "RecordNotFound" {
            return Ok(None);
        }
        Err(a.classify())
    }

    /// Our post under `rkey`, if it is there: a record with another text is someone else's
    /// (a record key collision), never reported as ours.
    async fn read_back(
        &self,
        pds: &str,
        account: &Account,
        rkey: &str,
        text: &str,
    ) -> Result<Option<Published>, PlatformError> {
        match self.get_record(pds, account, rkey).await? {
            None => Ok(None),
            Some(r) if r.value.get("text").and_then(Value::as_str) == Some(text) => {
                Ok(Some(Published {
                    post_id: r.uri,
                    post_url: Some(Self::post_url(account, rkey)),
                    app_budget: None,
                }))
            }
            Some(r) => Err(PlatformError::Rejected {
                status: 409,
                reason: format!("record key {rkey} already holds another post ({})", r.uri),
            }),
        }
    }

    async fn resolve_handle(&self, pds: &str, handle: &str) -> Option<String> {
        #[derive(Deserialize)]
        struct Resolved {
            did: String,
        }
        let req = self
            .http
            .get(xrpc::url(pds, "com.atproto.identity.resolveHandle"))
            .query(&[("handle", handle)]);
        let a = answer(
            http::send(self.kind(), "resolve_handle", false, req)
                .await
                .ok()?,
            false,
        )
        .await
        .ok()?;
        let did = a
            .ok()
            .then(|| a.json::<Resolved>(false).ok())
            .flatten()?
            .did;
        did.starts_with("did:").then_some(did)
    }

    /// Facets for the text: links as written, mentions whose handle resolves (an unresolvable
    /// mention stays plain text rather than failing the share).
    async fn facets(&self, pds: &str, text: &str) -> Vec<Value> {
        let mut out = Vec::new();
        for span in detect_spans(text) {
            match span {
                Span::Link { start, end, uri } => out.push(json!({
                    "index": { "byteStart": start, "byteEnd": end },
                    "features": [{ "$type": "app.bsky.richtext.facet#link", "uri": uri }],
                })),
                Span::Mention { start, end, handle } => {
                    if let Some(did) = self.resolve_handle(pds, &handle).await {
                        out.push(json!({
                            "index": { "byteStart": start, "byteEnd": end },
                            "features": [{ "$type": "app.bsky.richtext.facet#mention", "did": did }],
                        }));
                    }
                }
            }
        }
        out
    }

    /// The `app.bsky.embed.external` card for the link, or `None` when the page cannot be read.
    /// The thumbnail is best effort: a card without one is still a card.
    async fn link_card(
        &self,
        pds: &str,
        account: &Account,
        creds: &Credentials,
        post: &PostRequest,
    ) -> Option<Value> {
        let (mut external, image) = link_card::card(&self.http, &self.guard, post).await?;
        // The share's own image was captured at enqueue: its bytes, not the URL again.
        let captured = post.media.first().filter(|_| post.image_url.is_some());
        let thumb = match (captured, image) {
            (Some(captured), _) => self.upload_blob(pds, account, creds, captured).await.ok(),
            (None, Some(image)) => self.upload_thumb(pds, account, creds, &image).await,
            (None, None) => None,
        };
        if let Some(blob) = thumb {
            external["thumb"] = blob;
        }
        Some(json!({ "$type": "app.bsky.embed.external", "external": external }))
    }

    async fn upload_thumb(
        &self,
        pds: &str,
        account: &Account,
        creds: &Credentials,
        image_url: &str,
    ) -> Option<Value> {
        let (mime, bytes) = link_card::thumbnail(&self.http, &self.guard, image_url).await?;
        let url = xrpc::url(pds, "com.atproto.repo.uploadBlob");
        let a = self
            .call(pds, account, creds, "upload_blob", false, |c| {
                c.post(&url).header(CONTENT_TYPE, &mime).body(bytes.clone())
            })
            .await
            .ok()?;
        if !a.ok() {
            return None;
        }
        a.json::<Value>(false).ok()?.get("blob").cloned()
    }
}

#[async_trait]
impl Platform for Bluesky {
    fn kind(&self) -> PlatformKind {
        PlatformKind::Bluesky
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            idempotency_window: Some(IDEMPOTENCY_WINDOW),
            refresh: true,
            followers: true,
            requires_image: false,
            checkpoint_settles_outcome: false,
        }
    }

    /// `app.bsky.embed.images`: at most 4, each blob at most 1,000,000 bytes of `image/*`; alt
    /// text has no limit in the lexicon, and Bluesky's app stops at 2,000 graphemes.
    fn media_rules(&self) -> MediaRules {
        MediaRules {
            max_images: 4,
            max_alt: Some((2000, Count::Graphemes)),
            types: &ImageType::ALL,
            max_bytes: link_card::MAX_THUMB_BYTES,
            max_pixels: None,
        }
    }

    fn validate(&self, _account: &Account, post: &PostRequest) -> Result<(), Invalid> {
        match text_problem(&Self::compose(post)) {
            Some(message) => Err(Invalid {
                field: "text",
                code: "text_too_long",
                message,
            }),
            None => Ok(()),
        }
    }

    async fn verify(
        &self,
        account: &Account,
        creds: &Credentials,
    ) -> Result<Profile, PlatformError> {
        let pds = self.pds(account)?;
        let url = xrpc::url(&pds, "com.atproto.server.getSession");
        let a = self
            .call(&pds, account, creds, "verify", false, |c| c.get(&url))
            .await?;
        if !a.ok() {
            return Err(a.classify());
        }
        let me: ActorRef = a.json(false)?;
        // The profile is an AppView record: nice to have, never a reason to fail the check.
        let profile_url = xrpc::url(&pds, "app.bsky.actor.getProfile");
        let profile = match self
            .call(&pds, account, creds, "get_profile", false, |c| {
                c.get(&profile_url).query(&[("actor", &me.did)])
            })
            .await
        {
            Ok(p) if p.ok() => p.json::<Value>(false).ok(),
            _ => None,
        };
        let field = |name: &str| profile.as_ref().and_then(|v| v.get(name));
        Ok(Profile {
            platform_account_id: me.did,
            handle: me.handle,
            display_name: crate::types::display_name(
                field("displayName")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            ),
            followers_count: field("followersCount").and_then(Value::as_u64),
        })
    }

    async fn share(
        &self,
        account: &Account,
        creds: &Credentials,
        post: &PostRequest,
    ) -> Result<Published, PlatformError> {
        let pds = self.pds(account)?;
        let text = Self::compose(post);
        if let Some(message) = text_problem(&text) {
            return Err(PlatformError::Rejected {
                status: 0,
                reason: message,
            });
        }
        let rkey = record_key(&post.idempotency_key);
        let facets = self.facets(&pds, &text).await;
        // Images sent in `media` are the post's embed (and the card gives way: a post has one
        // embed). The one image of `image_url` is the card's thumbnail, as it always was, or is
        // posted as an image when no card can be made of the page, rather than dropped.
        let card = if post.image_url.is_none() && !post.media.is_empty() {
            None
        } else {
            tokio::time::timeout(
                link_card::CARD_BUDGET,
                self.link_card(&pds, account, creds, post),
            )
            .await
            .ok()
            .flatten()
        };
        let with_images = card.is_none() && !post.media.is_empty();
        let mut embed = match card {
            Some(card) => Some(card),
            None if with_images => {
                Some(self.images_embed(&pds, account, creds, post, false).await?)
            }
            None => None,
        };
        let url = xrpc::url(&pds, "com.atproto.repo.createRecord");
        let mut fresh = false;
        let created = loop {
            let mut record = json!({
                "$type": POST_COLLECTION,
                "text": text,
                "createdAt": Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
            });
            if !facets.is_empty() {
                record["facets"] = Value::Array(facets.clone());
            }
            if let Some(embed) = &embed {
                record["embed"] = embed.clone();
            }
            let body = json!({
                "repo": account.platform_account_id,
                "collection": POST_COLLECTION,
                "rkey": rkey,
                "record": record,
            });
            let created = self
                .call(&pds, account, creds, "share", true, |c| {
                    c.post(&url).json(&body)
                })
                .await;
            // Blobs saved by an earlier attempt that the PDS has since deleted: upload again,
            // once. Nothing was created.
            if with_images
                && !fresh
                && matches!(&created, Ok(a) if !a.ok() && a.error_name() == "BlobNotFound")
            {
                fresh = true;
                embed = Some(self.images_embed(&pds, account, creds, post, true).await?);
                continue;
            }
            break created;
        };
        let failure = match created {
            Ok(a) if a.ok() => {
                #[derive(Deserialize)]
                struct Created {
                    uri: String,
                }
                let c: Created = a.json(true)?;
                return Ok(Published {
                    post_id: c.uri,
                    post_url: Some(Self::post_url(account, &rkey)),
                    app_budget: None,
                });
            }
            Ok(a) => a.classify(),
            Err(e) => e,
        };
        // A repeat of a create that went through is refused (the reference PDS answers 500
        // "There is already a value at key"): the record under our key settles it. Auth and rate
        // limits are reported as they are.
        match failure {
            PlatformError::Rejected { .. }
            | PlatformError::Transient { .. }
            | PlatformError::OutcomeUnknown { .. } => {
                match self.read_back(&pds, account, &rkey, &text).await {
                    Ok(Some(published)) => Ok(published),
                    Ok(None) => Err(failure),
                    Err(e @ PlatformError::Rejected { status: 409, .. }) => Err(e),
                    Err(_) => Err(failure),
                }
            }
            other => Err(other),
        }
    }

    async fn find_published(
        &self,
        account: &Account,
        _creds: &Credentials,
        post: &PostRequest,
    ) -> Result<Option<Published>, PlatformError> {
        let pds = self.pds(account)?;
        let rkey = record_key(&post.idempotency_key);
        match self
            .read_back(&pds, account, &rkey, &Self::compose(post))
            .await
        {
            Err(PlatformError::Rejected { status: 409, .. }) => Ok(None),
            other => other,
        }
    }

    /// For OAuth: the refresh-token grant (see [`Bluesky::refresh_oauth`]). For an app password:
    /// logs in afresh (replacing the cached session) and hands the app password back unchanged,
    /// since it, not the session, is what the store keeps. A refused password is `InvalidGrant`.
    async fn refresh(
        &self,
        account: &Account,
        creds: &Credentials,
    ) -> Result<TokenSet, PlatformError> {
        let pds = self.pds(account)?;
        let password = match auth_mode(account, creds)? {
            Auth::AppPassword(p) => p,
            Auth::OAuth => return self.refresh_oauth(account, creds).await,
        };
        match self.sessions.create(&pds, account, password).await {
            Ok(_) => Ok(TokenSet {
                access_token: password.clone(),
                refresh_token: None,
                expires_at: None,
            }),
            Err(PlatformError::Unauthorized { reason }) => {
                Err(PlatformError::InvalidGrant { reason })
            }
            Err(e) => Err(e),
        }
    }

    /// An OAuth session is ended at its authorization server (`revocation_endpoint`, with
    /// DPoP); an app password has nothing to revoke there.
    async fn revoke(
        &self,
        _http: &Client,
        account: &Account,
        creds: &Credentials,
        _app: Option<&OAuthApp>,
    ) -> Revoked {
        match self.revoke_oauth(account, creds).await {
            Ok(true) => Revoked::Revoked,
            Ok(false) => Revoked::NoEndpoint,
            Err(e) => Revoked::Failed(e.to_string()),
        }
    }

    async fn followers_page(
        &self,
        account: &Account,
        creds: &Credentials,
        relation: Relation,
        cursor: Option<&str>,
    ) -> Result<FollowerPage, PlatformError> {
        #[derive(Deserialize)]
        struct Page {
            #[serde(alias = "follows", default)]
            followers: Vec<ActorRef>,
            cursor: Option<String>,
        }
        let pds = self.pds(account)?;
        let nsid = match relation {
            Relation::Followers => "app.bsky.graph.getFollowers",
            Relation::Follows => "app.bsky.graph.getFollows",
        };
        let url = xrpc::url(&pds, nsid);
        let limit = FOLLOWERS_PAGE_SIZE.to_string();
        let a = self
            .call(&pds, account, creds, "followers", false, |c| {
                let mut q = vec![
                    ("actor", account.platform_account_id.as_str()),
                    ("limit", limit.as_str()),
                ];
                if let Some(cursor) = cursor {
                    q.push(("cursor", cursor));
                }
                c.get(&url).query(&q)
            })
            .await?;
        if !a.ok() {
            return Err(a.classify());
        }
        let page: Page = a.json(false)?;
        // An empty page with a cursor would page forever.
        let next_cursor = page
            .cursor
            .filter(|c| !c.is_empty() && !page.followers.is_empty() && Some(c.as_str()) != cursor);
        Ok(FollowerPage {
            accounts: page
                .followers
                .into_iter()
                .map(|a| FollowerAccount {
                    platform_account_id: a.did,
                    handle: a.handle,
                })
                .collect(),
            next_cursor,
        })
    }
}
