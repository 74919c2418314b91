//! `peer prune [--dry-run]`.

use super::{CliError, CliResult, call, human, print_json};
use crate::config::Home;
use crate::control::{Reply, Request};

/// Arguments of `peer prune`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Show how much would be deleted; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Shows the plan (packs and bytes no snapshot needs) and deletes them unless `--dry-run`.
pub fn run(home: &Home, a: Args) -> CliResult {
    let Reply::Prune(s) = call(home, Request::Prune { dry_run: a.dry_run }, |_| {})? else {
        return Err(CliError { message: "unexpected reply from the daemon".into(), code: 1 });
    };
    if a.json {
        print_json("summary", &s)?;
    } else {
        println!("packs needed by snapshots: {}", s.packs_kept);
        println!("packs no snapshot needs:   {} ({})", s.packs_unused, human(s.bytes_unused));
        if s.dry_run {
            println!("dry run: nothing deleted");
        } else {
            println!("freed at holders:          {} (all copies)", human(s.bytes_freed));
        }
        for e in &s.errors {
            eprintln!("peer: {e}");
        }
    }
    if !s.errors.is_empty() {
        return Err(CliError { message: format!("{} holders could not be asked to delete", s.errors.len()), code: 1 });
    }
    Ok(())
}
