//! Figures read from `/proc/self`: CPU time of the server threads and the
//! process's memory. Linux only; elsewhere every probe returns `None`.
//!
//! It knows thread names, not what the threads do: the caller decides which
//! prefix means "the broker".

use std::fs;

/// Clock ticks per second of `utime`/`stime` (USER_HZ). It is 100 on every
/// Linux architecture Rust targets; reading it would need `sysconf`.
const TICKS_PER_SECOND: f64 = 100.0;

/// Seconds of CPU (user + system) used so far by this process's live threads
/// whose name starts with `prefix`.
///
/// Threads that already exited are not counted (the broker's threads live as
/// long as its runtime). The resolution is one tick, 10 ms.
pub fn threads_cpu_seconds(prefix: &str) -> Option<f64> {
    let tasks = fs::read_dir("/proc/self/task").ok()?;
    let mut ticks = 0u64;
    for entry in tasks.flatten() {
        // A thread may exit between the listing and the read: skip it.
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else { continue };
        if let Some((name, used)) = parse_stat(&stat) {
            if name.starts_with(prefix) {
                ticks += used;
            }
        }
    }
    Some(ticks as f64 / TICKS_PER_SECOND)
}

/// A thread's name and utime + stime (ticks) from its `stat` line.
///
/// The name sits in parentheses and may itself hold spaces or `)`, so it ends
/// at the last `)`; utime and stime are fields 14 and 15 of the line, the
/// 12th and 13th after the name.
fn parse_stat(stat: &str) -> Option<(&str, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?;
    let mut rest = stat.get(close + 1..)?.split_ascii_whitespace().skip(11);
    let utime: u64 = rest.next()?.parse().ok()?;
    let stime: u64 = rest.next()?.parse().ok()?;
    Some((name, utime + stime))
}

/// The process's resident set size now (`VmRSS`), in bytes.
pub fn rss_bytes() -> Option<u64> {
    status_bytes("VmRSS:")
}

/// The process's peak resident set size (`VmHWM`), in bytes, since it started
/// or since the last [`reset_peak_rss`].
pub fn peak_rss_bytes() -> Option<u64> {
    status_bytes("VmHWM:")
}

/// Resets `VmHWM` to the current RSS (Linux 4.0+), so a scenario's peak is
/// its own. Best effort: without it, peaks only ever grow.
pub fn reset_peak_rss() {
    let _ = fs::write("/proc/self/clear_refs", "5");
}

/// A `Name:   1234 kB` line of `/proc/self/status`, in bytes.
fn status_bytes(field: &str) -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line[field.len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_even_with_odd_names() {
        let line = "4242 (tb-broker) S 1 2 3 4 5 6 7 8 9 10 250 31 0 0 20 0 1 0";
        assert_eq!(parse_stat(line), Some(("tb-broker", 281)));
        let odd = "7 (a) b (c)) R 1 2 3 4 5 6 7 8 9 10 3 4 0 0";
        assert_eq!(parse_stat(odd), Some(("a) b (c)", 7)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn this_process_has_figures_on_linux() {
        let rss = rss_bytes().expect("VmRSS in /proc/self/status");
        assert!(rss > 0);
        assert!(peak_rss_bytes().expect("VmHWM in /proc/self/status") >= rss / 2);
        // A named thread (at most 15 bytes of name reach /proc) that spins shows its CPU time (bounded: 10 s).
        let busy = std::thread::Builder::new()
            .name("tb-procfs-test".into())
            .spawn(|| {
                let started = std::time::Instant::now();
                let mut x = 0u64;
                loop {
                    let used = threads_cpu_seconds("tb-procfs-test").expect("/proc/self/task is readable");
                    if used >= 0.05 || started.elapsed() > std::time::Duration::from_secs(10) {
                        return used;
                    }
                    for _ in 0..100_000 {
                        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                    }
                }
            })
            .unwrap();
        let seconds = busy.join().unwrap();
        assert!(seconds >= 0.05, "a thread spinning for 10 s showed {seconds} s of CPU");
        assert_eq!(threads_cpu_seconds("no-thread-has-this-name"), Some(0.0));
    }

    /// The module's promise off Linux: no figures rather than wrong ones.
    #[test]
    #[cfg(not(target_os = "linux"))]
    fn other_systems_have_no_figures() {
        assert_eq!((rss_bytes(), peak_rss_bytes(), threads_cpu_seconds("")), (None, None, None));
    }
}
