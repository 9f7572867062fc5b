//! The journal tool's logic (`cudele journal inspect|export|import`): summarise, export to
//! JSON lines and import from them, for MDS segments and client journals alike (one format).

use crate::codec::encode_record;
use crate::segment::{read_segment, SegmentBuilder};
use crate::{JournalError, Record, Seq};
use serde::Serialize;
use std::collections::BTreeMap;

/// Event count and encoded bytes of one event kind.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct KindTotals {
    pub events: u64,
    pub payload_bytes: u64,
}

/// What `cudele journal inspect` reports for one segment. Checksums were all verified.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    pub first_seq: Seq,
    pub last_seq: Seq,
    pub events: u64,
    pub segment_bytes: u64,
    /// Set when the segment ends in an incomplete frame (the records before it are listed).
    pub torn_tail: bool,
    pub by_kind: BTreeMap<&'static str, KindTotals>,
}

/// Verify and summarise a segment.
pub fn inspect_segment(bytes: &[u8]) -> Result<(Inspection, Vec<Record>), JournalError> {
    let contents = read_segment(bytes)?;
    let mut by_kind: BTreeMap<&'static str, KindTotals> = BTreeMap::new();
    let mut payload = Vec::new();
    for record in &contents.records {
        payload.clear();
        encode_record(record, &mut payload);
        let totals = by_kind.entry(record.event.kind_name()).or_default();
        totals.events += 1;
        totals.payload_bytes += payload.len() as u64;
    }
    let inspection = Inspection {
        first_seq: contents.records.first().map_or(contents.header.first_seq, |record| record.seq),
        last_seq: contents.records.last().map_or(0, |record| record.seq),
        events: contents.records.len() as u64,
        segment_bytes: bytes.len() as u64,
        torn_tail: contents.torn_tail,
        by_kind,
    };
    Ok((inspection, contents.records))
}

/// One JSON object per line, one line per record.
pub fn export_json_lines(records: &[Record]) -> Result<String, serde_json::Error> {
    let mut out = String::new();
    for record in records {
        out.push_str(&serde_json::to_string(record)?);
        out.push('\n');
    }
    Ok(out)
}

/// Parse JSON lines (as exported) into a segment; sequence numbers must be consecutive.
pub fn import_json_lines(text: &str) -> Result<Vec<u8>, String> {
    let mut builder: Option<SegmentBuilder> = None;
    for (index, line) in text.lines().enumerate().filter(|(_, line)| !line.trim().is_empty()) {
        let record: Record = serde_json::from_str(line).map_err(|error| format!("line {}: {error}", index + 1))?;
        let builder = builder.get_or_insert_with(|| SegmentBuilder::new(record.seq));
        if record.seq != builder.next_seq() {
            return Err(format!(
                "line {}: sequence number {} where {} was expected",
                index + 1,
                record.seq,
                builder.next_seq()
            ));
        }
        builder.push(&record).map_err(|error| format!("line {}: {error}", index + 1))?;
    }
    builder.map(SegmentBuilder::finish).ok_or_else(|| "no records".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Event, Timestamp};

    /// Export then import gives back the same segment bytes, and inspect counts by kind.
    #[test]
    fn export_import_round_trip() {
        let time = Timestamp { seconds: 1_700_000_000, nanoseconds: 7 };
        let records = vec![
            Record {
                seq: 5,
                event: Event::Mkdir { parent: 1, name: b"d".to_vec(), ino: 9, mode: 0o755, uid: 0, gid: 0, time },
            },
            Record { seq: 6, event: Event::Unlink { parent: 9, name: b"x".to_vec(), time } },
        ];
        let mut builder = SegmentBuilder::new(5);
        for record in &records {
            builder.push(record).unwrap();
        }
        let bytes = builder.finish();
        let (inspection, read_back) = inspect_segment(&bytes).unwrap();
        assert_eq!(read_back, records);
        assert_eq!((inspection.first_seq, inspection.last_seq, inspection.events), (5, 6, 2));
        assert_eq!(inspection.by_kind["mkdir"].events, 1);
        let json = export_json_lines(&read_back).unwrap();
        assert_eq!(import_json_lines(&json).unwrap(), bytes);
        assert!(import_json_lines("{\"seq\":1}").unwrap_err().contains("line 1"));
    }
}
