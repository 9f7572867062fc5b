//! Early ("unsafe") replies through a real mount (docs/DURABILITY.md): the MDS acknowledges
//! creates before they are durable, the mount keeps their journal records, and when the MDS
//! restarts having lost some of them the mount replays them — nothing the application saw
//! succeed is lost, and what was replayed is durable afterwards.
//!
//! The MDS runs with `CUDELE_FAULT_SEGMENT_DELAY_MS` so that every segment write takes a
//! while: a kill -9 right after a burst of creates then always lands while acknowledged
//! creates are not yet durable. The first test turns the restarted MDS's reconnect phase
//! off to show the loss and the replay; the second shows that with it (the default) nobody
//! sees the namespace without the mount's creates, nor takes one of their names, before the
//! mount has replayed. Bounded polls only; skips where FUSE is not usable.

use cudele_e2e::{errno_of, fuse_available, wait_until, Api, MdsProcess, Mount};
use std::path::{Path, PathBuf};
use std::time::Duration;

const SOON: Duration = Duration::from_secs(30);
const FILES: usize = 200;
const SEGMENT_DELAY_ENV: (&str, &str) = ("CUDELE_FAULT_SEGMENT_DELAY_MS", "400");

/// How many entries the MDS has in `/name`, asked through a session of our own (which
/// replays nothing).
async fn entries_at_mds(mds: &MdsProcess, name: &str) -> usize {
    let mut api = Api::open(mds.address, None, "checker").await.expect("checker session");
    let directory = api.lookup(1, name).await.expect("directory exists at the MDS");
    api.readdir_all(directory.ino, 1024).await.expect("readdir").len()
}

fn create_files(directory: &Path) {
    std::fs::create_dir(directory).expect("mkdir through the mount");
    for index in 0..FILES {
        std::fs::write(directory.join(format!("f{index:04}")), b"").expect("create through the mount");
    }
}

fn all_present(directory: &Path) -> Result<(), String> {
    for index in 0..FILES {
        let path = directory.join(format!("f{index:04}"));
        std::fs::metadata(&path).map_err(|error| format!("{}: {error}", path.display()))?;
    }
    Ok(())
}

/// Creates re-applied from mounts' replays since the MDS started.
async fn replayed_records(mds: &MdsProcess) -> u64 {
    let mut api = Api::open(mds.address, None, "checker").await.expect("checker session");
    api.status().await.expect("status").replayed_records
}

/// An MDS whose segment writes are slow, a mount that created `FILES` files in /burst through
/// it, and the MDS killed right after: the last creates were acknowledged but are not durable
/// yet. The MDS restarts (when asked) at full speed.
fn burst_then_kill(root: &Path) -> (MdsProcess, Mount, PathBuf) {
    let mut mds = MdsProcess::start_with_env(&root.join("mds"), &[], &[SEGMENT_DELAY_ENV]).expect("start");
    let mount = Mount::start(mds.address, &root.join("a"), &root.join("journals"), "").expect("mount");
    let directory = mount.path("burst");
    tokio::task::block_in_place(|| create_files(&directory));
    mds.kill();
    mds.env.clear();
    (mds, mount, directory)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_acknowledged_early_survive_an_mds_kill() {
    if !fuse_available() {
        eprintln!("skipping: /dev/fuse is not usable here");
        return;
    }
    let root = tempfile::tempdir().expect("tempdir");
    let (mut mds, mount, directory) = burst_then_kill(root.path());
    // No reconnect phase, so our checker sees the MDS before the mount replayed.
    mds.args.extend(["--reconnect-timeout-ms".to_string(), "0".to_string()]);
    mds.restart().expect("restart the MDS");
    // The mount learns of the restart (from its invalidation stream, or its next reply) and
    // replays what was lost; the MDS counts what its replay re-applied.
    tokio::task::block_in_place(|| all_present(&directory)).expect("every acknowledged create is back");
    let replayed = wait_until(SOON, || async { entries_at_mds(&mds, "burst").await == FILES }).await;
    assert!(replayed, "the MDS holds every file again");
    let lost = replayed_records(&mds).await;
    assert!(lost > 0, "the kill should have lost acknowledged creates, which the replay re-applied");
    // What was replayed is durable: it survives another kill -9.
    mds.restart().expect("restart the MDS again");
    assert_eq!(entries_at_mds(&mds, "burst").await, FILES);
    drop(mount);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconnect_phase_holds_others_until_the_mount_replayed() {
    if !fuse_available() {
        eprintln!("skipping: /dev/fuse is not usable here");
        return;
    }
    let root = tempfile::tempdir().expect("tempdir");
    // Acknowledged creates are lost (the first test shows that they are).
    let (mut mds, mount, directory) = burst_then_kill(root.path());
    mds.restart().expect("restart the MDS (reconnect phase on: the default)");
    // A client of its own, right away: its operations wait until the mount reconnected
    // (the mount replays as soon as its invalidation stream shows the new incarnation).
    let mut rival = Api::open(mds.address, None, "rival").await.expect("rival session");
    let burst = rival.lookup(1, "burst").await.expect("the directory is durable");
    for index in 0..FILES {
        let name = format!("f{index:04}");
        let taken = rival.create(burst.ino, &name, 0o644).await.expect_err("every name is the mount's");
        assert_eq!(errno_of(&taken), libc::EEXIST, "{name}: {taken:?}");
    }
    assert_eq!(entries_at_mds(&mds, "burst").await, FILES, "nobody sees the directory without the mount's creates");
    tokio::task::block_in_place(|| all_present(&directory)).expect("and the mount sees them all");
    let lost = replayed_records(&mds).await;
    assert!(lost > 0, "the kill lost acknowledged creates (else this test proves nothing)");
    eprintln!("{lost} of {FILES} acknowledged creates were lost by the kill and replayed before anyone else ran");
    drop(mount);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_early_replies_every_create_is_durable_when_acknowledged() {
    if !fuse_available() {
        eprintln!("skipping: /dev/fuse is not usable here");
        return;
    }
    let root = tempfile::tempdir().expect("tempdir");
    let mut mds = MdsProcess::start_with_env(&root.path().join("mds"), &[], &[SEGMENT_DELAY_ENV]).expect("start");
    let mount = Mount::start(mds.address, &root.path().join("a"), &root.path().join("journals"), "early_replies=off")
        .expect("mount");
    let directory = mount.path("burst");
    // Fewer files: each waits for a (deliberately slow) segment write.
    std::fs::create_dir(&directory).expect("mkdir");
    for index in 0..10 {
        tokio::task::block_in_place(|| std::fs::write(directory.join(format!("f{index}")), b"")).expect("create");
    }
    mds.kill();
    mds.env.clear();
    mds.restart().expect("restart the MDS");
    assert_eq!(entries_at_mds(&mds, "burst").await, 10, "nothing acknowledged was lost, nothing to replay");
    drop(mount);
}
