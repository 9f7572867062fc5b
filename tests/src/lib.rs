//! Harness for end-to-end tests and benchmarks: start real `cudele-mds` processes, talk to
//! them over gRPC, and stop them by pid.
//!
//! Binaries are found next to the test executable's target directory (`target/debug` or
//! `target/release`), so run `cargo build --bins` before `cargo test` (the README's test
//! command does).

use anyhow::{bail, Context, Result};
use cudele_proto::auth::{AUTHORIZATION_HEADER, SESSION_HEADER};
use cudele_proto::pb::mds_client::MdsClient;
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

/// A `cudele-mds` child process, killed (SIGKILL, by pid) when dropped.
pub struct MdsProcess {
    child: Option<Child>,
    pub address: SocketAddr,
    pub data_dir: PathBuf,
    pub args: Vec<String>,
}

impl MdsProcess {
    /// Start an MDS on 127.0.0.1 with a free port; `args` are extra command-line options.
    pub fn start(data_dir: &Path, args: &[&str]) -> Result<MdsProcess> {
        Self::start_on(data_dir, "127.0.0.1:0", args)
    }

    pub fn start_on(data_dir: &Path, listen: &str, args: &[&str]) -> Result<MdsProcess> {
        let mut command = Command::new(binary("cudele-mds"));
        command
            .arg("--listen")
            .arg(listen)
            .arg("--data-dir")
            .arg(data_dir)
            .args(args)
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
        let listen = self.address.to_string();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // The port may linger briefly; retry the same address.
            match Self::start_on(&self.data_dir, &listen, &args) {
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

/// Adds the token and session headers to every request.
#[derive(Clone, Default)]
pub struct Headers {
    pub token: Option<String>,
    pub session: Option<u64>,
}

impl tonic::service::Interceptor for Headers {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.token {
            let value = format!("Bearer {token}").parse().map_err(|_| tonic::Status::internal("token"))?;
            request.metadata_mut().insert(AUTHORIZATION_HEADER, value);
        }
        if let Some(session) = self.session {
            request.metadata_mut().insert(SESSION_HEADER, session.to_string().parse().expect("digits"));
        }
        Ok(request)
    }
}

pub type ApiClient = MdsClient<InterceptedService<Channel, Headers>>;

/// A gRPC client with optional token and session.
pub async fn connect(address: SocketAddr, headers: Headers) -> Result<ApiClient> {
    let channel = Channel::from_shared(format!("http://{address}"))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("connecting to {address}"))?;
    Ok(MdsClient::with_interceptor(channel, headers))
}

/// Connect and open a session; returns the client carrying that session.
pub async fn connect_session(address: SocketAddr, token: Option<String>, name: &str) -> Result<(ApiClient, u64)> {
    let mut client = connect(address, Headers { token: token.clone(), session: None }).await?;
    let reply = client
        .open_session(cudele_proto::pb::OpenSessionRequest { client_name: name.to_string() })
        .await?
        .into_inner();
    let client = connect(address, Headers { token, session: Some(reply.session) }).await?;
    Ok((client, reply.session))
}

/// The errno a failed call carried (EIO if none).
pub fn errno_of(status: &tonic::Status) -> i32 {
    cudele_proto::error_from_status(status).errno()
}
