//! How many bytes a task takes in a response, so a lease stops adding tasks
//! before its answer grows past the clients' message limit (gRPC's default
//! is 4 MiB): every field counts, not only the payload.
//!
//! The count is an upper bound of the protobuf encoding of a `LeasedTask`
//! inside a `LeaseResponse`, computed from the lengths of the task's
//! variable fields; the fixed-size fields (ids, numbers, timestamps, the
//! lease) are one constant. Pure: stores call [`task_bytes`] with the
//! lengths they hold (the Redis store at enqueue, `lease.lua` adding the last
//! error by the same rule as [`lease_bytes`]).

use super::task::Task;

/// Longest error text a task keeps from a failed delivery (longer Nack
/// errors are cut to it).
pub const MAX_ERROR_BYTES: usize = 16 * 1024;

/// Framing of one length-delimited field: a tag (1 byte for field numbers
/// under 16) and its length as a varint (at most 5 bytes for a `u32`).
pub const FIELD: usize = 6;

/// Everything of a leased task whose size does not depend on its content:
/// the task's id (26 characters), priority, state, attempt, max_attempts and
/// three timestamps; the lease's id (20 digits) and deadline; the framing of
/// the task, the leased task and the response's repeated entry; the framing
/// of the variable fields.
pub const FIXED: usize = 256;

/// Upper bound of the bytes of a never-delivered task in a response, from
/// the lengths of its variable fields (`strings`: queue, kind, payload,
/// content type, dedup key) and of each header's name and value.
pub fn task_bytes(
    strings: impl IntoIterator<Item = usize>,
    headers: impl IntoIterator<Item = (usize, usize)>,
) -> usize {
    let strings: usize = strings.into_iter().map(|len| len + FIELD).sum();
    // A map entry is a message: its framing, then the key's and the value's.
    let headers: usize = headers.into_iter().map(|(k, v)| k + v + 3 * FIELD).sum();
    FIXED + strings + headers
}

/// [`task_bytes`] of `t`.
pub fn task_bytes_of(t: &Task) -> usize {
    let strings = [t.queue.len(), t.kind.len(), t.payload.len(), t.content_type.len(), t.dedup_key.len()];
    task_bytes(strings, t.headers.iter().map(|(k, v)| (k.len(), v.len())))
}

/// Upper bound of the bytes of a task in a lease response: [`task_bytes`]
/// of its content, plus its last error (from an earlier delivery), if any.
pub fn lease_bytes(task_bytes: usize, last_error_len: usize) -> usize {
    if last_error_len > 0 {
        task_bytes + last_error_len + FIELD
    } else {
        task_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_and_header_counts() {
        let empty = task_bytes([0; 5], []);
        assert_eq!(empty, FIXED + 5 * FIELD);
        assert_eq!(task_bytes([10, 0, 100, 0, 0], [(3, 4)]), empty + 110 + 7 + 3 * FIELD);
        assert_eq!(lease_bytes(empty, 0), empty);
        assert_eq!(lease_bytes(empty, 100), empty + 100 + FIELD);
    }
}
