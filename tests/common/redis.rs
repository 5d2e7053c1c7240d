//! A private `redis-server` per test: started on a free loopback port with its
//! own data directory, stopped (or killed) and restarted on the same port and
//! directory, killed when dropped.
//!
//! The Redis tests never skip: without `redis-server` they fail with how to
//! install it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

const NOT_INSTALLED: &str =
    "redis-server not found: install it with `apt-get install -y redis-server` (Debian) \
                             — the Redis tests never skip";

/// A running (or stopped) redis-server owned by a test.
pub struct RedisServer {
    port: u16,
    dir: TempDir,
    /// Extra command-line settings (`["--maxmemory", "2mb"]`), kept for restarts.
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// A server with AOF persistence (`appendonly yes`, no RDB snapshots).
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A server that fsyncs its AOF before answering each write
    /// (`appendonly yes`, `appendfsync always`): what it acknowledged survives
    /// a SIGKILL of the server (and of the machine).
    pub fn start_fsync_always() -> Self {
        // Later command-line settings override earlier ones.
        Self::start_with(&["--appendfsync", "always"])
    }

    /// A server with extra settings, e.g. `&["--maxmemory", "2mb"]`.
    pub fn start_with(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory for redis");
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let mut server = Self { port: 0, dir, extra, child: None };
        let mut last_error = String::new();
        // A free port can be taken between finding it and binding it: retry.
        for _ in 0..5 {
            server.port = free_port();
            match server.spawn() {
                Ok(()) => return server,
                Err(e) => last_error = e,
            }
        }
        panic!("redis-server did not start: {last_error}");
    }

    /// `redis://127.0.0.1:<port>/`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The first line of the server's reply to an inline `command`
    /// (`"REPLICAOF NO ONE"`), if it answered.
    pub fn command(&self, command: &str) -> Option<String> {
        ask(self.port, command).and_then(|r| r.lines().next().map(str::to_owned))
    }

    /// Stops the server cleanly (SIGTERM: Redis flushes its AOF and exits).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and directory (it reloads its
    /// AOF); stops it first if it still runs.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(e) = self.spawn() {
            panic!("redis-server did not restart on port {}: {e}", self.port);
        }
    }

    fn spawn(&mut self) -> Result<(), String> {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--protected-mode", "no"]);
        if self.extra.iter().any(|a| a == "--cluster-enabled") {
            // The cluster bus defaults to port + 10000, which can be taken or
            // past 65535: give it a free port of its own.
            cmd.args(["--cluster-port", &free_port().to_string()]);
        }
        cmd.args(["--save", "", "--appendonly", "yes", "--appendfsync", "everysec"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.dir.path().join("redis.log"))
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!("{NOT_INSTALLED}"),
            Err(e) => panic!("cannot run redis-server: {e}"),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default();
                return Err(format!("exited with {status}: {}", log.lines().last().unwrap_or("")));
            }
            if ping(self.port) {
                self.child = Some(child);
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        Err("did not answer PING within 10 s".into())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free loopback port").port()
}

/// The first reply (up to 4 KiB) of the server on `port` to `command`, if any.
fn ask(port: u16, command: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    s.write_all(format!("{command}\r\n").as_bytes()).ok()?;
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// The commands a server receives, as Redis's `MONITOR` reports them: how a
/// test sees that a broker's call reached Redis (a long-poll that tried its
/// queue and found nothing) instead of waiting a while and hoping.
pub struct Monitor {
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::net::TcpStream>>,
}

impl Monitor {
    /// Starts monitoring the server on `port`: commands it runs from now on.
    pub async fn start(port: u16) -> Monitor {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let mut stream =
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect to monitor");
        stream.write_all(b"MONITOR\r\n").await.expect("send MONITOR");
        let mut monitor = Monitor { lines: tokio::io::BufReader::new(stream).lines() };
        let ok = monitor.line(Duration::from_secs(5)).await;
        assert_eq!(ok.as_deref(), Some("+OK"), "MONITOR answered");
        monitor
    }

    /// Waits (at most `within`) for a command whose line contains `needle`,
    /// and returns that line.
    pub async fn wait_for(&mut self, needle: &str, within: Duration) -> String {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.line(left).await {
                Some(line) if line.contains(needle) => return line,
                Some(_) => continue,
                None => panic!("no command with {needle:?} reached Redis within {within:?}"),
            }
        }
    }

    /// The commands before the first one containing `needle` (which must
    /// come within `within`): what a call sent before a marker command.
    pub async fn until(&mut self, needle: &str, within: Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.line(left).await {
                Some(line) if line.contains(needle) => return seen,
                Some(line) => seen.push(line),
                None => panic!("no command with {needle:?} reached Redis within {within:?}; saw {seen:?}"),
            }
        }
    }

    async fn line(&mut self, within: Duration) -> Option<String> {
        tokio::time::timeout(within, self.lines.next_line()).await.ok()?.ok()?
    }
}

/// Whether a server on `port` answers PING (and is done loading its data);
/// a server that requires a password answers `-NOAUTH`, which counts.
/// [`ask`], after `AUTH password` when there is one (its `+OK` left out).
fn ask_auth(port: u16, password: Option<&str>, command: &str) -> Option<String> {
    let Some(password) = password else { return ask(port, command) };
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    s.write_all(format!("AUTH {password}\r\n{command}\r\n").as_bytes()).ok()?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    // The two replies may come in one read or two.
    while !reply.starts_with(b"+OK\r\n") || reply.len() == 5 {
        let n = s.read(&mut buf).ok().filter(|&n| n > 0)?;
        reply.extend_from_slice(&buf[..n]);
        if !b"+OK\r\n".starts_with(&reply[..reply.len().min(5)]) {
            return None; // AUTH refused
        }
    }
    Some(String::from_utf8_lossy(&reply[5..]).into_owned())
}

fn ping(port: u16) -> bool {
    ask(port, "PING").is_some_and(|r| r.starts_with("+PONG") || r.starts_with("-NOAUTH"))
}

/// A private three-node Redis Cluster (masters only), every slot assigned:
/// each node a [`RedisServer`] with `cluster-enabled yes`, joined with
/// `redis-cli --cluster create` (from the same Debian package).
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> Self {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port())).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run redis-cli ({e}); {NOT_INSTALLED}"));
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = Self { nodes };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cluster.nodes.iter().all(|n| cluster_ok(n.port())) {
            assert!(Instant::now() < deadline, "the cluster did not reach cluster_state:ok within 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster
    }

    /// Every node's URL: the seed list a store is given.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.url()).collect()
    }
}

/// Whether the node on `port` reports `cluster_state:ok`.
fn cluster_ok(port: u16) -> bool {
    ask(port, "CLUSTER INFO").is_some_and(|r| r.contains("cluster_state:ok"))
}

/// A Sentinel-managed Redis: a master, one replica of it, and one sentinel
/// (quorum 1) that fails over to the replica half a second after the master
/// stops answering.
pub struct RedisSentinel {
    pub master: RedisServer,
    pub replica: RedisServer,
    sentinel: Child,
    sentinel_port: u16,
    /// The password of every node (`requirepass`, `masterauth`, the
    /// sentinel's `requirepass` and `auth-pass`), if any.
    password: Option<String>,
    _dir: TempDir,
}

/// The master name the sentinel watches.
pub const SENTINEL_MASTER: &str = "tbmaster";

impl RedisSentinel {
    pub fn start() -> Self {
        Self::start_with_password(None)
    }

    /// With a `password`, master, replica and sentinel all require it (as in
    /// the Bitnami chart: one password for all).
    pub fn start_with_password(password: Option<&str>) -> Self {
        let auth: Vec<&str> = password.map_or(vec![], |p| vec!["--requirepass", p, "--masterauth", p]);
        let master = RedisServer::start_with(&auth);
        let replicaof = master.port().to_string();
        let replica =
            RedisServer::start_with(&[&["--replicaof", "127.0.0.1", &replicaof][..], &auth].concat());
        let sentinel_auth = password.map_or(String::new(), |p| {
            format!("requirepass {p}\nsentinel auth-pass {SENTINEL_MASTER} {p}\n")
        });
        let dir = tempfile::tempdir().expect("a temporary directory for the sentinel");
        let sentinel_port = free_port();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {sentinel_port}\nbind 127.0.0.1\nprotected-mode no\ndir {}\n\
                 sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {} 1\n\
                 sentinel down-after-milliseconds {SENTINEL_MASTER} 500\n\
                 sentinel failover-timeout {SENTINEL_MASTER} 2000\n{sentinel_auth}",
                dir.path().display(),
                master.port()
            ),
        )
        .expect("write sentinel.conf");
        let sentinel = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run redis-server --sentinel ({e}); {NOT_INSTALLED}"));
        let password = password.map(str::to_owned);
        let mut setup = Self { master, replica, sentinel, sentinel_port, password, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        // The sentinel answers, and the replica has caught up with the master.
        let pw = setup.password.as_deref();
        while !(ping(setup.sentinel_port)
            && ask_auth(setup.replica.port(), pw, "INFO replication")
                .is_some_and(|r| r.contains("master_link_status:up"))
            && ask_auth(setup.sentinel_port, pw, &format!("SENTINEL replicas {SENTINEL_MASTER}"))
                .is_some_and(|r| r.contains(&setup.replica.port().to_string())))
        {
            if Instant::now() > deadline {
                let _ = setup.sentinel.kill();
                panic!("the sentinel did not see the master and its replica within 20 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        setup
    }

    /// The sentinel's URL: what a store is given, with [`SENTINEL_MASTER`].
    pub fn sentinel_url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.sentinel_port)
    }

    /// The first line of the sentinel's reply to an inline `command`.
    pub fn sentinel_command(&self, command: &str) -> Option<String> {
        ask_auth(self.sentinel_port, self.password.as_deref(), command)
            .and_then(|r| r.lines().next().map(str::to_owned))
    }

    /// The port of the node the sentinel names master now.
    pub fn master_port(&self) -> Option<u16> {
        let command = format!("SENTINEL get-master-addr-by-name {SENTINEL_MASTER}");
        let reply = ask_auth(self.sentinel_port, self.password.as_deref(), &command)?;
        reply.lines().filter(|l| !l.starts_with('*') && !l.starts_with('$')).nth(1)?.trim().parse().ok()
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        let _ = self.sentinel.kill();
        let _ = self.sentinel.wait();
    }
}
