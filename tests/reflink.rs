//! passthrough=on over branches on one filesystem that shares extents (an
//! xfs image made by the test): a read-only open of a lower file is backed
//! by a reflink clone in the writable branch, served by the kernel, and a
//! copy-up gives that clone its name, so the reader sees later writes.

mod common;
use common::*;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

/// An xfs filesystem with reflink on a loop file, mounted for one test.
struct Xfs {
    dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Xfs {
    fn new() -> Xfs {
        assert!(
            Path::new("/usr/sbin/mkfs.xfs").exists() || Path::new("/sbin/mkfs.xfs").exists(),
            "\n\n*** mkfs.xfs is missing: the reflink tests need xfsprogs \
             (apt-get install xfsprogs) ***\n"
        );
        let tmp = tempfile::Builder::new()
            .prefix("unionfs-xfs")
            .tempdir()
            .unwrap();
        let img = tmp.path().join("img");
        let dir = tmp.path().join("fs");
        fs::create_dir(&dir).unwrap();
        fs::File::create(&img).unwrap().set_len(512 << 20).unwrap();
        sh(&format!("mkfs.xfs -q -m reflink=1 '{}'", img.display()));
        sh(&format!(
            "mount -o loop '{}' '{}'",
            img.display(),
            dir.display()
        ));
        Xfs { dir, _tmp: tmp }
    }
}

impl Drop for Xfs {
    fn drop(&mut self) {
        // The loop device goes with the mount (mount -o loop sets autoclear).
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
    }
}

/// A union of rw over ro, both on `xfs`, mounted with `opts`.
fn union_on(xfs: &Xfs, opts: &[&str]) -> (Union, PathBuf, PathBuf) {
    let (rw, ro) = (xfs.dir.join("rw"), xfs.dir.join("ro"));
    fs::create_dir_all(&rw).unwrap();
    fs::create_dir_all(&ro).unwrap();
    let mut u = Union::new(&[]);
    let spec = format!("{}=rw:{}=ro", rw.display(), ro.display());
    let out = u.try_mount_abs(&spec, opts);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (u, rw, ro)
}

/// `head`, then zeros to 1 MiB and more: large enough to be cloned.
fn big_file(head: &str) -> Vec<u8> {
    let mut v = head.as_bytes().to_vec();
    v.resize((1 << 20) + head.len(), 0);
    v
}

/// The text before the padding of a file read at offset 0 of `f`.
fn head_of(f: &fs::File) -> String {
    let mut buf = vec![0u8; 64];
    let n = f.read_at(&mut buf, 0).unwrap();
    let end = buf[..n].iter().position(|&b| b == 0).unwrap_or(n);
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Read 4 KiB at `off` of `f` while the daemon is stopped: whether the
/// kernel served it without the daemon (a passthrough read).
fn read_while_stopped(u: &Union, f: &fs::File, off: u64) -> bool {
    let pid = nix::unistd::Pid::from_raw(daemon_pid(&u.mnt));
    let f = f.try_clone().unwrap();
    stop_process(pid.as_raw());
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 4096];
        let n = f.read_at(&mut buf, off).unwrap();
        tx.send(n).unwrap();
    });
    let served = rx.recv_timeout(Duration::from_secs(5)).is_ok();
    nix::sys::signal::kill(pid, nix::sys::signal::SIGCONT).unwrap();
    reader.join().unwrap();
    served
}

#[test]
fn a_reader_of_a_lower_file_is_served_by_the_kernel_and_sees_later_writes() {
    need_fuse!();
    let xfs = Xfs::new();
    let big = pattern(8 << 20);
    fs::create_dir_all(xfs.dir.join("ro")).unwrap();
    fs::write(xfs.dir.join("ro/f"), &big).unwrap();
    let (u, rw, ro) = union_on(&xfs, &["passthrough=on"]);
    let before = fs::metadata(u.m("f")).unwrap().ino();
    let r = fs::File::open(u.m("f")).unwrap();
    let mut head = vec![0u8; 4096];
    r.read_exact_at(&mut head, 0).unwrap();
    assert_eq!(head, big[..4096]);
    // Far from what was read (and read ahead): not in the page cache.
    assert!(
        read_while_stopped(&u, &r, 6 << 20),
        "a read of a lower file waited for the daemon: not passthrough"
    );
    // The clone has no name: nothing shows in the writable branch.
    assert_eq!(ls_branch(&rw), Vec::<String>::new());
    // The copy-up is the clone: the reader sees the write made after it.
    let w = OpenOptions::new().write(true).open(u.m("f")).unwrap();
    w.write_all_at(b"NEW", 0).unwrap();
    r.read_exact_at(&mut head[..3], 0).unwrap();
    assert_eq!(&head[..3], b"NEW");
    drop(w);
    let mut want = big.clone();
    want[..3].copy_from_slice(b"NEW");
    assert_eq!(fs::read(rw.join("f")).unwrap(), want);
    assert_eq!(fs::read(ro.join("f")).unwrap(), big);
    assert_eq!(fs::metadata(u.m("f")).unwrap().ino(), before);
    // Later readers read the copy, still through the kernel.
    let r2 = fs::File::open(u.m("f")).unwrap();
    assert!(read_while_stopped(&u, &r2, 7 << 20));
    assert_eq!(fs::read(u.m("f")).unwrap(), want);
}

#[test]
fn a_clone_follows_the_metadata_and_is_gone_with_its_last_reader() {
    need_fuse!();
    let xfs = Xfs::new();
    fs::create_dir_all(xfs.dir.join("ro/d")).unwrap();
    fs::write(xfs.dir.join("ro/d/g"), big_file("lower g")).unwrap();
    sh(&format!(
        "chown 42:43 '{0}' && chmod 640 '{0}' && setfattr -n user.k -v v '{0}'",
        xfs.dir.join("ro/d/g").display()
    ));
    let (u, rw, _ro) = union_on(&xfs, &["passthrough=on"]);
    // Opened and closed: the clone went with it, nothing stays.
    assert_eq!(head_of(&fs::File::open(u.m("d/g")).unwrap()), "lower g");
    assert_eq!(ls_branch(&rw), Vec::<String>::new());
    assert!(ls(rw.join(".wh..wh.work")).is_empty());
    // Held across a metadata copy-up (a chmod): the copy is the clone, with
    // the lower file's owner, xattrs and times, and the mode asked for.
    let r = fs::File::open(u.m("d/g")).unwrap();
    let mtime = fs::metadata(u.m("d/g")).unwrap().mtime();
    sh(&format!("chmod 604 '{}'", u.m("d/g").display()));
    let st = fs::metadata(rw.join("d/g")).unwrap();
    assert_eq!((st.uid(), st.gid(), st.mode() & 0o777), (42, 43, 0o604));
    assert_eq!(st.mtime(), mtime);
    assert!(sh(&format!(
        "getfattr -n user.k '{}'",
        rw.join("d/g").display()
    ))
    .contains("v"));
    assert_eq!(fs::read(rw.join("d/g")).unwrap(), big_file("lower g"));
    assert!(
        read_while_stopped(&u, &r, 1 << 19),
        "the clone is not read by the kernel"
    );
    fs::write(u.m("d/g"), "rewritten").unwrap();
    assert_eq!(head_of(&r), "rewritten");
    assert!(ls(rw.join(".wh..wh.work")).is_empty());
}

#[test]
fn a_direct_change_of_the_lower_file_reaches_its_readers() {
    need_fuse!();
    let xfs = Xfs::new();
    fs::create_dir_all(xfs.dir.join("ro")).unwrap();
    fs::write(xfs.dir.join("ro/f"), big_file("first version")).unwrap();
    fs::write(xfs.dir.join("ro/small"), "small file").unwrap();
    let (u, _rw, ro) = union_on(&xfs, &["passthrough=on"]);
    let r = fs::File::open(u.m("f")).unwrap();
    assert_eq!(head_of(&r), "first version");
    assert!(read_while_stopped(&u, &r, 1 << 19));
    // Written directly in the read-only branch (udba=notify sees it).
    fs::write(ro.join("f"), big_file("second, longer version")).unwrap();
    wait_for("the reader to see the direct change", || {
        head_of(&r) == "second, longer version"
    });
    fs::write(ro.join("f"), "third").unwrap();
    wait_for("the reader to see the file shrink", || {
        head_of(&r) == "third"
    });
    assert_eq!(r.metadata().unwrap().len(), 5);
    assert_eq!(read(u.m("f")), "third");
    // A small file is not worth a clone: read through the daemon.
    let s = fs::File::open(u.m("small")).unwrap();
    assert!(!read_while_stopped(&u, &s, 0));
    assert_eq!(head_of(&s), "small file");
}
