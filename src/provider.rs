//! The provider's pack store: packs held for other clients, at
//! `home/store/<client PeerId>/<pack id>` (protocol.md §5.2, DESIGN §7).
//!
//! A pack is written to a temporary file in the same directory, checked against its id
//! (Merkle root), fsynced, renamed into place, and the directory fsynced: a crash leaves
//! the whole pack or nothing, and a temporary file is never served (its name cannot parse
//! as a pack id) and is removed at the next start. Quotas (a contract's bytes) are the
//! caller's business; this module only counts bytes per client.
//!
//! Packs are cold data: written once, read again only for an audit or a restore. After a
//! pack is fsynced, and after it is read, its pages are dropped from the page cache
//! (`posix_fadvise(POSIX_FADV_DONTNEED)`, as borg does for its segment files), so that
//! storing 50 GB for others does not evict the owner's own working set, and a busy
//! provider keeps recycling the same few pages instead of growing its cache by every pack
//! it receives.
//!
//! Retention locks (protocol.md §5.9) live in `home/store/<client>/LOCKS` (CBOR
//! [`Locks`], replaced atomically): a locked pack is never deleted before its lock ends,
//! and a locked head is kept as `HEAD.<seq>` when a newer one replaces it, whatever a
//! request says and whatever happens to the contract.

use crate::id::PackId;
use crate::repo::merkle;
use libp2p::PeerId;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Errors of the pack store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The bytes do not hash to the claimed pack id.
    #[error("pack {0} does not match its id")]
    Mismatch(PackId),
    /// Not enough free disk for the pack.
    #[error("not enough free disk at {path} for {need} bytes")]
    DiskFull {
        /// The store directory.
        path: String,
        /// Bytes needed.
        need: u64,
    },
    /// An I/O error, with the path.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The blocking task that ran the store's work stopped before it answered.
    #[error("the pack store's task stopped: {0}")]
    Stopped(#[from] tokio::task::JoinError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.display().to_string(), source }
}

/// The retention locks held for one client (`LOCKS`, protocol.md §5.9).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Locks {
    /// Locked packs: (pack or shard id, lock end in Unix seconds).
    pub packs: Vec<(PackId, u64)>,
    /// Heads held: (sequence number, lock end or 0); the latest is `HEAD`, earlier
    /// locked ones `HEAD.<seq>`.
    pub heads: Vec<(u64, u64)>,
}

impl Locks {
    /// The lock end of `pack` (0: none).
    pub fn pack(&self, pack: &PackId) -> u64 {
        self.packs.iter().find(|(p, _)| p == pack).map(|(_, t)| *t).unwrap_or(0)
    }
    /// The lock end of head `seq` (0: none).
    pub fn head(&self, seq: u64) -> u64 {
        self.heads.iter().find(|(s, _)| *s == seq).map(|(_, t)| *t).unwrap_or(0)
    }
}

/// Why a head was not kept.
#[derive(Debug, thiserror::Error)]
pub enum HeadRefusal {
    /// Older than the one held.
    #[error("head {new} is older than the head {held} held")]
    Older {
        /// The head offered.
        new: u64,
        /// The head held.
        held: u64,
    },
    /// Keeping the head it replaces would exceed [`crate::protocol::MAX_KEPT_HEADS`].
    #[error("{0} locked heads are kept already")]
    TooMany(usize),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The pack store. Cheap to clone.
#[derive(Clone)]
pub struct PackStore {
    dir: PathBuf,
    /// Bytes held per client.
    used: Arc<Mutex<HashMap<PeerId, u64>>>,
    /// Serializes the final rename and count, so a pack stored twice at once counts once.
    commit: Arc<Mutex<()>>,
    /// Bytes of disk always left free.
    reserve: u64,
}

/// Tells the kernel that the file's cached pages will not be needed soon
/// (`posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED)`, POSIX.1-2008), so clean pages go back
/// to the free pool at once. Advice only: a failure changes nothing but the cache and is
/// ignored; a no-op where the call does not exist.
fn drop_cached(f: &std::fs::File) {
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    let _ = nix::fcntl::posix_fadvise(f, 0, 0, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED);
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    let _ = f;
}

/// Reads a whole file into `out` (its content replaced) and drops its pages from the cache
/// ([`drop_cached`]): for packs, which are read once per audit or restore.
fn read_uncached(p: &Path, out: &mut Vec<u8>) -> std::io::Result<()> {
    use std::io::Read;
    let mut f = std::fs::File::open(p)?;
    out.clear();
    out.reserve(f.metadata().map(|m| m.len() as usize).unwrap_or(0));
    f.read_to_end(out)?;
    drop_cached(&f);
    Ok(())
}

/// First half of an atomic write: `data` in a fresh temporary file `.tmp-…` next to
/// `dest`, fsynced, its pages then dropped from the page cache (the files written this way
/// are packs, heads, claims and configuration: written once, read seldom). Returns its
/// path; [`commit_tmp`] finishes. Blocking.
pub fn write_tmp(dest: &Path, data: &[u8]) -> std::io::Result<PathBuf> {
    let dir = dest.parent().ok_or_else(|| std::io::Error::other("no parent directory"))?;
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".tmp-{name}-{}", rand::random::<u64>()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        drop_cached(&f);
        Ok(())
    };
    write().inspect_err(|_| {
        discard(&tmp);
    })?;
    Ok(tmp)
}

/// Removes a file that is no longer wanted (a temporary file after a failed write, a head
/// whose lock ended). A failure loses nothing, since such files are never read and are
/// removed again at the next start, but it is logged, naming the file.
fn discard(path: &Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!("cannot remove {}: {e}", path.display());
    }
}

/// Second half of an atomic write: renames `tmp` onto `dest` and fsyncs the directory, so
/// a crash leaves the whole file or nothing. Removes `tmp` on failure. Blocking.
pub fn commit_tmp(tmp: &Path, dest: &Path) -> std::io::Result<()> {
    let dir = dest.parent().ok_or_else(|| std::io::Error::other("no parent directory"))?;
    std::fs::rename(tmp, dest).and_then(|_| std::fs::File::open(dir)?.sync_all()).inspect_err(|_| {
        discard(tmp);
    })
}

/// Free bytes on the filesystem holding `path`, for an unprivileged user.
pub fn free_space(path: &Path) -> std::io::Result<u64> {
    fs4::available_space(path)
}

impl PackStore {
    /// Opens the store at `dir`, creating it, removing leftover temporary files and counting
    /// bytes per client. Stores that would leave less than `reserve` bytes of disk free fail
    /// with [`StoreError::DiskFull`].
    pub fn open(dir: &Path, reserve: u64) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut used = HashMap::new();
        for client in std::fs::read_dir(dir).map_err(io(dir))? {
            let client = client.map_err(io(dir))?;
            let Some(peer) = client.file_name().to_str().and_then(|s| s.parse::<PeerId>().ok()) else {
                continue;
            };
            let cdir = client.path();
            let mut total = 0;
            for f in std::fs::read_dir(&cdir).map_err(io(&cdir))? {
                let f = f.map_err(io(&cdir))?;
                let name = f.file_name();
                if name.to_str().and_then(|s| s.parse::<PackId>().ok()).is_some() {
                    total += f.metadata().map_err(io(&f.path()))?.len();
                } else if name.to_string_lossy().starts_with(".tmp-") {
                    discard(&f.path());
                }
            }
            used.insert(peer, total);
        }
        Ok(PackStore {
            dir: dir.to_path_buf(),
            used: Arc::new(Mutex::new(used)),
            commit: Arc::new(Mutex::new(())),
            reserve,
        })
    }

    fn path(&self, client: &PeerId, pack: &PackId) -> PathBuf {
        self.dir.join(client.to_string()).join(pack.to_string())
    }

    /// Bytes held for `client`.
    pub fn used(&self, client: &PeerId) -> u64 {
        self.used.lock().map(|m| m.get(client).copied().unwrap_or(0)).unwrap_or(0)
    }

    /// Bytes held for all clients.
    pub fn used_total(&self) -> u64 {
        self.used.lock().map(|m| m.values().sum()).unwrap_or(0)
    }

    /// True when the pack is held for `client`.
    pub fn has(&self, client: &PeerId, pack: &PackId) -> bool {
        self.path(client, pack).is_file()
    }

    /// Verifies and atomically writes a pack. Blocking; run off the async runtime.
    /// Storing a pack held already succeeds without writing.
    pub fn put(&self, client: &PeerId, pack: &PackId, data: &[u8]) -> Result<(), StoreError> {
        if merkle::root(data) != *pack {
            return Err(StoreError::Mismatch(*pack));
        }
        let dest = self.path(client, pack);
        if dest.is_file() {
            return Ok(());
        }
        let cdir = self.dir.join(client.to_string());
        std::fs::create_dir_all(&cdir).map_err(io(&cdir))?;
        let free = free_space(&cdir).map_err(io(&cdir))?;
        if free < data.len() as u64 + self.reserve {
            return Err(StoreError::DiskFull { path: cdir.display().to_string(), need: data.len() as u64 });
        }
        let tmp = write_tmp(&dest, data).map_err(io(&dest))?;
        let Ok(_guard) = self.commit.lock() else {
            discard(&tmp);
            return Err(StoreError::Io {
                path: dest.display().to_string(),
                source: std::io::Error::other("lock poisoned"),
            });
        };
        if dest.is_file() {
            discard(&tmp);
            return Ok(());
        }
        commit_tmp(&tmp, &dest).map_err(io(&dest))?;
        if let Ok(mut m) = self.used.lock() {
            *m.entry(*client).or_default() += data.len() as u64;
        }
        Ok(())
    }

    fn locks_path(&self, client: &PeerId) -> PathBuf {
        self.dir.join(client.to_string()).join("LOCKS")
    }

    /// The retention locks held for `client`. Blocking.
    pub fn locks(&self, client: &PeerId) -> Result<Locks, StoreError> {
        let p = self.locks_path(client);
        match std::fs::read(&p) {
            Ok(b) => crate::protocol::from_cbor("locks", &b).map_err(|e| StoreError::Io {
                path: p.display().to_string(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Locks::default()),
            Err(e) => Err(StoreError::Io { path: p.display().to_string(), source: e }),
        }
    }

    fn write_locks(&self, client: &PeerId, locks: &Locks) -> Result<(), StoreError> {
        let p = self.locks_path(client);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).map_err(io(d))?;
        }
        let tmp = write_tmp(&p, &crate::protocol::to_cbor(locks)).map_err(io(&p))?;
        commit_tmp(&tmp, &p).map_err(io(&p))
    }

    fn guard(&self, what: &Path) -> Result<std::sync::MutexGuard<'_, ()>, StoreError> {
        self.commit.lock().map_err(|_| StoreError::Io {
            path: what.display().to_string(),
            source: std::io::Error::other("store lock poisoned"),
        })
    }

    /// Locks each of `packs` held for `client` until at least `until` (a lock never
    /// shrinks); locks that ended at `now` are forgotten. Returns how many are held and
    /// locked. Blocking.
    pub fn lock(&self, client: &PeerId, packs: &[PackId], until: u64, now: u64) -> Result<u32, StoreError> {
        let _g = self.guard(&self.locks_path(client))?;
        let mut locks = self.locks(client)?;
        locks.packs.retain(|(_, t)| *t > now);
        let mut n = 0;
        for p in packs {
            if !self.has(client, p) {
                continue;
            }
            n += 1;
            match locks.packs.iter_mut().find(|(q, _)| q == p) {
                Some((_, t)) => *t = (*t).max(until),
                None => locks.packs.push((*p, until)),
            }
        }
        self.write_locks(client, &locks)?;
        Ok(n)
    }

    /// Deletes every pack and head held for `client` that no retention lock holds at
    /// `now`; returns the bytes freed. With nothing locked the client's directory goes.
    /// Blocking.
    pub fn drop_client(&self, client: &PeerId, now: u64) -> Result<u64, StoreError> {
        let cdir = self.dir.join(client.to_string());
        let _guard = self.guard(&cdir)?;
        let mut locks = self.locks(client)?;
        let current = locks.heads.iter().map(|(s, _)| *s).max().is_some_and(|s| locks.head(s) > now);
        locks.packs.retain(|(_, t)| *t > now);
        locks.heads.retain(|(_, t)| *t > now);
        if locks.packs.is_empty() && locks.heads.is_empty() {
            match std::fs::remove_dir_all(&cdir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::Io { path: cdir.display().to_string(), source: e }),
            }
            return Ok(self.used.lock().ok().and_then(|mut m| m.remove(client)).unwrap_or(0));
        }
        let mut freed = 0;
        for f in std::fs::read_dir(&cdir).map_err(io(&cdir))? {
            let f = f.map_err(io(&cdir))?;
            let name = f.file_name().to_string_lossy().into_owned();
            let keep = match name.parse::<PackId>() {
                Ok(p) => locks.pack(&p) > now,
                Err(_) if name == "HEAD" => current,
                Err(_) => match name.strip_prefix("HEAD.").and_then(|n| n.parse::<u64>().ok()) {
                    Some(seq) => locks.head(seq) > now,
                    None => true, // LOCKS, and anything else that is not ours to judge
                },
            };
            if keep {
                continue;
            }
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            std::fs::remove_file(f.path()).map_err(io(&f.path()))?;
            if name.parse::<PackId>().is_ok() {
                freed += len;
            }
        }
        self.write_locks(client, &locks)?;
        if let Ok(mut m) = self.used.lock() {
            let u = m.entry(*client).or_default();
            *u = u.saturating_sub(freed);
        }
        Ok(freed)
    }

    /// Deletes one pack held for `client`: `Some(bytes freed)` (0 when not held), or
    /// `None` when a retention lock holds it at `now` (kept). Blocking.
    pub fn delete(&self, client: &PeerId, pack: &PackId, now: u64) -> Result<Option<u64>, StoreError> {
        let p = self.path(client, pack);
        let _guard = self.guard(&p)?;
        if self.locks(client)?.pack(pack) > now {
            return Ok(None);
        }
        let len = match std::fs::metadata(&p) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Some(0)),
            Err(e) => return Err(StoreError::Io { path: p.display().to_string(), source: e }),
        };
        std::fs::remove_file(&p).map_err(io(&p))?;
        if let Ok(mut m) = self.used.lock() {
            let u = m.entry(*client).or_default();
            *u = u.saturating_sub(len);
        }
        Ok(Some(len))
    }

    /// Keeps head `seq` (locked until `lock_until`, 0 for none) as the latest for
    /// `client`, atomically; the head it replaces stays as `HEAD.<seq>` while locked, and
    /// earlier heads whose lock ended at `now` go. The caller checks the head's signature.
    /// Errors: an older head than the one held, too many locked heads. Blocking.
    pub fn put_head(
        &self,
        client: &PeerId,
        head: &[u8],
        seq: u64,
        lock_until: u64,
        now: u64,
    ) -> Result<(), HeadRefusal> {
        let cdir = self.dir.join(client.to_string());
        std::fs::create_dir_all(&cdir).map_err(io(&cdir))?;
        let _g = self.guard(&cdir)?;
        let mut locks = self.locks(client)?;
        let dest = cdir.join("HEAD");
        let held = locks.heads.iter().map(|(s, _)| *s).max();
        if let Some(h) = held
            && h > seq
        {
            return Err(HeadRefusal::Older { new: seq, held: h });
        }
        if let Some(h) = held.filter(|h| *h != seq && locks.head(*h) > now) {
            let kept = locks.heads.iter().filter(|(s, t)| *s != h && *t > now).count();
            if kept >= crate::protocol::MAX_KEPT_HEADS {
                return Err(HeadRefusal::TooMany(kept));
            }
            let old = cdir.join(format!("HEAD.{h}"));
            std::fs::rename(&dest, &old).map_err(io(&old))?;
        }
        let tmp = write_tmp(&dest, head).map_err(io(&dest))?;
        commit_tmp(&tmp, &dest).map_err(io(&dest))?;
        // Earlier heads whose lock ended go; the new one is recorded.
        let gone: Vec<u64> = locks.heads.iter().filter(|(s, t)| *s != seq && *t <= now).map(|(s, _)| *s).collect();
        for s in &gone {
            discard(&cdir.join(format!("HEAD.{s}")));
        }
        locks.heads.retain(|(s, t)| *s != seq && *t > now);
        locks.heads.push((seq, lock_until));
        self.write_locks(client, &locks).map_err(HeadRefusal::from)
    }

    /// The head held for `client`, if any. Blocking.
    pub fn get_head(&self, client: &PeerId) -> Result<Option<Vec<u8>>, StoreError> {
        let p = self.dir.join(client.to_string()).join("HEAD");
        match std::fs::read(&p) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Io { path: p.display().to_string(), source: e }),
        }
    }

    /// Every head held for `client`: the latest, then the locked earlier ones, newest
    /// first. Blocking.
    pub fn get_heads(&self, client: &PeerId) -> Result<Vec<Vec<u8>>, StoreError> {
        let cdir = self.dir.join(client.to_string());
        let mut out: Vec<Vec<u8>> = self.get_head(client)?.into_iter().collect();
        let mut seqs: Vec<u64> = self.locks(client)?.heads.iter().map(|(s, _)| *s).collect();
        seqs.sort_unstable_by(|a, b| b.cmp(a));
        for s in seqs {
            match std::fs::read(cdir.join(format!("HEAD.{s}"))) {
                Ok(b) => out.push(b),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::Io { path: cdir.display().to_string(), source: e }),
            }
        }
        Ok(out)
    }

    /// Reads a pack held for `client`; `Ok(None)` when not held. Blocking.
    pub fn get(&self, client: &PeerId, pack: &PackId) -> Result<Option<Vec<u8>>, StoreError> {
        let mut out = Vec::new();
        Ok(self.get_into(client, pack, &mut out)?.then_some(out))
    }

    /// [`Self::get`] into `out` (its content replaced): `Ok(false)`, `out` empty, when
    /// the pack is not held. Blocking.
    pub fn get_into(&self, client: &PeerId, pack: &PackId, out: &mut Vec<u8>) -> Result<bool, StoreError> {
        let p = self.path(client, pack);
        match read_uncached(&p, out) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                out.clear();
                Ok(false)
            }
            Err(e) => Err(StoreError::Io { path: p.display().to_string(), source: e }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resident bytes of `path` in the page cache, by util-linux's `fincore`.
    #[cfg(target_os = "linux")]
    fn resident(path: &Path) -> u64 {
        let out = std::process::Command::new("fincore")
            .args(["--bytes", "--noheadings", "--output", "RES"])
            .arg(path)
            .output()
            .expect("fincore (util-linux) runs");
        assert!(out.status.success(), "fincore: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().parse().expect("fincore prints a byte count")
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_stored_or_served_pack_leaves_no_pages_in_the_cache() {
        // In the build directory: a tmpfs /tmp would keep every page whatever the advice.
        let build = concat!(env!("CARGO_MANIFEST_DIR"), "/target");
        std::fs::create_dir_all(build).unwrap();
        let d = tempfile::tempdir_in(build).unwrap();
        let s = PackStore::open(d.path(), 0).unwrap();
        let client = PeerId::random();
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let id = merkle::root(&data);
        s.put(&client, &id, &data).unwrap();
        let path = s.path(&client, &id);
        assert_eq!(resident(&path), 0, "a stored pack's pages were left in the cache");
        // an ordinary read caches the pages (so the measure can see them) ...
        assert_eq!(std::fs::read(&path).unwrap(), data);
        assert!(resident(&path) > 0);
        // ... and serving the pack drops them again
        assert_eq!(s.get(&client, &id).unwrap().unwrap(), data);
        assert_eq!(resident(&path), 0, "a served pack's pages were left in the cache");
    }

    #[test]
    fn put_verifies_is_atomic_and_counts() {
        let d = tempfile::tempdir().unwrap();
        let s = PackStore::open(d.path(), 0).unwrap();
        let client = PeerId::random();
        let data = vec![9u8; 200_000];
        let id = merkle::root(&data);
        assert!(matches!(s.put(&client, &PackId([0; 32]), &data), Err(StoreError::Mismatch(_))));
        assert_eq!(s.used(&client), 0);
        s.put(&client, &id, &data).unwrap();
        s.put(&client, &id, &data).unwrap();
        assert_eq!(s.used(&client), 200_000);
        assert_eq!(s.get(&client, &id).unwrap().unwrap(), data);
        assert!(s.get(&PeerId::random(), &id).unwrap().is_none());
        // Into a buffer: its content replaced, emptied when the pack is not held.
        let mut buf = vec![9u8; 3];
        assert!(s.get_into(&client, &id, &mut buf).unwrap());
        assert_eq!(buf, data);
        assert!(!s.get_into(&PeerId::random(), &id, &mut buf).unwrap());
        assert!(buf.is_empty());
        // a leftover temporary file is removed and not counted at the next open
        std::fs::write(d.path().join(client.to_string()).join(".tmp-x"), b"partial").unwrap();
        let s2 = PackStore::open(d.path(), 0).unwrap();
        assert!(matches!(
            PackStore::open(d.path(), u64::MAX / 2).unwrap().put(&PeerId::random(), &id, &data),
            Err(StoreError::DiskFull { .. })
        ));
        assert_eq!(s2.used(&client), 200_000);
        assert!(!d.path().join(client.to_string()).join(".tmp-x").exists());
    }

    #[test]
    fn locked_packs_and_heads_outlive_deletes_and_the_contract() {
        let d = tempfile::tempdir().unwrap();
        let s = PackStore::open(d.path(), 0).unwrap();
        let client = PeerId::random();
        let (a, b) = (vec![1u8; 1000], vec![2u8; 2000]);
        let (ia, ib) = (merkle::root(&a), merkle::root(&b));
        s.put(&client, &ia, &a).unwrap();
        s.put(&client, &ib, &b).unwrap();
        assert_eq!(s.lock(&client, &[ia, PackId([9; 32])], 500, 100).unwrap(), 1, "only held packs lock");
        assert_eq!(s.lock(&client, &[ia], 300, 100).unwrap(), 1);
        assert_eq!(s.locks(&client).unwrap().pack(&ia), 500, "a lock never shrinks");
        assert_eq!(s.delete(&client, &ia, 200).unwrap(), None, "locked: kept");
        assert_eq!(s.delete(&client, &ib, 200).unwrap(), Some(2000));
        // Heads: a locked head is kept when replaced; an unlocked one is not.
        s.put_head(&client, b"head1", 1, 400, 100).unwrap();
        s.put_head(&client, b"head2", 2, 0, 100).unwrap();
        s.put_head(&client, b"head3", 3, 0, 100).unwrap();
        assert_eq!(s.get_heads(&client).unwrap(), vec![b"head3".to_vec(), b"head1".to_vec()]);
        assert!(matches!(s.put_head(&client, b"old", 2, 0, 100), Err(HeadRefusal::Older { .. })));
        // The contract ends: what is locked stays, the rest goes.
        assert_eq!(s.drop_client(&client, 200).unwrap(), 0);
        assert!(s.has(&client, &ia));
        assert_eq!(s.get_heads(&client).unwrap(), vec![b"head1".to_vec()]);
        // After the locks end, everything goes.
        assert_eq!(s.drop_client(&client, 600).unwrap(), 1000);
        assert!(!s.has(&client, &ia) && s.get_heads(&client).unwrap().is_empty());
        assert!(!d.path().join(client.to_string()).exists());
    }
}
