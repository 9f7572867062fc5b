//! Mounting: `-o` options, the fuser configuration, running a mount in the foreground or as
//! a daemon whose parent returns once the mount is live, signal handling, and unmounting
//! (including a dead mount whose process was killed).

use crate::data::ChunkStore;
use crate::error::ClientError;
use crate::fs::CudeleFs;
use crate::fuse::FuseAdapter;
use crate::kernel_cache::{KernelNotifier, KernelState};
use crate::metadata::{LocalMetadata, Metadata, RemoteMetadata, RemoteOptions};
use crate::runtime::Blocking;
use crate::subtree::{RemoteControl, SubtreeRouter};
use crate::sync::Arc;
use cudele_journal::store::{JournalStore, StoreOptions};
use fuser::{MountOption, SessionACL};
use nix::sys::signal::{SigSet, Signal};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// FUSE worker threads: requests mostly wait on the MDS or the object store, so a few more
/// than cores keeps both busy.
pub const FUSE_THREADS_DEFAULT: usize = 4;
pub const FUSE_THREADS_MAX: usize = 64;
/// The source column of /proc/mounts, and the subtype (type `fuse.cudele`).
pub const FSNAME_DEFAULT: &str = "cudele";
pub const SUBTYPE: &str = "cudele";
/// How long `cudele mount` waits for the daemon to report the mount live (it may spend up
/// to the outage timeout reaching the MDS first).
pub const MOUNT_READY_TIMEOUT_MS: u64 = 60_000;
/// Message the daemon sends its parent once the mount is live.
const READY_MESSAGE: &[u8] = b"ready\n";

/// Options mount(8) passes to helpers that mean nothing to a FUSE filesystem (or that
/// mount(8) itself already acted on).
const IGNORED_OPTIONS: [&str; 11] =
    ["defaults", "auto", "noauto", "user", "nouser", "users", "owner", "group", "nofail", "_netdev", "loop"];
/// Options mount.fuse3 adds when it runs us as the program of type fuse.cudele.
const IGNORED_VALUED_OPTIONS: [&str; 2] = ["subtype", "comment"];

/// Everything a mount needs.
#[derive(Debug, Clone)]
pub struct MountConfig {
    /// MDS address, `host:port`.
    pub server: String,
    pub mountpoint: PathBuf,
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) to verify the MDS's and its replicas' TLS certificates with
    /// (`tls_ca=`); set, the mount connects over TLS, unset, plaintext.
    pub tls_ca: Option<PathBuf>,
    /// Object store URL; by default the one the MDS hands out at OpenSession.
    pub store_url: Option<String>,
    /// Serve every user of the machine (the kernel checks permissions: default_permissions).
    pub allow_other: bool,
    pub fuse_threads: usize,
    pub fsname: String,
    /// Kernel mount flags (ro, nosuid, noexec, noatime, ...).
    pub kernel_flags: Vec<MountOption>,
    /// Where a daemonised mount logs (default: nowhere).
    pub log_file: Option<PathBuf>,
    pub outage_timeout: Duration,
    /// Where decoupled subtrees with Local Persist keep their client journals.
    pub journal_dir: PathBuf,
    /// Creates acknowledged before they are durable, replayed by this mount if the MDS
    /// restarts first (`early_replies=on|off`; see docs/DURABILITY.md).
    pub early_replies: bool,
    /// Where cache-miss reads go first (`replicas=auto|on|off`).
    pub replicas: crate::metadata::replica_reads::ReplicaMode,
}

/// Default directory for locally persisted client journals.
pub const JOURNAL_DIR_DEFAULT: &str = "/var/lib/cudele/journals";

impl MountConfig {
    pub fn new(server: impl Into<String>, mountpoint: impl Into<PathBuf>) -> Self {
        MountConfig {
            server: server.into(),
            mountpoint: mountpoint.into(),
            token_file: None,
            tls_ca: None,
            store_url: None,
            allow_other: true,
            fuse_threads: FUSE_THREADS_DEFAULT,
            fsname: FSNAME_DEFAULT.to_string(),
            kernel_flags: Vec::new(),
            log_file: None,
            outage_timeout: Duration::from_millis(crate::metadata::remote::OUTAGE_TIMEOUT_MS),
            journal_dir: PathBuf::from(JOURNAL_DIR_DEFAULT),
            early_replies: true,
            replicas: Default::default(),
        }
    }

    /// Apply one `-o` argument: comma-separated `name` or `name=value` options.
    pub fn apply_options(&mut self, options: &str) -> Result<(), ClientError> {
        for option in options.split(',').map(str::trim).filter(|option| !option.is_empty()) {
            self.apply_option(option)?;
        }
        Ok(())
    }

    fn apply_option(&mut self, option: &str) -> Result<(), ClientError> {
        let invalid =
            |reason: &str| ClientError::MountOption { option: option.to_string(), reason: reason.to_string() };
        let (name, value) = match option.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (option, None),
        };
        let flag = match (name, value) {
            ("token", Some(path)) => {
                self.token_file = Some(PathBuf::from(path));
                None
            }
            ("tls_ca", Some(path)) => {
                self.tls_ca = Some(PathBuf::from(path));
                None
            }
            ("store", Some(url)) => {
                self.store_url = Some(url.to_string());
                None
            }
            ("fsname", Some(fsname)) => {
                self.fsname = fsname.to_string();
                None
            }
            ("journal_dir", Some(path)) => {
                self.journal_dir = PathBuf::from(path);
                None
            }
            ("log", Some(path)) => {
                self.log_file = Some(PathBuf::from(path));
                None
            }
            ("threads", Some(count)) => {
                let count: usize = count.parse().map_err(|_| invalid("not a number"))?;
                if count == 0 || count > FUSE_THREADS_MAX {
                    return Err(invalid(&format!("between 1 and {FUSE_THREADS_MAX}")));
                }
                self.fuse_threads = count;
                None
            }
            ("outage_timeout_ms", Some(milliseconds)) => {
                self.outage_timeout = Duration::from_millis(milliseconds.parse().map_err(|_| invalid("not a number"))?);
                None
            }
            ("early_replies", Some(switch)) => {
                self.early_replies = match switch {
                    "on" => true,
                    "off" => false,
                    _ => return Err(invalid("on or off")),
                };
                None
            }
            ("replicas", Some(mode)) => {
                self.replicas = mode.parse().map_err(|reason: String| invalid(&reason))?;
                None
            }
            ("allow_other", None) => {
                self.allow_other = true;
                None
            }
            ("noallow_other", None) => {
                self.allow_other = false;
                None
            }
            // Always on: the kernel checks permissions from our attributes.
            ("default_permissions", None) => None,
            ("ro", None) => Some(MountOption::RO),
            ("rw", None) => Some(MountOption::RW),
            ("suid", None) => Some(MountOption::Suid),
            ("nosuid", None) => Some(MountOption::NoSuid),
            ("dev", None) => Some(MountOption::Dev),
            ("nodev", None) => Some(MountOption::NoDev),
            ("exec", None) => Some(MountOption::Exec),
            ("noexec", None) => Some(MountOption::NoExec),
            ("atime", None) => Some(MountOption::Atime),
            ("noatime", None) => Some(MountOption::NoAtime),
            ("sync", None) => Some(MountOption::Sync),
            ("async", None) => Some(MountOption::Async),
            ("dirsync", None) => Some(MountOption::DirSync),
            (name, None) if IGNORED_OPTIONS.contains(&name) => None,
            (name, _) if IGNORED_VALUED_OPTIONS.contains(&name) || name.starts_with("x-") => None,
            _ => return Err(invalid("unknown option (see `cudele mount --help`)")),
        };
        if let Some(flag) = flag {
            // A later flag overrides an earlier opposite one (`-o ro -o rw` is rw).
            let opposite = opposite_flag(&flag);
            self.kernel_flags.retain(|existing| Some(existing) != opposite.as_ref() && existing != &flag);
            self.kernel_flags.push(flag);
        }
        Ok(())
    }

    /// The fuser configuration: fsname, type fuse.cudele, default_permissions, allow_other,
    /// kernel flags, worker threads with their own /dev/fuse descriptors.
    pub fn fuser_config(&self) -> fuser::Config {
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            MountOption::FSName(self.fsname.clone()),
            // Passed to the kernel so /proc/mounts says fuse.cudele (fuser's Subtype option
            // only reaches fusermount, not a direct mount).
            MountOption::CUSTOM(format!("subtype={SUBTYPE}")),
            MountOption::DefaultPermissions,
        ];
        config.mount_options.extend(self.kernel_flags.iter().cloned());
        config.acl = if self.allow_other { SessionACL::All } else { SessionACL::Owner };
        config.n_threads = Some(self.fuse_threads);
        config.clone_fd = true;
        config
    }
}

fn opposite_flag(flag: &MountOption) -> Option<MountOption> {
    Some(match flag {
        MountOption::RO => MountOption::RW,
        MountOption::RW => MountOption::RO,
        MountOption::Suid => MountOption::NoSuid,
        MountOption::NoSuid => MountOption::Suid,
        MountOption::Dev => MountOption::NoDev,
        MountOption::NoDev => MountOption::Dev,
        MountOption::Exec => MountOption::NoExec,
        MountOption::NoExec => MountOption::Exec,
        MountOption::Atime => MountOption::NoAtime,
        MountOption::NoAtime => MountOption::Atime,
        MountOption::Sync => MountOption::Async,
        MountOption::Async => MountOption::Sync,
        _ => return None,
    })
}

/// Signals that end a mount cleanly (unmount, flush, close the session).
fn stop_signals() -> SigSet {
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGHUP);
    signals
}

/// The SERVER that mounts an in-process namespace instead of an MDS: nothing persists and
/// no other mount sees it; for trying cudele and for measuring the client without an MDS.
pub const LOCAL_SERVER: &str = "local";

/// Connect to the MDS and open the object store: the filesystem a mount serves.
pub fn connect(config: &MountConfig) -> Result<Arc<CudeleFs>, ClientError> {
    if config.server == LOCAL_SERVER {
        let runtime = Blocking::new("cudele-client").map_err(ClientError::io("starting the client runtime"))?;
        let url = config.store_url.clone().unwrap_or_else(|| "memory://".to_string());
        let objects = JournalStore::open(&url, &StoreOptions::default())
            .map_err(|error| ClientError::ObjectStore { url, reason: error.to_string() })?;
        let metadata: Arc<dyn Metadata> = Arc::new(LocalMetadata::new());
        return Ok(Arc::new(CudeleFs::new(metadata, ChunkStore::new(objects, runtime))));
    }
    let token = match &config.token_file {
        Some(path) => Some(
            cudele_proto::auth::read_token_file(path)
                .map_err(|cause| ClientError::TokenFile { path: path.display().to_string(), cause })?,
        ),
        None => None,
    };
    let tls = cudele_proto::transport::ClientTls::from_optional_file(config.tls_ca.as_deref())?;
    let runtime = Blocking::new("cudele-client").map_err(ClientError::io("starting the client runtime"))?;
    let mut options = RemoteOptions::new(config.server.clone(), token);
    options.tls = tls;
    options.outage_timeout = config.outage_timeout;
    options.early_replies = config.early_replies;
    options.replicas = config.replicas;
    let metadata = Arc::new(RemoteMetadata::connect(options, runtime.clone())?);
    let url = config.store_url.clone().unwrap_or_else(|| metadata.object_store_url());
    let objects = match JournalStore::open(&url, &StoreOptions::default()) {
        Ok(objects) => objects,
        Err(error) => {
            metadata.close();
            return Err(ClientError::ObjectStore { url, reason: error.to_string() });
        }
    };
    tracing::info!(server = %config.server, object_store = %url, session = metadata.session(), "connected");
    let control =
        Arc::new(RemoteControl { remote: metadata.clone(), objects: objects.clone(), runtime: runtime.clone() });
    let router = Arc::new(SubtreeRouter::new(metadata, control, config.journal_dir.clone()));
    start_sync_timer(&router);
    let metadata: Arc<dyn Metadata> = router;
    Ok(Arc::new(CudeleFs::new(metadata, ChunkStore::new(objects, runtime))))
}

/// Merge weak subtrees on their namespace-sync interval, until the router is dropped.
fn start_sync_timer(router: &Arc<SubtreeRouter>) {
    let router = Arc::downgrade(router);
    let spawned = std::thread::Builder::new().name("cudele-sync".into()).spawn(move || loop {
        std::thread::sleep(std::time::Duration::from_millis(crate::subtree::router::SYNC_TICK_MS));
        match router.upgrade() {
            Some(router) => router.sync_due(),
            None => return,
        }
    });
    if let Err(error) = spawned {
        tracing::warn!(%error, "no namespace-sync timer: sync_interval will not be honoured");
    }
}

/// Mount and serve until unmounted (or SIGTERM/SIGINT/SIGHUP, which unmount). `ready` runs
/// once the kernel has completed the FUSE handshake, i.e. the mount is live.
pub fn run_foreground(config: &MountConfig, ready: impl FnOnce()) -> Result<(), ClientError> {
    // Block the stop signals before any thread exists, so every thread inherits the mask
    // and only the waiter below receives them.
    stop_signals().thread_block().map_err(|error| ClientError::Io {
        context: "blocking signals".to_string(),
        cause: std::io::Error::from(error),
    })?;
    let fs = connect(config)?;
    let adapter = FuseAdapter::new(fs.clone());
    let kernel = adapter.kernel_state();
    let mut session = match fuser::Session::new(adapter, &config.mountpoint, &config.fuser_config()) {
        Ok(session) => session,
        Err(cause) => {
            fs.metadata().close();
            return Err(ClientError::Io { context: format!("mounting {}", config.mountpoint.display()), cause });
        }
    };
    attach_kernel_cache(&session, &fs, kernel);
    tracing::info!(mountpoint = %config.mountpoint.display(), "mounted");
    ready();
    let mut unmounter = session.unmount_callable();
    let mountpoint = config.mountpoint.clone();
    std::thread::Builder::new()
        .name("cudele-signals".to_string())
        .spawn(move || {
            if let Ok(signal) = stop_signals().wait() {
                tracing::info!(?signal, "unmounting");
                if let Err(error) = unmounter.unmount() {
                    // Busy (files open): detach now, the session ends with the last user.
                    tracing::warn!(%error, "unmount failed; detaching the mount lazily");
                    let _ = nix::mount::umount2(&mountpoint, nix::mount::MntFlags::MNT_DETACH);
                }
            }
        })
        .map_err(ClientError::io("starting the signal thread"))?;
    let result = session.run();
    // destroy() has flushed and closed already when the kernel said goodbye; this covers
    // a session that ended abnormally. Both steps are idempotent.
    fs.shutdown();
    result.map_err(|cause| ClientError::Io { context: "serving the mount".to_string(), cause })
}

/// Let the kernel cache entries and attributes if the metadata can invalidate them there
/// (see `crate::kernel_cache`); without a second handle on /dev/fuse it must ask every time.
fn attach_kernel_cache<F: fuser::Filesystem, M: Metadata + ?Sized>(
    session: &fuser::Session<F>,
    fs: &CudeleFs<M>,
    kernel: Arc<KernelState>,
) {
    use std::os::fd::AsFd;
    match session.as_fd().try_clone_to_owned() {
        Ok(device) => {
            let notifier = Arc::new(KernelNotifier::new(device, kernel.clone()));
            kernel.set_attached(fs.metadata().attach_kernel_cache(notifier));
        }
        Err(error) => tracing::warn!(%error, "no kernel caching: cannot duplicate the FUSE descriptor"),
    }
}

/// Mount in a child process that keeps serving after we return; return once the mount is
/// live, or with the child's error. Must be called before any other thread exists.
pub fn run_daemonized(config: MountConfig) -> Result<(), ClientError> {
    let mountpoint = std::fs::canonicalize(&config.mountpoint)
        .map_err(ClientError::io(format!("mount point {}", config.mountpoint.display())))?;
    let config = MountConfig { mountpoint, ..config };
    // Close-on-exec: helpers the child runs (fusermount3) must not hold the pipe open.
    let (reader, writer) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|error| ClientError::Io {
        context: "creating a pipe".to_string(),
        cause: std::io::Error::from(error),
    })?;
    // SAFETY: the process is single-threaded here (main calls this before starting any
    // runtime or thread), so the child may run arbitrary code after fork.
    match unsafe { nix::unistd::fork() } {
        Err(error) => {
            Err(ClientError::Io { context: "forking the mount daemon".to_string(), cause: std::io::Error::from(error) })
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            drop(writer);
            wait_for_daemon(reader, child)
        }
        Ok(nix::unistd::ForkResult::Child) => {
            drop(reader);
            let code = daemon_main(&config, writer);
            std::process::exit(code);
        }
    }
}

/// The parent's side: the child writes READY_MESSAGE or an error, then closes the pipe.
fn wait_for_daemon(reader: OwnedFd, child: nix::unistd::Pid) -> Result<(), ClientError> {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut message = Vec::new();
        let _ = std::fs::File::from(reader).read_to_end(&mut message);
        let _ = sender.send(message);
    });
    match receiver.recv_timeout(Duration::from_millis(MOUNT_READY_TIMEOUT_MS)) {
        Ok(message) if message == READY_MESSAGE => Ok(()),
        Ok(message) if !message.is_empty() => {
            let _ = nix::sys::wait::waitpid(child, None);
            Err(ClientError::Io {
                context: "mount failed".to_string(),
                cause: std::io::Error::other(String::from_utf8_lossy(&message).trim().to_string()),
            })
        }
        Ok(_) => {
            let status = nix::sys::wait::waitpid(child, None);
            Err(ClientError::Io {
                context: "mount failed".to_string(),
                cause: std::io::Error::other(format!("the mount process ended without a word: {status:?}")),
            })
        }
        Err(_) => {
            let _ = nix::sys::signal::kill(child, Signal::SIGTERM);
            Err(ClientError::Io {
                context: "mount failed".to_string(),
                cause: std::io::Error::other(format!("not ready after {MOUNT_READY_TIMEOUT_MS} ms")),
            })
        }
    }
}

/// The child's side: detach from the terminal, mount, report, serve. Returns the exit code.
fn daemon_main(config: &MountConfig, writer: OwnedFd) -> i32 {
    let mut report = std::fs::File::from(writer);
    if let Err(error) = detach(config) {
        let _ = report.write_all(format!("{error}").as_bytes());
        return 1;
    }
    let mut report = Some(report);
    let result = run_foreground(config, || {
        if let Some(mut report) = report.take() {
            let _ = report.write_all(READY_MESSAGE);
        }
    });
    match result {
        Ok(()) => 0,
        Err(error) => {
            tracing::error!(%error, "mount ended with an error");
            if let Some(mut report) = report.take() {
                let _ = report.write_all(format!("{error}").as_bytes());
            }
            1
        }
    }
}

/// New session, root as working directory, stdin/stdout to /dev/null, stderr (the log) to
/// the log file or /dev/null.
fn detach(config: &MountConfig) -> Result<(), ClientError> {
    let to_io = |context: &str| {
        let context = context.to_string();
        move |error: nix::Error| ClientError::Io { context, cause: std::io::Error::from(error) }
    };
    nix::unistd::setsid().map_err(to_io("setsid"))?;
    nix::unistd::chdir("/").map_err(to_io("chdir /"))?;
    let null =
        std::fs::OpenOptions::new().read(true).write(true).open("/dev/null").map_err(ClientError::io("/dev/null"))?;
    let log = match &config.log_file {
        Some(path) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(ClientError::io(format!("log file {}", path.display())))?,
        None => null.try_clone().map_err(ClientError::io("/dev/null"))?,
    };
    nix::unistd::dup2_stdin(&null).map_err(to_io("redirecting stdin"))?;
    nix::unistd::dup2_stdout(&null).map_err(to_io("redirecting stdout"))?;
    nix::unistd::dup2_stderr(&log).map_err(to_io("redirecting stderr"))?;
    Ok(())
}

/// Is `path` a mount point (per /proc/self/mountinfo)?
pub fn is_mounted(path: &Path) -> bool {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    let wanted = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    mountinfo.lines().filter_map(|line| line.split(' ').nth(4)).any(|mount_point| {
        Path::new(&unescape_mountinfo(mount_point)) == wanted || Path::new(&unescape_mountinfo(mount_point)) == path
    })
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'\\'
            && index + 3 < bytes.len()
            && bytes[index + 1..index + 4].iter().all(u8::is_ascii_digit)
        {
            let octal =
                std::str::from_utf8(&bytes[index + 1..index + 4]).ok().and_then(|s| u8::from_str_radix(s, 8).ok());
            if let Some(byte) = octal {
                out.push(byte);
                index += 4;
                continue;
            }
        }
        out.push(bytes[index]);
        index += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `cudele umount`: fusermount3 -u; for a dead mount whose process was killed ("Transport
/// endpoint is not connected") or without fusermount3, a lazy unmount (umount -l).
pub fn umount(mountpoint: &Path) -> Result<(), ClientError> {
    let fusermount = std::process::Command::new("fusermount3").arg("-u").arg(mountpoint).output();
    let fusermount_error = match fusermount {
        Ok(output) if output.status.success() => return Ok(()),
        Ok(output) => String::from_utf8_lossy(&output.stderr).trim().to_string(),
        Err(error) => format!("fusermount3: {error}"),
    };
    match nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) => Ok(()),
        Err(error) => Err(ClientError::Io {
            context: format!("unmounting {}", mountpoint.display()),
            cause: std::io::Error::other(format!("{fusermount_error}; umount -l: {error}")),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Our options, mount(8)'s generic ones (ignored) and unknown ones (refused).
    #[test]
    fn options() {
        let mut config = MountConfig::new("127.0.0.1:7070", "/mnt/x");
        config
            .apply_options("rw,token=/etc/cudele/token,tls_ca=/etc/cudele/ca.pem,store=file:///srv/objects,noatime,nofail,_netdev,defaults,x-systemd.automount,threads=8")
            .expect("options");
        assert_eq!(config.token_file.as_deref(), Some(Path::new("/etc/cudele/token")));
        assert_eq!(config.tls_ca.as_deref(), Some(Path::new("/etc/cudele/ca.pem")));
        assert_eq!(config.store_url.as_deref(), Some("file:///srv/objects"));
        assert_eq!(config.fuse_threads, 8);
        assert_eq!(config.kernel_flags, vec![MountOption::RW, MountOption::NoAtime]);
        config.apply_options("ro").expect("ro");
        assert_eq!(config.kernel_flags, vec![MountOption::NoAtime, MountOption::RO]);
        assert!(config.apply_options("frobnicate").is_err());
        assert!(config.apply_options("threads=0").is_err());
        config.apply_options("noallow_other").expect("noallow_other");
        assert_eq!(config.fuser_config().acl, SessionACL::Owner);
    }

    #[test]
    fn mountinfo_unescape() {
        assert_eq!(unescape_mountinfo("/mnt/with\\040space"), "/mnt/with space");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }
}
