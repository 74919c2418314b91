//! Retention policies for `peer forget`, with restic's semantics (restic `forget`
//! documentation, "Removing snapshots according to a policy"): snapshots are taken newest
//! first; `--keep-last n` keeps the n newest; `--keep-daily n` keeps the newest snapshot of
//! each of the n most recent days that have one, and likewise per ISO week and per month.
//! A snapshot any rule keeps is kept. Days, weeks and months are in local time. `forget`
//! applies the rules to each group of snapshots of one host and one set of paths
//! ([`keep_grouped`]), as restic does by default.

use chrono::{Datelike, Local, TimeZone};
use serde::{Deserialize, Serialize};

/// How many snapshots each rule keeps; 0 disables a rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// The n newest snapshots.
    pub last: u32,
    /// The newest snapshot of each of the n most recent days with one.
    pub daily: u32,
    /// The newest snapshot of each of the n most recent ISO weeks with one.
    pub weekly: u32,
    /// The newest snapshot of each of the n most recent months with one.
    pub monthly: u32,
}

impl Policy {
    /// True when no rule is set (which `forget` refuses: it would remove everything).
    pub fn is_empty(&self) -> bool {
        self.last == 0 && self.daily == 0 && self.weekly == 0 && self.monthly == 0
    }
}

/// The calendar buckets of a time (seconds since the Unix epoch), local time:
/// (day, ISO week, month), each as a comparable number.
fn buckets(secs: u64) -> (i64, i64, i64) {
    let t = Local.timestamp_opt(i64::try_from(secs).unwrap_or(i64::MAX), 0).single().unwrap_or_default();
    let d = t.date_naive();
    let w = d.iso_week();
    (
        i64::from(d.year()) * 1000 + i64::from(d.ordinal()),
        i64::from(w.year()) * 100 + i64::from(w.week()),
        i64::from(d.year()) * 100 + i64::from(d.month()),
    )
}

/// Which snapshots `policy` keeps. `times` are the snapshots' times (seconds), in any
/// order, oldest first on equal times; the result has one flag per input, true = keep.
pub fn keep(times: &[u64], policy: &Policy) -> Vec<bool> {
    let mut order: Vec<usize> = (0..times.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse((times[i], i)));
    let mut out = vec![false; times.len()];
    let mut left = [policy.daily, policy.weekly, policy.monthly];
    let mut last_bucket: [Option<i64>; 3] = [None; 3];
    for (rank, &i) in order.iter().enumerate() {
        if (rank as u64) < u64::from(policy.last) {
            out[i] = true;
        }
        let (d, w, m) = buckets(times[i]);
        for (k, b) in [d, w, m].into_iter().enumerate() {
            if left[k] > 0 && last_bucket[k] != Some(b) {
                last_bucket[k] = Some(b);
                left[k] -= 1;
                out[i] = true;
            }
        }
    }
    out
}

/// [`keep`] applied within each group of snapshots with the same host and paths, as
/// restic groups by default (`--group-by host,paths`): a rule never removes the only
/// snapshot of another folder. `snaps`: (time, host, paths) in any order; returns whether
/// each is kept, in the same order.
pub fn keep_grouped(snaps: &[(u64, &str, &[String])], policy: &Policy) -> Vec<bool> {
    let mut groups: std::collections::HashMap<(&str, &[String]), Vec<usize>> = Default::default();
    for (i, (_, host, paths)) in snaps.iter().enumerate() {
        groups.entry((host, paths)).or_default().push(i);
    }
    let mut out = vec![false; snaps.len()];
    for members in groups.values() {
        let times: Vec<u64> = members.iter().map(|&i| snaps[i].0).collect();
        for (&i, k) in members.iter().zip(keep(&times, policy)) {
            out[i] = k;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86400;

    fn noon(day: u64) -> u64 {
        // Noon local time of day `day` after 2026-01-01 (a Thursday), so that an hour or
        // two of time zone never moves a snapshot to another day.
        let base = Local.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).single().unwrap().timestamp() as u64;
        base + day * DAY
    }

    #[test]
    fn last_keeps_the_newest() {
        let t: Vec<u64> = (0..5).map(|i| noon(0) + i * 60).collect();
        assert_eq!(keep(&t, &Policy { last: 2, ..Default::default() }), [false, false, false, true, true]);
    }

    #[test]
    fn daily_keeps_the_newest_of_each_day() {
        // two snapshots a day for four days
        let t: Vec<u64> = (0..4).flat_map(|d| [noon(d), noon(d) + 3600]).collect();
        let k = keep(&t, &Policy { daily: 3, ..Default::default() });
        assert_eq!(k, [false, false, false, true, false, true, false, true]);
    }

    #[test]
    fn weekly_monthly_and_union_of_rules() {
        // one snapshot a day for 70 days
        let t: Vec<u64> = (0..70).map(noon).collect();
        let weekly = keep(&t, &Policy { weekly: 2, ..Default::default() });
        assert_eq!(weekly.iter().filter(|k| **k).count(), 2);
        assert!(weekly[69]); // the newest is the newest of its week
        let monthly = keep(&t, &Policy { monthly: 3, ..Default::default() });
        // 2026-01-31 (day 30), 2026-02-28 (day 58), and the newest (day 69, in March)
        assert_eq!(monthly.iter().enumerate().filter(|(_, k)| **k).map(|(i, _)| i).collect::<Vec<_>>(), [30, 58, 69]);
        let both = keep(&t, &Policy { last: 1, monthly: 3, ..Default::default() });
        assert_eq!(both, monthly);
        assert!(Policy::default().is_empty());
        assert_eq!(keep(&t, &Policy::default()).iter().filter(|k| **k).count(), 0);
    }

    #[test]
    fn keep_last_applies_per_host_and_paths() {
        let (a, b) = (vec!["/home/me/photos".to_string()], vec!["/home/me/mail".to_string()]);
        let snaps: Vec<(u64, &str, &[String])> =
            vec![(100, "laptop", &a), (200, "laptop", &a), (150, "laptop", &b), (300, "desktop", &a)];
        let p = Policy { last: 1, ..Default::default() };
        // The only snapshot of mail and the only one from the desktop stay.
        assert_eq!(keep_grouped(&snaps, &p), vec![false, true, true, true]);
    }
}
