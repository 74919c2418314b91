//! Scheduled backups (`[[schedule]]` in config.toml, `peer schedule`): what a schedule is,
//! when it runs next, and how failed runs back off. Plain data and arithmetic on Unix
//! seconds, no I/O: the daemon's scheduling task (`daemon/scheduling.rs`) asks [`Scheduler`]
//! what is due, runs it, and reports the outcome back.
//!
//! Timing follows what systemd timers and cron users expect:
//! - `every = "1h"` (humantime syntax: `30m`, `6h`, `1d`): a new schedule runs within
//!   [`FIRST_RUN_SPREAD`] seconds, then `every` after each run's start, plus jitter of up to
//!   a tenth of the interval (at most [`MAX_JITTER`] seconds), as systemd's
//!   `RandomizedDelaySec`, so peers started together do not all back up at once;
//! - `cron = "0 3 * * *"`: five-field cron syntax (minute, hour, day of month, month, day
//!   of week; `@daily` and friends too), in local time, plus up to [`MAX_JITTER`] seconds;
//!   a run missed while the daemon was down runs once at start, like `Persistent=true`;
//! - a failed run is retried after 1, 2, 4 … minutes, never later than the regular next
//!   run and at most an hour apart;
//! - runs of one schedule never overlap: a schedule is not due while it runs.

use crate::repo::erasure::Scheme;
use crate::retention::Policy;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Seconds within which a schedule that never ran runs first (uniformly spread).
pub const FIRST_RUN_SPREAD: u64 = 60;
/// Most seconds of random delay added to a regular run.
pub const MAX_JITTER: u64 = 300;
/// First retry delay after a failed run, seconds; doubled after each further failure.
pub const RETRY_FIRST: u64 = 60;
/// Longest retry delay, seconds.
pub const RETRY_MAX: u64 = 3600;

/// One `[[schedule]]` entry: a backup the daemon runs by itself, then forget and prune by
/// its keep rules.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// Unique name: letters, digits, `-`, `_` and `.`, at most 64 bytes.
    pub name: String,
    /// Absolute paths to back up.
    pub paths: Vec<PathBuf>,
    /// Interval between runs, humantime syntax (`1h`, `30m`, `1d`). Exactly one of
    /// `every` and `cron` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<String>,
    /// Five-field cron expression in local time (`0 3 * * *`: 03:00 every day).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// Distinct holders per pack (ignored with `erasure`). Default 3.
    #[serde(default = "default_copies")]
    pub copies: u32,
    /// Erasure scheme `K+M` instead of copies.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "scheme_text")]
    pub erasure: Option<Scheme>,
    /// Exclude patterns (gitignore syntax).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// Retention lock of each run's snapshot, humantime (`30d`): holders refuse to delete
    /// it before then (protocol.md §5.9).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock: Option<String>,
    /// Keep rules applied after each successful run to this schedule's snapshots (those
    /// of the same host and paths), followed by a prune; none set = keep everything.
    #[serde(default, skip_serializing_if = "Policy::is_empty")]
    pub keep: Policy,
}

fn default_copies() -> u32 {
    3
}

/// `erasure = "4+2"` in TOML.
mod scheme_text {
    use crate::repo::erasure::Scheme;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Scheme>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(x) => s.serialize_str(&x.to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Scheme>, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map(Some).map_err(serde::de::Error::custom)
    }
}

/// When a schedule runs, parsed from `every` or `cron`.
#[derive(Clone, Debug)]
pub enum When {
    /// A fixed interval, seconds (at least 1).
    Every(u64),
    /// A cron expression (local time).
    Cron(Box<croner::Cron>),
}

impl Schedule {
    /// Checks the entry: a valid name, absolute paths, exactly one valid `every` or
    /// `cron`, at least one copy. Errors name the schedule and the field.
    pub fn validate(&self) -> Result<When, String> {
        let n = &self.name;
        let name_ok = !n.is_empty()
            && n.len() <= 64
            && n.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !name_ok {
            return Err(format!("schedule name '{n}' must be 1 to 64 letters, digits, '-', '_' or '.'"));
        }
        if self.paths.is_empty() {
            return Err(format!("schedule '{n}': give at least one path"));
        }
        if let Some(p) = self.paths.iter().find(|p| !p.is_absolute()) {
            return Err(format!("schedule '{n}': path {} is not absolute", p.display()));
        }
        if self.copies == 0 {
            return Err(format!("schedule '{n}': copies must be at least 1"));
        }
        if let Some(l) = &self.lock {
            let d = humantime::parse_duration(l)
                .map_err(|e| format!("schedule '{n}': lock = '{l}' is not a duration such as 30d: {e}"))?;
            if d.as_secs() > crate::protocol::MAX_LOCK_SECS {
                return Err(format!("schedule '{n}': lock is longer than providers accept (400 days)"));
            }
        }
        match (&self.every, &self.cron) {
            (Some(e), None) => {
                let d = humantime::parse_duration(e).map_err(|err| {
                    format!("schedule '{n}': every = '{e}' is not a duration such as 1h or 30m: {err}")
                })?;
                if d.as_secs() == 0 {
                    return Err(format!("schedule '{n}': every must be at least 1s"));
                }
                Ok(When::Every(d.as_secs()))
            }
            (None, Some(c)) => c
                .parse::<croner::Cron>()
                .map(|c| When::Cron(Box::new(c)))
                .map_err(|err| format!("schedule '{n}': cron = '{c}' is not a cron expression: {err}")),
            _ => Err(format!("schedule '{n}': set exactly one of every (e.g. \"1h\") and cron (e.g. \"0 3 * * *\")")),
        }
    }

    /// The retention lock in seconds (0: none; a bad value was refused by `validate`).
    pub fn lock_secs(&self) -> u64 {
        self.lock.as_deref().and_then(|l| humantime::parse_duration(l).ok()).map(|d| d.as_secs()).unwrap_or(0)
    }

    /// `every 1h` or `cron 0 3 * * *`, for listings.
    pub fn when_text(&self) -> String {
        match (&self.every, &self.cron) {
            (Some(e), _) => format!("every {e}"),
            (_, Some(c)) => format!("cron {c}"),
            _ => String::new(),
        }
    }
}

/// Checks a list of schedules: each valid, names unique.
pub fn validate_all(list: &[Schedule]) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for s in list {
        s.validate()?;
        if !seen.insert(s.name.as_str()) {
            return Err(format!("two schedules are named '{}'", s.name));
        }
    }
    Ok(())
}

/// The outcome of one run, kept in `state.redb` so listings survive a restart.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct LastRun {
    /// Start, Unix seconds.
    pub started: u64,
    /// End, Unix seconds.
    pub finished: u64,
    /// The snapshot made (hex id); empty when the run failed.
    #[serde(default)]
    pub snapshot: String,
    /// Why the run failed, or why it is incomplete (files that could not be read, a head
    /// not published, a failed forget or prune); empty on full success.
    #[serde(default)]
    pub error: String,
    /// Failed runs in a row, this one included (0 after a success).
    #[serde(default)]
    pub failures: u32,
}

impl LastRun {
    /// Whether the run made its snapshot.
    pub fn ok(&self) -> bool {
        !self.snapshot.is_empty()
    }
}

/// Seconds of random delay in `[0, max]`, from `rand` (the caller's choice: a fixed
/// value in tests).
pub type Jitter<'a> = &'a mut dyn FnMut(u64) -> u64;

/// The next run strictly after a run that started at `started`, ignoring failures.
fn regular_next(when: &When, started: u64, jitter: Jitter) -> u64 {
    match when {
        When::Every(d) => started.saturating_add(*d).saturating_add(jitter((*d / 10).min(MAX_JITTER))),
        When::Cron(c) => cron_next(c, started).saturating_add(jitter(MAX_JITTER)),
    }
}

/// The first time after `after` (Unix seconds) that `c` matches, local time; far future if none.
fn cron_next(c: &croner::Cron, after: u64) -> u64 {
    use chrono::TimeZone;
    let Some(t) = chrono::Local.timestamp_opt(i64::try_from(after).unwrap_or(i64::MAX), 0).single() else {
        return u64::MAX;
    };
    match c.find_next_occurrence(&t, false) {
        Ok(n) => u64::try_from(n.timestamp()).unwrap_or(u64::MAX),
        Err(_) => u64::MAX,
    }
}

/// When to run next (Unix seconds), given the last run (if any) and the time now. A
/// regular time that passed while the daemon was down is due at once (made up once).
pub fn next_run(when: &When, last: Option<&LastRun>, now: u64, jitter: Jitter) -> u64 {
    let Some(last) = last else {
        return match when {
            When::Every(d) => now + jitter((*d).min(FIRST_RUN_SPREAD)),
            When::Cron(c) => cron_next(c, now).saturating_add(jitter(MAX_JITTER)),
        };
    };
    let regular = regular_next(when, last.started, jitter);
    if last.failures == 0 {
        return regular;
    }
    let shift = last.failures.saturating_sub(1).min(16);
    let retry = last.finished.saturating_add((RETRY_FIRST << shift).min(RETRY_MAX));
    retry.min(regular)
}

/// One schedule as the daemon keeps it: its entry, when it is due, whether it runs.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The entry from config.
    pub spec: Schedule,
    /// Its parsed timing.
    pub when: When,
    /// The last run's outcome, if it ever ran.
    pub last: Option<LastRun>,
    /// When it is due next, Unix seconds.
    pub next: u64,
    /// A run is going on.
    pub running: bool,
}

/// The daemon's schedules, by name.
#[derive(Debug, Default)]
pub struct Scheduler {
    entries: BTreeMap<String, Entry>,
}

impl Scheduler {
    /// Replaces the schedules with `list` (already validated), keeping the last run of
    /// each that stays and taking `lasts` (from the state) for the others.
    pub fn load(&mut self, list: &[Schedule], lasts: &BTreeMap<String, LastRun>, now: u64, jitter: Jitter) {
        let mut old = std::mem::take(&mut self.entries);
        for spec in list {
            let Ok(when) = spec.validate() else { continue };
            let kept = old.remove(&spec.name).filter(|e| e.spec == *spec);
            let entry = match kept {
                Some(e) => e,
                None => {
                    let last = lasts.get(&spec.name).cloned();
                    let next = next_run(&when, last.as_ref(), now, jitter);
                    Entry { spec: spec.clone(), when, last, next, running: false }
                }
            };
            self.entries.insert(spec.name.clone(), entry);
        }
    }

    /// Every schedule, by name.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    /// One schedule.
    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.entries.get(name)
    }

    /// Names of the schedules due at `now` that are not running.
    pub fn due(&self, now: u64) -> Vec<String> {
        self.entries.values().filter(|e| !e.running && e.next <= now).map(|e| e.spec.name.clone()).collect()
    }

    /// The earliest time a schedule that is not running is due; `None` if there is none.
    pub fn next_due(&self) -> Option<u64> {
        self.entries.values().filter(|e| !e.running).map(|e| e.next).min()
    }

    /// Marks `name` running and returns its entry; `None` if it is unknown or already
    /// running (runs of one schedule never overlap).
    pub fn start(&mut self, name: &str) -> Option<Schedule> {
        let e = self.entries.get_mut(name)?;
        if e.running {
            return None;
        }
        e.running = true;
        Some(e.spec.clone())
    }

    /// Records the end of a run of `name` and plans the next one. `run.failures` is filled
    /// in here from the previous run. Returns the record to persist.
    pub fn finish(&mut self, name: &str, mut run: LastRun, jitter: Jitter) -> Option<LastRun> {
        let e = self.entries.get_mut(name)?;
        e.running = false;
        let before = e.last.as_ref().map(|l| l.failures).unwrap_or(0);
        run.failures = if run.ok() { 0 } else { before + 1 };
        e.next = next_run(&e.when, Some(&run), run.finished, jitter);
        e.last = Some(run.clone());
        Some(run)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, every: Option<&str>, cron: Option<&str>) -> Schedule {
        Schedule {
            name: name.into(),
            paths: vec!["/data".into()],
            every: every.map(Into::into),
            cron: cron.map(Into::into),
            copies: 2,
            erasure: None,
            exclude: vec![],
            lock: None,
            keep: Policy::default(),
        }
    }

    #[test]
    fn entries_are_checked_and_errors_name_the_field() {
        assert!(matches!(spec("daily", Some("1h"), None).validate(), Ok(When::Every(3600))));
        assert!(matches!(spec("n", None, Some("0 3 * * *")).validate(), Ok(When::Cron(_))));
        let e = spec("x", Some("soon"), None).validate().unwrap_err();
        assert!(e.contains("'soon'"), "{e}");
        let e = spec("x", None, Some("99 * * * *")).validate().unwrap_err();
        assert!(e.contains("cron"), "{e}");
        assert!(spec("x", Some("1h"), Some("@daily")).validate().unwrap_err().contains("exactly one"));
        assert!(spec("x", None, None).validate().unwrap_err().contains("exactly one"));
        assert!(spec("a b", Some("1h"), None).validate().unwrap_err().contains("name"));
        let mut rel = spec("r", Some("1h"), None);
        rel.paths = vec!["data".into()];
        assert!(rel.validate().unwrap_err().contains("not absolute"));
        let e = validate_all(&[spec("a", Some("1h"), None), spec("a", Some("2h"), None)]).unwrap_err();
        assert!(e.contains("two schedules"), "{e}");
    }

    #[test]
    fn toml_form_round_trips() {
        let mut s = spec("photos", Some("6h"), None);
        s.erasure = Some("4+2".parse().unwrap());
        s.keep.daily = 7;
        let text = toml::to_string(&s).unwrap();
        assert!(text.contains("erasure = \"4+2\""), "{text}");
        assert!(text.contains("daily = 7"), "{text}");
        assert_eq!(toml::from_str::<Schedule>(&text).unwrap(), s);
    }

    #[test]
    fn runs_follow_the_interval_with_bounded_jitter_and_back_off_on_failure() {
        let when = When::Every(3600);
        let mut max = |m: u64| m;
        let mut zero = |_: u64| 0;
        // never ran: within the first-run spread
        assert_eq!(next_run(&when, None, 1000, &mut max), 1000 + FIRST_RUN_SPREAD);
        assert_eq!(next_run(&when, None, 1000, &mut zero), 1000);
        // after a success: the interval from the start, plus at most a tenth of it
        let ok = LastRun { started: 1000, finished: 1100, snapshot: "ab".into(), ..Default::default() };
        assert_eq!(next_run(&when, Some(&ok), 1100, &mut zero), 4600);
        assert_eq!(next_run(&when, Some(&ok), 1100, &mut max), 4600 + 300);
        // failures: 1, 2, 4 minutes after the end, never later than the regular run
        let fail = |n: u32| LastRun { started: 1000, finished: 1100, failures: n, ..Default::default() };
        assert_eq!(next_run(&when, Some(&fail(1)), 1100, &mut zero), 1160);
        assert_eq!(next_run(&when, Some(&fail(2)), 1100, &mut zero), 1220);
        assert_eq!(next_run(&when, Some(&fail(3)), 1100, &mut zero), 1340);
        assert_eq!(next_run(&when, Some(&fail(30)), 1100, &mut zero), 4600);
    }

    #[test]
    fn cron_runs_at_the_next_matching_minute() {
        let When::Cron(c) = spec("c", None, Some("*/15 * * * *")).validate().unwrap() else { panic!("not cron") };
        let t = 1_800_000_000; // 2027-01-15 08:00:00 UTC: a multiple of 15 minutes in every zone offset of whole quarter hours
        let next = next_run(&When::Cron(c), None, t + 1, &mut |_| 0);
        assert_eq!(next, t + 900);
    }

    #[test]
    fn a_running_schedule_is_not_due_and_a_failure_counts_up() {
        let mut s = Scheduler::default();
        let list = [spec("a", Some("1h"), None), spec("b", Some("2h"), None)];
        s.load(&list, &BTreeMap::new(), 1000, &mut |_| 0);
        assert_eq!(s.due(1000), vec!["a".to_string(), "b".to_string()]);
        assert!(s.start("a").is_some());
        assert!(s.start("a").is_none(), "runs of one schedule never overlap");
        assert_eq!(s.due(1000), vec!["b".to_string()]);
        let failed = LastRun { started: 1000, finished: 1010, error: "no providers".into(), ..Default::default() };
        assert_eq!(s.finish("a", failed.clone(), &mut |_| 0).unwrap().failures, 1);
        assert!(s.start("a").is_some());
        assert_eq!(s.finish("a", failed, &mut |_| 0).unwrap().failures, 2);
        assert_eq!(s.get("a").unwrap().next, 1010 + 120);
        // reloading with the same entry keeps its state; a changed one starts afresh
        s.load(&list, &BTreeMap::new(), 2000, &mut |_| 0);
        assert_eq!(s.get("a").unwrap().last.as_ref().unwrap().failures, 2);
        s.load(&[spec("a", Some("3h"), None)], &BTreeMap::new(), 2000, &mut |_| 0);
        assert!(s.get("a").unwrap().last.is_none() && s.get("b").is_none());
    }
}
