//! A create survives an MDS restart (SIGKILL) and the namespace invariants hold.

use cudele_e2e::{connect_session, MdsProcess};
use cudele_proto::pb;

#[tokio::test]
async fn create_survives_kill_and_restart() {
    let directory = tempfile::tempdir().unwrap();
    // No reconnect phase: this client reopens a session rather than reporting that its old
    // one reconnected (it has nothing to replay), so the phase would only wait out its timeout.
    let mut mds = MdsProcess::start(directory.path(), &["--reconnect-timeout-ms", "0"]).unwrap();
    let (mut client, _) = connect_session(mds.address, None, "smoke").await.unwrap();
    let created = client
        .create(pb::CreateRequest {
            parent: 1,
            name: b"a".to_vec(),
            kind: pb::FileKind::Regular as i32,
            mode: 0o644,
            uid: 0,
            gid: 0,
            rdev: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.attr.unwrap().ino, 2);
    mds.restart().unwrap();
    let (mut client, _) = connect_session(mds.address, None, "smoke").await.unwrap();
    let found = client.lookup(pb::EntryRequest { parent: 1, name: b"a".to_vec() }).await.unwrap().into_inner();
    assert_eq!(found.attr.unwrap().ino, 2);
    let dump = client.dump(pb::Empty {}).await.unwrap().into_inner();
    assert_eq!(dump.invariant_violation, "");
}
