//! Harness for end-to-end tests and benchmarks: start real `cudele-mds` processes, talk to
//! them over gRPC, and stop them by pid.
//!
//! Binaries are found next to the test executable's target directory (`target/debug` or
//! `target/release`), so run `cargo build --bins` before `cargo test` (the README's test
//! command does).
//!
//! [`bench`] holds what the benchmark binaries share (CPU accounting, timed phases, plots);
//! [`pki`] makes test certificates for TLS.

pub mod bench;
pub mod pki;

use anyhow::{bail, Context, Result};
use cudele_proto::auth::{AUTHORIZATION_HEADER, SESSION_HEADER};
use cudele_proto::pb::mds_client::MdsClient;
use cudele_proto::transport::ClientTls;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// How long a started MDS may take to print its address.
pub const MDS_START_TIMEOUT: Duration = Duration::from_secs(60);

/// The directory holding the workspace's binaries for this build profile.
pub fn binary_dir() -> PathBuf {
    if let Ok(directory) = std::env::var("CUDELE_BIN_DIR") {
        return PathBuf::from(directory);
    }
    // target/<profile>/deps/<test-binary>
    let executable = std::env::current_exe().expect("current_exe");
    let deps = executable.parent().expect("deps dir");
    deps.parent().expect("profile dir").to_path_buf()
}

pub fn binary(name: &str) -> PathBuf {
    let path = binary_dir().join(name);
    assert!(path.exists(), "{} is missing: run `cargo build --bins` first", path.display());
    path
}

/// `--insecure` when `args` give no `--token-file` (and no `--insecure` already): the MDS
/// refuses to start without authentication unless told so, and most tests do not need it.
pub fn insecure_unless_token(args: &[&str]) -> Option<&'static str> {
    (!args.iter().any(|arg| *arg == "--token-file" || *arg == "--insecure")).then_some("--insecure")
}

/// Write a secret file (token, private key) readable by its owner only: clients and the MDS
/// refuse one that group or others may read.
pub fn write_secret_file(path: &Path, contents: impl AsRef<[u8]>) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.write_all(contents.as_ref())
}

/// A `cudele-mds` child process, killed (SIGKILL, by pid) when dropped.
pub struct MdsProcess {
    child: Option<Child>,
    pub address: SocketAddr,
    pub data_dir: PathBuf,
    pub args: Vec<String>,
    /// Extra environment variables of the child (kept for `restart`).
    pub env: Vec<(String, String)>,
}

impl MdsProcess {
    /// Start an MDS on 127.0.0.1 with a free port; `args` are extra command-line options.
    pub fn start(data_dir: &Path, args: &[&str]) -> Result<MdsProcess> {
        Self::start_on(data_dir, "127.0.0.1:0", args)
    }

    /// Start an MDS with `deployments` cache deployments of `min..=max` replica instances each
    /// and more `--replica-NAME VALUE` options from `settings`.
    pub fn start_with_replicas(
        data_dir: &Path,
        (deployments, min, max): (u32, u32, u32),
        settings: &[(&str, &str)],
    ) -> Result<MdsProcess> {
        let mut args = vec![
            "--replica-deployments".to_string(),
            deployments.to_string(),
            "--replica-min".to_string(),
            min.to_string(),
            "--replica-max".to_string(),
            max.to_string(),
        ];
        for (name, value) in settings {
            args.push(format!("--replica-{name}"));
            args.push(value.to_string());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Self::start(data_dir, &args)
    }

    pub fn start_on(data_dir: &Path, listen: &str, args: &[&str]) -> Result<MdsProcess> {
        Self::start_on_with_env(data_dir, listen, args, &[])
    }

    /// Start with extra environment variables for the child (e.g. S3 credentials).
    pub fn start_with_env(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<MdsProcess> {
        Self::start_on_with_env(data_dir, "127.0.0.1:0", args, env)
    }

    /// Start with extra environment variables; without `--token-file` among `args` the MDS
    /// is started `--insecure` (see [`insecure_unless_token`]).
    pub fn start_on_with_env(data_dir: &Path, listen: &str, args: &[&str], env: &[(&str, &str)]) -> Result<MdsProcess> {
        let mut command = Command::new(binary("cudele-mds"));
        command.envs(env.iter().copied());
        command
            .arg("--listen")
            .arg(listen)
            .arg("--data-dir")
            .arg(data_dir)
            .args(args)
            .args(insecure_unless_token(args))
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command.spawn().context("spawning cudele-mds")?;
        let stdout = child.stdout.take().context("mds stdout")?;
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(address) = line.strip_prefix("cudele-mds listening on ") {
                    let _ = sender.send(address.to_string());
                }
            }
        });
        let address = match receiver.recv_timeout(MDS_START_TIMEOUT) {
            Ok(address) => address.parse()?,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait()?;
                bail!("cudele-mds did not start (exit {status})");
            }
        };
        Ok(MdsProcess {
            child: Some(child),
            address,
            data_dir: data_dir.to_path_buf(),
            args: args.iter().map(|arg| arg.to_string()).collect(),
            env: env.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect(),
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|child| child.id())
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait (bounded) for a clean exit; SIGKILL if it does not come.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else { return Ok(()) };
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                if !status.success() {
                    bail!("cudele-mds exited with {status}");
                }
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        bail!("cudele-mds did not stop within 30 s of SIGTERM")
    }

    /// Start again on the same data dir and address, with the same options.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = self.env.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
        let listen = self.address.to_string();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // The port may linger briefly; retry the same address.
            match Self::start_on_with_env(&self.data_dir, &listen, &args, &env) {
                Ok(mut started) => {
                    self.child = started.child.take();
                    return Ok(());
                }
                Err(error) if Instant::now() < deadline => {
                    eprintln!("restart retry: {error}");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(error) => return Err(error),
            }
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }
}

impl Drop for MdsProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Adds the token and session headers to every request. `session` is the header value
/// sent as is: the credential OpenSession returned (or, in hostile tests, a forged one).
#[derive(Clone, Default)]
pub struct Headers {
    pub token: Option<String>,
    pub session: Option<String>,
}

impl tonic::service::Interceptor for Headers {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.token {
            let value = format!("Bearer {token}").parse().map_err(|_| tonic::Status::internal("token"))?;
            request.metadata_mut().insert(AUTHORIZATION_HEADER, value);
        }
        if let Some(session) = &self.session {
            let value = session.parse().map_err(|_| tonic::Status::internal("session header value"))?;
            request.metadata_mut().insert(SESSION_HEADER, value);
        }
        Ok(request)
    }
}

pub type ApiClient = MdsClient<InterceptedService<Channel, Headers>>;

/// A gRPC client with optional token and session.
pub async fn connect(address: SocketAddr, headers: Headers) -> Result<ApiClient> {
    connect_with_tls(address, headers, None).await
}

/// [`connect`], over TLS verified with `tls`'s CA when given (the clients' own channel
/// builder, `cudele_proto::transport::endpoint`).
pub async fn connect_with_tls(address: SocketAddr, headers: Headers, tls: Option<&ClientTls>) -> Result<ApiClient> {
    let channel = cudele_proto::transport::endpoint(&address.to_string(), tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("connecting to {address}"))?;
    Ok(MdsClient::with_interceptor(channel, headers)
        .max_decoding_message_size(cudele_proto::MESSAGE_BYTES_MAX)
        .max_encoding_message_size(cudele_proto::MESSAGE_BYTES_MAX))
}

/// Connect and open a session; returns the client carrying that session and its id.
pub async fn connect_session(address: SocketAddr, token: Option<String>, name: &str) -> Result<(ApiClient, u64)> {
    let (client, session, _) = connect_session_with_credential(address, token, name).await?;
    Ok((client, session))
}

/// [`connect_session`], also returning the session's credential (the header value).
pub async fn connect_session_with_credential(
    address: SocketAddr,
    token: Option<String>,
    name: &str,
) -> Result<(ApiClient, u64, String)> {
    let mut client = connect(address, Headers { token: token.clone(), session: None }).await?;
    let reply =
        client.open_session(cudele_proto::pb::OpenSessionRequest { client_name: name.to_string() }).await?.into_inner();
    let client = connect(address, Headers { token, session: Some(reply.credential.clone()) }).await?;
    Ok((client, reply.session, reply.credential))
}

/// The errno a failed call carried (EIO if none).
pub fn errno_of(status: &tonic::Status) -> i32 {
    cudele_proto::error_from_status(status).errno()
}

// ----- Helpers for the API, crash, rebuild and S3 tests and the benchmark -----

/// How a `cudele-mds` run that was expected to refuse to start ended.
#[derive(Debug)]
pub struct RefusedStart {
    pub status: std::process::ExitStatus,
    pub stderr: String,
}

/// Run `cudele-mds` on `data_dir` expecting it to refuse to start: wait (bounded) for it to
/// exit and return its exit status and stderr. An MDS that starts serving instead is killed
/// and reported as an error. `--insecure` is added as by [`MdsProcess::start`].
pub fn run_mds_expecting_refusal(data_dir: &Path, args: &[&str]) -> Result<RefusedStart> {
    let mut all_args: Vec<&str> = args.to_vec();
    all_args.extend(insecure_unless_token(args));
    run_mds_exactly_expecting_refusal(data_dir, &all_args)
}

/// [`run_mds_expecting_refusal`] with exactly `args` (nothing added).
pub fn run_mds_exactly_expecting_refusal(data_dir: &Path, args: &[&str]) -> Result<RefusedStart> {
    let mut child = Command::new(binary("cudele-mds"))
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning cudele-mds")?;
    let stdout = child.stdout.take().context("mds stdout")?;
    let mut stderr = child.stderr.take().context("mds stderr")?;
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("cudele-mds listening on ") {
                let _ = sender.send(line);
            }
        }
    });
    let deadline = Instant::now() + MDS_START_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            let stderr = stderr_reader.join().unwrap_or_default();
            return Ok(RefusedStart { status, stderr });
        }
        if let Ok(line) = receiver.try_recv() {
            let _ = child.kill();
            let _ = child.wait();
            bail!("cudele-mds started ({line}) although it should have refused");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("cudele-mds neither started nor exited within {MDS_START_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `file://` URL of a local directory (made absolute).
pub fn file_url(directory: &Path) -> String {
    let absolute = directory.canonicalize().unwrap_or_else(|_| directory.to_path_buf());
    format!("file://{}", absolute.display())
}

/// Poll `condition` every 20 ms until it holds or `timeout` passes; true if it held.
pub async fn wait_until<F, Fut>(timeout: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

use cudele_proto::pb;

/// One session's client with a method per RPC, taking plain values and returning the reply's
/// payload (or the gRPC status, whose errno [`errno_of`] extracts).
#[derive(Clone)]
pub struct Api {
    pub client: ApiClient,
    pub session: u64,
    /// The session's credential (`cudele-session` header value).
    pub credential: String,
}

type Call<T> = std::result::Result<T, tonic::Status>;

fn attr_of(reply: tonic::Response<pb::AttrReply>) -> Call<pb::Attr> {
    reply.into_inner().attr.ok_or_else(|| tonic::Status::internal("reply without attributes"))
}

impl Api {
    /// Connect and open a session named `name`.
    pub async fn open(address: SocketAddr, token: Option<String>, name: &str) -> Result<Api> {
        let (client, session, credential) = connect_session_with_credential(address, token, name).await?;
        Ok(Api { client, session, credential })
    }

    pub async fn lookup(&mut self, parent: u64, name: impl AsRef<[u8]>) -> Call<pb::Attr> {
        attr_of(self.client.lookup(pb::EntryRequest { parent, name: name.as_ref().to_vec() }).await?)
    }

    pub async fn getattr(&mut self, ino: u64) -> Call<pb::Attr> {
        attr_of(self.client.get_attr(pb::InoRequest { ino }).await?)
    }

    pub async fn setattr(&mut self, request: pb::SetAttrRequest) -> Call<pb::Attr> {
        attr_of(self.client.set_attr(request).await?)
    }

    /// Create a node of any non-directory kind (regular, fifo, socket, devices).
    pub async fn mknod(
        &mut self,
        parent: u64,
        name: impl AsRef<[u8]>,
        kind: pb::FileKind,
        mode: u32,
        rdev: u32,
    ) -> Call<pb::Attr> {
        let request =
            pb::CreateRequest { parent, name: name.as_ref().to_vec(), kind: kind as i32, mode, uid: 0, gid: 0, rdev };
        attr_of(self.client.create(request).await?)
    }

    /// Create a regular file with mode `mode`.
    pub async fn create(&mut self, parent: u64, name: impl AsRef<[u8]>, mode: u32) -> Call<pb::Attr> {
        self.mknod(parent, name, pb::FileKind::Regular, mode, 0).await
    }

    pub async fn mkdir(&mut self, parent: u64, name: impl AsRef<[u8]>, mode: u32) -> Call<pb::Attr> {
        let request = pb::MkdirRequest { parent, name: name.as_ref().to_vec(), mode, uid: 0, gid: 0 };
        attr_of(self.client.mkdir(request).await?)
    }

    pub async fn symlink(&mut self, parent: u64, name: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Call<pb::Attr> {
        let request = pb::SymlinkRequest {
            parent,
            name: name.as_ref().to_vec(),
            target: target.as_ref().to_vec(),
            uid: 0,
            gid: 0,
        };
        attr_of(self.client.symlink(request).await?)
    }

    pub async fn link(&mut self, ino: u64, new_parent: u64, new_name: impl AsRef<[u8]>) -> Call<pb::Attr> {
        attr_of(self.client.link(pb::LinkRequest { ino, new_parent, new_name: new_name.as_ref().to_vec() }).await?)
    }

    pub async fn unlink(&mut self, parent: u64, name: impl AsRef<[u8]>) -> Call<()> {
        self.client.unlink(pb::EntryRequest { parent, name: name.as_ref().to_vec() }).await.map(|_| ())
    }

    pub async fn rmdir(&mut self, parent: u64, name: impl AsRef<[u8]>) -> Call<()> {
        self.client.rmdir(pb::EntryRequest { parent, name: name.as_ref().to_vec() }).await.map(|_| ())
    }

    pub async fn rename(
        &mut self,
        parent: u64,
        name: impl AsRef<[u8]>,
        new_parent: u64,
        new_name: impl AsRef<[u8]>,
        mode: pb::RenameMode,
    ) -> Call<()> {
        let request = pb::RenameRequest {
            parent,
            name: name.as_ref().to_vec(),
            new_parent,
            new_name: new_name.as_ref().to_vec(),
            mode: mode as i32,
        };
        self.client.rename(request).await.map(|_| ())
    }

    pub async fn readlink(&mut self, ino: u64) -> Call<Vec<u8>> {
        Ok(self.client.readlink(pb::InoRequest { ino }).await?.into_inner().target)
    }

    /// One readdir page of at most `limit` entries after the name `after`.
    pub async fn readdir_page(&mut self, ino: u64, after: &[u8], limit: u32, plus: bool) -> Call<pb::ReaddirReply> {
        Ok(self.client.readdir(pb::ReaddirRequest { ino, after: after.to_vec(), limit, plus }).await?.into_inner())
    }

    /// Every entry of directory `ino`, read in pages of `limit`, resuming from the last name.
    pub async fn readdir_all(&mut self, ino: u64, limit: u32) -> Call<Vec<pb::DirEntry>> {
        let mut entries = Vec::new();
        let mut after = Vec::new();
        loop {
            let page = self.readdir_page(ino, &after, limit, false).await?;
            if let Some(last) = page.entries.last() {
                after = last.name.clone();
            }
            let end = page.end || page.entries.is_empty();
            entries.extend(page.entries);
            if end {
                return Ok(entries);
            }
        }
    }

    pub async fn set_xattr(
        &mut self,
        ino: u64,
        name: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        mode: pb::XattrMode,
    ) -> Call<()> {
        let request = pb::SetXattrRequest {
            ino,
            name: name.as_ref().to_vec(),
            value: value.as_ref().to_vec(),
            mode: mode as i32,
        };
        self.client.set_xattr(request).await.map(|_| ())
    }

    pub async fn get_xattr(&mut self, ino: u64, name: impl AsRef<[u8]>, size: u32) -> Call<Vec<u8>> {
        let request = pb::GetXattrRequest { ino, name: name.as_ref().to_vec(), size };
        Ok(self.client.get_xattr(request).await?.into_inner().value)
    }

    pub async fn list_xattr(&mut self, ino: u64, size: u32) -> Call<Vec<u8>> {
        Ok(self.client.list_xattr(pb::ListXattrRequest { ino, size }).await?.into_inner().value)
    }

    pub async fn remove_xattr(&mut self, ino: u64, name: impl AsRef<[u8]>) -> Call<()> {
        self.client.remove_xattr(pb::RemoveXattrRequest { ino, name: name.as_ref().to_vec() }).await.map(|_| ())
    }

    pub async fn status(&mut self) -> Call<pb::StatusReply> {
        Ok(self.client.status(pb::StatusRequest::default()).await?.into_inner())
    }

    pub async fn dump(&mut self) -> Call<pb::DumpReply> {
        Ok(self.client.dump(pb::Empty {}).await?.into_inner())
    }

    /// The dump, after asserting that the namespace invariants hold.
    pub async fn checked_dump(&mut self) -> String {
        let reply = self.dump().await.expect("dump");
        assert_eq!(reply.invariant_violation, "", "namespace invariant violated; dump:\n{}", reply.dump);
        reply.dump
    }
}

/// Bytes and count of the journal segment objects in a local object directory.
pub fn segment_objects(objects_dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut segments: Vec<(PathBuf, u64)> = std::fs::read_dir(objects_dir.join("journal"))
        .map(|listing| {
            listing
                .filter_map(|entry| entry.ok())
                .filter(|entry| entry.file_name().to_string_lossy().ends_with(".seg"))
                .map(|entry| (entry.path(), entry.metadata().map(|meta| meta.len()).unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    segments.sort();
    segments
}

/// Build a varied subtree named `tag` under `parent`: nested directories, regular files with
/// xattrs, sizes, layouts and modes, symlinks, hard links across directories, a FIFO and a
/// device, then renames (plain, across directories, exchange), unlinks and an rmdir. About
/// `5.5 * files_per_directory + 20` entries. Returns the subtree's inode.
pub async fn populate(api: &mut Api, parent: u64, tag: &str, files_per_directory: usize) -> Call<u64> {
    let top = api.mkdir(parent, tag, 0o755).await?.ino;
    let mut directories = Vec::new();
    for name in ["alpha", "beta", "gamma", "delta"] {
        let directory = api.mkdir(top, name, 0o750).await?.ino;
        let deep = api.mkdir(directory, "deep", 0o700).await?.ino;
        api.mkdir(deep, "er", 0o755).await?;
        directories.push(directory);
    }
    let mut files = Vec::new();
    for (index, directory) in directories.iter().copied().enumerate() {
        for number in 0..files_per_directory {
            let name = format!("f{number:03}");
            let file = api.create(directory, &name, 0o644).await?.ino;
            api.set_xattr(file, "user.index", format!("{index}/{number}"), pb::XattrMode::XattrCreate).await?;
            if number % 2 == 0 {
                api.set_xattr(file, "user.blob", vec![number as u8; number * 13], pb::XattrMode::XattrUpsert).await?;
            }
            if number % 3 == 0 {
                api.setattr(pb::SetAttrRequest { ino: file, size: Some(number as u64 * 1000), ..Default::default() })
                    .await?;
            }
            if number % 4 == 1 {
                let request = pb::SetLayoutRequest {
                    ino: file,
                    size: number as u64 * 4096 + 1,
                    chunk_size_bytes: 1 << 22,
                    mtime: Some(pb::Timestamp { seconds: 1_600_000_000 + number as i64, nanoseconds: 7 }),
                    // A published chunk, so that dump comparisons cover chunk maps too.
                    chunks: vec![pb::Chunk {
                        index: 0,
                        writer: api.session,
                        serial: number as u64,
                        length_bytes: number as u32 * 4096 + 1,
                    }],
                };
                api.client.set_layout(request).await?;
            }
            if number % 6 == 0 {
                api.setattr(pb::SetAttrRequest {
                    ino: file,
                    mode: Some(0o4750),
                    uid: Some(1000),
                    ..Default::default()
                })
                .await?;
            }
            if number % 5 == 0 {
                api.symlink(directory, format!("l{number:03}"), format!("../{name}")).await?;
            }
            if number % 7 == 0 {
                let next = directories[(index + 1) % directories.len()];
                api.link(file, next, format!("h{index}-{number:03}")).await?;
            }
            files.push((directory, name, file));
        }
    }
    api.mknod(top, "fifo", pb::FileKind::Fifo, 0o600, 0).await?;
    api.mknod(top, "null", pb::FileKind::CharDevice, 0o666, libc::makedev(1, 3) as u32).await?;
    for (position, (directory, name, _)) in files.iter().enumerate() {
        let next = directories[(position / files_per_directory.max(1) + 1) % directories.len()];
        match position % 11 {
            0 => api.unlink(*directory, name).await?,
            3 => {
                api.rename(*directory, name, *directory, format!("renamed-{name}"), pb::RenameMode::RenameReplace)
                    .await?
            }
            5 => {
                api.rename(*directory, name, next, format!("moved-{position}"), pb::RenameMode::RenameNoreplace).await?
            }
            _ => {}
        }
    }
    api.rename(directories[0], "deep", directories[1], "deep", pb::RenameMode::RenameExchange).await?;
    let deep = api.lookup(directories[3], "deep").await?.ino;
    api.rmdir(deep, "er").await?;
    api.rmdir(directories[3], "deep").await?;
    api.remove_xattr(files[1].2, "user.index").await?;
    Ok(top)
}

/// Copy a directory tree (files and directories only).
pub fn copy_tree(source: &Path, target: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(target)?;
    for entry in std::fs::read_dir(source)? {
        let entry = entry?;
        let destination = target.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &destination)?;
        } else {
            std::fs::copy(entry.path(), &destination)?;
        }
    }
    Ok(())
}

/// Assert two `Dump` listings are identical, showing only the lines that differ.
#[track_caller]
pub fn assert_same_dump(actual: &str, expected: &str, context: &str) {
    if actual == expected {
        return;
    }
    let expected_lines: std::collections::BTreeSet<&str> = expected.lines().collect();
    let actual_lines: std::collections::BTreeSet<&str> = actual.lines().collect();
    let only_expected: Vec<&&str> = expected_lines.difference(&actual_lines).take(20).collect();
    let only_actual: Vec<&&str> = actual_lines.difference(&expected_lines).take(20).collect();
    panic!(
        "{context}: dumps differ ({} lines expected, {} actual)\n only in expected (first 20):\n  {}\n only in actual \
         (first 20):\n  {}",
        expected.lines().count(),
        actual.lines().count(),
        only_expected.iter().map(|line| line.to_string()).collect::<Vec<_>>().join("\n  "),
        only_actual.iter().map(|line| line.to_string()).collect::<Vec<_>>().join("\n  "),
    );
}

// ----- Real mounts through the `cudele` command (programmable-subtree tests) -----

/// How long one `cudele` command may run before the harness kills it and fails.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a mount may take to come up, and an unmounted mount process to exit (it merges
/// its decoupled subtrees first).
pub const MOUNT_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether this machine can mount FUSE (tests that need it skip otherwise).
pub fn fuse_available() -> bool {
    std::fs::OpenOptions::new().read(true).write(true).open("/dev/fuse").is_ok()
}

/// What a finished `cudele` command printed.
#[derive(Debug)]
pub struct CliOutput {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Panic (naming `what` and showing the output) unless the command succeeded.
    #[track_caller]
    pub fn expect_success(self, what: &str) -> CliOutput {
        assert!(self.success(), "{what} failed ({}):\nstdout: {}\nstderr: {}", self.status, self.stdout, self.stderr);
        self
    }

    /// Panic unless the command failed; returns stdout and stderr together.
    #[track_caller]
    pub fn expect_failure(self, what: &str) -> String {
        assert!(!self.success(), "{what} should have failed:\nstdout: {}\nstderr: {}", self.stdout, self.stderr);
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Run the debug/release `cudele` binary with `args`; killed (and an error) after
/// [`CLI_TIMEOUT`].
pub fn cudele<I, S>(args: I) -> Result<CliOutput>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(|arg| arg.as_ref().to_os_string()).collect();
    let mut child = Command::new(binary("cudele"))
        .args(&args)
        .env("CUDELE_LOG", std::env::var("CUDELE_LOG").unwrap_or_else(|_| "warn".into()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning cudele")?;
    let mut stdout = child.stdout.take().context("cudele stdout")?;
    let mut stderr = child.stderr.take().context("cudele stderr")?;
    let stdout_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut text);
        text
    });
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let deadline = Instant::now() + CLI_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("`cudele {:?}` did not finish within {CLI_TIMEOUT:?}", args);
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Ok(CliOutput {
        status,
        stdout: stdout_reader.join().unwrap_or_default(),
        stderr: stderr_reader.join().unwrap_or_default(),
    })
}

/// A real mount: `cudele mount -f SERVER MOUNTPOINT -o journal_dir=DIR[,options]` run as a
/// child (so a test can SIGKILL it). Dropping it unmounts with `cudele umount` (which also
/// cleans a dead mount), waits for the process to exit, and SIGKILLs it if it does not:
/// never a stuck mount.
pub struct Mount {
    child: Option<Child>,
    /// The mount point, canonical (compared with /proc/self/mountinfo even when dead).
    pub mountpoint: PathBuf,
    pub journal_dir: PathBuf,
    pub server: SocketAddr,
    pub name: String,
    options: String,
}

impl Mount {
    /// Mount the MDS at `server` on `mountpoint` (created if missing) with client journals in
    /// `journal_dir`; `options` are extra `-o` options ("" for none). Returns once live.
    pub fn start(server: SocketAddr, mountpoint: &Path, journal_dir: &Path, options: &str) -> Result<Mount> {
        std::fs::create_dir_all(mountpoint)?;
        std::fs::create_dir_all(journal_dir)?;
        let mountpoint = mountpoint.canonicalize()?;
        let name = mountpoint.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
        let mut mount = Mount {
            child: None,
            mountpoint,
            journal_dir: journal_dir.to_path_buf(),
            server,
            name,
            options: options.to_string(),
        };
        mount.spawn()?;
        Ok(mount)
    }

    fn spawn(&mut self) -> Result<()> {
        let mut all_options = format!("journal_dir={}", self.journal_dir.display());
        if !self.options.is_empty() {
            all_options.push(',');
            all_options.push_str(&self.options);
        }
        let mut child = Command::new(binary("cudele"))
            .arg("mount")
            .arg(self.server.to_string())
            .arg(&self.mountpoint)
            .arg("-o")
            .arg(&all_options)
            .arg("-f")
            // fuser warns when its own unmount at exit finds `cudele umount` did it already.
            .env("CUDELE_LOG", std::env::var("CUDELE_LOG").unwrap_or_else(|_| "warn,fuser::session=error".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning cudele mount")?;
        let stderr = child.stderr.take().context("mount stderr")?;
        let (sender, receiver) = std::sync::mpsc::channel();
        let name = self.name.clone();
        // Keep draining the log for the mount's whole life (a full pipe would stall it).
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.starts_with("cudele: mounted on ") {
                    let _ = sender.send(());
                } else {
                    eprintln!("[mount {name}] {line}");
                }
            }
        });
        let deadline = Instant::now() + MOUNT_TIMEOUT;
        loop {
            if receiver.try_recv().is_ok() {
                self.child = Some(child);
                return Ok(());
            }
            if let Some(status) = child.try_wait()? {
                self.cleanup_dead_mount();
                bail!("cudele mount on {} exited before it was live ({status})", self.mountpoint.display());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                self.cleanup_dead_mount();
                bail!("cudele mount on {} was not live within {MOUNT_TIMEOUT:?}", self.mountpoint.display());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `relative` inside the mount.
    pub fn path(&self, relative: impl AsRef<Path>) -> PathBuf {
        self.mountpoint.join(relative)
    }

    /// The pid of the process serving the mount (None once killed or unmounted).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_mounted(&self) -> bool {
        cudele_client::mount::is_mounted(&self.mountpoint)
    }

    /// SIGKILL the mount process (a client crash) and reap it; the dead mount stays until
    /// [`Mount::unmount`] or [`Mount::restart`].
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Clean up (after a crash) and mount again with the same options and journal dir.
    pub fn restart(&mut self) -> Result<()> {
        self.unmount()?;
        self.spawn()
    }

    fn cleanup_dead_mount(&self) {
        if self.is_mounted() {
            if let Ok(output) = cudele(["umount".as_ref(), self.mountpoint.as_os_str()]) {
                if !output.success() {
                    eprintln!("[mount {}] umount: {}", self.name, output.stderr.trim());
                }
            }
        }
    }

    /// `cudele umount`, then wait (bounded) for the mount process to finish its shutdown
    /// (merges of decoupled subtrees); SIGKILL it if it does not, and clean a dead mount.
    pub fn unmount(&mut self) -> Result<()> {
        let mut problem = None;
        if self.is_mounted() {
            match cudele(["umount".as_ref(), self.mountpoint.as_os_str()]) {
                Ok(output) if output.success() => {}
                Ok(output) => problem = Some(format!("cudele umount: {}", output.stderr.trim())),
                Err(error) => problem = Some(format!("cudele umount: {error}")),
            }
        }
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + MOUNT_TIMEOUT;
            loop {
                match child.try_wait() {
                    Ok(Some(status)) => {
                        if !status.success() && problem.is_none() {
                            problem = Some(format!("the mount process exited with {status}"));
                        }
                        break;
                    }
                    Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        problem.get_or_insert_with(|| "the mount process did not exit; killed it".to_string());
                        break;
                    }
                }
            }
        }
        self.cleanup_dead_mount();
        match problem {
            Some(problem) => bail!("unmounting {}: {problem}", self.mountpoint.display()),
            None => Ok(()),
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Err(error) = self.unmount() {
            eprintln!("{error}");
        }
    }
}

/// Poll `condition` every 50 ms until it holds or `timeout` passes; true if it held.
pub fn poll_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
