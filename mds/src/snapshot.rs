//! Snapshots of the metadata store in the object store, so a new host can rebuild from the
//! object store alone (latest snapshot + the journal after it).
//!
//! Format: magic, format version, the sequence number it reflects, the entry count, then one
//! frame (length, CRC32C, payload) per key/value pair; payload = u32 key length LE, key, value.
//! Object name: `snapshots/{seq:020}.snap`.

use crate::metastore::MetaStore;
use anyhow::{bail, Context, Result};
use cudele_journal::store::JournalStore;
use cudele_journal::Seq;
use cudele_namespace::store_key::{decode_frames, encode_framed_entry};
use cudele_namespace::StoreValue;

const SNAPSHOT_MAGIC: &[u8; 8] = b"CDLSNAP1";
const SNAPSHOT_FORMAT_VERSION: u32 = 1;
const SNAPSHOT_HEADER_BYTES: usize = 8 + 4 + 8 + 8;
pub const SNAPSHOT_PREFIX: &str = "snapshots/";
/// Snapshots kept after a new one is written (the newest and the one before it).
pub const SNAPSHOTS_KEPT: usize = 2;

pub fn snapshot_object_name(seq: Seq) -> String {
    format!("{SNAPSHOT_PREFIX}{seq:020}.snap")
}

pub fn parse_snapshot_object_name(name: &str) -> Option<Seq> {
    name.strip_prefix(SNAPSHOT_PREFIX)?.strip_suffix(".snap")?.parse().ok()
}

/// Serialise the whole store as it is at `seq`.
pub fn encode_snapshot(store: &dyn MetaStore, seq: Seq) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    let mut count: u64 = 0;
    store.scan(&mut |key, value| {
        encode_framed_entry(key, value, &mut body);
        count += 1;
        Ok(())
    })?;
    let mut bytes = Vec::with_capacity(SNAPSHOT_HEADER_BYTES + body.len());
    bytes.extend_from_slice(SNAPSHOT_MAGIC);
    bytes.extend_from_slice(&SNAPSHOT_FORMAT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&seq.to_le_bytes());
    bytes.extend_from_slice(&count.to_le_bytes());
    bytes.extend_from_slice(&body);
    Ok(bytes)
}

/// Parse a snapshot completely (every frame checked) before anything uses it.
pub fn decode_snapshot(name: &str, bytes: &[u8]) -> Result<(Seq, Vec<StoreValue>)> {
    if bytes.len() < SNAPSHOT_HEADER_BYTES || &bytes[..8] != SNAPSHOT_MAGIC {
        bail!("{name}: not a cudele snapshot (bad magic)");
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into()?);
    if version != SNAPSHOT_FORMAT_VERSION {
        bail!("{name}: snapshot format version {version}, this MDS reads {SNAPSHOT_FORMAT_VERSION}");
    }
    let seq = u64::from_le_bytes(bytes[12..20].try_into()?);
    let count = u64::from_le_bytes(bytes[20..28].try_into()?);
    let values = decode_frames(&bytes[SNAPSHOT_HEADER_BYTES..]).map_err(|error| anyhow::anyhow!("{name}: {error}"))?;
    if values.len() as u64 != count {
        bail!("{name}: truncated snapshot ({} of {count} entries)", values.len());
    }
    Ok((seq, values))
}

/// The newest snapshot in the object store, if any.
pub async fn latest_snapshot(store: &JournalStore) -> Result<Option<(String, Seq)>> {
    let listing = store.list(SNAPSHOT_PREFIX).await.context("listing snapshots")?;
    Ok(listing
        .into_iter()
        .filter_map(|listed| parse_snapshot_object_name(&listed.path).map(|seq| (listed.path, seq)))
        .max_by_key(|(_, seq)| *seq))
}
