//! Early ("unsafe") replies, as CephFS's: the metadata both sides exchange so a client can
//! replay what an MDS restart lost (see `rpc Replay` in cudele.proto and docs/DURABILITY.md).
//!
//! Every reply, success or error, carries the MDS incarnation (random per process start)
//! and its durable journal position. A create-like reply sent before its event is durable
//! also carries the encoded journal record; the client keeps it until a reply from the same
//! incarnation shows a durable position at or past its sequence number, and replays it if
//! the incarnation changes first.

use tonic::metadata::{MetadataMap, MetadataValue};

/// Request header: the client keeps unsafe records and replays them, so the MDS may reply
/// to creates before they are durable.
pub const EARLY_REPLY_HEADER: &str = "cudele-early-reply";
pub const INCARNATION_HEADER: &str = "cudele-incarnation";
pub const DURABLE_SEQ_HEADER: &str = "cudele-durable-seq";
/// Binary (`-bin`): the encoded `Record` of an event acknowledged before it was durable.
pub const UNSAFE_RECORD_HEADER: &str = "cudele-unsafe-record-bin";

/// What a reply says about durability.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReplyProgress {
    pub incarnation: u64,
    pub durable_seq: u64,
    /// (seq, encoded record) of an unsafe reply.
    pub unsafe_record: Option<(u64, Vec<u8>)>,
}

/// Server side: stamp `metadata` with the incarnation and durable position.
pub fn stamp(metadata: &mut MetadataMap, incarnation: u64, durable_seq: u64) {
    metadata.insert(INCARNATION_HEADER, MetadataValue::from(incarnation));
    metadata.insert(DURABLE_SEQ_HEADER, MetadataValue::from(durable_seq));
}

/// Server side: attach the encoded record of an unsafe reply.
pub fn attach_unsafe_record(metadata: &mut MetadataMap, encoded_record: &[u8]) {
    metadata.insert_bin(UNSAFE_RECORD_HEADER, MetadataValue::from_bytes(encoded_record));
}

/// Client side: read a reply's progress (None from servers that send none).
pub fn progress(metadata: &MetadataMap) -> Option<ReplyProgress> {
    let number = |name: &str| metadata.get(name)?.to_str().ok()?.parse::<u64>().ok();
    let incarnation = number(INCARNATION_HEADER)?;
    let durable_seq = number(DURABLE_SEQ_HEADER)?;
    let unsafe_record =
        metadata.get_bin(UNSAFE_RECORD_HEADER).and_then(|value| value.to_bytes().ok()).and_then(|bytes| {
            let record = cudele_journal::codec::decode_record(&bytes).ok()?;
            Some((record.seq, bytes.to_vec()))
        });
    Some(ReplyProgress { incarnation, durable_seq, unsafe_record })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cudele_journal::{Event, Record};

    #[test]
    fn progress_round_trips_through_metadata() {
        let mut metadata = MetadataMap::new();
        assert_eq!(progress(&metadata), None);
        stamp(&mut metadata, 42, 7);
        assert_eq!(progress(&metadata), Some(ReplyProgress { incarnation: 42, durable_seq: 7, unsafe_record: None }));
        let record = Record { seq: 9, event: Event::Recouple { ino: 5 } };
        let mut encoded = Vec::new();
        cudele_journal::codec::encode_record(&record, &mut encoded);
        attach_unsafe_record(&mut metadata, &encoded);
        assert_eq!(progress(&metadata).and_then(|progress| progress.unsafe_record), Some((9, encoded)));
    }
}
