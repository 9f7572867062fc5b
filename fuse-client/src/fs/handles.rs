//! Open files and open directories: the handle tables behind FUSE's `fh` numbers.
//!
//! Every open handle of an inode on this mount shares one [`FileData`], so two descriptors
//! of one file see each other's writes at once; it goes when the last handle is released.
//! A directory handle keeps its listing cursor as names, not positions: FUSE gives readdir
//! an offset, and each offset we hand out stands for "after this name", so concurrent
//! creates and deletes never make a listing skip or repeat an entry that stayed.

use crate::data::FileData;
use crate::metadata::{InodeAttr, Metadata};
use crate::sync::{lock, Arc, AtomicU64, Mutex, Ordering};
use cudele_journal::{FileKind, Ino};
use cudele_namespace::{NsError, NsResult};
use std::collections::HashMap;

/// Entries fetched from the metadata service per readdir page.
pub const READDIR_PAGE_ENTRIES: usize = 512;
/// Cookies of "." and "..", and of the first real entry.
const COOKIE_DOT: u64 = 1;
const COOKIE_DOTDOT: u64 = 2;
const COOKIE_FIRST_NAME: u64 = 3;

/// One open regular file.
#[derive(Debug)]
pub struct FileHandle {
    pub ino: Ino,
    pub data: Arc<Mutex<FileData>>,
    pub readable: bool,
    pub writable: bool,
}

struct OpenInode {
    data: Arc<Mutex<FileData>>,
    handles: usize,
    /// The inode lost its last name while open here: delete its data at the last release.
    unlinked: bool,
}

/// What releasing a handle left behind.
pub struct Released {
    pub handle: Arc<FileHandle>,
    /// It was the inode's last handle on this mount.
    pub last: bool,
    pub unlinked: bool,
}

/// File handles and the per-inode data they share.
#[derive(Default)]
pub struct OpenFiles {
    inodes: Mutex<HashMap<Ino, OpenInode>>,
    handles: Mutex<HashMap<u64, Arc<FileHandle>>>,
    next_handle: AtomicU64,
}

impl OpenFiles {
    /// A new handle on the file `attr` describes.
    pub fn open(&self, attr: &InodeAttr, readable: bool, writable: bool) -> u64 {
        let ino = attr.attr.ino;
        let (data, existed) = {
            let mut inodes = lock(&self.inodes);
            let mut existed = true;
            let open = inodes.entry(ino).or_insert_with(|| {
                existed = false;
                OpenInode { data: Arc::new(Mutex::new(FileData::new(attr))), handles: 0, unlinked: false }
            });
            open.handles += 1;
            (open.data.clone(), existed)
        };
        if existed {
            // Close-to-open: this open saw fresh attributes.
            lock(&data).refresh(attr);
        }
        let handle = Arc::new(FileHandle { ino, data, readable, writable });
        let number = self.next_handle.fetch_add(1, Ordering::Relaxed) + 1;
        lock(&self.handles).insert(number, handle);
        number
    }

    pub fn get(&self, number: u64) -> NsResult<Arc<FileHandle>> {
        // The kernel only sends handles we gave it; anything else is a bug (EBADF-like).
        lock(&self.handles).get(&number).cloned().ok_or(NsError::InvalidArgument("unknown file handle"))
    }

    /// The shared data of `ino`, if it is open on this mount.
    pub fn data_of(&self, ino: Ino) -> Option<Arc<Mutex<FileData>>> {
        lock(&self.inodes).get(&ino).map(|open| open.data.clone())
    }

    /// Every open inode's data (to flush at unmount).
    pub fn all_data(&self) -> Vec<Arc<Mutex<FileData>>> {
        lock(&self.inodes).values().map(|open| open.data.clone()).collect()
    }

    /// Remember that `ino` lost its last name; true if it is open here.
    pub fn mark_unlinked(&self, ino: Ino) -> bool {
        match lock(&self.inodes).get_mut(&ino) {
            Some(open) => {
                open.unlinked = true;
                true
            }
            None => false,
        }
    }

    pub fn release(&self, number: u64) -> NsResult<Released> {
        let handle = lock(&self.handles).remove(&number).ok_or(NsError::InvalidArgument("unknown file handle"))?;
        let mut inodes = lock(&self.inodes);
        let (last, unlinked) = match inodes.get_mut(&handle.ino) {
            Some(open) => {
                open.handles -= 1;
                (open.handles == 0, open.unlinked)
            }
            None => (true, false),
        };
        if last {
            inodes.remove(&handle.ino);
        }
        Ok(Released { handle, last, unlinked })
    }
}

/// One directory entry as readdir hands it to the adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirListing {
    /// The offset the kernel passes back to continue after this entry.
    pub cookie: u64,
    pub ino: Ino,
    pub kind: FileKind,
    pub name: Vec<u8>,
    pub attr: Option<InodeAttr>,
}

/// One open directory stream.
struct DirHandle {
    ino: Ino,
    /// Cookie `COOKIE_FIRST_NAME + i` stands for "after `names[i]`".
    names: Vec<Vec<u8>>,
    cookies: HashMap<Vec<u8>, u64>,
    /// The last page fetched, and the cookie it follows (0: the start).
    page: Vec<DirListing>,
    page_follows: u64,
    page_end: bool,
}

impl DirHandle {
    fn cookie_for(&mut self, name: &[u8]) -> u64 {
        if let Some(cookie) = self.cookies.get(name) {
            return *cookie;
        }
        let cookie = COOKIE_FIRST_NAME + self.names.len() as u64;
        self.names.push(name.to_vec());
        self.cookies.insert(name.to_vec(), cookie);
        cookie
    }

    /// Entries after `offset` (".", ".." first when starting over).
    fn read<M: Metadata + ?Sized>(&mut self, metadata: &M, offset: u64) -> NsResult<Vec<DirListing>> {
        let mut out = Vec::new();
        if offset == 0 {
            // The parent's number is not part of our attributes; tools resolve ".." by
            // lookup, so its d_ino here is the directory's own (as some FUSE filesystems do).
            for (cookie, name) in [(COOKIE_DOT, &b"."[..]), (COOKIE_DOTDOT, &b".."[..])] {
                out.push(DirListing {
                    cookie,
                    ino: self.ino,
                    kind: FileKind::Directory,
                    name: name.to_vec(),
                    attr: None,
                });
            }
            self.page.clear();
            self.page_follows = u64::MAX;
        }
        let after = if offset <= COOKIE_DOTDOT { 0 } else { offset };
        let served_from = if self.page_follows == after {
            Some(0)
        } else {
            self.page.iter().position(|entry| entry.cookie == after).map(|position| position + 1)
        };
        match served_from {
            Some(start) if start < self.page.len() => {
                out.extend_from_slice(&self.page[start..]);
                return Ok(out);
            }
            Some(_) if self.page_end => return Ok(out),
            _ => {}
        }
        let after_name = match after {
            0 => None,
            cookie => match self.names.get((cookie - COOKIE_FIRST_NAME) as usize) {
                Some(name) => Some(name.clone()),
                // Not a cookie we handed out (a bogus seekdir): the stream is at its end.
                None => return Ok(out),
            },
        };
        let page = metadata.readdir(self.ino, after_name.as_deref(), READDIR_PAGE_ENTRIES, true)?;
        let mut listings = Vec::with_capacity(page.entries.len());
        for (entry, attr) in page.entries {
            let cookie = self.cookie_for(&entry.name);
            listings.push(DirListing { cookie, ino: entry.ino, kind: entry.kind, name: entry.name, attr });
        }
        self.page = listings;
        self.page_follows = after;
        self.page_end = page.end;
        out.extend_from_slice(&self.page);
        Ok(out)
    }
}

/// Open directory streams.
#[derive(Default)]
pub struct OpenDirectories {
    handles: Mutex<HashMap<u64, Arc<Mutex<DirHandle>>>>,
    next_handle: AtomicU64,
}

impl OpenDirectories {
    pub fn open(&self, ino: Ino) -> u64 {
        let handle = DirHandle {
            ino,
            names: Vec::new(),
            cookies: HashMap::new(),
            page: Vec::new(),
            page_follows: u64::MAX,
            page_end: false,
        };
        let number = self.next_handle.fetch_add(1, Ordering::Relaxed) + 1;
        lock(&self.handles).insert(number, Arc::new(Mutex::new(handle)));
        number
    }

    /// Entries after `offset`; empty at the end of the directory.
    pub fn read<M: Metadata + ?Sized>(&self, number: u64, metadata: &M, offset: u64) -> NsResult<Vec<DirListing>> {
        let handle =
            lock(&self.handles).get(&number).cloned().ok_or(NsError::InvalidArgument("unknown directory handle"))?;
        let mut handle = lock(&handle);
        handle.read(metadata, offset)
    }

    pub fn release(&self, number: u64) {
        lock(&self.handles).remove(&number);
    }
}
