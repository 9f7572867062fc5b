//! `SubtreeControl` over the MDS client: decouple, merge and inode ranges by gRPC, and the
//! object store for Global Persist.

use super::router::{MergeOutcome, MergeSource, SubtreeControl};
use crate::metadata::RemoteMetadata;
use crate::runtime::Blocking;
use cudele_journal::store::JournalStore;
use cudele_journal::{Ino, InodeRange};
use cudele_namespace::{NsError, NsResult};
use cudele_proto::pb;
use std::sync::Arc;

pub struct RemoteControl {
    pub remote: Arc<RemoteMetadata>,
    pub objects: JournalStore,
    pub runtime: Blocking,
}

impl SubtreeControl for RemoteControl {
    fn decouple(&self, ino: Ino, policy: &[u8]) -> NsResult<(InodeRange, Vec<u8>, u64)> {
        let reply = self.remote.decouple_subtree(ino, policy)?;
        Ok((InodeRange { start: reply.range_start, end: reply.range_end }, reply.subtree, reply.merged_seq))
    }

    fn merge(&self, ino: Ino, journal: MergeSource, recouple: bool, operator: bool) -> NsResult<MergeOutcome> {
        let mut request = pb::MergeRequest { ino, recouple, operator, ..Default::default() };
        match journal {
            MergeSource::Inline(bytes) => request.journal = bytes,
            MergeSource::Object(name) => request.journal_object = name,
            MergeSource::Empty => {}
        }
        let reply = self.remote.merge_subtree(request)?;
        Ok(MergeOutcome {
            events_applied: reply.events_applied,
            events_skipped: reply.events_skipped,
            events_already_merged: reply.events_already_merged,
            merged_seq: reply.merged_seq,
            skip_reasons: reply.skip_reasons,
        })
    }

    fn allocate_inodes(&self, count: u64) -> NsResult<InodeRange> {
        let (start, end) = self.remote.allocate_inode_range(count)?;
        Ok(InodeRange { start, end })
    }

    fn session(&self) -> u64 {
        self.remote.session()
    }

    fn put_object(&self, name: &str, bytes: Option<Vec<u8>>) -> NsResult<()> {
        let objects = &self.objects;
        self.runtime.block_on(async {
            match bytes {
                Some(bytes) => objects.put(name, bytes).await,
                None => objects.delete(name).await,
            }
            .map_err(|error| NsError::Io(format!("object store: {error}")))
        })
    }
}
