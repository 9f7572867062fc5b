//! The replica process (`cudele-mds replica`): registers with the MDS, keeps its lease by
//! heartbeat (reporting load), serves lookup/getattr/readdir from its [`ReplicaCache`],
//! fills misses from the MDS's `Coordinator`, and drops entries on `Invalidate` before
//! acknowledging.
//!
//! Safety rules, each the instance's half of the coherence protocol:
//! - the cache is used (read or filled) only while the lease is valid, counted from when the
//!   last successful heartbeat was *sent* (the MDS counts from when it arrived, later), less
//!   a margin; a lapsed lease means reads go through to the MDS;
//! - "not registered" from the MDS means invalidations may have been missed: the cache is
//!   cleared before registering again;
//! - a fill is cached only if no invalidation of its keys arrived while it was in flight;
//! - invalidations never wait behind reads (they bypass the concurrency limit);
//! - on shutdown the cache is closed before deregistering.
//!
//! Capacity is bounded honestly: at most `concurrency_limit` requests are served at once,
//! each holding its slot for `service_time` (tokio timers have millisecond resolution, so
//! sub-millisecond service times round up), at most `queue_length_max` wait, the rest are
//! refused with RESOURCE_EXHAUSTED so clients go elsewhere.

use crate::replica::cache::{CachedAttr, InvalidationKeys, LookupHit, PageKey, ReplicaCache};
use anyhow::{bail, Context, Result};
use cudele_namespace::NsError;
use cudele_proto::auth::{token_matches, AUTHORIZATION_HEADER};
use cudele_proto::pb;
use cudele_proto::replica_pb::{self, coordinator_client::CoordinatorClient, replica_server};
use cudele_proto::routing::{is_answer, lazy_channel, CoordinatorApi, Headers};
use cudele_proto::status_from_error;
use cudele_proto::transport::{ClientTls, ServerTls};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Semaphore};
use tonic::{Code, Request, Response, Status};

/// Part of the lease kept as a safety margin against clock-rate differences.
const LEASE_MARGIN_DIVISOR: u32 = 10;
/// First pause between registration attempts; doubles up to [`REGISTER_BACKOFF_MAX`].
const REGISTER_BACKOFF_INITIAL: Duration = Duration::from_millis(50);
const REGISTER_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Deadline of one call to the MDS's coordinator (heartbeat, register, fill).
const COORDINATOR_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of deregistering at shutdown.
const DEREGISTER_TIMEOUT: Duration = Duration::from_secs(1);
/// Shortest heartbeat interval an instance accepts from the MDS.
const HEARTBEAT_INTERVAL_MIN: Duration = Duration::from_millis(10);
/// Concurrent requests accepted per client connection by the gRPC server.
const REQUESTS_PER_CONNECTION_MAX: usize = 4096;

#[derive(Debug, Clone)]
pub struct InstanceConfig {
    /// host:port of the MDS.
    pub mds: String,
    pub deployment: u32,
    pub listen: SocketAddr,
    /// The client token: what mounts (and the MDS) present to this instance.
    pub token: Option<String>,
    /// What this instance presents to the MDS's coordinator: the replica token of the MDS
    /// that launched it, or an operator's admin token for an instance started by hand.
    pub mds_token: Option<String>,
    /// Serve TLS with this certificate and key (None: plaintext).
    pub tls: Option<ServerTls>,
    /// Dial the MDS over TLS, verifying it with this CA (None: plaintext).
    pub mds_tls: Option<ClientTls>,
    pub launch_id: u64,
    pub concurrency_limit: u32,
    pub queue_length_max: u32,
    pub service_time: Duration,
    pub cache_items_max: usize,
    /// Exit when the MDS cannot be reached for this long (an orphan serves nobody).
    pub mds_unreachable_exit: Duration,
}

/// Average concurrency over a window: the integral of in-flight requests over time.
struct DemandMeter {
    in_flight: u64,
    since: Instant,
    window_start: Instant,
    request_seconds: f64,
}

impl DemandMeter {
    fn advance(&mut self, now: Instant) {
        self.request_seconds += self.in_flight as f64 * now.saturating_duration_since(self.since).as_secs_f64();
        self.since = now;
    }

    fn take_average(&mut self, now: Instant) -> f64 {
        self.advance(now);
        let window = now.saturating_duration_since(self.window_start).as_secs_f64();
        let average = if window > 0.0 { self.request_seconds / window } else { self.in_flight as f64 };
        self.request_seconds = 0.0;
        self.window_start = now;
        average
    }
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    invalidations: AtomicU64,
    rejected: AtomicU64,
}

/// The registration as the instance knows it.
struct Membership {
    instance: u64,
    lease: Duration,
    /// The cache may be used until then.
    valid_until: Option<Instant>,
    heartbeat_interval: Duration,
}

struct Shared {
    config: InstanceConfig,
    address: String,
    coordinator: CoordinatorApi,
    cache: Mutex<ReplicaCache>,
    membership: Mutex<Membership>,
    slots: Semaphore,
    waiting: AtomicU64,
    demand: Mutex<DemandMeter>,
    counters: Counters,
    serving: AtomicBool,
}

/// Counts a request in flight for the demand meter until dropped.
struct InFlight<'a> {
    shared: &'a Shared,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut meter = self.shared.demand.lock().expect("demand lock poisoned");
        meter.advance(Instant::now());
        meter.in_flight = meter.in_flight.saturating_sub(1);
    }
}

impl Shared {
    fn cache(&self) -> std::sync::MutexGuard<'_, ReplicaCache> {
        self.cache.lock().expect("replica cache lock poisoned")
    }

    fn membership(&self) -> std::sync::MutexGuard<'_, Membership> {
        self.membership.lock().expect("membership lock poisoned")
    }

    fn leased(&self) -> bool {
        self.membership().valid_until.is_some_and(|until| Instant::now() < until)
    }

    /// Wait for a slot, hold it for the service time, count the request.
    async fn admit(&self) -> Result<(InFlight<'_>, tokio::sync::SemaphorePermit<'_>), Status> {
        if !self.serving.load(Ordering::Acquire) {
            return Err(Status::unavailable("replica instance is shutting down"));
        }
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        {
            let mut meter = self.demand.lock().expect("demand lock poisoned");
            meter.advance(Instant::now());
            meter.in_flight += 1;
        }
        let in_flight = InFlight { shared: self };
        let permit = match self.slots.try_acquire() {
            Ok(permit) => permit,
            Err(_) => {
                if self.waiting.fetch_add(1, Ordering::AcqRel) >= u64::from(self.config.queue_length_max) {
                    self.waiting.fetch_sub(1, Ordering::AcqRel);
                    self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                    return Err(Status::resource_exhausted("replica instance is overloaded"));
                }
                let permit = self.slots.acquire().await;
                self.waiting.fetch_sub(1, Ordering::AcqRel);
                permit.map_err(|_| Status::unavailable("replica instance is shutting down"))?
            }
        };
        if !self.config.service_time.is_zero() {
            tokio::time::sleep(self.config.service_time).await;
        }
        Ok((in_flight, permit))
    }

    fn load(&self) -> replica_pb::InstanceLoad {
        let (in_flight, demand) = {
            let mut meter = self.demand.lock().expect("demand lock poisoned");
            let average = meter.take_average(Instant::now());
            (meter.in_flight, average)
        };
        replica_pb::InstanceLoad {
            in_flight,
            demand_milli: (demand * 1000.0).round() as u64,
            requests_total: self.counters.requests.load(Ordering::Relaxed),
            hits_total: self.counters.hits.load(Ordering::Relaxed),
            misses_total: self.counters.misses.load(Ordering::Relaxed),
            invalidations_total: self.counters.invalidations.load(Ordering::Relaxed),
            rejected_total: self.counters.rejected.load(Ordering::Relaxed),
            cached_items: self.cache().items() as u64,
        }
    }

    /// Register (again), clearing the cache first. Retries with backoff until it succeeds,
    /// the MDS stays unreachable too long, or it refuses for good.
    async fn register(&self) -> Result<()> {
        self.cache().clear();
        self.membership().valid_until = None;
        let started = Instant::now();
        let mut backoff = REGISTER_BACKOFF_INITIAL;
        loop {
            let sent = Instant::now();
            let request = replica_pb::RegisterRequest {
                deployment: self.config.deployment,
                address: self.address.clone(),
                pid: std::process::id(),
                launch_id: self.config.launch_id,
            };
            let result =
                tokio::time::timeout(COORDINATOR_CALL_TIMEOUT, self.coordinator.clone().register(request)).await;
            match result {
                Ok(Ok(reply)) => {
                    let reply = reply.into_inner();
                    if self.config.deployment >= reply.deployments {
                        bail!(
                            "deployment {} does not exist (the MDS has {})",
                            self.config.deployment,
                            reply.deployments
                        );
                    }
                    let lease = Duration::from_millis(reply.lease_ms);
                    self.cache().set_deployments(reply.deployments);
                    let mut membership = self.membership();
                    membership.instance = reply.instance;
                    membership.heartbeat_interval = Duration::from_millis(reply.heartbeat_interval_ms)
                        .clamp(HEARTBEAT_INTERVAL_MIN, lease.max(HEARTBEAT_INTERVAL_MIN));
                    membership.lease = lease;
                    membership.valid_until = Some(sent + lease - lease / LEASE_MARGIN_DIVISOR);
                    tracing::info!(
                        instance = reply.instance,
                        deployment = self.config.deployment,
                        "registered with the MDS"
                    );
                    return Ok(());
                }
                Ok(Err(status)) if status.code() == Code::FailedPrecondition => {
                    bail!("the MDS refused the registration: {}", status.message())
                }
                Ok(Err(status)) => tracing::debug!(%status, "registration failed"),
                Err(_) => tracing::debug!("registration timed out"),
            }
            if started.elapsed() >= self.config.mds_unreachable_exit {
                bail!("the MDS at {} was unreachable for {:?}", self.config.mds, self.config.mds_unreachable_exit);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(REGISTER_BACKOFF_MAX);
        }
    }

    /// Heartbeat every `interval` until shutdown; re-register when the MDS forgot us.
    async fn keep_lease(&self, interval: Duration, mut shutdown: watch::Receiver<bool>) -> Result<()> {
        let mut last_contact = Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
            }
            let sent = Instant::now();
            let instance = self.membership().instance;
            let request = replica_pb::HeartbeatRequest { instance, load: Some(self.load()) };
            let result =
                tokio::time::timeout(COORDINATOR_CALL_TIMEOUT, self.coordinator.clone().heartbeat(request)).await;
            match result {
                Ok(Ok(reply)) => {
                    last_contact = Instant::now();
                    let lease = Duration::from_millis(reply.into_inner().lease_ms);
                    let mut membership = self.membership();
                    // A re-registration may have happened meanwhile; only renew our own lease.
                    if membership.instance == instance {
                        membership.lease = lease;
                        membership.valid_until = Some(sent + lease - lease / LEASE_MARGIN_DIVISOR);
                    }
                }
                Ok(Err(status)) if status.code() == Code::NotFound => {
                    last_contact = Instant::now();
                    tracing::warn!(
                        instance,
                        "the MDS no longer knows this instance; dropping the cache and registering again"
                    );
                    self.register().await?;
                }
                Ok(Err(status)) => tracing::debug!(%status, "heartbeat failed"),
                Err(_) => tracing::debug!("heartbeat timed out"),
            }
            if last_contact.elapsed() >= self.config.mds_unreachable_exit {
                bail!("the MDS at {} was unreachable for {:?}", self.config.mds, self.config.mds_unreachable_exit);
            }
        }
    }
}

/// Read through the MDS: a status without errno from the coordinator becomes UNAVAILABLE so
/// the client tries elsewhere; an errno is the namespace's answer.
fn fill_failure(status: Status) -> Status {
    if is_answer(&status) {
        status
    } else {
        Status::unavailable(format!("filling from the MDS failed: {}", status.message()))
    }
}

fn source(cached: bool) -> i32 {
    if cached {
        replica_pb::Source::Filled as i32
    } else {
        replica_pb::Source::PassedThrough as i32
    }
}

pub struct ReplicaService {
    shared: Arc<Shared>,
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl replica_server::Replica for ReplicaService {
    async fn lookup(&self, request: Request<pb::EntryRequest>) -> Reply<replica_pb::ReplicaAttrReply> {
        let shared = &self.shared;
        let request = request.into_inner();
        let _admitted = shared.admit().await?;
        let leased = shared.leased();
        if leased {
            match shared.cache().lookup(request.parent, &request.name) {
                Some(LookupHit::Found(found)) => {
                    shared.counters.hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(Response::new(replica_pb::ReplicaAttrReply {
                        attr: Some(found.attr),
                        home: found.home,
                        source: replica_pb::Source::Cache as i32,
                    }));
                }
                Some(LookupHit::Missing) => {
                    shared.counters.hits.fetch_add(1, Ordering::Relaxed);
                    return Err(status_from_error(NsError::NotFound));
                }
                None => {}
            }
        }
        shared.counters.misses.fetch_add(1, Ordering::Relaxed);
        let started = shared.cache().generation();
        let result = shared.coordinator.clone().fill_lookup(request.clone()).await;
        let cache_usable = leased && shared.leased();
        match result {
            Ok(reply) => {
                let reply = reply.into_inner();
                let attr = reply.attr.ok_or_else(|| Status::internal("fill without attributes"))?;
                let found = CachedAttr { attr, home: reply.home };
                let cached =
                    cache_usable && shared.cache().fill_lookup(started, request.parent, &request.name, Some(&found));
                Ok(Response::new(replica_pb::ReplicaAttrReply {
                    attr: Some(found.attr),
                    home: found.home,
                    source: source(cached),
                }))
            }
            Err(status) => {
                if cache_usable && cudele_proto::error_from_status(&status) == NsError::NotFound && is_answer(&status) {
                    shared.cache().fill_lookup(started, request.parent, &request.name, None);
                }
                Err(fill_failure(status))
            }
        }
    }

    async fn get_attr(&self, request: Request<pb::InoRequest>) -> Reply<replica_pb::ReplicaAttrReply> {
        let shared = &self.shared;
        let ino = request.into_inner().ino;
        let _admitted = shared.admit().await?;
        let leased = shared.leased();
        if leased {
            if let Some(found) = shared.cache().getattr(ino) {
                shared.counters.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(Response::new(replica_pb::ReplicaAttrReply {
                    attr: Some(found.attr),
                    home: found.home,
                    source: replica_pb::Source::Cache as i32,
                }));
            }
        }
        shared.counters.misses.fetch_add(1, Ordering::Relaxed);
        let started = shared.cache().generation();
        let reply = shared.coordinator.clone().fill_get_attr(pb::InoRequest { ino }).await.map_err(fill_failure)?;
        let reply = reply.into_inner();
        let attr = reply.attr.ok_or_else(|| Status::internal("fill without attributes"))?;
        let found = CachedAttr { attr, home: reply.home };
        let cached = leased && shared.leased() && shared.cache().fill_getattr(started, &found);
        Ok(Response::new(replica_pb::ReplicaAttrReply {
            attr: Some(found.attr),
            home: found.home,
            source: source(cached),
        }))
    }

    async fn readdir(&self, request: Request<pb::ReaddirRequest>) -> Reply<replica_pb::ReplicaReaddirReply> {
        let shared = &self.shared;
        let request = request.into_inner();
        let _admitted = shared.admit().await?;
        let leased = shared.leased();
        if leased {
            if let Some((entries, end)) =
                shared.cache().readdir(request.ino, &request.after, request.limit, request.plus)
            {
                shared.counters.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(Response::new(replica_pb::ReplicaReaddirReply {
                    entries,
                    end,
                    source: replica_pb::Source::Cache as i32,
                }));
            }
        }
        shared.counters.misses.fetch_add(1, Ordering::Relaxed);
        let started = shared.cache().generation();
        let reply = shared.coordinator.clone().fill_readdir(request.clone()).await.map_err(fill_failure)?.into_inner();
        let cached = leased
            && shared.leased()
            && shared.cache().fill_readdir(
                started,
                PageKey { directory: request.ino, after: &request.after, limit: request.limit },
                &reply.entries,
                reply.end,
                &reply.homes,
            );
        Ok(Response::new(replica_pb::ReplicaReaddirReply {
            entries: reply.entries,
            end: reply.end,
            source: source(cached),
        }))
    }

    async fn invalidate(&self, request: Request<replica_pb::InvalidateRequest>) -> Reply<replica_pb::InvalidateReply> {
        let request = request.into_inner();
        let shared = &self.shared;
        let current = shared.membership().instance;
        if request.instance != current {
            // Meant for an earlier registration of this process (or a process that had this
            // address before): dropping is always safe, and the acknowledgement is true.
            tracing::debug!(current, meant = request.instance, "invalidation for another instance id; applying it");
        }
        let keys = InvalidationKeys {
            inodes: request.inodes,
            entries: request.entries.into_iter().map(|entry| (entry.parent, entry.name)).collect(),
            removed: request.removed,
            subtrees: request.subtrees,
            everything: false,
        };
        // Drop first; the reply is the acknowledgement.
        shared.cache().invalidate(&keys);
        shared.counters.invalidations.fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(replica_pb::InvalidateReply { id: request.id }))
    }

    async fn ping(&self, _request: Request<pb::Empty>) -> Reply<pb::Empty> {
        Ok(Response::new(pb::Empty {}))
    }

    async fn stats(&self, _request: Request<pb::Empty>) -> Reply<replica_pb::InstanceLoad> {
        let shared = &self.shared;
        Ok(Response::new(replica_pb::InstanceLoad {
            in_flight: shared.demand.lock().expect("demand lock poisoned").in_flight,
            requests_total: shared.counters.requests.load(Ordering::Relaxed),
            hits_total: shared.counters.hits.load(Ordering::Relaxed),
            misses_total: shared.counters.misses.load(Ordering::Relaxed),
            invalidations_total: shared.counters.invalidations.load(Ordering::Relaxed),
            rejected_total: shared.counters.rejected.load(Ordering::Relaxed),
            cached_items: shared.cache().items() as u64,
            demand_milli: 0,
        }))
    }
}

/// Run a replica instance until `shutdown` turns true (or the MDS stays unreachable).
/// `bound` receives the listening address.
pub async fn run_instance(
    config: InstanceConfig,
    mut shutdown: watch::Receiver<bool>,
    bound: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> Result<()> {
    let listener =
        tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    let address = listener.local_addr()?;
    // Before registering: a bad certificate must not leave a registered instance behind.
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = &config.tls {
        server = server
            .tls_config(tls.config())
            .with_context(|| format!("TLS with {} and {}", tls.cert_path.display(), tls.key_path.display()))?;
    }
    let channel =
        lazy_channel(&config.mds, config.mds_tls.as_ref()).with_context(|| format!("MDS address {}", config.mds))?;
    let coordinator =
        CoordinatorClient::with_interceptor(channel, Headers { token: config.mds_token.clone(), session: None });
    let now = Instant::now();
    let shared = Arc::new(Shared {
        address: address.to_string(),
        coordinator,
        // The deployment count is learnt at registration.
        cache: Mutex::new(ReplicaCache::new(config.deployment, 1, config.cache_items_max)),
        membership: Mutex::new(Membership {
            instance: 0,
            lease: Duration::ZERO,
            valid_until: None,
            heartbeat_interval: crate::replica::settings::HEARTBEAT_INTERVAL_MAX,
        }),
        slots: Semaphore::new(config.concurrency_limit.max(1) as usize),
        waiting: AtomicU64::new(0),
        demand: Mutex::new(DemandMeter { in_flight: 0, since: now, window_start: now, request_seconds: 0.0 }),
        counters: Counters::default(),
        serving: AtomicBool::new(true),
        config: config.clone(),
    });
    shared.register().await?;
    println!("cudele-mds replica listening on {address}");
    if let Some(bound) = bound {
        let _ = bound.send(address);
    }

    let (stop_lease, lease_shutdown) = watch::channel(false);
    let lease_task = {
        let shared = shared.clone();
        let interval = shared.membership().heartbeat_interval;
        tokio::spawn(async move { shared.keep_lease(interval, lease_shutdown).await })
    };
    let token = config.token.clone();
    let authenticate = move |request: tonic::Request<()>| {
        if let Some(expected) = &token {
            let presented = request.metadata().get(AUTHORIZATION_HEADER).and_then(|value| value.to_str().ok());
            if !token_matches(presented, expected) {
                return Err(Status::unauthenticated("missing or wrong token"));
            }
        }
        Ok(request)
    };
    let service =
        replica_server::ReplicaServer::with_interceptor(ReplicaService { shared: shared.clone() }, authenticate);
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let (lease_failed_sender, mut lease_failed) = watch::channel(false);
    let lease_watch = tokio::spawn(async move {
        let outcome = lease_task.await;
        let _ = lease_failed_sender.send(true);
        outcome
    });
    let serve_shared = shared.clone();
    server
        .concurrency_limit_per_connection(REQUESTS_PER_CONNECTION_MAX)
        .tcp_nodelay(true)
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, async move {
            tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => {}
                _ = lease_failed.wait_for(|failed| *failed) => {}
            }
            // Stop serving from the cache before the MDS stops invalidating us.
            serve_shared.serving.store(false, Ordering::Release);
            serve_shared.cache().close();
            serve_shared.slots.close();
        })
        .await
        .context("serving gRPC")?;
    let _ = stop_lease.send(true);
    let instance = shared.membership().instance;
    let mut coordinator = shared.coordinator.clone();
    let deregister = coordinator.deregister(replica_pb::DeregisterRequest { instance, load: Some(shared.load()) });
    if tokio::time::timeout(DEREGISTER_TIMEOUT, deregister).await.is_err() {
        tracing::warn!("deregistering timed out; the MDS will expire the lease");
    }
    match lease_watch.await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(error))) => Err(error),
        Ok(Err(error)) => Err(anyhow::anyhow!("lease task failed: {error}")),
        Err(error) => Err(anyhow::anyhow!("lease watcher failed: {error}")),
    }
}
