//! How the dashboard shows things: state names, times, ages, rates, payload
//! previews, and errors as pages. No I/O; the templates escape what these
//! return.

use std::time::{Duration, UNIX_EPOCH};

use askama::Template;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

use crate::broker::BrokerError;
use crate::core::stats::STATES;
use crate::core::task::TaskState;
use crate::core::Millis;

/// Most payload bytes a preview shows.
pub const PREVIEW_BYTES: usize = 4096;

/// The lowercase name pages and URLs use for a state.
pub fn state_name(state: TaskState) -> &'static str {
    match state {
        TaskState::Scheduled => "scheduled",
        TaskState::Ready => "ready",
        TaskState::Leased => "leased",
        TaskState::Succeeded => "succeeded",
        TaskState::Dead => "dead",
        TaskState::Canceled => "canceled",
        TaskState::Waiting => "waiting",
    }
}

/// The state named `name` (as [`state_name`] writes it).
pub fn parse_state(name: &str) -> Option<TaskState> {
    STATES.into_iter().find(|s| state_name(*s) == name)
}

/// `ms` as an RFC 3339 UTC time, to the millisecond.
pub fn time(ms: Millis) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// How long ago `then` was at `now`, to the second (`3m 12s`).
pub fn age(now: Millis, then: Millis) -> String {
    let secs = now.saturating_sub(then) / 1000;
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

/// A rate per minute, with one decimal below 10.
pub fn per_minute(rate: f64) -> String {
    if rate < 10.0 {
        format!("{rate:.1}")
    } else {
        format!("{rate:.0}")
    }
}

/// Bytes as a page shows them: UTF-8 as text, anything else as hex.
#[derive(Debug, PartialEq, Eq)]
pub struct Preview {
    /// `"text"`, `"hex"` or `"empty"`.
    pub kind: &'static str,
    /// What is shown: at most [`PREVIEW_BYTES`] of the bytes.
    pub shown: String,
    /// The whole length in bytes.
    pub len: usize,
    /// Whether `shown` is only the start.
    pub truncated: bool,
}

impl Preview {
    pub fn of(bytes: &[u8]) -> Self {
        let len = bytes.len();
        if len == 0 {
            return Preview { kind: "empty", shown: String::new(), len, truncated: false };
        }
        let truncated = len > PREVIEW_BYTES;
        let head = &bytes[..len.min(PREVIEW_BYTES)];
        // A cut may split a character; what is valid up to the cut is text.
        let text = match std::str::from_utf8(head) {
            Ok(t) => Some(t),
            Err(e) if truncated && e.error_len().is_none() => {
                std::str::from_utf8(&head[..e.valid_up_to()]).ok()
            }
            Err(_) => None,
        };
        match text {
            Some(t) => Preview { kind: "text", shown: t.to_owned(), len, truncated },
            None => Preview { kind: "hex", shown: hex_dump(head), len, truncated },
        }
    }
}

/// 16 bytes a line: offset, hex, and the printable ASCII.
fn hex_dump(bytes: &[u8]) -> String {
    let mut out = String::new();
    for (i, line) in bytes.chunks(16).enumerate() {
        let hex: Vec<String> = line.iter().map(|b| format!("{b:02x}")).collect();
        let ascii: String =
            line.iter().map(|&b| if b.is_ascii_graphic() || b == b' ' { b as char } else { '.' }).collect();
        out.push_str(&format!("{:08x}  {:<47}  {ascii}\n", i * 16, hex.join(" ")));
    }
    out
}

/// An error page.
#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    status: u16,
    reason: &'a str,
    message: &'a str,
}

/// A failed request: a status and what to tell the operator.
#[derive(Debug)]
pub struct Problem {
    pub status: StatusCode,
    pub message: String,
}

impl Problem {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
}

impl From<BrokerError> for Problem {
    fn from(e: BrokerError) -> Self {
        let status = match &e {
            BrokerError::QueueNotFound(_) | BrokerError::TaskNotFound(_) => StatusCode::NOT_FOUND,
            BrokerError::Invalid(_) => StatusCode::BAD_REQUEST,
            BrokerError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            BrokerError::PermissionDenied(_) => StatusCode::FORBIDDEN,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Problem::new(status, e.to_string())
    }
}

impl From<askama::Error> for Problem {
    fn from(e: askama::Error) -> Self {
        tracing::error!(error = %e, "dashboard template failed");
        Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "the page could not be rendered")
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let page = ErrorPage {
            status: self.status.as_u16(),
            reason: self.status.canonical_reason().unwrap_or("Error"),
            message: &self.message,
        };
        match page.render() {
            Ok(html) => (self.status, Html(html)).into_response(),
            Err(_) => (self.status, self.message).into_response(),
        }
    }
}

/// A rendered page, or the problem rendering it.
pub fn page(t: &impl Template) -> Result<Html<String>, Problem> {
    Ok(Html(t.render()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names_round_trip() {
        for s in STATES {
            assert_eq!(parse_state(state_name(s)), Some(s));
        }
        assert_eq!(parse_state("DEAD"), None);
    }

    #[test]
    fn times_and_ages() {
        assert_eq!(time(1_767_225_600_123), "2026-01-01T00:00:00.123Z");
        assert_eq!(age(200_500, 8_000), "3m 12s");
        assert_eq!(age(0, 8_000), "0s", "a clock behind the store is not negative");
        assert_eq!((per_minute(2.345), per_minute(123.4)), ("2.3".to_owned(), "123".to_owned()));
    }

    #[test]
    fn previews_show_text_as_text_and_anything_else_as_hex() {
        assert_eq!(Preview::of(b"").kind, "empty");
        let p = Preview::of("héllo <b>".as_bytes());
        assert_eq!((p.kind, p.shown.as_str(), p.len, p.truncated), ("text", "héllo <b>", 10, false));
        let p = Preview::of(&[0xff, 0x00, b'A']);
        assert_eq!(p.kind, "hex");
        assert_eq!(p.shown, format!("00000000  {:<47}  ..A\n", "ff 00 41"));
    }

    #[test]
    fn a_long_payload_is_cut_and_a_character_split_by_the_cut_is_still_text() {
        let mut long = "a".repeat(PREVIEW_BYTES - 1);
        long.push('é');
        let p = Preview::of(long.as_bytes());
        assert_eq!((p.kind, p.shown.len(), p.truncated), ("text", PREVIEW_BYTES - 1, true));
        let p = Preview::of(&vec![0xffu8; PREVIEW_BYTES * 2]);
        assert_eq!((p.kind, p.truncated, p.shown.lines().count()), ("hex", true, PREVIEW_BYTES / 16));
    }
}
