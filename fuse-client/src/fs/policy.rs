//! The POSIX rules the filesystem applies itself (the kernel's `default_permissions`
//! checks modes, owners and sticky bits from our attributes; these are what it leaves to
//! the filesystem): owners and modes of new inodes, clearing setuid/setgid on write and
//! truncate, access(2), and which xattr namespaces exist.

use crate::metadata::Owner;
use cudele_journal::FileKind;
use cudele_namespace::{Attr, NsError, NsResult};

pub const S_ISUID: u32 = 0o4000;
pub const S_ISGID: u32 = 0o2000;
pub const S_IXGRP: u32 = 0o0010;
pub const PERMISSION_BITS: u32 = 0o7777;
const ROOT_UID: u32 = 0;

/// Who made a request (from the FUSE request header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

impl Caller {
    pub const ROOT: Caller = Caller { uid: ROOT_UID, gid: 0 };

    /// Root bypasses permission bits (CAP_DAC_OVERRIDE, CAP_FSETID); we have no finer view
    /// of capabilities from a FUSE request.
    pub fn is_root(&self) -> bool {
        self.uid == ROOT_UID
    }
}

/// Owner and permission bits of a new inode in `parent`, as ext4's inode_init_owner does:
/// in a setgid directory the group is the directory's, and new subdirectories inherit the
/// setgid bit. (Stripping setgid from files created by non-members is done by the VFS,
/// mode_strip_sgid, before the request reaches us.)
pub fn new_inode_owner(parent: &Attr, caller: Caller, kind: FileKind, mode: u32, umask: u32) -> (Owner, u32) {
    let mut perm = mode & PERMISSION_BITS & !umask;
    let gid = if parent.perm & S_ISGID != 0 {
        if kind == FileKind::Directory {
            perm |= S_ISGID;
        }
        parent.gid
    } else {
        caller.gid
    };
    (Owner { uid: caller.uid, gid }, perm)
}

/// The kind a mknod/create mode asks for (S_IFMT bits; 0 means a regular file).
pub fn kind_of_mode(mode: u32) -> NsResult<FileKind> {
    match mode & libc::S_IFMT {
        0 | libc::S_IFREG => Ok(FileKind::Regular),
        libc::S_IFIFO => Ok(FileKind::Fifo),
        libc::S_IFSOCK => Ok(FileKind::Socket),
        libc::S_IFCHR => Ok(FileKind::CharDevice),
        libc::S_IFBLK => Ok(FileKind::BlockDevice),
        // mknod(2) of a directory is EPERM on Linux (vfs_mknod); anything else is EINVAL.
        libc::S_IFDIR => Err(NsError::NotPermitted),
        _ => Err(NsError::InvalidArgument("mknod of an unknown file type")),
    }
}

/// The mode a write or truncate by `caller` leaves, if it must clear setuid/setgid: as
/// ext4 (file_remove_privs), setuid always, setgid when group-executable, unless the
/// caller may keep them (root).
pub fn mode_after_write(attr: &Attr, caller: Caller) -> Option<u32> {
    if caller.is_root() || attr.kind != FileKind::Regular {
        return None;
    }
    let mut perm = attr.perm & !S_ISUID;
    if attr.perm & (S_ISGID | S_IXGRP) == (S_ISGID | S_IXGRP) {
        perm &= !S_ISGID;
    }
    (perm != attr.perm).then_some(perm)
}

/// access(2): may `caller` access `attr` for `mask` (R_OK | W_OK | X_OK, or F_OK)?
/// Supplementary groups are not visible through FUSE; only the primary group counts.
pub fn check_access(attr: &Attr, caller: Caller, mask: i32) -> NsResult<()> {
    let wanted = (mask & (libc::R_OK | libc::W_OK | libc::X_OK)) as u32;
    if wanted == 0 {
        return Ok(());
    }
    if caller.is_root() {
        // Root may execute only what someone may execute (or search any directory).
        let any_execute = attr.perm & 0o111 != 0 || attr.kind == FileKind::Directory;
        return if wanted & libc::X_OK as u32 != 0 && !any_execute { Err(NsError::AccessDenied) } else { Ok(()) };
    }
    let granted = if caller.uid == attr.uid {
        (attr.perm >> 6) & 0o7
    } else if caller.gid == attr.gid {
        (attr.perm >> 3) & 0o7
    } else {
        attr.perm & 0o7
    };
    if wanted & !granted == 0 {
        Ok(())
    } else {
        Err(NsError::AccessDenied)
    }
}

/// Xattr names must be in a namespace Linux stores for ordinary filesystems, or in
/// `cudele.`, the control namespace of decoupled subtrees (as CephFS's `ceph.dir.*`),
/// which a metadata implementation may interpret. `system.*` (POSIX ACLs) is refused as a
/// filesystem mounted without ACL support does, since the kernel would not enforce ACLs.
pub fn check_xattr_name(name: &[u8]) -> NsResult<()> {
    const STORED_NAMESPACES: [&[u8]; 4] = [b"user.", b"trusted.", b"security.", b"cudele."];
    match STORED_NAMESPACES.iter().find(|prefix| name.starts_with(prefix)) {
        // A bare prefix names no attribute (EINVAL, as ext4's xattr_resolve_name).
        Some(prefix) if name.len() == prefix.len() => Err(NsError::InvalidArgument("xattr name without a suffix")),
        Some(_) => Ok(()),
        None => Err(NsError::NotSupported),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cudele_journal::Timestamp;

    fn attr(kind: FileKind, perm: u32, uid: u32, gid: u32) -> Attr {
        let time = Timestamp::default();
        Attr { ino: 2, kind, perm, uid, gid, nlink: 1, size: 0, rdev: 0, atime: time, mtime: time, ctime: time }
    }

    /// A setgid directory gives its group to new entries and setgid to new subdirectories.
    #[test]
    fn setgid_directory_inheritance() {
        let parent = attr(FileKind::Directory, 0o2775, 0, 50);
        let caller = Caller { uid: 1000, gid: 1000 };
        assert_eq!(
            new_inode_owner(&parent, caller, FileKind::Regular, 0o666, 0o022),
            (Owner { uid: 1000, gid: 50 }, 0o644)
        );
        assert_eq!(
            new_inode_owner(&parent, caller, FileKind::Directory, 0o777, 0o022),
            (Owner { uid: 1000, gid: 50 }, 0o2755)
        );
        let plain = attr(FileKind::Directory, 0o755, 0, 50);
        assert_eq!(new_inode_owner(&plain, caller, FileKind::Regular, 0o666, 0).0, Owner { uid: 1000, gid: 1000 });
    }

    /// Writes by non-root clear setuid always and setgid only with group execute.
    #[test]
    fn write_kills_privileges() {
        let user = Caller { uid: 1000, gid: 1000 };
        assert_eq!(mode_after_write(&attr(FileKind::Regular, 0o4755, 0, 0), user), Some(0o755));
        assert_eq!(mode_after_write(&attr(FileKind::Regular, 0o2755, 0, 0), user), Some(0o755));
        assert_eq!(mode_after_write(&attr(FileKind::Regular, 0o2745, 0, 0), user), None, "mandatory-lock marker stays");
        assert_eq!(mode_after_write(&attr(FileKind::Regular, 0o6755, 0, 0), Caller::ROOT), None);
    }

    #[test]
    fn access_bits() {
        let file = attr(FileKind::Regular, 0o640, 1000, 50);
        assert!(check_access(&file, Caller { uid: 1000, gid: 1 }, libc::R_OK | libc::W_OK).is_ok());
        assert!(check_access(&file, Caller { uid: 2000, gid: 50 }, libc::R_OK).is_ok());
        assert_eq!(check_access(&file, Caller { uid: 2000, gid: 50 }, libc::W_OK), Err(NsError::AccessDenied));
        assert_eq!(check_access(&file, Caller { uid: 2000, gid: 2 }, libc::R_OK), Err(NsError::AccessDenied));
        assert_eq!(check_access(&file, Caller::ROOT, libc::X_OK), Err(NsError::AccessDenied));
        assert!(check_access(&file, Caller { uid: 2000, gid: 2 }, libc::F_OK).is_ok());
    }

    #[test]
    fn xattr_namespaces() {
        assert!(check_xattr_name(b"user.a").is_ok());
        assert!(check_xattr_name(b"security.selinux").is_ok());
        assert_eq!(check_xattr_name(b"user.").map_err(|error| error.errno()), Err(libc::EINVAL));
        assert_eq!(check_xattr_name(b"system.posix_acl_access"), Err(NsError::NotSupported));
        assert_eq!(check_xattr_name(b"foo"), Err(NsError::NotSupported));
    }
}
