//! The MDS journal writer: group commit of events into segments streamed to the object
//! store (the Stream mechanism).
//!
//! Appending assigns the next sequence number and queues the record; it happens under the
//! namespace write lock so journal order is apply order. One background task takes whatever
//! is queued, writes it as one segment object, then advances the *durable* sequence number
//! (kept apart from the *assigned* one, as neon keeps written and flushed WAL apart) and hands
//! the records' store changes to the flusher. While one segment is being written the next
//! batch accumulates, so concurrency makes batches larger instead of making writes wait.

use crate::metrics_names;
use cudele_journal::segment::{segment_object_name, SegmentBuilder};
use cudele_journal::store::JournalStore;
use cudele_journal::{Record, Seq};
use cudele_namespace::StoreOp;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};

/// Most records in one segment (unless one atomic group is larger); a larger queue is
/// written as several segments.
pub const SEGMENT_RECORDS_MAX: usize = 4096;
/// Attempts to write one segment before the MDS gives up and aborts (recovery then restores
/// the last durable state: memory already holds the events, so carrying on would lie).
pub const SEGMENT_PUT_ATTEMPTS_MAX: u32 = 8;
/// First retry delay; doubled per attempt.
pub const SEGMENT_PUT_RETRY_DELAY_MS: u64 = 50;
/// While nobody waits for durability (every queued event was acknowledged early), the writer
/// lets more events join the next segment for up to this long: one object write per
/// early-acknowledged create made the MDS spend most of its CPU in fsync and file creation
/// (and would cost one S3 PUT each). A waiter arriving (an fsync, another session's read of
/// these events) ends the wait at once, so only durability nobody asked for is delayed.
pub const EARLY_LINGER_MS: u64 = 20;
/// ... unless this many records are queued already.
pub const EARLY_LINGER_RECORDS_MAX: usize = 1024;
/// Fault injection for tests: delay every segment write by this many milliseconds, so
/// that a kill lands while acknowledged-early events are not yet durable.
pub const FAULT_SEGMENT_DELAY_ENV: &str = "CUDELE_FAULT_SEGMENT_DELAY_MS";

/// Records made durable, with the store changes to flush into the metadata store.
pub struct DurableBatch {
    pub last_seq: Seq,
    pub changes: Vec<(Seq, Vec<StoreOp>)>,
}

/// Records that must reach the object store in one segment (one atomic put).
type Group = Vec<(Record, Vec<StoreOp>)>;

#[derive(Default)]
struct Queue {
    groups: std::collections::VecDeque<Group>,
    next_seq: Seq,
}

/// Shared between request handlers (append, wait) and the background writer.
pub struct JournalWriter {
    queue: Mutex<Queue>,
    queued: Notify,
    /// Someone started waiting for durability (ends a linger).
    waiter_arrived: Notify,
    durable: watch::Sender<Seq>,
    /// Set when writing failed for good; waiters get an error instead of hanging.
    failed: watch::Sender<bool>,
    events_written: AtomicU64,
    bytes_written: AtomicU64,
    /// See [`FAULT_SEGMENT_DELAY_ENV`].
    fault_delay: Option<Duration>,
}

impl JournalWriter {
    /// A writer whose next record gets `next_seq` (the last recovered sequence number + 1).
    pub fn new(next_seq: Seq) -> Arc<Self> {
        let (durable, _) = watch::channel(next_seq - 1);
        let (failed, _) = watch::channel(false);
        Arc::new(JournalWriter {
            queue: Mutex::new(Queue { groups: Default::default(), next_seq }),
            queued: Notify::new(),
            waiter_arrived: Notify::new(),
            durable,
            failed,
            events_written: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            fault_delay: std::env::var(FAULT_SEGMENT_DELAY_ENV)
                .ok()
                .and_then(|value| value.parse::<u64>().ok())
                .map(Duration::from_millis),
        })
    }

    /// Queue `event` with its store changes; returns its sequence number. Call with the
    /// namespace write lock held so that sequence order is apply order.
    pub fn append(&self, event: cudele_journal::Event, changes: Vec<StoreOp>) -> Seq {
        self.append_group(vec![(event, changes)])
    }

    /// Queue events that must become durable together (a merge); returns the last one's
    /// sequence number. They go into one segment however many there are.
    pub fn append_group(&self, events: Vec<(cudele_journal::Event, Vec<StoreOp>)>) -> Seq {
        let mut queue = self.queue.lock().expect("journal queue lock poisoned");
        let mut group = Vec::with_capacity(events.len());
        for (event, changes) in events {
            let seq = queue.next_seq;
            queue.next_seq += 1;
            group.push((Record { seq, event }, changes));
        }
        let last = queue.next_seq - 1;
        if !group.is_empty() {
            queue.groups.push_back(group);
        }
        drop(queue);
        self.queued.notify_one();
        last
    }

    /// The sequence number of the last appended record (durable or not).
    pub fn last_assigned(&self) -> Seq {
        self.queue.lock().expect("journal queue lock poisoned").next_seq - 1
    }

    /// Events written to the object store since this MDS started.
    pub fn events_written(&self) -> u64 {
        self.events_written.load(Ordering::Relaxed)
    }

    /// Segment bytes written to the object store since this MDS started.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written.load(Ordering::Relaxed)
    }

    pub fn durable_seq(&self) -> Seq {
        *self.durable.borrow()
    }

    /// Wait until every record up to `seq` is durable in the object store.
    pub async fn wait_durable(&self, seq: Seq) -> Result<(), String> {
        let mut durable = self.durable.subscribe();
        let mut failed = self.failed.subscribe();
        if *durable.borrow() < seq {
            self.waiter_arrived.notify_one();
        }
        loop {
            if *durable.borrow_and_update() >= seq {
                return Ok(());
            }
            if *failed.borrow_and_update() {
                return Err("the journal could not be written to the object store".to_string());
            }
            tokio::select! {
                changed = durable.changed() => if changed.is_err() { return Err("journal writer stopped".into()) },
                changed = failed.changed() => if changed.is_err() { return Err("journal writer stopped".into()) },
            }
        }
    }

    /// The background task: write queued records as segments until `shutdown` fires and the
    /// queue is empty. Durable batches go to `flushed` for the metadata store.
    pub async fn run(
        self: Arc<Self>,
        store: Arc<JournalStore>,
        flushed: mpsc::Sender<DurableBatch>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let notified = self.queued.notified();
            self.linger_while_nobody_waits().await;
            let batch = {
                let mut queue = self.queue.lock().expect("journal queue lock poisoned");
                let mut batch: Group = Vec::new();
                // Whole groups only; a group larger than the limit goes alone.
                while let Some(group) = queue.groups.front() {
                    if !batch.is_empty() && batch.len() + group.len() > SEGMENT_RECORDS_MAX {
                        break;
                    }
                    batch.extend(queue.groups.pop_front().into_iter().flatten());
                }
                batch
            };
            if batch.is_empty() {
                if *shutdown.borrow() {
                    return;
                }
                tokio::select! {
                    _ = notified => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            let first_seq = batch[0].0.seq;
            let last_seq = batch[batch.len() - 1].0.seq;
            let mut builder = SegmentBuilder::new(first_seq);
            for (record, _) in &batch {
                // Records were queued with consecutive sequence numbers and validated by the
                // namespace; a rejection here is a bug, and writing around it would lose data.
                if let Err(error) = builder.push(record) {
                    tracing::error!(%error, seq = record.seq, "journal record rejected by the segment builder");
                    std::process::abort();
                }
            }
            let bytes = builder.finish();
            let segment_bytes = bytes.len() as u64;
            let name = segment_object_name(first_seq);
            if let Some(delay) = self.fault_delay {
                tokio::time::sleep(delay).await;
            }
            if let Err(error) = put_with_retries(&store, &name, bytes).await {
                tracing::error!(%error, segment = %name, "journal segment could not be written; stopping");
                // send_replace: watch::send drops the value when nobody is subscribed.
                self.failed.send_replace(true);
                // Memory holds events that are not durable: the only honest way on is a
                // restart that recovers the durable state.
                std::process::abort();
            }
            self.events_written.fetch_add(batch.len() as u64, Ordering::Relaxed);
            self.bytes_written.fetch_add(segment_bytes, Ordering::Relaxed);
            metrics::counter!(metrics_names::JOURNAL_BYTES_TOTAL).increment(segment_bytes);
            metrics::counter!(metrics_names::JOURNAL_EVENTS_TOTAL).increment(batch.len() as u64);
            metrics::counter!(metrics_names::JOURNAL_SEGMENTS_TOTAL).increment(1);
            metrics::histogram!(metrics_names::JOURNAL_BATCH_EVENTS).record(batch.len() as f64);
            // send_replace, not send: with every reply early nobody may be waiting, and
            // watch::send does not store a value that no receiver would see.
            self.durable.send_replace(last_seq);
            let changes = batch.into_iter().map(|(record, changes)| (record.seq, changes)).collect();
            if flushed.send(DurableBatch { last_seq, changes }).await.is_err() {
                tracing::warn!("metadata store flusher has stopped; journal keeps streaming");
            }
        }
    }
}

impl JournalWriter {
    /// See [`EARLY_LINGER_MS`].
    async fn linger_while_nobody_waits(&self) {
        let queued = {
            let queue = self.queue.lock().expect("journal queue lock poisoned");
            queue.groups.iter().map(Vec::len).sum::<usize>()
        };
        if queued == 0 || queued >= EARLY_LINGER_RECORDS_MAX || self.durable.receiver_count() > 0 {
            return;
        }
        let arrived = self.waiter_arrived.notified();
        // A waiter may have subscribed between the count and `notified()`.
        if self.durable.receiver_count() > 0 {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_millis(EARLY_LINGER_MS), arrived).await;
    }
}

async fn put_with_retries(store: &JournalStore, name: &str, bytes: Vec<u8>) -> Result<(), String> {
    let bytes = bytes::Bytes::from(bytes);
    let mut delay = Duration::from_millis(SEGMENT_PUT_RETRY_DELAY_MS);
    let mut last_error = String::new();
    for attempt in 1..=SEGMENT_PUT_ATTEMPTS_MAX {
        match store.put(name, bytes.clone()).await {
            Ok(()) => return Ok(()),
            Err(error) => {
                tracing::warn!(%error, attempt, segment = %name, "journal segment write failed; retrying");
                last_error = error.to_string();
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
    Err(last_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cudele_journal::{Event, InodeRange};

    /// With every reply early, nobody waits: the durable position must still advance.
    #[tokio::test]
    async fn durable_position_advances_with_nobody_waiting() {
        let writer = JournalWriter::new(1);
        let store = Arc::new(JournalStore::memory());
        let (flushed, mut batches) = mpsc::channel(16);
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(writer.clone().run(store, flushed, shutdown));
        let seq = writer.append(Event::AllocateInodes { owner: 0, range: InodeRange { start: 10, end: 20 } }, vec![]);
        let batch =
            tokio::time::timeout(Duration::from_secs(30), batches.recv()).await.expect("written").expect("batch");
        assert_eq!(batch.last_seq, seq);
        assert_eq!(writer.durable_seq(), seq);
        stop.send_replace(true);
        task.await.expect("writer stops");
    }
}
