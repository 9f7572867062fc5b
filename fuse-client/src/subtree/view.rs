//! A decoupled subtree's local view: the namespace snapshot taken at decouple time, changed
//! only by this client, at local speed. Every change is an event applied to the view and
//! appended to the client journal; inode numbers come from ranges the MDS handed out.

use super::journal::ClientJournal;
use crate::metadata::LayoutUpdate;
use cudele_journal::{
    AttrChanges, ChunkMap, Event, FileKind, Ino, InodeRange, RenameMode, Timestamp, XattrMode, ROOT_INO,
};
use cudele_namespace::store_key::decode_frames;
use cudele_namespace::{Attr, DirEntry, Namespace, NsError, NsResult};
use cudele_policy::Policy;
use std::collections::VecDeque;

pub struct DecoupledSubtree {
    /// The subtree's root directory (a real inode number).
    pub root: Ino,
    pub policy: Policy,
    view: Namespace,
    journal: ClientJournal,
    /// Inode numbers not yet used, in order.
    ranges: VecDeque<InodeRange>,
}

impl DecoupledSubtree {
    /// Materialise the subtree from the MDS's Decouple reply.
    pub fn new(
        root: Ino,
        name: &[u8],
        policy: Policy,
        range: InodeRange,
        subtree_frames: &[u8],
        merged_seq: u64,
    ) -> Result<Self, String> {
        let values = decode_frames(subtree_frames)?;
        let mut view = Namespace::from_subtree(root, name, values)?;
        view.admit_range(range);
        Ok(DecoupledSubtree {
            root,
            policy,
            view,
            journal: ClientJournal::new(merged_seq),
            ranges: VecDeque::from([range]),
        })
    }

    /// Whether `ino` is inside this subtree (its root included).
    pub fn contains(&self, ino: Ino) -> bool {
        ino != ROOT_INO && self.view.record(ino).is_ok()
    }

    pub fn journal(&self) -> &ClientJournal {
        &self.journal
    }

    pub fn journal_mut(&mut self) -> &mut ClientJournal {
        &mut self.journal
    }

    /// Inode numbers left in the ranges this client holds.
    pub fn inodes_left(&self) -> u64 {
        self.ranges.iter().map(InodeRange::len).sum()
    }

    /// Another range from the MDS, for when this one runs out.
    pub fn add_range(&mut self, range: InodeRange) {
        self.view.admit_range(range);
        self.ranges.push_back(range);
    }

    /// The next free inode number; [`Self::consume_ino`] uses it once an event applied.
    fn next_ino(&mut self) -> NsResult<Ino> {
        while let Some(range) = self.ranges.front() {
            if !range.is_empty() {
                return Ok(range.start);
            }
            self.ranges.pop_front();
        }
        Err(NsError::NoSpace("the decoupled subtree's inode range is used up"))
    }

    fn consume_ino(&mut self) {
        if let Some(range) = self.ranges.front_mut() {
            range.start += 1;
        }
    }

    /// Apply to the view, then journal: the view refuses what POSIX refuses, so the journal
    /// holds only events that applied.
    fn commit(&mut self, event: Event) -> NsResult<()> {
        cudele_namespace::validate_event(&event)?;
        self.view.apply(&event)?;
        self.journal.append(event);
        Ok(())
    }

    fn attr(&self, ino: Ino) -> NsResult<Attr> {
        Ok(self.view.getattr(ino)?.clone())
    }

    /// `(attributes, chunk size, published chunks)` as the MDS would reply.
    pub fn attr_with_layout(&self, ino: Ino) -> NsResult<(Attr, u32, ChunkMap)> {
        let record = self.view.record(ino)?;
        Ok((record.attr.clone(), record.chunk_size_bytes, record.chunks.clone()))
    }

    // ----- reads -----

    pub fn lookup(&self, parent: Ino, name: &[u8]) -> NsResult<Attr> {
        Ok(self.view.lookup(parent, name)?.clone())
    }

    pub fn getattr(&self, ino: Ino) -> NsResult<Attr> {
        self.attr(ino)
    }

    pub fn readdir(&self, ino: Ino, after: Option<&[u8]>, limit: usize) -> NsResult<Vec<DirEntry>> {
        self.view.readdir(ino, after, limit)
    }

    pub fn readlink(&self, ino: Ino) -> NsResult<Vec<u8>> {
        Ok(self.view.readlink(ino)?.to_vec())
    }

    pub fn getxattr(&self, ino: Ino, name: &[u8], size: u32) -> NsResult<Vec<u8>> {
        Ok(self.view.getxattr(ino, name, size)?.to_vec())
    }

    pub fn listxattr(&self, ino: Ino, size: u32) -> NsResult<Vec<u8>> {
        self.view.listxattr(ino, size)
    }

    // ----- changes -----

    #[allow(clippy::too_many_arguments)]
    pub fn create(
        &mut self,
        parent: Ino,
        name: &[u8],
        kind: FileKind,
        mode: u32,
        uid: u32,
        gid: u32,
        rdev: u32,
    ) -> NsResult<Attr> {
        let ino = self.next_ino()?;
        let time = Timestamp::now();
        let event = match kind {
            FileKind::Directory => Event::Mkdir { parent, name: name.to_vec(), ino, mode, uid, gid, time },
            _ => Event::Create { parent, name: name.to_vec(), ino, kind, mode, uid, gid, rdev, time },
        };
        self.commit(event)?;
        self.consume_ino();
        self.attr(ino)
    }

    pub fn symlink(&mut self, parent: Ino, name: &[u8], target: &[u8], uid: u32, gid: u32) -> NsResult<Attr> {
        let ino = self.next_ino()?;
        let event = Event::Symlink {
            parent,
            name: name.to_vec(),
            ino,
            target: target.to_vec(),
            uid,
            gid,
            time: Timestamp::now(),
        };
        self.commit(event)?;
        self.consume_ino();
        self.attr(ino)
    }

    pub fn link(&mut self, ino: Ino, parent: Ino, name: &[u8]) -> NsResult<Attr> {
        self.commit(Event::Link { ino, parent, name: name.to_vec(), time: Timestamp::now() })?;
        self.attr(ino)
    }

    pub fn unlink(&mut self, parent: Ino, name: &[u8]) -> NsResult<()> {
        self.commit(Event::Unlink { parent, name: name.to_vec(), time: Timestamp::now() })
    }

    pub fn rmdir(&mut self, parent: Ino, name: &[u8]) -> NsResult<()> {
        self.commit(Event::Rmdir { parent, name: name.to_vec(), time: Timestamp::now() })
    }

    pub fn rename(
        &mut self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        mode: RenameMode,
    ) -> NsResult<()> {
        self.commit(Event::Rename {
            source_parent: parent,
            source_name: name.to_vec(),
            target_parent: new_parent,
            target_name: new_name.to_vec(),
            mode,
            time: Timestamp::now(),
        })
    }

    pub fn setattr(&mut self, ino: Ino, changes: AttrChanges) -> NsResult<Attr> {
        self.commit(Event::SetAttr { ino, changes, time: Timestamp::now() })?;
        self.attr(ino)
    }

    pub fn setxattr(&mut self, ino: Ino, name: &[u8], value: &[u8], mode: XattrMode) -> NsResult<()> {
        self.commit(Event::SetXattr { ino, name: name.to_vec(), value: value.to_vec(), mode, time: Timestamp::now() })
    }

    pub fn removexattr(&mut self, ino: Ino, name: &[u8]) -> NsResult<()> {
        self.commit(Event::RemoveXattr { ino, name: name.to_vec(), time: Timestamp::now() })
    }

    pub fn set_layout(&mut self, ino: Ino, layout: &LayoutUpdate) -> NsResult<Attr> {
        self.commit(Event::SetLayout {
            ino,
            size: layout.size,
            chunk_size_bytes: layout.chunk_size_bytes,
            mtime: layout.mtime,
            chunks: layout.chunks.clone(),
        })?;
        self.attr(ino)
    }

    /// The view's canonical dump (tests compare it with the MDS after a merge).
    pub fn dump(&self) -> String {
        self.view.dump()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subtree() -> DecoupledSubtree {
        // The MDS side: a namespace with /ckpt (ino 2) holding one file.
        let mut mds = Namespace::new(Timestamp::default());
        let time = Timestamp { seconds: 5, nanoseconds: 0 };
        mds.apply(&Event::Mkdir { parent: 1, name: b"ckpt".to_vec(), ino: 2, mode: 0o755, uid: 0, gid: 0, time })
            .unwrap();
        mds.apply(&Event::Create {
            parent: 2,
            name: b"old".to_vec(),
            ino: 3,
            kind: FileKind::Regular,
            mode: 0o644,
            uid: 0,
            gid: 0,
            rdev: 0,
            time,
        })
        .unwrap();
        let frames = cudele_namespace::store_key::encode_frames(&mds.subtree_ops(2).unwrap());
        DecoupledSubtree::new(2, b"ckpt", Policy::default(), InodeRange { start: 100, end: 102 }, &frames, 0).unwrap()
    }

    /// The view holds the snapshot, allocates from its range, journals what applied and
    /// nothing that failed, and reports ENOSPC when the range is used up.
    #[test]
    fn local_operations_journal_and_allocate() {
        let mut subtree = subtree();
        assert!(subtree.contains(2) && subtree.contains(3) && !subtree.contains(1));
        assert_eq!(subtree.lookup(2, b"old").unwrap().ino, 3);
        let created = subtree.create(2, b"new", FileKind::Regular, 0o600, 1, 1, 0).unwrap();
        assert_eq!(created.ino, 100);
        assert_eq!(subtree.create(2, b"new", FileKind::Regular, 0o600, 1, 1, 0).unwrap_err(), NsError::Exists);
        assert_eq!(subtree.journal().unmerged_events(), 1);
        assert_eq!(subtree.inodes_left(), 1, "a failed create uses no inode number");
        subtree.create(2, b"other", FileKind::Regular, 0o600, 1, 1, 0).unwrap();
        assert!(matches!(subtree.create(2, b"more", FileKind::Regular, 0o600, 1, 1, 0), Err(NsError::NoSpace(_))));
        subtree.add_range(InodeRange { start: 200, end: 210 });
        assert_eq!(subtree.create(2, b"more", FileKind::Directory, 0o700, 1, 1, 0).unwrap().ino, 200);
        subtree.rename(2, b"old", 200, b"moved", RenameMode::Replace).unwrap();
        assert_eq!(subtree.journal().unmerged_events(), 4);
    }
}
