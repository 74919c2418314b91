//! Test restores on the daemon ([`crate::drill`]): every `test_restore.interval_secs`
//! (uniformly jittered, as audits), and on `peer test-restore`, a random sample of the
//! latest snapshot's files is restored from the providers into a temporary directory in
//! the home, each file checked against the snapshot, and the directory removed. The
//! outcome is kept in `state.redb` and shown by `peer status` and the dashboard; a
//! failure runs the `after_backup` hook with `PEER_EVENT=test_restore`.

use super::Inner;
use super::transfer::NetSource;
use crate::drill::{DrillReport, Pick, VerifyError};
use crate::protocol::now;
use crate::restore::{self, PackSource, RestoreWhat};
use rand::RngExt;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

/// The state record holding the last test restore.
pub const RECORD: &str = "test_restore";

/// Why a test restore failed (shown in `peer status` and kept in `state.redb`).
#[derive(Debug, thiserror::Error)]
enum DrillError {
    /// No sample could be chosen, or the restore could not run.
    #[error(transparent)]
    Restore(#[from] restore::RestoreError),
    /// The temporary directory under the home could not be made.
    #[error("cannot make a directory for the test restore: {0}")]
    TempDir(std::io::Error),
    /// A blocking task stopped.
    #[error("the test restore stopped: {0}")]
    Stopped(#[from] tokio::task::JoinError),
    /// Files of the sample could not be restored.
    #[error("{count} files could not be restored: {}", failed.join("; "))]
    NotRestored {
        /// How many.
        count: u64,
        /// What failed, for the first of them.
        failed: Vec<String>,
    },
    /// Restored files differ from the snapshot.
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Differs(Vec<VerifyError>),
}

impl Inner {
    /// Runs test restores until the daemon stops (never with `interval_secs = 0`).
    pub(super) async fn drill_loop(self: Arc<Self>) {
        let interval = self.config.test_restore.interval_secs;
        if interval == 0 {
            return;
        }
        loop {
            let wait = rand::rng().random_range(interval / 2..=interval + interval / 2).max(1);
            tokio::time::sleep(Duration::from_secs(wait)).await;
            let has_snapshots = self.db(|s| s.snapshots().map(|v| !v.is_empty())).await.unwrap_or(false);
            if has_snapshots && !self.home.recover_marker().exists() {
                self.clone().drill().await;
            }
        }
    }

    /// The last test restore, from memory.
    pub(super) fn last_drill(&self) -> Option<DrillReport> {
        self.drill.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// One test restore, after any backup, restore, forget or prune running now.
    pub(super) async fn drill(self: Arc<Self>) -> DrillReport {
        let guard = self.busy.lock().await;
        let started = Instant::now();
        let mut report = DrillReport { time: now(), ..Default::default() };
        if let Err(e) = self.clone().drill_locked(&mut report).await {
            report.error = e.to_string();
        }
        drop(guard);
        report.seconds = started.elapsed().as_secs_f64();
        let result = if report.ok() { "success" } else { "failure" };
        crate::metrics::Metrics::count(&self.metrics.test_restores, result);
        if report.ok() {
            tracing::info!(
                "test restore: {} files, {} bytes, all as the snapshot says",
                report.sample.len(),
                report.bytes
            );
        } else {
            tracing::warn!("test restore FAILED: {}", report.error);
            self.run_hook(crate::hooks::drill_env(&report));
        }
        *self.drill.lock().unwrap_or_else(|p| p.into_inner()) = Some(report.clone());
        let saved = report.clone();
        self.persist("a test restore", move |s| s.set_record(RECORD, &saved)).await;
        report
    }

    /// Samples, restores and checks; fills `report` as it goes.
    async fn drill_locked(self: Arc<Self>, report: &mut DrillReport) -> Result<(), DrillError> {
        let cfg = &self.config.test_restore;
        let source: Arc<dyn PackSource> = Arc::new(NetSource::new(self.clone()));
        let max_each = cfg.max_bytes / cfg.files.max(1) as u64;
        let (sid, picks) =
            restore::sample_files(&self.id, &self.state, source.as_ref(), None, cfg.files, max_each).await?;
        report.snapshot = sid.to_string();
        report.sample = picks.iter().map(|p| p.orig.clone()).collect();
        report.bytes = picks.iter().map(|p| p.node.size).sum();
        if picks.is_empty() {
            return Ok(());
        }
        let home = self.home.dir.clone();
        let tmp =
            tokio::task::spawn_blocking(move || tempfile::Builder::new().prefix(".test-restore-").tempdir_in(home))
                .await?
                .map_err(DrillError::TempDir)?;
        let what = RestoreWhat {
            snapshot: Some(report.snapshot.clone()),
            target: Some(tmp.path().to_path_buf()),
            overwrite: false,
            include: picks.iter().map(|p| p.orig.clone().into()).collect(),
        };
        let (total, done) = (AtomicU64::new(0), Arc::new(AtomicU64::new(0)));
        let summary = restore::run(&self.id, &self.state, source, &what, &total, done).await;
        let id_key = self.id.id_key;
        // Checked, then removed, off the runtime.
        let checked = tokio::task::spawn_blocking(move || {
            let errors: Vec<VerifyError> = picks
                .iter()
                .filter_map(|p: &Pick| crate::drill::verify_file(&id_key, &tmp.path().join(&p.rel), &p.node).err())
                .collect();
            drop(tmp);
            errors
        })
        .await?;
        let summary = summary?;
        if summary.failed_count > 0 {
            return Err(DrillError::NotRestored { count: summary.failed_count, failed: summary.failed });
        }
        if !checked.is_empty() {
            return Err(DrillError::Differs(checked));
        }
        Ok(())
    }
}
