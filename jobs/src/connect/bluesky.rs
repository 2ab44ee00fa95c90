//! Bluesky's connect flow: the AT Protocol OAuth profile (PAR + PKCE S256 + DPoP, `iss` and `sub`
//! checks), which the `oauth2` crate does not cover. This file keeps the flow's order and what
//! it stores; the protocol's steps are the platform's: who the sign-in is for and every identity
//! lookup in `herald_platforms::bluesky::identity`, the client, PAR and token requests in
//! `herald_platforms::bluesky::oauth`.

use chrono::Utc;
use secrecy::{ExposeSecret, SecretString};
use tracing::{info, warn};
use url::Url;

use herald_platforms::{
    Account, Credentials, PlatformError, PlatformKind,
    bluesky::{
        identity::{Directory, ResolveError, ServerMetadata, SignInTarget},
        jwt::{self, EsKey},
        oauth,
    },
    oauth::Granted,
};

use super::{
    MAX_URL, Outcome, StartError, StartRequest, Started, hash_state, http_client, invalid, store,
};
use crate::{
    Ctx, metrics as m,
    store::{AtprotoFlow, NewOAuthState, OAuthState},
};

fn directory(ctx: &Ctx) -> Directory {
    Directory {
        http: http_client(ctx),
        guard: ctx.settings.ssrf.clone(),
        plc_url: ctx.settings.bluesky.plc_url.clone(),
        handle_resolver: ctx.settings.bluesky.handle_resolver.clone(),
    }
}

fn unresolved(field: &'static str, e: ResolveError) -> StartError {
    invalid(field, e.code, e.message)
}

/// A PDS or entryway URL, as the app sent it.
async fn from_server(ctx: &Ctx, dir: &Directory, raw: &str) -> Result<SignInTarget, StartError> {
    if raw.len() > MAX_URL {
        return Err(invalid(
            "server_url",
            "field_too_long",
            "`server_url` is too long",
        ));
    }
    let url = ctx
        .settings
        .ssrf
        .check_url(raw.trim())
        .map_err(|e| invalid("server_url", "invalid_url", format!("`server_url`: {e}")))?;
    Ok(dir.sign_in_target_at(&url).await)
}

fn upstream(e: PlatformError) -> StartError {
    StartError::Upstream {
        field: "handle",
        code: "authorization_server_failed",
        message: format!("the Bluesky authorization server did not take the request: {e}"),
    }
}

/// Resolves the account, pushes the authorization request, stores the flow.
pub(super) async fn start(
    ctx: &Ctx,
    req: &StartRequest<'_>,
    user_id: &str,
    return_url: &Url,
) -> Result<Started, StartError> {
    let client = ctx.settings.bluesky_client();
    if ctx.platforms.get(PlatformKind::Bluesky).is_none() || client.usable().is_err() {
        return Err(StartError::PlatformUnavailable(PlatformKind::Bluesky));
    }
    let dir = directory(ctx);
    let target = match (
        req.handle.filter(|h| !h.trim().is_empty()),
        req.server_url.filter(|u| !u.trim().is_empty()),
    ) {
        (Some(handle), None) => dir
            .sign_in_target(handle)
            .await
            .map_err(|e| unresolved("handle", e))?,
        (None, Some(server)) => from_server(ctx, &dir, server).await?,
        (Some(_), Some(_)) => {
            return Err(invalid(
                "server_url",
                "conflicting_fields",
                "give `handle` or `server_url`, not both",
            ));
        }
        (None, None) => {
            return Err(invalid(
                "handle",
                "missing_field",
                "Bluesky needs `handle` (a handle or DID), or `server_url`",
            ));
        }
    };
    let meta = dir
        .server_metadata(&target.issuer, client.confidential())
        .await
        .map_err(|e| {
            unresolved(
                if target.did.is_some() {
                    "handle"
                } else {
                    "server_url"
                },
                e,
            )
        })?;

    let state = jwt::random_token(32);
    let verifier = SecretString::from(jwt::random_token(32));
    let dpop_key = EsKey::generate();
    let request_uri = oauth::push(
        &http_client(ctx),
        &client,
        &dpop_key,
        &oauth::Push {
            par_endpoint: &meta.pushed_authorization_request_endpoint,
            issuer: &meta.issuer,
            state: &state,
            code_challenge: &jwt::sha256_b64(verifier.expose_secret()),
            login_hint: target.hint.as_deref(),
        },
    )
    .await
    .map_err(upstream)?;

    let now = Utc::now();
    let ttl = chrono::Duration::from_std(ctx.settings.oauth_state_ttl)
        .map_err(|e| StartError::Internal(e.into()))?;
    let expires_at = now + ttl;
    ctx.store
        .insert_oauth_state(
            &NewOAuthState {
                state_hash: &hash_state(&state),
                tenant_id: req.tenant_id,
                user_id,
                platform: PlatformKind::Bluesky.as_str(),
                return_url: return_url.as_str(),
                instance_url: None,
                pkce_verifier: Some(&verifier),
                expires_at,
                atproto: AtprotoFlow {
                    dpop_key: Some(dpop_key.pkcs8()),
                    account_did: target.did.as_deref(),
                    account_handle: target.handle.as_deref(),
                    pds_url: target.pds.as_deref(),
                    auth_server: Some(&target.issuer),
                },
            },
            &ctx.vault,
            now,
        )
        .await?;
    let mut url = Url::parse(&meta.authorization_endpoint)
        .map_err(|e| StartError::Internal(anyhow::anyhow!("authorization endpoint: {e}")))?;
    url.query_pairs_mut()
        .append_pair("client_id", &client.client_id())
        .append_pair("request_uri", &request_uri);
    metrics::counter!(m::OAUTH_STARTS_TOTAL, "platform" => PlatformKind::Bluesky.as_str())
        .increment(1);
    Ok(Started {
        authorization_url: url.to_string(),
        state_expires_at: expires_at,
    })
}

/// Finishes a flow whose state was taken: checks `iss`, exchanges the code, checks `sub`,
/// verifies the tokens with a real call, and stores the connection.
pub(super) async fn finish(
    ctx: &Ctx,
    row: &OAuthState,
    code: &str,
    iss: Option<&str>,
) -> anyhow::Result<Result<Vec<String>, Outcome>> {
    let platform = PlatformKind::Bluesky;
    let (Some(issuer), Some(sealed_key), Some(verifier), Some(client_platform)) = (
        row.auth_server.as_deref(),
        row.dpop_key(&ctx.vault)?,
        row.verifier(&ctx.vault)?,
        ctx.platforms.get(platform),
    ) else {
        warn!(platform = %platform, outcome = "exchange_failed", "the flow's state is incomplete or Bluesky is not configured");
        return Ok(Err(Outcome::ExchangeFailed));
    };
    // RFC 9207: a code from another server (a mix-up attack) is never exchanged.
    if iss.map(|i| i.trim_end_matches('/')) != Some(issuer) {
        warn!(platform = %platform, outcome = "issuer_mismatch", "the callback's iss is not the flow's authorization server");
        return Ok(Err(Outcome::IssuerMismatch));
    }
    let client = ctx.settings.bluesky_client();
    let dir = directory(ctx);
    let exchanged = async {
        let key = jwt::read_key(&sealed_key).map_err(|e| PlatformError::Rejected {
            status: 0,
            reason: e.to_string(),
        })?;
        let meta = dir
            .server_metadata(issuer, client.confidential())
            .await
            .map_err(|e| PlatformError::Rejected {
                status: 0,
                reason: e.message,
            })?;
        let client_id = client.client_id();
        let grant = oauth::Grant {
            token_endpoint: &meta.token_endpoint,
            issuer,
            client_id: &client_id,
            kid: None,
        };
        let tokens =
            oauth::exchange_code(&http_client(ctx), &client, &key, &grant, code, &verifier).await?;
        Ok::<_, PlatformError>((key, meta, tokens))
    }
    .await;
    let (key, meta, tokens) = match exchanged {
        Ok(t) => t,
        Err(e) => {
            warn!(platform = %platform, outcome = "exchange_failed", error.message = %e, "code exchange refused");
            return Ok(Err(Outcome::ExchangeFailed));
        }
    };
    if !tokens.grants(oauth::POSTING_SCOPE) {
        warn!(platform = %platform, outcome = "insufficient_scope", scope = %tokens.scope, "the grant cannot post");
        revoke_refused(ctx, &client, issuer, &key, &meta, &tokens).await;
        return Ok(Err(Outcome::InsufficientScope));
    }
    // The tokens must be for the account the flow was started for; a flow started from a
    // server URL must at least come back with an account that server authorizes.
    let (did, handle, pds) = match check_account(&dir, row, issuer, &tokens.sub).await {
        Ok(who) => who,
        Err(why) => {
            warn!(platform = %platform, outcome = "account_mismatch", reason = %why, "the tokens are for another account");
            revoke_refused(ctx, &client, issuer, &key, &meta, &tokens).await;
            return Ok(Err(Outcome::AccountMismatch));
        }
    };
    let scopes = tokens.scopes();
    let mut extras = serde_json::Map::new();
    extras.insert("auth".into(), "oauth".into());
    extras.insert("pds_url".into(), pds.clone().into());
    extras.insert("auth_server".into(), issuer.into());
    extras.insert("token_endpoint".into(), meta.token_endpoint.clone().into());
    if let Some(endpoint) = &meta.revocation_endpoint {
        extras.insert("revocation_endpoint".into(), endpoint.clone().into());
    }
    extras.insert("client_id".into(), client.client_id().into());
    if let Some(kid) = client
        .confidential()
        .then(|| client.current_kid())
        .flatten()
    {
        extras.insert("client_kid".into(), kid.into());
    }
    let account = Account {
        platform_account_id: did.clone(),
        handle: handle.clone().unwrap_or_default(),
        extras,
    };
    let set = tokens.into_token_set();
    let creds = Credentials {
        access_token: Some(set.access_token),
        refresh_token: set.refresh_token,
        dpop_key: Some(SecretString::from(key.pkcs8().expose_secret().to_owned())),
        expires_at: set.expires_at,
    };
    let profile = match tokio::time::timeout(
        ctx.settings.platform_timeout,
        client_platform.verify(&account, &creds),
    )
    .await
    {
        Ok(Ok(p)) if p.platform_account_id == did => p,
        Ok(Ok(p)) => {
            warn!(platform = %platform, outcome = "account_mismatch", "the PDS reports {} for tokens issued to {did}", p.platform_account_id);
            return Ok(Err(Outcome::AccountMismatch));
        }
        Ok(Err(e)) => {
            warn!(platform = %platform, outcome = "verify_failed", error.class = e.class(), error.message = %e, "new tokens did not verify");
            return Ok(Err(Outcome::VerifyFailed));
        }
        Err(_) => {
            warn!(platform = %platform, outcome = "verify_failed", "verify timed out");
            return Ok(Err(Outcome::VerifyFailed));
        }
    };
    let conn = store(
        ctx,
        platform,
        row,
        Granted { account, creds },
        profile,
        &scopes,
    )
    .await?;
    info!(connection.id = %conn.id, platform = %platform, "Bluesky account connected with OAuth");
    Ok(Ok(vec![conn.id]))
}

/// The account the tokens are for, checked against the flow: `(did, handle, pds)`.
async fn check_account(
    dir: &Directory,
    row: &OAuthState,
    issuer: &str,
    sub: &str,
) -> Result<(String, Option<String>, String), String> {
    if let Some(expected) = row.account_did.as_deref() {
        if sub != expected {
            return Err(format!("sub {sub} is not the resolved {expected}"));
        }
        let pds = row
            .pds_url
            .clone()
            .ok_or_else(|| "the flow has no PDS".to_owned())?;
        return Ok((sub.to_owned(), row.account_handle.clone(), pds));
    }
    // Started from a server: resolve the account now and require that its PDS names this issuer.
    let doc = dir.did_document(sub).await.map_err(|e| e.message)?;
    let pds = doc.pds().ok_or_else(|| format!("{sub} names no PDS"))?;
    let their_issuer = dir.auth_server_of(&pds).await.map_err(|e| e.message)?;
    if their_issuer != issuer {
        return Err(format!(
            "{sub}'s PDS is authorized by {their_issuer}, not {issuer}"
        ));
    }
    Ok((sub.to_owned(), doc.handle(), pds))
}

/// Gives back the tokens of a grant the callback refuses (one that cannot post, or another
/// account's), as the reference client does, so the session does not stay live at the server with
/// nobody holding it. Best effort: the refusal stands whatever the server answers.
async fn revoke_refused(
    ctx: &Ctx,
    client: &oauth::ClientConfig,
    issuer: &str,
    key: &EsKey,
    meta: &ServerMetadata,
    tokens: &oauth::Tokens,
) {
    let (Some(endpoint), Some(refresh_token)) = (
        meta.revocation_endpoint.as_deref(),
        tokens.refresh_token.as_deref(),
    ) else {
        return;
    };
    if ctx.settings.ssrf.check_url(endpoint).is_err() {
        return;
    }
    let client_id = client.client_id();
    let grant = oauth::Grant {
        token_endpoint: &meta.token_endpoint,
        issuer,
        client_id: &client_id,
        kid: None,
    };
    let refresh_token = SecretString::from(refresh_token.to_owned());
    let revoked = tokio::time::timeout(
        ctx.settings.platform_timeout,
        oauth::revoke(
            &http_client(ctx),
            client,
            key,
            endpoint,
            &grant,
            &refresh_token,
        ),
    )
    .await;
    if !matches!(revoked, Ok(Ok(()))) {
        warn!(platform = %PlatformKind::Bluesky, "could not revoke a refused grant; it lapses at the server");
    }
}
