//! Access times under noatime, relatime (the default), strictatime and
//! nodiratime: reads, exec and listings through the union, lower and upper
//! files, served by the daemon and by passthrough.

mod common;
use common::*;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

const PAST: i64 = 1_000_000_000;

fn atime(p: &Path) -> (i64, i64) {
    let m = fs::symlink_metadata(p).unwrap();
    (m.atime(), m.atime_nsec())
}

/// A union of an upper file `g`, a lower file `f`, a lower program `prog`
/// and a lower directory `d`, all with an access time long past.
fn setup(opts: &[&str]) -> Union {
    let mut u = Union::new(&["rw", "ro"]);
    write(u.b("ro/f"), "lower");
    write(u.b("rw/g"), "upper");
    write(u.b("ro/d/x"), "x");
    fs::copy("/bin/true", u.b("ro/prog")).unwrap();
    for p in ["ro/f", "rw/g", "ro/d", "ro/prog"] {
        sh(&format!("touch -a -d @{PAST} '{}'", u.b(p).display()));
    }
    u.mount("rw=rw:ro=ro", opts);
    u
}

/// The clock the kernel stamps file times with.
fn coarse_now() -> (i64, i64) {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) };
    (ts.tv_sec, ts.tv_nsec)
}

fn read_all(u: &Union) {
    assert_eq!(read(u.m("f")), "lower");
    assert_eq!(read(u.m("g")), "upper");
    assert_eq!(ls(u.m("d")), ["x"]);
    sh(&format!("'{}'", u.m("prog").display()));
}

fn mount_shows(u: &Union, word: &str) -> bool {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    let line = mounts
        .lines()
        .find(|l| l.split(' ').nth(1) == u.mnt.to_str())
        .unwrap();
    line.split(' ')
        .nth(3)
        .unwrap()
        .split(',')
        .any(|o| o == word)
}

#[test]
fn noatime_leaves_every_access_time_alone_exec_included() {
    need_fuse!();
    for pt in ["passthrough=on", "passthrough=off"] {
        let u = setup(&["noatime", pt]);
        assert!(mount_shows(&u, "noatime"), "{pt}");
        read_all(&u);
        for p in ["f", "g", "d", "prog"] {
            assert_eq!(atime(&u.m(p)).0, PAST, "{pt}: {p} through the union");
        }
        for p in ["ro/f", "rw/g", "ro/d", "ro/prog"] {
            assert_eq!(atime(&u.b(p)).0, PAST, "{pt}: {p} in its branch");
        }
    }
}

#[test]
fn relatime_updates_once_after_a_change() {
    need_fuse!();
    for pt in ["passthrough=on", "passthrough=off"] {
        let u = setup(&[pt]);
        assert!(mount_shows(&u, "relatime"), "{pt}");
        read_all(&u);
        let first: Vec<_> = ["f", "g", "d", "prog"]
            .iter()
            .map(|p| atime(&u.m(p)))
            .collect();
        for (p, t) in ["f", "g", "d", "prog"].iter().zip(&first) {
            assert!(t.0 > PAST, "{pt}: {p} not updated by the first access");
        }
        read_all(&u);
        let again: Vec<_> = ["f", "g", "d", "prog"]
            .iter()
            .map(|p| atime(&u.m(p)))
            .collect();
        assert_eq!(
            first, again,
            "{pt}: a second access updated an access time newer than the change"
        );
    }
}

#[test]
fn strictatime_updates_on_every_read() {
    need_fuse!();
    for pt in ["passthrough=on", "passthrough=off"] {
        let u = setup(&["strictatime", pt]);
        // The kernel shows strictatime as the absence of the other words.
        assert!(
            !mount_shows(&u, "relatime") && !mount_shows(&u, "noatime"),
            "{pt}"
        );
        for p in ["f", "g"] {
            assert_eq!(read(u.m(p)).len(), 5);
            let first = atime(&u.m(p));
            assert!(first.0 > PAST, "{pt}: {p}");
            // Each read again moves it on, once the kernel's clock for
            // file times (the coarse one) has moved past the first.
            while coarse_now() <= first {
                std::thread::yield_now();
            }
            assert_eq!(read(u.m(p)).len(), 5);
            let second = atime(&u.m(p));
            assert!(second > first, "{pt}: {p} kept {first:?} on a second read");
        }
    }
}

#[test]
fn nodiratime_spares_directories_only() {
    need_fuse!();
    let u = setup(&["nodiratime"]);
    assert!(mount_shows(&u, "nodiratime"));
    read_all(&u);
    assert_eq!(atime(&u.m("d")).0, PAST);
    assert_eq!(atime(&u.b("ro/d")).0, PAST);
    assert!(atime(&u.m("f")).0 > PAST);
    assert!(atime(&u.m("g")).0 > PAST);
}
