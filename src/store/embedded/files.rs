//! The embedded store's data directory: log segments, snapshots, and the
//! way back from them to the state they hold.
//!
//! - `log-<n>.tbl`: segment `n` of the write-ahead log, frames of group
//!   commits ([`super::frame`], [`super::entry`]). Only the newest segment
//!   is written to; a segment is closed once it passes the segment size.
//! - `snap-<n>.tbs`: the state after every segment up to `n`, written by
//!   compaction ([`super::compact`]) as `*.tmp`, fsynced, then renamed.
//! - `LOCK`: held (`flock`) while a broker has the directory open.
//!
//! Loading = the newest snapshot, then every later segment in order. A torn
//! tail of the newest segment (a crash in the middle of a write, which was
//! never acknowledged) is cut off; damage anywhere else refuses to open.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::entry::{self, Entry, Folded};
use super::frame::{self, End};

/// A snapshot's frames hold about this many bytes each.
const SNAPSHOT_FRAME: usize = 1 << 20;
/// A snapshot being written is synced every this many bytes.
const SNAPSHOT_SYNC: u64 = 8 << 20;

pub struct Files {
    dir: PathBuf,
    /// Held for as long as the store is open: one broker per directory.
    _lock: File,
    /// Held while a snapshot replaces the files it covers, and while the
    /// files are read: a reader never sees a file vanish.
    swap: Mutex<()>,
}

/// What loading the directory found: the bytes of the newest snapshot and
/// of every segment after it, each cut to its whole frames.
pub struct Loaded {
    /// The snapshot loaded: its segment number (0: none) and size.
    pub snapshot: (u64, u64),
    /// The segments after it, oldest first: number and size (after a torn
    /// tail was cut off).
    pub segments: Vec<(u64, u64)>,
    /// Each file read: its path, bytes, and whether it is a snapshot.
    files: Vec<(PathBuf, Vec<u8>, bool)>,
}

impl Loaded {
    /// The state the files add up to (borrowing their bytes).
    pub fn fold(&self) -> Result<Folded<'_>, LoadError> {
        let mut folded = Folded::default();
        for (path, bytes, snapshot) in &self.files {
            let corrupt = |why| LoadError::Corrupt { path: path.clone(), why };
            if *snapshot {
                read_snapshot(bytes, &mut folded).map_err(corrupt)?;
            } else {
                for body in frame::read(bytes).0 {
                    folded.apply(body).map_err(corrupt)?;
                }
            }
        }
        folded.finish();
        Ok(folded)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: {why}")]
    Corrupt { path: PathBuf, why: String },
}

impl Files {
    /// Creates `dir` if need be and locks it.
    pub fn open(dir: &Path) -> Result<Self, LoadError> {
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| LoadError::Io { path, source }
        };
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        lock.try_lock().map_err(|e| LoadError::Corrupt {
            path: lock_path.clone(),
            why: format!("the data directory is in use by another broker ({e})"),
        })?;
        Ok(Self { dir: dir.to_owned(), _lock: lock, swap: Mutex::new(()) })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn segment(&self, n: u64) -> PathBuf {
        self.dir.join(format!("log-{n:020}.tbl"))
    }

    fn snapshot(&self, n: u64) -> PathBuf {
        self.dir.join(format!("snap-{n:020}.tbs"))
    }

    /// Makes created, renamed and removed names durable.
    pub fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }

    /// Creates segment `n`, empty, and makes its name durable.
    pub fn create_segment(&self, n: u64) -> io::Result<File> {
        let file = OpenOptions::new().create_new(true).read(true).write(true).open(self.segment(n))?;
        self.sync_dir()?;
        Ok(file)
    }

    /// Opens segment `n` to append to.
    pub fn open_segment(&self, n: u64) -> io::Result<File> {
        OpenOptions::new().read(true).write(true).open(self.segment(n))
    }

    /// The numbered files in the directory: (snapshots, segments), each sorted.
    fn list(&self) -> io::Result<(Vec<u64>, Vec<u64>)> {
        let (mut snapshots, mut segments) = (Vec::new(), Vec::new());
        for entry in fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            let Some(name) = name.to_str() else { continue };
            let number = |prefix: &str, suffix: &str| {
                name.strip_prefix(prefix)?.strip_suffix(suffix)?.parse::<u64>().ok()
            };
            if let Some(n) = number("snap-", ".tbs") {
                snapshots.push(n);
            } else if let Some(n) = number("log-", ".tbl") {
                segments.push(n);
            } else if name.ends_with(".tmp") {
                // A snapshot a crash interrupted: never renamed, never used.
                let _ = fs::remove_file(self.dir.join(name));
            }
        }
        snapshots.sort_unstable();
        segments.sort_unstable();
        Ok((snapshots, segments))
    }

    /// Reads the newest snapshot and every segment after it, and cuts a
    /// torn tail off the newest segment. [`Loaded::fold`] checks them.
    pub fn load(&self) -> Result<Loaded, LoadError> {
        let _swap = lock(&self.swap);
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| LoadError::Io { path, source }
        };
        let (snapshots, segments) = self.list().map_err(io_err(&self.dir))?;
        let mut files = Vec::new();
        let mut snapshot = (0, 0);
        if let Some(&n) = snapshots.last() {
            let path = self.snapshot(n);
            let bytes = fs::read(&path).map_err(io_err(&path))?;
            snapshot = (n, bytes.len() as u64);
            files.push((path, bytes, true));
        }
        let later: Vec<u64> = segments.iter().copied().filter(|&s| s > snapshot.0).collect();
        let mut loaded = Vec::with_capacity(later.len());
        for (i, &n) in later.iter().enumerate() {
            let path = self.segment(n);
            let expected = snapshot.0 + 1 + i as u64;
            if n != expected {
                let why = format!("segment {expected} is missing");
                return Err(LoadError::Corrupt { path, why });
            }
            let mut bytes = fs::read(&path).map_err(io_err(&path))?;
            match frame::read(&bytes).1 {
                End::Clean => {}
                End::Zeros { at } => bytes.truncate(at),
                End::Torn { at, why } => {
                    if i + 1 < later.len() {
                        let why = format!("{why} at byte {at}, before the newest segment");
                        return Err(LoadError::Corrupt { path, why });
                    }
                    tracing::warn!(path = %path.display(), at, why, "cutting off the log's torn tail (a write a crash interrupted; never acknowledged)");
                    let file = self.open_segment(n).map_err(io_err(&path))?;
                    file.set_len(at as u64).and_then(|()| file.sync_all()).map_err(io_err(&path))?;
                    bytes.truncate(at);
                }
            }
            loaded.push((n, bytes.len() as u64));
            files.push((path, bytes, false));
        }
        Ok(Loaded { snapshot, segments: loaded, files })
    }

    /// Removes what snapshot `n` made redundant: older snapshots and the
    /// segments it covers (left by a compaction a crash interrupted).
    pub fn remove_stale(&self, n: u64) -> io::Result<()> {
        let _swap = lock(&self.swap);
        let (snapshots, segments) = self.list()?;
        for s in snapshots.into_iter().filter(|&s| s < n) {
            fs::remove_file(self.snapshot(s))?;
        }
        for s in segments.into_iter().filter(|&s| s <= n) {
            fs::remove_file(self.segment(s))?;
        }
        Ok(())
    }

    /// Reads snapshot `from` (0: none) and the closed segments `segments`,
    /// for a compaction.
    pub fn read_closed(&self, from: u64, segments: &[u64]) -> Result<Loaded, String> {
        let mut files = Vec::new();
        let mut read = |path: PathBuf, snapshot: bool| {
            let bytes = fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            files.push((path, bytes, snapshot));
            Ok::<_, String>(())
        };
        if from > 0 {
            read(self.snapshot(from), true)?;
        }
        for &n in segments {
            read(self.segment(n), false)?;
        }
        for (path, bytes, snapshot) in &files {
            if let (false, (_, End::Torn { at, why })) = (*snapshot, frame::read(bytes)) {
                return Err(format!("{}: closed segment damaged: {why} at byte {at}", path.display()));
            }
        }
        Ok(Loaded { snapshot: (from, 0), segments: Vec::new(), files })
    }

    /// Writes `folded` as snapshot `n` (everything up to segment `n`), then
    /// removes the files it replaces. Returns its size.
    pub fn install_snapshot(&self, n: u64, folded: &Folded<'_>) -> io::Result<u64> {
        let tmp = self.dir.join(format!("snap-{n:020}.tmp"));
        let bytes = write_snapshot(&tmp, folded)?;
        {
            let _swap = lock(&self.swap);
            fs::rename(&tmp, self.snapshot(n))?;
            self.sync_dir()?;
        }
        self.remove_stale(n)?;
        Ok(bytes)
    }

    /// Whether the directory holds no store yet.
    pub fn is_empty(&self) -> io::Result<bool> {
        let (snapshots, segments) = self.list()?;
        Ok(snapshots.is_empty() && segments.is_empty())
    }
}

/// Writes `folded` to `path` as a snapshot and fsyncs it; returns its size.
/// It syncs every [`SNAPSHOT_SYNC`] bytes on the way, so the disk never has
/// a large backlog to flush at once in front of the log's commits.
fn write_snapshot(path: &Path, folded: &Folded<'_>) -> io::Result<u64> {
    let mut out = io::BufWriter::with_capacity(SNAPSHOT_FRAME * 2, File::create(path)?);
    let mut body = Vec::with_capacity(SNAPSHOT_FRAME + 4096);
    let (mut frames, mut bytes, mut synced) = (0u64, 0u64, 0u64);
    for entry in folded.snapshot_entries() {
        entry::push(&mut body, &entry);
        if body.len() >= SNAPSHOT_FRAME {
            bytes += write_frame(&mut out, &mut body)?;
            frames += 1;
            if bytes - synced >= SNAPSHOT_SYNC {
                out.flush()?;
                out.get_ref().sync_data()?;
                synced = bytes;
            }
        }
    }
    if !body.is_empty() {
        bytes += write_frame(&mut out, &mut body)?;
        frames += 1;
    }
    entry::push(&mut body, &Entry::End(frames));
    bytes += write_frame(&mut out, &mut body)?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(bytes)
}

/// Writes `body` as one frame and empties it; returns the bytes written.
fn write_frame(out: &mut impl Write, body: &mut Vec<u8>) -> io::Result<u64> {
    let mut framed = Vec::with_capacity(body.len() + frame::HEADER);
    let start = frame::begin(&mut framed);
    framed.append(body);
    frame::finish(&mut framed, start);
    out.write_all(&framed)?;
    Ok(framed.len() as u64)
}

/// Applies a snapshot's frames to `folded`; it must end in its end frame.
fn read_snapshot<'a>(bytes: &'a [u8], folded: &mut Folded<'a>) -> Result<(), String> {
    let (bodies, end) = frame::read(bytes);
    match end {
        End::Clean => {}
        End::Zeros { at } => return Err(format!("snapshot damaged: zeros at byte {at}")),
        End::Torn { at, why } => return Err(format!("snapshot damaged: {why} at byte {at}")),
    }
    let frames = bodies.len() as u64;
    for (i, body) in bodies.into_iter().enumerate() {
        if let Some(count) = folded.apply(body)? {
            if count != i as u64 || count + 1 != frames {
                return Err(format!("snapshot end marker says {count} frames, found {i} of {frames}"));
            }
            return Ok(());
        }
    }
    Err("snapshot has no end marker".into())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
