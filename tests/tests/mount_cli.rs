//! Mounting the way an administrator does (issue 4), through real processes: mount(8) with
//! the `/sbin/mount.fuse.cudele` helper, an fstab line (`mount -T FSTAB`), token files, and
//! kill -9 of a daemonised `cudele mount` while a file is open on it; also fuse(8)'s generic
//! helper (`mount.fuse3 cudele#SERVER`), which runs `cudele` from PATH.
//!
//! mount(8) only looks for helpers in /sbin (and /sbin/fs.d, /sbin/fs), never on PATH, so
//! these tests link `/sbin/mount.fuse.cudele` to the `cudele` binary under test, as
//! scripts/demo.sh does for the installed one, and leave it there. The real /etc/fstab is
//! never read or written. Every wait is a bounded poll; tests skip (with a message) where
//! FUSE is not usable.

use cudele_e2e::{
    binary, connect, cudele, fuse_available, poll_until, ApiClient, CliOutput, Headers, MdsProcess, Mount,
};
use cudele_proto::pb;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Bound for anything that should happen "soon" on a loaded 2-core machine.
const SOON: Duration = Duration::from_secs(30);
/// How long mount(8), umount(8) or a mount helper may run before the test fails.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// Where mount(8) looks for the helper of type `fuse.cudele`.
const HELPER_PATH: &str = "/sbin/mount.fuse.cudele";
/// The MDS's shared secret in the token tests.
const TOKEN: &str = "mount-cli-secret-7f3a";

// ----- the helper, commands, mounts -----

/// Link [`HELPER_PATH`] to the `cudele` under test (once per process; atomically replaces a
/// link to another build). Returns the binary it points to.
fn install_helper() -> &'static Path {
    static INSTALLED: OnceLock<PathBuf> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let target = binary("cudele").canonicalize().expect("canonical cudele path");
        let helper = Path::new(HELPER_PATH);
        if std::fs::read_link(helper).ok().as_deref() == Some(target.as_path()) {
            return target;
        }
        let staging = helper.with_file_name(format!(".mount.fuse.cudele.{}", std::process::id()));
        let _ = std::fs::remove_file(&staging);
        std::os::unix::fs::symlink(&target, &staging).expect("link the mount helper");
        std::fs::rename(&staging, helper).unwrap_or_else(|error| panic!("installing {HELPER_PATH}: {error}"));
        eprintln!("installed {HELPER_PATH} -> {}", target.display());
        target
    })
}

/// What a finished command printed.
#[derive(Debug)]
struct Outcome {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Outcome {
    #[track_caller]
    fn expect_success(self, what: &str) -> Outcome {
        assert!(
            self.status.success(),
            "{what} failed ({}):\nstdout: {}\nstderr: {}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }

    /// Panic unless the command failed; returns what it printed.
    #[track_caller]
    fn expect_failure(self, what: &str) -> String {
        assert!(!self.status.success(), "{what} should have failed:\nstdout: {}\nstderr: {}", self.stdout, self.stderr);
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Run `program` with output captured in files (a daemon that kept a pipe open could not
/// stall us); killed, and a failure, after [`COMMAND_TIMEOUT`].
fn run(program: impl AsRef<OsStr>, args: &[&OsStr]) -> Outcome {
    let mut command = Command::new(program);
    command.args(args);
    run_command(&mut command)
}

/// [`run`] for a prepared command.
fn run_command(command: &mut Command) -> Outcome {
    let output = tempfile::tempdir().expect("tempdir");
    let (stdout_path, stderr_path) = (output.path().join("stdout"), output.path().join("stderr"));
    let mut child = command
        .env("CUDELE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .unwrap_or_else(|error| panic!("spawning {command:?}: {error}"));
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} did not finish within {COMMAND_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
    Outcome { status, stdout: read(&stdout_path), stderr: read(&stderr_path) }
}

/// `mount -t fuse.cudele SERVER MOUNTPOINT -o OPTIONS`.
fn mount_t(server: SocketAddr, mountpoint: &Path, options: &str) -> Outcome {
    let server = server.to_string();
    run(
        "mount",
        &[
            "-t".as_ref(),
            "fuse.cudele".as_ref(),
            server.as_ref(),
            mountpoint.as_os_str(),
            "-o".as_ref(),
            options.as_ref(),
        ],
    )
}

/// `cudele mount SERVER MOUNTPOINT -o OPTIONS` (daemonises; returns once live).
fn cudele_mount(server: SocketAddr, mountpoint: &Path, options: &str) -> CliOutput {
    let server = server.to_string();
    let args =
        [OsStr::new("mount"), OsStr::new(&server), mountpoint.as_os_str(), OsStr::new("-o"), OsStr::new(options)];
    cudele(args).expect("run cudele mount")
}

/// One line of /proc/self/mountinfo, split into the fields the tests look at.
#[derive(Debug)]
struct MountInfo {
    /// Per-mount options (rw, nosuid, nodev, noatime, ...).
    mount_options: Vec<String>,
    filesystem_type: String,
    source: String,
}

/// The mountinfo entry of `mountpoint` (the last one: the top of a stack), if mounted.
fn mount_info(mountpoint: &Path) -> Option<MountInfo> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let wanted = mountpoint.to_str().expect("utf-8 mount point");
    mountinfo.lines().rev().find_map(|line| {
        let (front, back) = line.split_once(" - ")?;
        let front: Vec<&str> = front.split(' ').collect();
        let back: Vec<&str> = back.split(' ').collect();
        if front.get(4) != Some(&wanted) {
            return None;
        }
        Some(MountInfo {
            mount_options: front.get(5)?.split(',').map(str::to_string).collect(),
            filesystem_type: back.first()?.to_string(),
            source: back.get(1)?.to_string(),
        })
    })
}

fn is_mounted(mountpoint: &Path) -> bool {
    mount_info(mountpoint).is_some()
}

/// A mount made by mount(8) or the daemonising `cudele mount`: on drop, unmounted with
/// `cudele umount` (which also cleans up a dead mount), then its daemon (found through the
/// MDS's session list) gets a bounded wait to exit and a SIGKILL if it does not.
struct DaemonMount {
    mountpoint: PathBuf,
    daemon: Option<Daemon>,
}

impl DaemonMount {
    /// Guard `mountpoint` (mounted or about to be); `daemon` as found later.
    fn guard(mountpoint: &Path) -> DaemonMount {
        DaemonMount { mountpoint: mountpoint.to_path_buf(), daemon: None }
    }
}

impl Drop for DaemonMount {
    fn drop(&mut self) {
        if is_mounted(&self.mountpoint) {
            match cudele(["umount".as_ref(), self.mountpoint.as_os_str()]) {
                Ok(output) if output.success() => {}
                Ok(output) => eprintln!("cudele umount {}: {}", self.mountpoint.display(), output.stderr.trim()),
                Err(error) => eprintln!("cudele umount {}: {error}", self.mountpoint.display()),
            }
        }
        if let Some(daemon) = self.daemon.take() {
            if !poll_until(SOON, || !daemon.is_running()) && daemon.kill9() {
                eprintln!("the mount daemon {} did not exit after unmount; killed it", daemon.pid);
            }
        }
    }
}

/// A mount daemon, known by pid and start time, so that a recycled pid is never taken for it.
#[derive(Debug, Clone, Copy)]
struct Daemon {
    pid: u32,
    started: u64,
}

impl Daemon {
    /// The live process `pid`, after asserting that it runs the `cudele` under test.
    #[track_caller]
    fn identify(pid: u32) -> Daemon {
        let executable = std::fs::read_link(format!("/proc/{pid}/exe")).expect("the mount process is alive");
        // A build while the process runs replaces the file: the link then ends in " (deleted)".
        let executable = executable.to_string_lossy();
        let executable = executable.strip_suffix(" (deleted)").unwrap_or(&executable);
        assert_eq!(Path::new(executable), install_helper(), "pid {pid} is not the cudele under test");
        let (_, started) = process_state(pid).expect("the mount process is alive");
        Daemon { pid, started }
    }

    /// Some thread has not exited yet. Once every thread is a zombie or gone, the process's
    /// files are closed, so its FUSE connection is gone. (The leader turns zombie while other
    /// threads may still hold the files, and /proc/PID/exe vanishes earlier still.)
    fn is_running(&self) -> bool {
        if !matches!(process_state(self.pid), Some((_, started)) if started == self.started) {
            return false;
        }
        let Ok(threads) = std::fs::read_dir(format!("/proc/{}/task", self.pid)) else { return false };
        threads.filter_map(Result::ok).any(|thread| {
            let stat = std::fs::read_to_string(thread.path().join("stat")).unwrap_or_default();
            let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
            state.is_some_and(|state| !"ZXx".contains(state))
        })
    }

    /// SIGKILL, if still running; whether it was signalled.
    fn kill9(&self) -> bool {
        self.is_running()
            && nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid as i32), nix::sys::signal::Signal::SIGKILL)
                .is_ok()
    }
}

/// State (field 3) and start time (field 22) from /proc/PID/stat.
fn process_state(pid: u32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields from the state on, after the parenthesised command name.
    let (_, rest) = stat.rsplit_once(") ")?;
    let fields: Vec<&str> = rest.split(' ').collect();
    Some((fields.first()?.chars().next()?, fields.get(22 - 3)?.parse().ok()?))
}

/// The MDS as an operator sees it: Status and Dump, which need no session.
struct Observer {
    runtime: tokio::runtime::Runtime,
    client: ApiClient,
}

impl Observer {
    fn connect(server: SocketAddr, token: Option<&str>) -> Observer {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
        let headers = Headers { token: token.map(str::to_string), session: None };
        let client = runtime.block_on(connect(server, headers)).expect("connect to the MDS");
        Observer { runtime, client }
    }

    /// Live sessions: (session id, client name).
    fn sessions(&mut self) -> Vec<(u64, String)> {
        let status =
            self.runtime.block_on(self.client.status(pb::StatusRequest::default())).expect("Status").into_inner();
        status.sessions.into_iter().map(|session| (session.session, session.client_name)).collect()
    }

    /// The pids of the mount processes holding sessions (client names are `host:pid`).
    fn mount_pids(&mut self) -> Vec<u32> {
        self.sessions()
            .iter()
            .filter_map(|(_, name)| name.rsplit_once(':').and_then(|(_, pid)| pid.parse().ok()))
            .collect()
    }

    /// The daemon of the one mount whose pid is not in `known`, after asserting there is
    /// exactly one.
    #[track_caller]
    fn new_mount(&mut self, known: &[u32]) -> Daemon {
        let new: Vec<u32> = self.mount_pids().into_iter().filter(|pid| !known.contains(pid)).collect();
        assert_eq!(new.len(), 1, "expected one new mount session; sessions: {:?}", self.sessions());
        Daemon::identify(new[0])
    }

    /// The namespace dump, after asserting the MDS's invariant checks pass.
    fn checked_dump(&mut self) -> String {
        let reply = self.runtime.block_on(self.client.dump(pb::Empty {})).expect("Dump").into_inner();
        assert_eq!(reply.invariant_violation, "", "namespace invariant violated; dump:\n{}", reply.dump);
        reply.dump
    }
}

/// A test's directory, MDS and token file; None (and a message) where FUSE is unusable.
struct Setup {
    mds: MdsProcess,
    token_file: Option<PathBuf>,
    root: tempfile::TempDir,
}

impl Setup {
    fn start(with_token: bool, mds_args: &[&str]) -> Option<Setup> {
        if !fuse_available() {
            eprintln!("skipping: /dev/fuse is not usable here");
            return None;
        }
        install_helper();
        let root = tempfile::tempdir().expect("tempdir");
        let token_file = with_token.then(|| {
            let path = root.path().join("token");
            cudele_e2e::write_secret_file(&path, format!("{TOKEN}\n")).expect("write token");
            path
        });
        let mut args: Vec<&str> = mds_args.to_vec();
        if let Some(path) = &token_file {
            // The same secret as the admin token, so that the observer may Dump (an
            // operator's call); the mounts' behaviour does not depend on their role.
            let path = path.to_str().expect("utf-8 path");
            args.extend(["--token-file", path, "--admin-token-file", path]);
        }
        let mds = MdsProcess::start(&root.path().join("mds"), &args).expect("start cudele-mds");
        Some(Setup { mds, token_file, root })
    }

    /// The directory `name` under the test's root (created if missing), canonical.
    fn directory(&self, name: &str) -> PathBuf {
        let path = self.root.path().join(name);
        std::fs::create_dir_all(&path).expect("mkdir");
        path.canonicalize().expect("canonical path")
    }

    /// `token=FILE,journal_dir=DIR` for a mount named `name` (no token= without a token).
    fn options(&self, name: &str) -> String {
        let journals = self.directory(&format!("journals-{name}"));
        match &self.token_file {
            Some(token) => format!("token={},journal_dir={}", token.display(), journals.display()),
            None => format!("journal_dir={}", journals.display()),
        }
    }

    fn observer(&self) -> Observer {
        Observer::connect(self.mds.address, self.token_file.as_ref().map(|_| TOKEN))
    }

    /// A second mount through the harness (`cudele mount -f`, a child of the test).
    fn harness_mount(&self, name: &str) -> Mount {
        let token = self.token_file.as_ref().map(|token| format!("token={}", token.display())).unwrap_or_default();
        Mount::start(self.mds.address, &self.directory(name), &self.directory(&format!("journals-{name}")), &token)
            .unwrap_or_else(|error| panic!("mount {name}: {error}"))
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("reading {}: {error}", path.display()))
}

fn write(path: &Path, contents: &str) {
    std::fs::write(path, contents).unwrap_or_else(|error| panic!("writing {}: {error}", path.display()))
}

fn errno<T: std::fmt::Debug>(result: std::io::Result<T>) -> i32 {
    match result {
        Ok(value) => panic!("expected an error, got {value:?}"),
        Err(error) => error.raw_os_error().unwrap_or_else(|| panic!("no errno in {error}")),
    }
}

/// Names in a directory, sorted.
fn names(directory: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(directory)
        .unwrap_or_else(|error| panic!("listing {}: {error}", directory.display()))
        .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Unmount with umount(8); assert the mount is gone and its daemon closed its MDS session
/// and exited.
#[track_caller]
fn umount_and_check_daemon_gone(mountpoint: &Path, daemon: Daemon, observer: &mut Observer) {
    run("umount", &[mountpoint.as_os_str()]).expect_success("umount");
    assert!(!is_mounted(mountpoint), "{} is still mounted after umount", mountpoint.display());
    assert!(
        poll_until(SOON, || !observer.mount_pids().contains(&daemon.pid)),
        "the daemon {} did not close its session after umount: {:?}",
        daemon.pid,
        observer.sessions()
    );
    assert!(poll_until(SOON, || !daemon.is_running()), "the daemon {} did not exit after umount", daemon.pid);
}

// ----- 1. mount -t fuse.cudele -----

/// `mount -t fuse.cudele SERVER MP -o token=FILE` runs the helper, which daemonises a live
/// mount of type fuse.cudele; a second mount sees its writes and it sees the second
/// mount's; umount(8) unmounts it and the daemon closes its session and exits.
#[test]
fn mount_helper_mounts_shares_and_unmounts() {
    let Some(setup) = Setup::start(true, &[]) else { return };
    let mut observer = setup.observer();
    let mountpoint = setup.directory("mnt-helper");
    let mut guard = DaemonMount::guard(&mountpoint);
    mount_t(setup.mds.address, &mountpoint, &setup.options("helper")).expect_success("mount -t fuse.cudele");
    let daemon = observer.new_mount(&[]);
    guard.daemon = Some(daemon);
    let info = mount_info(&mountpoint).expect("mounted once mount(8) returned");
    assert_eq!((info.filesystem_type.as_str(), info.source.as_str()), ("fuse.cudele", "cudele"), "{info:?}");

    std::fs::create_dir(mountpoint.join("projects")).expect("mkdir through the helper mount");
    write(&mountpoint.join("projects/greeting.txt"), "hello from mount(8)\n");
    assert_eq!(read(&mountpoint.join("projects/greeting.txt")), "hello from mount(8)\n");

    let second = setup.harness_mount("second");
    assert_eq!(read(&second.path("projects/greeting.txt")), "hello from mount(8)\n");
    write(&second.path("projects/reply.txt"), "hello from the second mount\n");
    assert_eq!(read(&mountpoint.join("projects/reply.txt")), "hello from the second mount\n");
    assert_eq!(names(&mountpoint.join("projects")), ["greeting.txt", "reply.txt"]);

    umount_and_check_daemon_gone(&mountpoint, daemon, &mut observer);
    assert!(names(&mountpoint).is_empty(), "the bare mount point is empty again");
    assert_eq!(read(&second.path("projects/greeting.txt")), "hello from mount(8)\n", "the data outlives the mount");
    observer.checked_dump();
}

/// fuse(8)'s generic helper, which mount(8) falls back to without /sbin/mount.fuse.cudele:
/// `mount.fuse3 cudele#SERVER MP -o OPTIONS` runs `cudele SERVER MP -o OPTIONS` from PATH,
/// which mounts like the helper does.
#[test]
fn generic_fuse_helper_runs_cudele_from_path() {
    let Some(setup) = Setup::start(false, &[]) else { return };
    let Some(generic) =
        ["/sbin/mount.fuse3", "/usr/sbin/mount.fuse3"].into_iter().find(|path| Path::new(path).exists())
    else {
        eprintln!("skipping: mount.fuse3 (package fuse3) is not installed");
        return;
    };
    let programs = setup.directory("bin");
    std::os::unix::fs::symlink(install_helper(), programs.join("cudele")).expect("link cudele into bin/");
    let path = format!("{}:{}", programs.display(), std::env::var("PATH").unwrap_or_default());
    let mut observer = setup.observer();
    let mountpoint = setup.directory("mnt-generic");
    let mut guard = DaemonMount::guard(&mountpoint);
    let source = format!("cudele#{}", setup.mds.address);
    let options = format!("{},nosuid", setup.options("generic"));
    let mut command = Command::new(generic);
    command.arg(&source).arg(&mountpoint).arg("-o").arg(&options).env("PATH", path);
    run_command(&mut command).expect_success("mount.fuse3 cudele#SERVER");
    let daemon = observer.new_mount(&[]);
    guard.daemon = Some(daemon);
    let info = mount_info(&mountpoint).expect("mounted once mount.fuse3 returned");
    assert_eq!(info.filesystem_type, "fuse.cudele", "{info:?}");
    assert!(info.mount_options.iter().any(|option| option == "nosuid"), "nosuid missing from {info:?}");
    write(&mountpoint.join("generic.txt"), "through mount.fuse3\n");
    assert_eq!(read(&mountpoint.join("generic.txt")), "through mount.fuse3\n");
    umount_and_check_daemon_gone(&mountpoint, daemon, &mut observer);
    observer.checked_dump();
}

// ----- 2. an fstab line -----

/// A line in an fstab file (mount -T, so /etc/fstab is untouched) with mount(8)'s generic
/// options (_netdev, noauto, nofail, defaults, x-systemd.*) and kernel flags: `mount -a`
/// skips it (noauto), `mount MP` mounts it with the kernel flags applied, and the generic
/// options are accepted and ignored.
#[test]
fn fstab_line_mounts_with_generic_and_kernel_options() {
    let Some(setup) = Setup::start(true, &[]) else { return };
    let mut observer = setup.observer();
    let mountpoint = setup.directory("mnt-fstab");
    let mut guard = DaemonMount::guard(&mountpoint);
    let fstab = setup.root.path().join("fstab.conf");
    let options = format!(
        "{},_netdev,noauto,nofail,defaults,x-systemd.automount,x-systemd.mount-timeout=30,nosuid,nodev,noatime",
        setup.options("fstab")
    );
    std::fs::write(
        &fstab,
        format!(
            "# cudele, as README.md shows it\n{}  {}  fuse.cudele  {options}  0 0\n",
            setup.mds.address,
            mountpoint.display()
        ),
    )
    .expect("write fstab");
    let fstab_argument = fstab.as_os_str();

    run("mount", &["-a".as_ref(), "-T".as_ref(), fstab_argument]).expect_success("mount -a -T FSTAB");
    assert!(!is_mounted(&mountpoint), "mount -a must skip a noauto line");

    run("mount", &["-T".as_ref(), fstab_argument, mountpoint.as_os_str()]).expect_success("mount -T FSTAB MP");
    let daemon = observer.new_mount(&[]);
    guard.daemon = Some(daemon);
    let info = mount_info(&mountpoint).expect("mounted once mount(8) returned");
    assert_eq!(info.filesystem_type, "fuse.cudele", "{info:?}");
    for flag in ["nosuid", "nodev", "noatime", "rw"] {
        assert!(info.mount_options.iter().any(|option| option == flag), "{flag} missing from {info:?}");
    }

    write(&mountpoint.join("from-fstab.txt"), "mounted from an fstab line\n");
    let second = setup.harness_mount("second");
    assert_eq!(read(&second.path("from-fstab.txt")), "mounted from an fstab line\n");

    umount_and_check_daemon_gone(&mountpoint, daemon, &mut observer);
    observer.checked_dump();
}

// ----- 3. token files -----

/// Against an MDS started with --token-file, a mount with the right token works; a wrong
/// token, no token and an unreadable token file each fail (mount(8) and `cudele mount`)
/// with a message naming the cause, and leave nothing mounted and no session behind.
#[test]
fn token_is_required_and_a_wrong_one_leaves_nothing_mounted() {
    let Some(setup) = Setup::start(true, &[]) else { return };
    let mut observer = setup.observer();
    let mountpoint = setup.directory("mnt-token");
    let _guard = DaemonMount::guard(&mountpoint);
    let journals = setup.directory("journals-token");
    let wrong_token = setup.root.path().join("wrong-token");
    cudele_e2e::write_secret_file(&wrong_token, "not-the-secret\n").expect("write wrong token");
    let missing_token = setup.root.path().join("no-such-token");

    let refusals = [
        (format!("token={},journal_dir={}", wrong_token.display(), journals.display()), "the token was refused"),
        (format!("journal_dir={}", journals.display()), "the token was refused"),
        (format!("token={},journal_dir={}", missing_token.display(), journals.display()), "reading token file"),
    ];
    for (options, cause) in &refusals {
        let printed = mount_t(setup.mds.address, &mountpoint, options).expect_failure(&format!("mount -o {options}"));
        assert!(printed.contains(cause), "mount -o {options}: expected {cause:?} in:\n{printed}");
        assert!(!is_mounted(&mountpoint), "mount -o {options} left {} mounted", mountpoint.display());
        let printed =
            cudele_mount(setup.mds.address, &mountpoint, options).expect_failure(&format!("cudele mount -o {options}"));
        assert!(printed.contains(cause), "cudele mount -o {options}: expected {cause:?} in:\n{printed}");
        assert!(!is_mounted(&mountpoint), "cudele mount -o {options} left {} mounted", mountpoint.display());
    }
    assert_eq!(observer.sessions(), [], "a refused mount holds no session");
    assert!(names(&mountpoint).is_empty(), "nothing was written into the bare mount point");

    mount_t(setup.mds.address, &mountpoint, &setup.options("token")).expect_success("mount with the right token");
    let daemon = observer.new_mount(&[]);
    write(&mountpoint.join("authorised.txt"), "the token was accepted\n");
    assert_eq!(read(&mountpoint.join("authorised.txt")), "the token was accepted\n");
    umount_and_check_daemon_gone(&mountpoint, daemon, &mut observer);
    observer.checked_dump();
}

// ----- 4. kill -9 of a client -----

/// SIGKILL of a daemonised `cudele mount` with files open on it: the mount point reports
/// ENOTCONN (as do the open descriptors), another mount keeps working and sees everything
/// that was acknowledged, the dead session expires after its lease, `cudele umount` cleans
/// the dead mount while a descriptor is still open, a new mount on the same path works, and
/// the MDS's invariants hold.
#[test]
fn kill9_of_a_mount_leaves_enotconn_until_cudele_umount_and_the_mds_consistent() {
    let Some(setup) = Setup::start(false, &["--lease-ms", "3000"]) else { return };
    let mut observer = setup.observer();
    let survivor = setup.harness_mount("survivor");
    let survivor_pid = survivor.pid().expect("survivor pid");
    assert_eq!(observer.mount_pids(), [survivor_pid]);

    let mountpoint = setup.directory("mnt-victim");
    let mut guard = DaemonMount::guard(&mountpoint);
    cudele_mount(setup.mds.address, &mountpoint, &setup.options("victim")).expect_success("cudele mount (daemonised)");
    let daemon = observer.new_mount(&[survivor_pid]);
    guard.daemon = Some(daemon);
    let victim_session =
        observer.sessions().into_iter().find(|(_, name)| name.ends_with(&format!(":{}", daemon.pid))).unwrap().0;

    // Acknowledged before the crash: a directory and a file written and fsynced.
    std::fs::create_dir(mountpoint.join("work")).expect("mkdir");
    let mut durable = std::fs::File::create(mountpoint.join("work/durable.txt")).expect("create durable.txt");
    durable.write_all(b"fsynced before the crash\n").expect("write");
    durable.sync_all().expect("fsync");
    drop(durable);
    // Open at the crash: one file being written (created, never flushed), one being read.
    let mut writing = std::fs::File::create(mountpoint.join("work/open.txt")).expect("create open.txt");
    writing.write_all(b"never flushed").expect("write (the mount buffers it until a flush)");
    let mut reading = std::fs::File::open(mountpoint.join("work/durable.txt")).expect("open durable.txt");
    let mut first = [0u8; 5];
    reading.read_exact(&mut first).expect("read");
    assert_eq!(&first, b"fsync");

    assert!(daemon.kill9(), "could not SIGKILL the mount daemon {}", daemon.pid);
    assert!(poll_until(SOON, || !daemon.is_running()), "the daemon {} did not die", daemon.pid);

    // The dead mount stays in the mount table, and every request that reaches it fails with
    // ENOTCONN. (A plain stat may be answered from the kernel's attribute cache, and a read
    // from its page cache, without a request: those are not asserted.)
    assert!(is_mounted(&mountpoint), "a killed mount stays mounted until cleaned up");
    assert_eq!(errno(std::fs::read_dir(&mountpoint)), libc::ENOTCONN, "readdir of the mount point");
    let statfs = nix::sys::statfs::statfs(&mountpoint).map_err(std::io::Error::from);
    assert_eq!(errno(statfs.map(|_| ())), libc::ENOTCONN, "statfs of the mount point");
    assert_eq!(errno(std::fs::File::open(mountpoint.join("work/durable.txt"))), libc::ENOTCONN, "open");
    assert_eq!(errno(std::fs::File::create(mountpoint.join("work/new.txt"))), libc::ENOTCONN, "create");
    assert_eq!(errno(writing.sync_all()), libc::ENOTCONN, "fsync of a descriptor open at the crash");

    // The other mount sees what was acknowledged and can change it (the MDS does not wait
    // for the dead mount forever), and the dead session expires after its lease.
    assert_eq!(names(&survivor.path("work")), ["durable.txt", "open.txt"]);
    assert_eq!(read(&survivor.path("work/durable.txt")), "fsynced before the crash\n");
    let unflushed = read(&survivor.path("work/open.txt"));
    assert!("never flushed".starts_with(&unflushed), "open.txt holds what was written or less: {unflushed:?}");
    write(&survivor.path("work/durable.txt"), "rewritten after the crash\n");
    write(&survivor.path("work/after.txt"), "created after the crash\n");
    assert!(
        poll_until(SOON, || observer.sessions().iter().all(|(session, _)| *session != victim_session)),
        "the dead mount's session {victim_session} never expired: {:?}",
        observer.sessions()
    );
    assert_eq!(observer.mount_pids(), [survivor_pid]);
    observer.checked_dump();

    // `cudele umount` cleans the dead mount even with descriptors still open on it.
    cudele(["umount".as_ref(), mountpoint.as_os_str()]).expect("run cudele umount").expect_success("cudele umount");
    assert!(!is_mounted(&mountpoint), "cudele umount left the dead mount");
    assert!(names(&mountpoint).is_empty(), "the mount point is a usable, empty directory again");
    assert_eq!(errno(writing.sync_all()), libc::ENOTCONN, "a descriptor of the dead mount stays dead");
    drop((reading, writing));

    // A new mount on the same path works and sees the survivor's changes.
    let remounted = Mount::start(setup.mds.address, &mountpoint, &setup.directory("journals-victim"), "")
        .expect("mount again on the same path");
    assert_eq!(names(&remounted.path("work")), ["after.txt", "durable.txt", "open.txt"]);
    assert_eq!(read(&remounted.path("work/durable.txt")), "rewritten after the crash\n");
    write(&remounted.path("work/durable.txt"), "written by the new mount\n");
    assert_eq!(read(&survivor.path("work/durable.txt")), "written by the new mount\n");
    drop(remounted);
    observer.checked_dump();
}
