//! Open files: data paths, O_APPEND, fallocate, SEEK_DATA/SEEK_HOLE, mmap,
//! fsync, concurrent copy-up, read-only mounts, direct branch changes.

mod common;
use common::*;
use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::time::Duration;

#[test]
fn write_read_append_truncate() {
    need_fuse!();
    for pt in ["on", "off"] {
        let mut u = Union::new(&["rw", "ro"]);
        write(u.b("ro/lower"), "0123456789");
        u.mount("rw=rw:ro=ro", &[&format!("passthrough={pt}")]);
        let big: Vec<u8> = (0..3 << 20).map(|i| (i * 7 % 256) as u8).collect();
        fs::write(u.m("big"), &big).unwrap();
        assert_eq!(fs::read(u.m("big")).unwrap(), big, "passthrough={pt}");
        assert_eq!(fs::read(u.b("rw/big")).unwrap(), big);
        let mut f = OpenOptions::new().append(true).open(u.m("lower")).unwrap();
        f.write_all(b"ab").unwrap();
        f.write_all(b"cd").unwrap();
        drop(f);
        assert_eq!(read(u.m("lower")), "0123456789abcd");
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(u.m("lower"))
            .unwrap();
        f.write_at(b"XY", 2).unwrap();
        let mut buf = [0u8; 4];
        f.read_at(&mut buf, 1).unwrap();
        assert_eq!(&buf, b"1XY4");
        f.set_len(3).unwrap();
        f.sync_all().unwrap();
        drop(f);
        assert_eq!(read(u.m("lower")), "01X");
        let f = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(u.m("lower"))
            .unwrap();
        drop(f);
        assert_eq!(read(u.b("rw/lower")), "");
        assert_eq!(read(u.b("ro/lower")), "0123456789");
    }
}

#[test]
fn fallocate_and_seek_data_hole() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro"]);
    u.mount("rw=rw:ro=ro", &["passthrough=off"]);
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(u.m("s"))
        .unwrap();
    f.seek(SeekFrom::Start(1 << 20)).unwrap();
    f.write_all(b"data").unwrap();
    let fd = f.as_raw_fd();
    let data = unsafe { libc::lseek(fd, 0, libc::SEEK_DATA) };
    assert_eq!(data, 1 << 20);
    let hole = unsafe { libc::lseek(fd, 0, libc::SEEK_HOLE) };
    assert_eq!(hole, 0);
    assert_eq!(
        unsafe { libc::lseek(fd, (1 << 20) + 10, libc::SEEK_DATA) },
        -1
    );
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::ENXIO)
    );
    assert_eq!(unsafe { libc::fallocate(fd, 0, 0, 8 << 20) }, 0);
    assert_eq!(f.metadata().unwrap().len(), 8 << 20);
    assert_eq!(
        unsafe {
            libc::fallocate(
                fd,
                libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE,
                0,
                4096,
            )
        },
        0
    );
    let mut buf = [1u8; 16];
    f.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(buf, [0u8; 16]);
}

#[test]
fn mmap_reads_and_writes_through_the_union() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro"]);
    fs::write(u.b("ro/m"), vec![b'a'; 8192]).unwrap();
    u.mount("rw=rw:ro=ro", &[]);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(u.m("m"))
        .unwrap();
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            8192,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        let s = std::slice::from_raw_parts_mut(p as *mut u8, 8192);
        assert_eq!(s[100], b'a');
        s[0] = b'Z';
        assert_eq!(libc::msync(p, 8192, libc::MS_SYNC), 0);
        libc::munmap(p, 8192);
    }
    drop(f);
    assert_eq!(fs::read(u.b("rw/m")).unwrap()[0], b'Z');
    assert_eq!(fs::read(u.b("ro/m")).unwrap()[0], b'a');
}

#[test]
fn a_write_through_a_shared_mapping_updates_mtime_and_ctime() {
    need_fuse!();
    for pt in ["passthrough=on", "passthrough=off"] {
        let mut u = Union::new(&["rw", "ro"]);
        u.mount("rw=rw:ro=ro", &[pt]);
        let f = u.m("f");
        let mut w = fs::File::create(&f).unwrap();
        w.write_all(&[b'a'; 4096]).unwrap();
        w.sync_all().unwrap();
        drop(w);
        // The kernel's attributes cached, and asked for as stat(1) asks (a
        // metadata() call asks for the birth time too, which the kernel
        // never caches): nanosecond times tell the change.
        let times = || sh(&format!("stat -c '%.9Y %.9Z' '{}'", f.display()));
        let before = times();
        // As xfstests' generic/080 does it: map, read, write, exit.
        sh(&format!(
            "xfs_io -c 'mmap 0 4k' -c 'mread 0 4k' -c 'mwrite -S 0x5a 0 4k' '{}' > /dev/null",
            f.display()
        ));
        let after = times();
        let (b, a): (Vec<f64>, Vec<f64>) = (
            before
                .split_whitespace()
                .map(|t| t.parse().unwrap())
                .collect(),
            after
                .split_whitespace()
                .map(|t| t.parse().unwrap())
                .collect(),
        );
        assert!(a[0] > b[0], "{pt}: mtime kept ({before} -> {after})");
        assert!(a[1] > b[1], "{pt}: ctime kept ({before} -> {after})");
        assert_eq!(fs::read(&f).unwrap()[0], b'Z', "{pt}");
    }
}

#[test]
fn o_direct_opens() {
    need_fuse!();
    let mut u = Union::new(&["rw"]);
    u.mount("rw", &[]);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_DIRECT)
        .open(u.m("d"))
        .unwrap();
    // With passthrough the branch filesystem does the direct I/O, with its
    // alignment rules (as under overlayfs): write from an aligned buffer.
    #[repr(align(4096))]
    struct Page([u8; 4096]);
    let page = Page([5u8; 4096]);
    f.write_all(&page.0).unwrap();
    drop(f);
    assert_eq!(fs::read(u.m("d")).unwrap(), vec![5u8; 4096]);
}

/// linkat(fd, "", dir, name, AT_EMPTY_PATH): how a file with no name gets one.
fn flink(f: &fs::File, to: &std::path::Path) -> std::io::Result<()> {
    let to = cstr(to);
    let rc = unsafe {
        libc::linkat(
            f.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[test]
fn o_tmpfile_files_have_no_name_until_linked() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro"]);
    write(u.b("ro/lower/keep"), "k");
    u.mount("rw=rw:ro=ro", &[]);
    // In a directory of the writable branch, and in one only a lower
    // branch has: that one is copied up to hold the file.
    for dir in ["", "lower"] {
        let d = u.m(dir);
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_TMPFILE)
            .mode(0o640)
            .open(&d)
            .unwrap_or_else(|e| panic!("O_TMPFILE in /{dir}: {e}"));
        f.write_all(b"no name yet").unwrap();
        let st = f.metadata().unwrap();
        assert_eq!(st.nlink(), 0, "/{dir}");
        assert_eq!(st.mode() & 0o7777, 0o640, "/{dir}");
        let before = ls(&d);
        assert!(!before.iter().any(|n| n == "named"), "/{dir}: {before:?}");
        flink(&f, &d.join("named")).unwrap();
        assert_eq!(read(d.join("named")), "no name yet", "/{dir}");
        let named = fs::metadata(d.join("named")).unwrap();
        assert_eq!(named.ino(), f.metadata().unwrap().ino(), "/{dir}");
        assert_eq!(f.metadata().unwrap().nlink(), 1, "/{dir}");
        // Written through the open fd after the link: one file.
        f.write_all(b"!").unwrap();
        drop(f);
        assert_eq!(read(d.join("named")), "no name yet!");
        assert_eq!(read(u.b("rw").join(dir).join("named")), "no name yet!");
        // A second name for it: the name exists now.
        assert_errno(
            flink(&fs::File::open(d.join("named")).unwrap(), &d.join("named")),
            libc::EEXIST,
        );
    }
    assert_eq!(read(u.b("ro/lower/keep")), "k");
    // O_EXCL: never to be linked.
    let f = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_TMPFILE | libc::O_EXCL)
        .open(&u.mnt)
        .unwrap();
    assert_errno(flink(&f, &u.m("excl")), libc::ENOENT);
    assert!(!exists(u.m("excl")));
    // A read-only union has nowhere to put one.
    drop(f);
    u.remount("rw=ro", &[]);
    let r = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .open(&u.mnt);
    assert_errno(r, libc::EROFS);
}

#[test]
fn times_before_1970_keep_their_fraction() {
    need_fuse!();
    use std::os::unix::fs::MetadataExt;
    let mut u = Union::new(&["rw", "ro"]);
    write(u.b("ro/old"), "x");
    u.mount("rw=rw:ro=ro", &[]);
    // 1969-12-31 23:59:59.25 is -1 s + 0.25 s (a timespec's nanoseconds
    // are never negative): not 23:59:58.75.
    sh(&format!(
        "touch -d '1969-12-31 23:59:59.25 UTC' '{}'",
        u.m("old").display()
    ));
    for st in [
        fs::metadata(u.b("rw/old")).unwrap(),
        fs::metadata(u.m("old")).unwrap(),
    ] {
        assert_eq!((st.mtime(), st.mtime_nsec()), (-1, 250_000_000));
        assert_eq!((st.atime(), st.atime_nsec()), (-1, 250_000_000));
    }
}

#[test]
fn concurrent_writers_copy_up_once() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro"]);
    fs::write(u.b("ro/shared"), vec![b'.'; 1 << 20]).unwrap();
    u.mount("rw=rw:ro=ro", &[]);
    let threads: Vec<_> = (0..8u64)
        .map(|i| {
            let p = u.m("shared");
            std::thread::spawn(move || {
                let f = OpenOptions::new().write(true).open(p).unwrap();
                f.write_at(&[b'0' + i as u8], i * 1000).unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let data = fs::read(u.m("shared")).unwrap();
    assert_eq!(data.len(), 1 << 20);
    for i in 0..8u64 {
        assert_eq!(data[(i * 1000) as usize], b'0' + i as u8, "write {i} lost");
    }
    assert!(ls(u.b("rw/.wh..wh.work")).is_empty());
}

#[test]
fn read_only_mount() {
    need_fuse!();
    let mut u = Union::new(&["rw"]);
    write(u.b("rw/f"), "x");
    u.mount("rw", &["ro"]);
    assert_errno(fs::write(u.m("f"), "y"), libc::EROFS);
    assert_errno(fs::write(u.m("g"), "y"), libc::EROFS);
    assert_eq!(read(u.m("f")), "x");
}

#[test]
fn direct_branch_changes_show_after_the_timeout() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro"]);
    write(u.b("ro/f"), "old");
    u.mount("rw=rw:ro=ro", &["entry_timeout=0.2,attr_timeout=0.2"]);
    assert_eq!(read(u.m("f")), "old");
    write(u.b("rw/f"), "new upper");
    write(u.b("ro/g"), "added");
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(read(u.m("f")), "new upper");
    assert_eq!(read(u.m("g")), "added");
    fs::remove_file(u.b("ro/g")).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    assert_errno(fs::metadata(u.m("g")), libc::ENOENT);
}

#[test]
fn xattrs_through_the_union() {
    need_fuse!();
    let mut u = Union::new(&["rw"]);
    u.mount("rw", &[]);
    write(u.m("f"), "x");
    let p = cstr(&u.m("f"));
    unsafe {
        assert_eq!(
            libc::setxattr(p.as_ptr(), c"user.a".as_ptr(), b"1".as_ptr().cast(), 1, 0),
            0
        );
        assert_eq!(
            libc::setxattr(p.as_ptr(), c"user.b".as_ptr(), b"22".as_ptr().cast(), 2, 0),
            0
        );
        assert_eq!(
            libc::setxattr(
                p.as_ptr(),
                c"user.a".as_ptr(),
                b"1".as_ptr().cast(),
                1,
                libc::XATTR_CREATE
            ),
            -1
        );
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EEXIST)
        );
        let mut buf = [0u8; 64];
        let n = libc::listxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len());
        assert_eq!(&buf[..n as usize], b"user.a\0user.b\0");
        assert_eq!(
            libc::getxattr(p.as_ptr(), c"user.b".as_ptr(), std::ptr::null_mut(), 0),
            2
        );
        let mut small = [0u8; 1];
        assert_eq!(
            libc::getxattr(p.as_ptr(), c"user.b".as_ptr(), small.as_mut_ptr().cast(), 1),
            -1
        );
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::ERANGE)
        );
        assert_eq!(
            libc::getxattr(
                p.as_ptr(),
                c"user.none".as_ptr(),
                small.as_mut_ptr().cast(),
                1
            ),
            -1
        );
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::ENODATA)
        );
    }
    let mut s = String::new();
    fs::File::open(u.m("f"))
        .unwrap()
        .read_to_string(&mut s)
        .unwrap();
    assert_eq!(s, "x");
}

#[test]
fn default_permissions_are_checked_by_the_kernel() {
    need_fuse!();
    use std::os::unix::process::CommandExt;
    let mut u = Union::new(&["rw", "ro"]);
    write(u.b("ro/rootfile"), "x");
    u.mount("rw=rw:ro=ro", &["allow_other"]);
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo y >> {0}/rootfile; echo z > {0}/new",
            u.mnt.display()
        ))
        .uid(1000)
        .current_dir("/")
        .gid(1000)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("Permission denied").count(), 2, "{err}");
    assert!(!exists(u.b("rw/rootfile")), "a denied write copied up");
    assert!(!exists(u.b("rw/new")));
}

#[test]
fn flock_and_posix_locks_work_through_the_mount() {
    need_fuse!();
    let mut u = Union::new(&["rw"]);
    u.mount("rw", &[]);
    write(u.m("lock"), "");
    let a = fs::File::open(u.m("lock")).unwrap();
    let b = fs::File::open(u.m("lock")).unwrap();
    assert_eq!(
        unsafe { libc::flock(a.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );
    assert_eq!(
        unsafe { libc::flock(b.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        -1
    );
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EWOULDBLOCK)
    );
    // a POSIX lock and the flock held here are seen by another process
    let w = OpenOptions::new()
        .read(true)
        .write(true)
        .open(u.m("lock"))
        .unwrap();
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    assert_eq!(unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETLK, &fl) }, 0);
    let out = std::process::Command::new("flock")
        .args(["-n", "-x"])
        .arg(u.m("lock"))
        .arg("true")
        .status()
        .unwrap();
    assert!(
        !out.success(),
        "flock from another process got the lock held by this one"
    );
}

#[test]
fn lower_page_cache_never_serves_stale_data() {
    need_fuse!();
    for pt in ["on", "off"] {
        let mut u = Union::new(&["rw", "ro"]);
        write(u.b("ro/k"), "old-data");
        write(u.b("ro/h"), "old-data");
        u.mount(
            "rw=rw:ro=ro",
            &[&format!("passthrough={pt},attr_timeout=3600")],
        );
        // read through a closed handle: its pages may stay cached (keep_cache)
        assert_eq!(read(u.m("k")), "old-data");
        let w = OpenOptions::new().write(true).open(u.m("k")).unwrap();
        w.write_all_at(b"NEW", 0).unwrap();
        drop(w);
        assert_eq!(read(u.m("k")), "NEW-data", "passthrough={pt}");
        // a handle open across the copy-up and the write sees the write
        let r = fs::File::open(u.m("h")).unwrap();
        let mut buf = [0u8; 8];
        r.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"old-data");
        let w = OpenOptions::new().write(true).open(u.m("h")).unwrap();
        w.write_all_at(b"XYZ", 0).unwrap();
        r.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"XYZ-data", "passthrough={pt}");
        drop(w);
        assert_eq!(read(u.b("ro/h")), "old-data");
    }
}

#[test]
fn direct_data_changes_in_a_lower_branch_show_after_the_timeout() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro"]);
    write(u.b("ro/f"), "first");
    u.mount("rw=rw:ro=ro", &["entry_timeout=0.2,attr_timeout=0.2"]);
    assert_eq!(read(u.m("f")), "first");
    std::thread::sleep(Duration::from_millis(20));
    // same size, new mtime: the cached pages must go
    write(u.b("ro/f"), "again");
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(read(u.m("f")), "again");
}

#[test]
fn chattr_and_lsattr_work_through_the_union() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro"]);
    write(u.b("ro/f"), "lower");
    u.mount("rw=rw:ro=ro", &[]);
    let f = u.m("f");
    let lsattr = |p: &std::path::Path| sh(&format!("lsattr -d '{}' | cut -d' ' -f1", p.display()));
    assert!(!lsattr(&f).contains('i'));
    // A change copies the file up first; the lower one keeps its flags.
    sh(&format!("chattr +i '{}'", f.display()));
    // Whatever happens below, the flag goes before the branches are removed.
    struct Mutable(std::path::PathBuf);
    impl Drop for Mutable {
        fn drop(&mut self) {
            let _ = std::process::Command::new("chattr")
                .arg("-i")
                .arg(&self.0)
                .status();
        }
    }
    let _m = Mutable(u.b("rw/f"));
    assert!(lsattr(&f).contains('i'));
    assert!(lsattr(&u.b("rw/f")).contains('i'));
    assert!(!lsattr(&u.b("ro/f")).contains('i'));
    assert_errno(fs::OpenOptions::new().append(true).open(&f), libc::EPERM);
    assert_errno(fs::remove_file(&f), libc::EPERM);
    // In an immutable directory no delete goes, a non-empty directory's
    // included: EPERM before ENOTEMPTY, as the kernel checks.
    write(u.m("d/sub/x"), "x");
    sh(&format!("chattr +i '{}'", u.m("d").display()));
    let _d = Mutable(u.b("rw/d"));
    assert_errno(fs::remove_dir(u.m("d/sub")), libc::EPERM);
    sh(&format!("chattr -i '{}'", u.m("d").display()));
    assert_errno(fs::remove_dir(u.m("d/sub")), libc::ENOTEMPTY);
    sh(&format!("chattr -i '{}'", f.display()));
    append(&f, "+").unwrap();
    assert_eq!(read(&f), "lower+");
    assert_eq!(read(u.b("ro/f")), "lower");
}
