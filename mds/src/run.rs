//! Configuration and wiring: open the stores, recover, start the background tasks and serve
//! gRPC until shutdown, then drain the journal.

use crate::journal_writer::JournalWriter;
use crate::metastore::{MetaStore, RocksStore};
use crate::persist::{PersistConfig, PersistProgress, Persister};
use crate::recovery::recover;
use crate::replica::settings::ReplicaSettings;
use crate::replica::wiring::ReplicaLayer;
use crate::server::Mds;
use crate::service::MdsService;
use crate::sessions::Sessions;
use anyhow::{Context, Result};
use cudele_journal::store::{JournalStore, StoreOptions};
use cudele_proto::auth::{Tokens, AUTHORIZATION_HEADER};
use cudele_proto::pb::mds_server::MdsServer;
use cudele_proto::replica_pb::coordinator_server::CoordinatorServer;
use cudele_proto::transport::{ClientTls, ServerTls};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Durable batches queued between the journal writer and the flusher.
const DURABLE_BATCH_QUEUE_LENGTH_MAX: usize = 1024;
/// Concurrent requests served per client connection (a mount runs at most a few hundred
/// at once: its FUSE threads and the kernel's background requests).
const REQUESTS_PER_CONNECTION_MAX: usize = 256;
/// The data dir's mode: the owner only.
pub const DATA_DIR_MODE: u32 = 0o700;
/// The process umask `cudele-mds serve` sets, so that every file it creates (metadata store,
/// mds.addr, journal segments and snapshots in a local object directory) is 0600 and every
/// directory 0700.
pub const MDS_UMASK: u32 = 0o077;

#[derive(Debug, Clone)]
pub struct MdsConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Object store URL; default: a directory `objects` under the data dir.
    pub object_store: Option<String>,
    pub store_options: StoreOptions,
    /// Shared secret clients must present; None accepts every client (as admin: `--insecure`).
    pub token: Option<String>,
    /// Secret operators present for admin calls (operator merges, Dump, replica
    /// registration by hand); None: no caller is admin unless `token` is None too.
    pub admin_token: Option<String>,
    /// Serve TLS with this certificate and key; None: plaintext gRPC.
    pub tls: Option<ServerTls>,
    /// The CA the MDS verifies replica instances with when it dials them.
    pub client_tls: Option<ClientTls>,
    pub lease: Duration,
    pub invalidation_ack_timeout: Duration,
    /// Longest the reconnect phase after a restart holds operations (`crate::reconnect`).
    pub reconnect_timeout: Duration,
    pub persist: PersistConfig,
    /// Elastic metadata cache replicas (off unless `deployments > 0`).
    pub replicas: ReplicaSettings,
}

impl MdsConfig {
    pub fn object_store_url(&self) -> Result<String> {
        match &self.object_store {
            Some(url) => Ok(url.clone()),
            None => {
                let directory = self.data_dir.join("objects");
                std::fs::create_dir_all(&directory)?;
                let absolute = directory.canonicalize()?;
                Ok(format!("file://{}", absolute.display()))
            }
        }
    }
}

/// Run the MDS until `shutdown` turns true. `bound` receives the listening address.
pub async fn run(
    config: MdsConfig,
    mut shutdown: watch::Receiver<bool>,
    bound: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> Result<()> {
    create_private_dir(&config.data_dir)?;
    let _lock = lock_data_dir(&config.data_dir)?;
    let url = config.object_store_url()?;
    let objects = Arc::new(
        JournalStore::open(&url, &config.store_options).with_context(|| format!("opening object store {url}"))?,
    );
    let metastore: Arc<dyn MetaStore> = Arc::new(RocksStore::open(&config.data_dir.join("metastore"))?);
    let recovered = recover(&metastore, &objects).await?;

    let progress = Arc::new(PersistProgress::default());
    progress.applied_seq.store(recovered.last_seq, Ordering::Relaxed);
    progress.snapshot_seq.store(recovered.snapshot_seq, Ordering::Relaxed);
    progress.segments_pending.store(recovered.segments_pending, Ordering::Relaxed);

    let journal = JournalWriter::new(recovered.last_seq + 1);
    let (durable_sender, durable_receiver) = mpsc::channel(DURABLE_BATCH_QUEUE_LENGTH_MAX);
    let (drain_sender, drain_receiver) = watch::channel(false);
    let writer_task = tokio::spawn(journal.clone().run(objects.clone(), durable_sender, drain_receiver.clone()));
    let persister = Persister {
        metastore: metastore.clone(),
        objects: objects.clone(),
        config: config.persist.clone(),
        progress: progress.clone(),
    };
    let persister_task = tokio::spawn(persister.run(durable_receiver, drain_receiver));

    let sessions = Sessions::new(config.lease, config.invalidation_ack_timeout);
    let replicas = ReplicaLayer::new(config.replicas.clone(), config.token.clone(), config.client_tls.clone())?;
    let mds = Arc::new(Mds::new(
        recovered.namespace,
        journal.clone(),
        sessions,
        progress,
        url.clone(),
        objects.clone(),
        replicas.coherence.clone(),
    ));
    let reaper_task = tokio::spawn(reap_expired_sessions(mds.clone(), shutdown.clone()));
    tokio::spawn(mds.reconnect.clone().end_after(config.reconnect_timeout));

    let listener =
        tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    let address = listener.local_addr()?;
    std::fs::write(config.data_dir.join("mds.addr"), address.to_string())?;
    let transport = if config.tls.is_some() { "tls" } else { "plaintext" };
    tracing::info!(%address, object_store = %url, events_replayed = recovered.replayed_events, transport, "cudele-mds serving");
    if config.tls.is_none() && !address.ip().is_loopback() {
        tracing::warn!(%address, "serving plaintext gRPC on a non-loopback address: tokens and metadata cross the \
                       network unencrypted (use --tls-cert and --tls-key)");
    }
    if config.token.is_none() {
        tracing::warn!(%address, "no --token-file: every client that can connect is admitted (--insecure)");
    }
    println!("cudele-mds listening on {address}");
    if let Some(bound) = bound {
        let _ = bound.send(address);
    }

    let tokens = Tokens {
        client: config.token.clone(),
        admin: config.admin_token.clone(),
        replica: replicas.replica_token.clone(),
    };
    // Every call is admitted with the role its token grants (docs/SECURITY.md); the
    // services read it from the request's extensions and refuse what the role may not do.
    let authenticate = move |mut request: tonic::Request<()>| {
        let presented = request.metadata().get(AUTHORIZATION_HEADER).and_then(|value| value.to_str().ok());
        let role = tokens.role_of(presented).ok_or_else(|| tonic::Status::unauthenticated("missing or wrong token"))?;
        request.extensions_mut().insert(role);
        Ok(request)
    };
    let service = tonic::service::interceptor::InterceptedService::new(
        MdsServer::new(MdsService { mds: mds.clone() })
            // Merge and Replay are the largest requests; every other call checks its own,
            // smaller bound (`service::REQUEST_BYTES_MAX`). Replies may be larger (a
            // decoupled subtree's snapshot).
            .max_decoding_message_size(crate::service::BULK_REQUEST_BYTES_MAX)
            .max_encoding_message_size(cudele_proto::MESSAGE_BYTES_MAX),
        authenticate.clone(),
    );
    let coordinator = CoordinatorServer::with_interceptor(replicas.coordinator_service(mds.clone()), authenticate);
    let autoscaler_task = replicas.spawn_autoscaler(address, shutdown.clone());
    // tonic applies `tcp_nodelay` only to listeners it binds itself; without it, Nagle holds
    // back small replies and invalidations by ~40 ms.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let mds_for_shutdown = mds.clone();
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = &config.tls {
        server = server
            .tls_config(tls.config())
            .with_context(|| format!("TLS with {} and {}", tls.cert_path.display(), tls.key_path.display()))?;
    }
    server
        .concurrency_limit_per_connection(REQUESTS_PER_CONNECTION_MAX)
        .add_service(service)
        .add_service(coordinator)
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
            // Graceful shutdown waits for open streams: end the push channels.
            mds_for_shutdown.sessions.end_subscriptions();
        })
        .await
        .context("serving gRPC")?;

    if let Some(task) = autoscaler_task {
        // It saw the same shutdown signal and stops its instances.
        let _ = task.await;
    }
    tracing::info!("shutting down: draining the journal");
    let _ = drain_sender.send(true);
    let _ = writer_task.await;
    let _ = persister_task.await;
    reaper_task.abort();
    Ok(())
}

async fn reap_expired_sessions(mds: Arc<Mds>, mut shutdown: watch::Receiver<bool>) {
    let period = (mds.sessions.lease / 4).max(Duration::from_millis(50));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = shutdown.changed() => return,
        }
        for session in mds.sessions.expired() {
            tracing::info!(session, "session lease expired");
            mds.expire_session(session).await;
        }
    }
}

/// Create the data dir (and its parents) accessible to the owner only, and make an existing
/// one so: the metadata store and the snapshots under it hold the whole namespace.
fn create_private_dir(data_dir: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DATA_DIR_MODE)
        .create(data_dir)
        .with_context(|| format!("creating data dir {}", data_dir.display()))?;
    let mode = std::fs::metadata(data_dir)?.permissions().mode() & 0o7777;
    if mode != DATA_DIR_MODE {
        tracing::info!(data_dir = %data_dir.display(), "data dir had mode {mode:04o}; making it {DATA_DIR_MODE:04o}");
        std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(DATA_DIR_MODE))
            .with_context(|| format!("chmod {DATA_DIR_MODE:o} {}", data_dir.display()))?;
    }
    Ok(())
}

/// Hold an exclusive lock on the data dir for the life of the process: two MDSs writing one
/// journal would interleave sequence numbers.
fn lock_data_dir(data_dir: &std::path::Path) -> Result<std::fs::File> {
    let path = data_dir.join("LOCK");
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
    file.try_lock()
        .map_err(|_| anyhow::anyhow!("{} is locked: another cudele-mds uses this data dir", path.display()))?;
    Ok(file)
}
