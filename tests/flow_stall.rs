//! Worker streams are bounded: a client that stops reading has its stream
//! ended and its leases back within `stream_stall_timeout`, the broker keeps
//! serving meanwhile, `max_concurrent_streams` caps one connection, and idle
//! streams cost little memory.

mod common;
mod stream_client;

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use stream_client::{open, subscribe, task_of};
use taskbroker::pb;
use tonic::transport::Channel;

/// A client on its own connection.
async fn connection(addr: std::net::SocketAddr) -> pb::worker_service_client::WorkerServiceClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    pb::worker_service_client::WorkerServiceClient::new(channel)
}

const STALL_CONFIG: &str = "stream_stall_timeout = \"1s\"\nstream_outbound_bytes = 65536\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_stops_reading_gives_its_leases_back_within_the_stall_timeout() {
    const STALL: Duration = Duration::from_secs(1);
    // 50 tasks of 64 KiB: one lease's worth (under 4 MiB), and more than
    // the stream's 64 KiB outbound bound, the client's 2 MiB flow-control
    // window and the transport's buffers hold.
    const N: usize = 50;
    let mut s = common::start_with(common::Options { config: STALL_CONFIG, ..Default::default() }).await;
    let tasks = (0..N)
        .map(|i| pb::EnqueueRequest {
            queue: "stall".into(),
            kind: format!("k{i}"),
            payload: vec![1; 64 << 10],
            ..Default::default()
        })
        .collect();
    let results = s.producer.enqueue_batch(pb::EnqueueBatchRequest { tasks }).await.unwrap().into_inner();
    let ids: Vec<taskbroker::core::task::TaskId> = results
        .results
        .iter()
        .map(|r| match &r.result {
            Some(pb::enqueue_result::Result::Task(t)) => t.id.parse().unwrap(),
            other => panic!("{other:?}"),
        })
        .collect();

    // A client with credit for every task and an hour-long lease, which
    // never reads what it is sent.
    let mut sub = subscribe(&["stall"], 1000);
    sub.lease_duration = Some(common::secs(3600));
    let own = connection(s.addr).await;
    let staller = open(&own, sub).await;
    let started = Instant::now();
    // It takes every task (one lease, before it sends). A lease
    // sends no signal to a third party: poll the store, bounded.
    loop {
        let mut leased = 0;
        for id in &ids {
            leased += usize::from(s.broker.get(*id).await.unwrap().lease.is_some());
        }
        if leased == N {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "the stream leased {leased} of {N}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Meanwhile the broker answers others at once.
    let asked = Instant::now();
    let probe = s.enqueue("other", "probe").await;
    s.get(&probe.id).await;
    let answered = asked.elapsed();
    assert!(answered < Duration::from_millis(500), "a call took {answered:?} during the stall");

    // Another worker gets every task once the stall timeout ends the stream.
    let mut got = std::collections::HashSet::new();
    let deadline = started + STALL + Duration::from_secs(5);
    while got.len() < N {
        assert!(
            Instant::now() < deadline,
            "{} of {N} tasks came back within {:?}",
            got.len(),
            deadline - started
        );
        let req = pb::LeaseRequest {
            queues: vec!["stall".into()],
            max_tasks: 100,
            wait: Some(common::secs(1)),
            ..Default::default()
        };
        for t in s.worker.lease(req).await.unwrap().into_inner().tasks {
            assert_eq!(task_of(&t).attempt, 2, "{}: leased by the stalled stream first", task_of(&t).kind);
            got.insert(task_of(&t).id.clone());
        }
    }
    eprintln!(
        "{N} tasks back {:?} after the stream stopped reading (stall timeout {STALL:?})",
        started.elapsed()
    );
    // Reading at last, the client finds why its stream was ended.
    let mut staller = staller;
    let status = staller.end_status().await;
    assert_eq!(
        (status.code(), common::reason(&status).as_str()),
        (tonic::Code::Unavailable, "STREAM_STALLED")
    );
    drop((staller, own));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrent_streams_caps_one_connection() {
    let s =
        common::start_with(common::Options { config: "max_concurrent_streams = 10", ..Default::default() })
            .await;
    let client = connection(s.addr).await;
    let mut open_streams = Vec::new();
    for _ in 0..10 {
        open_streams.push(open(&client, subscribe(&["capped"], 1)).await);
    }
    // The 11th waits for one of the ten to end (the client holds it back
    // until the server allows another stream).
    let eleventh = tokio::spawn({
        let client = client.clone();
        async move { open(&client, subscribe(&["capped"], 1)).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!eleventh.is_finished(), "an 11th stream opened on a connection capped at 10");
    // Another connection is not held back.
    let _other = open(&connection(s.addr).await, subscribe(&["capped"], 1)).await;
    let mut first = open_streams.remove(0);
    first.close_requests();
    assert!(first.ends_within(Duration::from_secs(5)).await.is_none(), "the first stream ends cleanly");
    tokio::time::timeout(Duration::from_secs(5), eleventh).await.expect("the 11th opens").unwrap();
}

/// The process's resident memory, in bytes (Linux).
fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status (Linux)");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
    line.split_whitespace().nth(1).unwrap().parse::<usize>().unwrap() * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_streams_cost_bounded_memory() {
    const CONNECTIONS: usize = 20;
    const PER_CONNECTION: usize = 500;
    const STREAMS: usize = CONNECTIONS * PER_CONNECTION;
    let mut s = common::start().await;
    let clients = join_all((0..CONNECTIONS).map(|_| connection(s.addr))).await;
    // Warm up: one stream per connection, so what follows measures streams.
    let warm = join_all(clients.iter().map(|c| open(c, subscribe(&["idle"], 10)))).await;
    let before = rss();
    let started = Instant::now();
    let mut streams = Vec::with_capacity(STREAMS);
    for client in &clients {
        streams.extend(join_all((0..PER_CONNECTION).map(|_| open(client, subscribe(&["idle"], 10)))).await);
    }
    let opened = started.elapsed();
    let after = rss();
    let per_stream = after.saturating_sub(before) / STREAMS;
    eprintln!(
        "{STREAMS} idle streams over {CONNECTIONS} connections opened in {opened:?}: RSS {} -> {} MiB, \
         {per_stream} bytes per idle stream (broker and client sides, one process)",
        before >> 20,
        after >> 20
    );
    assert!(per_stream < 64 << 10, "{per_stream} bytes per idle stream");
    // The broker still serves, and a task reaches one of the idle streams.
    let asked = Instant::now();
    let t = s.enqueue("idle", "wake").await;
    assert!(asked.elapsed() < Duration::from_secs(1), "Enqueue took {:?}", asked.elapsed());
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.get(&t.id).await.state != pb::TaskState::Leased as i32 {
        assert!(Instant::now() < deadline, "no idle stream took the task");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop((streams, warm));
}
