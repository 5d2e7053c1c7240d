//! Reading script replies and mapping Redis failures to [`StoreError`].

use redis::{RedisError, RedisResult, Value};

use super::record;
use crate::core::lease::LeaseError;
use crate::core::task::{Task, TaskId};
use crate::store::StoreError;

/// Longest any one Redis call may take before the store reports Unavailable
/// (the connection's own response timeout is shorter; this also bounds
/// waiting for a reconnection).
pub const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Runs a Redis call with the [`CALL_TIMEOUT`] bound.
pub async fn bounded<T>(call: impl std::future::Future<Output = RedisResult<T>>) -> Result<T, StoreError> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(result) => result.map_err(store_error),
        Err(_) => Err(StoreError::Unavailable(format!("redis did not answer within {CALL_TIMEOUT:?}"))),
    }
}

/// Out of memory (maxmemory with noeviction) is Full; anything else the
/// store cannot serve through is Unavailable.
pub fn store_error(e: RedisError) -> StoreError {
    let text = e.to_string();
    // `-OOM command not allowed when used memory > 'maxmemory'`, also inside
    // a pipeline's or a script's error.
    if e.code() == Some("OOM") || (text.contains("OOM") && text.contains("maxmemory")) {
        StoreError::Full(text)
    } else {
        StoreError::Unavailable(format!("redis: {text}"))
    }
}

/// A reply that does not have the shape its script promises.
pub fn unexpected(what: &str) -> StoreError {
    StoreError::Internal(format!("unexpected reply from redis: {what}"))
}

pub fn array(v: Value) -> Result<Vec<Value>, StoreError> {
    match v {
        Value::Array(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        other => Err(unexpected(&format!("{other:?} instead of an array"))),
    }
}

pub fn bytes(v: &Value) -> Result<&[u8], StoreError> {
    match v {
        Value::BulkString(b) => Ok(b),
        Value::SimpleString(s) => Ok(s.as_bytes()),
        other => Err(unexpected(&format!("{other:?} instead of a string"))),
    }
}

pub fn text(v: &Value) -> Result<&str, StoreError> {
    std::str::from_utf8(bytes(v)?).map_err(|_| unexpected("a non-UTF-8 string"))
}

pub fn uint(v: &Value) -> Result<u64, StoreError> {
    match v {
        Value::Int(n) => u64::try_from(*n).map_err(|_| unexpected("a negative number")),
        other => text(other)?.parse().map_err(|_| unexpected("a string that is not a number")),
    }
}

pub fn task_id(v: &Value) -> Result<TaskId, StoreError> {
    text(v)?.parse().map_err(|_| unexpected("a malformed task id"))
}

/// A stored record that cannot be read: retrying will not mend it.
pub fn corrupt(e: record::Corrupt) -> StoreError {
    StoreError::Internal(e.to_string())
}

/// The task of `queue` from a record's three reply items (`lua/lib.lua`).
pub fn task(queue: &str, items: &[Value]) -> Result<Task, StoreError> {
    let [meta, body, result] = items else { return Err(unexpected("a record that is not three strings")) };
    record::decode(queue, bytes(meta)?, bytes(body)?, bytes(result)?).map_err(corrupt)
}

/// The reply of a settling script (`{'ok', ...}` or `{reason}`), with its
/// status checked: the items after `'ok'`, or the matching error.
pub fn settled(v: Value, id: TaskId) -> Result<Vec<Value>, StoreError> {
    let mut items = array(v)?;
    if items.is_empty() {
        return Err(unexpected("an empty reply"));
    }
    let rest = items.split_off(1);
    match text(&items[0])? {
        "ok" => Ok(rest),
        "not_found" => Err(StoreError::TaskNotFound(id)),
        "mismatch" => Err(StoreError::Lease(LeaseError::Mismatch)),
        "canceled" => Err(StoreError::Lease(LeaseError::Canceled)),
        "finished" => Err(StoreError::TaskFinished(id)),
        other => Err(unexpected(&format!("status {other:?}"))),
    }
}

/// The record right after the status of a settling script's reply.
pub fn settled_task(v: Value, id: TaskId, queue: &str) -> Result<Task, StoreError> {
    task(queue, &settled(v, id)?)
}
