//! The one place that assembles and stops the program: storage, the broker,
//! the background loops, the gRPC server, readiness and the admin HTTP port
//! (the dashboard).
//!
//! `serve`, the test harness and the load tool all start a broker through
//! [`start`]; nothing else spawns background loops or decides shutdown order.
//!
//! Shutdown ([`Running::shutdown`]): readiness NOT_SERVING → the broker
//! drains: no new leases (Lease answers empty at once, streams are told and
//! get no more tasks) → the listener closes, but open connections keep taking
//! calls, so workers still Ack, Nack and ExtendLease what they hold → the
//! drain ends when no stream is open and no unary worker holds a lease, or
//! when `shutdown_grace` runs out → streams give back what they still hold,
//! and so does the broker for unary workers, all at once → connections are
//! told to close (GOAWAY) and their calls finish → background loops stop →
//! the admin port stops (its `/readyz` said 503 since the drain began) →
//! the store closes when the last handle goes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::admin_http::AdminServer;
use crate::background;
use crate::broker::session::StreamLimits;
use crate::broker::{Broker, BrokerSettings, Phase};
use crate::config::reload::Reloader;
use crate::config::{Config, StorageKind, DEFAULT_ADMIN_LISTEN};
use crate::core::clock::Clock;
use crate::core::queue::QueueRegistry;
use crate::grpc::server::{self, ServerOptions, Serving};
use crate::security::{self, Alpn, Authenticator, ServerTls, TlsFiles};
use crate::store::embedded::EmbeddedStore;
use crate::store::memory::MemoryStore;
use crate::store::redis::{redact, RedisStore};
use crate::store::Store;

/// How long open calls get to finish once the drain is over.
const AFTER_GRACE: Duration = Duration::from_secs(2);
/// How often readiness looks at storage health.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// Opens the configured store, sharing `queues` (the one owner of queue
/// settings) with the broker.
pub async fn open_store(config: &Config, queues: QueueRegistry) -> anyhow::Result<Arc<dyn Store>> {
    let limits = config.limits();
    Ok(match config.storage {
        StorageKind::Memory => Arc::new(MemoryStore::new(queues).with_limits(limits)),
        StorageKind::Embedded => Arc::new(EmbeddedStore::open(&config.data_dir, queues)?.with_limits(limits)),
        // Redis's clock, not this replica's, times leases and delays.
        StorageKind::Redis => Arc::new(
            RedisStore::open(&config.redis_target(), queues, true)
                .await
                .map_err(|e| anyhow::anyhow!("cannot use Redis at {}: {e}", redact(&config.redis_url)))?
                .with_limits(limits),
        ),
    })
}

/// Opens the configured store and builds the broker on it.
pub async fn open_broker(config: &Config, clock: Arc<dyn Clock>) -> anyhow::Result<Broker> {
    let queues = QueueRegistry::new(config.policies());
    let store = open_store(config, queues.clone()).await?;
    let settings = BrokerSettings {
        queues,
        strict_queues: config.strict_queues,
        max_payload_bytes: config.max_payload_bytes,
        max_delay: config.max_delay,
        streams: StreamLimits {
            outbound_bytes: config.stream_outbound_bytes,
            stall_timeout: config.stream_stall_timeout,
        },
    };
    Ok(Broker::new(store, clock, settings))
}

/// A file the config names (certificates, keys, the tokens file) that
/// cannot be used: a configuration error (`serve` exits 64).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigFileError(pub String);

/// An `admin_listen` given explicitly that cannot be bound: a configuration
/// error (`serve` exits 64).
#[derive(Debug, thiserror::Error)]
#[error("admin_listen: cannot listen on {addr}: {source}")]
pub struct AdminBindError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// Binds the admin port: `None` when it is off, or when the default
/// address is taken (a second broker on one machine runs without it, with a
/// warning); an explicit address that cannot be bound is an
/// [`AdminBindError`].
async fn bind_admin(config: &Config) -> anyhow::Result<Option<TcpListener>> {
    let Some(addr) = config.admin_addr() else {
        return Ok(None);
    };
    match TcpListener::bind(addr).await {
        Ok(listener) => Ok(Some(listener)),
        Err(e) if config.admin_listen == DEFAULT_ADMIN_LISTEN => {
            tracing::warn!(%addr, error = %e, "admin port unavailable; serving gRPC without the dashboard (set admin_listen to choose another address)");
            Ok(None)
        }
        Err(source) => Err(AdminBindError { addr, source }.into()),
    }
}

/// Starts everything `config` describes and serves until [`Running::shutdown`].
/// `config` must have passed `validate()`.
pub async fn start(config: &Config, clock: Arc<dyn Clock>) -> anyhow::Result<Running> {
    // First: a taken admin port fails start-up before the store is opened.
    let admin_listener = bind_admin(config).await?;
    // Boxed: the nested start-up futures are deep enough that computing the
    // layout of a caller's future overflows rustc's query depth (clippy 1.95).
    let broker = Box::pin(open_broker(config, clock)).await?;
    // The config's schedules are stored before the first call is served.
    broker
        .declare_schedules(&config.schedules())
        .await
        .map_err(|e| anyhow::anyhow!("cannot store the config's schedules: {e}"))?;
    let addr: SocketAddr =
        config.listen.parse().map_err(|_| anyhow::anyhow!("listen: not an address: {}", config.listen))?;
    let (stop_background, stop) = watch::channel(false);
    if let Some(f) = &config.auth.tokens_file {
        std::fs::read(f).map_err(|e| ConfigFileError(format!("auth.tokens_file: {}: {e}", f.display())))?;
    }
    let auth = Arc::new(Authenticator::new(&config.auth));
    warn_if_open(config, addr);
    let (tls, admin_tls) = load_tls(config).map_err(|e| ConfigFileError(format!("TLS: {e:#}")))?;
    let reloader = Arc::new(Reloader::new(config.clone(), broker.queues().clone()).with_auth(auth.clone()));
    let health_listen = (!config.health_listen.is_empty())
        .then(|| config.health_listen.parse())
        .transpose()
        .map_err(|_| anyhow::anyhow!("health_listen: not an address: {}", config.health_listen))?;
    let opts = ServerOptions {
        max_message_bytes: config.max_message_bytes,
        max_concurrent_streams: config.max_concurrent_streams,
        reloader: Some(reloader.clone()),
        auth: auth.clone(),
        tls: tls.clone(),
        health_listen,
    };
    let grpc = Box::pin(server::serve(broker.clone(), addr, opts)).await?;
    let health = grpc.health.clone();
    let readiness = tokio::spawn(follow_storage_health(broker.clone(), health.clone(), stop.clone()));
    let timers = tokio::spawn(background::timer_loop(broker.clone(), stop.clone()));
    let schedules =
        tokio::spawn(background::schedule_loop(broker.clone(), reloader.schedules(), stop.clone()));
    let reloads = tokio::spawn(reload_on_sighup(reloader, stop.clone()));
    let watched_tls = tls.into_iter().chain(admin_tls.clone()).collect();
    let files = tokio::spawn(security::follow_files(watched_tls, auth.clone(), stop));
    let admin = match admin_listener {
        Some(listener) => Some(AdminServer::start(listener, broker.clone(), admin_tls, auth).await?),
        None => None,
    };
    Ok(Running {
        addr: grpc.addr,
        health_addr: grpc.health_addr,
        admin_addr: admin.as_ref().map(|a| a.addr),
        admin,
        broker,
        grpc,
        health,
        stop_background,
        background: vec![timers, schedules, readiness, reloads, files],
        grace: config.shutdown_grace,
    })
}

/// The gRPC port's TLS and, with `admin_tls`, the admin port's (same
/// certificate, no client certificates: browsers).
/// The TLS of the gRPC port and of the admin port (each `None`: plaintext).
type PortsTls = (Option<Arc<ServerTls>>, Option<Arc<ServerTls>>);

fn load_tls(config: &Config) -> anyhow::Result<PortsTls> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok((None, None));
    };
    let files = TlsFiles { cert: cert.clone(), key: key.clone(), client_ca: config.tls_client_ca.clone() };
    let grpc = ServerTls::load(files.clone(), Alpn::Grpc)?;
    let admin = if config.admin_tls {
        Some(ServerTls::load(TlsFiles { client_ca: None, ..files }, Alpn::Http1)?)
    } else {
        None
    };
    Ok((Some(grpc), admin))
}

/// Says loudly that anyone who reaches the port may do anything, when the
/// port is reachable from beyond this machine.
fn warn_if_open(config: &Config, addr: SocketAddr) {
    if !config.auth.enabled && !addr.ip().is_loopback() {
        tracing::warn!(
            %addr,
            "AUTHENTICATION IS OFF and the gRPC port listens beyond loopback: anyone who can reach it \
             can read, settle, cancel and purge every task. Turn on [auth] (see the README's Security section)."
        );
    }
}

/// A running broker.
pub struct Running {
    /// The gRPC address it listens on (useful with port 0).
    pub addr: SocketAddr,
    /// The admin HTTP port's address; `None` when it is off or its default
    /// address was taken.
    pub admin_addr: Option<SocketAddr>,
    /// The plaintext health port's address (`health_listen`).
    pub health_addr: Option<SocketAddr>,
    /// The dashboard, `/healthz`, `/readyz`: stopped last, so `/readyz`
    /// answers 503 through the drain.
    admin: Option<AdminServer>,
    broker: Broker,
    grpc: Serving,
    /// Readiness (`grpc.health.v1`, service `""`).
    health: HealthReporter,
    /// Stops the timer and schedule loops and the storage health watcher.
    stop_background: watch::Sender<bool>,
    background: Vec<JoinHandle<()>>,
    /// How long in-flight calls may finish after shutdown starts.
    grace: Duration,
}

impl Running {
    /// The broker behind the server (tests drive its timers directly).
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Whether the gRPC server stopped by itself (an error).
    pub fn is_finished(&self) -> bool {
        self.grpc.is_finished()
    }

    /// The shutdown sequence (see the module docs).
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        // Draining before readiness says so: whoever sees NOT_SERVING finds
        // the broker already leasing nothing.
        self.broker.set_phase(Phase::Draining);
        self.health.set_service_status("", ServingStatus::NotServing).await;
        self.grpc.stop_accepting();
        if tokio::time::timeout(self.grace, self.broker.drained()).await.is_err() {
            tracing::warn!(grace = ?self.grace, "leases still held after the grace period; giving them back");
        }
        self.broker.set_phase(Phase::Stopped);
        let released = self.broker.release_held().await;
        if released > 0 {
            tracing::info!(released, "gave back the tasks unary workers still held");
        }
        // Other long calls (WatchTask, a health watch, an EnqueueStream) get
        // a moment to finish; their clients reconnect elsewhere.
        self.grpc.close();
        let served = self.grpc.finish(AFTER_GRACE).await.unwrap_or_else(|| {
            tracing::warn!(after = ?AFTER_GRACE, "calls still open after the drain; ending them");
            self.grpc.abort();
            Ok(())
        });
        let _ = self.stop_background.send(true);
        for task in self.background.drain(..) {
            let _ = task.await;
        }
        if let Some(admin) = self.admin.take() {
            admin.stop(AFTER_GRACE).await;
        }
        served
    }
}

/// Readiness follows storage health (liveness does not: a storage outage must
/// not become a restart storm).
async fn follow_storage_health(broker: Broker, health: HealthReporter, mut stop: watch::Receiver<bool>) {
    let mut was_healthy = true;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(HEALTH_INTERVAL) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let healthy = broker.healthy().await;
        if healthy != was_healthy {
            let status = if healthy { ServingStatus::Serving } else { ServingStatus::NotServing };
            tracing::warn!(healthy, "storage health changed");
            health.set_service_status("", status).await;
            was_healthy = healthy;
        }
    }
}

/// SIGHUP reloads the config file (as AdminService.ReloadConfig does).
async fn reload_on_sighup(reloader: Arc<Reloader>, mut stop: watch::Receiver<bool>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; reload with `taskbroker reload`");
            return;
        };
        loop {
            tokio::select! {
                _ = hangups.recv() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let reloader = reloader.clone();
            match tokio::task::spawn_blocking(move || reloader.reload()).await {
                Ok(Ok(_)) => {}
                Ok(Err(problems)) => {
                    tracing::error!(?problems, "config reload refused; the running config stays")
                }
                Err(e) => tracing::error!(error = %e, "config reload failed"),
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (reloader, stop.wait_for(|s| *s).await);
}
