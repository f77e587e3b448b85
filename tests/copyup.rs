//! Copy-up: data with holes, metadata, xattrs, symlinks, parents, atomicity,
//! re-pointed read-only handles, EROFS, ENOSPC, a daemon killed mid-copy.

mod common;
use common::*;
use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, Instant};

fn set_xattr(p: &std::path::Path, k: &str, v: &[u8]) {
    let p = cstr(p);
    let k = std::ffi::CString::new(k).unwrap();
    let rc = unsafe { libc::lsetxattr(p.as_ptr(), k.as_ptr(), v.as_ptr().cast(), v.len(), 0) };
    assert_eq!(rc, 0, "setxattr: {}", std::io::Error::last_os_error());
}

fn get_xattr(p: &std::path::Path, k: &str) -> std::io::Result<Vec<u8>> {
    let p = cstr(p);
    let k = std::ffi::CString::new(k).unwrap();
    let mut buf = vec![0u8; 256];
    let n = unsafe { libc::lgetxattr(p.as_ptr(), k.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

#[test]
fn data_is_copied_with_holes_kept() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro"]);
    {
        let mut f = fs::File::create(u.b("ro/sparse")).unwrap();
        f.seek(SeekFrom::Start(1 << 20)).unwrap();
        f.write_all(&[7u8; 4096]).unwrap();
        f.set_len(8 << 20).unwrap();
    }
    u.mount("rw=rw:ro=ro", &[]);
    append(u.m("sparse"), "end").unwrap();
    let up = fs::metadata(u.b("rw/sparse")).unwrap();
    assert_eq!(up.len(), (8 << 20) + 3);
    assert!(
        up.blocks() * 512 < 256 << 10,
        "holes were filled: {} blocks",
        up.blocks()
    );
    let data = fs::read(u.m("sparse")).unwrap();
    assert!(data[..1 << 20].iter().all(|&b| b == 0));
    assert!(data[1 << 20..(1 << 20) + 4096].iter().all(|&b| b == 7));
    assert_eq!(&data[data.len() - 3..], b"end");
    assert_eq!(
        fs::read(u.b("ro/sparse")).unwrap().len(),
        8 << 20,
        "lower file changed"
    );
}

#[test]
fn metadata_and_xattrs_are_preserved() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro"]);
    let f = u.b("ro/f");
    write(&f, "content");
    set_xattr(&f, "user.color", b"blue");
    sh(&format!(
        "chown 1234:5678 {0} && chmod 0640 {0} && touch -m -d 2001-02-03T04:05:06 {0}",
        f.display()
    ));
    u.mount("rw=rw:ro=ro", &[]);
    // opening for write is enough to copy up
    drop(OpenOptions::new().write(true).open(u.m("f")).unwrap());
    let m = fs::metadata(u.b("rw/f")).unwrap();
    assert_eq!((m.uid(), m.gid()), (1234, 5678));
    assert_eq!(m.mode() & 0o7777, 0o640);
    assert_eq!(m.mtime(), fs::metadata(&f).unwrap().mtime());
    assert_eq!(get_xattr(&u.b("rw/f"), "user.color").unwrap(), b"blue");
    assert_eq!(read(u.b("rw/f")), "content");
    assert_eq!(get_xattr(&u.m("f"), "user.color").unwrap(), b"blue");
}

#[test]
fn each_metadata_change_copies_up() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro"]);
    for n in ["chmod", "chown", "touch", "trunc", "setx", "link"] {
        write(u.b(&format!("ro/{n}")), "data");
    }
    write(u.b("ro/rmx"), "data");
    set_xattr(&u.b("ro/rmx"), "user.k", b"v");
    write(u.b("ro/rmmissing"), "data");
    u.mount("rw=rw:ro=ro", &[]);
    fs::set_permissions(u.m("chmod"), fs::Permissions::from_mode(0o700)).unwrap();
    sh(&format!("chown 42:43 {}", u.m("chown").display()));
    sh(&format!("touch -d 1999-12-31 {}", u.m("touch").display()));
    OpenOptions::new()
        .write(true)
        .open(u.m("trunc"))
        .unwrap()
        .set_len(2)
        .unwrap();
    set_xattr(&u.m("setx"), "user.a", b"1");
    fs::hard_link(u.m("link"), u.m("link2")).unwrap();
    let rc = unsafe { libc::lremovexattr(cstr(&u.m("rmx")).as_ptr(), c"user.k".as_ptr()) };
    assert_eq!(rc, 0);
    assert_errno(
        if unsafe { libc::lremovexattr(cstr(&u.m("rmmissing")).as_ptr(), c"user.k".as_ptr()) } == 0
        {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        },
        libc::ENODATA,
    );
    assert_eq!(mode(u.b("rw/chmod")), 0o700);
    assert_eq!(fs::metadata(u.b("rw/chown")).unwrap().uid(), 42);
    assert!(fs::metadata(u.b("rw/touch")).unwrap().mtime() < 1_000_000_000);
    assert_eq!(read(u.b("rw/trunc")), "da");
    assert_eq!(get_xattr(&u.b("rw/setx"), "user.a").unwrap(), b"1");
    assert_eq!(ino(u.b("rw/link")), ino(u.b("rw/link2")));
    assert_errno(get_xattr(&u.b("rw/rmx"), "user.k"), libc::ENODATA);
    assert!(
        !exists(u.b("rw/rmmissing")),
        "a failed removexattr copied up"
    );
    // the lower branch is untouched
    assert_eq!(mode(u.b("ro/chmod")), 0o644);
    assert_eq!(read(u.b("ro/trunc")), "data");
}

#[test]
fn symlinks_and_parents_are_copied() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro"]);
    write(u.b("ro/a/b/c/f"), "deep");
    sh(&format!(
        "chmod 0750 {0}/a && chown 7:8 {0}/a/b && chmod 0711 {0}/a/b/c",
        u.b("ro").display()
    ));
    std::os::unix::fs::symlink("../somewhere/else", u.b("ro/link")).unwrap();
    u.mount("rw=rw:ro=ro", &[]);
    append(u.m("a/b/c/f"), "+").unwrap();
    assert_eq!(read(u.b("rw/a/b/c/f")), "deep+");
    assert_eq!(mode(u.b("rw/a")), 0o750);
    assert_eq!(fs::metadata(u.b("rw/a/b")).unwrap().uid(), 7);
    assert_eq!(mode(u.b("rw/a/b/c")), 0o711);
    sh(&format!("chown -h 9:9 {}", u.m("link").display()));
    let l = fs::symlink_metadata(u.b("rw/link")).unwrap();
    assert!(l.file_type().is_symlink());
    assert_eq!(l.uid(), 9);
    assert_eq!(
        fs::read_link(u.b("rw/link")).unwrap().to_str(),
        Some("../somewhere/else")
    );
    assert_eq!(
        fs::read_link(u.m("link")).unwrap().to_str(),
        Some("../somewhere/else")
    );
}

#[test]
fn read_only_handle_sees_writes_made_after_copy_up() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro"]);
    write(u.b("ro/f"), "old contents");
    // The promise of the default mode (passthrough=all gives it up).
    u.mount("rw=rw:ro=ro", &["passthrough=on"]);
    let mut ro = fs::File::open(u.m("f")).unwrap();
    let mut s = String::new();
    ro.read_to_string(&mut s).unwrap();
    assert_eq!(s, "old contents");
    let mut w = OpenOptions::new().write(true).open(u.m("f")).unwrap();
    w.write_all(b"NEW").unwrap();
    w.sync_all().unwrap();
    let mut s = String::new();
    ro.seek(SeekFrom::Start(0)).unwrap();
    ro.read_to_string(&mut s).unwrap();
    assert_eq!(s, "NEW contents");
    assert_eq!(read(u.b("ro/f")), "old contents");
}

#[test]
fn no_writable_branch_above_means_erofs() {
    need_fuse!();
    let mut u = Union::new(&["ro"]);
    write(u.b("ro/f"), "x");
    u.mount("ro=ro", &[]);
    assert_errno(append(u.m("f"), "y"), libc::EROFS);
    assert_errno(
        fs::set_permissions(u.m("f"), fs::Permissions::from_mode(0o600)),
        libc::EROFS,
    );
    assert_errno(fs::write(u.m("new"), "n"), libc::EROFS);
    assert_errno(fs::create_dir(u.m("nd")), libc::EROFS);
    assert_errno(fs::remove_file(u.m("f")), libc::EROFS);
    assert_eq!(ls(u.b("ro")), vec!["f"]);
}

#[test]
fn an_open_with_o_trunc_copies_up_no_data() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro"]);
    // Room for no copy of the lower file: only a copy-up without its data fits.
    let _tmpfs = Tmpfs::mount(u.b("rw"), "size=1m");
    let big: Vec<u8> = (0..4 << 20).map(|i| (i % 251) as u8).collect();
    fs::write(u.b("ro/big"), &big).unwrap();
    u.mount("rw=rw:ro=ro", &[]);
    let mut f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(u.m("big"))
        .unwrap();
    f.write_all(b"small").unwrap();
    drop(f);
    assert_eq!(read(u.m("big")), "small");
    assert_eq!(read(u.b("rw/big")), "small");
    assert_eq!(fs::read(u.b("ro/big")).unwrap(), big);
    u.unmount();
}

#[test]
fn enospc_during_copy_up_leaves_the_union_as_it_was() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro"]);
    let _tmpfs = Tmpfs::mount(u.b("rw"), "size=1m");
    let big: Vec<u8> = (0..4 << 20).map(|i| (i % 251) as u8).collect();
    fs::write(u.b("ro/big"), &big).unwrap();
    write(u.b("ro/d/small"), "s");
    u.mount("rw=rw:ro=ro", &[]);
    assert_errno(append(u.m("big"), "more"), libc::ENOSPC);
    assert_eq!(fs::read(u.m("big")).unwrap(), big);
    assert!(!exists(u.b("rw/big")));
    assert!(
        ls(u.b("rw/.wh..wh.work")).is_empty(),
        "temp copy left behind"
    );
    // the union still works: small copy-ups fit
    append(u.m("d/small"), "+").unwrap();
    assert_eq!(read(u.m("d/small")), "s+");
    u.unmount();
}

#[test]
fn killed_daemon_leaves_no_partial_copy_visible() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro"]);
    let size: u64 = 1 << 30;
    sh(&format!(
        "head -c {size} /dev/zero | tr '\\0' 'z' > {}",
        u.b("ro/big").display()
    ));
    u.mount("rw=rw:ro=ro", &[]);
    let pid = daemon_pid(&u.mnt);
    let target = u.m("big");
    let writer = std::thread::spawn(move || append(&target, "tail"));
    let work = u.b("rw/.wh..wh.work");
    let start = Instant::now();
    loop {
        if fs::read_dir(&work).map(|d| d.count() > 0).unwrap_or(false) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "copy-up never started"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(
        writer.join().unwrap().is_err(),
        "the write survived a killed daemon"
    );
    unmount(&u.mnt);
    assert!(
        !exists(u.b("rw/big")),
        "a partial copy is visible in the branch"
    );
    u.remount("rw=rw:ro=ro", &[]);
    assert_eq!(fs::metadata(u.m("big")).unwrap().len(), size);
    assert!(
        ls(u.b("rw/.wh..wh.work")).is_empty(),
        "leftovers not cleaned at mount"
    );
}

#[test]
fn copy_up_keeps_setuid_bits_and_file_capabilities() {
    need_fuse!();
    use std::os::unix::fs::PermissionsExt;
    let mut u = Union::new(&["rw", "ro"]);
    write(u.b("ro/ping"), "binary");
    sh(&format!("chown 1000:1000 '{}'", u.b("ro/ping").display()));
    fs::set_permissions(u.b("ro/ping"), fs::Permissions::from_mode(0o6755)).unwrap();
    // cap_net_raw+ep, as setcap writes it (VFS_CAP_REVISION_2).
    let cap = "0sAAAAAgAgAAAAAAAAAAAAAAAAAAA=";
    sh(&format!(
        "setfattr -n security.capability -v {cap} '{}'",
        u.b("ro/ping").display()
    ));
    u.mount("rw=rw:ro=ro", &[]);
    sh(&format!("touch -c '{}'", u.m("ping").display()));
    assert_eq!(mode(u.b("rw/ping")), 0o6755);
    let got = sh(&format!(
        "getfattr -e base64 -n security.capability '{}'",
        u.b("rw/ping").display()
    ));
    assert!(
        got.contains(&format!("security.capability={cap}")),
        "the capability was lost: {got}"
    );
}
