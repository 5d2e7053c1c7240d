//! A real `taskbroker serve` process for tests: started with the given flags
//! and a clean environment, its address read from the `listening on` line,
//! killed when dropped (printing the tail of its log if the test panicked).
//! Included with `#[path = "common/serve.rs"] mod serve;`.
#![allow(dead_code)]

#[path = "env.rs"]
pub mod env;

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
use tonic::Streaming;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

pub const BIN: &str = env!("CARGO_BIN_EXE_taskbroker");
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
        Self::spawn(name, command(args), log).await
    }

    /// Runs `cmd` (from [`command`], with more set on it; or a wrapper that
    /// execs the binary) with stderr appended to `log`, and waits until it
    /// serves.
    pub async fn spawn(name: &str, mut cmd: Command, log: &Path) -> ServeProcess {
        let stderr = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("open the log");
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(stderr).kill_on_drop(true);
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

    /// What the process has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The (lazily connected) channel every client of this process shares.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
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

    /// A health Watch of service `""` (the whole server: readiness).
    pub async fn watch_health(&self) -> Streaming<HealthCheckResponse> {
        let request = HealthCheckRequest { service: String::new() };
        match timeout(CALL_TIMEOUT, self.health().watch(request)).await {
            Ok(Ok(watch)) => watch.into_inner(),
            outcome => panic!("health Watch on {}: {outcome:?}", self.name),
        }
    }

    /// Reads a health Watch of this process until it reports `want`, within
    /// `within`.
    pub async fn health_becomes(
        &self,
        watch: &mut Streaming<HealthCheckResponse>,
        want: ServingStatus,
        within: Duration,
    ) {
        let mut seen = Vec::new();
        let outcome = timeout(within, async {
            loop {
                let resp = watch.message().await.map_err(|s| format!("Watch failed: {s:?}"))?;
                let status = resp.ok_or("Watch ended")?.status;
                seen.push(ServingStatus::try_from(status).unwrap_or(ServingStatus::Unknown));
                if status == want as i32 {
                    return Ok::<(), String>(());
                }
            }
        })
        .await;
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("health of {}: {e} (seen {seen:?}, waiting for {want:?})", self.name),
            Err(_) => panic!("health of {} not {want:?} within {within:?} (seen {seen:?})", self.name),
        }
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

    /// Waits (at most `within`) for the process to exit; its status.
    pub async fn exit_status(&mut self, within: Duration) -> std::process::ExitStatus {
        timeout(within, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not exit within {within:?}", self.name))
            .expect("wait for the broker")
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

/// `taskbroker serve --listen 127.0.0.1:0 ARGS...` with `RUST_LOG=info` and
/// no `TASKBROKER_*` variable of the caller's: set more on it, then
/// [`ServeProcess::spawn`] it.
pub fn command<S: AsRef<OsStr>>(args: &[S]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--listen", "127.0.0.1:0"]).args(args);
    clean(&mut cmd);
    cmd
}

/// Gives `cmd` the environment every broker of the tests runs in:
/// `RUST_LOG=info`, no `TASKBROKER_*` variable of the caller's.
pub fn clean(cmd: &mut Command) -> &mut Command {
    env::clear(cmd.as_std_mut());
    cmd.env("RUST_LOG", "info")
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
