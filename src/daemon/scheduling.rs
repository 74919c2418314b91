//! Scheduled backups and hooks on the daemon: one task wakes when a schedule is due
//! ([`crate::schedule::Scheduler`] decides when), runs its backup (waiting for any other
//! backup, restore, forget or prune to finish), applies its keep rules (forget, then
//! prune), records the outcome in `state.redb` and runs the `after_backup` hook.
//! `peer schedule add/remove` rewrite `config.toml` and take effect at once.

use super::Inner;
use super::ops::{BackupJob, fail};
use crate::config::{Config, HooksConfig};
use crate::control::{ErrorKind, Failure, Reply, ScheduleInfo};
use crate::protocol::now;
use crate::schedule::{LastRun, Schedule, Scheduler};
use rand::RngExt;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{Notify, mpsc};

/// Longest sleep of the scheduling task, seconds: it looks at the wall clock again at
/// least this often, so a suspended machine or a changed clock cannot make it miss a run.
pub const SCHEDULER_TICK: u64 = 30;

/// The daemon's schedules and hooks, reloaded from config.toml when `peer schedule`
/// changes them.
#[derive(Default)]
pub(super) struct Scheduling {
    table: Mutex<Scheduler>,
    hooks: Mutex<HooksConfig>,
    /// Wakes the scheduling task after a change.
    wake: Notify,
    /// One edit of config.toml at a time.
    editing: tokio::sync::Mutex<()>,
}

fn jitter(max: u64) -> u64 {
    rand::rng().random_range(0..=max)
}

impl Scheduling {
    fn table(&self) -> MutexGuard<'_, Scheduler> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads the schedules and hooks of `config`, with the last runs from the state.
    pub(super) fn load(&self, config: &Config, lasts: &BTreeMap<String, LastRun>) {
        self.table().load(&config.schedules, lasts, now(), &mut jitter);
        *self.hooks.lock().unwrap_or_else(|p| p.into_inner()) = config.hooks.clone();
        self.wake.notify_one();
    }
}

impl Inner {
    /// Every schedule with its last and next run.
    pub(super) fn schedule_list(&self) -> Vec<ScheduleInfo> {
        let t = self.scheduling.table();
        t.entries()
            .map(|e| ScheduleInfo { spec: e.spec.clone(), last: e.last.clone(), next: e.next, running: e.running })
            .collect()
    }

    /// Runs due schedules until the daemon stops.
    pub(super) async fn schedule_loop(self: Arc<Self>) {
        loop {
            let t = now();
            let started: Vec<Schedule> = {
                let mut table = self.scheduling.table();
                let due = table.due(t);
                due.iter().filter_map(|n| table.start(n)).collect()
            };
            for spec in started {
                // A run is work (it gets the shutdown grace); its end wakes this loop.
                let inner = self.clone();
                self.life.spawn(async move {
                    let (tx, _rx) = mpsc::channel(1);
                    inner.clone().run_schedule(&tx, spec).await;
                    inner.scheduling.wake.notify_one();
                });
            }
            let next = self.scheduling.table().next_due();
            let wait = next.map(|n| n.saturating_sub(now())).unwrap_or(SCHEDULER_TICK).clamp(1, SCHEDULER_TICK);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(wait)) => {}
                _ = self.scheduling.wake.notified() => {}
            }
        }
    }

    /// Marks schedule `name` running and returns it, or the reply that says why not
    /// (unknown, or running already).
    pub(super) fn start_schedule(&self, name: &str) -> Result<Schedule, Failure> {
        let mut table = self.scheduling.table();
        if table.get(name).is_none() {
            return Err(Failure::new(
                ErrorKind::NotFound,
                format!("no schedule is named '{name}'; see 'peer schedule'"),
            ));
        }
        table.start(name).ok_or_else(|| Failure::new(ErrorKind::Busy, format!("schedule '{name}' is running now")))
    }

    /// `peer schedule run NAME`: runs it now and answers with its backup's outcome.
    pub(super) async fn schedule_run_now(self: Arc<Self>, tx: &mpsc::Sender<Reply>, name: &str) -> Reply {
        match self.start_schedule(name) {
            Ok(spec) => self.run_schedule(tx, spec).await,
            Err(f) => Reply::Error(f),
        }
    }

    /// One run of a schedule that [`Scheduler::start`] marked running: waits for the busy
    /// lock, backs up, applies the keep rules, records the outcome, runs the hook.
    pub(super) async fn run_schedule(self: Arc<Self>, tx: &mpsc::Sender<Reply>, spec: Schedule) -> Reply {
        let started = now();
        tracing::info!("schedule '{}': backup of {} paths starts", spec.name, spec.paths.len());
        let (reply, retention_error) = {
            let _guard = self.busy.lock().await;
            let job = BackupJob {
                paths: spec.paths.clone(),
                copies: spec.copies,
                exclude: spec.exclude.clone(),
                erasure: spec.erasure,
                lock_secs: spec.lock_secs(),
            };
            let reply = self.clone().backup_locked(tx, job).await;
            let retention = match &reply {
                Reply::Backup(_) if !spec.keep.is_empty() => self.clone().apply_keep(&spec).await,
                _ => None,
            };
            (reply, retention)
        };
        let mut run = LastRun { started, finished: now(), ..Default::default() };
        match &reply {
            Reply::Backup(s) => {
                run.snapshot = s.snapshot.clone();
                let mut problems: Vec<String> = Vec::new();
                if s.error_count > 0 {
                    problems.push(format!("{} files could not be read", s.error_count));
                }
                if let Some(e) = &s.head.head_error {
                    problems.push(format!("head not published: {e}"));
                }
                problems.extend(retention_error);
                run.error = problems.join("; ");
                tracing::info!("schedule '{}': snapshot {} saved", spec.name, &s.snapshot[..s.snapshot.len().min(16)]);
            }
            Reply::Error(f) => {
                run.error = f.message.clone();
                tracing::warn!("schedule '{}' failed: {}", spec.name, f.message);
            }
            _ => run.error = "unexpected outcome".into(),
        }
        let recorded = self.scheduling.table().finish(&spec.name, run, &mut jitter);
        if let Some(run) = recorded {
            let name = spec.name.clone();
            self.persist("a schedule's run", move |s| s.set_schedule_run(&name, &run)).await;
        }
        self.scheduling.wake.notify_one();
        self.after_backup(Some(&spec.name), &reply);
        reply
    }

    /// Forget by the schedule's keep rules (its own snapshots only), then prune if
    /// anything was forgotten. Returns what went wrong, if anything.
    async fn apply_keep(self: Arc<Self>, spec: &Schedule) -> Option<String> {
        let only: Vec<String> = spec.paths.iter().map(|p| p.display().to_string()).collect();
        match self.forget_locked(&spec.keep, false, Some(only)).await {
            Reply::Forget(f) if f.remove.is_empty() => None,
            Reply::Forget(_) => match self.prune_locked(false).await {
                Reply::Prune(p) if p.errors.is_empty() => None,
                Reply::Prune(p) => Some(format!("prune: {}", p.errors.join("; "))),
                Reply::Error(e) => Some(format!("prune: {}", e.message)),
                _ => Some("prune: unexpected outcome".into()),
            },
            Reply::Error(e) => Some(format!("forget: {}", e.message)),
            _ => Some("forget: unexpected outcome".into()),
        }
    }

    /// Runs the `after_backup` hook, if any, on a backup's outcome, in the background.
    pub(super) fn after_backup(&self, schedule: Option<&str>, reply: &Reply) {
        let env = crate::hooks::backup_env(schedule, reply);
        let result = env.iter().find(|(k, _)| *k == "PEER_RESULT").map(|(_, v)| v.as_str()).unwrap_or("failure");
        crate::metrics::Metrics::count(&self.metrics.backups, result);
        self.run_hook(env);
    }

    /// Runs the `after_backup` hook command, if one is set, with `env`, in the background.
    pub(super) fn run_hook(&self, env: Vec<(&'static str, String)>) {
        let hooks = self.scheduling.hooks.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if hooks.after_backup.trim().is_empty() {
            return;
        }
        let secs = if hooks.timeout_secs == 0 { crate::hooks::DEFAULT_TIMEOUT_SECS } else { hooks.timeout_secs };
        self.life.spawn(async move {
            match crate::hooks::run(&hooks.after_backup, &env, Duration::from_secs(secs)).await {
                Ok(()) => tracing::info!("after_backup hook done"),
                Err(e) => tracing::warn!("after_backup hook: {e}"),
            }
        });
    }

    /// `peer schedule add`: adds `spec` to config.toml (replacing one of the same name).
    pub(super) async fn schedule_add(&self, spec: Schedule) -> Reply {
        if let Err(e) = spec.validate() {
            return fail(ErrorKind::Usage, e);
        }
        self.edit_schedules(move |list| {
            list.retain(|s| s.name != spec.name);
            list.push(spec);
            Ok(())
        })
        .await
    }

    /// `peer schedule remove`: removes schedule `name` from config.toml and its runs.
    pub(super) async fn schedule_remove(&self, name: String) -> Reply {
        let n = name.clone();
        let reply = self
            .edit_schedules(move |list| {
                let before = list.len();
                list.retain(|s| s.name != n);
                if list.len() == before {
                    return Err(Failure::new(
                        ErrorKind::NotFound,
                        format!("no schedule is named '{n}'; see 'peer schedule'"),
                    ));
                }
                Ok(())
            })
            .await;
        if matches!(reply, Reply::Ok) {
            self.persist("a removed schedule", move |s| s.remove_schedule_run(&name)).await;
        }
        reply
    }

    /// Changes the schedules of config.toml and loads the result.
    async fn edit_schedules(
        &self,
        f: impl FnOnce(&mut Vec<Schedule>) -> Result<(), Failure> + Send + 'static,
    ) -> Reply {
        let config = match self.edit_config(move |c| f(&mut c.schedules)).await {
            Ok(c) => c,
            Err(f) => return Reply::Error(f),
        };
        match self.db(|s| s.schedule_runs()).await {
            Ok(lasts) => self.scheduling.load(&config, &lasts),
            Err(e) => return Reply::Error(e.into()),
        }
        Reply::Ok
    }

    /// Changes config.toml (read again, so hand edits are kept) and saves it atomically,
    /// one edit at a time; returns the new configuration. The daemon's own `config` is
    /// what it started with: callers load the parts that take effect at once.
    pub(super) async fn edit_config(
        &self,
        f: impl FnOnce(&mut Config) -> Result<(), Failure> + Send + 'static,
    ) -> Result<Config, Failure> {
        let _one = self.scheduling.editing.lock().await;
        let path = self.home.config_file();
        let edited = tokio::task::spawn_blocking(move || {
            let mut config = Config::load_existing(&path).map_err(|e| Failure::new(ErrorKind::Local, e.to_string()))?;
            f(&mut config)?;
            config.save(&path).map_err(|e| Failure::new(ErrorKind::Usage, e.to_string()))?;
            Ok::<_, Failure>(config)
        })
        .await;
        match edited {
            Ok(r) => r,
            Err(e) => Err(Failure::new(ErrorKind::Local, e.to_string())),
        }
    }
}
