//! `cudele gc`: delete chunk objects no layout publishes — those of inodes that no longer
//! exist, and versions other than the one the inode's chunk map names (superseded versions a
//! writer failed to delete, a refused or crashed flush's uploads, chunks past the size,
//! unversioned objects from before chunks were versioned).
//!
//! Objects younger than a grace period are left alone: a writer uploads a version before it
//! publishes it, so a fresh unpublished object may be a flush in progress.
//! Known gap: layouts of a decoupled subtree that are not yet merged are unknown to the MDS
//! (its new versions look unpublished, the versions they replace still published); run gc
//! with a grace period longer than decoupled jobs last.

use super::store::{parse_chunk_key, ChunkStore, DATA_PREFIX};
use crate::metadata::Metadata;
use cudele_journal::{ChunkVersion, Ino};
use cudele_namespace::{NsError, NsResult};
use futures::TryStreamExt;
use std::collections::BTreeMap;
use std::time::Duration;

/// Default age below which gc leaves an object alone.
pub const GC_GRACE_DEFAULT_SECS: u64 = 3600;

/// What a gc run found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GcReport {
    pub objects_scanned: u64,
    pub inodes_scanned: u64,
    pub objects_of_deleted_inodes: u64,
    /// Versions the inode's chunk map does not name (superseded, unpublished, past the size).
    pub objects_unpublished: u64,
    pub bytes_freed: u64,
    pub objects_too_recent: u64,
    pub dry_run: bool,
}

struct Listed {
    index: u64,
    version: Option<ChunkVersion>,
    size_bytes: u64,
    age: Duration,
}

/// Scan `data/`, ask `metadata` about each inode, delete garbage older than `grace`
/// (only count it when `dry_run`).
pub fn collect_garbage(
    metadata: &dyn Metadata,
    store: &ChunkStore,
    grace: Duration,
    dry_run: bool,
) -> NsResult<GcReport> {
    let objects = store.objects().inner().clone();
    let listed: Vec<object_store::ObjectMeta> = store.runtime().block_on(async move {
        objects
            .list(Some(&object_store::path::Path::from(DATA_PREFIX)))
            .try_collect()
            .await
            .map_err(|error| NsError::Io(format!("listing {DATA_PREFIX}/: {error}")))
    })?;
    let now = now_millis();
    let mut by_inode: BTreeMap<Ino, Vec<Listed>> = BTreeMap::new();
    let mut report = GcReport { dry_run, ..GcReport::default() };
    for object in listed {
        let Some((ino, index, version)) = parse_chunk_key(object.location.as_ref()) else { continue };
        report.objects_scanned += 1;
        let modified = object.last_modified.timestamp_millis();
        let age = Duration::from_millis(u64::try_from(now - modified).unwrap_or(0));
        by_inode.entry(ino).or_default().push(Listed { index, version, size_bytes: object.size, age });
    }
    for (ino, chunks) in by_inode {
        report.inodes_scanned += 1;
        // Only the version the chunk map names is data; everything else is garbage.
        let (exists, published) = match metadata.getattr(ino) {
            Ok(attr) => (true, attr.chunks),
            Err(NsError::NotFound) => (false, Default::default()),
            Err(error) => return Err(error),
        };
        let mut doomed = Vec::new();
        for chunk in chunks {
            let is_published =
                chunk.version.is_some_and(|version| published.get(&chunk.index).is_some_and(|p| p.version == version));
            if is_published {
                continue;
            }
            if chunk.age < grace {
                report.objects_too_recent += 1;
                continue;
            }
            doomed.push((chunk.index, chunk.version));
            report.bytes_freed += chunk.size_bytes;
            if exists {
                report.objects_unpublished += 1;
            } else {
                report.objects_of_deleted_inodes += 1;
            }
        }
        if !dry_run && !doomed.is_empty() {
            store.delete_many(ino, &doomed)?;
        }
    }
    Ok(report)
}

/// Milliseconds since the epoch (object modification times are wall-clock).
fn now_millis() -> i64 {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}
