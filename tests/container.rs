//! The container image's command line and paths, without a Docker daemon.
//!
//! The runtime stage of `Dockerfile` is parsed (ENTRYPOINT, CMD, ENV, USER,
//! VOLUME, EXPOSE, and the COPY that installs the binary), and the built
//! binary is run the way the image runs it: found on PATH under the
//! ENTRYPOINT's name, with exactly the CMD's arguments and the image's
//! environment and nothing else, as the image's user when the test runs as
//! root, from a working directory that user cannot write (like a read-only
//! root file system). Two substitutions keep it on this machine: a temporary
//! directory stands in for the volume, and the CMD's `0.0.0.0:50051` becomes
//! `127.0.0.1:0`. The test checks that the broker serves, that its data lands
//! in the volume, and that a task survives a graceful restart.
#![cfg(unix)]

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};
use tokio::time::timeout;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use taskbroker::pb;
use taskbroker::pb::producer_service_client::ProducerServiceClient;

const BIN: &str = env!("CARGO_BIN_EXE_taskbroker");
/// Bound on start-up, on each call, and on a graceful exit.
const STEP: Duration = Duration::from_secs(30);
/// What the CMD listens on, and the loopback address the test uses instead.
const IMAGE_LISTEN: &str = "0.0.0.0:50051";
const TEST_LISTEN: &str = "127.0.0.1:0";

/// The runtime stage of the Dockerfile: the instructions after the last FROM.
#[derive(Debug, Default)]
struct Image {
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    env: BTreeMap<String, String>,
    user: String,
    volumes: Vec<String>,
    expose: Vec<u16>,
    /// Destinations of COPY instructions.
    copies: Vec<String>,
}

/// Joins continuation lines and drops comments and blank lines.
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (word, rest) = current.split_once(char::is_whitespace).unwrap_or((&current, ""));
                out.push((word.to_ascii_uppercase(), rest.trim().to_owned()));
                current.clear();
            }
        }
    }
    out
}

/// An exec-form (JSON array) argument list; the shell form is refused, since
/// a distroless image has no shell to run it.
fn exec_form(what: &str, value: &str) -> Vec<String> {
    serde_json::from_str(value)
        .unwrap_or_else(|e| panic!("{what} must be in exec form, a JSON array of strings: {value:?} ({e})"))
}

fn parse_image(dockerfile: &str) -> Image {
    let all = instructions(dockerfile);
    let last_from = all.iter().rposition(|(word, _)| word == "FROM").expect("a FROM instruction");
    let mut image = Image::default();
    for (word, rest) in &all[last_from + 1..] {
        match word.as_str() {
            "ENTRYPOINT" => image.entrypoint = exec_form("ENTRYPOINT", rest),
            "CMD" => image.cmd = exec_form("CMD", rest),
            "ENV" => {
                for pair in rest.split_whitespace() {
                    let (key, value) =
                        pair.split_once('=').unwrap_or_else(|| panic!("ENV in KEY=VALUE form: {rest:?}"));
                    image.env.insert(key.into(), value.trim_matches('"').into());
                }
            }
            "USER" => image.user = rest.clone(),
            "VOLUME" => image.volumes = exec_form("VOLUME", rest),
            "EXPOSE" => {
                image.expose =
                    rest.split_whitespace().map(|p| p.parse().expect("EXPOSE takes port numbers")).collect()
            }
            "COPY" => image.copies.push(rest.split_whitespace().last().unwrap_or_default().to_owned()),
            _ => {}
        }
    }
    image
}

fn dockerfile() -> Image {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile");
    parse_image(&std::fs::read_to_string(path).expect("read Dockerfile"))
}

#[test]
fn the_image_is_declared_as_the_readme_says() {
    let image = dockerfile();
    assert_eq!(image.entrypoint, ["taskbroker"]);
    assert_eq!(image.cmd, ["serve", "--listen", IMAGE_LISTEN]);
    assert_eq!(image.user, "65532:65532", "a numeric non-root user, so runAsNonRoot can check it");
    assert_eq!(image.volumes, ["/var/lib/taskbroker"]);
    assert_eq!(image.env.get("TASKBROKER_DATA_DIR").map(String::as_str), Some("/var/lib/taskbroker"));
    for port in [50051, 50052, 9090] {
        assert!(image.expose.contains(&port), "EXPOSE {port}: {:?}", image.expose);
    }
    assert!(
        image.copies.iter().any(|dest| dest == "/usr/local/bin/taskbroker"),
        "the binary is copied onto the image's PATH: {:?}",
        image.copies
    );
}

/// How the broker is run: as whom, from where, with which program path.
struct Launch {
    /// The directory standing in for the image's PATH (holds `taskbroker`).
    path_dir: PathBuf,
    /// Working directory (unwritable by the image's user when run as it).
    workdir: PathBuf,
    /// The environment: the image's ENV with the volume swapped for `data_dir`.
    env: BTreeMap<String, String>,
    args: Vec<String>,
    /// `(uid, gid)` to run as, when the test can switch users.
    user: Option<(u32, u32)>,
}

impl Launch {
    async fn start(&self, log: &Path) -> (Child, BufReader<ChildStdout>, std::net::SocketAddr) {
        let stderr = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("open the log");
        let mut cmd = Command::new(&self.args[0]);
        cmd.args(&self.args[1..])
            .env_clear()
            .env("PATH", &self.path_dir)
            .envs(&self.env)
            .current_dir(&self.workdir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true);
        if let Some((uid, gid)) = self.user {
            cmd.uid(uid).gid(gid);
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {:?}: {e}", self.args));
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let addr = match timeout(STEP, listen_line(&mut stdout)).await {
            Ok(Some(addr)) => addr,
            outcome => {
                let _ = child.start_kill();
                panic!(
                    "the image's command did not serve within {STEP:?} ({outcome:?}); its log:\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
        };
        (child, stdout, addr)
    }
}

async fn listen_line(stdout: &mut BufReader<ChildStdout>) -> Option<std::net::SocketAddr> {
    let mut line = String::new();
    loop {
        line.clear();
        if stdout.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        if let Some(addr) = line.trim().strip_prefix("listening on ") {
            return addr.parse().ok();
        }
    }
}

async fn sigterm_and_wait(child: &mut Child) {
    let pid = child.id().expect("the broker still runs");
    let sent = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    assert!(sent.is_ok_and(|s| s.success()), "send SIGTERM");
    let status = timeout(STEP, child.wait()).await.expect("exits after SIGTERM").expect("wait");
    assert!(status.success(), "a graceful exit on SIGTERM: {status:?}");
}

fn parse_user(user: &str) -> (u32, u32) {
    let (uid, gid) = user.split_once(':').unwrap_or((user, user));
    (uid.parse().expect("numeric uid"), gid.parse().expect("numeric gid"))
}

/// Files under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            found.extend(files_under(&path));
        } else {
            found.push(path);
        }
    }
    found
}

#[tokio::test]
async fn the_images_command_serves_and_keeps_its_data_in_the_volume() {
    let image = dockerfile();
    let root = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // The test can act as the image's user only as root (the owner of a new
    // directory is the effective uid).
    let is_root = std::fs::metadata(root.path()).unwrap().uid() == 0;
    let user = is_root.then(|| parse_user(&image.user));
    if !is_root {
        eprintln!(
            "note: not root, so the broker runs as this user instead of the image's {} \
             and the unwritable working directory is not checked",
            image.user
        );
    }

    // The binary on PATH under the ENTRYPOINT's name, like /usr/local/bin.
    let path_dir = root.path().join("bin");
    std::fs::create_dir(&path_dir).unwrap();
    let program = path_dir.join(&image.entrypoint[0]);
    if std::fs::hard_link(BIN, &program).is_err() {
        std::fs::copy(BIN, &program).expect("copy the binary");
    }
    // The volume, owned by the image's user as the Dockerfile makes it.
    let volume = image.volumes.first().expect("a VOLUME").clone();
    let data_dir = root.path().join("volume");
    std::fs::create_dir(&data_dir).unwrap();
    // The working directory: root-owned, so the image's user cannot write it.
    let workdir = root.path().join("readonly-root");
    std::fs::create_dir(&workdir).unwrap();
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(&data_dir, Some(uid), Some(gid)).expect("chown the volume");
        std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o750)).unwrap();
    }

    let env: BTreeMap<String, String> = image
        .env
        .iter()
        .map(|(k, v)| {
            let v =
                if *v == volume { data_dir.to_str().expect("UTF-8 temp path").to_owned() } else { v.clone() };
            (k.clone(), v)
        })
        .collect();
    assert!(env.values().any(|v| Path::new(v) == data_dir), "some ENV points the broker at the volume");
    let listen_at = image.cmd.iter().position(|a| a == IMAGE_LISTEN).expect("the CMD's listen address");
    let port: u16 = IMAGE_LISTEN.rsplit(':').next().unwrap().parse().unwrap();
    assert!(image.expose.contains(&port), "the CMD's port {port} is exposed");
    let mut args: Vec<String> = image.entrypoint.iter().chain(&image.cmd).cloned().collect();
    args[image.entrypoint.len() + listen_at] = TEST_LISTEN.into();
    let launch = Launch { path_dir, workdir: workdir.clone(), env, args, user };

    let log = root.path().join("broker.log");
    let (mut child, _stdout, addr) = launch.start(&log).await;
    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().timeout(STEP).connect_lazy();
    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest { service: String::new() })
        .await
        .expect("health check")
        .into_inner();
    assert_eq!(health.status, ServingStatus::Serving as i32, "service \"\" is SERVING");

    let mut producer = ProducerServiceClient::new(channel);
    let task = producer
        .enqueue(pb::EnqueueRequest {
            queue: "image".into(),
            kind: "container.check".into(),
            payload: b"kept in the volume".to_vec(),
            ..Default::default()
        })
        .await
        .expect("enqueue")
        .into_inner()
        .task
        .expect("the task");
    sigterm_and_wait(&mut child).await;

    let stored = files_under(&data_dir);
    assert!(!stored.is_empty(), "the broker wrote its database into the volume");
    if let Some((uid, _)) = user {
        for file in &stored {
            assert_eq!(
                std::fs::metadata(file).unwrap().uid(),
                uid,
                "{} belongs to the image's user",
                file.display()
            );
        }
    }
    assert_eq!(
        std::fs::read_dir(&workdir).unwrap().count(),
        0,
        "nothing is written outside the volume (the working directory stays empty)"
    );

    // Same command, same volume: the task is still there.
    let (mut child, _stdout, addr) = launch.start(&log).await;
    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().timeout(STEP).connect_lazy();
    let again = ProducerServiceClient::new(channel)
        .get_task(pb::GetTaskRequest { task_id: task.id.clone(), include_dependencies: false })
        .await
        .expect("GetTask after the restart")
        .into_inner()
        .task
        .expect("the task");
    assert_eq!(again.id, task.id);
    assert_eq!(again.payload, b"kept in the volume");
    assert_eq!(again.state, pb::TaskState::Ready as i32);
    sigterm_and_wait(&mut child).await;
}

#[test]
fn the_dockerfile_parser_reads_continuations_and_the_last_stage() {
    let image = parse_image(
        "FROM a AS build\nCMD [\"build\"]\nRUN x \\\n  && y\n# comment\nFROM b\nENV A=1 B=\"two\"\n\
         CMD [\"serve\", \\\n  \"--flag\"]\nEXPOSE 1 2\n",
    );
    assert_eq!(image.cmd, ["serve", "--flag"]);
    assert_eq!(image.env.get("A").map(String::as_str), Some("1"));
    assert_eq!(image.env.get("B").map(String::as_str), Some("two"));
    assert_eq!(image.expose, [1, 2]);
}
