//! The gRPC server: services, health, reflection and transport settings on
//! one listener. It serves; [`crate::app`] decides when to start and stop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Server;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use super::admin::Admin;
use super::caller::CallerLayer;
use super::keda::Keda;
use super::observe::ObserveLayer;
use super::producer::Producer;
use super::worker::Worker;
use crate::broker::Broker;
use crate::config::reload::Reloader;
use crate::keda::external_scaler_server::ExternalScalerServer;
use crate::pb;
use crate::pb::admin_service_server::AdminServiceServer;
use crate::pb::producer_service_server::ProducerServiceServer;
use crate::pb::worker_service_server::WorkerServiceServer;
use crate::security::{conn, Authenticator, ServerTls};

/// Transport settings and what the services need beyond the broker.
#[derive(Clone)]
pub struct ServerOptions {
    /// Largest request or response message, in bytes.
    pub max_message_bytes: usize,
    /// Most calls (streams included) open at once on one HTTP/2 connection.
    pub max_concurrent_streams: u32,
    /// What AdminService.ReloadConfig re-reads (`None`: it is refused).
    pub reloader: Option<Arc<Reloader>>,
    /// Who may call (authentication off: everyone, everything).
    pub auth: Arc<Authenticator>,
    /// TLS on the port (`None`: plaintext).
    pub tls: Option<Arc<ServerTls>>,
    /// A plaintext listener serving only `grpc.health.v1`.
    pub health_listen: Option<SocketAddr>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            max_message_bytes: 64 << 20,
            max_concurrent_streams: 1024,
            reloader: None,
            auth: Arc::new(Authenticator::disabled()),
            tls: None,
            health_listen: None,
        }
    }
}

/// A gRPC server serving on its listener.
pub struct Serving {
    /// The address it listens on (useful with port 0).
    pub addr: SocketAddr,
    /// The plaintext health port's address, if one was asked for.
    pub health_addr: Option<SocketAddr>,
    /// Readiness and per-service health.
    pub health: HealthReporter,
    stop_accepting: watch::Sender<bool>,
    close: watch::Sender<bool>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    health_server: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl Serving {
    /// Closes the listener; open connections go on taking new calls (a
    /// draining broker still takes Ack, Nack and ExtendLease on them).
    pub fn stop_accepting(&self) {
        let _ = self.stop_accepting.send(true);
    }

    /// Tells every connection to take no new calls (HTTP/2 GOAWAY) and to
    /// close once its open calls end; closes the listener too.
    pub fn close(&self) {
        let _ = self.stop_accepting.send(true);
        let _ = self.close.send(true);
        if let Some(h) = &self.health_server {
            h.abort();
        }
    }

    pub fn is_finished(&self) -> bool {
        self.server.is_finished()
    }

    /// Waits up to `within` for every open call to end; `None` if some remain.
    pub async fn finish(&mut self, within: Duration) -> Option<anyhow::Result<()>> {
        match tokio::time::timeout(within, &mut self.server).await {
            Ok(Ok(served)) => Some(served.map_err(Into::into)),
            Ok(Err(joined)) => Some(Err(joined.into())),
            Err(_) => None,
        }
    }

    /// Ends every open call at once.
    pub fn abort(&self) {
        self.server.abort();
        if let Some(h) = &self.health_server {
            h.abort();
        }
    }
}

/// Binds `addr` and serves `broker` until [`Serving::close`] and the last
/// open call ends.
pub async fn serve(broker: Broker, addr: SocketAddr, opts: ServerOptions) -> anyhow::Result<Serving> {
    let listener =
        TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let addr = listener.local_addr()?;
    let health_listener = match opts.health_listen {
        Some(a) => Some(
            TcpListener::bind(a)
                .await
                .map_err(|e| anyhow::anyhow!("health_listen: cannot listen on {a}: {e}"))?,
        ),
        None => None,
    };
    let (stop_accepting, accepting) = watch::channel(false);
    let (close, mut closing) = watch::channel(false);

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status("", ServingStatus::Serving).await;
    health.set_serving::<ProducerServiceServer<Producer>>().await;
    health.set_serving::<WorkerServiceServer<Worker>>().await;
    health.set_serving::<AdminServiceServer<Admin>>().await;
    health.set_serving::<ExternalScalerServer<Keda>>().await;

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(crate::keda::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(crate::keda::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let max = opts.max_message_bytes;
    let producer = ProducerServiceServer::new(Producer::new(broker.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let admin = AdminServiceServer::new(Admin::new(broker.clone(), opts.reloader.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let keda = ExternalScalerServer::new(Keda::new(broker.clone()));
    let observe = ObserveLayer::new(broker.metrics().clone());
    let worker = WorkerServiceServer::new(Worker::new(broker))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);

    let auth_on = opts.auth.enabled();
    let router = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .max_connection_age(Duration::from_secs(30 * 60))
        .max_concurrent_streams(opts.max_concurrent_streams)
        .trace_fn(move |req| super::observe::call_span(req, auth_on))
        // The one middleware stack: every layer a call passes before its handler.
        .layer(tower::ServiceBuilder::new().layer(observe).layer(CallerLayer::new(opts.auth.clone())))
        .add_service(health_service.clone())
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(producer)
        .add_service(worker)
        .add_service(admin)
        .add_service(keda);

    // Once told to stop accepting, the listener is closed but the stream of
    // connections stays open: its end would make the server send GOAWAY at
    // once, which only `close` should.
    let incoming = conn::accept(listener, opts.tls.clone(), accepting.clone());
    let mut closing_health = closing.clone();
    let server = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async move {
        let _ = closing.wait_for(|s| *s).await;
    }));
    let mut health_addr = None;
    let health_server = health_listener.map(|l| {
        health_addr = l.local_addr().ok();
        let incoming = conn::accept(l, None, accepting);
        tokio::spawn(Server::builder().add_service(health_service).serve_with_incoming_shutdown(
            incoming,
            async move {
                let _ = closing_health.wait_for(|s| *s).await;
            },
        ))
    });
    tracing::info!(%addr, tls = opts.tls.is_some(), auth = auth_on, "taskbroker serving");
    Ok(Serving { addr, health_addr, health, stop_accepting, close, server, health_server })
}
