//! The store conformance suite on the in-memory and local-directory backends, and what only
//! the local backend promises (atomic, durable puts that leave no staging files behind).

mod common;

use cudele_journal::store::{open_object_store, JournalStore, StoreOptions};
use cudele_journal::JournalError;

/// The in-memory store passes the conformance suite.
#[tokio::test]
async fn memory_store_conforms() {
    let store = JournalStore::open("memory://", &StoreOptions::default()).expect("open memory store");
    assert!(store.local_root().is_none());
    common::exercise(&store).await;
}

/// A local directory, given as a file:// URL that does not exist yet, passes the suite.
#[tokio::test]
async fn local_store_conforms() {
    let directory = tempfile::tempdir().expect("tempdir");
    let root = directory.path().join("not/yet/created");
    let url = format!("file://{}", root.display());
    let store = JournalStore::open(&url, &StoreOptions::default()).expect("open local store");
    assert_eq!(store.local_root(), Some(root.canonicalize().expect("root exists").as_path()));
    common::exercise(&store).await;
}

/// A plain path opens a local store too, and objects are plain files under it.
#[tokio::test]
async fn local_store_from_plain_path_writes_files() {
    let directory = tempfile::tempdir().expect("tempdir");
    let store = JournalStore::open(&directory.path().display().to_string(), &StoreOptions::default()).expect("open");
    store.put("journal/00000000000000000001.seg", b"segment".to_vec()).await.expect("put");
    let file = directory.path().join("journal/00000000000000000001.seg");
    assert_eq!(std::fs::read(&file).expect("object is a file"), b"segment");
    // No staging file (`name#N`) is left next to the object.
    let entries: Vec<_> = std::fs::read_dir(directory.path().join("journal"))
        .expect("read journal dir")
        .map(|entry| entry.expect("entry").file_name())
        .collect();
    assert_eq!(entries, ["00000000000000000001.seg"]);
}

/// A staging file left by a crash mid-put is invisible to listings and to readers.
#[tokio::test]
async fn local_store_ignores_leftover_staging_files() {
    let directory = tempfile::tempdir().expect("tempdir");
    let store = JournalStore::local(directory.path()).expect("open");
    store.put("journal/a.seg", b"complete".to_vec()).await.expect("put");
    std::fs::write(directory.path().join("journal/b.seg#1"), b"half-writ").expect("plant staging file");
    let listed: Vec<String> = store.list("journal").await.expect("list").into_iter().map(|o| o.path).collect();
    assert_eq!(listed, ["journal/a.seg"]);
    assert!(store.get("journal/b.seg").await.is_err());
    // A later put of the same object picks another staging name and succeeds.
    store.put("journal/b.seg", b"whole".to_vec()).await.expect("put");
    assert_eq!(&store.get("journal/b.seg").await.expect("get")[..], b"whole");
}

/// Puts work outside a tokio runtime too (the filesystem work then runs inline).
#[test]
fn local_store_put_without_runtime() {
    let directory = tempfile::tempdir().expect("tempdir");
    let store = JournalStore::local(directory.path()).expect("open");
    futures::executor::block_on(store.put("x/y", b"z".to_vec())).expect("put");
    assert_eq!(std::fs::read(directory.path().join("x/y")).expect("file"), b"z");
}

/// open_object_store hands back the raw store for each scheme and refuses unknown ones by name.
#[test]
fn open_object_store_schemes() {
    let directory = tempfile::tempdir().expect("tempdir");
    let options = StoreOptions::default();
    assert!(open_object_store("memory://", &options).is_ok());
    assert!(open_object_store(&directory.path().display().to_string(), &options).is_ok());
    let error = open_object_store("ftp://host/dir", &options).expect_err("unknown scheme");
    assert!(matches!(error, JournalError::InvalidStoreUrl { .. }));
    assert!(error.to_string().contains("unknown scheme \"ftp\""), "{error}");
}
