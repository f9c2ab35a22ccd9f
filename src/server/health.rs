//! Health: SERVING while the database answers and takes writes.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::HealthReporter;

use super::wire::Tasks;
use crate::error::Error;
use crate::storage::Store;

/// How often health re-checks a database that works (sooner when a call
/// fails as unavailable).
const HEALTH_INTERVAL: Duration = Duration::from_secs(5);
/// How often health re-checks a database that does not work, and the least
/// time between two checks.
const HEALTH_RECHECK: Duration = Duration::from_secs(1);
/// The service name health reports for ChatService.
const CHAT_SERVICE: &str = "chat.v1.ChatService";

/// Health, SERVING from now on, with the task that watches the database
/// (ending with the streams).
pub(super) async fn start(
    store: &Store,
    tasks: &Tasks,
) -> (HealthReporter, HealthServer<impl Health>) {
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, ServingStatus::Serving).await;
    let stop = tasks.streams_end.clone();
    tasks
        .tracker
        .spawn(watch_database(store.clone(), health.clone(), stop));
    (health, health_service)
}

/// Sets the status of both the whole server ("") and ChatService.
pub(super) async fn set_health(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    health.set_service_status(CHAT_SERVICE, status).await;
}

/// Reports NOT_SERVING while the database does not answer or writes
/// cannot succeed, with one log line per change.
///
/// Checks every [`HEALTH_INTERVAL`], at once when a call fails as
/// unavailable, and every [`HEALTH_RECHECK`] while not serving. A check is
/// `SELECT 1` (each with the store's deadline, so a hung database counts as
/// down), plus a committed probe write while the writer reports that writes
/// fail (a full disk still answers `SELECT 1`).
async fn watch_database(store: Store, health: HealthReporter, stop: CancellationToken) {
    let mut serving = true;
    loop {
        let wait = async {
            if serving {
                tokio::select! {
                    () = tokio::time::sleep(HEALTH_INTERVAL) => {}
                    () = store.failed() => {}
                }
            }
            // Not serving: the pause after the last check was enough.
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = wait => {}
        }
        let check = async {
            store.ping().await?;
            if store.writes_failing() {
                store.probe_write().await?;
            }
            Ok::<(), Error>(())
        };
        let checked = tokio::select! {
            () = stop.cancelled() => return,
            checked = check => checked,
        };
        match (&checked, serving) {
            (Err(e), true) => {
                serving = false;
                tracing::warn!(
                    error = %e,
                    "database unavailable: health is NOT_SERVING until it answers and takes writes again"
                );
                set_health(&health, ServingStatus::NotServing).await;
            }
            (Ok(()), false) => {
                serving = true;
                tracing::info!("database answers and takes writes again: health is SERVING");
                set_health(&health, ServingStatus::Serving).await;
            }
            _ => {}
        }
        // At most one check per HEALTH_RECHECK, however many calls fail.
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(HEALTH_RECHECK) => {}
        }
    }
}
