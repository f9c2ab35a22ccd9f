//! Shutting down in order: health first, then the streams, the
//! connections, the writers and the tasks, all within the grace.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use super::health::set_health;
use super::wire::Tasks;
use crate::cluster::Cluster;
use crate::rooms::Rooms;

/// Resolves when `shutdown` does, with when, once health says NOT_SERVING
/// and every JoinRoom stream and health watch is ending: the connections'
/// graceful shutdown then has only short calls to wait for.
pub(super) async fn shutdown_begins(
    shutdown: impl Future<Output = ()>,
    health: HealthReporter,
    streams_end: CancellationToken,
    rooms: Arc<Rooms>,
) -> Instant {
    shutdown.await;
    let at = Instant::now();
    tracing::info!("shutting down");
    set_health(&health, ServingStatus::NotServing).await;
    streams_end.cancel();
    rooms.close();
    at
}

/// Waits, until `end`, for the background tasks (the writers drain) and
/// then for the NATS connection to drain.
async fn wind_down(end: Instant, tracker: TaskTracker, cluster: Option<Cluster>) {
    tracker.close();
    if tokio::time::timeout_at(end, tracker.wait()).await.is_err() {
        tracing::warn!("background tasks still running after the grace period");
    }
    if let Some(cluster) = cluster {
        // Still within the grace: shutdown never takes longer.
        if tokio::time::timeout_at(end, cluster.close()).await.is_err() {
            tracing::warn!("NATS connection not drained within the grace period");
        }
    }
}

/// After serving stopped (at the signal, or now when it stopped without
/// one): ends the streams and the cluster tasks, then waits for the tasks
/// and NATS within `grace`. Every ChatApi clone (and with it every writer
/// handle) is gone once every connection has closed, so the writers drain
/// and end.
pub(super) async fn stop_after(
    signalled: Option<Instant>,
    grace: Duration,
    tasks: Tasks,
    cluster: Option<Cluster>,
) {
    let end = signalled.unwrap_or_else(Instant::now) + grace;
    tasks.streams_end.cancel();
    tasks.cluster_stop.cancel();
    wind_down(end, tasks.tracker, cluster).await;
}
