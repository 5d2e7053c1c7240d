//! Config reload (AdminService.ReloadConfig, SIGHUP): re-read the file,
//! validate it whole, and put what may change while running into force.
//!
//! What a reload applies: `[queues.*]`, `[[routes]]`, `[semaphores.*]`
//! and `[auth]` (principals, grants, the tokens file; and every other
//! setting that [`Config::policies`] resolves), swapped at once through the
//! shared [`QueueRegistry`], so connections, streams and leases carry on;
//! and `[[schedules]]`, handed to the schedule loop
//! ([`crate::background::schedule_loop`]), which stores them.
//! Everything else (listen address, storage, store budgets, transport and
//! stream bounds) is read once at start-up: a change is reported as needing
//! a restart and not applied. A file with any problem changes nothing.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::Config;
use crate::core::queue::QueueRegistry;
use crate::core::schedule::Schedule;
use crate::security::Authenticator;

/// Top-level settings a reload applies.
const RELOADABLE: &[&str] = &["queues", "routes", "semaphores", "schedules", "auth"];

/// Re-reads one config file into one registry.
pub struct Reloader {
    /// The file the broker started with; `None`: started without one.
    path: Option<PathBuf>,
    registry: QueueRegistry,
    /// Where `[auth]` changes go (`None`: not applied).
    auth: Option<Arc<Authenticator>>,
    /// The config in force and the file's text as last applied.
    running: Mutex<(Config, toml::Value)>,
    /// The config's schedules, for the schedule loop to declare.
    schedules: watch::Sender<Vec<Schedule>>,
}

impl Reloader {
    /// `running` is the config the broker started with (its file with flags
    /// and environment applied; [`Config::file`] is what a reload re-reads).
    pub fn new(running: Config, registry: QueueRegistry) -> Self {
        let path = running.file.clone();
        let text = path.as_ref().and_then(|p| std::fs::read_to_string(p).ok()).unwrap_or_default();
        let value = text.parse::<toml::Value>().unwrap_or_else(|_| toml::Value::Table(Default::default()));
        let schedules = watch::Sender::new(running.schedules());
        Self { path, registry, auth: None, running: Mutex::new((running, value)), schedules }
    }

    /// Reloads apply `[auth]` to `auth` too.
    pub fn with_auth(mut self, auth: Arc<Authenticator>) -> Self {
        self.auth = Some(auth);
        self
    }

    /// The config's schedules, now and after each reload.
    pub fn schedules(&self) -> watch::Receiver<Vec<Schedule>> {
        self.schedules.subscribe()
    }

    /// Reloads; returns what changed (one line each), or every problem.
    pub fn reload(&self) -> Result<Vec<String>, Vec<String>> {
        let Some(path) = &self.path else {
            return Err(vec![
                "the broker was started without a config file (--config): nothing to reload".into()
            ]);
        };
        let text = std::fs::read_to_string(path).map_err(|e| vec![format!("{}: {e}", path.display())])?;
        let file = Config::from_toml(&text).map_err(|e| vec![format!("{}: {e}", path.display())])?;
        let value = text.parse::<toml::Value>().map_err(|e| vec![format!("{}: {e}", path.display())])?;
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = running.0.clone();
        next.queues = file.queues;
        next.routes = file.routes;
        next.semaphores = file.semaphores;
        next.auth = file.auth;
        next.schedules = file.schedules;
        next.validate()?;
        let changes = describe(&running.1, &value);
        self.registry.replace(next.policies());
        if let Some(auth) = &self.auth {
            auth.replace(&next.auth);
        }
        self.schedules.send_if_modified(|s| {
            let new = next.schedules();
            let changed = *s != new;
            *s = new;
            changed
        });
        *running = (next, value);
        tracing::info!(path = %path.display(), changes = changes.len(), "config reloaded");
        for c in &changes {
            tracing::info!(change = %c, "config change");
        }
        Ok(changes)
    }
}

/// One line per setting that differs between `old` and `new`.
fn describe(old: &toml::Value, new: &toml::Value) -> Vec<String> {
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    flatten("", old, &mut a);
    flatten("", new, &mut b);
    let mut paths: Vec<&String> = a.keys().chain(b.keys()).collect();
    paths.sort_unstable();
    paths.dedup();
    let mut out = Vec::new();
    for path in paths {
        let (before, after) = (a.get(path), b.get(path));
        if before == after {
            continue;
        }
        let (before, after) = (before.map(|(_, shown)| shown), after.map(|(_, shown)| shown));
        let top = path.split(['.', '[']).next().unwrap_or_default();
        let shown = |v: Option<&String>| v.cloned().unwrap_or_else(|| "(unset)".into());
        let line = format!("{path}: {} -> {}", shown(before), shown(after));
        if RELOADABLE.contains(&top) {
            out.push(line);
        } else {
            out.push(format!("{line} (needs a restart; not applied)"));
        }
    }
    out
}

/// Every leaf of `value` by its path (`queues.emails.max_attempts`,
/// `routes[0].kind`): its text, and its text as shown.
fn flatten(path: &str, value: &toml::Value, out: &mut BTreeMap<String, (String, String)>) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                flatten(&p, v, out);
            }
        }
        toml::Value::Array(items) if items.iter().any(|v| v.is_table()) => {
            for (i, v) in items.iter().enumerate() {
                flatten(&format!("{path}[{i}]"), v, out);
            }
        }
        leaf => {
            // A URL's password stays out of logs and answers.
            let text = leaf.to_string();
            let shown = match leaf.as_str() {
                Some(s) if s.contains("://") => format!("{:?}", super::shown(s)),
                _ => text.clone(),
            };
            out.insert(path.to_owned(), (text, shown));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str) -> toml::Value {
        text.parse().unwrap()
    }

    #[test]
    fn changes_are_listed_by_path_and_start_up_settings_need_a_restart() {
        let old = value("listen = \"127.0.0.1:1\"\n[queues.emails]\nmax_attempts = 5\n[[routes]]\nkind = \"a\"\nqueue = \"emails\"\n");
        let new = value(
            "listen = \"127.0.0.1:2\"\n[queues.emails]\nmax_attempts = 8\n[queues.sms]\nmax_attempts = 2\n",
        );
        let changes = describe(&old, &new);
        assert_eq!(
            changes,
            vec![
                "listen: \"127.0.0.1:1\" -> \"127.0.0.1:2\" (needs a restart; not applied)",
                "queues.emails.max_attempts: 5 -> 8",
                "queues.sms.max_attempts: (unset) -> 2",
                "routes[0].kind: \"a\" -> (unset)",
                "routes[0].queue: \"emails\" -> (unset)",
            ]
        );
    }

    #[test]
    fn passwords_in_urls_are_not_shown() {
        let changes =
            describe(&value("redis_url = \"redis://:old@h:1\""), &value("redis_url = \"redis://:new@h:1\""));
        assert_eq!(changes.len(), 1);
        assert!(!changes[0].contains("old") && !changes[0].contains("new@"), "{}", changes[0]);
    }

    #[test]
    fn a_bad_file_changes_nothing_and_reports_every_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tb.toml");
        std::fs::write(&path, "[queues.q]\nmax_attempts = 3\n").unwrap();
        let mut config = Config::from_toml("[queues.q]\nmax_attempts = 3\n").unwrap();
        config.file = Some(path.clone());
        let registry = QueueRegistry::new(config.policies());
        let reloader = Reloader::new(config, registry.clone());
        std::fs::write(&path, "[queues.q]\nmax_attempts = 0\n[queues.r]\nlease_duration = \"1ms\"\n")
            .unwrap();
        let problems = reloader.reload().unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(registry.current().get("q").max_attempts, 3);
        std::fs::write(&path, "[queues.q]\nmax_attempts = 7\n").unwrap();
        assert_eq!(reloader.reload().unwrap(), vec!["queues.q.max_attempts: 3 -> 7"]);
        assert_eq!(registry.current().get("q").max_attempts, 7);
        assert_eq!(reloader.reload().unwrap(), Vec::<String>::new(), "nothing changed the second time");
    }
}
