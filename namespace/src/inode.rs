//! The persisted form of one inode and the attributes clients see.

use bincode::{Decode, Encode};
use cudele_journal::{ChunkMap, ChunkRef, FileKind, Ino, InodeRange, SessionId, Timestamp};
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
    /// For regular files: the published chunk objects by index (see `Event::SetLayout`); a
    /// chunk without an entry reads as zeros. Never holds a chunk at or past the size, nor
    /// bytes past it.
    pub chunks: ChunkMap,
}

impl InodeRecord {
    pub fn is_directory(&self) -> bool {
        self.attr.kind == FileKind::Directory
    }

    /// Drop the chunks at or past the size and shorten the one it falls in (after the size
    /// changed), so that bytes past the size never come back when the file grows again.
    pub fn clip_chunks(&mut self) {
        let size = self.attr.size;
        let chunk_size = u64::from(self.chunk_size_bytes);
        if chunk_size == 0 {
            self.chunks.clear();
            return;
        }
        let first_past = size.div_ceil(chunk_size);
        self.chunks.split_off(&first_past);
        if let Some((index, chunk)) = self.chunks.last_key_value().map(|(index, chunk)| (*index, *chunk)) {
            let data_bytes = size.saturating_sub(index.saturating_mul(chunk_size));
            if u64::from(chunk.length_bytes) > data_bytes {
                let length_bytes = u32::try_from(data_bytes).unwrap_or(u32::MAX);
                self.chunks.insert(index, ChunkRef { length_bytes, ..chunk });
            }
        }
    }
}

/// An inode record as stored before records carried `chunks` (decoded, never written).
#[derive(Debug, Clone, PartialEq, Eq, Decode)]
pub(crate) struct InodeRecordWithoutChunks {
    pub attr: Attr,
    pub parent: Ino,
    pub symlink_target: Vec<u8>,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    pub chunk_size_bytes: u32,
    pub policy: Option<Vec<u8>>,
    pub decoupling: Option<Decoupling>,
}

impl From<InodeRecordWithoutChunks> for InodeRecord {
    fn from(old: InodeRecordWithoutChunks) -> Self {
        InodeRecord {
            attr: old.attr,
            parent: old.parent,
            symlink_target: old.symlink_target,
            xattrs: old.xattrs,
            chunk_size_bytes: old.chunk_size_bytes,
            policy: old.policy,
            decoupling: old.decoupling,
            chunks: ChunkMap::new(),
        }
    }
}

/// One directory entry as readdir returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub ino: Ino,
    pub kind: FileKind,
}

/// A client session as the namespace remembers it (so ids are never reused, decoupled
/// subtrees keep their owner across MDS restarts, and a restarted MDS knows who may resume
/// the session and which inode numbers it may replay or merge).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct SessionRecord {
    pub session: SessionId,
    pub client: Vec<u8>,
    pub opened: Timestamp,
    /// SHA-256 of the session's secret (`cudele_proto::auth`); None for a session opened
    /// before credentials existed, which nobody can resume.
    pub verifier: Option<[u8; 32]>,
    /// The inode numbers the MDS handed to this session (AllocateInodes with it as owner:
    /// early-reply blocks and the ranges a decoupled subtree asked for), sorted, adjacent
    /// ranges joined, at most `SESSION_RANGES_MAX` (the oldest go first).
    pub ranges: Vec<InodeRange>,
}

impl SessionRecord {
    /// Whether `ino` lies in a range handed to this session.
    pub fn owns_ino(&self, ino: Ino) -> bool {
        let index = self.ranges.partition_point(|range| range.end <= ino);
        self.ranges.get(index).is_some_and(|range| range.contains(ino))
    }
}

/// A session record as stored before sessions carried a verifier and ranges (decoded, never
/// written).
#[derive(Debug, Clone, PartialEq, Eq, Decode)]
pub(crate) struct SessionRecordWithoutCredential {
    pub session: SessionId,
    pub client: Vec<u8>,
    pub opened: Timestamp,
}

impl From<SessionRecordWithoutCredential> for SessionRecord {
    fn from(old: SessionRecordWithoutCredential) -> Self {
        SessionRecord {
            session: old.session,
            client: old.client,
            opened: old.opened,
            verifier: None,
            ranges: Vec::new(),
        }
    }
}
