//! Rebuild tests: a new MDS given an empty data dir and only the old MDS's object store
//! (`--object-store file://<old data dir>/objects`) serves the same namespace, whether the old
//! MDS stopped cleanly (SIGTERM: drain + final snapshot), was killed (SIGKILL: snapshot +
//! journal after it, or journal alone), or had taken snapshots and trimmed segments mid-way.
//! And an object store with a corrupt, truncated or missing journal segment makes a new MDS
//! refuse to start with a message naming the damage.

use cudele_e2e::{
    assert_same_dump, copy_tree, file_url, populate, run_mds_expecting_refusal, segment_objects, wait_until, Api,
    MdsProcess,
};
use std::path::{Path, PathBuf};
use std::time::Duration;

const ROOT: u64 = 1;
/// Files per directory in each populated subtree (about 5.5x entries per subtree).
const FILES_PER_DIRECTORY: usize = 25;
const PATIENCE: Duration = Duration::from_secs(60);
/// These gRPC clients send no heartbeats and never report reconnecting (they ask for no early
/// replies): without this, a restarted or rebuilt MDS would hold their operations for the
/// reconnect timeout, waiting for the sessions it knew, while their own leases ran out.
const NO_RECONNECT_PHASE: [&str; 2] = ["--reconnect-timeout-ms", "0"];

struct Old {
    mds: MdsProcess,
    directory: tempfile::TempDir,
}

impl Old {
    fn start(args: &[&str]) -> Old {
        let directory = tempfile::tempdir().unwrap();
        let args: Vec<&str> = args.iter().copied().chain(NO_RECONNECT_PHASE).collect();
        let mds = MdsProcess::start(&directory.path().join("data"), &args).unwrap();
        Old { mds, directory }
    }

    fn objects(&self) -> PathBuf {
        self.directory.path().join("data/objects")
    }
}

/// What a new MDS on a fresh data dir and an existing object store served.
struct Rebuilt {
    /// Its namespace right after startup.
    dump: String,
    /// Its namespace after it wrote a little itself (journaled into the same object store).
    dump_after_writes: String,
}

/// Start an MDS on a fresh, empty data dir whose object store is `objects`, read its dump,
/// write through it, and kill it.
async fn rebuild(objects: &Path) -> Rebuilt {
    let fresh = tempfile::tempdir().unwrap();
    let url = file_url(objects);
    let mut mds =
        MdsProcess::start(fresh.path(), &["--object-store", &url, NO_RECONNECT_PHASE[0], NO_RECONNECT_PHASE[1]])
            .unwrap();
    let mut api = Api::open(mds.address, None, "rebuilt").await.unwrap();
    let dump = api.checked_dump().await;
    // It is a working MDS, not a read-only copy.
    api.create(ROOT, "written-after-rebuild", 0o644).await.unwrap();
    api.mkdir(ROOT, "made-after-rebuild", 0o755).await.unwrap();
    api.unlink(ROOT, "written-after-rebuild").await.unwrap();
    let dump_after_writes = api.checked_dump().await;
    mds.kill();
    Rebuilt { dump, dump_after_writes }
}

fn entry_count(dump: &str) -> usize {
    dump.lines().count()
}

/// SIGTERM drains the journal and writes a final snapshot; a new MDS with only the object
/// store serves an identical namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_after_sigterm_matches() {
    let mut old = Old::start(&[]);
    let mut api = Api::open(old.mds.address, None, "builder").await.unwrap();
    populate(&mut api, ROOT, "one", FILES_PER_DIRECTORY).await.unwrap();
    populate(&mut api, ROOT, "two", FILES_PER_DIRECTORY).await.unwrap();
    let before = api.checked_dump().await;
    assert!(entry_count(&before) >= 250, "a few hundred entries: {}", entry_count(&before));
    old.mds.stop().expect("clean SIGTERM shutdown");
    let snapshots = std::fs::read_dir(old.objects().join("snapshots")).map(|listing| listing.count()).unwrap_or(0);
    assert!(snapshots >= 1, "the shutdown path wrote a final snapshot");

    assert_same_dump(&rebuild(&old.objects()).await.dump, &before, "rebuilt after SIGTERM");
}

/// After SIGKILL, with a snapshot from an earlier clean stop and journal segments after it,
/// a new MDS rebuilds the same namespace; so does the old MDS restarting on its own data dir.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_after_sigkill_from_snapshot_and_journal_matches() {
    let mut old = Old::start(&[]);
    let mut api = Api::open(old.mds.address, None, "builder").await.unwrap();
    populate(&mut api, ROOT, "before-snapshot", FILES_PER_DIRECTORY).await.unwrap();
    old.mds.stop().expect("clean stop writes a snapshot");
    old.mds.restart().unwrap();
    let mut api = Api::open(old.mds.address, None, "builder").await.unwrap();
    let snapshot_seq = api.status().await.unwrap().snapshot_seq;
    assert!(snapshot_seq > 0, "a snapshot exists");
    populate(&mut api, ROOT, "after-snapshot", FILES_PER_DIRECTORY).await.unwrap();
    let moved = api.lookup(ROOT, "before-snapshot").await.unwrap().ino;
    api.rename(ROOT, "before-snapshot", ROOT, "renamed-after-snapshot", cudele_proto::pb::RenameMode::RenameReplace)
        .await
        .unwrap();
    let before = api.checked_dump().await;
    assert!(before.contains(&format!("/renamed-after-snapshot ino={moved}")));
    old.mds.kill();
    let newest_segment = segment_objects(&old.objects()).last().cloned().expect("segments");
    assert!(newest_segment.0.to_string_lossy().contains(".seg"));

    let rebuilt = rebuild(&old.objects()).await;
    assert_same_dump(&rebuilt.dump, &before, "rebuilt from snapshot + journal");
    // The old MDS, restarting on its own metadata store, replays the rest of the journal,
    // including what the rebuilt MDS wrote meanwhile.
    old.mds.restart().unwrap();
    let mut api = Api::open(old.mds.address, None, "checker").await.unwrap();
    assert_same_dump(&api.checked_dump().await, &rebuilt.dump_after_writes, "old MDS recovered from its own store");
}

/// After SIGKILL with no snapshot at all, the journal alone rebuilds the namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_after_sigkill_from_journal_alone_matches() {
    let mut old = Old::start(&[]);
    let mut api = Api::open(old.mds.address, None, "builder").await.unwrap();
    populate(&mut api, ROOT, "journal-only", FILES_PER_DIRECTORY).await.unwrap();
    let before = api.checked_dump().await;
    assert_eq!(api.status().await.unwrap().snapshot_seq, 0, "no snapshot within the default interval");
    old.mds.kill();
    assert!(
        !old.objects().join("snapshots").exists()
            || std::fs::read_dir(old.objects().join("snapshots")).unwrap().count() == 0
    );
    assert_same_dump(&rebuild(&old.objects()).await.dump, &before, "rebuilt from the journal alone");
}

/// With snapshots taken mid-way and the segments they cover trimmed, SIGKILL, then a rebuild
/// from the newest snapshot plus the remaining segments gives the same namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_after_snapshots_and_trims_matches() {
    let mut old = Old::start(&["--flush-interval-ms", "20", "--snapshot-interval-ms", "150"]);
    let mut api = Api::open(old.mds.address, None, "builder").await.unwrap();
    let objects = old.objects();
    for phase in 0..3 {
        populate(&mut api, ROOT, &format!("phase-{phase}"), FILES_PER_DIRECTORY).await.unwrap();
        if phase == 2 {
            break; // the last phase stays in the journal only (as far as the kill allows)
        }
        let durable = api.status().await.unwrap().journal_durable_seq;
        let trimmed = wait_until(PATIENCE, || {
            let mut api = api.clone();
            let objects = objects.clone();
            async move {
                let status = api.status().await.unwrap();
                let first_segment = segment_objects(&objects).first().map(|(path, _)| path.clone());
                let first_trimmed = first_segment.is_none_or(|path| !path.ends_with("00000000000000000001.seg"));
                status.snapshot_seq >= durable && first_trimmed
            }
        })
        .await;
        assert!(
            trimmed,
            "phase {phase}: no snapshot covering seq {durable} with trimmed segments: {:?}",
            api.status().await
        );
    }
    let status = api.status().await.unwrap();
    assert!(status.snapshot_seq > 0);
    let before = api.checked_dump().await;
    old.mds.kill();
    let segments = segment_objects(&objects);
    assert!(
        !segments.iter().any(|(path, _)| path.ends_with("00000000000000000001.seg")),
        "early segments were trimmed"
    );

    assert_same_dump(&rebuild(&objects).await.dump, &before, "rebuilt from the newest snapshot + later segments");
}

/// Build a journal of many single-event segments and kill the MDS: no snapshot, every
/// segment needed. Returns the old MDS (dead) and its segment files.
async fn journal_without_snapshot() -> (Old, Vec<(PathBuf, u64)>) {
    let mut old = Old::start(&[]);
    let mut api = Api::open(old.mds.address, None, "builder").await.unwrap();
    populate(&mut api, ROOT, "damaged", 8).await.unwrap();
    old.mds.kill();
    let segments = segment_objects(&old.objects());
    assert!(segments.len() >= 20, "one segment per sequential mutation: {}", segments.len());
    (old, segments)
}

fn object_name(path: &Path) -> String {
    format!("journal/{}", path.file_name().unwrap().to_string_lossy())
}

/// Copy the objects dir, let `damage` change the copy, and return how a new MDS on it ended.
fn start_on_damaged_copy(old: &Old, damage: impl FnOnce(&Path)) -> cudele_e2e::RefusedStart {
    let scratch = tempfile::tempdir().unwrap();
    let copy = scratch.path().join("objects");
    copy_tree(&old.objects(), &copy).unwrap();
    damage(&copy);
    let url = file_url(&copy);
    run_mds_expecting_refusal(&scratch.path().join("data"), &["--object-store", &url]).unwrap()
}

/// A journal segment with one flipped byte (in a frame, or in the header) makes a new MDS
/// refuse to start, naming the segment; a truncated segment likewise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_segment_refuses_to_start() {
    let (old, segments) = journal_without_snapshot().await;
    let (victim, size) = segments[segments.len() / 2].clone();
    let relative = victim.strip_prefix(old.objects()).unwrap().to_path_buf();
    let name = object_name(&victim);
    let header_bytes = cudele_journal::segment::SEGMENT_HEADER_BYTES as u64;
    assert!(size > header_bytes + 8, "{name} has a frame");

    for (what, offset) in [("a frame payload", size - 1), ("the frame checksum", header_bytes + 5), ("the header", 14)]
    {
        let refused = start_on_damaged_copy(&old, |copy| {
            let path = copy.join(&relative);
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[offset as usize] ^= 0x40;
            std::fs::write(&path, bytes).unwrap();
        });
        assert!(!refused.status.success(), "flipped byte in {what}: exit {}", refused.status);
        assert!(
            refused.stderr.contains(&name),
            "flipped byte in {what}: stderr does not name {name}:\n{}",
            refused.stderr
        );
    }

    let refused = start_on_damaged_copy(&old, |copy| {
        let path = copy.join(&relative);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
    });
    assert!(!refused.status.success());
    assert!(refused.stderr.contains(&name), "truncation: stderr does not name {name}:\n{}", refused.stderr);
    assert!(refused.stderr.contains("truncated"), "{}", refused.stderr);

    // The undamaged original still rebuilds.
    rebuild(&old.objects()).await;
}

/// A missing middle segment is a gap: a new MDS refuses to start and names the missing events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_segment_refuses_to_start() {
    let (old, segments) = journal_without_snapshot().await;
    let middle = segments.len() / 2;
    let (victim, _) = segments[middle].clone();
    let relative = victim.strip_prefix(old.objects()).unwrap().to_path_buf();
    let first_seq = |path: &Path| -> u64 {
        path.file_stem().unwrap().to_string_lossy().parse().expect("segment names are sequence numbers")
    };
    let missing_first = first_seq(&victim);
    let missing_last = first_seq(&segments[middle + 1].0) - 1;

    let refused = start_on_damaged_copy(&old, |copy| std::fs::remove_file(copy.join(&relative)).unwrap());
    assert!(!refused.status.success(), "exit {}", refused.status);
    assert!(refused.stderr.contains("gap"), "stderr does not mention a gap:\n{}", refused.stderr);
    let range = format!("{missing_first}..{missing_last}");
    assert!(refused.stderr.contains(&range), "stderr does not name events {range}:\n{}", refused.stderr);
}
