//! `cudele status` and `cudele gc`: operator commands that talk to the MDS directly.

use crate::data::gc::{collect_garbage, GcReport};
use crate::data::ChunkStore;
use crate::error::ClientError;
use crate::metadata::rpc::{connection, lazy_channel, Headers};
use crate::metadata::{Metadata, RemoteMetadata, RemoteOptions};
use crate::runtime::Blocking;
use crate::sync::Arc;
use cudele_journal::store::{JournalStore, StoreOptions};
use cudele_namespace::NsError;
use cudele_proto::pb;
use cudele_proto::transport::ClientTls;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

/// How long `cudele status` waits for the MDS.
pub const STATUS_TIMEOUT_MS: u64 = 5_000;

/// The token in `path`, if a path is given.
pub fn read_token(path: Option<&Path>) -> Result<Option<String>, ClientError> {
    path.map(|path| {
        cudele_proto::auth::read_token_file(path)
            .map_err(|cause| ClientError::TokenFile { path: path.display().to_string(), cause })
    })
    .transpose()
}

/// How an operator command reaches the MDS: its address, the token, the CA for TLS.
#[derive(Debug, Clone)]
pub struct MdsTarget {
    pub server: String,
    pub token: Option<String>,
    /// Connect over TLS, verifying the MDS's certificate with this CA.
    pub tls: Option<ClientTls>,
}

impl MdsTarget {
    /// Read the token file and the CA file (either may be absent).
    pub fn load(server: &str, token_file: Option<&Path>, tls_ca: Option<&Path>) -> Result<MdsTarget, ClientError> {
        Ok(MdsTarget {
            server: server.to_string(),
            token: read_token(token_file)?,
            tls: ClientTls::from_optional_file(tls_ca)?,
        })
    }

    /// Options of a session with this MDS.
    pub fn remote_options(&self) -> RemoteOptions {
        let mut options = RemoteOptions::new(self.server.clone(), self.token.clone());
        options.tls = self.tls.clone();
        options
    }
}

/// Ask the MDS for its status (no session needed).
pub fn fetch_status(target: &MdsTarget) -> Result<pb::StatusReply, ClientError> {
    let server = target.server.as_str();
    let runtime = Blocking::new("cudele-status").map_err(ClientError::io("starting a runtime"))?;
    let headers = Headers::new(target.token.as_deref(), Arc::new(cudele_proto::auth::SessionSlot::default()))?;
    let channel = {
        let _entered = runtime.handle().enter();
        lazy_channel(server, target.tls.as_ref())?
    };
    let mut client = connection(channel, &headers);
    let reply = runtime.block_on(async move {
        match tokio::time::timeout(
            Duration::from_millis(STATUS_TIMEOUT_MS),
            client.status(pb::StatusRequest::default()),
        )
        .await
        {
            Ok(Ok(reply)) => Ok(Ok(reply.into_inner())),
            Ok(Err(status)) if status.code() == tonic::Code::Unauthenticated => Ok(Err(status.message().to_string())),
            Ok(Err(status)) => Err(NsError::Io(format!("{:?}: {}", status.code(), status.message()))),
            Err(_) => Err(NsError::Io(format!("no reply within {STATUS_TIMEOUT_MS} ms"))),
        }
    });
    match reply {
        Ok(Ok(status)) => Ok(status),
        Ok(Err(reason)) => Err(ClientError::Rejected { address: server.to_string(), reason }),
        Err(NsError::Io(reason)) => Err(ClientError::Unreachable { address: server.to_string(), reason }),
        Err(error) => Err(ClientError::Unreachable { address: server.to_string(), reason: error.to_string() }),
    }
}

/// The status as JSON (stable field names, for scripts and tests).
pub fn status_json(status: &pb::StatusReply) -> serde_json::Value {
    serde_json::json!({
        "version": status.version,
        "uptime_ms": status.uptime_ms,
        "inodes": status.inodes,
        "object_store_url": status.object_store_url,
        "sessions": status.sessions.iter().map(|session| serde_json::json!({
            "session": session.session,
            "client": session.client_name,
            "lease_remaining_ms": session.lease_remaining_ms,
        })).collect::<Vec<_>>(),
        "journal": {
            "durable_seq": status.journal_durable_seq,
            "events": status.journal_events,
            "bytes": status.journal_bytes,
            "segments_pending": status.segments_pending,
            "store_applied_seq": status.store_applied_seq,
            "snapshot_seq": status.snapshot_seq,
        },
        "reconnect_pending": status.reconnect_pending,
        "replayed_records": status.replayed_records,
        "operations": status.operations.iter().collect::<std::collections::BTreeMap<_, _>>(),
        "replicas": replicas_json(status.replicas.as_ref()),
    })
}

/// hits / (hits + misses), None before the first read.
pub fn hit_rate(hits: u64, misses: u64) -> Option<f64> {
    let reads = hits + misses;
    (reads > 0).then(|| hits as f64 / reads as f64)
}

/// The replica part of the status as JSON (`deployments` 0: replicas off).
fn replicas_json(replicas: Option<&pb::ReplicaStatus>) -> serde_json::Value {
    let default = pb::ReplicaStatus::default();
    let replicas = replicas.unwrap_or(&default);
    let hits: u64 = replicas.list.iter().map(|deployment| deployment.hits).sum();
    let misses: u64 = replicas.list.iter().map(|deployment| deployment.misses).sum();
    serde_json::json!({
        "deployments": replicas.deployments,
        "instances": replicas.list.iter().map(|deployment| deployment.instances).sum::<u32>(),
        "hits": hits,
        "misses": misses,
        "hit_rate": hit_rate(hits, misses),
        "registrations": replicas.registrations,
        "invalidations_sent": replicas.invalidations_sent,
        "instances_declared_dead": replicas.instances_declared_dead,
        "list": replicas.list.iter().map(|deployment| serde_json::json!({
            "index": deployment.index,
            "instances": deployment.instances,
            "draining": deployment.draining,
            "launching": deployment.launching,
            "hits": deployment.hits,
            "misses": deployment.misses,
            "hit_rate": hit_rate(deployment.hits, deployment.misses),
            "requests": deployment.requests,
            "invalidations": deployment.invalidations,
            "rejected": deployment.rejected,
            "cached_items": deployment.cached_items,
            "demand": deployment.demand_milli as f64 / 1000.0,
        })).collect::<Vec<_>>(),
    })
}

/// The replica part of the status table.
fn replicas_table(out: &mut String, replicas: Option<&pb::ReplicaStatus>) {
    let Some(replicas) = replicas.filter(|replicas| replicas.deployments > 0) else {
        let _ = writeln!(out, "\nreplicas       off");
        return;
    };
    let _ = writeln!(
        out,
        "\nreplicas       {} deployments  {} registrations  {} invalidations sent  {} declared dead",
        replicas.deployments, replicas.registrations, replicas.invalidations_sent, replicas.instances_declared_dead
    );
    let _ = writeln!(out, "DEPLOYMENT INSTANCES DRAINING LAUNCHING       HITS     MISSES HIT RATE   CACHED DEMAND");
    for deployment in &replicas.list {
        let rate = match hit_rate(deployment.hits, deployment.misses) {
            Some(rate) => format!("{:.1} %", rate * 100.0),
            None => "-".to_string(),
        };
        let _ = writeln!(
            out,
            "{:<10} {:>9} {:>8} {:>9} {:>10} {:>10} {:>8} {:>8} {:>6.2}",
            deployment.index,
            deployment.instances,
            deployment.draining,
            deployment.launching,
            deployment.hits,
            deployment.misses,
            rate,
            deployment.cached_items,
            deployment.demand_milli as f64 / 1000.0
        );
    }
}

/// The status as a table for people.
pub fn status_table(server: &str, status: &pb::StatusReply) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "MDS {server}  version {}  up {:.1} s", status.version, status.uptime_ms as f64 / 1000.0);
    let _ = writeln!(out, "object store   {}", status.object_store_url);
    let _ = writeln!(out, "inodes         {}", status.inodes);
    let _ = writeln!(
        out,
        "journal        durable seq {}  events {}  bytes {}  segments pending {}",
        status.journal_durable_seq, status.journal_events, status.journal_bytes, status.segments_pending
    );
    let _ =
        writeln!(out, "metadata store applied seq {}  snapshot seq {}", status.store_applied_seq, status.snapshot_seq);
    if status.reconnect_pending > 0 || status.replayed_records > 0 {
        let _ = writeln!(
            out,
            "reconnect      {} sessions still to reconnect  {} records replayed",
            status.reconnect_pending, status.replayed_records
        );
    }
    let _ = writeln!(out, "\nSESSION  CLIENT                          LEASE LEFT");
    for session in &status.sessions {
        let _ = writeln!(
            out,
            "{:<8} {:<31} {:>7.1} s",
            session.session,
            session.client_name,
            session.lease_remaining_ms as f64 / 1000.0
        );
    }
    if status.sessions.is_empty() {
        let _ = writeln!(out, "(none)");
    }
    let mut operations: Vec<_> = status.operations.iter().collect();
    operations.sort();
    let _ = writeln!(out, "\nOPERATION        COUNT");
    for (name, count) in operations {
        let _ = writeln!(out, "{name:<16} {count}");
    }
    replicas_table(&mut out, status.replicas.as_ref());
    out
}

/// `cudele gc`: collect unreferenced chunk objects. The store defaults to the MDS's.
pub fn run_gc(
    target: &MdsTarget,
    store_url: Option<&str>,
    grace: Duration,
    dry_run: bool,
) -> Result<GcReport, ClientError> {
    let runtime = Blocking::new("cudele-gc").map_err(ClientError::io("starting a runtime"))?;
    let mut options = target.remote_options();
    options.client_name = format!("{} (gc)", options.client_name);
    let metadata = RemoteMetadata::connect(options, runtime.clone())?;
    let url = store_url.map(str::to_string).unwrap_or_else(|| metadata.object_store_url());
    let objects = JournalStore::open(&url, &StoreOptions::default())
        .map_err(|error| ClientError::ObjectStore { url: url.clone(), reason: error.to_string() })?;
    let store = ChunkStore::new(objects, runtime);
    let report = collect_garbage(&metadata, &store, grace, dry_run)
        .map_err(|error| ClientError::ObjectStore { url, reason: error.to_string() });
    metadata.close();
    report
}
