//! What every scenario drives the broker with: the connection pool, the
//! closed-loop driver, the shared counters, payloads, pre-fills and the stop
//! signal.
//!
//! The echo baseline uses the same pool and driver, so a broker figure and its
//! baseline differ only in the service on the other end.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use super::meter::Progress;
use crate::cli::client::Bearer;
use crate::pb;
use crate::pb::producer_service_client::ProducerServiceClient;
use crate::pb::worker_service_client::WorkerServiceClient;

/// Largest message a bench client sends or accepts (a batch of 1000 tasks).
const MAX_MESSAGE_BYTES: usize = 64 << 20;
/// Items per pre-fill batch (the broker's maximum).
const PREFILL_BATCH: u64 = 1000;
/// Task kind of every bench task.
pub const KIND: &str = "bench";

/// A channel that sends the bench's token (if any) with every call.
pub type Authed = InterceptedService<Channel, Bearer>;
pub type Producer = ProducerServiceClient<Authed>;
pub type Worker = WorkerServiceClient<Authed>;

/// How the bench's clients reach a broker with TLS or authentication on.
#[derive(Clone, Default)]
pub struct Credentials {
    /// The CA (PEM) that signed the broker's certificate: TLS.
    pub ca_pem: Option<String>,
    /// A bearer token.
    pub token: Option<String>,
}

/// K HTTP/2 connections; caller `i` uses connection `i % K`.
#[derive(Clone)]
pub struct Pool {
    channels: Vec<Channel>,
    bearer: Bearer,
}

impl Pool {
    pub async fn connect(url: &str, connections: usize, credentials: &Credentials) -> anyhow::Result<Self> {
        let mut endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| anyhow::anyhow!("bad URL {url}: {e}"))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5));
        if let Some(ca) = &credentials.ca_pem {
            let tls =
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("localhost");
            endpoint = endpoint.tls_config(tls)?;
        }
        let bearer = Bearer::new(credentials.token.as_deref())?;
        let mut channels = Vec::with_capacity(connections);
        for _ in 0..connections {
            // `connect` opens a connection of its own each time.
            let channel =
                endpoint.connect().await.map_err(|e| anyhow::anyhow!("cannot connect to {url}: {e}"))?;
            channels.push(channel);
        }
        Ok(Self { channels, bearer })
    }

    pub fn channel(&self, caller: usize) -> Channel {
        self.channels[caller % self.channels.len()].clone()
    }

    pub fn producer(&self, caller: usize) -> Producer {
        ProducerServiceClient::with_interceptor(self.channel(caller), self.bearer.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    pub fn worker(&self, caller: usize) -> Worker {
        WorkerServiceClient::with_interceptor(self.channel(caller), self.bearer.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

/// Counters of one measured run, shared by its callers and read by the
/// progress line.
#[derive(Default)]
pub struct Tally {
    /// Tasks moved (enqueued, acked, received: whatever the run counts).
    tasks: AtomicU64,
    /// RPCs made, or messages sent on streams.
    calls: AtomicU64,
    /// Failed calls and failed batch items.
    errors: AtomicU64,
    /// The first error, to show what went wrong.
    first_error: Mutex<Option<String>>,
}

impl Tally {
    pub fn done(&self, tasks: u64, calls: u64) {
        self.tasks.fetch_add(tasks, Ordering::Relaxed);
        self.calls.fetch_add(calls, Ordering::Relaxed);
    }

    /// Counts `count` failures described by `what`.
    pub fn failed(&self, count: u64, what: impl FnOnce() -> String) {
        self.errors.fetch_add(count, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            *first = Some(what());
        }
    }

    pub fn status(&self, s: &tonic::Status) {
        self.failed(1, || format!("{:?}: {}", s.code(), s.message()));
    }

    pub fn tasks(&self) -> u64 {
        self.tasks.load(Ordering::Relaxed)
    }

    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    pub fn first_error(&self) -> Option<String> {
        self.first_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Makes `units` calls from `callers` concurrent closed loops: a caller makes
/// its next call only once the previous one answered. `call(caller, unit)`
/// makes one call and returns how many tasks it moved.
pub async fn closed_loop<F, Fut>(callers: usize, units: u64, tally: Arc<Tally>, call: F)
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<u64, tonic::Status>> + Send + 'static,
{
    let call = Arc::new(call);
    let next = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..callers)
        .map(|caller| {
            let (call, next, tally) = (call.clone(), next.clone(), tally.clone());
            tokio::spawn(async move {
                loop {
                    let unit = next.fetch_add(1, Ordering::Relaxed);
                    if unit >= units {
                        break;
                    }
                    match call(caller, unit).await {
                        Ok(tasks) => tally.done(tasks, 1),
                        Err(s) => tally.status(&s),
                    }
                }
            })
        })
        .collect();
    join(handles).await;
}

/// Waits for every task; a panicked one is reported, not propagated.
pub async fn join(handles: Vec<tokio::task::JoinHandle<()>>) {
    for h in handles {
        if let Err(e) = h.await {
            eprintln!("bench: a load task failed: {e}");
        }
    }
}

/// `bytes` bytes of filler.
pub fn payload(bytes: usize) -> Vec<u8> {
    (0..bytes).map(|i| b'a' + (i % 26) as u8).collect()
}

/// An Enqueue of one bench task into `queue`.
pub fn task(queue: &str, payload: Vec<u8>) -> pb::EnqueueRequest {
    pb::EnqueueRequest { queue: queue.to_owned(), kind: KIND.into(), payload, ..Default::default() }
}

/// Counts a batch's outcome into `tally` as tasks (ok items) and errors.
pub fn count_batch(tally: &Tally, results: &[pb::EnqueueResult]) -> u64 {
    let ok = results.iter().filter(|r| matches!(r.result, Some(pb::enqueue_result::Result::Task(_)))).count();
    let failed = results.len() - ok;
    if failed > 0 {
        tally.failed(failed as u64, || {
            let first = results.iter().find_map(|r| match &r.result {
                Some(pb::enqueue_result::Result::Error(e)) => Some(e.message.clone()),
                _ => None,
            });
            format!("batch item: {}", first.unwrap_or_else(|| "no result".into()))
        });
    }
    ok as u64
}

/// What a pre-fill put in.
pub struct Prefill {
    /// Tasks enqueued.
    pub tasks: u64,
    /// How many items failed and the first reason, if any did.
    pub error: Option<String>,
}

/// Enqueues `total` tasks (untimed) by batches of 1000 from `callers`
/// concurrent callers; `make(i)` builds the i-th task, `on_task` sees each
/// stored task.
pub async fn prefill<M, T>(
    pool: &Pool,
    callers: usize,
    total: u64,
    label: &str,
    make: M,
    on_task: T,
) -> Prefill
where
    M: Fn(u64) -> pb::EnqueueRequest + Send + Sync + 'static,
    T: Fn(&pb::Task) + Send + Sync + 'static,
{
    let tally = Arc::new(Tally::default());
    let progress = Progress::start(format!("{label}: pre-fill"), tally.clone());
    let (pool, on_task) = (pool.clone(), Arc::new(on_task));
    let batches = total.div_ceil(PREFILL_BATCH);
    let counter = tally.clone();
    closed_loop(callers, batches, tally.clone(), move |caller, batch| {
        let first = batch * PREFILL_BATCH;
        let tasks = (first..total.min(first + PREFILL_BATCH)).map(&make).collect();
        let (mut client, on_task, counter) = (pool.producer(caller), on_task.clone(), counter.clone());
        async move {
            let results = client.enqueue_batch(pb::EnqueueBatchRequest { tasks }).await?.into_inner().results;
            for r in &results {
                if let Some(pb::enqueue_result::Result::Task(t)) = &r.result {
                    on_task(t);
                }
            }
            Ok(count_batch(&counter, &results))
        }
    })
    .await;
    progress.finish();
    let error = (tally.errors() > 0).then(|| {
        format!("{} items failed, first: {}", tally.errors(), tally.first_error().unwrap_or_default())
    });
    Prefill { tasks: tally.tasks(), error }
}

/// Waits until `done()` reaches `target()`, or until `done()` has not moved
/// for `idle` (work lost or stuck: the caller reports the shortfall).
pub async fn settle(done: impl Fn() -> u64, target: impl Fn() -> u64, idle: Duration) {
    let mut last = done();
    let mut moved_at = tokio::time::Instant::now();
    while done() < target() {
        tokio::time::sleep(Duration::from_millis(2)).await;
        let now = done();
        if now != last {
            (last, moved_at) = (now, tokio::time::Instant::now());
        } else if moved_at.elapsed() >= idle {
            return;
        }
    }
}

/// Tells long-running loops to stop.
pub struct StopSender(watch::Sender<bool>);

/// A loop's view of the stop signal; cheap to clone.
#[derive(Clone)]
pub struct Stop(watch::Receiver<bool>);

pub fn stop_signal() -> (StopSender, Stop) {
    let (tx, rx) = watch::channel(false);
    (StopSender(tx), Stop(rx))
}

impl StopSender {
    pub fn stop(&self) {
        let _ = self.0.send(true);
    }
}

impl Stop {
    pub fn is_set(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the signal is given (or its sender is gone).
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|s| *s).await;
    }
}
