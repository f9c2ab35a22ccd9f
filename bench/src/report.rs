//! What a run measured, as a table or JSON.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::procstat::Usage;

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    /// From a histogram of microseconds.
    pub fn from_micros(h: &Histogram<u64>) -> Self {
        let ms = |v: u64| v as f64 / 1000.0;
        Latency {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// The server's resource use during the measured stretch; with several
/// `--server-pid`, the sum over them, and each one in `servers`.
#[derive(Debug, Clone, Serialize)]
pub struct ServerUse {
    pub cpu_seconds: f64,
    pub rss_before_bytes: u64,
    pub rss_after_bytes: u64,
    pub peak_rss_bytes: u64,
    /// Each server process on its own; only when there are several, so a
    /// one-server report reads as before.
    #[serde(skip_serializing_if = "fewer_than_two")]
    pub servers: Vec<ProcessUse>,
}

/// One server process's share of a [`ServerUse`].
#[derive(Debug, Clone, Serialize)]
pub struct ProcessUse {
    pub pid: u32,
    pub cpu_seconds: f64,
    pub rss_before_bytes: u64,
    pub rss_after_bytes: u64,
    pub peak_rss_bytes: u64,
}

fn fewer_than_two<T>(v: &[T]) -> bool {
    v.len() < 2
}

impl From<Usage> for ServerUse {
    fn from(u: Usage) -> Self {
        let (before, after) = (u.before.total(), u.after.total());
        ServerUse {
            cpu_seconds: u.cpu().as_secs_f64(),
            rss_before_bytes: before.rss,
            rss_after_bytes: after.rss,
            peak_rss_bytes: after.peak_rss,
            servers: u
                .per_process()
                .map(|(pid, b, a)| ProcessUse {
                    pid,
                    cpu_seconds: a.cpu.saturating_sub(b.cpu).as_secs_f64(),
                    rss_before_bytes: b.rss,
                    rss_after_bytes: a.rss,
                    peak_rss_bytes: a.peak_rss,
                })
                .collect(),
        }
    }
}

/// One scenario's result.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub label: String,
    /// The run's shape (sizes, rates), for the record.
    pub params: serde_json::Value,
    pub seconds: f64,
    /// Named figures: rates, counts, per-unit costs.
    pub figures: Vec<(String, f64)>,
    pub latency: Option<Latency>,
    pub server: Option<ServerUse>,
    /// With `--db-name`: the PostgreSQL processes' CPU over the same
    /// stretch as `server`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<crate::dbstat::DbUse>,
    /// With several `--addr`: what each server was given (subscribers,
    /// senders) and what its clients saw. Absent with one server.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub placement: Vec<serde_json::Value>,
    /// Checks that must hold (nothing lost, everything stored); a failed
    /// check makes the exit status 2.
    pub checks: Vec<(String, bool)>,
}

impl Report {
    pub fn new(scenario: &str, label: &str, params: serde_json::Value, elapsed: Duration) -> Self {
        Report {
            scenario: scenario.into(),
            label: label.into(),
            params,
            seconds: elapsed.as_secs_f64(),
            figures: Vec::new(),
            latency: None,
            server: None,
            database: None,
            placement: Vec::new(),
            checks: Vec::new(),
        }
    }

    pub fn figure(&mut self, name: &str, value: f64) -> &mut Self {
        self.figures.push((name.into(), value));
        self
    }

    pub fn check(&mut self, name: &str, ok: bool) -> &mut Self {
        self.checks.push((name.into(), ok));
        self
    }

    pub fn failed(&self) -> bool {
        self.checks.iter().any(|(_, ok)| !ok)
    }

    pub fn table(&self) -> String {
        let mut out = format!(
            "{} on {} ({:.2} s)  {}\n",
            self.scenario, self.label, self.seconds, self.params
        );
        let row = |name: &str, value: String| format!("  {name:<34} {value}\n");
        for (name, value) in &self.figures {
            out += &row(name, human(*value));
        }
        if let Some(l) = &self.latency {
            out += &row(
                "latency ms p50 / p99 / p99.9 / max",
                format!(
                    "{:.2} / {:.2} / {:.2} / {:.2}  ({} samples)",
                    l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms, l.count
                ),
            );
        }
        if let Some(s) = &self.server {
            out += &row("server cpu seconds", format!("{:.2}", s.cpu_seconds));
            out += &row(
                "server rss before / after / peak",
                format!(
                    "{:.1} / {:.1} / {:.1} MiB",
                    mib(s.rss_before_bytes),
                    mib(s.rss_after_bytes),
                    mib(s.peak_rss_bytes)
                ),
            );
            for p in s.servers.iter().filter(|_| s.servers.len() > 1) {
                out += &row(
                    &format!("  pid {} cpu s / rss after", p.pid),
                    format!("{:.2} / {:.1} MiB", p.cpu_seconds, mib(p.rss_after_bytes)),
                );
            }
        }
        if let Some(d) = &self.database {
            out += &row(
                "database cpu s backends / shared",
                format!(
                    "{:.2} / {:.2}  ({} backends of {})",
                    d.backend_cpu_seconds, d.background_cpu_seconds, d.backends, d.database
                ),
            );
        }
        for place in &self.placement {
            out += &row("on server", place.to_string());
        }
        for (name, ok) in &self.checks {
            out += &row(name, if *ok { "ok".into() } else { "FAILED".into() });
        }
        out
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn human(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}
