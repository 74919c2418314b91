//! `peer forget --keep-last N --keep-daily N --keep-weekly N --keep-monthly N [--dry-run]`.

use super::{CliError, CliResult, call, human, print_json};
use crate::config::Home;
use crate::control::{Reply, Request};
use crate::retention::Policy;

/// Arguments of `peer forget`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    keep: KeepArgs,
    /// Show what would be removed; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// restic's `--keep-*` rules, shared by `peer forget` and `peer schedule add`.
#[derive(clap::Args, Debug, Default)]
pub struct KeepArgs {
    /// Keep the N newest snapshots.
    #[arg(long, default_value_t = 0, value_name = "N")]
    keep_last: u32,
    /// Keep the newest snapshot of each of the last N days that have one (local time).
    #[arg(long, default_value_t = 0, value_name = "N")]
    keep_daily: u32,
    /// Keep the newest snapshot of each of the last N ISO weeks that have one.
    #[arg(long, default_value_t = 0, value_name = "N")]
    keep_weekly: u32,
    /// Keep the newest snapshot of each of the last N months that have one.
    #[arg(long, default_value_t = 0, value_name = "N")]
    keep_monthly: u32,
}

impl KeepArgs {
    /// The rules as a [`Policy`].
    pub fn policy(&self) -> Policy {
        Policy { last: self.keep_last, daily: self.keep_daily, weekly: self.keep_weekly, monthly: self.keep_monthly }
    }
}

/// Shows the plan (kept and removed snapshots) and applies it unless `--dry-run`.
pub fn run(home: &Home, a: Args) -> CliResult {
    let policy = a.keep.policy();
    let Reply::Forget(s) = call(home, Request::Forget { policy, dry_run: a.dry_run }, |_| {})? else {
        return Err(CliError { message: "unexpected reply from the daemon".into(), code: 1 });
    };
    if a.json {
        return print_json("summary", &s);
    }
    for (what, list) in [("keep", &s.keep), (if s.dry_run { "would remove" } else { "remove" }, &s.remove)] {
        println!("{what} {} snapshots:", list.len());
        for x in list {
            println!(
                "  {}  {}  {:>10}  {}",
                super::short(&x.id),
                super::utc(x.time),
                human(x.bytes),
                x.paths.join(", ")
            );
        }
    }
    if !s.dry_run && !s.remove.is_empty() {
        println!("run 'peer prune' to delete the data only they needed");
    }
    Ok(())
}
