//! Creating names: where they land, who owns them, whiteouts replaced,
//! opaque directories, reserved `.wh.` names.

mod common;
use common::*;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::Command;

#[test]
fn new_entries_go_to_the_highest_writable_branch_with_parents() {
    need_fuse!();
    let mut u = Union::new(&["rw1", "rw2", "ro"]);
    write(u.b("ro/d/e/lower"), "x");
    sh(&format!("chmod 0751 {}", u.b("ro/d/e").display()));
    u.mount("rw1=rw:rw2=rw:ro=ro", &[]);
    write(u.m("d/e/file"), "f");
    fs::create_dir(u.m("d/e/dir")).unwrap();
    std::os::unix::fs::symlink("target", u.m("d/e/sym")).unwrap();
    nix::unistd::mkfifo(
        &u.m("d/e/fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .unwrap();
    assert_eq!(read(u.b("rw1/d/e/file")), "f");
    assert!(fs::metadata(u.b("rw1/d/e/dir")).unwrap().is_dir());
    assert_eq!(
        fs::read_link(u.b("rw1/d/e/sym")).unwrap().to_str(),
        Some("target")
    );
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(
        &fs::symlink_metadata(u.b("rw1/d/e/fifo"))
            .unwrap()
            .file_type()
    ));
    assert_eq!(
        mode(u.b("rw1/d/e")),
        0o751,
        "parent not copied with its mode"
    );
    assert!(!exists(u.b("rw2/d")));
    assert_errno(fs::create_dir(u.m("d/e/dir")), libc::EEXIST);
    assert_errno(fs::write(u.m("d/e/lower/x"), "x"), libc::ENOTDIR);
    assert_errno(
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(u.m("d/e/lower")),
        libc::EEXIST,
    );
}

#[test]
fn created_files_belong_to_the_caller() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro"]);
    fs::create_dir(u.b("ro/pub")).unwrap();
    fs::set_permissions(u.b("ro/pub"), fs::Permissions::from_mode(0o777)).unwrap();
    fs::create_dir(u.b("ro/sg")).unwrap();
    sh(&format!(
        "chown 0:4321 {0} && chmod 2777 {0}",
        u.b("ro/sg").display()
    ));
    u.mount("rw=rw:ro=ro", &["allow_other"]);
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo hi > {0}/pub/f && mkdir {0}/pub/d && ln -s x {0}/pub/l && echo g > {0}/sg/g && mkdir {0}/sg/sd",
            u.mnt.display()
        ))
        .uid(1000)
        .current_dir("/")
        .gid(1000)
        .status()
        .unwrap();
    assert!(status.success());
    for n in ["pub/f", "pub/d", "pub/l"] {
        let m = fs::symlink_metadata(u.b(&format!("rw/{n}"))).unwrap();
        assert_eq!((m.uid(), m.gid()), (1000, 1000), "{n}");
        let m = fs::symlink_metadata(u.m(n)).unwrap();
        assert_eq!((m.uid(), m.gid()), (1000, 1000), "{n} through the mount");
    }
    let g = fs::metadata(u.m("sg/g")).unwrap();
    assert_eq!((g.uid(), g.gid()), (1000, 4321), "setgid parent's group");
    let sd = fs::metadata(u.m("sg/sd")).unwrap();
    assert_eq!(sd.gid(), 4321);
    assert!(
        sd.mode() & libc::S_ISGID != 0,
        "setgid not inherited by a new directory"
    );
}

#[test]
fn creating_over_a_whiteout_replaces_it() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro"]);
    write(u.b("ro/f"), "old");
    write(u.b("ro/d/old"), "x");
    u.mount("rw=rw:ro=ro", &[]);
    fs::remove_file(u.m("f")).unwrap();
    fs::remove_file(u.m("d/old")).unwrap();
    fs::remove_dir(u.m("d")).unwrap();
    assert!(exists(u.b("rw/.wh.f")) && exists(u.b("rw/.wh.d")));
    write(u.m("f"), "new");
    assert_eq!(read(u.m("f")), "new");
    assert!(!exists(u.b("rw/.wh.f")));
    fs::create_dir(u.m("d")).unwrap();
    assert!(
        ls(u.m("d")).is_empty(),
        "lower contents showed through a new directory"
    );
    assert!(
        exists(u.b("rw/d/.wh..wh..opq")),
        "new directory over a whiteout is not opaque"
    );
    assert!(!exists(u.b("rw/.wh.d")));
    u.remount("rw=rw:ro=ro", &[]);
    assert!(ls(u.m("d")).is_empty());
    assert_eq!(read(u.m("f")), "new");
}

#[test]
fn whiteout_names_are_reserved() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro"]);
    write(u.b("ro/f"), "x");
    u.mount("rw=rw:ro=ro", &[]);
    assert_errno(fs::write(u.m(".wh.f"), "x"), libc::EPERM);
    assert_errno(fs::create_dir(u.m(".wh.d")), libc::EPERM);
    assert_errno(std::os::unix::fs::symlink("x", u.m(".wh.l")), libc::EPERM);
    assert_errno(fs::hard_link(u.m("f"), u.m(".wh.h")), libc::EPERM);
    assert_errno(fs::rename(u.m("f"), u.m(".wh.r")), libc::EPERM);
    assert_errno(fs::metadata(u.m(".wh.f")), libc::ENOENT);
    assert_eq!(ls_branch(u.b("rw")), Vec::<String>::new());
}

#[test]
fn hard_links_through_the_union() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro"]);
    write(u.b("ro/f"), "x");
    u.mount("rw=rw:ro=ro", &[]);
    fs::hard_link(u.m("f"), u.m("g")).unwrap();
    assert_eq!(ino(u.m("f")), ino(u.m("g")));
    assert_eq!(fs::metadata(u.m("g")).unwrap().nlink(), 2);
    assert_eq!(ino(u.b("rw/f")), ino(u.b("rw/g")));
    fs::write(u.m("g"), "through g").unwrap();
    assert_eq!(read(u.m("f")), "through g");
    assert_errno(fs::hard_link(u.mnt.clone(), u.m("dirlink")), libc::EPERM);
}
