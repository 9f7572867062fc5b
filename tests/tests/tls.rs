//! Transport and files (issue 12, item 9): TLS between mounts, CLI, MDS and replicas; no
//! unauthenticated MDS without `--insecure`; secret files and the data dir private to their
//! owner. Certificates are generated here (`cudele_e2e::pki`).

use cudele_e2e::pki::TestPki;
use cudele_e2e::{
    connect, connect_with_tls, cudele, fuse_available, poll_until, run_mds_exactly_expecting_refusal,
    write_secret_file, Headers, MdsProcess, Mount,
};
use cudele_proto::pb;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

const TOKEN: &str = "tls-test-secret";

/// A scratch directory with a token file (0600) and a test PKI.
struct Setup {
    root: tempfile::TempDir,
    token: PathBuf,
    pki: TestPki,
}

impl Setup {
    fn new() -> Setup {
        let root = tempfile::tempdir().expect("tempdir");
        let token = root.path().join("token");
        write_secret_file(&token, format!("{TOKEN}\n")).expect("write token");
        let pki = TestPki::generate(&root.path().join("pki"), "main").expect("generate certificates");
        Setup { root, token, pki }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    /// `--token-file TOKEN --tls-cert CERT --tls-key KEY`, and `more`.
    fn mds_args(&self, more: &[&str]) -> Vec<String> {
        let mut args = vec!["--token-file".to_string(), self.token.display().to_string()];
        args.extend(self.pki.server_args());
        args.extend(more.iter().map(|arg| arg.to_string()));
        args
    }

    fn start_mds(&self, name: &str, more: &[&str]) -> MdsProcess {
        let args = self.mds_args(more);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        MdsProcess::start(&self.path(name), &args).expect("start a TLS cudele-mds")
    }

    /// Mount options for the TLS MDS: `token=...,tls_ca=...`.
    fn mount_options(&self) -> String {
        format!("token={},tls_ca={}", self.token.display(), self.pki.ca.display())
    }

    /// `cudele status --server ADDRESS --token-file TOKEN --tls-ca CA --json`.
    fn status_json(&self, mds: &MdsProcess) -> serde_json::Value {
        let output = cudele([
            "status",
            "--server",
            &mds.address.to_string(),
            "--token-file",
            &self.token.display().to_string(),
            "--tls-ca",
            &self.pki.ca.display().to_string(),
            "--json",
        ])
        .expect("run cudele status")
        .expect_success("cudele status --tls-ca");
        serde_json::from_str(&output.stdout).expect("status is JSON")
    }
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|error| panic!("{}: {error}", path.display())).permissions().mode() & 0o7777
}

/// Every file and directory under `directory` (itself included).
fn walk(directory: &Path) -> Vec<PathBuf> {
    let mut found = vec![directory.to_path_buf()];
    let mut index = 0;
    while index < found.len() {
        let path = found[index].clone();
        index += 1;
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).expect("read_dir") {
                found.push(entry.expect("entry").path());
            }
        }
    }
    found
}

/// A real MDS serving TLS and a real FUSE mount with `tls_ca=`: create, write and read back
/// a file; `cudele status --tls-ca` reports the mount's session.
#[test]
fn mount_and_status_work_over_tls() {
    if !fuse_available() {
        eprintln!("skipping: /dev/fuse is not usable here");
        return;
    }
    let setup = Setup::new();
    let mds = setup.start_mds("mds", &[]);
    let mount = Mount::start(mds.address, &setup.path("mnt"), &setup.path("journals"), &setup.mount_options())
        .expect("mount over TLS");
    std::fs::create_dir(mount.path("dir")).expect("mkdir over TLS");
    let contents = b"carried over TLS\n".repeat(1000);
    std::fs::write(mount.path("dir/file"), &contents).expect("write over TLS");
    assert_eq!(std::fs::read(mount.path("dir/file")).expect("read back"), contents);
    let names: Vec<String> = std::fs::read_dir(mount.path("dir"))
        .expect("readdir")
        .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["file".to_string()]);

    let status = setup.status_json(&mds);
    let sessions = status["sessions"].as_array().expect("sessions");
    assert!(!sessions.is_empty(), "the mount's session is listed: {status}");
    assert!(status["operations"]["create"].as_u64().unwrap_or(0) >= 1, "creates counted: {status}");
}

/// Against a TLS MDS, a plaintext gRPC client and a TLS client trusting another CA both
/// fail to connect; a client with the right CA and token is served.
#[tokio::test]
async fn plaintext_and_foreign_ca_clients_are_refused() {
    let setup = Setup::new();
    let mds = setup.start_mds("mds", &[]);
    let headers = Headers { token: Some(TOKEN.to_string()), session: None };

    let plaintext = match connect(mds.address, headers.clone()).await {
        Ok(mut client) => {
            client.status(pb::StatusRequest::default()).await.map(|_| ()).map_err(|status| status.to_string())
        }
        Err(error) => Err(format!("{error:#}")),
    };
    assert!(plaintext.is_err(), "a plaintext client was served by the TLS MDS");

    let other = TestPki::generate(&setup.path("other-pki"), "other").expect("another CA");
    let other_tls = other.client_tls().expect("other CA");
    let foreign = match connect_with_tls(mds.address, headers.clone(), Some(&other_tls)).await {
        Ok(mut client) => {
            client.status(pb::StatusRequest::default()).await.map(|_| ()).map_err(|status| status.to_string())
        }
        Err(error) => Err(format!("{error:#}")),
    };
    let foreign = foreign.expect_err("a client trusting another CA accepted the MDS's certificate");
    eprintln!("plaintext: {plaintext:?}\nforeign CA: {foreign}");
    assert!(foreign.to_lowercase().contains("certificate") || foreign.contains("connect"), "{foreign}");

    let tls = setup.pki.client_tls().expect("CA");
    let mut client = connect_with_tls(mds.address, headers, Some(&tls)).await.expect("TLS client");
    client.status(pb::StatusRequest::default()).await.expect("status over TLS");

    // The CLI over plaintext is refused too, with a non-zero exit.
    let printed =
        cudele(["status", "--server", &mds.address.to_string(), "--token-file", &setup.token.display().to_string()])
            .expect("run cudele status")
            .expect_failure("plaintext cudele status against a TLS MDS");
    assert!(printed.contains("cannot reach"), "{printed}");
}

/// An MDS given neither --token-file nor --insecure refuses to start, saying why.
#[test]
fn mds_without_token_or_insecure_refuses_to_start() {
    let setup = Setup::new();
    let refused = run_mds_exactly_expecting_refusal(&setup.path("mds"), &[]).expect("run cudele-mds");
    assert!(!refused.status.success(), "exit status {}", refused.status);
    assert!(
        refused.stderr.contains("no --token-file") && refused.stderr.contains("--insecure"),
        "stderr: {}",
        refused.stderr
    );
}

/// A token file mode 0644 is refused by the MDS and by a mount, each naming the file and the
/// mode; nothing is mounted.
#[test]
fn token_file_readable_by_others_is_refused() {
    let setup = Setup::new();
    let open_token = setup.path("open-token");
    std::fs::write(&open_token, format!("{TOKEN}\n")).expect("write token");
    std::fs::set_permissions(&open_token, std::fs::Permissions::from_mode(0o644)).expect("chmod 644");
    let expected = ["0644", open_token.to_str().expect("utf-8")];

    let refused = run_mds_exactly_expecting_refusal(
        &setup.path("refused"),
        &["--token-file", open_token.to_str().expect("utf-8")],
    )
    .expect("run cudele-mds");
    assert!(!refused.status.success());
    for part in expected {
        assert!(refused.stderr.contains(part), "MDS stderr lacks {part:?}: {}", refused.stderr);
    }

    if !fuse_available() {
        eprintln!("skipping the mount half: /dev/fuse is not usable here");
        return;
    }
    let mds = setup.start_mds("mds", &[]);
    let mountpoint = setup.path("mnt");
    std::fs::create_dir_all(&mountpoint).expect("mountpoint");
    let options = format!(
        "token={},tls_ca={},journal_dir={}",
        open_token.display(),
        setup.pki.ca.display(),
        setup.path("journals").display()
    );
    let printed = cudele(["mount", &mds.address.to_string(), mountpoint.to_str().expect("utf-8"), "-o", &options])
        .expect("run cudele mount")
        .expect_failure("a mount with a 0644 token file");
    for part in expected {
        assert!(printed.contains(part), "mount output lacks {part:?}: {printed}");
    }
    assert!(!cudele_client::mount::is_mounted(&mountpoint), "the refused mount left something mounted");
}

/// The data dir is 0700 (also one that existed with 0755) and nothing in it — metadata
/// store, mds.addr, journal segments and snapshots under objects/ — is accessible by group
/// or others.
#[tokio::test]
async fn data_dir_and_its_files_are_private() {
    let setup = Setup::new();
    let data_dir = setup.path("mds");
    std::fs::create_dir(&data_dir).expect("mkdir");
    std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o755)).expect("chmod 755");
    let mds = setup.start_mds("mds", &["--snapshot-interval-ms", "100", "--flush-interval-ms", "50"]);
    let tls = setup.pki.client_tls().expect("CA");
    let headers = Headers { token: Some(TOKEN.to_string()), session: None };
    let mut client = connect_with_tls(mds.address, headers, Some(&tls)).await.expect("TLS client");
    let session = client
        .open_session(pb::OpenSessionRequest { client_name: "private-files".into() })
        .await
        .expect("open session")
        .into_inner()
        .credential;
    let headers = Headers { token: Some(TOKEN.to_string()), session: Some(session) };
    let mut client = connect_with_tls(mds.address, headers, Some(&tls)).await.expect("TLS client");
    for number in 0..20 {
        let request =
            pb::MkdirRequest { parent: 1, name: format!("d{number}").into_bytes(), mode: 0o755, uid: 0, gid: 0 };
        client.mkdir(request).await.expect("mkdir");
    }
    let snapshots = data_dir.join("objects/snapshots");
    let snapshotted = poll_until(Duration::from_secs(20), || {
        std::fs::read_dir(&snapshots).map(|listing| listing.count() > 0).unwrap_or(false)
    });
    assert!(snapshotted, "no snapshot appeared under {}", snapshots.display());

    assert_eq!(mode_of(&data_dir), 0o700, "the data dir");
    let paths = walk(&data_dir);
    for required in [data_dir.join("metastore"), data_dir.join("mds.addr"), data_dir.join("objects/journal")] {
        assert!(paths.contains(&required), "{} is missing", required.display());
    }
    let shared: Vec<String> = paths
        .iter()
        .filter(|path| mode_of(path) & 0o077 != 0)
        .map(|path| format!("{} {:04o}", path.display(), mode_of(path)))
        .collect();
    assert!(shared.is_empty(), "accessible by group or others:\n{}", shared.join("\n"));
}

/// Replicas under TLS: the instances the MDS launches serve TLS with its certificate and
/// verify it with --tls-ca; a mount with `tls_ca=` has its cache-miss reads served by them.
#[test]
fn replicas_serve_a_mount_over_tls() {
    if !fuse_available() {
        eprintln!("skipping: /dev/fuse is not usable here");
        return;
    }
    let setup = Setup::new();
    let ca = setup.pki.ca.display().to_string();
    let mds = setup
        .start_mds("mds", &["--tls-ca", &ca, "--replica-deployments", "1", "--replica-min", "1", "--replica-max", "1"]);
    let instances_up = poll_until(Duration::from_secs(30), || {
        setup.status_json(&mds)["replicas"]["instances"].as_u64().unwrap_or(0) >= 1
    });
    assert!(instances_up, "no replica instance registered: {}", setup.status_json(&mds)["replicas"]);

    let writer =
        Mount::start(mds.address, &setup.path("w"), &setup.path("wj"), &setup.mount_options()).expect("writer mount");
    let reader_options = format!("{},replicas=on", setup.mount_options());
    let reader = Mount::start(mds.address, &setup.path("r"), &setup.path("rj"), &reader_options).expect("reader mount");
    std::fs::create_dir(writer.path("work")).expect("mkdir");
    for number in 0..20 {
        std::fs::write(writer.path(format!("work/f{number}")), b"x").expect("create");
    }
    let served = poll_until(Duration::from_secs(20), || {
        for number in 0..20 {
            std::fs::metadata(reader.path(format!("work/f{number}"))).expect("stat through the reader");
        }
        let listed = std::fs::read_dir(reader.path("work")).expect("readdir").count();
        assert_eq!(listed, 20);
        // A write through the other mount invalidates, so the reader keeps missing its cache.
        std::fs::write(writer.path("work/f0"), b"again").expect("rewrite");
        let status = setup.status_json(&mds);
        let hits: u64 = status["replicas"]["hits"].as_u64().unwrap_or(0);
        let misses: u64 = status["replicas"]["misses"].as_u64().unwrap_or(0);
        hits + misses > 0 && hits > 0
    });
    let status = setup.status_json(&mds);
    eprintln!("replicas: {}", status["replicas"]);
    assert!(served, "the replicas served no read of the TLS mount: {}", status["replicas"]);
}
