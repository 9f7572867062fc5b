//! Client-side routing of metadata reads to cache replica instances (DESIGN.md §7).
//!
//! [`RoutedReader`] sends lookup, getattr and readdir to a live instance of the deployment
//! that owns the directory in question ([`crate::partition::deployment_of`]); on a failed
//! instance (transport error, timeout, overload — any status without a `cudele-errno`) it
//! tries another instance of the same deployment after an exponential backoff with full
//! jitter, and after [`RoutingOptions::attempts_max`] attempts, or when the deployment has
//! no instance, it reads from the MDS itself. An errno in a reply is an answer (ENOENT is
//! ENOENT wherever it came from), never retried. The routing table comes from the MDS's
//! `Coordinator.ListDeployments` and is refreshed every [`RoutingOptions::refresh_interval`]
//! and soon after a failure.
//!
//! The reader is plain async Rust over tonic with no RocksDB or FUSE dependency: call
//! [`RoutedReader::lookup`] with the parent, [`RoutedReader::getattr`] with the inode's home
//! when known (the `home` of an earlier reply; the parent it was looked up in is a fine
//! guess), and [`RoutedReader::readdir`] with the directory; writes keep going to the MDS.
//! The FUSE client (`cudele_client::metadata::replica_reads`) uses the `try_` variants,
//! which leave the MDS fallback to the caller (its own session, retries and EBUSY rules).

use crate::auth::{AUTHORIZATION_HEADER, SESSION_HEADER};
use crate::partition::deployment_of;
use crate::pb::{self, mds_client::MdsClient};
use crate::replica_pb::{self, coordinator_client::CoordinatorClient, replica_client::ReplicaClient};
use crate::status::ERRNO_METADATA_KEY;
use crate::transport::{ClientTls, TransportError};
use rand::Rng;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// How long a connection attempt to the MDS or an instance may take.
pub const CONNECT_TIMEOUT: Duration = crate::transport::CONNECT_TIMEOUT;
/// Replica attempts per read before falling back to the MDS.
pub const ROUTING_ATTEMPTS_MAX: u32 = 3;
/// First backoff between attempts; it doubles up to [`ROUTING_BACKOFF_MAX`].
pub const ROUTING_BACKOFF_INITIAL: Duration = Duration::from_millis(2);
pub const ROUTING_BACKOFF_MAX: Duration = Duration::from_millis(100);
/// One replica request's deadline (an overloaded instance counts as failed after it).
pub const ROUTING_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How old the routing table may grow before a read refreshes it.
pub const ROUTING_REFRESH_INTERVAL: Duration = Duration::from_millis(500);
/// How long an instance that failed a request is avoided.
pub const ROUTING_SUSPECT_DURATION: Duration = Duration::from_secs(1);
/// Least time between two wake requests for one deployment without instances.
pub const ROUTING_WAKE_INTERVAL: Duration = Duration::from_secs(1);

/// Adds the token and (optional) session headers to every request.
#[derive(Clone, Debug, Default)]
pub struct Headers {
    pub token: Option<String>,
    pub session: Option<String>,
}

impl tonic::service::Interceptor for Headers {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(token) = &self.token {
            let value =
                format!("Bearer {token}").parse().map_err(|_| Status::internal("token is not a header value"))?;
            request.metadata_mut().insert(AUTHORIZATION_HEADER, value);
        }
        if let Some(session) = &self.session {
            let value = session.parse().map_err(|_| Status::internal("session header"))?;
            request.metadata_mut().insert(SESSION_HEADER, value);
        }
        Ok(request)
    }
}

pub type MdsApi = MdsClient<InterceptedService<Channel, Headers>>;
pub type ReplicaApi = ReplicaClient<InterceptedService<Channel, Headers>>;
pub type CoordinatorApi = CoordinatorClient<InterceptedService<Channel, Headers>>;

/// A lazily connected channel to `address` (host:port), over TLS when `tls` is given
/// ([`crate::transport::endpoint`]).
pub fn lazy_channel(address: &str, tls: Option<&ClientTls>) -> Result<Channel, TransportError> {
    Ok(crate::transport::endpoint(address, tls)?.connect_lazy())
}

/// Whether a failed call is an answer of the namespace (it carries an errno) rather than a
/// failure of the server or the path to it.
pub fn is_answer(status: &Status) -> bool {
    status.metadata().get(ERRNO_METADATA_KEY).is_some()
}

/// Tuning of a [`RoutedReader`]; [`Default`] uses the named constants above.
#[derive(Clone, Debug)]
pub struct RoutingOptions {
    pub token: Option<String>,
    /// Sent to the MDS on fallback reads (so decoupled-subtree rules apply to this client).
    pub session: Option<String>,
    /// The CA to verify the MDS and the instances with (None: plaintext).
    pub tls: Option<ClientTls>,
    pub attempts_max: u32,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub request_timeout: Duration,
    pub refresh_interval: Duration,
    pub suspect_duration: Duration,
}

impl Default for RoutingOptions {
    fn default() -> Self {
        RoutingOptions {
            token: None,
            session: None,
            tls: None,
            attempts_max: ROUTING_ATTEMPTS_MAX,
            backoff_initial: ROUTING_BACKOFF_INITIAL,
            backoff_max: ROUTING_BACKOFF_MAX,
            request_timeout: ROUTING_REQUEST_TIMEOUT,
            refresh_interval: ROUTING_REFRESH_INTERVAL,
            suspect_duration: ROUTING_SUSPECT_DURATION,
        }
    }
}

/// Who answered a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadSource {
    /// A replica instance; `cached` when it answered from its cache.
    Replica { instance: u64, cached: bool },
    /// The MDS (no instance, or every attempt failed).
    Mds,
}

#[derive(Clone, Debug)]
pub struct RoutedAttr {
    pub attr: pb::Attr,
    /// The directory the inode lives in, when a replica said so: route its getattr by it.
    pub home: Option<u64>,
    pub source: ReadSource,
}

#[derive(Clone, Debug)]
pub struct RoutedPage {
    pub entries: Vec<pb::DirEntry>,
    pub end: bool,
    pub source: ReadSource,
}

/// One live instance as the routing table knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteInstance {
    pub instance: u64,
    pub address: String,
}

/// The deployments and their instances, as last listed by the MDS.
#[derive(Clone, Debug, Default)]
pub struct RoutingTable {
    /// 0: replicas are off.
    pub deployments: u32,
    pub epoch: u64,
    pub instances: Vec<Vec<RouteInstance>>,
}

/// Counters of a reader's routing decisions.
#[derive(Debug, Default)]
pub struct RoutingStats {
    pub replica_answers: AtomicU64,
    pub replica_cache_answers: AtomicU64,
    pub replica_failures: AtomicU64,
    pub mds_fallbacks: AtomicU64,
    pub refreshes: AtomicU64,
}

struct RoutingState {
    table: RoutingTable,
    fetched: Option<Instant>,
    clients: HashMap<u64, ReplicaApi>,
    suspect_until: HashMap<u64, Instant>,
    last_wake: HashMap<u32, Instant>,
    next_pick: usize,
}

enum Attempt<T> {
    Answered(Result<T, Status>, u64),
    Exhausted,
}

/// Routes reads to replica instances with retry, backoff, jitter and MDS fallback.
pub struct RoutedReader {
    mds: MdsApi,
    coordinator: CoordinatorApi,
    headers: Headers,
    options: RoutingOptions,
    state: Mutex<RoutingState>,
    refreshing: AtomicBool,
    pub stats: RoutingStats,
}

impl RoutedReader {
    /// A reader for the MDS at `mds_address` (host:port). Connections are lazy; the first
    /// read lists the deployments.
    pub fn new(mds_address: &str, options: RoutingOptions) -> Result<RoutedReader, TransportError> {
        let channel = lazy_channel(mds_address, options.tls.as_ref())?;
        let headers = Headers { token: options.token.clone(), session: options.session.clone() };
        let replica_headers = Headers { token: options.token.clone(), session: None };
        Ok(RoutedReader {
            mds: MdsClient::with_interceptor(channel.clone(), headers),
            coordinator: CoordinatorClient::with_interceptor(channel, replica_headers.clone()),
            headers: replica_headers,
            options,
            state: Mutex::new(RoutingState {
                table: RoutingTable::default(),
                fetched: None,
                clients: HashMap::new(),
                suspect_until: HashMap::new(),
                last_wake: HashMap::new(),
                next_pick: 0,
            }),
            refreshing: AtomicBool::new(false),
            stats: RoutingStats::default(),
        })
    }

    /// [`RoutedReader::new`], then fetch the routing table once so the first reads are routed
    /// (if the MDS cannot be reached yet, reads fall back to it and the table is fetched later).
    pub async fn connect(mds_address: &str, options: RoutingOptions) -> Result<RoutedReader, TransportError> {
        let reader = RoutedReader::new(mds_address, options)?;
        if let Err(status) = reader.refresh().await {
            tracing::debug!(%status, "listing replica deployments failed; reads go to the MDS for now");
        }
        Ok(reader)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RoutingState> {
        // The state holds no invariant a panicking holder could break halfway: recover it.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The routing table as last fetched.
    pub fn table(&self) -> RoutingTable {
        self.lock().table.clone()
    }

    /// Fetch the routing table from the MDS now.
    pub async fn refresh(&self) -> Result<(), Status> {
        let reply = self.coordinator.clone().list_deployments(pb::Empty {}).await?.into_inner();
        self.stats.refreshes.fetch_add(1, Ordering::Relaxed);
        let mut instances = vec![Vec::new(); reply.deployments as usize];
        for deployment in reply.list {
            if let Some(slot) = instances.get_mut(deployment.index as usize) {
                *slot = deployment
                    .instances
                    .into_iter()
                    .map(|info| RouteInstance { instance: info.instance, address: info.address })
                    .collect();
            }
        }
        let table = RoutingTable { deployments: reply.deployments, epoch: reply.epoch, instances };
        let mut state = self.lock();
        let mut clients = HashMap::new();
        for instance in table.instances.iter().flatten() {
            let client = match state.clients.remove(&instance.instance) {
                Some(client) => client,
                None => match lazy_channel(&instance.address, self.options.tls.as_ref()) {
                    Ok(channel) => ReplicaClient::with_interceptor(channel, self.headers.clone()),
                    Err(error) => {
                        tracing::warn!(address = %instance.address, %error, "bad replica address");
                        continue;
                    }
                },
            };
            clients.insert(instance.instance, client);
        }
        state.clients = clients;
        state.suspect_until.retain(|instance, _| table.instances.iter().flatten().any(|i| i.instance == *instance));
        state.table = table;
        state.fetched = Some(Instant::now());
        Ok(())
    }

    /// Refresh when the table is older than the refresh interval; one caller at a time does
    /// it, the others go on with the table they have.
    async fn refresh_if_stale(&self) {
        let stale = self.lock().fetched.is_none_or(|fetched| fetched.elapsed() >= self.options.refresh_interval);
        if stale && !self.refreshing.swap(true, Ordering::AcqRel) {
            if let Err(error) = self.refresh().await {
                tracing::debug!(%error, "listing replica deployments failed");
                // Try again at the next interval rather than on every read.
                self.lock().fetched = Some(Instant::now());
            }
            self.refreshing.store(false, Ordering::Release);
        }
    }

    /// Make the next read refresh the table.
    fn mark_stale(&self) {
        self.lock().fetched = None;
    }

    /// A live, not suspect, not yet tried instance of the deployment owning `directory`.
    fn pick(&self, directory: u64, tried: &[u64]) -> Option<(u64, ReplicaApi)> {
        let mut state = self.lock();
        let deployments = state.table.deployments;
        if deployments == 0 {
            return None;
        }
        let deployment = deployment_of(directory, deployments);
        let now = Instant::now();
        let candidates: Vec<u64> = state
            .table
            .instances
            .get(deployment as usize)
            .map(|instances| {
                instances
                    .iter()
                    .map(|instance| instance.instance)
                    .filter(|instance| !tried.contains(instance))
                    .filter(|instance| state.suspect_until.get(instance).is_none_or(|until| *until <= now))
                    .collect()
            })
            .unwrap_or_default();
        if candidates.is_empty() {
            let no_instances = state.table.instances.get(deployment as usize).is_none_or(Vec::is_empty);
            if no_instances && state.last_wake.get(&deployment).is_none_or(|at| at.elapsed() >= ROUTING_WAKE_INTERVAL) {
                state.last_wake.insert(deployment, now);
                let mut coordinator = self.coordinator.clone();
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(async move {
                        let _ = coordinator.wake(replica_pb::WakeRequest { deployment }).await;
                    });
                }
            }
            return None;
        }
        state.next_pick = state.next_pick.wrapping_add(1);
        let instance = candidates[state.next_pick % candidates.len()];
        state.clients.get(&instance).map(|client| (instance, client.clone()))
    }

    fn mark_suspect(&self, instance: u64) {
        let until = Instant::now() + self.options.suspect_duration;
        self.lock().suspect_until.insert(instance, until);
        self.stats.replica_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Try instances of the deployment owning `directory` with backoff and jitter.
    async fn on_replicas<T, Call, Reply>(&self, directory: u64, mut call: Call) -> Attempt<T>
    where
        Call: FnMut(ReplicaApi) -> Reply,
        Reply: Future<Output = Result<T, Status>>,
    {
        self.refresh_if_stale().await;
        let mut tried = Vec::new();
        let mut backoff = self.options.backoff_initial;
        for attempt in 0..self.options.attempts_max {
            if attempt > 0 {
                // Full jitter: clients that failed together do not come back together.
                let pause = rand::rng().random_range(Duration::ZERO..=backoff);
                tokio::time::sleep(pause).await;
                backoff = (backoff * 2).min(self.options.backoff_max);
            }
            let Some((instance, client)) = self.pick(directory, &tried) else { break };
            tried.push(instance);
            match tokio::time::timeout(self.options.request_timeout, call(client)).await {
                Ok(Ok(value)) => return Attempt::Answered(Ok(value), instance),
                Ok(Err(status)) if is_answer(&status) => return Attempt::Answered(Err(status), instance),
                Ok(Err(status)) => {
                    tracing::debug!(instance, code = ?status.code(), message = status.message(), "replica failed");
                    self.mark_suspect(instance);
                }
                Err(_) => {
                    tracing::debug!(instance, "replica timed out");
                    self.mark_suspect(instance);
                }
            }
        }
        if !tried.is_empty() {
            self.mark_stale();
        }
        Attempt::Exhausted
    }

    fn count_answer(&self, cached: bool) {
        self.stats.replica_answers.fetch_add(1, Ordering::Relaxed);
        if cached {
            self.stats.replica_cache_answers.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// lookup(2) of `name` in `parent`.
    pub async fn lookup(&self, parent: u64, name: &[u8]) -> Result<RoutedAttr, Status> {
        if let Some(answer) = self.try_lookup(parent, name).await {
            return answer;
        }
        self.stats.mds_fallbacks.fetch_add(1, Ordering::Relaxed);
        let request = pb::EntryRequest { parent, name: name.to_vec() };
        let reply = self.mds.clone().lookup(request).await?.into_inner();
        let attr = reply.attr.ok_or_else(|| Status::internal("MDS reply without attributes"))?;
        Ok(RoutedAttr { attr, home: None, source: ReadSource::Mds })
    }

    /// [`RoutedReader::lookup`] from replicas only: None when no instance answered (none
    /// listed, or every attempt failed), and the caller reads from the MDS its own way.
    pub async fn try_lookup(&self, parent: u64, name: &[u8]) -> Option<Result<RoutedAttr, Status>> {
        let request = pb::EntryRequest { parent, name: name.to_vec() };
        let attempt = self
            .on_replicas(parent, |mut client| {
                let request = request.clone();
                async move { client.lookup(request).await }
            })
            .await;
        self.routed_attr(attempt)
    }

    /// getattr of `ino`, routed by `home` (the directory it lives in) when known, else by the
    /// inode itself (which is its own home only for the root; such a read is correct but
    /// usually not cached).
    pub async fn getattr(&self, ino: u64, home: Option<u64>) -> Result<RoutedAttr, Status> {
        if let Some(answer) = self.try_getattr(ino, home).await {
            return answer;
        }
        self.stats.mds_fallbacks.fetch_add(1, Ordering::Relaxed);
        let reply = self.mds.clone().get_attr(pb::InoRequest { ino }).await?.into_inner();
        let attr = reply.attr.ok_or_else(|| Status::internal("MDS reply without attributes"))?;
        Ok(RoutedAttr { attr, home: None, source: ReadSource::Mds })
    }

    /// [`RoutedReader::getattr`] from replicas only (None: read from the MDS).
    pub async fn try_getattr(&self, ino: u64, home: Option<u64>) -> Option<Result<RoutedAttr, Status>> {
        let request = pb::InoRequest { ino };
        let attempt =
            self.on_replicas(home.unwrap_or(ino), |mut client| async move { client.get_attr(request).await }).await;
        self.routed_attr(attempt)
    }

    fn routed_attr(
        &self,
        attempt: Attempt<tonic::Response<replica_pb::ReplicaAttrReply>>,
    ) -> Option<Result<RoutedAttr, Status>> {
        let Attempt::Answered(reply, instance) = attempt else { return None };
        let answer = reply.and_then(|reply| {
            let reply = reply.into_inner();
            let cached = reply.source == replica_pb::Source::Cache as i32;
            self.count_answer(cached);
            let attr = reply.attr.ok_or_else(|| Status::internal("replica reply without attributes"))?;
            Ok(RoutedAttr { attr, home: Some(reply.home), source: ReadSource::Replica { instance, cached } })
        });
        Some(answer)
    }

    /// One readdir page of `ino`: up to `limit` entries after the name `after`.
    pub async fn readdir(&self, ino: u64, after: &[u8], limit: u32, plus: bool) -> Result<RoutedPage, Status> {
        if let Some(answer) = self.try_readdir(ino, after, limit, plus).await {
            return answer;
        }
        self.stats.mds_fallbacks.fetch_add(1, Ordering::Relaxed);
        let request = pb::ReaddirRequest { ino, after: after.to_vec(), limit, plus };
        let reply = self.mds.clone().readdir(request).await?.into_inner();
        Ok(RoutedPage { entries: reply.entries, end: reply.end, source: ReadSource::Mds })
    }

    /// [`RoutedReader::readdir`] from replicas only (None: read from the MDS).
    pub async fn try_readdir(
        &self,
        ino: u64,
        after: &[u8],
        limit: u32,
        plus: bool,
    ) -> Option<Result<RoutedPage, Status>> {
        let request = pb::ReaddirRequest { ino, after: after.to_vec(), limit, plus };
        let attempt = self
            .on_replicas(ino, |mut client| {
                let request = request.clone();
                async move { client.readdir(request).await }
            })
            .await;
        let Attempt::Answered(reply, instance) = attempt else { return None };
        Some(reply.map(|reply| {
            let reply = reply.into_inner();
            let cached = reply.source == replica_pb::Source::Cache as i32;
            self.count_answer(cached);
            RoutedPage { entries: reply.entries, end: reply.end, source: ReadSource::Replica { instance, cached } }
        }))
    }

    /// Whether a status is a failure worth reporting as EIO rather than an errno answer.
    pub fn is_transport_failure(status: &Status) -> bool {
        !is_answer(status) && matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled)
    }
}
