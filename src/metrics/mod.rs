//! Prometheus metrics: the registry, chatd's own counters and the on/off handle the hot paths use.
//!
//! With `CHAT_METRICS_ADDR` set, [`Metrics::new`] builds a registry of its
//! own (one per server, so two servers in one process never share counts)
//! and [`exporter::serve`] answers `GET /metrics` on that address. Unset,
//! [`Metrics::off`] is an empty handle: every recording method is one
//! branch on `None`, and nothing listens.
//!
//! Counters and gauges are atomics; the hot paths count per batch or per
//! page, not per message ([`Metrics::deliveries`] is called once per look
//! at a room's ring). Histograms take a short lock per observation, made
//! once per call or per committed batch.
//!
//! - [`grpc`]: the gRPC server metrics of go-grpc-prometheus, as a layer.
//! - [`exporter`]: the HTTP listener.

pub mod exporter;
pub mod grpc;

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Why a JoinRoom stream read from storage instead of the room's ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CatchUp {
    /// The client asked to resume from a seq older than the newest.
    Resume = 0,
    /// The stream fell behind the ring (a slow reader).
    Lag = 1,
    /// A seq never came through the ring (a notification lost or late).
    Gap = 2,
}

impl CatchUp {
    const LABELS: [&'static str; 3] = ["resume", "lag", "gap"];
}

/// Why chatd closed a connection (`chatd_connections_closed_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnClosed {
    /// No authenticated call within `CHAT_FIRST_CALL_TIMEOUT` of its
    /// handshake.
    FirstCall = 0,
    /// It gave its slot up to a new client while every slot was taken.
    Evicted = 1,
}

impl ConnClosed {
    const LABELS: [&'static str; 2] = ["first_call", "evicted"];
}

/// Why a cluster node dropped a message from NATS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NatsDrop {
    /// It does not open: unsealed, altered, truncated, sealed for another
    /// subject or with a key this node does not hold.
    Seal = 0,
    /// It opened, but its send time is too far from this node's clock.
    Stale = 1,
    /// It opened, but what it says fails the checks of what a node may
    /// believe (a notice that is not a message of its room, presence
    /// that breaks the token rules or the bounds, a node's own message).
    Invalid = 2,
}

impl NatsDrop {
    const LABELS: [&'static str; 3] = ["seal", "stale", "invalid"];

    /// The metric label.
    pub fn label(self) -> &'static str {
        Self::LABELS[self as usize]
    }
}

/// What became of one try of a webhook event
/// (`chatd_webhook_events_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebhookOutcome {
    /// The receiver answered 2xx.
    Delivered = 0,
    /// It failed (not 2xx, timed out, refused) and is tried again later.
    Retried = 1,
    /// Still undelivered past CHAT_WEBHOOK_MAX_AGE: given up.
    Dropped = 2,
}

impl WebhookOutcome {
    const LABELS: [&'static str; 3] = ["delivered", "retried", "dropped"];
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// The metrics handle: cheap to clone, and a no-op when metrics are off.
#[derive(Clone, Default)]
pub struct Metrics(Option<Arc<Inner>>);

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Metrics(on)"
        } else {
            "Metrics(off)"
        })
    }
}

struct Inner {
    registry: Registry,
    grpc: grpc::GrpcMetrics,
    messages_stored: Counter,
    deliveries: Counter,
    streams_open: Gauge,
    rooms_live: Gauge,
    /// Connections holding one of the `CHAT_MAX_CONNECTIONS` slots.
    connections_open: Gauge,
    /// By [`ConnClosed`] as index.
    connections_closed: [Counter; 2],
    /// By [`CatchUp`] as index.
    catchup_reads: [Counter; 3],
    write_batch_size: Histogram,
    commit_seconds: Histogram,
    pool_size: Gauge,
    pool_max_size: Gauge,
    pool_idle: Gauge,
    pool_waiters: Gauge,
    /// Cluster only.
    nats: Option<NatsMetrics>,
    /// By [`WebhookOutcome`] as index.
    webhook_events: [Counter; 3],
    /// Events waiting in the outbox, and the oldest one's age in seconds,
    /// as last read.
    webhook_backlog: Gauge,
    webhook_oldest_seconds: Gauge,
}

struct NatsMetrics {
    connected: Gauge,
    missed: Counter,
    /// By [`NatsDrop`] as index.
    dropped: [Counter; 3],
}

/// What a scrape reads at that moment rather than counting as it happens,
/// handed in by whoever owns the pool and the NATS connection.
#[derive(Debug, Clone, Copy, Default)]
pub struct Readings {
    /// The database pool: connections open, its limit, idle, callers waiting.
    pub pool_size: usize,
    pub pool_max_size: usize,
    pub pool_idle: usize,
    pub pool_waiters: usize,
    /// Cluster only: whether the NATS connection is up.
    pub nats_connected: Option<bool>,
}

/// Takes the [`Readings`] at each scrape.
pub type Sources = Box<dyn Fn() -> Readings + Send + Sync>;

impl Metrics {
    /// Metrics off: nothing is recorded.
    pub fn off() -> Self {
        Metrics(None)
    }

    /// Metrics on, with a registry of their own; `cluster` adds the NATS
    /// metrics.
    pub fn new(cluster: bool) -> Self {
        let mut registry = Registry::default();
        let grpc = grpc::GrpcMetrics::register(&mut registry);
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        let messages_stored = counter(
            &mut registry,
            "chatd_messages_stored",
            "Messages committed to storage (retries of a stored client_message_id not counted)",
        );
        let deliveries = counter(
            &mut registry,
            "chatd_deliveries",
            "Messages handed to JoinRoom streams, live or caught up from storage",
        );
        let streams_open = gauge(
            &mut registry,
            "chatd_streams_open",
            "JoinRoom streams whose join succeeded and that are still open",
        );
        let rooms_live = gauge(
            &mut registry,
            "chatd_rooms_live",
            "Rooms with at least one JoinRoom stream on this node",
        );
        let connections_open = gauge(
            &mut registry,
            "chatd_connections_open",
            "Client connections holding one of the CHAT_MAX_CONNECTIONS slots",
        );
        let closed: Family<ReasonLabel, Counter> = Family::default();
        registry.register(
            "chatd_connections_closed",
            "Connections chatd closed, by why: first_call (no authenticated call within CHAT_FIRST_CALL_TIMEOUT), evicted (gave its slot up to a new client)",
            closed.clone(),
        );
        let connections_closed =
            ConnClosed::LABELS.map(|reason| closed.get_or_create_owned(&ReasonLabel { reason }));
        let catchup: Family<ReasonLabel, Counter> = Family::default();
        registry.register(
            "chatd_catchup_reads",
            "Pages JoinRoom streams read from storage, by why: resume, lag (fell behind the ring), gap (a seq missing from the ring)",
            catchup.clone(),
        );
        let catchup_reads =
            CatchUp::LABELS.map(|reason| catchup.get_or_create_owned(&ReasonLabel { reason }));
        let write_batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 10));
        registry.register(
            "chatd_write_batch_size",
            "Messages per committed write batch",
            write_batch_size.clone(),
        );
        let commit_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        registry.register(
            "chatd_commit_seconds",
            "Time to store one write batch (waiting for a connection included)",
            commit_seconds.clone(),
        );
        let pool_size = gauge(
            &mut registry,
            "chatd_db_pool_size",
            "Database connections open in the pool",
        );
        let pool_max_size = gauge(
            &mut registry,
            "chatd_db_pool_max_size",
            "The most connections the pool may open (CHAT_DB_POOL_SIZE)",
        );
        let pool_idle = gauge(
            &mut registry,
            "chatd_db_pool_idle",
            "Pooled connections not in use",
        );
        let pool_waiters = gauge(
            &mut registry,
            "chatd_db_pool_waiters",
            "Calls waiting for a pooled connection",
        );
        let nats = cluster.then(|| {
            let dropped: Family<ReasonLabel, Counter> = Family::default();
            registry.register(
                "chatd_nats_dropped",
                "Messages from NATS this node dropped, by why: seal (does not open with the cluster key), stale (sent too long ago), invalid (opened but fails the checks)",
                dropped.clone(),
            );
            NatsMetrics {
                dropped: NatsDrop::LABELS
                    .map(|reason| dropped.get_or_create_owned(&ReasonLabel { reason })),
                connected: gauge(
                    &mut registry,
                    "chatd_nats_connected",
                    "1 while this node is connected to NATS, else 0",
                ),
                missed: counter(
                    &mut registry,
                    "chatd_nats_notifications_missed",
                    "Messages of live rooms that no NATS notification brought: the storage poll found and delivered them",
                ),
            }
        });
        let webhooks: Family<ResultLabel, Counter> = Family::default();
        registry.register(
            "chatd_webhook_events",
            "Tries of webhook events, by result: delivered (2xx), retried (failed, tried again later), dropped (undelivered past CHAT_WEBHOOK_MAX_AGE)",
            webhooks.clone(),
        );
        let webhook_events = WebhookOutcome::LABELS
            .map(|result| webhooks.get_or_create_owned(&ResultLabel { result }));
        let webhook_backlog = gauge(
            &mut registry,
            "chatd_webhook_backlog",
            "Webhook events waiting in the outbox (the whole cluster's; read every 5 s)",
        );
        let webhook_oldest_seconds = gauge(
            &mut registry,
            "chatd_webhook_oldest_seconds",
            "Age of the oldest webhook event waiting, in seconds (0: none; read every 5 s)",
        );
        Metrics(Some(Arc::new(Inner {
            registry,
            grpc,
            messages_stored,
            deliveries,
            streams_open,
            rooms_live,
            connections_open,
            connections_closed,
            catchup_reads,
            write_batch_size,
            commit_seconds,
            pool_size,
            pool_max_size,
            pool_idle,
            pool_waiters,
            nats,
            webhook_events,
            webhook_backlog,
            webhook_oldest_seconds,
        })))
    }

    /// Whether metrics are on.
    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// The series of the gRPC method at `path` (`/package.Service/Method`;
    /// an unknown path counts as `unknown`); `None` when metrics are off.
    pub(crate) fn grpc_method(&self, path: &str) -> Option<Arc<grpc::MethodMetrics>> {
        self.0.as_ref().map(|m| m.grpc.method(path).clone())
    }

    /// A write batch of `size` messages was stored in `took`, `fresh` of
    /// them new.
    #[inline]
    pub fn batch_stored(&self, size: usize, fresh: usize, took: Duration) {
        if let Some(m) = &self.0 {
            m.write_batch_size.observe(size as f64);
            m.commit_seconds.observe(took.as_secs_f64());
            m.messages_stored.inc_by(fresh as u64);
        }
    }

    /// `n` messages were handed to one stream.
    #[inline]
    pub fn deliveries(&self, n: usize) {
        if let Some(m) = &self.0
            && n > 0
        {
            m.deliveries.inc_by(n as u64);
        }
    }

    /// A stream's join succeeded (`true`) or a joined stream ended.
    #[inline]
    pub fn stream_open(&self, open: bool) {
        if let Some(m) = &self.0 {
            if open {
                m.streams_open.inc();
            } else {
                m.streams_open.dec();
            }
        }
    }

    /// A room entry was added (`true`) or removed.
    #[inline]
    pub fn room_live(&self, live: bool) {
        if let Some(m) = &self.0 {
            if live {
                m.rooms_live.inc();
            } else {
                m.rooms_live.dec();
            }
        }
    }

    /// A connection took a slot (`true`) or gave it back.
    #[inline]
    pub fn connection_open(&self, open: bool) {
        if let Some(m) = &self.0 {
            if open {
                m.connections_open.inc();
            } else {
                m.connections_open.dec();
            }
        }
    }

    /// chatd asked a connection to go away for `reason`.
    #[inline]
    pub fn connection_closed(&self, reason: ConnClosed) {
        if let Some(m) = &self.0 {
            m.connections_closed[reason as usize].inc();
        }
    }

    /// A stream read one page from storage.
    #[inline]
    pub fn catchup_read(&self, reason: CatchUp) {
        if let Some(m) = &self.0 {
            m.catchup_reads[reason as usize].inc();
        }
    }

    /// The storage poll delivered `n` messages no notification brought.
    #[inline]
    pub fn notifications_missed(&self, n: u64) {
        if let Some(nats) = self.0.as_ref().and_then(|m| m.nats.as_ref())
            && n > 0
        {
            nats.missed.inc_by(n);
        }
    }

    /// A message from NATS was dropped, for `reason`.
    #[inline]
    pub fn nats_dropped(&self, reason: NatsDrop) {
        if let Some(nats) = self.0.as_ref().and_then(|m| m.nats.as_ref()) {
            nats.dropped[reason as usize].inc();
        }
    }

    /// One try of a webhook event ended with `outcome`.
    #[inline]
    pub fn webhook(&self, outcome: WebhookOutcome) {
        if let Some(m) = &self.0 {
            m.webhook_events[outcome as usize].inc();
        }
    }

    /// The outbox holds `waiting` events, the oldest `oldest_seconds` old.
    pub fn webhook_backlog(&self, waiting: u64, oldest_seconds: i64) {
        if let Some(m) = &self.0 {
            m.webhook_backlog
                .set(i64::try_from(waiting).unwrap_or(i64::MAX));
            m.webhook_oldest_seconds.set(oldest_seconds);
        }
    }

    /// The metrics in the OpenMetrics text format, with the gauges read
    /// from `sources` first. `None` when metrics are off.
    pub fn render(&self, sources: &Sources) -> Option<Result<String, std::fmt::Error>> {
        let m = self.0.as_ref()?;
        let readings = sources();
        m.pool_size.set(readings.pool_size as i64);
        m.pool_max_size.set(readings.pool_max_size as i64);
        m.pool_idle.set(readings.pool_idle as i64);
        m.pool_waiters.set(readings.pool_waiters as i64);
        if let (Some(nats), Some(connected)) = (&m.nats, readings.nats_connected) {
            nats.connected.set(i64::from(connected));
        }
        let mut out = String::with_capacity(16 * 1024);
        Some(prometheus_client::encoding::text::encode(&mut out, &m.registry).map(|()| out))
    }
}
