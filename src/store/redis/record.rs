//! The task record as stored in Redis: a MessagePack map with named fields
//! that the Lua scripts read and change with Redis's built-in `cmsgpack`.
//!
//! The encoding is written by hand rather than derived, because it has to
//! survive a round trip through `cmsgpack`, which (in Redis 7.0) cannot read
//! MessagePack `bin` values, writes every Lua string back as `str`, writes an
//! empty table as an array and drops `nil` fields. So:
//! - bytes (payload, result) are written as `str` holding raw bytes, and any
//!   `str` or `bin` is read back as bytes;
//! - headers are a flat array `[k1, v1, k2, v2, ...]`;
//! - there is no nil: no lease is `lease_id = 0` (lease ids start at 1);
//! - numbers are integers below 2^53 (exact as Lua doubles); a float holding
//!   an integer is accepted too;
//! - fields are found by name, in any order, so Lua may reorder them.

use std::collections::BTreeMap;

use super::msgpack::{self, Value, Writer};
use crate::core::task::{Lease, Task, TaskId, TaskState};

/// A stored record that cannot be read back.
#[derive(Debug, PartialEq, thiserror::Error)]
#[error("corrupt task record: {0}")]
pub struct Corrupt(String);

/// The record of `task`.
pub fn encode(t: &Task) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(t.payload.len() + t.result.len() + 256));
    w.map_len(21);
    w.field_str("id", &t.id.to_string());
    w.field_str("queue", &t.queue);
    w.field_str("kind", &t.kind);
    w.field_bytes("payload", &t.payload);
    w.field_str("content_type", &t.content_type);
    w.field_uint("priority", u64::from(t.priority));
    w.bytes(b"headers");
    w.array_len(t.headers.len() * 2);
    for (k, v) in &t.headers {
        w.bytes(k.as_bytes());
        w.bytes(v.as_bytes());
    }
    w.field_str("state", state_name(t.state));
    w.field_uint("attempt", u64::from(t.attempt));
    w.field_uint("max_attempts", u64::from(t.max_attempts));
    w.field_str("dedup_key", &t.dedup_key);
    w.field_str("request_id", &t.request_id);
    w.field_uint("create_time", t.create_time);
    w.field_uint("update_time", t.update_time);
    w.field_uint("scheduled_time", t.scheduled_time);
    w.field_bytes("result", &t.result);
    w.field_str("last_error", &t.last_error);
    let (lease_id, expire, worker) = match &t.lease {
        Some(l) => (l.id, l.expire_time, l.worker_id.as_str()),
        None => (0, 0, ""),
    };
    w.field_uint("lease_id", lease_id);
    w.field_uint("lease_expire", expire);
    w.field_str("lease_worker", worker);
    w.field_uint("ready_seq", t.ready_seq);
    w.0
}

/// Reads a record written by [`encode`] or re-packed by a script.
pub fn decode(bytes: &[u8]) -> Result<Task, Corrupt> {
    let Value::Map(fields) = msgpack::read(bytes).map_err(|e| Corrupt(e.0))? else {
        return Err(corrupt("not a map"));
    };
    let mut t = Task {
        id: TaskId(0),
        queue: String::new(),
        kind: String::new(),
        payload: Vec::new(),
        content_type: String::new(),
        priority: 0,
        headers: BTreeMap::new(),
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
        ready_seq: 0,
    };
    let (mut lease_id, mut lease_expire, mut lease_worker) = (0, 0, String::new());
    let mut seen_id = false;
    for (key, value) in fields {
        let Value::Bytes(key) = key else { return Err(corrupt("a field name is not a string")) };
        match key {
            b"id" => {
                t.id = text(value)?.parse().map_err(|_| corrupt("bad id"))?;
                seen_id = true;
            }
            b"queue" => t.queue = text(value)?,
            b"kind" => t.kind = text(value)?,
            b"payload" => t.payload = bytes_of(value)?.to_vec(),
            b"content_type" => t.content_type = text(value)?,
            b"priority" => t.priority = small(value)?,
            b"headers" => t.headers = headers(value)?,
            b"state" => t.state = state_of(&text(value)?)?,
            b"attempt" => t.attempt = small(value)?,
            b"max_attempts" => t.max_attempts = small(value)?,
            b"dedup_key" => t.dedup_key = text(value)?,
            b"request_id" => t.request_id = text(value)?,
            b"create_time" => t.create_time = uint(value)?,
            b"update_time" => t.update_time = uint(value)?,
            b"scheduled_time" => t.scheduled_time = uint(value)?,
            b"result" => t.result = bytes_of(value)?.to_vec(),
            b"last_error" => t.last_error = text(value)?,
            b"lease_id" => lease_id = uint(value)?,
            b"lease_expire" => lease_expire = uint(value)?,
            b"lease_worker" => lease_worker = text(value)?,
            b"ready_seq" => t.ready_seq = uint(value)?,
            _ => {} // a field from a newer version: ignore
        }
    }
    if !seen_id {
        return Err(corrupt("no id"));
    }
    if lease_id != 0 {
        t.lease = Some(Lease { id: lease_id, expire_time: lease_expire, worker_id: lease_worker });
    }
    Ok(t)
}

/// The state's name in records (and in the scripts).
pub fn state_name(s: TaskState) -> &'static str {
    match s {
        TaskState::Scheduled => "SCHEDULED",
        TaskState::Ready => "READY",
        TaskState::Leased => "LEASED",
        TaskState::Succeeded => "SUCCEEDED",
        TaskState::Dead => "DEAD",
        TaskState::Canceled => "CANCELED",
    }
}

fn state_of(name: &str) -> Result<TaskState, Corrupt> {
    Ok(match name {
        "SCHEDULED" => TaskState::Scheduled,
        "READY" => TaskState::Ready,
        "LEASED" => TaskState::Leased,
        "SUCCEEDED" => TaskState::Succeeded,
        "DEAD" => TaskState::Dead,
        "CANCELED" => TaskState::Canceled,
        other => return Err(corrupt(&format!("unknown state {other:?}"))),
    })
}

fn corrupt(why: &str) -> Corrupt {
    Corrupt(why.to_owned())
}

fn bytes_of(v: Value<'_>) -> Result<&[u8], Corrupt> {
    match v {
        Value::Bytes(b) => Ok(b),
        // An empty Lua string never becomes nil, but be lenient.
        Value::Nil => Ok(&[]),
        _ => Err(corrupt("expected a string")),
    }
}

fn text(v: Value<'_>) -> Result<String, Corrupt> {
    String::from_utf8(bytes_of(v)?.to_vec()).map_err(|_| corrupt("a text field is not UTF-8"))
}

fn uint(v: Value<'_>) -> Result<u64, Corrupt> {
    match v {
        Value::Uint(n) => Ok(n),
        Value::Int(n) if n >= 0 => Ok(n as u64),
        Value::Float(f) if f >= 0.0 && f.fract() == 0.0 && f < 18_446_744_073_709_551_616.0 => Ok(f as u64),
        Value::Bool | Value::Nil => Err(corrupt("expected a number")),
        _ => Err(corrupt("expected a non-negative integer")),
    }
}

fn small<T: TryFrom<u64>>(v: Value<'_>) -> Result<T, Corrupt> {
    T::try_from(uint(v)?).map_err(|_| corrupt("number out of range"))
}

fn headers(v: Value<'_>) -> Result<BTreeMap<String, String>, Corrupt> {
    let mut out = BTreeMap::new();
    match v {
        Value::Array(items) => {
            if items.len() % 2 != 0 {
                return Err(corrupt("odd headers array"));
            }
            let mut it = items.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                out.insert(text(k)?, text(v)?);
            }
        }
        Value::Map(pairs) => {
            for (k, v) in pairs {
                out.insert(text(k)?, text(v)?);
            }
        }
        Value::Nil => {}
        _ => return Err(corrupt("headers are not an array")),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Task {
        Task {
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
            ready_seq: 42,
        }
    }

    #[test]
    fn records_round_trip() {
        let t = sample();
        assert_eq!(decode(&encode(&t)).unwrap(), t);
        let bare = Task { headers: BTreeMap::new(), lease: None, payload: vec![], result: vec![], ..t };
        assert_eq!(decode(&encode(&bare)).unwrap(), bare);
    }

    #[test]
    fn reads_what_cmsgpack_writes() {
        // Fields in another order, an empty headers table as an empty array,
        // a float timestamp and a negative-fixint-free integer mix.
        let mut w = Writer(Vec::new());
        w.map_len(4);
        w.field_uint("ready_seq", 3);
        w.bytes(b"headers");
        w.array_len(0);
        w.bytes(b"create_time");
        w.0.push(0xcb);
        w.0.extend_from_slice(&1_767_225_600_000f64.to_bits().to_be_bytes());
        w.field_str("id", "01KDZ8Q4G0000000000000000Z");
        let t = decode(&w.0).unwrap();
        assert_eq!((t.ready_seq, t.create_time, t.headers.len()), (3, 1_767_225_600_000, 0));
        assert!(t.lease.is_none());
    }

    #[test]
    fn garbage_is_corrupt_not_a_panic() {
        let raw = encode(&sample());
        for cut in [0, 1, 10, raw.len() / 2, raw.len() - 1] {
            assert!(decode(&raw[..cut]).is_err());
        }
        assert!(decode(&[0xc1]).is_err());
        assert!(decode(&[0x80]).is_err(), "no id");
    }
}
