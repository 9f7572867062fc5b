//! A real S3 server for tests: moto's `moto_server` on a free loopback port, killed by its
//! pid when dropped. Shared by journal/tests/s3.rs and tests/tests/s3_mds.rs (included there
//! with `#[path]`), so there is one harness.
//!
//! `moto_server` must be on PATH (`pip install 'moto[server]'`), or named by the environment
//! variable `CUDELE_MOTO_SERVER`. A missing server fails the test rather than skipping it.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cudele_journal::store::{JournalStore, StoreOptions};

/// How long moto may take to start answering (it imports a large Python package).
const MOTO_STARTUP_TIMEOUT_MS: u64 = 60_000;
const MOTO_POLL_INTERVAL_MS: u64 = 100;
const HTTP_TIMEOUT_MS: u64 = 5_000;

/// A running moto_server; dropping it kills that process (by pid) and reaps it.
pub struct MotoServer {
    child: Child,
    port: u16,
    log: tempfile::NamedTempFile,
}

impl MotoServer {
    pub fn start() -> MotoServer {
        let executable = moto_server_executable();
        // Bind port 0 to learn a free port, then hand it to moto.
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
        server.wait_until_ready();
        server
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn wait_until_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_millis(MOTO_STARTUP_TIMEOUT_MS);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("moto_server exited during startup ({status}); its output:\n{}", self.log_text());
            }
            if let Ok(response) = http_request(self.port, "GET", "/") {
                if response.starts_with("HTTP/1.") {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not answer on port {} within {MOTO_STARTUP_TIMEOUT_MS} ms; its output:\n{}",
                self.port,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(MOTO_POLL_INTERVAL_MS));
        }
    }

    /// object_store cannot create buckets; moto accepts a plain unsigned PUT.
    pub fn create_bucket(&self, bucket: &str) {
        let response = http_request(self.port, "PUT", &format!("/{bucket}")).expect("create bucket");
        assert!(
            response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200"),
            "create bucket {bucket}: {response}"
        );
    }

    pub fn store(&self, url: &str) -> JournalStore {
        let options = StoreOptions {
            endpoint: Some(self.endpoint()),
            region: Some("us-east-1".into()),
            access_key_id: Some("cudele-test".into()),
            secret_access_key: Some("cudele-test-secret".into()),
            allow_http: true,
        };
        JournalStore::open(url, &options).unwrap_or_else(|error| panic!("open {url}: {error}"))
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        // Child::kill signals exactly this pid (the shim execs into python, keeping the pid).
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
                "moto_server is not on PATH; the S3 store tests need a real S3 server: \
                 run `pip install 'moto[server]'` (or set CUDELE_MOTO_SERVER to its path)"
            )
        })
}

/// One HTTP/1.1 request without a body; returns the whole response as text.
fn http_request(port: u16, method: &str, path: &str) -> std::io::Result<String> {
    let timeout = Duration::from_millis(HTTP_TIMEOUT_MS);
    let mut stream = TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, port).into(), timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    Ok(String::from_utf8_lossy(&response).into_owned())
}
