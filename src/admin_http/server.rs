//! The admin HTTP server: serves the router on a bound listener, samples
//! throughput, and stops when told.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::guard::CsrfToken;
use super::throughput::Throughput;
use super::{router, Dashboard};
use crate::broker::Broker;

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
    /// Serves the dashboard for `broker` on `listener`.
    pub async fn start(listener: TcpListener, broker: Broker) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let throughput = Throughput::default();
        // The first sample now: rates have a start from the first page on.
        throughput.sample(&broker).await;
        let (stop, stopped) = watch::channel(false);
        let sampler = tokio::spawn(throughput.clone().run(broker.clone(), stopped.clone()));
        let app = router(Dashboard { broker, csrf: CsrfToken::generate(), throughput });
        let mut stopped = stopped;
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
