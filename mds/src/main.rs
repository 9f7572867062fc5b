//! The `cudele-mds` command: parse options, set up logging and metrics, run the server — or,
//! with the `replica` subcommand, one metadata cache replica instance.
//!
//! `cudele-mds --listen ADDR --data-dir DIR ...` (no subcommand) runs the server, exactly as
//! `cudele-mds serve ...` does.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use cudele_journal::store::StoreOptions;
use cudele_mds::persist::PersistConfig;
use cudele_mds::replica::instance::{run_instance, InstanceConfig};
use cudele_mds::replica::settings::{
    InstanceOptions, ReplicaSettings, INSTANCE_CACHE_ITEMS_MAX_DEFAULT, INSTANCE_CONCURRENCY_LIMIT_DEFAULT,
    INSTANCE_QUEUE_LENGTH_MAX_DEFAULT,
};
use cudele_mds::run::{run, MdsConfig};
use cudele_proto::transport::{ClientTls, ServerTls};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::watch;

/// Worker threads of a replica instance's runtime (many instances share a machine).
const REPLICA_WORKER_THREADS: usize = 2;

/// The cudele metadata server: one authority for the namespace, journaled to an object store.
#[derive(Parser, Debug)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeOptions,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the metadata server (also what `cudele-mds` without a subcommand does).
    Serve(Box<ServeOptions>),
    /// Run one metadata cache replica instance: it registers with the MDS, caches and serves
    /// lookup/getattr/readdir for one deployment, and follows the MDS's invalidations. The
    /// MDS's autoscaler starts these itself; start one by hand to add fixed capacity.
    Replica(Box<ReplicaOptions>),
}

#[derive(Args, Debug)]
struct ServeOptions {
    /// Address to serve gRPC on (port 0 picks a free port; the chosen address is printed and
    /// written to DATA_DIR/mds.addr).
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Local state: the RocksDB metadata store and, by default, the object directory. Required.
    // Optional to clap only so that `cudele-mds replica ...` parses; `serve` checks it.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Where the journal, snapshots and file data live: file:///dir, memory://, s3://bucket/prefix.
    /// Default: DATA_DIR/objects.
    #[arg(long)]
    object_store: Option<String>,
    /// S3 endpoint, e.g. http://127.0.0.1:9000 (also AWS_ENDPOINT_URL).
    #[arg(long, help_heading = "S3")]
    s3_endpoint: Option<String>,
    /// S3 region (also AWS_REGION).
    #[arg(long, help_heading = "S3")]
    s3_region: Option<String>,
    /// Allow plain HTTP to the S3 endpoint.
    #[arg(long, help_heading = "S3")]
    s3_allow_http: bool,
    /// File holding the shared secret clients must present (mode 0600 or stricter).
    /// Required unless --insecure.
    #[arg(long, help_heading = "Security")]
    token_file: Option<PathBuf>,
    /// File holding the operators' secret (admin role: operator merges with `cudele journal
    /// apply`, Dump, replica instances started by hand). Without it nobody is admin.
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// Run without --token-file: admit every client that can connect (a development MDS).
    #[arg(long, help_heading = "Security")]
    insecure: bool,
    #[command(flatten)]
    tls: TlsArgs,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9100).
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Session lease: a client that sends no heartbeat for this long is expired.
    #[arg(long, default_value_t = 10_000, help_heading = "Tuning")]
    lease_ms: u64,
    /// How long a write waits for other clients to acknowledge an invalidation.
    #[arg(long, default_value_t = 5_000, help_heading = "Tuning")]
    invalidation_ack_timeout_ms: u64,
    /// After a restart, the longest namespace operations wait for the sessions known before it
    /// to reconnect (replay creates acknowledged early); 0 turns the reconnect phase off.
    #[arg(long, default_value_t = cudele_mds::reconnect::RECONNECT_TIMEOUT_DEFAULT_MS, help_heading = "Tuning")]
    reconnect_timeout_ms: u64,
    /// How often durable journal events are applied to the metadata store.
    #[arg(long, default_value_t = 1_000, help_heading = "Tuning")]
    flush_interval_ms: u64,
    /// How often a snapshot is written to the object store (then covered segments are trimmed).
    #[arg(long, default_value_t = 30_000, help_heading = "Tuning")]
    snapshot_interval_ms: u64,
    #[command(flatten)]
    replicas: ReplicaArgs,
}

/// Elastic metadata cache replicas (DESIGN.md §7).
#[derive(Args, Debug)]
struct ReplicaArgs {
    /// Cache deployments the namespace is partitioned into (by parent directory); 0 turns
    /// replicas off.
    #[arg(long, default_value_t = 0, help_heading = "Replicas")]
    replica_deployments: u32,
    /// Instances each deployment keeps at least (0: a deployment without demand for
    /// --replica-idle-ms runs none, and its reads go to the MDS until a client wakes it).
    #[arg(long, default_value_t = 1, help_heading = "Replicas")]
    replica_min: u32,
    /// Instances each deployment runs at most.
    #[arg(long, default_value_t = 4, help_heading = "Replicas")]
    replica_max: u32,
    /// Average concurrent requests (in service or waiting) per instance the autoscaler aims at.
    #[arg(long, default_value_t = 4.0, help_heading = "Replicas")]
    replica_target_concurrency: f64,
    /// Least time between two scaling decisions of one deployment.
    #[arg(long, default_value_t = 2_000, help_heading = "Replicas")]
    replica_cooldown_ms: u64,
    /// The demand averaged over this window sets the instance count, up and down.
    #[arg(long, default_value_t = 6_000, help_heading = "Replicas")]
    replica_stable_window_ms: u64,
    /// The demand averaged over this window scales up at once (panic) when it reaches
    /// --replica-panic-threshold times what the current instances should carry.
    #[arg(long, default_value_t = 1_000, help_heading = "Replicas")]
    replica_panic_window_ms: u64,
    /// Panic when the short window's demand reaches this many times the instances' target.
    #[arg(long, default_value_t = 2.0, help_heading = "Replicas")]
    replica_panic_threshold: f64,
    /// With --replica-min 0: how long a deployment must have had no demand at all before its
    /// last instance is stopped.
    #[arg(long, default_value_t = 10_000, help_heading = "Replicas")]
    replica_idle_ms: u64,
    /// An instance without a heartbeat for this long is dead (and a write that found it
    /// unresponsive waits this long at most).
    #[arg(long, default_value_t = 2_000, help_heading = "Replicas")]
    replica_lease_ms: u64,
    /// How long a write waits for an instance's invalidation ACK before declaring it dead.
    #[arg(long, default_value_t = 500, help_heading = "Replicas")]
    replica_ack_timeout_ms: u64,
    /// How often the autoscaler decides.
    #[arg(long, default_value_t = 250, help_heading = "Replicas")]
    replica_autoscale_interval_ms: u64,
    /// Requests one instance serves at once.
    #[arg(long, default_value_t = INSTANCE_CONCURRENCY_LIMIT_DEFAULT, help_heading = "Replicas")]
    replica_concurrency_limit: u32,
    /// Requests waiting per instance before it refuses more.
    #[arg(long, default_value_t = INSTANCE_QUEUE_LENGTH_MAX_DEFAULT, help_heading = "Replicas")]
    replica_queue_length_max: u32,
    /// Artificial service time per request, to bound each instance's capacity (benchmarks).
    #[arg(long, default_value_t = 0, help_heading = "Replicas")]
    replica_service_time_us: u64,
    /// Cached items per instance.
    #[arg(long, default_value_t = INSTANCE_CACHE_ITEMS_MAX_DEFAULT, help_heading = "Replicas")]
    replica_cache_items_max: usize,
    /// Host launched instances listen on.
    #[arg(long, default_value = "127.0.0.1", help_heading = "Replicas")]
    replica_listen_host: String,
}

/// TLS for gRPC (rustls). Without --tls-cert the server speaks plaintext gRPC.
#[derive(Args, Debug)]
struct TlsArgs {
    /// Serve gRPC over TLS with this PEM certificate (chain); needs --tls-key. Replica
    /// instances the MDS launches serve with it too, so it must name their host as well.
    #[arg(long, requires = "tls_key", help_heading = "Security")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert (mode 0600 or stricter).
    #[arg(long, requires = "tls_cert", help_heading = "Security")]
    tls_key: Option<PathBuf>,
    /// PEM CA certificate that issued the servers' certificates: verifies the MDS (replica
    /// instances) and replica instances (the MDS, when it sends invalidations). Passed on to
    /// the instances the MDS launches.
    #[arg(long, help_heading = "Security")]
    tls_ca: Option<PathBuf>,
}

impl TlsArgs {
    /// The server identity (None without --tls-cert) and the client CA (None without --tls-ca).
    fn load(&self) -> Result<(Option<ServerTls>, Option<ClientTls>)> {
        let server = ServerTls::from_optional_files(self.tls_cert.as_deref(), self.tls_key.as_deref())?;
        let client = ClientTls::from_optional_file(self.tls_ca.as_deref())?;
        Ok((server, client))
    }
}

#[derive(Args, Debug)]
struct ReplicaOptions {
    /// The MDS to register with (host:port).
    #[arg(long)]
    mds: String,
    /// The deployment (0..N-1) this instance caches.
    #[arg(long)]
    deployment: u32,
    /// Address to serve on (port 0 picks a free port; it is printed and registered).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// File holding the client token (the MDS's `--token-file`, mode 0600 or stricter): what
    /// mounts present here.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// File holding what this instance presents to the MDS: the admin token, for an instance
    /// started by hand (instances the MDS launches get their credential from it, in
    /// CUDELE_REPLICA_TOKEN).
    #[arg(long)]
    mds_token_file: Option<PathBuf>,
    /// Serve TLS with --tls-cert and --tls-key; dial the MDS over TLS verified with --tls-ca.
    #[command(flatten)]
    tls: TlsArgs,
    /// Requests served at once.
    #[arg(long, default_value_t = INSTANCE_CONCURRENCY_LIMIT_DEFAULT)]
    concurrency_limit: u32,
    /// Requests waiting for a slot before more are refused.
    #[arg(long, default_value_t = INSTANCE_QUEUE_LENGTH_MAX_DEFAULT)]
    queue_length_max: u32,
    /// Artificial time each request holds its slot (bounds capacity; millisecond resolution).
    #[arg(long, default_value_t = 0)]
    service_time_us: u64,
    /// Cached items before eviction.
    #[arg(long, default_value_t = INSTANCE_CACHE_ITEMS_MAX_DEFAULT)]
    cache_items_max: usize,
    /// Set by the MDS's autoscaler for instances it starts.
    #[arg(long, default_value_t = 0)]
    launch_id: u64,
    /// Exit when the MDS stays unreachable this long.
    #[arg(long, default_value_t = 30_000)]
    mds_unreachable_exit_ms: u64,
}

fn read_token(path: Option<&PathBuf>) -> Result<Option<String>> {
    path.map(|path| {
        cudele_proto::auth::read_token_file(path).with_context(|| format!("reading token file {}", path.display()))
    })
    .transpose()
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Serve(options)) => serve(*options),
        Some(Command::Replica(options)) => replica(*options),
        None => serve(cli.serve),
    }
}

/// Stop when SIGINT or SIGTERM arrives.
fn stop_on_signals(stop: watch::Sender<bool>) {
    tokio::spawn(async move {
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        let _ = stop.send(true);
    });
}

fn serve(options: ServeOptions) -> Result<()> {
    let Some(data_dir) = options.data_dir else { bail!("--data-dir is required (see --help)") };
    if options.token_file.is_none() && !options.insecure {
        bail!(
            "no --token-file: refusing to serve without authentication; give --token-file FILE, or --insecure to \
             admit every client that can connect"
        );
    }
    // Everything the MDS creates (metadata store, mds.addr, a local object directory's
    // segments and snapshots) is for its owner only.
    // SAFETY: umask(2) only sets the process's file mode creation mask; it cannot fail.
    unsafe {
        libc::umask(cudele_mds::run::MDS_UMASK as libc::mode_t);
    }
    let token = read_token(options.token_file.as_ref())?;
    let (tls, client_tls) = options.tls.load()?;
    let replicas = &options.replicas;
    let config = MdsConfig {
        listen: options.listen,
        data_dir,
        object_store: options.object_store,
        store_options: StoreOptions {
            endpoint: options.s3_endpoint,
            region: options.s3_region,
            allow_http: options.s3_allow_http,
            ..StoreOptions::default()
        },
        token,
        admin_token: read_token(options.admin_token_file.as_ref())?,
        tls,
        client_tls,
        lease: Duration::from_millis(options.lease_ms),
        invalidation_ack_timeout: Duration::from_millis(options.invalidation_ack_timeout_ms),
        reconnect_timeout: Duration::from_millis(options.reconnect_timeout_ms),
        persist: PersistConfig {
            flush_interval: Duration::from_millis(options.flush_interval_ms),
            snapshot_interval: Duration::from_millis(options.snapshot_interval_ms),
        },
        replicas: ReplicaSettings {
            deployments: replicas.replica_deployments,
            min_instances: replicas.replica_min,
            max_instances: replicas.replica_max,
            target_concurrency: replicas.replica_target_concurrency,
            cooldown: Duration::from_millis(replicas.replica_cooldown_ms),
            stable_window: Duration::from_millis(replicas.replica_stable_window_ms),
            panic_window: Duration::from_millis(replicas.replica_panic_window_ms),
            panic_threshold: replicas.replica_panic_threshold,
            idle: Duration::from_millis(replicas.replica_idle_ms),
            lease: Duration::from_millis(replicas.replica_lease_ms),
            ack_timeout: Duration::from_millis(replicas.replica_ack_timeout_ms),
            autoscale_interval: Duration::from_millis(replicas.replica_autoscale_interval_ms),
            instance: InstanceOptions {
                concurrency_limit: replicas.replica_concurrency_limit,
                queue_length_max: replicas.replica_queue_length_max,
                service_time: Duration::from_micros(replicas.replica_service_time_us),
                cache_items_max: replicas.replica_cache_items_max,
                listen_host: replicas.replica_listen_host.clone(),
                token_file: options.token_file.clone(),
                tls_cert: options.tls.tls_cert.clone(),
                tls_key: options.tls.tls_key.clone(),
                tls_ca: options.tls.tls_ca.clone(),
            },
        },
    };
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        if let Some(address) = options.metrics {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .with_http_listener(address)
                .install()
                .context("starting the metrics endpoint")?;
        }
        let (stop, shutdown) = watch::channel(false);
        stop_on_signals(stop);
        run(config, shutdown, None).await
    })
}

fn replica(options: ReplicaOptions) -> Result<()> {
    let token = read_token(options.token_file.as_ref())?;
    let mds_token = match std::env::var(cudele_mds::replica::launcher::REPLICA_TOKEN_ENV) {
        Ok(launched_with) => Some(launched_with),
        Err(_) => read_token(options.mds_token_file.as_ref())?.or_else(|| token.clone()),
    };
    let (tls, mds_tls) = options.tls.load()?;
    let config = InstanceConfig {
        mds: options.mds,
        deployment: options.deployment,
        listen: options.listen,
        token,
        mds_token,
        tls,
        mds_tls,
        launch_id: options.launch_id,
        concurrency_limit: options.concurrency_limit,
        queue_length_max: options.queue_length_max,
        service_time: Duration::from_micros(options.service_time_us),
        cache_items_max: options.cache_items_max,
        mds_unreachable_exit: Duration::from_millis(options.mds_unreachable_exit_ms),
    };
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(REPLICA_WORKER_THREADS).enable_all().build()?;
    runtime.block_on(async move {
        let (stop, shutdown) = watch::channel(false);
        stop_on_signals(stop);
        run_instance(config, shutdown, None).await
    })
}
