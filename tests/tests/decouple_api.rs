//! Decouple, merge and recouple through the gRPC API against a real cudele-mds: the range is
//! journaled, block gives EBUSY to others, merges are atomic, idempotent and survive SIGKILL,
//! and decoupled-wins rules resolve conflicts under allow.

use cudele_e2e::{connect_session, errno_of, MdsProcess};
use cudele_journal::segment::SegmentBuilder;
use cudele_journal::{Event, FileKind, Record, Timestamp};
use cudele_proto::pb;

const CHECKPOINT_POLICY: &str = "consistency: append client journal + volatile apply\ndurability: global persist\nallocated_inodes: 1000\ninterfere_policy: block\n";
const ALLOW_POLICY: &str = "consistency: append client journal + volatile apply\ndurability: global persist\nallocated_inodes: 1000\ninterfere_policy: allow\n";

fn segment(records: &[Record]) -> Vec<u8> {
    let mut builder = SegmentBuilder::new(records[0].seq);
    for record in records {
        builder.push(record).unwrap();
    }
    builder.finish()
}

fn creates(directory: u64, first_ino: u64, first_seq: u64, count: u64) -> Vec<Record> {
    let time = Timestamp { seconds: 1_800_000_000, nanoseconds: 0 };
    (0..count)
        .map(|index| Record {
            seq: first_seq + index,
            event: Event::Create {
                parent: directory,
                name: format!("file-{}", first_seq + index).into_bytes(),
                ino: first_ino + index,
                kind: FileKind::Regular,
                mode: 0o644,
                uid: 0,
                gid: 0,
                rdev: 0,
                time,
            },
        })
        .collect()
}

async fn mkdir(client: &mut cudele_e2e::ApiClient, name: &str) -> u64 {
    client
        .mkdir(pb::MkdirRequest { parent: 1, name: name.as_bytes().to_vec(), mode: 0o755, uid: 0, gid: 0 })
        .await
        .unwrap()
        .into_inner()
        .attr
        .unwrap()
        .ino
}

/// A blocking decoupled subtree refuses other sessions with EBUSY (parents stay usable); the
/// merge lands atomically, a repeated merge changes nothing, and both survive SIGKILL.
#[tokio::test]
async fn decouple_block_merge_idempotent_and_durable() {
    let directory = tempfile::tempdir().unwrap();
    // No reconnect phase: these gRPC clients reopen sessions after the restart instead of
    // reporting that the old ones reconnected (they have nothing to replay).
    let mut mds = MdsProcess::start(directory.path(), &["--reconnect-timeout-ms", "0"]).unwrap();
    let (mut owner, _) = connect_session(mds.address, None, "owner").await.unwrap();
    let (mut other, _) = connect_session(mds.address, None, "other").await.unwrap();
    let checkpoint = mkdir(&mut owner, "ckpt").await;

    let decoupled = owner
        .decouple(pb::DecoupleRequest { ino: checkpoint, policy: CHECKPOINT_POLICY.as_bytes().to_vec() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(decoupled.range_end - decoupled.range_start, 1000);
    assert!(!decoupled.subtree.is_empty());

    // Another session: EBUSY inside, fine in the parent.
    let inside = other.lookup(pb::EntryRequest { parent: checkpoint, name: b"x".to_vec() }).await.unwrap_err();
    assert_eq!(errno_of(&inside), libc::EBUSY);
    let create_inside = other
        .create(pb::CreateRequest {
            parent: checkpoint,
            name: b"x".to_vec(),
            kind: pb::FileKind::Regular as i32,
            mode: 0o644,
            uid: 0,
            gid: 0,
            rdev: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(errno_of(&create_inside), libc::EBUSY);
    mkdir(&mut other, "elsewhere").await;

    // A second decouple of the same directory (or one inside it) is EBUSY.
    let again = other
        .decouple(pb::DecoupleRequest { ino: checkpoint, policy: CHECKPOINT_POLICY.as_bytes().to_vec() })
        .await
        .unwrap_err();
    assert_eq!(errno_of(&again), libc::EBUSY);

    let journal = segment(&creates(checkpoint, decoupled.range_start, 1, 500));
    let merged = owner
        .merge(pb::MergeRequest { ino: checkpoint, journal: journal.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((merged.events_applied, merged.events_skipped, merged.merged_seq), (500, 0, 500));
    let again =
        owner.merge(pb::MergeRequest { ino: checkpoint, journal, ..Default::default() }).await.unwrap().into_inner();
    assert_eq!((again.events_applied, again.events_already_merged), (0, 500));

    mds.restart().unwrap();
    let (mut owner_after, _) = connect_session(mds.address, None, "owner-after").await.unwrap();
    let dump = owner_after.dump(pb::Empty {}).await.unwrap().into_inner();
    assert_eq!(dump.invariant_violation, "");
    assert_eq!(dump.dump.matches("/ckpt/file-").count(), 500, "merged creates survive SIGKILL");
    // The decoupling survived too: a fresh session is still refused inside.
    let refused =
        owner_after.lookup(pb::EntryRequest { parent: checkpoint, name: b"file-1".to_vec() }).await.unwrap_err();
    assert_eq!(errno_of(&refused), libc::EBUSY);
    // An operator merge with recouple returns the subtree to everyone.
    owner_after
        .merge(pb::MergeRequest {
            ino: checkpoint,
            journal: segment(&creates(checkpoint, decoupled.range_start + 500, 501, 1)),
            recouple: true,
            operator: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let found = owner_after.lookup(pb::EntryRequest { parent: checkpoint, name: b"file-501".to_vec() }).await.unwrap();
    assert_eq!(found.into_inner().attr.unwrap().ino, decoupled.range_start + 500);
}

/// Under allow, other sessions' changes apply at once and the decoupled client's win at merge:
/// a name both created ends up the decoupled client's inode, and a journal gap is refused.
#[tokio::test]
async fn allow_decoupled_wins_and_gaps_are_refused() {
    let directory = tempfile::tempdir().unwrap();
    let mds = MdsProcess::start(directory.path(), &[]).unwrap();
    let (mut owner, _) = connect_session(mds.address, None, "owner").await.unwrap();
    let (mut other, _) = connect_session(mds.address, None, "other").await.unwrap();
    let shared = mkdir(&mut owner, "shared").await;
    let decoupled = owner
        .decouple(pb::DecoupleRequest { ino: shared, policy: ALLOW_POLICY.as_bytes().to_vec() })
        .await
        .unwrap()
        .into_inner();
    // The other client creates file-1 first.
    other
        .create(pb::CreateRequest {
            parent: shared,
            name: b"file-1".to_vec(),
            kind: pb::FileKind::Regular as i32,
            mode: 0o600,
            uid: 7,
            gid: 7,
            rdev: 0,
        })
        .await
        .unwrap();
    let gap = owner
        .merge(pb::MergeRequest {
            ino: shared,
            journal: segment(&creates(shared, decoupled.range_start, 2, 1)),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(errno_of(&gap), libc::EINVAL);
    let merged = owner
        .merge(pb::MergeRequest {
            ino: shared,
            journal: segment(&creates(shared, decoupled.range_start, 1, 3)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(merged.events_applied, 3);
    let winner =
        other.lookup(pb::EntryRequest { parent: shared, name: b"file-1".to_vec() }).await.unwrap().into_inner();
    assert_eq!(winner.attr.unwrap().ino, decoupled.range_start, "the decoupled client's create wins");
    let dump = other.dump(pb::Empty {}).await.unwrap().into_inner();
    assert_eq!(dump.invariant_violation, "");
    // A journal naming something outside the subtree is skipped, not applied.
    let outside = owner
        .merge(pb::MergeRequest {
            ino: shared,
            journal: segment(&creates(1, decoupled.range_start + 10, 4, 1)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((outside.events_applied, outside.events_skipped), (0, 1));
    assert!(outside.skip_reasons[0].contains("outside"), "{:?}", outside.skip_reasons);
}

/// A merge of 100,000 creates (a ~5 MB client journal, over gRPC's default 4 MiB message limit)
/// goes through in one atomic merge.
#[tokio::test]
async fn a_hundred_thousand_creates_merge_at_once() {
    const CREATES: u64 = 100_000;
    let directory = tempfile::tempdir().unwrap();
    let mds = MdsProcess::start(directory.path(), &[]).unwrap();
    let (mut owner, _) = connect_session(mds.address, None, "owner").await.unwrap();
    let checkpoint = mkdir(&mut owner, "ckpt").await;
    let policy = CHECKPOINT_POLICY.replace("allocated_inodes: 1000", "allocated_inodes: 100000");
    let decoupled = owner
        .decouple(pb::DecoupleRequest { ino: checkpoint, policy: policy.into_bytes() })
        .await
        .unwrap()
        .into_inner();
    let journal = segment(&creates(checkpoint, decoupled.range_start, 1, CREATES));
    assert!(journal.len() > 4 << 20, "the journal is {} bytes", journal.len());
    let merged =
        owner.merge(pb::MergeRequest { ino: checkpoint, journal, ..Default::default() }).await.unwrap().into_inner();
    assert_eq!((merged.events_applied, merged.merged_seq), (CREATES, CREATES));
}
