//! The daemon's tasks and how they end: every task the daemon starts is spawned through
//! [`Lifetime`], so that shutdown can wait for all of them, within a bound.
//!
//! Two kinds of task:
//! - **rounds** ([`Lifetime::spawn_round`]): the audit, repair, republish, recovery,
//!   schedule, test-restore and partner loops. Each round is idempotent and its writes go
//!   through the store actor one whole command at a time, so a round ends at its next await
//!   as soon as the daemon stops (what it had not done, the next start's round does);
//! - **work** ([`Lifetime::spawn`]): an inbound request, a control command, a hook, the
//!   dashboard. Work gets [`SHUTDOWN_GRACE`] to finish: a restore or a `Store` in flight
//!   completes and is answered. Work still running after it is abandoned: dropped at its
//!   next await (a control command answers first; see [`Lifetime::or_abandoned`]).
//!
//! Shutdown ([`Lifetime::finish`]) stops rounds, waits for work, and only then is the
//! network stopped and the store actor drained (`super::shut_down`), so no task is left
//! running and no queued write is lost.

use std::future::Future;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Seconds that work in flight (inbound requests, control commands) gets to finish at
/// shutdown before it is abandoned.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Seconds that abandoned work gets to unwind (reach its next await and answer).
pub const ABANDON_GRACE: Duration = Duration::from_secs(2);

/// The daemon's task set and its two stop signals; clones share them.
#[derive(Clone, Default)]
pub(super) struct Lifetime {
    tasks: TaskTracker,
    /// Cancelled when shutdown begins: rounds end, listeners stop taking new work.
    stopping: CancellationToken,
    /// Cancelled when the grace for work in flight is over.
    abandoned: CancellationToken,
}

/// How [`Lifetime::finish`] went.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Finished {
    /// Every task ended within the grace.
    Joined,
    /// Some work outlasted [`SHUTDOWN_GRACE`] and was abandoned; all tasks then ended.
    Abandoned,
    /// This many tasks had not ended even [`ABANDON_GRACE`] after being abandoned.
    Stuck(usize),
}

impl Lifetime {
    /// Spawns a round: it ends at its next await once shutdown begins.
    pub(super) fn spawn_round<F: Future<Output = ()> + Send + 'static>(&self, round: F) {
        let stop = self.stopping.clone();
        self.tasks.spawn(async move {
            stop.run_until_cancelled_owned(round).await;
        });
    }

    /// Spawns work: it gets [`SHUTDOWN_GRACE`] at shutdown, then ends at its next await.
    pub(super) fn spawn<F: Future<Output = ()> + Send + 'static>(&self, work: F) {
        let abandoned = self.abandoned.clone();
        self.tasks.spawn(async move {
            abandoned.run_until_cancelled_owned(work).await;
        });
    }

    /// Spawns work that ends by itself when abandoned (through [`Lifetime::or_abandoned`]),
    /// so that it can still answer: a control connection.
    pub(super) fn spawn_answering<F: Future<Output = ()> + Send + 'static>(&self, work: F) {
        self.tasks.spawn(work);
    }

    /// `work`'s output, or `None` if the daemon abandons work first.
    pub(super) async fn or_abandoned<F: Future>(&self, work: F) -> Option<F::Output> {
        self.abandoned.run_until_cancelled(work).await
    }

    /// A token cancelled when shutdown begins (for servers that take one).
    pub(super) fn stop_token(&self) -> CancellationToken {
        self.stopping.clone()
    }

    /// True once shutdown has begun.
    pub(super) fn is_stopping(&self) -> bool {
        self.stopping.is_cancelled()
    }

    /// Begins shutdown and waits for every task: rounds end at once, work gets `grace`,
    /// then is abandoned and gets `unwind` more. Tasks spawned after this call are still
    /// waited for (a request that was being dispatched).
    pub(super) async fn finish(&self, grace: Duration, unwind: Duration) -> Finished {
        self.stopping.cancel();
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait()).await.is_ok() {
            return Finished::Joined;
        }
        self.abandoned.cancel();
        match tokio::time::timeout(unwind, self.tasks.wait()).await {
            Ok(()) => Finished::Abandoned,
            Err(_) => Finished::Stuck(self.tasks.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test(start_paused = true)]
    async fn rounds_stop_at_once_and_work_finishes_within_the_grace() {
        let life = Lifetime::default();
        let round_ended_early = Arc::new(AtomicBool::new(true));
        let r = round_ended_early.clone();
        life.spawn_round(async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            r.store(false, Ordering::SeqCst);
        });
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        life.spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            d.store(true, Ordering::SeqCst);
        });
        let started = tokio::time::Instant::now();
        assert_eq!(life.finish(SHUTDOWN_GRACE, ABANDON_GRACE).await, Finished::Joined);
        assert!(done.load(Ordering::SeqCst), "work in flight was not let finish");
        assert!(round_ended_early.load(Ordering::SeqCst), "a round ran on after shutdown began");
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert_eq!(life.tasks.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn work_past_the_grace_is_abandoned_and_can_answer() {
        let life = Arc::new(Lifetime::default());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let l = life.clone();
        life.spawn_answering(async move {
            let out = l.or_abandoned(tokio::time::sleep(Duration::from_secs(3600))).await;
            let _ = tx.send(out.is_none());
        });
        let started = tokio::time::Instant::now();
        assert_eq!(life.finish(SHUTDOWN_GRACE, ABANDON_GRACE).await, Finished::Abandoned);
        assert_eq!(started.elapsed(), SHUTDOWN_GRACE);
        assert_eq!(rx.await, Ok(true), "abandoned work did not learn it was abandoned");
        assert!(life.is_stopping());
    }

    #[tokio::test(start_paused = true)]
    async fn work_that_ignores_abandonment_is_counted_as_stuck() {
        let life = Lifetime::default();
        life.spawn_answering(tokio::time::sleep(Duration::from_secs(3600)));
        assert_eq!(life.finish(SHUTDOWN_GRACE, ABANDON_GRACE).await, Finished::Stuck(1));
    }
}
