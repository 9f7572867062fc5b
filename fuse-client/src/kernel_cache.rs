//! The kernel's entry and attribute caches: when the kernel may keep what we answered, and
//! how we take it back.
//!
//! The kernel caches a name -> inode mapping for the entry TTL and an inode's attributes
//! for the attribute TTL of a reply, and asks us nothing meanwhile: warm `stat`s never
//! leave the kernel. The TTLs are long ([`KERNEL_CACHE_TTL`]) when the metadata behind the
//! mount tells us about every change the kernel did not make itself
//! ([`Metadata::attach_kernel_cache`]): the MDS pushes an invalidation for each write and
//! acknowledges the write only after we dropped what it touched — from our cache and from
//! the kernel's. TTLs are zero while that push channel is down.
//!
//! Invalidating must never wait for a kernel lock. We acknowledge the MDS only after the
//! kernel dropped its copy, and a request in flight on this mount may hold a directory's
//! lock while it waits for the MDS, which waits for another mount's acknowledgement — so
//! `FUSE_NOTIFY_INVAL_ENTRY`, which takes the parent directory's inode lock, can deadlock
//! two mounts that write in one directory. We use notifications that take no inode lock:
//! - attributes: `FUSE_NOTIFY_INVAL_INODE` with offset -1 (attributes only), per inode;
//! - entries: `FUSE_NOTIFY_INC_EPOCH` (Linux 6.16, FUSE 7.44): one atomic increment after
//!   which every dentry cached before fails revalidation and is looked up again (from our
//!   cache, usually). Coarse, but lock-free. Older kernels get entry TTL 0.
//!
//! Replies in flight across an invalidation are the kernel's business for lookup and
//! getattr: both record the epoch and attribute version before asking us and discard what
//! they learn if either moved meanwhile. Replies that do not (readdirplus entries,
//! create-like replies, setattr) are given TTL 0, so the kernel asks again next time.

use crate::metadata::KernelCache;
use crate::sync::{lock, AtomicBool, Mutex, Ordering};
use cudele_journal::Ino;
use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

/// How long the kernel may keep entries and attributes when invalidations reach it.
pub const KERNEL_CACHE_TTL: Duration = Duration::from_secs(60);
/// The FUSE protocol minor version that added FUSE_NOTIFY_INC_EPOCH.
pub const EPOCH_PROTOCOL_MINOR: u32 = 44;
/// `enum fuse_notify_code` in <linux/fuse.h>.
const FUSE_NOTIFY_INC_EPOCH: i32 = 8;
const ROOT_INO: Ino = 1;

/// What the kernel holds, shared by the FUSE adapter (which answers and counts) and the
/// notifier (which invalidates).
#[derive(Default)]
pub struct KernelState {
    /// Invalidations reach the kernel (a notifier is attached and the metadata pushes).
    attached: AtomicBool,
    /// The kernel understands FUSE_NOTIFY_INC_EPOCH (learnt at INIT).
    epoch_supported: AtomicBool,
    /// Inode -> lookups the kernel holds (it forgets them with FORGET): the inodes whose
    /// attributes it may cache, all of which `invalidate_all` must reach.
    lookups: Mutex<HashMap<Ino, u64>>,
}

/// The TTLs of one reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ttls {
    pub entry: Duration,
    pub attr: Duration,
}

impl Ttls {
    pub const NONE: Ttls = Ttls { entry: Duration::ZERO, attr: Duration::ZERO };
}

impl KernelState {
    pub fn new() -> Self {
        Self::default()
    }

    /// At INIT: whether the kernel speaks a protocol with FUSE_NOTIFY_INC_EPOCH.
    pub fn set_protocol_minor(&self, minor: u32) {
        self.epoch_supported.store(minor >= EPOCH_PROTOCOL_MINOR, Ordering::Release);
    }

    pub fn set_attached(&self, attached: bool) {
        self.attached.store(attached, Ordering::Release);
    }

    /// TTLs for a lookup or getattr reply, given whether the metadata can invalidate now.
    pub fn ttls(&self, metadata_may_cache: bool) -> Ttls {
        if !(metadata_may_cache && self.attached.load(Ordering::Acquire)) {
            return Ttls::NONE;
        }
        let entry = if self.epoch_supported.load(Ordering::Acquire) { KERNEL_CACHE_TTL } else { Duration::ZERO };
        Ttls { entry, attr: KERNEL_CACHE_TTL }
    }

    /// The kernel now holds one more lookup of `ino` (call before replying with an entry).
    pub fn looked_up(&self, ino: Ino) {
        *lock(&self.lookups).entry(ino).or_default() += 1;
    }

    /// FORGET: the kernel dropped `count` lookups of `ino`.
    pub fn forget(&self, ino: Ino, count: u64) {
        let mut lookups = lock(&self.lookups);
        if let Some(held) = lookups.get_mut(&ino) {
            *held = held.saturating_sub(count);
            if *held == 0 {
                lookups.remove(&ino);
            }
        }
    }

    /// Inodes the kernel may hold attributes of.
    fn known_inodes(&self) -> Vec<Ino> {
        let mut inodes: Vec<Ino> = lock(&self.lookups).keys().copied().collect();
        inodes.push(ROOT_INO);
        inodes
    }

    /// Lookups held (for tests and status).
    pub fn known_inode_count(&self) -> usize {
        lock(&self.lookups).len()
    }
}

/// Sends invalidations to the kernel through the mount's /dev/fuse.
pub struct KernelNotifier {
    notifier: fuser::Notifier,
    /// A duplicate of the session's /dev/fuse descriptor, for the notification fuser has
    /// no method for (INC_EPOCH).
    device: OwnedFd,
    state: std::sync::Arc<KernelState>,
}

impl KernelNotifier {
    pub fn new(notifier: fuser::Notifier, device: OwnedFd, state: std::sync::Arc<KernelState>) -> Self {
        KernelNotifier { notifier, device, state }
    }

    fn invalidate_attrs(&self, ino: Ino) {
        // ENOENT (the kernel holds no such inode) is swallowed by fuser.
        if let Err(error) = self.notifier.inval_inode(fuser::INodeNo(ino), -1, 0) {
            tracing::debug!(ino, %error, "attribute invalidation refused by the kernel");
        }
    }

    fn invalidate_entries(&self) {
        if !self.state.epoch_supported.load(Ordering::Acquire) {
            return; // entries were never cached (TTL 0)
        }
        if let Err(error) = inc_epoch(&self.device) {
            // Then dentries cached so far could outlive a change: stop caching them.
            tracing::warn!(%error, "FUSE_NOTIFY_INC_EPOCH refused; caching no more entries");
            self.state.epoch_supported.store(false, Ordering::Release);
        }
    }
}

impl KernelCache for KernelNotifier {
    fn invalidate(&self, inodes: &[Ino], entries: &[(Ino, Vec<u8>)]) {
        for ino in inodes {
            self.invalidate_attrs(*ino);
        }
        if !entries.is_empty() {
            self.invalidate_entries();
        }
    }

    fn invalidate_all(&self) {
        self.invalidate_entries();
        for ino in self.state.known_inodes() {
            self.invalidate_attrs(ino);
        }
    }
}

/// Write a FUSE_NOTIFY_INC_EPOCH notification (a bare `fuse_out_header`: length, notify
/// code in the error field, unique 0) to the FUSE device.
fn inc_epoch(device: &impl AsFd) -> std::io::Result<()> {
    const HEADER_BYTES: u32 = 16;
    let mut header = [0u8; HEADER_BYTES as usize];
    header[0..4].copy_from_slice(&HEADER_BYTES.to_ne_bytes());
    header[4..8].copy_from_slice(&FUSE_NOTIFY_INC_EPOCH.to_ne_bytes());
    let written = nix::unistd::write(device, &header).map_err(std::io::Error::from)?;
    if written != header.len() {
        return Err(std::io::Error::other("short write of a FUSE notification"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_need_an_attached_notifier_and_a_live_channel() {
        let state = KernelState::new();
        state.set_protocol_minor(45);
        assert_eq!(state.ttls(true), Ttls::NONE, "nothing attached yet");
        state.set_attached(true);
        assert_eq!(state.ttls(true), Ttls { entry: KERNEL_CACHE_TTL, attr: KERNEL_CACHE_TTL });
        assert_eq!(state.ttls(false), Ttls::NONE, "push channel down");
        state.set_protocol_minor(43);
        assert_eq!(state.ttls(true), Ttls { entry: Duration::ZERO, attr: KERNEL_CACHE_TTL }, "no epoch: no entries");
    }

    #[test]
    fn lookups_are_counted_until_forgotten() {
        let state = KernelState::new();
        state.looked_up(7);
        state.looked_up(7);
        state.looked_up(9);
        state.forget(7, 1);
        assert_eq!(state.known_inode_count(), 2);
        state.forget(7, 1);
        state.forget(9, 5);
        state.forget(42, 1);
        assert_eq!(state.known_inode_count(), 0);
        assert_eq!(state.known_inodes(), vec![ROOT_INO]);
    }
}
