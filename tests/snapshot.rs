//! Snapshots and open files: a snapshot freezes its branch and loses no
//! write. Files open for writing make a snapshot EBUSY (naming them) unless
//! --force, which pins them to their branch until their last writer closes;
//! readers opened before a change keep reading what their branch holds.
//! Each case runs with FUSE passthrough on and off: with passthrough the
//! kernel writes to the backing file itself, so the daemon cannot re-point
//! an open file afterwards.

mod common;
use common::*;
use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, Write};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

const PASSTHROUGH: [&str; 2] = ["passthrough=on", "passthrough=off"];

fn append(p: &std::path::Path, text: &str) {
    let mut f = OpenOptions::new().append(true).open(p).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

fn list(u: &Union) -> Vec<String> {
    let out = unionctl(&u.mnt, &["--list"]);
    assert!(out.status.success());
    let tmp = u.tmp.path().display().to_string();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.replace(&tmp, ""))
        .collect()
}

/// `unionctl --snapshot` to branch `to` (with `--force`), which must succeed.
#[track_caller]
fn snapshot(u: &Union, to: &str, force: bool) {
    let to = u.b(to).display().to_string();
    let mut args = vec!["--snapshot", &to];
    if force {
        args.push("--force");
    }
    let out = unionctl(&u.mnt, &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// All of an open file, read from its start.
fn from_start(f: &mut fs::File) -> std::io::Result<String> {
    let mut s = String::new();
    f.rewind()?;
    f.read_to_string(&mut s).map(|_| s)
}

/// Whether the daemon of `u` has a file descriptor open on `path`.
fn daemon_holds(u: &Union, path: &std::path::Path) -> bool {
    let fds = format!("/proc/{}/fd", daemon_pid(&u.mnt));
    fs::read_dir(fds)
        .unwrap()
        .flatten()
        .any(|e| fs::read_link(e.path()).is_ok_and(|l| l == path))
}

/// One appender: opens `path` for appending, writes one numbered line,
/// closes, again and again. `started` counts opens begun, `done` lines
/// closed, so a snapshot taken between two readings holds between
/// `done` (read before) and `started` (read after) lines.
struct Appender {
    started: Arc<AtomicU32>,
    done: Arc<AtomicU32>,
    thread: std::thread::JoinHandle<()>,
}

impl Appender {
    fn start(path: std::path::PathBuf, stop: Arc<AtomicBool>) -> Appender {
        let started = Arc::new(AtomicU32::new(0));
        let done = Arc::new(AtomicU32::new(0));
        let (s, d) = (started.clone(), done.clone());
        let thread = std::thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                s.store(n + 1, Ordering::SeqCst);
                let mut f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .expect("open for appending");
                writeln!(f, "{n}").expect("append");
                drop(f);
                n += 1;
                d.store(n, Ordering::SeqCst);
            }
        });
        Appender {
            started,
            done,
            thread,
        }
    }
}

/// The numbered lines of `text`, checked to be 0, 1, 2, ... with none lost.
#[track_caller]
fn lines_in_order(text: &str, what: &str) -> u32 {
    let got: Vec<u32> = text.lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(got, (0..got.len() as u32).collect::<Vec<_>>(), "{what}");
    got.len() as u32
}

#[test]
fn appenders_through_a_loop_of_snapshots_lose_no_line() {
    need_fuse!();
    const SNAPSHOTS: usize = 8;
    for pt in PASSTHROUGH {
        let names: Vec<String> = (0..SNAPSHOTS).map(|i| format!("s{i}")).collect();
        let mut all = vec!["base"];
        all.extend(names.iter().map(String::as_str));
        let mut u = Union::new(&all);
        u.mount("base", &[pt]);
        let stop = Arc::new(AtomicBool::new(false));
        let apps: Vec<Appender> = (0..2)
            .map(|k| Appender::start(u.m(&format!("a{k}")), stop.clone()))
            .collect();
        // bounds[i][k]: what snapshot i may hold of a{k}.
        let mut bounds = Vec::new();
        for name in &names {
            // Each round, every appender has written more since the last
            // snapshot: its file is copied up into the new top every time.
            let last = bounds
                .last()
                .map_or([0, 0], |b: &[(u32, u32); 2]| [b[0].1, b[1].1]);
            for (k, a) in apps.iter().enumerate() {
                wait_for("appends", || a.done.load(Ordering::SeqCst) > last[k] + 3);
            }
            let before: Vec<u32> = apps.iter().map(|a| a.done.load(Ordering::SeqCst)).collect();
            snapshot_between_writes(&u, name);
            let after: Vec<u32> = apps
                .iter()
                .map(|a| a.started.load(Ordering::SeqCst))
                .collect();
            bounds.push([(before[0], after[0]), (before[1], after[1])]);
        }
        stop.store(true, Ordering::Relaxed);
        for (k, a) in apps.into_iter().enumerate() {
            a.thread.join().expect("an appender failed");
            let n = a.done.load(Ordering::SeqCst);
            let path = u.m(&format!("a{k}"));
            assert_eq!(lines_in_order(&read(&path), "the union"), n, "{pt}");
        }
        // Snapshot i froze what the branches below s{i} hold: for each file,
        // the topmost of them that has it. None of them changed after.
        for (i, b) in bounds.iter().enumerate() {
            let below: Vec<&str> = all[..=i].iter().rev().copied().collect();
            for (k, &(lo, hi)) in b.iter().enumerate() {
                let file = format!("a{k}");
                let holder = below
                    .iter()
                    .find(|br| exists(u.b(&format!("{br}/{file}"))))
                    .unwrap_or_else(|| panic!("snapshot {i} lacks {file}"));
                let held = lines_in_order(
                    &read(u.b(&format!("{holder}/{file}"))),
                    &format!("{file} in {holder}"),
                );
                assert!(
                    (lo..=hi).contains(&held),
                    "{pt}: snapshot {i} holds {held} lines of {file}, written before it: {lo}..={hi}"
                );
            }
        }
        let mut want = vec!["/s7 (rw)".to_string()];
        want.extend((0..SNAPSHOTS - 1).rev().map(|i| format!("/s{i} (ro)")));
        want.push("/base (ro)".into());
        assert_eq!(list(&u), want);
    }
}

#[test]
fn a_file_open_for_writing_makes_a_snapshot_busy_and_names_it() {
    need_fuse!();
    for pt in PASSTHROUGH {
        let mut u = Union::new(&["base", "s0"]);
        write(u.b("base/quiet"), "q");
        u.mount("base", &[pt]);
        fs::create_dir(u.m("busy")).unwrap();
        let w = fs::File::create(u.m("busy/log")).unwrap();
        let _reader = fs::File::open(u.m("quiet")).unwrap();
        let out = unionctl(&u.mnt, &["--snapshot", &u.b("s0").display().to_string()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{pt}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(
            err.contains("has files open for writing: /busy/log") && !err.contains("quiet"),
            "{err}"
        );
        assert_eq!(
            list(&u),
            ["/base (rw)"],
            "a refused snapshot changed the branches"
        );
        assert_eq!(
            ls(u.b("s0")),
            Vec::<String>::new(),
            "a refused snapshot wrote"
        );
        drop(w);
        // Readers alone do not hold a snapshot up.
        snapshot(&u, "s0", false);
        assert_eq!(list(&u), ["/s0 (rw)", "/base (ro)"]);
    }
}

#[test]
fn with_force_a_held_writer_keeps_its_file_on_the_frozen_branch() {
    need_fuse!();
    for pt in PASSTHROUGH {
        let mut u = Union::new(&["base", "s0"]);
        u.mount("base", &[pt]);
        let mut held = OpenOptions::new()
            .create(true)
            .append(true)
            .open(u.m("f"))
            .unwrap();
        held.write_all(b"A1 ").unwrap();
        snapshot(&u, "s0", true);
        assert_eq!(list(&u), ["/s0 (rw)", "/base (ro)"]);
        // A new open sees and writes the one copy the held writer writes.
        assert_eq!(read(u.m("f")), "A1 ", "{pt}");
        append(&u.m("f"), "B ");
        held.write_all(b"A2 ").unwrap();
        assert_eq!(read(u.m("f")), "A1 B A2 ", "{pt}");
        assert!(!exists(u.b("s0/f")), "{pt}: copied up while pinned");
        // A second writer opened now keeps the pin after the first closes.
        let mut second = OpenOptions::new().append(true).open(u.m("f")).unwrap();
        drop(held);
        second.write_all(b"C ").unwrap();
        assert!(
            !exists(u.b("s0/f")),
            "{pt}: copied up while a writer was open"
        );
        drop(second);
        assert_eq!(read(u.b("base/f")), "A1 B A2 C ", "{pt}");
        // The kernel sends the release of a closed file after close returns.
        wait_for("the daemon to release base/f", || {
            !daemon_holds(&u, &u.b("base/f"))
        });
        // The last writer closed: the next write copies up, as after any snapshot.
        append(&u.m("f"), "D");
        assert_eq!(read(u.b("s0/f")), "A1 B A2 C D", "{pt}");
        assert_eq!(read(u.b("base/f")), "A1 B A2 C ", "{pt}");
        assert_eq!(read(u.m("f")), "A1 B A2 C D", "{pt}");
    }
}

#[test]
fn a_reader_opened_before_a_snapshot_keeps_the_frozen_version() {
    need_fuse!();
    for pt in PASSTHROUGH {
        let mut u = Union::new(&["base", "s0"]);
        write(u.b("base/f"), "frozen");
        u.mount("base", &[pt]);
        let mut reader = fs::File::open(u.m("f")).unwrap();
        snapshot(&u, "s0", false);
        // A write after the snapshot goes to the new top, never to base.
        fs::write(u.m("f"), "new").unwrap();
        assert_eq!(
            read(u.b("base/f")),
            "frozen",
            "{pt}: wrote into the frozen branch"
        );
        assert_eq!(read(u.b("s0/f")), "new", "{pt}");
        assert_eq!(read(u.m("f")), "new", "{pt}");
        assert_eq!(
            from_start(&mut reader).unwrap(),
            "frozen",
            "{pt}: the reader left its branch"
        );
        // Appending through a new open after the snapshot too.
        append(&u.m("f"), "er");
        assert_eq!(read(u.m("f")), "newer", "{pt}");
        assert_eq!(read(u.b("base/f")), "frozen", "{pt}");
    }
}

#[test]
fn readers_see_what_was_written_before_a_snapshot_and_keep_it() {
    need_fuse!();
    for pt in PASSTHROUGH {
        let mut u = Union::new(&["rw", "ro", "s0"]);
        write(u.b("ro/f"), "old ");
        write(u.b("ro/g"), "frozen");
        u.mount("rw=rw:ro=ro", &[pt]);
        // A reader of a lower file, then a write that copies it up, then a
        // snapshot: the reader has what was written before the snapshot.
        let mut early = fs::File::open(u.m("f")).unwrap();
        append(&u.m("f"), "new");
        // Opened before the snapshot; another opened after it.
        let mut before = fs::File::open(u.m("g")).unwrap();
        snapshot(&u, "s0", false);
        let mut after = fs::File::open(u.m("g")).unwrap();
        append(&u.m("f"), " newest");
        append(&u.m("g"), " changed");
        assert_eq!(from_start(&mut early).unwrap(), "old new", "{pt}");
        assert_eq!(from_start(&mut before).unwrap(), "frozen", "{pt}");
        // Opened after the snapshot but sharing the earlier reader's file:
        // keeps that version (one kernel inode, one page cache).
        assert_eq!(from_start(&mut after).unwrap(), "frozen", "{pt}");
        assert_eq!(read(u.m("g")), "frozen changed", "{pt}");
        assert_eq!(read(u.b("rw/f")), "old new", "{pt}: the frozen branch");
    }
}

#[test]
fn a_directory_holding_a_pinned_file_cannot_be_moved() {
    need_fuse!();
    let mut u = Union::new(&["base", "s0"]);
    u.mount("base", &[]);
    fs::create_dir(u.m("d")).unwrap();
    let mut held = fs::File::create(u.m("d/f")).unwrap();
    held.write_all(b"A1 ").unwrap();
    snapshot(&u, "s0", true);
    // Moving d would copy f away from its writer into the new branch.
    assert_errno(fs::rename(u.m("d"), u.m("e")), libc::EBUSY);
    held.write_all(b"A2").unwrap();
    assert_eq!(read(u.m("d/f")), "A1 A2");
    drop(held);
    wait_for("the daemon to release d/f", || {
        !daemon_holds(&u, &u.b("base/d/f"))
    });
    fs::rename(u.m("d"), u.m("e")).unwrap();
    assert_eq!(read(u.m("e/f")), "A1 A2");
}
