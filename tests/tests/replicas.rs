//! Elastic metadata cache replicas with real processes (DESIGN.md §7): coherence of reads
//! through replicas under concurrent writers, failover when an instance is killed with
//! SIGKILL, and the autoscaler scaling up under load and back down when idle.
//!
//! Most readers use `cudele_proto::routing::RoutedReader`, the routing client the FUSE client
//! wraps; writers use ordinary MDS sessions. The mount tests at the end read through real FUSE
//! mounts (`cudele mount`), whose cache misses go to the replicas.

use cudele_e2e::{cudele, errno_of, fuse_available, poll_until, wait_until, Api, MdsProcess, Mount};
use cudele_proto::replica_pb::coordinator_client::CoordinatorClient;
use cudele_proto::replica_pb::DeploymentsReply;
use cudele_proto::routing::{ReadSource, RoutedReader, RoutingOptions};
use cudele_proto::{pb, replica_pb};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long the autoscaler may take to bring instances up or down in these tests.
const SCALING_TIMEOUT: Duration = Duration::from_secs(30);

/// Autoscaler settings fast enough for a test to watch it act (`--replica-` options).
const FAST_AUTOSCALER: [(&str, &str); 4] =
    [("target-concurrency", "1"), ("cooldown-ms", "300"), ("idle-ms", "1500"), ("autoscale-interval-ms", "100")];
/// A dead instance is noticed within 1.5 s and a missing invalidation ACK within 0.3 s.
const QUICK_FAILOVER: [(&str, &str); 2] = [("lease-ms", "1500"), ("ack-timeout-ms", "300")];

/// An MDS in `directory` with `deployments` cache deployments of `min..=max` instances each,
/// and more `--replica-NAME VALUE` options.
fn replica_mds(directory: &Path, shape: (u32, u32, u32), settings: &[(&str, &str)]) -> MdsProcess {
    MdsProcess::start_with_replicas(directory, shape, settings).expect("start mds")
}

async fn deployments(mds: &MdsProcess) -> DeploymentsReply {
    let mut coordinator = CoordinatorClient::connect(mds.url()).await.expect("connect to the coordinator");
    coordinator.list_deployments(pb::Empty {}).await.expect("list deployments").into_inner()
}

fn live_instances(reply: &DeploymentsReply) -> Vec<replica_pb::InstanceInfo> {
    reply.list.iter().flat_map(|deployment| deployment.instances.clone()).collect()
}

/// Wait until every deployment has exactly `per_deployment` listed instances.
async fn wait_for_instances(mds: &MdsProcess, per_deployment: usize) -> bool {
    wait_until(SCALING_TIMEOUT, || async {
        let reply = deployments(mds).await;
        reply.list.iter().all(|deployment| deployment.instances.len() == per_deployment)
    })
    .await
}

/// A routed reader whose MDS fallback reads in a session of its own (calls need one).
async fn reader(mds: &MdsProcess) -> Arc<RoutedReader> {
    let (_, _, credential) =
        cudele_e2e::connect_session_with_credential(mds.address, None, "reader").await.expect("session");
    let options = RoutingOptions { session: Some(credential), ..RoutingOptions::default() };
    Arc::new(RoutedReader::connect(&mds.address.to_string(), options).await.expect("routed reader"))
}

/// What one writer has done: versions started and acknowledged.
#[derive(Default)]
struct Progress {
    started: AtomicU64,
    acknowledged: AtomicU64,
}

/// One writer's directory and its inodes.
struct Writer {
    directory: u64,
    size_file: u64,
    progress: Progress,
}

/// No read through a replica returns a value older than a write whose acknowledgement the
/// reader saw before issuing it: sizes (attributes), created and deleted names (positive and
/// negative entries), directory renames (subtree invalidation) and listings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_through_replicas_never_go_back_before_an_acknowledged_write() {
    let directory = tempfile::tempdir().expect("tempdir");
    let mds = replica_mds(directory.path(), (3, 2, 2), &[("lease-ms", "2000")]);
    assert!(wait_for_instances(&mds, 2).await, "instances did not come up");

    const WRITERS: usize = 3;
    const VERSIONS: u64 = 120;
    const DELETABLE: u64 = VERSIONS + 2;
    let mut setup = Api::open(mds.address, None, "setup").await.expect("session");
    let mut writers = Vec::new();
    for index in 0..WRITERS {
        let directory = setup.mkdir(1, format!("w{index}"), 0o755).await.expect("mkdir").ino;
        let size_file = setup.create(directory, "size", 0o644).await.expect("create").ino;
        for number in 0..=DELETABLE {
            setup.create(directory, format!("d{number}"), 0o644).await.expect("create deletable");
        }
        let renamed = setup.mkdir(directory, "r0", 0o755).await.expect("mkdir r0").ino;
        setup.create(renamed, "inside", 0o644).await.expect("create inside");
        writers.push(Arc::new(Writer { directory, size_file, progress: Progress::default() }));
    }

    let done = Arc::new(AtomicBool::new(false));
    let violations = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut readers = Vec::new();
    let routed = reader(&mds).await;
    for reader_index in 0..4usize {
        let routed = routed.clone();
        let writers = writers.clone();
        let done = done.clone();
        let violations = violations.clone();
        readers.push(tokio::spawn(async move {
            let mut round = reader_index;
            let mut reads = 0u64;
            while !done.load(Ordering::Acquire) {
                round += 1;
                let writer = &writers[round % writers.len()];
                let directory = writer.directory;
                let seen = writer.progress.acknowledged.load(Ordering::Acquire);
                let flag = |what: String| violations.lock().expect("violations").push(what);
                // Attributes: the size only grows.
                match routed.getattr(writer.size_file, Some(directory)).await {
                    Ok(read) if read.attr.size < seen => {
                        flag(format!("getattr size {} < acknowledged {seen}", read.attr.size))
                    }
                    Ok(_) => {}
                    Err(status) => flag(format!("getattr failed: {status}")),
                }
                match routed.lookup(directory, b"size").await {
                    Ok(read) if read.attr.size < seen => {
                        flag(format!("lookup size {} < acknowledged {seen}", read.attr.size))
                    }
                    Ok(_) => {}
                    Err(status) => flag(format!("lookup size failed: {status}")),
                }
                if seen >= 1 {
                    // Created names never go away; deleted ones never come back.
                    if let Err(status) = routed.lookup(directory, format!("c{seen}").as_bytes()).await {
                        flag(format!("c{seen} acknowledged but lookup says {status}"));
                    }
                    match routed.lookup(directory, format!("d{seen}").as_bytes()).await {
                        Err(status) if errno_of(&status) == libc::ENOENT => {}
                        other => flag(format!("d{seen} unlinked (acknowledged) but lookup gave {other:?}")),
                    }
                    // The directory renamed to r{seen} exists unless a later rename started.
                    match routed.lookup(directory, format!("r{seen}").as_bytes()).await {
                        Ok(found) => {
                            if let Err(status) = routed.lookup(found.attr.ino, b"inside").await {
                                let started = writer.progress.started.load(Ordering::Acquire);
                                if started <= seen {
                                    flag(format!("r{seen}/inside: {status}"));
                                }
                            }
                        }
                        Err(status) => {
                            let started = writer.progress.started.load(Ordering::Acquire);
                            if started <= seen {
                                flag(format!("r{seen} acknowledged, no later rename started, lookup: {status}"));
                            }
                        }
                    }
                    match routed.readdir(directory, b"", 1000, true).await {
                        Ok(page) => {
                            let names: Vec<&[u8]> = page.entries.iter().map(|entry| entry.name.as_slice()).collect();
                            if !names.contains(&format!("c{seen}").as_bytes()) {
                                flag(format!("readdir misses c{seen}"));
                            }
                            if names.contains(&format!("d{seen}").as_bytes()) {
                                flag(format!("readdir still lists d{seen}"));
                            }
                            let size =
                                page.entries.iter().find(|entry| entry.name == b"size").and_then(|e| e.attr.as_ref());
                            if size.is_some_and(|attr| attr.size < seen) {
                                flag(format!("readdir plus size < acknowledged {seen}"));
                            }
                        }
                        Err(status) => flag(format!("readdir failed: {status}")),
                    }
                }
                // Warm the caches with names the writer is about to change.
                let _ = routed.lookup(directory, format!("c{}", seen + 1).as_bytes()).await;
                let _ = routed.lookup(directory, format!("d{}", seen + 1).as_bytes()).await;
                reads += 1;
            }
            reads
        }));
    }

    let mut writer_tasks = Vec::new();
    for (index, writer) in writers.iter().cloned().enumerate() {
        let address = mds.address;
        writer_tasks.push(tokio::spawn(async move {
            let mut api = Api::open(address, None, &format!("writer{index}")).await.expect("writer session");
            for version in 1..=VERSIONS {
                writer.progress.started.store(version, Ordering::Release);
                let request = pb::SetAttrRequest { ino: writer.size_file, size: Some(version), ..Default::default() };
                api.setattr(request).await.expect("setattr");
                api.create(writer.directory, format!("c{version}"), 0o644).await.expect("create");
                api.unlink(writer.directory, format!("d{version}")).await.expect("unlink");
                let from = format!("r{}", version - 1);
                let to = format!("r{version}");
                api.rename(writer.directory, from, writer.directory, to, pb::RenameMode::RenameNoreplace)
                    .await
                    .expect("rename");
                writer.progress.acknowledged.store(version, Ordering::Release);
            }
        }));
    }
    for task in writer_tasks {
        task.await.expect("writer");
    }
    // Let the readers check the final state too.
    tokio::time::sleep(Duration::from_millis(300)).await;
    done.store(true, Ordering::Release);
    let mut reads = 0;
    for task in readers {
        reads += task.await.expect("reader");
    }
    let violations = violations.lock().expect("violations").clone();
    assert!(
        violations.is_empty(),
        "{} stale or failed reads, first: {:?}",
        violations.len(),
        &violations[..violations.len().min(10)]
    );
    let answers = routed.stats.replica_answers.load(Ordering::Relaxed);
    let cached = routed.stats.replica_cache_answers.load(Ordering::Relaxed);
    eprintln!("{reads} reader rounds; {answers} replica answers, {cached} from caches");
    assert!(cached > 0, "no read was served from a replica cache: the test proves nothing");
}

/// SIGKILL of a replica while clients read: no read fails (they retry another instance or
/// fall back to the MDS), a write completes within the lease, and the autoscaler replaces
/// the instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_replica_fails_no_read() {
    let directory = tempfile::tempdir().expect("tempdir");
    let mds = replica_mds(directory.path(), (1, 2, 2), &QUICK_FAILOVER);
    assert!(wait_for_instances(&mds, 2).await, "instances did not come up");
    let mut api = Api::open(mds.address, None, "writer").await.expect("session");
    let work = api.mkdir(1, "work", 0o755).await.expect("mkdir").ino;
    let mut files = Vec::new();
    for number in 0..20 {
        files.push(api.create(work, format!("f{number}"), 0o644).await.expect("create").ino);
    }

    let routed = reader(&mds).await;
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let served_after_kill = Arc::new(AtomicU64::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for reader_index in 0..4u64 {
        let (routed, stop, failures) = (routed.clone(), stop.clone(), failures.clone());
        let (served_after_kill, killed, files) = (served_after_kill.clone(), killed.clone(), files.clone());
        readers.push(tokio::spawn(async move {
            let mut round = reader_index;
            while !stop.load(Ordering::Acquire) {
                round += 1;
                let number = (round % files.len() as u64) as usize;
                let results = [
                    routed.lookup(work, format!("f{number}").as_bytes()).await.map(|_| ()),
                    routed.getattr(files[number], Some(work)).await.map(|_| ()),
                    routed.readdir(work, b"", 100, false).await.map(|_| ()),
                ];
                for result in results {
                    match result {
                        Ok(()) if killed.load(Ordering::Acquire) => {
                            served_after_kill.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(()) => {}
                        Err(status) => failures.lock().expect("failures").push(status.to_string()),
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let victim = live_instances(&deployments(&mds).await).first().cloned().expect("an instance");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim.pid as i32), nix::sys::signal::Signal::SIGKILL)
        .expect("kill -9 the instance");
    killed.store(true, Ordering::Release);
    // A write right after: the dead instance cannot acknowledge; the write still completes.
    let write_started = Instant::now();
    api.setattr(pb::SetAttrRequest { ino: files[0], size: Some(7), ..Default::default() }).await.expect("setattr");
    let write_took = write_started.elapsed();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    stop.store(true, Ordering::Release);
    for task in readers {
        task.await.expect("reader");
    }
    let failures = failures.lock().expect("failures").clone();
    assert!(failures.is_empty(), "{} reads failed, first: {:?}", failures.len(), &failures[..failures.len().min(5)]);
    assert!(served_after_kill.load(Ordering::Relaxed) > 0, "no read completed after the kill");
    assert!(write_took < Duration::from_secs(5), "a write took {write_took:?} after the kill");
    let read = routed.getattr(files[0], Some(work)).await.expect("getattr after the write");
    assert_eq!(read.attr.size, 7);
    eprintln!(
        "write after kill took {write_took:?}; {} reads after the kill",
        served_after_kill.load(Ordering::Relaxed)
    );
    // The autoscaler replaces the dead instance (min 2).
    let replaced = wait_until(SCALING_TIMEOUT, || async {
        let instances = live_instances(&deployments(&mds).await);
        instances.len() == 2 && instances.iter().all(|instance| instance.instance != victim.instance)
    })
    .await;
    assert!(replaced, "the killed instance was not replaced");
}

/// Under load the autoscaler starts instances (up to max, in panic), and once the load is
/// gone it stops them again (down to min) when the stable window's average shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoscaler_scales_up_under_load_and_down_when_idle() {
    let directory = tempfile::tempdir().expect("tempdir");
    let mds = replica_mds(
        directory.path(),
        (1, 1, 3),
        &[
            FAST_AUTOSCALER.as_slice(),
            &[
                ("concurrency-limit", "2"),
                ("service-time-us", "5000"),
                ("stable-window-ms", "1500"),
                ("panic-window-ms", "300"),
            ],
        ]
        .concat(),
    );
    assert!(wait_for_instances(&mds, 1).await, "the first instance did not come up");
    let mut api = Api::open(mds.address, None, "setup").await.expect("session");
    let work = api.mkdir(1, "work", 0o755).await.expect("mkdir").ino;
    api.create(work, "f", 0o644).await.expect("create");

    let routed = reader(&mds).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..12 {
        let (routed, stop) = (routed.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let mut replica_reads = 0u64;
            while !stop.load(Ordering::Acquire) {
                if let Ok(read) = routed.lookup(work, b"f").await {
                    if matches!(read.source, ReadSource::Replica { .. }) {
                        replica_reads += 1;
                    }
                }
            }
            replica_reads
        }));
    }
    let scaled_up = wait_until(SCALING_TIMEOUT, || async { live_instances(&deployments(&mds).await).len() >= 3 }).await;
    stop.store(true, Ordering::Release);
    let mut replica_reads = 0;
    for task in load {
        replica_reads += task.await.expect("load task");
    }
    assert!(scaled_up, "the autoscaler did not reach 3 instances under load");
    assert!(replica_reads > 0);
    let scaled_down =
        wait_until(SCALING_TIMEOUT, || async { live_instances(&deployments(&mds).await).len() == 1 }).await;
    assert!(scaled_down, "the autoscaler did not go back to 1 instance when idle");
}

/// With --replica-min 0 a deployment runs no instance until a client finds none: that read
/// and the ones after it come from the MDS without failing, the client's wake starts an
/// instance which then serves, and once the reads stop the deployment goes back to no
/// instance after the idle period; reads still work then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_min_zero_wakes_on_demand_and_goes_back_to_zero() {
    let directory = tempfile::tempdir().expect("tempdir");
    let mds = replica_mds(
        directory.path(),
        (1, 0, 2),
        &[FAST_AUTOSCALER.as_slice(), &[("stable-window-ms", "1000"), ("panic-window-ms", "300")]].concat(),
    );
    let mut api = Api::open(mds.address, None, "setup").await.expect("session");
    let work = api.mkdir(1, "work", 0o755).await.expect("mkdir").ino;
    api.create(work, "f", 0o644).await.expect("create");
    assert!(live_instances(&deployments(&mds).await).is_empty(), "min 0 starts no instance");

    let routed = reader(&mds).await;
    let first = routed.lookup(work, b"f").await.expect("a read with no instance");
    assert_eq!(first.source, ReadSource::Mds);
    let served_by_replica = wait_until(SCALING_TIMEOUT, || async {
        let read = routed.lookup(work, b"f").await.expect("a read while the deployment wakes");
        matches!(read.source, ReadSource::Replica { .. })
    })
    .await;
    assert!(served_by_replica, "the wake did not bring an instance up");
    assert_eq!(routed.stats.replica_failures.load(Ordering::Relaxed), 0);

    let back_to_zero =
        wait_until(SCALING_TIMEOUT, || async { live_instances(&deployments(&mds).await).is_empty() }).await;
    assert!(back_to_zero, "the idle deployment kept its instance");
    // The routing table may still list the drained instance for a moment; either way the
    // read is answered.
    routed.lookup(work, b"f").await.expect("a read after scaling to zero");
}

/// With replicas off (the default), a routed reader reads everything from the MDS.
#[tokio::test]
async fn without_replicas_reads_go_to_the_mds() {
    let directory = tempfile::tempdir().expect("tempdir");
    let mds = MdsProcess::start(directory.path(), &[]).expect("start mds");
    let mut api = Api::open(mds.address, None, "setup").await.expect("session");
    let file = api.create(1, "f", 0o644).await.expect("create").ino;
    let routed = reader(&mds).await;
    let read = routed.lookup(1, b"f").await.expect("lookup");
    assert_eq!((read.attr.ino, read.source), (file, ReadSource::Mds));
    let missing = routed.lookup(1, b"nope").await.expect_err("missing");
    assert_eq!(errno_of(&missing), libc::ENOENT);
    assert_eq!(deployments(&mds).await.deployments, 0);
}

// ----- Through real mounts -----

/// `cudele status --server ADDRESS --json`, parsed.
fn status_json(server: std::net::SocketAddr) -> serde_json::Value {
    let output = cudele(["status".to_string(), "--server".to_string(), server.to_string(), "--json".to_string()])
        .expect("run cudele status")
        .expect_success("cudele status --json");
    serde_json::from_str(&output.stdout).expect("status is JSON")
}

/// A replica counter summed over deployments, from `cudele status --json`.
fn replica_counter(status: &serde_json::Value, name: &str) -> u64 {
    status["replicas"]["list"].as_array().map(|list| list.iter().filter_map(|d| d[name].as_u64()).sum()).unwrap_or(0)
}

/// The errno of a failed file operation (None: it succeeded).
fn errno<T>(result: std::io::Result<T>) -> Option<i32> {
    result.err().map(|error| error.raw_os_error().unwrap_or(-1))
}

/// The names in `directory`, sorted.
fn names_in(directory: &std::path::Path) -> std::io::Result<Vec<String>> {
    let mut names = std::fs::read_dir(directory)?
        .map(|entry| entry.map(|entry| entry.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<Vec<String>>>()?;
    names.sort();
    Ok(names)
}

/// The coherence checker through real mounts: one mount creates, chmods, truncates, unlinks
/// and renames (60 rounds) while two threads read through another mount; no read may return a
/// state older than a write acknowledged (its system call returned) before the read began.
/// Returns the reader rounds and the two mounts (writer, reader), still mounted.
fn two_mounts_never_read_stale(mds: &MdsProcess, root: &Path) -> (u64, Mount, Mount) {
    let writer = Mount::start(mds.address, &root.join("w"), &root.join("wj"), "").expect("mount w");
    let reader = Mount::start(mds.address, &root.join("r"), &root.join("rj"), "").expect("mount r");

    const VERSIONS: u64 = 60;
    let work = writer.path("work");
    std::fs::create_dir(&work).expect("mkdir work");
    std::fs::File::create(work.join("size")).expect("create size");
    for number in 0..=VERSIONS + 1 {
        std::fs::File::create(work.join(format!("d{number}"))).expect("create deletable");
    }
    std::fs::create_dir(work.join("r0")).expect("mkdir r0");
    std::fs::File::create(work.join("r0/inside")).expect("create inside");

    let progress = Arc::new(Progress::default());
    let done = Arc::new(AtomicBool::new(false));
    let violations = Arc::new(Mutex::new(Vec::<String>::new()));
    let read_work = reader.path("work");
    let mut readers = Vec::new();
    for _ in 0..2 {
        let (progress, done, violations, work) =
            (progress.clone(), done.clone(), violations.clone(), read_work.clone());
        readers.push(std::thread::spawn(move || {
            let mut rounds = 0u64;
            let flag = |what: String| violations.lock().expect("violations").push(what);
            loop {
                // Read the last state once more after the writer finished.
                let last = done.load(Ordering::Acquire);
                let seen = progress.acknowledged.load(Ordering::Acquire);
                match std::fs::metadata(work.join("size")) {
                    Ok(metadata) if metadata.len() < seen => {
                        flag(format!("size {} < acknowledged {seen}", metadata.len()))
                    }
                    Ok(_) => {}
                    Err(error) => flag(format!("stat size: {error}")),
                }
                if seen >= 1 {
                    match std::fs::metadata(work.join(format!("c{seen}"))) {
                        Ok(metadata) if metadata.mode() & 0o777 != 0o640 => {
                            flag(format!("c{seen} has mode {:o} after the acknowledged chmod", metadata.mode()))
                        }
                        Ok(_) => {}
                        Err(error) => flag(format!("c{seen} acknowledged, stat: {error}")),
                    }
                    match errno(std::fs::metadata(work.join(format!("d{seen}")))) {
                        Some(libc::ENOENT) => {}
                        other => flag(format!("d{seen} unlinked (acknowledged), stat gave errno {other:?}")),
                    }
                    if let Err(error) = std::fs::metadata(work.join(format!("r{seen}/inside"))) {
                        if progress.started.load(Ordering::Acquire) <= seen {
                            flag(format!("r{seen}/inside: renamed (acknowledged), no later rename: {error}"));
                        }
                    }
                    match names_in(&work) {
                        Ok(names) => {
                            if !names.contains(&format!("c{seen}")) {
                                flag(format!("readdir misses c{seen}"));
                            }
                            if names.contains(&format!("d{seen}")) {
                                flag(format!("readdir still lists d{seen}"));
                            }
                        }
                        Err(error) => flag(format!("readdir: {error}")),
                    }
                }
                rounds += 1;
                if last {
                    return rounds;
                }
            }
        }));
    }

    for version in 1..=VERSIONS {
        progress.started.store(version, Ordering::Release);
        let size = std::fs::OpenOptions::new().write(true).open(work.join("size")).expect("open size");
        size.set_len(version).expect("truncate size");
        drop(size);
        let created = work.join(format!("c{version}"));
        std::fs::File::create(&created).expect("create");
        std::fs::set_permissions(&created, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        std::fs::remove_file(work.join(format!("d{version}"))).expect("unlink");
        std::fs::rename(work.join(format!("r{}", version - 1)), work.join(format!("r{version}"))).expect("rename");
        progress.acknowledged.store(version, Ordering::Release);
    }
    done.store(true, Ordering::Release);
    let rounds: u64 = readers.into_iter().map(|reader| reader.join().expect("reader")).sum();
    let violations = violations.lock().expect("violations").clone();
    assert!(
        violations.is_empty(),
        "{} stale or failed reads in {rounds} rounds, first: {:?}",
        violations.len(),
        &violations[..violations.len().min(10)]
    );
    (rounds, writer, reader)
}

/// The same checker without replicas: writes invalidate only the sessions that read what they
/// touch, and the reader's kernel caches entries and attributes for 60 s, invalidated before
/// each write is acknowledged.
#[test]
fn mounts_never_read_stale_through_kernel_caches() {
    if !fuse_available() {
        eprintln!("skipping: /dev/fuse is not usable here");
        return;
    }
    let root = tempfile::tempdir().expect("tempdir");
    let mds = MdsProcess::start(&root.path().join("mds"), &[]).expect("start mds");
    let (rounds, _writer, _reader) = two_mounts_never_read_stale(&mds, root.path());
    eprintln!("{rounds} reader rounds, no stale read");
}

/// Two mounts of an MDS with replicas: one creates, chmods, truncates, unlinks and renames
/// while the other reads through its mount, whose cache misses go to the replicas. No read
/// returns a state older than a write acknowledged (its system call returned) before the
/// read began; and the replicas did serve the mounts, hits included.
#[test]
fn mounts_read_through_replicas_without_stale_reads() {
    if !fuse_available() {
        eprintln!("skipping: /dev/fuse is not usable here");
        return;
    }
    let root = tempfile::tempdir().expect("tempdir");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mds = replica_mds(
        &root.path().join("mds"),
        (2, 1, 2),
        &[FAST_AUTOSCALER.as_slice(), &[("lease-ms", "2000")]].concat(),
    );
    assert!(runtime.block_on(wait_for_instances(&mds, 1)), "instances did not come up");
    let (rounds, _writer, reader) = two_mounts_never_read_stale(&mds, root.path());
    let read_work = reader.path("work");
    // Listing the same directory twice: the second page comes from a replica's cache.
    for _ in 0..3 {
        names_in(&read_work).expect("readdir");
    }
    // Instances report their counters with each heartbeat.
    let mut status = status_json(mds.address);
    let served = poll_until(Duration::from_secs(10), || {
        status = status_json(mds.address);
        replica_counter(&status, "hits") > 0 && replica_counter(&status, "misses") > 0
    });
    eprintln!("{rounds} reader rounds; replicas: {}", status["replicas"]);
    assert!(served, "the replicas served no read of the mounts: {}", status["replicas"]);
}

/// SIGKILL of a replica instance while a mount reads through the replicas (another client
/// keeps writing, so the mount's cache keeps missing): no error reaches the application.
#[test]
fn killing_a_replica_under_a_mount_fails_no_read() {
    if !fuse_available() {
        eprintln!("skipping: /dev/fuse is not usable here");
        return;
    }
    let root = tempfile::tempdir().expect("tempdir");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mds = replica_mds(&root.path().join("mds"), (1, 2, 2), &QUICK_FAILOVER);
    assert!(runtime.block_on(wait_for_instances(&mds, 2)), "instances did not come up");
    let files = runtime.block_on(async {
        let mut api = Api::open(mds.address, None, "setup").await.expect("session");
        let work = api.mkdir(1, "work", 0o755).await.expect("mkdir").ino;
        let mut files = Vec::new();
        for number in 0..20 {
            files.push(api.create(work, format!("f{number}"), 0o644).await.expect("create").ino);
        }
        files
    });
    let mount = Mount::start(mds.address, &root.path().join("m"), &root.path().join("mj"), "").expect("mount");

    let stop = Arc::new(AtomicBool::new(false));
    let killed = Arc::new(AtomicBool::new(false));
    let served_after_kill = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut readers = Vec::new();
    for reader_index in 0..3usize {
        let (stop, killed, served_after_kill, failures) =
            (stop.clone(), killed.clone(), served_after_kill.clone(), failures.clone());
        let directory = mount.path("work");
        readers.push(std::thread::spawn(move || {
            let mut round = reader_index;
            while !stop.load(Ordering::Acquire) {
                round += 1;
                let results = [
                    std::fs::metadata(directory.join(format!("f{}", round % 20))).map(|_| ()),
                    names_in(&directory).map(|_| ()),
                ];
                for result in results {
                    match result {
                        Ok(()) if killed.load(Ordering::Acquire) => {
                            served_after_kill.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(()) => {}
                        Err(error) => failures.lock().expect("failures").push(error.to_string()),
                    }
                }
            }
        }));
    }
    // The writer invalidates what the mount cached, so its reads keep going to replicas.
    let writer = {
        let (stop, files, address) = (stop.clone(), files.clone(), mds.address);
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().expect("runtime");
            runtime.block_on(async {
                let mut api = Api::open(address, None, "writer").await.expect("writer session");
                let mut size = 0u64;
                while !stop.load(Ordering::Acquire) {
                    size += 1;
                    let ino = files[(size % files.len() as u64) as usize];
                    let request = pb::SetAttrRequest { ino, size: Some(size), ..Default::default() };
                    api.setattr(request).await.expect("setattr");
                }
            })
        })
    };
    std::thread::sleep(Duration::from_millis(1000));
    let before_kill = status_json(mds.address);
    let victim = live_instances(&runtime.block_on(deployments(&mds))).first().cloned().expect("an instance");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim.pid as i32), nix::sys::signal::Signal::SIGKILL)
        .expect("kill -9 the instance");
    killed.store(true, Ordering::Release);
    std::thread::sleep(Duration::from_millis(2500));
    stop.store(true, Ordering::Release);
    for reader in readers {
        reader.join().expect("reader");
    }
    writer.join().expect("writer");
    let failures = failures.lock().expect("failures").clone();
    assert!(failures.is_empty(), "{} reads failed, first: {:?}", failures.len(), &failures[..failures.len().min(5)]);
    assert!(served_after_kill.load(Ordering::Relaxed) > 0, "no read completed after the kill");
    // Instances report their counters with each heartbeat (the victim's last report counts).
    let mut status = status_json(mds.address);
    let served = poll_until(Duration::from_secs(10), || {
        status = status_json(mds.address);
        replica_counter(&status, "requests") > 0
    });
    assert!(served, "the mount's reads did not reach the replicas: {}", status["replicas"]);
    eprintln!(
        "{} reads after the kill; replicas before it: {}; after: {}",
        served_after_kill.load(Ordering::Relaxed),
        before_kill["replicas"],
        status["replicas"]
    );
}

/// Inside a subtree another mount decoupled with `interfere_policy: block`, reads through
/// replicas are EBUSY, exactly as without replicas; the owner keeps working in it; after the
/// recouple the other mount reads what the owner wrote.
#[test]
fn blocking_decoupled_subtree_is_busy_through_replicas() {
    if !fuse_available() {
        eprintln!("skipping: /dev/fuse is not usable here");
        return;
    }
    let root = tempfile::tempdir().expect("tempdir");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mds = replica_mds(&root.path().join("mds"), (2, 1, 1), &[]);
    assert!(runtime.block_on(wait_for_instances(&mds, 1)), "instances did not come up");
    let a = Mount::start(mds.address, &root.path().join("a"), &root.path().join("aj"), "").expect("mount a");
    let b = Mount::start(mds.address, &root.path().join("b"), &root.path().join("bj"), "").expect("mount b");
    let (a_dir, b_dir) = (a.path("d"), b.path("d"));
    std::fs::create_dir(&a_dir).expect("mkdir d");
    std::fs::write(a_dir.join("old"), "old\n").expect("write old");
    std::fs::create_dir(a_dir.join("sub")).expect("mkdir sub");
    // B reads it all, so replicas (and B) have it cached before the decouple.
    assert_eq!(names_in(&b_dir).expect("readdir d"), vec!["old".to_string(), "sub".to_string()]);
    std::fs::metadata(b_dir.join("old")).expect("stat old");
    std::fs::metadata(b_dir.join("sub")).expect("stat sub");

    let policy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policies/checkpoint.yml");
    cudele(["decouple".as_ref(), a_dir.as_os_str(), "--policy".as_ref(), policy.as_os_str()])
        .expect("run cudele decouple")
        .expect_success("decouple");
    assert_eq!(errno(std::fs::metadata(b_dir.join("old"))), Some(libc::EBUSY), "stat inside");
    assert_eq!(errno(std::fs::metadata(b_dir.join("sub"))), Some(libc::EBUSY), "stat a directory inside");
    assert_eq!(errno(names_in(&b_dir)), Some(libc::EBUSY), "readdir inside");
    assert_eq!(errno(names_in(&b_dir.join("sub"))), Some(libc::EBUSY), "readdir below");
    // The owner works on.
    std::fs::metadata(a_dir.join("old")).expect("owner stats old");
    std::fs::write(a_dir.join("new"), "new\n").expect("owner writes new");

    cudele(["recouple".as_ref(), a_dir.as_os_str()]).expect("run cudele recouple").expect_success("recouple");
    assert_eq!(std::fs::read_to_string(b_dir.join("new")).expect("read new after recouple"), "new\n");
    assert_eq!(names_in(&b_dir).expect("readdir after recouple").len(), 3, "old, new and sub after the recouple");
    // Instances report their counters with each heartbeat.
    let mut status = status_json(mds.address);
    let served = poll_until(Duration::from_secs(10), || {
        status = status_json(mds.address);
        replica_counter(&status, "requests") > 0
    });
    assert!(served, "no read went to a replica: {}", status["replicas"]);
}
