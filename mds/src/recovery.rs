//! Startup: bring the metadata store and the in-memory namespace to the last durable event.
//!
//! 1. An empty metadata store (a new host) is seeded from the newest snapshot in the object
//!    store, or with an empty root if there is none.
//! 2. Every journal event after the store's applied sequence number is replayed, in order,
//!    through `Namespace::apply` — the same function that applied it the first time.
//! 3. Evidence of lost data (a gap in sequence numbers, a corrupt or truncated segment, an
//!    event that does not apply) stops the MDS with a message saying what and where; nothing
//!    is repaired silently.

use crate::metastore::{load_namespace, MetaStore};
use crate::persist::JOURNAL_PREFIX;
use crate::snapshot::{decode_snapshot, latest_snapshot};
use anyhow::{bail, Context, Result};
use cudele_journal::segment::{parse_segment_object_name, read_segment};
use cudele_journal::store::JournalStore;
use cudele_journal::{Seq, Timestamp};
use cudele_namespace::{Namespace, StoreOp};
use std::sync::Arc;

/// Store changes written per metadata-store batch while replaying.
const REPLAY_BATCH_OPS_MAX: usize = 100_000;

pub struct Recovered {
    pub namespace: Namespace,
    /// The last event in the journal (the next one gets this + 1).
    pub last_seq: Seq,
    pub snapshot_seq: Seq,
    pub segments_pending: u64,
    pub replayed_events: u64,
}

fn store_is_empty(metastore: &dyn MetaStore) -> Result<bool> {
    let mut empty = true;
    metastore
        .scan(&mut |_, _| {
            empty = false;
            // Stop at the first key: an error ends the scan early and is recognised below.
            Err(anyhow::anyhow!(StopScan))
        })
        .or_else(|error| if error.is::<StopScan>() { Ok(()) } else { Err(error) })?;
    Ok(empty)
}

#[derive(Debug)]
struct StopScan;
impl std::fmt::Display for StopScan {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("scan stopped")
    }
}
impl std::error::Error for StopScan {}

pub async fn recover(metastore: &Arc<dyn MetaStore>, objects: &JournalStore) -> Result<Recovered> {
    let mut snapshot_seq = 0;
    if store_is_empty(metastore.as_ref())? {
        let (namespace, seq) = match latest_snapshot(objects).await? {
            Some((name, seq)) => {
                tracing::info!(snapshot = %name, "empty metadata store: rebuilding from the object store");
                let bytes = objects.get(&name).await.with_context(|| format!("reading {name}"))?;
                let (recorded_seq, values) = decode_snapshot(&name, &bytes)?;
                if recorded_seq != seq {
                    bail!("{name} records sequence number {recorded_seq}, its name says {seq}");
                }
                let namespace =
                    Namespace::from_store_values(values).map_err(|error| anyhow::anyhow!("{name}: {error}"))?;
                snapshot_seq = seq;
                (namespace, seq)
            }
            None => (Namespace::new(Timestamp::now()), 0),
        };
        metastore.apply_batch(&namespace.store_ops_all(), seq)?;
    } else if let Some((_, seq)) = latest_snapshot(objects).await? {
        snapshot_seq = seq;
    }

    let mut namespace = load_namespace(metastore.as_ref())?;
    let applied = metastore.applied_seq()?;
    let mut segments: Vec<(String, Seq)> = objects
        .list(JOURNAL_PREFIX)
        .await
        .context("listing journal segments")?
        .into_iter()
        .filter_map(|listed| parse_segment_object_name(&listed.path).map(|first| (listed.path, first)))
        .collect();
    segments.sort_by_key(|(_, first)| *first);

    let mut expected = applied + 1;
    let mut pending: Vec<StoreOp> = Vec::new();
    let mut replayed_events = 0u64;
    for (index, (name, first)) in segments.iter().enumerate() {
        let next_first = segments.get(index + 1).map(|(_, next)| *next);
        if next_first.is_some_and(|next| next <= expected) {
            continue; // every record in it is already in the store
        }
        if *first > expected {
            bail!(
                "journal gap: the metadata store is at event {}, but the next segment {name} starts at {first}; \
                 events {expected}..{} are missing from the object store. Refusing to start.",
                expected - 1,
                first - 1
            );
        }
        let bytes = objects.get(name).await.with_context(|| format!("reading {name}"))?;
        let contents = read_segment(&bytes).with_context(|| format!("journal segment {name}"))?;
        if contents.torn_tail {
            bail!("journal segment {name} is truncated (a segment object is written whole, so this is damage). Refusing to start.");
        }
        for record in contents.records {
            if record.seq < expected {
                continue;
            }
            if record.seq != expected {
                bail!("journal gap in {name}: expected event {expected}, found {}. Refusing to start.", record.seq);
            }
            let touched = namespace.apply(&record.event).map_err(|error| {
                anyhow::anyhow!(
                    "replaying event {} ({}) from {name} failed: {error}. Refusing to start.",
                    record.seq,
                    record.event.kind_name()
                )
            })?;
            pending.extend(namespace.store_ops(&touched));
            replayed_events += 1;
            expected += 1;
            if pending.len() >= REPLAY_BATCH_OPS_MAX {
                metastore.apply_batch(&std::mem::take(&mut pending), expected - 1)?;
            }
        }
        if replayed_events > 0 && replayed_events % 100_000 < 4096 {
            tracing::info!(replayed_events, "replaying the journal");
        }
    }
    let last_seq = expected - 1;
    if !pending.is_empty() || last_seq != applied {
        metastore.apply_batch(&pending, last_seq)?;
    }
    namespace
        .check_invariants()
        .map_err(|violation| anyhow::anyhow!("recovered namespace is inconsistent: {violation}"))?;
    tracing::info!(applied, last_seq, replayed_events, snapshot_seq, "recovered");
    let segments_pending = segments.len() as u64;
    Ok(Recovered { namespace, last_seq, snapshot_seq, segments_pending, replayed_events })
}
