//! Who may do what to which queue: the permission model, decided here and
//! nowhere else.
//!
//! A [`Principal`] holds [`Grant`]s: actions on queues named by globs. Every
//! RPC is an [`Operation`] that needs one of a few [`Action`]s on one queue
//! (the queue a task is routed to for Enqueue, the task's queue for calls
//! that name a task id). [`Access`] is what a call runs with: everything
//! when authentication is off, else the principal's grants.
//!
//! Pure: no tonic, no sockets, no storage. Authentication (tokens,
//! certificates) lives in [`crate::security`]; the broker asks this module.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// What a grant allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// Enqueue tasks; look up, watch and cancel them.
    Enqueue,
    /// Lease, settle and stream tasks.
    Consume,
    /// Read queues, tasks, routes, the scaler and the dashboard.
    Inspect,
    /// Pause, resume, purge, redrive, reload, cancel.
    Admin,
}

pub const ACTIONS: [Action; 4] = [Action::Enqueue, Action::Consume, Action::Inspect, Action::Admin];

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Enqueue => "enqueue",
            Action::Consume => "consume",
            Action::Inspect => "inspect",
            Action::Admin => "admin",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Action {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ACTIONS
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not an action (enqueue, consume, inspect, admin)"))
    }
}

/// Every call the broker serves, by what it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Enqueue,
    GetTask,
    WatchTask,
    CancelTask,
    /// Lease, and a stream's Subscribe (every queue it names).
    Lease,
    Settle,
    ListQueues,
    GetQueue,
    ListTasks,
    ExplainRoute,
    Scaler,
    PauseQueue,
    ResumeQueue,
    PurgeQueue,
    RedriveTasks,
    /// Applies to every queue: needs `admin` on `*`.
    ReloadConfig,
    /// ListSchedules (shows the schedules of these queues).
    ListSchedules,
    /// PutSchedule, DeleteSchedule, TriggerSchedule: on the queue the
    /// schedule's tasks go to.
    ManageSchedule,
    /// Prometheus' `/metrics` (when protected).
    Metrics,
}

impl Operation {
    /// The actions that allow it (any one suffices); the first is the one an
    /// error names.
    pub fn actions(self) -> &'static [Action] {
        use Action::*;
        match self {
            Operation::Enqueue => &[Enqueue],
            Operation::GetTask | Operation::WatchTask => &[Inspect, Enqueue],
            Operation::CancelTask => &[Enqueue, Admin],
            Operation::Lease | Operation::Settle => &[Consume],
            Operation::ListQueues
            | Operation::GetQueue
            | Operation::ListTasks
            | Operation::ExplainRoute
            | Operation::Scaler
            | Operation::ListSchedules
            | Operation::Metrics => &[Inspect],
            Operation::PauseQueue
            | Operation::ResumeQueue
            | Operation::PurgeQueue
            | Operation::RedriveTasks
            | Operation::ManageSchedule
            | Operation::ReloadConfig => &[Admin],
        }
    }
}

/// What the authentication layer does with a gRPC method before any handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Served to anyone (health checks).
    Open,
    /// Served to anyone unless `protect_reflection` is on.
    Reflection,
    /// Needs a known principal; handlers check its grants per queue.
    Authenticated,
}

/// The gate of a gRPC method path (`/package.Service/Method`).
pub fn gate(path: &str) -> Gate {
    let service = path.trim_start_matches('/').split('/').next().unwrap_or("");
    match service {
        "grpc.health.v1.Health" => Gate::Open,
        "grpc.reflection.v1.ServerReflection" | "grpc.reflection.v1alpha.ServerReflection" => {
            Gate::Reflection
        }
        _ => Gate::Authenticated,
    }
}

/// A queue name pattern: `*` matches any run of characters (dots too), so
/// `billing.*` covers `billing.eu` and `billing.eu.vat`, and `*` every queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueGlob(String);

impl QueueGlob {
    pub fn new(pattern: impl Into<String>) -> Self {
        Self(pattern.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Covers every queue name.
    pub fn is_everything(&self) -> bool {
        !self.0.is_empty() && self.0.bytes().all(|b| b == b'*')
    }

    pub fn matches(&self, queue: &str) -> bool {
        glob_match(self.0.as_bytes(), queue.as_bytes())
    }
}

/// `*`-only wildcard matching, linear with one backtrack point.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// Actions on the queues matching any of the globs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub actions: Vec<Action>,
    pub queues: Vec<QueueGlob>,
}

impl Grant {
    fn allows(&self, action: Action, queue: &str) -> bool {
        self.actions.contains(&action) && self.queues.iter().any(|g| g.matches(queue))
    }

    fn allows_everywhere(&self, action: Action) -> bool {
        self.actions.contains(&action) && self.queues.iter().any(QueueGlob::is_everything)
    }
}

/// A named identity with its grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub grants: Vec<Grant>,
}

impl Principal {
    pub fn allows(&self, action: Action, queue: &str) -> bool {
        self.grants.iter().any(|g| g.allows(action, queue))
    }

    pub fn allows_everywhere(&self, action: Action) -> bool {
        self.grants.iter().any(|g| g.allows_everywhere(action))
    }
}

/// What a call may do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Access {
    /// Authentication is off: everything.
    #[default]
    Open,
    /// An authenticated principal: its grants.
    As(Arc<Principal>),
}

/// A refusal: what was needed, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denied {
    pub action: Action,
    /// The queue, or `None` for a call that named a task id: whether the
    /// task exists and where is not told.
    pub queue: Option<String>,
    /// The task id the call named, if any.
    pub task_id: Option<String>,
    /// The schedule the call named, if any (its queue is not told either).
    pub schedule: Option<String>,
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.queue, &self.task_id, &self.schedule) {
            (Some(q), _, _) => write!(f, "permission denied: {} on queue {q:?}", self.action),
            (None, Some(id), _) => write!(f, "permission denied: {} on task {id}", self.action),
            (None, None, Some(s)) => write!(f, "permission denied: {} on schedule {s:?}", self.action),
            (None, None, None) => write!(f, "permission denied: {} on every queue (*)", self.action),
        }
    }
}

impl Access {
    /// The principal's name (logs, spans).
    pub fn principal(&self) -> Option<&str> {
        match self {
            Access::Open => None,
            Access::As(p) => Some(&p.name),
        }
    }

    /// May do `op` on `queue`.
    pub fn allows(&self, op: Operation, queue: &str) -> bool {
        match self {
            Access::Open => true,
            Access::As(p) => op.actions().iter().any(|a| p.allows(*a, queue)),
        }
    }

    /// May do `op` on every queue, present and future (no per-task lookup
    /// is needed to decide).
    pub fn allows_everywhere(&self, op: Operation) -> bool {
        match self {
            Access::Open => true,
            Access::As(p) => op.actions().iter().any(|a| p.allows_everywhere(*a)),
        }
    }

    /// `op` on `queue`, or why not.
    pub fn check(&self, op: Operation, queue: &str) -> Result<(), Denied> {
        if self.allows(op, queue) {
            Ok(())
        } else {
            Err(Denied {
                action: op.actions()[0],
                queue: Some(queue.to_owned()),
                task_id: None,
                schedule: None,
            })
        }
    }

    /// `op` on every queue (ReloadConfig), or why not.
    pub fn check_everywhere(&self, op: Operation) -> Result<(), Denied> {
        if self.allows_everywhere(op) {
            Ok(())
        } else {
            Err(Denied { action: op.actions()[0], queue: None, task_id: None, schedule: None })
        }
    }

    /// `op` on the task `task_id`, which lives in `queue` (`None`: no such
    /// task). Unknown and forbidden answer alike, so a principal cannot learn
    /// whether an id exists outside its queues; one allowed everywhere gets
    /// `Ok(false)` for an unknown task (the caller answers NOT_FOUND).
    pub fn check_task(&self, op: Operation, task_id: &str, queue: Option<&str>) -> Result<bool, Denied> {
        let denied = || Denied {
            action: op.actions()[0],
            queue: None,
            task_id: Some(task_id.to_owned()),
            schedule: None,
        };
        match queue {
            Some(q) if self.allows(op, q) => Ok(true),
            None if self.allows_everywhere(op) => Ok(false),
            _ => Err(denied()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(grants: &[(&[Action], &[&str])]) -> Access {
        Access::As(Arc::new(Principal {
            name: "p".into(),
            grants: grants
                .iter()
                .map(|(a, q)| Grant {
                    actions: a.to_vec(),
                    queues: q.iter().map(|g| QueueGlob::new(*g)).collect(),
                })
                .collect(),
        }))
    }

    #[test]
    fn globs_match_whole_names_with_stars_spanning_dots() {
        let g = QueueGlob::new("billing.*");
        assert!(g.matches("billing.eu"));
        assert!(g.matches("billing.eu.vat"));
        assert!(g.matches("billing."));
        assert!(!g.matches("billing"));
        assert!(!g.matches("xbilling.eu"));
        assert!(QueueGlob::new("*").matches("anything"));
        assert!(QueueGlob::new("a*c*e").matches("abcde"));
        assert!(!QueueGlob::new("a*c*e").matches("abcdf"));
        assert!(QueueGlob::new("*-dlq").matches("emails-dlq"));
        assert!(!QueueGlob::new("emails").matches("emails2"));
        assert!(QueueGlob::new("**").is_everything());
        assert!(!QueueGlob::new("a*").is_everything());
    }

    #[test]
    fn an_operation_is_allowed_by_any_of_its_actions_on_a_matching_queue() {
        let p = principal(&[(&[Action::Enqueue, Action::Inspect], &["billing.*", "emails"])]);
        assert!(p.allows(Operation::Enqueue, "billing.eu"));
        assert!(p.allows(Operation::GetTask, "emails"));
        assert!(p.allows(Operation::CancelTask, "emails"), "cancel: enqueue suffices");
        assert!(!p.allows(Operation::Lease, "emails"), "consume was not granted");
        assert!(!p.allows(Operation::Enqueue, "other"));
        assert!(!p.allows(Operation::PurgeQueue, "emails"));
        let admin = principal(&[(&[Action::Admin], &["emails"])]);
        assert!(admin.allows(Operation::CancelTask, "emails"), "cancel: admin suffices");
        assert!(!admin.allows(Operation::GetTask, "emails"));
        assert!(Access::Open.allows(Operation::PurgeQueue, "x"));
    }

    #[test]
    fn every_operation_names_a_first_action_for_its_errors() {
        use Operation::*;
        let all = [
            Enqueue,
            GetTask,
            WatchTask,
            CancelTask,
            Lease,
            Settle,
            ListQueues,
            GetQueue,
            ListTasks,
            ExplainRoute,
            Scaler,
            PauseQueue,
            ResumeQueue,
            PurgeQueue,
            RedriveTasks,
            ReloadConfig,
            Metrics,
            ListSchedules,
            ManageSchedule,
        ];
        // A new operation must say which action it needs: this list is every variant.
        let _exhaustive = |op: Operation| match op {
            Enqueue | GetTask | WatchTask | CancelTask | Lease | Settle | ListQueues | GetQueue
            | ListTasks | ExplainRoute | Scaler | PauseQueue | ResumeQueue | PurgeQueue | RedriveTasks
            | ReloadConfig | Metrics | ListSchedules | ManageSchedule => (),
        };
        for op in all {
            assert!(!op.actions().is_empty(), "{op:?}");
        }
        assert_eq!(Lease.actions()[0], Action::Consume);
        assert_eq!(ManageSchedule.actions(), &[Action::Admin]);
        assert_eq!(ListSchedules.actions(), &[Action::Inspect]);
        assert_eq!(GetTask.actions()[0], Action::Inspect);
        assert_eq!(ReloadConfig.actions(), &[Action::Admin]);
    }

    #[test]
    fn denials_name_the_action_and_the_queue() {
        let p = principal(&[(&[Action::Consume], &["selenium"])]);
        let d = p.check(Operation::Enqueue, "selenium").unwrap_err();
        assert_eq!((d.action, d.queue.as_deref()), (Action::Enqueue, Some("selenium")));
        assert!(p.check(Operation::Lease, "selenium").is_ok());
    }

    #[test]
    fn unknown_and_forbidden_task_ids_are_refused_alike() {
        let p = principal(&[(&[Action::Inspect], &["mine"])]);
        let unknown = p.check_task(Operation::GetTask, "T1", None).unwrap_err();
        let forbidden = p.check_task(Operation::GetTask, "T1", Some("theirs")).unwrap_err();
        assert_eq!(unknown, forbidden);
        assert_eq!(unknown.to_string(), forbidden.to_string());
        assert_eq!(p.check_task(Operation::GetTask, "T1", Some("mine")), Ok(true));
        let everywhere = principal(&[(&[Action::Inspect], &["*"])]);
        assert_eq!(everywhere.check_task(Operation::GetTask, "T1", None), Ok(false), "NOT_FOUND is no leak");
    }

    #[test]
    fn reload_needs_admin_on_star_not_on_some_queues() {
        let some = principal(&[(&[Action::Admin], &["a", "b*"])]);
        assert!(some.check_everywhere(Operation::ReloadConfig).is_err());
        let all = principal(&[(&[Action::Admin], &["*"])]);
        assert!(all.check_everywhere(Operation::ReloadConfig).is_ok());
    }

    #[test]
    fn health_is_open_reflection_is_its_own_gate_and_the_rest_authenticates() {
        assert_eq!(gate("/grpc.health.v1.Health/Check"), Gate::Open);
        assert_eq!(gate("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"), Gate::Reflection);
        assert_eq!(gate("/taskbroker.v1.ProducerService/Enqueue"), Gate::Authenticated);
        assert_eq!(gate("/externalscaler.ExternalScaler/GetMetrics"), Gate::Authenticated);
        assert_eq!(gate("/nope"), Gate::Authenticated);
    }

    #[test]
    fn actions_parse_from_their_names() {
        for a in ACTIONS {
            assert_eq!(a.as_str().parse::<Action>(), Ok(a));
        }
        assert!("write".parse::<Action>().is_err());
    }
}
