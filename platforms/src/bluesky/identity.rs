//! From what a user types to the server that authorizes them: handle → DID → DID document → PDS
//! → `/.well-known/oauth-protected-resource` → authorization server metadata, each step checked as
//! the AT Protocol OAuth profile asks (platforms.md §2.1). Every URL fetched passes the SSRF guard
//! before the guarded client (whose resolver refuses private addresses) connects to it.
//!
//! Handles resolve by `https://<handle>/.well-known/atproto-did`, then through a configured
//! service's `com.atproto.identity.resolveHandle` (the AppView or a PDS; the dev network's PDS).
//! The DNS TXT method is not used: it needs a DNS client crate, and the resolving service does the
//! DNS lookup itself. Either way the DID document must list the handle (`alsoKnownAs`), so a
//! service answering with the wrong DID is caught there.

use std::time::Duration;

use reqwest::Client;
use serde::Deserialize;
use serde_json::Value;
use url::Url;

use super::{rich_text::is_valid_handle, xrpc::read_capped};
use crate::{http, kind::PlatformKind, ssrf::SsrfGuard};

/// Identity documents and metadata are small; anything larger is not one.
const MAX_DOC_BYTES: usize = 256 * 1024;
const WELL_KNOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why resolution failed: a stable code and a sentence for the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ResolveError {
    pub code: &'static str,
    pub message: String,
}

fn fail(code: &'static str, message: impl Into<String>) -> ResolveError {
    ResolveError {
        code,
        message: message.into(),
    }
}

/// Who a sign-in is for, as far as it is known before the user signs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignInTarget {
    pub did: Option<String>,
    pub handle: Option<String>,
    pub pds: Option<String>,
    /// The authorization server (an origin).
    pub issuer: String,
    /// What the user typed, handed to the authorization server as `login_hint`.
    pub hint: Option<String>,
}

/// Where identities are looked up.
#[derive(Debug, Clone)]
pub struct Directory {
    pub http: Client,
    pub guard: SsrfGuard,
    /// `did:plc` documents: `{plc_url}/{did}`.
    pub plc_url: String,
    /// A service answering `com.atproto.identity.resolveHandle`.
    pub handle_resolver: String,
}

/// A DID document's parts that matter here.
#[derive(Debug, Clone, Deserialize)]
pub struct DidDocument {
    pub id: String,
    #[serde(default, rename = "alsoKnownAs")]
    pub also_known_as: Vec<String>,
    #[serde(default)]
    pub service: Vec<Service>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Service {
    pub id: String,
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(rename = "serviceEndpoint", default)]
    pub endpoint: Value,
}

impl DidDocument {
    /// The PDS: the `#atproto_pds` service of type `AtprotoPersonalDataServer`.
    pub fn pds(&self) -> Option<String> {
        self.service
            .iter()
            .find(|s| {
                (s.id == "#atproto_pds" || s.id == format!("{}#atproto_pds", self.id))
                    && s.kind == "AtprotoPersonalDataServer"
            })
            .and_then(|s| s.endpoint.as_str())
            .map(|e| e.trim_end_matches('/').to_owned())
    }

    /// The handle the document claims (first `at://` alias); unverified on its own.
    pub fn handle(&self) -> Option<String> {
        self.also_known_as
            .iter()
            .find_map(|a| a.strip_prefix("at://"))
            .map(str::to_ascii_lowercase)
    }

    pub fn lists_handle(&self, handle: &str) -> bool {
        self.also_known_as.iter().any(|a| {
            a.strip_prefix("at://")
                .is_some_and(|h| h.eq_ignore_ascii_case(handle))
        })
    }
}

/// An authorization server's metadata, checked against what the AT Protocol requires.
#[derive(Debug, Clone, Deserialize)]
pub struct ServerMetadata {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub pushed_authorization_request_endpoint: String,
    #[serde(default)]
    pub revocation_endpoint: Option<String>,
    #[serde(default)]
    pub require_pushed_authorization_requests: bool,
    #[serde(default)]
    pub authorization_response_iss_parameter_supported: bool,
    #[serde(default)]
    pub client_id_metadata_document_supported: bool,
    #[serde(default)]
    pub scopes_supported: Vec<String>,
    #[serde(default)]
    pub dpop_signing_alg_values_supported: Vec<String>,
    #[serde(default)]
    pub token_endpoint_auth_methods_supported: Vec<String>,
}

/// A DID as the AT Protocol allows them: `did:plc:` (24 base32 characters) or `did:web:` (a
/// host name, hostname-level only).
pub fn is_valid_did(s: &str) -> bool {
    if let Some(id) = s.strip_prefix("did:plc:") {
        return id.len() == 24 && id.bytes().all(|b| matches!(b, b'a'..=b'z' | b'2'..=b'7'));
    }
    if let Some(host) = s.strip_prefix("did:web:") {
        return !host.is_empty()
            && !host.contains(':')
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'%'));
    }
    false
}

impl Directory {
    /// GETs a JSON document through the guard: 200, at most [`MAX_DOC_BYTES`], no redirect.
    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        operation: &'static str,
        what: &str,
    ) -> Result<T, ResolveError> {
        let checked = self
            .guard
            .check_url(url)
            .map_err(|e| fail("url_refused", format!("{what} ({url}): {e}")))?;
        let req = self.http.get(checked).header("accept", "application/json");
        let res = http::send(PlatformKind::Bluesky, operation, false, req)
            .await
            .map_err(|e| fail("unreachable", format!("{what} could not be read: {e}")))?;
        if res.status().as_u16() != 200 {
            return Err(fail(
                "unreachable",
                format!("{what} answered HTTP {}", res.status().as_u16()),
            ));
        }
        let body = read_capped(res, MAX_DOC_BYTES)
            .await
            .ok()
            .flatten()
            .ok_or_else(|| fail("unreadable", format!("{what} is too large or cut off")))?;
        serde_json::from_slice(&body).map_err(|e| fail("unreadable", format!("{what}: {e}")))
    }

    /// The DID a handle points at.
    pub async fn resolve_handle(&self, handle: &str) -> Result<String, ResolveError> {
        if !is_valid_handle(handle) {
            return Err(fail(
                "invalid_handle",
                format!("`{handle}` is not a Bluesky handle (like alice.bsky.social) or a DID"),
            ));
        }
        if let Some(did) = self.well_known_did(handle).await {
            return Ok(did);
        }
        #[derive(Deserialize)]
        struct Resolved {
            did: String,
        }
        let mut url = Url::parse(&format!(
            "{}/xrpc/com.atproto.identity.resolveHandle",
            self.handle_resolver.trim_end_matches('/')
        ))
        .map_err(|e| fail("url_refused", format!("handle resolver: {e}")))?;
        url.query_pairs_mut().append_pair("handle", handle);
        let r: Resolved = self
            .json(url.as_str(), "resolve_handle", "the handle")
            .await
            .map_err(|e| {
                fail(
                    "handle_not_found",
                    format!("`{handle}` did not resolve: {e}"),
                )
            })?;
        if !is_valid_did(&r.did) {
            return Err(fail(
                "handle_not_found",
                format!("`{handle}` resolved to something that is not a DID"),
            ));
        }
        Ok(r.did)
    }

    /// `https://<handle>/.well-known/atproto-did`: a bare DID as text. Any failure is `None`
    /// (the resolver service is tried next).
    async fn well_known_did(&self, handle: &str) -> Option<String> {
        let url = self
            .guard
            .check_url(&format!("https://{handle}/.well-known/atproto-did"))
            .ok()?;
        let req = self.http.get(url).timeout(WELL_KNOWN_TIMEOUT);
        let res = http::send(PlatformKind::Bluesky, "resolve_handle", false, req)
            .await
            .ok()?;
        if !res.status().is_success() {
            return None;
        }
        let body = read_capped(res, 2048).await.ok()??;
        let did = String::from_utf8(body).ok()?.trim().to_owned();
        is_valid_did(&did).then_some(did)
    }

    pub async fn did_document(&self, did: &str) -> Result<DidDocument, ResolveError> {
        if !is_valid_did(did) {
            return Err(fail("invalid_did", format!("`{did}` is not a valid DID")));
        }
        let url = match did.strip_prefix("did:web:") {
            Some(host) => format!("https://{}/.well-known/did.json", host.replace("%3A", ":")),
            None => format!("{}/{did}", self.plc_url.trim_end_matches('/')),
        };
        let doc: DidDocument = self
            .json(&url, "resolve_did", "the DID document")
            .await
            .map_err(|e| fail("did_not_found", e.message))?;
        if doc.id != did {
            return Err(fail(
                "did_not_found",
                format!("the DID document served for {did} is another DID's"),
            ));
        }
        Ok(doc)
    }

    /// The authorization server a PDS names (`authorization_servers[0]`, an origin). The
    /// document must be about the PDS it came from (RFC 9728 §3.3: `resource` is its origin), so
    /// a server cannot hand out another server's metadata as its own.
    pub async fn auth_server_of(&self, pds: &str) -> Result<String, ResolveError> {
        #[derive(Deserialize)]
        struct Resource {
            #[serde(default)]
            resource: String,
            #[serde(default)]
            authorization_servers: Vec<String>,
        }
        let r: Resource = self
            .json(
                &format!("{pds}/.well-known/oauth-protected-resource"),
                "resource_metadata",
                "the PDS's OAuth metadata",
            )
            .await?;
        if r.resource.trim_end_matches('/') != pds.trim_end_matches('/') {
            return Err(fail(
                "no_authorization_server",
                format!(
                    "the PDS's OAuth metadata is about another server ({:?}, not {pds})",
                    r.resource
                ),
            ));
        }
        let issuer = r.authorization_servers.into_iter().next().ok_or_else(|| {
            fail(
                "no_authorization_server",
                "the PDS names no authorization server",
            )
        })?;
        let url = Url::parse(&issuer).map_err(|_| {
            fail(
                "no_authorization_server",
                "the PDS's authorization server is not a URL",
            )
        })?;
        if url.origin().ascii_serialization() != issuer.trim_end_matches('/') {
            return Err(fail(
                "no_authorization_server",
                "the PDS's authorization server is not an origin",
            ));
        }
        Ok(issuer.trim_end_matches('/').to_owned())
    }

    /// Who a sign-in is for, from a handle or DID as the user typed it: the DID, the PDS and its
    /// authorization server. The DID document must list a typed handle (`alsoKnownAs`), so a
    /// resolver answering with another DID is caught.
    pub async fn sign_in_target(&self, typed: &str) -> Result<SignInTarget, ResolveError> {
        let typed = typed.trim().trim_start_matches('@').to_ascii_lowercase();
        if typed.is_empty() || typed.len() > 253 {
            return Err(fail(
                "invalid_handle",
                "`handle` must be a Bluesky handle or a DID",
            ));
        }
        let (did, handle) = if typed.starts_with("did:") {
            if !is_valid_did(&typed) {
                return Err(fail("invalid_did", format!("`{typed}` is not a valid DID")));
            }
            (typed.clone(), None)
        } else {
            (self.resolve_handle(&typed).await?, Some(typed.clone()))
        };
        let doc = self.did_document(&did).await?;
        if let Some(h) = &handle
            && !doc.lists_handle(h)
        {
            return Err(fail(
                "handle_mismatch",
                format!("`{h}` resolved to {did}, whose DID document does not list that handle"),
            ));
        }
        let pds = doc
            .pds()
            .ok_or_else(|| fail("no_pds", format!("the DID document of {did} names no PDS")))?;
        let issuer = self.auth_server_of(&pds).await?;
        Ok(SignInTarget {
            handle: handle.or_else(|| doc.handle()),
            did: Some(did),
            pds: Some(pds),
            issuer,
            hint: Some(typed),
        })
    }

    /// Who a sign-in is for, from a PDS or entryway URL (checked by the caller): nobody yet, at
    /// the authorization server the PDS names, or the entryway itself.
    pub async fn sign_in_target_at(&self, server: &Url) -> SignInTarget {
        let origin = server.origin().ascii_serialization();
        let issuer = match self.auth_server_of(&origin).await {
            Ok(issuer) => issuer,
            Err(_) => origin,
        };
        SignInTarget {
            did: None,
            handle: None,
            pds: None,
            issuer,
            hint: None,
        }
    }

    /// The authorization server's metadata, refused unless it offers what Herald needs.
    pub async fn server_metadata(
        &self,
        issuer: &str,
        confidential: bool,
    ) -> Result<ServerMetadata, ResolveError> {
        let m: ServerMetadata = self
            .json(
                &format!("{issuer}/.well-known/oauth-authorization-server"),
                "server_metadata",
                "the authorization server's metadata",
            )
            .await?;
        let unusable = |why: &str| {
            Err(fail(
                "authorization_server_unusable",
                format!("the authorization server {issuer} {why}"),
            ))
        };
        if m.issuer.trim_end_matches('/') != issuer {
            return unusable("names another issuer in its metadata");
        }
        if !m.require_pushed_authorization_requests {
            return unusable("does not require pushed authorization requests");
        }
        if !m.scopes_supported.iter().any(|s| s == "atproto") {
            return unusable("does not offer the `atproto` scope");
        }
        if !m
            .dpop_signing_alg_values_supported
            .iter()
            .any(|a| a == "ES256")
        {
            return unusable("does not take ES256 DPoP proofs");
        }
        let method = if confidential {
            "private_key_jwt"
        } else {
            "none"
        };
        if !m
            .token_endpoint_auth_methods_supported
            .iter()
            .any(|a| a == method)
        {
            return unusable(&format!("does not take `{method}` client authentication"));
        }
        if !m.authorization_response_iss_parameter_supported {
            return unusable("does not send `iss` with its answers");
        }
        if !m.client_id_metadata_document_supported {
            return unusable("does not read client metadata documents");
        }
        for endpoint in [
            &m.authorization_endpoint,
            &m.token_endpoint,
            &m.pushed_authorization_request_endpoint,
        ] {
            if self.guard.check_url(endpoint).is_err() {
                return unusable("names an endpoint Herald may not call");
            }
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn dids_are_checked_before_any_fetch() {
        assert!(is_valid_did("did:plc:ewvi7nxzyoun6zhxrhs64oiz"));
        assert!(is_valid_did("did:web:example.com"));
        assert!(!is_valid_did("did:plc:short"));
        assert!(!is_valid_did("did:web:example.com:path"));
        assert!(!is_valid_did("did:key:zQ3sh"));
    }

    #[test]
    fn the_pds_is_the_atproto_pds_service() {
        let doc: DidDocument = serde_json::from_value(json!({
            "id": "did:plc:ewvi7nxzyoun6zhxrhs64oiz",
            "alsoKnownAs": ["at://Alice.Example.com"],
            "service": [
                { "id": "#atproto_labeler", "type": "AtprotoLabeler", "serviceEndpoint": "https://l.example" },
                { "id": "did:plc:ewvi7nxzyoun6zhxrhs64oiz#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": "https://pds.example/" }
            ]
        }))
        .unwrap();
        assert_eq!(doc.pds().as_deref(), Some("https://pds.example"));
        assert_eq!(doc.handle().as_deref(), Some("alice.example.com"));
        assert!(doc.lists_handle("alice.example.com"));
        assert!(!doc.lists_handle("bob.example.com"));
    }
}
