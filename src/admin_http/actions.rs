//! The actions (POST forms): pause, resume, purge, redrive. Each passes the
//! cross-site guard ([`super::guard`]) before anything else, makes one
//! broker call, and redirects (303) back to the queue page, which says what
//! was done.

use axum::extract::rejection::FormRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Redirect;
use axum::Form;
use serde::Deserialize;

use super::login::Viewer;
use super::view::{parse_state, state_name, Problem};
use super::Dashboard;
use crate::core::access::Operation;
use crate::core::task::{TaskId, TaskState};

/// The fields the dashboard's forms send.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ActionForm {
    /// The per-process form token.
    csrf: String,
    /// Purge: the state to remove.
    state: Option<String>,
    /// Redrive: one task (otherwise every dead task).
    task_id: Option<String>,
}

/// `POST /queues/NAME/ACTION`.
pub async fn act(
    State(d): State<Dashboard>,
    Viewer(access): Viewer,
    Path((name, action)): Path<(String, String)>,
    headers: HeaderMap,
    form: Result<Form<ActionForm>, FormRejection>,
) -> Result<Redirect, Problem> {
    // The origin first: a cross-site request learns nothing, not even
    // whether its form parsed.
    let given = form.as_ref().map(|f| f.csrf.as_str()).unwrap_or("");
    d.csrf.check(&headers, given).map_err(|r| Problem::new(StatusCode::FORBIDDEN, r.to_string()))?;
    let Form(form) = form.map_err(|e| Problem::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    // Every action changes the queue: `admin` on it.
    d.broker.authorize_queue(&access, Operation::PauseQueue, &name)?;
    let back = |state: TaskState, done: &str, n: Option<u64>| {
        let n = n.map(|n| format!("&n={n}")).unwrap_or_default();
        Redirect::to(&format!("/queues/{name}?state={}&done={done}{n}", state_name(state)))
    };
    match action.as_str() {
        "pause" | "resume" => {
            let paused = action == "pause";
            d.broker.set_paused(&name, paused).await?;
            Ok(back(TaskState::Ready, if paused { "paused" } else { "resumed" }, None))
        }
        "purge" => {
            let state = form
                .state
                .as_deref()
                .and_then(parse_state)
                .ok_or_else(|| Problem::new(StatusCode::BAD_REQUEST, "purge: name a task state"))?;
            let n = d.broker.purge_queue(&name, &[state]).await?;
            Ok(back(state, "purged", Some(n)))
        }
        "redrive" => {
            let ids = match form.task_id.as_deref() {
                None | Some("") => Vec::new(),
                Some(id) => vec![id
                    .parse::<TaskId>()
                    .map_err(|_| Problem::new(StatusCode::BAD_REQUEST, "task_id: not a task id"))?],
            };
            let n = d.broker.redrive(&name, &ids, 0).await?;
            Ok(back(TaskState::Dead, "redriven", Some(n)))
        }
        other => Err(Problem::not_found(format!("There is no action {other:?}."))),
    }
}
