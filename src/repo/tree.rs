//! Trees and snapshots (protocol.md §3.4): CBOR documents stored as [`BlobKind::Tree`] blobs.
//!
//! A [`Tree`] lists one directory: entries sorted by name bytes, each a file (its content
//! blob ids in order), a directory (its subtree id) or a symlink (its target). Names and
//! targets are raw bytes, so any Unix file name survives. A [`Snapshot`] names the root
//! tree whose entries are the backed-up paths, by their last component.
//!
//! [`BlobKind::Tree`]: super::blob::BlobKind::Tree

use super::RepoError;
use crate::id::{BlobId, SnapshotId};
use serde::{Deserialize, Serialize};

/// Kind of a tree entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeKind {
    /// A regular file.
    #[default]
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A named pipe (FIFO): restored empty, with its mode.
    Fifo,
}

/// One extended attribute: name and value, raw bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xattr {
    /// Its name, e.g. `user.comment`.
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    /// Its value.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// One directory entry (the default: an empty regular file named "").
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// The name (one path component), raw bytes.
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    /// File, directory or symlink.
    pub kind: NodeKind,
    /// Unix permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Size, bytes (files only; 0 otherwise).
    pub size: u64,
    /// Inode number, used to detect an unchanged file on the next backup.
    pub inode: u64,
    /// Content blob ids, in order (files only).
    pub content: Vec<BlobId>,
    /// Subtree id (directories only).
    pub subtree: Option<BlobId>,
    /// Link target, raw bytes (symlinks only).
    #[serde(with = "serde_bytes")]
    pub target: Vec<u8>,
    /// Owner user and group ids; absent in trees from before they were recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<(u32, u32)>,
    /// Device id of the file system holding it (files with more than one link only, to
    /// find the other names of the same file; 0 otherwise).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub device: u64,
    /// Hard links to it (files only, when more than one; 0 otherwise).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub links: u64,
    /// Extended attributes (files and directories), sorted by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xattrs: Vec<Xattr>,
}

/// A directory listing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    /// Entries sorted by `name`.
    pub nodes: Vec<Node>,
}

/// A snapshot: one backup run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// When the backup started, seconds since the Unix epoch.
    pub time: u64,
    /// Host name of the machine backed up.
    pub hostname: String,
    /// Absolute paths backed up, in the order of the root tree's entries.
    pub paths: Vec<String>,
    /// Root tree: one entry per path, named by its last component.
    pub tree: BlobId,
    /// The snapshot this one was based on, if any.
    pub parent: Option<SnapshotId>,
    /// Regular files in the snapshot.
    pub files: u64,
    /// Bytes of file content in the snapshot.
    pub bytes: u64,
    /// Retention lock (protocol.md §5.9): until this Unix second the snapshot is not
    /// forgotten and its packs are locked at their holders. 0 (absent) = none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lock_until: u64,
}

/// Encodes any document as CBOR.
pub fn encode<T: Serialize>(doc: &T) -> Vec<u8> {
    crate::protocol::to_cbor(doc)
}

/// Decodes a tree.
pub fn decode_tree(b: &[u8]) -> Result<Tree, RepoError> {
    ciborium::from_reader(b).map_err(|e| RepoError::BadDocument("tree", e.to_string()))
}

/// Decodes a snapshot.
pub fn decode_snapshot(b: &[u8]) -> Result<Snapshot, RepoError> {
    ciborium::from_reader(b).map_err(|e| RepoError::BadDocument("snapshot", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let t = Tree {
            nodes: vec![Node {
                name: "ünï code".as_bytes().to_vec(),
                kind: NodeKind::File,
                mode: 0o644,
                mtime_ns: 1_700_000_000_123_456_789,
                size: 3,
                inode: 9,
                content: vec![BlobId([1; 32])],
                subtree: None,
                target: vec![],
                owner: Some((1234, 100)),
                device: 64769,
                links: 3,
                xattrs: vec![Xattr { name: b"user.comment".to_vec(), value: b"\x00bytes".to_vec() }],
            }],
        };
        assert_eq!(decode_tree(&encode(&t)).unwrap(), t);
        // A node without the optional fields (a tree written before they existed) decodes
        // with none of them, and encodes back to the same bytes.
        let old = Node { owner: None, device: 0, links: 0, xattrs: vec![], ..t.nodes[0].clone() };
        let bytes = encode(&Tree { nodes: vec![old.clone()] });
        assert!(!bytes.windows(5).any(|w| w == b"owner"), "absent fields are not written");
        assert_eq!(decode_tree(&bytes).unwrap().nodes[0], old);
        assert!(decode_tree(&[0xff, 0x00]).is_err());
        assert!(decode_snapshot(&encode(&t)).is_err());
    }
}
