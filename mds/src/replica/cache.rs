//! A replica instance's metadata cache: plain data, no I/O, driven by the instance.
//!
//! What is cached, and under which partition key (`cudele_proto::partition`):
//! - directory entries `(parent, name) -> inode` and negative entries (ENOENT), keyed by
//!   `parent`;
//! - readdir pages of directory `d` (names, inodes, kinds), keyed by `d`;
//! - attributes of inode `i`, keyed by `i`'s home — the directory it lives in as the MDS
//!   records it (`InodeRecord::parent`), which the MDS uses to target invalidations.
//!
//! An instance of deployment `k` admits an item only when its key hashes to `k`; everything
//! else is read through. A lookup hit needs both the entry and the child's attributes.
//!
//! Fill races: a fill reads the MDS, then inserts. An invalidation may arrive in between,
//! for a write the MDS applied after the fill's read; inserting the fill's (older) value then
//! would keep it forever. So every fill carries the [`ReplicaCache::generation`] read
//! before it asked the MDS, and an insert is refused when an invalidation since then names
//! any of its keys (or when the log of recent invalidations no longer reaches back that far).

use cudele_journal::Ino;
use cudele_proto::partition::deployment_of;
use cudele_proto::pb;
use std::collections::{HashMap, HashSet, VecDeque};

/// Recent invalidations remembered to judge fills that were in flight.
pub const INVALIDATION_LOG_LENGTH_MAX: usize = 4096;

/// One inode's cached attributes and its home directory.
#[derive(Clone, Debug, PartialEq)]
pub struct CachedAttr {
    pub attr: pb::Attr,
    pub home: Ino,
}

/// One cached entry of a listing page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageEntry {
    pub name: Vec<u8>,
    pub ino: Ino,
    pub kind: i32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct CachedPage {
    entries: Vec<PageEntry>,
    end: bool,
}

/// Which listing page: the directory, the name it resumes after, its length limit.
#[derive(Clone, Copy, Debug)]
pub struct PageKey<'a> {
    pub directory: Ino,
    pub after: &'a [u8],
    pub limit: u32,
}

/// What one invalidation names (see replica.proto `InvalidateRequest`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InvalidationKeys {
    pub inodes: Vec<Ino>,
    pub entries: Vec<(Ino, Vec<u8>)>,
    pub removed: Vec<Ino>,
    pub subtrees: Vec<Ino>,
    /// Drop everything (lease lost, re-registration, shutdown).
    pub everything: bool,
}

/// Keys in a form cheap to test while judging fills.
#[derive(Debug, Default)]
struct LoggedKeys {
    everything: bool,
    /// Inodes whose attributes changed or that were removed.
    inodes: HashSet<Ino>,
    removed: HashSet<Ino>,
    entries: HashSet<(Ino, Vec<u8>)>,
    /// Directories with a changed entry, or removed.
    entry_directories: HashSet<Ino>,
}

impl LoggedKeys {
    fn from(keys: &InvalidationKeys) -> LoggedKeys {
        LoggedKeys {
            // The cache drops everything for a subtree (it does not know the whole subtree).
            everything: keys.everything || !keys.subtrees.is_empty(),
            inodes: keys.inodes.iter().chain(&keys.removed).copied().collect(),
            removed: keys.removed.iter().copied().collect(),
            entries: keys.entries.iter().cloned().collect(),
            entry_directories: keys
                .entries
                .iter()
                .map(|(parent, _)| *parent)
                .chain(keys.removed.iter().copied())
                .collect(),
        }
    }
}

/// What a lookup found in the cache.
#[derive(Clone, Debug, PartialEq)]
pub enum LookupHit {
    Found(CachedAttr),
    /// A cached ENOENT.
    Missing,
}

pub struct ReplicaCache {
    deployment: u32,
    deployments: u32,
    items_max: usize,
    attrs: HashMap<Ino, CachedAttr>,
    entries: HashMap<Ino, HashMap<Vec<u8>, Option<Ino>>>,
    entry_count: usize,
    pages: HashMap<Ino, HashMap<(Vec<u8>, u32), CachedPage>>,
    page_count: usize,
    generation: u64,
    log: VecDeque<(u64, LoggedKeys)>,
    /// Shut down: serve nothing, admit nothing.
    closed: bool,
}

impl ReplicaCache {
    pub fn new(deployment: u32, deployments: u32, items_max: usize) -> ReplicaCache {
        ReplicaCache {
            deployment,
            deployments,
            items_max: items_max.max(1),
            attrs: HashMap::new(),
            entries: HashMap::new(),
            entry_count: 0,
            pages: HashMap::new(),
            page_count: 0,
            generation: 0,
            log: VecDeque::new(),
            closed: false,
        }
    }

    /// Adopt the MDS's number of deployments (at registration); drops everything.
    pub fn set_deployments(&mut self, deployments: u32) {
        self.deployments = deployments;
        self.clear();
    }

    /// Whether this instance's deployment owns directory `directory`.
    pub fn owns(&self, directory: Ino) -> bool {
        deployment_of(directory, self.deployments) == self.deployment
    }

    /// The position a fill must note before it asks the MDS.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn items(&self) -> usize {
        self.attrs.len() + self.entry_count + self.page_count
    }

    // ----- reads -----

    pub fn lookup(&self, parent: Ino, name: &[u8]) -> Option<LookupHit> {
        if self.closed {
            return None;
        }
        match self.entries.get(&parent)?.get(name)? {
            None => Some(LookupHit::Missing),
            Some(ino) => self.attrs.get(ino).map(|attr| LookupHit::Found(attr.clone())),
        }
    }

    pub fn getattr(&self, ino: Ino) -> Option<CachedAttr> {
        if self.closed {
            return None;
        }
        self.attrs.get(&ino).cloned()
    }

    /// A cached page; with `plus`, only when every entry's attributes are cached too.
    pub fn readdir(&self, directory: Ino, after: &[u8], limit: u32, plus: bool) -> Option<(Vec<pb::DirEntry>, bool)> {
        if self.closed {
            return None;
        }
        let page = self.pages.get(&directory)?.get(&(after.to_vec(), limit))?;
        let mut entries = Vec::with_capacity(page.entries.len());
        for entry in &page.entries {
            let attr = if plus { Some(self.attrs.get(&entry.ino)?.attr.clone()) } else { None };
            entries.push(pb::DirEntry { name: entry.name.clone(), ino: entry.ino, kind: entry.kind, attr });
        }
        Some((entries, page.end))
    }

    // ----- fills -----

    /// Whether an invalidation logged after `started` matches `names`.
    fn raced(&self, started: u64, names: impl Fn(&LoggedKeys) -> bool) -> bool {
        if self.closed {
            return true;
        }
        if started == self.generation {
            return false;
        }
        // The log must reach back to the first invalidation after `started`.
        match self.log.front() {
            Some((oldest, _)) if *oldest <= started + 1 => {}
            _ => return true,
        }
        self.log.iter().filter(|(generation, _)| *generation > started).any(|(_, keys)| keys.everything || names(keys))
    }

    /// Cache a lookup's result (`None`: ENOENT). Returns whether anything was cached.
    pub fn fill_lookup(&mut self, started: u64, parent: Ino, name: &[u8], found: Option<&CachedAttr>) -> bool {
        let child = found.map(|found| found.attr.ino);
        let raced = self.raced(started, |keys| {
            keys.entries.contains(&(parent, name.to_vec()))
                || keys.removed.contains(&parent)
                || child.is_some_and(|child| keys.inodes.contains(&child))
        });
        if raced || !self.owns(parent) {
            return false;
        }
        self.make_room();
        let bucket = self.entries.entry(parent).or_default();
        if bucket.insert(name.to_vec(), child).is_none() {
            self.entry_count += 1;
        }
        if let Some(found) = found {
            self.admit_attr(found.clone());
        }
        true
    }

    /// Cache an inode's attributes. Returns whether they were cached.
    pub fn fill_getattr(&mut self, started: u64, found: &CachedAttr) -> bool {
        let ino = found.attr.ino;
        if self.raced(started, |keys| keys.inodes.contains(&ino)) {
            return false;
        }
        self.admit_attr(found.clone())
    }

    /// Cache a listing page (and, from a `plus` page, the entries' attributes with their
    /// homes). Returns whether the page was cached.
    pub fn fill_readdir(
        &mut self,
        started: u64,
        page: PageKey<'_>,
        entries: &[pb::DirEntry],
        end: bool,
        homes: &[Ino],
    ) -> bool {
        let PageKey { directory, after, limit } = page;
        if self.raced(started, |keys| keys.entry_directories.contains(&directory)) || !self.owns(directory) {
            return false;
        }
        self.make_room();
        let page = CachedPage {
            entries: entries
                .iter()
                .map(|entry| PageEntry { name: entry.name.clone(), ino: entry.ino, kind: entry.kind })
                .collect(),
            end,
        };
        if self.pages.entry(directory).or_default().insert((after.to_vec(), limit), page).is_none() {
            self.page_count += 1;
        }
        for (entry, home) in entries.iter().zip(homes) {
            let Some(attr) = &entry.attr else { continue };
            let ino = entry.ino;
            if !self.raced(started, |keys| keys.inodes.contains(&ino)) {
                self.admit_attr(CachedAttr { attr: attr.clone(), home: *home });
            }
        }
        true
    }

    fn admit_attr(&mut self, found: CachedAttr) -> bool {
        if !self.owns(found.home) {
            return false;
        }
        self.make_room();
        self.attrs.insert(found.attr.ino, found);
        true
    }

    /// Evict arbitrary items (hash order) from the largest kind until one more fits.
    fn make_room(&mut self) {
        while self.items() >= self.items_max {
            let largest = [self.attrs.len(), self.entry_count, self.page_count];
            if largest[0] >= largest[1] && largest[0] >= largest[2] {
                if let Some(ino) = self.attrs.keys().next().copied() {
                    self.attrs.remove(&ino);
                }
            } else if largest[1] >= largest[2] {
                if let Some(parent) = self.entries.keys().next().copied() {
                    let dropped = self.entries.remove(&parent).map_or(0, |bucket| bucket.len());
                    self.entry_count -= dropped;
                }
            } else if let Some(directory) = self.pages.keys().next().copied() {
                let dropped = self.pages.remove(&directory).map_or(0, |pages| pages.len());
                self.page_count -= dropped;
            }
        }
    }

    // ----- invalidation -----

    /// Drop what `keys` names; the caller acknowledges afterwards.
    pub fn invalidate(&mut self, keys: &InvalidationKeys) {
        let logged = LoggedKeys::from(keys);
        if logged.everything {
            self.drop_everything();
        } else {
            for ino in &keys.inodes {
                self.attrs.remove(ino);
            }
            for ino in &keys.removed {
                self.attrs.remove(ino);
                self.drop_directory(*ino);
            }
            for (parent, name) in &keys.entries {
                if let Some(bucket) = self.entries.get_mut(parent) {
                    if bucket.remove(name).is_some() {
                        self.entry_count -= 1;
                    }
                }
                if let Some(pages) = self.pages.remove(parent) {
                    self.page_count -= pages.len();
                }
            }
        }
        self.generation += 1;
        self.log.push_back((self.generation, logged));
        while self.log.len() > INVALIDATION_LOG_LENGTH_MAX {
            self.log.pop_front();
        }
    }

    fn drop_directory(&mut self, directory: Ino) {
        if let Some(bucket) = self.entries.remove(&directory) {
            self.entry_count -= bucket.len();
        }
        if let Some(pages) = self.pages.remove(&directory) {
            self.page_count -= pages.len();
        }
    }

    fn drop_everything(&mut self) {
        self.attrs.clear();
        self.entries.clear();
        self.pages.clear();
        self.entry_count = 0;
        self.page_count = 0;
    }

    /// Drop everything and void every fill in flight.
    pub fn clear(&mut self) {
        self.invalidate(&InvalidationKeys { everything: true, ..Default::default() });
    }

    /// Drop everything and refuse to serve or admit from now on (shutdown).
    pub fn close(&mut self) {
        self.clear();
        self.closed = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(ino: Ino, size: u64) -> pb::Attr {
        pb::Attr { ino, kind: pb::FileKind::Regular as i32, size, nlink: 1, ..Default::default() }
    }

    fn page(directory: Ino, limit: u32) -> PageKey<'static> {
        PageKey { directory, after: b"", limit }
    }

    /// A cache owning everything (deployment 0 of 1).
    fn single() -> ReplicaCache {
        ReplicaCache::new(0, 1, 1000)
    }

    /// Lookups hit only with both the entry and the child's attributes; ENOENT is cached.
    #[test]
    fn lookup_hits_after_fill_and_negative_entries_are_cached() {
        let mut cache = single();
        assert_eq!(cache.lookup(1, b"a"), None);
        let found = CachedAttr { attr: attr(5, 10), home: 1 };
        assert!(cache.fill_lookup(cache.generation(), 1, b"a", Some(&found)));
        assert_eq!(cache.lookup(1, b"a"), Some(LookupHit::Found(found.clone())));
        assert!(cache.fill_lookup(cache.generation(), 1, b"b", None));
        assert_eq!(cache.lookup(1, b"b"), Some(LookupHit::Missing));
        // Creating b invalidates the negative entry.
        cache.invalidate(&InvalidationKeys {
            entries: vec![(1, b"b".to_vec())],
            inodes: vec![1],
            ..Default::default()
        });
        assert_eq!(cache.lookup(1, b"b"), None);
        // Changing a's attributes leaves the entry but drops the attributes: a miss.
        cache.invalidate(&InvalidationKeys { inodes: vec![5], ..Default::default() });
        assert_eq!(cache.lookup(1, b"a"), None);
        assert_eq!(cache.getattr(5), None);
    }

    /// A fill whose MDS read raced with an invalidation of the same key is not cached; one
    /// that raced only with unrelated keys is.
    #[test]
    fn fills_racing_an_invalidation_of_their_keys_are_refused() {
        let mut cache = single();
        let started = cache.generation();
        cache.invalidate(&InvalidationKeys { inodes: vec![5], ..Default::default() });
        assert!(!cache.fill_getattr(started, &CachedAttr { attr: attr(5, 1), home: 1 }));
        assert_eq!(cache.getattr(5), None);
        assert!(cache.fill_getattr(started, &CachedAttr { attr: attr(6, 1), home: 1 }));
        let started = cache.generation();
        cache.invalidate(&InvalidationKeys { entries: vec![(1, b"x".to_vec())], ..Default::default() });
        assert!(!cache.fill_lookup(started, 1, b"x", None));
        assert!(!cache.fill_readdir(started, page(1, 10), &[], true, &[]));
        assert!(cache.fill_readdir(started, page(2, 10), &[], true, &[]));
        // A clear voids every fill in flight.
        let started = cache.generation();
        cache.clear();
        assert!(!cache.fill_getattr(started, &CachedAttr { attr: attr(7, 1), home: 1 }));
    }

    /// When the log no longer reaches back to a fill's start, the fill is refused.
    #[test]
    fn fills_older_than_the_log_are_refused() {
        let mut cache = single();
        let started = cache.generation();
        for ino in 0..(INVALIDATION_LOG_LENGTH_MAX as u64 + 2) {
            cache.invalidate(&InvalidationKeys { inodes: vec![1000 + ino], ..Default::default() });
        }
        assert!(!cache.fill_getattr(started, &CachedAttr { attr: attr(5, 1), home: 1 }));
    }

    /// Only items whose partition key hashes to this deployment are admitted.
    #[test]
    fn admission_follows_the_partition_function() {
        let deployments = 4;
        let mine = (2..100).find(|d| deployment_of(*d, deployments) == 1).expect("a directory of deployment 1");
        let other = (2..100).find(|d| deployment_of(*d, deployments) != 1).expect("a directory elsewhere");
        let mut cache = ReplicaCache::new(1, deployments, 1000);
        let started = cache.generation();
        assert!(cache.fill_lookup(started, mine, b"f", Some(&CachedAttr { attr: attr(500, 1), home: mine })));
        assert!(cache.lookup(mine, b"f").is_some());
        assert!(!cache.fill_lookup(started, other, b"f", None));
        // An inode whose home is elsewhere (a hard link) is listed but its attributes are
        // not cached here, so the lookup stays a miss.
        assert!(cache.fill_lookup(started, mine, b"g", Some(&CachedAttr { attr: attr(501, 1), home: other })));
        assert_eq!(cache.lookup(mine, b"g"), None);
        assert!(!cache.fill_readdir(started, page(other, 5), &[], true, &[]));
    }

    /// Listing pages drop with any entry change in their directory; plus pages need every
    /// entry's attributes.
    #[test]
    fn readdir_pages_follow_entry_and_attribute_invalidations() {
        let mut cache = single();
        let entries = vec![
            pb::DirEntry { name: b"a".to_vec(), ino: 5, kind: 1, attr: Some(attr(5, 1)) },
            pb::DirEntry { name: b"b".to_vec(), ino: 6, kind: 1, attr: Some(attr(6, 2)) },
        ];
        assert!(cache.fill_readdir(cache.generation(), page(1, 10), &entries, true, &[1, 1]));
        assert_eq!(cache.readdir(1, b"", 10, true).map(|(entries, end)| (entries.len(), end)), Some((2, true)));
        cache.invalidate(&InvalidationKeys { inodes: vec![6], ..Default::default() });
        assert!(cache.readdir(1, b"", 10, true).is_none());
        assert!(cache.readdir(1, b"", 10, false).is_some());
        cache.invalidate(&InvalidationKeys { entries: vec![(1, b"c".to_vec())], ..Default::default() });
        assert!(cache.readdir(1, b"", 10, false).is_none());
    }

    /// Removed inodes take their directory's entries and pages along; subtrees and close
    /// drop everything; the cache never grows past its bound.
    #[test]
    fn removal_subtree_close_and_bound() {
        let mut cache = ReplicaCache::new(0, 1, 8);
        for ino in 10..40 {
            let started = cache.generation();
            cache.fill_lookup(
                started,
                3,
                format!("n{ino}").as_bytes(),
                Some(&CachedAttr { attr: attr(ino, 1), home: 3 }),
            );
            assert!(cache.items() <= 8, "{} items", cache.items());
        }
        let mut cache = single();
        let found = CachedAttr { attr: attr(9, 1), home: 3 };
        cache.fill_lookup(cache.generation(), 3, b"x", Some(&found));
        cache.invalidate(&InvalidationKeys { removed: vec![3], ..Default::default() });
        assert_eq!(cache.lookup(3, b"x"), None);
        cache.fill_lookup(cache.generation(), 3, b"x", Some(&found));
        cache.invalidate(&InvalidationKeys { subtrees: vec![42], ..Default::default() });
        assert_eq!(cache.items(), 0);
        cache.fill_lookup(cache.generation(), 3, b"x", Some(&found));
        cache.close();
        assert_eq!(cache.lookup(3, b"x"), None);
        assert!(!cache.fill_lookup(cache.generation(), 3, b"x", Some(&found)));
    }
}
