//! A hostile client, as a raw gRPC client generated from the .proto files (not the mount),
//! against a real `cudele-mds` with a client token and an admin token: every behaviour of
//! issue 12 ends as a refusal with the right status/errno, the server keeps serving, the
//! namespace dump is unchanged, and the data dir restarts. docs/SECURITY.md cites these.

use cudele_e2e::{
    connect, connect_session_with_credential, errno_of, write_secret_file, ApiClient, Headers, MdsProcess,
};
use cudele_journal::segment::SegmentBuilder;
use cudele_journal::{Event, FileKind, Record, Timestamp};
use cudele_proto::pb;

const CLIENT_TOKEN: &str = "client-token-0123456789";
const ADMIN_TOKEN: &str = "admin-token-9876543210";
const ROOT: u64 = 1;
const BLOCK_POLICY: &str = "consistency: append client journal + volatile apply\ndurability: global persist\nallocated_inodes: 100\ninterfere_policy: block\n";

struct Cluster {
    _directory: tempfile::TempDir,
    mds: MdsProcess,
}

fn start() -> Cluster {
    let directory = tempfile::tempdir().unwrap();
    let client = directory.path().join("token");
    let admin = directory.path().join("admin-token");
    write_secret_file(&client, CLIENT_TOKEN).unwrap();
    write_secret_file(&admin, ADMIN_TOKEN).unwrap();
    let data = directory.path().join("data");
    let args = [
        "--token-file",
        client.to_str().unwrap(),
        "--admin-token-file",
        admin.to_str().unwrap(),
        "--reconnect-timeout-ms",
        "0",
    ];
    let mds = MdsProcess::start(&data, &args).unwrap();
    Cluster { _directory: directory, mds }
}

async fn session(cluster: &Cluster, name: &str) -> (ApiClient, u64, String) {
    connect_session_with_credential(cluster.mds.address, Some(CLIENT_TOKEN.into()), name).await.unwrap()
}

async fn admin_dump(cluster: &Cluster) -> String {
    let mut admin =
        connect(cluster.mds.address, Headers { token: Some(ADMIN_TOKEN.into()), session: None }).await.unwrap();
    let dump = admin.dump(pb::Empty {}).await.expect("admin dump").into_inner();
    assert!(dump.invariant_violation.is_empty(), "{}", dump.invariant_violation);
    dump.dump
}

async fn mkdir(client: &mut ApiClient, parent: u64, name: &str) -> u64 {
    let request = pb::MkdirRequest { parent, name: name.into(), mode: 0o755, uid: 0, gid: 0 };
    client.mkdir(request).await.unwrap().into_inner().attr.unwrap().ino
}

fn create(parent: u64, name: &str, ino: u64) -> Event {
    Event::Create {
        parent,
        name: name.into(),
        ino,
        kind: FileKind::Regular,
        mode: 0o644,
        uid: 0,
        gid: 0,
        rdev: 0,
        time: Timestamp { seconds: 1_800_000_000, nanoseconds: 0 },
    }
}

fn encoded_record(seq: u64, event: Event) -> Vec<u8> {
    let mut bytes = Vec::new();
    cudele_journal::codec::encode_record(&Record { seq, event }, &mut bytes);
    bytes
}

fn segment(events: Vec<Event>) -> Vec<u8> {
    let mut builder = SegmentBuilder::new(1);
    for (index, event) in events.into_iter().enumerate() {
        builder.push(&Record { seq: index as u64 + 1, event }).unwrap();
    }
    builder.finish()
}

fn assert_code<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: tonic::Code, what: &str) -> tonic::Status {
    let status = result.expect_err(what);
    assert_eq!(status.code(), code, "{what}: {status:?}");
    status
}

/// The data dir restarts after every refusal and holds exactly what it held.
async fn restarts_unchanged(cluster: &mut Cluster, before: &str) {
    cluster.mds.restart().unwrap();
    assert_eq!(admin_dump(cluster).await, before, "the namespace changed across the restart");
}

/// Item 1: a create naming an inode near 2^64 through Replay (with or without a session)
/// is refused; the allocator does not wrap, later creates work, and the MDS restarts.
#[tokio::test]
async fn a_huge_inode_number_cannot_brick_the_data_dir() {
    let mut cluster = start();
    let (mut client, _, _) = session(&cluster, "hostile").await;
    let before = admin_dump(&cluster).await;
    let records = vec![encoded_record(1, create(ROOT, "wrap", u64::MAX - 1))];
    let mut no_session =
        connect(cluster.mds.address, Headers { token: Some(CLIENT_TOKEN.into()), session: None }).await.unwrap();
    assert_code(
        no_session.replay(pb::ReplayRequest { records: records.clone() }).await,
        tonic::Code::Unauthenticated,
        "replay without a session",
    );
    let status =
        assert_code(client.replay(pb::ReplayRequest { records }).await, tonic::Code::PermissionDenied, "huge ino");
    assert_eq!(errno_of(&status), libc::EPERM);
    assert_eq!(admin_dump(&cluster).await, before);
    mkdir(&mut client, ROOT, "still-serving").await;
    let after = admin_dump(&cluster).await;
    restarts_unchanged(&mut cluster, &after).await;
}

/// Item 2: session ids prove nothing: a bare id, a forged secret, or no header at all are
/// UNAUTHENTICATED for calls, the push stream and acknowledgements; Status shows no secret.
#[tokio::test]
async fn another_sessions_id_does_not_make_you_that_session() {
    let cluster = start();
    let (mut victim, victim_id, credential) = session(&cluster, "victim").await;
    mkdir(&mut victim, ROOT, "mine").await;
    let forged = format!("{victim_id}.00000000000000000000000000000000");
    for header in [victim_id.to_string(), forged] {
        let headers = Headers { token: Some(CLIENT_TOKEN.into()), session: Some(header.clone()) };
        let mut impostor = connect(cluster.mds.address, headers).await.unwrap();
        assert_code(impostor.get_attr(pb::InoRequest { ino: ROOT }).await, tonic::Code::Unauthenticated, &header);
        assert_code(impostor.subscribe(pb::Empty {}).await, tonic::Code::Unauthenticated, "subscribe");
        assert_code(
            impostor.ack_invalidation(pb::AckInvalidationRequest { id: 1 }).await,
            tonic::Code::Unauthenticated,
            "ack",
        );
        assert_code(impostor.close_session(pb::Empty {}).await, tonic::Code::Unauthenticated, "close");
        assert_code(impostor.heartbeat(pb::Empty {}).await, tonic::Code::Unauthenticated, "heartbeat");
    }
    let mut anonymous =
        connect(cluster.mds.address, Headers { token: Some(CLIENT_TOKEN.into()), session: None }).await.unwrap();
    assert_code(anonymous.get_attr(pb::InoRequest { ino: ROOT }).await, tonic::Code::Unauthenticated, "no session");
    let status = anonymous.status(pb::StatusRequest::default()).await.unwrap().into_inner();
    assert!(!format!("{status:?}").contains(&credential[credential.find('.').unwrap() + 1..]), "Status shows a secret");
    assert!(status.sessions.iter().any(|listed| listed.session == victim_id));
    // The victim is untouched and still works.
    victim.get_attr(pb::InoRequest { ino: ROOT }).await.unwrap();
}

/// Items 3 and 4: operator merges need the admin token; a client may merge only its own
/// client journal object, never the MDS's journal; a merge using inode numbers it was not
/// handed, or reaching outside its blocking subtree, is refused whole.
#[tokio::test]
async fn merges_are_checked_against_roles_objects_and_allocations() {
    let mut cluster = start();
    let (mut owner, owner_id, _) = session(&cluster, "owner").await;
    let (mut other, _, _) = session(&cluster, "other").await;
    let job = mkdir(&mut owner, ROOT, "job").await;
    let outside = mkdir(&mut other, ROOT, "outside").await;
    let reply = owner
        .decouple(pb::DecoupleRequest { ino: job, policy: BLOCK_POLICY.as_bytes().to_vec() })
        .await
        .unwrap()
        .into_inner();
    let before = admin_dump(&cluster).await;

    let operator = pb::MergeRequest { ino: job, operator: true, recouple: true, ..Default::default() };
    assert_code(other.merge(operator.clone()).await, tonic::Code::PermissionDenied, "operator merge as a client");
    let mds_segment =
        pb::MergeRequest { ino: job, journal_object: "journal/00000000000000000001.seg".into(), ..Default::default() };
    assert_code(owner.merge(mds_segment).await, tonic::Code::PermissionDenied, "the MDS's segment");
    let foreign_object = pb::MergeRequest {
        ino: job,
        journal_object: cudele_journal::store::client_journal_object(job, owner_id + 1),
        ..Default::default()
    };
    assert_code(owner.merge(foreign_object).await, tonic::Code::PermissionDenied, "another session's journal");

    // One good create, then one whose inode lies outside the range: nothing applies.
    let good = create(job, "a", reply.range_start);
    let stolen = create(job, "b", reply.range_end + 10);
    let request = pb::MergeRequest { ino: job, journal: segment(vec![good.clone(), stolen]), ..Default::default() };
    let status = assert_code(owner.merge(request).await, tonic::Code::PermissionDenied, "foreign inode");
    assert!(status.message().contains("event 2"), "names the first offending event: {status:?}");
    // Reaching outside a blocking subtree.
    let escape = Event::Unlink { parent: outside, name: b"x".to_vec(), time: Timestamp::default() };
    let request = pb::MergeRequest { ino: job, journal: segment(vec![good.clone(), escape]), ..Default::default() };
    assert_code(owner.merge(request).await, tonic::Code::PermissionDenied, "outside the subtree");
    // An event only the MDS journals.
    let session_event = Event::SessionClose { session: 1 };
    let request = pb::MergeRequest { ino: job, journal: segment(vec![session_event]), ..Default::default() };
    assert_code(owner.merge(request).await, tonic::Code::PermissionDenied, "a session event");
    assert_eq!(admin_dump(&cluster).await, before, "a refused merge applied something");

    // The honest merge still works.
    let request = pb::MergeRequest { ino: job, journal: segment(vec![good]), recouple: true, ..Default::default() };
    assert_eq!(owner.merge(request).await.unwrap().into_inner().events_applied, 1);
    let after = admin_dump(&cluster).await;
    restarts_unchanged(&mut cluster, &after).await;
}

/// Item 4: Replay is accepted only in the reconnect phase (here there is none), so a
/// session cannot inject creates through it, even into its own early-reply range.
#[tokio::test]
async fn replay_outside_the_reconnect_phase_is_refused() {
    let cluster = start();
    let (mut client, _, _) = session(&cluster, "replayer").await;
    let before = admin_dump(&cluster).await;
    let records = vec![encoded_record(5, create(ROOT, "injected", 2))];
    assert_code(client.replay(pb::ReplayRequest { records }).await, tonic::Code::PermissionDenied, "replay");
    // An empty replay ("nothing to replay") is harmless.
    client.replay(pb::ReplayRequest { records: Vec::new() }).await.unwrap();
    assert_eq!(admin_dump(&cluster).await, before);
}

/// Item 5: decoupling `/` or an ancestor of another session's decoupled subtree is refused,
/// and so is renaming a blocked root away or renaming its ancestor.
#[tokio::test]
async fn block_cannot_be_bypassed_by_decoupling_above_or_renaming() {
    let mut cluster = start();
    let (mut victim, _, _) = session(&cluster, "victim").await;
    let (mut attacker, _, _) = session(&cluster, "attacker").await;
    let parent = mkdir(&mut victim, ROOT, "parent").await;
    let job = mkdir(&mut victim, parent, "job").await;
    victim.decouple(pb::DecoupleRequest { ino: job, policy: BLOCK_POLICY.as_bytes().to_vec() }).await.unwrap();
    let before = admin_dump(&cluster).await;

    let policy = BLOCK_POLICY.as_bytes().to_vec();
    let status = assert_code(
        attacker.decouple(pb::DecoupleRequest { ino: ROOT, policy: policy.clone() }).await,
        tonic::Code::PermissionDenied,
        "decouple /",
    );
    assert_eq!(errno_of(&status), libc::EPERM);
    let status = assert_code(
        attacker.decouple(pb::DecoupleRequest { ino: parent, policy }).await,
        tonic::Code::Unavailable,
        "decouple an ancestor",
    );
    assert_eq!(errno_of(&status), libc::EBUSY);
    let mine = mkdir(&mut attacker, ROOT, "mine").await;
    for (source_parent, source_name) in [(parent, "job"), (ROOT, "parent")] {
        let rename = pb::RenameRequest {
            parent: source_parent,
            name: source_name.into(),
            new_parent: mine,
            new_name: b"stolen".to_vec(),
            mode: pb::RenameMode::RenameReplace as i32,
        };
        let status = assert_code(attacker.rename(rename).await, tonic::Code::Unavailable, source_name);
        assert_eq!(errno_of(&status), libc::EBUSY);
    }
    let exchange = pb::RenameRequest {
        parent,
        name: b"job".to_vec(),
        new_parent: ROOT,
        new_name: b"mine".to_vec(),
        mode: pb::RenameMode::RenameExchange as i32,
    };
    assert_code(attacker.rename(exchange).await, tonic::Code::Unavailable, "exchange");
    let after = admin_dump(&cluster).await;
    assert_eq!(after.lines().count(), before.lines().count() + 1, "only the attacker's own directory is new");
    restarts_unchanged(&mut cluster, &after).await;
}

/// Item 6: xattr values are bounded (E2BIG) and so is an inode's total (ENOSPC).
#[tokio::test]
async fn xattrs_are_bounded_per_value_and_per_inode() {
    let cluster = start();
    let (mut client, _, _) = session(&cluster, "xattrs").await;
    let directory = mkdir(&mut client, ROOT, "x").await;
    let big = vec![7u8; 64 * 1024 + 1];
    let set = |name: String, value: Vec<u8>| pb::SetXattrRequest {
        ino: directory,
        name: name.into_bytes(),
        value,
        mode: pb::XattrMode::XattrUpsert as i32,
    };
    let status = client.set_xattr(set("user.big".into(), big)).await.expect_err("value over 64 KiB");
    assert_eq!(errno_of(&status), libc::E2BIG);
    let value = vec![1u8; 64 * 1024];
    let mut refused = None;
    for index in 0..8 {
        if let Err(status) = client.set_xattr(set(format!("user.v{index}"), value.clone())).await {
            refused = Some((index, status));
            break;
        }
    }
    let (index, status) = refused.expect("the per-inode total is bounded");
    assert_eq!(errno_of(&status), libc::ENOSPC);
    assert!(index >= 3, "at least 3 values of 64 KiB fit (256 KiB total); refused at {index}");
    admin_dump(&cluster).await;
}

/// Item 7: an ordinary request above its limit is refused before it runs; the Coordinator's
/// registration is not for client tokens; Status pages its session list.
#[tokio::test]
async fn oversized_requests_and_replica_registration_are_refused() {
    let cluster = start();
    let (mut client, _, _) = session(&cluster, "big").await;
    let request = pb::SymlinkRequest { parent: ROOT, name: b"s".to_vec(), target: vec![b'a'; 2 << 20], uid: 0, gid: 0 };
    assert_code(client.symlink(request).await, tonic::Code::OutOfRange, "2 MiB symlink request");

    let channel = tonic::transport::Channel::from_shared(format!("http://{}", cluster.mds.address))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let headers = Headers { token: Some(CLIENT_TOKEN.into()), session: None };
    let mut coordinator =
        cudele_proto::replica_pb::coordinator_client::CoordinatorClient::with_interceptor(channel, headers);
    let register = cudele_proto::replica_pb::RegisterRequest {
        deployment: 0,
        address: "127.0.0.1:1".into(),
        ..Default::default()
    };
    assert_code(coordinator.register(register).await, tonic::Code::PermissionDenied, "register as a client");
    let fill = pb::InoRequest { ino: ROOT };
    assert_code(coordinator.fill_get_attr(fill).await, tonic::Code::PermissionDenied, "fill as a client");

    for index in 0..3 {
        session(&cluster, &format!("extra-{index}")).await;
    }
    let page = client.status(pb::StatusRequest { sessions_after: 0, sessions_limit: 2 }).await.unwrap().into_inner();
    assert_eq!(page.sessions.len(), 2);
    assert_eq!(page.sessions_total, 4);
    assert!(!page.sessions_end);
    let rest = client
        .status(pb::StatusRequest { sessions_after: page.sessions[1].session, sessions_limit: 2 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.sessions.len(), 2);
    assert!(rest.sessions_end);
}

/// A session's credential resumes it after a restart; a forged one does not.
#[tokio::test]
async fn only_the_credential_resumes_a_session_after_a_restart() {
    let mut cluster = start();
    let (_, id, credential) = session(&cluster, "resumer").await;
    cluster.mds.restart().unwrap();
    let headers = Headers { token: Some(CLIENT_TOKEN.into()), session: Some(credential) };
    let mut resumed = connect(cluster.mds.address, headers).await.unwrap();
    resumed.heartbeat(pb::Empty {}).await.expect("the credential resumes the session");
    let forged = Headers { token: Some(CLIENT_TOKEN.into()), session: Some(format!("{id}.{}", "ab".repeat(16))) };
    let mut impostor = connect(cluster.mds.address, forged).await.unwrap();
    assert_code(impostor.heartbeat(pb::Empty {}).await, tonic::Code::Unauthenticated, "forged resume");
}
