//! A real FUSE mount of `CudeleFs<LocalMetadata>` (in-process, no MDS) on a temporary
//! directory, exercised through std::fs and libc: proves the adapter translates every
//! operation and errno, and that a failing test never leaves a stuck mount (MountGuard).

mod common;

use common::MountGuard;
use cudele_client::data::ChunkStore;
use cudele_client::fs::CudeleFs;
use cudele_client::metadata::LocalMetadata;
use cudele_client::mount::is_mounted;
use cudele_client::runtime::Blocking;
use cudele_journal::store::JournalStore;
use std::ffi::CString;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Mount a fresh in-process filesystem, or None when this machine cannot mount FUSE.
fn mount() -> Option<MountGuard> {
    let runtime = Blocking::new("mount-test").expect("runtime");
    let store = ChunkStore::new(JournalStore::memory(), runtime);
    common::mount(Arc::new(CudeleFs::new(Arc::new(LocalMetadata::new()), store)))
}

fn errno(error: std::io::Error) -> i32 {
    error.raw_os_error().expect("an OS error")
}

fn c_path(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("no NUL")
}

/// The whole tour: namespace operations, data, errnos, xattrs, special files, statfs.
#[test]
fn mounted_filesystem_behaves_like_linux() {
    let Some(guard) = mount() else { return };
    let root = guard.path.clone();
    // SAFETY: umask only changes this process's file-creation mask.
    unsafe { libc::umask(0o022) };

    // The mount is there, with our type.
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("mounts");
    assert!(
        mounts.lines().any(|line| line.contains(root.to_str().expect("utf8")) && line.contains("fuse.cudele")),
        "type fuse.cudele in /proc/self/mounts"
    );

    // Directories and files.
    let dir = root.join("dir");
    std::fs::create_dir(&dir).expect("mkdir");
    assert_eq!(std::fs::metadata(&dir).expect("stat").permissions().mode() & 0o7777, 0o755);
    assert_eq!(errno(std::fs::create_dir(&dir).expect_err("exists")), libc::EEXIST);
    let file = dir.join("file");
    std::fs::write(&file, b"hello, cudele").expect("write");
    assert_eq!(std::fs::read(&file).expect("read"), b"hello, cudele");
    let metadata = std::fs::metadata(&file).expect("stat");
    assert_eq!((metadata.len(), metadata.permissions().mode() & 0o7777, metadata.nlink()), (13, 0o644, 1));
    assert_eq!(
        errno(std::fs::OpenOptions::new().write(true).create_new(true).open(&file).expect_err("O_EXCL")),
        libc::EEXIST
    );

    // Errnos Linux gives.
    assert_eq!(errno(std::fs::remove_dir(&dir).expect_err("not empty")), libc::ENOTEMPTY);
    let long_name = root.join("n".repeat(256));
    assert_eq!(errno(std::fs::write(&long_name, b"x").expect_err("long name")), libc::ENAMETOOLONG);
    assert_eq!(errno(std::fs::metadata(&long_name).expect_err("long name")), libc::ENAMETOOLONG);
    assert_eq!(errno(std::fs::metadata(root.join("missing")).expect_err("missing")), libc::ENOENT);
    assert_eq!(errno(std::fs::remove_file(&dir).expect_err("unlink dir")), libc::EISDIR);
    assert_eq!(errno(std::fs::remove_dir(&file).expect_err("rmdir file")), libc::ENOTDIR);
    assert_eq!(errno(std::fs::metadata(file.join("x")).expect_err("file as dir")), libc::ENOTDIR);
    assert_eq!(errno(std::fs::read_dir(&file).expect_err("opendir file")), libc::ENOTDIR);

    // Random access, sparse regions, truncate down and up.
    let sparse = root.join("sparse");
    {
        let mut handle =
            std::fs::OpenOptions::new().create(true).truncate(true).read(true).write(true).open(&sparse).expect("open");
        handle.seek(SeekFrom::Start(5 * 1024 * 1024)).expect("seek");
        handle.write_all(b"far").expect("write far");
        handle.seek(SeekFrom::Start(10)).expect("seek");
        handle.write_all(b"near").expect("write near");
        let mut back = vec![0u8; 20];
        handle.seek(SeekFrom::Start(0)).expect("seek");
        handle.read_exact(&mut back).expect("read own writes");
        assert_eq!(&back[10..14], b"near");
        assert_eq!(handle.metadata().expect("fstat").len(), 5 * 1024 * 1024 + 3);
    }
    let content = std::fs::read(&sparse).expect("read sparse");
    assert_eq!(content.len(), 5 * 1024 * 1024 + 3);
    assert_eq!(&content[10..14], b"near");
    assert_eq!(&content[5 * 1024 * 1024..], b"far");
    assert!(content[14..5 * 1024 * 1024].iter().all(|byte| *byte == 0));
    let handle = std::fs::OpenOptions::new().write(true).open(&sparse).expect("open");
    handle.set_len(12).expect("truncate down");
    handle.set_len(100).expect("truncate up");
    drop(handle);
    let content = std::fs::read(&sparse).expect("read truncated");
    assert_eq!(content.len(), 100);
    assert_eq!(&content[10..12], b"ne");
    assert!(content[12..].iter().all(|byte| *byte == 0));

    // A bigger sequential file survives a round trip through several chunks.
    let big: Vec<u8> = (0..9 * 1024 * 1024 + 17).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    std::fs::write(root.join("big"), &big).expect("write big");
    assert!(std::fs::read(root.join("big")).expect("read big") == big, "big file round trip");

    // Rename with and without flags.
    let other = dir.join("other");
    std::fs::write(&other, b"other").expect("write other");
    let (source, target) = (c_path(&file), c_path(&other));
    // SAFETY: valid NUL-terminated paths; AT_FDCWD as both directory fds.
    let noreplace = unsafe {
        libc::renameat2(libc::AT_FDCWD, source.as_ptr(), libc::AT_FDCWD, target.as_ptr(), libc::RENAME_NOREPLACE)
    };
    assert_eq!((noreplace, std::io::Error::last_os_error().raw_os_error()), (-1, Some(libc::EEXIST)));
    // SAFETY: as above.
    let exchange = unsafe {
        libc::renameat2(libc::AT_FDCWD, source.as_ptr(), libc::AT_FDCWD, target.as_ptr(), libc::RENAME_EXCHANGE)
    };
    assert_eq!(exchange, 0, "exchange: {}", std::io::Error::last_os_error());
    assert_eq!(std::fs::read(&file).expect("read"), b"other");
    assert_eq!(std::fs::read(&other).expect("read"), b"hello, cudele");
    std::fs::rename(&other, root.join("moved")).expect("rename");
    assert_eq!(std::fs::read(root.join("moved")).expect("read moved"), b"hello, cudele");
    assert_eq!(errno(std::fs::rename(&dir, dir.join("inside")).expect_err("into itself")), libc::EINVAL);

    // Links.
    std::fs::hard_link(root.join("moved"), root.join("hard")).expect("link");
    assert_eq!(std::fs::metadata(root.join("moved")).expect("stat").nlink(), 2);
    std::os::unix::fs::symlink("moved", root.join("soft")).expect("symlink");
    assert_eq!(std::fs::read_link(root.join("soft")).expect("readlink"), Path::new("moved"));
    assert_eq!(std::fs::read(root.join("soft")).expect("follow"), b"hello, cudele");
    std::fs::remove_file(root.join("moved")).expect("unlink");
    assert_eq!(std::fs::read(root.join("hard")).expect("read hard"), b"hello, cudele");

    // chmod, chown, utimens.
    std::fs::set_permissions(root.join("hard"), std::fs::Permissions::from_mode(0o600)).expect("chmod");
    assert_eq!(std::fs::metadata(root.join("hard")).expect("stat").permissions().mode() & 0o7777, 0o600);
    std::os::unix::fs::chown(root.join("hard"), Some(1234), Some(5678)).expect("chown");
    let metadata = std::fs::metadata(root.join("hard")).expect("stat");
    assert_eq!((metadata.uid(), metadata.gid()), (1234, 5678));
    let when = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    std::fs::File::options().write(true).open(root.join("hard")).expect("open").set_modified(when).expect("utimens");
    assert_eq!(std::fs::metadata(root.join("hard")).expect("stat").mtime(), 1_000_000_000);

    // Special files.
    let fifo = c_path(&root.join("fifo"));
    // SAFETY: valid path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0, "mkfifo: {}", std::io::Error::last_os_error());
    assert!(std::fs::symlink_metadata(root.join("fifo")).expect("stat fifo").file_type().is_fifo());

    // Xattrs with the size probe.
    let path = c_path(&root.join("hard"));
    let (name, value) = (CString::new("user.color").expect("name"), b"blue");
    // SAFETY: valid pointers and lengths.
    let set = unsafe { libc::setxattr(path.as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    assert_eq!(set, 0, "setxattr: {}", std::io::Error::last_os_error());
    // SAFETY: a null buffer with size 0 asks for the length.
    let length = unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
    assert_eq!(length, 4);
    let mut small = [0u8; 2];
    // SAFETY: the buffer is 2 bytes long.
    let too_small = unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), small.as_mut_ptr().cast(), small.len()) };
    assert_eq!((too_small, std::io::Error::last_os_error().raw_os_error()), (-1, Some(libc::ERANGE)));
    let mut buffer = [0u8; 16];
    // SAFETY: the buffer is 16 bytes long.
    let got = unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), buffer.as_mut_ptr().cast(), buffer.len()) };
    assert_eq!(&buffer[..got as usize], b"blue");
    let missing = CString::new("user.missing").expect("name");
    // SAFETY: as above.
    let absent = unsafe { libc::getxattr(path.as_ptr(), missing.as_ptr(), buffer.as_mut_ptr().cast(), buffer.len()) };
    assert_eq!((absent, std::io::Error::last_os_error().raw_os_error()), (-1, Some(libc::ENODATA)));

    // Listing, statfs, then clean up everything.
    let mut names: Vec<String> = std::fs::read_dir(&root)
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into())
        .collect();
    names.sort();
    assert_eq!(names, ["big", "dir", "fifo", "hard", "soft", "sparse"]);
    let statfs = nix::sys::statvfs::statvfs(&root).expect("statvfs");
    assert_eq!(statfs.name_max(), 255);
    for name in ["big", "fifo", "hard", "soft", "sparse", "dir/file"] {
        std::fs::remove_file(root.join(name)).expect("unlink");
    }
    std::fs::remove_dir(&dir).expect("rmdir");
    assert_eq!(std::fs::read_dir(&root).expect("readdir").count(), 0);
    drop(guard);
    assert!(!is_mounted(&root), "unmounted cleanly");
}

/// The guard unmounts even when the test body panics while holding an open file.
#[test]
fn failing_test_leaves_no_mount() {
    let Some(guard) = mount() else { return };
    let root = guard.path.clone();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _open = std::fs::File::create(root.join("held")).expect("create");
        panic!("a failing assertion");
    }));
    assert!(outcome.is_err());
    drop(guard);
    assert!(!is_mounted(&root));
}

/// Permission checks are the kernel's (default_permissions) on our attributes.
#[test]
fn kernel_checks_permissions() {
    let Some(guard) = mount() else { return };
    let root = guard.path.clone();
    let private = root.join("private");
    std::fs::write(&private, b"secret").expect("write");
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::os::unix::fs::chown(&private, Some(4242), Some(4242)).expect("chown");
    // A child process drops to another user and tries to read it.
    let status = std::process::Command::new("setpriv")
        .args(["--reuid=1000", "--regid=1000", "--clear-groups", "cat"])
        .arg(&private)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output();
    match status {
        Ok(output) => {
            assert!(!output.status.success(), "user 1000 must not read a 0600 file of user 4242");
            assert!(String::from_utf8_lossy(&output.stderr).contains("Permission denied"));
        }
        Err(error) => eprintln!("skipping the cross-user check: setpriv unavailable ({error})"),
    }
}
