//! Response budgets count whole messages: a Lease answer stays under the
//! clients' 4 MiB default whatever its tasks carry (headers, errors), and an
//! enqueue answers without the payloads it took.

mod common;

use prost::Message;
use taskbroker::config::StorageKind;
use taskbroker::pb;
use tokio_stream::StreamExt;

/// gRPC's default receive limit, which clients keep unless told otherwise.
const CLIENT_LIMIT: usize = 4 << 20;

/// 64 headers of 256-byte names and values: 32 KiB of headers per task, at
/// the validation limits.
fn big_headers(i: usize) -> std::collections::HashMap<String, String> {
    (0..64).map(|h| (format!("{h:02}-{i:06}-{}", "n".repeat(246)), "v".repeat(256))).collect()
}

async fn server(storage: &str) -> (common::TestServer, Option<common::redis::RedisServer>) {
    match storage {
        "memory" => (common::start().await, None),
        "embedded" => {
            let opts = common::Options { storage: StorageKind::Embedded, ..Default::default() };
            (common::start_with(opts).await, None)
        }
        "redis" => {
            let redis = common::redis::RedisServer::start();
            let config = Box::leak(format!("redis_url = {:?}", redis.url()).into_boxed_str());
            let opts = common::Options { storage: StorageKind::Redis, config, ..Default::default() };
            (common::start_with(opts).await, Some(redis))
        }
        other => unreachable!("{other}"),
    }
}

/// Leases everything from `queue` in calls of up to 1000 tasks; checks each
/// answer's encoded size; returns the leased tasks and the largest answer.
async fn lease_all(s: &mut common::TestServer, queue: &str, expect: usize) -> (Vec<pb::LeasedTask>, usize) {
    let mut got = Vec::new();
    let mut largest = 0;
    while got.len() < expect {
        let req = pb::LeaseRequest { queues: vec![queue.into()], max_tasks: 1000, ..Default::default() };
        // The client's default 4 MiB limit applies: an answer over it fails here.
        let resp = s.worker.lease(req).await.expect("a lease answer within the client's limit").into_inner();
        let size = resp.encoded_len();
        assert!(size <= CLIENT_LIMIT, "a lease answer of {size} bytes");
        assert!(!resp.tasks.is_empty(), "{} of {expect} tasks leased, then none", got.len());
        largest = largest.max(size);
        got.extend(resp.tasks);
    }
    (got, largest)
}

async fn a_lease_of_tasks_with_large_headers_stays_under_4_mib_encoded(storage: &str) {
    let (mut s, _redis) = server(storage).await;
    const N: usize = 300; // ~10 MiB of headers in all
    for chunk in (0..N).collect::<Vec<_>>().chunks(50) {
        let tasks = chunk
            .iter()
            .map(|&i| pb::EnqueueRequest {
                queue: "hdr".into(),
                kind: "k".into(),
                payload: vec![7; 1000],
                headers: big_headers(i),
                max_attempts: Some(5),
                ..Default::default()
            })
            .collect();
        s.producer.enqueue_batch(pb::EnqueueBatchRequest { tasks }).await.unwrap();
    }
    let (first, largest) = lease_all(&mut s, "hdr", N).await;
    assert_eq!(first.len(), N, "every task leased once");
    // Fail each with the longest error kept: the second round carries them too.
    for t in &first {
        let nack = pb::NackRequest {
            task_id: t.task.as_ref().unwrap().id.clone(),
            lease_id: t.lease_id.clone(),
            error: "e".repeat(20_000),
            retry_after: Some(prost_types::Duration { seconds: 0, nanos: 0 }),
            no_retry: false,
        };
        s.worker.nack(nack).await.unwrap();
    }
    let (second, largest_again) = lease_all(&mut s, "hdr", N).await;
    assert!(second.iter().all(|t| t.task.as_ref().unwrap().last_error.len() == 16 * 1024));
    eprintln!(
        "{storage}: largest lease answer {largest} bytes, {largest_again} with errors (limit {CLIENT_LIMIT})"
    );
}

#[tokio::test]
async fn a_lease_of_tasks_with_large_headers_stays_under_4_mib_encoded_memory() {
    a_lease_of_tasks_with_large_headers_stays_under_4_mib_encoded("memory").await;
}

#[tokio::test]
async fn a_lease_of_tasks_with_large_headers_stays_under_4_mib_encoded_embedded() {
    a_lease_of_tasks_with_large_headers_stays_under_4_mib_encoded("embedded").await;
}

#[tokio::test]
async fn a_lease_of_tasks_with_large_headers_stays_under_4_mib_encoded_redis() {
    a_lease_of_tasks_with_large_headers_stays_under_4_mib_encoded("redis").await;
}

fn large(i: usize) -> pb::EnqueueRequest {
    pb::EnqueueRequest {
        queue: "big".into(),
        kind: "k".into(),
        payload: vec![(i % 256) as u8; 100 << 10],
        ..Default::default()
    }
}

#[tokio::test]
async fn an_enqueue_batch_of_50_x_100_kib_is_answered_without_the_payloads() {
    let mut s = common::start().await;
    let request = pb::EnqueueBatchRequest { tasks: (0..50).map(large).collect() };
    let sent = request.encoded_len();
    // Over the client's 4 MiB receive limit if the payloads came back.
    let resp = s.producer.enqueue_batch(request).await.expect("an answer within the client's limit");
    let resp = resp.into_inner();
    let answered = resp.encoded_len();
    eprintln!("EnqueueBatch: {sent} bytes sent, {answered} bytes answered");
    assert!(answered * 100 < sent, "{answered} bytes answered for {sent} sent");
    assert_eq!(resp.results.len(), 50);
    for (i, r) in resp.results.iter().enumerate() {
        let Some(pb::enqueue_result::Result::Task(t)) = &r.result else { panic!("item {i}: {r:?}") };
        assert!(t.payload.is_empty() && t.result.is_empty(), "item {i} echoes its payload");
        // GetTask returns it.
        assert_eq!(s.get(&t.id).await.payload, large(i).payload, "item {i} as stored");
    }
}

#[tokio::test]
async fn enqueue_and_enqueue_stream_answer_without_the_payload() {
    let mut s = common::start().await;
    let one = s.producer.enqueue(large(1)).await.unwrap().into_inner();
    assert!(one.encoded_len() < 1024, "Enqueue answered {} bytes", one.encoded_len());
    assert_eq!(s.get(&one.task.unwrap().id).await.payload, large(1).payload);

    let requests = tokio_stream::iter((0..50).map(large));
    let mut answers = s.producer.enqueue_stream(requests).await.unwrap().into_inner();
    let mut n = 0;
    while let Some(answer) = answers.next().await {
        let answer = answer.expect("an answer within the client's limit");
        assert!(answer.encoded_len() < 1024, "EnqueueStream answered {} bytes", answer.encoded_len());
        let Some(pb::enqueue_stream_response::Result::Task(t)) = answer.result else { panic!("{answer:?}") };
        assert_eq!(s.get(&t.id).await.payload, large(n).payload);
        n += 1;
    }
    assert_eq!(n, 50);
}
