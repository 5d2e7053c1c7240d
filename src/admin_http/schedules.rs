//! `/schedules`: the periodic schedules with their last and next runs
//! (read-only: they are changed through the config file or AdminService).

use askama::Template;
use axum::extract::State;
use axum::response::Html;

use super::login::Viewer;
use super::view::{page, time, Problem};
use super::Dashboard;
use crate::broker::ScheduleInfo;
use crate::core::access::Operation;
use crate::core::schedule::Schedule;

struct ScheduleRow {
    name: String,
    source: &'static str,
    when: String,
    queue: String,
    kind: String,
    catch_up: &'static str,
    last_run: Option<String>,
    next_run: Option<String>,
}

#[derive(Template)]
#[template(path = "schedules.html")]
struct SchedulesPage {
    schedules: Vec<ScheduleRow>,
    now: String,
}

/// When it runs: the cron pattern (and its zone), or `every 15m`.
fn when(s: &Schedule) -> String {
    match s.every {
        Some(ms) => format!("every {}", humantime::format_duration(std::time::Duration::from_millis(ms))),
        None if s.timezone.is_empty() => format!("{} (UTC)", s.cron),
        None => format!("{} ({})", s.cron, s.timezone),
    }
}

fn row(info: ScheduleInfo) -> ScheduleRow {
    let ScheduleInfo { stored, next_run } = info;
    let s = &stored.schedule;
    ScheduleRow {
        name: s.name.clone(),
        source: s.source.as_str(),
        when: when(s),
        queue: s.queue.clone(),
        kind: s.kind.clone(),
        catch_up: s.catch_up.as_str(),
        last_run: stored.last_fired.map(time),
        next_run: next_run.map(time),
    }
}

pub async fn schedules(State(d): State<Dashboard>, Viewer(access): Viewer) -> Result<Html<String>, Problem> {
    let mut listed = d.broker.list_schedules().await?;
    listed.retain(|s| {
        let queue = d.broker.schedule_queue(&s.stored.schedule).unwrap_or_default();
        access.allows(Operation::ListSchedules, &queue)
    });
    let schedules = listed.into_iter().map(row).collect();
    page(&SchedulesPage { schedules, now: time(d.broker.now()) })
}
