//! The control socket between the CLI and the daemon (`home/control.sock`, mode 0600).
//!
//! One request per connection. Frames are a 4-byte big-endian length then CBOR, at most
//! [`MAX_FRAME`] bytes (tokio-util's length-delimited codec, [`codec`]). The daemon answers
//! with zero or more [`Reply::Progress`] frames and then exactly one final frame.

use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UnixStream;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

/// Largest control frame, bytes.
pub const MAX_FRAME: u32 = 16 << 20;

/// A command for the daemon.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Request {
    /// Node, contract and storage status.
    Status,
    /// Set the bytes offered to others.
    Offer(u64),
    /// Back up paths (absolute) to `copies` distinct providers per pack.
    Backup {
        /// Absolute paths.
        paths: Vec<PathBuf>,
        /// Distinct holders per pack.
        copies: u32,
        /// Exclude patterns (gitignore syntax).
        #[serde(default)]
        exclude: Vec<String>,
        /// Erasure-code packs with this scheme instead of `copies` copies.
        #[serde(default)]
        erasure: Option<crate::repo::erasure::Scheme>,
        /// Bandwidth limits while this runs.
        #[serde(default)]
        limits: RateLimits,
        /// Retention lock, seconds (0: none, protocol.md §5.9).
        #[serde(default)]
        lock_secs: u64,
    },
    /// Restore a snapshot.
    Restore {
        /// Snapshot id or unique prefix; `None` = latest.
        snapshot: Option<String>,
        /// Restore under this directory; `None` = original paths.
        target: Option<PathBuf>,
        /// Replace existing files that differ.
        overwrite: bool,
        /// Restore only these paths (and what is below them); empty = everything.
        #[serde(default)]
        include: Vec<PathBuf>,
        /// Bandwidth limits while this runs.
        #[serde(default)]
        limits: RateLimits,
        /// Restore from the state head `head` describes (protocol.md §5.9) rather than the
        /// current one.
        #[serde(default)]
        head: Option<u64>,
    },
    /// List snapshots.
    Snapshots,
    /// Remove snapshots by a retention policy (`peer forget`).
    Forget {
        /// The rules.
        policy: crate::retention::Policy,
        /// Show the plan only.
        dry_run: bool,
    },
    /// Delete the packs no snapshot needs at their holders (`peer prune`).
    Prune {
        /// Show the plan only.
        dry_run: bool,
    },
    /// Check that every pack of every snapshot is held (`peer check`).
    Check {
        /// Also download every pack and verify every blob.
        read_data: bool,
    },
    /// One directory of a snapshot (`peer ls`, the dashboard's browser).
    Ls {
        /// Snapshot id or unique prefix; `None` = latest.
        snapshot: Option<String>,
        /// An original absolute path inside the snapshot; empty = the backed-up paths.
        path: String,
    },
    /// The dashboard's URL with its token (`peer dashboard`).
    Dashboard,
    /// Run a test restore now (`peer test-restore`).
    TestRestore,
    /// The heads this peer's providers keep (`peer heads`, protocol.md §5.9).
    Heads,
    /// This peer's invite code (`peer friends invite`).
    Invite,
    /// Add a friend from its invite code (`peer friends add`).
    FriendAdd {
        /// The code.
        code: String,
        /// A name for it; may be empty.
        name: String,
    },
    /// Remove a friend by PeerId or name (`peer friends remove`).
    FriendRemove(String),
    /// The friends (`peer friends`).
    Friends,
    /// The schedules with their last and next runs (`peer schedule`).
    Schedules,
    /// Add a schedule (or replace the one of the same name), written to config.toml.
    ScheduleAdd(crate::schedule::Schedule),
    /// Remove a schedule by name.
    ScheduleRemove(String),
    /// Run a schedule now, waiting for its outcome.
    ScheduleRun(String),
    /// End a contract now, telling the other side.
    Cancel {
        /// Contract id or a unique prefix.
        contract: String,
        /// Why (sent to the other side).
        reason: String,
    },
}

/// Progress of a long operation.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Progress {
    /// What is happening ("scanning", "contracts", "uploading", "restoring").
    pub phase: String,
    /// Bytes done.
    pub done: u64,
    /// Bytes in all (0 while unknown).
    pub total: u64,
}

/// Result of a backup.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BackupSummary {
    /// The new snapshot's id (hex).
    pub snapshot: String,
    /// Regular files in the snapshot.
    pub files: u64,
    /// Files whose content was read (not unchanged since the parent).
    pub files_read: u64,
    /// Bytes of file content read.
    pub bytes_read: u64,
    /// Bytes of new blobs after dedup and compression (stored form).
    pub bytes_new: u64,
    /// Data packs uploaded.
    pub packs: u64,
    /// Index packs uploaded (protocol.md §3.8): the index of the new packs.
    #[serde(default)]
    pub index_packs: u64,
    /// The snapshot's retention lock end, Unix seconds (0: none, protocol.md §5.9).
    #[serde(default)]
    pub locked_until: u64,
    /// Why the lock is not confirmed at every holder of every pack, if so.
    #[serde(default)]
    pub lock_error: Option<String>,
    /// The head that publishes this snapshot for recovery, or why it could not be
    /// published: the snapshot is stored, but a recovery from the key would not find it
    /// until a later publication succeeds.
    #[serde(flatten)]
    pub head: HeadState,
    /// Bytes sent to providers, all copies counted.
    pub bytes_uploaded: u64,
    /// Wall time, seconds.
    pub seconds: f64,
    /// Files that could not be read, with the reason (the first 1000).
    pub errors: Vec<String>,
    /// How many files could not be read.
    pub error_count: u64,
}

/// Result of a restore.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RestoreSummary {
    /// Snapshot restored (hex).
    pub snapshot: String,
    /// Files restored.
    pub files: u64,
    /// Directories restored.
    pub dirs: u64,
    /// Symlinks restored.
    pub symlinks: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Existing files that differ and were left alone (no `--overwrite`); the first 1000.
    pub skipped: Vec<String>,
    /// How many were left alone.
    pub skipped_count: u64,
    /// Files no holder could supply, or that failed to write; the first 1000.
    pub failed: Vec<String>,
    /// How many failed.
    pub failed_count: u64,
    /// Wall time, seconds.
    pub seconds: f64,
}

/// One snapshot in a listing.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// Id (hex).
    pub id: String,
    /// Seconds since the Unix epoch.
    pub time: u64,
    /// Host name.
    pub hostname: String,
    /// Paths backed up.
    pub paths: Vec<String>,
    /// Files.
    pub files: u64,
    /// Bytes of file content.
    pub bytes: u64,
}

/// How well one snapshot's packs are kept (protocol.md §5.5), in `peer status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SnapshotHealth {
    /// Snapshot id (hex).
    pub id: String,
    /// Packs it needs.
    pub packs: u64,
    /// Packs with at least their target number of live copies.
    pub full: u64,
    /// Packs with some live copies, fewer than their target.
    pub reduced: u64,
    /// Packs with no live copy.
    pub zero: u64,
    /// Why the count is incomplete (a tree not cached locally), empty when complete.
    pub note: String,
}

impl SnapshotInfo {
    /// The listing line of a snapshot.
    pub fn new(id: &crate::id::SnapshotId, s: &crate::repo::tree::Snapshot) -> Self {
        SnapshotInfo {
            id: id.to_string(),
            time: s.time,
            hostname: s.hostname.clone(),
            paths: s.paths.clone(),
            files: s.files,
            bytes: s.bytes,
        }
    }
}

/// A redundancy scheme in use, in `peer status` ([`crate::durability`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DurabilityInfo {
    /// `3 copies` or `erasure 4+2`.
    pub scheme: String,
    /// Packs stored this way.
    pub packs: u64,
    /// Bytes stored per byte of pack.
    pub overhead: f64,
    /// Probability that one pack is lost in a month without repair, at
    /// [`crate::durability::MONTHLY_CHURN`].
    pub monthly_loss: f64,
}

/// One contract in the status.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContractInfo {
    /// Id (hex).
    pub id: String,
    /// "client" (we store there) or "provider" (we store for them).
    pub role: String,
    /// The other side.
    pub peer: String,
    /// Bytes granted.
    pub bytes: u64,
    /// Bytes used.
    pub used: u64,
    /// End, seconds since the Unix epoch.
    pub expires: u64,
    /// When it ended early (a cancellation by either side, or failed audits), seconds since the Unix epoch.
    pub ended: Option<u64>,
    /// Why it ended early (empty while live).
    pub end_reason: String,
}

/// `peer status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusReport {
    /// Our PeerId.
    pub peer_id: String,
    /// Listen multiaddrs with `/p2p/<PeerId>`.
    pub listen: Vec<String>,
    /// Connected peers.
    pub connected: Vec<String>,
    /// `public`, `private` or `unknown`: whether others can dial us (AutoNAT v2,
    /// protocol.md §1.10).
    pub reachability: String,
    /// Our confirmed external multiaddrs.
    pub external_addrs: Vec<String>,
    /// PeerIds of the relays we hold reservations on.
    pub relays: Vec<String>,
    /// Every open connection: direct or relayed, and over which transport.
    pub connections: Vec<ConnectionInfo>,
    /// The network's size as estimated from our routing table (protocol.md §1.6).
    #[serde(default)]
    pub estimated_peers: u64,
    /// Our proposal shard, `<bits>/<prefix>` (protocol.md §1.6): proposals we publish go to
    /// its topic first.
    #[serde(default)]
    pub proposal_shard: String,
    /// Bytes offered to others.
    pub offered: u64,
    /// Bytes of the offer granted in contracts.
    pub granted: u64,
    /// Bytes others store here.
    pub used_by_others: u64,
    /// Bytes of our packs held at others, all copies counted.
    pub held_at_others: u64,
    /// Of those, the bytes of packs no snapshot needs (left by a failed or interrupted
    /// backup: the next backup reuses what it can, `peer prune` frees the rest); `None`
    /// while some snapshot's trees are not cached here.
    #[serde(default)]
    pub unreferenced_at_others: Option<u64>,
    /// Bytes of claims we hold for our providers: the reciprocal space we owe them
    /// (protocol.md §4.6).
    pub claims_held: u64,
    /// Bytes of our claims our clients acknowledged holding for us.
    pub claims_placed: u64,
    /// Contracts, both roles.
    pub contracts: Vec<ContractInfo>,
    /// Audit records of the peers holding our packs.
    pub audits: Vec<AuditInfo>,
    /// Copy health of every snapshot, oldest first.
    pub snapshots: Vec<SnapshotHealth>,
    /// True while a home made with `peer init --recover` is still looking for its head.
    pub recovering: bool,
    /// Each redundancy scheme in use, with its packs and their loss probability.
    pub durability: Vec<DurabilityInfo>,
    /// Index packs (protocol.md §3.8) the head names.
    #[serde(default)]
    pub index_packs: u64,
    /// The last head published, and why the latest state is not, if it is not (retried
    /// each audit round and after every change).
    #[serde(flatten)]
    pub head: HeadState,
    /// Scheduled backups with their last and next runs.
    #[serde(default)]
    pub schedules: Vec<ScheduleInfo>,
    /// The backup or restore running now, with its progress.
    #[serde(default)]
    pub activity: Option<Progress>,
    /// The last test restore, if one ran.
    #[serde(default)]
    pub test_restore: Option<crate::drill::DrillReport>,
    /// Providers with verified evidence of default (protocol.md §5.10): refused.
    #[serde(default)]
    pub defaulters: Vec<DefaulterInfo>,
}

/// Where publication for recovery stands (protocol.md §5.8): in JSON, the fields `head`
/// and `head_error` of the object that holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadState {
    /// Sequence number of the last head a provider took; 0 for none.
    #[serde(default)]
    pub head: u64,
    /// Why the latest state could not be published, if so.
    #[serde(default)]
    pub head_error: Option<String>,
}

/// A command's bandwidth limits (restic's `--limit-upload` / `--limit-download`): the
/// daemon holds everything it sends and receives to them while the command runs
/// (protocol.md §1.10).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, clap::Args)]
pub struct RateLimits {
    /// Limit what the daemon sends to this many KiB/s while this runs (0 = only the
    /// config's `network.limit_upload`); serving others counts too.
    #[arg(long = "limit-upload", value_name = "KiB/s", default_value_t = 0)]
    pub upload_kib: u64,
    /// Limit what the daemon receives to this many KiB/s while this runs (0 = only the
    /// config's `network.limit_download`).
    #[arg(long = "limit-download", value_name = "KiB/s", default_value_t = 0)]
    pub download_kib: u64,
}

/// One open connection in the status.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConnectionInfo {
    /// The remote PeerId.
    pub peer: String,
    /// Its multiaddr (a `/p2p-circuit` address when relayed).
    pub addr: String,
    /// Through a relay.
    pub relayed: bool,
    /// `tcp` or `quic`.
    pub transport: String,
}

/// One peer's audit record in the status.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuditInfo {
    /// The peer.
    pub peer: String,
    /// Audits passed.
    pub passes: u64,
    /// Audits failed.
    pub failures: u64,
    /// Score α/(α+β), 0..1.
    pub score: f64,
    /// "good", or "failed" once the score fell below `audit.min_score` (contracts ended).
    pub standing: String,
    /// The last failure's reason, if any.
    pub last_error: String,
    /// Seconds since the Unix epoch of the last pass (0 = never).
    pub last_pass: u64,
}

/// `peer forget`: what the policy keeps and removes, newest first.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ForgetSummary {
    /// Snapshots kept.
    pub keep: Vec<SnapshotInfo>,
    /// Snapshots removed (or that would be, with `--dry-run`).
    pub remove: Vec<SnapshotInfo>,
    /// True when nothing was changed.
    pub dry_run: bool,
}

/// `peer prune`: the packs no snapshot needs, and what deleting them freed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PruneSummary {
    /// Packs no snapshot needs that a retention lock keeps until it ends (§5.9); counted
    /// in `packs_kept`.
    #[serde(default)]
    pub packs_locked: u64,
    /// Packs some snapshot needs (kept).
    pub packs_kept: u64,
    /// Packs no snapshot needs.
    pub packs_unused: u64,
    /// Bytes of those packs, each counted once.
    pub bytes_unused: u64,
    /// Bytes freed at holders, all copies counted (0 with `--dry-run`).
    pub bytes_freed: u64,
    /// Holders that could not be asked, with why; their packs are deleted by a later prune.
    pub errors: Vec<String>,
    /// True when nothing was changed.
    pub dry_run: bool,
}

/// `peer check`: every pack every snapshot needs, challenged at each of its holders.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckSummary {
    /// Snapshots checked.
    pub snapshots: u64,
    /// Packs they need.
    pub packs: u64,
    /// Holder copies challenged.
    pub copies_checked: u64,
    /// Holder copies that proved possession.
    pub copies_ok: u64,
    /// Packs downloaded and verified blob by blob (`--read-data`).
    pub packs_read: u64,
    /// Everything wrong, one line each.
    pub problems: Vec<String>,
}

/// What kind of failure a request met; the CLI maps it to its exit code (README "Exit
/// codes"): [`ErrorKind::Usage`] → 2, every other kind → 1. Scripts can rely on the kind,
/// never on the wording of the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The request is wrong as given: a bad option value, a path or target that cannot
    /// be used, a bad pattern.
    Usage,
    /// What it names does not exist: a snapshot, a contract.
    NotFound,
    /// Another operation is running on the daemon, or the home is still recovering:
    /// try again later.
    Busy,
    /// The network cannot do it now: not enough providers, holders unreachable.
    Unavailable,
    /// This peer's rules refuse it: no storage offered (give to get), an offer larger
    /// than the disk.
    Refused,
    /// Local state or the disk failed.
    Local,
}

/// A failed request: its kind and a message that says what and how to fix it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    /// The kind, which decides the exit code.
    pub kind: ErrorKind,
    /// For people.
    pub message: String,
}

impl Failure {
    /// A failure of `kind` saying `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Failure { kind, message: message.into() }
    }
}

impl From<crate::state::StateError> for Failure {
    fn from(e: crate::state::StateError) -> Self {
        Failure::new(ErrorKind::Local, e.to_string())
    }
}

impl From<crate::restore::TreeError> for Failure {
    /// A failed state is `Local`; a tree that cannot be had is `Unavailable`.
    fn from(e: crate::restore::TreeError) -> Self {
        let kind = match &e {
            crate::restore::TreeError::State(_) => ErrorKind::Local,
            _ => ErrorKind::Unavailable,
        };
        Failure::new(kind, e.to_string())
    }
}

impl From<crate::backup::BackupError> for Failure {
    fn from(e: crate::backup::BackupError) -> Self {
        use crate::backup::BackupError as B;
        let kind = match &e {
            B::BadPath(_) => ErrorKind::Usage,
            B::Upload(_) | B::IndexUpload(_) => ErrorKind::Unavailable,
            B::TreeCache(_) | B::State(_) | B::Internal(_) => ErrorKind::Local,
        };
        Failure::new(kind, e.to_string())
    }
}

impl From<crate::restore::RestoreError> for Failure {
    fn from(e: crate::restore::RestoreError) -> Self {
        use crate::restore::RestoreError as R;
        let kind = match &e {
            R::NoSnapshot(_) => ErrorKind::NotFound,
            R::Metadata(crate::restore::TreeError::State(_)) => ErrorKind::Local,
            R::Metadata(_) | R::BadTree(_) => ErrorKind::Unavailable,
            R::Target(_) => ErrorKind::Usage,
            R::NotInSnapshot(_) => ErrorKind::NotFound,
            R::State(_) => ErrorKind::Local,
        };
        Failure::new(kind, e.to_string())
    }
}

/// A daemon reply frame.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Reply {
    /// Intermediate progress.
    Progress(Progress),
    /// Done, nothing to report.
    Ok,
    /// Failed: its kind and a message that says what and how to fix it.
    Error(Failure),
    /// Status.
    Status(Box<StatusReport>),
    /// Snapshot list.
    Snapshots(Vec<SnapshotInfo>),
    /// Backup finished.
    Backup(BackupSummary),
    /// Restore finished (maybe partially: see `failed`).
    Restore(RestoreSummary),
    /// Forget done (or planned).
    Forget(ForgetSummary),
    /// Prune done (or planned).
    Prune(PruneSummary),
    /// Check done.
    Check(CheckSummary),
    /// The schedules.
    Schedules(Vec<ScheduleInfo>),
    /// A directory of a snapshot: the snapshot's id and the entries.
    Ls {
        /// The snapshot listed (hex id).
        snapshot: String,
        /// Its entries, sorted by name.
        entries: Vec<LsEntry>,
    },
    /// The dashboard's URL, `http://127.0.0.1:PORT/#token=TOKEN`.
    Dashboard(String),
    /// A test restore's outcome.
    TestRestore(crate::drill::DrillReport),
    /// This peer's invite code.
    Invite(String),
    /// The heads the providers keep, newest first.
    Heads(Vec<HeadInfo>),
    /// The friends, and whether contracts are made with friends only.
    Friends {
        /// `contracts.only_friends`.
        only_friends: bool,
        /// Each friend.
        friends: Vec<FriendInfo>,
    },
    /// The offer is set; what the user should know about it
    /// ([`crate::contracts::offer_notes`]).
    Offered(Vec<String>),
}

/// A provider with verified evidence of default (`status --json`, protocol.md §5.10).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DefaulterInfo {
    /// Its PeerId.
    pub peer: String,
    /// When this peer learned it, Unix seconds.
    pub since: u64,
    /// The evidence: hex of CBOR `Evidence`, checkable by anyone.
    pub evidence: String,
}

/// One head kept by this peer's providers (`peer heads`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct HeadInfo {
    /// Its sequence number.
    pub seq: u64,
    /// When it was made, Unix seconds.
    pub time: u64,
    /// Snapshots it lists.
    pub snapshots: u64,
    /// Its retention lock end, Unix seconds (0: none).
    pub lock_until: u64,
    /// Providers that hold it.
    pub holders: u64,
}

/// One friend (`peer friends`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FriendInfo {
    /// The entry of config.toml.
    #[serde(flatten)]
    pub friend: crate::friends::Friend,
    /// An open connection to it now.
    pub connected: bool,
    /// Live contracts with it, both roles.
    pub contracts: u64,
}

/// One entry of a snapshot directory.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LsEntry {
    /// Its name (lossy UTF-8).
    pub name: String,
    /// Its original absolute path.
    pub path: String,
    /// `file`, `dir`, `symlink` or `fifo`.
    pub kind: String,
    /// Bytes (files).
    pub size: u64,
    /// Modification time, Unix seconds.
    pub mtime: u64,
    /// Unix permission bits.
    pub mode: u32,
}

/// One schedule with its last and next run (`peer schedule`, `status --json`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ScheduleInfo {
    /// The entry as in config.toml.
    #[serde(flatten)]
    pub spec: crate::schedule::Schedule,
    /// The last run, if it ever ran.
    pub last: Option<crate::schedule::LastRun>,
    /// When it runs next, Unix seconds (while a run goes on: when it was due).
    pub next: u64,
    /// A run is going on now.
    pub running: bool,
}

/// Errors talking to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No daemon listens on the home's socket.
    #[error("no daemon is running for {0}; start one with 'peer daemon'")]
    NoDaemon(String),
    /// The connection broke or a frame was malformed.
    #[error("control socket: {0}")]
    Io(#[from] std::io::Error),
}

/// The control socket's framing: a 4-byte big-endian length, then that many bytes, at
/// most [`MAX_FRAME`]; a longer frame is an `InvalidData` error on reading and
/// `InvalidInput` on writing, before anything is sent.
pub fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder().length_field_length(4).big_endian().max_frame_length(MAX_FRAME as usize).new_codec()
}

/// The reading half of a control connection, framed by [`codec`].
pub type FrameReader<R> = FramedRead<R, LengthDelimitedCodec>;
/// The writing half of a control connection, framed by [`codec`].
pub type FrameWriter<W> = FramedWrite<W, LengthDelimitedCodec>;

/// Both halves of a control connection, framed.
pub fn framed(
    s: UnixStream,
) -> (FrameReader<tokio::net::unix::OwnedReadHalf>, FrameWriter<tokio::net::unix::OwnedWriteHalf>) {
    let (rd, wr) = s.into_split();
    (FramedRead::new(rd, codec()), FramedWrite::new(wr, codec()))
}

/// Writes one frame: `msg` as CBOR.
pub async fn write_frame<T: Serialize>(w: &mut FrameWriter<impl AsyncWrite + Unpin>, msg: &T) -> std::io::Result<()> {
    let body = crate::protocol::to_cbor(msg);
    if body.len() > MAX_FRAME as usize {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "control frame too large"));
    }
    w.send(bytes::Bytes::from(body)).await
}

/// Reads one frame; `Ok(None)` at a clean end of stream, an error at an end inside a frame,
/// a frame over [`MAX_FRAME`] or one that is not the CBOR of a `T`.
pub async fn read_frame<T: for<'de> Deserialize<'de>>(
    r: &mut FrameReader<impl AsyncRead + Unpin>,
) -> std::io::Result<Option<T>> {
    let Some(body) = r.next().await.transpose()? else { return Ok(None) };
    ciborium::from_reader(&body[..])
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))
}

/// Sends `req` to the daemon of `home` and calls `on_progress` for each progress frame;
/// returns the final reply.
pub async fn call(
    home: &Path,
    socket: &Path,
    req: &Request,
    mut on_progress: impl FnMut(&Progress),
) -> Result<Reply, ControlError> {
    let s = UnixStream::connect(socket).await.map_err(|_| ControlError::NoDaemon(home.display().to_string()))?;
    let (mut rd, mut wr) = framed(s);
    write_frame(&mut wr, req).await?;
    loop {
        match read_frame::<Reply>(&mut rd).await? {
            Some(Reply::Progress(p)) => on_progress(&p),
            Some(r) => return Ok(r),
            None => {
                return Err(ControlError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the daemon closed the connection without an answer",
                )));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn frames_round_trip_and_bad_ones_are_errors() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let (mut w, mut r) = (FramedWrite::new(a, codec()), FramedRead::new(b, codec()));
        write_frame(&mut w, &Request::Offer(7)).await.unwrap();
        write_frame(&mut w, &Request::Status).await.unwrap();
        drop(w);
        assert!(matches!(read_frame::<Request>(&mut r).await.unwrap(), Some(Request::Offer(7))));
        assert!(matches!(read_frame::<Request>(&mut r).await.unwrap(), Some(Request::Status)));
        assert!(read_frame::<Request>(&mut r).await.unwrap().is_none(), "a clean end");

        // The length prefix is 4 bytes, big-endian: the old hand-written format.
        let (mut a, b) = tokio::io::duplex(1 << 16);
        let body = crate::protocol::to_cbor(&Request::Offer(9));
        a.write_all(&(body.len() as u32).to_be_bytes()).await.unwrap();
        a.write_all(&body).await.unwrap();
        // Then a frame over the limit, which is refused without reading it.
        a.write_all(&(MAX_FRAME + 1).to_be_bytes()).await.unwrap();
        let mut r = FramedRead::new(b, codec());
        assert!(matches!(read_frame::<Request>(&mut r).await.unwrap(), Some(Request::Offer(9))));
        let e = read_frame::<Request>(&mut r).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");

        // An end inside a frame, and a frame that is not CBOR of a request.
        for bytes in [&[0u8, 0, 0, 9, 1, 2][..], &[0, 0, 0, 1, 0xff][..]] {
            let (mut a, b) = tokio::io::duplex(64);
            a.write_all(bytes).await.unwrap();
            drop(a);
            assert!(read_frame::<Request>(&mut FramedRead::new(b, codec())).await.is_err(), "{bytes:?}");
        }
    }
}
