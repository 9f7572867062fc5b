//! The metadata store: the namespace as key/value pairs, fed from durable journal events in
//! batches (flush). RocksDB in production; an in-memory map for unit tests. Both keep the
//! sequence number of the last applied event in the same atomic batch as the data, so a
//! crash between batches leaves a consistent store plus a journal suffix to replay.

use anyhow::{bail, Context, Result};
use cudele_journal::Seq;
use cudele_namespace::StoreOp;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

/// Metadata-store key holding the applied sequence number (outside the namespace key space,
/// whose tags are lowercase letters).
const APPLIED_SEQ_KEY: &[u8] = b"#applied_seq";

/// Called with each key/value pair of a scan; an error stops the scan.
pub type ScanVisitor<'a> = dyn FnMut(&[u8], &[u8]) -> Result<()> + 'a;

/// A narrow store interface; see `tests` below for the conformance checks both backends pass.
pub trait MetaStore: Send + Sync {
    /// The sequence number of the last event whose effects are in the store (0: none).
    fn applied_seq(&self) -> Result<Seq>;
    /// Apply `ops` and record `applied_seq`, atomically.
    fn apply_batch(&self, ops: &[StoreOp], applied_seq: Seq) -> Result<()>;
    /// Every namespace key/value pair (not the applied sequence number), in key order.
    fn scan(&self, visit: &mut ScanVisitor<'_>) -> Result<()>;
}

pub struct RocksStore {
    database: rocksdb::DB,
}

impl RocksStore {
    pub fn open(path: &Path) -> Result<Self> {
        let mut options = rocksdb::Options::default();
        options.create_if_missing(true);
        let database = rocksdb::DB::open(&options, path)
            .with_context(|| format!("opening the RocksDB metadata store at {}", path.display()))?;
        Ok(RocksStore { database })
    }
}

fn decode_seq(bytes: &[u8]) -> Result<Seq> {
    let array: [u8; 8] = bytes.try_into().context("applied sequence number is not 8 bytes")?;
    Ok(Seq::from_be_bytes(array))
}

impl MetaStore for RocksStore {
    fn applied_seq(&self) -> Result<Seq> {
        match self.database.get(APPLIED_SEQ_KEY)? {
            Some(bytes) => decode_seq(&bytes),
            None => Ok(0),
        }
    }

    fn apply_batch(&self, ops: &[StoreOp], applied_seq: Seq) -> Result<()> {
        let mut batch = rocksdb::WriteBatch::default();
        for op in ops {
            match op {
                StoreOp::Put(key, value) => batch.put(key.encode(), value),
                StoreOp::Delete(key) => batch.delete(key.encode()),
            }
        }
        batch.put(APPLIED_SEQ_KEY, applied_seq.to_be_bytes());
        let mut write_options = rocksdb::WriteOptions::default();
        // The journal in the object store is the durable copy; syncing the RocksDB WAL here
        // keeps a restart from replaying more than necessary and costs one fsync per batch.
        write_options.set_sync(true);
        self.database.write_opt(batch, &write_options).context("writing a batch to the metadata store")
    }

    fn scan(&self, visit: &mut ScanVisitor<'_>) -> Result<()> {
        // A RocksDB snapshot gives one consistent view while writers go on.
        let snapshot = self.database.snapshot();
        for item in snapshot.iterator(rocksdb::IteratorMode::Start) {
            let (key, value) = item?;
            if key.as_ref() == APPLIED_SEQ_KEY {
                continue;
            }
            visit(&key, &value)?;
        }
        Ok(())
    }
}

/// Key/value pairs and the applied sequence number.
type MemoryState = (BTreeMap<Vec<u8>, Vec<u8>>, Seq);

/// An in-memory store for unit tests.
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<MemoryState>,
}

impl MetaStore for MemoryStore {
    fn applied_seq(&self) -> Result<Seq> {
        Ok(self.state.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.1)
    }

    fn apply_batch(&self, ops: &[StoreOp], applied_seq: Seq) -> Result<()> {
        let mut state = self.state.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        if applied_seq < state.1 {
            bail!("applied sequence number going backwards: {} after {}", applied_seq, state.1);
        }
        for op in ops {
            match op {
                StoreOp::Put(key, value) => state.0.insert(key.encode(), value.clone()),
                StoreOp::Delete(key) => state.0.remove(&key.encode()),
            };
        }
        state.1 = applied_seq;
        Ok(())
    }

    fn scan(&self, visit: &mut ScanVisitor<'_>) -> Result<()> {
        let state = self.state.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        for (key, value) in &state.0 {
            visit(key, value)?;
        }
        Ok(())
    }
}

/// Load the namespace a store holds.
pub fn load_namespace(store: &dyn MetaStore) -> Result<cudele_namespace::Namespace> {
    let mut values = Vec::new();
    store.scan(&mut |key, value| {
        values.push(
            cudele_namespace::decode_entry(key, value).map_err(|error| anyhow::anyhow!("metadata store: {error}"))?,
        );
        Ok(())
    })?;
    cudele_namespace::Namespace::from_store_values(values).map_err(|error| anyhow::anyhow!("metadata store: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cudele_journal::{Event, Timestamp};
    use cudele_namespace::Namespace;

    /// The conformance suite both backends pass: batches are atomic with their sequence
    /// number, and a namespace written through store ops loads back identical.
    fn conformance(store: &dyn MetaStore) {
        assert_eq!(store.applied_seq().unwrap(), 0);
        let mut namespace = Namespace::new(Timestamp { seconds: 1, nanoseconds: 0 });
        store.apply_batch(&namespace.store_ops_all(), 0).unwrap();
        let time = Timestamp { seconds: 2, nanoseconds: 5 };
        let events = [
            Event::Mkdir { parent: 1, name: b"d".to_vec(), ino: 2, mode: 0o755, uid: 0, gid: 0, time },
            Event::Create {
                parent: 2,
                name: b"f".to_vec(),
                ino: 3,
                kind: cudele_journal::FileKind::Regular,
                mode: 0o644,
                uid: 1,
                gid: 1,
                rdev: 0,
                time,
            },
            Event::Link { ino: 3, parent: 1, name: b"g".to_vec(), time },
            Event::Unlink { parent: 2, name: b"f".to_vec(), time },
        ];
        for (index, event) in events.iter().enumerate() {
            let touched = namespace.apply(event).unwrap();
            store.apply_batch(&namespace.store_ops(&touched), index as u64 + 1).unwrap();
        }
        assert_eq!(store.applied_seq().unwrap(), 4);
        let loaded = load_namespace(store).unwrap();
        assert_eq!(loaded.dump(), namespace.dump());
    }

    #[test]
    fn memory_store_conformance() {
        conformance(&MemoryStore::default());
    }

    #[test]
    fn rocksdb_store_conformance() {
        let directory = tempfile::tempdir().unwrap();
        conformance(&RocksStore::open(directory.path()).unwrap());
    }
}
