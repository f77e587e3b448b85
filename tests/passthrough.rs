//! `-o passthrough=on|all|off`: which opens the kernel serves itself, what
//! readers opened before a copy-up see in each mode, and the fallback when
//! the kernel refuses a backing file.

mod common;
use common::*;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::process::{Command, Stdio};

fn read_at(f: &fs::File, n: usize) -> String {
    let mut buf = vec![0u8; n];
    let got = f.read_at(&mut buf, 0).unwrap();
    String::from_utf8_lossy(&buf[..got]).into_owned()
}

#[test]
fn all_keeps_old_readers_on_their_data_and_the_writer_succeeds() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro"]);
    write(u.b("ro/f"), "old-data");
    write(u.b("ro/g"), "lower g");
    u.mount("rw=rw:ro=ro", &["passthrough=all"]);
    let before = fs::metadata(u.m("f")).unwrap().ino();
    let r = fs::File::open(u.m("f")).unwrap();
    assert_eq!(read_at(&r, 64), "old-data");
    // The writer's open copies up although a kernel-served reader holds
    // the lower file (the name moves to a new node: ESTALE, the kernel
    // looks it up again).
    let w = OpenOptions::new().write(true).open(u.m("f")).unwrap();
    w.write_all_at(b"NEW", 0).unwrap();
    assert_eq!(read(u.m("f")), "NEW-data");
    // The reader keeps the data it had (overlayfs before Linux 4.19).
    assert_eq!(read_at(&r, 64), "old-data");
    // One object to the user: the same inode number before and after.
    assert_eq!(fs::metadata(u.m("f")).unwrap().ino(), before);
    assert_eq!(r.metadata().unwrap().ino(), before);
    drop(w);
    assert_eq!(read(u.b("rw/f")), "NEW-data");
    assert_eq!(read(u.b("ro/f")), "old-data");

    // A copy-up of metadata alone (chmod) while a reader holds the lower
    // file: later opens, read-only or not, still work.
    let r2 = fs::File::open(u.m("g")).unwrap();
    fs::set_permissions(u.m("g"), fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(read(u.m("g")), "lower g");
    let w = OpenOptions::new().append(true).open(u.m("g")).unwrap();
    w.write_all_at(b"!", 7).unwrap();
    drop(w);
    assert_eq!(read(u.m("g")), "lower g!");
    assert_eq!(read_at(&r2, 64), "lower g");
    assert_eq!(mode(u.b("rw/g")) & 0o777, 0o600);
}

#[test]
fn on_and_off_keep_the_promise_to_old_readers() {
    need_fuse!();
    for pt in ["on", "off"] {
        let mut u = Union::new(&["rw", "ro"]);
        write(u.b("ro/f"), "old-data");
        u.mount("rw=rw:ro=ro", &[&format!("passthrough={pt}")]);
        let r = fs::File::open(u.m("f")).unwrap();
        assert_eq!(read_at(&r, 64), "old-data");
        let w = OpenOptions::new().write(true).open(u.m("f")).unwrap();
        w.write_all_at(b"NEW", 0).unwrap();
        assert_eq!(read_at(&r, 64), "NEW-data", "passthrough={pt}");
    }
}

#[test]
fn a_bad_mode_is_refused_with_one_line() {
    need_fuse!();
    let mut u = Union::new(&["rw"]);
    let out = u.try_mount("rw", &["passthrough=some"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("option passthrough: 'some' is not on, all or off"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!is_mounted(&u.mnt));
}

/// A branch that is itself a FUSE mount is too deep to stack passthrough
/// on: every mode serves its reads, and the log says why, once.
#[test]
fn a_refused_backing_file_falls_back_with_one_log_line() {
    need_fuse!();
    let mut inner = Union::new(&["data"]);
    write(inner.b("data/f"), "inner f");
    write(inner.b("data/g"), "inner g");
    // Passthrough in the inner union too: its files are then too deep.
    inner.mount("data=rw", &["passthrough=on"]);
    let u = Union::new(&["rw"]);
    let log = u.b("rw").parent().unwrap().join("daemon.log");
    let spec = format!("{}=rw:{}=ro", u.b("rw").display(), inner.mnt.display());
    let mut child = Command::new(BIN)
        .args(["-f", "-o", "passthrough=all"])
        .arg(&spec)
        .arg(&u.mnt)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::from(fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    wait_for("the mount", || is_mounted(&u.mnt));
    assert_eq!(read(u.m("f")), "inner f");
    assert_eq!(read(u.m("g")), "inner g");
    assert_eq!(read(u.m("f")), "inner f");
    unmount(&u.mnt);
    assert!(child.wait().unwrap().success());
    let text = fs::read_to_string(&log).unwrap();
    let said: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("no passthrough"))
        .collect();
    assert_eq!(said.len(), 1, "{text}");
    assert!(said[0].contains("stacked filesystem"), "{text}");
}
