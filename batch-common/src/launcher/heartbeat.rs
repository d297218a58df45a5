//! The heartbeat of a running execution: how other processes tell it is alive.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::{Clock, ClockExt};
use crate::repository::{Heartbeat, JobRepository};

/// Refreshes the execution's heartbeat every `every` until aborted. When the refresh finds a
/// stop requested by an operator (status STOPPING, from `stop` or the API, in any process), or
/// the execution no longer live (another process marked it abandoned and took the instance
/// over), cancels `cancel` so the run stops after its current chunk; after a stop request it
/// goes on beating until the run ends (the run is still live). A failed refresh is logged and
/// retried at the next beat (the run goes on; `stale_after` is several beats long).
pub(super) fn spawn(
    repo: JobRepository,
    clock: Arc<dyn Clock>,
    every: Duration,
    execution_id: i64,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            match repo.heartbeat(execution_id, clock.now_naive_utc()).await {
                Ok(Heartbeat::Live) => {}
                Ok(Heartbeat::StopRequested) => {
                    if !cancel.is_cancelled() {
                        tracing::warn!(
                            execution.id = execution_id,
                            "an operator asked this execution to stop; stopping after the current chunk"
                        );
                        cancel.cancel();
                    }
                }
                Ok(Heartbeat::Lost) => {
                    tracing::error!(
                        execution.id = execution_id,
                        "this execution was marked abandoned by another process; stopping after the current chunk"
                    );
                    cancel.cancel();
                    return;
                }
                Err(e) => {
                    tracing::warn!(execution.id = execution_id, error = %e, "heartbeat failed")
                }
            }
        }
    })
}
