//! The platform clients against local servers that answer as each platform documents, error
//! bodies and rate-limit headers included.

mod support {
    use std::{
        collections::HashMap,
        sync::{Arc, Mutex},
        time::Duration,
    };

    use axum::{
        Router,
        body::Bytes,
        extract::State,
        http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri},
        response::{IntoResponse, Response},
    };
    use herald_platforms::{
        Account, Checkpoint, CheckpointSink, Credentials, PostRequest, http, ssrf::SsrfGuard,
    };
    use secrecy::SecretString;

    /// One request the fake platform received.
    #[derive(Debug, Clone)]
    pub struct Recorded {
        pub method: Method,
        pub path: String,
        pub query: HashMap<String, String>,
        pub headers: HeaderMap,
        pub body: String,
    }

    impl Recorded {
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers.get(name).and_then(|v| v.to_str().ok())
        }

        pub fn form(&self) -> HashMap<String, String> {
            url::form_urlencoded::parse(self.body.as_bytes())
                .into_owned()
                .collect()
        }

        pub fn json(&self) -> serde_json::Value {
            serde_json::from_str(&self.body).expect("a JSON body")
        }

        pub fn q(&self, name: &str) -> Option<&str> {
            self.query.get(name).map(String::as_str)
        }
    }

    pub enum Reply {
        Now(Response),
        /// Never answers: the client's timeout decides.
        Hang,
    }

    type Responder = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;

    #[derive(Clone)]
    struct ServerState {
        responder: Responder,
        seen: Arc<Mutex<Vec<Recorded>>>,
    }

    pub struct Server {
        pub base: String,
        seen: Arc<Mutex<Vec<Recorded>>>,
    }

    impl Server {
        pub async fn start(responder: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> Self {
            let seen = Arc::new(Mutex::new(Vec::new()));
            let state = ServerState {
                responder: Arc::new(responder),
                seen: seen.clone(),
            };
            let app = Router::new().fallback(handle).with_state(state);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            Self { base, seen }
        }

        pub fn requests(&self) -> Vec<Recorded> {
            self.seen.lock().unwrap().clone()
        }

        pub fn paths(&self) -> Vec<String> {
            self.requests()
                .into_iter()
                .map(|r| format!("{} {}", r.method, r.path))
                .collect()
        }

        pub fn url(&self, path: &str) -> String {
            format!("{}{path}", self.base)
        }
    }

    async fn handle(
        State(state): State<ServerState>,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> Response {
        let rec = Recorded {
            method,
            path: uri.path().to_owned(),
            query: url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
                .into_owned()
                .collect(),
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        };
        state.seen.lock().unwrap().push(rec.clone());
        match (state.responder)(&rec) {
            Reply::Now(r) => r,
            Reply::Hang => std::future::pending().await,
        }
    }

    pub fn json(status: u16, body: serde_json::Value) -> Reply {
        json_with(status, &[], body)
    }

    pub fn json_with(status: u16, headers: &[(&str, &str)], body: serde_json::Value) -> Reply {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        Reply::Now((StatusCode::from_u16(status).unwrap(), map, axum::Json(body)).into_response())
    }

    pub fn not_found(r: &Recorded) -> Reply {
        json(
            404,
            serde_json::json!({ "unexpected": format!("{} {}", r.method, r.path) }),
        )
    }

    pub fn client() -> reqwest::Client {
        http::client(&SsrfGuard::allowing_private(), Duration::from_secs(5))
    }

    pub fn impatient_client() -> reqwest::Client {
        http::client(&SsrfGuard::allowing_private(), Duration::from_secs(1))
    }

    pub fn account(id: &str, extras: serde_json::Value) -> Account {
        Account {
            platform_account_id: id.into(),
            handle: "someone".into(),
            extras: extras.as_object().cloned().unwrap_or_default(),
        }
    }

    pub fn creds(access: &str, refresh: Option<&str>) -> Credentials {
        Credentials {
            access_token: Some(SecretString::from(access.to_owned())),
            refresh_token: refresh.map(|r| SecretString::from(r.to_owned())),
            dpop_key: None,
            expires_at: None,
        }
    }

    pub fn post() -> PostRequest {
        PostRequest {
            share_id: "shr_1".into(),
            url: "https://example.com/articles/1".into(),
            title: Some("A title".into()),
            text: Some("Worth reading".into()),
            image_url: Some("https://cdn.example.com/cover.jpg".into()),
            idempotency_key: "shr_1".into(),
            checkpoint: Default::default(),
        }
    }

    pub fn secret(s: &str) -> SecretString {
        SecretString::from(s.to_owned())
    }

    /// Where a client's checkpoints go in these tests (the share job writes them to the share row;
    /// `tests/e2e` covers that part).
    #[derive(Default)]
    pub struct Checkpoints(pub Mutex<Vec<String>>);

    #[async_trait::async_trait]
    impl CheckpointSink for Checkpoints {
        async fn save(&self, value: &str) -> Result<(), String> {
            self.0.lock().unwrap().push(value.to_owned());
            Ok(())
        }
    }

    impl Checkpoints {
        pub fn saved(&self) -> Vec<String> {
            self.0.lock().unwrap().clone()
        }
    }

    /// The share's post, resuming from `saved` and storing new checkpoints in `sink`.
    pub fn post_resuming(saved: Option<&str>, sink: Arc<Checkpoints>) -> PostRequest {
        PostRequest {
            checkpoint: Checkpoint::new(saved.map(str::to_owned), sink),
            ..post()
        }
    }
}

mod x {
    use std::{
        sync::{
            Arc,
            atomic::{AtomicBool, Ordering},
        },
        time::Duration,
    };

    use base64::Engine;
    use chrono::Utc;
    use herald_platforms::{
        LimitScope, Platform, PlatformError, Relation, oauth::OAuthClient, x::X,
    };
    use secrecy::ExposeSecret;
    use serde_json::json;

    use crate::support::*;

    fn oauth(server: &Server, secret: Option<&str>) -> OAuthClient {
        OAuthClient {
            client_id: "cid".into(),
            client_secret: secret.map(crate::support::secret),
            token_url: server.url("/2/oauth2/token"),
        }
    }

    fn x(server: &Server) -> X {
        X::new(client(), &server.base, oauth(server, Some("csecret")))
    }

    #[tokio::test]
    async fn a_share_posts_the_text_and_the_url_and_returns_the_post() {
        let server = Server::start(|r| match (r.method.as_str(), r.path.as_str()) {
            ("POST", "/2/tweets") => json(201, json!({"data": {"id": "1790", "text": "Worth reading https://t.co/x", "edit_history_post_ids": ["1790"]}})),
            _ => not_found(r),
        })
        .await;
        let published = x(&server)
            .share(&account("42", json!({})), &creds("at", Some("rt")), &post())
            .await
            .unwrap();
        assert_eq!(published.post_id, "1790");
        assert_eq!(
            published.post_url.as_deref(),
            Some("https://x.com/i/web/status/1790")
        );
        let req = &server.requests()[0];
        assert_eq!(req.header("authorization"), Some("Bearer at"));
        assert_eq!(
            req.json(),
            json!({"text": "Worth reading\n\nhttps://example.com/articles/1"})
        );
    }

    #[tokio::test]
    async fn a_401_is_an_expired_token_with_a_refresh_token_and_dead_credentials_without() {
        let server = Server::start(|_| {
            json(401, json!({"title": "Unauthorized", "type": "about:blank", "status": 401, "detail": "Unauthorized"}))
        })
        .await;
        let err = x(&server)
            .share(&account("42", json!({})), &creds("at", Some("rt")), &post())
            .await
            .unwrap_err();
        assert!(matches!(err, PlatformError::TokenExpired), "{err:?}");
        let err = x(&server)
            .share(&account("42", json!({})), &creds("at", None), &post())
            .await
            .unwrap_err();
        assert!(matches!(err, PlatformError::Unauthorized { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn duplicate_content_is_rejected_for_good() {
        let server = Server::start(|_| {
            json(403, json!({"detail": "You are not allowed to create a Tweet with duplicate content.", "type": "about:blank", "title": "Forbidden", "status": 403}))
        })
        .await;
        let err = x(&server)
            .share(&account("42", json!({})), &creds("at", Some("rt")), &post())
            .await
            .unwrap_err();
        match err {
            PlatformError::Rejected {
                status: 403,
                reason,
            } => assert!(reason.contains("duplicate content"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_429_waits_until_the_window_resets_by_the_servers_clock() {
        let date = Utc::now();
        let reset = (date.timestamp() + 120).to_string();
        let date_header = date.to_rfc2822();
        let server = Server::start(move |_| {
            json_with(
                429,
                &[("x-rate-limit-limit", "100"), ("x-rate-limit-remaining", "0"), ("x-rate-limit-reset", reset.as_str()), ("date", date_header.as_str())],
                json!({"title": "Too Many Requests", "detail": "Too Many Requests", "type": "https://api.twitter.com/2/problems/rate-limit-exceeded", "status": 429}),
            )
        })
        .await;
        let err = x(&server)
            .share(&account("42", json!({})), &creds("at", None), &post())
            .await
            .unwrap_err();
        match err {
            PlatformError::RateLimited {
                retry_after: Some(wait),
                scope: LimitScope::Account,
            } => {
                // Date has whole-second resolution.
                assert!((119..=120).contains(&wait.as_secs()), "{wait:?}");
            }
            other => panic!("{other:?}"),
        }
    }

    /// `x-app-limit-24hour-*` as X sends them on `POST /2/tweets`, `remaining` of `limit`.
    fn app_limit_headers(remaining: u32, reset: i64) -> Vec<(&'static str, String)> {
        vec![
            ("x-app-limit-24hour-limit", "10000".into()),
            ("x-app-limit-24hour-remaining", remaining.to_string()),
            ("x-app-limit-24hour-reset", reset.to_string()),
            ("x-user-limit-24hour-limit", "100".into()),
            ("x-user-limit-24hour-remaining", "99".into()),
            ("x-user-limit-24hour-reset", reset.to_string()),
        ]
    }

    #[tokio::test]
    async fn a_post_reports_the_apps_daily_budget_and_a_spent_one_is_the_apps_limit() {
        let reset = Utc::now().timestamp() + 3600;
        let spent = Arc::new(AtomicBool::new(false));
        let server = Server::start({
            let spent = spent.clone();
            move |_| {
                let headers = app_limit_headers(if spent.load(Ordering::SeqCst) { 0 } else { 41 }, reset);
                let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                if spent.load(Ordering::SeqCst) {
                    json_with(429, &headers, json!({"title": "Too Many Requests", "detail": "Too Many Requests", "type": "about:blank", "status": 429}))
                } else {
                    json_with(201, &headers, json!({"data": {"id": "1850", "text": "t", "edit_history_tweet_ids": ["1850"]}}))
                }
            }
        })
        .await;
        let published = x(&server)
            .share(&account("42", json!({})), &creds("at", None), &post())
            .await
            .unwrap();
        let budget = published.app_budget.expect("the app's budget is reported");
        assert_eq!((budget.limit, budget.remaining), (10_000, 41));
        let until_reset = (budget.resets_at - Utc::now()).num_seconds();
        assert!((3590..=3601).contains(&until_reset), "{until_reset}");

        spent.store(true, Ordering::SeqCst);
        let err = x(&server)
            .share(&account("42", json!({})), &creds("at", None), &post())
            .await
            .unwrap_err();
        match err {
            PlatformError::RateLimited {
                retry_after: Some(wait),
                scope: LimitScope::App,
            } => assert!((3590..=3601).contains(&wait.as_secs()), "{wait:?}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_spent_user_limit_is_the_accounts_alone() {
        let reset = Utc::now().timestamp() + 600;
        let server = Server::start(move |_| {
            let (app_reset, user_reset) = ((reset + 3000).to_string(), reset.to_string());
            json_with(
                429,
                &[
                    ("x-app-limit-24hour-limit", "10000"),
                    ("x-app-limit-24hour-remaining", "9000"),
                    ("x-app-limit-24hour-reset", app_reset.as_str()),
                    ("x-user-limit-24hour-limit", "100"),
                    ("x-user-limit-24hour-remaining", "0"),
                    ("x-user-limit-24hour-reset", user_reset.as_str()),
                ],
                json!({"title": "Too Many Requests", "detail": "Too Many Requests", "type": "about:blank", "status": 429}),
            )
        })
        .await;
        let err = x(&server)
            .share(&account("42", json!({})), &creds("at", None), &post())
            .await
            .unwrap_err();
        match err {
            PlatformError::RateLimited {
                retry_after: Some(wait),
                scope: LimitScope::Account,
            } => assert!((590..=601).contains(&wait.as_secs()), "{wait:?}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_usage_cap_waits_a_day_and_a_5xx_is_transient() {
        let server = Server::start(|r| match r.path.as_str() {
            "/2/tweets" => json(429, json!({"title": "UsageCapExceeded", "detail": "Usage cap exceeded: Monthly product cap", "type": "https://api.twitter.com/2/problems/usage-capped", "status": 429})),
            _ => json(503, json!({"title": "Service Unavailable", "detail": "Service Unavailable", "type": "about:blank", "status": 503})),
        })
        .await;
        let err = x(&server)
            .share(&account("42", json!({})), &creds("at", None), &post())
            .await
            .unwrap_err();
        assert!(
            matches!(err, PlatformError::RateLimited { retry_after: Some(w), scope: LimitScope::App } if w == Duration::from_secs(86_400)),
            "{err:?}"
        );
        let err = x(&server)
            .verify(&account("42", json!({})), &creds("at", None))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                PlatformError::Transient {
                    status: Some(503),
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn no_answer_after_the_post_was_sent_is_an_unknown_outcome() {
        let server = Server::start(|_| Reply::Hang).await;
        let x = X::new(impatient_client(), &server.base, oauth(&server, None));
        let err = x
            .share(&account("42", json!({})), &creds("at", None), &post())
            .await
            .unwrap_err();
        assert!(
            matches!(err, PlatformError::OutcomeUnknown { .. }),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn verify_reads_the_user_behind_the_token() {
        let server = Server::start(|r| match r.path.as_str() {
            "/2/users/me" => json(200, json!({"data": {"id": "2244994945", "name": "X Dev", "username": "XDevelopers", "public_metrics": {"followers_count": 583, "following_count": 2}}})),
            _ => not_found(r),
        })
        .await;
        let profile = x(&server)
            .verify(&account("", json!({})), &creds("at", None))
            .await
            .unwrap();
        assert_eq!(
            (
                profile.platform_account_id.as_str(),
                profile.handle.as_str(),
                profile.followers_count
            ),
            ("2244994945", "XDevelopers", Some(583))
        );
        assert_eq!(
            server.requests()[0].q("user.fields"),
            Some("public_metrics")
        );
    }

    #[tokio::test]
    async fn a_confidential_refresh_uses_basic_auth_and_rotates_the_refresh_token() {
        let server = Server::start(|r| match r.path.as_str() {
            "/2/oauth2/token" => json(200, json!({"token_type": "bearer", "expires_in": 7200, "access_token": "at2", "scope": "tweet.write users.read tweet.read offline.access", "refresh_token": "rt2"})),
            _ => not_found(r),
        })
        .await;
        let tokens = x(&server)
            .refresh(&account("42", json!({})), &creds("at", Some("rt1")))
            .await
            .unwrap();
        assert_eq!(tokens.access_token.expose_secret(), "at2");
        assert_eq!(
            tokens.refresh_token.as_ref().map(|t| t.expose_secret()),
            Some("rt2")
        );
        let left = tokens.expires_at.unwrap() - Utc::now();
        assert!((7100..=7200).contains(&left.num_seconds()), "{left}");
        let req = &server.requests()[0];
        let basic = base64::engine::general_purpose::STANDARD.encode("cid:csecret");
        assert_eq!(
            req.header("authorization"),
            Some(format!("Basic {basic}").as_str())
        );
        let form = req.form();
        assert_eq!(
            form.get("grant_type").map(String::as_str),
            Some("refresh_token")
        );
        assert_eq!(form.get("refresh_token").map(String::as_str), Some("rt1"));
        assert!(!form.contains_key("client_id"));
    }

    #[tokio::test]
    async fn a_public_client_sends_its_id_and_no_returned_refresh_token_keeps_the_stored_one() {
        let server = Server::start(|_| {
            json(
                200,
                json!({"token_type": "bearer", "expires_in": 7200, "access_token": "at2"}),
            )
        })
        .await;
        let x = X::new(client(), &server.base, oauth(&server, None));
        let tokens = x
            .refresh(&account("42", json!({})), &creds("at", Some("rt1")))
            .await
            .unwrap();
        assert!(tokens.refresh_token.is_none());
        let req = &server.requests()[0];
        assert_eq!(req.header("authorization"), None);
        assert_eq!(req.form().get("client_id").map(String::as_str), Some("cid"));
    }

    #[tokio::test]
    async fn a_refused_refresh_token_is_an_invalid_grant_and_a_refused_client_is_not() {
        let server = Server::start(|r| {
            if r.form().get("refresh_token").map(String::as_str) == Some("dead") {
                json(400, json!({"error": "invalid_request", "error_description": "Value passed for the token was invalid."}))
            } else {
                json(401, json!({"error": "unauthorized_client", "error_description": "Missing valid authorization header"}))
            }
        })
        .await;
        let err = x(&server)
            .refresh(&account("42", json!({})), &creds("at", Some("dead")))
            .await
            .unwrap_err();
        assert!(matches!(err, PlatformError::InvalidGrant { .. }), "{err:?}");
        let err = x(&server)
            .refresh(&account("42", json!({})), &creds("at", Some("fine")))
            .await
            .unwrap_err();
        assert!(
            matches!(err, PlatformError::Rejected { status: 401, .. }),
            "{err:?}"
        );
        let err = x(&server)
            .refresh(&account("42", json!({})), &creds("at", None))
            .await
            .unwrap_err();
        assert!(matches!(err, PlatformError::InvalidGrant { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn followers_are_paged_by_the_next_token() {
        let server = Server::start(|r| match (r.path.as_str(), r.q("pagination_token")) {
            ("/2/users/42/followers", None) => json(200, json!({
                "data": [{"id": "1", "name": "A", "username": "a"}, {"id": "2", "name": "B", "username": "b"}],
                "meta": {"result_count": 2, "next_token": "DFEDBNRFT3MHCZZZ"}
            })),
            ("/2/users/42/followers", Some("DFEDBNRFT3MHCZZZ")) => json(200, json!({
                "data": [{"id": "3", "name": "C", "username": "c"}],
                "meta": {"result_count": 1, "previous_token": "77qp8"}
            })),
            ("/2/users/42/following", _) => json(200, json!({"meta": {"result_count": 0}})),
            _ => not_found(r),
        })
        .await;
        let x = x(&server);
        let (acct, creds) = (account("42", json!({})), creds("at", None));
        let first = x
            .followers_page(&acct, &creds, Relation::Followers, None)
            .await
            .unwrap();
        assert_eq!(
            first
                .accounts
                .iter()
                .map(|a| a.handle.as_str())
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
        let next = first.next_cursor.unwrap();
        let second = x
            .followers_page(&acct, &creds, Relation::Followers, Some(&next))
            .await
            .unwrap();
        assert_eq!(second.accounts[0].platform_account_id, "3");
        assert!(second.next_cursor.is_none());
        let follows = x
            .followers_page(&acct, &creds, Relation::Follows, None)
            .await
            .unwrap();
        assert!(follows.accounts.is_empty() && follows.next_cursor.is_none());
        assert_eq!(server.requests()[0].q("max_results"), Some("1000"));
    }

    #[tokio::test]
    async fn read_back_finds_the_post_by_its_expanded_link() {
        let server = Server::start(|r| match r.path.as_str() {
            "/2/users/42/tweets" => json(200, json!({
                "data": [
                    {"id": "11", "text": "Something else https://t.co/a", "created_at": "2026-01-01T00:00:00.000Z",
                     "entities": {"urls": [{"start": 15, "end": 38, "url": "https://t.co/a", "expanded_url": "https://example.com/other", "display_url": "example.com/other"}]}},
                    {"id": "12", "text": "Worth reading\n\nhttps://t.co/b", "created_at": "2026-01-01T00:00:00.000Z",
                     "entities": {"urls": [{"start": 15, "end": 38, "url": "https://t.co/b", "expanded_url": "https://example.com/articles/1", "display_url": "example.com/articles/1"}]}}
                ],
                "meta": {"result_count": 2}
            })),
            _ => not_found(r),
        })
        .await;
        let found = x(&server)
            .find_published(&account("42", json!({})), &creds("at", None), &post())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(found.post_id, "12");
        let req = &server.requests()[0];
        assert_eq!(req.q("exclude"), Some("replies,retweets"));
        assert!(req.q("start_time").is_some_and(|t| t.ends_with('Z')));
        assert!(
            req.q("tweet.fields")
                .is_some_and(|f| f.contains("entities"))
        );
    }
}

mod linkedin {
    use std::time::Duration;

    use herald_platforms::{
        LimitScope, Platform, PlatformError, Relation,
        linkedin::{DEFAULT_VERSION, Linkedin},
        oauth::OAuthClient,
    };
    use secrecy::ExposeSecret;
    use serde_json::json;

    use crate::support::*;

    fn linkedin(server: &Server) -> Linkedin {
        Linkedin::new(
            client(),
            &server.base,
            OAuthClient {
                client_id: "li-id".into(),
                client_secret: Some(secret("li-secret")),
                token_url: server.url("/oauth/v2/accessToken"),
            },
        )
    }

    fn li_error(status: u16, service: i64, code: &str, message: &str) -> Reply {
        json(
            status,
            json!({"status": status, "serviceErrorCode": service, "code": code, "message": message}),
        )
    }

    #[tokio::test]
    async fn a_share_sends_an_article_with_versioned_headers_and_reads_the_id_header() {
        let server = Server::start(|r| match (r.method.as_str(), r.path.as_str()) {
            ("POST", "/rest/posts") => Reply::Now(axum::response::IntoResponse::into_response((
                axum::http::StatusCode::CREATED,
                [("x-restli-id", "urn:li:share:7150000000000000000")],
                "",
            ))),
            _ => not_found(r),
        })
        .await;
        let mut p = post();
        p.text = Some("Read (this) #now".into());
        let published = linkedin(&server)
            .share(&account("Dk968RHxiO", json!({})), &creds("at", None), &p)
            .await
            .unwrap();
        assert_eq!(published.post_id, "urn:li:share:7150000000000000000");
        assert_eq!(
            published.post_url.as_deref(),
            Some("https://www.linkedin.com/feed/update/urn:li:share:7150000000000000000/")
        );
        let req = &server.requests()[0];
        assert_eq!(req.header("authorization"), Some("Bearer at"));
        assert_eq!(req.header("linkedin-version"), Some(DEFAULT_VERSION));
        assert_eq!(req.header("x-restli-protocol-version"), Some("2.0.0"));
        let body = req.json();
        assert_eq!(body["author"], "urn:li:person:Dk968RHxiO");
        assert_eq!(body["commentary"], r"Read \(this\) \#now");
        assert_eq!(body["visibility"], "PUBLIC");
        assert_eq!(body["lifecycleState"], "PUBLISHED");
        assert_eq!(body["distribution"]["feedDistribution"], "MAIN_FEED");
        assert_eq!(
            body["content"]["article"],
            json!({"source": "https://example.com/articles/1", "title": "A title"})
        );
    }

    #[tokio::test]
    async fn a_401_is_expired_with_a_refresh_token_unless_revoked_and_403_is_dead() {
        let server = Server::start(|r| match r.header("authorization") {
            Some("Bearer expired") => {
                li_error(401, 65_600, "INVALID_ACCESS_TOKEN", "Invalid access token")
            }
            Some("Bearer revoked") => li_error(
                401,
                65_601,
                "REVOKED_ACCESS_TOKEN",
                "The token used in the request has been revoked by the user",
            ),
            _ => li_error(
                403,
                100,
                "ACCESS_DENIED",
                "Not enough permissions to access: partnerApiPostsExternal.CREATE.20260101",
            ),
        })
        .await;
        let li = linkedin(&server);
        let acct = account("Dk968RHxiO", json!({}));
        let err = li
            .share(&acct, &creds("expired", Some("rt")), &post())
            .await
            .unwrap_err();
        assert!(matches!(err, PlatformError::TokenExpired), "{err:?}");
        let err = li
            .share(&acct, &creds("expired", None), &post())
            .await
            .unwrap_err();
        assert!(matches!(err, PlatformError::Unauthorized { .. }), "{err:?}");
        let err = li
            .share(&acct, &creds("revoked", Some("rt")), &post())
            .await
            .unwrap_err();
        assert!(matches!(err, PlatformError::Unauthorized { .. }), "{err:?}");
        let err = li
            .share(&acct, &creds("other", Some("rt")), &post())
            .await
            .unwrap_err();
        assert!(
            matches!(err, PlatformError::Unauthorized { ref reason } if reason.contains("Not enough permissions")),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_429_waits_until_midnight_utc_and_a_duplicate_is_rejected() {
        let server = Server::start(|r| match r.header("authorization") {
            Some("Bearer busy") => li_error(429, 101, "TOO_MANY_REQUESTS", "Resource level throttle APPLICATION DAY limit for calls to this resource is reached."),
            Some("Bearer down") => li_error(504, 0, "GATEWAY_TIMEOUT", "Gateway timeout"),
            _ => json(422, json!({"message": "Content is a duplicate of urn:li:share:7150000000000000000", "status": 422})),
        })
        .await;
        let li = linkedin(&server);
        let acct = account("Dk968RHxiO", json!({}));
        let err = li
            .share(&acct, &creds("busy", None), &post())
            .await
            .unwrap_err();
        match err {
            PlatformError::RateLimited {
                retry_after: Some(wait),
                scope: LimitScope::Account,
            } => {
                let expected = herald_platforms::linkedin::until_midnight_utc(chrono::Utc::now());
                assert!(
                    wait >= expected && wait - expected < Duration::from_secs(5),
                    "{wait:?} vs {expected:?}"
                );
            }
            other => panic!("{other:?}"),
        }
        let err = li
            .share(&acct, &creds("down", None), &post())
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                PlatformError::Transient {
                    status: Some(504),
                    ..
                }
            ),
            "{err:?}"
        );
        let err = li
            .share(&acct, &creds("dup", None), &post())
            .await
            .unwrap_err();
        assert!(
            matches!(err, PlatformError::Rejected { status: 422, ref reason } if reason.contains("duplicate")),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn verify_reads_userinfo() {
        let server = Server::start(|r| match r.path.as_str() {
            "/v2/userinfo" => json(200, json!({"sub": "Dk968RHxiO", "email_verified": true, "name": "Ada Lovelace", "locale": {"country": "GB", "language": "en"}, "given_name": "Ada", "family_name": "Lovelace"})),
            _ => not_found(r),
        })
        .await;
        let p = linkedin(&server)
            .verify(&account("", json!({})), &creds("at", None))
            .await
            .unwrap();
        assert_eq!(
            (p.platform_account_id.as_str(), p.handle.as_str()),
            ("Dk968RHxiO", "Ada Lovelace")
        );
    }

    #[tokio::test]
    async fn refresh_needs_a_refresh_token_and_sends_client_credentials_in_the_form() {
        let server = Server::start(|r| match r.form().get("refresh_token").map(String::as_str) {
            Some("rt1") => json(200, json!({"access_token": "at2", "expires_in": 5_184_000, "refresh_token": "rt1", "refresh_token_expires_in": 31_000_000})),
            _ => json(400, json!({"error": "invalid_grant", "error_description": "The provided authorization grant or refresh token is invalid, expired or revoked."})),
        })
        .await;
        let li = linkedin(&server);
        let acct = account("Dk968RHxiO", json!({}));
        let err = li.refresh(&acct, &creds("at", None)).await.unwrap_err();
        assert!(matches!(err, PlatformError::Unsupported(_)), "{err:?}");
        let tokens = li.refresh(&acct, &creds("at", Some("rt1"))).await.unwrap();
        assert_eq!(tokens.access_token.expose_secret(), "at2");
        assert_eq!(
            tokens.refresh_token.as_ref().map(|t| t.expose_secret()),
            Some("rt1")
        );
        let form = server.requests()[0].form();
        assert_eq!(form.get("client_id").map(String::as_str), Some("li-id"));
        assert_eq!(
            form.get("client_secret").map(String::as_str),
            Some("li-secret")
        );
        assert_eq!(
            form.get("grant_type").map(String::as_str),
            Some("refresh_token")
        );
        let err = li
            .refresh(&acct, &creds("at", Some("gone")))
            .await
            .unwrap_err();
        assert!(matches!(err, PlatformError::InvalidGrant { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn read_back_works_for_pages_only_and_followers_are_not_listed() {
        let now = chrono::Utc::now().timestamp_millis();
        let server = Server::start(move |r| match r.path.as_str() {
            "/rest/posts" => json(200, json!({
                "paging": {"start": 0, "count": 20, "links": []},
                "elements": [
                    {"id": "urn:li:share:1", "author": "urn:li:organization:5", "commentary": "Old", "createdAt": now - 10 * 86_400_000, "publishedAt": now - 10 * 86_400_000,
                     "content": {"article": {"source": "https://example.com/articles/1", "title": "A title"}}},
                    {"id": "urn:li:share:2", "author": "urn:li:organization:5", "commentary": "Worth reading", "createdAt": now - 60_000, "publishedAt": now - 60_000,
                     "content": {"article": {"source": "https://example.com/articles/1", "title": "A title"}}}
                ]
            })),
            _ => not_found(r),
        })
        .await;
        let li = linkedin(&server);
        let page = account("Dk968RHxiO", json!({"organization_id": "5"}));
        let found = li
            .find_published(&page, &creds("at", None), &post())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(found.post_id, "urn:li:share:2");
        let req = &server.requests()[0];
        assert_eq!(
            (req.q("q"), req.q("author")),
            (Some("author"), Some("urn:li:organization:5"))
        );
        assert_eq!(req.header("linkedin-version"), Some(DEFAULT_VERSION));
        let member = account("Dk968RHxiO", json!({}));
        assert!(matches!(
            li.find_published(&member, &creds("at", None), &post())
                .await,
            Err(PlatformError::Unsupported(_))
        ));
        assert!(matches!(
            li.followers_page(&member, &creds("at", None), Relation::Followers, None)
                .await,
            Err(PlatformError::Unsupported(_))
        ));
    }
}

mod facebook {
    use std::time::Duration;

    use herald_platforms::{
        LimitScope, Platform, PlatformError, Relation,
        facebook::{API_VERSION, Facebook},
        oauth::OAuthClient,
    };
    use secrecy::ExposeSecret;
    use serde_json::json;

    use crate::support::*;

    fn graph_error(status: u16, code: i64, subcode: Option<i64>, message: &str) -> Reply {
        let mut error = json!({"message": message, "type": "OAuthException", "code": code, "fbtrace_id": "AbCdEf"});
        if let Some(s) = subcode {
            error["error_subcode"] = s.into();
        }
        json(status, json!({ "error": error }))
    }

    fn page() -> herald_platforms::Account {
        account("user-1", json!({"page_id": "1011"}))
    }

    #[tokio::test]
    async fn a_share_posts_message_and_link_to_the_page_feed_with_the_page_token() {
        let server = Server::start(|r| match (r.method.as_str(), r.path.as_str()) {
            ("POST", p) if p == format!("/{API_VERSION}/1011/feed") => {
                json(200, json!({"id": "1011_2022", "permalink_url": "https://www.facebook.com/1011/posts/2022"}))
            }
            _ => not_found(r),
        })
        .await;
        let fb = Facebook::new(client(), &server.base);
        let published = fb
            .share(&page(), &creds("page-token", None), &post())
            .await
            .unwrap();
        assert_eq!(published.post_id, "1011_2022");
        assert_eq!(
            published.post_url.as_deref(),
            Some("https://www.facebook.com/1011/posts/2022")
        );
        let form = server.requests()[0].form();
        assert_eq!(
            form.get("message").map(String::as_str),
            Some("Worth reading")
        );
        assert_eq!(
            form.get("link").map(String::as_str),
            Some("https://example.com/articles/1")
        );
        assert_eq!(
            form.get("access_token").map(String::as_str),
            Some("page-token")
        );
        assert_eq!(form.get("published").map(String::as_str), Some("true"));
    }

    #[tokio::test]
    async fn graph_error_codes_decide_the_class() {
        let server = Server::start(|r| match r.form().get("access_token").map(String::as_str) {
            Some("dead") => graph_error(400, 190, Some(460), "Error validating access token: The session has been invalidated because the user changed their password."),
            Some("dup") => graph_error(400, 506, None, "Duplicate status message"),
            Some("link") => graph_error(400, 100, Some(1_609_005), "Error posting link"),
            Some("flaky") => graph_error(500, 2, None, "An unexpected error has occurred. Please retry your request later."),
            Some("blocked") => graph_error(400, 368, None, "The action attempted has been deemed abusive or is otherwise disallowed"),
            _ => graph_error(400, 100, None, "Invalid parameter"),
        })
        .await;
        let fb = Facebook::new(client(), &server.base);
        let class = |token: &'static str| {
            let fb = fb.clone();
            async move {
                fb.share(&page(), &creds(token, None), &post())
                    .await
                    .unwrap_err()
            }
        };
        let dead = class("dead").await;
        assert!(
            matches!(dead, PlatformError::Unauthorized { ref reason } if reason.contains("code 190, subcode 460")),
            "{dead:?}"
        );
        assert!(
            !dead.to_string().contains("dead"),
            "the token never appears in an error"
        );
        assert!(matches!(
            class("dup").await,
            PlatformError::Rejected { status: 400, .. }
        ));
        assert!(matches!(
            class("link").await,
            PlatformError::Rejected { .. }
        ));
        assert!(matches!(
            class("flaky").await,
            PlatformError::Transient {
                status: Some(500),
                ..
            }
        ));
        assert!(matches!(
            class("blocked").await,
            PlatformError::Rejected { .. }
        ));
        assert!(matches!(
            class("other").await,
            PlatformError::Rejected { .. }
        ));
    }

    #[tokio::test]
    async fn an_unreadable_answer_to_a_post_is_an_unknown_outcome_that_never_shows_the_token() {
        let server = Server::start(|_| {
            Reply::Now(axum::response::IntoResponse::into_response((
                axum::http::StatusCode::OK,
                "<html>not json</html>",
            )))
        })
        .await;
        let err = Facebook::new(client(), &server.base)
            .share(&page(), &creds("page-token-secret", None), &post())
            .await
            .unwrap_err();
        assert!(
            matches!(err, PlatformError::OutcomeUnknown { .. }),
            "{err:?}"
        );
        assert!(!format!("{err} {err:?}").contains("page-token-secret"));
    }

    #[tokio::test]
    async fn throttling_waits_for_the_business_use_case_estimate() {
        let server = Server::start(|_| {
            json_with(
                400,
                &[(
                    "x-business-use-case-usage",
                    r#"{"1011":[{"type":"pages","call_count":100,"total_cputime":45,"total_time":60,"estimated_time_to_regain_access":12}]}"#,
                )],
                json!({"error": {"message": "(#80001) There have been too many calls to this Page account. Wait a bit and try again.", "type": "OAuthException", "code": 80_001, "fbtrace_id": "x"}}),
            )
        })
        .await;
        let err = Facebook::new(client(), &server.base)
            .share(&page(), &creds("t", None), &post())
            .await
            .unwrap_err();
        assert!(
            matches!(err, PlatformError::RateLimited { retry_after: Some(w), scope: LimitScope::Account } if w == Duration::from_secs(720)),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn the_apps_limit_is_told_from_a_users_by_code_and_app_usage() {
        let server = Server::start(|r| match r.form().get("access_token").map(String::as_str) {
            Some("app") => json_with(
                400,
                &[("x-app-usage", r#"{"call_count":100,"total_cputime":20,"total_time":31}"#)],
                json!({"error": {"message": "(#4) Application request limit reached", "type": "OAuthException", "is_transient": true, "code": 4, "fbtrace_id": "x"}}),
            ),
            // A page-level code while the app's usage is spent: every page of the app waits.
            Some("spent") => json_with(
                400,
                &[("x-app-usage", r#"{"call_count":12,"total_cputime":100,"total_time":40}"#)],
                json!({"error": {"message": "(#32) Page request limit reached", "type": "OAuthException", "code": 32, "fbtrace_id": "x"}}),
            ),
            _ => json_with(
                400,
                &[("x-app-usage", r#"{"call_count":12,"total_cputime":4,"total_time":9}"#)],
                json!({"error": {"message": "(#17) User request limit reached", "type": "OAuthException", "code": 17, "fbtrace_id": "x"}}),
            ),
        })
        .await;
        let scope = |token: &'static str| {
            let server = &server;
            async move {
                match Facebook::new(client(), &server.base)
                    .share(&page(), &creds(token, None), &post())
                    .await
                {
                    Err(PlatformError::RateLimited { scope, .. }) => scope,
                    other => panic!("{other:?}"),
                }
            }
        };
        assert_eq!(scope("app").await, LimitScope::App);
        assert_eq!(scope("spent").await, LimitScope::App);
        assert_eq!(scope("user").await, LimitScope::Account);
    }

    #[tokio::test]
    async fn verify_reads_the_page_and_read_back_matches_the_link() {
        let recent = (chrono::Utc::now() - chrono::Duration::minutes(5))
            .format("%Y-%m-%dT%H:%M:%S+0000")
            .to_string();
        let server = Server::start(move |r| match r.path.as_str() {
            p if p == format!("/{API_VERSION}/1011") => json(200, json!({"id": "1011", "name": "Herald Test Page"})),
            p if p == format!("/{API_VERSION}/1011/feed") => json(200, json!({
                "data": [
                    {"id": "1011_1", "message": "Worth reading", "link": "https://example.com/other", "created_time": recent},
                    {"id": "1011_2", "message": "Worth reading", "link": "https://example.com/articles/1", "created_time": recent, "permalink_url": "https://www.facebook.com/1011/posts/2"}
                ],
                "paging": {"cursors": {"before": "a", "after": "b"}}
            })),
            _ => not_found(r),
        })
        .await;
        let fb = Facebook::new(client(), &server.base);
        let profile = fb.verify(&page(), &creds("t", None)).await.unwrap();
        assert_eq!(
            (
                profile.platform_account_id.as_str(),
                profile.handle.as_str()
            ),
            ("1011", "Herald Test Page")
        );
        assert_eq!(server.requests()[0].q("fields"), Some("id,name"));
        let found = fb
            .find_published(&page(), &creds("t", None), &post())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(found.post_id, "1011_2");
        assert!(server.requests()[1].q("since").is_some());
    }

    #[tokio::test]
    async fn refresh_is_unsupported_but_a_long_lived_exchange_is_offered() {
        let server = Server::start(|r| match r.q("grant_type") {
            Some("fb_exchange_token") => json(
                200,
                json!({"access_token": "long", "token_type": "bearer", "expires_in": 5_183_944}),
            ),
            _ => not_found(r),
        })
        .await;
        let fb = Facebook::new(client(), &server.base);
        assert!(matches!(
            fb.refresh(&page(), &creds("t", None)).await,
            Err(PlatformError::Unsupported(_))
        ));
        assert!(matches!(
            fb.followers_page(&page(), &creds("t", None), Relation::Followers, None)
                .await,
            Err(PlatformError::Unsupported("followers"))
        ));
        let app = OAuthClient {
            client_id: "app".into(),
            client_secret: Some(secret("shh")),
            token_url: server.url("/v24.0/oauth/access_token"),
        };
        let tokens = fb
            .exchange_long_lived(&app, &secret("short"))
            .await
            .unwrap();
        assert_eq!(tokens.access_token.expose_secret(), "long");
        assert!(tokens.refresh_token.is_none());
        let req = &server.requests()[0];
        assert_eq!(
            (
                req.q("client_id"),
                req.q("client_secret"),
                req.q("fb_exchange_token")
            ),
            (Some("app"), Some("shh"), Some("short"))
        );
    }
}

mod instagram {
    use std::{
        sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        },
        time::Duration,
    };

    use herald_platforms::{
        LimitScope, Platform, PlatformError,
        instagram::{API_VERSION, Instagram},
        meta::container::ContainerWait,
    };
    use secrecy::ExposeSecret;
    use serde_json::json;

    use crate::support::*;

    const FAST: ContainerWait = ContainerWait {
        checks: 3,
        interval: Duration::from_millis(1),
    };

    fn ig(server: &Server) -> Instagram {
        Instagram::new(client(), &server.base).with_container_wait(FAST)
    }

    fn v(path: &str) -> String {
        format!("/{API_VERSION}/{path}")
    }

    /// An Instagram that answers the quota, container and publish calls; `status` gives the
    /// container state for the n-th status check.
    async fn instagram(
        used: u64,
        status: impl Fn(usize) -> &'static str + Send + Sync + 'static,
    ) -> Server {
        let checks = Arc::new(AtomicUsize::new(0));
        Server::start(move |r| {
            let path = r.path.as_str();
            match r.method.as_str() {
                "GET" if path == v("1784/content_publishing_limit") => {
                    json(200, json!({"data": [{"quota_usage": used, "config": {"quota_total": 50, "quota_duration": 86_400}}]}))
                }
                "POST" if path == v("1784/media") => json(200, json!({"id": "17889455560051444"})),
                "GET" if path == v("17889455560051444") => {
                    let n = checks.fetch_add(1, Ordering::SeqCst);
                    let state = status(n);
                    json(200, json!({"status_code": state, "status": format!("{state}: detail"), "id": "17889455560051444"}))
                }
                "POST" if path == v("1784/media_publish") => json(200, json!({"id": "17920238422030506"})),
                "GET" if path == v("17920238422030506") => json(200, json!({"permalink": "https://www.instagram.com/p/Cabc/", "id": "17920238422030506"})),
                _ => not_found(r),
            }
        })
        .await
    }

    #[tokio::test]
    async fn a_share_creates_a_container_waits_for_it_and_publishes_it() {
        let server = instagram(3, |n| if n == 0 { "IN_PROGRESS" } else { "FINISHED" }).await;
        let published = ig(&server)
            .share(&account("1784", json!({})), &creds("igt", None), &post())
            .await
            .unwrap();
        assert_eq!(published.post_id, "17920238422030506");
        assert_eq!(
            published.post_url.as_deref(),
            Some("https://www.instagram.com/p/Cabc/")
        );
        assert_eq!(
            server.paths(),
            [
                format!("GET {}", v("1784/content_publishing_limit")),
                format!("POST {}", v("1784/media")),
                format!("GET {}", v("17889455560051444")),
                format!("GET {}", v("17889455560051444")),
                format!("POST {}", v("1784/media_publish")),
                format!("GET {}", v("17920238422030506")),
            ]
        );
        let reqs = server.requests();
        let create = reqs[1].form();
        assert_eq!(
            create.get("image_url").map(String::as_str),
            Some("https://cdn.example.com/cover.jpg")
        );
        assert_eq!(
            create.get("caption").map(String::as_str),
            Some("Worth reading\n\nhttps://example.com/articles/1")
        );
        assert_eq!(create.get("access_token").map(String::as_str), Some("igt"));
        assert_eq!(reqs[2].q("fields"), Some("status_code,status"));
        assert_eq!(
            reqs[4].form().get("creation_id").map(String::as_str),
            Some("17889455560051444")
        );
    }

    #[tokio::test]
    async fn a_failed_container_is_rejected_and_never_published() {
        let server = instagram(0, |_| "ERROR").await;
        let err = ig(&server)
            .share(&account("1784", json!({})), &creds("igt", None), &post())
            .await
            .unwrap_err();
        assert!(
            matches!(err, PlatformError::Rejected { ref reason, .. } if reason.contains("ERROR: detail")),
            "{err:?}"
        );
        assert!(!server.paths().iter().any(|p| p.ends_with("media_publish")));
    }

    #[tokio::test]
    async fn a_container_still_in_progress_past_the_bound_is_transient() {
        let server = instagram(0, |_| "IN_PROGRESS").await;
        let err = ig(&server)
            .share(&account("1784", json!({})), &creds("igt", None), &post())
            .await
            .unwrap_err();
        assert!(matches!(err, PlatformError::Transient { .. }), "{err:?}");
        let paths = server.paths();
        assert_eq!(
            paths
                .iter()
                .filter(|p| p.ends_with("17889455560051444"))
                .count(),
            3
        );
        assert!(!paths.iter().any(|p| p.ends_with("media_publish")));
    }

    #[tokio::test]
    async fn a_spent_publishing_quota_is_a_rate_limit_before_any_container() {
        let server = instagram(50, |_| "FINISHED").await;
        let err = ig(&server)
            .share(&account("1784", json!({})), &creds("igt", None), &post())
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                PlatformError::RateLimited {
                    retry_after: Some(_),
                    scope: LimitScope::Account,
                }
            ),
            "{err:?}"
        );
        assert_eq!(server.paths().len(), 1);
    }

    #[tokio::test]
    async fn the_publish_limit_error_is_a_rate_limit_and_a_lost_publish_is_unknown() {
        let hang = Arc::new(AtomicUsize::new(0));
        let server = Server::start(move |r| match (r.method.as_str(), r.path.rsplit('/').next().unwrap_or("")) {
            ("GET", "content_publishing_limit") => json(200, json!({"data": [{"quota_usage": 1}]})),
            ("POST", "media") => json(200, json!({"id": "555"})),
            ("GET", "555") => json(200, json!({"status_code": "FINISHED"})),
            ("POST", "media_publish") if hang.fetch_add(1, Ordering::SeqCst) == 0 => json(
                400,
                json!({"error": {"message": "Application request limit reached", "type": "OAuthException", "is_transient": false, "code": 9, "error_subcode": 2_207_042, "error_user_title": "Max posts reached", "error_user_msg": "The maximum number of posts that can be published has been reached.", "fbtrace_id": "x"}}),
            ),
            ("POST", "media_publish") => Reply::Hang,
            _ => not_found(r),
        })
        .await;
        let account = account("1784", json!({}));
        let err = ig(&server)
            .share(&account, &creds("igt", None), &post())
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                PlatformError::RateLimited {
                    retry_after: Some(_),
                    scope: LimitScope::Account,
                }
            ),
            "{err:?}"
        );
        let impatient = Instagram::new(impatient_client(), &server.base).with_container_wait(FAST);
        let err = impatient
            .share(&account, &creds("igt", None), &post())
            .await
            .unwrap_err();
        assert!(
            matches!(err, PlatformError::OutcomeUnknown { .. }),
            "{err:?}"
        );
    }

    /// An Instagram whose one container is in `state`, and whose media list holds `listed`.
    async fn instagram_with_container(
        state: &'static str,
        listed: serde_json::Value,
        saves: Arc<Checkpoints>,
    ) -> Server {
        Server::start(
            move |r| match (r.method.as_str(), r.path.rsplit('/').next().unwrap_or("")) {
                ("GET", "content_publishing_limit") => {
                    json(200, json!({"data": [{"quota_usage": 1}]}))
                }
                ("POST", "media") => json(200, json!({"id": "777"})),
                ("GET", "555") => json(200, json!({"status_code": state})),
                ("GET", "777") => json(200, json!({"status_code": "FINISHED"})),
                // The container must be stored before it is published.
                ("POST", "media_publish")
                    if r.form()
                        .get("creation_id")
                        .is_some_and(|c| c == "555" || saves.saved().contains(c)) =>
                {
                    json(200, json!({"id": "9001"}))
                }
                ("POST", "media_publish") => json(
                    500,
                    json!({"unexpected": "a container published before it was saved"}),
                ),
                ("GET", "9001") => json(
                    200,
                    json!({"permalink": "https://www.instagram.com/p/Cnew/"}),
                ),
                ("GET", "media") => json(200, listed.clone()),
                _ => not_found(r),
            },
        )
        .await
    }

    /// A share on `server` that resumes from `saved` and stores new checkpoints in `saves`.
    async fn share_resuming(
        server: &Server,
        saved: Option<&str>,
        saves: &Arc<Checkpoints>,
    ) -> Result<herald_platforms::Published, PlatformError> {
        ig(server)
            .share(
                &account("1784", json!({})),
                &creds("igt", None),
                &post_resuming(saved, saves.clone()),
            )
            .await
    }

    /// The containers `server` was asked to publish, in order.
    fn publishes(server: &Server) -> Vec<String> {
        server
            .requests()
            .into_iter()
            .filter(|r| r.path.ends_with("media_publish"))
            .map(|r| r.form()["creation_id"].clone())
            .collect()
    }

    #[tokio::test]
    async fn a_new_container_is_saved_as_the_checkpoint_before_it_is_published() {
        let saves = Arc::new(Checkpoints::default());
        let server = instagram_with_container("FINISHED", json!({"data": []}), saves.clone()).await;
        let published = share_resuming(&server, None, &saves).await.unwrap();
        assert_eq!(published.post_id, "9001");
        assert_eq!(saves.saved(), ["777"]);
        assert_eq!(
            server.paths(),
            [
                format!("GET {}", v("1784/content_publishing_limit")),
                format!("POST {}", v("1784/media")),
                format!("GET {}", v("777")),
                format!("POST {}", v("1784/media_publish")),
                format!("GET {}", v("9001")),
            ]
        );
    }

    #[tokio::test]
    async fn a_saved_container_not_yet_published_is_published_without_creating_another() {
        for state in ["FINISHED", "IN_PROGRESS"] {
            let saves = Arc::new(Checkpoints::default());
            let server = instagram_with_container(state, json!({"data": []}), saves.clone()).await;
            let result = share_resuming(&server, Some("555"), &saves).await;
            let paths = server.paths();
            assert!(
                !paths.contains(&format!("POST {}", v("1784/media"))),
                "{paths:?}"
            );
            assert!(saves.saved().is_empty());
            match state {
                "FINISHED" => {
                    assert_eq!(result.unwrap().post_id, "9001");
                    assert_eq!(publishes(&server), ["555"]);
                }
                // Still processing past the bound: try again later, with the same container.
                _ => assert!(
                    matches!(result, Err(PlatformError::Transient { .. })),
                    "{result:?}"
                ),
            }
        }
    }

    #[tokio::test]
    async fn a_saved_container_already_published_is_settled_by_read_back_and_never_published_again()
    {
        let recent = (chrono::Utc::now() - chrono::Duration::minutes(1))
            .format("%Y-%m-%dT%H:%M:%S+0000")
            .to_string();
        let listed = json!({"data": [{"id": "9000", "caption": "Worth reading\n\nhttps://example.com/articles/1", "permalink": "https://www.instagram.com/p/Cold/", "timestamp": recent}]});
        let saves = Arc::new(Checkpoints::default());
        let server = instagram_with_container("PUBLISHED", listed, saves.clone()).await;
        let found = share_resuming(&server, Some("555"), &saves).await.unwrap();
        assert_eq!(
            (found.post_id.as_str(), found.post_url.as_deref()),
            ("9000", Some("https://www.instagram.com/p/Cold/"))
        );
        assert_eq!(
            server.paths(),
            [
                format!("GET {}", v("555")),
                format!("GET {}", v("1784/media"))
            ]
        );

        // Published, but the media list does not show it yet: still unknown, and still not posted again.
        let server =
            instagram_with_container("PUBLISHED", json!({"data": []}), saves.clone()).await;
        let err = share_resuming(&server, Some("555"), &saves)
            .await
            .unwrap_err();
        assert!(
            matches!(err, PlatformError::OutcomeUnknown { .. }),
            "{err:?}"
        );
        assert!(publishes(&server).is_empty());
        assert_eq!(
            server.paths(),
            [
                format!("GET {}", v("555")),
                format!("GET {}", v("1784/media"))
            ]
        );
    }

    #[tokio::test]
    async fn an_expired_saved_container_is_replaced_by_a_new_one_saved_before_publishing() {
        let saves = Arc::new(Checkpoints::default());
        let server = instagram_with_container("EXPIRED", json!({"data": []}), saves.clone()).await;
        let published = share_resuming(&server, Some("555"), &saves).await.unwrap();
        assert_eq!(published.post_id, "9001");
        assert_eq!(saves.saved(), ["777"]);
        assert_eq!(publishes(&server), ["777"]);
    }

    #[tokio::test]
    async fn refresh_exchanges_the_long_lived_token_and_a_dead_one_is_an_invalid_grant() {
        let server = Server::start(|r| match (r.path.as_str(), r.q("access_token")) {
            ("/refresh_access_token", Some("alive")) => json(200, json!({"access_token": "fresh", "token_type": "bearer", "expires_in": 5_183_944})),
            ("/refresh_access_token", _) => json(400, json!({"error": {"message": "Error validating access token: Session has expired", "type": "OAuthException", "code": 190, "error_subcode": 463, "fbtrace_id": "x"}})),
            _ => not_found(r),
        })
        .await;
        let acct = account("1784", json!({}));
        let tokens = ig(&server)
            .refresh(&acct, &creds("alive", None))
            .await
            .unwrap();
        assert_eq!(tokens.access_token.expose_secret(), "fresh");
        assert!(
            tokens.refresh_token.is_none(),
            "Instagram returns no refresh token: the store keeps what it has"
        );
        assert!(tokens.expires_at.is_some());
        assert_eq!(
            server.requests()[0].q("grant_type"),
            Some("ig_refresh_token")
        );
        let err = ig(&server)
            .refresh(&acct, &creds("expired", None))
            .await
            .unwrap_err();
        assert!(matches!(err, PlatformError::InvalidGrant { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn verify_reads_the_account_and_read_back_matches_the_caption() {
        let recent = (chrono::Utc::now() - chrono::Duration::minutes(5))
            .format("%Y-%m-%dT%H:%M:%S+0000")
            .to_string();
        let old = (chrono::Utc::now() - chrono::Duration::days(30))
            .format("%Y-%m-%dT%H:%M:%S+0000")
            .to_string();
        let server = Server::start(move |r| match r.path.as_str() {
            p if p == v("1784") => json(200, json!({"id": "1784", "username": "herald.test", "followers_count": 1234})),
            p if p == v("1784/media") => json(200, json!({
                "data": [
                    {"id": "1", "caption": "Worth reading\n\nhttps://example.com/articles/1", "permalink": "https://www.instagram.com/p/old/", "timestamp": old},
                    {"id": "2", "caption": "Worth reading\n\nhttps://example.com/articles/1", "permalink": "https://www.instagram.com/p/new/", "timestamp": recent}
                ]
            })),
            _ => not_found(r),
        })
        .await;
        let acct = account("1784", json!({}));
        let profile = ig(&server).verify(&acct, &creds("t", None)).await.unwrap();
        assert_eq!(
            (profile.handle.as_str(), profile.followers_count),
            ("herald.test", Some(1234))
        );
        assert_eq!(
            server.requests()[0].q("fields"),
            Some("id,username,followers_count")
        );
        let found = ig(&server)
            .find_published(&acct, &creds("t", None), &post())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (found.post_id.as_str(), found.post_url.as_deref()),
            ("2", Some("https://www.instagram.com/p/new/"))
        );
    }

    #[tokio::test]
    async fn validate_requires_an_image() {
        let server = Server::start(not_found).await;
        let mut p = post();
        p.image_url = None;
        let err = ig(&server)
            .validate(&account("1784", json!({})), &p)
            .unwrap_err();
        assert_eq!((err.field, err.code), ("image_url", "image_required"));
        assert!(ig(&server).capabilities().requires_image);
    }
}

mod threads {
    use std::{
        sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        },
        time::Duration,
    };

    use herald_platforms::{
        LimitScope, Platform, PlatformError,
        meta::container::ContainerWait,
        threads::{API_VERSION, Threads},
    };
    use secrecy::ExposeSecret;
    use serde_json::json;

    use crate::support::*;

    fn threads(server: &Server) -> Threads {
        Threads::new(client(), &server.base).with_container_wait(ContainerWait {
            checks: 3,
            interval: Duration::from_millis(1),
        })
    }

    fn v(path: &str) -> String {
        format!("/{API_VERSION}/{path}")
    }

    async fn platform(
        status: impl Fn(usize) -> serde_json::Value + Send + Sync + 'static,
    ) -> Server {
        let checks = Arc::new(AtomicUsize::new(0));
        Server::start(move |r| {
            let path = r.path.as_str();
            match r.method.as_str() {
                "GET" if path == v("7001/threads_publishing_limit") => {
                    json(200, json!({"data": [{"quota_usage": 4, "config": {"quota_total": 250, "quota_duration": 86_400}}]}))
                }
                "POST" if path == v("7001/threads") => json(200, json!({"id": "1800"})),
                "GET" if path == v("1800") => json(200, status(checks.fetch_add(1, Ordering::SeqCst))),
                "POST" if path == v("7001/threads_publish") => json(200, json!({"id": "1900"})),
                "GET" if path == v("1900") => json(200, json!({"id": "1900", "permalink": "https://www.threads.com/@herald/post/DAbc"})),
                _ => not_found(r),
            }
        })
        .await
    }

    #[tokio::test]
    async fn a_share_creates_a_text_container_with_the_link_and_publishes_it() {
        let server = platform(|n| {
            if n == 0 {
                json!({"id": "1800", "status": "IN_PROGRESS"})
            } else {
                json!({"id": "1800", "status": "FINISHED"})
            }
        })
        .await;
        let published = threads(&server)
            .share(&account("7001", json!({})), &creds("tht", None), &post())
            .await
            .unwrap();
        assert_eq!(published.post_id, "1900");
        assert_eq!(
            published.post_url.as_deref(),
            Some("https://www.threads.com/@herald/post/DAbc")
        );
        let reqs = server.requests();
        let create = reqs
            .iter()
            .find(|r| r.path == v("7001/threads"))
            .unwrap()
            .form();
        assert_eq!(create.get("media_type").map(String::as_str), Some("TEXT"));
        assert_eq!(
            create.get("text").map(String::as_str),
            Some("Worth reading\n\nhttps://example.com/articles/1")
        );
        assert_eq!(
            create.get("link_attachment").map(String::as_str),
            Some("https://example.com/articles/1")
        );
        let status = reqs.iter().find(|r| r.path == v("1800")).unwrap();
        assert_eq!(status.q("fields"), Some("status,error_message"));
        let publish = reqs
            .iter()
            .find(|r| r.path == v("7001/threads_publish"))
            .unwrap()
            .form();
        assert_eq!(publish.get("creation_id").map(String::as_str), Some("1800"));
    }

    #[tokio::test]
    async fn a_saved_thread_container_is_resumed_by_its_status_field() {
        let server = platform(|_| json!({"id": "1800", "status": "FINISHED"})).await;
        let saves = Arc::new(Checkpoints::default());
        let published = threads(&server)
            .share(
                &account("7001", json!({})),
                &creds("tht", None),
                &post_resuming(Some("1800"), saves.clone()),
            )
            .await
            .unwrap();
        assert_eq!(published.post_id, "1900");
        assert!(saves.saved().is_empty());
        assert_eq!(
            server.paths(),
            [
                format!("GET {}", v("1800")),
                format!("GET {}", v("1800")),
                format!("POST {}", v("7001/threads_publish")),
                format!("GET {}", v("1900")),
            ]
        );
        assert_eq!(
            server.requests()[0].q("fields"),
            Some("status,error_message")
        );
    }

    #[tokio::test]
    async fn a_container_error_is_rejected_with_its_message() {
        let server = platform(|_| json!({"id": "1800", "status": "ERROR", "error_message": "FAILED_PROCESSING_VIDEO"})).await;
        let err = threads(&server)
            .share(&account("7001", json!({})), &creds("tht", None), &post())
            .await
            .unwrap_err();
        assert!(
            matches!(err, PlatformError::Rejected { ref reason, .. } if reason.contains("FAILED_PROCESSING_VIDEO")),
            "{err:?}"
        );
        assert!(
            !server
                .paths()
                .iter()
                .any(|p| p.ends_with("threads_publish"))
        );
    }

    #[tokio::test]
    async fn a_throttled_create_waits_for_the_estimate() {
        let server = Server::start(|r| match r.path.rsplit('/').next() {
            Some("threads_publishing_limit") => json(200, json!({"data": [{"quota_usage": 0}]})),
            _ => json_with(
                400,
                &[("x-business-use-case-usage", r#"{"7001":[{"type":"threads","call_count":100,"total_cputime":10,"total_time":10,"estimated_time_to_regain_access":3}]}"#)],
                json!({"error": {"message": "Application request limit reached", "type": "OAuthException", "code": 4, "fbtrace_id": "x"}}),
            ),
        })
        .await;
        let err = threads(&server)
            .share(&account("7001", json!({})), &creds("tht", None), &post())
            .await
            .unwrap_err();
        assert!(
            matches!(err, PlatformError::RateLimited { retry_after: Some(w), scope: LimitScope::App } if w == Duration::from_secs(180)),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn refresh_uses_th_refresh_token() {
        let server = Server::start(|r| match r.path.as_str() {
            "/refresh_access_token" => json(
                200,
                json!({"access_token": "fresh", "token_type": "bearer", "expires_in": 5_183_944}),
            ),
            _ => not_found(r),
        })
        .await;
        let tokens = threads(&server)
            .refresh(&account("7001", json!({})), &creds("old", None))
            .await
            .unwrap();
        assert_eq!(tokens.access_token.expose_secret(), "fresh");
        assert!(tokens.refresh_token.is_none());
        let req = &server.requests()[0];
        assert_eq!(
            (req.q("grant_type"), req.q("access_token")),
            (Some("th_refresh_token"), Some("old"))
        );
    }

    #[tokio::test]
    async fn verify_reads_me_and_read_back_matches_the_link_attachment() {
        let recent = (chrono::Utc::now() - chrono::Duration::minutes(2))
            .format("%Y-%m-%dT%H:%M:%S+0000")
            .to_string();
        let server = Server::start(move |r| match r.path.as_str() {
            p if p == v("me") => json(200, json!({"id": "7001", "username": "herald"})),
            p if p == v("7001/threads") => json(200, json!({
                "data": [
                    {"id": "1", "text": "Worth reading", "timestamp": recent, "permalink": "https://www.threads.com/@herald/post/A", "link_attachment_url": "https://example.com/articles/2"},
                    {"id": "2", "text": "Worth reading", "timestamp": recent, "permalink": "https://www.threads.com/@herald/post/B", "link_attachment_url": "https://example.com/articles/1"}
                ],
                "paging": {"cursors": {"before": "a", "after": "b"}}
            })),
            _ => not_found(r),
        })
        .await;
        let acct = account("7001", json!({}));
        let me = threads(&server)
            .verify(&acct, &creds("t", None))
            .await
            .unwrap();
        assert_eq!(
            (me.platform_account_id.as_str(), me.handle.as_str()),
            ("7001", "herald")
        );
        let found = threads(&server)
            .find_published(&acct, &creds("t", None), &post())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(found.post_id, "2");
    }

    #[tokio::test]
    async fn validate_counts_emoji_as_bytes_and_limits_links() {
        let server = Server::start(not_found).await;
        let t = threads(&server);
        let acct = account("7001", json!({}));
        let mut p = post();
        // 468 + "\n\n" + a 30-character URL = 500.
        p.text = Some("a".repeat(468));
        assert!(t.validate(&acct, &p).is_ok());
        p.text = Some("a".repeat(469));
        assert_eq!(t.validate(&acct, &p).unwrap_err().code, "text_too_long");
        p.text = Some("😀".repeat(117));
        assert!(t.validate(&acct, &p).is_ok(), "117 × 4 + 32 = 500");
        p.text = Some("😀".repeat(118));
        assert!(t.validate(&acct, &p).is_err());
        p.text = Some(
            "https://a.test https://b.test https://c.test https://d.test https://e.test".into(),
        );
        assert_eq!(t.validate(&acct, &p).unwrap_err().code, "too_many_links");
    }
}
