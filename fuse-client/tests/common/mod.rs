//! Helpers shared by the integration tests: a mount guard that never leaves a stuck mount,
//! mounting a `CudeleFs` in-process, and a cudele-mds child process.
#![allow(dead_code)]

use cudele_client::fs::CudeleFs;
use cudele_client::fuse::FuseAdapter;
use cudele_client::metadata::Metadata;
use cudele_client::mount::{is_mounted, MountConfig};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long to wait for the kernel to show a mount, or for an MDS to start.
pub const WAIT_MS: u64 = 15_000;

/// Unmounts on drop, also when the test panics; falls back to a lazy unmount.
pub struct MountGuard {
    pub session: Option<fuser::BackgroundSession>,
    pub path: PathBuf,
    pub _directory: tempfile::TempDir,
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            if let Err(error) = session.umount_and_join() {
                eprintln!("unmount failed ({error}); detaching");
            }
        }
        if is_mounted(&self.path) {
            let _ = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Mount `fs` on a new temporary directory, or None when this machine cannot mount FUSE.
pub fn mount<M: Metadata + ?Sized + 'static>(fs: Arc<CudeleFs<M>>) -> Option<MountGuard> {
    if std::fs::OpenOptions::new().read(true).write(true).open("/dev/fuse").is_err() {
        eprintln!("skipping: /dev/fuse is not usable here");
        return None;
    }
    let directory = tempfile::tempdir().expect("tempdir");
    let path = directory.path().join("mnt");
    std::fs::create_dir(&path).expect("mountpoint");
    let mut config = MountConfig::new("test", &path);
    config.fuse_threads = 2;
    config.fsname = "cudele-test".to_string();
    let session = fuser::spawn_mount(FuseAdapter::new(fs), &path, &config.fuser_config()).expect("mount");
    let guard = MountGuard { session: Some(session), path: path.clone(), _directory: directory };
    let deadline = Instant::now() + Duration::from_millis(WAIT_MS);
    while !is_mounted(&path) {
        assert!(Instant::now() < deadline, "the mount never appeared");
        std::thread::sleep(Duration::from_millis(10));
    }
    Some(guard)
}

pub fn mds_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CUDELE_MDS_BIN") {
        return Some(PathBuf::from(path));
    }
    // target/debug/deps/remote_metadata-<hash> -> target/debug/cudele-mds
    let candidate = std::env::current_exe().ok()?.parent()?.parent()?.join("cudele-mds");
    candidate.exists().then_some(candidate)
}

/// A cudele-mds child process, killed on drop.
pub struct Mds {
    binary: PathBuf,
    pub data_dir: PathBuf,
    pub address: String,
    extra: Vec<String>,
    child: Option<Child>,
    _directory: tempfile::TempDir,
}

impl Mds {
    pub fn start(extra: &[&str]) -> Option<Mds> {
        let Some(binary) = mds_binary() else {
            eprintln!("skipping: no cudele-mds binary (cargo build -p cudele-mds, or set CUDELE_MDS_BIN)");
            return None;
        };
        let directory = tempfile::tempdir().expect("tempdir");
        let mut mds = Mds {
            binary,
            data_dir: directory.path().join("mds"),
            address: "127.0.0.1:0".to_string(),
            extra: extra.iter().map(|arg| arg.to_string()).collect(),
            child: None,
            _directory: directory,
        };
        mds.spawn();
        Some(mds)
    }

    pub fn spawn(&mut self) {
        let _ = std::fs::remove_file(self.data_dir.join("mds.addr"));
        let child = Command::new(&self.binary)
            .args(["--listen", &self.address, "--data-dir"])
            .arg(&self.data_dir)
            .args(&self.extra)
            // The MDS refuses to run without a token unless told so.
            .args((!self.extra.iter().any(|arg| arg == "--token-file")).then_some("--insecure"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start cudele-mds");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_millis(WAIT_MS);
        loop {
            if let Ok(address) = std::fs::read_to_string(self.data_dir.join("mds.addr")) {
                if !address.trim().is_empty() {
                    // Restarts reuse the port, as a real MDS restart would.
                    self.address = address.trim().to_string();
                    return;
                }
            }
            assert!(Instant::now() < deadline, "cudele-mds did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Mds {
    fn drop(&mut self) {
        self.kill();
    }
}
