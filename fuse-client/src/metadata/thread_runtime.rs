//! Per-thread runtimes for the RPCs that FUSE worker threads make.
//!
//! A FUSE handler is synchronous: it blocks its thread until the MDS answers. Run on the
//! mount's shared multi-threaded runtime, every call hops threads twice — the request to
//! a runtime worker that owns the connection, the reply back to the blocked FUSE thread —
//! and each hop is a futex wake-up, which on a small virtual machine costs more than the
//! MDS's work for a create. So each thread that blocks on calls gets its own
//! current-thread runtime and its own connection to the MDS, driven by the calling thread
//! itself while it waits: no hand-offs. Background work (the invalidation stream,
//! heartbeats, acknowledgements, uploads) stays on the shared runtime.
//!
//! Between calls nothing drives a thread's connection (so it sends no HTTP/2 pings); if the
//! MDS closed it meanwhile, the next call sees a transport error and retries like after any
//! outage (the channel reconnects by itself).

use super::rpc::{connection, lazy_channel_without_pings, Headers, MdsConnection};
use crate::sync::{lock, Arc, Mutex};
use cudele_proto::transport::ClientTls;
use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::thread::ThreadId;

/// Threads that get a runtime of their own (FUSE workers, a CLI's main thread); any further
/// thread uses the shared runtime, so a test that spawns thread after thread does not pile up
/// connections.
pub const THREAD_RUNTIMES_MAX: usize = 16;

thread_local! {
    /// While a call runs on this thread's runtime: whose it is (the owner's address) and the
    /// connection it must use.
    static ACTIVE: RefCell<Option<(usize, MdsConnection)>> = const { RefCell::new(None) };
}

/// One thread's runtime and connection.
pub struct ThreadRuntime {
    /// Always Some until dropped (dropping shuts it down in the background: a runtime must
    /// not block its dropper, which may be inside another runtime).
    runtime: Option<tokio::runtime::Runtime>,
    connection: MdsConnection,
}

impl Drop for ThreadRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl ThreadRuntime {
    /// Run `future` to completion on this runtime; calls inside it for `owner` use this
    /// runtime's connection ([`active_connection`]).
    pub fn block_on<F: Future>(&self, owner: usize, future: F) -> F::Output {
        struct Active;
        impl Drop for Active {
            fn drop(&mut self) {
                ACTIVE.with(|active| *active.borrow_mut() = None);
            }
        }
        ACTIVE.with(|active| *active.borrow_mut() = Some((owner, self.connection.clone())));
        let _active = Active;
        self.runtime.as_ref().expect("a thread runtime lives until dropped").block_on(future)
    }
}

/// The per-thread runtimes of one MDS client.
pub struct ThreadRuntimes {
    address: String,
    tls: Option<ClientTls>,
    headers: Headers,
    runtimes: Mutex<HashMap<ThreadId, Arc<ThreadRuntime>>>,
}

impl ThreadRuntimes {
    pub fn new(address: &str, tls: Option<ClientTls>, headers: Headers) -> Self {
        ThreadRuntimes { address: address.to_string(), tls, headers, runtimes: Mutex::new(HashMap::new()) }
    }

    /// The calling thread's runtime, made on first use; None when the thread is inside an
    /// async runtime already, when [`THREAD_RUNTIMES_MAX`] threads have one, or if one
    /// cannot be built (then the caller uses the shared runtime).
    pub fn current(&self) -> Option<Arc<ThreadRuntime>> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return None;
        }
        let id = std::thread::current().id();
        let mut runtimes = lock(&self.runtimes);
        if let Some(runtime) = runtimes.get(&id) {
            return Some(runtime.clone());
        }
        if runtimes.len() >= THREAD_RUNTIMES_MAX {
            return None;
        }
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime,
            Err(error) => {
                tracing::warn!(%error, "cannot build a per-thread runtime; using the shared one");
                return None;
            }
        };
        // The channel's worker is spawned on the runtime entered here.
        let channel = {
            let _entered = runtime.enter();
            lazy_channel_without_pings(&self.address, self.tls.as_ref()).ok()?
        };
        let runtime =
            Arc::new(ThreadRuntime { runtime: Some(runtime), connection: connection(channel, &self.headers) });
        runtimes.insert(id, runtime.clone());
        Some(runtime)
    }
}

/// The connection of the thread runtime running the current call for `owner`, if any.
pub fn active_connection(owner: usize) -> Option<MdsConnection> {
    ACTIVE.with(|active| match &*active.borrow() {
        Some((active_owner, connection)) if *active_owner == owner => Some(connection.clone()),
        _ => None,
    })
}
