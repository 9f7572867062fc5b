//! The persisted form of one inode and the attributes clients see.

use bincode::{Decode, Encode};
use cudele_journal::{FileKind, Ino, InodeRange, SessionId, Timestamp};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Inode attributes as stat(2) reports them.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct Attr {
    pub ino: Ino,
    pub kind: FileKind,
    /// Permission bits including setuid, setgid and sticky (mode & 0o7777).
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    /// Bytes for regular files and symlinks; the number of entries for directories.
    pub size: u64,
    pub rdev: u32,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
}

/// A decoupled subtree: who owns it, which inodes it may allocate, under which policy.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct Decoupling {
    pub owner: SessionId,
    pub range: InodeRange,
    /// The policies.yml text in force while decoupled.
    pub policy: Vec<u8>,
    /// The owner's client-journal events through this sequence number are merged.
    pub merged_seq: u64,
}

/// Everything the metadata store keeps about one inode (entries of a directory are stored
/// separately, one key per entry). Xattrs live with the inode, as in CephFS.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct InodeRecord {
    pub attr: Attr,
    /// For directories: the parent directory (the root is its own parent). Used to refuse
    /// renaming a directory into its own subtree and to find the governing policy.
    pub parent: Ino,
    /// Symlink target (empty for other kinds).
    pub symlink_target: Vec<u8>,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Chunk size of the file's data objects, 0 until data was written.
    pub chunk_size_bytes: u32,
    /// policies.yml attached to this directory.
    pub policy: Option<Vec<u8>>,
    pub decoupling: Option<Decoupling>,
}

impl InodeRecord {
    pub fn is_directory(&self) -> bool {
        self.attr.kind == FileKind::Directory
    }
}

/// One directory entry as readdir returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub ino: Ino,
    pub kind: FileKind,
}

/// A client session as the namespace remembers it (so ids are never reused and decoupled
/// subtrees keep their owner across MDS restarts).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct SessionRecord {
    pub session: SessionId,
    pub client: Vec<u8>,
    pub opened: Timestamp,
}
