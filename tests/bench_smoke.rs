//! `taskbroker bench` end to end: every scenario through the real binary with
//! tiny counts and `--json`, checking the document's shape, that work was
//! done, and the figures that are counts rather than times (fsyncs per task,
//! Redis bytes per task, priority inversions). No timing assertions: the
//! machine is shared and small.
#![cfg(feature = "bench")]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

#[path = "common/env.rs"]
mod env;
#[allow(dead_code)]
#[path = "common/redis.rs"]
mod redis_server;

/// Tiny sizes: each run takes about a second.
const SMALL: [&str; 8] = ["--tasks", "200", "--duration", "300ms", "--rates", "200", "--concurrency", "4"];

/// The binary, without the caller's `TASKBROKER_*` variables.
fn taskbroker() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_taskbroker"));
    env::clear(&mut cmd);
    cmd
}

fn bench(args: &[&str]) -> Value {
    let out = taskbroker()
        .arg("bench")
        .args(SMALL)
        .args(args)
        .arg("--json")
        .env("RUST_LOG", "warn")
        .output()
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench {args:?} failed ({}):\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// A child process that is killed when the test ends, pass or fail.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The rows of `scenario`, by mode.
fn rows<'a>(doc: &'a Value, scenario: &str) -> Vec<(&'a str, &'a Value)> {
    let scenarios = doc["scenarios"].as_array().expect("scenarios is a list");
    let found = scenarios.iter().find(|s| s["scenario"] == scenario).unwrap_or_else(|| {
        panic!("no {scenario} entry in {doc:#}");
    });
    assert_eq!(found["failures"].as_array().map(Vec::len), Some(0), "{found:#}");
    found["rows"].as_array().expect("rows").iter().map(|r| (r["mode"].as_str().unwrap(), r)).collect()
}

fn assert_worked(row: &Value) {
    assert!(row["tasks"].as_u64().unwrap() > 0, "no tasks moved: {row:#}");
    assert!(row["calls"].as_u64().unwrap() > 0, "no calls made: {row:#}");
    assert_eq!(row["errors"].as_u64(), Some(0), "{row:#}");
    assert!(row["tasks_per_s"].as_f64().unwrap() > 0.0, "{row:#}");
    assert!(row["vs_echo"].as_f64().unwrap() > 0.0, "{row:#}");
}

fn assert_in_process_figures(doc: &Value, row: &Value) {
    assert!(row["broker_cpu_s_per_1k_tasks"].is_number(), "{row:#}");
    assert!(row["peak_rss_mib"].as_f64().unwrap() > 0.0, "{row:#}");
    assert!(doc["memory"]["per_million_queued_mib"].is_number(), "{doc:#}");
}

#[test]
fn the_baseline_is_measured_in_every_run() {
    let doc = bench(&["--scenario", "enqueue"]);
    for which in ["unary", "stream"] {
        let row = &doc["baseline"][which];
        assert!(row["tasks"].as_u64().unwrap() > 0, "{row:#}");
        assert!(row["tasks_per_s"].as_f64().unwrap() > 0.0, "{row:#}");
    }
    assert_eq!(doc["target"]["mode"], "in-process");
    assert_eq!(doc["target"]["storage"], "memory");
}

#[test]
fn enqueue_runs_unary_and_every_batch_size() {
    let doc = bench(&["--scenario", "enqueue"]);
    let rows = rows(&doc, "enqueue");
    let modes: Vec<_> = rows.iter().map(|(m, _)| *m).collect();
    for mode in ["unary", "batch-10", "batch-100", "batch-1000", "stream"] {
        assert!(modes.contains(&mode), "{mode} missing from {modes:?}");
    }
    for (_, row) in &rows {
        assert_worked(row);
        assert_eq!(row["tasks"].as_u64(), Some(200), "{row:#}");
        assert_in_process_figures(&doc, row);
    }
}

#[test]
fn drain_empties_the_prefilled_queue_in_each_mode() {
    let doc = bench(&["--scenario", "drain"]);
    let rows = rows(&doc, "drain");
    let modes: Vec<_> = rows.iter().map(|(m, _)| *m).collect();
    assert_eq!(modes, ["lease1-ack", "lease100-acks", "stream"]);
    for (_, row) in &rows {
        assert_worked(row);
        assert_eq!(row["tasks"].as_u64(), Some(200), "every pre-filled task acked: {row:#}");
    }
}

#[test]
fn mixed_rate_acks_while_producing() {
    let doc = bench(&["--scenario", "mixed-rate"]);
    let rows = rows(&doc, "mixed-rate");
    let modes: Vec<_> = rows.iter().map(|(m, _)| *m).collect();
    assert_eq!(modes, ["unary", "stream"]);
    for (_, row) in rows {
        assert_worked(row);
    }
}

#[test]
fn redis_rows_and_the_raw_scripts_run_against_a_private_redis() {
    let redis = redis_server::RedisServer::start();
    let url = redis.url();
    let doc = bench(&["--embedded", "redis", "--redis-url", &url, "--scenario", "mixed-rate"]);
    let mixed = rows(&doc, "mixed-rate");
    assert_eq!(mixed.iter().map(|(m, _)| *m).collect::<Vec<_>>(), ["unary", "stream"]);
    for (_, row) in &mixed {
        assert_worked(row);
    }
    // A run of its own: in the same run, the broker that served mixed-rate
    // could purge its finished tasks while redis-raw measures Redis's memory
    // (seen once: 103 B per task).
    let doc = bench(&["--embedded", "redis", "--redis-url", &url, "--scenario", "redis-raw"]);
    let raw = rows(&doc, "redis-raw");
    assert_eq!(
        raw.iter().map(|(m, _)| *m).collect::<Vec<_>>(),
        ["enqueue-100", "lease100-ack-many", "lifecycle"]
    );
    for (_, row) in &raw {
        assert!(row["tasks_per_s"].as_f64().unwrap() > 0.0, "{row:#}");
        assert_eq!(row["errors"].as_u64(), Some(0), "{row:#}");
    }
    let raw = doc["scenarios"].as_array().unwrap().iter().find(|s| s["scenario"] == "redis-raw").unwrap();
    let per_task = notes(raw)
        .iter()
        .find_map(|n| n.strip_prefix("Redis memory ")?.split_once(" bytes per queued task"))
        .map(|(n, _)| n.parse::<f64>().unwrap_or_else(|e| panic!("{n:?} is not a number: {e}")))
        .unwrap_or_else(|| panic!("no Redis memory note in {raw:#}"));
    // A queued task with a 100-byte payload: ~450 B measured (README); far
    // outside this band the measurement, not Redis, is wrong.
    assert!((200.0..=2000.0).contains(&per_task), "{per_task} bytes per queued task");
}

/// A scenario's notes.
fn notes(scenario: &Value) -> Vec<&str> {
    scenario["notes"].as_array().expect("notes is a list").iter().map(|n| n.as_str().unwrap()).collect()
}

#[test]
fn e2e_reports_latency_percentiles_per_rate_and_worker_kind() {
    let doc = bench(&["--scenario", "e2e"]);
    let rows = rows(&doc, "e2e");
    let modes: Vec<_> = rows.iter().map(|(m, _)| *m).collect();
    assert_eq!(modes, ["rate-200", "rate-200-stream"]);
    for (_, row) in rows {
        assert_worked(row);
        assert_eq!(row["target_rate"].as_u64(), Some(200));
        let latency = &row["latency_ms"];
        for p in ["p50", "p99", "p99_9", "max"] {
            assert!(latency[p].as_f64().unwrap() > 0.0, "{p}: {row:#}");
        }
        assert!(latency["p50"].as_f64() <= latency["p99"].as_f64());
    }
}

#[test]
fn mixed_finds_no_priority_inversions() {
    let doc = bench(&["--scenario", "mixed"]);
    let rows = rows(&doc, "mixed");
    assert_worked(rows[0].1);
    let mixed = doc["scenarios"].as_array().unwrap().iter().find(|s| s["scenario"] == "mixed").unwrap();
    assert_eq!(mixed["inversions"].as_u64(), Some(0), "{mixed:#}");
    // The check replayed every delivery: the scenario notes any pre-filled
    // task missing from it (or a pre-fill that failed).
    assert_eq!(rows[0].1["tasks"].as_u64(), Some(200), "every pre-filled task acked: {mixed:#}");
    assert!(notes(mixed).is_empty(), "{:?}", notes(mixed));
}

/// Most fsyncs per 1000 tasks each embedded row may take (of the 200 tasks
/// moved by 4 callers): one commit per call at most, fewer where concurrent
/// calls share one (group commit). One commit of slack for a timer sweep.
fn fsync_bound(scenario: &str, mode: &str) -> f64 {
    let per_1k = |commits: f64| (commits + 1.0) * 1000.0 / 200.0;
    match (scenario, mode) {
        // 4 callers, one task per call: without group commit exactly 1000
        // (~480 measured here; the bound asks for some sharing, not a figure).
        ("enqueue", "unary") => 900.0,
        // One commit per batch (20, 2, 1 batches).
        ("enqueue", "batch-10") => per_1k(20.0),
        ("enqueue", "batch-100") => per_1k(2.0),
        ("enqueue", "batch-1000") => per_1k(1.0),
        // What arrives together on a stream is committed together.
        ("enqueue", "stream") => 250.0,
        // A lease and an ack per task: without group commit exactly 2000.
        ("drain", "lease1-ack") => 1800.0,
        // Two leases of 100 (not fsynced on their own, but the first
        // reserves lease ids), then one unary ack per task from 4 callers:
        // one commit per call at most. How many acks share a commit depends
        // on timing (260 and 675 per 1k seen with log commits of ~0.1-0.2
        // ms): not asserted here; tests/group_commit.rs shows the sharing.
        ("drain", "lease100-acks") => per_1k(202.0),
        ("drain", "stream") => 250.0,
        other => panic!("no fsync bound for {other:?}"),
    }
}

#[test]
fn the_embedded_store_reports_fsyncs_and_shares_them() {
    let doc = bench(&["--embedded", "embedded", "--scenario", "enqueue,drain"]);
    assert_eq!(doc["target"]["storage"], "embedded");
    for scenario in ["enqueue", "drain"] {
        for (mode, row) in rows(&doc, scenario) {
            assert_worked(row);
            let fsyncs = row["fsyncs_per_1k_tasks"].as_f64().unwrap();
            assert!(fsyncs > 0.0, "{row:#}");
            let bound = fsync_bound(scenario, mode);
            assert!(fsyncs <= bound, "{scenario} {mode}: {fsyncs} fsyncs per 1k tasks, over {bound}");
        }
    }
}

#[test]
fn a_remote_broker_gets_no_cpu_figures() {
    let dir = tempfile::tempdir().unwrap();
    let mut serve = KillOnDrop(
        taskbroker()
            .args(["serve", "--storage", "memory", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("serve starts"),
    );
    let mut first = String::new();
    BufReader::new(serve.0.stdout.take().unwrap()).read_line(&mut first).unwrap();
    let addr = first.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("{first:?}")).to_owned();

    let doc = bench(&["--server", &format!("http://{addr}"), "--scenario", "drain"]);
    drop(serve);
    assert_eq!(doc["target"]["mode"], "remote");
    assert!(doc["memory"].is_null(), "{doc:#}");
    for (_, row) in rows(&doc, "drain") {
        assert_worked(row);
        assert!(row["broker_cpu_s_per_1k_tasks"].is_null(), "{row:#}");
        assert!(row["peak_rss_mib"].is_null(), "{row:#}");
    }
}

#[test]
fn an_unreachable_broker_fails_cleanly() {
    let out = taskbroker()
        .args(["bench", "--server", "http://127.0.0.1:1", "--json"])
        .args(SMALL)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"), "{out:?}");
}

#[test]
fn bad_flags_exit_64() {
    let out = taskbroker().args(["bench", "--concurrency", "0", "--rates", "0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--concurrency") && stderr.contains("--rates"), "{stderr}");
}
