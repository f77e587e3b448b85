//! A user's mount where /dev/fuse is root's only (a machine without udev):
//! one line says what stands in the way. A test binary of its own, as it
//! changes /dev/fuse's mode for its length.

mod common;
use common::*;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// /dev/fuse's mode, given back when dropped.
struct FuseMode(u32);

impl Drop for FuseMode {
    fn drop(&mut self) {
        let _ = std::fs::set_permissions("/dev/fuse", std::fs::Permissions::from_mode(self.0));
    }
}

#[test]
fn a_user_who_may_not_open_dev_fuse_is_told_so_in_one_line() {
    need_fuse!();
    let (uid, gid) = attacker();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // The build tree may be where the user cannot go.
    let prog = tmp.path().join("unionfs-mount");
    std::fs::copy(BIN, &prog).unwrap();
    let (branch, mnt) = (tmp.path().join("a"), tmp.path().join("m"));
    for d in [&branch, &mnt] {
        std::fs::create_dir(d).unwrap();
        std::os::unix::fs::chown(d, Some(uid), Some(gid)).unwrap();
    }
    let was = std::fs::metadata("/dev/fuse").unwrap().permissions().mode() & 0o7777;
    let _restore = FuseMode(was);
    std::fs::set_permissions("/dev/fuse", std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = Command::new(&prog)
        .arg(&branch)
        .arg(&mnt)
        .uid(uid)
        .gid(gid)
        .current_dir("/")
        .output()
        .unwrap();
    drop(_restore);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("/dev/fuse") && err.contains("mode 0666"),
        "names the device and the fix: {err}"
    );
    assert!(!is_mounted(&mnt));
}
