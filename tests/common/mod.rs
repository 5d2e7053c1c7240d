//! Test harness: a real broker served over gRPC on `127.0.0.1:0`, with real
//! clients, an injectable clock and a shutdown handle.
#![allow(dead_code)]
pub mod certs;
pub mod http;
pub mod redis;
pub mod secure;

use std::sync::Arc;
use std::time::Duration;

use tempfile::TempDir;
use tonic::transport::Channel;

use taskbroker::app::{self, Running};
use taskbroker::broker::Broker;
use taskbroker::config::{Config, StorageKind};
use taskbroker::core::clock::{Clock, ManualClock, SystemClock};
use taskbroker::pb;
use taskbroker::pb::admin_service_client::AdminServiceClient;
use taskbroker::pb::producer_service_client::ProducerServiceClient;
use taskbroker::pb::worker_service_client::WorkerServiceClient;

/// Start of the manual clock: 2026-01-01T00:00:00Z.
pub const T0: u64 = 1_767_225_600_000;

pub struct TestServer {
    pub addr: std::net::SocketAddr,
    /// The admin HTTP port (dashboard, `/healthz`, `/readyz`).
    pub admin_addr: std::net::SocketAddr,
    pub producer: ProducerServiceClient<Channel>,
    pub worker: WorkerServiceClient<Channel>,
    pub admin: AdminServiceClient<Channel>,
    pub broker: Broker,
    /// Present when started with [`Options::manual_clock`].
    pub clock: Option<Arc<ManualClock>>,
    running: Option<Running>,
    _dir: TempDir,
}

pub struct Options {
    pub storage: StorageKind,
    /// Extra TOML (queues, routes, strict_queues, ...).
    pub config: &'static str,
    /// Time moves only through [`TestServer::advance`].
    pub manual_clock: bool,
    /// Also write `config` to a file the broker reloads from
    /// ([`TestServer::config_file`]).
    pub config_file: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self { storage: StorageKind::Memory, config: "", manual_clock: false, config_file: false }
    }
}

/// A server on the memory store with the system clock.
pub async fn start() -> TestServer {
    start_with(Options::default()).await
}

/// A server on the memory store with a manual clock.
pub async fn start_manual(config: &'static str) -> TestServer {
    start_with(Options { manual_clock: true, config, ..Options::default() }).await
}

pub async fn start_with(opts: Options) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::from_toml(opts.config).expect("test config parses");
    config.storage = opts.storage;
    config.data_dir = dir.path().join("data");
    config.listen = "127.0.0.1:0".into();
    config.admin_listen = "127.0.0.1:0".into();
    config.validate().expect("test config is valid");
    if opts.config_file {
        let file = dir.path().join("taskbroker.toml");
        std::fs::write(&file, opts.config).unwrap();
        config.file = Some(file);
    }
    let manual = opts.manual_clock.then(|| Arc::new(ManualClock::new(T0)));
    let clock: Arc<dyn Clock> = match &manual {
        Some(m) => m.clone(),
        None => Arc::new(SystemClock),
    };
    config.shutdown_grace = Duration::from_secs(5);
    let running = app::start(&config, clock).await.unwrap();
    let (addr, broker) = (running.addr, running.broker().clone());
    let admin_addr = running.admin_addr.expect("the admin port is on");
    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    TestServer {
        addr,
        admin_addr,
        producer: ProducerServiceClient::new(channel.clone()),
        worker: WorkerServiceClient::new(channel.clone()),
        admin: AdminServiceClient::new(channel),
        broker,
        clock: manual,
        running: Some(running),
        _dir: dir,
    }
}

impl TestServer {
    /// The file a reload re-reads (started with [`Options::config_file`]).
    pub fn config_file(&self) -> std::path::PathBuf {
        self._dir.path().join("taskbroker.toml")
    }

    /// Moves the manual clock forward and runs the timers that came due.
    pub async fn advance(&self, by: Duration) {
        self.clock.as_ref().expect("started with a manual clock").advance(by);
        self.broker.run_timers().await.unwrap();
    }

    pub async fn shutdown(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await.unwrap();
        }
    }

    /// Enqueues a task of `kind` on `queue`; returns it.
    pub async fn enqueue(&mut self, queue: &str, kind: &str) -> pb::Task {
        self.enqueue_req(pb::EnqueueRequest { queue: queue.into(), kind: kind.into(), ..Default::default() })
            .await
    }

    pub async fn enqueue_req(&mut self, req: pb::EnqueueRequest) -> pb::Task {
        self.producer.enqueue(req).await.unwrap().into_inner().task.unwrap()
    }

    /// Leases up to `max` tasks from `queues` without waiting.
    pub async fn lease(&mut self, queues: &[&str], max: u32) -> Vec<pb::LeasedTask> {
        self.worker
            .lease(pb::LeaseRequest {
                queues: queues.iter().map(|q| q.to_string()).collect(),
                max_tasks: max,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .tasks
    }

    pub async fn ack(&mut self, t: &pb::LeasedTask) -> Result<(), tonic::Status> {
        self.worker
            .ack(pb::AckRequest {
                task_id: t.task.as_ref().unwrap().id.clone(),
                lease_id: t.lease_id.clone(),
                result: Vec::new(),
            })
            .await
            .map(|_| ())
    }

    pub async fn get(&mut self, id: &str) -> pb::Task {
        self.producer
            .get_task(pb::GetTaskRequest { task_id: id.into(), include_dependencies: false })
            .await
            .unwrap()
            .into_inner()
            .task
            .unwrap()
    }
}

pub fn secs(s: i64) -> prost_types::Duration {
    prost_types::Duration { seconds: s, nanos: 0 }
}

pub fn state(t: &pb::Task) -> pb::TaskState {
    pb::TaskState::try_from(t.state).unwrap()
}

/// The ErrorInfo reason of a status.
pub fn reason(s: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    s.get_error_details().error_info().map(|i| i.reason.clone()).unwrap_or_default()
}

/// The BadRequest field names of a status.
pub fn bad_fields(s: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    s.get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}
