//! The fault matrix of issue 10, as counted load tests: a mixed load of
//! unary and streamed producers and workers ([`load`]) runs against a real
//! `taskbroker serve` process while a fault hits it, then the books are
//! checked against the broker. Each test prints its numbers (enqueues acked,
//! tasks acked, lost, redelivered after ack) and fails unless nothing
//! acknowledged was lost and no acked task was delivered again.
//!
//! Loopback only; each scenario is bounded in time (tens of seconds).
#![cfg(unix)]

#[path = "fault_matrix/ledger.rs"]
mod ledger;
#[path = "fault_matrix/load.rs"]
mod load;
#[allow(dead_code)]
#[path = "common/redis.rs"]
mod redis_server;
#[path = "common/serve.rs"]
mod serve;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ledger::{assert_clean, check, drain, report, Ledger};
use load::{Load, Shape};
use serve::ServeProcess;
use tokio::process::Command;
use tokio::time::sleep;
use tonic_health::pb::health_check_response::ServingStatus;

/// Longest wait for the load to make the progress a scenario needs.
const PROGRESS_WITHIN: Duration = Duration::from_secs(20);
/// Longest drain after the fault.
const DRAIN_WITHIN: Duration = Duration::from_secs(40);
/// A drain ends once nothing was delivered for this long: more than the
/// load's leases (2 s), so what a crash left leased has come back.
const DRAIN_QUIET: Duration = Duration::from_secs(4);

async fn start_embedded(data: &Path, log: &Path, extra: &[&str]) -> ServeProcess {
    let mut args = vec!["--storage", "embedded", "--data-dir", data.to_str().unwrap()];
    args.extend_from_slice(extra);
    ServeProcess::start("broker", &args, log).await
}

/// Waits until the ledger shows `enqueues` acknowledged enqueues and `acks`
/// acked tasks more than `from`.
async fn progress(ledger: &Ledger, from: (usize, usize), enqueues: usize, acks: usize, what: &str) {
    let deadline = Instant::now() + PROGRESS_WITHIN;
    while ledger.enqueue_count() < from.0 + enqueues || ledger.ack_count() < from.1 + acks {
        assert!(
            Instant::now() < deadline,
            "{what}: the load made too little progress: {} enqueues, {} acks (from {from:?}); failures {:?}",
            ledger.enqueue_count(),
            ledger.ack_count(),
            ledger.codes.lock().unwrap()
        );
        sleep(Duration::from_millis(20)).await;
    }
}

fn counts(ledger: &Ledger) -> (usize, usize) {
    (ledger.enqueue_count(), ledger.ack_count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_mixed_load_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let (data, log) = (dir.path().join("data"), dir.path().join("broker.log"));
    let mut broker = start_embedded(&data, &log, &[]).await;
    let load = Load::start(broker.channel(), &Shape::default(), Arc::new(Ledger::default()));
    progress(&load.ledger, (0, 0), 600, 300, "before the kill").await;

    broker.kill9().await;
    let at_kill = counts(&load.ledger);
    sleep(Duration::from_millis(300)).await;
    let ledger = load.stop().await;
    drop(broker);
    eprintln!("killed with {at_kill:?} (enqueues, acks) acknowledged");

    let broker = start_embedded(&data, &log, &[]).await;
    let after_restart = check(broker.channel(), &ledger).await;
    report("kill -9, after restart", &ledger, &after_restart);
    assert_clean("kill -9, after restart", &ledger, &after_restart);
    drain(broker.channel(), &ledger, DRAIN_QUIET, DRAIN_WITHIN).await;
    let drained = check(broker.channel(), &ledger).await;
    report("kill -9, drained", &ledger, &drained);
    assert_clean("kill -9, drained", &ledger, &drained);
    assert!(
        drained.pending.is_empty(),
        "every acknowledged enqueue was processed after the restart: {:?}",
        drained.pending
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_mixed_load_redelivers_nothing_acked_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (data, log) = (dir.path().join("data"), dir.path().join("broker.log"));
    let config = dir.path().join("taskbroker.toml");
    std::fs::write(&config, "shutdown_grace = \"5s\"\n").unwrap();
    let mut broker = start_embedded(&data, &log, &["--config", config.to_str().unwrap()]).await;
    let load = Load::start(broker.channel(), &Shape::default(), Arc::new(Ledger::default()));
    progress(&load.ledger, (0, 0), 600, 300, "before SIGTERM").await;

    // The load goes on through the drain: workers settle what they hold.
    broker.sigterm();
    let at_term = counts(&load.ledger);
    broker.exits_cleanly(Duration::from_secs(20)).await;
    let at_exit = counts(&load.ledger);
    let ledger = load.stop().await;
    drop(broker);
    eprintln!("SIGTERM at {at_term:?}, exit at {at_exit:?} (enqueues, acks)");

    let broker = start_embedded(&data, &log, &[]).await;
    let after_restart = check(broker.channel(), &ledger).await;
    report("SIGTERM, after restart", &ledger, &after_restart);
    assert_clean("SIGTERM, after restart", &ledger, &after_restart);
    drain(broker.channel(), &ledger, DRAIN_QUIET, DRAIN_WITHIN).await;
    let drained = check(broker.channel(), &ledger).await;
    report("SIGTERM, drained", &ledger, &drained);
    assert_clean("SIGTERM, drained", &ledger, &drained);
    assert!(
        drained.pending.is_empty(),
        "every acknowledged enqueue was processed after the restart: {:?}",
        drained.pending
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_with_appendfsync_always_loses_nothing_acknowledged() {
    let mut redis = redis_server::RedisServer::start_fsync_always();
    let dir = tempfile::tempdir().unwrap();
    let args = ["--storage", "redis", "--redis-url", &redis.url()];
    let broker = ServeProcess::start("broker", &args, &dir.path().join("broker.log")).await;
    let load = Load::start(broker.channel(), &Shape::default(), Arc::new(Ledger::default()));
    progress(&load.ledger, (0, 0), 600, 300, "before the Redis restart").await;

    redis.kill();
    let at_kill = counts(&load.ledger);
    sleep(Duration::from_millis(500)).await;
    redis.restart();
    // The load goes on against the restarted Redis.
    progress(&load.ledger, at_kill, 300, 150, "after the Redis restart").await;
    let ledger = load.stop().await;
    eprintln!("Redis killed at {at_kill:?} (enqueues, acks)");

    let after = check(broker.channel(), &ledger).await;
    report("Redis restart", &ledger, &after);
    assert_clean("Redis restart", &ledger, &after);
    drain(broker.channel(), &ledger, DRAIN_QUIET, DRAIN_WITHIN).await;
    let drained = check(broker.channel(), &ledger).await;
    report("Redis restart, drained", &ledger, &drained);
    assert_clean("Redis restart, drained", &ledger, &drained);
    assert!(drained.pending.is_empty(), "every acknowledged enqueue was processed: {:?}", drained.pending);
}

/// File-size limit of the disk-full broker, in KiB (`ulimit -f`).
const DISK_KIB: u32 = 8192;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_answers_unavailable_and_the_broker_recovers_by_itself_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let (data, log) = (dir.path().join("data"), dir.path().join("broker.log"));
    // A soft file-size limit (RLIMIT_FSIZE) makes the database's writes fail
    // once it grows past DISK_KIB: a full disk for this process only, which
    // `prlimit` lifts later (space returns). SIGXFSZ is ignored, as a broker
    // on a full disk would not be killed either.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!(r#"trap '' XFSZ; ulimit -S -f {DISK_KIB} && exec "$0" "$@""#))
        .arg(serve::BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--storage", "embedded", "--data-dir"])
        .arg(&data);
    serve::clean(&mut cmd);
    let mut broker = ServeProcess::spawn("broker", cmd, &log).await;
    let mut health = broker.watch_health().await;
    let shape = Shape { payload_bytes: 32 * 1024, ..Shape::default() };
    let load = Load::start(broker.channel(), &shape, Arc::new(Ledger::default()));

    // The disk fills: writes answer UNAVAILABLE, readiness turns NOT_SERVING.
    let deadline = Instant::now() + PROGRESS_WITHIN;
    while !load.ledger.codes.lock().unwrap().contains_key(&tonic::Code::Unavailable) {
        assert!(Instant::now() < deadline, "the disk never filled: {:?}", counts(&load.ledger));
        sleep(Duration::from_millis(20)).await;
    }
    let at_full = counts(&load.ledger);
    broker.health_becomes(&mut health, ServingStatus::NotServing, Duration::from_secs(10)).await;
    sleep(Duration::from_secs(1)).await;
    broker.assert_running();
    // Every refusal is UNAVAILABLE (an ack of a lease that ran out meanwhile
    // may also see FAILED_PRECONDITION: the worker's business, not the disk's).
    let codes = load.ledger.codes.lock().unwrap().clone();
    let expected = [tonic::Code::Unavailable, tonic::Code::FailedPrecondition];
    let unexpected: Vec<_> = codes.keys().filter(|c| !expected.contains(c)).collect();
    assert!(unexpected.is_empty(), "a full disk answers UNAVAILABLE: {codes:?}");

    // Space returns: the same process serves again, by itself.
    let pid = broker.pid().expect("the broker runs").to_string();
    let lifted = std::process::Command::new("prlimit").args(["--pid", &pid, "--fsize=unlimited"]).status();
    assert!(
        lifted.as_ref().is_ok_and(|s| s.success()),
        "prlimit (util-linux: `apt-get install -y util-linux`) lifts the file-size limit: {lifted:?}"
    );
    let at_space = counts(&load.ledger);
    broker.health_becomes(&mut health, ServingStatus::Serving, Duration::from_secs(15)).await;
    progress(&load.ledger, at_space, 100, 100, "after space returned").await;
    let ledger = load.stop().await;
    broker.assert_running();
    eprintln!("disk full at {at_full:?}, space back at {at_space:?} (enqueues, acks)");

    let after = check(broker.channel(), &ledger).await;
    report("disk full, recovered", &ledger, &after);
    assert_clean("disk full, recovered", &ledger, &after);
    drain(broker.channel(), &ledger, DRAIN_QUIET, DRAIN_WITHIN).await;
    let drained = check(broker.channel(), &ledger).await;
    report("disk full, drained", &ledger, &drained);
    assert_clean("disk full, drained", &ledger, &drained);
    assert!(
        drained.pending.is_empty(),
        "every acknowledged enqueue was processed without a restart: {:?}",
        drained.pending
    );

    // What the recovered store acknowledged is on disk.
    broker.kill9().await;
    drop(broker);
    let broker = start_embedded(&data, &log, &[]).await;
    let restarted = check(broker.channel(), &ledger).await;
    report("disk full, after kill -9", &ledger, &restarted);
    assert_clean("disk full, after kill -9", &ledger, &restarted);
}
