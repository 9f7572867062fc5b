//! The `cudele-mds` command: parse options, set up logging and metrics, run the server.

use anyhow::{Context, Result};
use clap::Parser;
use cudele_journal::store::StoreOptions;
use cudele_mds::persist::PersistConfig;
use cudele_mds::run::{run, MdsConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The cudele metadata server: one authority for the namespace, journaled to an object store.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Options {
    /// Address to serve gRPC on (port 0 picks a free port; the chosen address is printed and
    /// written to DATA_DIR/mds.addr).
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Local state: the RocksDB metadata store and, by default, the object directory.
    #[arg(long)]
    data_dir: PathBuf,
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
    /// File holding the shared secret clients must present.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9100).
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Session lease: a client that sends no heartbeat for this long is expired.
    #[arg(long, default_value_t = 10_000, help_heading = "Tuning")]
    lease_ms: u64,
    /// How long a write waits for other clients to acknowledge an invalidation.
    #[arg(long, default_value_t = 5_000, help_heading = "Tuning")]
    invalidation_ack_timeout_ms: u64,
    /// How often durable journal events are applied to the metadata store.
    #[arg(long, default_value_t = 1_000, help_heading = "Tuning")]
    flush_interval_ms: u64,
    /// How often a snapshot is written to the object store (then covered segments are trimmed).
    #[arg(long, default_value_t = 30_000, help_heading = "Tuning")]
    snapshot_interval_ms: u64,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let options = Options::parse();
    let token = match &options.token_file {
        Some(path) => Some(
            cudele_proto::auth::read_token_file(path)
                .with_context(|| format!("reading token file {}", path.display()))?,
        ),
        None => None,
    };
    let config = MdsConfig {
        listen: options.listen,
        data_dir: options.data_dir,
        object_store: options.object_store,
        store_options: StoreOptions {
            endpoint: options.s3_endpoint,
            region: options.s3_region,
            allow_http: options.s3_allow_http,
            ..StoreOptions::default()
        },
        token,
        lease: Duration::from_millis(options.lease_ms),
        invalidation_ack_timeout: Duration::from_millis(options.invalidation_ack_timeout_ms),
        persist: PersistConfig {
            flush_interval: Duration::from_millis(options.flush_interval_ms),
            snapshot_interval: Duration::from_millis(options.snapshot_interval_ms),
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
        let (stop, shutdown) = tokio::sync::watch::channel(false);
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
        run(config, shutdown, None).await
    })
}
