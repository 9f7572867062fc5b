//! The journal event: one type for every namespace mutation, shared by the MDS journal and
//! client journals so that merging a decoupled subtree is a replay (DESIGN.md §4).
//!
//! Events carry every value the apply step needs (inode numbers, timestamps chosen by the
//! writer), so applying the same sequence twice from the same state yields the same namespace.

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

/// Inode number. The root directory is [`ROOT_INO`].
pub type Ino = u64;
/// A client session, assigned by the MDS; 0 is the MDS itself.
pub type SessionId = u64;
/// Position of an event in a journal; strictly increasing, starting at 1.
pub type Seq = u64;

pub const ROOT_INO: Ino = 1;
/// Longest name a directory entry may have, in bytes (NAME_MAX on Linux).
pub const NAME_LENGTH_MAX_BYTES: usize = 255;
/// Longest symlink target, in bytes (PATH_MAX on Linux).
pub const SYMLINK_TARGET_LENGTH_MAX_BYTES: usize = 4096;
/// Largest xattr value, in bytes (XATTR_SIZE_MAX on Linux).
pub const XATTR_VALUE_LENGTH_MAX_BYTES: usize = 65536;

/// Wall-clock time with nanoseconds, as stored in inode attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Encode, Decode, Serialize, Deserialize)]
pub struct Timestamp {
    pub seconds: i64,
    pub nanoseconds: u32,
}

impl Timestamp {
    pub fn now() -> Self {
        let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Timestamp { seconds: since_epoch.as_secs() as i64, nanoseconds: since_epoch.subsec_nanos() }
    }
}

/// The kind of an inode (the S_IFMT part of a mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
pub enum FileKind {
    Regular,
    Directory,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

/// The attribute changes of one setattr; `None` leaves a field as it is.
/// Times are resolved by the writer (UTIME_NOW becomes a concrete time) so replay is exact.
#[derive(Debug, Clone, PartialEq, Eq, Default, Encode, Decode, Serialize, Deserialize)]
pub struct AttrChanges {
    /// Permission bits including setuid, setgid and sticky (mode & 0o7777).
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<Timestamp>,
    pub mtime: Option<Timestamp>,
}

/// What a rename does when the target name exists (renameat2 flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub enum RenameMode {
    /// Plain rename(2): replace the target if it exists and is compatible.
    Replace,
    /// RENAME_NOREPLACE: fail with EEXIST if the target exists.
    NoReplace,
    /// RENAME_EXCHANGE: atomically swap source and target; both must exist.
    Exchange,
}

/// setxattr flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub enum XattrMode {
    /// Create or replace.
    Upsert,
    /// XATTR_CREATE: fail with EEXIST if it exists.
    Create,
    /// XATTR_REPLACE: fail with ENODATA if it does not exist.
    Replace,
}

/// A half-open range of inode numbers `[start, end)` handed to one owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
pub struct InodeRange {
    pub start: Ino,
    pub end: Ino,
}

impl InodeRange {
    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn contains(&self, ino: Ino) -> bool {
        self.start <= ino && ino < self.end
    }
}

/// Which write made a chunk object (see the client's `data` module): the writer's session
/// (session ids are never reused) and a number that writer never repeats. Object names carry
/// it, so no two writes ever share an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode, Serialize, Deserialize)]
pub struct ChunkVersion {
    pub writer: SessionId,
    pub serial: u64,
}

/// A published chunk: the object version a file's chunk reads from, and how many leading
/// bytes of that object are data (a truncate shortens this; the object is never changed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
pub struct ChunkRef {
    pub version: ChunkVersion,
    pub length_bytes: u32,
}

/// One entry of a [`Event::SetLayout`]: chunk `index` of the file now reads from `chunk`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
pub struct ChunkUpdate {
    pub index: u64,
    pub chunk: ChunkRef,
}

/// A file's published chunks by index; an index without an entry is a hole (zeros).
pub type ChunkMap = std::collections::BTreeMap<u64, ChunkRef>;

/// One namespace mutation. Names are raw bytes, as Linux names are.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub enum Event {
    /// create(2)/mknod(2) of a non-directory, non-symlink inode.
    Create {
        parent: Ino,
        name: Vec<u8>,
        ino: Ino,
        kind: FileKind,
        /// Permission bits (mode & 0o7777), umask already applied by the caller.
        mode: u32,
        uid: u32,
        gid: u32,
        rdev: u32,
        time: Timestamp,
    },
    Mkdir {
        parent: Ino,
        name: Vec<u8>,
        ino: Ino,
        mode: u32,
        uid: u32,
        gid: u32,
        time: Timestamp,
    },
    Symlink {
        parent: Ino,
        name: Vec<u8>,
        ino: Ino,
        target: Vec<u8>,
        uid: u32,
        gid: u32,
        time: Timestamp,
    },
    /// A new hard link `parent/name` to the existing non-directory `ino`.
    Link {
        ino: Ino,
        parent: Ino,
        name: Vec<u8>,
        time: Timestamp,
    },
    Unlink {
        parent: Ino,
        name: Vec<u8>,
        time: Timestamp,
    },
    Rmdir {
        parent: Ino,
        name: Vec<u8>,
        time: Timestamp,
    },
    Rename {
        source_parent: Ino,
        source_name: Vec<u8>,
        target_parent: Ino,
        target_name: Vec<u8>,
        mode: RenameMode,
        time: Timestamp,
    },
    SetAttr {
        ino: Ino,
        changes: AttrChanges,
        time: Timestamp,
    },
    SetXattr {
        ino: Ino,
        name: Vec<u8>,
        value: Vec<u8>,
        mode: XattrMode,
        time: Timestamp,
    },
    RemoveXattr {
        ino: Ino,
        name: Vec<u8>,
        time: Timestamp,
    },
    /// The client wrote file data: the new size and modification time, and the chunk objects
    /// it uploaded under fresh versions, which this event publishes (sorted by index, at most
    /// `codec::LAYOUT_CHUNK_UPDATES_MAX`). Chunks at or past `size` are dropped from the map.
    SetLayout {
        ino: Ino,
        size: u64,
        chunk_size_bytes: u32,
        mtime: Timestamp,
        chunks: Vec<ChunkUpdate>,
    },
    /// The directory `ino` is decoupled: `owner` applies its subtree locally, allocating
    /// inodes from `range`, under `policy` (the policies.yml text).
    Decouple {
        ino: Ino,
        owner: SessionId,
        range: InodeRange,
        policy: Vec<u8>,
    },
    /// The decoupled subtree at `ino` returns to the MDS.
    Recouple {
        ino: Ino,
    },
    /// Attach (Some) or remove (None) a policies.yml on directory `ino`.
    SetPolicy {
        ino: Ino,
        policy: Option<Vec<u8>>,
    },
    /// The MDS handed `range` to `owner` (so it is never handed out again).
    AllocateInodes {
        owner: SessionId,
        range: InodeRange,
    },
    SessionOpen {
        session: SessionId,
        client: Vec<u8>,
        time: Timestamp,
    },
    SessionClose {
        session: SessionId,
    },
    /// The decoupled subtree at `ino` has merged its owner's client journal through
    /// `through_seq` (client journal sequence numbers); the merged events precede this one
    /// in the same segment, so a merge is durable whole or not at all, and merging the same
    /// journal again skips what is already in.
    Merged {
        ino: Ino,
        owner: SessionId,
        through_seq: Seq,
    },
    /// A session opened with a credential (event format 3): `verifier` is the SHA-256 of
    /// its secret (`cudele_proto::auth::credential_verifier`), never the secret, so that the
    /// journal — readable from the object store — proves nothing to whoever reads it, and
    /// the session can be resumed after a restart only by the holder of the secret.
    SessionOpenVerified {
        session: SessionId,
        client: Vec<u8>,
        time: Timestamp,
        verifier: [u8; 32],
    },
}

impl Event {
    /// A short name for metrics, logs and `cudele journal inspect`.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Event::Create { .. } => "create",
            Event::Mkdir { .. } => "mkdir",
            Event::Symlink { .. } => "symlink",
            Event::Link { .. } => "link",
            Event::Unlink { .. } => "unlink",
            Event::Rmdir { .. } => "rmdir",
            Event::Rename { .. } => "rename",
            Event::SetAttr { .. } => "setattr",
            Event::SetXattr { .. } => "setxattr",
            Event::RemoveXattr { .. } => "removexattr",
            Event::SetLayout { .. } => "setlayout",
            Event::Decouple { .. } => "decouple",
            Event::Recouple { .. } => "recouple",
            Event::SetPolicy { .. } => "setpolicy",
            Event::AllocateInodes { .. } => "allocate_inodes",
            Event::SessionOpen { .. } => "session_open",
            Event::SessionClose { .. } => "session_close",
            Event::Merged { .. } => "merged",
            Event::SessionOpenVerified { .. } => "session_open",
        }
    }
}

/// An event at its position in a journal.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct Record {
    pub seq: Seq,
    pub event: Event,
}
