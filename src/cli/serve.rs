//! `taskbroker serve`: load and validate the config, open the store, serve
//! until SIGTERM or Ctrl-C, then shut down gracefully.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use super::CliError;
use crate::app;
use crate::config::{Config, StorageKind};
use crate::core::clock::SystemClock;

#[derive(Debug, Default, Args)]
pub struct ServeArgs {
    /// TOML configuration file (see `taskbroker config example`).
    #[arg(long, env = "TASKBROKER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Listen address, e.g. 0.0.0.0:50051.
    #[arg(long, env = "TASKBROKER_LISTEN")]
    pub listen: Option<String>,
    /// Admin HTTP address (dashboard, /healthz, /readyz), e.g.
    /// 127.0.0.1:9090; "" turns it off.
    #[arg(long, env = "TASKBROKER_ADMIN_LISTEN")]
    pub admin_listen: Option<String>,
    /// Data directory of the embedded store.
    #[arg(long, env = "TASKBROKER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Storage backend.
    #[arg(long, value_enum, env = "TASKBROKER_STORAGE")]
    pub storage: Option<StorageKind>,
    /// Redis URL for --storage redis (with --redis-cluster: comma-separated
    /// URLs of cluster nodes). Its value (which may hold a password) is
    /// never shown in `--help`.
    #[arg(long, env = "TASKBROKER_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// PEM certificate chain: the gRPC port speaks TLS (with --tls-key).
    #[arg(long, env = "TASKBROKER_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "TASKBROKER_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: client certificates are required and verified (mTLS).
    #[arg(long, env = "TASKBROKER_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// Plaintext address serving only grpc.health.v1 (for Kubernetes probes
    /// when the main port speaks TLS), e.g. 0.0.0.0:50052.
    #[arg(long, env = "TASKBROKER_HEALTH_LISTEN")]
    pub health_listen: Option<String>,
    /// --redis-url names Redis Cluster nodes.
    #[arg(long, env = "TASKBROKER_REDIS_CLUSTER")]
    pub redis_cluster: bool,
    /// Use the master of this name under Redis Sentinel; --redis-url then
    /// names the sentinels (comma-separated).
    #[arg(long, env = "TASKBROKER_REDIS_SENTINEL")]
    pub redis_sentinel: Option<String>,
}

/// The file (if any) with the flags applied on top, validated.
pub fn load_config(args: &ServeArgs) -> Result<Config, CliError> {
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| CliError::Config(vec![format!("{}: {e}", path.display())]))?;
            Config::from_toml(&text)
                .map_err(|e| CliError::Config(vec![format!("{}: {e}", path.display())]))?
        }
        None => Config::default(),
    };
    config.file = args.config.clone();
    if let Some(listen) = &args.listen {
        config.listen = listen.clone();
    }
    if let Some(admin) = &args.admin_listen {
        config.admin_listen = admin.clone();
    }
    if let Some(dir) = &args.data_dir {
        config.data_dir = dir.clone();
    }
    if let Some(storage) = args.storage {
        config.storage = storage;
    }
    if let Some(url) = &args.redis_url {
        config.redis_url = url.clone();
    }
    config.redis_cluster |= args.redis_cluster;
    if let Some(p) = &args.tls_cert {
        config.tls_cert = Some(p.clone());
    }
    if let Some(p) = &args.tls_key {
        config.tls_key = Some(p.clone());
    }
    if let Some(p) = &args.tls_client_ca {
        config.tls_client_ca = Some(p.clone());
    }
    if let Some(a) = &args.health_listen {
        config.health_listen = a.clone();
    }
    if let Some(master) = &args.redis_sentinel {
        config.redis_sentinel = master.clone();
    }
    config.validate().map_err(CliError::Config)?;
    Ok(config)
}

/// Puts the config file's `[telemetry]` settings into the environment where
/// the standard `OTEL_*` variables are unset, before logging and tracing
/// start (and before any thread does). A file that does not load is
/// reported by `run` as usual.
pub fn telemetry_defaults(args: &ServeArgs) {
    let Ok(config) = load_config(args) else { return };
    for (name, value) in config.telemetry.env_defaults(|n| std::env::var(n).ok()) {
        std::env::set_var(name, value);
    }
}

pub async fn run(args: ServeArgs) -> Result<(), CliError> {
    let config = load_config(&args)?;
    // Handlers first: a SIGTERM right after the "listening" line must shut down cleanly.
    let signal = shutdown_signal()?;
    let running = app::start(&config, Arc::new(SystemClock)).await.map_err(|e| {
        if let Some(taken) = e.downcast_ref::<app::AdminBindError>() {
            return CliError::Config(vec![taken.to_string()]);
        }
        match e.downcast::<app::ConfigFileError>() {
            Ok(bad) => CliError::Config(vec![bad.0]),
            Err(e) => CliError::Other(e),
        }
    })?;
    tracing::info!(storage = ?config.storage, data_dir = %config.data_dir.display(), "ready");
    // Tests and supervisors read this line to learn the port (useful with :0).
    println!("listening on {}", running.addr);
    if let Some(admin) = running.admin_addr {
        tracing::info!(%admin, "dashboard, /healthz and /readyz served");
        // Not println!: a supervisor may read the first line only and close
        // the pipe, and a failed write must not end the broker.
        let scheme = if config.admin_tls { "https" } else { "http" };
        let _ = writeln!(std::io::stdout(), "dashboard at {scheme}://{admin}/");
    }
    if let Some(health) = running.health_addr {
        let _ = writeln!(std::io::stdout(), "health at {health}");
    }
    signal.await;
    tracing::info!("shutting down");
    running.shutdown().await?;
    Ok(())
}

/// A future that resolves on SIGTERM or Ctrl-C; the handlers are installed
/// when this returns, not when the future is first polled.
pub fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut interrupt = Box::pin(tokio::signal::ctrl_c());
    // Polling ctrl_c once registers its handler.
    let _ = futures_util::FutureExt::now_or_never(&mut interrupt);
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = term.recv() => {}
            _ = &mut interrupt => {}
        }
        #[cfg(not(unix))]
        let _ = interrupt.await;
    })
}
