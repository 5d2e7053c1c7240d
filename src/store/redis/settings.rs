//! Redis settings that decide whether tasks can be lost, checked at connect.

use super::conn::Conn;
use super::keys::{LAYOUT, LAYOUT_VERSION, UPGRADES_FROM};
use super::reply::bounded;
use crate::store::StoreError;

/// Refuses a Redis whose tasks were written in another key layout (by another
/// version of taskbroker), and marks an empty one with this layout; the
/// layout before this one ([`UPGRADES_FROM`]) is read as it is and marked
/// with this one.
pub async fn check_layout(conn: &Conn) -> Result<(), StoreError> {
    let mut conn = conn.clone();
    // The global index of layout 1, which had no `tb:layout` key.
    let legacy: bool = bounded(redis::cmd("EXISTS").arg("tb:index").query_async(&mut conn)).await?;
    let _: () =
        bounded(redis::cmd("SET").arg(LAYOUT).arg(LAYOUT_VERSION).arg("NX").query_async(&mut conn)).await?;
    let mut layout: Option<String> = bounded(redis::cmd("GET").arg(LAYOUT).query_async(&mut conn)).await?;
    if layout.as_deref() == Some(UPGRADES_FROM) && !legacy {
        // Layout 2 is layout 3 without key groups: its ready lists are read
        // as the no-key groups (lua/lib.lua), so it is taken as it is. The
        // new mark keeps builds of layout 2, which would not see key groups,
        // from starting on it.
        let _: () = bounded(redis::cmd("SET").arg(LAYOUT).arg(LAYOUT_VERSION).query_async(&mut conn)).await?;
        layout = Some(LAYOUT_VERSION.to_owned());
    }
    match layout.as_deref() {
        Some(LAYOUT_VERSION) if !legacy => Ok(()),
        found => Err(StoreError::Unavailable(format!(
            "this Redis holds tasks in another key layout ({LAYOUT} = {}, expected {LAYOUT_VERSION}); drain it \
             with the taskbroker version that wrote it, or use an empty Redis database",
            if legacy { "1" } else { found.unwrap_or("none") }
        ))),
    }
}

/// Warns when Redis may lose tasks: eviction allowed, or no persistence.
pub async fn warn_if_unsafe(conn: &Conn) {
    let mut conn = conn.clone();
    let mut get = async |name: &str| -> Option<String> {
        let cmd = redis::cmd("CONFIG").arg("GET").arg(name).clone();
        let pair: Vec<String> = bounded(cmd.query_async(&mut conn)).await.ok()?;
        pair.get(1).cloned()
    };
    if let Some(policy) = get("maxmemory-policy").await {
        if policy != "noeviction" {
            tracing::warn!(
                maxmemory_policy = %policy,
                "REDIS MAY EVICT TASKS: maxmemory-policy is not noeviction; tasks can silently disappear \
                 when Redis fills up. Set `maxmemory-policy noeviction`."
            );
        }
    }
    let aof = get("appendonly").await;
    let save = get("save").await;
    if aof.as_deref() == Some("no") {
        if save.as_deref().is_some_and(|s| s.trim().is_empty()) {
            tracing::warn!(
                "REDIS PERSISTENCE IS OFF (appendonly no, save \"\"): a Redis restart loses every task. \
                 Set `appendonly yes`."
            );
        } else {
            tracing::warn!(
                save = save.as_deref().unwrap_or("?"),
                "Redis persists by snapshots only (appendonly no): a Redis crash loses the tasks changed \
                 since the last snapshot. Set `appendonly yes`."
            );
        }
    }
}
