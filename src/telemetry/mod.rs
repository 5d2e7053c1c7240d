//! Logging: a `tracing` subscriber filtered by `RUST_LOG` (default `info`),
//! as text or JSON lines; the one rate limit on storage-failure warnings;
//! Prometheus metrics ([`metrics`]); OpenTelemetry traces ([`trace`]).

pub mod metrics;
pub mod trace;

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Installs the global subscriber (once; later calls are ignored), with
/// OTLP trace export when the environment asks for it ([`trace`]); the
/// returned handle flushes it at the end.
pub fn init(format: LogFormat) -> Option<trace::Tracing> {
    let tracing_on = trace::configured();
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if !tracing_on {
        // Never create the spans made for OpenTelemetry: tracing off costs nothing.
        filter = filter.add_directive(format!("{}=off", trace::TARGET).parse().expect("a valid directive"));
    }
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        // The current span's fields: a request's `trace_id` and `span_id`.
        LogFormat::Json => fmt.json().with_current_span(true).with_span_list(false).boxed(),
    };
    let registry = tracing_subscriber::registry().with(fmt.with_filter(filter));
    if tracing_on {
        match trace::Tracing::start() {
            Ok((handle, layer)) => {
                let only_ours = tracing_subscriber::filter::Targets::new()
                    .with_target(trace::TARGET, tracing::Level::TRACE);
                let _ = registry.with(layer.with_filter(only_ours)).try_init();
                return Some(handle);
            }
            Err(e) => eprintln!("taskbroker: tracing export is off: {e}"),
        }
    }
    let _ = registry.try_init();
    None
}

/// Logs a storage failure (`what` failed with `detail`) at most once a
/// second for the whole process, with how many were left out since the last
/// line. During an outage every call, every worker stream's lease retry and
/// every timer sweep fails: one warning a second says so, however many
/// streams and calls there are.
pub fn storage_failure(what: &'static str, detail: &dyn std::fmt::Display) {
    static LAST: AtomicU64 = AtomicU64::new(0);
    static SUPPRESSED: AtomicU64 = AtomicU64::new(0);
    let second = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    if LAST.swap(second, Ordering::Relaxed) == second {
        SUPPRESSED.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let suppressed = SUPPRESSED.swap(0, Ordering::Relaxed);
    tracing::warn!(error = %detail, suppressed, "{what} failed on storage");
}
