//! The client journal of a decoupled subtree (Append Client Journal), and its persistence:
//! Local Persist writes it to the client's disk, Global Persist to the object store. Same
//! event type and segment format as the MDS journal, so a merge is a replay.

use cudele_journal::segment::SegmentBuilder;
use cudele_journal::{Event, Ino, Record, Seq};
use std::io::Write;
use std::path::{Path, PathBuf};

pub use cudele_journal::store::{client_journal_object, CLIENT_JOURNAL_PREFIX};

/// The local file holding a subtree's client journal under `directory`.
pub fn client_journal_file(directory: &Path, subtree: Ino) -> PathBuf {
    directory.join(format!("{subtree:016x}.seg"))
}

/// Events of one decoupled subtree, from the decouple on.
#[derive(Debug, Default)]
pub struct ClientJournal {
    /// Events not yet merged, in order.
    records: Vec<Record>,
    next_seq: Seq,
    /// Events through this sequence number are in the MDS.
    merged_seq: Seq,
    /// Encoded bytes of the unmerged events (an estimate for status: payload sizes).
    unmerged_bytes: u64,
    /// Events appended since the last persist.
    unpersisted: u64,
}

impl ClientJournal {
    /// A journal that continues after `merged_seq` (0 for a fresh decoupling).
    pub fn new(merged_seq: Seq) -> Self {
        ClientJournal { records: Vec::new(), next_seq: merged_seq + 1, merged_seq, unmerged_bytes: 0, unpersisted: 0 }
    }

    pub fn append(&mut self, event: Event) -> Seq {
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut payload = Vec::new();
        let record = Record { seq, event };
        cudele_journal::codec::encode_record(&record, &mut payload);
        self.unmerged_bytes += payload.len() as u64 + cudele_journal::segment::FRAME_HEADER_BYTES as u64;
        self.records.push(record);
        self.unpersisted += 1;
        seq
    }

    pub fn unmerged_events(&self) -> u64 {
        self.records.len() as u64
    }

    pub fn unmerged_bytes(&self) -> u64 {
        self.unmerged_bytes
    }

    pub fn unpersisted_events(&self) -> u64 {
        self.unpersisted
    }

    pub fn merged_seq(&self) -> Seq {
        self.merged_seq
    }

    pub fn last_seq(&self) -> Seq {
        self.next_seq - 1
    }

    /// The unmerged events as one segment, or None if there are none.
    pub fn unmerged_segment(&self) -> Option<Vec<u8>> {
        let first = self.records.first()?;
        let mut builder = SegmentBuilder::new(first.seq);
        for record in &self.records {
            // Events were validated when applied to the local view; the builder re-checks.
            if builder.push(record).is_err() {
                tracing::error!(seq = record.seq, "client journal record failed validation");
                return None;
            }
        }
        Some(builder.finish())
    }

    /// The MDS merged everything through `through`: drop it.
    pub fn mark_merged(&mut self, through: Seq) {
        self.records.retain(|record| record.seq > through);
        self.merged_seq = self.merged_seq.max(through);
        self.unmerged_bytes = self
            .records
            .iter()
            .map(|record| {
                let mut payload = Vec::new();
                cudele_journal::codec::encode_record(record, &mut payload);
                payload.len() as u64 + cudele_journal::segment::FRAME_HEADER_BYTES as u64
            })
            .sum();
    }

    /// Local Persist: write the unmerged events (`segment`, as [`Self::unmerged_segment`]
    /// encodes them) to `path` durably (temp file, fsync, rename, fsync the directory). An
    /// empty journal removes the file.
    pub fn persist_local(&mut self, path: &Path, segment: Option<&[u8]>) -> std::io::Result<()> {
        let Some(segment) = segment else {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(error),
            }
            self.unpersisted = 0;
            return Ok(());
        };
        let directory = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(directory)?;
        let temporary = path.with_extension("seg.tmp");
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(segment)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)?;
        std::fs::File::open(directory)?.sync_all()?;
        self.unpersisted = 0;
        Ok(())
    }

    /// Global Persist happened (the caller wrote [`Self::unmerged_segment`] to the object store).
    pub fn mark_persisted(&mut self) {
        self.unpersisted = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cudele_journal::Timestamp;

    fn unlink(name: &str) -> Event {
        Event::Unlink { parent: 5, name: name.as_bytes().to_vec(), time: Timestamp { seconds: 1, nanoseconds: 0 } }
    }

    /// Appended events come back as one segment; merged ones are dropped; local persist
    /// writes a readable segment and removes it once everything is merged.
    #[test]
    fn append_merge_and_persist_locally() {
        let mut journal = ClientJournal::new(0);
        assert_eq!(journal.append(unlink("a")), 1);
        assert_eq!(journal.append(unlink("b")), 2);
        let segment = journal.unmerged_segment().unwrap();
        let contents = cudele_journal::segment::read_segment(&segment).unwrap();
        assert_eq!(contents.records.len(), 2);
        let directory = tempfile::tempdir().unwrap();
        let path = client_journal_file(directory.path(), 5);
        journal.persist_local(&path, journal.unmerged_segment().as_deref()).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), segment);
        journal.mark_merged(1);
        assert_eq!((journal.unmerged_events(), journal.merged_seq(), journal.last_seq()), (1, 1, 2));
        journal.mark_merged(2);
        journal.persist_local(&path, journal.unmerged_segment().as_deref()).unwrap();
        assert!(!path.exists());
        assert_eq!(journal.unmerged_bytes(), 0);
    }
}
