//! The `taskbroker` command line as a user runs it: the real binary, started
//! with `std::process::Command`, talked to through its own subcommands.
#![cfg(unix)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use tempfile::TempDir;

#[path = "common/env.rs"]
mod env;

const BIN: &str = env!("CARGO_BIN_EXE_taskbroker");
/// Bound on one short command (and on a server's start).
const TIMEOUT: Duration = Duration::from_secs(30);
/// How soon an idle `serve` must exit after SIGTERM.
const PROMPT_EXIT: Duration = Duration::from_secs(5);
/// The exit code for bad configuration (EX_USAGE).
const EXIT_CONFIG: i32 = 64;
/// A well-formed ULID no server has handed out.
const UNKNOWN_ID: &str = "01ARZ3NDEKTSV4RRFFQ69G5FAV";

/// The binary with a clean environment (no `TASKBROKER_*` variable of the
/// caller's), run in `cwd` (so a stray default data directory lands in a temp
/// dir, not the source tree).
fn taskbroker(cwd: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    env::clear(&mut cmd);
    cmd.current_dir(cwd).stdin(Stdio::null());
    cmd
}

/// Runs a command to completion (killed and failed after [`TIMEOUT`]).
fn run(mut cmd: Command) -> Output {
    finish(cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn taskbroker"))
}

/// Waits for a child started with piped stdout and stderr (killed and failed
/// after [`TIMEOUT`]).
fn finish(child: Child) -> Output {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(TIMEOUT) {
        Ok(output) => output.expect("wait for taskbroker"),
        Err(_) => {
            // Not reaped yet, so the pid is still this child's.
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            panic!("taskbroker (pid {pid}) did not finish within {TIMEOUT:?}");
        }
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts success and returns stdout.
fn ok(o: &Output) -> String {
    assert!(o.status.success(), "failed with {}: stdout {:?} stderr {:?}", o.status, stdout(o), stderr(o));
    stdout(o)
}

/// A string field of a one-line JSON object (enough for the CLI's task output).
fn json_str(json: &str, field: &str) -> String {
    let key = format!("\"{field}\":\"");
    let start = json.find(&key).unwrap_or_else(|| panic!("no string field {field:?} in {json}")) + key.len();
    let len = json[start..].find('"').unwrap_or_else(|| panic!("unterminated {field:?} in {json}"));
    json[start..start + len].to_owned()
}

/// A number field of a one-line JSON object.
fn json_num(json: &str, field: &str) -> u64 {
    let key = format!("\"{field}\":");
    let start = json.find(&key).unwrap_or_else(|| panic!("no field {field:?} in {json}")) + key.len();
    let digits: String = json[start..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().unwrap_or_else(|_| panic!("{field:?} is not a number in {json}"))
}

/// A running `taskbroker serve`. Dropping it kills the process, so a failed
/// assertion never leaves a broker behind; on a panic it also prints the log.
struct Serve {
    child: Child,
    /// `host:port` from the `listening on` line.
    addr: String,
    /// stdout lines after the `listening on` one; disconnects when stdout closes (the process ended).
    lines: Receiver<String>,
    log: PathBuf,
}

impl Serve {
    /// Spawns `cmd` (a `serve` command), stderr to `log`, and waits for `listening on ADDR`.
    fn start(mut cmd: Command, log: &Path) -> Serve {
        let stderr = std::fs::File::create(log).expect("create the log");
        let mut child = cmd.stdout(Stdio::piped()).stderr(stderr).spawn().expect("spawn taskbroker serve");
        let out = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut serve = Serve { child, addr: String::new(), lines, log: log.to_owned() };
        let deadline = Instant::now() + TIMEOUT;
        loop {
            match serve.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    if let Some(addr) = line.strip_prefix("listening on ") {
                        serve.addr = addr.trim().to_owned();
                        return serve;
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!("no `listening on` line within {TIMEOUT:?}"),
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("serve exited before listening: {:?}", serve.child.wait())
                }
            }
        }
    }

    fn server(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sends SIGTERM and waits (bounded by [`PROMPT_EXIT`]) for the exit status.
    fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().expect("run kill");
        assert!(sent.success(), "kill -TERM {pid} failed");
        let deadline = Instant::now() + PROMPT_EXIT;
        // stdout closes when the process ends; then `wait` returns at once.
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(_) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!("serve still running {PROMPT_EXIT:?} after SIGTERM"),
            }
        }
        self.child.wait().expect("wait for serve")
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail = &log[log.len().saturating_sub(8000)..];
            eprintln!("--- taskbroker serve log ({}), tail ---\n{tail}", self.log.display());
        }
    }
}

/// `serve --storage memory --listen 127.0.0.1:0` in a temp dir.
fn serve_memory(dir: &TempDir) -> Serve {
    let mut cmd = taskbroker(dir.path());
    cmd.args(["serve", "--storage", "memory", "--listen", "127.0.0.1:0"]);
    Serve::start(cmd, &dir.path().join("serve.log"))
}

/// One client round trip (`get` of an unknown id answers NotFound): the broker
/// is past start-up and serving. Tests send SIGTERM only after this; see
/// `sigterm_right_after_the_listening_line_exits_0` for why.
fn round_trip(dir: &TempDir, serve: &Serve) {
    let mut cmd = taskbroker(dir.path());
    cmd.args(["get", UNKNOWN_ID, "--server", &serve.server()]);
    let out = run(cmd);
    assert!(stderr(&out).contains("NotFound"), "the broker answers: {}", stderr(&out));
}

// ---------------------------------------------------------------------------
// Configuration.
// ---------------------------------------------------------------------------

#[test]
fn config_example_passes_config_check() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = taskbroker(dir.path());
    cmd.args(["config", "example"]);
    let example = ok(&run(cmd));
    assert!(example.contains("[queues.default]"), "the example shows the default queue:\n{example}");
    let file = dir.path().join("taskbroker.toml");
    std::fs::write(&file, &example).unwrap();

    let mut cmd = taskbroker(dir.path());
    cmd.args(["config", "check"]).arg(&file);
    let out = ok(&run(cmd));
    assert!(out.contains("ok"), "config check says ok: {out:?}");
}

#[test]
fn config_check_names_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[queues.x]\nmax_attempts = 0\n").unwrap();
    let mut cmd = taskbroker(dir.path());
    cmd.args(["config", "check"]).arg(&file);
    let out = run(cmd);
    assert!(!out.status.success(), "config check accepted max_attempts = 0");
    assert!(stderr(&out).contains("queues.x.max_attempts"), "stderr: {}", stderr(&out));
}

/// Runs `serve --config FILE` (memory, port 0, so a wrongly accepted file
/// would not touch disk or a fixed port) and expects exit 64; returns stderr.
fn serve_rejects_config(toml: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("taskbroker.toml");
    std::fs::write(&file, toml).unwrap();
    let mut cmd = taskbroker(dir.path());
    cmd.args(["serve", "--storage", "memory", "--listen", "127.0.0.1:0", "--config"]).arg(&file);
    let out = run(cmd);
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "serve with {toml:?}: stderr {}", stderr(&out));
    assert!(stdout(&out).is_empty(), "nothing served: {}", stdout(&out));
    stderr(&out)
}

#[test]
fn serve_exits_64_on_an_unknown_config_field() {
    let err = serve_rejects_config("listen = \"127.0.0.1:0\"\nbogus_field = 1\n");
    assert!(err.contains("bogus_field"), "stderr names the field: {err}");
}

#[test]
fn serve_exits_64_on_max_attempts_zero() {
    let err = serve_rejects_config("[queues.x]\nmax_attempts = 0\n");
    assert!(err.contains("queues.x.max_attempts"), "stderr names the setting: {err}");
}

#[test]
fn serve_exits_64_on_a_bad_listen_address() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = taskbroker(dir.path());
    cmd.args(["serve", "--storage", "memory", "--listen", "nonsense"]);
    let out = run(cmd);
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "stderr: {}", stderr(&out));
    assert!(stderr(&out).contains("listen"), "stderr names the setting: {}", stderr(&out));
}

#[test]
fn serve_exits_64_on_a_bad_config_named_by_env() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("taskbroker.toml");
    std::fs::write(&file, "[queues.x]\nmax_attempts = 0\n").unwrap();
    let mut cmd = taskbroker(dir.path());
    cmd.args(["serve", "--storage", "memory", "--listen", "127.0.0.1:0"]).env("TASKBROKER_CONFIG", &file);
    let out = run(cmd);
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "stderr: {}", stderr(&out));
    assert!(stderr(&out).contains("queues.x.max_attempts"), "stderr: {}", stderr(&out));
}

// ---------------------------------------------------------------------------
// Client subcommands against a served broker.
// ---------------------------------------------------------------------------

#[test]
fn enqueue_get_cancel_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let mut serve = serve_memory(&dir);
    let server = serve.server();
    let client = |args: &[&str]| {
        let mut cmd = taskbroker(dir.path());
        cmd.args(args).args(["--server", &server]);
        run(cmd)
    };

    let enqueued =
        ok(&client(&["enqueue", "--queue", "q", "--kind", "k", "--payload", "hello", "--priority", "5"]));
    assert_eq!(enqueued.lines().count(), 1, "one JSON line: {enqueued:?}");
    let id = json_str(&enqueued, "id");
    assert_eq!(id.len(), 26, "a ULID: {id:?}");
    assert_eq!(json_str(&enqueued, "queue"), "q");
    assert_eq!(json_str(&enqueued, "kind"), "k");
    assert_eq!(json_str(&enqueued, "payload"), "", "Enqueue answers without the payload");
    assert_eq!(json_str(&enqueued, "state"), "TASK_STATE_READY");
    assert_eq!(json_num(&enqueued, "priority"), 5);

    let got = ok(&client(&["get", &id]));
    assert_eq!(json_str(&got, "id"), id);
    assert_eq!(json_str(&got, "state"), "TASK_STATE_READY");
    assert_eq!(json_str(&got, "payload"), "hello");
    assert_eq!(json_num(&got, "priority"), 5);

    // A task that waits on it: WAITING until it ends; canceled with it.
    let waiting =
        ok(&client(&["enqueue", "--queue", "w", "--kind", "k", "--depends-on", &id, "--ttl", "1h"]));
    assert_eq!(json_str(&waiting, "state"), "TASK_STATE_WAITING");
    let waiting_id = json_str(&waiting, "id");

    let canceled = ok(&client(&["cancel", &id]));
    assert_eq!(json_str(&canceled, "id"), id);
    assert_eq!(json_str(&canceled, "state"), "TASK_STATE_CANCELED");
    let got = ok(&client(&["get", &id]));
    assert_eq!(json_str(&got, "state"), "TASK_STATE_CANCELED");
    let dependent = ok(&client(&["get", &waiting_id]));
    assert_eq!(json_str(&dependent, "state"), "TASK_STATE_CANCELED", "the cancel cascaded");

    let missing = client(&["get", UNKNOWN_ID]);
    assert!(!missing.status.success(), "get of an unknown id: {}", stdout(&missing));
    assert!(stderr(&missing).contains("NotFound"), "stderr: {}", stderr(&missing));
    assert!(stdout(&missing).is_empty(), "no task printed: {}", stdout(&missing));

    let bad = client(&["enqueue", "--queue", "q", "--kind", ""]);
    assert!(!bad.status.success(), "enqueue without a kind: {}", stdout(&bad));
    let err = stderr(&bad);
    assert!(err.contains("InvalidArgument") && err.contains("kind"), "stderr names the field: {err}");

    // TASKBROKER_SERVER stands in for --server.
    let mut cmd = taskbroker(dir.path());
    cmd.args(["enqueue", "--kind", "k2"]).env("TASKBROKER_SERVER", &server);
    let out = ok(&run(cmd));
    assert_eq!(json_str(&out, "kind"), "k2");
    assert_eq!(json_str(&out, "queue"), "default", "unrouted tasks land in the default queue");

    let status = serve.terminate();
    assert_eq!(status.code(), Some(0), "serve exits 0 on SIGTERM: {status:?}");
}

#[test]
fn client_without_a_server_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut cmd = taskbroker(dir.path());
    cmd.args(["get", UNKNOWN_ID, "--server", &format!("http://127.0.0.1:{port}")]);
    let out = run(cmd);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("cannot connect"), "stderr: {}", stderr(&out));
}

// ---------------------------------------------------------------------------
// Environment overrides and signals.
// ---------------------------------------------------------------------------

#[test]
fn env_vars_configure_serve_without_flags() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = taskbroker(dir.path());
    cmd.arg("serve").env("TASKBROKER_STORAGE", "memory").env("TASKBROKER_LISTEN", "127.0.0.1:0");
    let mut serve = Serve::start(cmd, &dir.path().join("serve.log"));
    assert!(serve.addr.starts_with("127.0.0.1:") && !serve.addr.ends_with(":0"), "addr {}", serve.addr);

    let mut cmd = taskbroker(dir.path());
    cmd.args(["enqueue", "--kind", "k", "--payload", "via env"]).env("TASKBROKER_SERVER", serve.server());
    let out = ok(&run(cmd));
    let mut get = taskbroker(dir.path());
    get.args(["get", &json_str(&out, "id")]).env("TASKBROKER_SERVER", serve.server());
    assert_eq!(json_str(&ok(&run(get)), "payload"), "via env");

    assert_eq!(serve.terminate().code(), Some(0));
    // Memory storage: no default data directory appeared.
    assert!(!dir.path().join("taskbroker-data").exists(), "memory storage wrote a data directory");
}

#[test]
fn env_data_dir_holds_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("custom-data");
    let mut cmd = taskbroker(dir.path());
    cmd.arg("serve").env("TASKBROKER_DATA_DIR", &data).env("TASKBROKER_LISTEN", "127.0.0.1:0");
    let mut serve = Serve::start(cmd, &dir.path().join("serve.log"));
    assert!(
        data.join("log-00000000000000000001.tbl").is_file(),
        "embedded storage (the default) opened in TASKBROKER_DATA_DIR"
    );
    assert_eq!(serve.terminate().code(), Some(0));
    assert!(!dir.path().join("taskbroker-data").exists(), "the default data directory was not used");
}

#[test]
fn flags_override_env_and_env_overrides_the_file() {
    let dir = tempfile::tempdir().unwrap();
    // The file alone would fail (bad listen); the env var fixes listen; the
    // flag beats the env var's bad storage value.
    let file = dir.path().join("taskbroker.toml");
    std::fs::write(&file, "listen = \"nonsense\"\nstorage = \"embedded\"\n").unwrap();
    let mut cmd = taskbroker(dir.path());
    cmd.args(["serve", "--storage", "memory"])
        .env("TASKBROKER_CONFIG", &file)
        .env("TASKBROKER_LISTEN", "127.0.0.1:0")
        .env("TASKBROKER_STORAGE", "not-a-backend");
    let mut serve = Serve::start(cmd, &dir.path().join("serve.log"));
    round_trip(&dir, &serve);
    assert_eq!(serve.terminate().code(), Some(0));
    assert!(!dir.path().join("taskbroker-data").exists(), "--storage memory won over the file");

    // Without the env override the file's bad listen address is reported.
    let mut cmd = taskbroker(dir.path());
    cmd.args(["serve", "--storage", "memory", "--config"]).arg(&file);
    let out = run(cmd);
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "stderr: {}", stderr(&out));
    assert!(stderr(&out).contains("listen"), "stderr: {}", stderr(&out));
}

#[test]
fn sigterm_stops_serve_promptly_with_exit_0() {
    let dir = tempfile::tempdir().unwrap();
    let mut serve = serve_memory(&dir);
    round_trip(&dir, &serve);
    let started = Instant::now();
    let status = serve.terminate();
    assert_eq!(status.code(), Some(0), "serve exits 0 on SIGTERM: {status:?}");
    eprintln!("serve stopped {:?} after SIGTERM", started.elapsed());
}

/// A supervisor may stop the broker as soon as it announced itself. Several
/// brokers at once, so the start-up race shows on an otherwise idle machine.
#[test]
fn sigterm_right_after_the_listening_line_exits_0() {
    let starters: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(|| {
                let mut bad = Vec::new();
                for _ in 0..15 {
                    let dir = tempfile::tempdir().unwrap();
                    let mut serve = serve_memory(&dir);
                    let status = serve.terminate();
                    if status.code() != Some(0) {
                        bad.push(status.to_string());
                    }
                }
                bad
            })
        })
        .collect();
    let bad: Vec<String> = starters.into_iter().flat_map(|t| t.join().unwrap()).collect();
    assert!(bad.is_empty(), "{} of 60 brokers did not exit 0 on SIGTERM: {:?}", bad.len(), bad);
}

/// A worker waiting in a long-poll Lease must not hold up shutdown: it has
/// nothing to finish, so it should get its (empty) answer and serve exit.
#[test]
fn sigterm_with_a_waiting_worker_exits_promptly() {
    use taskbroker::pb;
    use taskbroker::pb::worker_service_client::WorkerServiceClient;

    let dir = tempfile::tempdir().unwrap();
    let mut serve = serve_memory(&dir);
    let server = serve.server();
    let (connected, lease_done) = mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let mut worker = WorkerServiceClient::connect(server).await.expect("connect");
            let _ = connected.send(None);
            let request = pb::LeaseRequest {
                queues: vec!["idle".into()],
                wait: Some(prost_types::Duration { seconds: 30, nanos: 0 }),
                ..Default::default()
            };
            let reply = worker.lease(request).await.map(|r| r.into_inner().tasks.len());
            let _ = connected.send(Some(reply));
        });
    });
    assert!(matches!(lease_done.recv_timeout(TIMEOUT), Ok(None)), "the worker connected");
    // Nothing observable says the server has parked the call; give the
    // request time to arrive (this is the one sleep of these tests).
    std::thread::sleep(Duration::from_millis(500));

    let started = Instant::now();
    let status = serve.terminate();
    assert_eq!(status.code(), Some(0), "serve exits 0 on SIGTERM: {status:?}");
    let reply = lease_done.recv_timeout(TIMEOUT).expect("the long-poll ended").expect("its reply");
    assert!(
        matches!(reply, Ok(0)),
        "the waiting Lease answers empty at shutdown, got {reply:?} after {:?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------
// Client commands that follow a task, and enqueue's flags.
// ---------------------------------------------------------------------------

/// A `taskbroker work` process; killed when dropped.
struct Work(Child);

impl Drop for Work {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A worker on `queue` that succeeds with the payload as its result, except
/// for tasks of kind `fail`, which fail, and of kind `cancel`, which cancel
/// themselves (with `taskbroker cancel`).
fn work(dir: &TempDir, serve: &Serve, queue: &str) -> Work {
    let script = r#"
        case "$TASKBROKER_KIND" in
            fail) echo "it broke" >&2; exit 1 ;;
            cancel) exec "$TB" cancel "$TASKBROKER_TASK_ID" --server "$TB_SERVER" ;;
            *) cat ;;
        esac"#;
    let mut cmd = taskbroker(dir.path());
    cmd.args(["work", "--server", &serve.server(), "--queue", queue, "--", "sh", "-c", script])
        .env("TB", BIN)
        .env("TB_SERVER", serve.server())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Work(cmd.spawn().expect("spawn taskbroker work"))
}

/// One JSON object per line.
fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}")))
        .collect()
}

/// The one JSON object a client command printed.
fn json_task(out: &Output) -> serde_json::Value {
    let mut lines = json_lines(&ok(out));
    assert_eq!(lines.len(), 1, "one task printed: {lines:?}");
    lines.remove(0)
}

fn time_of(task: &serde_json::Value, field: &str) -> std::time::SystemTime {
    let text = task[field].as_str().unwrap_or_else(|| panic!("no {field} in {task}"));
    humantime::parse_rfc3339(text).unwrap_or_else(|e| panic!("{field} {text:?}: {e}"))
}

#[test]
fn enqueue_wait_prints_the_final_state_and_exits_0_only_when_it_succeeded() {
    let dir = tempfile::tempdir().unwrap();
    let serve = serve_memory(&dir);
    let _worker = work(&dir, &serve, "waited");
    let client = |args: &[&str]| {
        let mut cmd = taskbroker(dir.path());
        cmd.args(args).args(["--server", &serve.server()]);
        cmd
    };

    let out = run(client(&["enqueue", "--queue", "waited", "--kind", "ok", "--payload", "hi", "--wait"]));
    let done = json_task(&out);
    assert_eq!((done["state"].as_str(), done["result"].as_str()), (Some("TASK_STATE_SUCCEEDED"), Some("hi")));

    let args = ["enqueue", "--queue", "waited", "--kind", "fail", "--max-attempts", "1", "--wait"];
    let out = run(client(&args));
    assert_eq!(out.status.code(), Some(1), "a DEAD task: stdout {} stderr {}", stdout(&out), stderr(&out));
    let dead = &json_lines(&stdout(&out))[0];
    assert_eq!(dead["state"], "TASK_STATE_DEAD");
    assert!(dead["last_error"].as_str().unwrap().contains("it broke"), "{dead}");
    assert!(stderr(&out).contains("TASK_STATE_DEAD"), "stderr says how it ended: {}", stderr(&out));

    // CANCELED: the task cancels itself while it runs.
    let out = run(client(&["enqueue", "--queue", "waited", "--kind", "cancel", "--wait"]));
    assert_eq!(
        out.status.code(),
        Some(1),
        "a CANCELED task: stdout {} stderr {}",
        stdout(&out),
        stderr(&out)
    );
    assert_eq!(json_lines(&stdout(&out))[0]["state"], "TASK_STATE_CANCELED");
}

#[test]
fn watch_prints_every_state_until_the_task_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let serve = serve_memory(&dir);
    let client = |args: &[&str]| {
        let mut cmd = taskbroker(dir.path());
        cmd.args(args).args(["--server", &serve.server()]);
        cmd
    };
    let states = |printed: &str| -> Vec<String> {
        json_lines(printed).iter().map(|t| t["state"].as_str().unwrap().to_owned()).collect()
    };
    let ok_task =
        json_task(&run(client(&["enqueue", "--queue", "watched", "--kind", "ok", "--payload", "x"])));
    let dying = ["enqueue", "--queue", "watched", "--kind", "fail", "--max-attempts", "1"];
    let dying = json_task(&run(client(&dying)));

    // Both watches start while their tasks wait; each prints the current
    // state, READY, before any worker runs; then a worker runs both tasks.
    let mut ok_watch = Following::start(client(&["watch", ok_task["id"].as_str().unwrap()]));
    let mut dying_watch = Following::start(client(&["watch", dying["id"].as_str().unwrap()]));
    for w in [&mut ok_watch, &mut dying_watch] {
        assert_eq!(json_lines(&w.line())[0]["state"], "TASK_STATE_READY");
    }
    let _worker = work(&dir, &serve, "watched");

    let (status, rest) = ok_watch.finish();
    assert_eq!(states(&rest), ["TASK_STATE_LEASED", "TASK_STATE_SUCCEEDED"]);
    assert_eq!(status.code(), Some(0));
    let (status, rest) = dying_watch.finish();
    assert_eq!(states(&rest), ["TASK_STATE_LEASED", "TASK_STATE_DEAD"]);
    assert_eq!(status.code(), Some(1), "a watch that ends DEAD exits 1");
}

/// A client command whose stdout is read line by line as it runs; killed
/// when dropped.
struct Following {
    child: Child,
    lines: Receiver<String>,
}

impl Following {
    fn start(mut cmd: Command) -> Following {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("spawn taskbroker");
        let out = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Following { child, lines }
    }

    /// The next line (within [`TIMEOUT`]).
    fn line(&mut self) -> String {
        self.lines.recv_timeout(TIMEOUT).unwrap_or_else(|e| panic!("no line within {TIMEOUT:?}: {e}"))
    }

    /// The remaining lines once stdout closes (within [`TIMEOUT`]), and the exit status.
    fn finish(mut self) -> (ExitStatus, String) {
        let deadline = Instant::now() + TIMEOUT;
        let mut rest = String::new();
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => rest.push_str(&(line + "\n")),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!("still running after {TIMEOUT:?}; printed {rest:?}"),
            }
        }
        (self.child.wait().expect("wait for taskbroker"), rest)
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn enqueue_flags_shape_the_task() {
    let dir = tempfile::tempdir().unwrap();
    let serve = serve_memory(&dir);
    let client = |args: &[&str]| {
        let mut cmd = taskbroker(dir.path());
        cmd.args(args).args(["--server", &serve.server()]);
        cmd
    };

    // --payload-file, with a file and with "-" (stdin); --header, repeated;
    // --content-type; --max-attempts.
    let file = dir.path().join("payload.txt");
    std::fs::write(&file, "from a file\nline two").unwrap();
    let mut cmd = client(&["enqueue", "--kind", "k", "--content-type", "text/plain", "--max-attempts", "7"]);
    cmd.args(["--header", "tenant=acme", "--header", "trace=a=b", "--payload-file"]).arg(&file);
    let t = json_task(&run(cmd));
    let stored =
        |id: &serde_json::Value| json_task(&run(client(&["get", id.as_str().unwrap()])))["payload"].clone();
    assert_eq!(stored(&t["id"]), "from a file\nline two");
    assert_eq!(
        t["headers"],
        serde_json::json!({"tenant": "acme", "trace": "a=b"}),
        "NAME=VALUE splits at the first ="
    );
    assert_eq!((t["content_type"].as_str(), t["max_attempts"].as_u64()), (Some("text/plain"), Some(7)));

    let mut cmd = client(&["enqueue", "--kind", "k", "--payload-file", "-"]);
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"from stdin").unwrap();
    assert_eq!(stored(&json_task(&finish(child))["id"]), "from stdin");

    let bad = run(client(&["enqueue", "--kind", "k", "--header", "no-equals-sign"]));
    assert!(!bad.status.success() && stderr(&bad).contains("NAME=VALUE"), "stderr: {}", stderr(&bad));

    // --delay: SCHEDULED, due that long after its creation.
    let t = json_task(&run(client(&["enqueue", "--queue", "later", "--kind", "k", "--delay", "10s"])));
    assert_eq!(t["state"], "TASK_STATE_SCHEDULED");
    let due = time_of(&t, "scheduled_time").duration_since(time_of(&t, "create_time")).unwrap();
    assert_eq!(due, Duration::from_secs(10), "{t}");

    // --dedup-key: the unfinished task of the same queue comes back.
    let first = json_task(&run(client(&["enqueue", "--queue", "d", "--kind", "k", "--dedup-key", "once"])));
    let again = json_task(&run(client(&["enqueue", "--queue", "d", "--kind", "k", "--dedup-key", "once"])));
    assert_eq!((first["dedup_key"].as_str(), again["id"].as_str()), (Some("once"), first["id"].as_str()));
    let other = json_task(&run(client(&["enqueue", "--queue", "d", "--kind", "k", "--dedup-key", "twice"])));
    assert_ne!(other["id"], first["id"]);
}

#[test]
fn log_format_json_writes_one_json_object_per_line() {
    for how in ["flag", "env"] {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = taskbroker(dir.path());
        cmd.args(["serve", "--storage", "memory", "--listen", "127.0.0.1:0"]).env("RUST_LOG", "info");
        match how {
            "flag" => cmd.args(["--log-format", "json"]),
            _ => cmd.env("TASKBROKER_LOG_FORMAT", "json"),
        };
        let log = dir.path().join("serve.log");
        let mut serve = Serve::start(cmd, &log);
        assert_eq!(serve.terminate().code(), Some(0));
        let lines = json_lines(&std::fs::read_to_string(&log).unwrap());
        assert!(
            lines.iter().all(|l| l["level"].is_string() && l["timestamp"].is_string()),
            "{how}: {lines:?}"
        );
        let messages: Vec<&str> = lines.iter().filter_map(|l| l["fields"]["message"].as_str()).collect();
        assert!(messages.contains(&"ready") && messages.contains(&"shutting down"), "{how}: {messages:?}");
    }
}

// ---------------------------------------------------------------------------
// Operating queues: queues, queue pause|resume|purge|redrive, tasks, route, reload.
// ---------------------------------------------------------------------------

#[test]
fn queue_commands_show_pause_purge_and_redrive() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("taskbroker.toml");
    std::fs::write(
        &config,
        "[queues.mail]\nmax_attempts = 1\n[[routes]]\nkind = \"email.*\"\nqueue = \"mail\"\n",
    )
    .unwrap();
    let mut cmd = taskbroker(dir.path());
    cmd.args(["serve", "--storage", "memory", "--listen", "127.0.0.1:0", "--config"]).arg(&config);
    let mut serve = Serve::start(cmd, &dir.path().join("serve.log"));
    let server = serve.server();
    let client = |args: &[&str]| {
        let mut cmd = taskbroker(dir.path());
        cmd.args(args).args(["--server", &server]);
        run(cmd)
    };
    for _ in 0..3 {
        ok(&client(&["enqueue", "--kind", "email.send", "--payload", "x"]));
    }

    let table = ok(&client(&["queues"]));
    let mail =
        table.lines().find(|l| l.starts_with("mail ")).unwrap_or_else(|| panic!("a mail row: {table}"));
    let cols: Vec<&str> = mail.split_whitespace().collect();
    assert_eq!(&cols[..5], ["mail", "no", "3", "0", "0"], "queue, paused, ready, scheduled, leased: {table}");
    let json = ok(&client(&["queues", "--json"]));
    let mail = json.lines().find(|l| l.contains("\"name\":\"mail\"")).expect("mail as JSON");
    let mail: serde_json::Value = serde_json::from_str(mail).unwrap();
    assert_eq!(mail["counts"]["ready"], 3);
    assert_eq!(mail["totals"]["enqueued"], 3);

    let paused: serde_json::Value = serde_json::from_str(&ok(&client(&["queue", "pause", "mail"]))).unwrap();
    assert_eq!(paused["paused"], true);
    let resumed: serde_json::Value =
        serde_json::from_str(&ok(&client(&["queue", "resume", "mail"]))).unwrap();
    assert_eq!(resumed["paused"], false);

    let routed: serde_json::Value =
        serde_json::from_str(&ok(&client(&["route", "--kind", "email.send"]))).unwrap();
    assert_eq!((routed["queue"].as_str(), routed["route_index"].as_i64()), (Some("mail"), Some(0)));

    // Every task dies (max_attempts = 1): `work` runs a failing command, one
    // task at a time in order, so when a fourth task enqueued with --wait
    // has died, so have the three before it.
    let mut work = taskbroker(dir.path());
    work.args(["work", "--queue", "mail", "--server", &server, "--", "false"]);
    let mut worker = work.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn work");
    let waited = client(&["enqueue", "--kind", "email.send", "--wait"]);
    let _ = worker.kill();
    let _ = worker.wait();
    assert_eq!(json_str(&stdout(&waited), "state"), "TASK_STATE_DEAD", "{}", stderr(&waited));
    let dead = ok(&client(&["tasks", "mail", "--state", "dead"]));
    assert_eq!(dead.lines().count(), 5, "a header and four dead tasks: {dead}");
    let dead_json = ok(&client(&["tasks", "mail", "--state", "dead", "--json", "--limit", "1"]));
    assert_eq!(dead_json.lines().count(), 1, "--limit: {dead_json}");
    assert!(!json_str(&dead_json, "last_error").is_empty(), "dead tasks show last_error: {dead_json}");

    let redriven = ok(&client(&["queue", "redrive", "mail", "--id", &json_str(&dead_json, "id")]));
    assert!(redriven.contains("\"redriven\":1"), "{redriven}");

    let refused = client(&["queue", "purge", "mail", "--state", "ready"]);
    assert!(!refused.status.success(), "purge asks first; without a terminal it needs --yes");
    assert!(stderr(&refused).contains("--yes"), "{}", stderr(&refused));
    let purged = ok(&client(&["queue", "purge", "mail", "--state", "ready", "--state", "dead", "--yes"]));
    assert!(purged.contains("\"purged\":4"), "1 redriven + 3 dead: {purged}");

    std::fs::write(&config, "[queues.mail]\nmax_attempts = 4\n").unwrap();
    let reloaded = ok(&client(&["reload"]));
    assert!(reloaded.contains("queues.mail.max_attempts: 1 -> 4"), "{reloaded}");
    let missing = client(&["queue", "pause", "nowhere"]);
    assert!(stderr(&missing).contains("NotFound"), "{}", stderr(&missing));
    assert_eq!(serve.terminate().code(), Some(0));
}

// ---------------------------------------------------------------------------
// Schedules: schedules, schedules trigger|delete, bad [[schedules]].
// ---------------------------------------------------------------------------

#[test]
fn schedules_lists_next_runs_and_triggers_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("taskbroker.toml");
    std::fs::write(
        &config,
        "[[schedules]]\nname = \"nightly-report\"\ncron = \"0 3 * * *\"\ntimezone = \"Europe/Berlin\"\n\
         queue = \"reports\"\nkind = \"report.build\"\npayload = '{\"scope\":\"all\"}'\n\
         [[schedules]]\nname = \"tick\"\nevery = \"15m\"\nkind = \"tick\"\ncatch_up = \"none\"\n",
    )
    .unwrap();
    let mut cmd = taskbroker(dir.path());
    cmd.args(["serve", "--storage", "memory", "--listen", "127.0.0.1:0", "--config"]).arg(&config);
    let mut serve = Serve::start(cmd, &dir.path().join("serve.log"));
    let server = serve.server();
    let client = |args: &[&str]| {
        let mut cmd = taskbroker(dir.path());
        cmd.args(args).args(["--server", &server]);
        run(cmd)
    };

    let table = ok(&client(&["schedules"]));
    assert!(table.starts_with("NAME "), "a header: {table}");
    let row = table.lines().find(|l| l.starts_with("nightly-report ")).unwrap_or_else(|| panic!("{table}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[1], "config", "{table}");
    // 03:00 in Berlin is 01:00 or 02:00 UTC, whatever the date.
    assert!(cols[2].ends_with("T01:00:00Z") || cols[2].ends_with("T02:00:00Z"), "next run: {table}");
    let tick = table.lines().find(|l| l.starts_with("tick ")).unwrap_or_else(|| panic!("{table}"));
    assert!(tick.contains("every_15m") && tick.contains(" none "), "{tick}");

    let json = ok(&client(&["schedules", "--json"]));
    let nightly: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!(nightly["name"], "nightly-report");
    assert_eq!(nightly["timezone"], "Europe/Berlin");
    assert_eq!(nightly["payload"], "{\"scope\":\"all\"}");
    assert!(nightly["next_run_time"].is_string() && nightly["last_run_time"].is_null(), "{nightly}");

    let task = ok(&client(&["schedules", "trigger", "nightly-report"]));
    assert_eq!(json_str(&task, "queue"), "reports");
    assert_eq!(json_str(&task, "state"), "TASK_STATE_READY");
    let refused = client(&["schedules", "delete", "nightly-report"]);
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("config file"), "{}", stderr(&refused));
    let unknown = client(&["schedules", "trigger", "nope"]);
    assert!(stderr(&unknown).contains("NotFound"), "{}", stderr(&unknown));
    assert_eq!(serve.terminate().code(), Some(0));
}

#[test]
fn serve_exits_64_on_a_bad_schedule() {
    let err = serve_rejects_config("[[schedules]]\nname = \"x\"\ncron = \"0 3 * *\"\nkind = \"k\"\n");
    assert!(err.contains("schedules[0].cron"), "stderr names the setting: {err}");
    let err = serve_rejects_config(
        "[[schedules]]\nname = \"x\"\nevery = \"1m\"\nkind = \"k\"\ncatch_up = \"twice\"\n",
    );
    assert!(err.contains("schedules[0].catch_up"), "stderr names the setting: {err}");
}
