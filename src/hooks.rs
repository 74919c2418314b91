//! Hooks (`[hooks]` in config.toml): a shell command the daemon runs after each backup,
//! scheduled or not, with the outcome in environment variables, so that users can wire
//! notifications (a healthchecks ping, a mail, a desktop notice) as restic users do around
//! their backup command.
//!
//! The variables ([`backup_env`]):
//!
//! | variable | value |
//! |---|---|
//! | `PEER_EVENT` | `backup`, or `test_restore` for a failed test restore ([`drill_env`]) |
//! | `PEER_RESULT` | `success`, `partial` (some files unreadable), `unpublished` (snapshot saved, head not published) or `failure` |
//! | `PEER_SCHEDULE` | the schedule's name; empty for `peer backup` |
//! | `PEER_SNAPSHOT` | the new snapshot's id (hex); empty on failure |
//! | `PEER_FILES`, `PEER_FILES_READ` | files in the snapshot, files read |
//! | `PEER_BYTES_READ`, `PEER_BYTES_NEW`, `PEER_BYTES_UPLOADED` | bytes |
//! | `PEER_UNREADABLE` | files that could not be read |
//! | `PEER_SECONDS` | wall time of the backup |
//! | `PEER_ERROR` | what went wrong; empty on success |
//!
//! A hook runs through `sh -c` with stdin closed, at most `timeout_secs` (then it is
//! killed); its output and exit status go to the daemon's log. Its failure changes nothing.

use crate::control::Reply;
use std::time::Duration;

/// Default seconds a hook may run.
pub const DEFAULT_TIMEOUT_SECS: u64 = 600;

/// The environment of the `after_backup` hook for a backup that ended with `reply`
/// (`Reply::Backup` or `Reply::Error`), run by schedule `schedule` or by hand (`None`).
pub fn backup_env(schedule: Option<&str>, reply: &Reply) -> Vec<(&'static str, String)> {
    let mut env = vec![("PEER_EVENT", "backup".to_string()), ("PEER_SCHEDULE", schedule.unwrap_or("").to_string())];
    match reply {
        Reply::Backup(s) => {
            let (result, error) = if let Some(e) = &s.head.head_error {
                ("unpublished", format!("snapshot saved, but not yet published for recovery: {e}"))
            } else if s.error_count > 0 {
                ("partial", format!("{} files could not be read", s.error_count))
            } else {
                ("success", String::new())
            };
            env.extend([
                ("PEER_RESULT", result.to_string()),
                ("PEER_SNAPSHOT", s.snapshot.clone()),
                ("PEER_FILES", s.files.to_string()),
                ("PEER_FILES_READ", s.files_read.to_string()),
                ("PEER_BYTES_READ", s.bytes_read.to_string()),
                ("PEER_BYTES_NEW", s.bytes_new.to_string()),
                ("PEER_BYTES_UPLOADED", s.bytes_uploaded.to_string()),
                ("PEER_UNREADABLE", s.error_count.to_string()),
                ("PEER_SECONDS", format!("{:.1}", s.seconds)),
                ("PEER_ERROR", error),
            ]);
        }
        other => {
            let error = match other {
                Reply::Error(f) => f.message.clone(),
                _ => "unexpected outcome".to_string(),
            };
            env.extend([("PEER_RESULT", "failure".to_string()), ("PEER_SNAPSHOT", String::new())]);
            for k in ["PEER_FILES", "PEER_FILES_READ", "PEER_BYTES_READ", "PEER_BYTES_NEW", "PEER_BYTES_UPLOADED"] {
                env.push((k, "0".to_string()));
            }
            env.extend([("PEER_UNREADABLE", "0".into()), ("PEER_SECONDS", "0".into()), ("PEER_ERROR", error)]);
        }
    }
    env
}

/// The environment of the hook for a failed test restore ([`crate::drill`]):
/// `PEER_EVENT=test_restore`, `PEER_RESULT=failure`, the snapshot, the files and bytes
/// sampled, and the error.
pub fn drill_env(r: &crate::drill::DrillReport) -> Vec<(&'static str, String)> {
    vec![
        ("PEER_EVENT", "test_restore".into()),
        ("PEER_SCHEDULE", String::new()),
        ("PEER_RESULT", if r.ok() { "success" } else { "failure" }.into()),
        ("PEER_SNAPSHOT", r.snapshot.clone()),
        ("PEER_FILES", r.sample.len().to_string()),
        ("PEER_FILES_READ", r.sample.len().to_string()),
        ("PEER_BYTES_READ", r.bytes.to_string()),
        ("PEER_BYTES_NEW", "0".into()),
        ("PEER_BYTES_UPLOADED", "0".into()),
        ("PEER_UNREADABLE", "0".into()),
        ("PEER_SECONDS", format!("{:.1}", r.seconds)),
        ("PEER_ERROR", r.error.clone()),
    ]
}

/// Why a hook command failed.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// `sh` could not be started, or waiting for it failed.
    #[error("cannot run the hook: {0}")]
    Start(#[from] std::io::Error),
    /// It ran past its timeout and was killed.
    #[error("the hook ran longer than {0} s and was killed")]
    Timeout(u64),
    /// It exited with a failure.
    #[error("the hook {status}: {stderr}")]
    Failed {
        /// How it exited.
        status: std::process::ExitStatus,
        /// The last non-empty line of its stderr, at most 500 characters.
        stderr: String,
    },
}

/// Runs `command` through `sh -c` with `env` added, for at most `timeout`. Errors: it could
/// not start, it ran too long (killed), or it exited non-zero (its stderr's last line).
pub async fn run(command: &str, env: &[(&'static str, String)], timeout: Duration) -> Result<(), HookError> {
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(r) => r?,
        Err(_) => return Err(HookError::Timeout(timeout.as_secs())),
    };
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").chars().take(500).collect::<String>();
    Err(HookError::Failed { status: out.status, stderr: last })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{BackupSummary, ErrorKind, Failure, HeadState};

    fn summary() -> BackupSummary {
        BackupSummary {
            snapshot: "ab12".into(),
            files: 3,
            files_read: 2,
            bytes_read: 100,
            bytes_new: 50,
            packs: 1,
            index_packs: 1,
            locked_until: 0,
            lock_error: None,
            head: HeadState::default(),
            bytes_uploaded: 150,
            seconds: 1.25,
            errors: vec![],
            error_count: 0,
        }
    }

    fn get<'a>(env: &'a [(&'static str, String)], k: &str) -> &'a str {
        env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str()).unwrap_or("<unset>")
    }

    #[test]
    fn the_environment_tells_success_partial_unpublished_and_failure_apart() {
        let ok = backup_env(Some("photos"), &Reply::Backup(summary()));
        assert_eq!(get(&ok, "PEER_RESULT"), "success");
        assert_eq!(get(&ok, "PEER_SCHEDULE"), "photos");
        assert_eq!(get(&ok, "PEER_SNAPSHOT"), "ab12");
        assert_eq!(get(&ok, "PEER_BYTES_UPLOADED"), "150");
        assert_eq!(get(&ok, "PEER_ERROR"), "");
        let mut s = summary();
        s.error_count = 2;
        assert_eq!(get(&backup_env(None, &Reply::Backup(s.clone())), "PEER_RESULT"), "partial");
        s.head.head_error = Some("no holder took it".into());
        let un = backup_env(None, &Reply::Backup(s));
        assert_eq!(get(&un, "PEER_RESULT"), "unpublished");
        assert!(get(&un, "PEER_ERROR").contains("no holder took it"));
        let f = backup_env(None, &Reply::Error(Failure::new(ErrorKind::Unavailable, "only 0 of 3 providers")));
        assert_eq!(get(&f, "PEER_RESULT"), "failure");
        assert_eq!(get(&f, "PEER_SNAPSHOT"), "");
        assert_eq!(get(&f, "PEER_ERROR"), "only 0 of 3 providers");
    }

    #[tokio::test]
    async fn a_hook_sees_its_environment_and_its_failure_is_reported() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        let cmd = format!("echo \"$PEER_RESULT $PEER_SNAPSHOT\" > '{}'", out.display());
        run(&cmd, &backup_env(None, &Reply::Backup(summary())), Duration::from_secs(10)).await.unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "success ab12\n");
        match run("echo broken >&2; exit 3", &[], Duration::from_secs(10)).await {
            Err(HookError::Failed { status, stderr }) => {
                assert_eq!((status.code(), stderr.as_str()), (Some(3), "broken"))
            }
            other => panic!("{other:?}"),
        }
        let e = run("sleep 5", &[], Duration::from_millis(100)).await.unwrap_err();
        assert!(matches!(e, HookError::Timeout(0)), "{e}");
    }
}
