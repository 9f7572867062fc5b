//! cudele-mds on a real S3 server: moto's `moto_server`, started by the test on a free
//! loopback port and killed by its pid afterwards. The journal, snapshots and trims go to the
//! bucket; new MDSs with fresh data dirs rebuild the same namespace from the bucket alone.
//!
//! `moto_server` must be on PATH (`pip install 'moto[server]'`) or named by the environment
//! variable `CUDELE_MOTO_SERVER`. A missing server fails the test rather than skipping it.
//! The moto harness is journal/tests/common/moto.rs.

#[path = "../../journal/tests/common/moto.rs"]
mod moto;

use cudele_e2e::{assert_same_dump, populate, wait_until, Api, MdsProcess};
use moto::MotoServer;
use std::time::Duration;

const ROOT: u64 = 1;
const BUCKET: &str = "cudele-mds";
const PATIENCE: Duration = Duration::from_secs(60);
const CREDENTIALS: [(&str, &str); 3] =
    [("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"), ("AWS_REGION", "us-east-1")];

fn start_mds(moto: &MotoServer, data_dir: &std::path::Path) -> MdsProcess {
    let endpoint = moto.endpoint();
    let url = format!("s3://{BUCKET}");
    let args = [
        "--object-store",
        &url,
        "--s3-endpoint",
        &endpoint,
        "--s3-allow-http",
        "--flush-interval-ms",
        "50",
        "--snapshot-interval-ms",
        "300",
        // No reconnect phase: these gRPC clients send no heartbeats and never report
        // reconnecting (they ask for no early replies), so a rebuilt MDS would hold their
        // operations for the reconnect timeout while their own leases ran out.
        "--reconnect-timeout-ms",
        "0",
    ];
    MdsProcess::start_with_env(data_dir, &args, &CREDENTIALS).expect("start cudele-mds on S3")
}

/// The MDS journals, snapshots and trims in an S3 bucket, keeps nothing of it locally, and
/// new MDSs with empty data dirs rebuild the same namespace from the bucket after SIGKILL
/// (snapshot + journal) and after SIGTERM (final snapshot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mds_on_s3_rebuilds_from_the_bucket() {
    let moto = MotoServer::start();
    moto.create_bucket(BUCKET);
    let bucket = moto.store(&format!("s3://{BUCKET}"));
    let scratch = tempfile::tempdir().unwrap();

    // First MDS: build, let a snapshot cover it (segments trimmed), build more, SIGKILL.
    let first_dir = scratch.path().join("first");
    let mut first = start_mds(&moto, &first_dir);
    let mut api = Api::open(first.address, None, "s3-builder").await.unwrap();
    assert_eq!(api.status().await.unwrap().object_store_url, format!("s3://{BUCKET}"));
    populate(&mut api, ROOT, "before-snapshot", 12).await.unwrap();
    let durable = api.status().await.unwrap().journal_durable_seq;
    let snapshotted = wait_until(PATIENCE, || {
        let mut api = api.clone();
        async move { api.status().await.unwrap().snapshot_seq >= durable }
    })
    .await;
    assert!(snapshotted, "no snapshot covering seq {durable}: {:?}", api.status().await);
    let snapshots = bucket.list("snapshots/").await.unwrap();
    assert!(!snapshots.is_empty(), "the snapshot is in the bucket");
    let trimmed = wait_until(PATIENCE, || {
        let bucket = bucket.clone();
        async move {
            let segments = bucket.list("journal/").await.unwrap();
            !segments.iter().any(|object| object.path.ends_with("00000000000000000001.seg"))
        }
    })
    .await;
    assert!(trimmed, "segments covered by the snapshot were trimmed from the bucket");
    populate(&mut api, ROOT, "after-snapshot", 12).await.unwrap();
    let before_kill = api.checked_dump().await;
    first.kill();
    assert!(!bucket.list("journal/").await.unwrap().is_empty(), "journal segments are in the bucket");
    assert!(!first_dir.join("objects").exists(), "nothing was written to a local object directory");

    // Second MDS, empty data dir: snapshot + journal from the bucket.
    let mut second = start_mds(&moto, &scratch.path().join("second"));
    let mut api = Api::open(second.address, None, "s3-second").await.unwrap();
    assert_same_dump(&api.checked_dump().await, &before_kill, "rebuilt from S3 after SIGKILL");
    api.create(ROOT, "written-by-second", 0o644).await.unwrap();
    api.rename(ROOT, "before-snapshot", ROOT, "renamed-by-second", cudele_proto::pb::RenameMode::RenameReplace)
        .await
        .unwrap();
    let before_stop = api.checked_dump().await;
    second.stop().expect("clean SIGTERM shutdown");

    // Third MDS, empty data dir: after a clean stop.
    let third = start_mds(&moto, &scratch.path().join("third"));
    let mut api = Api::open(third.address, None, "s3-third").await.unwrap();
    assert_same_dump(&api.checked_dump().await, &before_stop, "rebuilt from S3 after SIGTERM");
}
