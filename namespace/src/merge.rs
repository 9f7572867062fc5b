//! Merging a decoupled subtree's client journal into the authoritative namespace.
//!
//! A merge replays the client's events in order. Other clients may have changed the subtree
//! meanwhile (`interfere_policy: allow`); the decoupled client's updates win, by these rules:
//!
//! - a create, mkdir, symlink or link whose name is taken replaces what is there (a directory
//!   is removed with everything under it);
//! - an unlink or rmdir removes whatever the name now holds (recursively for a directory);
//!   if the name is gone already, nothing happens;
//! - a rename whose target is taken replaces it (as above); a rename whose source is gone is
//!   skipped;
//! - attribute and xattr changes to an inode that is gone are skipped; XATTR_CREATE and
//!   XATTR_REPLACE become plain sets;
//! - an event whose parent directory is gone (removed by another client) is skipped;
//! - an event naming anything outside the subtree, or a kind a client journal may not hold
//!   (decouple, sessions, allocation), is skipped.
//!
//! Every event the merge applies is an ordinary event, journaled in one segment together with
//! the `Merged` marker, so the merge is durable whole or not at all and replays exactly.

use crate::error::NsResult;
use crate::namespace::{Namespace, Touched};
use cudele_journal::{Event, Ino, RenameMode, XattrMode};

/// What merging one client-journal event did.
pub enum MergeStep {
    /// These events were applied (removals of conflicting entries first, then the event).
    Applied(Vec<(Event, Touched)>),
    /// The event was skipped, for this reason.
    Skipped(&'static str),
}

impl Namespace {
    /// Merge one event of the client journal for the decoupled subtree at `subtree`.
    pub fn merge_event(&mut self, subtree: Ino, event: &Event) -> MergeStep {
        let plan = match self.plan_merge(subtree, event) {
            Ok(plan) => plan,
            Err(reason) => return MergeStep::Skipped(reason),
        };
        let mut applied = Vec::with_capacity(plan.len());
        for planned in plan {
            match self.apply(&planned) {
                Ok(touched) => applied.push((planned, touched)),
                // Each planned event was checked against the state it applies to; if one
                // still fails, keep what applied (each event is atomic) and say so.
                Err(_) if applied.is_empty() => return MergeStep::Skipped("conflicts with the current namespace"),
                Err(_) => break,
            }
        }
        MergeStep::Applied(applied)
    }

    fn inside(&self, subtree: Ino, directory: Ino) -> bool {
        self.record(directory).is_ok_and(|record| record.is_directory()) && self.is_ancestor_of(subtree, directory)
    }

    /// Whether `ino` exists inside the subtree at `subtree` (a directory in it, or a file
    /// whose parent is).
    pub fn inode_inside(&self, subtree: Ino, ino: Ino) -> bool {
        match self.record(ino) {
            Ok(record) if record.is_directory() => self.is_ancestor_of(subtree, ino),
            Ok(record) => self.is_ancestor_of(subtree, record.parent),
            Err(_) => false,
        }
    }

    /// The events that carry out `event` under decoupled-wins, or why it is skipped.
    fn plan_merge(&self, subtree: Ino, event: &Event) -> Result<Vec<Event>, &'static str> {
        const GONE_PARENT: &str = "its directory was removed by another client";
        const OUTSIDE: &str = "it names something outside the decoupled subtree";
        let mut plan = Vec::new();
        match event {
            Event::Create { parent, name, ino, time, .. }
            | Event::Mkdir { parent, name, ino, time, .. }
            | Event::Symlink { parent, name, ino, time, .. } => {
                if self.record(*ino).is_ok() {
                    return Err("its inode number is already in use");
                }
                self.plan_parent(subtree, *parent, GONE_PARENT, OUTSIDE)?;
                self.plan_removal(*parent, name, *time, &mut plan);
                plan.push(event.clone());
            }
            Event::Link { ino, parent, name, time } => {
                if !self.inode_inside(subtree, *ino) {
                    return Err("the linked inode is gone or outside the subtree");
                }
                self.plan_parent(subtree, *parent, GONE_PARENT, OUTSIDE)?;
                if self.child_of(*parent, name) == Some(*ino) {
                    return Err("the link exists already");
                }
                self.plan_removal(*parent, name, *time, &mut plan);
                plan.push(event.clone());
            }
            Event::Unlink { parent, name, time } | Event::Rmdir { parent, name, time } => {
                self.plan_parent(subtree, *parent, GONE_PARENT, OUTSIDE)?;
                if self.child_of(*parent, name).is_none() {
                    return Err("the name is gone already");
                }
                self.plan_removal(*parent, name, *time, &mut plan);
            }
            Event::Rename { source_parent, source_name, target_parent, target_name, mode, time } => {
                self.plan_parent(subtree, *source_parent, GONE_PARENT, OUTSIDE)?;
                self.plan_parent(subtree, *target_parent, GONE_PARENT, OUTSIDE)?;
                let source = self.child_of(*source_parent, source_name).ok_or("the source is gone")?;
                if *mode == RenameMode::Exchange {
                    if self.child_of(*target_parent, target_name).is_none() {
                        return Err("the exchange target is gone");
                    }
                    plan.push(event.clone());
                } else {
                    if self.record(source).is_ok_and(|record| record.is_directory())
                        && self.is_ancestor_of(source, *target_parent)
                    {
                        return Err("the directory would move into its own subtree");
                    }
                    if self.child_of(*target_parent, target_name) != Some(source) {
                        self.plan_removal(*target_parent, target_name, *time, &mut plan);
                    }
                    plan.push(Event::Rename {
                        source_parent: *source_parent,
                        source_name: source_name.clone(),
                        target_parent: *target_parent,
                        target_name: target_name.clone(),
                        mode: RenameMode::Replace,
                        time: *time,
                    });
                }
            }
            Event::SetAttr { ino, .. } | Event::RemoveXattr { ino, .. } | Event::SetLayout { ino, .. } => {
                if !self.inode_inside(subtree, *ino) {
                    return Err("the inode is gone or outside the subtree");
                }
                if let Event::RemoveXattr { name, .. } = event {
                    if self.getxattr(*ino, name, 0).is_err() {
                        return Err("the xattr is gone already");
                    }
                }
                plan.push(event.clone());
            }
            Event::SetXattr { ino, name, value, mode: _, time } => {
                if !self.inode_inside(subtree, *ino) {
                    return Err("the inode is gone or outside the subtree");
                }
                plan.push(Event::SetXattr {
                    ino: *ino,
                    name: name.clone(),
                    value: value.clone(),
                    mode: XattrMode::Upsert,
                    time: *time,
                });
            }
            Event::Decouple { .. }
            | Event::Recouple { .. }
            | Event::SetPolicy { .. }
            | Event::AllocateInodes { .. }
            | Event::SessionOpen { .. }
            | Event::SessionOpenVerified { .. }
            | Event::SessionClose { .. }
            | Event::Merged { .. } => return Err("a client journal may not hold this kind of event"),
        }
        Ok(plan)
    }

    fn plan_parent(
        &self,
        subtree: Ino,
        parent: Ino,
        gone: &'static str,
        outside: &'static str,
    ) -> Result<(), &'static str> {
        if self.record(parent).is_err() {
            return Err(gone);
        }
        if !self.inside(subtree, parent) {
            return Err(outside);
        }
        Ok(())
    }

    /// Events removing whatever `parent/name` holds, depth first for a directory.
    fn plan_removal(&self, parent: Ino, name: &[u8], time: cudele_journal::Timestamp, plan: &mut Vec<Event>) {
        let Some(ino) = self.child_of(parent, name) else { return };
        let is_directory = self.record(ino).is_ok_and(|record| record.is_directory());
        if !is_directory {
            plan.push(Event::Unlink { parent, name: name.to_vec(), time });
            return;
        }
        // Explicit stack instead of recursion: directory depth is bounded only by the client.
        let mut stack: Vec<(Ino, Vec<u8>, Ino, bool)> = vec![(parent, name.to_vec(), ino, false)];
        while let Some((directory_parent, directory_name, directory, expanded)) = stack.pop() {
            if expanded {
                plan.push(Event::Rmdir { parent: directory_parent, name: directory_name, time });
                continue;
            }
            stack.push((directory_parent, directory_name, directory, true));
            for entry in self.readdir(directory, None, usize::MAX).unwrap_or_default() {
                if entry.kind == cudele_journal::FileKind::Directory {
                    stack.push((directory, entry.name, entry.ino, false));
                } else {
                    plan.push(Event::Unlink { parent: directory, name: entry.name, time });
                }
            }
        }
    }

    /// Check a whole client journal's worth of merging is allowed: the subtree is decoupled by
    /// `owner`. Returns the position merged so far.
    pub fn merge_position(&self, subtree: Ino, owner: cudele_journal::SessionId) -> NsResult<u64> {
        let decoupling = self
            .record(subtree)?
            .decoupling
            .as_ref()
            .ok_or(crate::NsError::InvalidArgument("the directory is not decoupled"))?;
        if decoupling.owner != owner {
            return Err(crate::NsError::Busy("the subtree is decoupled by another client"));
        }
        Ok(decoupling.merged_seq)
    }
}
