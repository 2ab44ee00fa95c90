//! The `herald` binary as an operator runs it: empty environment values from `.env.example`
//! count as unset, only `migrate` and `serve` create the schema, and each subcommand's `--help`
//! lists only the settings it reads.

use std::{process::Stdio, time::Duration};

use reqwest::StatusCode;

use crate::support::eventually;

fn herald() -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"));
    // Nothing from the caller's environment: each test says what it sets.
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    c
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_values_copied_from_env_example_count_as_unset() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut serve = herald()
        .arg("serve")
        .env(
            "DATABASE_URL",
            format!("sqlite:{}", dir.path().join("h.db").display()),
        )
        .env("HERALD_LISTEN", format!("127.0.0.1:{port}"))
        .env("HERALD_ENCRYPTION_KEYS", "")
        .env("HERALD_METRICS_TOKEN", "")
        .env("HERALD_BLUESKY_CLIENT_KEYS", "")
        .env("REDIS_URL", "")
        .env("HERALD_CONCURRENCY", "")
        .env("HERALD_X_CLIENT_ID", "")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/metrics");
    let status = eventually(Duration::from_secs(20), || async {
        http.get(&url).send().await.ok().map(|r| r.status())
    })
    .await;
    if status.is_none() {
        let _ = serve.start_kill();
        let out = serve.wait_with_output().await.unwrap();
        panic!(
            "herald serve did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        status,
        Some(StatusCode::OK),
        "an empty token locked /metrics"
    );
    let _ = serve.start_kill();
    let _ = serve.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_other_than_migrate_and_serve_refuse_an_unmigrated_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite:{}", dir.path().join("h.db").display());
    let key = herald_jobs::vault::KeyRing::generate_spec();
    for args in [
        &["keys", "create", "--tenant", "acme"][..],
        &["keys", "rotate"][..],
        &["replay", "--state", "failed", "--dry-run"][..],
    ] {
        let out = herald()
            .args(args)
            .env("DATABASE_URL", &db)
            .env("HERALD_ENCRYPTION_KEYS", &key)
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains("herald migrate"), "{args:?}: {stderr}");
    }
    // Nothing was created: no Herald table in the file.
    let store = herald_jobs::store::Store::connect(&db).await.unwrap();
    assert!(!store.pending_migrations().await.unwrap().is_empty());
    drop(store);

    let out = herald()
        .arg("migrate")
        .env("DATABASE_URL", &db)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = herald()
        .args(["keys", "create", "--tenant", "acme"])
        .env("DATABASE_URL", &db)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("hk_"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_subcommand_help_lists_only_the_settings_it_reads() {
    let help = |args: &'static [&'static str]| async move {
        let out = herald().args(args).arg("--help").output().await.unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let server_only = [
        "HERALD_LISTEN",
        "HERALD_CONCURRENCY",
        "HERALD_REFRESH_SWEEP_CRON",
        "HERALD_PUBLIC_URL",
        "HERALD_METRICS_TOKEN",
        "HERALD_BLUESKY_CLIENT_KEYS",
    ];
    for (args, reads, not) in [
        (
            &["keys", "create"][..],
            &["DATABASE_URL", "HERALD_LOG_FORMAT"][..],
            &["HERALD_ENCRYPTION_KEYS", "REDIS_URL"][..],
        ),
        (
            &["keys", "rotate"][..],
            &["DATABASE_URL", "HERALD_ENCRYPTION_KEYS"][..],
            &["REDIS_URL"][..],
        ),
        (
            &["migrate"][..],
            &["DATABASE_URL"][..],
            &["HERALD_ENCRYPTION_KEYS"][..],
        ),
        (
            &["replay"][..],
            &[
                "DATABASE_URL",
                "REDIS_URL",
                "HERALD_ENCRYPTION_KEYS",
                "HERALD_SHARE_LATENESS_SECS",
            ][..],
            &[][..],
        ),
        (
            &["api"][..],
            &["HERALD_LISTEN", "HERALD_PUBLIC_URL"][..],
            &["HERALD_CONCURRENCY", "HERALD_WORKER_LISTEN"][..],
        ),
        (
            &["worker"][..],
            &["HERALD_WORKER_LISTEN", "HERALD_CONCURRENCY"][..],
            &["HERALD_LISTEN"][..],
        ),
    ] {
        let text = help(args).await;
        for name in reads {
            assert!(
                text.contains(&format!("env: {name}")),
                "{args:?} --help lacks {name}:\n{text}"
            );
        }
        let server = if matches!(args[0], "api" | "worker") {
            &[][..]
        } else {
            &server_only[..]
        };
        for name in not.iter().chain(server) {
            assert!(
                !text.contains(&format!("env: {name}")),
                "{args:?} --help lists {name}, which it does not read:\n{text}"
            );
        }
    }
}

/// User URLs never go through a system proxy: the proxy would resolve the host itself, where the
/// SSRF guard's resolver never sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_ignores_system_proxies_for_user_urls() {
    let mastodon = crate::support::FakeMastodon::start().await;
    // A "proxy" that only counts who connects to it.
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
    let proxied = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = proxied.clone();
    tokio::spawn(async move {
        while let Ok((_conn, _)) = proxy.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });

    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite:{}", dir.path().join("h.db").display());
    let out = herald()
        .arg("migrate")
        .env("DATABASE_URL", &db)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = herald()
        .args(["keys", "create", "--tenant", "acme"])
        .env("DATABASE_URL", &db)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let port = free_port();
    let mut serve = herald()
        .arg("serve")
        .env("DATABASE_URL", &db)
        .env("HERALD_LISTEN", format!("127.0.0.1:{port}"))
        .env("HERALD_SSRF_ALLOW_PRIVATE", "true")
        .env("HERALD_PLATFORM_TIMEOUT_SECS", "5")
        .env("HERALD_LEASE_SECS", "10")
        .env("HERALD_RETRY_BASE_MS", "100")
        .env("HERALD_RETRY_MAX_SECS", "1")
        .env("HERALD_MAX_ATTEMPTS", "2")
        .envs(
            [
                "HTTP_PROXY",
                "HTTPS_PROXY",
                "ALL_PROXY",
                "http_proxy",
                "https_proxy",
                "all_proxy",
            ]
            .map(|v| (v, proxy_url.clone())),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let up = eventually(Duration::from_secs(20), || async {
        http.get(format!("{base}/readyz"))
            .send()
            .await
            .ok()
            .filter(|r| r.status().is_success())
    })
    .await;
    assert!(up.is_some(), "herald serve did not start");
    let conn: serde_json::Value = http
        .post(format!("{base}/v1/connections"))
        .bearer_auth(&key)
        .json(&serde_json::json!({
            "platform": "mastodon", "platform_account_id": "109", "handle": "alice@social.example",
            "access_token": mastodon.token, "extras": { "instance_url": mastodon.base },
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let share: serde_json::Value = http
        .post(format!("{base}/v1/shares"))
        .bearer_auth(&key)
        .json(&serde_json::json!({ "url": "https://blog.example/p", "text": "hi", "connection_ids": [conn["id"]] }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = share["shares"][0]["id"].as_str().unwrap().to_owned();
    let state = eventually(Duration::from_secs(20), || async {
        let s: serde_json::Value = http
            .get(format!("{base}/v1/shares/{id}"))
            .bearer_auth(&key)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let state = s["state"].as_str()?.to_owned();
        (state != "queued" && state != "running").then_some(state)
    })
    .await;
    let _ = serve.start_kill();
    assert_eq!(state.as_deref(), Some("succeeded"));
    assert_eq!(mastodon.statuses().len(), 1);
    assert_eq!(
        proxied.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a user URL went through the system proxy"
    );
}
