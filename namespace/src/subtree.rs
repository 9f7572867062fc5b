//! A decoupled subtree as a namespace of its own: the MDS extracts it (snapshot at decouple
//! time) and the decoupled client builds its local view from it.
//!
//! The local view keeps real inode numbers, so events it produces apply unchanged at the
//! MDS on merge. It hangs the subtree root under a synthetic root (inode 1) by its real name;
//! only events inside the subtree are ever applied to it.

use crate::namespace::Namespace;
use crate::store_key::{StoreOp, StoreValue};
use cudele_journal::{Ino, ROOT_INO};

impl Namespace {
    /// The store form of the subtree rooted at directory `root`: its records and entries.
    pub fn subtree_ops(&self, root: Ino) -> crate::NsResult<Vec<StoreOp>> {
        let mut touched = crate::Touched::default();
        let mut stack = vec![root];
        let mut budget = self.inode_count() as usize + 1;
        while let Some(directory) = stack.pop() {
            budget = budget.checked_sub(1).ok_or(crate::NsError::Io("cycle in the namespace".into()))?;
            touched.insert_inode(directory);
            for entry in self.readdir(directory, None, usize::MAX)? {
                touched.insert_dentry(directory, entry.name.clone());
                touched.insert_inode(entry.ino);
                if entry.kind == cudele_journal::FileKind::Directory {
                    stack.push(entry.ino);
                }
            }
        }
        Ok(self.store_ops(&touched))
    }

    /// Build a decoupled client's local view from `subtree_ops` output: the subtree root
    /// `root` appears as `name` under a synthetic root.
    pub fn from_subtree(root: Ino, name: &[u8], values: Vec<StoreValue>) -> Result<Namespace, String> {
        let mut synthetic = Namespace::new(cudele_journal::Timestamp::default()).store_ops_all();
        synthetic.retain(|op| !matches!(op, StoreOp::Put(crate::StoreKey::Allocator, _)));
        let mut all: Vec<StoreValue> = synthetic
            .into_iter()
            .filter_map(|op| match op {
                StoreOp::Put(key, value) => crate::decode_entry(&key.encode(), &value).ok(),
                StoreOp::Delete(_) => None,
            })
            .collect();
        let mut found_root = false;
        let mut highest = root;
        for value in values {
            match value {
                StoreValue::Inode(mut record) => {
                    highest = highest.max(record.attr.ino);
                    if record.attr.ino == root {
                        found_root = true;
                        record.parent = ROOT_INO;
                    }
                    all.push(StoreValue::Inode(record));
                }
                other => all.push(other),
            }
        }
        if !found_root {
            return Err(format!("the subtree snapshot does not contain its root {root}"));
        }
        all.push(StoreValue::Dentry { parent: ROOT_INO, name: name.to_vec(), ino: root });
        // Patch the synthetic root's link count and size for the one entry it holds.
        for value in all.iter_mut() {
            if let StoreValue::Inode(record) = value {
                if record.attr.ino == ROOT_INO {
                    record.attr.nlink = 3;
                    record.attr.size = 1;
                }
            }
        }
        all.push(StoreValue::Allocator(highest + 1, 1));
        Namespace::from_store_values(all)
    }
}
