//! Routes each metadata operation to the decoupled subtree that holds it, or to the inner
//! (MDS-backed) implementation — a `Metadata` of its own, so FUSE handlers never ask which
//! mode they are in (DESIGN.md §6).
//!
//! Control is through virtual xattrs on directories, as CephFS's `ceph.dir.*` (the `cudele`
//! CLI sets them through the mount, so the mount that owns the subtree acts):
//! - `cudele.decouple` = policies.yml text: decouple this directory;
//! - `cudele.merge`: merge the client journal now (weak subtrees);
//! - `cudele.recouple`: merge (weak) and give the subtree back to the MDS;
//! - `cudele.status` (get): JSON status of the subtree.
//!
//! Persistence points of a decoupled subtree: fsync/fsyncdir inside it, every
//! `sync_interval`, merge, recouple and unmount. Local Persist writes the client journal to
//! `journal_dir`, Global Persist to the object store.

use super::journal::{client_journal_file, client_journal_object};
use super::view::DecoupledSubtree;
use crate::metadata::{
    FsStats, InodeAttr, KernelCache, LayoutUpdate, Metadata, Owner, Published, ReaddirPage, SetAttrChanges,
};
use cudele_journal::{FileKind, Ino, InodeRange, RenameMode, SessionId, Timestamp, XattrMode};
use cudele_namespace::{NsError, NsResult};
use cudele_policy::{Consistency, Mechanism, Policy};
use serde::Serialize;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

pub const DECOUPLE_XATTR: &[u8] = b"cudele.decouple";
pub const MERGE_XATTR: &[u8] = b"cudele.merge";
pub const RECOUPLE_XATTR: &[u8] = b"cudele.recouple";
pub const STATUS_XATTR: &[u8] = b"cudele.status";
/// Inode numbers requested when a subtree's range runs out (at least the policy's amount).
pub const INODE_REFILL_MIN: u64 = 1024;

/// What the router needs from the MDS beyond the `Metadata` operations.
pub trait SubtreeControl: Send + Sync {
    /// Decouple `ino`: (inode range, framed subtree snapshot, merged position).
    fn decouple(&self, ino: Ino, policy: &[u8]) -> NsResult<(InodeRange, Vec<u8>, u64)>;
    /// Merge a client journal given inline or as an object; returns the merged position.
    fn merge(&self, ino: Ino, journal: MergeSource, recouple: bool, operator: bool) -> NsResult<MergeOutcome>;
    fn allocate_inodes(&self, count: u64) -> NsResult<InodeRange>;
    fn session(&self) -> u64;
    /// Write (Some) or delete (None) an object in the object store (Global Persist).
    fn put_object(&self, name: &str, bytes: Option<Vec<u8>>) -> NsResult<()>;
}

/// Where a merge reads the client journal from.
pub enum MergeSource {
    Inline(Vec<u8>),
    Object(String),
    /// Nothing to merge (recouple of an empty or invisible subtree).
    Empty,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct MergeOutcome {
    pub events_applied: u64,
    pub events_skipped: u64,
    pub events_already_merged: u64,
    pub merged_seq: u64,
    pub skip_reasons: Vec<String>,
}

/// `cudele status DIR --json`.
#[derive(Debug, Serialize)]
pub struct SubtreeStatus {
    pub root: Ino,
    pub cell: String,
    pub mechanisms: Vec<String>,
    pub owner_session: u64,
    pub inodes_left: u64,
    pub events_unmerged: u64,
    pub bytes_unmerged: u64,
    pub events_unpersisted: u64,
    pub merged_seq: u64,
    pub last_merge: Option<MergeOutcome>,
}

struct Entry {
    subtree: DecoupledSubtree,
    last_merge: Option<MergeOutcome>,
    last_sync: std::time::Instant,
}

pub struct SubtreeRouter {
    inner: Arc<dyn Metadata>,
    control: Arc<dyn SubtreeControl>,
    /// Local Persist target directory.
    journal_dir: PathBuf,
    subtrees: RwLock<HashMap<Ino, Arc<Mutex<Entry>>>>,
    /// The kernel's caches: a subtree that comes or goes changes what this mount answers.
    kernel: std::sync::OnceLock<Arc<dyn KernelCache>>,
}

fn invisible(policy: &Policy) -> bool {
    policy.cell().consistency == Consistency::Invisible
}

impl SubtreeRouter {
    pub fn new(inner: Arc<dyn Metadata>, control: Arc<dyn SubtreeControl>, journal_dir: PathBuf) -> Self {
        SubtreeRouter {
            inner,
            control,
            journal_dir,
            subtrees: RwLock::new(HashMap::new()),
            kernel: std::sync::OnceLock::new(),
        }
    }

    /// This mount's answers changed wholesale (a subtree was given back).
    fn kernel_invalidate_all(&self) {
        if let Some(kernel) = self.kernel.get() {
            kernel.invalidate_all();
        }
    }

    /// The subtree holding `ino`, if any.
    fn subtree_of(&self, ino: Ino) -> Option<Arc<Mutex<Entry>>> {
        let subtrees = self.subtrees.read().expect("subtrees lock poisoned");
        subtrees.values().find(|entry| entry.lock().expect("subtree lock poisoned").subtree.contains(ino)).cloned()
    }

    fn with_local<R>(&self, ino: Ino, local: impl FnOnce(&mut DecoupledSubtree) -> NsResult<R>) -> Option<NsResult<R>> {
        let entry = self.subtree_of(ino)?;
        let mut entry = entry.lock().expect("subtree lock poisoned");
        Some(local(&mut entry.subtree))
    }

    /// Run a change that may need a fresh inode number; refill the range once if it ran out.
    fn with_allocation<R>(
        &self,
        parent: Ino,
        mut local: impl FnMut(&mut DecoupledSubtree) -> NsResult<R>,
    ) -> Option<NsResult<R>> {
        let entry = self.subtree_of(parent)?;
        let mut entry = entry.lock().expect("subtree lock poisoned");
        match local(&mut entry.subtree) {
            Err(NsError::NoSpace(_)) => {
                let count = entry.subtree.policy.allocated_inodes().max(INODE_REFILL_MIN);
                match self.control.allocate_inodes(count) {
                    Ok(range) => entry.subtree.add_range(range),
                    Err(error) => return Some(Err(error)),
                }
                Some(local(&mut entry.subtree))
            }
            other => Some(other),
        }
    }

    fn with_layout(subtree: &DecoupledSubtree, ino: Ino) -> NsResult<InodeAttr> {
        let (attr, chunk_size_bytes, chunks) = subtree.attr_with_layout(ino)?;
        Ok(InodeAttr { attr, chunk_size_bytes, chunks: std::sync::Arc::new(chunks) })
    }

    /// Decouple directory `ino` under `policy_text`.
    pub fn decouple(&self, ino: Ino, policy_text: &[u8]) -> NsResult<()> {
        let text = std::str::from_utf8(policy_text).map_err(|_| NsError::InvalidArgument("policy is not UTF-8"))?;
        let policy = Policy::parse(text, "policies.yml").map_err(|error| {
            tracing::warn!(%error, "decouple refused");
            NsError::InvalidArgument("invalid policies.yml")
        })?;
        if !policy.is_decoupled() {
            return Err(NsError::InvalidArgument("a strong policy has nothing to decouple"));
        }
        if self.subtree_of(ino).is_some() {
            return Err(NsError::Busy("already inside a decoupled subtree"));
        }
        let attr = self.inner.getattr(ino)?;
        if attr.attr.kind != FileKind::Directory {
            return Err(NsError::NotDirectory);
        }
        let (range, frames, merged_seq) = self.control.decouple(ino, policy_text)?;
        let subtree = DecoupledSubtree::new(ino, b"decoupled", policy, range, &frames, merged_seq)
            .map_err(|error| NsError::Io(format!("materialising the subtree: {error}")))?;
        self.subtrees.write().expect("subtrees lock poisoned").insert(
            ino,
            Arc::new(Mutex::new(Entry { subtree, last_merge: None, last_sync: std::time::Instant::now() })),
        );
        // The kernel may keep what it cached: the local view starts as the MDS's state.
        Ok(())
    }

    /// Persist the client journal of the subtree at `root` per its durability.
    fn persist(&self, entry: &mut Entry) -> NsResult<()> {
        let segment = entry.subtree.journal().unmerged_segment();
        self.persist_segment(entry, segment.as_deref())
    }

    /// [`Self::persist`] with the unmerged events already encoded (a merge sends the same
    /// bytes: encoding 100,000 events once instead of twice saves ~0.1 s).
    fn persist_segment(&self, entry: &mut Entry, segment: Option<&[u8]>) -> NsResult<()> {
        let policy = &entry.subtree.policy;
        let mechanisms = policy.mechanisms();
        let root = entry.subtree.root;
        if mechanisms.contains(&Mechanism::LocalPersist) {
            let path = client_journal_file(&self.journal_dir, root);
            entry
                .subtree
                .journal_mut()
                .persist_local(&path, segment)
                .map_err(|error| NsError::Io(format!("local persist: {error}")))?;
        }
        if mechanisms.contains(&Mechanism::GlobalPersist) || mechanisms.contains(&Mechanism::NonvolatileApply) {
            let object = client_journal_object(root, self.control.session());
            self.control.put_object(&object, segment.map(<[u8]>::to_vec))?;
            entry.subtree.journal_mut().mark_persisted();
        }
        Ok(())
    }

    /// Merge the subtree at `root` (weak cells); with `recouple`, give it back afterwards.
    pub fn merge(&self, root: Ino, recouple: bool) -> NsResult<MergeOutcome> {
        let entry = self.subtrees.read().expect("subtrees lock poisoned").get(&root).cloned();
        let entry = entry.ok_or(NsError::InvalidArgument("not the root of a decoupled subtree"))?;
        let mut entry = entry.lock().expect("subtree lock poisoned");
        let segment = entry.subtree.journal().unmerged_segment();
        self.persist_segment(&mut entry, segment.as_deref())?;
        let policy = entry.subtree.policy.clone();
        let outcome = if invisible(&policy) {
            // Invisible updates are never merged by the system: recouple keeps the persisted
            // journal for `cudele journal apply`.
            if !recouple {
                return Err(NsError::NotPermitted);
            }
            self.control.merge(root, MergeSource::Empty, true, false)?
        } else {
            // Nothing unmerged: no journal to send (and, for Nonvolatile Apply, no object —
            // persist just deleted it, so naming it would fail the merge with EIO).
            let source = match segment {
                None => MergeSource::Empty,
                Some(_) if policy.mechanisms().contains(&Mechanism::NonvolatileApply) => {
                    MergeSource::Object(client_journal_object(root, self.control.session()))
                }
                Some(segment) => MergeSource::Inline(segment),
            };
            let outcome = self.control.merge(root, source, recouple, false)?;
            entry.subtree.journal_mut().mark_merged(outcome.merged_seq);
            // The merged events are in the MDS: persisted copies are obsolete.
            self.persist(&mut entry)?;
            outcome
        };
        entry.last_merge = Some(outcome.clone());
        entry.last_sync = std::time::Instant::now();
        drop(entry);
        if recouple {
            self.subtrees.write().expect("subtrees lock poisoned").remove(&root);
            // What the kernel cached below the root came from the local view, which the
            // MDS's state replaces now (other clients' changes under allow, nothing of an
            // invisible subtree). A merge alone changes nothing this mount answers.
            self.kernel_invalidate_all();
        }
        Ok(outcome)
    }

    pub fn status(&self, root: Ino) -> NsResult<SubtreeStatus> {
        let entry = self.subtrees.read().expect("subtrees lock poisoned").get(&root).cloned();
        let entry = entry.ok_or(NsError::NoData)?;
        let entry = entry.lock().expect("subtree lock poisoned");
        let subtree = &entry.subtree;
        Ok(SubtreeStatus {
            root,
            cell: subtree.policy.cell().to_string(),
            mechanisms: subtree.policy.mechanisms().iter().map(|mechanism| mechanism.to_string()).collect(),
            owner_session: self.control.session(),
            inodes_left: subtree.inodes_left(),
            events_unmerged: subtree.journal().unmerged_events(),
            bytes_unmerged: subtree.journal().unmerged_bytes(),
            events_unpersisted: subtree.journal().unpersisted_events(),
            merged_seq: subtree.journal().merged_seq(),
            last_merge: entry.last_merge.clone(),
        })
    }

    /// The roots of the decoupled subtrees this mount owns.
    pub fn roots(&self) -> Vec<Ino> {
        self.subtrees.read().expect("subtrees lock poisoned").keys().copied().collect()
    }

    /// Merge weak subtrees whose namespace-sync interval has passed (called by a timer).
    pub fn sync_due(&self) {
        for root in self.roots() {
            let due = self.subtrees.read().expect("subtrees lock poisoned").get(&root).is_some_and(|entry| {
                let entry = entry.lock().expect("subtree lock poisoned");
                !invisible(&entry.subtree.policy)
                    && entry
                        .subtree
                        .policy
                        .sync_interval()
                        .is_some_and(|interval| entry.last_sync.elapsed() >= interval)
            });
            if due {
                if let Err(error) = self.merge(root, false) {
                    tracing::warn!(root, %error, "namespace sync failed");
                }
            }
        }
    }

    /// Unmount: weak subtrees merge and recouple; invisible ones persist and recouple (their
    /// journal waits for `cudele journal apply`).
    pub fn shutdown(&self) {
        for root in self.roots() {
            if let Err(error) = self.merge(root, true) {
                tracing::warn!(root, %error, "merging a decoupled subtree at unmount failed");
            }
        }
    }
}

/// How often the mount checks whether a subtree's sync interval has passed.
pub const SYNC_TICK_MS: u64 = 100;

impl Metadata for SubtreeRouter {
    fn lookup(&self, parent: Ino, name: &[u8]) -> NsResult<InodeAttr> {
        if let Some(result) = self.with_local(parent, |subtree| {
            let attr = subtree.lookup(parent, name)?;
            Self::with_layout(subtree, attr.ino)
        }) {
            return result;
        }
        let found = self.inner.lookup(parent, name)?;
        // A decoupled root seen from outside: its attributes are the local ones.
        match self.with_local(found.attr.ino, |subtree| Self::with_layout(subtree, subtree.root)) {
            Some(local) => local,
            None => Ok(found),
        }
    }

    fn getattr(&self, ino: Ino) -> NsResult<InodeAttr> {
        match self.with_local(ino, |subtree| Self::with_layout(subtree, ino)) {
            Some(result) => result,
            None => self.inner.getattr(ino),
        }
    }

    fn setattr(&self, ino: Ino, changes: &SetAttrChanges) -> NsResult<InodeAttr> {
        let local = changes.resolve(Timestamp::now());
        match self.with_local(ino, |subtree| {
            subtree.setattr(ino, local.clone())?;
            Self::with_layout(subtree, ino)
        }) {
            Some(result) => result,
            None => self.inner.setattr(ino, changes),
        }
    }

    fn create(
        &self,
        parent: Ino,
        name: &[u8],
        kind: FileKind,
        mode: u32,
        owner: Owner,
        rdev: u32,
    ) -> NsResult<InodeAttr> {
        match self.with_allocation(parent, |subtree| {
            let attr = subtree.create(parent, name, kind, mode, owner.uid, owner.gid, rdev)?;
            Self::with_layout(subtree, attr.ino)
        }) {
            Some(result) => result,
            None => self.inner.create(parent, name, kind, mode, owner, rdev),
        }
    }

    fn mkdir(&self, parent: Ino, name: &[u8], mode: u32, owner: Owner) -> NsResult<InodeAttr> {
        match self.with_allocation(parent, |subtree| {
            let attr = subtree.create(parent, name, FileKind::Directory, mode, owner.uid, owner.gid, 0)?;
            Self::with_layout(subtree, attr.ino)
        }) {
            Some(result) => result,
            None => self.inner.mkdir(parent, name, mode, owner),
        }
    }

    fn symlink(&self, parent: Ino, name: &[u8], target: &[u8], owner: Owner) -> NsResult<InodeAttr> {
        match self.with_allocation(parent, |subtree| {
            let attr = subtree.symlink(parent, name, target, owner.uid, owner.gid)?;
            Self::with_layout(subtree, attr.ino)
        }) {
            Some(result) => result,
            None => self.inner.symlink(parent, name, target, owner),
        }
    }

    fn link(&self, ino: Ino, new_parent: Ino, new_name: &[u8]) -> NsResult<InodeAttr> {
        let source = self.subtree_of(ino).map(|entry| entry.lock().expect("subtree lock poisoned").subtree.root);
        let target = self.subtree_of(new_parent).map(|entry| entry.lock().expect("subtree lock poisoned").subtree.root);
        if source != target {
            return Err(NsError::CrossDevice);
        }
        match self.with_local(new_parent, |subtree| {
            subtree.link(ino, new_parent, new_name)?;
            Self::with_layout(subtree, ino)
        }) {
            Some(result) => result,
            None => self.inner.link(ino, new_parent, new_name),
        }
    }

    fn unlink(&self, parent: Ino, name: &[u8]) -> NsResult<()> {
        match self.with_local(parent, |subtree| subtree.unlink(parent, name)) {
            Some(result) => result,
            None => self.inner.unlink(parent, name),
        }
    }

    fn rmdir(&self, parent: Ino, name: &[u8]) -> NsResult<()> {
        match self.with_local(parent, |subtree| subtree.rmdir(parent, name)) {
            Some(result) => result,
            None => self.inner.rmdir(parent, name),
        }
    }

    fn rename(
        &self,
        source_parent: Ino,
        source_name: &[u8],
        target_parent: Ino,
        target_name: &[u8],
        mode: RenameMode,
    ) -> NsResult<()> {
        let source =
            self.subtree_of(source_parent).map(|entry| entry.lock().expect("subtree lock poisoned").subtree.root);
        let target =
            self.subtree_of(target_parent).map(|entry| entry.lock().expect("subtree lock poisoned").subtree.root);
        if source != target {
            // Moving across the subtree boundary would split one change over two journals.
            return Err(NsError::CrossDevice);
        }
        match self.with_local(source_parent, |subtree| {
            subtree.rename(source_parent, source_name, target_parent, target_name, mode)
        }) {
            Some(result) => result,
            None => self.inner.rename(source_parent, source_name, target_parent, target_name, mode),
        }
    }

    fn readlink(&self, ino: Ino) -> NsResult<Vec<u8>> {
        match self.with_local(ino, |subtree| subtree.readlink(ino)) {
            Some(result) => result,
            None => self.inner.readlink(ino),
        }
    }

    fn readdir(&self, ino: Ino, after: Option<&[u8]>, limit: usize, plus: bool) -> NsResult<ReaddirPage> {
        match self.with_local(ino, |subtree| {
            let entries = subtree.readdir(ino, after, limit.saturating_add(1))?;
            let end = entries.len() <= limit;
            let entries = entries
                .into_iter()
                .take(limit)
                .map(|entry| {
                    let attr = if plus { Self::with_layout(subtree, entry.ino).ok() } else { None };
                    (entry, attr)
                })
                .collect();
            Ok(ReaddirPage { entries, end })
        }) {
            Some(result) => result,
            None => self.inner.readdir(ino, after, limit, plus),
        }
    }

    fn getxattr(&self, ino: Ino, name: &[u8], size: u32) -> NsResult<Vec<u8>> {
        if name == STATUS_XATTR {
            let status = self.status(ino)?;
            let value = serde_json::to_vec(&status).map_err(|error| NsError::Io(error.to_string()))?;
            if size != 0 && value.len() > size as usize {
                return Err(NsError::Range);
            }
            return Ok(value);
        }
        match self.with_local(ino, |subtree| subtree.getxattr(ino, name, size)) {
            Some(result) => result,
            None => self.inner.getxattr(ino, name, size),
        }
    }

    fn listxattr(&self, ino: Ino, size: u32) -> NsResult<Vec<u8>> {
        match self.with_local(ino, |subtree| subtree.listxattr(ino, size)) {
            Some(result) => result,
            None => self.inner.listxattr(ino, size),
        }
    }

    fn setxattr(&self, ino: Ino, name: &[u8], value: &[u8], mode: XattrMode) -> NsResult<()> {
        match name {
            DECOUPLE_XATTR => return self.decouple(ino, value),
            MERGE_XATTR => return self.merge(ino, false).map(|_| ()),
            RECOUPLE_XATTR => return self.merge(ino, true).map(|_| ()),
            _ => {}
        }
        match self.with_local(ino, |subtree| subtree.setxattr(ino, name, value, mode)) {
            Some(result) => result,
            None => self.inner.setxattr(ino, name, value, mode),
        }
    }

    fn removexattr(&self, ino: Ino, name: &[u8]) -> NsResult<()> {
        match self.with_local(ino, |subtree| subtree.removexattr(ino, name)) {
            Some(result) => result,
            None => self.inner.removexattr(ino, name),
        }
    }

    fn statfs(&self) -> NsResult<FsStats> {
        self.inner.statfs()
    }

    /// In a decoupled subtree the replaced chunks stay: until the merge, other mounts may
    /// still read them through the MDS (`cudele gc` collects them afterwards).
    fn set_layout(&self, ino: Ino, layout: &LayoutUpdate) -> NsResult<Published> {
        match self.with_local(ino, |subtree| {
            subtree.set_layout(ino, layout)?;
            Self::with_layout(subtree, ino)
        }) {
            Some(result) => result.map(|attr| Published { attr, superseded: Vec::new() }),
            None => self.inner.set_layout(ino, layout),
        }
    }

    fn data_writer(&self) -> SessionId {
        self.inner.data_writer()
    }

    fn close(&self) {
        self.shutdown();
        self.inner.close();
    }

    fn attach_kernel_cache(&self, kernel: Arc<dyn KernelCache>) -> bool {
        let _ = self.kernel.set(kernel.clone());
        self.inner.attach_kernel_cache(kernel)
    }

    fn kernel_may_cache(&self) -> bool {
        self.inner.kernel_may_cache()
    }

    fn fsync(&self, ino: Ino) -> NsResult<()> {
        let Some(entry) = self.subtree_of(ino) else { return self.inner.fsync(ino) };
        let mut entry = entry.lock().expect("subtree lock poisoned");
        // fsync inside a decoupled subtree promises what its durability promises.
        self.persist(&mut entry)
    }
}
