//! `Namespace::file_bytes` (what statfs reports as used) saturates instead of wrapping when
//! sparse files' sizes add up past `u64::MAX`.

use cudele_journal::{AttrChanges, Event, FileKind, Ino, Timestamp, ROOT_INO};
use cudele_namespace::Namespace;

fn time(seconds: i64) -> Timestamp {
    Timestamp { seconds: 1_767_225_600 + seconds, nanoseconds: 0 }
}

/// Create a regular file `name` in the root and set its size to `size`.
fn file_of_size(namespace: &mut Namespace, name: &str, size: u64) -> Ino {
    let ino = namespace.next_ino();
    let create = Event::Create {
        parent: ROOT_INO,
        name: name.as_bytes().to_vec(),
        ino,
        kind: FileKind::Regular,
        mode: 0o644,
        uid: 0,
        gid: 0,
        rdev: 0,
        time: time(1),
    };
    namespace.apply(&create).expect("create");
    let truncate =
        Event::SetAttr { ino, changes: AttrChanges { size: Some(size), ..Default::default() }, time: time(2) };
    namespace.apply(&truncate).expect("set size");
    ino
}

/// Sizes that fit are summed exactly; a file of nearly u64::MAX bytes plus another saturates.
#[test]
fn file_bytes_saturates_instead_of_wrapping() {
    let mut namespace = Namespace::new(time(0));
    file_of_size(&mut namespace, "small", 4096);
    file_of_size(&mut namespace, "other", 100);
    assert_eq!(namespace.file_bytes(), 4196);
    file_of_size(&mut namespace, "huge", u64::MAX - 10);
    assert_eq!(namespace.file_bytes(), u64::MAX, "the sum saturates rather than wrapping to a small number");
}
