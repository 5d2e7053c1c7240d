//! A real `taskbroker serve` process for tests: started with the given flags
//! and a clean environment, its address read from the `listening on` line,
//! killed when dropped (printing the tail of its log if the test panicked).
//! Included with `#[path = "common/serve.rs"] mod serve;`.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use taskbroker::pb::producer_service_client::ProducerServiceClient;
use taskbroker::pb::worker_service_client::WorkerServiceClient;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};
use tokio::time::timeout;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;

pub const BIN: &str = env!("CARGO_BIN_EXE_taskbroker");
/// Variables the binary reads; cleared so the caller's environment cannot leak in.
pub const ENV_VARS: &[&str] = &[
    "TASKBROKER_CONFIG",
    "TASKBROKER_LISTEN",
    "TASKBROKER_DATA_DIR",
    "TASKBROKER_STORAGE",
    "TASKBROKER_REDIS_URL",
    "TASKBROKER_SERVER",
    "TASKBROKER_LOG_FORMAT",
];
/// Longest wait for the `listening on` line (a restart may recover a database).
pub const STARTUP: Duration = Duration::from_secs(30);
/// Bound on every unary gRPC call (long-polls included) and on opening a stream.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for a killed process to be reaped.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
const SIGKILL: i32 = 9;
/// How much of the log a failed test prints.
const LOG_TAIL: usize = 8000;

pub struct ServeProcess {
    /// For messages ("broker", "A", ...).
    pub name: String,
    pub addr: SocketAddr,
    child: Child,
    channel: Channel,
    log: PathBuf,
    /// Held so the child's stdout stays an open pipe.
    _stdout: BufReader<ChildStdout>,
}

impl ServeProcess {
    /// Runs `taskbroker serve --listen 127.0.0.1:0 ARGS...` (stderr appended
    /// to `log`) and waits until it serves.
    pub async fn start<S: AsRef<OsStr>>(name: &str, args: &[S], log: &Path) -> ServeProcess {
        let stderr = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("open the log");
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true);
        for var in ENV_VARS {
            cmd.env_remove(var);
        }
        let mut child = cmd.spawn().expect("spawn taskbroker");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let addr = match timeout(STARTUP, listen_line(&mut stdout)).await {
            Ok(Some(addr)) => addr,
            outcome => {
                let _ = child.start_kill();
                let text = std::fs::read_to_string(log).unwrap_or_default();
                panic!("{name} did not serve within {STARTUP:?} ({outcome:?}); its log:\n{text}");
            }
        };
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .timeout(CALL_TIMEOUT)
            .connect_lazy();
        ServeProcess { name: name.to_owned(), addr, child, channel, log: log.to_owned(), _stdout: stdout }
    }

    pub fn producer(&self) -> ProducerServiceClient<Channel> {
        ProducerServiceClient::new(self.channel.clone())
    }

    pub fn worker(&self) -> WorkerServiceClient<Channel> {
        WorkerServiceClient::new(self.channel.clone())
    }

    pub fn health(&self) -> HealthClient<Channel> {
        HealthClient::new(self.channel.clone())
    }

    /// SIGKILLs the process and checks that it was still running and died of it.
    pub async fn kill9(&mut self) {
        assert!(
            self.child.try_wait().expect("poll the child").is_none(),
            "{} exited before it was killed",
            self.name
        );
        self.child.start_kill().expect("send SIGKILL");
        let status = timeout(EXIT_TIMEOUT, self.child.wait())
            .await
            .expect("the killed broker is reaped in time")
            .expect("wait for the broker");
        assert_eq!(status.signal(), Some(SIGKILL), "{} died of SIGKILL: {status:?}", self.name);
    }

    /// Sends SIGTERM (a graceful shutdown).
    pub fn sigterm(&mut self) {
        let pid = self.child.id().expect("the broker still runs");
        let sent = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        assert!(sent.is_ok_and(|s| s.success()), "send SIGTERM to {}", self.name);
    }

    /// Waits (at most `within`) for the process to exit, successfully.
    pub async fn exits_cleanly(&mut self, within: Duration) {
        let status = timeout(within, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not exit within {within:?}", self.name))
            .expect("wait for the broker");
        assert!(status.success(), "{} exits cleanly: {status:?}", self.name);
    }

    /// Panics unless the process still runs.
    pub fn assert_running(&mut self) {
        let exited = self.child.try_wait().expect("poll the child");
        assert!(exited.is_none(), "{} ({}) exited: {exited:?}", self.name, self.addr);
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let mut cut = log.len().saturating_sub(LOG_TAIL);
            while !log.is_char_boundary(cut) {
                cut += 1;
            }
            eprintln!("--- {} ({}) log tail ---\n{}", self.name, self.addr, &log[cut..]);
        }
    }
}

/// Reads stdout up to the `listening on ADDR` line; `None` if it ends first.
async fn listen_line(stdout: &mut BufReader<ChildStdout>) -> Option<SocketAddr> {
    let mut line = String::new();
    loop {
        line.clear();
        if stdout.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        if let Some(addr) = line.trim().strip_prefix("listening on ") {
            return Some(addr.parse().unwrap_or_else(|e| panic!("bad address in {line:?}: {e}")));
        }
    }
}
