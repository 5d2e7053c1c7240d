//! The task record as stored in Redis, in two parts so the Lua scripts never
//! decode more than they change:
//! - the **body** ([`encode_body`]): what never changes after enqueue (id,
//!   kind, payload, content type, headers), written here and only copied by
//!   Lua;
//! - the **meta** record: the fields the scripts read and change (state,
//!   attempts, lease, times, ...), packed by Lua's `struct` library with the
//!   layout `HEAD` then `TAIL` in `lua/lib.lua`, read here by [`decode`].
//!
//! A SUCCEEDED task's result is a third value, kept apart (`results`).

use std::collections::BTreeMap;

use crate::core::task::{DependencyFailure, Lease, Task, TaskId, TaskState};

/// First byte of every body: the body layout's version.
const BODY_V1: u8 = 1;
/// V1's fields, then the concurrency key and the semaphores (a count, then
/// each name): written only for a task that has one of them, so every other
/// body stays V1, byte for byte.
const BODY_V2: u8 = 2;
/// V2's fields, then the dependencies (a count, then each id's 16 bytes),
/// the dependency failure policy (u8: 0 cancel, 1 run) and the deadline (u8
/// 1 then its u64 ms, or 0): written only for a task with dependencies or a
/// deadline. (What the scripts must read of these is in the queue's `deps`
/// hash and `expiring` set.)
const BODY_V3: u8 = 3;

/// A stored record that cannot be read back.
#[derive(Debug, PartialEq, thiserror::Error)]
#[error("corrupt task record: {0}")]
pub struct Corrupt(&'static str);

/// The body of `t`: version, id (16 bytes), then kind, payload, content type
/// and headers (a count, then key and value), each string a u32 length and
/// its bytes; integers little-endian.
pub fn encode_body(t: &Task) -> Vec<u8> {
    let headers: usize = t.headers.iter().map(|(k, v)| k.len() + v.len() + 8).sum();
    let mut out =
        Vec::with_capacity(1 + 16 + 16 + t.kind.len() + t.payload.len() + t.content_type.len() + headers);
    let workflow = !t.depends_on.is_empty() || t.expire_time.is_some();
    let flow = workflow || !t.concurrency_key.is_empty() || !t.semaphores.is_empty();
    out.push(match (workflow, flow) {
        (true, _) => BODY_V3,
        (false, true) => BODY_V2,
        (false, false) => BODY_V1,
    });
    out.extend_from_slice(&t.id.0.to_le_bytes());
    for field in [t.kind.as_bytes(), &t.payload, t.content_type.as_bytes()] {
        put(&mut out, field);
    }
    out.extend_from_slice(&(t.headers.len() as u32).to_le_bytes());
    for (k, v) in &t.headers {
        put(&mut out, k.as_bytes());
        put(&mut out, v.as_bytes());
    }
    if flow {
        put(&mut out, t.concurrency_key.as_bytes());
        out.extend_from_slice(&(t.semaphores.len() as u32).to_le_bytes());
        for s in &t.semaphores {
            put(&mut out, s.as_bytes());
        }
    }
    if workflow {
        out.extend_from_slice(&(t.depends_on.len() as u32).to_le_bytes());
        for d in &t.depends_on {
            out.extend_from_slice(&d.0.to_le_bytes());
        }
        out.push(match t.on_dependency_failure {
            DependencyFailure::Cancel => 0,
            DependencyFailure::Run => 1,
        });
        match t.expire_time {
            Some(at) => {
                out.push(1);
                out.extend_from_slice(&at.to_le_bytes());
            }
            None => out.push(0),
        }
    }
    out
}

fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// The task of `queue` whose parts are `meta`, `body` and `result`.
pub fn decode(queue: &str, meta: &[u8], body: &[u8], result: &[u8]) -> Result<Task, Corrupt> {
    let mut t = decode_body(queue, body)?;
    apply_meta(&mut t, meta)?;
    t.result = result.to_vec();
    Ok(t)
}

/// The task of a body, its changing fields still to be set by [`apply_meta`].
fn decode_body(queue: &str, body: &[u8]) -> Result<Task, Corrupt> {
    let mut b = Reader(body);
    let version = b.u8()?;
    if !(BODY_V1..=BODY_V3).contains(&version) {
        return Err(Corrupt("unknown body version"));
    }
    let id = TaskId(u128::from_le_bytes(b.take(16)?.try_into().map_err(|_| Corrupt("short id"))?));
    let kind = b.text()?;
    let payload = b.string()?.to_vec();
    let content_type = b.text()?;
    let mut headers = BTreeMap::new();
    for _ in 0..b.u32()? {
        let k = b.text()?;
        headers.insert(k, b.text()?);
    }
    let (mut concurrency_key, mut semaphores) = (String::new(), Vec::new());
    if version >= BODY_V2 {
        concurrency_key = b.text()?;
        for _ in 0..b.u32()? {
            semaphores.push(b.text()?);
        }
    }
    let (mut depends_on, mut on_dependency_failure, mut expire_time) =
        (Vec::new(), DependencyFailure::Cancel, None);
    if version == BODY_V3 {
        for _ in 0..b.u32()? {
            depends_on
                .push(TaskId(u128::from_le_bytes(b.take(16)?.try_into().map_err(|_| Corrupt("short id"))?)));
        }
        on_dependency_failure = match b.u8()? {
            0 => DependencyFailure::Cancel,
            1 => DependencyFailure::Run,
            _ => return Err(Corrupt("unknown dependency failure policy")),
        };
        if b.u8()? == 1 {
            expire_time = Some(u64::from_le_bytes(b.take(8)?.try_into().map_err(|_| Corrupt("truncated"))?));
        }
    }
    Ok(Task {
        id,
        queue: queue.to_owned(),
        kind,
        payload,
        content_type,
        priority: 0,
        headers,
        state: TaskState::Ready,
        attempt: 0,
        max_attempts: 0,
        dedup_key: String::new(),
        request_id: String::new(),
        create_time: 0,
        update_time: 0,
        scheduled_time: 0,
        result: Vec::new(),
        last_error: String::new(),
        lease: None,
        concurrency_key,
        semaphores,
        depends_on,
        pending_dependencies: Vec::new(),
        on_dependency_failure,
        expire_time,
    })
}

/// Sets the changing fields of `t` from its meta record.
pub fn apply_meta(t: &mut Task, meta: &[u8]) -> Result<(), Corrupt> {
    let mut m = Reader(meta);
    // HEAD
    t.state = state_of(m.u8()?)?;
    t.attempt = m.u32()?;
    let _payload_bytes = m.u32()?;
    let [lease_id, lease_expire, update_time] = [m.f64()?, m.f64()?, m.f64()?];
    t.update_time = update_time;
    let lease_worker = m.text()?;
    // TAIL
    t.priority = m.u8()?;
    t.max_attempts = m.u32()?;
    // The third number is the script's READY sequence: Redis bookkeeping.
    let [create_time, scheduled_time, _ready_seq] = [m.f64()?, m.f64()?, m.f64()?];
    (t.create_time, t.scheduled_time) = (create_time, scheduled_time);
    t.last_error = m.text()?;
    t.dedup_key = m.text()?;
    t.request_id = m.text()?;
    t.lease =
        (lease_id != 0).then_some(Lease { id: lease_id, expire_time: lease_expire, worker_id: lease_worker });
    Ok(())
}

fn state_of(code: u8) -> Result<TaskState, Corrupt> {
    Ok(match code {
        1 => TaskState::Scheduled,
        2 => TaskState::Ready,
        3 => TaskState::Leased,
        4 => TaskState::Succeeded,
        5 => TaskState::Dead,
        6 => TaskState::Canceled,
        7 => TaskState::Waiting,
        _ => return Err(Corrupt("unknown state")),
    })
}

/// The number of `state` in meta records (`lua/lib.lua`), the inverse of
/// `state_of`; scripts that take a state as an argument take it so.
pub fn state_code(state: TaskState) -> u8 {
    match state {
        TaskState::Scheduled => 1,
        TaskState::Ready => 2,
        TaskState::Leased => 3,
        TaskState::Succeeded => 4,
        TaskState::Dead => 5,
        TaskState::Canceled => 6,
        TaskState::Waiting => 7,
    }
}

/// Reads fields off the front of a record.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Corrupt> {
        if self.0.len() < n {
            return Err(Corrupt("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, Corrupt> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, Corrupt> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().map_err(|_| Corrupt("truncated"))?))
    }

    /// An integer Lua stored as a double (exact below 2^53).
    fn f64(&mut self) -> Result<u64, Corrupt> {
        let f = f64::from_le_bytes(self.take(8)?.try_into().map_err(|_| Corrupt("truncated"))?);
        if !(0.0..9_007_199_254_740_992.0).contains(&f) || f.fract() != 0.0 {
            return Err(Corrupt("a number that is not a non-negative integer"));
        }
        Ok(f as u64)
    }

    fn string(&mut self) -> Result<&'a [u8], Corrupt> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn text(&mut self) -> Result<String, Corrupt> {
        String::from_utf8(self.string()?.to_vec()).map_err(|_| Corrupt("a text field is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `encode(t)` in `lua/lib.lua` packs, for the tests.
    fn encode_meta(t: &Task) -> Vec<u8> {
        let mut out = vec![state_code(t.state)];
        for n in [t.attempt, t.payload.len() as u32] {
            out.extend_from_slice(&n.to_le_bytes());
        }
        let (lease_id, expire, worker) = match &t.lease {
            Some(l) => (l.id, l.expire_time, l.worker_id.as_str()),
            None => (0, 0, ""),
        };
        for n in [lease_id, expire, t.update_time] {
            out.extend_from_slice(&(n as f64).to_le_bytes());
        }
        put(&mut out, worker.as_bytes());
        out.push(t.priority);
        out.extend_from_slice(&t.max_attempts.to_le_bytes());
        for n in [t.create_time, t.scheduled_time, 42] {
            out.extend_from_slice(&(n as f64).to_le_bytes());
        }
        for s in [&t.last_error, &t.dedup_key, &t.request_id] {
            put(&mut out, s.as_bytes());
        }
        out
    }

    fn sample() -> Task {
        Task {
            depends_on: Vec::new(),
            pending_dependencies: Vec::new(),
            on_dependency_failure: Default::default(),
            expire_time: None,
            id: TaskId::generate(1_767_225_600_000),
            queue: "emails".into(),
            kind: "send".into(),
            payload: vec![0, 255, 1, 128, 0xc4, 0xa0],
            content_type: "application/octet-stream".into(),
            priority: 7,
            headers: [("traceparent".to_string(), "00-abc".to_string()), ("é".into(), "ü".into())].into(),
            state: TaskState::Leased,
            attempt: 2,
            max_attempts: 5,
            dedup_key: "d".into(),
            request_id: "r".into(),
            create_time: 1_767_225_600_000,
            update_time: (1 << 53) - 1,
            scheduled_time: 1_767_225_601_000,
            result: vec![9; 70_000],
            last_error: "boom".into(),
            lease: Some(Lease {
                id: u64::from(u32::MAX) + 3,
                expire_time: 1_767_225_630_000,
                worker_id: "w".into(),
            }),
            concurrency_key: String::new(),
            semaphores: Vec::new(),
        }
    }

    #[test]
    fn records_round_trip() {
        let t = sample();
        assert_eq!(decode("emails", &encode_meta(&t), &encode_body(&t), &t.result).unwrap(), t);
        let keyed =
            Task { concurrency_key: "tenant".into(), semaphores: vec!["a".into(), "b".into()], ..t.clone() };
        assert_eq!(
            decode("emails", &encode_meta(&keyed), &encode_body(&keyed), &keyed.result).unwrap(),
            keyed
        );
        assert_eq!(encode_body(&t)[0], BODY_V1, "a task without flow fields keeps the V1 body");
        let workflow = Task {
            depends_on: vec![TaskId(7), TaskId(u128::MAX)],
            on_dependency_failure: DependencyFailure::Run,
            expire_time: Some(1_767_229_200_000),
            ..keyed.clone()
        };
        assert_eq!(encode_body(&workflow)[0], BODY_V3);
        let decoded = decode("emails", &encode_meta(&workflow), &encode_body(&workflow), &workflow.result);
        assert_eq!(decoded.unwrap(), workflow);
        let bare = Task { headers: BTreeMap::new(), lease: None, payload: vec![], result: vec![], ..t };
        assert_eq!(decode("emails", &encode_meta(&bare), &encode_body(&bare), &[]).unwrap(), bare);
    }

    #[test]
    fn garbage_is_corrupt_not_a_panic() {
        let t = sample();
        let (meta, body) = (encode_meta(&t), encode_body(&t));
        for cut in [0, 1, 10, body.len() / 2, body.len() - 1] {
            assert!(decode("q", &meta, &body[..cut], &[]).is_err());
        }
        for cut in [0, 1, 10, meta.len() / 2, meta.len() - 1] {
            assert!(decode("q", &meta[..cut], &body, &[]).is_err());
        }
        let mut bad_state = meta.clone();
        bad_state[0] = 9;
        assert!(decode("q", &bad_state, &body, &[]).is_err());
        let mut bad_version = body.clone();
        bad_version[0] = 0;
        assert!(decode("q", &meta, &bad_version, &[]).is_err());
    }
}
