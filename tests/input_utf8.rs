//! A message that does not decode (here, a `string` field that is not UTF-8)
//! is `INVALID_ARGUMENT` naming the field, unary or streamed, where tonic's
//! own codec said `INTERNAL`; and the server keeps serving. The requests are
//! hand-encoded protobuf sent over real gRPC with a codec that passes bytes.

mod common;

use prost::bytes::BufMut;
use prost::Message;
use taskbroker::pb;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Sends bytes as they are; decodes the answer as `U`.
struct Raw<U>(std::marker::PhantomData<U>);

impl<U: Message + Default + Send + 'static> Codec for Raw<U> {
    type Encode = Vec<u8>;
    type Decode = U;
    type Encoder = RawEncoder;
    type Decoder = AnswerDecoder<U>;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> AnswerDecoder<U> {
        AnswerDecoder(std::marker::PhantomData)
    }
}

struct RawEncoder;

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

struct AnswerDecoder<U>(std::marker::PhantomData<U>);

impl<U: Message + Default> Decoder for AnswerDecoder<U> {
    type Item = U;
    type Error = Status;
    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|e| Status::internal(format!("test client: {e}")))
    }
}

/// `field` (a length-delimited field number) holding `bytes`.
fn field(number: u8, bytes: &[u8]) -> Vec<u8> {
    [&[number << 3 | 2, bytes.len() as u8][..], bytes].concat()
}

/// Not UTF-8: a lone continuation byte and an invalid lead byte.
const NOT_UTF8: &[u8] = &[0x80, 0xff];

async fn unary<U: Message + Default + Send + 'static>(
    channel: &Channel,
    method: &'static str,
    body: Vec<u8>,
) -> Result<U, Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let path = PathAndQuery::from_static(method);
    grpc.unary(tonic::Request::new(body), path, Raw::<U>(Default::default())).await.map(|r| r.into_inner())
}

fn assert_invalid(s: &Status, field: &str) {
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert_eq!(common::reason(s), "INVALID_ARGUMENT", "{s:?}");
    assert_eq!(common::bad_fields(s), [field], "{s:?}");
}

#[tokio::test]
async fn invalid_utf8_in_a_string_field_is_invalid_argument_naming_it() {
    let mut s = common::start().await;
    let channel = Channel::from_shared(format!("http://{}", s.addr)).unwrap().connect().await.unwrap();

    // EnqueueRequest { queue: "u", kind: <not UTF-8> }
    let enqueue = [field(1, b"u"), field(2, NOT_UTF8)].concat();
    let e = unary::<pb::EnqueueResponse>(&channel, "/taskbroker.v1.ProducerService/Enqueue", enqueue.clone())
        .await
        .unwrap_err();
    assert_invalid(&e, "kind");
    // EnqueueBatchRequest { tasks: [that] }
    let batch = field(1, &enqueue);
    let e = unary::<pb::EnqueueBatchResponse>(&channel, "/taskbroker.v1.ProducerService/EnqueueBatch", batch)
        .await
        .unwrap_err();
    assert_invalid(&e, "tasks.kind");
    // LeaseRequest { queues: ["u"], worker_id (5): <not UTF-8> }
    let lease = [field(1, b"u"), field(5, NOT_UTF8)].concat();
    let e =
        unary::<pb::LeaseResponse>(&channel, "/taskbroker.v1.WorkerService/Lease", lease).await.unwrap_err();
    assert_invalid(&e, "worker_id");
    // Not protobuf at all: a truncated field.
    let e =
        unary::<pb::EnqueueResponse>(&channel, "/taskbroker.v1.ProducerService/Enqueue", vec![0x12, 0x05])
            .await
            .unwrap_err();
    assert_invalid(&e, "kind");

    // Streamed: EnqueueStream ends with the same status after the good item.
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let good =
        pb::EnqueueRequest { queue: "u".into(), kind: "k".into(), ..Default::default() }.encode_to_vec();
    let items = tokio_stream::iter([good, enqueue]);
    let path = PathAndQuery::from_static("/taskbroker.v1.ProducerService/EnqueueStream");
    let codec = Raw::<pb::EnqueueStreamResponse>(Default::default());
    let mut answers = grpc.streaming(tonic::Request::new(items), path, codec).await.unwrap().into_inner();
    let mut last = None;
    while let Some(m) = answers.message().await.transpose() {
        match m {
            Ok(r) => assert!(matches!(r.result, Some(pb::enqueue_stream_response::Result::Task(_))), "{r:?}"),
            Err(status) => last = Some(status),
        }
    }
    assert_invalid(&last.expect("the stream ends with an error"), "kind");

    // Still serving: the one good item is there.
    assert_eq!(s.lease(&["u"], 10).await.len(), 1);
    s.shutdown().await;
}
