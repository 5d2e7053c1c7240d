//! Conformance cases for task dependencies (WAITING, cascades, cross-queue,
//! retention of what dependents read) and deadlines (`expire_time`).

use taskbroker::core::task::{DependencyFailure, NewTask, Task, TaskId, TaskState};
use taskbroker::store::{AckItem, Store, StoreError};

use super::{lease_id, lease_one, nack, new_task, put, spec, Backend, NOW, SEC};

/// A task of `queue` that runs after `deps`.
fn after(queue: &str, deps: &[&Task]) -> NewTask {
    NewTask { depends_on: deps.iter().map(|t| t.id).collect(), ..new_task(queue, 0) }
}

async fn state(s: &dyn Store, t: &Task) -> TaskState {
    s.get(t.id).await.unwrap().state
}

/// Leases `t` (the only ready task of its queue) and acks it at `now`.
async fn run(s: &dyn Store, t: &Task, now: u64) -> Task {
    let leased = lease_one(s, &t.queue, now).await;
    assert_eq!(leased.id, t.id, "the next task of {}", t.queue);
    s.ack(t.id, lease_id(&leased), b"done".to_vec(), now).await.unwrap()
}

pub async fn a_chain_runs_link_by_link(b: &Backend) {
    let s = &*b.store;
    let a = put(s, new_task("q", 0)).await;
    let b2 = put(s, after("q", &[&a])).await;
    let c = put(s, after("q", &[&b2])).await;
    assert_eq!((b2.state, c.state), (TaskState::Waiting, TaskState::Waiting));
    assert_eq!((b2.depends_on.clone(), b2.pending_dependencies.clone()), (vec![a.id], vec![a.id]));
    let only = s.lease(spec(&["q"], 10), NOW).await.unwrap();
    assert_eq!(only.iter().map(|t| t.id).collect::<Vec<_>>(), [a.id], "waiting tasks are not delivered");
    s.ack(a.id, lease_id(&only[0]), vec![], NOW).await.unwrap();
    // Released by the ack itself, not by a later sweep.
    let released = s.get(b2.id).await.unwrap();
    assert_eq!((released.state, released.pending_dependencies.len()), (TaskState::Ready, 0));
    assert_eq!(state(s, &c).await, TaskState::Waiting);
    run(s, &b2, NOW).await;
    assert_eq!(state(s, &c).await, TaskState::Ready);
    run(s, &c, NOW).await;
}

pub async fn a_retried_dependency_keeps_its_dependent_waiting(b: &Backend) {
    let s = &*b.store;
    let a = put(s, new_task("q", 0)).await;
    let w = put(s, after("q", &[&a])).await;
    let first = lease_one(s, "q", NOW).await;
    s.nack(a.id, lease_id(&first), nack(Some(0), false), NOW).await.unwrap();
    assert_eq!(state(s, &w).await, TaskState::Waiting);
    let second = lease_one(s, "q", NOW).await;
    assert_eq!(second.id, a.id);
    s.requeue_expired(NOW + 31 * SEC).await.unwrap();
    assert_eq!(state(s, &w).await, TaskState::Waiting, "an expired lease is a retry too");
    run(s, &a, NOW + 31 * SEC).await;
    assert_eq!(state(s, &w).await, TaskState::Ready);
}

pub async fn fan_in_of_a_thousand_dependencies(b: &Backend) {
    let s = &*b.store;
    let group: Vec<Task> = s
        .enqueue((0..1000).map(|_| new_task("fan", 0)).collect(), NOW)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.task)
        .collect();
    let chord = put(s, after("join", &group.iter().collect::<Vec<_>>())).await;
    assert_eq!((chord.state, chord.pending_dependencies.len()), (TaskState::Waiting, 1000));
    let leased = s.lease(spec(&["fan"], 1000), NOW).await.unwrap();
    assert_eq!(leased.len(), 1000);
    let items = |ts: &[Task]| -> Vec<AckItem> {
        ts.iter().map(|t| AckItem { id: t.id, lease_id: lease_id(t), result: vec![] }).collect()
    };
    let acked = s.ack_many(items(&leased[..999]), NOW).await.unwrap();
    assert!(acked.iter().all(|r| r.is_ok()));
    let waiting = s.get(chord.id).await.unwrap();
    assert_eq!((waiting.state, waiting.pending_dependencies.len()), (TaskState::Waiting, 1));
    assert_eq!(waiting.pending_dependencies, [leased[999].id]);
    s.ack_many(items(&leased[999..]), NOW).await.unwrap();
    assert_eq!(state(s, &chord).await, TaskState::Ready);
}

pub async fn a_failed_dependency_cancels_down_the_graph_or_runs_by_policy(b: &Backend) {
    let s = &*b.store;
    let a = put(s, new_task("q", 0)).await;
    let cancel_1 = put(s, after("q", &[&a])).await;
    let cancel_2 = put(s, after("other", &[&cancel_1])).await;
    let run_anyway =
        put(s, NewTask { on_dependency_failure: DependencyFailure::Run, ..after("q", &[&a]) }).await;
    let leased = lease_one(s, "q", NOW).await;
    s.nack(a.id, lease_id(&leased), nack(None, true), NOW).await.unwrap();
    let t1 = s.get(cancel_1.id).await.unwrap();
    assert_eq!(
        (t1.state, t1.last_error.clone()),
        (TaskState::Canceled, format!("dependency {} ended DEAD", a.id))
    );
    let t2 = s.get(cancel_2.id).await.unwrap();
    let why = format!("dependency {} ended CANCELED", cancel_1.id);
    assert_eq!((t2.state, t2.last_error), (TaskState::Canceled, why), "recursively, across queues");
    assert_eq!(state(s, &run_anyway).await, TaskState::Ready);
}

pub async fn canceling_a_waiting_task_cascades(b: &Backend) {
    let s = &*b.store;
    let a = put(s, new_task("q", 0)).await;
    let w = put(s, after("q", &[&a])).await;
    let next = put(s, after("q", &[&w])).await;
    let runs = put(s, NewTask { on_dependency_failure: DependencyFailure::Run, ..after("q", &[&w]) }).await;
    let canceled = s.cancel(w.id, NOW).await.unwrap();
    assert_eq!(canceled.state, TaskState::Canceled);
    assert_eq!(state(s, &next).await, TaskState::Canceled);
    assert_eq!(state(s, &runs).await, TaskState::Ready);
    run(s, &a, NOW).await;
    assert_eq!(state(s, &w).await, TaskState::Canceled, "a canceled task stays canceled");
}

pub async fn dependencies_cross_queues(b: &Backend) {
    let s = &*b.store;
    let a = put(s, new_task("alpha", 0)).await;
    let bt = put(s, after("beta", &[&a])).await;
    let c = put(s, after("gamma", &[&a, &bt])).await;
    run(s, &a, NOW).await;
    assert_eq!(state(s, &bt).await, TaskState::Ready);
    let c_now = s.get(c.id).await.unwrap();
    assert_eq!((c_now.state, c_now.pending_dependencies), (TaskState::Waiting, vec![bt.id]));
    run(s, &bt, NOW).await;
    assert_eq!(state(s, &c).await, TaskState::Ready);
    assert!(s.lease(spec(&["alpha", "beta"], 5), NOW).await.unwrap().is_empty());
}

pub async fn unknown_or_purged_dependencies_are_refused_with_their_ids(b: &Backend) {
    let s = &*b.store;
    let gone = put(s, new_task("q", 0)).await;
    run(s, &gone, NOW).await;
    s.purge_finished(NOW + 100 * SEC).await.unwrap();
    let known = put(s, new_task("q", 0)).await;
    let ghost = TaskId::generate(NOW);
    let mut ids = vec![gone.id, ghost];
    ids.sort();
    let refused = NewTask { depends_on: vec![ghost, known.id, gone.id], ..new_task("q", 0) };
    assert_eq!(s.enqueue(vec![refused], NOW).await.unwrap_err(), StoreError::DependencyNotFound(ids));
    let stats = s.queue_stats("q").await.unwrap();
    assert_eq!(stats.counts.total(), 1, "nothing was created");
}

pub async fn dependencies_that_already_ended_count_at_enqueue(b: &Backend) {
    let s = &*b.store;
    let ok = put(s, new_task("q", 0)).await;
    run(s, &ok, NOW).await;
    let dead = put(s, NewTask { max_attempts: 1, ..new_task("d", 0) }).await;
    let l = lease_one(s, "d", NOW).await;
    s.nack(dead.id, lease_id(&l), nack(None, false), NOW).await.unwrap();
    let ready = put(s, after("q", &[&ok])).await;
    assert_eq!((ready.state, ready.pending_dependencies.len()), (TaskState::Ready, 0));
    let canceled = put(s, after("q", &[&ok, &dead])).await;
    let why = format!("dependency {} ended DEAD", dead.id);
    assert_eq!((canceled.state, canceled.last_error), (TaskState::Canceled, why));
    let runs =
        put(s, NewTask { on_dependency_failure: DependencyFailure::Run, ..after("q", &[&dead]) }).await;
    assert_eq!(runs.state, TaskState::Ready);
}

pub async fn a_dependency_is_kept_past_its_retention_until_its_dependents_finish(b: &Backend) {
    let s = &*b.store;
    let a = put(s, new_task("q", 0)).await;
    let x = put(s, new_task("x", 0)).await;
    let w = put(s, after("w", &[&a, &x])).await;
    run(s, &a, NOW).await;
    // Retention is 100 s: A would go at NOW + 100 s.
    s.purge_finished(NOW + 200 * SEC).await.unwrap();
    assert_eq!(s.get(a.id).await.unwrap().result, b"done", "kept while its dependent waits");
    run(s, &x, NOW + 200 * SEC).await;
    let held = lease_one(s, "w", NOW + 200 * SEC).await;
    s.purge_finished(NOW + 210 * SEC).await.unwrap();
    assert_eq!(s.get(a.id).await.unwrap().result, b"done", "kept while its dependent runs");
    s.ack(w.id, lease_id(&held), vec![], NOW + 210 * SEC).await.unwrap();
    s.purge_finished(NOW + 210 * SEC).await.unwrap();
    assert_eq!(s.get(a.id).await.unwrap_err(), StoreError::TaskNotFound(a.id));
    assert_eq!(state(s, &w).await, TaskState::Succeeded, "the dependent keeps its own retention");
}

pub async fn waiting_tasks_are_counted_listed_and_purged(b: &Backend) {
    let s = &*b.store;
    let a = put(s, new_task("q", 0)).await;
    let w = put(s, after("q", &[&a])).await;
    let next = put(s, after("q", &[&w])).await;
    let stats = s.queue_stats("q").await.unwrap();
    assert_eq!(stats.counts.get(TaskState::Waiting), 2);
    let listed = s.list_tasks("q", TaskState::Waiting, None, 10).await.unwrap();
    let mut both = [(w.id, vec![a.id]), (next.id, vec![w.id])];
    both.sort();
    let seen: Vec<_> = listed.iter().map(|t| (t.id, t.pending_dependencies.clone())).collect();
    assert_eq!(seen, both, "by id, with what each waits on");
    // Purging WAITING tasks: what waited on them sees them canceled.
    let purged = s.purge_queue("q", &[TaskState::Waiting], NOW).await.unwrap();
    assert_eq!(purged, 2);
    run(s, &a, NOW).await;
    assert_eq!(s.queue_stats("q").await.unwrap().counts.get(TaskState::Waiting), 0);
}

pub async fn a_delayed_dependent_is_scheduled_once_released(b: &Backend) {
    let s = &*b.store;
    let a = put(s, new_task("q", 0)).await;
    let later = put(s, NewTask { scheduled_time: NOW + 50 * SEC, ..after("w", &[&a]) }).await;
    let soon = put(s, NewTask { scheduled_time: NOW + 5 * SEC, ..after("w", &[&a]) }).await;
    run(s, &a, NOW + 10 * SEC).await;
    assert_eq!(state(s, &later).await, TaskState::Scheduled);
    assert_eq!(state(s, &soon).await, TaskState::Ready, "its delay already passed");
    s.promote_due(NOW + 50 * SEC).await.unwrap();
    assert_eq!(state(s, &later).await, TaskState::Ready);
}

pub async fn dependencies_survive_a_reopen(b: Backend) {
    let a = put(&*b.store, new_task("q", 0)).await;
    let w = put(&*b.store, after("w", &[&a])).await;
    let held = lease_one(&*b.store, "q", NOW).await;
    let b = b.reopen().await;
    let s = &*b.store;
    let w_now = s.get(w.id).await.unwrap();
    assert_eq!((w_now.state, w_now.pending_dependencies), (TaskState::Waiting, vec![a.id]));
    s.ack(a.id, lease_id(&held), b"r".to_vec(), NOW).await.unwrap();
    assert_eq!(state(s, &w).await, TaskState::Ready);
    s.purge_finished(NOW + 200 * SEC).await.unwrap();
    assert_eq!(s.get(a.id).await.unwrap().result, b"r", "kept for its dependent across the reopen");
}

pub async fn an_expired_task_is_canceled_instead_of_delivered(b: &Backend) {
    let s = &*b.store;
    let late = put(s, NewTask { expire_time: Some(NOW + 10 * SEC), ..new_task("q", 5) }).await;
    let plain = put(s, new_task("q", 0)).await;
    assert_eq!(late.expire_time, Some(NOW + 10 * SEC));
    let leased = s.lease(spec(&["q"], 5), NOW + 10 * SEC).await.unwrap();
    assert_eq!(leased.iter().map(|t| t.id).collect::<Vec<_>>(), [plain.id], "checked at lease time");
    let t = s.get(late.id).await.unwrap();
    assert_eq!((t.state, t.last_error.as_str(), t.attempt), (TaskState::Canceled, "expired", 0));
}

pub async fn the_timer_sweep_cancels_expired_tasks_down_the_graph(b: &Backend) {
    let s = &*b.store;
    let a = put(s, new_task("q", 0)).await;
    let w = put(s, NewTask { expire_time: Some(NOW + 10 * SEC), ..after("w", &[&a]) }).await;
    let next = put(s, after("w", &[&w])).await;
    let sched = put(
        s,
        NewTask { scheduled_time: NOW + 20 * SEC, expire_time: Some(NOW + 30 * SEC), ..new_task("s", 0) },
    )
    .await;
    let running = put(s, NewTask { expire_time: Some(NOW + 10 * SEC), ..new_task("r", 0) }).await;
    let held = lease_one(s, "r", NOW).await;
    assert!(s.next_timer().await.unwrap().is_some_and(|t| t <= NOW + 10 * SEC));
    let swept = s.promote_due(NOW + 10 * SEC).await.unwrap();
    assert!(swept.changed.contains(&w.id), "{swept:?}");
    let t = s.get(w.id).await.unwrap();
    assert_eq!((t.state, t.last_error.as_str()), (TaskState::Canceled, "expired"));
    assert_eq!(state(s, &next).await, TaskState::Canceled);
    assert_eq!(state(s, &running).await, TaskState::Leased, "a delivered task runs to its end");
    s.ack(running.id, lease_id(&held), vec![], NOW + 10 * SEC).await.unwrap();
    s.promote_due(NOW + 20 * SEC).await.unwrap();
    assert_eq!(state(s, &sched).await, TaskState::Ready);
    s.promote_due(NOW + 30 * SEC).await.unwrap();
    assert_eq!(state(s, &sched).await, TaskState::Canceled);
}

pub async fn a_redriven_dependent_keeps_its_dependency_while_it_runs_again(b: &Backend) {
    let s = &*b.store;
    let a = put(s, new_task("q", 0)).await;
    let w = put(
        s,
        NewTask { max_attempts: 1, on_dependency_failure: DependencyFailure::Run, ..after("w", &[&a]) },
    )
    .await;
    run(s, &a, NOW).await;
    let held = lease_one(s, "w", NOW).await;
    s.nack(w.id, lease_id(&held), nack(None, true), NOW).await.unwrap();
    // Nothing reads A now: it goes with its retention.
    let redriven = s.redrive("w", &[w.id], 0, NOW + 50 * SEC).await.unwrap();
    assert_eq!(redriven.count, 1);
    s.purge_finished(NOW + 200 * SEC).await.unwrap();
    assert_eq!(s.get(a.id).await.unwrap().result, b"done", "read again by its redriven dependent");
    let again = lease_one(s, "w", NOW + 200 * SEC).await;
    s.ack(w.id, lease_id(&again), vec![], NOW + 200 * SEC).await.unwrap();
    s.purge_finished(NOW + 200 * SEC).await.unwrap();
    assert_eq!(s.get(a.id).await.unwrap_err(), StoreError::TaskNotFound(a.id));
}

pub async fn a_replayed_request_finds_its_task_after_its_dependency_was_purged(b: &Backend) {
    let s = &*b.store;
    let a = put(s, new_task("q", 0)).await;
    let req = NewTask { request_id: "r".into(), ..after("w", &[&a]) };
    let w = put(s, req.clone()).await;
    run(s, &a, NOW).await;
    run(s, &w, NOW + 150 * SEC).await;
    s.purge_finished(NOW + 200 * SEC).await.unwrap();
    assert_eq!(s.get(a.id).await.unwrap_err(), StoreError::TaskNotFound(a.id), "read by no one any more");
    let replay = s.enqueue(vec![req], NOW + 200 * SEC).await.unwrap().remove(0);
    assert_eq!((replay.task.id, replay.deduplicated), (w.id, true));
    let fresh = NewTask { request_id: "other".into(), ..after("w", &[&a]) };
    assert_eq!(
        s.enqueue(vec![fresh], NOW + 200 * SEC).await.unwrap_err(),
        StoreError::DependencyNotFound(vec![a.id])
    );
}
