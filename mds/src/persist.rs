//! Background persistence after the journal: flush durable events into the metadata store
//! in batches, write snapshots of the store to the object store, and trim journal segments
//! a snapshot covers. The order is: journal durable → store applied → snapshot written →
//! segments trimmed, so the object store alone always holds snapshot + every later event.

use crate::journal_writer::DurableBatch;
use crate::metastore::MetaStore;
use crate::metrics_names;
use crate::snapshot::{
    encode_snapshot, parse_snapshot_object_name, snapshot_object_name, SNAPSHOTS_KEPT, SNAPSHOT_PREFIX,
};
use anyhow::{Context, Result};
use cudele_journal::segment::parse_segment_object_name;
use cudele_journal::store::JournalStore;
use cudele_journal::Seq;
use cudele_namespace::StoreOp;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

pub const JOURNAL_PREFIX: &str = "journal/";

/// How often durable events are applied to the metadata store, and snapshots taken.
#[derive(Debug, Clone)]
pub struct PersistConfig {
    pub flush_interval: Duration,
    pub snapshot_interval: Duration,
}

/// Progress of the persistence pipeline, for status and metrics.
#[derive(Default)]
pub struct PersistProgress {
    pub applied_seq: AtomicU64,
    pub snapshot_seq: AtomicU64,
    pub segments_pending: AtomicU64,
}

pub struct Persister {
    pub metastore: Arc<dyn MetaStore>,
    pub objects: Arc<JournalStore>,
    pub config: PersistConfig,
    pub progress: Arc<PersistProgress>,
}

impl Persister {
    /// Run until `batches` closes (the journal writer stopped) or shutdown, then flush what is
    /// left and take a final snapshot.
    pub async fn run(self, mut batches: mpsc::Receiver<DurableBatch>, mut shutdown: watch::Receiver<bool>) {
        let mut pending: Vec<StoreOp> = Vec::new();
        let mut pending_last_seq: Option<Seq> = None;
        let mut flush_tick = tokio::time::interval(self.config.flush_interval);
        let mut last_snapshot = Instant::now();
        loop {
            let wake = tokio::select! {
                batch = batches.recv() => match batch {
                    Some(batch) => {
                        self.progress.segments_pending.fetch_add(1, Ordering::Relaxed);
                        for (_, changes) in batch.changes { pending.extend(changes); }
                        pending_last_seq = Some(batch.last_seq);
                        Wake::Batch
                    }
                    None => Wake::Stop,
                },
                _ = flush_tick.tick() => Wake::Tick,
                _ = shutdown.changed() => Wake::Stop,
            };
            let stop = matches!(wake, Wake::Stop);
            let flush_due = !matches!(wake, Wake::Batch) || pending.len() >= FLUSH_OPS_MAX;
            if let (true, Some(seq)) = (flush_due, pending_last_seq) {
                if let Err(error) = self.flush(std::mem::take(&mut pending), seq).await {
                    tracing::error!(%error, "flushing the metadata store failed; the journal still holds the events");
                } else {
                    pending_last_seq = None;
                }
            }
            let applied = self.progress.applied_seq.load(Ordering::Relaxed);
            let snapshot_due = stop || last_snapshot.elapsed() >= self.config.snapshot_interval;
            if snapshot_due
                && applied > self.progress.snapshot_seq.load(Ordering::Relaxed)
                && pending_last_seq.is_none()
            {
                last_snapshot = Instant::now();
                if let Err(error) = self.snapshot_and_trim(applied).await {
                    tracing::error!(%error, "snapshot failed; journal segments are kept");
                }
            }
            if stop {
                return;
            }
        }
    }

    async fn flush(&self, ops: Vec<StoreOp>, seq: Seq) -> Result<()> {
        let metastore = self.metastore.clone();
        tokio::task::spawn_blocking(move || metastore.apply_batch(&ops, seq)).await??;
        self.progress.applied_seq.store(seq, Ordering::Relaxed);
        metrics::gauge!(metrics_names::STORE_APPLIED_SEQ).set(seq as f64);
        Ok(())
    }

    /// Write a snapshot of the store at `seq`, then delete what it makes redundant.
    pub async fn snapshot_and_trim(&self, seq: Seq) -> Result<()> {
        let metastore = self.metastore.clone();
        let bytes = tokio::task::spawn_blocking(move || encode_snapshot(metastore.as_ref(), seq)).await??;
        let name = snapshot_object_name(seq);
        self.objects.put(&name, bytes::Bytes::from(bytes)).await.with_context(|| format!("writing {name}"))?;
        self.progress.snapshot_seq.store(seq, Ordering::Relaxed);
        metrics::gauge!(metrics_names::SNAPSHOT_SEQ).set(seq as f64);
        let remaining = trim(&self.objects, seq).await?;
        self.progress.segments_pending.store(remaining, Ordering::Relaxed);
        metrics::gauge!(metrics_names::SEGMENTS_PENDING).set(remaining as f64);
        Ok(())
    }
}

/// Most store changes held before a flush regardless of the interval.
pub const FLUSH_OPS_MAX: usize = 200_000;

/// Why the persistence loop woke up.
enum Wake {
    Batch,
    Tick,
    Stop,
}

/// Delete journal segments whose every record is at or before `snapshot_seq`, and all but the
/// newest snapshots. Returns the number of segments left.
pub async fn trim(objects: &JournalStore, snapshot_seq: Seq) -> Result<u64> {
    let mut segments: Vec<(String, Seq)> = objects
        .list(JOURNAL_PREFIX)
        .await?
        .into_iter()
        .filter_map(|listed| parse_segment_object_name(&listed.path).map(|first| (listed.path, first)))
        .collect();
    segments.sort_by_key(|(_, first)| *first);
    let mut kept = 0u64;
    for (index, (name, _)) in segments.iter().enumerate() {
        // A segment ends just before the next one starts; the newest one's end is unknown
        // without reading it, so it stays until a later segment exists.
        let covered = segments.get(index + 1).is_some_and(|(_, next_first)| next_first - 1 <= snapshot_seq);
        if covered {
            objects.delete(name).await.with_context(|| format!("trimming {name}"))?;
        } else {
            kept += 1;
        }
    }
    let mut snapshots: Vec<(String, Seq)> = objects
        .list(SNAPSHOT_PREFIX)
        .await?
        .into_iter()
        .filter_map(|listed| parse_snapshot_object_name(&listed.path).map(|seq| (listed.path, seq)))
        .collect();
    snapshots.sort_by_key(|(_, seq)| std::cmp::Reverse(*seq));
    for (name, _) in snapshots.iter().skip(SNAPSHOTS_KEPT) {
        objects.delete(name).await.with_context(|| format!("deleting old snapshot {name}"))?;
    }
    Ok(kept)
}
