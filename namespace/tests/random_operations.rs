//! Random operation sequences keep the namespace invariants, never half-apply a rejected
//! event, and the store changes each event produces rebuild exactly the same namespace.

use cudele_journal::{AttrChanges, Event, FileKind, RenameMode, Timestamp, XattrMode};
use cudele_namespace::{decode_entry, Namespace, StoreOp};
use proptest::prelude::*;
use std::collections::BTreeMap;

const NAMES: &[&[u8]] = &[b"a", b"b", b"c", b"d"];
const INODE_CHOICES: usize = 64;

fn operation() -> impl Strategy<Value = (u8, usize, usize, usize, usize, u8)> {
    (0u8..12, 0..INODE_CHOICES, 0..NAMES.len(), 0..INODE_CHOICES, 0..NAMES.len(), 0u8..3)
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
        _ => Event::SetXattr {
            ino: parent,
            name: b"user.k".to_vec(),
            value: vec![flag; 3],
            mode: XattrMode::Upsert,
            time,
        },
    }
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
            match namespace.apply(&event) {
                Ok(touched) => {
                    if let Event::Create { ino, .. } | Event::Mkdir { ino, .. } | Event::Symlink { ino, .. } = &event {
                        known.push(*ino);
                    }
                    apply_ops(&mut store, namespace.store_ops(&touched))
                }
                Err(_) => prop_assert_eq!(&before, &namespace.dump(), "a rejected {:?} changed the namespace", event),
            }
            if let Err(violation) = namespace.check_invariants() {
                prop_assert!(false, "after {:?}: {}", event, violation);
            }
        }
        let values = store.iter().map(|(key, value)| decode_entry(key, value).unwrap());
        let rebuilt = Namespace::from_store_values(values).unwrap();
        prop_assert_eq!(rebuilt.dump(), namespace.dump());
        prop_assert_eq!(rebuilt.next_ino(), namespace.next_ino());
    }
}
