//! A webhook receiver for the tests: an axum server on `127.0.0.1:0` that records every request
//! (headers and the body as received) and answers as scripted, and the check of its signatures
//! with the PyPI `standardwebhooks` library, as an app would verify them.

use std::{
    collections::{HashMap, VecDeque},
    convert::Infallible,
    io::Write,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use futures::StreamExt;
use serde_json::{Value, json};

use super::eventually;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Hook {
    pub headers: HashMap<String, String>,
    pub body: String,
}

impl Hook {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("a webhook body is JSON")
    }

    /// The `webhook-id` header.
    pub fn id(&self) -> String {
        self.headers["webhook-id"].clone()
    }

    pub fn kind(&self) -> String {
        self.json()["type"].as_str().unwrap().to_owned()
    }
}

/// How the receiver answers a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Ok,
    Status(u16),
    /// A status with `Retry-After: secs`.
    RetryAfter(u16, u64),
    /// Never answers (the request is recorded first).
    Hang,
    /// 200 with a body that never ends (a KiB at a time, as fast as it is read).
    Endless,
    /// 200, then one byte of body and nothing more, ever.
    Trickle,
}

#[derive(Default)]
struct Inner {
    got: Vec<Hook>,
    script: VecDeque<Answer>,
    otherwise: Option<Answer>,
}

#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    inner: Arc<Mutex<Inner>>,
}

impl Receiver {
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, inner }
    }

    /// The next requests' answers, in order; then the standing answer.
    pub fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        self.inner.lock().unwrap().script.extend(answers);
    }

    /// The answer once the script is spent (200 unless set).
    pub fn answer(&self, answer: Answer) {
        self.inner.lock().unwrap().otherwise = Some(answer);
    }

    pub fn hooks(&self) -> Vec<Hook> {
        self.inner.lock().unwrap().got.clone()
    }

    /// Waits until `done` holds of what was received.
    pub async fn until(&self, what: &str, done: impl Fn(&[Hook]) -> bool) -> Vec<Hook> {
        eventually(Duration::from_secs(30), || async {
            let got = self.hooks();
            done(&got).then_some(got)
        })
        .await
        .unwrap_or_else(|| {
            let kinds: Vec<String> = self.hooks().iter().map(Hook::kind).collect();
            panic!("the receiver never got {what}; it got {kinds:?}")
        })
    }

    /// Waits for an event of type `kind` and returns the first.
    pub async fn first(&self, kind: &str) -> Hook {
        self.until(kind, |got| got.iter().any(|h| h.kind() == kind))
            .await
            .into_iter()
            .find(|h| h.kind() == kind)
            .unwrap()
    }
}

async fn receive(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let answer = {
        let mut inner = inner.lock().unwrap();
        inner.got.push(Hook {
            headers: headers
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
                .collect(),
            body: String::from_utf8(body.to_vec()).expect("a webhook body is UTF-8"),
        });
        let next = inner.script.pop_front();
        next.or(inner.otherwise).unwrap_or(Answer::Ok)
    };
    match answer {
        Answer::Ok => (StatusCode::OK, "thanks").into_response(),
        Answer::Status(s) => (StatusCode::from_u16(s).unwrap(), "no").into_response(),
        Answer::RetryAfter(s, secs) => (
            StatusCode::from_u16(s).unwrap(),
            [("retry-after", secs.to_string())],
            "later",
        )
            .into_response(),
        Answer::Hang => std::future::pending().await,
        Answer::Endless => {
            let chunk = Bytes::from(vec![b'x'; 1024]);
            let endless = futures::stream::repeat_with(move || Ok::<_, Infallible>(chunk.clone()));
            (StatusCode::OK, Body::from_stream(endless)).into_response()
        }
        Answer::Trickle => {
            let once =
                futures::stream::once(async { Ok::<_, Infallible>(Bytes::from_static(b"x")) });
            let trickle = once.chain(futures::stream::pending());
            (StatusCode::OK, Body::from_stream(trickle)).into_response()
        }
    }
}

/// The Python with the PyPI `standardwebhooks` package: `HERALD_TEST_PYTHON` (scripts/test
/// sets it), else the venv scripts/test makes.
fn python() -> String {
    let how = "the webhook tests verify signatures with the PyPI `standardwebhooks` package: run \
               scripts/test, or `python3 -m venv ~/.cache/herald-webhooks-venv && \
               ~/.cache/herald-webhooks-venv/bin/pip install 'standardwebhooks>=1.0,<2'` and set \
               HERALD_TEST_PYTHON=~/.cache/herald-webhooks-venv/bin/python";
    let python = std::env::var("HERALD_TEST_PYTHON").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_default();
        format!("{home}/.cache/herald-webhooks-venv/bin/python")
    });
    let ok = Command::new(&python)
        .args(["-c", "import standardwebhooks"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "{python} cannot import standardwebhooks: {how}");
    python
}

const VERIFY: &str = r#"
import json, sys
from standardwebhooks.webhooks import Webhook
job = json.load(sys.stdin)
out = []
for m in job["messages"]:
    try:
        Webhook(job["secret"]).verify(m["body"].encode(), m["headers"])
        out.append(None)
    except Exception as e:
        out.append(f"{type(e).__name__}: {e}")
print(json.dumps(out))
"#;

/// Verifies each hook with `secret` through `standardwebhooks`: `Ok` or the library's refusal.
pub fn verify(secret: &str, hooks: &[Hook]) -> Vec<Result<(), String>> {
    let job = json!({
        "secret": secret,
        "messages": hooks.iter().map(|h| json!({ "headers": h.headers, "body": h.body })).collect::<Vec<_>>(),
    });
    let mut child = Command::new(python())
        .args(["-c", VERIFY])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(job.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the verifier failed");
    let results: Vec<Option<String>> = serde_json::from_slice(&out.stdout).unwrap();
    results
        .into_iter()
        .map(|r| match r {
            None => Ok(()),
            Some(e) => Err(e),
        })
        .collect()
}
