//! The command line: one module per subcommand, each with its clap arguments and `run()`.
//!
//! Exit codes (as restic): 0 success, 1 error, 2 usage error (clap), 3 restore incomplete
//! (some files could not be restored). Errors print as `peer: <message>` on stderr.

mod backup;
mod check;
mod contracts;
mod daemon;
mod dashboard;
mod demo;
mod forget;
mod friends;
mod heads;
mod init;
mod key;
mod ls;
mod offer;
mod prune;
mod restore;
mod schedule;
mod snapshots;
mod status;
mod test_restore;

use crate::config::Home;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit code: the backup or restore finished, but some files could not be read or restored.
pub const EXIT_PARTIAL: u8 = 3;
/// Exit code of wrong usage: clap's own for a bad flag, and ours for a request the daemon
/// refuses as given ([`crate::control::ErrorKind::Usage`]).
pub const EXIT_USAGE: u8 = 2;
/// Exit code of a backup that saved its snapshot but could not publish the head that
/// lets a recovery from the key find it (protocol.md §5.8).
pub const EXIT_UNPUBLISHED: u8 = 4;

/// `peer`: decentralized peer-to-peer backup. Give storage, get storage.
#[derive(Parser, Debug)]
#[command(name = "peer", version, about)]
pub struct Cli {
    /// The peer's home: key, config, state and store. Default: $XDG_DATA_HOME/peer.
    #[arg(long, global = true, env = "PEER_HOME")]
    pub home: Option<PathBuf>,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create the identity and configuration of a new peer.
    Init(init::Args),
    /// Export the identity (recovery phrase or key file).
    Key(key::Args),
    /// Run the node in the foreground until SIGINT/SIGTERM.
    Daemon,
    /// Set how much disk this peer gives others (e.g. 50GB, 500MiB, 0 to stop).
    OfferStorage(offer::Args),
    /// Back up files and directories to other peers.
    Backup(backup::Args),
    /// Restore a snapshot.
    Restore(restore::Args),
    /// List snapshots.
    Snapshots(snapshots::Args),
    /// Show this peer, its connections, offer and contracts.
    Status(status::Args),
    /// List contracts (as client and as provider) with bytes used, granted and expiry.
    Contracts(contracts::Args),
    /// Remove snapshots by a retention policy (restic's --keep-* rules); see `prune`.
    Forget(forget::Args),
    /// Delete the packs no snapshot needs at their holders, giving the space back.
    Prune(prune::Args),
    /// Check that every pack of every snapshot is held; --read-data downloads and verifies.
    Check(check::Args),
    /// List one directory of a snapshot.
    Ls(ls::Args),
    /// Backups the daemon runs by itself: list, add, run now, remove.
    Schedule(schedule::Args),
    /// Print the local web dashboard's URL (with its access token).
    Dashboard,
    /// Restore a random sample of the latest snapshot now, check it, and remove it.
    TestRestore(test_restore::Args),
    /// List the heads your providers keep (the latest and locked earlier ones).
    Heads(heads::Args),
    /// Friends: invite codes, and contracts with friends only (contracts.only_friends).
    Friends(friends::Args),
    /// Start a local network of peers, back up a folder, restore it and verify it.
    Demo(demo::Args),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write man pages: peer(1) to stdout, or one page per command into DIR with --dir.
    Man {
        /// Write peer.1, peer-backup.1, … into this directory (created if missing).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// An error for the user, with the exit code to use.
#[derive(Debug)]
pub struct CliError {
    /// Message printed after `peer: `.
    pub message: String,
    /// Exit code.
    pub code: u8,
}

impl<E: std::fmt::Display> From<E> for CliError {
    fn from(e: E) -> Self {
        CliError { message: e.to_string(), code: 1 }
    }
}

/// Result of a subcommand.
pub type CliResult = Result<(), CliError>;

/// Parses arguments, sets up logging (`PEER_LOG`, default `warn,peer=info` for the daemon),
/// runs the command and maps the outcome to an exit code.
pub fn main() -> ExitCode {
    // `peer status | head`: a reader that goes away ends the command quietly, as in any
    // Unix tool, instead of a panic report about the closed pipe.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.contains("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(0);
        }
        default_hook(info)
    }));
    let cli = Cli::parse();
    match &cli.command {
        Command::Completions { shell } => return completions(*shell),
        Command::Man { dir } => return man(dir.as_deref()),
        _ => {}
    }
    let default_log = if matches!(cli.command, Command::Daemon) { "warn,peer=info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("PEER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_log));
    // Under systemd, journald stamps each line itself (it sets JOURNAL_STREAM for services).
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        fmt.without_time().with_ansi(false).init();
    } else {
        fmt.init();
    }
    let result = Home::resolve(cli.home.clone()).map_err(CliError::from).and_then(|home| match cli.command {
        Command::Init(a) => init::run(&home, a),
        Command::Daemon => daemon::run(home),
        Command::Key(a) => key::run(&home, a),
        Command::OfferStorage(a) => offer::run(&home, a),
        Command::Backup(a) => backup::run(&home, a),
        Command::Restore(a) => restore::run(&home, a),
        Command::Snapshots(a) => snapshots::run(&home, a),
        Command::Status(a) => status::run(&home, a),
        Command::Contracts(a) => contracts::run(&home, a),
        Command::Forget(a) => forget::run(&home, a),
        Command::Prune(a) => prune::run(&home, a),
        Command::Check(a) => check::run(&home, a),
        Command::Schedule(a) => schedule::run(&home, a),
        Command::Ls(a) => ls::run(&home, a),
        Command::Dashboard => dashboard::run(&home),
        Command::TestRestore(a) => test_restore::run(&home, a),
        Command::Friends(a) => friends::run(&home, a),
        Command::Heads(a) => heads::run(&home, a),
        Command::Demo(a) => demo::run(a),
        Command::Completions { .. } | Command::Man { .. } => Ok(()),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if !e.message.is_empty() {
                eprintln!("peer: {}", e.message);
            }
            ExitCode::from(e.code)
        }
    }
}

/// `peer completions SHELL`: the completion script, from the same definitions as the parser.
fn completions(shell: clap_complete::Shell) -> ExitCode {
    use clap::CommandFactory;
    clap_complete::generate(shell, &mut Cli::command(), "peer", &mut std::io::stdout());
    ExitCode::SUCCESS
}

/// `peer man [--dir DIR]`: man pages from the same definitions as the parser (clap_mangen).
fn man(dir: Option<&std::path::Path>) -> ExitCode {
    use clap::CommandFactory;
    let cmd = Cli::command();
    let result = match dir {
        Some(d) => std::fs::create_dir_all(d)
            .and_then(|_| clap_mangen::generate_to(cmd, d))
            .map_err(|e| format!("{}: {e}", d.display())),
        None => clap_mangen::Man::new(cmd).render(&mut std::io::stdout()).map_err(|e| e.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peer: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a future on a small single-threaded runtime (for commands that talk to the daemon).
fn block_on<T>(f: impl std::future::Future<Output = T>) -> Result<T, CliError> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    Ok(rt.block_on(f))
}

/// Sends one request to the daemon and returns its final reply, feeding progress to `on_progress`.
fn call(
    home: &Home,
    req: crate::control::Request,
    on_progress: impl FnMut(&crate::control::Progress),
) -> Result<crate::control::Reply, CliError> {
    answer(block_on(crate::control::call(&home.dir, &home.control_socket(), &req, on_progress))??)
}

/// A reply as the command's result: a failure's kind decides the exit code.
fn answer(reply: crate::control::Reply) -> Result<crate::control::Reply, CliError> {
    match reply {
        crate::control::Reply::Error(f) => {
            let code = if f.kind == crate::control::ErrorKind::Usage { EXIT_USAGE } else { 1 };
            Err(CliError { message: f.message, code })
        }
        r => Ok(r),
    }
}

/// Sends `req` to the daemon showing its progress: a bar (bytes, rate, ETA) on a terminal,
/// cleared when done; status lines with `--json`; nothing otherwise.
fn call_with_progress(
    home: &Home,
    req: crate::control::Request,
    json: bool,
) -> Result<crate::control::Reply, CliError> {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    let bar = ProgressBar::with_draw_target(
        Some(0),
        if json { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr() },
    );
    let bytes = ProgressStyle::with_template("{msg:>8} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}")
        .map(|s| s.progress_chars("=> "))
        .ok();
    let waiting = ProgressStyle::with_template("{spinner} {msg}").ok();
    let result = call(home, req, |p: &crate::control::Progress| {
        if json {
            let line = serde_json::json!({"message_type": "status", "phase": p.phase, "bytes_done": p.done, "bytes_total": p.total});
            println!("{line}");
            return;
        }
        match (p.total, &waiting, &bytes) {
            (0, Some(w), _) => {
                bar.set_style(w.clone());
                bar.set_message(if p.phase == "contracts" { "finding providers".to_string() } else { p.phase.clone() });
                bar.tick();
            }
            (_, _, Some(b)) => {
                bar.set_style(b.clone());
                bar.set_message(p.phase.clone());
                bar.set_length(p.total);
                bar.set_position(p.done);
            }
            _ => {}
        }
    });
    bar.finish_and_clear();
    result
}

/// Prints `v` as one line of JSON with `message_type` set.
fn print_json<T: serde::Serialize>(kind: &str, v: &T) -> CliResult {
    let mut j = serde_json::to_value(v)?;
    if let Some(o) = j.as_object_mut() {
        o.insert("message_type".into(), kind.into());
    }
    println!("{j}");
    Ok(())
}

/// The first 16 hex digits of an id (the whole text if shorter).
fn short(id: &str) -> &str {
    id.get(..16).unwrap_or(id)
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) from seconds since the Unix epoch.
fn utc(secs: u64) -> String {
    chrono::DateTime::from_timestamp(i64::try_from(secs).unwrap_or(i64::MAX), 0)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| format!("{secs} s"))
}

/// Human-readable bytes in SI units (`1.2 GB`, 10^9 bytes), as sizes are given.
fn human(b: u64) -> String {
    bytesize::ByteSize(b).display().si().to_string()
}
