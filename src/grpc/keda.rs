//! KEDA's `externalscaler.ExternalScaler` (vendored proto, unchanged): lets
//! KEDA scale a worker Deployment on a queue's depth. Trigger metadata:
//! `queue` (or `queues`, comma-separated), `targetPerReplica` (10),
//! `includeLeased` (true), `activationThreshold` (0); see
//! [`crate::core::scaler`].

use std::pin::Pin;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::caller::Caller;
use crate::broker::{Broker, BrokerError, Phase};
use crate::core::access::{Access, Operation};
use crate::core::scaler::ScalerSpec;
use crate::keda as pb;
use crate::keda::external_scaler_server::ExternalScaler;

/// How often an activity stream looks again even without a signal (changes
/// made by other replicas over Redis that send no event, such as an ack).
const RECHECK: Duration = Duration::from_millis(250);

pub struct Keda {
    broker: Broker,
}

impl Keda {
    pub fn new(broker: Broker) -> Self {
        Self { broker }
    }
}

/// The trigger's spec, if the caller may inspect every queue it names.
fn spec(r: &pb::ScaledObjectRef, access: &Access) -> Result<ScalerSpec, Status> {
    let s = ScalerSpec::parse(&r.scaler_metadata)
        .map_err(|(key, why)| Status::from(BrokerError::invalid(format!("scalerMetadata.{key}"), why)))?;
    for q in &s.queues {
        access.check(Operation::Scaler, q).map_err(BrokerError::PermissionDenied)?;
    }
    Ok(s)
}

type ActiveStream = Pin<Box<dyn Stream<Item = Result<pb::IsActiveResponse, Status>> + Send>>;
type SpecStream = Pin<Box<dyn Stream<Item = Result<pb::GetMetricSpecResponse, Status>> + Send>>;

fn metric_spec(s: &ScalerSpec) -> pb::GetMetricSpecResponse {
    pb::GetMetricSpecResponse {
        metric_specs: vec![pb::MetricSpec {
            metric_name: s.metric_name(),
            target_size: s.target_per_replica.ceil() as i64,
            target_size_float: s.target_per_replica,
        }],
    }
}

#[tonic::async_trait]
impl ExternalScaler for Keda {
    async fn is_active(
        &self,
        req: Request<pb::ScaledObjectRef>,
    ) -> Result<Response<pb::IsActiveResponse>, Status> {
        let s = spec(req.get_ref(), &Caller::of(&req).access)?;
        let value = self.broker.scaler_value(&s).await?;
        Ok(Response::new(pb::IsActiveResponse { result: s.is_active(value) }))
    }

    type StreamIsActiveStream = ActiveStream;

    /// The activity now, then every change of it, as soon as the broker
    /// sees one (within [`RECHECK`] for changes only other replicas see).
    async fn stream_is_active(
        &self,
        req: Request<pb::ScaledObjectRef>,
    ) -> Result<Response<Self::StreamIsActiveStream>, Status> {
        let s = spec(req.get_ref(), &Caller::of(&req).access)?;
        let broker = self.broker.clone();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut last = None;
            let mut phase = broker.phase();
            loop {
                let changed = broker.activity();
                tokio::pin!(changed);
                // Polled once so it counts as listening before the look.
                let _ = futures_util::FutureExt::now_or_never(changed.as_mut());
                let active = match broker.scaler_value(&s).await {
                    Ok(v) => s.is_active(v),
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                if last != Some(active) {
                    if tx.send(Ok(pb::IsActiveResponse { result: active })).await.is_err() {
                        return;
                    }
                    last = Some(active);
                }
                tokio::select! {
                    _ = &mut changed => {}
                    _ = tokio::time::sleep(RECHECK) => {}
                    _ = tx.closed() => return,
                    // Draining: KEDA reconnects to a replica that goes on.
                    _ = phase.wait_for(|p| *p != Phase::Serving) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_metric_spec(
        &self,
        req: Request<pb::ScaledObjectRef>,
    ) -> Result<Response<pb::GetMetricSpecResponse>, Status> {
        Ok(Response::new(metric_spec(&spec(req.get_ref(), &Caller::of(&req).access)?)))
    }

    type StreamMetricSpecStream = SpecStream;

    /// The spec depends only on the trigger's metadata: sent once, then the
    /// stream stays open until the client leaves.
    async fn stream_metric_spec(
        &self,
        req: Request<pb::ScaledObjectRef>,
    ) -> Result<Response<Self::StreamMetricSpecStream>, Status> {
        let first = metric_spec(&spec(req.get_ref(), &Caller::of(&req).access)?);
        let stream =
            futures_util::stream::once(async move { Ok(first) }).chain(futures_util::stream::pending());
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_metrics(
        &self,
        req: Request<pb::GetMetricsRequest>,
    ) -> Result<Response<pb::GetMetricsResponse>, Status> {
        let caller = Caller::of(&req);
        let pb::GetMetricsRequest { scaled_object_ref, metric_name: _ } = req.into_inner();
        let r = scaled_object_ref
            .ok_or_else(|| Status::from(BrokerError::invalid("scaledObjectRef", "required")))?;
        let s = spec(&r, &caller.access)?;
        let value = self.broker.scaler_value(&s).await?;
        Ok(Response::new(pb::GetMetricsResponse {
            metric_values: vec![pb::MetricValue {
                metric_name: s.metric_name(),
                metric_value: i64::try_from(value).unwrap_or(i64::MAX),
                metric_value_float: value as f64,
            }],
        }))
    }
}
