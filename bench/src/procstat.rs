//! A server process's CPU time and memory, read from `/proc/<pid>`.

use std::time::Duration;

use crate::dbstat::{DbSnapshot, DbUse};

/// One reading of a process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// User plus system CPU time used so far.
    pub cpu: Duration,
    /// Resident set size now, in bytes.
    pub rss: u64,
    /// Peak resident set size since the process started, in bytes.
    pub peak_rss: u64,
}

/// Reads `/proc/<pid>/stat` and `/proc/<pid>/status`.
pub fn sample(pid: u32) -> std::io::Result<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which is in parentheses and may hold
    // spaces): state is field 3, utime 14, stime 15.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| std::io::Error::other("unexpected /proc stat format"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i - 3)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let per_second = clock_ticks_per_second();
    let cpu_ticks = ticks(14) + ticks(15);
    let cpu = Duration::from_secs_f64(cpu_ticks as f64 / per_second as f64);

    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    Ok(Sample {
        cpu,
        rss: kib("VmRSS:"),
        peak_rss: kib("VmHWM:"),
    })
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as u64 } else { 100 }
}

/// One reading of each of several processes (the nodes of a cluster),
/// and of the database's processes when `--db-name` is given.
#[derive(Debug, Clone, Default)]
pub struct Snapshot(pub Vec<(u32, Sample)>, pub Option<DbSnapshot>);

impl Snapshot {
    /// Reads every process; fails if any cannot be read.
    pub fn take(pids: &[u32]) -> std::io::Result<Self> {
        pids.iter()
            .map(|&pid| sample(pid).map(|s| (pid, s)))
            .collect::<std::io::Result<Vec<_>>>()
            .map(|servers| Snapshot(servers, None))
    }

    /// The processes together: CPU and RSS summed (peak RSS too, though
    /// each process may have peaked at a different moment).
    pub fn total(&self) -> Sample {
        self.0.iter().fold(Sample::default(), |t, (_, s)| Sample {
            cpu: t.cpu + s.cpu,
            rss: t.rss + s.rss,
            peak_rss: t.peak_rss + s.peak_rss,
        })
    }
}

/// Readings before and after a measured stretch.
#[derive(Debug, Clone)]
pub struct Usage {
    pub before: Snapshot,
    pub after: Snapshot,
}

impl Usage {
    /// CPU used by all the processes together.
    pub fn cpu(&self) -> Duration {
        self.after
            .total()
            .cpu
            .saturating_sub(self.before.total().cpu)
    }

    /// The database's CPU, when both readings have it.
    pub fn database(&self, name: &str) -> Option<DbUse> {
        Some(DbUse::between(
            name,
            self.before.1.as_ref()?,
            self.after.1.as_ref()?,
        ))
    }

    /// Each process's readings: (pid, before, after).
    pub fn per_process(&self) -> impl Iterator<Item = (u32, Sample, Sample)> + '_ {
        self.before
            .0
            .iter()
            .zip(&self.after.0)
            .map(|((pid, b), (_, a))| (*pid, *b, *a))
    }
}
