//! W3C trace context (`traceparent`, `tracestate`) as a task carries it.
//!
//! A task keeps the context it was created in, in its `traceparent` and
//! `tracestate` headers, and hands it to every worker that leases it, so the
//! worker's processing continues the producer's trace. A context the producer
//! put in the task's headers wins; otherwise the one its gRPC call carried.

use std::collections::BTreeMap;

/// The header (and gRPC metadata key) of the trace parent.
pub const TRACEPARENT: &str = "traceparent";
/// The header (and gRPC metadata key) of vendor trace state.
pub const TRACESTATE: &str = "tracestate";
/// Longest `tracestate` kept (W3C: 32 list members of at most 256 bytes; we
/// keep what fits a task header).
const MAX_TRACESTATE: usize = 2048;

/// A caller's trace context; `None` fields were absent or malformed (W3C:
/// an invalid `traceparent` is ignored, as is its `tracestate`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceContext {
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// The context from raw metadata values, validated.
    pub fn parse(traceparent: Option<&str>, tracestate: Option<&str>) -> Self {
        let Some(parent) = traceparent.filter(|p| valid_traceparent(p)) else {
            return Self::default();
        };
        let state = tracestate.filter(|s| !s.is_empty() && s.len() <= MAX_TRACESTATE && s.is_ascii());
        Self { traceparent: Some(parent.to_owned()), tracestate: state.map(str::to_owned) }
    }

    /// Stores this context in a new task's `headers` unless the producer set
    /// its own `traceparent` there.
    pub fn inherit_into(&self, headers: &mut BTreeMap<String, String>) {
        let Some(parent) = &self.traceparent else { return };
        if headers.contains_key(TRACEPARENT) {
            return;
        }
        headers.insert(TRACEPARENT.to_owned(), parent.clone());
        if let Some(state) = &self.tracestate {
            headers.insert(TRACESTATE.to_owned(), state.clone());
        }
    }
}

/// `version-traceid-parentid-flags` in lowercase hex (`00-<32>-<16>-<2>`),
/// with neither id all zeros and version `ff` forbidden.
fn valid_traceparent(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let hex = |p: &str, n: usize| p.len() == n && p.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let nonzero = |p: &str| p.bytes().any(|b| b != b'0');
    match parts.as_slice() {
        [version, trace, parent, flags, rest @ ..] => {
            hex(version, 2)
                && *version != "ff"
                && (rest.is_empty() || *version != "00")
                && hex(trace, 32)
                && nonzero(trace)
                && hex(parent, 16)
                && nonzero(parent)
                && hex(flags, 2)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_kept_with_its_tracestate() {
        let ctx = TraceContext::parse(Some(PARENT), Some("congo=t61rcWkgMzE"));
        assert_eq!(ctx.traceparent.as_deref(), Some(PARENT));
        assert_eq!(ctx.tracestate.as_deref(), Some("congo=t61rcWkgMzE"));
    }

    #[test]
    fn malformed_contexts_are_ignored() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(TraceContext::parse(Some(bad), Some("a=b")), TraceContext::default(), "{bad:?}");
        }
    }

    #[test]
    fn the_producers_own_header_wins() {
        let ctx = TraceContext::parse(Some(PARENT), Some("a=b"));
        let mut own = BTreeMap::from([(TRACEPARENT.to_owned(), "mine".to_owned())]);
        ctx.inherit_into(&mut own);
        assert_eq!(own.len(), 1);
        assert_eq!(own[TRACEPARENT], "mine");
        let mut empty = BTreeMap::new();
        ctx.inherit_into(&mut empty);
        assert_eq!((empty[TRACEPARENT].as_str(), empty[TRACESTATE].as_str()), (PARENT, "a=b"));
    }
}
