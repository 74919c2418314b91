//! `peer demo [PATH]`: the main job on one machine. Starts a local network of real daemons
//! (see [`crate::localnet`]), backs up PATH from the first with `--copies`, stops
//! `copies - 1` of the other peers, restores into a fresh directory and verifies every
//! file's bytes, mode and mtime.

use super::{CliError, CliResult};
use crate::localnet::{LocalNet, compare_trees};
use std::path::PathBuf;
use std::time::Duration;

/// Arguments of `peer demo`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Folder to back up. Default: /usr/share/doc, or the current directory.
    path: Option<PathBuf>,
    /// Peers in the local network.
    #[arg(long, default_value_t = 5)]
    peers: usize,
    /// Copies of each pack.
    #[arg(long, default_value_t = 3)]
    copies: usize,
}

/// Runs the demo and prints what it did; exit code 1 if anything differs.
pub fn run(a: Args) -> CliResult {
    let path = match a.path {
        Some(p) => p,
        None if std::path::Path::new("/usr/share/doc").is_dir() => PathBuf::from("/usr/share/doc"),
        None => std::env::current_dir()?,
    };
    let path = std::path::absolute(&path)?;
    if a.copies == 0 || a.peers <= a.copies {
        return Err("--peers must exceed --copies, and --copies must be at least 1".into());
    }
    let exe = std::env::current_exe()?;
    let dir = tempfile::Builder::new().prefix("peer-demo-").tempdir()?;
    println!("demo: starting {} peers under {}", a.peers, dir.path().display());
    // Each peer offers enough for every copy of the folder (uncompressed, with room to
    // spare) but no more than its share of the free disk.
    let size = crate::backup::scan_size(&path);
    let free = crate::provider::free_space(dir.path())?;
    let offer = (4 * a.copies as u64 * size).max(1 << 30).min(free / (a.peers as u64 + 1));
    if offer < size {
        return Err(format!(
            "not enough free disk under {} for {} peers to hold {}",
            dir.path().display(),
            a.peers,
            path.display()
        )
        .into());
    }
    let mut net = LocalNet::start(&exe, dir.path(), a.peers, offer, |_, _| {})?;
    net.wait_connected(a.peers - 1, Duration::from_secs(60))?;
    println!("demo: backing up {} with --copies {}", path.display(), a.copies);
    let status = net.cmd(0, &["backup", &path.to_string_lossy(), "--copies", &a.copies.to_string()]).status()?;
    if !status.success() {
        return Err("demo: backup failed".into());
    }
    // Lose copies-1 of the other peers: every pack still has a copy.
    for i in 1..a.copies {
        net.kill(i);
        println!("demo: stopped peer {i}");
    }
    let target = dir.path().join("restored");
    let status = net.cmd(0, &["restore", "latest", "--target", &target.to_string_lossy()]).status()?;
    if !status.success() {
        return Err("demo: restore failed".into());
    }
    let name = path.file_name().map(PathBuf::from).unwrap_or_else(|| PathBuf::from("root"));
    let diffs = compare_trees(&path, &target.join(name));
    if !diffs.is_empty() {
        for d in diffs.iter().take(20) {
            eprintln!("demo: differs: {d}");
        }
        return Err(CliError {
            message: format!("demo: {} differences between {} and the restore", diffs.len(), path.display()),
            code: 1,
        });
    }
    println!(
        "demo: OK: {} restored byte for byte (contents, modes, mtimes, symlinks) after losing {} of {} peers",
        path.display(),
        a.copies - 1,
        a.peers
    );
    Ok(())
}
