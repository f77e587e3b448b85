//! Safe as root: a symlink planted in a branch never makes the daemon create,
//! chmod, chown or write anything outside that branch.

mod common;
use common::*;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

#[test]
fn a_symlink_planted_as_a_parent_directory_is_not_followed() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro", "outside"]);
    write(u.b("ro/d/f"), "lower");
    write(u.b("ro/d/g"), "lower");
    fs::create_dir(u.b("ro/e")).unwrap();
    // long kernel caches, and direct changes not followed (udba=none): the
    // daemon, not a fresh kernel lookup, resolves d and e (followed, the
    // union would show the planted symlinks, and the caller follow them)
    u.mount("rw=rw:ro=ro", &["udba=none"]);
    // the kernel knows d, d/f and e; then the branch is changed under the mount
    assert_eq!(read(u.m("d/f")), "lower");
    assert!(u.m("e").is_dir());
    std::os::unix::fs::symlink(u.b("outside"), u.b("rw/d")).unwrap();
    std::os::unix::fs::symlink(u.b("outside"), u.b("rw/e")).unwrap();
    let _ = fs::write(u.m("d/f"), "escaped?");
    let _ = fs::set_permissions(u.m("d/g"), fs::Permissions::from_mode(0o777));
    let _ = fs::write(u.m("e/new"), "escaped?");
    let _ = fs::create_dir(u.m("e/newdir"));
    let _ = fs::remove_file(u.m("d/g"));
    assert!(
        ls(u.b("outside")).is_empty(),
        "the daemon wrote outside the branch: {:?}",
        ls(u.b("outside"))
    );
    assert_eq!(read(u.b("ro/d/f")), "lower");
}

#[test]
fn lchown_of_a_symlink_never_touches_its_target() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro", "outside"]);
    write(u.b("outside/target"), "secret");
    std::os::unix::fs::symlink(u.b("outside/target"), u.b("ro/link")).unwrap();
    u.mount("rw=rw:ro=ro", &[]);
    sh(&format!("chown -h 4242:4242 {}", u.m("link").display()));
    sh(&format!("touch -h -d 2000-01-01 {}", u.m("link").display()));
    let t = fs::metadata(u.b("outside/target")).unwrap();
    assert_eq!(t.uid(), 0);
    assert!(t.mtime() > 1_000_000_000);
    let l = fs::symlink_metadata(u.b("rw/link")).unwrap();
    assert!(l.file_type().is_symlink());
    assert_eq!(l.uid(), 4242);
}

#[test]
fn a_planted_work_directory_symlink_is_removed_not_followed() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro", "outside"]);
    std::os::unix::fs::symlink(u.b("outside"), u.b("rw/.wh..wh.work")).unwrap();
    write(u.b("ro/f"), "x");
    u.mount("rw=rw:ro=ro", &[]);
    fs::write(u.m("f"), "copied").unwrap();
    fs::create_dir(u.m("dir")).unwrap();
    assert!(ls(u.b("outside")).is_empty());
    assert!(fs::symlink_metadata(u.b("rw/.wh..wh.work"))
        .unwrap()
        .is_dir());
    assert_eq!(read(u.b("rw/f")), "copied");
}
