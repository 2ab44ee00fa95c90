use std::{
    marker::PhantomData,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use apalis_codec::json::JsonCodec;
use apalis_core::{
    backend::{Backend, BackendConfig, finalize::Ephemeral},
    task::Task,
    worker::context::WorkerContext,
};
use futures::{FutureExt, Sink, future::BoxFuture};
use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::mpsc;

use crate::{
    Config, Error, JobId, RedisConn,
    ack::{AckLayer, AckMsg},
    consumer::Shared,
    keys::{Keys, validate_queue_name},
    push::{NewJob, push},
    worker::Runtime,
};

/// The apalis backend of one queue: give it to `WorkerBuilder::backend`, or push to it
/// with apalis' `TaskSink` (`push`, `push_task` with `TaskBuilder::run_after` and
/// `idempotency_key`).
///
/// Jobs are stored as the JSON of `T`. Cloning gives an independent backend on the same
/// connection (a worker's background tasks are not shared).
pub struct RedisStorage<T> {
    pub(crate) conn: RedisConn,
    pub(crate) config: Config,
    pub(crate) keys: Keys,
    pub(crate) codec: JsonCodec<serde_json::Value>,
    healthy: Arc<AtomicBool>,
    ack_channel: Option<(
        mpsc::UnboundedSender<AckMsg>,
        mpsc::UnboundedReceiver<AckMsg>,
    )>,
    runtime: Option<Runtime<T>>,
    closing: Option<BoxFuture<'static, ()>>,
    outbox: Vec<NewJob>,
    sending: Option<BoxFuture<'static, Result<(), Error>>>,
    _job: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for RedisStorage<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStorage")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<T> Clone for RedisStorage<T> {
    fn clone(&self) -> Self {
        Self::with_health(self.conn.clone(), self.config.clone(), self.healthy.clone())
    }
}

impl<T> RedisStorage<T> {
    /// The backend of queue `config.queue_name()` under `config.key_prefix()`.
    ///
    /// # Panics
    /// If the queue name is empty or contains a brace.
    pub fn new(conn: RedisConn, config: Config) -> Self {
        if let Err(e) = validate_queue_name(&config.queue) {
            panic!("{e}");
        }
        Self::with_health(conn, config, Arc::new(AtomicBool::new(true)))
    }

    fn with_health(conn: RedisConn, config: Config, healthy: Arc<AtomicBool>) -> Self {
        let keys = Keys::new(&config.prefix, &config.queue);
        Self {
            conn,
            config,
            keys,
            codec: JsonCodec::default(),
            healthy,
            ack_channel: None,
            runtime: None,
            closing: None,
            outbox: Vec::new(),
            sending: None,
            _job: PhantomData,
        }
    }

    /// The configuration.
    pub fn get_config(&self) -> &Config {
        &self.config
    }

    /// A flag that is false while this backend's worker cannot reach Redis (it keeps
    /// retrying meanwhile); shared with clones. For readiness probes.
    pub fn health(&self) -> Health {
        Health(self.healthy.clone())
    }
}

/// See [`RedisStorage::health`].
#[derive(Debug, Clone)]
pub struct Health(Arc<AtomicBool>);

impl Health {
    /// True unless the last Redis command of the worker failed for want of a connection.
    pub fn is_healthy(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

impl<T: DeserializeOwned + Send + 'static> RedisStorage<T> {
    fn runtime(&mut self, worker: &WorkerContext) -> &mut Runtime<T> {
        if self.runtime.is_none() {
            let (tx, rx) = self
                .ack_channel
                .take()
                .unwrap_or_else(mpsc::unbounded_channel);
            let shared = Arc::new(Shared {
                conn: self.conn.clone(),
                keys: self.keys.clone(),
                config: self.config.clone(),
                consumer: format!("{}~{}", worker.name(), ulid::Ulid::generate()),
                healthy: self.healthy.clone(),
                held: Default::default(),
            });
            self.runtime = Some(Runtime::start(shared, tx, rx));
        }
        self.runtime.as_mut().expect("just started")
    }
}

impl<T: DeserializeOwned + Send + 'static> Backend for RedisStorage<T> {
    type Task = Task<T>;
    type Error = Error;

    fn poll_ready(
        &mut self,
        _cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Result<(), Error>> {
        self.runtime(worker);
        Poll::Ready(Ok(()))
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Option<Result<Task<T>, Error>>> {
        // Redis errors never end the stream: the fetcher retries them behind this channel
        self.runtime(worker)
            .tasks
            .poll_recv(cx)
            .map(|task| task.map(Ok))
    }

    fn poll_close(
        &mut self,
        cx: &mut Context<'_>,
        _worker: &WorkerContext,
    ) -> Poll<Result<(), Error>> {
        if self.closing.is_none() {
            let Some(runtime) = self.runtime.take() else {
                return Poll::Ready(Ok(()));
            };
            self.closing = Some(runtime.close().boxed());
        }
        let closing = self.closing.as_mut().expect("set above");
        closing.poll_unpin(cx).map(Ok)
    }
}

impl<T> BackendConfig for RedisStorage<T> {
    type Args = T;
    type Id = JobId;
    type Kind = Ephemeral;
    type Config = Config;
    type Layer = AckLayer;

    fn config(&self) -> &Config {
        &self.config
    }

    fn middleware(&mut self, _worker: &mut WorkerContext) -> AckLayer {
        let (tx, rx) = mpsc::unbounded_channel();
        self.ack_channel = Some((tx.clone(), rx));
        AckLayer::new(tx, self.config.max_attempts)
    }
}

fn delay_until(run_at_secs: Option<u64>) -> u64 {
    let Some(at) = run_at_secs else { return 0 };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64;
    (at * 1000).saturating_sub(now)
}

impl<T: Serialize> Sink<Task<T>> for RedisStorage<T> {
    type Error = Error;

    fn poll_ready(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, task: Task<T>) -> Result<(), Error> {
        let ctx = task.ctx();
        let job = NewJob {
            id: ctx
                .task_id()
                .map_or_else(JobId::generate, |id| JobId::from(id.to_string())),
            payload: serde_json::to_vec(&task.args)?,
            delay_ms: delay_until(ctx.run_at()),
            idempotency_key: ctx.idempotency_key().map(str::to_owned),
            attempts: ctx.attempt(),
        };
        self.get_mut().outbox.push(job);
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let this = self.get_mut();
        loop {
            if let Some(sending) = this.sending.as_mut() {
                let res = futures::ready!(sending.poll_unpin(cx));
                this.sending = None;
                res?;
            }
            if this.outbox.is_empty() {
                return Poll::Ready(Ok(()));
            }
            let jobs = std::mem::take(&mut this.outbox);
            let mut conn = this.conn.shared();
            let keys = this.keys.clone();
            let ttl = this.config.idempotency_ttl.as_secs();
            this.sending = Some(
                async move {
                    for job in &jobs {
                        push(&mut conn, &keys, ttl, job).await?;
                    }
                    Ok(())
                }
                .boxed(),
            );
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.poll_flush(cx)
    }
}
