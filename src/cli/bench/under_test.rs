//! The broker under test: started in-process (the default) or reached at a
//! URL.
//!
//! In-process, the broker is assembled exactly as `taskbroker serve` does it
//! (`app::start`) but runs on a runtime of its own
//! whose threads are named `tb-broker`, so its CPU time can be read apart from
//! the load generator's (see [`super::procfs`]). The data directory is a
//! temporary one, removed at the end.

use std::sync::Arc;
use std::time::Duration;

use clap::ValueEnum;
use serde::Serialize;
use tempfile::TempDir;
use tokio::runtime::Runtime;

use super::meter::Probes;
use crate::app::{self, Running};
use crate::config::{Config, StorageKind};
use crate::core::clock::SystemClock;

/// The name of every thread that serves (broker runtime, echo runtime); the
/// CPU probe sums threads whose name starts with `tb-`, which also catches the
/// embedded store's `tb-writer`.
pub const SERVER_THREAD_NAME: &str = "tb-broker";

/// A multi-threaded runtime whose threads are all named [`SERVER_THREAD_NAME`].
pub fn server_runtime() -> anyhow::Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .thread_name(SERVER_THREAD_NAME)
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the server runtime: {e}"))
}

/// Drops a runtime off the async context (dropping one inside it panics).
pub async fn retire(runtime: Runtime) {
    let _ = tokio::task::spawn_blocking(move || runtime.shutdown_timeout(Duration::from_secs(5))).await;
}

/// Where the broker is, for the report.
#[derive(Clone, Debug, Serialize)]
pub struct TargetInfo {
    /// `in-process` or `remote`.
    pub mode: &'static str,
    /// The storage backend, when in-process.
    pub storage: Option<String>,
    pub url: String,
}

/// The broker under test.
pub struct UnderTest {
    url: String,
    /// Present when the broker runs in this process.
    local: Option<Local>,
}

/// An in-process broker and what it needs.
struct Local {
    storage: StorageKind,
    runtime: Runtime,
    running: Running,
    /// Removed after the store has closed.
    dir: TempDir,
}

impl UnderTest {
    /// Starts the in-process broker, or just remembers `server`.
    pub async fn start(
        server: Option<String>,
        storage: StorageKind,
        redis_url: &str,
        base: Config,
    ) -> anyhow::Result<Self> {
        if let Some(url) = server {
            return Ok(Self { url, local: None });
        }
        let dir = tempfile::Builder::new().prefix("taskbroker-bench-").tempdir()?;
        let config = Config {
            storage,
            data_dir: dir.path().to_owned(),
            listen: "127.0.0.1:0".into(),
            // No dashboard: its sampler would be load the bench measures.
            admin_listen: String::new(),
            redis_url: redis_url.to_owned(),
            shutdown_grace: Duration::from_secs(2),
            ..base
        };
        config.validate().map_err(|problems| anyhow::anyhow!("bench config: {}", problems.join("; ")))?;
        let tls = config.tls_cert.is_some();
        let runtime = server_runtime()?;
        let running =
            runtime.spawn(async move { app::start(&config, Arc::new(SystemClock)).await }).await??;
        let scheme = if tls { "https" } else { "http" };
        let url = format!("{scheme}://{}", running.addr);
        Ok(Self { url, local: Some(Local { storage, runtime, running, dir }) })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// What can be measured: everything in-process, fsyncs where the store
    /// counts its commits (the embedded store).
    pub fn probes(&self) -> Probes {
        match &self.local {
            Some(local) => {
                let broker = local.running.broker();
                Probes { in_process: true, commits: broker.store_commits().map(|_| broker.clone()) }
            }
            None => Probes { in_process: false, commits: None },
        }
    }

    pub fn info(&self) -> TargetInfo {
        let storage = self.local.as_ref().map(|l| {
            l.storage
                .to_possible_value()
                .map_or_else(|| format!("{:?}", l.storage), |v| v.get_name().to_owned())
        });
        let mode = if self.local.is_some() { "in-process" } else { "remote" };
        TargetInfo { mode, storage, url: self.url.clone() }
    }

    /// Shuts an in-process broker down (its store closes before the data
    /// directory is removed).
    pub async fn stop(self) {
        if let Some(Local { runtime, running, dir, .. }) = self.local {
            match runtime.spawn(running.shutdown()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("bench: broker shutdown: {e:#}"),
                Err(e) => eprintln!("bench: broker shutdown: {e}"),
            }
            retire(runtime).await;
            drop(dir);
        }
    }
}
