//! Random operation sequences keep the namespace invariants, never half-apply a rejected
//! event, and the store changes each event produces rebuild exactly the same namespace (chunk
//! maps included, which stay within each file's size).

use cudele_journal::{
    AttrChanges, ChunkRef, ChunkUpdate, ChunkVersion, Event, FileKind, Ino, RenameMode, Timestamp, XattrMode,
};
use cudele_namespace::{decode_entry, InodeRecord, Namespace, StoreOp};
use proptest::prelude::*;
use std::collections::BTreeMap;

const NAMES: &[&[u8]] = &[b"a", b"b", b"c", b"d"];
const INODE_CHOICES: usize = 64;

fn operation() -> impl Strategy<Value = (u8, usize, usize, usize, usize, u8)> {
    (0u8..14, 0..INODE_CHOICES, 0..NAMES.len(), 0..INODE_CHOICES, 0..NAMES.len(), 0u8..3)
}

/// Turn a random tuple into an event; many are invalid on purpose (the namespace must refuse
/// them without changing anything).
fn event_for(
    namespace: &Namespace,
    known: &[u64],
    (op, parent, name, other, other_name, flag): (u8, usize, usize, usize, usize, u8),
    step: i64,
) -> Event {
    // Mostly pick inodes that were created (so most events apply), sometimes any number.
    let parent = known[parent % known.len()];
    let other = known[other % known.len()];
    let time = Timestamp { seconds: 1_700_000_000 + step, nanoseconds: 0 };
    let name = NAMES[name].to_vec();
    let other_name = NAMES[other_name].to_vec();
    let ino = namespace.next_ino();
    match op {
        0 | 1 => {
            Event::Create { parent, name, ino, kind: FileKind::Regular, mode: 0o644, uid: 1, gid: 1, rdev: 0, time }
        }
        2 | 3 => Event::Mkdir { parent, name, ino, mode: 0o755, uid: 1, gid: 1, time },
        4 => Event::Unlink { parent, name, time },
        5 => Event::Rmdir { parent, name, time },
        6 | 7 => Event::Rename {
            source_parent: parent,
            source_name: name,
            target_parent: other,
            target_name: other_name,
            mode: [RenameMode::Replace, RenameMode::NoReplace, RenameMode::Exchange][flag as usize],
            time,
        },
        8 => Event::Link { ino: other, parent, name, time },
        9 => Event::Symlink { parent, name, ino, target: b"somewhere".to_vec(), uid: 0, gid: 0, time },
        10 => Event::SetAttr {
            ino: parent,
            changes: AttrChanges { uid: Some(flag as u32), size: Some(other), ..Default::default() },
            time,
        },
        12 | 13 => {
            // Small chunks (and sometimes another chunk size, which a file with data refuses);
            // `other` doubles as the size, so layouts both grow and shrink files.
            let chunk_size_bytes = if flag == 2 { 16 } else { 8 };
            let chunk = |index: u64, length_bytes: u32| ChunkUpdate {
                index,
                chunk: ChunkRef { version: ChunkVersion { writer: 1, serial: step as u64 * 4 + index }, length_bytes },
            };
            Event::SetLayout {
                ino: parent,
                size: other,
                chunk_size_bytes,
                mtime: time,
                chunks: vec![chunk(u64::from(flag), chunk_size_bytes), chunk(u64::from(flag) + 2, 5)],
            }
        }
        _ => Event::SetXattr {
            ino: parent,
            name: b"user.k".to_vec(),
            value: vec![flag; 3],
            mode: XattrMode::Upsert,
            time,
        },
    }
}

/// Every record among `known` (chunk maps are not part of `Namespace::dump`).
fn records(namespace: &Namespace, known: &[Ino]) -> Vec<Option<InodeRecord>> {
    known.iter().map(|ino| namespace.record(*ino).ok().cloned()).collect()
}

/// A published chunk map never reaches the size: no chunk starts at or past it, and the last
/// one holds no bytes past it.
fn chunks_within_size(record: &InodeRecord) -> Result<(), String> {
    let chunk_size = u64::from(record.chunk_size_bytes);
    for (index, chunk) in &record.chunks {
        let start = index * chunk_size;
        if chunk_size == 0 || start >= record.attr.size || start + u64::from(chunk.length_bytes) > record.attr.size {
            return Err(format!("inode {} chunk {index} {chunk:?} past size {}", record.attr.ino, record.attr.size));
        }
    }
    Ok(())
}

fn apply_ops(store: &mut BTreeMap<Vec<u8>, Vec<u8>>, ops: Vec<StoreOp>) {
    for op in ops {
        match op {
            StoreOp::Put(key, value) => store.insert(key.encode(), value),
            StoreOp::Delete(key) => store.remove(&key.encode()),
        };
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("CUDELE_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000)
    ))]

    #[test]
    fn random_operations_keep_invariants_and_store_matches(operations in proptest::collection::vec(operation(), 1..60)) {
        let mut namespace = Namespace::new(Timestamp { seconds: 1_700_000_000, nanoseconds: 0 });
        let mut store = BTreeMap::new();
        apply_ops(&mut store, namespace.store_ops_all());
        let mut known = vec![1u64, 1, 1, 99];
        for (step, operation) in operations.into_iter().enumerate() {
            let event = event_for(&namespace, &known, operation, step as i64);
            let before = namespace.dump();
            let records_before = records(&namespace, &known);
            match namespace.apply(&event) {
                Ok(touched) => {
                    if let Event::Create { ino, .. } | Event::Mkdir { ino, .. } | Event::Symlink { ino, .. } = &event {
                        known.push(*ino);
                    }
                    apply_ops(&mut store, namespace.store_ops(&touched))
                }
                Err(_) => {
                    prop_assert_eq!(&before, &namespace.dump(), "a rejected {:?} changed the namespace", event);
                    prop_assert_eq!(&records_before, &records(&namespace, &known), "a rejected {:?} changed a record", event);
                }
            }
            for record in records(&namespace, &known).iter().flatten() {
                if let Err(violation) = chunks_within_size(record) {
                    prop_assert!(false, "after {:?}: {}", event, violation);
                }
            }
            if let Err(violation) = namespace.check_invariants() {
                prop_assert!(false, "after {:?}: {}", event, violation);
            }
        }
        let values = store.iter().map(|(key, value)| decode_entry(key, value).unwrap());
        let rebuilt = Namespace::from_store_values(values).unwrap();
        prop_assert_eq!(rebuilt.dump(), namespace.dump());
        prop_assert_eq!(records(&rebuilt, &known), records(&namespace, &known));
        prop_assert_eq!(rebuilt.next_ino(), namespace.next_ino());
    }
}
