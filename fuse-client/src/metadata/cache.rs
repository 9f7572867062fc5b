//! The client's cache of attributes, directory entries (positive and negative) and symlink
//! targets, kept coherent by the MDS's invalidations.
//!
//! Coherence argument: the MDS acknowledges a write to its author only after every other
//! subscribed session dropped what the write touched and acknowledged that. So once a
//! mount has processed an invalidation, nothing it caches predates the write — except a
//! read reply computed before the write that arrives after the invalidation. Every fill
//! therefore names the [`CacheGeneration`] it saw before sending its RPC, and is dropped if
//! any invalidation (or local mutation, or loss of the push channel) happened since.
//!
//! While the push channel is down the cache is disabled: nothing is served from it and
//! nothing enters it, because nobody would tell us when it goes stale.

use super::{InodeAttr, KernelCache};
use crate::sync::{lock, Arc, AtomicU64, Mutex, Ordering};
use cudele_journal::Ino;
use std::collections::{HashMap, HashSet};

/// Most attributes plus directory entries held; on overflow the cache starts over (a
/// cache miss costs one RPC, a wrong answer costs correctness, so keep eviction simple).
pub const CACHE_ENTRIES_MAX: usize = 1 << 20;

/// The cache's invalidation count when an RPC was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheGeneration(u64);

/// What the cache knows about a name in a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CachedEntry {
    /// The name does not exist (a negative entry).
    Missing,
    Present(InodeAttr),
}

/// Hit and miss counters, for `cudele status`-style reporting and tests.
#[derive(Debug, Default)]
pub struct CacheCounters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub fills_dropped: AtomicU64,
    pub invalidations: AtomicU64,
}

#[derive(Default)]
struct State {
    enabled: bool,
    generation: u64,
    attrs: HashMap<Ino, InodeAttr>,
    /// parent -> name -> child (None: negative entry).
    entries: HashMap<Ino, HashMap<Vec<u8>, Option<Ino>>>,
    entry_count: usize,
    symlinks: HashMap<Ino, Vec<u8>>,
    /// ino -> xattr name -> value (None: the attribute does not exist). The kernel asks
    /// for `security.capability` before every write, so the negative answers matter.
    xattrs: HashMap<Ino, HashMap<Vec<u8>, Option<Vec<u8>>>>,
    xattr_count: usize,
    /// Inodes whose every xattr is in `xattrs` (a name not there does not exist): inodes
    /// this mount just created, which have none.
    xattrs_complete: HashSet<Ino>,
    /// Directories whose every entry is in `entries`, so a name not there does not exist
    /// (directories this mount created, or listed whole): negative lookups without an RPC.
    /// Any invalidation of one of their entries (or of the directory) drops the mark.
    complete_directories: HashSet<Ino>,
}

/// Inserts allowed by one successful generation check.
pub struct Filler<'a> {
    state: &'a mut State,
    /// The entries this fill set, so `local_change` knows which completeness survives.
    entries_set: Vec<(Ino, Vec<u8>)>,
}

impl Filler<'_> {
    pub fn attr(&mut self, attr: &InodeAttr) {
        self.state.make_room();
        self.state.attrs.insert(attr.attr.ino, attr.clone());
    }

    /// `name` in `parent` names `child` (None: it does not exist).
    pub fn entry(&mut self, parent: Ino, name: &[u8], child: Option<&InodeAttr>) {
        self.state.make_room();
        if let Some(attr) = child {
            self.state.attrs.insert(attr.attr.ino, attr.clone());
        }
        let previous =
            self.state.entries.entry(parent).or_default().insert(name.to_vec(), child.map(|attr| attr.attr.ino));
        if previous.is_none() {
            self.state.entry_count += 1;
        }
        self.entries_set.push((parent, name.to_vec()));
    }

    /// `name` in `parent` names inode `child`, whose attributes we do not know (a lookup
    /// still asks for them, but the name is known to exist).
    pub fn entry_to(&mut self, parent: Ino, name: &[u8], child: Ino) {
        self.state.make_room();
        if self.state.entries.entry(parent).or_default().insert(name.to_vec(), Some(child)).is_none() {
            self.state.entry_count += 1;
        }
        self.entries_set.push((parent, name.to_vec()));
    }

    /// Every entry of directory `ino` is now in the cache (a new, empty directory, or a
    /// whole listing just filled).
    pub fn complete_directory(&mut self, ino: Ino) {
        self.state.make_room();
        self.state.complete_directories.insert(ino);
    }

    pub fn symlink(&mut self, ino: Ino, target: &[u8]) {
        self.state.make_room();
        self.state.symlinks.insert(ino, target.to_vec());
    }

    /// `ino` was just created here: it has no xattrs at all.
    pub fn no_xattrs(&mut self, ino: Ino) {
        self.state.make_room();
        self.state.xattrs_complete.insert(ino);
    }

    /// Xattr `name` of `ino` has `value` (None: it does not exist).
    pub fn xattr(&mut self, ino: Ino, name: &[u8], value: Option<&[u8]>) {
        self.state.make_room();
        if self.state.xattrs.entry(ino).or_default().insert(name.to_vec(), value.map(<[u8]>::to_vec)).is_none() {
            self.state.xattr_count += 1;
        }
    }
}

impl State {
    fn size(&self) -> usize {
        self.attrs.len()
            + self.entry_count
            + self.symlinks.len()
            + self.xattr_count
            + self.xattrs_complete.len()
            + self.complete_directories.len()
    }

    fn make_room(&mut self) {
        if self.size() >= CACHE_ENTRIES_MAX {
            self.clear();
        }
    }

    fn clear(&mut self) {
        self.attrs.clear();
        self.entries.clear();
        self.entry_count = 0;
        self.symlinks.clear();
        self.xattrs.clear();
        self.xattr_count = 0;
        self.xattrs_complete.clear();
        self.complete_directories.clear();
    }

    fn drop_inode(&mut self, ino: Ino) {
        self.attrs.remove(&ino);
        self.symlinks.remove(&ino);
        if let Some(names) = self.xattrs.remove(&ino) {
            self.xattr_count -= names.len();
        }
        self.xattrs_complete.remove(&ino);
        self.complete_directories.remove(&ino);
    }

    fn drop_entry(&mut self, parent: Ino, name: &[u8]) {
        self.complete_directories.remove(&parent);
        if let Some(names) = self.entries.get_mut(&parent) {
            if names.remove(name).is_some() {
                self.entry_count -= 1;
            }
            if names.is_empty() {
                self.entries.remove(&parent);
            }
        }
    }
}

/// See the module documentation.
#[derive(Default)]
pub struct MetadataCache {
    state: Mutex<State>,
    pub counters: CacheCounters,
    /// The kernel's copy of what we answered: invalidated with ours, before the ACK.
    kernel: std::sync::OnceLock<Arc<dyn KernelCache>>,
}

impl MetadataCache {
    /// A disabled, empty cache (enable it once the push channel is up).
    pub fn new() -> Self {
        Self::default()
    }

    /// From now on, every invalidation also reaches the kernel's caches.
    pub fn attach_kernel(&self, kernel: Arc<dyn KernelCache>) {
        let _ = self.kernel.set(kernel);
    }

    fn kernel_invalidate_all(&self) {
        if let Some(kernel) = self.kernel.get() {
            kernel.invalidate_all();
        }
    }

    pub fn generation(&self) -> CacheGeneration {
        CacheGeneration(lock(&self.state).generation)
    }

    fn count(&self, hit: bool) {
        let counter = if hit { &self.counters.hits } else { &self.counters.misses };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn attr(&self, ino: Ino) -> Option<InodeAttr> {
        let state = lock(&self.state);
        let found = state.enabled.then(|| state.attrs.get(&ino).cloned()).flatten();
        self.count(found.is_some());
        found
    }

    /// A positive entry counts only when the child's attributes are cached too.
    pub fn entry(&self, parent: Ino, name: &[u8]) -> Option<CachedEntry> {
        let state = lock(&self.state);
        let found = if !state.enabled {
            None
        } else {
            match state.entries.get(&parent).and_then(|names| names.get(name)) {
                Some(None) => Some(CachedEntry::Missing),
                Some(Some(child)) => state.attrs.get(child).cloned().map(CachedEntry::Present),
                None if state.complete_directories.contains(&parent) => Some(CachedEntry::Missing),
                None => None,
            }
        };
        self.count(found.is_some());
        found
    }

    pub fn symlink(&self, ino: Ino) -> Option<Vec<u8>> {
        let state = lock(&self.state);
        let found = state.enabled.then(|| state.symlinks.get(&ino).cloned()).flatten();
        self.count(found.is_some());
        found
    }

    /// Xattr `name` of `ino`: Some(None) if known not to exist.
    pub fn xattr(&self, ino: Ino, name: &[u8]) -> Option<Option<Vec<u8>>> {
        let state = lock(&self.state);
        let found = if !state.enabled {
            None
        } else {
            match state.xattrs.get(&ino).and_then(|names| names.get(name)) {
                Some(value) => Some(value.clone()),
                None if state.xattrs_complete.contains(&ino) => Some(None),
                None => None,
            }
        };
        self.count(found.is_some());
        found
    }

    /// Insert what a read returned, unless anything was invalidated since `since`.
    pub fn fill(&self, since: CacheGeneration, fill: impl FnOnce(&mut Filler<'_>)) {
        let mut state = lock(&self.state);
        if !state.enabled || state.generation != since.0 {
            self.counters.fills_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        fill(&mut Filler { state: &mut state, entries_set: Vec::new() });
    }

    /// The cached attributes of `ino`, without counting a hit or miss.
    pub fn peek_attr(&self, ino: Ino) -> Option<InodeAttr> {
        let state = lock(&self.state);
        state.enabled.then(|| state.attrs.get(&ino).cloned()).flatten()
    }

    /// An invalidation pushed by the MDS: drop, then count it (so replies in flight from
    /// before it are not inserted). The caller acknowledges to the MDS after this returns.
    pub fn invalidate(&self, inodes: &[Ino], entries: &[(Ino, Vec<u8>)]) {
        let mut state = lock(&self.state);
        for ino in inodes {
            state.drop_inode(*ino);
        }
        for (parent, name) in entries {
            state.drop_entry(*parent, name);
        }
        state.generation += 1;
        drop(state);
        if let Some(kernel) = self.kernel.get() {
            kernel.invalidate(inodes, entries);
        }
        self.counters.invalidations.fetch_add(1, Ordering::Relaxed);
    }

    /// This mount changed the namespace: drop what the change touched, count it as an
    /// invalidation (our reads in flight may predate it), then insert what the reply told
    /// us if nothing else was invalidated since the request was sent at `since`.
    pub fn local_change(
        &self,
        since: CacheGeneration,
        inodes: &[Ino],
        entries: &[(Ino, &[u8])],
        fill: impl FnOnce(&mut Filler<'_>),
    ) {
        let mut state = lock(&self.state);
        let mut were_complete: Vec<Ino> = entries
            .iter()
            .map(|(parent, _)| *parent)
            .filter(|parent| state.complete_directories.contains(parent))
            .collect();
        were_complete.dedup();
        for ino in inodes {
            state.drop_inode(*ino);
        }
        for (parent, name) in entries {
            state.drop_entry(*parent, name);
        }
        let unchanged = state.generation == since.0;
        state.generation += 1;
        if !(state.enabled && unchanged) {
            self.counters.fills_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut filler = Filler { state: &mut state, entries_set: Vec::new() };
        fill(&mut filler);
        let entries_set = std::mem::take(&mut filler.entries_set);
        // A directory stays complete if the fill set every one of its entries we changed.
        for parent in were_complete {
            let all_set = entries.iter().filter(|(changed_parent, _)| *changed_parent == parent).all(|(_, name)| {
                entries_set.iter().any(|(set_parent, set_name)| *set_parent == parent && set_name == name)
            });
            if all_set {
                state.complete_directories.insert(parent);
            }
        }
    }

    /// What `parent/name` points at, if cached (to know which inode a change touches).
    pub fn cached_child(&self, parent: Ino, name: &[u8]) -> Option<Ino> {
        lock(&self.state).entries.get(&parent).and_then(|names| names.get(name)).copied().flatten()
    }

    /// Forget everything, keep caching (a decoupled subtree came back: what was cached
    /// from before it was decoupled is stale).
    /// The kernel's caches are the caller's business: a merge changes nothing the mount
    /// answers until the subtree is recoupled (see `SubtreeRouter::merge`).
    pub fn forget_all(&self) {
        let mut state = lock(&self.state);
        state.clear();
        state.generation += 1;
    }

    /// The push channel is down: forget everything and stop caching.
    pub fn disable(&self) {
        let mut state = lock(&self.state);
        state.enabled = false;
        state.clear();
        state.generation += 1;
        drop(state);
        self.kernel_invalidate_all();
    }

    /// The push channel is up (subscribed): start caching. Reads sent before now may
    /// predate writes whose invalidations we never received, so they must not fill.
    pub fn enable(&self) {
        let mut state = lock(&self.state);
        state.clear();
        state.enabled = true;
        state.generation += 1;
        drop(state);
        // Writes made while nobody could tell us (the channel was down) may be cached.
        self.kernel_invalidate_all();
    }

    pub fn is_enabled(&self) -> bool {
        lock(&self.state).enabled
    }

    /// Attributes plus entries plus symlinks held.
    pub fn len(&self) -> usize {
        lock(&self.state).size()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cudele_journal::{FileKind, Timestamp};
    use cudele_namespace::Attr;

    fn attr(ino: Ino, size: u64) -> InodeAttr {
        let time = Timestamp::default();
        InodeAttr {
            attr: Attr {
                ino,
                kind: FileKind::Regular,
                perm: 0o644,
                uid: 0,
                gid: 0,
                nlink: 1,
                size,
                rdev: 0,
                atime: time,
                mtime: time,
                ctime: time,
            },
            chunk_size_bytes: 0,
            chunks: Default::default(),
        }
    }

    /// A disabled cache neither serves nor stores anything.
    #[test]
    fn disabled_cache_is_inert() {
        let cache = MetadataCache::new();
        let since = cache.generation();
        cache.fill(since, |filler| filler.attr(&attr(5, 1)));
        assert_eq!(cache.attr(5), None);
    }

    /// Entries and attributes fill and are served; an invalidation drops exactly its targets.
    #[test]
    fn fill_then_invalidate() {
        let cache = MetadataCache::new();
        cache.enable();
        let since = cache.generation();
        cache.fill(since, |filler| {
            filler.entry(1, b"a", Some(&attr(5, 1)));
            filler.entry(1, b"missing", None);
            filler.attr(&attr(6, 2));
        });
        assert_eq!(cache.entry(1, b"a"), Some(CachedEntry::Present(attr(5, 1))));
        assert_eq!(cache.entry(1, b"missing"), Some(CachedEntry::Missing));
        assert_eq!(cache.entry(1, b"other"), None);
        cache.invalidate(&[5], &[(1, b"missing".to_vec())]);
        assert_eq!(cache.entry(1, b"a"), None, "a positive entry needs its child's attributes");
        assert_eq!(cache.entry(1, b"missing"), None);
        assert_eq!(cache.attr(6), Some(attr(6, 2)));
    }

    /// The classic race: a read reply computed before a write, arriving after the write's
    /// invalidation, must not be inserted.
    #[test]
    fn stale_reply_after_invalidation_is_dropped() {
        let cache = MetadataCache::new();
        cache.enable();
        let before_read = cache.generation();
        // ... the read RPC is in flight; another client's write invalidates inode 5 ...
        cache.invalidate(&[5], &[]);
        cache.fill(before_read, |filler| filler.attr(&attr(5, 1)));
        assert_eq!(cache.attr(5), None);
        assert_eq!(cache.counters.fills_dropped.load(Ordering::Relaxed), 1);
    }

    /// Our own mutation also fences reads that were in flight before it.
    #[test]
    fn local_change_fences_concurrent_reads() {
        let cache = MetadataCache::new();
        cache.enable();
        let read_sent = cache.generation();
        let write_sent = cache.generation();
        cache.local_change(write_sent, &[5], &[], |filler| filler.attr(&attr(5, 100)));
        assert_eq!(cache.attr(5), Some(attr(5, 100)));
        cache.fill(read_sent, |filler| filler.attr(&attr(5, 1)));
        assert_eq!(cache.attr(5), Some(attr(5, 100)), "the older read reply must not win");
    }

    /// Xattrs (present and absent) are cached per inode and go with the inode.
    #[test]
    fn xattrs_go_with_their_inode() {
        let cache = MetadataCache::new();
        cache.enable();
        let since = cache.generation();
        cache.fill(since, |filler| {
            filler.xattr(5, b"user.a", Some(b"x"));
            filler.xattr(5, b"security.capability", None);
        });
        assert_eq!(cache.xattr(5, b"user.a"), Some(Some(b"x".to_vec())));
        assert_eq!(cache.xattr(5, b"security.capability"), Some(None));
        assert_eq!(cache.xattr(5, b"user.b"), None);
        cache.invalidate(&[5], &[]);
        assert_eq!(cache.xattr(5, b"user.a"), None);
        assert!(cache.is_empty());
        let since = cache.generation();
        cache.fill(since, |filler| filler.no_xattrs(6));
        assert_eq!(cache.xattr(6, b"security.capability"), Some(None), "a new inode has no xattrs");
        cache.invalidate(&[6], &[]);
        assert_eq!(cache.xattr(6, b"security.capability"), None);
    }

    /// A complete directory answers negative lookups itself; our own changes keep it
    /// complete when they re-set the entry, an invalidation of any entry ends it.
    #[test]
    fn complete_directories() {
        let cache = MetadataCache::new();
        cache.enable();
        let since = cache.generation();
        cache.local_change(since, &[1], &[(1, b"d")], |filler| {
            filler.entry(1, b"d", Some(&attr(7, 0)));
            filler.complete_directory(7);
        });
        assert_eq!(cache.entry(7, b"anything"), Some(CachedEntry::Missing));
        let since = cache.generation();
        cache.local_change(since, &[7], &[(7, b"new")], |filler| filler.entry(7, b"new", Some(&attr(8, 0))));
        assert_eq!(cache.entry(7, b"new"), Some(CachedEntry::Present(attr(8, 0))));
        assert_eq!(cache.entry(7, b"other"), Some(CachedEntry::Missing), "still complete after our create");
        let since = cache.generation();
        cache.local_change(since, &[7], &[(7, b"moved")], |_| {});
        assert_eq!(cache.entry(7, b"other"), None, "an entry we could not re-set ends completeness");
        let since = cache.generation();
        cache.fill(since, |filler| filler.complete_directory(7));
        cache.invalidate(&[], &[(7, b"theirs".to_vec())]);
        assert_eq!(cache.entry(7, b"other"), None, "another client's change ends completeness");
    }

    /// Losing the push channel empties the cache; re-enabling fences reads sent meanwhile.
    #[test]
    fn disable_clears_and_enable_fences() {
        let cache = MetadataCache::new();
        cache.enable();
        let since = cache.generation();
        cache.fill(since, |filler| filler.attr(&attr(5, 1)));
        cache.disable();
        assert!(cache.is_empty());
        let during_outage = cache.generation();
        cache.enable();
        cache.fill(during_outage, |filler| filler.attr(&attr(5, 1)));
        assert_eq!(cache.attr(5), None);
    }
}
