//! The PostgreSQL side of a run: CPU of the database's backends, read from `/proc` by process title.
//!
//! PostgreSQL names its processes `postgres: [<cluster>:] <user> <database> <client>
//! <state>` (backends) and `postgres: <cluster>: walwriter` and the like (shared
//! background processes), so the processes serving one database can be
//! found without connecting to it. Both the benchmark and PostgreSQL must
//! run on this machine.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::procstat;

/// Background processes whose work is the writes' (WAL, checkpoints),
/// shared by every database of the PostgreSQL server.
const BACKGROUND: [&str; 3] = ["walwriter", "checkpointer", "background writer"];

/// CPU used so far by each process serving a database.
#[derive(Debug, Clone, Default)]
pub struct DbSnapshot {
    backends: BTreeMap<u32, Duration>,
    background: BTreeMap<u32, Duration>,
}

impl DbSnapshot {
    /// Reads every PostgreSQL backend of `database` and the background
    /// writers; processes that vanish while being read are skipped.
    pub fn take(database: &str) -> DbSnapshot {
        let mut snapshot = DbSnapshot::default();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return snapshot;
        };
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let title = String::from_utf8_lossy(&cmdline);
            let Some(title) = title.strip_prefix("postgres: ") else {
                continue;
            };
            let title = title.trim_end_matches('\0');
            let mut words: Vec<&str> = title.split_whitespace().collect();
            // With `cluster_name` set (Debian: "15/main"), it comes first.
            if words.first().is_some_and(|w| w.ends_with(':')) {
                words.remove(0);
            }
            let kind = if words.get(1) == Some(&database) {
                &mut snapshot.backends
            } else if BACKGROUND.iter().any(|b| title.ends_with(b)) {
                &mut snapshot.background
            } else {
                continue;
            };
            if let Ok(sample) = procstat::sample(pid) {
                kind.insert(pid, sample.cpu);
            }
        }
        snapshot
    }
}

/// The database's CPU between two snapshots.
#[derive(Debug, Clone, Serialize)]
pub struct DbUse {
    pub database: String,
    /// CPU of the database's backends: those of `after`, each counted
    /// from `before` (or from its start, if it started in between). A
    /// backend that ended in between is missed.
    pub backend_cpu_seconds: f64,
    pub backends: usize,
    /// The WAL writer, checkpointer and background writer: shared with any
    /// other database of the server, so reported apart.
    pub background_cpu_seconds: f64,
}

impl DbUse {
    pub fn between(database: &str, before: &DbSnapshot, after: &DbSnapshot) -> DbUse {
        let used = |b: &BTreeMap<u32, Duration>, a: &BTreeMap<u32, Duration>| {
            a.iter()
                .map(|(pid, cpu)| cpu.saturating_sub(b.get(pid).copied().unwrap_or_default()))
                .sum::<Duration>()
                .as_secs_f64()
        };
        DbUse {
            database: database.to_owned(),
            backend_cpu_seconds: used(&before.backends, &after.backends),
            backends: after.backends.len(),
            background_cpu_seconds: used(&before.background, &after.background),
        }
    }

    /// Backends and background writers together.
    pub fn cpu(&self) -> Duration {
        Duration::from_secs_f64(self.backend_cpu_seconds + self.background_cpu_seconds)
    }
}
