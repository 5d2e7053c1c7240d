//! The environment a test gives the `taskbroker` binary: every `TASKBROKER_*`
//! variable of the caller's environment is removed (the test script sets
//! `TASKBROKER_BIN`, a developer may have `TASKBROKER_SERVER` or
//! `TASKBROKER_REDIS_URL` set), so nothing but what a test sets reaches it.
//! Included with `#[path = "common/env.rs"] mod env;`.
#![allow(dead_code)]

/// Names of the `TASKBROKER_*` variables set in this process's environment.
pub fn taskbroker_vars() -> Vec<String> {
    std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .filter(|name| name.starts_with("TASKBROKER_"))
        .collect()
}

/// Removes every `TASKBROKER_*` variable from what `cmd` will see.
pub fn clear(cmd: &mut std::process::Command) -> &mut std::process::Command {
    for name in taskbroker_vars() {
        cmd.env_remove(name);
    }
    cmd
}
