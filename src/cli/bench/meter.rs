//! What one measured run costs: wall time, broker CPU, fsyncs and peak RSS
//! (each when it can be measured), plus the progress line on stderr.
//!
//! It turns a run's [`Tally`] into a [`Row`]; it does not know which calls
//! the run made.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::load::Tally;
use super::procfs;
use super::report::{Baseline, Row, Transport};
use crate::broker::Broker;

/// Thread-name prefix of everything that serves (see `under_test::SERVER_THREAD_NAME`).
const SERVER_THREADS: &str = "tb-";
/// How often the progress line is redrawn.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// Width the progress line is padded to, so a shorter one hides a longer.
const PROGRESS_WIDTH: usize = 78;

/// Which figures this run can take.
#[derive(Clone)]
pub struct Probes {
    /// The broker runs in this process: its threads' CPU and the process's
    /// memory are the broker's (plus the load generator's memory).
    pub in_process: bool,
    /// The in-process broker, when its store counts its commits (fsyncs).
    pub commits: Option<Broker>,
}

impl Probes {
    fn commits(&self) -> Option<u64> {
        self.commits.as_ref().and_then(Broker::store_commits)
    }
}

/// A run being measured.
pub struct Meter {
    scenario: &'static str,
    mode: String,
    probes: Probes,
    tally: Arc<Tally>,
    progress: Progress,
    started: Instant,
    cpu_at_start: Option<f64>,
    commits_at_start: Option<u64>,
}

impl Meter {
    /// Starts measuring (and resets the peak RSS, so the run's peak is its own).
    pub fn start(probes: Probes, scenario: &'static str, mode: impl Into<String>) -> Self {
        let mode = mode.into();
        let tally = Arc::new(Tally::default());
        if probes.in_process {
            procfs::reset_peak_rss();
        }
        Self {
            progress: Progress::start(format!("{scenario} {mode}"), tally.clone()),
            scenario,
            mode,
            tally,
            started: Instant::now(),
            cpu_at_start: cpu(&probes),
            commits_at_start: probes.commits(),
            probes,
        }
    }

    /// The counters the run's callers add to.
    pub fn tally(&self) -> Arc<Tally> {
        self.tally.clone()
    }

    /// Ends the run: its figures as a row, with the ratio to the `baseline`
    /// of the same transport (none for the baseline's own rows).
    pub fn finish(self, transport: Transport, baseline: Option<&Baseline>) -> Row {
        let seconds = self.started.elapsed().as_secs_f64();
        self.progress.finish();
        let tasks = self.tally.tasks();
        let per_1k = |amount: f64| (tasks > 0).then(|| amount * 1000.0 / tasks as f64);
        let cpu = cpu(&self.probes).zip(self.cpu_at_start).map(|(end, start)| end - start);
        let commits =
            self.probes.commits().zip(self.commits_at_start).map(|(end, start)| (end - start) as f64);
        let tasks_per_s = tasks as f64 / seconds;
        Row {
            scenario: self.scenario,
            mode: self.mode,
            transport,
            tasks,
            calls: self.tally.calls(),
            errors: self.tally.errors(),
            first_error: self.tally.first_error(),
            seconds,
            tasks_per_s,
            calls_per_s: self.tally.calls() as f64 / seconds,
            vs_echo: baseline.map(|b| tasks_per_s / b.rate(transport)),
            broker_cpu_s_per_1k_tasks: cpu.and_then(per_1k),
            fsyncs_per_1k_tasks: commits.and_then(per_1k),
            peak_rss_mib: if self.probes.in_process { procfs::peak_rss_bytes().map(mib) } else { None },
            target_rate: None,
            latency_ms: None,
        }
    }
}

/// Bytes as MiB.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn cpu(probes: &Probes) -> Option<f64> {
    if probes.in_process {
        procfs::threads_cpu_seconds(SERVER_THREADS)
    } else {
        None
    }
}

/// A line on stderr, redrawn in place a few times a second, showing how far
/// a run has got.
pub struct Progress {
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    pub fn start(label: String, tally: Arc<Tally>) -> Self {
        let started = Instant::now();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(PROGRESS_EVERY);
            tick.tick().await;
            loop {
                tick.tick().await;
                let secs = started.elapsed().as_secs_f64();
                let tasks = tally.tasks();
                let line = format!("{label}: {tasks} tasks, {:.0}/s, {secs:.1}s", tasks as f64 / secs);
                eprint!("\r{line:PROGRESS_WIDTH$}");
            }
        });
        Self { task }
    }

    /// Stops redrawing and blanks the line.
    pub fn finish(self) {
        self.task.abort();
        eprint!("\r{:PROGRESS_WIDTH$}\r", "");
    }
}
