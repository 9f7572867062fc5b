//! The in-memory namespace and the one function that changes it: [`Namespace::apply`].
//!
//! `apply` validates an event completely against the current state and only then mutates,
//! so a rejected event leaves the namespace untouched (never half-applied). The MDS builds
//! an event for each request and applies it; recovery and merges replay journaled events
//! through the same function.

use crate::error::{NsError, NsResult};
use crate::inode::{Attr, Decoupling, DirEntry, InodeRecord, SessionRecord};
use crate::store_key::{encode_value, StoreKey, StoreOp, StoreValue};
use cudele_journal::{
    AttrChanges, ChunkMap, Event, FileKind, Ino, InodeRange, RenameMode, SessionId, Timestamp, XattrMode,
    NAME_LENGTH_MAX_BYTES, ROOT_INO, SYMLINK_TARGET_LENGTH_MAX_BYTES, XATTR_VALUE_LENGTH_MAX_BYTES,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Longest xattr name, in bytes (XATTR_NAME_MAX on Linux).
pub const XATTR_NAME_LENGTH_MAX_BYTES: usize = 255;
/// Most hard links one inode may have.
pub const LINK_COUNT_MAX: u32 = 65_000;
/// Largest inode range one allocation may hand out.
pub const INODE_RANGE_LENGTH_MAX: u64 = 1 << 32;
/// Inode numbers stay below this (exclusive): the allocator can never wrap, whatever
/// number a client names, and `next_ino + 1` never overflows.
pub const INODE_NUMBER_LIMIT: Ino = 1 << 62;
/// Ranges a session record keeps (adjacent ones are joined; the oldest go first).
pub const SESSION_RANGES_MAX: usize = 1 << 16;
/// Bytes of xattr names and values one inode may hold (ENOSPC past it, as ext4 when its
/// xattr block is full): bounds the inode record, re-encoded whole by every change.
pub const XATTR_BYTES_PER_INODE_MAX: usize = 256 * 1024;
/// Published chunks one file may have (EFBIG past it): bounds the inode record (about 24
/// bytes a chunk) far below the metadata store's frame limit.
pub const CHUNKS_PER_INODE_MAX: usize = 1 << 20;

const S_ISUID: u32 = 0o4000;
const S_ISGID: u32 = 0o2000;
const S_IXGRP: u32 = 0o0010;
const PERMISSION_BITS: u32 = 0o7777;

struct Inode {
    record: InodeRecord,
    /// Entries by name, for directories; a BTreeMap so readdir resumes from a name cursor.
    children: Option<BTreeMap<Vec<u8>, Ino>>,
}

/// What an applied event changed, so the caller can persist exactly that.
#[derive(Debug, Default, Clone)]
pub struct Touched {
    inodes: BTreeSet<Ino>,
    dentries: BTreeSet<(Ino, Vec<u8>)>,
    sessions: BTreeSet<SessionId>,
    allocator: bool,
}

impl Touched {
    pub(crate) fn insert_inode(&mut self, ino: Ino) {
        self.inodes.insert(ino);
    }
    pub(crate) fn insert_dentry(&mut self, parent: Ino, name: Vec<u8>) {
        self.dentries.insert((parent, name));
    }
    /// Everything another touched set names, too.
    pub fn extend(&mut self, other: &Touched) {
        self.inodes.extend(other.inodes.iter().copied());
        self.dentries.extend(other.dentries.iter().cloned());
        self.sessions.extend(other.sessions.iter().copied());
        self.allocator |= other.allocator;
    }
    /// Inodes whose attributes or existence changed (for cache invalidation).
    pub fn inodes(&self) -> impl Iterator<Item = Ino> + '_ {
        self.inodes.iter().copied()
    }
    /// Directory entries that appeared, vanished or changed target.
    pub fn dentries(&self) -> impl Iterator<Item = &(Ino, Vec<u8>)> + '_ {
        self.dentries.iter()
    }
}

/// The namespace: inodes, directory entries, xattrs, policies, decouplings and sessions.
pub struct Namespace {
    inodes: HashMap<Ino, Inode>,
    sessions: BTreeMap<SessionId, SessionRecord>,
    next_ino: Ino,
    /// Session ids are never reused: a stale client must not pass for a new one.
    next_session: SessionId,
    /// Directories decoupled now (an index of the `decoupling` fields).
    decoupled: BTreeSet<Ino>,
}

/// Check a directory entry name the way Linux path resolution would.
pub fn validate_name(name: &[u8]) -> NsResult<()> {
    if name.is_empty() {
        return Err(NsError::InvalidArgument("empty name"));
    }
    if name.len() > NAME_LENGTH_MAX_BYTES {
        return Err(NsError::NameTooLong);
    }
    if name == b"." || name == b".." {
        return Err(NsError::InvalidArgument("'.' and '..' are not entries"));
    }
    if name.contains(&b'/') {
        return Err(NsError::InvalidArgument("'/' in a name"));
    }
    if name.contains(&0) {
        return Err(NsError::InvalidArgument("NUL in a name"));
    }
    Ok(())
}

impl Default for Namespace {
    fn default() -> Self {
        Self::new(Timestamp::default())
    }
}

impl Namespace {
    /// A namespace holding only the root directory (mode 0755, owned by root).
    pub fn new(created: Timestamp) -> Self {
        let root = InodeRecord {
            attr: Attr {
                ino: ROOT_INO,
                kind: FileKind::Directory,
                perm: 0o755,
                uid: 0,
                gid: 0,
                nlink: 2,
                size: 0,
                rdev: 0,
                atime: created,
                mtime: created,
                ctime: created,
            },
            parent: ROOT_INO,
            symlink_target: Vec::new(),
            xattrs: BTreeMap::new(),
            chunk_size_bytes: 0,
            policy: None,
            decoupling: None,
            chunks: ChunkMap::new(),
        };
        let mut inodes = HashMap::new();
        inodes.insert(ROOT_INO, Inode { record: root, children: Some(BTreeMap::new()) });
        Namespace {
            inodes,
            sessions: BTreeMap::new(),
            next_ino: ROOT_INO + 1,
            next_session: 1,
            decoupled: BTreeSet::new(),
        }
    }

    /// Rebuild a namespace from the key/value pairs of a store or snapshot (any order).
    pub fn from_store_values(values: impl IntoIterator<Item = StoreValue>) -> Result<Self, String> {
        let mut namespace = Namespace {
            inodes: HashMap::new(),
            sessions: BTreeMap::new(),
            next_ino: ROOT_INO + 1,
            next_session: 1,
            decoupled: BTreeSet::new(),
        };
        let mut dentries = Vec::new();
        for value in values {
            match value {
                StoreValue::Inode(record) => {
                    let children = record.is_directory().then(BTreeMap::new);
                    if record.decoupling.is_some() {
                        namespace.decoupled.insert(record.attr.ino);
                    }
                    namespace.inodes.insert(record.attr.ino, Inode { record: *record, children });
                }
                StoreValue::Dentry { parent, name, ino } => dentries.push((parent, name, ino)),
                StoreValue::Session(session) => {
                    namespace.sessions.insert(session.session, session);
                }
                StoreValue::Allocator(next_ino, next_session) => {
                    namespace.next_ino = next_ino;
                    namespace.next_session = next_session;
                }
            }
        }
        for (parent, name, ino) in dentries {
            let directory =
                namespace.inodes.get_mut(&parent).and_then(|inode| inode.children.as_mut()).ok_or_else(|| {
                    format!("entry {:?} in missing directory {parent}", String::from_utf8_lossy(&name))
                })?;
            directory.insert(name, ino);
        }
        if !namespace.inodes.contains_key(&ROOT_INO) {
            return Err("the store has no root inode".to_string());
        }
        namespace.check_invariants()?;
        Ok(namespace)
    }

    /// Every key/value pair describing this namespace (for snapshots and fresh stores).
    pub fn store_ops_all(&self) -> Vec<StoreOp> {
        let mut touched = Touched { allocator: true, ..Touched::default() };
        for (ino, inode) in &self.inodes {
            touched.inodes.insert(*ino);
            for name in inode.children.iter().flat_map(|children| children.keys()) {
                touched.dentries.insert((*ino, name.clone()));
            }
        }
        touched.sessions.extend(self.sessions.keys().copied());
        self.store_ops(&touched)
    }

    /// The store changes that make a store match this namespace for everything `touched`.
    pub fn store_ops(&self, touched: &Touched) -> Vec<StoreOp> {
        let mut ops = Vec::with_capacity(touched.inodes.len() + touched.dentries.len() + 1);
        for ino in &touched.inodes {
            let key = StoreKey::Inode(*ino);
            match self.inodes.get(ino) {
                Some(inode) => ops.push(StoreOp::Put(key, encode_value(&inode.record))),
                None => ops.push(StoreOp::Delete(key)),
            }
        }
        for (parent, name) in &touched.dentries {
            let key = StoreKey::Dentry(*parent, name.clone());
            match self.child(*parent, name) {
                Some(ino) => ops.push(StoreOp::Put(key, encode_value(&ino))),
                None => ops.push(StoreOp::Delete(key)),
            }
        }
        for session in &touched.sessions {
            let key = StoreKey::Session(*session);
            match self.sessions.get(session) {
                Some(record) => ops.push(StoreOp::Put(key, encode_value(record))),
                None => ops.push(StoreOp::Delete(key)),
            }
        }
        if touched.allocator {
            ops.push(StoreOp::Put(StoreKey::Allocator, encode_value(&(self.next_ino, self.next_session))));
        }
        ops
    }

    // ----- reads -----

    pub fn record(&self, ino: Ino) -> NsResult<&InodeRecord> {
        self.inodes.get(&ino).map(|inode| &inode.record).ok_or(NsError::NotFound)
    }

    pub fn getattr(&self, ino: Ino) -> NsResult<&Attr> {
        Ok(&self.record(ino)?.attr)
    }

    fn children(&self, ino: Ino) -> NsResult<&BTreeMap<Vec<u8>, Ino>> {
        let inode = self.inodes.get(&ino).ok_or(NsError::NotFound)?;
        inode.children.as_ref().ok_or(NsError::NotDirectory)
    }

    fn child(&self, parent: Ino, name: &[u8]) -> Option<Ino> {
        self.inodes.get(&parent)?.children.as_ref()?.get(name).copied()
    }

    /// The inode `name` in directory `parent` names.
    pub fn lookup(&self, parent: Ino, name: &[u8]) -> NsResult<&Attr> {
        let children = self.children(parent)?;
        if name.len() > NAME_LENGTH_MAX_BYTES {
            return Err(NsError::NameTooLong);
        }
        let ino = children.get(name).ok_or(NsError::NotFound)?;
        self.getattr(*ino)
    }

    /// Up to `limit` entries of directory `ino` whose names sort after `after`.
    /// Resuming from the last name returned never skips or repeats an entry that stayed.
    pub fn readdir(&self, ino: Ino, after: Option<&[u8]>, limit: usize) -> NsResult<Vec<DirEntry>> {
        let children = self.children(ino)?;
        let range = match after {
            Some(after) => children.range::<[u8], _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded)),
            None => children.range::<[u8], _>(..),
        };
        Ok(range
            .take(limit)
            .filter_map(|(name, child)| {
                let kind = self.inodes.get(child)?.record.attr.kind;
                Some(DirEntry { name: name.clone(), ino: *child, kind })
            })
            .collect())
    }

    pub fn readlink(&self, ino: Ino) -> NsResult<&[u8]> {
        let record = self.record(ino)?;
        if record.attr.kind != FileKind::Symlink {
            return Err(NsError::InvalidArgument("not a symlink"));
        }
        Ok(&record.symlink_target)
    }

    /// The value of xattr `name`. `size_limit` 0 means "any size" (the caller asks for the
    /// length first); otherwise a longer value is ERANGE, as getxattr(2) does.
    pub fn getxattr(&self, ino: Ino, name: &[u8], size_limit: u32) -> NsResult<&[u8]> {
        let value = self.record(ino)?.xattrs.get(name).ok_or(NsError::NoData)?;
        if size_limit != 0 && value.len() > size_limit as usize {
            return Err(NsError::Range);
        }
        Ok(value)
    }

    /// Names of all xattrs of `ino`, NUL-terminated and concatenated, as listxattr(2) returns.
    pub fn listxattr(&self, ino: Ino, size_limit: u32) -> NsResult<Vec<u8>> {
        let mut list = Vec::new();
        for name in self.record(ino)?.xattrs.keys() {
            list.extend_from_slice(name);
            list.push(0);
        }
        if size_limit != 0 && list.len() > size_limit as usize {
            return Err(NsError::Range);
        }
        Ok(list)
    }

    pub fn inode_count(&self) -> u64 {
        self.inodes.len() as u64
    }

    /// Bytes of file data the namespace accounts for (sizes of regular files), saturating
    /// at `u64::MAX`: sizes are the clients' to set (sparse files), so their sum can overflow.
    pub fn file_bytes(&self) -> u64 {
        self.inodes
            .values()
            .filter(|inode| inode.record.attr.kind == FileKind::Regular)
            .map(|inode| inode.record.attr.size)
            .fold(0, u64::saturating_add)
    }

    pub fn next_ino(&self) -> Ino {
        self.next_ino
    }

    pub fn sessions(&self) -> impl Iterator<Item = &SessionRecord> {
        self.sessions.values()
    }

    /// The next session id nobody has used.
    pub fn next_session_id(&self) -> SessionId {
        self.next_session
    }

    /// The nearest ancestor directory (itself included) that is decoupled, if any.
    pub fn decoupled_ancestor(&self, ino: Ino) -> Option<(Ino, &Decoupling)> {
        let mut current = ino;
        for _ in 0..=self.inodes.len() {
            let record = &self.inodes.get(&current)?.record;
            if let Some(decoupling) = &record.decoupling {
                return Some((current, decoupling));
            }
            if current == ROOT_INO || !record.is_directory() {
                return None;
            }
            current = record.parent;
        }
        None
    }

    /// Every decoupled directory and its decoupling.
    pub fn decoupled_roots(&self) -> impl Iterator<Item = (Ino, &Decoupling)> + '_ {
        self.decoupled.iter().filter_map(|ino| Some((*ino, self.inodes.get(ino)?.record.decoupling.as_ref()?)))
    }

    /// The nearest policies.yml governing directory `ino` (itself included).
    pub fn governing_policy(&self, ino: Ino) -> Option<(Ino, &[u8])> {
        let mut current = ino;
        for _ in 0..=self.inodes.len() {
            let record = &self.inodes.get(&current)?.record;
            if let Some(policy) = &record.policy {
                return Some((current, policy));
            }
            if current == ROOT_INO {
                return None;
            }
            current = record.parent;
        }
        None
    }

    /// The inode `name` in `parent` names, if any.
    pub fn child_of(&self, parent: Ino, name: &[u8]) -> Option<Ino> {
        self.child(parent, name)
    }

    /// Is `ancestor` the directory `ino` or one of its ancestors?
    pub fn is_ancestor_of(&self, ancestor: Ino, ino: Ino) -> bool {
        self.is_ancestor(ancestor, ino)
    }

    /// Is `ancestor` the directory `ino` or one of its ancestors?
    fn is_ancestor(&self, ancestor: Ino, ino: Ino) -> bool {
        let mut current = ino;
        for _ in 0..=self.inodes.len() {
            if current == ancestor {
                return true;
            }
            match self.inodes.get(&current) {
                Some(inode) if current != ROOT_INO => current = inode.record.parent,
                _ => return false,
            }
        }
        false
    }

    // ----- the one mutation entry point -----

    /// Validate `event` against the current state and apply it. On error nothing changed.
    pub fn apply(&mut self, event: &Event) -> NsResult<Touched> {
        let mut touched = Touched::default();
        match event {
            Event::Create { parent, name, ino, kind, mode, uid, gid, rdev, time } => {
                if matches!(kind, FileKind::Directory | FileKind::Symlink) {
                    return Err(NsError::InvalidArgument("create of a directory or symlink"));
                }
                self.check_new_entry(*parent, name, *ino)?;
                let record = new_record(*ino, *kind, *mode, *uid, *gid, *rdev, *time, *parent);
                self.insert_new(*parent, name, record, None, *time, &mut touched);
            }
            Event::Mkdir { parent, name, ino, mode, uid, gid, time } => {
                self.check_new_entry(*parent, name, *ino)?;
                let mut record = new_record(*ino, FileKind::Directory, *mode, *uid, *gid, 0, *time, *parent);
                record.attr.nlink = 2;
                self.insert_new(*parent, name, record, Some(BTreeMap::new()), *time, &mut touched);
                self.inode_mut(*parent).record.attr.nlink += 1;
            }
            Event::Symlink { parent, name, ino, target, uid, gid, time } => {
                if target.is_empty() || target.len() > SYMLINK_TARGET_LENGTH_MAX_BYTES || target.contains(&0) {
                    return Err(if target.len() > SYMLINK_TARGET_LENGTH_MAX_BYTES {
                        NsError::NameTooLong
                    } else {
                        NsError::InvalidArgument("bad symlink target")
                    });
                }
                self.check_new_entry(*parent, name, *ino)?;
                let mut record = new_record(*ino, FileKind::Symlink, 0o777, *uid, *gid, 0, *time, *parent);
                record.attr.size = target.len() as u64;
                record.symlink_target = target.clone();
                self.insert_new(*parent, name, record, None, *time, &mut touched);
            }
            Event::Link { ino, parent, name, time } => {
                let target = self.record(*ino)?;
                if target.is_directory() {
                    return Err(NsError::NotPermitted);
                }
                if target.attr.nlink >= LINK_COUNT_MAX {
                    return Err(NsError::TooManyLinks);
                }
                self.check_free_name(*parent, name)?;
                self.add_entry(*parent, name, *ino, *time, &mut touched);
                let attr = &mut self.inode_mut(*ino).record.attr;
                attr.nlink += 1;
                attr.ctime = *time;
                touched.inodes.insert(*ino);
            }
            Event::Unlink { parent, name, time } => {
                let ino = self.existing_child(*parent, name)?;
                if self.record(ino)?.is_directory() {
                    return Err(NsError::IsDirectory);
                }
                self.remove_entry(*parent, name, *time, &mut touched);
                self.drop_link(ino, *time, &mut touched);
            }
            Event::Rmdir { parent, name, time } => {
                let ino = self.existing_child(*parent, name)?;
                let children = self.children(ino)?;
                if !children.is_empty() {
                    return Err(NsError::NotEmpty);
                }
                if self.record(ino)?.decoupling.is_some() {
                    return Err(NsError::Busy("the directory is decoupled"));
                }
                self.remove_entry(*parent, name, *time, &mut touched);
                self.inode_mut(*parent).record.attr.nlink -= 1;
                self.inodes.remove(&ino);
                touched.inodes.insert(ino);
            }
            Event::Rename { source_parent, source_name, target_parent, target_name, mode, time } => {
                self.apply_rename(
                    *source_parent,
                    source_name,
                    *target_parent,
                    target_name,
                    *mode,
                    *time,
                    &mut touched,
                )?;
            }
            Event::SetAttr { ino, changes, time } => self.apply_setattr(*ino, changes, *time, &mut touched)?,
            Event::SetXattr { ino, name, value, mode, time } => {
                validate_xattr_name(name)?;
                if value.len() > XATTR_VALUE_LENGTH_MAX_BYTES {
                    return Err(NsError::TooBig);
                }
                let exists = self.record(*ino)?.xattrs.contains_key(name);
                match (mode, exists) {
                    (XattrMode::Create, true) => return Err(NsError::Exists),
                    (XattrMode::Replace, false) => return Err(NsError::NoData),
                    _ => {}
                }
                let record = &mut self.inode_mut(*ino).record;
                record.xattrs.insert(name.clone(), value.clone());
                record.attr.ctime = *time;
                touched.inodes.insert(*ino);
            }
            Event::RemoveXattr { ino, name, time } => {
                validate_xattr_name(name)?;
                if !self.record(*ino)?.xattrs.contains_key(name) {
                    return Err(NsError::NoData);
                }
                let record = &mut self.inode_mut(*ino).record;
                record.xattrs.remove(name);
                record.attr.ctime = *time;
                touched.inodes.insert(*ino);
            }
            Event::SetLayout { ino, size, chunk_size_bytes, mtime, chunks } => {
                let record = self.record(*ino)?;
                if record.attr.kind != FileKind::Regular {
                    return Err(NsError::InvalidArgument("layout of a non-regular file"));
                }
                // Published chunks are indexed in units of the chunk size.
                if record.chunk_size_bytes != *chunk_size_bytes && !record.chunks.is_empty() {
                    return Err(NsError::InvalidArgument("chunk size change of a file with data"));
                }
                if !chunks.is_empty() && *chunk_size_bytes == 0 {
                    return Err(NsError::InvalidArgument("chunks without a chunk size"));
                }
                let record = &mut self.inode_mut(*ino).record;
                record.attr.size = *size;
                record.chunk_size_bytes = *chunk_size_bytes;
                record.chunks.extend(chunks.iter().map(|update| (update.index, update.chunk)));
                record.clip_chunks();
                record.attr.mtime = *mtime;
                record.attr.ctime = record.attr.ctime.max(*mtime);
                touched.inodes.insert(*ino);
            }
            Event::Decouple { ino, owner, range, policy } => {
                if !self.record(*ino)?.is_directory() {
                    return Err(NsError::NotDirectory);
                }
                if let Some((holder, _)) = self.decoupled_ancestor(*ino) {
                    let _ = holder;
                    return Err(NsError::Busy("already inside a decoupled subtree"));
                }
                // Reserve first: a range it refuses leaves nothing changed.
                self.reserve_range(*range, &mut touched)?;
                self.inode_mut(*ino).record.decoupling =
                    Some(Decoupling { owner: *owner, range: *range, policy: policy.clone(), merged_seq: 0 });
                self.decoupled.insert(*ino);
                touched.inodes.insert(*ino);
            }
            Event::Recouple { ino } => {
                if self.record(*ino)?.decoupling.is_none() {
                    return Err(NsError::InvalidArgument("the directory is not decoupled"));
                }
                self.inode_mut(*ino).record.decoupling = None;
                self.decoupled.remove(ino);
                touched.inodes.insert(*ino);
            }
            Event::SetPolicy { ino, policy } => {
                if !self.record(*ino)?.is_directory() {
                    return Err(NsError::NotDirectory);
                }
                self.inode_mut(*ino).record.policy = policy.clone();
                touched.inodes.insert(*ino);
            }
            Event::AllocateInodes { owner, range } => {
                self.reserve_range(*range, &mut touched)?;
                if let Some(session) = self.sessions.get_mut(owner) {
                    add_range(&mut session.ranges, *range);
                    touched.sessions.insert(*owner);
                }
            }
            Event::SessionOpen { session, client, time } => {
                self.open_session(*session, client, *time, None, &mut touched)?;
            }
            Event::SessionOpenVerified { session, client, time, verifier } => {
                self.open_session(*session, client, *time, Some(*verifier), &mut touched)?;
            }
            Event::Merged { ino, owner, through_seq } => {
                let decoupling = self
                    .record(*ino)?
                    .decoupling
                    .as_ref()
                    .ok_or(NsError::InvalidArgument("the directory is not decoupled"))?;
                if decoupling.owner != *owner {
                    return Err(NsError::Busy("the subtree is decoupled by another client"));
                }
                if *through_seq < decoupling.merged_seq {
                    return Err(NsError::InvalidArgument("merge position going backwards"));
                }
                if let Some(decoupling) = self.inode_mut(*ino).record.decoupling.as_mut() {
                    decoupling.merged_seq = *through_seq;
                }
                touched.inodes.insert(*ino);
            }
            Event::SessionClose { session } => {
                if self.sessions.remove(session).is_none() {
                    return Err(NsError::NotFound);
                }
                touched.sessions.insert(*session);
            }
        }
        Ok(touched)
    }

    fn open_session(
        &mut self,
        session: SessionId,
        client: &[u8],
        opened: Timestamp,
        verifier: Option<[u8; 32]>,
        touched: &mut Touched,
    ) -> NsResult<()> {
        if self.sessions.contains_key(&session) || session < self.next_session || session == SessionId::MAX {
            return Err(NsError::InvalidArgument("session id already used"));
        }
        self.next_session = session + 1;
        touched.allocator = true;
        let record = SessionRecord { session, client: client.to_vec(), opened, verifier, ranges: Vec::new() };
        self.sessions.insert(session, record);
        touched.sessions.insert(session);
        Ok(())
    }

    /// The session's record, if it is open.
    pub fn session(&self, session: SessionId) -> Option<&SessionRecord> {
        self.sessions.get(&session)
    }

    /// Check the limits a client's change must keep that depend on the current state — an
    /// inode's xattr total and chunk count — before it is applied and journaled. Not part of
    /// `apply`: journals written before these limits existed must still replay.
    pub fn check_limits(&self, event: &Event) -> NsResult<()> {
        match event {
            Event::SetXattr { ino, name, value, .. } => {
                let xattrs = &self.record(*ino)?.xattrs;
                let others: usize = xattrs
                    .iter()
                    .filter(|(existing, _)| existing.as_slice() != name.as_slice())
                    .map(|(existing, existing_value)| existing.len() + existing_value.len())
                    .sum();
                if others + name.len() + value.len() > XATTR_BYTES_PER_INODE_MAX {
                    return Err(NsError::NoSpace("the inode's extended attributes are full"));
                }
            }
            Event::SetLayout { ino, chunks, .. } => {
                let published = &self.record(*ino)?.chunks;
                let added = chunks.iter().filter(|update| !published.contains_key(&update.index)).count();
                if published.len() + added > CHUNKS_PER_INODE_MAX {
                    return Err(NsError::TooBig);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// A local copy of part of the namespace (a decoupled subtree's view) learns that the MDS
    /// handed out `range`: its creates may use those numbers.
    pub fn admit_range(&mut self, range: InodeRange) {
        if range.end <= INODE_NUMBER_LIMIT && range.end > self.next_ino {
            self.next_ino = range.end;
        }
    }

    /// Hand out `length` fresh inode numbers (the caller journals an AllocateInodes event).
    pub fn peek_range(&self, length: u64) -> InodeRange {
        InodeRange { start: self.next_ino, end: self.next_ino.saturating_add(length) }
    }

    fn reserve_range(&mut self, range: InodeRange, touched: &mut Touched) -> NsResult<()> {
        if range.is_empty() || range.len() > INODE_RANGE_LENGTH_MAX {
            return Err(NsError::InvalidArgument("inode range length"));
        }
        if range.start < self.next_ino {
            return Err(NsError::InvalidArgument("inode range overlaps allocated inodes"));
        }
        if range.end > INODE_NUMBER_LIMIT {
            return Err(NsError::NoSpace("inode numbers exhausted"));
        }
        self.next_ino = range.end;
        touched.allocator = true;
        Ok(())
    }

    fn inode_mut(&mut self, ino: Ino) -> &mut Inode {
        self.inodes.get_mut(&ino).expect("inode checked to exist before mutation")
    }

    fn existing_child(&self, parent: Ino, name: &[u8]) -> NsResult<Ino> {
        let children = self.children(parent)?;
        validate_name(name)?;
        children.get(name).copied().ok_or(NsError::NotFound)
    }

    fn check_free_name(&self, parent: Ino, name: &[u8]) -> NsResult<()> {
        let children = self.children(parent)?;
        validate_name(name)?;
        if children.contains_key(name) {
            return Err(NsError::Exists);
        }
        Ok(())
    }

    fn check_new_entry(&self, parent: Ino, name: &[u8], ino: Ino) -> NsResult<()> {
        self.check_free_name(parent, name)?;
        if ino <= ROOT_INO || self.inodes.contains_key(&ino) {
            return Err(NsError::InvalidArgument("inode number already in use"));
        }
        // A new inode takes the next number or one handed out before (a range): never one
        // beyond, so the allocator only moves by allocation and cannot wrap.
        if ino > self.next_ino || ino >= INODE_NUMBER_LIMIT {
            return Err(NsError::InvalidArgument("inode number was never allocated"));
        }
        Ok(())
    }

    fn add_entry(&mut self, parent: Ino, name: &[u8], ino: Ino, time: Timestamp, touched: &mut Touched) {
        let directory = self.inode_mut(parent);
        let children = directory.children.as_mut().expect("parent checked to be a directory");
        children.insert(name.to_vec(), ino);
        directory.record.attr.size = children.len() as u64;
        directory.record.attr.mtime = time;
        directory.record.attr.ctime = time;
        touched.inodes.insert(parent);
        touched.dentries.insert((parent, name.to_vec()));
    }

    fn remove_entry(&mut self, parent: Ino, name: &[u8], time: Timestamp, touched: &mut Touched) {
        let directory = self.inode_mut(parent);
        let children = directory.children.as_mut().expect("parent checked to be a directory");
        children.remove(name);
        directory.record.attr.size = children.len() as u64;
        directory.record.attr.mtime = time;
        directory.record.attr.ctime = time;
        touched.inodes.insert(parent);
        touched.dentries.insert((parent, name.to_vec()));
    }

    fn insert_new(
        &mut self,
        parent: Ino,
        name: &[u8],
        record: InodeRecord,
        children: Option<BTreeMap<Vec<u8>, Ino>>,
        time: Timestamp,
        touched: &mut Touched,
    ) {
        let ino = record.attr.ino;
        self.inodes.insert(ino, Inode { record, children });
        self.add_entry(parent, name, ino, time, touched);
        touched.inodes.insert(ino);
        if ino >= self.next_ino {
            self.next_ino = ino + 1;
            touched.allocator = true;
        }
    }

    /// One fewer name for a non-directory; the inode goes when its last name does.
    fn drop_link(&mut self, ino: Ino, time: Timestamp, touched: &mut Touched) {
        let attr = &mut self.inode_mut(ino).record.attr;
        attr.nlink -= 1;
        attr.ctime = time;
        if attr.nlink == 0 {
            self.inodes.remove(&ino);
        }
        touched.inodes.insert(ino);
    }

    #[allow(clippy::too_many_arguments)]
    fn apply_rename(
        &mut self,
        source_parent: Ino,
        source_name: &[u8],
        target_parent: Ino,
        target_name: &[u8],
        mode: RenameMode,
        time: Timestamp,
        touched: &mut Touched,
    ) -> NsResult<()> {
        let source = self.existing_child(source_parent, source_name)?;
        self.children(target_parent)?;
        validate_name(target_name)?;
        let target = self.child(target_parent, target_name);
        let source_is_directory = self.record(source)?.is_directory();
        if source_is_directory && self.is_ancestor(source, target_parent) {
            return Err(NsError::InvalidArgument("a directory cannot move into its own subtree"));
        }
        match (mode, target) {
            (RenameMode::NoReplace, Some(_)) => return Err(NsError::Exists),
            (RenameMode::Exchange, None) => return Err(NsError::NotFound),
            (RenameMode::Exchange, Some(target)) => {
                let target_is_directory = self.record(target)?.is_directory();
                if target_is_directory && self.is_ancestor(target, source_parent) {
                    return Err(NsError::InvalidArgument("a directory cannot move into its own subtree"));
                }
                if source == target {
                    return Ok(());
                }
                self.inode_mut(source_parent)
                    .children
                    .as_mut()
                    .expect("directory")
                    .insert(source_name.to_vec(), target);
                self.inode_mut(target_parent)
                    .children
                    .as_mut()
                    .expect("directory")
                    .insert(target_name.to_vec(), source);
                if source_is_directory != target_is_directory && source_parent != target_parent {
                    let (gains, loses) = if source_is_directory {
                        (target_parent, source_parent)
                    } else {
                        (source_parent, target_parent)
                    };
                    self.inode_mut(gains).record.attr.nlink += 1;
                    self.inode_mut(loses).record.attr.nlink -= 1;
                }
                self.inode_mut(source).record.parent = target_parent;
                self.inode_mut(target).record.parent = source_parent;
                for (parent, name, ino) in [(source_parent, source_name, source), (target_parent, target_name, target)]
                {
                    let directory = &mut self.inode_mut(parent).record.attr;
                    directory.mtime = time;
                    directory.ctime = time;
                    self.inode_mut(ino).record.attr.ctime = time;
                    touched.inodes.extend([parent, ino]);
                    touched.dentries.insert((parent, name.to_vec()));
                }
                return Ok(());
            }
            (_, Some(target)) => {
                if target == source {
                    // rename(2) between two names of the same inode does nothing.
                    return Ok(());
                }
                let target_is_directory = self.record(target)?.is_directory();
                match (source_is_directory, target_is_directory) {
                    (true, false) => return Err(NsError::NotDirectory),
                    (false, true) => return Err(NsError::IsDirectory),
                    (true, true) if !self.children(target)?.is_empty() => return Err(NsError::NotEmpty),
                    (true, true) if self.record(target)?.decoupling.is_some() => {
                        return Err(NsError::Busy("the target directory is decoupled"))
                    }
                    _ => {}
                }
                self.remove_entry(target_parent, target_name, time, touched);
                if target_is_directory {
                    self.inode_mut(target_parent).record.attr.nlink -= 1;
                    self.inodes.remove(&target);
                    touched.inodes.insert(target);
                } else {
                    self.drop_link(target, time, touched);
                }
            }
            (_, None) => {}
        }
        self.remove_entry(source_parent, source_name, time, touched);
        self.add_entry(target_parent, target_name, source, time, touched);
        if source_is_directory && source_parent != target_parent {
            self.inode_mut(source_parent).record.attr.nlink -= 1;
            self.inode_mut(target_parent).record.attr.nlink += 1;
        }
        // Files keep the directory of their latest name too (it decides which decoupled
        // subtree, if any, they belong to).
        self.inode_mut(source).record.parent = target_parent;
        self.inode_mut(source).record.attr.ctime = time;
        touched.inodes.insert(source);
        Ok(())
    }

    fn apply_setattr(
        &mut self,
        ino: Ino,
        changes: &AttrChanges,
        time: Timestamp,
        touched: &mut Touched,
    ) -> NsResult<()> {
        let record = self.record(ino)?;
        if let Some(mode) = changes.mode {
            if mode & !PERMISSION_BITS != 0 {
                return Err(NsError::InvalidArgument("mode has bits beyond 07777"));
            }
        }
        if changes.size.is_some() {
            match record.attr.kind {
                FileKind::Regular => {}
                FileKind::Directory => return Err(NsError::IsDirectory),
                _ => return Err(NsError::InvalidArgument("truncate of a special file")),
            }
        }
        let attr = &mut self.inode_mut(ino).record.attr;
        let owner_changed =
            changes.uid.is_some_and(|uid| uid != attr.uid) || changes.gid.is_some_and(|gid| gid != attr.gid);
        if let Some(mode) = changes.mode {
            attr.perm = mode;
        } else if owner_changed && attr.kind != FileKind::Directory {
            // As ext4 does on chown: drop setuid, and setgid when it means "group executable"
            // (without S_IXGRP it marks mandatory locking and stays).
            attr.perm &= !S_ISUID;
            if attr.perm & S_IXGRP != 0 {
                attr.perm &= !S_ISGID;
            }
        }
        if let Some(uid) = changes.uid {
            attr.uid = uid;
        }
        if let Some(gid) = changes.gid {
            attr.gid = gid;
        }
        if let Some(size) = changes.size {
            attr.size = size;
            attr.mtime = time;
        }
        if let Some(atime) = changes.atime {
            attr.atime = atime;
        }
        if let Some(mtime) = changes.mtime {
            attr.mtime = mtime;
        }
        attr.ctime = time;
        if changes.size.is_some() {
            self.inode_mut(ino).record.clip_chunks();
        }
        touched.inodes.insert(ino);
        Ok(())
    }

    // ----- checking and comparing -----

    /// Check the namespace invariants: every entry points to a live inode, link counts and
    /// directory sizes are right, directories have one name, nothing is orphaned.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut names: HashMap<Ino, u32> = HashMap::new();
        let mut subdirectories: HashMap<Ino, u32> = HashMap::new();
        for (ino, inode) in &self.inodes {
            if inode.record.attr.ino != *ino {
                return Err(format!("inode {ino} records number {}", inode.record.attr.ino));
            }
            if inode.record.is_directory() != inode.children.is_some() {
                return Err(format!("inode {ino}: kind and children disagree"));
            }
            if *ino >= self.next_ino {
                return Err(format!("inode {ino} is at or beyond the allocator ({})", self.next_ino));
            }
            let Some(children) = &inode.children else { continue };
            if inode.record.attr.size != children.len() as u64 {
                return Err(format!("directory {ino} size {} but {} entries", inode.record.attr.size, children.len()));
            }
            for (name, child) in children {
                let Some(child_inode) = self.inodes.get(child) else {
                    return Err(format!(
                        "entry {:?} in {ino} points to missing inode {child}",
                        String::from_utf8_lossy(name)
                    ));
                };
                *names.entry(*child).or_default() += 1;
                if child_inode.record.is_directory() {
                    *subdirectories.entry(*ino).or_default() += 1;
                    if child_inode.record.parent != *ino {
                        return Err(format!(
                            "directory {child} is in {ino} but records parent {}",
                            child_inode.record.parent
                        ));
                    }
                }
            }
        }
        for (ino, inode) in &self.inodes {
            let name_count = names.get(ino).copied().unwrap_or(0);
            let attr = &inode.record.attr;
            if *ino == ROOT_INO {
                if name_count != 0 {
                    return Err("the root has a name".to_string());
                }
            } else if name_count == 0 {
                return Err(format!("inode {ino} is orphaned (no entry names it)"));
            }
            let expected = if inode.record.is_directory() {
                if *ino != ROOT_INO && name_count != 1 {
                    return Err(format!("directory {ino} has {name_count} names"));
                }
                2 + subdirectories.get(ino).copied().unwrap_or(0)
            } else {
                name_count
            };
            if attr.nlink != expected {
                return Err(format!("inode {ino} nlink {} but expected {expected}", attr.nlink));
            }
        }
        Ok(())
    }

    /// A canonical text listing of the namespace (paths in order, with attributes), for
    /// comparing two namespaces in tests and tools.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        let mut stack = vec![(ROOT_INO, b"/".to_vec())];
        let mut budget = self.inodes.len() * 2 + 1;
        while let Some((ino, path)) = stack.pop() {
            budget = budget.saturating_sub(1);
            if budget == 0 {
                out.push_str("... cycle\n");
                break;
            }
            let Some(inode) = self.inodes.get(&ino) else { continue };
            let attr = &inode.record.attr;
            out.push_str(&format!(
                "{} ino={} {:?} perm={:o} uid={} gid={} nlink={} size={} mtime={}.{} link={:?} xattrs={:?} policy={} decoupled={:?} chunk_size={} chunks={:?}\n",
                String::from_utf8_lossy(&path),
                ino,
                attr.kind,
                attr.perm,
                attr.uid,
                attr.gid,
                attr.nlink,
                attr.size,
                attr.mtime.seconds,
                attr.mtime.nanoseconds,
                String::from_utf8_lossy(&inode.record.symlink_target),
                inode.record.xattrs.iter().map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), v.len())).collect::<Vec<_>>(),
                inode.record.policy.is_some(),
                inode.record.decoupling.as_ref().map(|d| (d.owner, d.range.start, d.range.end)),
                inode.record.chunk_size_bytes,
                inode
                    .record
                    .chunks
                    .iter()
                    .map(|(index, chunk)| (index, chunk.version.writer, chunk.version.serial, chunk.length_bytes))
                    .collect::<Vec<_>>(),
            ));
            if let Some(children) = &inode.children {
                for (name, child) in children.iter().rev() {
                    let mut child_path = path.clone();
                    if child_path.len() > 1 {
                        child_path.push(b'/');
                    }
                    child_path.extend_from_slice(name);
                    stack.push((*child, child_path));
                }
            }
        }
        out
    }
}

/// Check everything about an event that does not depend on the namespace's state, with the
/// errno Linux gives, then the journal's own validation (a record the journal would refuse
/// must never be applied). Call before `apply` for events built from client input.
pub fn validate_event(event: &Event) -> NsResult<()> {
    let names: Vec<&[u8]> = match event {
        Event::Create { name, .. }
        | Event::Mkdir { name, .. }
        | Event::Symlink { name, .. }
        | Event::Link { name, .. }
        | Event::Unlink { name, .. }
        | Event::Rmdir { name, .. } => vec![name],
        Event::Rename { source_name, target_name, .. } => vec![source_name, target_name],
        _ => Vec::new(),
    };
    for name in names {
        validate_name(name)?;
    }
    match event {
        Event::SetXattr { name, value, .. } => {
            validate_xattr_name(name)?;
            if value.len() > XATTR_VALUE_LENGTH_MAX_BYTES {
                return Err(NsError::TooBig);
            }
        }
        Event::RemoveXattr { name, .. } => validate_xattr_name(name)?,
        Event::Symlink { target, .. } if target.len() > SYMLINK_TARGET_LENGTH_MAX_BYTES => {
            return Err(NsError::NameTooLong)
        }
        _ => {}
    }
    cudele_journal::codec::validate_event(event).map_err(|_| NsError::InvalidArgument("malformed request"))
}

fn validate_xattr_name(name: &[u8]) -> NsResult<()> {
    if name.is_empty() || name.len() > XATTR_NAME_LENGTH_MAX_BYTES {
        return Err(NsError::Range);
    }
    if name.contains(&0) {
        return Err(NsError::InvalidArgument("NUL in an xattr name"));
    }
    Ok(())
}

/// Add `range` to a session's sorted ranges, joining it with an adjacent one; past
/// [`SESSION_RANGES_MAX`] the oldest (lowest) range is dropped.
fn add_range(ranges: &mut Vec<InodeRange>, range: InodeRange) {
    match ranges.last_mut() {
        Some(last) if last.end == range.start => last.end = range.end,
        _ => {
            let index = ranges.partition_point(|existing| existing.start < range.start);
            ranges.insert(index, range);
        }
    }
    if ranges.len() > SESSION_RANGES_MAX {
        ranges.remove(0);
    }
}

#[allow(clippy::too_many_arguments)]
fn new_record(
    ino: Ino,
    kind: FileKind,
    mode: u32,
    uid: u32,
    gid: u32,
    rdev: u32,
    time: Timestamp,
    parent: Ino,
) -> InodeRecord {
    InodeRecord {
        attr: Attr {
            ino,
            kind,
            perm: mode & PERMISSION_BITS,
            uid,
            gid,
            nlink: 1,
            size: 0,
            rdev,
            atime: time,
            mtime: time,
            ctime: time,
        },
        parent,
        symlink_target: Vec::new(),
        xattrs: BTreeMap::new(),
        chunk_size_bytes: 0,
        policy: None,
        decoupling: None,
        chunks: ChunkMap::new(),
    }
}
