//! Snapshots of the metadata store in the object store, so a new host can rebuild from the
//! object store alone (latest snapshot + the journal after it).
//!
//! Format: magic, format version, the sequence number it reflects, the entry count, then one
//! frame (length, CRC32C, payload) per key/value pair; payload = u32 key length LE, key, value.
//! Object name: `snapshots/{seq:020}.snap`.

use crate::metastore::MetaStore;
use anyhow::{bail, Context, Result};
use cudele_journal::segment::{encode_frame, FrameReader};
use cudele_journal::store::JournalStore;
use cudele_journal::Seq;
use cudele_namespace::{decode_entry, StoreValue};

const SNAPSHOT_MAGIC: &[u8; 8] = b"CDLSNAP1";
const SNAPSHOT_FORMAT_VERSION: u32 = 1;
const SNAPSHOT_HEADER_BYTES: usize = 8 + 4 + 8 + 8;
/// Largest key/value pair a snapshot frame may hold (an inode with many large xattrs).
const SNAPSHOT_ENTRY_BYTES_MAX: usize = 64 << 20;
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
    let mut payload = Vec::new();
    store.scan(&mut |key, value| {
        payload.clear();
        payload.extend_from_slice(&(key.len() as u32).to_le_bytes());
        payload.extend_from_slice(key);
        payload.extend_from_slice(value);
        encode_frame(&payload, &mut body);
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
    let mut values = Vec::new();
    let mut reader = FrameReader::new(&bytes[SNAPSHOT_HEADER_BYTES..], SNAPSHOT_ENTRY_BYTES_MAX)
        .with_base_offset(SNAPSHOT_HEADER_BYTES as u64);
    for frame in reader.by_ref() {
        let frame = frame.with_context(|| format!("{name}: corrupt snapshot"))?.payload;
        if frame.len() < 4 {
            bail!("{name}: frame shorter than its key length");
        }
        let key_length = u32::from_le_bytes(frame[..4].try_into()?) as usize;
        let key = frame.get(4..4 + key_length).with_context(|| format!("{name}: key runs past its frame"))?;
        let value = &frame[4 + key_length..];
        values.push(decode_entry(key, value).map_err(|error| anyhow::anyhow!("{name}: {error}"))?);
    }
    if reader.torn_tail() || values.len() as u64 != count {
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
