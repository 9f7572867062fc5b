//! cudele-mds on a real S3 server: moto's `moto_server`, started by the test on a free
//! loopback port and killed by its pid afterwards. The journal, snapshots and trims go to the
//! bucket; new MDSs with fresh data dirs rebuild the same namespace from the bucket alone.
//!
//! `moto_server` must be on PATH (`pip install 'moto[server]'`) or named by the environment
//! variable `CUDELE_MOTO_SERVER`. A missing server fails the test rather than skipping it.
//! The harness follows journal/tests/s3.rs.

use cudele_e2e::{assert_same_dump, populate, wait_until, Api, MdsProcess};
use cudele_journal::store::{JournalStore, StoreOptions};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ROOT: u64 = 1;
const BUCKET: &str = "cudele-mds";
/// How long moto may take to start answering (it imports a large Python package).
const MOTO_STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
const PATIENCE: Duration = Duration::from_secs(60);
const CREDENTIALS: [(&str, &str); 3] =
    [("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"), ("AWS_REGION", "us-east-1")];

/// A running moto_server; dropping it kills that process (by pid) and reaps it.
struct MotoServer {
    child: Child,
    port: u16,
    log: tempfile::NamedTempFile,
}

impl MotoServer {
    fn start() -> MotoServer {
        let executable = moto_server_executable();
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|listener| listener.local_addr())
            .expect("pick a free port")
            .port();
        let log = tempfile::NamedTempFile::new().expect("moto log file");
        let child = Command::new(&executable)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.reopen().expect("reopen log")))
            .stderr(Stdio::from(log.reopen().expect("reopen log")))
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {}: {error}", executable.display()));
        let mut server = MotoServer { child, port, log };
        let deadline = Instant::now() + MOTO_STARTUP_TIMEOUT;
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("moto_server exited during startup ({status}); its output:\n{}", server.log_text());
            }
            if http_request(port, "GET", "/").is_ok_and(|response| response.starts_with("HTTP/1.")) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not answer on port {port} within {MOTO_STARTUP_TIMEOUT:?}; its output:\n{}",
                server.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// object_store cannot create buckets; moto accepts a plain unsigned PUT.
    fn create_bucket(&self, bucket: &str) {
        let response = http_request(self.port, "PUT", &format!("/{bucket}")).expect("create bucket");
        assert!(response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200"), "{response}");
    }

    /// The bucket as the journal crate sees it, to inspect what the MDS wrote.
    fn store(&self) -> JournalStore {
        let options = StoreOptions {
            endpoint: Some(self.endpoint()),
            region: Some("us-east-1".into()),
            access_key_id: Some("test".into()),
            secret_access_key: Some("test".into()),
            allow_http: true,
        };
        JournalStore::open(&format!("s3://{BUCKET}"), &options).expect("open the bucket")
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn moto_server_executable() -> PathBuf {
    if let Some(path) = std::env::var_os("CUDELE_MOTO_SERVER") {
        return PathBuf::from(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|directory| directory.join("moto_server"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "moto_server is not on PATH; the S3 MDS test needs a real S3 server: run `pip install 'moto[server]'` \
                 (or set CUDELE_MOTO_SERVER to its path)"
            )
        })
}

/// One HTTP/1.1 request without a body; returns the whole response as text.
fn http_request(port: u16, method: &str, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, port).into(), HTTP_TIMEOUT)?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    Ok(String::from_utf8_lossy(&response).into_owned())
}

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
    let bucket = moto.store();
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
