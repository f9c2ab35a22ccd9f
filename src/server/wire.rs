//! Wiring the parts that serve: the room registry, the cluster (when
//! `CHAT_NATS_URL` is set), access, the writers and the metrics listener.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access::Access;
use crate::cluster::bus::{Publisher, follow_rooms, poll_storage, spawn_publisher};
use crate::cluster::nodes::{self, Directory};
use crate::cluster::presence::{self, Presence};
use crate::cluster::{Cluster, revocations};
use crate::config::Config;
use crate::error::Result;
use crate::metrics::Metrics;
use crate::rooms::Rooms;
use crate::storage::Store;
use crate::writer::Writer;

/// The tasks chatd spawns and the two moments they end at.
pub(super) struct Tasks {
    pub(super) tracker: TaskTracker,
    /// Ends JoinRoom streams, health watches and the refresh tasks, at the
    /// start of shutdown.
    pub(super) streams_end: CancellationToken,
    /// Ends the cluster tasks and the metrics listener once the server
    /// has stopped (the writers may still publish while they drain).
    pub(super) cluster_stop: CancellationToken,
}

impl Tasks {
    pub(super) fn new() -> Self {
        Tasks {
            tracker: TaskTracker::new(),
            streams_end: CancellationToken::new(),
            cluster_stop: CancellationToken::new(),
        }
    }
}

/// The cluster's connection and the tasks' handles the others use.
pub(super) struct ClusterParts {
    pub(super) cluster: Cluster,
    /// Where the writers hand committed batches for the other nodes.
    pub(super) publisher: Publisher,
    /// The cluster-wide members of each room.
    pub(super) presence: Arc<Presence>,
}

/// The parts that serve, wired together.
pub(super) struct Core {
    pub(super) rooms: Arc<Rooms>,
    pub(super) cluster: Option<ClusterParts>,
    pub(super) access: Arc<Access>,
    pub(super) writer: Writer,
}

/// Starts the room registry, the cluster, access and the writers, their
/// tasks on `tasks`.
pub(super) async fn wire(
    config: &Config,
    store: &Store,
    metrics: &Metrics,
    tasks: &Tasks,
) -> Result<Core> {
    let Tasks {
        tracker,
        cluster_stop,
        ..
    } = tasks;
    let rooms = Arc::new(Rooms::new(config).with_metrics(metrics.clone()));
    tracker.spawn(rooms.clone().wake_deferred(cluster_stop.clone()));
    tracker.spawn(rooms.clone().sweep_ephemeral_every(cluster_stop.clone()));
    let cluster = match &config.nats_url {
        Some(url) => Some(start_cluster(config, url, &rooms, store, tracker, cluster_stop).await?),
        None => None,
    };
    let access = Arc::new(Access::new(
        store.clone(),
        rooms.clone(),
        config.room_creation,
        tracker,
        cluster_stop.clone(),
    ));
    if let Some(parts) = &cluster {
        revocations::spawn(&parts.cluster, &access, store, tracker, cluster_stop);
    }
    if let Some(settings) = config.webhooks().map_err(crate::error::Error::Config)? {
        crate::webhooks::spawn(settings, store, metrics, tracker, cluster_stop)?;
    }
    let writer = Writer::spawn(
        store.clone(),
        rooms.clone(),
        config.writers as usize,
        cluster.as_ref().map(|parts| parts.publisher.clone()),
        tracker,
    );
    Ok(Core {
        rooms,
        cluster,
        access,
        writer,
    })
}

/// Serves `/metrics` on `listener`, when `CHAT_METRICS_ADDR` is set, until
/// the cluster stops; returns its URL.
pub(super) fn serve_metrics(
    listener: Option<(TcpListener, std::net::SocketAddr)>,
    metrics: &Metrics,
    store: &Store,
    cluster: Option<&ClusterParts>,
    tasks: &Tasks,
) -> Option<String> {
    listener.map(|(listener, at)| {
        let sources = readings(
            store.clone(),
            cluster.map(|parts| parts.cluster.link.clone()),
        );
        tasks.tracker.spawn(crate::metrics::exporter::serve(
            listener,
            metrics.clone(),
            sources,
            tasks.cluster_stop.clone(),
        ));
        format!("http://{at}/metrics")
    })
}

/// Connects to NATS and starts the cluster tasks on `tracker`: the
/// publisher of committed batches, the interest-based subscriptions, the
/// storage poller, the node directory and presence (with its syncs and the
/// answers to other nodes' syncs). All end at `stop`.
pub(super) async fn start_cluster(
    config: &Config,
    url: &str,
    rooms: &Arc<Rooms>,
    store: &Store,
    tracker: &TaskTracker,
    stop: &CancellationToken,
) -> Result<ClusterParts> {
    let cluster = Cluster::connect(config, url, rooms.metrics().clone()).await?;
    let publisher = spawn_publisher(&cluster, tracker, stop.clone());
    let directory = Arc::new(Directory::new(config.presence_timeout));
    tracker.spawn(nodes::run(cluster.clone(), directory.clone(), stop.clone()));
    let (presence, syncs) = Presence::new(
        cluster.clone(),
        rooms.clone(),
        directory,
        config.presence_timeout,
    );
    let presence = Arc::new(presence);
    let (changes_tx, changes) = tokio::sync::mpsc::channel(presence::CHANGES_QUEUE);
    rooms.watch_presence(changes_tx);
    tracker.spawn(presence::run(presence.clone(), changes, stop.clone()));
    tracker.spawn(presence::run_syncs(presence.clone(), syncs, stop.clone()));
    tracker.spawn(presence::serve_requests(presence.clone(), stop.clone()));
    tracker.spawn(follow_rooms(
        cluster.clone(),
        rooms.clone(),
        store.clone(),
        presence.clone(),
        tracker.clone(),
        stop.clone(),
    ));
    tracker.spawn(rooms.clone().fill_gaps(store.clone(), stop.clone()));
    crate::cluster::ephemeral::spawn_relay(&cluster, rooms, tracker, stop.clone());
    tracker.spawn(poll_storage(
        cluster.clone(),
        rooms.clone(),
        store.clone(),
        stop.clone(),
    ));
    Ok(ClusterParts {
        cluster,
        publisher,
        presence,
    })
}

/// What the metrics read at each scrape: the pool's state and, on a
/// cluster, whether NATS is connected.
fn readings(store: Store, link: Option<Arc<crate::cluster::Link>>) -> crate::metrics::Sources {
    Box::new(move || {
        let pool = store.pool_status();
        crate::metrics::Readings {
            pool_size: pool.size,
            pool_max_size: pool.max_size,
            pool_idle: pool.available,
            pool_waiters: pool.waiting,
            nats_connected: link.as_ref().map(|link| link.is_connected()),
        }
    })
}
