//! The API from real gRPC clients in other languages, as a new user would
//! write them: a real server (memory store) from the harness, then a Python
//! (`grpcio`) and a Node.js (`@grpc/grpc-js`) client script run against it as
//! child processes. Each script exits 0 only if its whole flow behaved as the
//! README says.
//!
//! A missing interpreter or package fails the test with the install command;
//! it never skips. `./scripts/test` installs both (the Python packages into
//! `target/venv`, first on its `PATH`):
//!   target/venv/bin/python -m pip install -r tests/clients/python/requirements.txt
//!   npm ci --prefix tests/clients/node
mod common;

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Bound on one client script (each normally takes a few seconds).
const TIMEOUT: Duration = Duration::from_secs(120);
/// Variables that could send a loopback connection through a proxy.
const PROXY_VARS: &[&str] =
    &["grpc_proxy", "http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"];

const PYTHON_INSTALL: &str =
    "./scripts/test (or: python3 -m pip install -r tests/clients/python/requirements.txt)";
const NODE_INSTALL: &str = "./scripts/test (or: npm ci --prefix tests/clients/node)";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Finished {
    fn describe(&self) -> String {
        format!("{}\n--- stdout ---\n{}\n--- stderr ---\n{}", self.status, self.stdout, self.stderr)
    }
}

/// Runs `program args...` in the repository root, killed after `timeout`.
/// `Err` only if the program could not be started (e.g. not installed).
fn run(program: &str, args: &[&str], timeout: Duration) -> std::io::Result<Finished> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(root())
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for var in PROXY_VARS {
        cmd.env_remove(var);
    }
    let mut child = cmd.spawn()?;
    let reader = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = reader(Box::new(child.stdout.take().unwrap()));
    let err = reader(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let (stdout, stderr) = (out.join().unwrap(), err.join().unwrap());
            panic!(
                "`{program} {}` did not finish within {timeout:?}; killed\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Ok(Finished { status, stdout: out.join().unwrap(), stderr: err.join().unwrap() })
}

/// Fails (never skips) unless `program` runs and `probe` succeeds with it.
fn require(program: &str, probe: &[&str], what: &str, install: &str) {
    match run(program, probe, Duration::from_secs(60)) {
        Err(e) => panic!(
            "`{program}` could not be started ({e}): the {what} client test needs it.\n\
             Install {program}, then its packages: {install}"
        ),
        Ok(f) if !f.status.success() => panic!(
            "the {what} client test's packages are missing or broken.\n\
             Install them with: {install}\n\
             (probe `{program} {}`: {})",
            probe.join(" "),
            f.describe()
        ),
        Ok(_) => {}
    }
}

/// Runs a client script against `addr` and asserts it passed.
async fn run_client(program: &'static str, script: &'static str, addr: SocketAddr) {
    let name = Path::new(script).file_name().unwrap().to_string_lossy().into_owned();
    let addr = addr.to_string();
    // Off the runtime's thread: the server under test runs on it.
    let finished =
        tokio::task::spawn_blocking(move || run(program, &[script, &addr], TIMEOUT)).await.unwrap();
    let finished = finished.unwrap_or_else(|e| panic!("could not start `{program} {script}`: {e}"));
    assert!(finished.status.success(), "{name} failed against the server\n{}", finished.describe());
    print!("{}", finished.stdout);
}

#[tokio::test]
async fn python_grpcio_client() {
    require(
        "python3",
        &["-c", "import grpc, grpc_tools.protoc, google.protobuf, google.rpc.error_details_pb2"],
        "Python",
        PYTHON_INSTALL,
    );
    let s = common::start().await;
    run_client("python3", "tests/clients/python/client_test.py", s.addr).await;
    s.shutdown().await;
}

#[tokio::test]
async fn node_grpc_js_client() {
    require(
        "node",
        &[
            "-e",
            "const r = require('module').createRequire(process.cwd() + '/tests/clients/node/client_test.js'); \
             r('@grpc/grpc-js'); r('@grpc/proto-loader');",
        ],
        "Node.js",
        NODE_INSTALL,
    );
    let s = common::start().await;
    run_client("node", "tests/clients/node/client_test.js", s.addr).await;
    s.shutdown().await;
}
