//! Local persistent state in redb (`home/state.redb`): settings, contracts, where each
//! pack is held, the blob index, cached tree and snapshot documents, and the snapshot list.
//!
//! Values are CBOR. All of it describes data that lives on the network; the trees cache
//! can be refilled from packs. Only the daemon opens the database (redb takes a file lock);
//! commands reach it through the control socket, except `offer-storage` with no daemon.

use crate::audit::AuditRecord;
use crate::id::{BlobId, ContractId, PackId, SnapshotId};
use crate::protocol::Contract;
use crate::repo::blob::BlobKind;
use crate::repo::pack::PackEntry;
use crate::repo::tree::Snapshot;
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::{Arc, RwLock};

const SETTINGS: TableDefinition<&str, u64> = TableDefinition::new("settings");
const CONTRACTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("contracts");
const PACKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("packs");
const BLOBS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("blobs");
const TREES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("trees");
const SNAPSHOTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("snapshots");
const AUDITS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("audits");
/// Index packs (protocol.md §3.8) in the order they were written: sequence number →
/// CBOR [`IndexPackRecord`].
const INDEX_PACKS: TableDefinition<u64, &[u8]> = TableDefinition::new("index_packs");
/// Scheduled backups: schedule name (UTF-8) → CBOR [`crate::schedule::LastRun`].
const SCHEDULE_RUNS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("schedule_runs");
/// Named records of this client (`test_restore`: the last [`crate::drill::DrillReport`]),
/// CBOR.
const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");
/// Defaulters (protocol.md §5.10): provider PeerId bytes → CBOR [`DefaulterRecord`].
const DEFAULTERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("defaulters");
/// Provider side of claims (protocol.md §4.6): client PeerId bytes → blocks `0..n` it acknowledged.
const CLAIMS: TableDefinition<&[u8], u64> = TableDefinition::new("claims");
/// Snapshot id → the packs it needs, found while `settings."index_moves"` had the value
/// stored with them ([`State::snapshot_packs`]).
const SNAPSHOT_PACKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("snapshot_packs");
/// The settings counter bumped whenever an index entry moves to another pack or leaves
/// the index: what a snapshot's pack list depends on.
const INDEX_MOVES: &str = "index_moves";

/// Errors of the local state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The database could not be opened (often: a daemon already runs on this home).
    #[error("cannot open {path}: {message}")]
    Open {
        /// The database file.
        path: String,
        /// redb's reason.
        message: String,
    },
    /// Another process holds the database (a daemon running on this home).
    #[error("{path} is in use by another process (is a daemon already running on this home?)")]
    Locked {
        /// The database file.
        path: String,
    },
    /// The database file is damaged: empty, truncated or with pages redb cannot read.
    #[error(
        "{path} is damaged ({why}). Your backups are not lost: move this home away, then run \
         'peer --home NEW_HOME init --recover' with your recovery phrase to bring your snapshots back \
         from the network (README 'Disaster recovery')"
    )]
    Damaged {
        /// The database file.
        path: String,
        /// What is wrong with it.
        why: String,
    },
    /// A read or write failed.
    #[error("local state: {0}")]
    Db(String),
    /// A stored value does not decode.
    #[error("local state is corrupt: {0}")]
    Corrupt(String),
}

impl<E: Into<redb::Error>> From<E> for StateError {
    fn from(e: E) -> Self {
        StateError::Db(e.into().to_string())
    }
}

type Rows = Vec<(Vec<u8>, Vec<u8>)>;

/// A snapshot as kept locally, with its place in the order of recording.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredSnapshot {
    seq: u64,
    snapshot: Snapshot,
}

/// Which side of a contract this peer is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// We store packs at the provider.
    Client,
    /// We store packs for the client.
    Provider,
}

/// A contract as kept locally (protocol.md §3.5, `ContractRecord`).
///
/// In memory, how far the contract has come is one [`Lifecycle`] value; on disk and in the
/// head it is the CBOR map of protocol.md §3.5, whose `ended`, `end_reason` and
/// `unsent_cancel` fields [`Lifecycle`] is written as (`ContractRecordWire`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(into = "ContractRecordWire", try_from = "ContractRecordWire")]
pub struct ContractRecord {
    /// The signed contract.
    pub contract: Contract,
    /// Our side.
    pub role: Role,
    /// The other side's PeerId, as bytes.
    pub peer: Vec<u8>,
    /// Bytes granted.
    pub bytes: u64,
    /// Bytes used so far by packs (client side: acknowledged uploads).
    pub used: u64,
    /// End, seconds since the Unix epoch.
    pub expires: u64,
    /// Listen addresses of the other side, as last seen.
    pub addrs: Vec<String>,
    /// In force, or ended early (protocol.md §4.5).
    pub lifecycle: Lifecycle,
    /// The latest renewal (protocol.md §4.7): the client-signed [`crate::protocol::Renewal`]
    /// and the provider's countersignature. `expires` already reflects it.
    pub renewal: Option<(crate::identity::Signed, serde_bytes::ByteBuf)>,
}

/// Where a contract is in its life (protocol.md §4.3, §4.5). A contract that was never
/// ended early is [`Lifecycle::Live`] and stops being in force at its `expires`.
///
/// ```text
/// Live --end--> Ended --our cancellation unanswered--> Cancelling --answered or expired--> Ended
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    /// Not ended early: in force until it expires.
    Live,
    /// Ended early by us, and the other side has not answered our signed cancellation
    /// yet; it is sent again every audit round.
    Cancelling {
        /// When it ended, Unix seconds.
        at: u64,
        /// Why, for `peer status` and `peer contracts` (at most 256 bytes).
        reason: String,
        /// Our signed `Cancellation` (protocol.md §4.5).
        cancel: crate::identity::Signed,
    },
    /// Ended early, by either side; nothing is left to tell the other side.
    Ended {
        /// When it ended, Unix seconds.
        at: u64,
        /// Why, for `peer status` and `peer contracts` (at most 256 bytes).
        reason: String,
    },
}

impl Lifecycle {
    /// When the contract ended early, Unix seconds; `None` while it has not.
    pub fn ended_at(&self) -> Option<u64> {
        match self {
            Lifecycle::Live => None,
            Lifecycle::Cancelling { at, .. } | Lifecycle::Ended { at, .. } => Some(*at),
        }
    }

    /// Why it ended early; empty while it has not.
    pub fn end_reason(&self) -> &str {
        match self {
            Lifecycle::Live => "",
            Lifecycle::Cancelling { reason, .. } | Lifecycle::Ended { reason, .. } => reason,
        }
    }

    /// Our cancellation the other side has not answered yet.
    pub fn unsent_cancel(&self) -> Option<&crate::identity::Signed> {
        match self {
            Lifecycle::Cancelling { cancel, .. } => Some(cancel),
            _ => None,
        }
    }

    /// Ends a live contract at `at` for `reason`; a contract that already ended keeps its
    /// first ending.
    pub fn end(&mut self, at: u64, reason: String) {
        if *self == Lifecycle::Live {
            *self = Lifecycle::Ended { at, reason };
        }
    }

    /// Our cancellation `cancel` of an ended contract could not be delivered: keep it to
    /// send again. A live contract is left alone (it must end first).
    pub fn owe_cancel(&mut self, cancel: crate::identity::Signed) {
        if let Lifecycle::Ended { at, reason } = self {
            *self = Lifecycle::Cancelling { at: *at, reason: std::mem::take(reason), cancel };
        }
    }

    /// The other side answered our cancellation (or the contract expired): nothing is
    /// left to send.
    pub fn cancel_delivered(&mut self) {
        if let Lifecycle::Cancelling { at, reason, .. } = self {
            *self = Lifecycle::Ended { at: *at, reason: std::mem::take(reason) };
        }
    }
}

/// The CBOR form of a [`ContractRecord`], field for field as protocol.md §3.5 lists them.
#[derive(Serialize, Deserialize)]
struct ContractRecordWire {
    contract: Contract,
    role: Role,
    #[serde(with = "serde_bytes")]
    peer: Vec<u8>,
    bytes: u64,
    used: u64,
    expires: u64,
    addrs: Vec<String>,
    #[serde(default)]
    ended: Option<u64>,
    #[serde(default)]
    end_reason: String,
    #[serde(default)]
    renewal: Option<(crate::identity::Signed, serde_bytes::ByteBuf)>,
    #[serde(default)]
    unsent_cancel: Option<crate::identity::Signed>,
}

impl From<ContractRecord> for ContractRecordWire {
    fn from(r: ContractRecord) -> Self {
        let (ended, end_reason) = (r.lifecycle.ended_at(), r.lifecycle.end_reason().to_string());
        let unsent_cancel = r.lifecycle.unsent_cancel().cloned();
        ContractRecordWire {
            contract: r.contract,
            role: r.role,
            peer: r.peer,
            bytes: r.bytes,
            used: r.used,
            expires: r.expires,
            addrs: r.addrs,
            ended,
            end_reason,
            renewal: r.renewal,
            unsent_cancel,
        }
    }
}

impl TryFrom<ContractRecordWire> for ContractRecord {
    type Error = String;

    /// Fails for a record with a cancellation to send or a reason but no end
    /// (protocol.md §3.5: both belong to a contract that ended early).
    fn try_from(w: ContractRecordWire) -> Result<Self, String> {
        let lifecycle = match (w.ended, w.unsent_cancel) {
            (None, None) if w.end_reason.is_empty() => Lifecycle::Live,
            (None, _) => {
                return Err("a contract record has a reason to end or a cancellation to send, but no end".into());
            }
            (Some(at), None) => Lifecycle::Ended { at, reason: w.end_reason },
            (Some(at), Some(cancel)) => Lifecycle::Cancelling { at, reason: w.end_reason, cancel },
        };
        Ok(ContractRecord {
            contract: w.contract,
            role: w.role,
            peer: w.peer,
            bytes: w.bytes,
            used: w.used,
            expires: w.expires,
            addrs: w.addrs,
            lifecycle,
            renewal: w.renewal,
        })
    }
}

impl ContractRecord {
    /// For tests: a live client contract (1 GiB, ending far in the future) with peer
    /// bytes `[0]` and an empty, unsigned acceptance.
    #[cfg(test)]
    pub(crate) fn live_for_tests() -> ContractRecord {
        let signed = crate::identity::Signed { body: vec![], key: [0; 32], sig: vec![] };
        let mut rec = ContractRecord::new(
            crate::protocol::Contract { acceptance: signed, client_sig: vec![] },
            Role::Client,
            libp2p::PeerId::random(),
            1 << 30,
            u64::MAX / 2,
            vec![],
        );
        rec.peer = vec![0];
        rec
    }

    /// A contract just made: nothing used, live, never renewed. `peer` is the other
    /// side, `addrs` its listen addresses as it announced them.
    pub fn new(
        contract: Contract,
        role: Role,
        peer: libp2p::PeerId,
        bytes: u64,
        expires: u64,
        addrs: Vec<String>,
    ) -> Self {
        ContractRecord {
            contract,
            role,
            peer: peer.to_bytes(),
            bytes,
            used: 0,
            expires,
            addrs,
            lifecycle: Lifecycle::Live,
            renewal: None,
        }
    }

    /// True when the contract is in force at time `now`: not expired, not ended.
    pub fn is_live(&self, now: u64) -> bool {
        self.expires > now && self.lifecycle == Lifecycle::Live
    }

    /// The other side's PeerId.
    pub fn peer_id(&self) -> Option<libp2p::PeerId> {
        libp2p::PeerId::from_bytes(&self.peer).ok()
    }
}

/// One holder of a pack.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The provider's PeerId, as bytes.
    #[serde(with = "serde_bytes")]
    pub peer: Vec<u8>,
    /// The contract the pack is stored under.
    pub contract: ContractId,
}

/// A provider with verified evidence of default against it (protocol.md §5.10).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DefaulterRecord {
    /// When we learned it, Unix seconds.
    pub since: u64,
    /// The evidence: CBOR [`crate::protocol::Evidence`].
    #[serde(with = "serde_bytes")]
    pub evidence: Vec<u8>,
    /// We caught it ourselves (and republish the evidence).
    pub ours: bool,
}

/// Where a pack lives (protocol.md §3.5, `PackRecord`).
///
/// In memory the placement is an enum, so a record is either whole copies or shards,
/// never both; on disk and in the head it is the CBOR map of protocol.md §3.5, with
/// `holders`, `copies`, `erasure` and `shards` side by side (`PackRecordWire`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "PackRecordWire", try_from = "PackRecordWire")]
pub struct PackRecord {
    /// Size, bytes (of an erasure-coded pack: before coding).
    pub size: u64,
    /// Whole copies at holders, or K+M shards (protocol.md §3.7).
    pub placement: Placement,
    /// No snapshot needs it any more (`peer prune`): its blobs left the index, repair
    /// ignores it, and it is deleted at its holders.
    pub garbage: bool,
    /// Retention lock its holders confirmed (protocol.md §5.9): prune leaves it alone
    /// until then, Unix seconds. 0 = none.
    pub lock_until: u64,
}

/// How a pack is stored at providers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Whole copies.
    Copies {
        /// Providers that acknowledged a copy, in the order they did.
        holders: Vec<Holder>,
        /// Copies wanted (the backup's `--copies`); repair keeps this many live. 0 in
        /// records written before repair existed, read as "as many as it has".
        copies: u32,
    },
    /// Erasure-coded (protocol.md §3.7).
    Erasure {
        /// K and M.
        scheme: crate::repo::erasure::Scheme,
        /// The K+M shards, by index.
        shards: Vec<Shard>,
    },
}

/// The CBOR form of a [`PackRecord`], field for field as protocol.md §3.5 lists them.
#[derive(Serialize, Deserialize)]
struct PackRecordWire {
    size: u64,
    holders: Vec<Holder>,
    #[serde(default)]
    copies: u32,
    #[serde(default)]
    garbage: bool,
    #[serde(default)]
    erasure: Option<crate::repo::erasure::Scheme>,
    #[serde(default)]
    shards: Vec<Shard>,
    #[serde(default, skip_serializing_if = "is_zero")]
    lock_until: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl From<PackRecord> for PackRecordWire {
    fn from(r: PackRecord) -> Self {
        let (holders, copies, erasure, shards) = match r.placement {
            Placement::Copies { holders, copies } => (holders, copies, None, Vec::new()),
            Placement::Erasure { scheme, shards } => (Vec::new(), 0, Some(scheme), shards),
        };
        PackRecordWire { size: r.size, holders, copies, garbage: r.garbage, erasure, shards, lock_until: r.lock_until }
    }
}

impl TryFrom<PackRecordWire> for PackRecord {
    type Error = String;

    /// Fails for a record that has both holders of whole copies and an erasure scheme, or
    /// a scheme whose shard list is not K+M long (protocol.md §3.5).
    fn try_from(w: PackRecordWire) -> Result<Self, String> {
        let placement = match w.erasure {
            None if w.shards.is_empty() => Placement::Copies { holders: w.holders, copies: w.copies },
            None => return Err("a pack record lists shards but no erasure scheme".into()),
            Some(_) if !w.holders.is_empty() => {
                return Err("an erasure-coded pack record also lists holders of whole copies".into());
            }
            Some(scheme) if w.shards.len() != scheme.n() => {
                return Err(format!(
                    "an erasure-coded pack record lists {} shards, not {}",
                    w.shards.len(),
                    scheme.n()
                ));
            }
            Some(scheme) => Placement::Erasure { scheme, shards: w.shards },
        };
        Ok(PackRecord { size: w.size, placement, garbage: w.garbage, lock_until: w.lock_until })
    }
}

/// One shard of an erasure-coded pack.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// Its id: the Merkle root of its bytes, under which its holder stores it.
    pub id: PackId,
    /// Its size, bytes.
    pub size: u64,
    /// Where it is; `None` once lost (repair places it again).
    pub holder: Option<Holder>,
}

impl PackRecord {
    /// A live record of whole copies at `holders`, `copies` wanted.
    pub fn copies(size: u64, holders: Vec<Holder>, copies: u32) -> Self {
        PackRecord { size, placement: Placement::Copies { holders, copies }, garbage: false, lock_until: 0 }
    }

    /// Copies (replicated) or shards (erasure-coded) whose holder passes `live`.
    pub fn live_count(&self, live: impl Fn(&Holder) -> bool) -> usize {
        match &self.placement {
            Placement::Erasure { shards, .. } => shards.iter().filter(|s| s.holder.as_ref().is_some_and(&live)).count(),
            Placement::Copies { holders, .. } => holders.iter().filter(|h| live(h)).count(),
        }
    }

    /// Copies or shards wanted: `copies`, or K+M (records from before `copies` existed:
    /// as many holders as they have).
    pub fn target(&self) -> usize {
        match &self.placement {
            Placement::Erasure { scheme, .. } => scheme.n(),
            Placement::Copies { copies, .. } if *copies > 0 => *copies as usize,
            Placement::Copies { holders, .. } => holders.len(),
        }
    }

    /// Copies or shards needed to read the pack: 1, or K.
    pub fn needed(&self) -> usize {
        match &self.placement {
            Placement::Erasure { scheme, .. } => usize::from(scheme.k),
            Placement::Copies { .. } => 1,
        }
    }

    /// The erasure scheme, for an erasure-coded pack.
    pub fn scheme(&self) -> Option<crate::repo::erasure::Scheme> {
        match &self.placement {
            Placement::Erasure { scheme, .. } => Some(*scheme),
            Placement::Copies { .. } => None,
        }
    }

    /// Every stored object of the pack: (object id, bytes, holder): the pack at each of
    /// its holders, or each placed shard at its holder.
    pub fn objects(&self, pack: &PackId) -> Vec<(PackId, u64, Holder)> {
        match &self.placement {
            Placement::Erasure { shards, .. } => {
                shards.iter().filter_map(|s| Some((s.id, s.size, s.holder.clone()?))).collect()
            }
            Placement::Copies { holders, .. } => holders.iter().map(|h| (*pack, self.size, h.clone())).collect(),
        }
    }

    /// Bytes stored at holders, all copies or shards counted.
    pub fn stored_bytes(&self) -> u64 {
        match &self.placement {
            Placement::Erasure { shards, .. } => shards.iter().filter(|s| s.holder.is_some()).map(|s| s.size).sum(),
            Placement::Copies { holders, .. } => self.size * holders.len() as u64,
        }
    }

    /// Every holder named in the record, a provider once per copy or shard it holds.
    pub fn holders(&self) -> Vec<&Holder> {
        match &self.placement {
            Placement::Erasure { shards, .. } => shards.iter().filter_map(|s| s.holder.as_ref()).collect(),
            Placement::Copies { holders, .. } => holders.iter().collect(),
        }
    }

    /// Distinct providers holding any copy or shard.
    pub fn holder_peers(&self) -> Vec<Vec<u8>> {
        let mut v: Vec<Vec<u8>> = self.holders().into_iter().map(|h| h.peer.clone()).collect();
        v.sort();
        v.dedup();
        v
    }

    /// Removes every holder for which `gone` is true: whole copies leave the list, shards
    /// become unplaced. True when anything changed.
    pub fn remove_holders(&mut self, gone: impl Fn(&Holder) -> bool) -> bool {
        match &mut self.placement {
            Placement::Copies { holders, .. } => {
                let before = holders.len();
                holders.retain(|h| !gone(h));
                holders.len() != before
            }
            Placement::Erasure { shards, .. } => {
                let mut changed = false;
                for s in shards.iter_mut().filter(|s| s.holder.as_ref().is_some_and(&gone)) {
                    s.holder = None;
                    changed = true;
                }
                changed
            }
        }
    }
}

/// Index entry: where a blob is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// The pack.
    pub pack: PackId,
    /// The blob's kind.
    pub kind: BlobKind,
    /// Offset in the pack, bytes.
    pub offset: u32,
    /// Stored length, bytes.
    pub length: u32,
    /// Plaintext length, bytes.
    pub raw_length: u32,
}

/// An index pack (protocol.md §3.8) and the data packs whose blobs it lists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexPackRecord {
    /// The index pack (its holders are in its [`PackRecord`]).
    pub pack: PackId,
    /// The data packs it covers.
    pub covers: Vec<PackId>,
}

/// The local state. Cheap to clone.
///
/// The contracts are also kept in memory, loaded at open and updated by every write that
/// changes one, so that [`State::contracts`] and [`State::contract`] — read on every
/// inbound request and every outbound one — cost no transaction.
#[derive(Clone)]
pub struct State {
    db: Arc<Database>,
    contracts: Arc<RwLock<BTreeMap<ContractId, ContractRecord>>>,
}

/// The highest sequence number among recorded snapshots (0 when none).
fn last_snapshot_seq(t: &redb::Table<&[u8], &[u8]>) -> Result<u64, StateError> {
    let mut seq = 0;
    for r in t.iter()? {
        let (_, v) = r?;
        seq = seq.max(dec::<StoredSnapshot>("snapshot", v.value())?.seq);
    }
    Ok(seq)
}

/// Bumps `settings."index_moves"` in write transaction `tx`: the pack lists kept in
/// `snapshot_packs` may be stale from then on.
fn bump_index_moves(tx: &redb::WriteTransaction) -> Result<(), StateError> {
    let mut t = tx.open_table(SETTINGS)?;
    let n = t.get(INDEX_MOVES)?.map(|v| v.value()).unwrap_or(0);
    t.insert(INDEX_MOVES, n + 1)?;
    Ok(())
}

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    crate::protocol::to_cbor(v)
}

fn dec<T: for<'de> Deserialize<'de>>(what: &str, b: &[u8]) -> Result<T, StateError> {
    ciborium::from_reader(b).map_err(|e| StateError::Corrupt(format!("{what}: {e}")))
}

/// redb's page cache for `state.redb`, bytes (32 MiB). redb's default, 1 GiB, is filled
/// by a repository of a million blobs: the index and the tree cache are read and written
/// through it during a backup, and the daemon kept the pages afterwards. Pages not cached
/// are read from the file, which the operating system caches anyway. Measured with
/// `bench/head.sh` (BENCHMARKS.md, *Repository scale*), 1,000,000 small files: the
/// backup's peak RSS was 185–216 MiB in four runs at 32 MiB, 243–350 MiB in five at
/// 64 MiB.
const CACHE_BYTES: usize = 32 << 20;

/// `Database::create`, with a panic inside redb caught: redb 2 asserts on some damaged
/// files (a truncated one) instead of returning an error. The panic's report is kept off
/// the terminal while it runs (opens are serialized, and happen at start only), and the
/// caller turns it into [`StateError::Damaged`].
fn create_quietly(path: &Path) -> std::thread::Result<Result<Database, redb::DatabaseError>> {
    static OPENING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = OPENING.lock().unwrap_or_else(|p| p.into_inner());
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(|| Database::builder().set_cache_size(CACHE_BYTES).create(path));
    std::panic::set_hook(hook);
    r
}

impl State {
    /// Opens or creates the database and its tables. Errors: [`StateError::Open`] when
    /// another process holds it (a daemon running on this home), [`StateError::Damaged`]
    /// when the file is empty or redb cannot read it — never a new, empty state in place of
    /// a damaged one.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let p = path.display().to_string();
        if std::fs::metadata(path).is_ok_and(|m| m.len() == 0) {
            return Err(StateError::Damaged { path: p, why: "the file is empty".into() });
        }
        let db = match create_quietly(path) {
            Ok(Ok(db)) => db,
            Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => return Err(StateError::Locked { path: p }),
            Ok(Err(redb::DatabaseError::Storage(redb::StorageError::Io(e))))
                if e.kind() != std::io::ErrorKind::InvalidData =>
            {
                return Err(StateError::Open { path: p, message: e.to_string() });
            }
            Ok(Err(e)) => return Err(StateError::Damaged { path: p, why: e.to_string() }),
            Err(_) => return Err(StateError::Damaged { path: p, why: "redb cannot read its pages".into() }),
        };
        let tx = db.begin_write()?;
        tx.open_table(SETTINGS)?;
        tx.open_table(CLAIMS)?;
        tx.open_table(INDEX_PACKS)?;
        tx.open_table(RECORDS)?;
        for t in [CONTRACTS, PACKS, BLOBS, TREES, SNAPSHOTS, AUDITS, SCHEDULE_RUNS, DEFAULTERS, SNAPSHOT_PACKS] {
            tx.open_table(t)?;
        }
        tx.commit()?;
        let state = State { db: Arc::new(db), contracts: Default::default() };
        let all: Vec<(ContractId, ContractRecord)> =
            state.all_decoded(CONTRACTS, "contract", ContractId::from_slice)?;
        *state.cached_contracts_mut() = all.into_iter().collect();
        Ok(state)
    }

    fn cached_contracts_mut(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<ContractId, ContractRecord>> {
        self.contracts.write().unwrap_or_else(|p| p.into_inner())
    }

    fn put(&self, t: TableDefinition<&[u8], &[u8]>, k: &[u8], v: &[u8]) -> Result<(), StateError> {
        let tx = self.db.begin_write()?;
        tx.open_table(t)?.insert(k, v)?;
        tx.commit()?;
        Ok(())
    }

    fn get(&self, t: TableDefinition<&[u8], &[u8]>, k: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(t)?;
        Ok(table.get(k)?.map(|v| v.value().to_vec()))
    }

    fn all(&self, t: TableDefinition<&[u8], &[u8]>) -> Result<Rows, StateError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(t)?;
        let mut out = Vec::new();
        for r in table.iter()? {
            let (k, v) = r?;
            out.push((k.value().to_vec(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Every row of `t`, keys parsed by `key` and values decoded from CBOR.
    fn all_decoded<K, V: for<'de> Deserialize<'de>>(
        &self,
        t: TableDefinition<&[u8], &[u8]>,
        what: &str,
        key: fn(&[u8]) -> Option<K>,
    ) -> Result<Vec<(K, V)>, StateError> {
        self.all(t)?
            .into_iter()
            .map(|(k, v)| Ok((key(&k).ok_or_else(|| StateError::Corrupt(format!("{what} key")))?, dec(what, &v)?)))
            .collect()
    }

    /// Bytes this peer offers to others (0 when never set).
    pub fn offered(&self) -> Result<u64, StateError> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(SETTINGS)?.get("offered")?.map(|v| v.value()).unwrap_or(0))
    }

    /// Sets the bytes offered.
    pub fn set_offered(&self, bytes: u64) -> Result<(), StateError> {
        let tx = self.db.begin_write()?;
        tx.open_table(SETTINGS)?.insert("offered", bytes)?;
        tx.commit()?;
        Ok(())
    }

    /// Stores or replaces a contract.
    pub fn put_contract(&self, id: &ContractId, r: &ContractRecord) -> Result<(), StateError> {
        self.put(CONTRACTS, id.as_bytes(), &enc(r))?;
        self.cached_contracts_mut().insert(*id, r.clone());
        Ok(())
    }

    /// One contract (from memory).
    pub fn contract(&self, id: &ContractId) -> Result<Option<ContractRecord>, StateError> {
        Ok(self.contracts.read().unwrap_or_else(|p| p.into_inner()).get(id).cloned())
    }

    /// Every contract, both roles (from memory).
    pub fn contracts(&self) -> Result<Vec<(ContractId, ContractRecord)>, StateError> {
        Ok(self.contracts_where(|_| true))
    }

    /// The contracts for which `keep` is true, from memory: only those are cloned, under
    /// one read of the table (the hot paths ask for a few among many).
    pub fn contracts_where(&self, keep: impl Fn(&ContractRecord) -> bool) -> Vec<(ContractId, ContractRecord)> {
        let table = self.contracts.read().unwrap_or_else(|p| p.into_inner());
        table.iter().filter(|(_, v)| keep(v)).map(|(k, v)| (*k, v.clone())).collect()
    }

    /// The other side's addresses as recorded in the contracts with `peer` (PeerId bytes)
    /// live at `now`, from memory, without cloning any contract.
    pub fn contract_addrs(&self, peer: &[u8], now: u64) -> Vec<String> {
        let table = self.contracts.read().unwrap_or_else(|p| p.into_inner());
        table.values().filter(|c| c.peer == peer && c.is_live(now)).flat_map(|c| c.addrs.iter().cloned()).collect()
    }

    /// Adds `bytes` to a contract's used count (client side, after an acknowledged upload).
    pub fn add_contract_use(&self, id: &ContractId, bytes: u64) -> Result<(), StateError> {
        self.update_contract(id, |r| r.used = r.used.saturating_add(bytes)).map(|_| ())
    }

    /// Changes a contract in one transaction; returns the new record, `None` when unknown.
    pub fn update_contract(
        &self,
        id: &ContractId,
        f: impl FnOnce(&mut ContractRecord),
    ) -> Result<Option<ContractRecord>, StateError> {
        let tx = self.db.begin_write()?;
        let out = {
            let mut t = tx.open_table(CONTRACTS)?;
            let cur = t.get(id.as_bytes().as_slice())?.map(|v| v.value().to_vec());
            match cur {
                Some(b) => {
                    let mut r: ContractRecord = dec("contract", &b)?;
                    f(&mut r);
                    t.insert(id.as_bytes().as_slice(), enc(&r).as_slice())?;
                    Some(r)
                }
                None => None,
            }
        };
        tx.commit()?;
        if let Some(r) = &out {
            self.cached_contracts_mut().insert(*id, r.clone());
        }
        Ok(out)
    }

    /// Where a pack is held, if known.
    pub fn pack(&self, id: &PackId) -> Result<Option<PackRecord>, StateError> {
        self.get(PACKS, id.as_bytes())?.map(|b| dec("pack", &b)).transpose()
    }

    /// Raises the retention lock recorded for each of `packs` to at least `until`, in one
    /// transaction (packs with no record are skipped).
    pub fn lock_packs(&self, packs: &[PackId], until: u64) -> Result<(), StateError> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(PACKS)?;
            for id in packs {
                let rec = t.get(id.as_bytes().as_slice())?.map(|v| v.value().to_vec());
                let Some(b) = rec else { continue };
                let mut rec: PackRecord = dec("pack", &b)?;
                rec.lock_until = rec.lock_until.max(until);
                t.insert(id.as_bytes().as_slice(), enc(&rec).as_slice())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Every pack this client placed, with its holders.
    pub fn packs(&self) -> Result<Vec<(PackId, PackRecord)>, StateError> {
        self.all_decoded(PACKS, "pack", PackId::from_slice)
    }

    /// Records an acknowledged pack and its blobs (entries of pack `id`) in one
    /// transaction: after this the blobs count as stored for dedup (write order,
    /// protocol.md §3.6).
    pub fn commit_pack(&self, id: &PackId, rec: &PackRecord, blobs: &[PackEntry]) -> Result<(), StateError> {
        let tx = self.db.begin_write()?;
        let mut moved = false;
        {
            tx.open_table(PACKS)?.insert(id.as_bytes().as_slice(), enc(rec).as_slice())?;
            let mut t = tx.open_table(BLOBS)?;
            for b in blobs {
                let e = IndexEntry {
                    pack: *id,
                    kind: b.kind,
                    offset: b.offset,
                    length: b.length,
                    raw_length: b.raw_length,
                };
                let old = t.insert(b.id.as_bytes().as_slice(), enc(&e).as_slice())?;
                moved |=
                    old.is_some_and(|o| dec::<IndexEntry>("index entry", o.value()).map_or(true, |o| o.pack != *id));
            }
        }
        if moved {
            bump_index_moves(&tx)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Marks packs as garbage and removes the index entries that point into them, in one
    /// transaction: from then on no backup dedups against them and no restore uses them.
    pub fn mark_garbage(&self, ids: &HashSet<PackId>) -> Result<(), StateError> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(PACKS)?;
            for id in ids {
                let cur = t.get(id.as_bytes().as_slice())?.map(|v| v.value().to_vec());
                if let Some(b) = cur {
                    let mut rec: PackRecord = dec("pack", &b)?;
                    rec.garbage = true;
                    t.insert(id.as_bytes().as_slice(), enc(&rec).as_slice())?;
                }
            }
            let mut blobs = tx.open_table(BLOBS)?;
            let mut gone = Vec::new();
            for r in blobs.iter()? {
                let (k, v) = r?;
                let e: IndexEntry = dec("index entry", v.value())?;
                if ids.contains(&e.pack) {
                    gone.push(k.value().to_vec());
                }
            }
            for k in gone {
                blobs.remove(k.as_slice())?;
            }
        }
        bump_index_moves(&tx)?;
        tx.commit()?;
        Ok(())
    }

    /// Removes a pack's record.
    pub fn remove_pack(&self, id: &PackId) -> Result<(), StateError> {
        let tx = self.db.begin_write()?;
        tx.open_table(PACKS)?.remove(id.as_bytes().as_slice())?;
        tx.commit()?;
        Ok(())
    }

    /// Removes a snapshot from the list.
    pub fn remove_snapshot(&self, id: &SnapshotId) -> Result<(), StateError> {
        let tx = self.db.begin_write()?;
        tx.open_table(SNAPSHOTS)?.remove(id.as_bytes().as_slice())?;
        tx.open_table(SNAPSHOT_PACKS)?.remove(id.as_bytes().as_slice())?;
        tx.commit()?;
        Ok(())
    }

    /// Sets the holder of shard `index` of a known pack (repair).
    pub fn set_shard_holder(&self, id: &PackId, index: usize, holder: Holder) -> Result<(), StateError> {
        self.update_pack(id, |rec| {
            if let Placement::Erasure { shards, .. } = &mut rec.placement
                && let Some(s) = shards.get_mut(index)
            {
                s.holder = Some(holder);
            }
        })
    }

    /// Adds holders to a known pack (repair), skipping any it has already.
    pub fn add_holders(&self, id: &PackId, new: &[Holder]) -> Result<(), StateError> {
        self.update_pack(id, |rec| {
            if let Placement::Copies { holders, .. } = &mut rec.placement {
                for h in new {
                    if !holders.iter().any(|x| x.peer == h.peer) {
                        holders.push(h.clone());
                    }
                }
            }
        })
    }

    /// Changes a known pack's record in one transaction; an unknown pack is left alone.
    fn update_pack(&self, id: &PackId, f: impl FnOnce(&mut PackRecord)) -> Result<(), StateError> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(PACKS)?;
            let cur = t.get(id.as_bytes().as_slice())?.map(|v| v.value().to_vec());
            if let Some(b) = cur {
                let mut rec: PackRecord = dec("pack", &b)?;
                f(&mut rec);
                t.insert(id.as_bytes().as_slice(), enc(&rec).as_slice())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Removes `peer` from the holders of every pack (its copies are lost); returns how many packs lost a copy.
    pub fn drop_holder(&self, peer: &[u8]) -> Result<u64, StateError> {
        self.remove_holders(|_, h| h.peer == peer)
    }

    /// Removes `peer` from the holders of one pack.
    pub fn drop_copy(&self, pack: &PackId, peer: &[u8]) -> Result<u64, StateError> {
        self.remove_holders(|p, h| p == pack.as_bytes().as_slice() && h.peer == peer)
    }

    fn remove_holders(&self, gone: impl Fn(&[u8], &Holder) -> bool) -> Result<u64, StateError> {
        let tx = self.db.begin_write()?;
        let mut n = 0;
        {
            let mut t = tx.open_table(PACKS)?;
            let mut changed = Vec::new();
            for r in t.iter()? {
                let (k, v) = r?;
                let mut rec: PackRecord = dec("pack", v.value())?;
                if rec.remove_holders(|h| gone(k.value(), h)) {
                    changed.push((k.value().to_vec(), rec));
                }
            }
            for (k, rec) in changed {
                t.insert(k.as_slice(), enc(&rec).as_slice())?;
                n += 1;
            }
        }
        tx.commit()?;
        Ok(n)
    }

    /// Claim blocks `client` (PeerId bytes) acknowledged holding for us: blocks `0..n`.
    pub fn claim_placed(&self, client: &[u8]) -> Result<u32, StateError> {
        let tx = self.db.begin_read()?;
        let v = tx.open_table(CLAIMS)?.get(client)?.map(|v| v.value()).unwrap_or(0);
        Ok(u32::try_from(v).unwrap_or(u32::MAX))
    }

    /// Clients (PeerId bytes) recorded as holding claim blocks for us.
    pub fn claim_clients(&self) -> Result<Vec<Vec<u8>>, StateError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(CLAIMS)?;
        let mut out = Vec::new();
        for r in t.iter()? {
            let (k, v) = r?;
            if v.value() > 0 {
                out.push(k.value().to_vec());
            }
        }
        Ok(out)
    }

    /// Records how many claim blocks `client` holds for us.
    pub fn set_claim_placed(&self, client: &[u8], n: u32) -> Result<(), StateError> {
        let tx = self.db.begin_write()?;
        tx.open_table(CLAIMS)?.insert(client, u64::from(n))?;
        tx.commit()?;
        Ok(())
    }

    /// Audit record of a peer (PeerId bytes), or a fresh one.
    pub fn audit(&self, peer: &[u8]) -> Result<AuditRecord, StateError> {
        Ok(self.get(AUDITS, peer)?.map(|b| dec("audit", &b)).transpose()?.unwrap_or_default())
    }

    /// Stores a peer's audit record.
    pub fn put_audit(&self, peer: &[u8], r: &AuditRecord) -> Result<(), StateError> {
        self.put(AUDITS, peer, &enc(r))
    }

    /// Every audit record, keyed by PeerId bytes.
    pub fn audits(&self) -> Result<Vec<(Vec<u8>, AuditRecord)>, StateError> {
        self.all_decoded(AUDITS, "audit", |k| Some(k.to_vec()))
    }

    /// Records a defaulter (protocol.md §5.10).
    pub fn put_defaulter(&self, peer: &[u8], r: &DefaulterRecord) -> Result<(), StateError> {
        self.put(DEFAULTERS, peer, &enc(r))
    }

    /// Every defaulter, keyed by PeerId bytes.
    pub fn defaulters(&self) -> Result<Vec<(Vec<u8>, DefaulterRecord)>, StateError> {
        self.all_decoded(DEFAULTERS, "defaulter", |k| Some(k.to_vec()))
    }

    /// A named record, if set.
    pub fn record<T: for<'de> Deserialize<'de>>(&self, name: &str) -> Result<Option<T>, StateError> {
        let tx = self.db.begin_read()?;
        let v = tx.open_table(RECORDS)?.get(name)?.map(|v| v.value().to_vec());
        v.map(|b| dec(name, &b)).transpose()
    }

    /// Sets a named record.
    pub fn set_record<T: Serialize>(&self, name: &str, v: &T) -> Result<(), StateError> {
        let tx = self.db.begin_write()?;
        tx.open_table(RECORDS)?.insert(name, enc(v).as_slice())?;
        tx.commit()?;
        Ok(())
    }

    /// The last run of every schedule that ran, by name.
    pub fn schedule_runs(&self) -> Result<BTreeMap<String, crate::schedule::LastRun>, StateError> {
        let all = self.all_decoded(SCHEDULE_RUNS, "schedule run", |k| String::from_utf8(k.to_vec()).ok())?;
        Ok(all.into_iter().collect())
    }

    /// Records the last run of schedule `name`.
    pub fn set_schedule_run(&self, name: &str, run: &crate::schedule::LastRun) -> Result<(), StateError> {
        self.put(SCHEDULE_RUNS, name.as_bytes(), &enc(run))
    }

    /// Forgets the runs of schedule `name` (it was removed).
    pub fn remove_schedule_run(&self, name: &str) -> Result<(), StateError> {
        let tx = self.db.begin_write()?;
        tx.open_table(SCHEDULE_RUNS)?.remove(name.as_bytes())?;
        tx.commit()?;
        Ok(())
    }

    /// A counter kept in the settings table (0 when never set).
    pub fn counter(&self, name: &str) -> Result<u64, StateError> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(SETTINGS)?.get(name)?.map(|v| v.value()).unwrap_or(0))
    }

    /// Sets a counter in the settings table.
    pub fn set_counter(&self, name: &str, v: u64) -> Result<(), StateError> {
        let tx = self.db.begin_write()?;
        tx.open_table(SETTINGS)?.insert(name, v)?;
        tx.commit()?;
        Ok(())
    }

    /// Writes a recovered head in one transaction: snapshots (in the given order, after
    /// any already here), packs, index packs (in order, after any already here) and
    /// contracts. The index entries themselves come before, with [`State::import_index`].
    pub fn import(
        &self,
        snapshots: &[(SnapshotId, Snapshot)],
        packs: &[(PackId, PackRecord)],
        index_packs: &[IndexPackRecord],
        contracts: &[(ContractId, ContractRecord)],
    ) -> Result<(), StateError> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(SNAPSHOTS)?;
            let first = last_snapshot_seq(&t)? + 1;
            for (seq, (id, s)) in (first..).zip(snapshots) {
                t.insert(id.as_bytes().as_slice(), enc(&StoredSnapshot { seq, snapshot: s.clone() }).as_slice())?;
            }
            let mut t = tx.open_table(PACKS)?;
            for (id, r) in packs {
                t.insert(id.as_bytes().as_slice(), enc(r).as_slice())?;
            }
            let mut t = tx.open_table(INDEX_PACKS)?;
            let first = t.last()?.map(|(k, _)| k.value() + 1).unwrap_or(0);
            for (seq, r) in (first..).zip(index_packs) {
                t.insert(seq, enc(r).as_slice())?;
            }
            let mut t = tx.open_table(CONTRACTS)?;
            for (id, c) in contracts {
                t.insert(id.as_bytes().as_slice(), enc(c).as_slice())?;
            }
        }
        tx.commit()?;
        self.cached_contracts_mut().extend(contracts.iter().cloned());
        Ok(())
    }

    /// Writes index entries read from an index pack, in one transaction: an entry replaces
    /// the one already here for the same blob (later index packs win, §3.8).
    pub fn import_index(&self, entries: impl IntoIterator<Item = (BlobId, IndexEntry)>) -> Result<(), StateError> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(BLOBS)?;
            for (id, e) in entries {
                t.insert(id.as_bytes().as_slice(), enc(&e).as_slice())?;
            }
        }
        bump_index_moves(&tx)?;
        tx.commit()?;
        Ok(())
    }

    /// Records acknowledged index packs, each with the data packs it lists, in one
    /// transaction: together they cover those packs (§3.8), so none is recorded alone.
    pub fn commit_index_packs(&self, packs: &[(PackId, PackRecord, Vec<PackId>)]) -> Result<(), StateError> {
        let tx = self.db.begin_write()?;
        {
            let mut p = tx.open_table(PACKS)?;
            let mut t = tx.open_table(INDEX_PACKS)?;
            let first = t.last()?.map(|(k, _)| k.value() + 1).unwrap_or(0);
            for (seq, (id, rec, covers)) in (first..).zip(packs) {
                p.insert(id.as_bytes().as_slice(), enc(rec).as_slice())?;
                t.insert(seq, enc(&IndexPackRecord { pack: *id, covers: covers.clone() }).as_slice())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The index packs, oldest first.
    pub fn index_packs(&self) -> Result<Vec<IndexPackRecord>, StateError> {
        let tx = self.db.begin_read()?;
        let mut out = Vec::new();
        for r in tx.open_table(INDEX_PACKS)?.iter()? {
            out.push(dec("index pack", r?.1.value())?);
        }
        Ok(out)
    }

    /// Forgets index packs (once deleted at their holders, or pruned).
    pub fn remove_index_packs(&self, ids: &HashSet<PackId>) -> Result<(), StateError> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(INDEX_PACKS)?;
            let mut gone = Vec::new();
            for r in t.iter()? {
                let (k, v) = r?;
                if ids.contains(&dec::<IndexPackRecord>("index pack", v.value())?.pack) {
                    gone.push(k.value());
                }
            }
            for k in gone {
                t.remove(k)?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Data packs, not garbage, that no index pack covers yet: their index still has to
    /// be written (after a backup that failed before its index, or from before index packs).
    pub fn unindexed_packs(&self) -> Result<HashSet<PackId>, StateError> {
        let index = self.index_packs()?;
        let covered: HashSet<PackId> = index.iter().flat_map(|r| r.covers.iter().chain([&r.pack])).copied().collect();
        Ok(self.packs()?.into_iter().filter(|(id, r)| !r.garbage && !covered.contains(id)).map(|(id, _)| id).collect())
    }

    /// The index entries of `packs`, in pack order (one pass over the index).
    pub fn pack_entries(&self, packs: &HashSet<PackId>) -> Result<Vec<(PackId, Vec<PackEntry>)>, StateError> {
        let mut by_pack: std::collections::HashMap<PackId, Vec<PackEntry>> = Default::default();
        let tx = self.db.begin_read()?;
        for r in tx.open_table(BLOBS)?.iter()? {
            let (k, v) = r?;
            let e: IndexEntry = dec("index entry", v.value())?;
            if packs.contains(&e.pack) {
                let id = BlobId::from_slice(k.value()).ok_or_else(|| StateError::Corrupt("index key".into()))?;
                let entry =
                    PackEntry { id, kind: e.kind, offset: e.offset, length: e.length, raw_length: e.raw_length };
                by_pack.entry(e.pack).or_default().push(entry);
            }
        }
        let mut out: Vec<(PackId, Vec<PackEntry>)> = by_pack.into_iter().collect();
        for (_, v) in &mut out {
            v.sort_by_key(|e| e.offset);
        }
        out.sort_by_key(|(id, _)| *id);
        Ok(out)
    }

    /// Where a blob is, if stored.
    pub fn blob(&self, id: &BlobId) -> Result<Option<IndexEntry>, StateError> {
        self.get(BLOBS, id.as_bytes())?.map(|b| dec("index entry", &b)).transpose()
    }

    /// Where each of `ids` is, from the index (`None` for a blob in no known pack), in
    /// the order given. One read transaction; the lookups run in id order, so the B-tree's
    /// pages are visited once each, front to back, however large the index and however
    /// small redb's cache (`CACHE_BYTES`). Errors: [`StateError`] when the store cannot
    /// be read or an entry does not decode.
    pub fn blobs(&self, ids: &[BlobId]) -> Result<Vec<Option<IndexEntry>>, StateError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(BLOBS)?;
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_unstable_by_key(|&i| ids[i].as_bytes());
        let mut out: Vec<Option<IndexEntry>> = (0..ids.len()).map(|_| None).collect();
        for i in order {
            if let Some(v) = table.get(ids[i].as_bytes().as_slice())? {
                out[i] = Some(dec("index entry", v.value())?);
            }
        }
        Ok(out)
    }

    /// Number of blobs in the index.
    pub fn blob_count(&self) -> Result<u64, StateError> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(BLOBS)?.len()?)
    }

    /// The packs snapshot `sid` needs, as recorded by [`State::set_snapshot_packs`], if no
    /// index entry has moved to another pack or left the index since (`None` otherwise,
    /// when none were recorded, or when the record has not the recorded shape: it is only
    /// a cache, found again). Errors: the store.
    pub fn snapshot_packs(&self, sid: &SnapshotId) -> Result<Option<Vec<PackId>>, StateError> {
        let tx = self.db.begin_read()?;
        let moves = tx.open_table(SETTINGS)?.get(INDEX_MOVES)?.map(|v| v.value()).unwrap_or(0);
        let Some(v) = tx.open_table(SNAPSHOT_PACKS)?.get(sid.as_bytes().as_slice())? else { return Ok(None) };
        match v.value().split_first_chunk::<8>() {
            Some((at, ids)) if u64::from_le_bytes(*at) == moves && ids.len() % 32 == 0 => {
                Ok(ids.chunks(32).map(PackId::from_slice).collect())
            }
            _ => Ok(None),
        }
    }

    /// How many times an index entry has moved to another pack or left the index (the
    /// `settings."index_moves"` counter). Errors: the store.
    pub fn index_moves(&self) -> Result<u64, StateError> {
        self.counter(INDEX_MOVES)
    }

    /// Records the packs snapshot `sid` needs, found from the index when
    /// [`State::index_moves`] was `moves` (value: `moves`, 8 bytes little-endian, then the
    /// 32-byte pack ids). Errors: the store.
    pub fn set_snapshot_packs(&self, sid: &SnapshotId, moves: u64, packs: &HashSet<PackId>) -> Result<(), StateError> {
        let tx = self.db.begin_write()?;
        {
            let mut v = Vec::with_capacity(8 + 32 * packs.len());
            v.extend_from_slice(&moves.to_le_bytes());
            for p in packs {
                v.extend_from_slice(p.as_bytes());
            }
            tx.open_table(SNAPSHOT_PACKS)?.insert(sid.as_bytes().as_slice(), v.as_slice())?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Caches a tree or snapshot document's plaintext.
    pub fn put_tree(&self, id: &BlobId, doc: &[u8]) -> Result<(), StateError> {
        self.put(TREES, id.as_bytes(), doc)
    }

    /// Caches many tree documents in one transaction.
    pub fn put_trees(&self, docs: &[(BlobId, Vec<u8>)]) -> Result<(), StateError> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(TREES)?;
            for (id, doc) in docs {
                t.insert(id.as_bytes().as_slice(), doc.as_slice())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// A cached tree or snapshot document.
    pub fn tree(&self, id: &BlobId) -> Result<Option<Vec<u8>>, StateError> {
        self.get(TREES, id.as_bytes())
    }

    /// Records a snapshot whose packs are all stored.
    /// The snapshot gets the next sequence number: snapshots are ordered by when they were
    /// recorded here, not by their `time` (seconds), which two quick backups may share.
    pub fn put_snapshot(&self, id: &SnapshotId, s: &Snapshot) -> Result<(), StateError> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(SNAPSHOTS)?;
            let seq = last_snapshot_seq(&t)?;
            let rec = StoredSnapshot { seq: seq + 1, snapshot: s.clone() };
            t.insert(id.as_bytes().as_slice(), enc(&rec).as_slice())?;
        }
        tx.commit()?;
        Ok(())
    }

    /// All snapshots, oldest first.
    pub fn snapshots(&self) -> Result<Vec<(SnapshotId, Snapshot)>, StateError> {
        let mut v: Vec<(SnapshotId, StoredSnapshot)> =
            self.all_decoded(SNAPSHOTS, "snapshot", SnapshotId::from_slice)?;
        v.sort_by_key(|(_, s)| s.seq);
        Ok(v.into_iter().map(|(id, s)| (id, s.snapshot)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot's recorded packs are read back until an index entry moves to another
    /// pack or leaves the index; new blobs do not touch them; forgetting the snapshot
    /// removes them.
    #[test]
    fn snapshot_packs_are_kept_until_an_index_entry_moves() {
        let d = tempfile::tempdir().unwrap();
        let s = State::open(&d.path().join("state.redb")).unwrap();
        let rec = PackRecord::copies(10, vec![], 1);
        let e =
            |blob: u8| PackEntry { id: BlobId([blob; 32]), kind: BlobKind::Data, offset: 0, length: 10, raw_length: 8 };
        let (a, b, c, sid) = (PackId([1; 32]), PackId([2; 32]), PackId([3; 32]), SnapshotId([9; 32]));
        s.commit_pack(&a, &rec, &[e(1), e(2)]).unwrap();
        let record = |s: &State| s.set_snapshot_packs(&sid, s.index_moves().unwrap(), &HashSet::from([a])).unwrap();
        assert_eq!(s.snapshot_packs(&sid).unwrap(), None);
        record(&s);
        assert_eq!(s.snapshot_packs(&sid).unwrap(), Some(vec![a]));
        // New blobs in a new pack, and the same pack recorded again: nothing moved.
        s.commit_pack(&b, &rec, &[e(3)]).unwrap();
        s.commit_pack(&a, &rec, &[e(1), e(2)]).unwrap();
        assert_eq!(s.snapshot_packs(&sid).unwrap(), Some(vec![a]));
        // Blob 1 stored again in pack c: the record is stale.
        s.commit_pack(&c, &rec, &[e(1)]).unwrap();
        assert_eq!(s.snapshot_packs(&sid).unwrap(), None);
        // Index entries removed with a garbage pack: stale again.
        record(&s);
        s.mark_garbage(&HashSet::from([c])).unwrap();
        assert_eq!(s.snapshot_packs(&sid).unwrap(), None);
        // A record of the wrong shape is no record: found again, never an error.
        let tx = s.db.begin_write().unwrap();
        tx.open_table(SNAPSHOT_PACKS).unwrap().insert(sid.as_bytes().as_slice(), [1u8; 13].as_slice()).unwrap();
        tx.commit().unwrap();
        assert_eq!(s.snapshot_packs(&sid).unwrap(), None);
        // A recorded snapshot's packs leave with it.
        record(&s);
        s.remove_snapshot(&sid).unwrap();
        assert_eq!(s.snapshot_packs(&sid).unwrap(), None);
    }

    /// The CBOR map of protocol.md §3.5, built field by field from its table.
    fn wire_map(
        holders: Vec<ciborium::Value>,
        copies: u64,
        erasure: ciborium::Value,
        shards: Vec<ciborium::Value>,
    ) -> Vec<u8> {
        use ciborium::Value as V;
        let map = V::Map(vec![
            (V::Text("size".into()), V::Integer(10.into())),
            (V::Text("holders".into()), V::Array(holders)),
            (V::Text("copies".into()), V::Integer(copies.into())),
            (V::Text("garbage".into()), V::Bool(false)),
            (V::Text("erasure".into()), erasure),
            (V::Text("shards".into()), V::Array(shards)),
        ]);
        let mut b = Vec::new();
        ciborium::into_writer(&map, &mut b).unwrap();
        b
    }

    #[test]
    fn a_contract_lifecycle_round_trips_through_its_wire_fields() {
        let signed = |b: u8| crate::identity::Signed { body: vec![b], key: [b; 32], sig: vec![b] };
        let contract = Contract { acceptance: signed(1), client_sig: vec![2] };
        let mut rec = ContractRecord::new(contract, Role::Client, libp2p::PeerId::random(), 100, 50, vec![]);
        let wire = |r: &ContractRecord| ciborium::from_reader::<ciborium::Value, _>(enc(r).as_slice()).unwrap();
        let field = |r: &ContractRecord, name: &str| {
            wire(r).as_map().unwrap().iter().find(|(k, _)| k.as_text() == Some(name)).map(|(_, v)| v.clone()).unwrap()
        };
        assert!(rec.is_live(49) && !rec.is_live(50));
        assert_eq!(field(&rec, "ended"), ciborium::Value::Null);

        // Our cancellation cannot be owed before the contract ends.
        rec.lifecycle.owe_cancel(signed(3));
        assert_eq!(rec.lifecycle, Lifecycle::Live);
        rec.lifecycle.end(7, "moving on".into());
        rec.lifecycle.end(8, "again".into());
        assert_eq!(rec.lifecycle, Lifecycle::Ended { at: 7, reason: "moving on".into() });
        assert!(!rec.is_live(0));
        rec.lifecycle.owe_cancel(signed(3));
        assert_eq!(field(&rec, "ended"), ciborium::Value::Integer(7.into()));
        assert_eq!(field(&rec, "end_reason"), ciborium::Value::Text("moving on".into()));
        assert_ne!(field(&rec, "unsent_cancel"), ciborium::Value::Null);
        let back: ContractRecord = dec("contract", &enc(&rec)).unwrap();
        assert_eq!(back.lifecycle, rec.lifecycle);
        assert_eq!(back.lifecycle.unsent_cancel(), Some(&signed(3)));
        rec.lifecycle.cancel_delivered();
        assert_eq!(rec.lifecycle, Lifecycle::Ended { at: 7, reason: "moving on".into() });
        assert_eq!(field(&rec, "unsent_cancel"), ciborium::Value::Null);

        // A cancellation to send without an end is refused, not read as live.
        let mut bad = wire(&rec);
        for (k, v) in bad.as_map_mut().unwrap() {
            if k.as_text() == Some("ended") {
                *v = ciborium::Value::Null;
            }
        }
        let mut b = Vec::new();
        ciborium::into_writer(&bad, &mut b).unwrap();
        assert!(dec::<ContractRecord>("contract", &b).unwrap_err().to_string().contains("but no end"));
    }

    #[test]
    fn pack_records_keep_the_wire_form_of_protocol_3_5() {
        use ciborium::Value as V;
        let holder = Holder { peer: vec![1], contract: ContractId([3; 32]) };
        let holder_v = V::Map(vec![
            (V::Text("peer".into()), V::Bytes(vec![1])),
            (V::Text("contract".into()), V::Bytes(vec![3; 32])),
        ]);
        let copies = PackRecord::copies(10, vec![holder.clone()], 2);
        assert_eq!(enc(&copies), wire_map(vec![holder_v.clone()], 2, V::Null, vec![]));
        assert_eq!(dec::<PackRecord>("pack", &enc(&copies)).unwrap(), copies);

        let scheme: crate::repo::erasure::Scheme = "1+1".parse().unwrap();
        let shard = |h: Option<Holder>| Shard { id: PackId([4; 32]), size: 5, holder: h };
        let shard_v = |h: V| {
            V::Map(vec![
                (V::Text("id".into()), V::Bytes(vec![4; 32])),
                (V::Text("size".into()), V::Integer(5.into())),
                (V::Text("holder".into()), h),
            ])
        };
        let erasure = PackRecord {
            size: 10,
            placement: Placement::Erasure { scheme, shards: vec![shard(Some(holder)), shard(None)] },
            garbage: false,
            lock_until: 0,
        };
        let scheme_v =
            V::Map(vec![(V::Text("k".into()), V::Integer(1.into())), (V::Text("m".into()), V::Integer(1.into()))]);
        assert_eq!(
            enc(&erasure),
            wire_map(vec![], 0, scheme_v.clone(), vec![shard_v(holder_v.clone()), shard_v(V::Null)])
        );
        assert_eq!(dec::<PackRecord>("pack", &enc(&erasure)).unwrap(), erasure);

        // A record cannot be both, nor shards without a scheme, nor a scheme with the wrong count.
        let both = wire_map(vec![holder_v.clone()], 0, scheme_v.clone(), vec![shard_v(V::Null), shard_v(V::Null)]);
        assert!(dec::<PackRecord>("pack", &both).unwrap_err().to_string().contains("also lists holders"));
        let orphan = wire_map(vec![], 0, V::Null, vec![shard_v(V::Null)]);
        assert!(dec::<PackRecord>("pack", &orphan).unwrap_err().to_string().contains("no erasure scheme"));
        let short = wire_map(vec![], 0, scheme_v, vec![shard_v(V::Null)]);
        assert!(dec::<PackRecord>("pack", &short).unwrap_err().to_string().contains("lists 1 shards, not 2"));
    }

    #[test]
    fn settings_packs_and_index_persist() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.redb");
        {
            let s = State::open(&p).unwrap();
            assert_eq!(s.offered().unwrap(), 0);
            s.set_offered(5 << 30).unwrap();
            let e = PackEntry { id: BlobId([1; 32]), kind: BlobKind::Data, offset: 0, length: 10, raw_length: 8 };
            let rec = PackRecord::copies(10, vec![Holder { peer: vec![1], contract: ContractId([3; 32]) }], 1);
            s.commit_pack(&PackId([2; 32]), &rec, &[e]).unwrap();
        }
        let s = State::open(&p).unwrap();
        assert_eq!(s.offered().unwrap(), 5 << 30);
        assert_eq!(s.blob(&BlobId([1; 32])).unwrap().unwrap().pack, PackId([2; 32]));
        assert!(s.blob(&BlobId([9; 32])).unwrap().is_none());
        let many = s.blobs(&[BlobId([9; 32]), BlobId([1; 32]), BlobId([9; 32])]).unwrap();
        assert_eq!(
            many.iter().map(|e| e.as_ref().map(|e| e.pack)).collect::<Vec<_>>(),
            [None, Some(PackId([2; 32])), None]
        );
        assert_eq!(s.pack(&PackId([2; 32])).unwrap().unwrap().holders().len(), 1);
        assert_eq!(s.blob_count().unwrap(), 1);
        // snapshots made within one second keep the order they were recorded in
        let snap = |n: u8| Snapshot {
            time: 7,
            hostname: "h".into(),
            paths: vec![],
            tree: BlobId([n; 32]),
            parent: None,
            files: 0,
            bytes: 0,
            lock_until: 0,
        };
        for n in [9u8, 3, 5] {
            s.put_snapshot(&SnapshotId([n; 32]), &snap(n)).unwrap();
        }
        let order: Vec<u8> = s.snapshots().unwrap().iter().map(|(id, _)| id.0[0]).collect();
        assert_eq!(order, vec![9, 3, 5]);
    }

    #[test]
    fn index_packs_cover_data_packs() {
        let d = tempfile::tempdir().unwrap();
        let s = State::open(&d.path().join("s.redb")).unwrap();
        let rec = PackRecord::copies(10, vec![], 1);
        let e = |blob: u8, offset| PackEntry {
            id: BlobId([blob; 32]),
            kind: BlobKind::Data,
            offset,
            length: 1,
            raw_length: 1,
        };
        s.commit_pack(&PackId([1; 32]), &rec, &[e(1, 5), e(2, 0)]).unwrap();
        s.commit_pack(&PackId([3; 32]), &rec, &[e(3, 0)]).unwrap();
        let all = |v: &[u8]| v.iter().map(|b| PackId([*b; 32])).collect::<HashSet<_>>();
        assert_eq!(s.unindexed_packs().unwrap(), all(&[1, 3]));
        // The entries of a pack come back in pack order.
        let got = s.pack_entries(&all(&[1])).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1.iter().map(|e| e.offset).collect::<Vec<_>>(), vec![0, 5]);
        s.commit_index_packs(&[(PackId([9; 32]), rec.clone(), vec![PackId([1; 32])])]).unwrap();
        assert_eq!(s.unindexed_packs().unwrap(), all(&[3]));
        s.commit_index_packs(&[(PackId([8; 32]), rec.clone(), vec![PackId([3; 32])])]).unwrap();
        assert!(s.unindexed_packs().unwrap().is_empty());
        let order: Vec<u8> = s.index_packs().unwrap().iter().map(|r| r.pack.0[0]).collect();
        assert_eq!(order, vec![9, 8]);
        s.remove_index_packs(&all(&[9])).unwrap();
        assert_eq!(s.index_packs().unwrap().len(), 1);
    }
}
