//! The tokio runtime a mount owns, and the one way blocking code (FUSE worker threads,
//! command-line tools, tests) runs async work on it: [`Blocking::block_on`].
//!
//! FUSE handlers are synchronous and run on fuser's own threads; the gRPC client and the
//! object store are async. Calling `block_on` from inside a runtime would panic (or stall a
//! worker), so it refuses with an I/O error instead.

use cudele_namespace::{NsError, NsResult};
use std::future::Future;
use std::sync::Arc;

/// Worker threads of the client runtime: the machine is small and the work is mostly
/// waiting on the network, so two are plenty for gRPC, invalidations and uploads.
pub const RUNTIME_WORKER_THREADS: usize = 2;

/// A shared handle to the client's tokio runtime.
#[derive(Clone)]
pub struct Blocking {
    runtime: Arc<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for Blocking {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Blocking")
    }
}

impl Blocking {
    /// A new multi-threaded runtime whose threads are named `name`.
    pub fn new(name: &str) -> std::io::Result<Blocking> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(RUNTIME_WORKER_THREADS)
            .thread_name(name)
            .enable_all()
            .build()?;
        Ok(Blocking { runtime: Arc::new(runtime) })
    }

    /// Run `future` to completion from a thread that is not itself running async code.
    pub fn block_on<F: Future<Output = NsResult<T>>, T>(&self, future: F) -> NsResult<T> {
        if tokio::runtime::Handle::try_current().is_ok() {
            // A bug in the caller, not in the request: say so rather than panic a FUSE thread.
            return Err(NsError::Io("blocking call from inside an async runtime".to_string()));
        }
        self.runtime.block_on(future)
    }

    /// Run `future` in the background on this runtime.
    pub fn spawn<F>(&self, future: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.runtime.spawn(future)
    }

    /// A handle for code that needs to enter the runtime (e.g. to build lazy channels).
    pub fn handle(&self) -> &tokio::runtime::Handle {
        self.runtime.handle()
    }
}
