//! `WorkerService.Stream`: translates between the stream's protobuf messages
//! and the broker's session ([`crate::broker::session`]), which owns all the
//! logic. The first message must be `subscribe`.

use std::pin::Pin;

use futures_util::{Stream, StreamExt};
use tonic::{Status, Streaming};

use super::caller::Caller;
use super::convert;
use super::status::{to_rpc_status, to_status};
use crate::broker::session::{self, Command, Event, SettleOp, Settlement};
use crate::broker::validate::SubscribeInput;
use crate::broker::{Broker, BrokerError};
use crate::core::access::Access;
use crate::pb;
use crate::pb::stream_request::Msg;

pub type ResponseStream = Pin<Box<dyn Stream<Item = Result<pb::StreamResponse, Status>> + Send>>;

/// Reads the subscription, then starts the session.
pub async fn open(
    broker: Broker,
    caller: Caller,
    mut inbound: Streaming<pb::StreamRequest>,
) -> Result<ResponseStream, Status> {
    let first = inbound.message().await?.and_then(|m| m.msg);
    let Some(Msg::Subscribe(sub)) = first else {
        return Err(to_status(BrokerError::invalid("msg", "the first message must be subscribe")));
    };
    let sub = broker.validate_subscription(subscribe_input(sub, caller.access)?)?;
    let commands = inbound.map(|m| match m {
        Ok(m) => command(m),
        Err(status) => Command::Violation(BrokerError::invalid("stream", status.message().to_owned())),
    });
    // Bounded in bytes: the session waits (and ends a stream nobody reads).
    let (tx, rx) = session::outbound(broker.stream_limits().outbound_bytes);
    tokio::spawn(session::run(broker, sub, Box::pin(commands), tx));
    Ok(Box::pin(rx.map(|ev| ev.map(response).map_err(to_status))))
}

fn subscribe_input(s: pb::Subscribe, access: Access) -> Result<SubscribeInput, BrokerError> {
    let pb::Subscribe { queues, mode, weights, max_in_flight, lease_duration, worker_id } = s;
    let weighted = match pb::SubscribeMode::try_from(mode) {
        Ok(pb::SubscribeMode::Weighted) => true,
        Ok(pb::SubscribeMode::Strict | pb::SubscribeMode::Unspecified) => false,
        Err(_) => return Err(BrokerError::invalid("mode", format!("unknown mode {mode}"))),
    };
    Ok(SubscribeInput {
        queues,
        weighted,
        weights: weights.into_iter().collect(),
        max_in_flight,
        lease_duration: convert::duration_field("lease_duration", lease_duration)?,
        worker_id,
        access,
    })
}

fn command(m: pb::StreamRequest) -> Command {
    match m.msg {
        None => Command::Violation(BrokerError::invalid("msg", "empty stream message")),
        Some(Msg::Subscribe(_)) => Command::Violation(BrokerError::invalid("subscribe", "sent twice")),
        Some(Msg::Credit(pb::Credit { count })) => Command::Credit(count),
        Some(Msg::Drain(pb::Drain {})) => Command::Drain,
        Some(Msg::Ack(pb::AckRequest { task_id, lease_id, result })) => {
            Command::Settle(match convert::held(&task_id, &lease_id) {
                Ok((id, lease)) => Settlement::Ack { id, lease, result },
                Err(error) => Settlement::Invalid { task_id, lease_id, op: SettleOp::Ack, error },
            })
        }
        Some(Msg::Nack(pb::NackRequest { task_id, lease_id, error, retry_after, no_retry })) => {
            let parsed = convert::duration_field("retry_after", retry_after)
                .and_then(|retry_after| Ok((convert::held(&task_id, &lease_id)?, retry_after)));
            Command::Settle(match parsed {
                Ok(((id, lease), retry_after)) => {
                    Settlement::Nack { id, lease, error, retry_after, no_retry }
                }
                Err(error) => Settlement::Invalid { task_id, lease_id, op: SettleOp::Nack, error },
            })
        }
        Some(Msg::Extend(pb::ExtendLeaseRequest { task_id, lease_id, extend_by })) => {
            let parsed = convert::duration_field("extend_by", extend_by)
                .and_then(|extend_by| Ok((convert::held(&task_id, &lease_id)?, extend_by)));
            Command::Settle(match parsed {
                Ok(((id, lease), extend_by)) => Settlement::Extend { id, lease, extend_by },
                Err(error) => Settlement::Invalid { task_id, lease_id, op: SettleOp::Extend, error },
            })
        }
    }
}

fn response(ev: Event) -> pb::StreamResponse {
    use pb::stream_response::Msg as Out;
    let msg = match ev {
        Event::Task(task) => Out::Task(convert::leased_task(*task)),
        Event::Settled { task_id, lease_id, op, outcome } => {
            let operation = match op {
                SettleOp::Ack => pb::SettleOperation::Ack,
                SettleOp::Nack => pb::SettleOperation::Nack,
                SettleOp::Extend => pb::SettleOperation::Extend,
            };
            let (lease_expire_time, error) = match outcome {
                Ok(expire) => (expire.map(convert::timestamp), None),
                Err(e) => (None, Some(to_rpc_status(e))),
            };
            Out::Settled(pb::Settled {
                task_id,
                lease_id,
                operation: operation as i32,
                lease_expire_time,
                error,
            })
        }
        Event::LeaseLost(lost) => Out::LeaseLost(pb::LeaseLost {
            task_id: lost.task_id.to_string(),
            lease_id: lost.lease_id.to_string(),
            reason: lost.reason.as_str().to_owned(),
        }),
        Event::Draining => Out::Draining(pb::Draining {}),
    };
    pb::StreamResponse { msg: Some(msg) }
}
