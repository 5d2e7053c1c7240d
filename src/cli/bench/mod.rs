//! `taskbroker bench`: the project's load tool. It drives a broker over real
//! gRPC on loopback, measures a no-op echo service in the same run, and prints
//! every broker figure with its ratio to that baseline.
//!
//! This file owns the flags, the order of a run and its exit code; it knows
//! nothing of how a scenario loads the broker.
//!
//! # Layout
//! - [`under_test`]: the broker under test: in-process on its own `tb-broker`
//!   runtime (so its CPU can be told apart from the client's), or elsewhere.
//! - [`echo`]: the no-op echo service and the same-run baseline.
//! - [`load`]: connections, the closed-loop driver, counters, payloads,
//!   pre-fills and the stop signal that every scenario shares.
//! - [`memory`]: the memory cost of queued tasks, probed once per run.
//! - [`meter`]: what one measured run cost (time, broker CPU, fsyncs, peak
//!   RSS) and the progress line on stderr.
//! - [`work`]: the worker side the consuming scenarios share (unary Lease +
//!   Ack, and `Stream` sessions).
//! - [`procfs`]: per-thread CPU time and memory figures from `/proc/self`.
//! - [`report`]: result rows, the aligned table and the JSON document.
//! - [`enqueue`], [`drain`], [`mixed_rate`], [`e2e`], [`mixed`]: one
//!   scenario each.
//! - [`redis_raw`]: the Redis store's scripts without broker or gRPC, the
//!   ceiling for `--embedded redis` (not in `all`: it needs Redis).

mod drain;
mod e2e;
mod echo;
mod enqueue;
mod load;
mod memory;
mod meter;
mod mixed;
mod mixed_rate;
mod procfs;
mod redis_raw;
mod report;
mod security;
mod under_test;
mod work;

use std::time::Duration;

use clap::{Args, ValueEnum};

use super::CliError;
use crate::config::StorageKind;
use load::Pool;
use meter::Probes;
use report::{Baseline, Report, ScenarioReport, Settings};
use under_test::UnderTest;

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Drive the broker at this URL (e.g. http://127.0.0.1:50051) instead of
    /// starting one in-process; no CPU, memory or fsync figures then.
    #[arg(long, conflicts_with = "embedded")]
    pub server: Option<String>,
    /// Start the broker in-process on this storage backend [default: memory].
    #[arg(long, value_enum)]
    pub embedded: Option<StorageKind>,
    /// Scenarios to run, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "all")]
    pub scenario: Vec<ScenarioArg>,
    /// Tasks per measured run: each enqueue mode, each drain pre-fill, the
    /// mixed pre-fill, the memory probe, and the echo baseline's calls (its
    /// stream sends 10×).
    #[arg(long, default_value_t = 50_000)]
    pub tasks: u64,
    /// Payload size of every task and echo message.
    #[arg(long, default_value_t = 100)]
    pub payload_bytes: usize,
    /// Concurrent callers (unary calls in flight; workers when draining).
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// HTTP/2 connections the callers share (caller i uses connection i % K).
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Length of the time-bound scenarios (mixed-rate, each e2e rate).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Open-loop enqueue rates (tasks/s) of the e2e scenario.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,50000")]
    pub rates: Vec<u64>,
    /// Print one JSON document instead of the table.
    #[arg(long)]
    pub json: bool,
    /// The Redis of `--embedded redis` and of the `redis-raw` scenario.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Queue settings (and the rest) of the in-process broker from this
    /// config file, e.g. a `max_in_flight` to measure flow control's cost.
    #[arg(long, conflicts_with = "server")]
    pub config: Option<std::path::PathBuf>,
    /// The in-process broker runs with `[auth]` on and the bench's calls
    /// carry a bearer token (the cost of authentication).
    #[arg(long, conflicts_with = "server")]
    pub auth: bool,
    /// The in-process broker serves TLS with a fresh self-signed
    /// certificate (the cost of TLS; the echo baseline stays plaintext).
    #[arg(long, conflicts_with = "server")]
    pub tls: bool,
    /// With --server: a bearer token for a broker with auth on.
    #[arg(long, env = "TASKBROKER_TOKEN", hide_env_values = true, requires = "server")]
    pub token: Option<String>,
    /// With --server https://...: the CA that signed its certificate.
    #[arg(long, requires = "server")]
    pub tls_ca: Option<std::path::PathBuf>,
}

/// A `--scenario` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScenarioArg {
    All,
    Enqueue,
    Drain,
    MixedRate,
    E2e,
    Mixed,
    /// The Redis store driven directly (at `--redis-url`).
    RedisRaw,
}

/// Every scenario, in the order `all` runs them.
const ALL: [ScenarioArg; 5] =
    [ScenarioArg::Enqueue, ScenarioArg::Drain, ScenarioArg::MixedRate, ScenarioArg::E2e, ScenarioArg::Mixed];

/// The validated flags a scenario reads.
#[derive(Debug, Clone)]
pub struct Opts {
    pub tasks: u64,
    pub payload_bytes: usize,
    pub concurrency: usize,
    pub connections: usize,
    pub duration: Duration,
    pub rates: Vec<u64>,
    pub redis_url: String,
}

/// What every scenario gets: the connections, the flags, what can be
/// measured, and the baseline its rows are compared with.
pub struct Ctx {
    pub pool: Pool,
    pub opts: Opts,
    pub probes: Probes,
    pub baseline: Baseline,
    /// Makes queue names unique per run, so a shared broker's other queues
    /// (and earlier runs) do not mix in.
    run_id: String,
}

impl Ctx {
    /// This run's queue for `what` (e.g. `enqueue.unary`).
    pub fn queue(&self, what: &str) -> String {
        format!("bench.{}.{what}", self.run_id)
    }

    /// The payload every task carries.
    pub fn payload(&self) -> Vec<u8> {
        load::payload(self.opts.payload_bytes)
    }
}

pub async fn run(args: BenchArgs) -> Result<(), CliError> {
    let opts = validate(&args).map_err(CliError::Config)?;
    let scenarios: Vec<ScenarioArg> =
        if args.scenario.contains(&ScenarioArg::All) { ALL.to_vec() } else { dedup(&args.scenario) };
    let storage = args.embedded.unwrap_or(StorageKind::Memory);

    let base = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| CliError::Config(vec![format!("{}: {e}", path.display())]))?;
            crate::config::Config::from_toml(&text)
                .map_err(|e| CliError::Config(vec![format!("{}: {e}", path.display())]))?
        }
        None => crate::config::Config::default(),
    };
    let secured = security::secure(base, &args).map_err(CliError::Other)?;
    let target = UnderTest::start(args.server.clone(), storage, &opts.redis_url, secured.config).await?;
    let probes = target.probes();
    let pool = Pool::connect(target.url(), opts.connections, &secured.credentials).await?;
    let run_id = format!("{:08x}", rand::random::<u32>());
    // First, while the process is fresh: later runs leave freed memory behind
    // that a pre-fill would reuse, hiding its cost.
    let memory = match probes.in_process {
        true => Some(memory::probe(&pool, &format!("bench.{run_id}.memory"), &opts).await),
        false => None,
    };
    let baseline = echo::measure(&opts, probes.clone()).await?;
    let ctx = Ctx { pool, opts: opts.clone(), probes, baseline, run_id };

    let mut done: Vec<ScenarioReport> = Vec::new();
    for scenario in scenarios {
        let outcome = match scenario {
            ScenarioArg::Enqueue => enqueue::run(&ctx).await,
            ScenarioArg::Drain => drain::run(&ctx).await,
            ScenarioArg::MixedRate => mixed_rate::run(&ctx).await,
            ScenarioArg::E2e => e2e::run(&ctx).await,
            ScenarioArg::Mixed => mixed::run(&ctx).await,
            ScenarioArg::RedisRaw => redis_raw::run(&ctx).await,
            ScenarioArg::All => continue,
        };
        done.push(outcome?);
    }
    let info = target.info();
    target.stop().await;

    let settings = Settings::from(&opts);
    let report = Report::new(info, settings, memory, ctx.baseline, done);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).map_err(anyhow::Error::from)?);
    } else {
        print!("{}", report.table());
    }
    let failures = report.failures();
    if failures.is_empty() {
        Ok(())
    } else {
        Err(CliError::Other(anyhow::anyhow!("bench failed:\n  {}", failures.join("\n  "))))
    }
}

/// Every problem with the flags, as `--flag: what is wrong`.
fn validate(args: &BenchArgs) -> Result<Opts, Vec<String>> {
    let mut errors = Vec::new();
    if args.tasks == 0 {
        errors.push("--tasks: must be >= 1".into());
    }
    if args.concurrency == 0 {
        errors.push("--concurrency: must be >= 1".into());
    }
    if args.connections == 0 {
        errors.push("--connections: must be >= 1".into());
    }
    if args.duration.is_zero() {
        errors.push("--duration: must be > 0".into());
    }
    if args.rates.is_empty() || args.rates.contains(&0) {
        errors.push("--rates: every rate must be >= 1 task/s".into());
    }
    if let Some(url) = &args.server {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            errors.push(format!("--server: {url:?} is not a URL like http://127.0.0.1:50051"));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Opts {
        tasks: args.tasks,
        payload_bytes: args.payload_bytes,
        concurrency: args.concurrency,
        connections: args.connections,
        duration: args.duration,
        redis_url: args.redis_url.clone(),
        rates: args.rates.clone(),
    })
}

fn dedup(list: &[ScenarioArg]) -> Vec<ScenarioArg> {
    let mut out: Vec<ScenarioArg> = Vec::new();
    for s in list {
        if !out.contains(s) {
            out.push(*s);
        }
    }
    out
}
