//! `peer backup PATH... --copies N [--exclude PATTERN]...`.

use super::{CliError, CliResult, human, print_json};
use crate::config::Home;
use crate::control::{Reply, Request};
use std::path::PathBuf;

/// Arguments of `peer backup`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Files and directories to back up.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    #[command(flatten)]
    placement: Placement,
    /// Print JSON lines (status lines, then a summary) instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    limits: crate::control::RateLimits,
}

/// Where and how a backup's packs go, shared by `peer backup` and `peer schedule add`.
#[derive(clap::Args, Debug)]
pub struct Placement {
    /// Distinct peers that hold each pack.
    #[arg(long, default_value_t = 3, conflicts_with = "erasure")]
    pub copies: u32,
    /// Instead of copies: cut each pack into K+M Reed-Solomon shards on K+M distinct peers,
    /// any K of which restore it (e.g. 4+2: 1.5× the size, survives losing any 2 peers).
    #[arg(long, value_name = "K+M")]
    pub erasure: Option<crate::repo::erasure::Scheme>,
    /// Leave out paths matching PATTERN (gitignore syntax; repeatable). A `.peerignore`
    /// file in any backed-up directory excludes the same way for its directory and below.
    #[arg(long, value_name = "PATTERN")]
    pub exclude: Vec<String>,
    /// Retention lock (e.g. 30d): the providers refuse to delete this snapshot's data, and
    /// keep the heads that list it, until then, whoever asks and whatever the key signs
    /// (at most 400 days).
    #[arg(long, value_name = "DURATION", value_parser = parse_lock)]
    pub lock: Option<u64>,
}

/// Asks the daemon to back up the paths (made absolute here) and prints the summary.
pub fn run(home: &Home, a: Args) -> CliResult {
    let mut paths = Vec::new();
    for p in &a.paths {
        let abs = std::path::absolute(p).map_err(|e| format!("{}: {e}", p.display()))?;
        std::fs::symlink_metadata(&abs).map_err(|e| format!("{}: {e}", abs.display()))?;
        paths.push(abs);
    }
    let reply = super::call_with_progress(
        home,
        Request::Backup {
            paths,
            copies: a.placement.copies,
            exclude: a.placement.exclude,
            erasure: a.placement.erasure,
            limits: a.limits,
            lock_secs: a.placement.lock.unwrap_or(0),
        },
        a.json,
    )?;
    let Reply::Backup(s) = reply else {
        return Err(CliError { message: "unexpected reply from the daemon".into(), code: 1 });
    };
    report(&s, a.json)
}

/// Prints a backup's summary (text or JSON) and maps it to the exit code: 4 when the head
/// is not published, 3 when files could not be read.
pub(super) fn report(s: &crate::control::BackupSummary, json: bool) -> CliResult {
    if json {
        print_json("summary", s)?;
    } else {
        print_summary(s);
    }
    if let Some(e) = &s.lock_error {
        return Err(CliError {
            message: format!("snapshot saved, but its retention lock is not confirmed everywhere: {e}"),
            code: 1,
        });
    }
    if let Some(e) = &s.head.head_error {
        return Err(CliError {
            message: format!(
                "snapshot saved, but not yet published for recovery: {e}. A recovery from the key \
                 would not find it until a later publication succeeds (retried each audit round; \
                 see 'peer status')"
            ),
            code: super::EXIT_UNPUBLISHED,
        });
    }
    if s.error_count > 0 {
        return Err(CliError {
            message: format!("snapshot saved, but {} files could not be read", s.error_count),
            code: super::EXIT_PARTIAL,
        });
    }
    Ok(())
}

/// A `--lock` duration in seconds (humantime: `30d`, `12h`), at most 400 days.
pub(super) fn parse_lock(s: &str) -> Result<u64, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("'{s}' is not a duration such as 30d: {e}"))?;
    if d.as_secs() == 0 || d.as_secs() > crate::protocol::MAX_LOCK_SECS {
        return Err("a lock lasts from 1 s to 400 days".into());
    }
    Ok(d.as_secs())
}

fn print_summary(s: &crate::control::BackupSummary) {
    for e in &s.errors {
        eprintln!("peer: skipped {e}");
    }
    println!("snapshot {} saved", super::short(&s.snapshot));
    println!("  files:     {} ({} read, {} unchanged)", s.files, s.files_read, s.files - s.files_read.min(s.files));
    println!("  read:      {}", human(s.bytes_read));
    println!("  new:       {} after dedup and compression", human(s.bytes_new));
    println!("  uploaded:  {} in {} packs and {} index packs", human(s.bytes_uploaded), s.packs, s.index_packs);
    if s.head.head > 0 && s.head.head_error.is_none() {
        println!("  head:      {} (recoverable from the key)", s.head.head);
    }
    if s.locked_until > 0 && s.lock_error.is_none() {
        println!("  locked:    until {} UTC at every holder", super::utc(s.locked_until));
    }
    println!("  time:      {:.1} s", s.seconds);
}
