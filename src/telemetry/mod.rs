//! Logging: a `tracing` subscriber filtered by `RUST_LOG` (default `info`),
//! as text or JSON lines; Prometheus metrics ([`metrics`]).

pub mod metrics;
pub mod trace;

use std::io::IsTerminal;

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
