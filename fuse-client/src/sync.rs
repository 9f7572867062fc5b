//! Locks and atomics used by the client, in one place, so that a concurrency checker
//! (shuttle or loom) can be swapped in for the caches and handle tables later.
//!
//! A poisoned lock means another thread panicked while holding it; the data it guards are
//! caches and handle tables whose every update is a single assignment, so the state is
//! still consistent and we keep serving rather than cascade the panic.

pub use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
pub use std::sync::{Arc, Mutex, MutexGuard, RwLock};

/// Lock `mutex`, recovering from poisoning (see the module documentation).
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
