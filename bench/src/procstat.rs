//! A server process's CPU time and memory, read from `/proc/<pid>`.

use std::time::Duration;

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

/// Readings before and after a measured stretch.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub before: Sample,
    pub after: Sample,
}

impl Usage {
    pub fn cpu(&self) -> Duration {
        self.after.cpu.saturating_sub(self.before.cpu)
    }
}
