//! `peer restore [SNAPSHOT|latest] [--target DIR]`.

use super::{CliError, CliResult, EXIT_PARTIAL, human, print_json};
use crate::config::Home;
use crate::control::{Reply, Request};
use std::path::PathBuf;

/// Arguments of `peer restore`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Snapshot id (or a unique prefix), or `latest`.
    #[arg(default_value = "latest")]
    snapshot: String,
    /// Restore under this directory (each backed-up path as DIR/<its name>). Default: the original paths.
    #[arg(long)]
    target: Option<PathBuf>,
    /// Replace existing files that differ (otherwise they are kept and listed).
    #[arg(long)]
    overwrite: bool,
    /// Restore only PATH and what is below it (repeatable): an original absolute path, or
    /// a path starting with a backed-up directory's name, as in `photos/2024`.
    #[arg(long, value_name = "PATH")]
    include: Vec<PathBuf>,
    /// Restore from the state that head SEQ describes ('peer heads' lists the heads your
    /// providers keep): its snapshots come back into this repository, and `latest` is
    /// its newest snapshot. For getting back what you had before an attack.
    #[arg(long, value_name = "SEQ")]
    head: Option<u64>,
    /// Print JSON lines instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    limits: crate::control::RateLimits,
}

/// Asks the daemon to restore; exit code 3 when some files could not be restored, or
/// existing files that differ were kept (without `--overwrite`).
pub fn run(home: &Home, a: Args) -> CliResult {
    let target = a.target.map(|t| std::path::absolute(&t).map_err(|e| format!("{}: {e}", t.display()))).transpose()?;
    let req = Request::Restore {
        snapshot: Some(a.snapshot),
        target,
        overwrite: a.overwrite,
        include: a.include,
        limits: a.limits,
        head: a.head,
    };
    let Reply::Restore(s) = super::call_with_progress(home, req, a.json)? else {
        return Err(CliError { message: "unexpected reply from the daemon".into(), code: 1 });
    };
    if a.json {
        print_json("summary", &s)?;
    } else {
        for k in &s.skipped {
            eprintln!("peer: kept existing {k} (differs; use --overwrite to replace)");
        }
        for f in &s.failed {
            eprintln!("peer: could not restore {f}");
        }
        println!(
            "restored snapshot {}: {} files, {} directories, {} symlinks, {} in {:.1} s",
            super::short(&s.snapshot),
            s.files,
            s.dirs,
            s.symlinks,
            human(s.bytes),
            s.seconds
        );
    }
    if s.failed_count > 0 {
        return Err(CliError {
            message: format!("{} files could not be restored", s.failed_count),
            code: EXIT_PARTIAL,
        });
    }
    if s.skipped_count > 0 {
        return Err(CliError {
            message: format!(
                "{} existing files differ from the snapshot and were kept; restore with --overwrite to replace them",
                s.skipped_count
            ),
            code: EXIT_PARTIAL,
        });
    }
    Ok(())
}
