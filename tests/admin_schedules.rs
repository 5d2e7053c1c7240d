//! AdminService's schedule RPCs over real gRPC (ListSchedules, PutSchedule,
//! DeleteSchedule, TriggerSchedule), config schedules declared at start and
//! on reload, and the schedule loop firing on the injected clock; on the
//! memory and the embedded store (Redis: the store conformance suite and
//! tests/redis_schedules.rs).

mod common;

use std::time::Duration;

use common::{bad_fields, reason, TestServer, T0};
use taskbroker::config::StorageKind;
use taskbroker::pb;
use tonic::Code;

const CONFIG: &str = r#"
[[schedules]]
name = "nightly-report"
cron = "0 3 * * *"
timezone = "Europe/Berlin"
queue = "reports"
kind = "report.build"
payload = '{"scope":"all"}'
headers = { source = "cron" }

[[schedules]]
name = "tick"
every = "1m"
queue = "ticks"
kind = "tick"
"#;

/// How long the schedule loop (one pass a second) may take to act.
const WITHIN: Duration = Duration::from_secs(10);

async fn server(storage: StorageKind) -> TestServer {
    common::start_with(common::Options { storage, config: CONFIG, manual_clock: true, config_file: true })
        .await
}

async fn list(s: &mut TestServer) -> Vec<pb::Schedule> {
    s.admin.list_schedules(pb::ListSchedulesRequest {}).await.unwrap().into_inner().schedules
}

fn ms(t: &Option<prost_types::Timestamp>) -> Option<u64> {
    t.as_ref().map(|t| t.seconds as u64 * 1000 + t.nanos as u64 / 1_000_000)
}

/// Waits (bounded) until `done` holds, looking again whenever the broker
/// reports a change (and at least every 200 ms: a change can land between
/// a look and the wait).
async fn until<F, Fut>(s: &TestServer, what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WITHIN;
    while !done().await {
        assert!(tokio::time::Instant::now() < deadline, "not within {WITHIN:?}: {what}");
        let _ = tokio::time::timeout(Duration::from_millis(200), s.broker.activity()).await;
    }
}

fn runtime(name: &str) -> pb::Schedule {
    pb::Schedule {
        name: name.into(),
        cron: "*/15 * * * *".into(),
        timezone: "America/New_York".into(),
        queue: "hq".into(),
        kind: "sync".into(),
        payload: b"{}".to_vec(),
        catch_up: pb::ScheduleCatchUp::All as i32,
        ..Default::default()
    }
}

async fn rpcs_manage_runtime_schedules_beside_config_ones(storage: StorageKind) {
    let mut s = server(storage).await;
    let listed = list(&mut s).await;
    let names: Vec<_> = listed.iter().map(|x| (x.name.as_str(), x.source())).collect();
    assert_eq!(names, [("nightly-report", pb::ScheduleSource::Config), ("tick", pb::ScheduleSource::Config)]);
    let nightly = &listed[0];
    assert_eq!((nightly.cron.as_str(), nightly.timezone.as_str()), ("0 3 * * *", "Europe/Berlin"));
    assert_eq!(nightly.headers.get("source").map(String::as_str), Some("cron"));
    // 2026-01-01 03:00 in Berlin (CET) is 02:00 UTC.
    assert_eq!(ms(&nightly.next_run_time), Some(T0 + 2 * 3_600_000));
    assert_eq!(ms(&nightly.last_run_time), None);
    assert_eq!(listed[1].every, Some(prost_types::Duration { seconds: 60, nanos: 0 }));

    let put = s.admin.put_schedule(pb::PutScheduleRequest { schedule: Some(runtime("sync")) }).await.unwrap();
    let put = put.into_inner();
    assert_eq!((put.source(), put.catch_up()), (pb::ScheduleSource::Runtime, pb::ScheduleCatchUp::All));
    assert_eq!(ms(&put.next_run_time), Some(T0 + 15 * 60_000));
    assert_eq!(list(&mut s).await.len(), 3);

    let task = s.admin.trigger_schedule(pb::TriggerScheduleRequest { name: "sync".into() }).await.unwrap();
    let task = task.into_inner().task.unwrap();
    assert_eq!(
        (task.queue.as_str(), task.kind.as_str(), task.payload.as_slice()),
        ("hq", "sync", b"{}".as_slice())
    );
    assert_eq!(s.get(&task.id).await.state(), pb::TaskState::Ready);

    s.admin.delete_schedule(pb::DeleteScheduleRequest { name: "sync".into() }).await.unwrap();
    let gone = s.admin.delete_schedule(pb::DeleteScheduleRequest { name: "sync".into() }).await.unwrap_err();
    assert_eq!((gone.code(), reason(&gone).as_str()), (Code::NotFound, "SCHEDULE_NOT_FOUND"));
    let gone =
        s.admin.trigger_schedule(pb::TriggerScheduleRequest { name: "sync".into() }).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);

    // The config file owns its schedules.
    let owned = s.admin.delete_schedule(pb::DeleteScheduleRequest { name: "tick".into() }).await.unwrap_err();
    assert_eq!((owned.code(), reason(&owned).as_str()), (Code::FailedPrecondition, "SCHEDULE_FROM_CONFIG"));
    let owned =
        s.admin.put_schedule(pb::PutScheduleRequest { schedule: Some(runtime("tick")) }).await.unwrap_err();
    assert_eq!(reason(&owned), "SCHEDULE_FROM_CONFIG");

    // Bad input names each field.
    let bad = pb::Schedule { cron: "0 3 * *".into(), timezone: "Mars/Olympus".into(), ..runtime("bad") };
    let e = s.admin.put_schedule(pb::PutScheduleRequest { schedule: Some(bad) }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&e), ["schedule.timezone"]);
    let bad = pb::Schedule { cron: "0 3 * *".into(), kind: String::new(), ..runtime("bad") };
    let e = s.admin.put_schedule(pb::PutScheduleRequest { schedule: Some(bad) }).await.unwrap_err();
    assert_eq!(bad_fields(&e), ["schedule.cron", "schedule.kind"]);
    let e = s.admin.put_schedule(pb::PutScheduleRequest { schedule: None }).await.unwrap_err();
    assert_eq!(bad_fields(&e), ["schedule"]);
    s.shutdown().await;
}

#[tokio::test]
async fn rpcs_manage_runtime_schedules_beside_config_ones_memory() {
    rpcs_manage_runtime_schedules_beside_config_ones(StorageKind::Memory).await;
}

#[tokio::test]
async fn rpcs_manage_runtime_schedules_beside_config_ones_embedded() {
    rpcs_manage_runtime_schedules_beside_config_ones(StorageKind::Embedded).await;
}

/// The served broker's own loop fires a due time once the injected clock
/// reaches it, once.
#[tokio::test]
async fn the_schedule_loop_fires_when_the_clock_reaches_a_due_time() {
    let mut s = server(StorageKind::Memory).await;
    s.advance(Duration::from_secs(60)).await;
    let admin = s.admin.clone();
    until(&s, "the 00:01 tick", || {
        let mut admin = admin.clone();
        async move {
            let r = admin.get_queue(pb::GetQueueRequest { queue: "ticks".into() }).await;
            r.is_ok_and(|q| q.into_inner().counts.is_some_and(|c| c.ready == 1))
        }
    })
    .await;
    let tick = list(&mut s).await.into_iter().find(|x| x.name == "tick").unwrap();
    assert_eq!(ms(&tick.last_run_time), Some(T0 + 60_000));
    assert_eq!(ms(&tick.next_run_time), Some(T0 + 120_000));
    let leased = s.lease(&["ticks"], 10).await;
    assert_eq!(leased.len(), 1, "one task for the due time");
    s.shutdown().await;
}

#[tokio::test]
async fn a_reload_declares_the_files_schedules_and_keeps_runtime_ones() {
    let mut s = server(StorageKind::Embedded).await;
    s.admin.put_schedule(pb::PutScheduleRequest { schedule: Some(runtime("sync")) }).await.unwrap();
    let file = s.config_file();
    std::fs::write(
        &file,
        "[[schedules]]\nname = \"tick\"\nevery = \"5m\"\nqueue = \"ticks\"\nkind = \"tick\"\n",
    )
    .unwrap();
    let r = s.admin.reload_config(pb::ReloadConfigRequest {}).await.unwrap().into_inner();
    assert!(r.changes.iter().any(|c| c.starts_with("schedules[0].every")), "{:?}", r.changes);
    assert!(r.changes.iter().all(|c| !c.contains("needs a restart")), "{:?}", r.changes);
    let admin = s.admin.clone();
    until(&s, "the reloaded schedules", || {
        let mut admin = admin.clone();
        async move {
            let listed =
                admin.list_schedules(pb::ListSchedulesRequest {}).await.unwrap().into_inner().schedules;
            let names: Vec<_> = listed.iter().map(|x| x.name.as_str()).collect();
            names == ["sync", "tick"] && listed[1].every.as_ref().is_some_and(|e| e.seconds == 300)
        }
    })
    .await;
    // A bad schedule refuses the whole reload.
    std::fs::write(&file, "[[schedules]]\nname = \"tick\"\ncron = \"every day\"\nkind = \"tick\"\n").unwrap();
    let e = s.admin.reload_config(pb::ReloadConfigRequest {}).await.unwrap_err();
    assert!(e.message().contains("schedules[0].cron"), "{}", e.message());
    s.shutdown().await;
}

/// The dashboard's `/schedules` lists every schedule, escaping what users
/// wrote.
#[tokio::test]
async fn the_dashboard_lists_the_schedules() {
    let mut s = server(StorageKind::Memory).await;
    let tricky = pb::Schedule { kind: "<b>sync</b>".into(), ..runtime("sync") };
    s.admin.put_schedule(pb::PutScheduleRequest { schedule: Some(tricky) }).await.unwrap();
    let page = common::http::get(s.admin_addr, "/schedules").await;
    assert_eq!(page.status, 200, "{}", page.body);
    let body = page.body;
    for expected in [
        "data-schedule=\"nightly-report\"",
        "0 3 * * * (Europe/Berlin)",
        "2026-01-01T02:00:00.000Z",
        "data-schedule=\"tick\"",
        "every 1m",
        "data-source=\"runtime\"",
        "&#60;b&#62;sync&#60;/b&#62;",
    ] {
        assert!(body.contains(expected), "{expected:?} in:\n{body}");
    }
    assert!(!body.contains("<b>sync</b>"), "escaped:\n{body}");
    let home = common::http::get(s.admin_addr, "/").await;
    assert!(home.body.contains("href=\"/schedules\""), "linked from every page");
    s.shutdown().await;
}
