//! `peer ls [SNAPSHOT] [PATH] [--json]`: one directory of a snapshot, as restic's `ls`.

use super::{CliResult, call, human, print_json, utc};
use crate::config::Home;
use crate::control::{Reply, Request};

/// Arguments of `peer ls`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Snapshot id (or unique prefix), or `latest`.
    #[arg(default_value = "latest")]
    snapshot: String,
    /// An original absolute path inside the snapshot; none lists the backed-up paths.
    path: Option<std::path::PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Lists the directory.
pub fn run(home: &Home, a: Args) -> CliResult {
    let path = match &a.path {
        Some(p) => std::path::absolute(p).map_err(|e| format!("{}: {e}", p.display()))?.display().to_string(),
        None => String::new(),
    };
    let req = Request::Ls { snapshot: Some(a.snapshot), path };
    let Reply::Ls { snapshot, entries } = call(home, req, |_| {})? else {
        return Err("unexpected reply from the daemon".into());
    };
    if a.json {
        return print_json("ls", &serde_json::json!({"snapshot": snapshot, "entries": entries}));
    }
    for e in &entries {
        let size = if e.kind == "file" { human(e.size) } else { String::new() };
        let mark = if e.kind == "dir" { "/" } else { "" };
        println!("{:<7} {:o} {:>10}  {}  {}{mark}", e.kind, e.mode, size, utc(e.mtime), e.path);
    }
    Ok(())
}
