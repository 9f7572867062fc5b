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
//! Replies in flight across an invalidation. Dentries are safe: lookup and the create-like
//! requests record the epoch before asking us, so a dentry they install after an epoch bump
//! is already stale. Attributes of an inode the kernel holds are safe for lookup and
//! getattr (they record the attribute version first and discard what they learn if an
//! invalidation moved it). Two holes remain, and we close them here:
//! - an invalidation of an inode the kernel does not hold *yet*: the notification finds
//!   nothing (ENOENT), then our reply in flight installs the old attributes. So the adapter
//!   counts the lookup it hands out *before* replying, and an invalidation of an inode we
//!   handed out but the kernel has not installed is retried until the kernel has it (or
//!   forgot it, or [`INSTALL_WAIT`] passed since the reply left: an inode handed out earlier
//!   and missing now was evicted, or the mount is gone), then sent once more after
//!   [`INSTALL_SETTLE`], because create-like replies
//!   set the attributes just after the inode becomes visible, without a version check;
//! - an invalidation that lands while a create-like reply (which the kernel does not
//!   version-check) is being computed: the adapter compares the invalidation count from
//!   before its request with the one when it hands out the lookup, and replies with TTL 0
//!   if anything was invalidated meanwhile ([`KernelState::looked_up`]).
//!
//! Readdirplus entries and setattr replies still get TTL 0; so does link (it updates an
//! inode the kernel may hold, without a version check).

use crate::metadata::KernelCache;
use crate::sync::{lock, AtomicBool, Mutex, Ordering};
use cudele_journal::Ino;
use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

/// How long the kernel may keep entries and attributes when invalidations reach it.
pub const KERNEL_CACHE_TTL: Duration = Duration::from_secs(60);
/// The FUSE protocol minor version that added FUSE_NOTIFY_INC_EPOCH.
pub const EPOCH_PROTOCOL_MINOR: u32 = 44;
/// How long an invalidation waits for the kernel to install an inode we handed out (its
/// reply is in flight); past it the invalidation gives up with a warning.
pub const INSTALL_WAIT: Duration = Duration::from_secs(1);
/// Pause between attempts while waiting for that install.
pub const INSTALL_POLL: Duration = Duration::from_micros(100);
/// After the kernel installed such an inode, the pause before invalidating it once more
/// (the reply's attributes are set just after the inode becomes visible).
pub const INSTALL_SETTLE: Duration = Duration::from_millis(1);
/// `enum fuse_notify_code` in <linux/fuse.h>.
const FUSE_NOTIFY_INVAL_INODE: i32 = 2;
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
    held: Mutex<Held>,
}

#[derive(Clone, Copy)]
struct Lookups {
    count: u64,
    /// When we last handed one out: only a reply that recent can still be on its way.
    last: Instant,
}

#[derive(Default)]
struct Held {
    /// Inode -> lookups the kernel holds (it forgets them with FORGET): the inodes whose
    /// attributes it may cache, all of which `invalidate_all` must reach.
    lookups: HashMap<Ino, Lookups>,
    /// Invalidations sent to the kernel so far (under the same lock as `lookups`, which is
    /// what makes [`KernelState::looked_up`] and [`KernelState::begin_invalidation`] agree).
    invalidations: u64,
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

    /// Invalidations sent to the kernel so far: read before a request whose reply hands
    /// out an inode, and pass it to [`KernelState::looked_up`].
    pub fn invalidation_count(&self) -> u64 {
        lock(&self.held).invalidations
    }

    /// The kernel now holds one more lookup of `ino` (call before replying with an entry).
    /// True if no invalidation reached the kernel since `since` (an
    /// [`KernelState::invalidation_count`] from before the request), i.e. the reply may
    /// carry long TTLs even where the kernel does not version-check it.
    pub fn looked_up(&self, ino: Ino, since: u64) -> bool {
        let mut held = lock(&self.held);
        let now = Instant::now();
        let lookups = held.lookups.entry(ino).or_insert(Lookups { count: 0, last: now });
        lookups.count += 1;
        lookups.last = now;
        held.invalidations == since
    }

    /// FORGET: the kernel dropped `count` lookups of `ino`.
    pub fn forget(&self, ino: Ino, count: u64) {
        let mut held = lock(&self.held);
        if let Some(lookups) = held.lookups.get_mut(&ino) {
            lookups.count = lookups.count.saturating_sub(count);
            if lookups.count == 0 {
                held.lookups.remove(&ino);
            }
        }
    }

    /// Count an invalidation of `inodes` and say, per inode, until when a notification that
    /// finds nothing must wait for the install: None unless we handed the kernel a lookup of
    /// it within [`INSTALL_WAIT`] (an older reply has arrived; an inode the kernel lacks now
    /// was evicted, or the mount is gone).
    fn begin_invalidation(&self, inodes: &[Ino]) -> Vec<Option<Instant>> {
        let mut held = lock(&self.held);
        held.invalidations += 1;
        let now = Instant::now();
        inodes
            .iter()
            .map(|ino| {
                let deadline = held.lookups.get(ino)?.last + INSTALL_WAIT;
                (deadline > now).then_some(deadline)
            })
            .collect()
    }

    fn holds(&self, ino: Ino) -> bool {
        lock(&self.held).lookups.contains_key(&ino)
    }

    /// Inodes the kernel may hold attributes of.
    fn known_inodes(&self) -> Vec<Ino> {
        let mut inodes: Vec<Ino> = lock(&self.held).lookups.keys().copied().collect();
        inodes.push(ROOT_INO);
        inodes
    }

    /// Lookups held (for tests and status).
    pub fn known_inode_count(&self) -> usize {
        lock(&self.held).lookups.len()
    }
}

/// Sends invalidations to the kernel through the mount's /dev/fuse.
pub struct KernelNotifier {
    /// A duplicate of the session's /dev/fuse descriptor. We write notifications ourselves:
    /// fuser has no INC_EPOCH and hides INVAL_INODE's ENOENT.
    device: OwnedFd,
    state: std::sync::Arc<KernelState>,
}

impl KernelNotifier {
    pub fn new(device: OwnedFd, state: std::sync::Arc<KernelState>) -> Self {
        KernelNotifier { device, state }
    }

    /// Drop the kernel's attributes of `ino`. If we handed the kernel a lookup of it lately
    /// (`wait_until` is Some) but it holds no such inode, our reply may still be on its way:
    /// wait for the install until then (see the module documentation). Only a reply in flight
    /// at that very moment makes anyone wait, and never past [`INSTALL_WAIT`] after it left.
    fn invalidate_attrs(&self, ino: Ino, wait_until: Option<Instant>) {
        let mut waited = false;
        loop {
            match inval_inode(&self.device, ino) {
                Ok(()) => {
                    if waited {
                        std::thread::sleep(INSTALL_SETTLE);
                        let _ = inval_inode(&self.device, ino);
                    }
                    return;
                }
                Err(error) if error.raw_os_error() == Some(libc::ENOENT) => {
                    let Some(deadline) = wait_until else { return }; // no copy, none on its way
                    if !self.state.holds(ino) {
                        return; // the kernel forgot it
                    }
                    if Instant::now() >= deadline {
                        tracing::warn!(ino, "the kernel did not install an inode we replied with; not waiting longer");
                        return;
                    }
                    waited = true;
                    std::thread::sleep(INSTALL_POLL);
                }
                Err(error) => {
                    tracing::debug!(ino, %error, "attribute invalidation refused by the kernel");
                    return;
                }
            }
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
        let wait_until = self.state.begin_invalidation(inodes);
        for (ino, wait_until) in inodes.iter().zip(wait_until) {
            self.invalidate_attrs(*ino, wait_until);
        }
        if !entries.is_empty() {
            self.invalidate_entries();
        }
    }

    fn invalidate_all(&self) {
        self.invalidate_entries();
        let inodes = self.state.known_inodes();
        let wait_until = self.state.begin_invalidation(&inodes);
        for (ino, wait_until) in inodes.into_iter().zip(wait_until) {
            self.invalidate_attrs(ino, wait_until);
        }
    }
}

/// Write a FUSE_NOTIFY_INC_EPOCH notification (a bare `fuse_out_header`) to the device.
fn inc_epoch(device: &impl AsFd) -> std::io::Result<()> {
    notify(device, FUSE_NOTIFY_INC_EPOCH, &[])
}

/// FUSE_NOTIFY_INVAL_INODE for attributes only (offset -1). Unlike fuser's, this reports
/// ENOENT (the kernel holds no such inode), which [`KernelNotifier::invalidate_attrs`] needs.
fn inval_inode(device: &impl AsFd, ino: Ino) -> std::io::Result<()> {
    // struct fuse_notify_inval_inode_out { u64 ino; s64 off; s64 len; }
    let mut body = [0u8; 24];
    body[0..8].copy_from_slice(&ino.to_ne_bytes());
    body[8..16].copy_from_slice(&(-1i64).to_ne_bytes());
    notify(device, FUSE_NOTIFY_INVAL_INODE, &body)
}

/// One notification: a `fuse_out_header` (length, the notify code in the error field,
/// unique 0) and its body, in one write.
fn notify(device: &impl AsFd, code: i32, body: &[u8]) -> std::io::Result<()> {
    const HEADER_BYTES: usize = 16;
    let mut message = vec![0u8; HEADER_BYTES + body.len()];
    let length = u32::try_from(message.len()).map_err(|_| std::io::Error::other("notification too large"))?;
    message[0..4].copy_from_slice(&length.to_ne_bytes());
    message[4..8].copy_from_slice(&code.to_ne_bytes());
    message[HEADER_BYTES..].copy_from_slice(body);
    let written = nix::unistd::write(device, &message).map_err(std::io::Error::from)?;
    if written != message.len() {
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
        state.looked_up(7, 0);
        state.looked_up(7, 0);
        state.looked_up(9, 0);
        state.forget(7, 1);
        assert_eq!(state.known_inode_count(), 2);
        state.forget(7, 1);
        state.forget(9, 5);
        state.forget(42, 1);
        assert_eq!(state.known_inode_count(), 0);
        assert_eq!(state.known_inodes(), vec![ROOT_INO]);
    }

    #[test]
    fn a_reply_computed_across_an_invalidation_may_not_be_cached() {
        let state = KernelState::new();
        let before = state.invalidation_count();
        assert!(state.looked_up(7, before), "nothing invalidated meanwhile");
        let before = state.invalidation_count();
        let waits = state.begin_invalidation(&[7, 8]);
        assert!(waits[0].is_some() && waits[1].is_none(), "7 was just handed out, 8 never: {waits:?}");
        assert!(!state.looked_up(8, before), "an invalidation landed while the reply was computed");
        assert!(state.holds(8));
        state.forget(8, 1);
        assert!(!state.holds(8));
    }
}
