//! The provider's pack store: packs held for other clients, at
//! `home/store/<client PeerId>/<pack id>` (protocol.md §5.2, DESIGN §7).
//!
//! A pack is written to a temporary file in the same directory, checked against its id
//! (Merkle root), fsynced, renamed into place, and the directory fsynced: a crash leaves
//! the whole pack or nothing, and a temporary file is never served (its name cannot parse
//! as a pack id) and is removed at the next start. Quotas (a contract's bytes) are the
//! caller's business; this module only counts bytes per client.

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
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.display().to_string(), source }
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

/// First half of an atomic write: `data` in a fresh temporary file `.tmp-…` next to
/// `dest`, fsynced. Returns its path; [`commit_tmp`] finishes. Blocking.
pub fn write_tmp(dest: &Path, data: &[u8]) -> std::io::Result<PathBuf> {
    let dir = dest.parent().ok_or_else(|| std::io::Error::other("no parent directory"))?;
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".tmp-{name}-{}", rand::random::<u64>()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()
    };
    write().inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })?;
    Ok(tmp)
}

/// Second half of an atomic write: renames `tmp` onto `dest` and fsyncs the directory, so
/// a crash leaves the whole file or nothing. Removes `tmp` on failure. Blocking.
pub fn commit_tmp(tmp: &Path, dest: &Path) -> std::io::Result<()> {
    let dir = dest.parent().ok_or_else(|| std::io::Error::other("no parent directory"))?;
    std::fs::rename(tmp, dest).and_then(|_| std::fs::File::open(dir)?.sync_all()).inspect_err(|_| {
        let _ = std::fs::remove_file(tmp);
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
                    let _ = std::fs::remove_file(f.path());
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
            let _ = std::fs::remove_file(&tmp);
            return Err(StoreError::Io {
                path: dest.display().to_string(),
                source: std::io::Error::other("lock poisoned"),
            });
        };
        if dest.is_file() {
            let _ = std::fs::remove_file(&tmp);
            return Ok(());
        }
        commit_tmp(&tmp, &dest).map_err(io(&dest))?;
        if let Ok(mut m) = self.used.lock() {
            *m.entry(*client).or_default() += data.len() as u64;
        }
        Ok(())
    }

    /// Deletes every pack held for `client`; returns the bytes freed. Blocking.
    pub fn drop_client(&self, client: &PeerId) -> Result<u64, StoreError> {
        let cdir = self.dir.join(client.to_string());
        let _guard = self.commit.lock().map_err(|_| StoreError::Io {
            path: cdir.display().to_string(),
            source: std::io::Error::other("store lock poisoned"),
        })?;
        match std::fs::remove_dir_all(&cdir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::Io { path: cdir.display().to_string(), source: e }),
        }
        Ok(self.used.lock().ok().and_then(|mut m| m.remove(client)).unwrap_or(0))
    }

    /// Deletes one pack held for `client`; returns the bytes freed (0 when not held). Blocking.
    pub fn delete(&self, client: &PeerId, pack: &PackId) -> Result<u64, StoreError> {
        let p = self.path(client, pack);
        let _guard = self.commit.lock().map_err(|_| StoreError::Io {
            path: p.display().to_string(),
            source: std::io::Error::other("store lock poisoned"),
        })?;
        let len = match std::fs::metadata(&p) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(StoreError::Io { path: p.display().to_string(), source: e }),
        };
        std::fs::remove_file(&p).map_err(io(&p))?;
        if let Ok(mut m) = self.used.lock() {
            let u = m.entry(*client).or_default();
            *u = u.saturating_sub(len);
        }
        Ok(len)
    }

    /// Replaces the head held for `client` (`home/store/<client>/HEAD`), atomically. The
    /// caller checks it first. Blocking.
    pub fn put_head(&self, client: &PeerId, head: &[u8]) -> Result<(), StoreError> {
        let cdir = self.dir.join(client.to_string());
        std::fs::create_dir_all(&cdir).map_err(io(&cdir))?;
        let dest = cdir.join("HEAD");
        let tmp = write_tmp(&dest, head).map_err(io(&dest))?;
        commit_tmp(&tmp, &dest).map_err(io(&dest))
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

    /// Reads a pack held for `client`; `Ok(None)` when not held. Blocking.
    pub fn get(&self, client: &PeerId, pack: &PackId) -> Result<Option<Vec<u8>>, StoreError> {
        let p = self.path(client, pack);
        match std::fs::read(&p) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Io { path: p.display().to_string(), source: e }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
