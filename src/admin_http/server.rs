//! The admin HTTP server: serves the router on a bound listener, samples
//! throughput, and stops when told.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::guard::CsrfToken;
use super::throughput::Throughput;
use super::{router, Dashboard};
use crate::broker::Broker;
use crate::security::{conn, Authenticator, Conn, ServerTls};

/// The admin port, serving.
pub struct AdminServer {
    /// Where it listens (useful with port 0).
    pub addr: SocketAddr,
    /// Ends the server (gracefully) and the sampler.
    stop: watch::Sender<bool>,
    serving: JoinHandle<std::io::Result<()>>,
    sampler: JoinHandle<()>,
}

impl AdminServer {
    /// Serves the dashboard for `broker` on `listener` (over TLS when
    /// given), to the viewers `auth` admits.
    pub async fn start(
        listener: TcpListener,
        broker: Broker,
        tls: Option<Arc<ServerTls>>,
        auth: Arc<Authenticator>,
    ) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let throughput = Throughput::default();
        // The first sample now: rates have a start from the first page on.
        throughput.sample(&broker).await;
        let (stop, stopped) = watch::channel(false);
        let sampler = tokio::spawn(throughput.clone().run(broker.clone(), stopped.clone()));
        let dashboard =
            Dashboard { broker, auth, tls: tls.is_some(), csrf: CsrfToken::generate(), throughput };
        let app = router(dashboard);
        let mut stopped = stopped;
        let listener = Accepted { conns: Box::pin(conn::accept(listener, tls, stopped.clone())), addr };
        let serving = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await
        });
        Ok(Self { addr, stop, serving, sampler })
    }

    /// Stops accepting, lets open requests finish within `grace`, then
    /// ends what is left.
    pub async fn stop(mut self, grace: Duration) {
        let _ = self.stop.send(true);
        let _ = (&mut self.sampler).await;
        match tokio::time::timeout(grace, &mut self.serving).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "admin server failed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "admin server task failed"),
            Err(_) => {
                tracing::warn!(?grace, "admin requests still open; ending them");
                self.serving.abort();
            }
        }
    }
}

/// The connections of [`conn::accept`] (plain or TLS) as axum takes them.
struct Accepted {
    conns: Pin<Box<dyn Stream<Item = std::io::Result<Conn>> + Send>>,
    addr: SocketAddr,
}

impl axum::serve::Listener for Accepted {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            if let Some(Ok(c)) = self.conns.next().await {
                let remote = c.peer().remote.unwrap_or(self.addr);
                return (c, remote);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}
