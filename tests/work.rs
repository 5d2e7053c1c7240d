//! `taskbroker work`: the real binary as a worker against a real server.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use taskbroker::pb;
use tokio_stream::StreamExt;

/// Kills the worker process when the test ends, whatever happens.
struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn work(addr: std::net::SocketAddr, queue: &str, script: &str) -> Worker {
    let child = Command::new(env!("CARGO_BIN_EXE_taskbroker"))
        .args(["work", "--server", &format!("http://{addr}"), "--queue", queue, "--concurrency", "2"])
        .args(["--lease", "5s", "--", "sh", "-c", script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start taskbroker work");
    Worker(child)
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
    tokio::time::timeout(Duration::from_secs(20), follow).await.expect("state reached in time")
}

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
    let _worker = work(s.addr, "jobs", script);
    let ok = s.enqueue_req(task("jobs", "ok", "hello")).await;
    let bad = s.enqueue_req(task("jobs", "fail", "x")).await;
    let done = wait_for(&mut s, &ok.id, pb::TaskState::Succeeded).await;
    assert_eq!(String::from_utf8_lossy(&done.result), "hello|ok|jobs|1|acme");
    let dead = wait_for(&mut s, &bad.id, pb::TaskState::Dead).await;
    assert!(dead.last_error.contains("it broke"), "{}", dead.last_error);
    assert!(dead.last_error.contains("exit status: 3"), "{}", dead.last_error);
}

#[tokio::test]
async fn work_kills_a_command_whose_lease_is_lost() {
    let mut s = common::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let script = format!("echo $$ > {}.tmp && mv {0}.tmp {0} && exec sleep 60", pidfile.display());
    let _worker = work(s.addr, "slow", &script);
    let t = s.enqueue_req(task("slow", "sleep", "")).await;
    wait_for(&mut s, &t.id, pb::TaskState::Leased).await;
    let pid = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(pid) = std::fs::read_to_string(&pidfile) {
                return pid.trim().to_string();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the command started");
    let alive =
        |pid: &str| Command::new("kill").args(["-0", pid]).stderr(Stdio::null()).status().unwrap().success();
    assert!(alive(&pid), "the command runs while the lease holds");
    s.producer.cancel_task(pb::CancelTaskRequest { task_id: t.id.clone() }).await.unwrap();
    // No signal reaches a non-parent when a process dies: poll, bounded.
    let killed = tokio::time::timeout(Duration::from_secs(10), async {
        while alive(&pid) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(killed.is_ok(), "the command was killed after its lease was lost");
    assert_eq!(common::state(&s.get(&t.id).await), pb::TaskState::Canceled);
}
