//! The results: one [`Row`] per measured run, grouped by scenario, printed as
//! an aligned table or as one JSON document.
//!
//! Ratios: a unary row's `vs_echo` is its tasks/s over the same-run unary echo
//! calls/s; a stream row's is over the stream echo msgs/s.

use std::fmt::Write;

use serde::Serialize;

use super::memory::Memory;
use super::under_test::TargetInfo;
use super::Opts;

/// Which baseline a row is compared with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Unary,
    Stream,
}

/// Latency percentiles, in milliseconds.
#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
}

/// One measured run.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub scenario: &'static str,
    /// Which variant of the scenario (`unary`, `batch-100`, `rate-1000`, ...).
    pub mode: String,
    pub transport: Transport,
    /// Tasks moved: enqueued, acked or received, as the scenario counts them.
    /// For the echo baseline: calls or stream messages.
    pub tasks: u64,
    /// RPCs made (stream rows: streams opened).
    pub calls: u64,
    /// Failed calls and failed batch items.
    pub errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    pub seconds: f64,
    pub tasks_per_s: f64,
    pub calls_per_s: f64,
    /// tasks/s over the matching echo baseline's rate (none for the baseline).
    pub vs_echo: Option<f64>,
    /// Server-thread CPU seconds per 1000 tasks (in-process only).
    pub broker_cpu_s_per_1k_tasks: Option<f64>,
    /// Embedded-store commits (each one fsync) per 1000 tasks.
    pub fsyncs_per_1k_tasks: Option<f64>,
    /// The process's peak RSS during the run (VmHWM), in MiB; it includes the
    /// load generator.
    pub peak_rss_mib: Option<f64>,
    /// The open-loop rate asked for (e2e).
    pub target_rate: Option<u64>,
    /// Intended enqueue time to delivery (e2e).
    pub latency_ms: Option<Latency>,
}

/// The same-run no-op gRPC rates every row is compared with.
#[derive(Clone, Debug, Serialize)]
pub struct Baseline {
    /// Unary Echo: calls/s is the rate.
    pub unary: Row,
    /// EchoStream: msgs/s (its `tasks_per_s`) is the rate.
    pub stream: Row,
}

impl Baseline {
    pub fn rate(&self, transport: Transport) -> f64 {
        match transport {
            Transport::Unary => self.unary.calls_per_s,
            Transport::Stream => self.stream.tasks_per_s,
        }
    }
}

/// One scenario's rows and findings.
#[derive(Clone, Debug, Serialize)]
pub struct ScenarioReport {
    pub scenario: &'static str,
    pub rows: Vec<Row>,
    /// Priority inversions seen (the `mixed` scenario; expected 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inversions: Option<u64>,
    /// Why the scenario failed; empty when it passed.
    pub failures: Vec<String>,
    /// Facts worth a line under the table.
    pub notes: Vec<String>,
}

impl ScenarioReport {
    pub fn new(scenario: &'static str, rows: Vec<Row>) -> Self {
        Self { scenario, rows, inversions: None, failures: Vec::new(), notes: Vec::new() }
    }
}

/// The flags the numbers were taken with.
#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    pub tasks: u64,
    pub payload_bytes: usize,
    pub concurrency: usize,
    pub connections: usize,
    pub duration_s: f64,
    pub rates: Vec<u64>,
    /// Cores the machine has (client and in-process broker share them).
    pub cores: usize,
}

impl From<&Opts> for Settings {
    fn from(o: &Opts) -> Self {
        Self {
            tasks: o.tasks,
            payload_bytes: o.payload_bytes,
            concurrency: o.concurrency,
            connections: o.connections,
            duration_s: o.duration.as_secs_f64(),
            rates: o.rates.clone(),
            cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        }
    }
}

/// The whole run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub target: TargetInfo,
    pub settings: Settings,
    /// The memory cost of queued tasks (in-process only).
    pub memory: Option<Memory>,
    pub baseline: Baseline,
    pub scenarios: Vec<ScenarioReport>,
    /// Highest per-run peak RSS, in MiB (in-process only).
    pub peak_rss_mib: Option<f64>,
}

impl Report {
    pub fn new(
        target: TargetInfo,
        settings: Settings,
        memory: Option<Memory>,
        baseline: Baseline,
        scenarios: Vec<ScenarioReport>,
    ) -> Self {
        let peaks = scenarios.iter().flat_map(|s| &s.rows).chain([&baseline.unary, &baseline.stream]);
        let peak_rss_mib = peaks.filter_map(|r| r.peak_rss_mib).reduce(f64::max);
        Self { target, settings, memory, baseline, scenarios, peak_rss_mib }
    }

    /// Every failure, prefixed with its scenario.
    pub fn failures(&self) -> Vec<String> {
        self.scenarios
            .iter()
            .flat_map(|s| s.failures.iter().map(move |f| format!("{}: {f}", s.scenario)))
            .collect()
    }

    /// The results as an aligned table with notes under it.
    pub fn table(&self) -> String {
        let s = &self.settings;
        let mut out = String::new();
        let where_ = match &self.target.storage {
            Some(storage) => format!("in-process broker, storage {storage}"),
            None => format!("broker at {}", self.target.url),
        };
        let _ = writeln!(
            out,
            "taskbroker bench: {where_}; tasks {}, payload {} B, concurrency {}, connections {}, \
             duration {}s, {} cores",
            s.tasks, s.payload_bytes, s.concurrency, s.connections, s.duration_s, s.cores
        );
        let mut cells = vec![HEADER.iter().map(|h| h.to_string()).collect::<Vec<_>>()];
        let rows = [&self.baseline.unary, &self.baseline.stream]
            .into_iter()
            .chain(self.scenarios.iter().flat_map(|sc| sc.rows.iter()));
        cells.extend(rows.map(row_cells));
        out.push_str(&align(&cells));
        let _ = writeln!(
            out,
            "×echo: tasks/s over the same-run echo rate (unary rows: echo calls/s; stream rows: echo msgs/s).\n\
             cpu: broker (tb-*) thread CPU per 1000 tasks; rss: process peak (includes the load generator)."
        );
        if let Some(m) = &self.memory {
            let _ = writeln!(out, "{}", m.describe());
        }
        for sc in &self.scenarios {
            if let Some(n) = sc.inversions {
                let _ = writeln!(out, "{}: {n} priority inversions", sc.scenario);
            }
            for note in &sc.notes {
                let _ = writeln!(out, "{}: {note}", sc.scenario);
            }
            for f in &sc.failures {
                let _ = writeln!(out, "{}: FAILED: {f}", sc.scenario);
            }
        }
        if let Some(peak) = self.peak_rss_mib {
            let _ = writeln!(out, "peak RSS (VmHWM): {peak:.0} MiB");
        }
        out
    }
}

const HEADER: [&str; 14] = [
    "scenario",
    "mode",
    "tasks",
    "secs",
    "tasks/s",
    "calls/s",
    "×echo",
    "cpu ms/1k",
    "fsync/1k",
    "rss MiB",
    "p50 ms",
    "p99 ms",
    "p99.9 ms",
    "errors",
];

fn row_cells(r: &Row) -> Vec<String> {
    let opt = |v: Option<f64>, prec: usize| v.map_or_else(|| "-".to_string(), |v| format!("{v:.prec$}"));
    let lat = r.latency_ms.as_ref();
    vec![
        r.scenario.to_string(),
        r.mode.clone(),
        r.tasks.to_string(),
        format!("{:.2}", r.seconds),
        format!("{:.0}", r.tasks_per_s),
        format!("{:.0}", r.calls_per_s),
        opt(r.vs_echo, 2),
        opt(r.broker_cpu_s_per_1k_tasks.map(|s| s * 1000.0), 1),
        opt(r.fsyncs_per_1k_tasks, 1),
        opt(r.peak_rss_mib, 0),
        opt(lat.map(|l| l.p50), 2),
        opt(lat.map(|l| l.p99), 2),
        opt(lat.map(|l| l.p99_9), 2),
        r.errors.to_string(),
    ]
}

/// Pads every column to its widest cell: text left, numbers right.
fn align(cells: &[Vec<String>]) -> String {
    let columns = cells.first().map_or(0, Vec::len);
    let widths: Vec<usize> =
        (0..columns).map(|c| cells.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in cells {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (cell, &w))| if c < 2 { format!("{cell:<w$}") } else { format!("{cell:>w$}") })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
