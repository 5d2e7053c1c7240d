//! A data directory of the redb-based store before the log: its records are
//! in the same formats, so importing is copying them into a first snapshot.
//! The database is then renamed to `tasks.redb.imported` (kept, not read
//! again; remove it once satisfied).

use redb::{Database, ReadableTable, TableDefinition};

use super::entry::Folded;
use super::files::Files;
use super::OpenError;

const TASKS: TableDefinition<u128, &[u8]> = TableDefinition::new("tasks");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const TOTALS: TableDefinition<&str, &[u8]> = TableDefinition::new("queue_totals");
const PAUSED: TableDefinition<&str, u8> = TableDefinition::new("paused");
const SCHEDULES: TableDefinition<&str, &[u8]> = TableDefinition::new("schedules");

/// Imports `tasks.redb` if the directory has one and no log yet.
pub fn import_redb(files: &Files) -> Result<(), OpenError> {
    let path = files.dir().join("tasks.redb");
    if !path.is_file() {
        return Ok(());
    }
    let import_err = |reason: String| OpenError::Import { path: path.clone(), reason };
    if !files.is_empty().map_err(|e| import_err(e.to_string()))? {
        return Err(import_err("the directory holds both a redb database and a log; move one away".into()));
    }
    let mut rows = Vec::new();
    let mut folded = read(&Database::open(&path).map_err(|e| import_err(e.to_string()))?, &mut rows)
        .map_err(import_err)?;
    for (id, value) in &rows {
        folded.put_task(*id, value);
    }
    folded.finish();
    let tasks = rows.len();
    files.install_snapshot(0, &folded).map_err(|e| import_err(e.to_string()))?;
    let kept = files.dir().join("tasks.redb.imported");
    std::fs::rename(&path, &kept).map_err(|e| import_err(e.to_string()))?;
    files.sync_dir().map_err(|e| import_err(e.to_string()))?;
    tracing::info!(tasks, from = %path.display(), kept = %kept.display(), "imported the redb database into the log");
    Ok(())
}

/// Every record of the database, as stored: the tasks into `rows`, the rest
/// into the returned state.
fn read<'a>(db: &Database, rows: &mut Vec<(u128, Vec<u8>)>) -> Result<Folded<'a>, String> {
    let e = |e: redb::Error| e.to_string();
    let read = db.begin_read().map_err(|x| e(x.into()))?;
    let mut folded = Folded::default();
    if let Ok(meta) = read.open_table(META) {
        if let Some(next) = meta.get("next_lease").map_err(|x| e(x.into()))? {
            folded.next_lease = next.value();
        }
    }
    if let Ok(tasks) = read.open_table(TASKS) {
        for row in tasks.iter().map_err(|x| e(x.into()))? {
            let (id, value) = row.map_err(|x| e(x.into()))?;
            rows.push((id.value(), value.value().to_vec()));
        }
    }
    if let Ok(totals) = read.open_table(TOTALS) {
        for row in totals.iter().map_err(|x| e(x.into()))? {
            let (queue, value) = row.map_err(|x| e(x.into()))?;
            folded.totals.insert(queue.value().to_owned(), value.value().to_vec());
        }
    }
    if let Ok(paused) = read.open_table(PAUSED) {
        for row in paused.iter().map_err(|x| e(x.into()))? {
            folded.paused.insert(row.map_err(|x| e(x.into()))?.0.value().to_owned());
        }
    }
    if let Ok(schedules) = read.open_table(SCHEDULES) {
        for row in schedules.iter().map_err(|x| e(x.into()))? {
            let (name, value) = row.map_err(|x| e(x.into()))?;
            folded.schedules.insert(name.value().to_owned(), value.value().to_vec());
        }
    }
    Ok(folded)
}
