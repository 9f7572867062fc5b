//! [`RemoteMetadata`]: the gRPC client of cudele-mds, with a cache kept coherent by the
//! MDS's invalidation push channel (see `cache` for the argument).
//!
//! Life cycle: [`RemoteMetadata::connect`] opens a session and starts two background tasks
//! on the client runtime — the subscriber (Subscribe stream: drop, then AckInvalidation) and
//! the heartbeat (every lease/3). [`Metadata::close`] closes the session at unmount.
//!
//! Failures: a domain error (with errno) is returned as is. A lost session (expired, or
//! unknown after an MDS restart) is resumed or reopened, then the call is retried. Transport
//! failures (MDS down or restarting) are retried with jittered exponential backoff for at
//! most `outage_timeout`, then fail with EIO. While the push channel is down the cache is
//! off. A mutation retried after a transport failure may have been applied already; the
//! replies that betray this (EEXIST after a create, ENOENT after an unlink) are checked and
//! turned back into success (see `replayed`).

use super::cache::{CacheGeneration, CachedEntry, MetadataCache};
use super::replica_reads::{self, ReplicaMode, ReplicaReads};
use super::rpc::{classify, connection, lazy_channel, next_backoff, Failure, Headers, MdsConnection};
use super::thread_runtime::{self, ThreadRuntimes};
use super::unsafe_log::UnsafeLog;
use super::{FsStats, InodeAttr, LayoutUpdate, Metadata, Owner, Published, ReaddirPage, SetAttrChanges, TimeChange};
use crate::error::ClientError;
use crate::runtime::Blocking;
use crate::sync::{lock, Arc, AtomicBool, Mutex, Ordering};
use cudele_journal::{FileKind, Ino, RenameMode, SessionId, XattrMode};
use cudele_namespace::{DirEntry, NsError, NsResult};
use cudele_proto::auth::SessionSlot;
use cudele_proto::convert::xattr_mode_to_wire;
use cudele_proto::convert::{
    attr_from_wire, chunk_from_wire, chunk_to_wire, kind_from_wire, kind_to_wire, rename_mode_to_wire, time_to_wire,
};
use cudele_proto::pb;
use cudele_proto::transport::ClientTls;
use std::future::Future;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How long an operation keeps retrying while the MDS is unreachable before it fails with
/// EIO (long enough to ride out an MDS restart).
pub const OUTAGE_TIMEOUT_MS: u64 = 30_000;
/// Longest a single RPC may take. Writes wait for other clients' acknowledgements (the
/// MDS's ack timeout defaults to 5 s) and for durability, so leave generous room.
pub const RPC_TIMEOUT_MS: u64 = 30_000;
/// Retry backoff after a transport failure: first wait, and the cap it doubles up to.
pub const BACKOFF_INITIAL_MS: u64 = 50;
pub const BACKOFF_MAX_MS: u64 = 2_000;
/// Session reopenings one call may trigger before it gives up.
pub const SESSION_REOPENS_PER_CALL_MAX: u32 = 3;
/// How long CloseSession may take at unmount.
pub const CLOSE_TIMEOUT_MS: u64 = 2_000;
/// Heartbeat period when the MDS reports no lease (it always should).
pub const HEARTBEAT_DEFAULT_MS: u64 = 3_000;

/// How to reach the MDS.
#[derive(Debug, Clone)]
pub struct RemoteOptions {
    /// `host:port` or `http://host:port`.
    pub address: String,
    /// Shared secret (the token file's content).
    pub token: Option<String>,
    /// The CA the MDS's (and its replicas') certificates are verified with; None: plaintext.
    pub tls: Option<ClientTls>,
    /// Shown by `cudele status`.
    pub client_name: String,
    pub outage_timeout: Duration,
    pub rpc_timeout: Duration,
    /// Send cache-miss reads to the MDS's cache replicas (`replicas=` mount option).
    pub replicas: ReplicaMode,
    /// Let the MDS acknowledge creates before they are durable; we keep their records and
    /// replay them if it restarts first (CephFS's unsafe replies). Off: every reply waits.
    pub early_replies: bool,
}

impl RemoteOptions {
    pub fn new(address: impl Into<String>, token: Option<String>) -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string();
        RemoteOptions {
            address: address.into(),
            token,
            tls: None,
            client_name: format!("{host}:{}", std::process::id()),
            outage_timeout: Duration::from_millis(OUTAGE_TIMEOUT_MS),
            rpc_timeout: Duration::from_millis(RPC_TIMEOUT_MS),
            replicas: ReplicaMode::default(),
            early_replies: true,
        }
    }
}

/// What the session handed us.
#[derive(Debug, Clone)]
struct SessionInfo {
    lease: Duration,
    object_store_url: String,
}

struct Shared {
    options: RemoteOptions,
    client: MdsConnection,
    /// The session credential the interceptor sends (id 0: none).
    session: Arc<SessionSlot>,
    info: Mutex<SessionInfo>,
    cache: MetadataCache,
    /// Serialises session reopening across threads.
    reopen: tokio::sync::Mutex<()>,
    /// Creates acknowledged early, until durable (replayed after an MDS restart).
    unsafe_log: Mutex<UnsafeLog>,
    /// Serialises replays.
    replaying: tokio::sync::Mutex<()>,
    closed: AtomicBool,
}

/// A failed call, and whether it was resent after a transport failure.
struct CallError {
    error: NsError,
    resent: bool,
}

impl From<CallError> for NsError {
    fn from(error: CallError) -> Self {
        error.error
    }
}

/// The MDS client. See the module documentation.
pub struct RemoteMetadata {
    shared: Arc<Shared>,
    runtime: Blocking,
    /// Calls from blocking threads run on runtimes of their own (see `thread_runtime`).
    threads: ThreadRuntimes,
    shutdown: watch::Sender<bool>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Where cache-miss reads go first (None: `replicas=off`).
    replicas: Option<ReplicaReads>,
}

macro_rules! rpc {
    ($shared:expr, $method:ident, $request:expr) => {{
        let request = $request;
        call($shared, move |mut client: MdsConnection| {
            let request = request.clone();
            async move { client.$method(request).await }
        })
    }};
}

impl RemoteMetadata {
    /// Open a session with the MDS at `options.address` and start the push-channel and
    /// heartbeat tasks on `runtime`. Fails if the MDS cannot be reached within
    /// `options.outage_timeout` or refuses the token.
    pub fn connect(options: RemoteOptions, runtime: Blocking) -> Result<RemoteMetadata, ClientError> {
        let session = Arc::new(SessionSlot::default());
        let headers = Headers::new(options.token.as_deref(), session.clone())?.with_early_reply(options.early_replies);
        let channel = {
            let _entered = runtime.handle().enter();
            lazy_channel(&options.address, options.tls.as_ref())?
        };
        let client = connection(channel, &headers);
        let threads = ThreadRuntimes::new(&options.address, options.tls.clone(), headers);
        let shared = Arc::new(Shared {
            options,
            client,
            session,
            info: Mutex::new(SessionInfo {
                lease: Duration::from_millis(HEARTBEAT_DEFAULT_MS * 3),
                object_store_url: String::new(),
            }),
            cache: MetadataCache::new(),
            reopen: tokio::sync::Mutex::new(()),
            unsafe_log: Mutex::new(UnsafeLog::default()),
            replaying: tokio::sync::Mutex::new(()),
            closed: AtomicBool::new(false),
        });
        let address = shared.options.address.clone();
        let opened = {
            let shared = shared.clone();
            runtime.block_on(async move { open_session(&shared).await })
        };
        opened.map_err(|error| match error {
            NsError::AccessDenied => {
                ClientError::Rejected { address: address.clone(), reason: "the token was refused".to_string() }
            }
            NsError::Io(reason) => ClientError::Unreachable { address: address.clone(), reason },
            other => ClientError::Rejected { address: address.clone(), reason: other.to_string() },
        })?;
        let options = &shared.options;
        let replicas = replica_reads::start(
            options.replicas,
            &options.address,
            options.token.clone(),
            options.tls.clone(),
            &runtime,
        )?;
        let (shutdown, shutdown_receiver) = watch::channel(false);
        let tasks = vec![
            runtime.spawn(run_subscriber(shared.clone(), shutdown_receiver.clone())),
            runtime.spawn(run_heartbeat(shared.clone(), shutdown_receiver)),
        ];
        Ok(RemoteMetadata { shared, runtime, threads, shutdown, tasks: Mutex::new(tasks), replicas })
    }

    /// After a change to `ino`'s attributes (setattr, set_layout) sent at `since`: cache the
    /// attributes the MDS replied with, or drop what we had if it failed.
    fn finish_attr_change(
        &self,
        since: CacheGeneration,
        ino: Ino,
        result: NsResult<pb::AttrReply>,
    ) -> NsResult<InodeAttr> {
        let cache = &self.shared.cache;
        match result {
            Ok(reply) => {
                let attr = Self::attr_of(reply)?;
                cache.local_change(since, &[ino], &[], |filler| filler.attr(&attr));
                Ok(attr)
            }
            Err(error) => {
                cache.local_change(since, &[ino], &[], |_| {});
                Err(error)
            }
        }
    }

    /// Unlink (or, with `directory`, rmdir) `parent/name` and update the cache.
    fn remove_entry(&self, parent: Ino, name: &[u8], directory: bool) -> NsResult<()> {
        let child = self.child_of(parent, name);
        let cache = &self.shared.cache;
        let since = cache.generation();
        let shared = &self.shared;
        let request = pb::EntryRequest { parent, name: name.to_vec() };
        let result = self.block_on(async {
            Ok(if directory { rpc!(shared, rmdir, request).await } else { rpc!(shared, unlink, request).await })
        })?;
        let inodes: Vec<Ino> = std::iter::once(parent).chain(child).collect();
        match result {
            // ENOENT on a resend: the first attempt removed it.
            Ok(_) | Err(CallError { error: NsError::NotFound, resent: true }) => {
                cache.local_change(since, &inodes, &[(parent, name)], |filler| filler.entry(parent, name, None));
                Ok(())
            }
            Err(error) => {
                cache.local_change(since, &inodes, &[(parent, name)], |_| {});
                Err(error.into())
            }
        }
    }

    /// Where file data lives, as the MDS told us at OpenSession.
    pub fn object_store_url(&self) -> String {
        lock(&self.shared.info).object_store_url.clone()
    }

    /// The session's credential (the `cudele-session` header value; empty without one), for
    /// tests that play the MDS's reaper.
    pub fn session_credential(&self) -> String {
        self.shared.session.header().and_then(|value| value.to_str().ok().map(str::to_string)).unwrap_or_default()
    }

    pub fn session(&self) -> SessionId {
        self.shared.session.id()
    }

    /// Decouple directory `ino` for this session (see `crate::subtree`).
    pub fn decouple_subtree(&self, ino: Ino, policy: &[u8]) -> NsResult<pb::DecoupleReply> {
        let shared = &self.shared;
        let request = pb::DecoupleRequest { ino, policy: policy.to_vec() };
        self.block_on(async { rpc!(shared, decouple, request).await.map_err(NsError::from) })
    }

    /// Merge a client journal into the decoupled subtree `request.ino` (idempotent on resend:
    /// the MDS skips events it merged already).
    pub fn merge_subtree(&self, request: pb::MergeRequest) -> NsResult<pb::MergeReply> {
        let shared = &self.shared;
        let reply = self.block_on(async { rpc!(shared, merge, request).await.map_err(NsError::from) });
        // Whatever merged, this mount's cached view of the subtree predates it.
        self.shared.cache.forget_all();
        reply
    }

    /// A fresh inode range for this session.
    pub fn allocate_inode_range(&self, count: u64) -> NsResult<(Ino, Ino)> {
        let shared = &self.shared;
        let request = pb::AllocateInodesRequest { count };
        let reply = self.block_on(async { rpc!(shared, allocate_inodes, request).await.map_err(NsError::from) })?;
        Ok((reply.start, reply.end))
    }

    /// The coherent cache (for tests and statistics).
    pub fn cache(&self) -> &MetadataCache {
        &self.shared.cache
    }

    /// The replica read path (None with `replicas=off`), for tests and statistics.
    pub fn replica_reads(&self) -> Option<&ReplicaReads> {
        self.replicas.as_ref()
    }

    fn block_on<T>(&self, future: impl Future<Output = NsResult<T>>) -> NsResult<T> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(NsError::Io("the MDS session is closed".to_string()));
        }
        match self.threads.current() {
            Some(runtime) => runtime.block_on(owner(&self.shared), future),
            None => self.runtime.block_on(future),
        }
    }

    /// The attributes in a reply.
    fn attr_of(reply: pb::AttrReply) -> NsResult<InodeAttr> {
        let (attr, chunk_size_bytes, chunks) = attr_from_wire(reply.attr)?;
        Ok(InodeAttr { attr, chunk_size_bytes, chunks: Arc::new(chunks) })
    }

    /// `parent/name`'s inode, from the cache or the MDS (to know what a change touches).
    fn child_of(&self, parent: Ino, name: &[u8]) -> Option<Ino> {
        self.shared.cache.cached_child(parent, name).or_else(|| self.lookup(parent, name).ok().map(|a| a.attr.ino))
    }

    /// A create-like call resent after a transport failure answered EEXIST: if the name now
    /// holds an inode of the kind and owner we asked for, the first attempt succeeded.
    fn replayed_create(&self, parent: Ino, name: &[u8], kind: FileKind, owner: Owner) -> Option<InodeAttr> {
        let shared = &self.shared;
        let found = self
            .block_on(async {
                rpc!(shared, lookup, pb::EntryRequest { parent, name: name.to_vec() }).await.map_err(NsError::from)
            })
            .ok()?;
        let attr = Self::attr_of(found).ok()?;
        (attr.attr.kind == kind && attr.attr.uid == owner.uid && attr.attr.gid == owner.gid).then_some(attr)
    }

    /// The common tail of create, mkdir and symlink.
    fn finish_create(
        &self,
        since: CacheGeneration,
        parent: Ino,
        name: &[u8],
        kind: FileKind,
        owner: Owner,
        result: Result<pb::AttrReply, CallError>,
    ) -> NsResult<InodeAttr> {
        let cache = &self.shared.cache;
        let attr = match result {
            Ok(reply) => Self::attr_of(reply)?,
            Err(CallError { error: NsError::Exists, resent: true }) => {
                let attr = self.replayed_create(parent, name, kind, owner).ok_or(NsError::Exists)?;
                // Not known to be new: just drop what changed.
                cache.local_change(since, &[parent], &[(parent, name)], |_| {});
                return Ok(attr);
            }
            Err(error) => {
                // Whatever happened, our view of the directory may be stale now.
                cache.local_change(since, &[parent], &[(parent, name)], |_| {});
                return Err(error.into());
            }
        };
        // The parent as it was, to apply the create to it (below) instead of dropping it.
        let parent_before = cache.peek_attr(parent);
        cache.local_change(since, &[parent], &[(parent, name)], |filler| {
            filler.entry(parent, name, Some(&attr));
            // The kernel asks for security.capability before every write; a new inode has
            // no xattrs, so answer that without an RPC. A new directory has no entries.
            filler.no_xattrs(attr.attr.ino);
            if kind == FileKind::Directory {
                filler.complete_directory(attr.attr.ino);
            }
            if let Some(parent_attr) = parent_before {
                filler.attr(&with_new_entry(parent_attr, &attr));
            }
        });
        if let Some(replicas) = &self.replicas {
            replicas.note_home(attr.attr.ino, parent);
        }
        Ok(attr)
    }
}

/// A directory's attributes after an entry for `child` was added to it, as
/// `Namespace::apply` changes them (add_entry: size = entries, mtime = ctime = the event's
/// time, which is also the new child's ctime; a subdirectory adds a link). Only used when
/// no invalidation arrived since the request was sent, so the cached attributes were
/// current.
fn with_new_entry(mut directory: InodeAttr, child: &InodeAttr) -> InodeAttr {
    directory.attr.size += 1;
    directory.attr.mtime = child.attr.ctime;
    directory.attr.ctime = child.attr.ctime;
    if child.attr.kind == FileKind::Directory {
        directory.attr.nlink += 1;
    }
    directory
}

/// Send a request, retrying transport failures for the outage budget and reopening a lost
/// session; see the module documentation.
/// Which client a thread runtime's call belongs to.
fn owner(shared: &Shared) -> usize {
    std::ptr::from_ref(shared) as usize
}

async fn call<T, F, Fut>(shared: &Shared, mut send: F) -> Result<T, CallError>
where
    F: FnMut(MdsConnection) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let deadline = Instant::now() + shared.options.outage_timeout;
    let mut backoff = Duration::from_millis(BACKOFF_INITIAL_MS);
    let mut resent = false;
    let mut reopens = 0;
    let mut replayed = false;
    loop {
        let session_seen = shared.session.id();
        let client = thread_runtime::active_connection(owner(shared)).unwrap_or_else(|| shared.client.clone());
        let status = match tokio::time::timeout(shared.options.rpc_timeout, send(client)).await {
            Ok(Ok(response)) => {
                observe_progress(shared, response.metadata()).await;
                return Ok(response.into_inner());
            }
            Ok(Err(status)) => status,
            Err(_) => tonic::Status::deadline_exceeded("no reply from the MDS in time"),
        };
        match classify(&status) {
            Failure::Domain(error) => {
                // A restarted MDS that lost our unsafe creates answers ENOENT (or EEXIST)
                // about them until we replayed: replay, then ask once more.
                if observe_progress(shared, status.metadata()).await && !replayed {
                    replayed = true;
                    continue;
                }
                return Err(CallError { error, resent });
            }
            Failure::SessionLost(reason) => {
                // Rejected before it ran (the session check precedes every operation), so
                // a resend after reopening is safe.
                reopens += 1;
                if reopens > SESSION_REOPENS_PER_CALL_MAX {
                    return Err(CallError { error: NsError::Io(format!("session lost: {reason}")), resent });
                }
                if let Err(error) = reopen_session(shared, session_seen).await {
                    return Err(CallError { error, resent });
                }
            }
            Failure::Transport(reason) => {
                if Instant::now() >= deadline {
                    tracing::warn!(%reason, "the MDS is unreachable; failing the operation with EIO");
                    return Err(CallError { error: NsError::Io(format!("MDS unreachable: {reason}")), resent });
                }
                resent = true;
                let (wait, next) = next_backoff(backoff, Duration::from_millis(BACKOFF_MAX_MS));
                backoff = next;
                tokio::time::sleep(wait.min(deadline.saturating_duration_since(Instant::now()))).await;
            }
        }
    }
}

/// Take in a reply's durability progress; if the MDS restarted before creates it answered
/// early were durable, replay them (once per batch, serialised). Returns whether it replayed.
async fn observe_progress(shared: &Shared, metadata: &tonic::metadata::MetadataMap) -> bool {
    let Some(progress) = cudele_proto::early::progress(metadata) else { return false };
    if !lock(&shared.unsafe_log).observe(&progress) {
        return false;
    }
    let _replaying = shared.replaying.lock().await;
    // Empty records still tell a restarted MDS we reconnected (it holds operations until
    // every session it knew has: `cudele_mds::reconnect`).
    let Some(records) = lock(&shared.unsafe_log).take_replay() else {
        return true; // another thread replayed meanwhile
    };
    let request = pb::ReplayRequest { records: records.iter().map(|(_, record)| record.clone()).collect() };
    let mut client = shared.client.clone();
    match tokio::time::timeout(shared.options.rpc_timeout, client.replay(request)).await {
        Ok(Ok(reply)) => {
            let reply = reply.into_inner();
            tracing::info!(
                applied = reply.applied,
                already_applied = reply.already_applied,
                failed = reply.failed,
                "replayed creates the restarted MDS had acknowledged early"
            );
            for failure in &reply.failures {
                tracing::warn!(%failure, "a create acknowledged before the MDS restarted is lost");
            }
            true
        }
        Ok(Err(status)) => {
            tracing::warn!(%status, "replaying creates to the restarted MDS failed; will retry");
            lock(&shared.unsafe_log).restore(records);
            false
        }
        Err(_) => {
            lock(&shared.unsafe_log).restore(records);
            false
        }
    }
}

/// OpenSession with retries for the outage budget; records the session and its lease.
async fn open_session(shared: &Shared) -> NsResult<()> {
    let deadline = Instant::now() + shared.options.outage_timeout;
    let mut backoff = Duration::from_millis(BACKOFF_INITIAL_MS);
    shared.session.clear();
    loop {
        let request = pb::OpenSessionRequest { client_name: shared.options.client_name.clone() };
        let mut client = shared.client.clone();
        let attempt = tokio::time::timeout(shared.options.rpc_timeout, client.open_session(request));
        let status = match attempt.await {
            Ok(Ok(reply)) => {
                let reply = reply.into_inner();
                *lock(&shared.info) = SessionInfo {
                    lease: Duration::from_millis(reply.lease_ms.max(1)),
                    object_store_url: reply.object_store_url,
                };
                if shared.session.set(&reply.credential).is_err() {
                    return Err(NsError::Io("the MDS sent no valid session credential".into()));
                }
                tracing::info!(session = reply.session, lease_ms = reply.lease_ms, "MDS session open");
                return Ok(());
            }
            Ok(Err(status)) => status,
            Err(_) => tonic::Status::deadline_exceeded("no reply from the MDS in time"),
        };
        match classify(&status) {
            // Without a session, UNAUTHENTICATED can only mean the token.
            Failure::SessionLost(_) => return Err(NsError::AccessDenied),
            Failure::Domain(error) => return Err(error),
            Failure::Transport(reason) => {
                if Instant::now() >= deadline {
                    return Err(NsError::Io(reason));
                }
                let (wait, next) = next_backoff(backoff, Duration::from_millis(BACKOFF_MAX_MS));
                backoff = next;
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// The MDS does not know session `seen`: resume it (Heartbeat resumes a session the MDS
/// remembers across a restart) or open a new one. Other threads that saw the same loss
/// wait here and then find the session already replaced.
async fn reopen_session(shared: &Shared, seen: SessionId) -> NsResult<()> {
    let _reopening = shared.reopen.lock().await;
    if shared.session.id() != seen || shared.closed.load(Ordering::Acquire) {
        return Ok(());
    }
    if seen != 0 {
        let mut client = shared.client.clone();
        match tokio::time::timeout(shared.options.rpc_timeout, client.heartbeat(pb::Empty {})).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(status)) if matches!(classify(&status), Failure::SessionLost(_)) => {}
            Ok(Err(status)) => return Err(NsError::Io(format!("resuming the session: {}", status.message()))),
            Err(_) => return Err(NsError::Io("resuming the session: no reply in time".to_string())),
        }
    }
    tracing::warn!(session = seen, "the MDS no longer knows our session; opening a new one");
    // Invalidations for the old session are gone: nothing cached can be trusted.
    shared.cache.disable();
    open_session(shared).await
}

/// The push channel: subscribe, then for each invalidation drop the cached entries and
/// acknowledge. Reconnects with backoff; the cache is off whenever the stream is down.
async fn run_subscriber(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(BACKOFF_INITIAL_MS);
    loop {
        if *shutdown.borrow() {
            return;
        }
        let session_seen = shared.session.id();
        let mut client = shared.client.clone();
        let subscribed = tokio::select! {
            _ = shutdown.changed() => return,
            subscribed = client.subscribe(pb::Empty {}) => subscribed,
        };
        match subscribed {
            Ok(response) => {
                // A restarted MDS shows its new incarnation here first: replay (or report
                // that we reconnected) now, in a task of its own — a replay waits for other
                // mounts' acknowledgements, which this loop must keep sending.
                let metadata = response.metadata().clone();
                let replayer = shared.clone();
                tokio::spawn(async move { observe_progress(&replayer, &metadata).await });
                let mut stream = response.into_inner();
                shared.cache.enable();
                tracing::debug!(session = session_seen, "invalidation stream open");
                backoff = Duration::from_millis(BACKOFF_INITIAL_MS);
                loop {
                    let message = tokio::select! {
                        _ = shutdown.changed() => {
                            shared.cache.disable();
                            return;
                        }
                        message = stream.message() => message,
                    };
                    match message {
                        Ok(Some(invalidation)) => {
                            let entries: Vec<(Ino, Vec<u8>)> =
                                invalidation.entries.into_iter().map(|entry| (entry.parent, entry.name)).collect();
                            shared.cache.invalidate(&invalidation.inodes, &entries);
                            // Acknowledge only after dropping (the MDS's write waits on this).
                            let mut client = shared.client.clone();
                            let timeout = shared.options.rpc_timeout;
                            let request = pb::AckInvalidationRequest { id: invalidation.id };
                            tokio::spawn(async move {
                                if let Ok(Err(status)) =
                                    tokio::time::timeout(timeout, client.ack_invalidation(request)).await
                                {
                                    tracing::debug!(%status, "acknowledging an invalidation failed");
                                }
                            });
                        }
                        Ok(None) => break,
                        Err(status) => {
                            tracing::debug!(%status, "invalidation stream broke");
                            break;
                        }
                    }
                }
                shared.cache.disable();
                tracing::info!("invalidation stream closed; cache off until it is back");
            }
            Err(status) => {
                if let Failure::SessionLost(_) = classify(&status) {
                    if let Err(error) = reopen_session(&shared, session_seen).await {
                        tracing::warn!(%error, "reopening the MDS session failed");
                    }
                }
            }
        }
        let (wait, next) = next_backoff(backoff, Duration::from_millis(BACKOFF_MAX_MS));
        backoff = next;
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Keep the session's lease: a heartbeat every lease/3.
async fn run_heartbeat(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let period = lock(&shared.info).lease / 3;
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(period) => {}
        }
        let session_seen = shared.session.id();
        let mut client = shared.client.clone();
        let beat = tokio::time::timeout(shared.options.rpc_timeout, client.heartbeat(pb::Empty {}));
        match beat.await {
            Ok(Ok(reply)) => {
                observe_progress(&shared, reply.metadata()).await;
            }
            Ok(Err(status)) => match classify(&status) {
                Failure::SessionLost(_) => {
                    if let Err(error) = reopen_session(&shared, session_seen).await {
                        tracing::warn!(%error, "reopening the MDS session failed");
                    }
                }
                failure => tracing::debug!(?failure, "heartbeat failed"),
            },
            Err(_) => tracing::debug!("heartbeat timed out"),
        }
    }
}

fn wire_time(change: Option<TimeChange>) -> (Option<pb::Timestamp>, bool) {
    match change {
        None => (None, false),
        Some(TimeChange::Now) => (None, true),
        Some(TimeChange::At(time)) => (Some(time_to_wire(time)), false),
    }
}

impl Metadata for RemoteMetadata {
    fn lookup(&self, parent: Ino, name: &[u8]) -> NsResult<InodeAttr> {
        let cache = &self.shared.cache;
        match cache.entry(parent, name) {
            Some(CachedEntry::Present(attr)) => return Ok(attr),
            Some(CachedEntry::Missing) => return Err(NsError::NotFound),
            None => {}
        }
        let since = cache.generation();
        let shared = &self.shared;
        let result = self.block_on(async {
            let from_mds = async {
                rpc!(shared, lookup, pb::EntryRequest { parent, name: name.to_vec() }).await.map_err(NsError::from)
            };
            replica_reads::lookup(self.replicas.as_ref(), parent, name, from_mds).await
        });
        match result {
            Ok(reply) => {
                let attr = Self::attr_of(reply)?;
                cache.fill(since, |filler| filler.entry(parent, name, Some(&attr)));
                Ok(attr)
            }
            Err(NsError::NotFound) => {
                cache.fill(since, |filler| filler.entry(parent, name, None));
                Err(NsError::NotFound)
            }
            Err(error) => Err(error),
        }
    }

    fn getattr(&self, ino: Ino) -> NsResult<InodeAttr> {
        let cache = &self.shared.cache;
        if let Some(attr) = cache.attr(ino) {
            return Ok(attr);
        }
        let since = cache.generation();
        let shared = &self.shared;
        let reply = self.block_on(async {
            let from_mds = async { rpc!(shared, get_attr, pb::InoRequest { ino }).await.map_err(NsError::from) };
            replica_reads::getattr(self.replicas.as_ref(), ino, from_mds).await
        })?;
        let attr = Self::attr_of(reply)?;
        cache.fill(since, |filler| filler.attr(&attr));
        Ok(attr)
    }

    fn setattr(&self, ino: Ino, changes: &SetAttrChanges) -> NsResult<InodeAttr> {
        let (atime, atime_now) = wire_time(changes.atime);
        let (mtime, mtime_now) = wire_time(changes.mtime);
        let request = pb::SetAttrRequest {
            ino,
            mode: changes.mode,
            uid: changes.uid,
            gid: changes.gid,
            size: changes.size,
            atime,
            mtime,
            atime_now,
            mtime_now,
        };
        let since = self.shared.cache.generation();
        let shared = &self.shared;
        let result = self.block_on(async { rpc!(shared, set_attr, request).await.map_err(NsError::from) });
        self.finish_attr_change(since, ino, result)
    }

    fn create(
        &self,
        parent: Ino,
        name: &[u8],
        kind: FileKind,
        mode: u32,
        owner: Owner,
        rdev: u32,
    ) -> NsResult<InodeAttr> {
        let request = pb::CreateRequest {
            parent,
            name: name.to_vec(),
            kind: kind_to_wire(kind) as i32,
            mode,
            uid: owner.uid,
            gid: owner.gid,
            rdev,
        };
        let since = self.shared.cache.generation();
        let shared = &self.shared;
        let result = self.block_on(async { Ok(rpc!(shared, create, request).await) })?;
        self.finish_create(since, parent, name, kind, owner, result)
    }

    fn mkdir(&self, parent: Ino, name: &[u8], mode: u32, owner: Owner) -> NsResult<InodeAttr> {
        let request = pb::MkdirRequest { parent, name: name.to_vec(), mode, uid: owner.uid, gid: owner.gid };
        let since = self.shared.cache.generation();
        let shared = &self.shared;
        let result = self.block_on(async { Ok(rpc!(shared, mkdir, request).await) })?;
        self.finish_create(since, parent, name, FileKind::Directory, owner, result)
    }

    fn symlink(&self, parent: Ino, name: &[u8], target: &[u8], owner: Owner) -> NsResult<InodeAttr> {
        let request =
            pb::SymlinkRequest { parent, name: name.to_vec(), target: target.to_vec(), uid: owner.uid, gid: owner.gid };
        let since = self.shared.cache.generation();
        let shared = &self.shared;
        let result = self.block_on(async { Ok(rpc!(shared, symlink, request).await) })?;
        self.finish_create(since, parent, name, FileKind::Symlink, owner, result)
    }

    fn link(&self, ino: Ino, new_parent: Ino, new_name: &[u8]) -> NsResult<InodeAttr> {
        let request = pb::LinkRequest { ino, new_parent, new_name: new_name.to_vec() };
        let cache = &self.shared.cache;
        let since = cache.generation();
        let shared = &self.shared;
        let result = self.block_on(async { Ok(rpc!(shared, link, request).await) })?;
        let attr = match result {
            Ok(reply) => Self::attr_of(reply),
            // Resent after a transport failure: the first attempt may have made the link.
            Err(CallError { error: NsError::Exists, resent: true }) => match self.lookup(new_parent, new_name) {
                Ok(attr) if attr.attr.ino == ino => Ok(attr),
                _ => Err(NsError::Exists),
            },
            Err(error) => Err(error.into()),
        };
        match &attr {
            Ok(attr) => cache.local_change(since, &[ino, new_parent], &[(new_parent, new_name)], |filler| {
                filler.entry(new_parent, new_name, Some(attr))
            }),
            Err(_) => cache.local_change(since, &[ino, new_parent], &[(new_parent, new_name)], |_| {}),
        }
        attr
    }

    fn unlink(&self, parent: Ino, name: &[u8]) -> NsResult<()> {
        self.remove_entry(parent, name, false)
    }

    fn rmdir(&self, parent: Ino, name: &[u8]) -> NsResult<()> {
        self.remove_entry(parent, name, true)
    }

    fn rename(
        &self,
        source_parent: Ino,
        source_name: &[u8],
        target_parent: Ino,
        target_name: &[u8],
        mode: RenameMode,
    ) -> NsResult<()> {
        let source = self.child_of(source_parent, source_name);
        let target = self.child_of(target_parent, target_name);
        let cache = &self.shared.cache;
        let since = cache.generation();
        let shared = &self.shared;
        let request = pb::RenameRequest {
            parent: source_parent,
            name: source_name.to_vec(),
            new_parent: target_parent,
            new_name: target_name.to_vec(),
            mode: rename_mode_to_wire(mode) as i32,
        };
        let result = self.block_on(async { Ok(rpc!(shared, rename, request).await) })?;
        // The target's inode loses a link when replaced; its attributes may be cached
        // without the entry, so drop them whether or not we know the entry.
        let inodes: Vec<Ino> = [source_parent, target_parent].into_iter().chain(source).chain(target).collect();
        let entries = [(source_parent, source_name), (target_parent, target_name)];
        match result {
            Ok(_) => {}
            // ENOENT on a resend: the first attempt moved it, if the target now exists.
            Err(CallError { error: NsError::NotFound, resent: true }) => {
                cache.local_change(since, &inodes, &entries, |_| {});
                return self.lookup(target_parent, target_name).map(|_| ());
            }
            Err(error) => {
                cache.local_change(since, &inodes, &entries, |_| {});
                return Err(error.into());
            }
        }
        // Renaming a name onto itself or onto another name of the same inode changes
        // nothing (rename(2)); otherwise the names now point where the rename says.
        let unchanged =
            (source_parent, source_name) == (target_parent, target_name) || (source.is_some() && source == target);
        cache.local_change(since, &inodes, &entries, |filler| match (unchanged, mode, source, target) {
            (true, _, _, _) => {}
            (false, RenameMode::Exchange, Some(source), Some(target)) => {
                filler.entry_to(source_parent, source_name, target);
                filler.entry_to(target_parent, target_name, source);
            }
            (false, RenameMode::Exchange, _, _) => {}
            (false, RenameMode::Replace | RenameMode::NoReplace, source, _) => {
                filler.entry(source_parent, source_name, None);
                if let Some(source) = source {
                    filler.entry_to(target_parent, target_name, source);
                }
            }
        });
        Ok(())
    }

    fn readlink(&self, ino: Ino) -> NsResult<Vec<u8>> {
        let cache = &self.shared.cache;
        if let Some(target) = cache.symlink(ino) {
            return Ok(target);
        }
        let since = cache.generation();
        let shared = &self.shared;
        let reply =
            self.block_on(async { rpc!(shared, readlink, pb::InoRequest { ino }).await.map_err(NsError::from) })?;
        let target = reply.target;
        // A symlink's target never changes; the entry goes when the inode is invalidated.
        cache.fill(since, |filler| filler.symlink(ino, &target));
        Ok(target)
    }

    fn readdir(&self, ino: Ino, after: Option<&[u8]>, limit: usize, plus: bool) -> NsResult<ReaddirPage> {
        let request = pb::ReaddirRequest {
            ino,
            after: after.map(<[u8]>::to_vec).unwrap_or_default(),
            limit: u32::try_from(limit).unwrap_or(u32::MAX),
            plus,
        };
        let cache = &self.shared.cache;
        let since = cache.generation();
        let shared = &self.shared;
        let reply = self.block_on(async {
            let from_mds = async { rpc!(shared, readdir, request.clone()).await.map_err(NsError::from) };
            replica_reads::readdir(self.replicas.as_ref(), &request, from_mds).await
        })?;
        let mut entries = Vec::with_capacity(reply.entries.len());
        for entry in reply.entries {
            let attr = match entry.attr {
                Some(attr) => {
                    let (attr, chunk_size_bytes, chunks) = attr_from_wire(Some(attr))?;
                    Some(InodeAttr { attr, chunk_size_bytes, chunks: Arc::new(chunks) })
                }
                None => None,
            };
            let kind = kind_from_wire(entry.kind)?;
            entries.push((DirEntry { name: entry.name, ino: entry.ino, kind }, attr));
        }
        let whole = after.is_none() && reply.end && plus && entries.iter().all(|(_, attr)| attr.is_some());
        cache.fill(since, |filler| {
            for (entry, attr) in &entries {
                if let Some(attr) = attr {
                    filler.entry(ino, &entry.name, Some(attr));
                }
            }
            if whole {
                filler.complete_directory(ino);
            }
        });
        Ok(ReaddirPage { entries, end: reply.end })
    }

    fn getxattr(&self, ino: Ino, name: &[u8], size: u32) -> NsResult<Vec<u8>> {
        let cache = &self.shared.cache;
        let value = match cache.xattr(ino, name) {
            Some(value) => value.ok_or(NsError::NoData)?,
            None => {
                let since = cache.generation();
                let shared = &self.shared;
                // Ask for the whole value (size 0) so the answer can serve any size later.
                let request = pb::GetXattrRequest { ino, name: name.to_vec(), size: 0 };
                match self.block_on(async { rpc!(shared, get_xattr, request).await.map_err(NsError::from) }) {
                    Ok(reply) => {
                        cache.fill(since, |filler| filler.xattr(ino, name, Some(&reply.value)));
                        reply.value
                    }
                    Err(NsError::NoData) => {
                        cache.fill(since, |filler| filler.xattr(ino, name, None));
                        return Err(NsError::NoData);
                    }
                    Err(error) => return Err(error),
                }
            }
        };
        // getxattr(2): a non-zero size smaller than the value is ERANGE.
        if size != 0 && value.len() > size as usize {
            return Err(NsError::Range);
        }
        Ok(value)
    }

    fn listxattr(&self, ino: Ino, size: u32) -> NsResult<Vec<u8>> {
        let shared = &self.shared;
        let request = pb::ListXattrRequest { ino, size };
        let reply = self.block_on(async { rpc!(shared, list_xattr, request).await.map_err(NsError::from) })?;
        Ok(reply.value)
    }

    fn setxattr(&self, ino: Ino, name: &[u8], value: &[u8], mode: XattrMode) -> NsResult<()> {
        let request = pb::SetXattrRequest {
            ino,
            name: name.to_vec(),
            value: value.to_vec(),
            mode: xattr_mode_to_wire(mode) as i32,
        };
        let cache = &self.shared.cache;
        let since = cache.generation();
        let shared = &self.shared;
        let result = self.block_on(async { rpc!(shared, set_xattr, request).await.map_err(NsError::from) });
        cache.local_change(since, &[ino], &[], |_| {});
        result.map(|_| ())
    }

    fn removexattr(&self, ino: Ino, name: &[u8]) -> NsResult<()> {
        let request = pb::RemoveXattrRequest { ino, name: name.to_vec() };
        let cache = &self.shared.cache;
        let since = cache.generation();
        let shared = &self.shared;
        let result = self.block_on(async { rpc!(shared, remove_xattr, request).await.map_err(NsError::from) });
        cache.local_change(since, &[ino], &[], |_| {});
        result.map(|_| ())
    }

    fn statfs(&self) -> NsResult<FsStats> {
        let shared = &self.shared;
        let reply = self.block_on(async { rpc!(shared, statfs, pb::Empty {}).await.map_err(NsError::from) })?;
        Ok(FsStats {
            inodes: reply.inodes,
            bytes: reply.bytes,
            inodes_free: reply.inodes_free,
            bytes_free: reply.bytes_free,
            block_size_bytes: reply.block_size,
            name_length_max_bytes: reply.name_max,
        })
    }

    fn set_layout(&self, ino: Ino, layout: &LayoutUpdate) -> NsResult<Published> {
        let request = pb::SetLayoutRequest {
            ino,
            size: layout.size,
            chunk_size_bytes: layout.chunk_size_bytes,
            mtime: Some(time_to_wire(layout.mtime)),
            chunks: layout.chunks.iter().map(chunk_to_wire).collect(),
        };
        let since = self.shared.cache.generation();
        let shared = &self.shared;
        let result = self.block_on(async { rpc!(shared, set_layout, request).await.map_err(NsError::from) });
        let (result, superseded) = match result {
            Ok(reply) => {
                let superseded = reply.superseded.iter().map(chunk_from_wire).collect();
                (Ok(pb::AttrReply { attr: reply.attr }), superseded)
            }
            Err(error) => (Err(error), Vec::new()),
        };
        let attr = self.finish_attr_change(since, ino, result)?;
        Ok(Published { attr, superseded })
    }

    fn data_writer(&self) -> SessionId {
        self.session()
    }

    fn attach_kernel_cache(&self, kernel: Arc<dyn super::KernelCache>) -> bool {
        self.shared.cache.attach_kernel(kernel);
        true
    }

    fn kernel_may_cache(&self) -> bool {
        self.shared.cache.is_enabled()
    }

    fn fsync(&self, ino: Ino) -> NsResult<()> {
        let shared = &self.shared;
        self.block_on(async { rpc!(shared, fsync, pb::InoRequest { ino }).await.map_err(NsError::from) }).map(|_| ())
    }

    /// Stop the background tasks and close the session (idempotent).
    fn close(&self) {
        if self.shared.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let _ = self.shutdown.send(true);
        let shared = self.shared.clone();
        let closing = self.runtime.block_on(async move {
            let mut client = shared.client.clone();
            let close = client.close_session(pb::Empty {});
            match tokio::time::timeout(Duration::from_millis(CLOSE_TIMEOUT_MS), close).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(status)) => Err(NsError::Io(status.message().to_string())),
                Err(_) => Err(NsError::Io("no reply in time".to_string())),
            }
        });
        if let Err(error) = closing {
            tracing::warn!(%error, "closing the MDS session failed (it will expire with its lease)");
        }
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
        self.shared.cache.disable();
    }
}

impl Drop for RemoteMetadata {
    fn drop(&mut self) {
        // Dropping inside async code cannot block; the lease then expires on its own.
        if tokio::runtime::Handle::try_current().is_err() {
            self.close();
        } else {
            let _ = self.shutdown.send(true);
        }
    }
}
