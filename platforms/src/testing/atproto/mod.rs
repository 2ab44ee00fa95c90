//! A local AT Protocol network answering as the specs and the reference servers do: a PDS (which
//! also serves the PLC directory and `resolveHandle`) and its OAuth authorization server on a
//! second origin, as an entryway deployment has them, and a third origin serving the web pages
//! link cards are built from.
//!
//! The authorization server requires PAR, PKCE S256 and DPoP with server nonces (the first PAR
//! and token request always get `400 use_dpop_nonce`), checks client assertions against the
//! client's published JWKS (fetched from its `client_id` URL, as the reference server does) or
//! accepts the loopback client id with no authentication, binds codes and tokens to the DPoP key,
//! rotates refresh tokens and kills the whole session when a spent one is replayed. The PDS
//! takes app-password sessions and DPoP-bound tokens alike ([`pds`]).
//!
//! Everything the network holds and has seen is in its [`World`], which a test reads and sets.

mod auth_server;
mod pds;
mod web;
mod world;

use std::sync::{Arc, Mutex};

use axum::{
    Router,
    routing::{get, post},
};

use self::world::Shared;
pub use self::{
    web::PNG,
    world::{
        ACCESS_LIFETIME_SECS, APP_PASSWORD, DID, FRIEND_DID, HANDLE, OTHER_DID, World, verify_jws,
    },
};
use super::recorder::{Recorder, serve};

/// The running network.
pub struct FakeAtproto {
    pub pds: String,
    pub issuer: String,
    /// Where the web pages are (`{web}/page`, ...).
    pub web: String,
    pub world: Arc<Mutex<World>>,
    /// Every request to the PDS and the authorization server, in order.
    pub recorder: Recorder,
}

impl FakeAtproto {
    pub async fn start() -> Self {
        let world: Shared = Arc::new(Mutex::new(World::default()));
        let pds_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a local port");
        let as_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a local port");
        let pds = format!("http://{}", pds_listener.local_addr().expect("an address"));
        let issuer = format!("http://{}", as_listener.local_addr().expect("an address"));
        {
            let mut w = world.lock().unwrap();
            w.pds = pds.clone();
            w.issuer = issuer.clone();
            w.app_passwords.insert(DID.into(), APP_PASSWORD.into());
            w.rotate_nonces();
        }
        let recorder = Recorder::default();
        let pds_app = Router::new()
            .route(
                "/.well-known/oauth-protected-resource",
                get(pds::protected_resource),
            )
            .route("/xrpc/{nsid}", get(pds::xrpc).post(pds::xrpc))
            .route("/{did}", get(pds::plc))
            .with_state(world.clone());
        let as_app = Router::new()
            .route(
                "/.well-known/oauth-authorization-server",
                get(auth_server::as_metadata),
            )
            .route("/oauth/par", post(auth_server::par))
            .route("/oauth/authorize", get(auth_server::authorize))
            .route("/oauth/token", post(auth_server::token))
            .route("/oauth/revoke", post(auth_server::revoke))
            .with_state(world.clone());
        let (pds_app, as_app) = (recorder.layer(pds_app), recorder.layer(as_app));
        tokio::spawn(async move { axum::serve(pds_listener, pds_app).await.expect("serves") });
        tokio::spawn(async move { axum::serve(as_listener, as_app).await.expect("serves") });
        let web = serve(web::router(world.clone())).await;
        Self {
            pds,
            issuer,
            web,
            world,
            recorder,
        }
    }

    pub fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.world.lock().unwrap()
    }
}
