mod common;

#[tokio::test]
async fn harness_round_trip() {
    let mut s = common::start().await;
    let t = s.enqueue("q", "k").await;
    let leased = s.lease(&["q"], 1).await;
    assert_eq!(leased[0].task.as_ref().unwrap().id, t.id);
    s.ack(&leased[0]).await.unwrap();
    s.shutdown().await;
}
