//! `[telemetry]`: the config file's stand-ins for the standard `OTEL_*`
//! variables.

use serde::Deserialize;

/// `[telemetry]`: OpenTelemetry trace export (see
/// [`crate::telemetry::trace`]); each setting stands in for its standard
/// variable when that is unset.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// OTLP/gRPC endpoint, e.g. `http://otel-collector:4317`
    /// (`OTEL_EXPORTER_OTLP_ENDPOINT`); empty: no export.
    pub otlp_endpoint: String,
    /// `service.name` (`OTEL_SERVICE_NAME`); empty: `taskbroker`.
    pub service_name: String,
    /// Share of traces sampled, 0.0-1.0 (`OTEL_TRACES_SAMPLER=
    /// parentbased_traceidratio`, `OTEL_TRACES_SAMPLER_ARG`); unset: all.
    pub sample_ratio: Option<f64>,
}

impl TelemetryConfig {
    /// The `OTEL_*` variables these settings stand for, for those unset in
    /// `env` (the process's environment, looked up by name).
    pub fn env_defaults(&self, env: impl Fn(&str) -> Option<String>) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let mut default = |name: &'static str, value: String| {
            if !value.is_empty() && env(name).is_none() {
                out.push((name, value));
            }
        };
        default("OTEL_EXPORTER_OTLP_ENDPOINT", self.otlp_endpoint.clone());
        default("OTEL_SERVICE_NAME", self.service_name.clone());
        if let Some(ratio) = self.sample_ratio {
            if env("OTEL_TRACES_SAMPLER").is_none() {
                out.push(("OTEL_TRACES_SAMPLER", "parentbased_traceidratio".into()));
                out.push(("OTEL_TRACES_SAMPLER_ARG", ratio.to_string()));
            }
        }
        out
    }
}
