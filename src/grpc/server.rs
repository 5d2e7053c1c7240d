//! Server assembly: services, health, reflection, transport settings, and the
//! shutdown sequence.
//!
//! Shutdown: health turns NOT_SERVING, the server stops accepting, in-flight
//! calls get `grace` to finish, then the timer loop stops.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use super::producer::Producer;
use super::worker::Worker;
use crate::background;
use crate::broker::{Broker, Phase};
use crate::pb;
use crate::pb::producer_service_server::ProducerServiceServer;
use crate::pb::worker_service_server::WorkerServiceServer;

/// Transport settings.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Largest request or response message, in bytes.
    pub max_message_bytes: usize,
    /// How long in-flight calls may finish after shutdown starts.
    pub shutdown_grace: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self { max_message_bytes: 64 << 20, shutdown_grace: Duration::from_secs(10) }
    }
}

/// A running server.
pub struct Running {
    /// The address it listens on (useful with port 0).
    pub addr: SocketAddr,
    broker: Broker,
    /// Stops accepting connections.
    stop_accepting: watch::Sender<bool>,
    /// Stops the timer loop and the storage watcher.
    stop_background: watch::Sender<bool>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    timers: JoinHandle<()>,
    health: HealthReporter,
    grace: Duration,
}

impl Running {
    /// Whether the server stopped by itself (an error).
    pub fn is_finished(&self) -> bool {
        self.server.is_finished()
    }

    /// The shutdown sequence: health NOT_SERVING, streams told to drain, no
    /// new connections; in-flight calls and streams get the grace period;
    /// then streams release what they hold, and background loops stop.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.health.set_service_status("", ServingStatus::NotServing).await;
        self.broker.set_phase(Phase::Draining);
        let _ = self.stop_accepting.send(true);
        let served = match tokio::time::timeout(self.grace, &mut self.server).await {
            Ok(joined) => joined,
            Err(_) => {
                tracing::warn!(grace = ?self.grace, "calls still open after the grace period; ending them");
                self.broker.set_phase(Phase::Stopped);
                match tokio::time::timeout(AFTER_GRACE, &mut self.server).await {
                    Ok(joined) => joined,
                    Err(_) => {
                        self.server.abort();
                        Ok(Ok(()))
                    }
                }
            }
        };
        self.broker.set_phase(Phase::Stopped);
        let _ = self.stop_background.send(true);
        let _ = self.timers.await;
        Ok(served??)
    }
}

/// How long streams get to release their leases once the grace is over.
const AFTER_GRACE: Duration = Duration::from_secs(2);

/// Binds `addr` and serves `broker` until [`Running::shutdown`].
pub async fn start(broker: Broker, addr: SocketAddr, opts: ServerOptions) -> anyhow::Result<Running> {
    let listener =
        TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let addr = listener.local_addr()?;
    let (stop_accepting, mut accepting) = watch::channel(false);
    let (stop_background, stop) = watch::channel(false);

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status("", ServingStatus::Serving).await;
    health.set_serving::<ProducerServiceServer<Producer>>().await;
    health.set_serving::<WorkerServiceServer<Worker>>().await;
    tokio::spawn(watch_storage(broker.clone(), health.clone(), stop.clone()));

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let max = opts.max_message_bytes;
    let producer = ProducerServiceServer::new(Producer::new(broker.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let worker = WorkerServiceServer::new(Worker::new(broker.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);

    let router = Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .max_connection_age(Duration::from_secs(30 * 60))
        .trace_fn(|req| tracing::debug_span!("grpc", path = %req.uri().path()))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(producer)
        .add_service(worker);

    // Builder::tcp_nodelay does not apply to a listener we pass in: without
    // TCP_NODELAY small replies wait ~40 ms for the peer's delayed ACK.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let server = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async move {
        let _ = accepting.wait_for(|s| *s).await;
    }));
    let timers = tokio::spawn(background::run_timers(broker.clone(), stop));
    tracing::info!(%addr, "taskbroker serving");
    Ok(Running {
        addr,
        broker,
        stop_accepting,
        stop_background,
        server,
        timers,
        health,
        grace: opts.shutdown_grace,
    })
}

/// Readiness follows storage health (liveness does not: a storage outage must
/// not become a restart storm).
async fn watch_storage(broker: Broker, health: HealthReporter, mut stop: watch::Receiver<bool>) {
    let mut was_healthy = true;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
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
