//! The web dashboard over real HTTP against a real broker: counts, escaping,
//! the cross-site guard on actions, paging, health, 404s, and start-up with
//! a taken admin address. (`tests/dashboard/test_dashboard.py` drives the
//! same pages in a real headless browser.)

mod common;
#[path = "common/env.rs"]
mod env;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

use common::http::{self, Response};
use common::{secs, TestServer};
use taskbroker::app::{self, AdminBindError};
use taskbroker::config::{Config, StorageKind};
use taskbroker::core::clock::SystemClock;
use taskbroker::pb;

/// `queue`'s `(paused, ready, dead)` as the gRPC AdminService reports them.
async fn grpc_queue(s: &mut TestServer, queue: &str) -> (bool, u64, u64) {
    let q = s.admin.get_queue(pb::GetQueueRequest { queue: queue.into() }).await.unwrap().into_inner();
    let c = q.counts.unwrap();
    (q.paused, c.ready, c.dead)
}

/// Puts one task in each of succeeded, dead (with `error`), leased; two
/// ready; one scheduled. Returns the dead task's id.
async fn tasks_in_every_state(s: &mut TestServer, queue: &str, error: &str) -> String {
    s.enqueue(queue, "done").await;
    let done = s.lease(&[queue], 1).await;
    s.ack(&done[0]).await.unwrap();
    s.enqueue(queue, "fails").await;
    let failing = s.lease(&[queue], 1).await.remove(0);
    let dead_id = failing.task.as_ref().unwrap().id.clone();
    s.worker
        .nack(pb::NackRequest {
            task_id: dead_id.clone(),
            lease_id: failing.lease_id.clone(),
            error: error.into(),
            no_retry: true,
            ..Default::default()
        })
        .await
        .unwrap();
    s.enqueue(queue, "running").await;
    s.lease(&[queue], 1).await;
    s.enqueue(queue, "waiting").await;
    s.enqueue(queue, "waiting").await;
    s.enqueue_req(pb::EnqueueRequest {
        queue: queue.into(),
        kind: "later".into(),
        delay: Some(secs(3600)),
        ..Default::default()
    })
    .await;
    dead_id
}

/// The text between `start` (included) and the next `end` after it.
fn section<'a>(html: &'a str, start: &str, end: &str) -> &'a str {
    let from = html.find(start).unwrap_or_else(|| panic!("{start:?} not in:\n{html}"));
    let rest = &html[from..];
    let after = rest[start.len()..].find(end).map_or(rest.len(), |i| start.len() + i + end.len());
    &rest[..after]
}

/// The number in the `data-state="STATE"` cell of the queues page's row of `queue`.
fn row_count(html: &str, queue: &str, state: &str) -> u64 {
    let row = section(html, &format!("<tr data-queue=\"{queue}\">"), "</tr>");
    let cell = section(row, &format!("data-state=\"{state}\">"), "</a>");
    let cell = cell.strip_suffix("</a>").unwrap();
    let text = &cell[cell.rfind('>').unwrap() + 1..];
    text.parse().unwrap_or_else(|_| panic!("{state} of {queue}: {cell:?}"))
}

/// The form token the queue page carries.
fn csrf(html: &str) -> String {
    let field = section(html, "name=\"csrf\" value=\"", "\">");
    field["name=\"csrf\" value=\"".len()..field.len() - 2].to_owned()
}

fn ok(r: Response) -> String {
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

#[tokio::test]
async fn the_pages_show_the_counts_of_every_state() {
    counts_of_every_state(StorageKind::Memory).await;
}

#[tokio::test]
async fn the_pages_show_the_counts_of_every_state_on_the_embedded_store() {
    counts_of_every_state(StorageKind::Embedded).await;
}

async fn counts_of_every_state(storage: StorageKind) {
    let mut s = common::start_with(common::Options { storage, ..Default::default() }).await;
    let dead = tasks_in_every_state(&mut s, "work", "SMTP said no").await;
    let home = ok(http::get(s.admin_addr, "/").await);
    for (state, n) in
        [("scheduled", 1), ("ready", 2), ("leased", 1), ("succeeded", 1), ("dead", 1), ("canceled", 0)]
    {
        assert_eq!(row_count(&home, "work", state), n, "{state}");
    }
    assert!(home.contains("http-equiv=\"refresh\""), "the queues page refreshes itself");
    assert!(!section(&home, "<tr data-queue=\"work\">", "</tr>").contains("badge paused"));

    let page = ok(http::get(s.admin_addr, "/queues/work?state=dead").await);
    assert!(page.contains(&format!("data-task=\"{dead}\"")), "{page}");
    assert!(page.contains("<td class=\"error\">SMTP said no</td>"), "dead tasks show last_error");
    assert!(section(&page, "data-state=\"ready\"", "</a>").contains("<span class=\"count\">2</span>"));
    let ready = ok(http::get(s.admin_addr, "/queues/work").await);
    assert_eq!(ready.matches("<tr data-task=").count(), 2, "the ready tab by default");

    let task = ok(http::get(s.admin_addr, &format!("/tasks/{dead}")).await);
    assert!(task.contains("<dd data-field=\"kind\">fails</dd>"));
    assert!(task.contains("<dd data-field=\"attempts\">1 of"), "{task}");
    assert!(task.contains("SMTP said no"));

    // Throughput: a new queue's rate starts when it is first seen, and shows
    // once a second has passed.
    let rate = |home: &str| {
        let row = section(home, "<tr data-queue=\"work\">", "</tr>");
        let cell = section(row, "data-field=\"enqueued-rate\">", "</td>");
        cell[cell.find('>').unwrap() + 1..cell.len() - "</td>".len()].to_owned()
    };
    for _ in 0..3 {
        s.enqueue("work", "more").await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let home = ok(http::get(s.admin_addr, "/").await);
    let per_min: f64 = rate(&home).parse().unwrap();
    assert!(per_min > 0.0 && per_min <= 180.0, "3 tasks in over a second: {per_min}");
    s.shutdown().await;
}

#[tokio::test]
async fn everything_user_controlled_is_escaped() {
    let mut s = common::start().await;
    let evil = "<script>alert(1)</script>";
    let task = s
        .enqueue_req(pb::EnqueueRequest {
            queue: "esc".into(),
            kind: format!("kind{evil}"),
            payload: format!("{{\"html\":\"{evil}\"}}").into_bytes(),
            headers: [(format!("h{evil}"), format!("\"><img src=x onerror=alert(2)>{evil}"))].into(),
            ..Default::default()
        })
        .await;
    let leased = s.lease(&["esc"], 1).await.remove(0);
    s.worker
        .nack(pb::NackRequest {
            task_id: task.id.clone(),
            lease_id: leased.lease_id,
            error: format!("error{evil}"),
            no_retry: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let pages = [
        ok(http::get(s.admin_addr, "/").await),
        ok(http::get(s.admin_addr, "/queues/esc?state=dead").await),
        ok(http::get(s.admin_addr, &format!("/tasks/{}", task.id)).await),
    ];
    for page in &pages {
        assert!(!page.contains("<script>alert"), "unescaped: {page}");
        assert!(!page.contains("<img src=x"), "unescaped: {page}");
    }
    assert!(pages[1].contains("kind&#60;script&#62;alert(1)&#60;/script&#62;"), "{}", pages[1]);
    assert!(pages[1].contains("error&#60;script&#62;"));
    let t = &pages[2];
    assert!(t.contains("<th>h&#60;script&#62;alert(1)&#60;/script&#62;</th>"), "{t}");
    assert!(t.contains("&#34;&#62;&#60;img src=x onerror=alert(2)&#62;"), "{t}");
    assert!(t.contains("{&#34;html&#34;:&#34;&#60;script&#62;"), "payload as escaped text: {t}");

    // A hostile name in the URL comes back escaped on the 404 page.
    let r = http::get(s.admin_addr, "/queues/%3Cscript%3Ealert(1)%3C%2Fscript%3E").await;
    assert_eq!(r.status, 404);
    assert!(!r.body.contains("<script>alert") && r.body.contains("&#60;script&#62;"), "{}", r.body);
    s.shutdown().await;
}

#[tokio::test]
async fn a_binary_payload_is_shown_as_hex() {
    let mut s = common::start().await;
    let task = s
        .enqueue_req(pb::EnqueueRequest {
            queue: "bin".into(),
            kind: "k".into(),
            payload: vec![0xff, 0x00, b'<', 0x80],
            ..Default::default()
        })
        .await;
    let page = ok(http::get(s.admin_addr, &format!("/tasks/{}", task.id)).await);
    assert!(page.contains("not UTF-8: hex"), "{page}");
    assert!(page.contains("00000000  ff 00 3c 80"), "{page}");
    s.shutdown().await;
}

#[tokio::test]
async fn a_waiting_task_shows_its_dependencies_and_deadline() {
    let mut s = common::start().await;
    let dep = s.enqueue("parts", "k").await;
    let task = s
        .enqueue_req(pb::EnqueueRequest {
            queue: "joins".into(),
            kind: "k".into(),
            depends_on: vec![dep.id.clone()],
            ttl: Some(common::secs(3600)),
            ..Default::default()
        })
        .await;
    let page = ok(http::get(s.admin_addr, &format!("/tasks/{}", task.id)).await);
    assert!(page.contains(r#"<span class="badge waiting">waiting</span>"#), "{page}");
    let link =
        format!(r#"<a href="/tasks/{0}"><code>{0}</code></a> <span class="meta">pending</span>"#, dep.id);
    assert!(page.contains(&link), "{page}");
    assert!(page.contains(r#"data-field="expires""#), "{page}");
    let queue = ok(http::get(s.admin_addr, "/queues/joins?state=waiting").await);
    assert!(queue.contains(&task.id), "listed under its state: {queue}");
    s.shutdown().await;
}

#[tokio::test]
async fn actions_need_the_same_origin_and_the_form_token() {
    let mut s = common::start().await;
    s.enqueue("steer", "k").await;
    let page = ok(http::get(s.admin_addr, "/queues/steer").await);
    let token = csrf(&page);
    let origin = format!("http://{}", s.admin_addr);
    let pause = "/queues/steer/pause";

    let r = http::post_form(s.admin_addr, pause, &[("Origin", &origin)], "").await;
    assert_eq!(r.status, 403, "no token: {}", r.body);
    let r = http::post_form(s.admin_addr, pause, &[("Origin", &origin)], "csrf=0123").await;
    assert_eq!(r.status, 403, "a wrong token");
    let form = format!("csrf={token}");
    let r = http::post_form(s.admin_addr, pause, &[("Origin", "http://evil.example")], &form).await;
    assert_eq!(r.status, 403, "cross-site Origin with the right token");
    let r = http::post_form(s.admin_addr, pause, &[("Sec-Fetch-Site", "cross-site")], &form).await;
    assert_eq!(r.status, 403, "cross-site per Sec-Fetch-Site");
    assert!(!grpc_queue(&mut s, "steer").await.0, "nothing refused was done");

    let r = http::post_form(
        s.admin_addr,
        pause,
        &[("Origin", &origin), ("Sec-Fetch-Site", "same-origin")],
        &form,
    )
    .await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.header("location"), Some("/queues/steer?state=ready&done=paused"));
    assert!(grpc_queue(&mut s, "steer").await.0, "paused, as the gRPC API sees it");
    assert!(s.lease(&["steer"], 1).await.is_empty(), "a paused queue delivers nothing");
    let page = ok(http::get(s.admin_addr, "/queues/steer?state=ready&done=paused").await);
    assert!(page.contains("id=\"paused-badge\"") && page.contains("id=\"resume\""));
    assert!(page.contains("id=\"notice\">Paused"));
    let home = ok(http::get(s.admin_addr, "/").await);
    assert!(section(&home, "<tr data-queue=\"steer\">", "</tr>").contains("badge paused"));

    let r = http::post_form(s.admin_addr, "/queues/steer/resume", &[], &form).await;
    assert_eq!(r.status, 303, "no browser headers (curl): the token decides");
    assert!(!grpc_queue(&mut s, "steer").await.0);
    s.shutdown().await;
}

#[tokio::test]
async fn purge_and_redrive_change_the_counts() {
    let mut s = common::start().await;
    let dead = tasks_in_every_state(&mut s, "ops", "boom").await;
    let token = csrf(&ok(http::get(s.admin_addr, "/queues/ops").await));
    let form = |extra: &str| format!("csrf={token}{extra}");

    let r =
        http::post_form(s.admin_addr, "/queues/ops/redrive", &[], &form(&format!("&task_id={dead}"))).await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.header("location"), Some("/queues/ops?state=dead&done=redriven&n=1"));
    assert_eq!(grpc_queue(&mut s, "ops").await, (false, 3, 0));

    let r = http::post_form(s.admin_addr, "/queues/ops/purge", &[], &form("&state=ready")).await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.header("location"), Some("/queues/ops?state=ready&done=purged&n=3"));
    assert_eq!(grpc_queue(&mut s, "ops").await, (false, 0, 0));
    let page = ok(http::get(s.admin_addr, "/queues/ops?state=ready&done=purged&n=3").await);
    assert!(page.contains("Purged 3 tasks."), "{page}");

    let r = http::post_form(s.admin_addr, "/queues/ops/purge", &[], &form("&state=leased")).await;
    assert_eq!(r.status, 400, "leased tasks cannot be purged: {}", r.body);
    let r = http::post_form(s.admin_addr, "/queues/nope/pause", &[], &form("")).await;
    assert_eq!(r.status, 404);
    let r = http::post_form(s.admin_addr, "/queues/ops/explode", &[], &form("")).await;
    assert_eq!(r.status, 404);
    s.shutdown().await;
}

#[tokio::test]
async fn a_queue_is_paged_and_no_task_shows_twice() {
    let mut s = common::start().await;
    let batch = (0..120)
        .map(|i| pb::EnqueueRequest { queue: "many".into(), kind: format!("k{i}"), ..Default::default() })
        .collect();
    s.producer.enqueue_batch(pb::EnqueueBatchRequest { tasks: batch }).await.unwrap();
    let mut seen = BTreeSet::new();
    let mut path = "/queues/many?state=ready".to_owned();
    let mut pages = 0;
    loop {
        let page = ok(http::get(s.admin_addr, &path).await);
        pages += 1;
        for row in page.split("<tr data-task=\"").skip(1) {
            assert!(seen.insert(row[..26].to_owned()), "a task twice");
        }
        let Some(at) = page.find("id=\"next-page\"") else { break };
        let link = section(&page[..at], "<a href=\"/queues/many?state=ready&amp;page_token=", "\"");
        let link = &link["<a href=\"".len()..link.len() - 1];
        path = link.replace("&amp;", "&");
        assert!(pages < 10, "paging does not end");
    }
    assert_eq!((pages, seen.len()), (3, 120));
    let r = http::get(s.admin_addr, "/queues/many?state=ready&page_token=nonsense").await;
    assert_eq!(r.status, 400);
    let r = http::get(s.admin_addr, "/queues/many?state=bogus").await;
    assert_eq!(r.status, 400);
    s.shutdown().await;
}

#[tokio::test]
async fn health_unknown_pages_and_assets() {
    let s = common::start().await;
    let r = http::get(s.admin_addr, "/healthz").await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
    let r = http::get(s.admin_addr, "/readyz").await;
    assert_eq!((r.status, r.body.as_str()), (200, "ready\n"));
    assert_eq!(http::get(s.admin_addr, "/queues/unknown").await.status, 404);
    assert_eq!(http::get(s.admin_addr, "/tasks/01ARZ3NDEKTSV4RRFFQ69G5FAV").await.status, 404);
    assert_eq!(http::get(s.admin_addr, "/tasks/not-an-id").await.status, 404);
    assert_eq!(http::get(s.admin_addr, "/nothing/here").await.status, 404);
    let css = http::get(s.admin_addr, "/assets/dashboard.css").await;
    assert_eq!(css.header("content-type"), Some("text/css; charset=utf-8"));
    let home = http::get(s.admin_addr, "/").await;
    let csp = home.header("content-security-policy").unwrap();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(!home.body.contains("http://") && !home.body.contains("https://"), "nothing from elsewhere");
    s.shutdown().await;
}

fn memory_config(admin_listen: String) -> Config {
    let mut config =
        Config { storage: StorageKind::Memory, listen: "127.0.0.1:0".into(), ..Config::default() };
    config.admin_listen = admin_listen;
    config.validate().unwrap();
    config
}

#[tokio::test]
async fn an_explicit_admin_address_that_is_taken_stops_start_up() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr: SocketAddr = taken.local_addr().unwrap();
    let err = match app::start(&memory_config(addr.to_string()), Arc::new(SystemClock)).await {
        Ok(_) => panic!("started on a taken admin address"),
        Err(e) => e,
    };
    let bind = err.downcast_ref::<AdminBindError>().unwrap_or_else(|| panic!("{err:#}"));
    assert_eq!(bind.addr, addr);

    // The binary: exit 64, the reason on stderr.
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_taskbroker"));
    env::clear(&mut cmd);
    let out = cmd
        .args([
            "serve",
            "--storage",
            "memory",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            &addr.to_string(),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains(&format!("admin_listen: cannot listen on {addr}")), "{stderr}");
}

#[tokio::test]
async fn the_default_admin_address_taken_is_a_warning_and_admin_off_is_none() {
    // Held by this test or by someone else: taken either way.
    let _held = std::net::TcpListener::bind(taskbroker::config::DEFAULT_ADMIN_LISTEN);
    let running =
        app::start(&memory_config(taskbroker::config::DEFAULT_ADMIN_LISTEN.into()), Arc::new(SystemClock))
            .await
            .expect("a taken default admin address does not stop the broker");
    assert_eq!(running.admin_addr, None);
    running.shutdown().await.unwrap();
    let running = app::start(&memory_config(String::new()), Arc::new(SystemClock)).await.unwrap();
    assert_eq!(running.admin_addr, None, "admin_listen = \"\" turns it off");
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn readyz_says_503_once_shutdown_begins() {
    let mut s = common::start().await;
    s.enqueue("held", "k").await;
    let held = s.lease(&["held"], 1).await.remove(0);
    let (admin, mut worker) = (s.admin_addr, s.worker.clone());
    // The drain waits for the held lease; /readyz answers meanwhile.
    let shutdown = tokio::spawn(s.shutdown());
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let r = http::get(admin, "/readyz").await;
        if r.status == 503 {
            assert_eq!(r.body, "shutting down\n");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "/readyz still {} during the drain", r.status);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(http::get(admin, "/healthz").await.status, 200, "liveness does not follow the drain");
    let task_id = held.task.unwrap().id;
    worker.ack(pb::AckRequest { task_id, lease_id: held.lease_id, result: vec![] }).await.unwrap();
    shutdown.await.unwrap();
}
