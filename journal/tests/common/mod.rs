//! The conformance suite every [`JournalStore`] backend must pass (memory, local directory,
//! S3), after object_store's own `integration.rs`: one set of checks, run on each backend.
//!
//! Each backend's test hands [`exercise`] an empty store.

use cudele_journal::segment::{read_segment, segment_object_name, SegmentBuilder};
use cudele_journal::store::{JournalStore, ListedObject};
use cudele_journal::{Event, FileKind, JournalError, Record, Timestamp};

/// Records written into the segment the suite round-trips through the store.
const SUITE_SEGMENT_RECORD_COUNT: u64 = 1000;

/// Runs every check against `store`, which must start empty, and leaves it empty.
pub async fn exercise(store: &JournalStore) {
    empty_store(store).await;
    put_get_overwrite(store).await;
    put_if_absent(store).await;
    list_sorted_by_folder(store).await;
    delete_is_idempotent(store).await;
    segment_round_trip(store).await;
    invalid_paths_rejected(store).await;
    assert_eq!(store.list("").await.expect("list"), Vec::new(), "the suite leaves the store empty");
}

/// A new store lists nothing, and a missing object is NotFound.
async fn empty_store(store: &JournalStore) {
    assert_eq!(store.list("").await.expect("list"), Vec::new(), "{store} is not empty");
    assert_eq!(store.list("journal").await.expect("list"), Vec::new());
    let error = store.get("journal/missing.seg").await.expect_err("missing object");
    assert!(matches!(error, JournalError::NotFound { ref path } if path == "journal/missing.seg"), "{error}");
}

/// A put is readable at once; a second put replaces the object whole.
async fn put_get_overwrite(store: &JournalStore) {
    store.put("objects/a", b"first version".to_vec()).await.expect("put");
    assert_eq!(&store.get("objects/a").await.expect("get")[..], b"first version");
    store.put("objects/a", b"second".to_vec()).await.expect("overwrite");
    assert_eq!(&store.get("objects/a").await.expect("get")[..], b"second");
    store.put("objects/empty", Vec::new()).await.expect("put empty object");
    assert_eq!(store.get("objects/empty").await.expect("get").len(), 0);
    store.delete("objects/a").await.expect("delete");
    store.delete("objects/empty").await.expect("delete");
}

/// put_if_absent creates once and then refuses, leaving the first object intact.
async fn put_if_absent(store: &JournalStore) {
    store.put_if_absent("manifests/m1", b"one".to_vec()).await.expect("create");
    let error = store.put_if_absent("manifests/m1", b"two".to_vec()).await.expect_err("exists");
    assert!(matches!(error, JournalError::AlreadyExists { ref path } if path == "manifests/m1"), "{error}");
    assert_eq!(&store.get("manifests/m1").await.expect("get")[..], b"one");
    store.delete("manifests/m1").await.expect("delete");
}

/// Listings are sorted by path, report sizes, and match whole folder names only.
async fn list_sorted_by_folder(store: &JournalStore) {
    let names = ["journal/b", "journal/a", "journal/nested/c", "journals/x", "journal-old"];
    for (index, name) in names.iter().enumerate() {
        store.put(name, vec![7u8; index + 1]).await.expect("put");
    }
    let listed = store.list("journal").await.expect("list");
    let expected = [("journal/a", 2), ("journal/b", 1), ("journal/nested/c", 3)]
        .map(|(path, size_bytes)| ListedObject { path: path.to_owned(), size_bytes });
    assert_eq!(listed, expected);
    assert_eq!(store.list("journal/").await.expect("list with slash"), expected);
    let everything: Vec<String> = store.list("").await.expect("list").into_iter().map(|o| o.path).collect();
    assert_eq!(everything, ["journal-old", "journal/a", "journal/b", "journal/nested/c", "journals/x"]);
    for name in names {
        store.delete(name).await.expect("delete");
    }
}

/// Deleting removes the object; deleting a missing object succeeds.
async fn delete_is_idempotent(store: &JournalStore) {
    store.put("trim/s1", b"x".to_vec()).await.expect("put");
    store.delete("trim/s1").await.expect("delete");
    assert!(matches!(store.get("trim/s1").await, Err(JournalError::NotFound { .. })));
    store.delete("trim/s1").await.expect("delete again");
    store.delete("never/existed").await.expect("delete missing");
}

/// A segment survives the trip through the store byte for byte.
async fn segment_round_trip(store: &JournalStore) {
    let first_seq = 1_000_001;
    let mut builder = SegmentBuilder::new(first_seq);
    let records: Vec<Record> = (first_seq..first_seq + SUITE_SEGMENT_RECORD_COUNT)
        .map(|seq| Record {
            seq,
            event: Event::Create {
                parent: 1000,
                name: format!("file-{seq:06}").into_bytes(),
                ino: 100_000 + seq,
                kind: FileKind::Regular,
                mode: 0o644,
                uid: 0,
                gid: 0,
                rdev: 0,
                time: Timestamp { seconds: 1_767_225_600, nanoseconds: seq as u32 },
            },
        })
        .collect();
    for record in &records {
        builder.push(record).expect("valid record");
    }
    let bytes = builder.finish();
    let name = segment_object_name(first_seq);
    store.put_if_absent(&name, bytes.clone()).await.expect("put segment");
    let listed = store.list("journal").await.expect("list");
    assert_eq!(listed, [ListedObject { path: name.clone(), size_bytes: bytes.len() as u64 }]);
    let read_back = store.get(&name).await.expect("get segment");
    assert_eq!(&read_back[..], &bytes[..]);
    let contents = read_segment(&read_back).expect("valid segment");
    assert_eq!(contents.records, records);
    assert!(!contents.torn_tail);
    store.delete(&name).await.expect("delete");
}

/// Paths that could escape the store or are ambiguous are refused before any I/O.
async fn invalid_paths_rejected(store: &JournalStore) {
    for path in ["", "../escape", "a//b", "/absolute", "trailing/", "a/./b", "staging#12"] {
        let error = store.put(path, b"x".to_vec()).await.expect_err("invalid path");
        assert!(matches!(error, JournalError::InvalidObjectPath { .. }), "{path:?}: {error}");
    }
}
