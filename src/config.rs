//! Configuration: the TOML file's shape, its defaults, and one `validate()`
//! that reports every problem with its path.
//!
//! Command-line flags and `TASKBROKER_*` variables are applied by the CLI on
//! top of the parsed file, before validation.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::broker::validate::DEFAULT_MAX_DELAY;
use crate::core::flow::{normalize_semaphores, valid_semaphore_name, Rate, RateLimit, MAX_TASK_SEMAPHORES};
use crate::core::queue::{Policies, QueuePolicy};
use crate::core::retry::Backoff;
use crate::core::routing::Route;
use crate::core::MAX_PRIORITY;
use crate::store::redis::{redact, Target};
use crate::store::Limits;

pub mod reload;
mod schedules;
pub mod security;
mod telemetry;

pub use schedules::ScheduleConfig;
pub use security::AuthConfig;
pub use telemetry::TelemetryConfig;

/// A value as an error message may show it: a URL with credentials put in
/// the wrong setting still has its password hidden.
fn shown(value: &str) -> String {
    if value.contains("://") {
        redact(value)
    } else {
        value.to_owned()
    }
}

/// The largest `max_delay`: times stay far from the year 10000.
const MAX_MAX_DELAY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Queue names are the domain's ([`crate::core::queue`]); config checks them too.
pub use crate::core::queue::{valid_queue_name, DEFAULT_QUEUE};

/// Where the admin HTTP port listens unless told otherwise.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";

/// Which storage backend to run on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// Durable: a write-ahead log in `data_dir`, fdatasync on every commit (group commit).
    #[default]
    Embedded,
    /// Nothing persisted (tests, benchmarks).
    Memory,
    /// Shared Redis (or Valkey) at `redis_url`: many broker replicas, one store.
    Redis,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the gRPC server listens on.
    pub listen: String,
    /// Address of the admin HTTP port (the dashboard, `/healthz`,
    /// `/readyz`); empty: off. Only an address other than
    /// [`DEFAULT_ADMIN_LISTEN`] that cannot be bound stops start-up: at the
    /// default, a second broker on one machine runs without it.
    pub admin_listen: String,
    /// Where the embedded store keeps its database.
    pub data_dir: PathBuf,
    pub storage: StorageKind,
    /// Redis to use with `storage = "redis"` (`redis://[user:pass@]host:port/db`,
    /// `rediss://` for TLS); with `redis_cluster`, the comma-separated URLs
    /// of some of the cluster's nodes.
    pub redis_url: String,
    /// `redis_url` names Redis Cluster nodes.
    pub redis_cluster: bool,
    /// The master name under Redis Sentinel; `redis_url` then names the
    /// sentinels. Empty: no Sentinel.
    pub redis_sentinel: String,
    /// Refuse undeclared queues with NOT_FOUND instead of creating them.
    pub strict_queues: bool,
    /// Largest accepted task payload, in bytes.
    pub max_payload_bytes: usize,
    /// Largest accepted gRPC message, in bytes (a batch carries many payloads).
    pub max_message_bytes: usize,
    /// Longest `delay` or Nack `retry_after`, and furthest `scheduled_time`
    /// ahead of now, a client may ask for.
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    /// Most queues holding tasks; an enqueue that would create one more is
    /// refused (RESOURCE_EXHAUSTED, QUEUE_LIMIT).
    pub max_queues: usize,
    /// Most tasks the store holds (every state, until purged); enqueues
    /// beyond it are refused (STORAGE_FULL). Unset: derived from memory.
    pub max_tasks: Option<usize>,
    /// Most payload bytes the store holds; unset: a quarter of the memory.
    pub max_queued_bytes: Option<u64>,
    /// How long in-flight calls may finish after SIGTERM.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    // Flow control of connections and worker streams.
    /// Most bytes of events a worker stream holds for its client to read;
    /// past it the stream waits (one larger task still goes, alone).
    pub stream_outbound_bytes: usize,
    /// A stream whose client reads nothing for this long while events wait
    /// is ended, its leases given back at once.
    #[serde(with = "humantime_serde")]
    pub stream_stall_timeout: Duration,
    /// Most calls (streams included) open at once on one HTTP/2 connection.
    pub max_concurrent_streams: u32,
    pub queues: BTreeMap<String, QueueConfig>,
    pub routes: Vec<RouteConfig>,
    /// `[semaphores.NAME]`: permits shared by every queue's tasks.
    pub semaphores: BTreeMap<String, SemaphoreConfig>,
    /// `[[schedules]]`: periodic tasks (see `config/schedules.rs`).
    pub schedules: Vec<ScheduleConfig>,
    /// `[telemetry]`: trace export, for when the standard `OTEL_*`
    /// variables are not set (they win).
    pub telemetry: TelemetryConfig,
    /// PEM certificate chain of the gRPC port; with `tls_key`, the port
    /// speaks only TLS. Re-read when the file changes.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: client certificates become required and are verified
    /// against it (mTLS).
    pub tls_client_ca: Option<PathBuf>,
    /// The admin HTTP port (dashboard, `/metrics`) serves HTTPS with the
    /// gRPC port's certificate.
    pub admin_tls: bool,
    /// A plaintext port serving only `grpc.health.v1` (Kubernetes probes
    /// cannot speak TLS); empty: off.
    pub health_listen: String,
    /// `[auth]`: tokens, client certificates, per-queue grants.
    pub auth: AuthConfig,
    /// The file this config was read from (set by the CLI, not a setting):
    /// what a reload re-reads.
    #[serde(skip)]
    pub file: Option<PathBuf>,
}

/// `[semaphores.NAME]`: at most `limit` tasks that need this semaphore are
/// LEASED at once, across queues, workers and replicas.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SemaphoreConfig {
    pub limit: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:50051".into(),
            admin_listen: DEFAULT_ADMIN_LISTEN.into(),
            data_dir: PathBuf::from("./taskbroker-data"),
            storage: StorageKind::Embedded,
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_cluster: false,
            redis_sentinel: String::new(),
            strict_queues: false,
            max_payload_bytes: 1 << 20,
            max_message_bytes: 64 << 20,
            max_delay: DEFAULT_MAX_DELAY,
            max_queues: 10_000,
            max_tasks: None,
            max_queued_bytes: None,
            shutdown_grace: Duration::from_secs(10),
            stream_outbound_bytes: 2 << 20,
            stream_stall_timeout: Duration::from_secs(60),
            max_concurrent_streams: 1024,
            queues: BTreeMap::new(),
            routes: Vec::new(),
            file: None,
            semaphores: BTreeMap::new(),
            schedules: Vec::new(),
            telemetry: TelemetryConfig::default(),
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            admin_tls: false,
            health_listen: String::new(),
            auth: AuthConfig::default(),
        }
    }
}

/// `[queues.NAME]`: every field optional; unset fields fall back to
/// `[queues.default]`, then to the built-in defaults.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    #[serde(default, with = "humantime_serde")]
    pub lease_duration: Option<Duration>,
    pub max_attempts: Option<u32>,
    pub retry_backoff: Option<BackoffConfig>,
    pub default_priority: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub retention: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub dedup_window: Option<Duration>,
    /// Most tasks of the queue LEASED at once (0: unlimited).
    pub max_in_flight: Option<u32>,
    /// Most LEASED tasks per `concurrency_key` (0: unlimited).
    pub per_key_max_in_flight: Option<u32>,
    /// Deliveries per second, minute or hour: `"50/s"`, `"100/m"`, `"1000/h"`.
    pub rate_limit: Option<String>,
    /// Tokens the rate limit's bucket holds (default: the rate per second,
    /// rounded up, at least 1).
    pub rate_burst: Option<u32>,
    /// Semaphores every task of the queue needs a permit of while leased.
    pub semaphores: Option<Vec<String>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackoffConfig {
    #[serde(with = "humantime_serde")]
    pub initial: Duration,
    #[serde(with = "humantime_serde")]
    pub max: Duration,
    pub multiplier: f64,
    pub jitter: f64,
}

/// `[[routes]]`: the first rule whose `kind` glob and `headers` match sends
/// the task to `queue` (and sets its priority, if given).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub kind: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub queue: String,
    pub priority: Option<u32>,
    /// Semaphores added to the tasks this rule routes.
    #[serde(default)]
    pub semaphores: Vec<String>,
}

impl Config {
    /// Parses a TOML document.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// The Redis of `storage = "redis"`.
    pub fn redis_target(&self) -> Target {
        Target::new(&self.redis_url, self.redis_cluster, &self.redis_sentinel)
    }

    /// Every problem, each as `path: what is wrong`.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        if self.listen.parse::<SocketAddr>().is_err() {
            errors.push(format!("listen: {:?} is not an address like 127.0.0.1:50051", shown(&self.listen)));
        }
        if !self.admin_listen.is_empty() && self.admin_listen.parse::<SocketAddr>().is_err() {
            errors.push(format!(
                "admin_listen: {:?} is not an address like 127.0.0.1:9090 (\"\" turns the admin port off)",
                shown(&self.admin_listen)
            ));
        }
        let urls = self.redis_target().urls();
        if self.redis_cluster && !self.redis_sentinel.is_empty() {
            errors.push("redis_sentinel: Redis Cluster (redis_cluster = true) does not use Sentinel".into());
        }
        if self.storage == StorageKind::Redis
            && (urls.is_empty()
                || !urls.iter().all(|u| u.starts_with("redis://") || u.starts_with("rediss://")))
        {
            errors.push(format!(
                "redis_url: {:?} must be a URL starting with redis:// or rediss:// (with redis_cluster or \
                 redis_sentinel, one or more, separated by commas)",
                redact(&self.redis_url)
            ));
        }
        if self.max_payload_bytes == 0 {
            errors.push("max_payload_bytes: must be >= 1".into());
        }
        if self.max_message_bytes < self.max_payload_bytes {
            errors.push("max_message_bytes: must be >= max_payload_bytes".into());
        }
        if self.max_delay.is_zero() || self.max_delay > MAX_MAX_DELAY {
            errors.push("max_delay: must be between 1ms and 100 years".into());
        }
        if self.max_queues == 0 {
            errors.push("max_queues: must be >= 1".into());
        }
        if self.max_tasks == Some(0) {
            errors.push("max_tasks: must be >= 1".into());
        }
        if self.max_queued_bytes == Some(0) {
            errors.push("max_queued_bytes: must be >= 1".into());
        }
        if self.stream_outbound_bytes < 64 << 10 {
            errors.push("stream_outbound_bytes: must be >= 65536".into());
        }
        if self.stream_stall_timeout < Duration::from_millis(100) {
            errors.push("stream_stall_timeout: must be >= 100ms".into());
        }
        if self.max_concurrent_streams == 0 {
            errors.push("max_concurrent_streams: must be >= 1".into());
        }
        if self.telemetry.sample_ratio.is_some_and(|r| !(0.0..=1.0).contains(&r)) {
            errors.push("telemetry.sample_ratio: must be between 0.0 and 1.0".into());
        }
        let endpoint = &self.telemetry.otlp_endpoint;
        if !(endpoint.is_empty() || endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            errors.push(format!(
                "telemetry.otlp_endpoint: {:?} must start with http:// or https://",
                shown(endpoint)
            ));
        }
        for (name, q) in &self.queues {
            let path = format!("queues.{}", shown(name));
            if !valid_queue_name(name) {
                errors.push(format!("{path}: queue names must match [A-Za-z0-9._:-]{{1,128}}"));
            }
            q.validate(&path, &mut errors);
            for s in q.semaphores.iter().flatten() {
                if !self.semaphores.contains_key(s) {
                    errors.push(format!("{path}.semaphores: {:?} is not declared in [semaphores]", shown(s)));
                }
            }
        }
        for (name, s) in &self.semaphores {
            let path = format!("semaphores.{}", shown(name));
            if !valid_semaphore_name(name) {
                errors.push(format!("{path}: semaphore names must match [A-Za-z0-9._:-]{{1,128}}"));
            }
            if s.limit == 0 {
                errors.push(format!("{path}.limit: must be >= 1"));
            }
        }
        for (i, r) in self.routes.iter().enumerate() {
            let path = format!("routes[{i}]");
            if r.kind.is_empty() {
                errors.push(format!("{path}.kind: must not be empty"));
            }
            if !valid_queue_name(&r.queue) {
                errors.push(format!("{path}.queue: {:?} is not a valid queue name", shown(&r.queue)));
            } else if self.strict_queues && !self.queues.contains_key(&r.queue) {
                errors.push(format!("{path}.queue: {:?} is not declared (strict_queues)", r.queue));
            }
            if r.priority.is_some_and(|p| p > MAX_PRIORITY as u32) {
                errors.push(format!("{path}.priority: must be 0-9"));
            }
            for s in &r.semaphores {
                if !self.semaphores.contains_key(s) {
                    errors.push(format!("{path}.semaphores: {:?} is not declared in [semaphores]", shown(s)));
                }
            }
        }
        security::validate(self, &mut errors);
        self.validate_schedules(&mut errors);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// The admin HTTP port's address; `None`: off. Call after `validate()`.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_listen.parse().ok()
    }

    /// The store's bounds; unset ones derived from this machine's memory.
    pub fn limits(&self) -> Limits {
        let derived = Limits::from_memory();
        Limits {
            max_queues: self.max_queues,
            max_tasks: self.max_tasks.unwrap_or(derived.max_tasks),
            max_queued_bytes: self.max_queued_bytes.unwrap_or(derived.max_queued_bytes),
        }
    }

    /// Resolved per-queue policies. Call after `validate()`.
    pub fn policies(&self) -> Policies {
        let base = self.queues.get(DEFAULT_QUEUE).cloned().unwrap_or_default();
        let fallback = base.resolve(&QueueConfig::default(), &QueuePolicy::default());
        let mut declared: BTreeMap<String, QueuePolicy> = self
            .queues
            .iter()
            .map(|(name, q)| (name.clone(), q.resolve(&base, &QueuePolicy::default())))
            .collect();
        declared.entry(DEFAULT_QUEUE.into()).or_insert_with(|| fallback.clone());
        let semaphores = self.semaphores.iter().map(|(name, s)| (name.clone(), s.limit)).collect();
        Policies::new(declared, fallback).with_routes(self.routes()).with_semaphores(semaphores)
    }

    /// The routing rules. Call after `validate()`.
    pub fn routes(&self) -> Vec<Route> {
        self.routes
            .iter()
            .map(|r| Route {
                kind: r.kind.clone(),
                headers: r.headers.clone(),
                queue: r.queue.clone(),
                priority: r.priority.map(|p| p as u8),
                semaphores: r.semaphores.clone(),
            })
            .collect()
    }
}

impl QueueConfig {
    fn validate(&self, path: &str, errors: &mut Vec<String>) {
        if let Some(d) = self.lease_duration {
            if d < Duration::from_secs(1) || d > Duration::from_secs(12 * 3600) {
                errors.push(format!("{path}.lease_duration: must be between 1s and 12h"));
            }
        }
        if self.max_attempts == Some(0) {
            errors.push(format!("{path}.max_attempts: must be >= 1"));
        }
        if self.default_priority.is_some_and(|p| p > MAX_PRIORITY as u32) {
            errors.push(format!("{path}.default_priority: must be 0-9"));
        }
        if let Some(rate) = &self.rate_limit {
            if let Err(e) = rate.parse::<Rate>() {
                errors.push(format!("{path}.rate_limit: {e}"));
            }
        }
        if self.rate_burst == Some(0) {
            errors.push(format!("{path}.rate_burst: must be >= 1"));
        }
        if self.semaphores.as_ref().is_some_and(|s| s.len() > MAX_TASK_SEMAPHORES) {
            errors.push(format!("{path}.semaphores: at most {MAX_TASK_SEMAPHORES} names"));
        }
        if let Some(b) = &self.retry_backoff {
            let p = format!("{path}.retry_backoff");
            if b.initial > b.max {
                errors.push(format!("{p}.initial: must be <= max"));
            }
            if !(b.multiplier >= 1.0 && b.multiplier.is_finite()) {
                errors.push(format!("{p}.multiplier: must be >= 1.0"));
            }
            if !(0.0..=1.0).contains(&b.jitter) {
                errors.push(format!("{p}.jitter: must be between 0.0 and 1.0"));
            }
        }
    }

    /// The rate limit this queue gets: its own `rate_limit` (with its own
    /// `rate_burst`, else the default one's, else the rate's default), else
    /// the default queue's.
    fn rate_limit(&self, base: &QueueConfig) -> Option<RateLimit> {
        let (rate, burst) = match &self.rate_limit {
            Some(r) => (r, self.rate_burst.or(base.rate_burst)),
            None => (base.rate_limit.as_ref()?, self.rate_burst.or(base.rate_burst)),
        };
        let rate: Rate = rate.parse().ok()?;
        Some(RateLimit { rate, burst: burst.unwrap_or_else(|| rate.default_burst()) })
    }

    /// This queue's policy: own settings, then `base`'s, then `builtin`.
    fn resolve(&self, base: &QueueConfig, builtin: &QueuePolicy) -> QueuePolicy {
        let backoff = self.retry_backoff.as_ref().or(base.retry_backoff.as_ref());
        QueuePolicy {
            lease_duration: self.lease_duration.or(base.lease_duration).unwrap_or(builtin.lease_duration),
            max_attempts: self.max_attempts.or(base.max_attempts).unwrap_or(builtin.max_attempts),
            retry_backoff: backoff.map_or_else(
                || builtin.retry_backoff.clone(),
                |b| Backoff { initial: b.initial, max: b.max, multiplier: b.multiplier, jitter: b.jitter },
            ),
            default_priority: self
                .default_priority
                .or(base.default_priority)
                .map_or(builtin.default_priority, |p| p as u8),
            retention: self.retention.or(base.retention).unwrap_or(builtin.retention),
            dedup_window: self.dedup_window.or(base.dedup_window).unwrap_or(builtin.dedup_window),
            max_in_flight: self.max_in_flight.or(base.max_in_flight).unwrap_or(builtin.max_in_flight),
            per_key_max_in_flight: self
                .per_key_max_in_flight
                .or(base.per_key_max_in_flight)
                .unwrap_or(builtin.per_key_max_in_flight),
            rate_limit: self.rate_limit(base).or(builtin.rate_limit),
            semaphores: self
                .semaphores
                .as_ref()
                .or(base.semaphores.as_ref())
                .map_or_else(|| builtin.semaphores.clone(), |s| normalize_semaphores(s.iter().cloned())),
        }
    }
}

/// The commented example printed by `taskbroker config example`.
pub const EXAMPLE: &str = include_str!("../examples/taskbroker.toml");

#[cfg(test)]
mod tests;
