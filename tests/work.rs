//! `taskbroker work`: the real binary as a worker against a real server.

mod common;
#[path = "common/env.rs"]
mod env;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use taskbroker::pb;
use tokio_stream::StreamExt;

/// Bound on every wait for the worker or its commands.
const WAIT: Duration = Duration::from_secs(20);

/// A `taskbroker work` process and its stderr lines; killed when the test
/// ends, whatever happens.
struct Worker {
    child: Child,
    log: mpsc::Receiver<String>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Worker {
    /// Waits for a log line containing `text`; returns it.
    fn logged(&self, text: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.log.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.contains(text) => return line,
                Ok(_) => continue,
                Err(e) => panic!("the worker did not log {text:?} within {WAIT:?}: {e}"),
            }
        }
    }

    /// Sends SIGTERM.
    fn sigterm(&self) {
        let sent = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        assert!(sent.is_ok_and(|s| s.success()), "send SIGTERM to the worker");
    }

    /// Waits (bounded) for the worker to exit; its status.
    fn exits(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the worker") {
                return status;
            }
            assert!(Instant::now() < deadline, "the worker did not exit within {WAIT:?}");
            // No signal reaches a non-parent when a process exits: poll, bounded.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `taskbroker work --queue QUEUE --lease LEASE --concurrency N -- sh -c SCRIPT`
/// against `addr`, without the caller's TASKBROKER_* variables; `vars` reach
/// the worker (and so its commands).
fn work(
    addr: std::net::SocketAddr,
    queue: &str,
    opts: &[&str],
    script: &str,
    vars: &[(&str, &Path)],
) -> Worker {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_taskbroker"));
    env::clear(&mut cmd);
    cmd.args(["work", "--server", &format!("http://{addr}"), "--queue", queue])
        .args(opts)
        .args(["--", "sh", "-c", script])
        .envs(vars.iter().copied())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start taskbroker work");
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, log) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Worker { child, log }
}

/// Follows a task with WatchTask until it reaches `until` (bounded).
async fn wait_for(s: &mut common::TestServer, id: &str, until: pb::TaskState) -> pb::Task {
    let mut states =
        s.producer.watch_task(pb::WatchTaskRequest { task_id: id.into() }).await.unwrap().into_inner();
    let follow = async {
        while let Some(msg) = states.next().await {
            let task = msg.unwrap().task.unwrap();
            if common::state(&task) == until {
                return task;
            }
        }
        panic!("watch of {id} ended before {until:?}");
    };
    tokio::time::timeout(WAIT, follow).await.expect("state reached in time")
}

/// Waits (bounded) for a file a command writes; its contents.
async fn file_appears(path: &Path) -> String {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(text) = std::fs::read_to_string(path) {
                return text.trim().to_string();
            }
            // A file appearing sends no signal to another process: poll, bounded.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} did not appear within {WAIT:?}", path.display()))
}

fn alive(pid: &str) -> bool {
    Command::new("kill").args(["-0", pid]).stderr(Stdio::null()).status().unwrap().success()
}

/// A command that records its pid in `$DIR/<task id>.pid`, then runs until
/// `$DIR/go` exists (at most 60 s), then prints `done`.
const HOLD_UNTIL_GO: &str = r#"
    echo $$ > "$DIR/$TASKBROKER_TASK_ID.tmp" && mv "$DIR/$TASKBROKER_TASK_ID.tmp" "$DIR/$TASKBROKER_TASK_ID.pid"
    i=0
    while [ ! -e "$DIR/go" ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done
    printf done
"#;

fn task(queue: &str, kind: &str, payload: &str) -> pb::EnqueueRequest {
    pb::EnqueueRequest {
        queue: queue.into(),
        kind: kind.into(),
        payload: payload.as_bytes().to_vec(),
        headers: [("tenant".to_string(), "acme".to_string())].into(),
        max_attempts: Some(1),
        ..Default::default()
    }
}

#[tokio::test]
async fn work_acks_with_stdout_and_nacks_with_stderr() {
    let mut s = common::start().await;
    let script = r#"
        if [ "$TASKBROKER_KIND" = fail ]; then echo "it broke" >&2; exit 3; fi
        printf '%s|%s|%s|%s|%s' "$(cat)" "$TASKBROKER_KIND" "$TASKBROKER_QUEUE" "$TASKBROKER_ATTEMPT" "$TASKBROKER_HEADER_TENANT"
    "#;
    let _worker = work(s.addr, "jobs", &["--concurrency", "2"], script, &[]);
    let ok = s.enqueue_req(task("jobs", "ok", "hello")).await;
    let bad = s.enqueue_req(task("jobs", "fail", "x")).await;
    let done = wait_for(&mut s, &ok.id, pb::TaskState::Succeeded).await;
    assert_eq!(String::from_utf8_lossy(&done.result), "hello|ok|jobs|1|acme");
    let dead = wait_for(&mut s, &bad.id, pb::TaskState::Dead).await;
    assert!(dead.last_error.contains("it broke"), "{}", dead.last_error);
    assert!(dead.last_error.contains("exit status: 3"), "{}", dead.last_error);
}

#[tokio::test]
async fn the_command_sees_the_task_in_taskbroker_variables_and_traceparent() {
    let mut s = common::start().await;
    let script = r#"
        printf '%s\n' "$TASKBROKER_TASK_ID" "$TASKBROKER_KIND" "$TASKBROKER_QUEUE" "$TASKBROKER_ATTEMPT" \
            "$TASKBROKER_CONTENT_TYPE" "$TASKBROKER_HEADER_TENANT" "$TASKBROKER_HEADER_X_REQUEST_ID" \
            "${TRACEPARENT-none}"
    "#;
    let _worker = work(s.addr, "env", &[], script, &[]);
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let traced = pb::EnqueueRequest {
        content_type: "text/plain".into(),
        headers: [
            ("tenant".to_string(), "acme".to_string()),
            ("x-request.id".to_string(), "r-1".to_string()),
            ("traceparent".to_string(), traceparent.to_string()),
        ]
        .into(),
        ..task("env", "env.dump", "")
    };
    let traced = s.enqueue_req(traced).await;
    let plain =
        s.enqueue_req(pb::EnqueueRequest { headers: Default::default(), ..task("env", "plain", "") }).await;

    let done = wait_for(&mut s, &traced.id, pb::TaskState::Succeeded).await;
    let expected = [traced.id.as_str(), "env.dump", "env", "1", "text/plain", "acme", "r-1", traceparent];
    assert_eq!(String::from_utf8_lossy(&done.result).lines().collect::<Vec<_>>(), expected);
    // Header names become upper case with other characters as `_`; no
    // traceparent header, no TRACEPARENT.
    let done = wait_for(&mut s, &plain.id, pb::TaskState::Succeeded).await;
    let expected = [plain.id.as_str(), "plain", "env", "1", "", "", "", "none"];
    assert_eq!(String::from_utf8_lossy(&done.result).lines().collect::<Vec<_>>(), expected);
}

#[tokio::test]
async fn work_extends_the_lease_while_the_command_runs() {
    // The broker's clock moves only when the test says; the worker extends
    // on its own (real) timer, every third of its 3 s lease.
    let mut s = common::start_manual("").await;
    let dir = tempfile::tempdir().unwrap();
    let _worker = work(s.addr, "long", &["--lease", "3s"], HOLD_UNTIL_GO, &[("DIR", dir.path())]);
    let t = s.enqueue_req(task("long", "long.job", "")).await;
    wait_for(&mut s, &t.id, pb::TaskState::Leased).await;
    let deadline = async |s: &common::TestServer| {
        s.broker.get(t.id.parse().unwrap()).await.unwrap().lease.expect("the task is leased").expire_time
    };
    assert_eq!(deadline(&s).await, common::T0 + 3_000);

    // Each step moves the clock 2 s, to 1 s before the deadline; the next
    // extension moves the deadline to 3 s after the new now. Without
    // extensions the second step would pass the first deadline and the task
    // would come back.
    for step in 1..=3u64 {
        s.advance(Duration::from_secs(2)).await;
        let expected = common::T0 + step * 2_000 + 3_000;
        let started = Instant::now();
        while deadline(&s).await != expected {
            assert!(started.elapsed() < WAIT, "step {step}: the lease was not extended to {expected}");
            // An extension changes no state a watch would report: poll, bounded.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let now = s.get(&t.id).await;
        assert_eq!((common::state(&now), now.attempt), (pb::TaskState::Leased, 1), "step {step}");
    }
    std::fs::write(dir.path().join("go"), "").unwrap();
    let done = wait_for(&mut s, &t.id, pb::TaskState::Succeeded).await;
    assert_eq!((done.attempt, done.result.as_slice()), (1, &b"done"[..]), "one delivery, run to the end");
}

#[tokio::test]
async fn sigterm_finishes_running_commands_takes_no_new_task_and_exits_0() {
    let mut s = common::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut worker = work(s.addr, "term", &["--concurrency", "1"], HOLD_UNTIL_GO, &[("DIR", dir.path())]);
    let running = s.enqueue_req(task("term", "held", "")).await;
    wait_for(&mut s, &running.id, pb::TaskState::Leased).await;
    let pid = file_appears(&dir.path().join(format!("{}.pid", running.id))).await;

    worker.sigterm();
    worker.logged("stopping: no new tasks");
    let waiting = s.enqueue_req(task("term", "after-sigterm", "")).await;
    assert!(alive(&pid), "the running command was not killed by SIGTERM");
    assert!(worker.child.try_wait().unwrap().is_none(), "the worker waits for its command");

    std::fs::write(dir.path().join("go"), "").unwrap();
    let done = wait_for(&mut s, &running.id, pb::TaskState::Succeeded).await;
    assert_eq!(done.result, b"done", "the command ran to its end and was acked");
    let status = worker.exits();
    assert!(status.success(), "the worker exits 0 after SIGTERM: {status:?}");
    let left = s.get(&waiting.id).await;
    assert_eq!(
        (common::state(&left), left.attempt),
        (pb::TaskState::Ready, 0),
        "no task taken after SIGTERM"
    );
}

#[tokio::test]
async fn work_kills_a_command_whose_lease_is_lost() {
    let mut s = common::start().await;
    let dir = tempfile::tempdir().unwrap();
    let _worker = work(s.addr, "slow", &[], HOLD_UNTIL_GO, &[("DIR", dir.path())]);
    let t = s.enqueue_req(task("slow", "sleep", "")).await;
    wait_for(&mut s, &t.id, pb::TaskState::Leased).await;
    let pid = file_appears(&dir.path().join(format!("{}.pid", t.id))).await;
    assert!(alive(&pid), "the command runs while the lease holds");
    s.producer.cancel_task(pb::CancelTaskRequest { task_id: t.id.clone() }).await.unwrap();
    // No signal reaches a non-parent when a process dies: poll, bounded.
    let killed = tokio::time::timeout(WAIT, async {
        while alive(&pid) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(killed.is_ok(), "the command was killed after its lease was lost");
    assert_eq!(common::state(&s.get(&t.id).await), pb::TaskState::Canceled);
}

#[tokio::test]
async fn work_cat_streams_a_1_mib_payload_through_and_acks_it_as_the_result() {
    let mut s = common::start().await;
    let _worker = work(s.addr, "echo", &["--lease", "5s"], "cat", &[]);
    // Far over a pipe's buffer (64 KiB): writing all of stdin before reading
    // stdout would block both sides.
    let payload: Vec<u8> = (0..1usize << 20).map(|i| (i % 251) as u8).collect();
    let t = s.enqueue_req(pb::EnqueueRequest { payload: payload.clone(), ..task("echo", "cat", "") }).await;
    let done = wait_for(&mut s, &t.id, pb::TaskState::Succeeded).await;
    assert_eq!(done.attempt, 1, "one run");
    assert!(done.result == payload, "the result is the payload ({} bytes back)", done.result.len());
}

#[tokio::test]
async fn an_oversize_result_ends_dead_with_the_error_and_is_not_run_again() {
    let mut s =
        common::start_with(common::Options { config: "max_payload_bytes = 1000", ..Default::default() })
            .await;
    let dir = tempfile::tempdir().unwrap();
    // Each run appends a line to `runs`; the result is over what the worker
    // (--max-result-bytes) or the broker (max_payload_bytes) accepts.
    let script = r#"echo run >> "$DIR/runs"; head -c "$TASKBROKER_HEADER_SIZE" /dev/zero"#;
    let _worker = work(s.addr, "big", &["--max-result-bytes", "3000"], script, &[("DIR", dir.path())]);
    let sized = |size: &str| pb::EnqueueRequest {
        headers: [("size".to_string(), size.to_string())].into(),
        max_attempts: Some(3),
        ..task("big", "big", "")
    };
    // Over the worker's limit: never sent; over only the broker's: refused.
    for (size, error) in [("5000", "over --max-result-bytes (3000)"), ("2000", "refused by the broker")] {
        let t = s.enqueue_req(sized(size)).await;
        let dead = wait_for(&mut s, &t.id, pb::TaskState::Dead).await;
        assert!(dead.last_error.contains(error), "{size}: {}", dead.last_error);
        assert!(dead.last_error.contains(&format!("result of {size} bytes")), "{}", dead.last_error);
        assert_eq!(dead.attempt, 1, "{size}: run once, not retried");
    }
    let runs = std::fs::read_to_string(dir.path().join("runs")).unwrap();
    assert_eq!(runs.lines().count(), 2, "each command ran once");
}
