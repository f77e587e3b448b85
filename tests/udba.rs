//! Changes made directly in the branches, not through the mount (aufs's
//! "udba"): with udba=notify (the default) the daemon watches the branch
//! directories and the kernel, which caches for a day, is told at once;
//! with udba=reval the kernel asks again after a second and the daemon
//! checks its caches; with udba=none nothing is followed.

mod common;
use common::*;
use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

/// `cond` holds within `limit` (changes reach the kernel by notification:
/// far sooner than any timeout of the mode).
#[track_caller]
fn within(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "{what}: not seen within {limit:?}");
        std::thread::yield_now();
    }
}

const SOON: Duration = Duration::from_secs(2);

/// `unionctl --stats` as key -> value.
fn stats(u: &Union) -> HashMap<String, String> {
    let out = unionctl(&u.mnt, &["--stats"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn stat_n(u: &Union, key: &str) -> u64 {
    stats(u)[key].parse().unwrap()
}

fn lists(u: &Union, dir: &str, name: &str) -> bool {
    ls(u.m(dir)).iter().any(|n| n == name)
}

/// Two read-only branches (so directories are indexed) under a writable one.
fn stack(opts: &str) -> Union {
    let mut u = Union::new(&["rw", "ro1", "ro2"]);
    for i in 0..8 {
        write(u.b(&format!("ro2/x/f{i}")), "lower");
    }
    fs::create_dir_all(u.b("ro1/x")).unwrap();
    fs::create_dir_all(u.b("rw/x")).unwrap();
    u.mount("rw=rw:ro1=ro:ro2=ro", &[opts]);
    // The kernel and the daemon know x and its names (and x is indexed).
    for i in 0..8 {
        assert_eq!(read(u.m(&format!("x/f{i}"))), "lower");
    }
    assert_errno(fs::metadata(u.m("x/rd")), libc::ENOENT);
    u
}

#[test]
fn notify_shows_direct_changes_in_every_branch_at_once() {
    need_fuse!();
    let u = stack("udba=notify");
    assert_eq!(stats(&u)["udba"], "notify");
    // A directory made in a read-only branch where the daemon has indexed
    // the names: the next requests see it, ls and stat alike.
    fs::create_dir(u.b("ro1/x/new")).unwrap();
    assert!(lists(&u, "x", "new"));
    assert!(u.m("x/new").is_dir(), "listed, but stat of x/new failed");
    // One whose miss the kernel cached (for a day): seen soon.
    fs::create_dir(u.b("ro1/x/rd")).unwrap();
    within(SOON, "a directory made in ro1", || u.m("x/rd").is_dir());
    fs::rename(u.m("x/rd"), u.m("x/moved")).unwrap();
    assert!(u.m("x/moved").is_dir());
    // Removed from the lowest branch.
    fs::remove_file(u.b("ro2/x/f1")).unwrap();
    within(SOON, "a file removed from ro2", || !u.m("x/f1").exists());
    // Renamed in a read-only branch.
    fs::rename(u.b("ro2/x/f2"), u.b("ro2/x/g2")).unwrap();
    within(SOON, "a rename in ro2", || {
        !u.m("x/f2").exists() && u.m("x/g2").exists()
    });
    assert_eq!(read(u.m("x/g2")), "lower");
    // A file made in the writable branch hides the lower one.
    write(u.b("rw/x/f3"), "upper");
    within(SOON, "a file made in rw over a lower one", || {
        read(u.m("x/f3")) == "upper"
    });
    // A whiteout made directly hides the name; removing it shows it again.
    write(u.b("rw/x/.wh.f4"), "");
    within(SOON, "a whiteout made in rw", || !u.m("x/f4").exists());
    fs::remove_file(u.b("rw/x/.wh.f4")).unwrap();
    within(SOON, "a whiteout removed", || u.m("x/f4").exists());
    // Data and attributes of a file the kernel has cached.
    assert_eq!(read(u.m("x/f5")), "lower");
    fs::write(u.b("ro2/x/f5"), "changed and longer").unwrap();
    within(SOON, "new contents of ro2/x/f5", || {
        read(u.m("x/f5")) == "changed and longer"
    });
    fs::set_permissions(u.b("ro2/x/f6"), fs::Permissions::from_mode(0o600)).unwrap();
    within(SOON, "a chmod in ro2", || {
        mode(u.m("x/f6")) & 0o777 == 0o600
    });
    // A directory's instances change: y, only in rw, gains a lower
    // instance whose names merge in.
    fs::create_dir(u.m("y")).unwrap();
    assert!(ls(u.m("y")).is_empty());
    write(u.b("ro2/y/below"), "merged");
    within(SOON, "a lower instance of y", || lists(&u, "y", "below"));
    assert_eq!(read(u.m("y/below")), "merged");
    // An opaque marker made directly hides the lower instances.
    write(u.b("rw/y/.wh..wh..opq"), "");
    // The listing is the daemon's; the name the kernel keeps is expired
    // by the notifier thread an instant later.
    within(SOON, "y made opaque", || {
        !lists(&u, "y", "below") && !u.m("y/below").exists()
    });
    assert_errno(fs::metadata(u.m("y/below")), libc::ENOENT);
    // A directory renamed in its branch.
    write(u.b("ro1/a/b/c"), "deep");
    within(SOON, "ro1/a/b/c", || u.m("a/b/c").exists());
    fs::rename(u.b("ro1/a"), u.b("ro1/z")).unwrap();
    within(SOON, "a directory renamed in ro1", || {
        !u.m("a").exists() && u.m("z/b/c").exists()
    });
    assert_eq!(read(u.m("z/b/c")), "deep");
    assert!(stat_n(&u, "kernel entries expired") > 0);
}

#[test]
fn reval_shows_direct_changes_within_its_timeout_and_never_disagrees() {
    need_fuse!();
    let u = stack("udba=reval");
    assert_eq!(stats(&u)["udba"], "reval");
    // Nothing cached by the kernel: the daemon's index is checked, not trusted.
    fs::create_dir(u.b("ro1/x/rd")).unwrap();
    assert!(lists(&u, "x", "rd"));
    assert!(u.m("x/rd").is_dir(), "listed, but stat of x/rd failed");
    write(u.b("ro2/x/new"), "n");
    assert_eq!(read(u.m("x/new")), "n");
    // What the kernel cached shows within its one-second timeout.
    fs::remove_file(u.b("ro2/x/f1")).unwrap();
    within(Duration::from_secs(3), "a removal, under reval", || {
        !u.m("x/f1").exists()
    });
}

#[test]
fn none_follows_nothing() {
    need_fuse!();
    let u = stack("udba=none");
    let s = stats(&u);
    assert_eq!(
        (s["udba"].as_str(), s["watched directories"].as_str()),
        ("none", "0")
    );
    // Nothing watches the branches (they must not change): no event is seen.
    fs::remove_file(u.b("ro2/x/f1")).unwrap();
    assert_eq!(stats(&u)["events"], "0");
    // Changes through the mount work as ever.
    write(u.m("x/f1new"), "through");
    assert_eq!(read(u.b("rw/x/f1new")), "through");
}

#[test]
fn the_daemons_own_changes_cause_no_invalidation() {
    need_fuse!();
    for pt in ["passthrough=on", "passthrough=off"] {
        let mut u = Union::new(&["rw", "ro"]);
        write(u.b("ro/d/low"), "lower");
        u.mount("rw=rw:ro=ro", &[pt]);
        fs::create_dir(u.m("d/sub")).unwrap();
        for i in 0..50 {
            write(u.m(&format!("d/sub/f{i}")), "x");
        }
        fs::OpenOptions::new()
            .append(true)
            .open(u.m("d/low"))
            .unwrap();
        fs::write(u.m("d/low"), "copied up and rewritten").unwrap();
        fs::set_permissions(u.m("d/sub/f0"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::rename(u.m("d/sub/f1"), u.m("d/sub/g1")).unwrap();
        fs::remove_file(u.m("d/sub/f2")).unwrap();
        fs::remove_file(u.m("d/low")).unwrap();
        sh(&format!("rm -rf {}", u.m("d/sub").display()));
        let s = stats(&u);
        assert!(stat_n(&u, "own events (ignored)") > 100, "{pt}: {s:?}");
        assert_eq!(s["kernel entries expired"], "0", "{pt}: {s:?}");
        assert_eq!(s["kernel inodes refreshed"], "0", "{pt}: {s:?}");
        assert_eq!(s["overflows"], "0", "{pt}: {s:?}");
    }
}

#[test]
fn expiry_never_detaches_a_mount_on_a_union_directory() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro", "extra", "vol"]);
    write(u.b("vol/data"), "volume");
    fs::create_dir_all(u.b("rw/v")).unwrap();
    u.mount("rw=rw:ro=ro", &[]);
    within(SOON, "the root's instances watched", || {
        stat_n(&u, "watched directories") >= 2
    });
    sh(&format!(
        "mount --bind {} {}",
        u.b("vol").display(),
        u.m("v").display()
    ));
    let mounted = || read(u.m("v/data")) == "volume";
    assert!(mounted());
    // A lower instance of v appears: the kernel's entry for v expires.
    let before = stat_n(&u, "kernel entries expired");
    fs::create_dir_all(u.b("ro/v")).unwrap();
    within(SOON, "the expiry of v", || {
        stat_n(&u, "kernel entries expired") > before
    });
    assert!(mounted(), "the bind mount on v was detached by an expiry");
    // A branch change expires everything.
    let out = unionctl(
        &u.mnt,
        &[
            "--add",
            "--after",
            &u.b("ro").display().to_string(),
            &u.b("extra").display().to_string(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        mounted(),
        "the bind mount on v was detached by unionctl --add"
    );
    unmount(&u.m("v"));
}

#[test]
fn an_event_storm_neither_stalls_requests_nor_loses_a_change() {
    need_fuse!();
    const N: usize = 100_000;
    let mut u = Union::new(&["rw", "ro"]);
    write(u.b("ro/probe"), "p");
    fs::create_dir_all(u.b("ro/storm")).unwrap();
    u.mount("rw=rw:ro=ro", &[]);
    assert!(ls(u.m("storm")).is_empty());
    let dir = u.b("ro/storm");
    let storm = std::thread::spawn(move || {
        for i in 0..N {
            fs::File::create(dir.join(format!("n{i}"))).unwrap();
        }
    });
    // Requests go on being answered while the events pour in.
    let mut slowest = Duration::ZERO;
    let mut served = 0;
    while !storm.is_finished() {
        let t = Instant::now();
        assert_eq!(read(u.m("probe")), "p");
        write(u.m(&format!("mine{}", served % 100)), "m");
        slowest = slowest.max(t.elapsed());
        served += 1;
    }
    storm.join().unwrap();
    assert!(served > 0);
    assert!(
        slowest < Duration::from_secs(2),
        "a request took {slowest:?} during the storm"
    );
    within(Duration::from_secs(20), "all names of the storm", || {
        ls(u.m("storm")).len() == N
    });
    assert!(u.m(&format!("storm/n{}", N - 1)).exists());
}

#[test]
fn an_event_queue_overflow_drops_every_cache() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro"]);
    for i in 0..4 {
        write(u.b(&format!("ro/d/f{i}")), "before");
    }
    u.mount("rw=rw:ro=ro", &[]);
    for i in 0..4 {
        assert_eq!(read(u.m(&format!("d/f{i}"))), "before");
    }
    // The daemon stopped: more events than the kernel queues for it.
    let pid = nix::unistd::Pid::from_raw(daemon_pid(&u.mnt));
    stop_process(pid.as_raw());
    let queue: usize = fs::read_to_string("/proc/sys/fs/fanotify/max_queued_events")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    for i in 0..queue + 100 {
        fs::File::create(u.b(&format!("ro/d/n{i}"))).unwrap();
    }
    fs::write(u.b("ro/d/f0"), "after, longer").unwrap();
    fs::remove_file(u.b("ro/d/f1")).unwrap();
    nix::sys::signal::kill(pid, nix::sys::signal::SIGCONT).unwrap();
    // Tens of milliseconds alone; the suite's other tests share two CPUs.
    within(Duration::from_secs(30), "the overflow", || {
        stat_n(&u, "overflows") > 0
    });
    within(SOON, "changes made during the overflow", || {
        read(u.m("d/f0")) == "after, longer" && !u.m("d/f1").exists()
    });
    assert_eq!(ls(u.m("d")).len(), 3 + queue + 100);
}

#[test]
fn a_fuse_branch_is_served_as_with_reval() {
    need_fuse!();
    let mut inner = Union::new(&["data"]);
    write(inner.b("data/f"), "inner");
    inner.mount("data=rw", &[]);
    let mut u = Union::new(&["rw"]);
    let spec = format!("{}=rw:{}=ro", u.b("rw").display(), inner.mnt.display());
    let out = u.try_mount_abs(&spec, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = stats(&u);
    assert_eq!(s["udba"], "notify");
    assert_eq!(
        s.get("not watched (served as with udba=reval)")
            .map(String::as_str),
        Some(inner.mnt.to_str().unwrap()),
        "{s:?}"
    );
    assert_eq!(read(u.m("f")), "inner");
    // Changed behind the outer union: seen within the reval timeout.
    write(inner.m("f"), "changed in the inner union");
    within(
        Duration::from_secs(3),
        "a change in the FUSE branch",
        || read(u.m("f")) == "changed in the inner union",
    );
}

/// Read directory `fd` with getdents64 into a buffer of `size` bytes, at
/// most `calls` times: the names read.
fn getdents(fd: &fs::File, size: usize, calls: usize) -> Vec<String> {
    use std::os::fd::AsRawFd;
    let mut names = Vec::new();
    let mut buf = vec![0u8; size];
    for _ in 0..calls {
        // SAFETY: buf is writable for its length; the kernel writes at most that.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                fd.as_raw_fd(),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        assert!(n >= 0, "getdents64: {}", std::io::Error::last_os_error());
        if n == 0 {
            break;
        }
        let mut at = 0;
        while at < n as usize {
            // struct linux_dirent64: ino u64, off i64, reclen u16, type u8, name
            let reclen = u16::from_ne_bytes([buf[at + 16], buf[at + 17]]) as usize;
            let name = &buf[at + 19..at + reclen];
            let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
            names.push(String::from_utf8_lossy(&name[..end]).into_owned());
            at += reclen;
        }
    }
    names
}

#[test]
fn a_listing_the_kernel_cached_survives_a_direct_change_half_way() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro"]);
    fs::create_dir_all(u.b("ro/d")).unwrap();
    for i in 0..600 {
        fs::File::create(u.b(&format!("ro/d/name-{i:04}"))).unwrap();
    }
    u.mount("rw=rw:ro=ro", &[]);
    // Listed until watched (with the root in both branches: 3): from then
    // on the kernel keeps the listing.
    within(SOON, "the directory watched", || {
        ls(u.m("d")).len() == 600 && stat_n(&u, "watched directories") >= 3
    });
    assert_eq!(ls(u.m("d")).len(), 600);
    // A reader half-way through the kernel's cached listing...
    let dir = fs::File::open(u.m("d")).unwrap();
    let mut seen = getdents(&dir, 2048, 2);
    assert!(seen.len() > 10 && seen.len() < 300, "{}", seen.len());
    // ...when a direct change drops that listing: the rest comes from the
    // daemon, every name that stayed exactly once.
    let before = stat_n(&u, "kernel inodes refreshed");
    fs::File::create(u.b("ro/d/direct")).unwrap();
    within(SOON, "the listing dropped", || {
        stat_n(&u, "kernel inodes refreshed") > before
    });
    seen.extend(getdents(&dir, 2048, 1000));
    seen.retain(|n| n != "." && n != ".." && n != "direct");
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), seen.len(), "names repeated");
    assert_eq!(sorted.len(), 600, "names missing");
}
