//! The key/value form of the namespace, shared by the RocksDB metadata store and snapshots.
//!
//! Keys sort by kind, then inode number (big endian), then name, so a directory's entries are
//! contiguous. Values are bincode (standard config) of the record types.

use crate::inode::{InodeRecord, InodeRecordWithoutChunks, SessionRecord, SessionRecordWithoutCredential};
use cudele_journal::{Ino, SessionId};

const KEY_TAG_INODE: u8 = b'i';
const KEY_TAG_DENTRY: u8 = b'd';
const KEY_TAG_SESSION: u8 = b's';
const KEY_TAG_ALLOCATOR: u8 = b'a';

/// What a key names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StoreKey {
    Inode(Ino),
    Dentry(Ino, Vec<u8>),
    Session(SessionId),
    /// The next inode number and session id the MDS will hand out.
    Allocator,
}

/// A change to the store, produced by applying an event (see `Namespace::store_ops`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOp {
    Put(StoreKey, Vec<u8>),
    Delete(StoreKey),
}

/// A decoded store value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreValue {
    /// Boxed: a record (with its chunk map) is much larger than the other values.
    Inode(Box<InodeRecord>),
    Dentry {
        parent: Ino,
        name: Vec<u8>,
        ino: Ino,
    },
    Session(SessionRecord),
    /// (next inode number, next session id): both only ever grow.
    Allocator(Ino, SessionId),
}

impl StoreKey {
    pub fn encode(&self) -> Vec<u8> {
        let mut key = Vec::with_capacity(16);
        match self {
            StoreKey::Inode(ino) => {
                key.push(KEY_TAG_INODE);
                key.extend_from_slice(&ino.to_be_bytes());
            }
            StoreKey::Dentry(parent, name) => {
                key.push(KEY_TAG_DENTRY);
                key.extend_from_slice(&parent.to_be_bytes());
                key.extend_from_slice(name);
            }
            StoreKey::Session(session) => {
                key.push(KEY_TAG_SESSION);
                key.extend_from_slice(&session.to_be_bytes());
            }
            StoreKey::Allocator => key.push(KEY_TAG_ALLOCATOR),
        }
        key
    }

    pub fn decode(key: &[u8]) -> Result<StoreKey, String> {
        let (tag, rest) = key.split_first().ok_or("empty key")?;
        let number = |bytes: &[u8]| -> Result<u64, String> {
            let array: [u8; 8] = bytes.get(..8).and_then(|b| b.try_into().ok()).ok_or("key too short")?;
            Ok(u64::from_be_bytes(array))
        };
        match *tag {
            KEY_TAG_INODE if rest.len() == 8 => Ok(StoreKey::Inode(number(rest)?)),
            KEY_TAG_DENTRY if rest.len() > 8 => Ok(StoreKey::Dentry(number(rest)?, rest[8..].to_vec())),
            KEY_TAG_SESSION if rest.len() == 8 => Ok(StoreKey::Session(number(rest)?)),
            KEY_TAG_ALLOCATOR if rest.is_empty() => Ok(StoreKey::Allocator),
            _ => Err(format!("unknown key {key:?}")),
        }
    }
}

fn bincode_config() -> bincode::config::Configuration {
    bincode::config::standard()
}

pub(crate) fn encode_value<T: bincode::Encode>(value: &T) -> Vec<u8> {
    bincode::encode_to_vec(value, bincode_config()).expect("encoding to a Vec cannot fail")
}

/// Decode a key/value pair read from a store or snapshot.
pub fn decode_entry(key: &[u8], value: &[u8]) -> Result<StoreValue, String> {
    fn decode<T: bincode::Decode<()>>(value: &[u8]) -> Result<T, String> {
        let (decoded, used) = bincode::decode_from_slice(value, bincode_config()).map_err(|error| error.to_string())?;
        if used != value.len() {
            return Err("trailing bytes in value".to_string());
        }
        Ok(decoded)
    }
    Ok(match StoreKey::decode(key)? {
        // Records written before they carried `chunks` end where the new field would start.
        StoreKey::Inode(_) => StoreValue::Inode(Box::new(match decode::<InodeRecord>(value) {
            Ok(record) => record,
            Err(error) => decode::<InodeRecordWithoutChunks>(value).map(InodeRecord::from).map_err(|_| error)?,
        })),
        StoreKey::Dentry(parent, name) => StoreValue::Dentry { parent, name, ino: decode(value)? },
        StoreKey::Session(_) => StoreValue::Session(match decode::<SessionRecord>(value) {
            Ok(record) => record,
            Err(error) => {
                decode::<SessionRecordWithoutCredential>(value).map(SessionRecord::from).map_err(|_| error)?
            }
        }),
        StoreKey::Allocator => {
            let (next_ino, next_session): (Ino, SessionId) = decode(value)?;
            StoreValue::Allocator(next_ino, next_session)
        }
    })
}

/// Frame store puts as (u32 key length LE, key, value) payloads with the journal's framing,
/// the form subtree snapshots travel in. Deletes are not framed.
pub fn encode_frames(ops: &[StoreOp]) -> Vec<u8> {
    let mut out = Vec::new();
    for op in ops {
        if let StoreOp::Put(key, value) = op {
            encode_framed_entry(&key.encode(), value, &mut out);
        }
    }
    out
}

/// Append one encoded key/value pair as a frame.
pub fn encode_framed_entry(key: &[u8], value: &[u8], out: &mut Vec<u8>) {
    let mut payload = Vec::with_capacity(4 + key.len() + value.len());
    payload.extend_from_slice(&(key.len() as u32).to_le_bytes());
    payload.extend_from_slice(key);
    payload.extend_from_slice(value);
    cudele_journal::segment::encode_frame(&payload, out);
}

/// Largest framed key/value pair accepted (an inode with many large xattrs).
pub const FRAMED_ENTRY_BYTES_MAX: usize = 64 << 20;

/// Decode what [`encode_frames`] produced; any damage (or a truncated end) is an error.
pub fn decode_frames(bytes: &[u8]) -> Result<Vec<StoreValue>, String> {
    let mut values = Vec::new();
    let mut reader = cudele_journal::segment::FrameReader::new(bytes, FRAMED_ENTRY_BYTES_MAX);
    for frame in reader.by_ref() {
        let payload = frame.map_err(|error| error.to_string())?.payload;
        let key_length =
            payload.get(..4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize).ok_or("short frame")?;
        let key = payload.get(4..4 + key_length).ok_or("key runs past its frame")?;
        values.push(decode_entry(key, &payload[4 + key_length..])?);
    }
    if reader.torn_tail() {
        return Err("truncated".to_string());
    }
    Ok(values)
}
