//! Starting and stopping replica instances: the [`InstanceLauncher`] interface the
//! autoscaler drives, and [`LocalProcessLauncher`], which runs `cudele-mds replica` child
//! processes on this machine.
//!
//! # Writing a launcher for a cluster scheduler
//!
//! The autoscaler only decides *how many* instances each deployment runs; a launcher decides
//! *where*. A Kubernetes, Nomad or Slurm launcher implements the four methods:
//!
//! - [`InstanceLauncher::launch`] asks the scheduler for one more instance running
//!   `cudele-mds replica --mds <spec.mds_address> --deployment <spec.deployment>
//!   --launch-id <spec.launch_id> --listen <host:0> ...` (see [`LaunchSpec::arguments`]). It
//!   must return quickly: the instance makes itself known by registering with the MDS (with
//!   its launch id), which is when it starts counting; an instance that has not registered
//!   within [`crate::replica::autoscaler::LAUNCH_REGISTER_TIMEOUT`] is stopped and forgotten.
//!   The address it registers must be reachable by clients and by the MDS.
//! - [`InstanceLauncher::stop`] asks for the instance with that launch id to go away. The
//!   instance drains by itself on SIGTERM (stops serving, deregisters, exits); hard kills are
//!   safe too — the MDS stops counting an instance whose lease lapses.
//! - [`InstanceLauncher::has_exited`] answers true only when the launcher *knows* the instance
//!   can no longer serve (its process or pod is gone). The MDS then skips waiting out that
//!   instance's lease when it failed to acknowledge an invalidation. Answer false when in
//!   doubt: correctness never depends on it, only write latency after a crash.
//! - [`InstanceLauncher::poll`] is called on every autoscaler tick for housekeeping (reaping).
//!
//! Launchers are called from the autoscaler task and must not block for long.

use crate::replica::settings::InstanceOptions;
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a stopped instance may take to drain before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(3);
/// Exited launch ids remembered for [`InstanceLauncher::has_exited`].
const EXITED_REMEMBERED_MAX: usize = 4096;

/// What one instance is started with.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    pub launch_id: u64,
    pub deployment: u32,
    /// host:port of the MDS for the instance to register with.
    pub mds_address: String,
    pub options: InstanceOptions,
}

impl LaunchSpec {
    /// The `cudele-mds` arguments that start this instance.
    pub fn arguments(&self) -> Vec<String> {
        let mut arguments = vec![
            "replica".to_string(),
            "--mds".to_string(),
            self.mds_address.clone(),
            "--deployment".to_string(),
            self.deployment.to_string(),
            "--listen".to_string(),
            format!("{}:0", self.options.listen_host),
            "--launch-id".to_string(),
            self.launch_id.to_string(),
            "--concurrency-limit".to_string(),
            self.options.concurrency_limit.to_string(),
            "--queue-length-max".to_string(),
            self.options.queue_length_max.to_string(),
            "--service-time-us".to_string(),
            self.options.service_time.as_micros().to_string(),
            "--cache-items-max".to_string(),
            self.options.cache_items_max.to_string(),
        ];
        let files = [
            ("--token-file", &self.options.token_file),
            ("--tls-cert", &self.options.tls_cert),
            ("--tls-key", &self.options.tls_key),
            ("--tls-ca", &self.options.tls_ca),
        ];
        for (flag, path) in files {
            if let Some(path) = path {
                arguments.push(flag.to_string());
                arguments.push(path.display().to_string());
            }
        }
        arguments
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("starting a replica instance: {0}")]
    Spawn(#[from] std::io::Error),
}

/// Starts and stops replica instances for the autoscaler (see the module documentation).
pub trait InstanceLauncher: Send + Sync {
    fn launch(&self, spec: &LaunchSpec) -> Result<(), LaunchError>;
    fn stop(&self, launch_id: u64);
    fn has_exited(&self, launch_id: u64) -> bool;
    fn poll(&self) {}
    /// Stop every instance (MDS shutdown); may block up to [`STOP_GRACE`].
    fn stop_all(&self);
}

struct LaunchedProcess {
    child: Child,
    /// When SIGTERM was sent, if it was.
    stopping_since: Option<Instant>,
}

struct Processes {
    running: HashMap<u64, LaunchedProcess>,
    exited: VecDeque<u64>,
    exited_set: HashSet<u64>,
}

/// Runs instances as child processes of this MDS (`<current executable> replica ...`).
///
/// Children get `PR_SET_PDEATHSIG = SIGKILL`, so they die with the MDS even when it is
/// killed with SIGKILL. Linux delivers that signal when the *thread* that spawned the child
/// exits, so spawn from a long-lived thread: the autoscaler runs on a tokio worker thread,
/// which lives as long as the runtime. Instances also exit by themselves when they cannot
/// reach the MDS for a while.
pub struct LocalProcessLauncher {
    executable: PathBuf,
    processes: Mutex<Processes>,
    /// The replica credential handed to every instance (in its environment, not on its
    /// command line, where every local user could read it).
    replica_token: Option<String>,
}

/// Environment variable carrying the replica token to an instance the MDS launched.
pub const REPLICA_TOKEN_ENV: &str = "CUDELE_REPLICA_TOKEN";

impl LocalProcessLauncher {
    pub fn new(executable: PathBuf) -> LocalProcessLauncher {
        LocalProcessLauncher {
            executable,
            processes: Mutex::new(Processes {
                running: HashMap::new(),
                exited: VecDeque::new(),
                exited_set: HashSet::new(),
            }),
            replica_token: None,
        }
    }

    /// Instances get `token` as their credential towards the MDS.
    pub fn with_replica_token(mut self, token: Option<String>) -> Self {
        self.replica_token = token;
        self
    }

    /// A launcher that runs this very binary (`cudele-mds`).
    pub fn current_exe() -> std::io::Result<LocalProcessLauncher> {
        Ok(Self::new(std::env::current_exe()?))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Processes> {
        self.processes.lock().expect("launcher lock poisoned")
    }

    /// The pids of the running children, by launch id (for tests and status).
    pub fn pids(&self) -> Vec<(u64, u32)> {
        self.lock().running.iter().map(|(id, process)| (*id, process.child.id())).collect()
    }
}

fn signal(child: &Child, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(child.id()) else { return };
    // SAFETY: kill(2) with a pid we spawned and have not reaped (so it cannot be reused).
    unsafe {
        libc::kill(pid, signal);
    }
}

fn remember_exited(processes: &mut Processes, launch_id: u64) {
    if processes.exited_set.insert(launch_id) {
        processes.exited.push_back(launch_id);
        while processes.exited.len() > EXITED_REMEMBERED_MAX {
            if let Some(oldest) = processes.exited.pop_front() {
                processes.exited_set.remove(&oldest);
            }
        }
    }
}

impl InstanceLauncher for LocalProcessLauncher {
    fn launch(&self, spec: &LaunchSpec) -> Result<(), LaunchError> {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new(&self.executable);
        command.args(spec.arguments()).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::inherit());
        if let Some(token) = &self.replica_token {
            command.env(REPLICA_TOKEN_ENV, token);
        }
        let parent = std::process::id();
        // SAFETY: the closure runs between fork and exec and calls only async-signal-safe
        // functions (prctl, getppid, _exit).
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The MDS may have died before prctl took effect.
                if libc::getppid() as u32 != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let child = command.spawn()?;
        tracing::info!(
            launch_id = spec.launch_id,
            deployment = spec.deployment,
            pid = child.id(),
            "replica instance started"
        );
        self.lock().running.insert(spec.launch_id, LaunchedProcess { child, stopping_since: None });
        Ok(())
    }

    fn stop(&self, launch_id: u64) {
        let mut processes = self.lock();
        if let Some(process) = processes.running.get_mut(&launch_id) {
            if process.stopping_since.is_none() {
                signal(&process.child, libc::SIGTERM);
                process.stopping_since = Some(Instant::now());
                tracing::info!(launch_id, pid = process.child.id(), "replica instance stopping");
            }
        }
    }

    fn has_exited(&self, launch_id: u64) -> bool {
        let mut processes = self.lock();
        if processes.exited_set.contains(&launch_id) {
            return true;
        }
        let exited = match processes.running.get_mut(&launch_id) {
            Some(process) => matches!(process.child.try_wait(), Ok(Some(_))),
            None => false,
        };
        if exited {
            processes.running.remove(&launch_id);
            remember_exited(&mut processes, launch_id);
        }
        exited
    }

    fn poll(&self) {
        let mut processes = self.lock();
        let mut gone = Vec::new();
        for (launch_id, process) in processes.running.iter_mut() {
            match process.child.try_wait() {
                Ok(Some(status)) => {
                    if process.stopping_since.is_none() {
                        tracing::warn!(launch_id, %status, "replica instance exited unexpectedly");
                    }
                    gone.push(*launch_id);
                }
                Ok(None) => {
                    if process.stopping_since.is_some_and(|since| since.elapsed() >= STOP_GRACE) {
                        signal(&process.child, libc::SIGKILL);
                    }
                }
                Err(error) => {
                    tracing::warn!(launch_id, %error, "waiting for a replica instance failed");
                    gone.push(*launch_id);
                }
            }
        }
        for launch_id in gone {
            processes.running.remove(&launch_id);
            remember_exited(&mut processes, launch_id);
        }
    }

    fn stop_all(&self) {
        let launch_ids: Vec<u64> = self.lock().running.keys().copied().collect();
        for launch_id in &launch_ids {
            self.stop(*launch_id);
        }
        let deadline = Instant::now() + STOP_GRACE;
        loop {
            self.poll();
            if self.lock().running.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut processes = self.lock();
        for (_, mut process) in processes.running.drain() {
            signal(&process.child, libc::SIGKILL);
            let _ = process.child.wait();
        }
    }
}

impl Drop for LocalProcessLauncher {
    fn drop(&mut self) {
        let mut processes = self.lock();
        for (_, mut process) in processes.running.drain() {
            signal(&process.child, libc::SIGKILL);
            let _ = process.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Launched instances get the MDS's token file, certificate, key and CA.
    #[test]
    fn launch_arguments_pass_on_the_secrets_and_tls_files() {
        let options = InstanceOptions {
            token_file: Some(PathBuf::from("/etc/cudele/token")),
            tls_cert: Some(PathBuf::from("/etc/cudele/mds.pem")),
            tls_key: Some(PathBuf::from("/etc/cudele/mds.key")),
            tls_ca: Some(PathBuf::from("/etc/cudele/ca.pem")),
            ..InstanceOptions::default()
        };
        let spec = LaunchSpec { launch_id: 7, deployment: 1, mds_address: "127.0.0.1:7070".into(), options };
        let arguments = spec.arguments();
        for (flag, value) in [
            ("--token-file", "/etc/cudele/token"),
            ("--tls-cert", "/etc/cudele/mds.pem"),
            ("--tls-key", "/etc/cudele/mds.key"),
            ("--tls-ca", "/etc/cudele/ca.pem"),
        ] {
            let position = arguments.iter().position(|argument| argument == flag).expect(flag);
            assert_eq!(arguments[position + 1], value);
        }
        let plain = LaunchSpec { options: InstanceOptions::default(), ..spec };
        assert!(!plain.arguments().iter().any(|argument| argument.starts_with("--tls") || argument == "--token-file"));
    }
}
