//! Programmable subtrees end to end, through REAL mounts: one `cudele-mds`, two `cudele mount`s
//! (A decouples, B is another client), the `cudele` CLI for decouple / merge / recouple /
//! status / journal apply. Covers the nine consistency x durability cells (what B sees before and
//! after a merge), client and MDS crashes, block vs allow interference, inode ranges, merge
//! idempotence and the namespace-sync interval (issue 5, DESIGN.md §5–6).
//!
//! Every wait is a bounded poll; nothing asserts on timing beyond those bounds. Tests skip
//! (with a message) where FUSE is not usable.

use cudele_e2e::{connect, cudele, file_url, fuse_available, poll_until, CliOutput, Headers, MdsProcess, Mount};
use cudele_proto::pb;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Bound for anything that should happen "soon" on a loaded 2-core machine.
const SOON: Duration = Duration::from_secs(30);

fn policy(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policies").join(name)
}

/// One MDS and two mounts of it. Fields drop in order: mounts first (they unmount and
/// merge while the MDS still runs), then the MDS, then the directories.
struct Cluster {
    a: Mount,
    b: Mount,
    mds: MdsProcess,
    root: tempfile::TempDir,
}

impl Cluster {
    /// None (and a message) when FUSE is not usable here.
    fn start() -> Option<Cluster> {
        if !fuse_available() {
            eprintln!("skipping: /dev/fuse is not usable here");
            return None;
        }
        let root = tempfile::tempdir().expect("tempdir");
        let mds = MdsProcess::start(&root.path().join("mds"), &[]).expect("start cudele-mds");
        let a =
            Mount::start(mds.address, &root.path().join("a"), &root.path().join("journals-a"), "").expect("mount A");
        let b =
            Mount::start(mds.address, &root.path().join("b"), &root.path().join("journals-b"), "").expect("mount B");
        Some(Cluster { a, b, mds, root })
    }

    /// The MDS's object store (its default: DATA_DIR/objects).
    fn objects_dir(&self) -> PathBuf {
        self.mds.data_dir.join("objects")
    }

    /// A policy file written for this test.
    fn temp_policy(&self, name: &str, text: &str) -> PathBuf {
        let path = self.root.path().join(name);
        std::fs::write(&path, text).expect("write policy");
        path
    }
}

// ----- small helpers -----

fn run(args: &[&std::ffi::OsStr]) -> CliOutput {
    cudele(args).expect("run cudele")
}

fn decouple(directory: &Path, policy: &Path) -> CliOutput {
    run(&["decouple".as_ref(), directory.as_os_str(), "--policy".as_ref(), policy.as_os_str()])
}

fn merge(directory: &Path) -> CliOutput {
    run(&["merge".as_ref(), directory.as_os_str()])
}

fn recouple(directory: &Path) -> CliOutput {
    run(&["recouple".as_ref(), directory.as_os_str()])
}

fn status_json(directory: &Path) -> serde_json::Value {
    let output =
        run(&["status".as_ref(), directory.as_os_str(), "--json".as_ref()]).expect_success("cudele status --json");
    serde_json::from_str(output.stdout.trim())
        .unwrap_or_else(|error| panic!("status JSON ({error}): {}", output.stdout))
}

fn status_u64(status: &serde_json::Value, key: &str) -> u64 {
    status[key].as_u64().unwrap_or_else(|| panic!("status has no {key}: {status}"))
}

/// `cudele journal apply SOURCE [--store URL] --dir DIR --server ADDR [--recouple]`.
fn journal_apply(
    source: &str,
    store: Option<&str>,
    directory: &Path,
    server: std::net::SocketAddr,
    recouple: bool,
) -> CliOutput {
    let server = server.to_string();
    use std::ffi::OsStr;
    let mut args: Vec<&OsStr> = vec![OsStr::new("journal"), OsStr::new("apply"), OsStr::new(source)];
    if let Some(store) = store {
        args.extend([OsStr::new("--store"), OsStr::new(store)]);
    }
    args.extend([OsStr::new("--dir"), directory.as_os_str(), OsStr::new("--server"), OsStr::new(&server)]);
    if recouple {
        args.push(OsStr::new("--recouple"));
    }
    run(&args)
}

fn errno<T>(result: std::io::Result<T>) -> Option<i32> {
    result.err().and_then(|error| error.raw_os_error())
}

/// Names in a directory (sorted).
fn names(directory: &Path) -> std::io::Result<BTreeSet<String>> {
    std::fs::read_dir(directory)?
        .map(|entry| entry.map(|entry| entry.file_name().to_string_lossy().into_owned()))
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|name| name.to_string()).collect()
}

#[track_caller]
fn write(path: &Path, contents: &str) {
    std::fs::write(path, contents).unwrap_or_else(|error| panic!("write {}: {error}", path.display()));
}

#[track_caller]
fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("read {}: {error}", path.display()))
}

#[track_caller]
fn ino(path: &Path) -> u64 {
    std::fs::symlink_metadata(path).unwrap_or_else(|error| panic!("stat {}: {error}", path.display())).ino()
}

/// Write `contents` and fsync the file: a persist point of a decoupled subtree.
#[track_caller]
fn write_and_fsync(path: &Path, contents: &str) {
    let mut file = std::fs::File::create(path).unwrap_or_else(|error| panic!("create {}: {error}", path.display()));
    std::io::Write::write_all(&mut file, contents.as_bytes()).expect("write");
    file.sync_all().unwrap_or_else(|error| panic!("fsync {}: {error}", path.display()));
}

/// setxattr(2) on `path`, returning the errno on failure (the CLI's control xattrs, raw).
fn raw_setxattr(path: &Path, name: &str, value: &[u8]) -> Result<(), i32> {
    let c_path = CString::new(path.as_os_str().as_bytes()).expect("path");
    let c_name = CString::new(name).expect("name");
    // SAFETY: NUL-terminated strings and a valid buffer that outlive the call.
    let result = unsafe { libc::setxattr(c_path.as_ptr(), c_name.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(future)
}

/// The MDS's namespace (path -> inode) as an operator sees it (no session: no EBUSY at the
/// root); asserts the namespace invariants hold.
fn mds_paths(address: std::net::SocketAddr) -> BTreeMap<String, u64> {
    let dump = mds_dump(address);
    dump.lines()
        .filter_map(|line| {
            let (path, rest) = line.split_once(" ino=")?;
            let ino = rest.split(' ').next()?.parse().ok()?;
            Some((path.to_string(), ino))
        })
        .collect()
}

fn mds_dump(address: std::net::SocketAddr) -> String {
    block_on(async {
        let mut client = connect(address, Headers::default()).await.expect("connect");
        let reply = client.dump(pb::Empty {}).await.expect("dump").into_inner();
        assert_eq!(reply.invariant_violation, "", "namespace invariant violated:\n{}", reply.dump);
        reply.dump
    })
}

/// An operator's merge through the gRPC API (what `cudele journal apply` does, with no journal).
fn operator_merge(address: std::net::SocketAddr, ino: u64, recouple: bool) -> pb::MergeReply {
    block_on(async {
        let mut client = connect(address, Headers::default()).await.expect("connect");
        client
            .merge(pb::MergeRequest { ino, recouple, operator: true, ..Default::default() })
            .await
            .expect("operator merge")
            .into_inner()
    })
}

/// The files A writes inside a decoupled subtree, with their contents.
fn decoupled_files() -> Vec<(&'static str, String)> {
    let mut files: Vec<(&str, String)> =
        ["new-0", "new-1", "new-2", "new-3"].iter().map(|name| (*name, format!("data of {name}\n"))).collect();
    files.push(("sub/inner", "inner data\n".to_string()));
    files.push(("renamed", "data of new-4\n".to_string()));
    files
}

/// Entries of the subtree's top directory after [`write_decoupled_files`].
fn decoupled_names() -> BTreeSet<String> {
    set(&["old", "new-0", "new-1", "new-2", "new-3", "sub", "renamed"])
}

/// Creates, writes, a mkdir and a rename inside `directory` (through mount A).
fn write_decoupled_files(directory: &Path) {
    for index in 0..5 {
        write(&directory.join(format!("new-{index}")), &format!("data of new-{index}\n"));
    }
    std::fs::create_dir(directory.join("sub")).expect("mkdir sub");
    write(&directory.join("sub/inner"), "inner data\n");
    std::fs::rename(directory.join("new-4"), directory.join("renamed")).expect("rename");
}

#[track_caller]
fn assert_sees_files(directory: &Path, who: &str) {
    assert_eq!(names(directory).unwrap_or_else(|error| panic!("{who}: readdir: {error}")), decoupled_names(), "{who}");
    assert_eq!(read(&directory.join("old")), "old data\n", "{who}");
    for (name, contents) in decoupled_files() {
        assert_eq!(read(&directory.join(name)), contents, "{who}: contents of {name}");
    }
}

/// B is refused with EBUSY inside a blocking decoupled subtree: readdir, stat, read, create.
#[track_caller]
fn assert_busy_inside(directory: &Path) {
    assert_eq!(
        errno(std::fs::read_dir(directory).and_then(|mut listing| listing.next().transpose())),
        Some(libc::EBUSY),
        "readdir inside"
    );
    assert_eq!(errno(std::fs::metadata(directory.join("old"))), Some(libc::EBUSY), "stat inside");
    assert_eq!(errno(std::fs::read(directory.join("old"))), Some(libc::EBUSY), "read inside");
    assert_eq!(errno(std::fs::File::create(directory.join("from-b"))), Some(libc::EBUSY), "create inside");
}

/// `d` with one file, created through A before any decoupling; B sees it.
fn prepare(cluster: &Cluster) -> (PathBuf, PathBuf) {
    let (a_dir, b_dir) = (cluster.a.path("d"), cluster.b.path("d"));
    std::fs::create_dir(&a_dir).expect("mkdir d");
    write(&a_dir.join("old"), "old data\n");
    assert_eq!(read(&b_dir.join("old")), "old data\n", "B sees the strong namespace");
    (a_dir, b_dir)
}

// ----- 1. the nine cells -----

/// A strong cell: decouple is refused (EINVAL, "nothing to decouple") and B sees A's creates
/// (and A sees B's) at once, with their data.
fn strong_cell(policy_file: &str) {
    let Some(cluster) = Cluster::start() else { return };
    let (a_dir, b_dir) = prepare(&cluster);
    let refused = decouple(&a_dir, &policy(policy_file)).expect_failure("decoupling under a strong policy");
    assert!(refused.contains("nothing to decouple"), "{refused}");
    // Raw, through the mount (the CLI checks first): EINVAL.
    let text = std::fs::read(policy(policy_file)).expect("policy");
    assert_eq!(raw_setxattr(&a_dir, "cudele.decouple", &text), Err(libc::EINVAL));
    let status =
        run(&["status".as_ref(), a_dir.as_os_str(), "--json".as_ref()]).expect_failure("status of a strong dir");
    assert!(status.contains("not a decoupled subtree"), "{status}");

    write(&a_dir.join("new"), "from A\n");
    assert_eq!(read(&b_dir.join("new")), "from A\n", "B sees A's create at once");
    write(&b_dir.join("from-b"), "from B\n");
    assert_eq!(read(&a_dir.join("from-b")), "from B\n", "A sees B's create at once");
    assert_eq!(names(&b_dir).unwrap(), set(&["old", "new", "from-b"]));
    assert_eq!(names(&a_dir).unwrap(), set(&["old", "new", "from-b"]));
}

/// A weak cell: before a merge B does not see A's new files (block: EBUSY inside; allow: the
/// old state); `cudele merge` puts them all in the MDS (allow: B sees them at once; block: B
/// still gets EBUSY until recouple); after recouple B reads every file's data.
fn weak_cell(policy_file: &str, cell: &str, allow: bool) {
    let Some(cluster) = Cluster::start() else { return };
    let (a_dir, b_dir) = prepare(&cluster);
    let decoupled = decouple(&a_dir, &policy(policy_file)).expect_success("decouple");
    assert!(decoupled.stdout.contains(cell), "{}", decoupled.stdout);
    let status = status_json(&a_dir);
    assert_eq!(status["cell"], cell);
    assert_eq!(status_u64(&status, "events_unmerged"), 0);
    let root = status_u64(&status, "root");
    assert_eq!(root, ino(&a_dir));

    write_decoupled_files(&a_dir);
    assert_sees_files(&a_dir, "A (its local view)");
    assert!(status_u64(&status_json(&a_dir), "events_unmerged") > 0);

    // Before the merge.
    if allow {
        assert_eq!(names(&b_dir).unwrap(), set(&["old"]), "B sees the old state");
        assert_eq!(read(&b_dir.join("old")), "old data\n");
        assert_eq!(errno(std::fs::metadata(b_dir.join("new-0"))), Some(libc::ENOENT));
    } else {
        assert_busy_inside(&b_dir);
    }
    assert!(!mds_paths(cluster.mds.address).contains_key("/d/new-0"), "nothing merged yet");

    let merged = merge(&a_dir).expect_success("cudele merge");
    assert!(merged.stdout.contains("applied"), "{}", merged.stdout);
    let status = status_json(&a_dir);
    assert_eq!(status_u64(&status, "events_unmerged"), 0, "{status}");
    assert!(status["last_merge"]["events_applied"].as_u64().unwrap_or(0) > 0, "{status}");
    assert_eq!(status["last_merge"]["events_skipped"], 0, "{status}");
    let paths = mds_paths(cluster.mds.address);
    for path in ["/d/old", "/d/new-0", "/d/new-3", "/d/sub", "/d/sub/inner", "/d/renamed"] {
        assert!(paths.contains_key(path), "{path} merged into the MDS");
    }
    assert!(!paths.contains_key("/d/new-4"), "the rename merged too");
    assert_eq!(paths["/d/new-0"], ino(&a_dir.join("new-0")), "merged with A's inode numbers");

    if allow {
        assert_sees_files(&b_dir, "B after merge");
    } else {
        // Documented: block holds for as long as the subtree is decoupled.
        assert_busy_inside(&b_dir);
    }

    recouple(&a_dir).expect_success("cudele recouple");
    let gone = run(&["status".as_ref(), a_dir.as_os_str(), "--json".as_ref()]).expect_failure("status after recouple");
    assert!(gone.contains("not a decoupled subtree"), "{gone}");
    assert_sees_files(&b_dir, "B after recouple");
    assert_sees_files(&a_dir, "A after recouple (from the MDS)");
    // Strong again: B's creates are A's at once.
    write(&b_dir.join("after"), "after\n");
    assert_eq!(read(&a_dir.join("after")), "after\n");
}

/// Where an invisible cell persists its client journal.
enum Persisted {
    Nowhere,
    Local,
    Global,
}

/// An invisible cell: B never sees A's files through the system — `cudele merge` is refused
/// (EPERM), recouple does not merge — and for local/global durability the persisted journal is
/// applied later with `cudele journal apply`, after which B sees every file and its data.
fn invisible_cell(policy_file: &str, cell: &str, persisted: Persisted) {
    let Some(cluster) = Cluster::start() else { return };
    let (a_dir, b_dir) = prepare(&cluster);
    decouple(&a_dir, &policy(policy_file)).expect_success("decouple");
    let status = status_json(&a_dir);
    assert_eq!(status["cell"], cell);
    let (root, session) = (status_u64(&status, "root"), status_u64(&status, "owner_session"));
    write_decoupled_files(&a_dir);
    write_and_fsync(&a_dir.join("new-0"), "data of new-0\n");
    assert_sees_files(&a_dir, "A (its local view)");
    if !matches!(persisted, Persisted::Nowhere) {
        assert_eq!(status_u64(&status_json(&a_dir), "events_unpersisted"), 0, "fsync persisted the journal");
    }
    assert_busy_inside(&b_dir);

    let refused = merge(&a_dir).expect_failure("merging an invisible subtree");
    assert!(refused.contains("Operation not permitted"), "{refused}");
    assert_eq!(raw_setxattr(&a_dir, "cudele.merge", b""), Err(libc::EPERM));

    recouple(&a_dir).expect_success("recouple");
    assert_eq!(names(&b_dir).unwrap(), set(&["old"]), "recouple merged nothing");
    assert_eq!(names(&a_dir).unwrap(), set(&["old"]), "A's local view is gone with the decoupling");
    assert!(!mds_paths(cluster.mds.address).contains_key("/d/new-0"));

    let local_journal = cudele_client::subtree::client_journal_file(&cluster.a.journal_dir, root);
    let object = cudele_client::subtree::client_journal_object(root, session);
    let object_path = cluster.objects_dir().join(&object);
    let store = file_url(&cluster.objects_dir());
    let applied = match persisted {
        Persisted::Nowhere => {
            assert!(
                !local_journal.exists() && !cluster.objects_dir().join("client-journals").exists(),
                "none persists nothing"
            );
            assert_eq!(names(&b_dir).unwrap(), set(&["old"]));
            return;
        }
        Persisted::Local => {
            assert!(local_journal.exists(), "local persist wrote {}", local_journal.display());
            assert!(!object_path.exists(), "local persist writes no object");
            journal_apply(local_journal.to_str().unwrap(), None, &b_dir, cluster.mds.address, false)
        }
        Persisted::Global => {
            assert!(object_path.exists(), "global persist wrote {}", object_path.display());
            assert!(!local_journal.exists(), "global persist writes no local file");
            journal_apply(&object, Some(&store), &b_dir, cluster.mds.address, false)
        }
    };
    let applied = applied.expect_success("cudele journal apply");
    assert!(applied.stdout.contains(" 0 skipped"), "{}", applied.stdout);
    assert_sees_files(&b_dir, "B after journal apply");
    assert_sees_files(&a_dir, "A after journal apply");
}

/// posix.yml (strong/global): decouple refused with EINVAL; B sees A's creates at once.
#[test]
fn cell_strong_global_posix() {
    strong_cell("posix.yml");
}

/// strong-local.yml (strong/local): decouple refused with EINVAL; B sees A's creates at once.
#[test]
fn cell_strong_local() {
    strong_cell("strong-local.yml");
}

/// strong-none.yml (strong/none): decouple refused with EINVAL; B sees A's creates at once.
#[test]
fn cell_strong_none() {
    strong_cell("strong-none.yml");
}

/// checkpoint.yml (weak/global, block): B gets EBUSY until recouple; merge lands all files and data.
#[test]
fn cell_weak_global_checkpoint() {
    weak_cell("checkpoint.yml", "weak/global", false);
}

/// weak-global.yml (weak/global, nonvolatile apply, allow): B sees the old state, then all after merge.
#[test]
fn cell_weak_global_nonvolatile_apply() {
    weak_cell("weak-global.yml", "weak/global", true);
}

/// weak-none.yml (weak/none, block): B gets EBUSY until recouple; merge lands everything with data.
#[test]
fn cell_weak_none() {
    weak_cell("weak-none.yml", "weak/none", false);
}

/// batchfs.yml (weak/local, block): B gets EBUSY until recouple; merge lands everything with data.
#[test]
fn cell_weak_local_batchfs() {
    weak_cell("batchfs.yml", "weak/local", false);
}

/// invisible-global.yml: merge is EPERM, recouple merges nothing, the journal object applies later.
#[test]
fn cell_invisible_global() {
    invisible_cell("invisible-global.yml", "invisible/global", Persisted::Global);
}

/// deltafs.yml (invisible/local): merge is EPERM, recouple merges nothing, the local journal applies.
#[test]
fn cell_invisible_local_deltafs() {
    invisible_cell("deltafs.yml", "invisible/local", Persisted::Local);
}

/// ramdisk.yml (invisible/none): merge is EPERM, recouple merges nothing and nothing is persisted.
#[test]
fn cell_invisible_none_ramdisk() {
    invisible_cell("ramdisk.yml", "invisible/none", Persisted::Nowhere);
}

// ----- 2. kill -9 of the client -----

/// Decouple `d` on A, write files, fsync one (a persist point), write one more without any
/// persist point, then SIGKILL A's mount process. Returns (A's d, B's d, root, session).
fn crash_after_fsync(cluster: &mut Cluster, policy_file: &str, merge_first: bool) -> (PathBuf, PathBuf, u64, u64) {
    let (a_dir, b_dir) = prepare(cluster);
    decouple(&a_dir, &policy(policy_file)).expect_success("decouple");
    let status = status_json(&a_dir);
    let (root, session) = (status_u64(&status, "root"), status_u64(&status, "owner_session"));
    write_decoupled_files(&a_dir);
    if merge_first {
        // Part of it merged before the crash: the persisted journal holds only the rest.
        merge(&a_dir).expect_success("merge before the crash");
    }
    write_and_fsync(&a_dir.join("synced"), "synced data\n");
    write(&a_dir.join("unsynced"), "never persisted\n");
    assert!(cluster.a.pid().is_some());
    cluster.a.kill9();
    // The decoupling is journaled at the MDS: the owner is gone, B is still refused.
    assert_busy_inside(&b_dir);
    (a_dir, b_dir, root, session)
}

/// What survives a client crash once the persisted journal is applied.
#[track_caller]
fn assert_survivors(directory: &Path, who: &str) {
    let mut expected = decoupled_names();
    expected.insert("synced".to_string());
    assert_eq!(
        names(directory).unwrap_or_else(|error| panic!("{who}: {error}")),
        expected,
        "{who}: `unsynced` had no persist point"
    );
    for (name, contents) in decoupled_files() {
        assert_eq!(read(&directory.join(name)), contents, "{who}: {name}");
    }
    assert_eq!(read(&directory.join("synced")), "synced data\n", "{who}");
}

/// Durability none (weak-none.yml, ramdisk.yml): after kill -9 of the client nothing it wrote survives.
#[test]
fn crash_client_none_nothing_survives() {
    for policy_file in ["weak-none.yml", "ramdisk.yml"] {
        let Some(mut cluster) = Cluster::start() else { return };
        let (a_dir, b_dir, root, _) = crash_after_fsync(&mut cluster, policy_file, false);
        assert!(
            names(&cluster.a.journal_dir).unwrap().is_empty(),
            "{policy_file}: durability none writes no local journal"
        );
        assert!(!cluster.objects_dir().join("client-journals").exists(), "{policy_file}: nor an object");
        let reply = operator_merge(cluster.mds.address, root, true);
        assert_eq!((reply.events_applied, reply.events_skipped), (0, 0), "{policy_file}");
        assert_eq!(names(&b_dir).unwrap(), set(&["old"]), "{policy_file}: nothing survived");
        assert_eq!(read(&b_dir.join("old")), "old data\n");
        cluster.a.restart().expect("remount A");
        assert_eq!(names(&a_dir).unwrap(), set(&["old"]), "{policy_file}: A restarted sees the old state");
        write(&b_dir.join("after"), "strong again\n");
        assert_eq!(read(&a_dir.join("after")), "strong again\n");
    }
}

/// Local durability (batchfs.yml): after kill -9 the local journal is found on restart and applied.
#[test]
fn crash_client_local_journal_applied_after_restart() {
    let Some(mut cluster) = Cluster::start() else { return };
    let (a_dir, b_dir, root, _) = crash_after_fsync(&mut cluster, "batchfs.yml", false);
    cluster.a.restart().expect("remount A with the same journal_dir");
    let journal = cudele_client::subtree::client_journal_file(&cluster.a.journal_dir, root);
    assert!(journal.exists(), "the local journal survived the crash: {}", journal.display());
    let inspected =
        run(&["journal".as_ref(), "inspect".as_ref(), journal.as_os_str()]).expect_success("journal inspect");
    assert!(inspected.stdout.to_lowercase().contains("create"), "{}", inspected.stdout);
    journal_apply(journal.to_str().unwrap(), None, &a_dir, cluster.mds.address, true)
        .expect_success("journal apply --recouple");
    assert_survivors(&b_dir, "B");
    assert_survivors(&a_dir, "A restarted");
    write(&b_dir.join("after"), "strong again\n");
    assert_eq!(read(&a_dir.join("after")), "strong again\n");
}

/// Global durability (checkpoint.yml): after kill -9 the journal object is applied from another host.
#[test]
fn crash_client_global_journal_applied_from_another_host() {
    let Some(mut cluster) = Cluster::start() else { return };
    let (_, b_dir, root, session) = crash_after_fsync(&mut cluster, "checkpoint.yml", true);
    cluster.a.unmount().expect("clean up the dead mount");
    let object = cudele_client::subtree::client_journal_object(root, session);
    assert!(cluster.objects_dir().join(&object).exists(), "{object} in the object store");
    assert!(names(&cluster.b.journal_dir).unwrap().is_empty());
    let store = file_url(&cluster.objects_dir());
    let applied =
        journal_apply(&object, Some(&store), &b_dir, cluster.mds.address, true).expect_success("journal apply");
    assert!(applied.stdout.contains(" 0 skipped, 0 already merged"), "{}", applied.stdout);
    assert_survivors(&b_dir, "B");
}

// ----- 3. kill -9 of the MDS after a merge -----

/// Merged files survive kill -9 of the MDS: after a restart on the same port B reads them.
#[test]
fn crash_mds_after_merge_keeps_merged_files() {
    let Some(mut cluster) = Cluster::start() else { return };
    let (a_dir, b_dir) = prepare(&cluster);
    decouple(&a_dir, &policy("checkpoint.yml")).expect_success("decouple");
    write_decoupled_files(&a_dir);
    merge(&a_dir).expect_success("merge");
    write(&a_dir.join("late"), "written after the merge\n");
    cluster.mds.restart().expect("restart the MDS");
    let paths = mds_paths(cluster.mds.address);
    for path in ["/d/new-0", "/d/new-3", "/d/sub/inner", "/d/renamed"] {
        assert!(paths.contains_key(path), "{path} survived SIGKILL of the MDS");
    }
    assert!(!paths.contains_key("/d/late"), "not merged before the crash");
    assert!(paths.contains_key("/d"), "the decoupling survived too");

    // A's mount reconnects (bounded by its outage timeout) and recouples.
    let mut attempts = Vec::new();
    let recoupled = poll_until(SOON, || {
        let output = recouple(&a_dir);
        let ok = output.success();
        attempts.push(output.stderr);
        ok
    });
    assert!(recoupled, "recouple after the MDS restart: {attempts:?}");
    assert!(
        poll_until(SOON, || names(&b_dir).is_ok_and(|names| names.contains("late"))),
        "B reconnects and sees the files"
    );
    assert_eq!(read(&b_dir.join("late")), "written after the merge\n");
    for (name, contents) in decoupled_files() {
        assert_eq!(read(&b_dir.join(name)), contents, "B: {name}");
    }
    // A fresh mount sees the same.
    cluster.b.restart().expect("remount B");
    assert_eq!(read(&b_dir.join("sub/inner")), "inner data\n");
}

// ----- 4. interference -----

/// block: another mount gets EBUSY inside (even on what it cached) while the parent stays usable.
#[test]
fn block_gives_ebusy_inside_and_parent_stays_usable() {
    let Some(cluster) = Cluster::start() else { return };
    let (a_dir, b_dir) = prepare(&cluster);
    std::fs::create_dir(a_dir.join("sub")).expect("mkdir");
    write(&cluster.a.path("outside"), "outside\n");
    decouple(&a_dir, &policy("checkpoint.yml")).expect_success("decouple");
    assert_busy_inside(&b_dir);
    assert_eq!(errno(std::fs::create_dir(b_dir.join("newdir"))), Some(libc::EBUSY), "mkdir inside");
    assert_eq!(errno(std::fs::read_dir(b_dir.join("sub"))), Some(libc::EBUSY), "readdir deeper");
    assert_eq!(errno(std::fs::remove_file(b_dir.join("old"))), Some(libc::EBUSY), "unlink inside");
    assert_eq!(
        errno(std::fs::rename(cluster.b.path("outside"), b_dir.join("moved-in"))),
        Some(libc::EBUSY),
        "rename into"
    );
    // The parent stays usable.
    assert_eq!(names(&cluster.b.mountpoint).unwrap(), set(&["d", "outside"]));
    assert!(std::fs::metadata(&b_dir).expect("stat of the decoupled directory from its parent").is_dir());
    write(&cluster.b.path("beside"), "beside\n");
    std::fs::create_dir(cluster.b.path("other")).expect("mkdir beside");
    assert_eq!(read(&cluster.b.path("outside")), "outside\n");
    // The owner works inside meanwhile.
    write(&a_dir.join("mine"), "mine\n");
    recouple(&a_dir).expect_success("recouple");
    assert_eq!(names(&b_dir).unwrap(), set(&["old", "sub", "mine"]));
    assert_eq!(read(&b_dir.join("mine")), "mine\n");
    write(&b_dir.join("from-b"), "from B\n");
    std::fs::rename(cluster.b.path("outside"), b_dir.join("moved-in")).expect("rename into, after recouple");
}

/// allow: B's updates apply at once; at merge the decoupled client wins (`x` is A's, B's others stay).
#[test]
fn allow_decoupled_client_wins_at_merge() {
    let Some(cluster) = Cluster::start() else { return };
    let (a_dir, b_dir) = prepare(&cluster);
    std::fs::create_dir(a_dir.join("scratch")).expect("mkdir scratch");
    decouple(&a_dir, &policy("weak-global.yml")).expect_success("decouple (allow)");
    // B, meanwhile: its changes apply at the MDS at once.
    write(&b_dir.join("x"), "from B\n");
    write(&b_dir.join("b-only"), "B's own\n");
    std::fs::remove_dir(b_dir.join("scratch")).expect("B removes scratch");
    let b_x = ino(&b_dir.join("x"));
    assert_eq!(names(&b_dir).unwrap(), set(&["old", "x", "b-only"]));
    // A, decoupled, does not see B's changes and creates x too, and a file in scratch.
    assert_eq!(names(&a_dir).unwrap(), set(&["old", "scratch"]), "A's view is the snapshot");
    write(&a_dir.join("x"), "from A\n");
    write(&a_dir.join("scratch/a-file"), "lost\n");
    let a_x = ino(&a_dir.join("x"));
    assert_ne!(a_x, b_x);

    let merged = merge(&a_dir).expect_success("merge");
    assert!(merged.stdout.contains("its directory was removed by another client"), "{}", merged.stdout);
    assert_eq!(ino(&b_dir.join("x")), a_x, "x is A's inode");
    assert_eq!(read(&b_dir.join("x")), "from A\n", "and A's data");
    assert_eq!(read(&b_dir.join("b-only")), "B's own\n", "B's other file remains");
    assert_eq!(names(&b_dir).unwrap(), set(&["old", "x", "b-only"]), "scratch stays removed");
    recouple(&a_dir).expect_success("recouple");
    assert_eq!(names(&a_dir).unwrap(), set(&["old", "x", "b-only"]));
    assert_eq!(read(&a_dir.join("x")), "from A\n");
}

// ----- 5. inode ranges -----

/// Decoupled creates use the handed-out range and never collide with the MDS's or another client's.
#[test]
fn allocated_inodes_never_collide_and_refill() {
    let Some(cluster) = Cluster::start() else { return };
    let (a_dir, b_dir) = prepare(&cluster);
    std::fs::create_dir(cluster.b.path("elsewhere")).expect("mkdir elsewhere");
    std::fs::create_dir(cluster.b.path("bdec")).expect("mkdir bdec");
    let small = cluster.temp_policy(
        "small-range.yml",
        "consistency: append client journal + volatile apply\ndurability: global persist\n\
         allocated_inodes: 10\ninterfere_policy: allow\n",
    );
    decouple(&a_dir, &small).expect_success("decouple on A");
    assert_eq!(status_u64(&status_json(&a_dir), "inodes_left"), 10);
    // The MDS's record of the range (the dump shows `decoupled=Some((owner, start, end))`).
    let dump = mds_dump(cluster.mds.address);
    let line = dump.lines().find(|line| line.starts_with("/d ino=")).expect("/d in the dump");
    let range = line.split("decoupled=Some((").nth(1).expect("decoupled range in the dump");
    let range = range.split("))").next().expect("the range's end");
    let numbers: Vec<u64> = range.split(", ").map(|n| n.trim().parse().expect("number")).collect();
    let (start, end) = (numbers[1], numbers[2]);
    assert_eq!(end - start, 10, "{line}");
    // Another client decouples a subtree of its own with a range as small.
    decouple(&cluster.b.path("bdec"), &small).expect_success("decouple on B");

    // 50 creates on A (the range refills) while B creates 25 through the MDS and 25 in its
    // own decoupled subtree (refilling too).
    let (mut a_inos, mut b_strong, mut b_decoupled) = (Vec::new(), Vec::new(), Vec::new());
    for index in 0..50 {
        let path = a_dir.join(format!("f-{index:02}"));
        std::fs::File::create(&path).expect("create in the decoupled subtree");
        a_inos.push(ino(&path));
        let (directory, list) = if index % 2 == 0 { ("elsewhere", &mut b_strong) } else { ("bdec", &mut b_decoupled) };
        let path = cluster.b.path(format!("{directory}/g-{index:02}"));
        std::fs::File::create(&path).expect("B creates");
        list.push(ino(&path));
        if index == 4 {
            assert_eq!(status_u64(&status_json(&a_dir), "inodes_left"), 5, "five of the ten used");
        }
    }
    assert!(
        a_inos[..10].iter().all(|ino| (start..end).contains(ino)),
        "the first ten from the range {start}..{end}: {a_inos:?}"
    );
    let a_set: BTreeSet<u64> = a_inos.iter().copied().collect();
    let strong_set: BTreeSet<u64> = b_strong.iter().copied().collect();
    let other_set: BTreeSet<u64> = b_decoupled.iter().copied().collect();
    assert_eq!((a_set.len(), strong_set.len(), other_set.len()), (50, 25, 25), "distinct numbers");
    assert!(a_set.is_disjoint(&strong_set), "A {a_inos:?} and the MDS's {b_strong:?} collide");
    assert!(a_set.is_disjoint(&other_set), "A {a_inos:?} and B's decoupled {b_decoupled:?} collide");
    assert!(strong_set.is_disjoint(&other_set), "B's {b_strong:?} and {b_decoupled:?} collide");
    assert!(b_strong.iter().chain(&b_decoupled).all(|ino| !(start..end).contains(ino)), "A's range is A's");
    let status = status_json(&a_dir);
    assert!(status_u64(&status, "inodes_left") > 0, "{status}");

    merge(&a_dir).expect_success("merge A");
    merge(&cluster.b.path("bdec")).expect_success("merge B");
    let expected: BTreeSet<String> = (0..50).map(|index| format!("f-{index:02}")).chain(["old".to_string()]).collect();
    assert_eq!(names(&b_dir).unwrap(), expected, "all 50 merged");
    for (index, a_ino) in a_inos.iter().enumerate() {
        assert_eq!(ino(&b_dir.join(format!("f-{index:02}"))), *a_ino, "f-{index:02} keeps A's inode number");
    }
    for (position, b_ino) in b_decoupled.iter().enumerate() {
        let name = format!("bdec/g-{:02}", position * 2 + 1);
        assert_eq!(ino(&cluster.a.path(&name)), *b_ino, "{name} merged with B's number, seen from A");
    }
    // Strong creates after the merges stay clear of every number handed out.
    write(&cluster.b.path("elsewhere/later"), "later\n");
    let later = ino(&cluster.b.path("elsewhere/later"));
    assert!(!a_set.contains(&later) && !other_set.contains(&later));
}

// ----- 6. merge idempotence -----

/// Merge is idempotent (merging or applying again changes nothing) and atomic (a torn journal: nothing).
#[test]
fn merge_is_idempotent_and_atomic() {
    let Some(cluster) = Cluster::start() else { return };
    let (a_dir, b_dir) = prepare(&cluster);
    decouple(&a_dir, &policy("checkpoint.yml")).expect_success("decouple");
    let status = status_json(&a_dir);
    let (root, session) = (status_u64(&status, "root"), status_u64(&status, "owner_session"));
    for index in 0..20 {
        write(&a_dir.join(format!("f-{index:02}")), &format!("{index}\n"));
    }
    std::fs::File::open(&a_dir).expect("open dir").sync_all().expect("fsyncdir: a persist point");
    let events = status_u64(&status_json(&a_dir), "events_unmerged");
    assert!(events >= 20, "{events}");
    // Keep a copy of the persisted journal (merging replaces the object).
    let object = cluster.objects_dir().join(cudele_client::subtree::client_journal_object(root, session));
    let copy = cluster.root.path().join("copy.seg");
    std::fs::copy(&object, &copy).expect("copy the journal object");

    merge(&a_dir).expect_success("first merge");
    let first = status_json(&a_dir);
    assert_eq!(first["last_merge"]["events_applied"].as_u64(), Some(events), "{first}");
    let after_first = mds_dump(cluster.mds.address);

    let again = merge(&a_dir).expect_success("second merge");
    assert!(again.stdout.contains("0 applied"), "{}", again.stdout);
    assert_eq!(status_json(&a_dir)["last_merge"]["events_applied"], 0);
    assert_eq!(mds_dump(cluster.mds.address), after_first, "a second merge changes nothing");

    let reapplied =
        journal_apply(copy.to_str().unwrap(), None, &b_dir, cluster.mds.address, false).expect_success("apply again");
    assert!(
        reapplied.stdout.contains(&format!("0 applied, 0 skipped, {events} already merged")),
        "{}",
        reapplied.stdout
    );
    assert_eq!(mds_dump(cluster.mds.address), after_first, "re-applying changes nothing");

    // Atomic: a torn journal is refused before any of it applies.
    let bytes = std::fs::read(&copy).unwrap();
    let torn = cluster.root.path().join("torn.seg");
    std::fs::write(&torn, &bytes[..bytes.len() - 7]).unwrap();
    journal_apply(torn.to_str().unwrap(), None, &b_dir, cluster.mds.address, false)
        .expect_failure("apply a torn journal");
    assert_eq!(mds_dump(cluster.mds.address), after_first, "a refused journal changes nothing");

    recouple(&a_dir).expect_success("recouple");
    assert_eq!(names(&b_dir).unwrap().len(), 21);
    assert_eq!(read(&b_dir.join("f-19")), "19\n");
}

// ----- 7. namespace sync -----

/// sync_interval (weak-sync.yml at 500 ms): B sees A's files without an explicit merge, within a bounded wait.
#[test]
fn sync_interval_merges_without_explicit_merge() {
    let Some(cluster) = Cluster::start() else { return };
    let (a_dir, b_dir) = prepare(&cluster);
    let shipped = std::fs::read_to_string(policy("weak-sync.yml")).expect("weak-sync.yml");
    assert!(shipped.contains("sync_interval: 5s"));
    let fast =
        cluster.temp_policy("weak-sync-500ms.yml", &shipped.replace("sync_interval: 5s", "sync_interval: 500ms"));
    decouple(&a_dir, &fast).expect_success("decouple");
    write_decoupled_files(&a_dir);
    let synced = poll_until(SOON, || names(&b_dir).is_ok_and(|names| names == decoupled_names()));
    assert!(synced, "B did not see the files within {SOON:?}: {:?}", names(&b_dir));
    assert_sees_files(&b_dir, "B after namespace sync");
    let status = status_json(&a_dir);
    assert!(!status["last_merge"].is_null(), "{status}");
    // Later writes are synced too.
    write(&a_dir.join("later"), "later\n");
    assert!(poll_until(SOON, || std::fs::read_to_string(b_dir.join("later")).is_ok_and(|text| text == "later\n")));
}

// ----- more through the mount: every kind of change, and unmount as a merge point -----

fn getxattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let c_path = CString::new(path.as_os_str().as_bytes()).expect("path");
    let c_name = CString::new(name).expect("name");
    let mut buffer = vec![0u8; 4096];
    // SAFETY: NUL-terminated strings; the buffer is writable for its whole length.
    let length = unsafe { libc::lgetxattr(c_path.as_ptr(), c_name.as_ptr(), buffer.as_mut_ptr().cast(), buffer.len()) };
    if length < 0 {
        return None;
    }
    buffer.truncate(length as usize);
    Some(buffer)
}

/// What one mount shows of a tree: relative path -> (kind, mode, nlink, size, symlink target,
/// user.color xattr, contents of regular files).
type TreeView = BTreeMap<String, (String, u32, u64, u64, Option<PathBuf>, Option<Vec<u8>>, Option<String>)>;

fn tree_view(root: &Path) -> TreeView {
    let mut view = TreeView::new();
    let mut directories = vec![PathBuf::new()];
    while let Some(relative) = directories.pop() {
        for entry in std::fs::read_dir(root.join(&relative))
            .unwrap_or_else(|error| panic!("readdir {}: {error}", relative.display()))
        {
            let entry = entry.expect("entry");
            let relative = relative.join(entry.file_name());
            let path = root.join(&relative);
            let meta = std::fs::symlink_metadata(&path).expect("lstat");
            let kind = format!("{:?}", meta.file_type());
            let target = meta.file_type().is_symlink().then(|| std::fs::read_link(&path).expect("readlink"));
            let contents = meta.file_type().is_file().then(|| read(&path));
            if meta.is_dir() {
                directories.push(relative.clone());
            }
            view.insert(
                relative.display().to_string(),
                (kind, meta.mode(), meta.nlink(), meta.len(), target, getxattr(&path, "user.color"), contents),
            );
        }
    }
    view
}

/// A merge replays every kind of change made through the mount: B then sees exactly A's view.
#[test]
fn merge_replays_every_kind_of_change() {
    let Some(cluster) = Cluster::start() else { return };
    let (a_dir, b_dir) = prepare(&cluster);
    std::fs::create_dir(a_dir.join("olddir")).unwrap();
    write(&a_dir.join("olddir/kept"), "kept\n");
    write(&a_dir.join("keep-file"), "0123456789\n");
    write(&a_dir.join("append-me"), "first line\n");
    write(&a_dir.join("to-remove"), "bye\n");
    std::fs::create_dir(a_dir.join("empty-later")).unwrap();
    raw_setxattr(&a_dir.join("keep-file"), "user.gone", b"soon").expect("setxattr before decoupling");
    // B reads the files first, so its page cache holds the old data.
    assert_eq!(read(&b_dir.join("old")), "old data\n");
    assert_eq!(read(&b_dir.join("append-me")), "first line\n");
    let weak_allow = cluster.temp_policy(
        "weak-allow.yml",
        "consistency: append client journal + volatile apply\ndurability: none\ninterfere_policy: allow\n",
    );
    decouple(&a_dir, &weak_allow).expect_success("decouple");

    write(&a_dir.join("old"), "rewritten by A\n");
    {
        let mut file = std::fs::OpenOptions::new().append(true).open(a_dir.join("append-me")).unwrap();
        std::io::Write::write_all(&mut file, b"second line\n").unwrap();
    }
    std::os::unix::fs::symlink("old", a_dir.join("link")).unwrap();
    std::fs::hard_link(a_dir.join("old"), a_dir.join("old-hard")).unwrap();
    raw_setxattr(&a_dir.join("old"), "user.color", b"blue").expect("setxattr");
    let c_path = CString::new(a_dir.join("keep-file").as_os_str().as_bytes()).unwrap();
    // SAFETY: NUL-terminated strings.
    assert_eq!(unsafe { libc::removexattr(c_path.as_ptr(), c"user.gone".as_ptr()) }, 0, "removexattr");
    std::fs::set_permissions(a_dir.join("keep-file"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    std::fs::OpenOptions::new().write(true).open(a_dir.join("keep-file")).unwrap().set_len(3).unwrap();
    std::fs::rename(a_dir.join("olddir"), a_dir.join("newdir")).unwrap();
    write(&a_dir.join("newdir/inside"), "inside\n");
    std::fs::remove_file(a_dir.join("to-remove")).unwrap();
    std::fs::remove_dir(a_dir.join("empty-later")).unwrap();
    std::fs::create_dir(a_dir.join("made")).unwrap();
    std::fs::create_dir(a_dir.join("made/deeper")).unwrap();
    let fifo = CString::new(a_dir.join("fifo").as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o640) }, 0, "mkfifo");
    // Nothing crosses the subtree's boundary (one change would span two journals).
    assert_eq!(errno(std::fs::rename(a_dir.join("link"), cluster.a.path("escaped"))), Some(libc::EXDEV), "rename out");
    assert_eq!(errno(std::fs::hard_link(a_dir.join("old"), cluster.a.path("escaped"))), Some(libc::EXDEV), "link out");
    let a_view = tree_view(&a_dir);
    assert_eq!(getxattr(&a_dir.join("keep-file"), "user.gone"), None);

    let merged = merge(&a_dir).expect_success("merge");
    assert!(merged.stdout.contains("0 skipped"), "{}", merged.stdout);
    assert_eq!(tree_view(&b_dir), a_view, "B sees exactly A's view after the merge");
    assert_eq!(getxattr(&b_dir.join("keep-file"), "user.gone"), None, "the xattr removal merged");
    recouple(&a_dir).expect_success("recouple");
    assert_eq!(tree_view(&a_dir), a_view, "A's view from the MDS after recouple");
    assert_eq!(tree_view(&b_dir), a_view);
}

/// Clean unmount merges and recouples a weak subtree, and persists (unmerged) an invisible one for `journal apply`.
#[test]
fn unmount_merges_weak_and_persists_invisible() {
    let Some(mut cluster) = Cluster::start() else { return };
    let (weak_a, weak_b) = (cluster.a.path("weak"), cluster.b.path("weak"));
    let (hidden_a, hidden_b) = (cluster.a.path("hidden"), cluster.b.path("hidden"));
    for directory in [&weak_a, &hidden_a] {
        std::fs::create_dir(directory).unwrap();
        write(&directory.join("old"), "old data\n");
    }
    decouple(&weak_a, &policy("batchfs.yml")).expect_success("decouple weak");
    decouple(&hidden_a, &policy("deltafs.yml")).expect_success("decouple invisible");
    let hidden_root = status_u64(&status_json(&hidden_a), "root");
    write_decoupled_files(&weak_a);
    write_decoupled_files(&hidden_a);
    assert_busy_inside(&weak_b);
    assert_busy_inside(&hidden_b);

    cluster.a.unmount().expect("clean unmount of A");
    assert_sees_files(&weak_b, "B after A's unmount (weak)");
    assert_eq!(names(&hidden_b).unwrap(), set(&["old"]), "invisible: recoupled, not merged");
    let journal = cudele_client::subtree::client_journal_file(&cluster.a.journal_dir, hidden_root);
    assert!(journal.exists(), "the invisible subtree's journal was persisted at unmount");
    assert_eq!(names(&cluster.a.journal_dir).unwrap().len(), 1, "the merged weak journal was removed");
    journal_apply(journal.to_str().unwrap(), None, &hidden_b, cluster.mds.address, false).expect_success("apply");
    assert_sees_files(&hidden_b, "B after journal apply");
}

/// Under block, a descriptor B opened before the decouple cannot change A's file data.
///
/// B's flush uploads its chunks as fresh object versions and then asks the MDS to publish them
/// (fuse-client/src/data/file.rs `flush`); the MDS refuses the layout with EBUSY, so the versions
/// A reads stay published and B's unpublished objects are deleted.
#[test]
fn block_fences_data_written_through_descriptors_opened_before_decouple() {
    use std::os::unix::fs::FileExt;
    let Some(cluster) = Cluster::start() else { return };
    let (a_dir, b_dir) = prepare(&cluster);
    let opened = std::fs::OpenOptions::new().read(true).write(true).open(b_dir.join("old")).expect("B opens old");
    decouple(&a_dir, &policy("checkpoint.yml")).expect_success("decouple");
    write(&a_dir.join("old"), "A owns this subtree now\n");
    // B, through its old descriptor: reading is refused; its write must not reach A's data.
    assert_eq!(errno(opened.read_at(&mut [0u8; 16], 0)), Some(libc::EBUSY), "read through an old descriptor");
    let _ = opened.write_at(b"B CLOBBER", 0);
    let flushed = opened.sync_all();
    drop(opened);
    assert_eq!(errno(flushed), Some(libc::EBUSY), "B's flush is refused");
    assert_eq!(read(&a_dir.join("old")), "A owns this subtree now\n", "B's refused write changed A's data");
    recouple(&a_dir).expect_success("recouple");
    assert_eq!(read(&b_dir.join("old")), "A owns this subtree now\n");
}
