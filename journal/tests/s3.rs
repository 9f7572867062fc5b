//! The store conformance suite against a real S3 server: moto's `moto_server`, started on a
//! free loopback port for the duration of the test and killed by its pid afterwards.
//!
//! `moto_server` must be on PATH (`pip install 'moto[server]'`), or named by the environment
//! variable `CUDELE_MOTO_SERVER`. A missing server fails the test rather than skipping it.

mod common;
#[path = "common/moto.rs"]
mod moto;

use moto::MotoServer;

/// An S3 bucket, at its root and under a prefix, passes the conformance suite, and a prefixed
/// store's objects live under that prefix in the bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_store_conforms() {
    let server = MotoServer::start();
    server.create_bucket("cudele-root");
    server.create_bucket("cudele-prefixed");

    common::exercise(&server.store("s3://cudele-root")).await;

    let prefixed = server.store("s3://cudele-prefixed/cluster-a/");
    common::exercise(&prefixed).await;
    prefixed.put("journal/x", b"payload".to_vec()).await.expect("put under prefix");
    let whole_bucket = server.store("s3://cudele-prefixed");
    let paths: Vec<String> = whole_bucket.list("").await.expect("list").into_iter().map(|o| o.path).collect();
    assert_eq!(paths, ["cluster-a/journal/x"]);
}

/// A store whose bucket does not exist reports an object store error naming the operation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_missing_bucket_is_an_error() {
    let server = MotoServer::start();
    let store = server.store("s3://no-such-bucket");
    let error = store.put("journal/x", b"x".to_vec()).await.expect_err("missing bucket");
    assert!(error.to_string().contains("object store put journal/x"), "{error}");
}
