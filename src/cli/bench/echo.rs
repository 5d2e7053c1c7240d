//! The same-run baseline: a no-op `taskbroker.bench.v1.EchoService` served
//! in-process on its own `tb-broker` runtime, driven with the same payload,
//! concurrency, connections and client code as the broker scenarios.
//!
//! What bare gRPC does on this machine at this moment is the yardstick: a
//! broker figure reads as a fraction of it, which cancels much of the noise of
//! a shared 2-core machine.

use std::pin::Pin;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tonic::{Request, Response, Status, Streaming};

use super::load::{self, Pool};
use super::meter::{Meter, Probes};
use super::report::{Baseline, Row, Transport};
use super::under_test::{retire, server_runtime};
use super::Opts;
use crate::pb::bench::echo_service_client::EchoServiceClient;
use crate::pb::bench::echo_service_server::{EchoService, EchoServiceServer};
use crate::pb::bench::{EchoRequest, EchoResponse};

/// The stream baseline sends this many times `--tasks` messages: streams are
/// 10-100× faster than unary calls, and a run of a few ms is mostly noise.
const STREAM_FACTOR: u64 = 10;

/// Answers every call with the request's payload and does nothing else.
struct Echo;

#[tonic::async_trait]
impl EchoService for Echo {
    async fn echo(&self, req: Request<EchoRequest>) -> Result<Response<EchoResponse>, Status> {
        Ok(Response::new(EchoResponse { payload: req.into_inner().payload }))
    }

    type EchoStreamStream = Pin<Box<dyn Stream<Item = Result<EchoResponse, Status>> + Send>>;

    async fn echo_stream(
        &self,
        req: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<Self::EchoStreamStream>, Status> {
        let answers = req.into_inner().map(|m| m.map(|m| EchoResponse { payload: m.payload }));
        Ok(Response::new(Box::pin(answers)))
    }
}

/// Serves the echo service, measures both baselines, stops the service.
pub async fn measure(opts: &Opts, probes: Probes) -> anyhow::Result<Baseline> {
    let runtime = server_runtime()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (addr, server) = runtime
        .spawn(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            // `Server::tcp_nodelay` is ignored with an incoming stream: set it here.
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            let server = tokio::spawn(
                Server::builder().add_service(EchoServiceServer::new(Echo)).serve_with_incoming_shutdown(
                    incoming,
                    async {
                        let _ = stopped.await;
                    },
                ),
            );
            anyhow::Ok((addr, server))
        })
        .await??;
    let pool = Pool::connect(&format!("http://{addr}"), opts.connections, &Default::default()).await?;
    // Echo CPU is read from the same `tb-` threads; the broker is idle meanwhile.
    let unary = unary(&pool, opts, probes.clone()).await;
    let stream = stream(&pool, opts, probes).await;
    drop(pool);
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    retire(runtime).await;
    Ok(Baseline { unary, stream })
}

/// `--tasks` unary calls from `--concurrency` closed-loop callers, exactly as
/// the unary enqueue mode makes its calls.
async fn unary(pool: &Pool, opts: &Opts, probes: Probes) -> Row {
    let meter = Meter::start(probes.clone(), "baseline", "echo-unary");
    let (pool, payload) = (pool.clone(), load::payload(opts.payload_bytes));
    load::closed_loop(opts.concurrency, opts.tasks, meter.tally(), move |caller, _| {
        let mut client = EchoServiceClient::new(pool.channel(caller));
        let req = EchoRequest { payload: payload.clone() };
        async move { client.echo(req).await.map(|_| 1) }
    })
    .await;
    meter.finish(Transport::Unary, None)
}

/// One bidirectional stream per caller, `STREAM_FACTOR × --tasks` messages
/// in all, each caller sending as fast as flow control allows and counting
/// the answers.
async fn stream(pool: &Pool, opts: &Opts, probes: Probes) -> Row {
    let meter = Meter::start(probes.clone(), "baseline", "echo-stream");
    let total = opts.tasks * STREAM_FACTOR;
    let callers = opts.concurrency as u64;
    let handles = (0..callers)
        .map(|caller| {
            let share = total / callers + u64::from(caller < total % callers);
            let mut client = EchoServiceClient::new(pool.channel(caller as usize));
            let payload = load::payload(opts.payload_bytes);
            let tally = meter.tally();
            tokio::spawn(async move {
                if share == 0 {
                    return;
                }
                let requests =
                    tokio_stream::iter((0..share).map(move |_| EchoRequest { payload: payload.clone() }));
                let mut answers = match client.echo_stream(requests).await {
                    Ok(r) => r.into_inner(),
                    Err(s) => return tally.status(&s),
                };
                tally.done(0, 1);
                loop {
                    match answers.message().await {
                        Ok(Some(_)) => tally.done(1, 0),
                        Ok(None) => break,
                        Err(s) => return tally.status(&s),
                    }
                }
            })
        })
        .collect();
    load::join(handles).await;
    meter.finish(Transport::Stream, None)
}
