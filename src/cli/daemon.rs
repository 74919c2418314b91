//! `peer daemon`: run the node in the foreground.

use super::CliResult;
use crate::config::Home;

/// Starts a multi-threaded runtime and runs [`crate::daemon::run`] until a signal.
pub fn run(home: Home) -> CliResult {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(crate::daemon::run(home))?;
    Ok(())
}
