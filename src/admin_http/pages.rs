//! The pages (GET): the queues, one queue's tasks by state, one task.
//! Each handler makes the broker calls a page needs and fills its template;
//! the templates escape every value.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::Html;
use serde::Deserialize;

use super::login::Viewer;
use super::throughput::WINDOW;
use super::view::{self, age, page, per_minute, state_name, time, Preview, Problem, PREVIEW_BYTES};
use super::Dashboard;
use crate::broker::{BrokerError, QueueInfo};
use crate::core::access::Operation;
use crate::core::stats::{purgeable, STATES};
use crate::core::task::{Task, TaskId, TaskState};

/// How often the queues page reloads itself.
const REFRESH_SECS: u32 = 5;
/// Tasks on one page of a queue.
const PAGE_SIZE: usize = 50;

/// A state and how many tasks are in it.
struct Count {
    state: &'static str,
    count: u64,
}

fn counts(q: &QueueInfo) -> Vec<Count> {
    STATES.into_iter().map(|s| Count { state: state_name(s), count: q.stats.counts.get(s) }).collect()
}

struct QueueRow {
    name: String,
    paused: bool,
    declared: bool,
    counts: Vec<Count>,
    oldest_ready: Option<String>,
    enqueued_rate: Option<String>,
    acked_rate: Option<String>,
}

#[derive(Template)]
#[template(path = "queues.html")]
struct QueuesPage {
    queues: Vec<QueueRow>,
    states: Vec<&'static str>,
    refresh_secs: u32,
    window_min: u64,
    now: String,
}

/// `/`: every queue with its counts, oldest ready age and throughput.
pub async fn queues(State(d): State<Dashboard>, Viewer(access): Viewer) -> Result<Html<String>, Problem> {
    let queues = d.broker.list_queues(&access).await?;
    let now = d.broker.now();
    let rows = queues
        .iter()
        .map(|q| {
            d.throughput.first_sight(&q.name, now, &q.stats.totals);
            let rate = d.throughput.rate(&q.name, now, &q.stats.totals);
            QueueRow {
                name: q.name.clone(),
                paused: q.stats.paused,
                declared: q.declared,
                counts: counts(q),
                oldest_ready: q.stats.oldest_ready_time.map(|t| age(now, t)),
                enqueued_rate: rate.map(|r| per_minute(r.enqueued_per_min)),
                acked_rate: rate.map(|r| per_minute(r.acked_per_min)),
            }
        })
        .collect();
    page(&QueuesPage {
        queues: rows,
        states: STATES.into_iter().map(state_name).collect(),
        refresh_secs: REFRESH_SECS,
        window_min: WINDOW.as_secs() / 60,
        now: time(now),
    })
}

/// `/queues/NAME?state=..&page_token=..` (and, after an action, what it did).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct QueueQuery {
    state: Option<String>,
    page_token: Option<String>,
    /// Set by the redirect after an action, to say what it did.
    done: Option<String>,
    n: Option<u64>,
}

struct Tab {
    state: &'static str,
    count: u64,
    active: bool,
}

struct TaskRow {
    id: String,
    kind: String,
    priority: u8,
    attempt: u32,
    max_attempts: u32,
    created: String,
    updated: String,
    scheduled: String,
    last_error: String,
}

#[derive(Template)]
#[template(path = "queue.html")]
struct QueuePage {
    name: String,
    paused: bool,
    notice: Option<String>,
    csrf: String,
    tabs: Vec<Tab>,
    state: &'static str,
    /// Tasks in `state`.
    count: u64,
    purgeable: bool,
    show_error: bool,
    tasks: Vec<TaskRow>,
    /// Whether this is a later page.
    after: bool,
    next_token: Option<String>,
    totals: Vec<(&'static str, u64)>,
    settings: Vec<(&'static str, String)>,
}

/// `/queues/NAME`: the queue's tasks in one state, a page at a time, and
/// the buttons that steer it.
pub async fn queue(
    State(d): State<Dashboard>,
    Viewer(access): Viewer,
    Path(name): Path<String>,
    Query(query): Query<QueueQuery>,
) -> Result<Html<String>, Problem> {
    d.broker.authorize_queue(&access, Operation::GetQueue, &name)?;
    let info = d.broker.queue_info(&name).await.map_err(|e| queue_problem(&name, e))?;
    let state = match query.state.as_deref() {
        None | Some("") => TaskState::Ready,
        Some(s) => view::parse_state(s).ok_or_else(|| {
            Problem::new(axum::http::StatusCode::BAD_REQUEST, format!("{s:?} is not a task state"))
        })?,
    };
    let after = match query.page_token.as_deref() {
        None | Some("") => None,
        Some(t) => Some(t.parse::<TaskId>().map_err(|_| {
            Problem::new(axum::http::StatusCode::BAD_REQUEST, "page_token: not a page token")
        })?),
    };
    let listed = d.broker.list_tasks(&name, state, PAGE_SIZE, after).await?;
    let t = info.stats.totals;
    let p = &info.policy;
    page(&QueuePage {
        notice: notice(query.done.as_deref(), query.n),
        csrf: d.csrf.as_str().to_owned(),
        tabs: STATES
            .into_iter()
            .map(|s| Tab { state: state_name(s), count: info.stats.counts.get(s), active: s == state })
            .collect(),
        state: state_name(state),
        count: info.stats.counts.get(state),
        purgeable: purgeable(state),
        show_error: matches!(
            state,
            TaskState::Dead | TaskState::Ready | TaskState::Scheduled | TaskState::Leased
        ),
        tasks: listed.tasks.iter().map(task_row).collect(),
        after: after.is_some(),
        next_token: listed.next.map(|id| id.to_string()),
        totals: vec![
            ("enqueued", t.enqueued),
            ("delivered", t.delivered),
            ("acked", t.acked),
            ("nacked", t.nacked),
            ("dead", t.dead),
            ("expired leases", t.expired),
        ],
        settings: vec![
            ("declared", if info.declared { "yes".into() } else { "no (created on first use)".into() }),
            ("lease duration", humantime::format_duration(p.lease_duration).to_string()),
            ("max attempts", p.max_attempts.to_string()),
            ("default priority", p.default_priority.to_string()),
            ("retention", humantime::format_duration(p.retention).to_string()),
        ],
        paused: info.stats.paused,
        name: info.name,
    })
}

/// What the redirect after an action says it did.
fn notice(done: Option<&str>, n: Option<u64>) -> Option<String> {
    let n = n.unwrap_or(0);
    let tasks = if n == 1 { "task" } else { "tasks" };
    Some(match done? {
        "paused" => "Paused: no task of this queue is delivered until it is resumed.".into(),
        "resumed" => "Resumed: delivery goes on.".into(),
        "purged" => format!("Purged {n} {tasks}."),
        "redriven" => format!("Redrove {n} dead {tasks} back to ready."),
        _ => return None,
    })
}

/// A queue that does not exist, or whose name could not be one, is a 404.
fn queue_problem(name: &str, e: BrokerError) -> Problem {
    match e {
        BrokerError::QueueNotFound(_) | BrokerError::Invalid(_) => {
            Problem::not_found(format!("There is no queue {name:?}."))
        }
        e => e.into(),
    }
}

fn task_row(t: &Task) -> TaskRow {
    TaskRow {
        id: t.id.to_string(),
        kind: t.kind.clone(),
        priority: t.priority,
        attempt: t.attempt,
        max_attempts: t.max_attempts,
        created: time(t.create_time),
        updated: time(t.update_time),
        scheduled: time(t.scheduled_time),
        last_error: t.last_error.clone(),
    }
}

/// A payload or result and how it is shown.
struct Blob {
    title: &'static str,
    /// The element's id.
    id: &'static str,
    preview: Preview,
}

#[derive(Template)]
#[template(path = "task.html")]
struct TaskPage {
    id: String,
    queue: String,
    kind: String,
    state: &'static str,
    attempt: u32,
    max_attempts: u32,
    priority: u8,
    created: String,
    updated: String,
    scheduled: String,
    dedup_key: String,
    request_id: String,
    content_type: String,
    lease: Option<String>,
    last_error: String,
    headers: Vec<(String, String)>,
    blobs: Vec<Blob>,
    preview_bytes: usize,
    /// Each dependency's id and whether it is still pending.
    depends_on: Vec<(String, bool)>,
    /// The deadline, if any.
    expires: Option<String>,
}

/// `/tasks/ID`: everything the broker knows about one task.
pub async fn task(
    State(d): State<Dashboard>,
    Viewer(access): Viewer,
    Path(id): Path<String>,
) -> Result<Html<String>, Problem> {
    let not_found = || Problem::not_found(format!("There is no task {id:?}."));
    let task_id = id.parse::<TaskId>().map_err(|_| not_found())?;
    // Unknown and forbidden look alike: other queues' ids cannot be probed.
    let t = match d.broker.task_for(&access, Operation::GetTask, task_id).await {
        Ok(t) => t,
        Err(BrokerError::TaskNotFound(_) | BrokerError::PermissionDenied(_)) => return Err(not_found()),
        Err(e) => return Err(e.into()),
    };
    let lease = t.lease.as_ref().filter(|_| t.state == TaskState::Leased).map(|l| {
        let who = if l.worker_id.is_empty() { "a worker" } else { l.worker_id.as_str() };
        format!("held by {who} until {}", time(l.expire_time))
    });
    let depends_on =
        t.depends_on.iter().map(|d| (d.to_string(), t.pending_dependencies.contains(d))).collect();
    page(&TaskPage {
        depends_on,
        expires: t.expire_time.map(time),
        id: t.id.to_string(),
        state: state_name(t.state),
        attempt: t.attempt,
        max_attempts: t.max_attempts,
        priority: t.priority,
        created: time(t.create_time),
        updated: time(t.update_time),
        scheduled: time(t.scheduled_time),
        lease,
        blobs: vec![
            Blob { title: "Payload", id: "payload", preview: Preview::of(&t.payload) },
            Blob { title: "Result", id: "result", preview: Preview::of(&t.result) },
        ],
        preview_bytes: PREVIEW_BYTES,
        headers: t.headers.into_iter().collect(),
        queue: t.queue,
        kind: t.kind,
        dedup_key: t.dedup_key,
        request_id: t.request_id,
        content_type: t.content_type,
        last_error: t.last_error,
    })
}
