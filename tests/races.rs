//! Operations racing a copy-up, and each other: only outcomes that some
//! serial order of the operations gives. Each race is started on an event
//! (the copy's temporary file has data in the work directory) and checked to
//! have really overlapped (the copy-up was still running when the racing
//! operation returned).

mod common;
use common::*;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Large enough that copying it takes a while on any disk.
const BIG_MIB: usize = 384;

/// A file of `mib` MiB of data (no holes: those would copy at once).
fn big(p: &Path, mib: usize) {
    let chunk: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8 + 1).collect();
    let mut f = File::create(p).unwrap();
    for _ in 0..mib {
        f.write_all(&chunk).unwrap();
    }
}

/// The work directory of the writable branch `rw` of `u`.
fn work(u: &Union) -> PathBuf {
    u.b("rw").join(".wh..wh.work")
}

/// Whether a copy is being built in `work` (a temporary file with data).
fn copying(work: &Path) -> bool {
    fs::read_dir(work).is_ok_and(|d| {
        d.flatten()
            .any(|e| e.metadata().is_ok_and(|m| m.is_file() && m.len() > 0))
    })
}

/// A copy-up under way: an O_APPEND open of a lower file, on a thread.
struct CopyUp {
    done: Arc<AtomicBool>,
    open: JoinHandle<io::Result<File>>,
}

impl CopyUp {
    /// Start it; answers once the copy has data in `work`.
    fn start(path: PathBuf, work: &Path) -> CopyUp {
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        let open = std::thread::spawn(move || {
            let f = OpenOptions::new().append(true).open(path);
            d.store(true, Ordering::SeqCst);
            f
        });
        wait_for("the copy-up start", || copying(work));
        CopyUp { done, open }
    }

    /// Assert the copy is still being made: what ran meanwhile overlapped it.
    #[track_caller]
    fn assert_running(&self, what: &str) {
        assert!(
            !self.done.load(Ordering::SeqCst),
            "the copy-up ended before {what} returned: the race was not run (make BIG_MIB larger)"
        );
    }

    fn finish(self) -> io::Result<File> {
        self.open.join().unwrap()
    }
}

/// Names in a branch directory, with the daemon's work directory left out.
#[test]
fn a_file_removed_during_its_copy_up_stays_removed() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro"]);
    big(&u.b("ro/f"), BIG_MIB);
    u.mount("rw=rw:ro=ro", &[]);
    let copy = CopyUp::start(u.m("f"), &work(&u));
    fs::remove_file(u.m("f")).unwrap();
    copy.assert_running("rm");
    // rm came first in the serial order: the open finds no file.
    assert_errno(copy.finish(), libc::ENOENT);
    assert!(!exists(u.m("f")), "a removed name came back");
    assert_eq!(ls(&u.mnt), Vec::<String>::new());
    assert_eq!(ls_branch(u.b("rw")), [".wh.f"]);
    assert_eq!(ls_branch(work(&u)), Vec::<String>::new(), "a copy was left");
    u.remount("rw=rw:ro=ro", &[]);
    assert!(
        !exists(u.m("f")),
        "a removed name came back after a remount"
    );
}

#[test]
fn a_file_renamed_during_its_copy_up_moves_once_with_its_data() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro"]);
    big(&u.b("ro/f"), BIG_MIB);
    u.mount("rw=rw:ro=ro", &[]);
    let copy = CopyUp::start(u.m("f"), &work(&u));
    // The rename needs the file in the writable branch too: it waits for
    // the copy-up that is under way instead of making a second one.
    let mv = {
        let (from, to) = (u.m("f"), u.m("g"));
        std::thread::spawn(move || fs::rename(from, to))
    };
    // Two threads of its own: the large copy (copyup::SLOW_COPY) and the
    // rename that waits for it (one alone is the copy, seen before the
    // rename arrives).
    wait_for("the rename to wait for the copy-up, and the copy", || {
        waiting_threads(&u.mnt) == 2
    });
    let mut f = copy.finish().expect("the open that copied the file up");
    mv.join().unwrap().unwrap();
    f.write_all(b"appended").unwrap();
    drop(f);
    assert_eq!(ls(&u.mnt), ["g"]);
    let size = (BIG_MIB << 20) as u64 + 8;
    assert_eq!(fs::metadata(u.m("g")).unwrap().len(), size);
    assert_eq!(ls_branch(u.b("rw")), [".wh.f", "g"]);
    assert_eq!(fs::metadata(u.b("rw/g")).unwrap().len(), size);
    assert_eq!(ls_branch(work(&u)), Vec::<String>::new(), "a copy was left");
    u.remount("rw=rw:ro=ro", &[]);
    assert_eq!(ls(&u.mnt), ["g"]);
    assert_eq!(fs::metadata(u.m("g")).unwrap().len(), size);
}

#[test]
fn rm_rf_of_the_parent_during_a_copy_up_leaves_nothing() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro"]);
    fs::create_dir_all(u.b("ro/d/e")).unwrap();
    big(&u.b("ro/d/f"), BIG_MIB);
    write(u.b("ro/d/e/x"), "x");
    u.mount("rw=rw:ro=ro", &[]);
    let copy = CopyUp::start(u.m("d/f"), &work(&u));
    sh(&format!("rm -rf '{}'", u.m("d").display()));
    copy.assert_running("rm -rf");
    assert_errno(copy.finish(), libc::ENOENT);
    assert_eq!(ls(&u.mnt), Vec::<String>::new(), "a removed tree came back");
    assert_eq!(ls_branch(u.b("rw")), [".wh.d"]);
    assert_eq!(ls_branch(work(&u)), Vec::<String>::new(), "a copy was left");
    u.remount("rw=rw:ro=ro", &[]);
    assert_eq!(ls(&u.mnt), Vec::<String>::new());
}

/// The names of the daemon's threads that wait for copy-ups.
fn waiting_threads(mnt: &Path) -> usize {
    let tasks = format!("/proc/{}/task", daemon_pid(mnt));
    fs::read_dir(tasks)
        .unwrap()
        .flatten()
        .filter(|t| fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c == "unionfs-wait\n"))
        .count()
}

#[test]
fn a_directory_stays_usable_while_a_large_copy_up_in_it_runs() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro"]);
    fs::create_dir(u.b("ro/d")).unwrap();
    big(&u.b("ro/d/big"), BIG_MIB);
    write(u.b("ro/d/other"), "other");
    write(u.b("ro/d/gone"), "gone");
    u.mount("rw=rw:ro=ro", &["threads=2"]);
    let copy = CopyUp::start(u.m("d/big"), &work(&u));
    // More requests waiting for that copy-up than the daemon has threads:
    // they wait on threads of their own, as the large copy itself runs on
    // one (copyup::SLOW_COPY).
    let waiters: Vec<_> = (0..6)
        .map(|_| {
            let p = u.m("d/big");
            std::thread::spawn(move || OpenOptions::new().write(true).open(p).map(drop))
        })
        .collect();
    wait_for("six requests waiting for the copy-up, and the copy", || {
        waiting_threads(&u.mnt) == 7
    });
    // Everything else in the directory is served meanwhile.
    write(u.m("d/new"), "new");
    assert_eq!(read(u.m("d/other")), "other");
    fs::remove_file(u.m("d/gone")).unwrap();
    fs::rename(u.m("d/new"), u.m("d/renamed")).unwrap();
    assert_eq!(ls(u.m("d")), ["big", "other", "renamed"]);
    assert_eq!(
        fs::metadata(u.m("d/big")).unwrap().len(),
        (BIG_MIB << 20) as u64
    );
    copy.assert_running("the other operations in the directory");
    copy.finish().unwrap();
    for w in waiters {
        w.join().unwrap().unwrap();
    }
    assert_eq!(ls_branch(u.b("rw/d")), [".wh.gone", "big", "renamed"]);
    wait_for("the waiting threads to end", || {
        waiting_threads(&u.mnt) == 0
    });
}

/// Directories the racers work through, each with lower files n0..n4.
const DIRS: usize = 8;
const ROUNDS: u32 = 800;

/// One racer: a perl process doing random creates, unlinks, renames and
/// appends (the first append to a lower file copies it up) on the names
/// n0..n4 of d0, then d1, and so on: the racers move through the
/// directories at about the same pace, so they meet on the same names.
fn racer(mnt: &Path, seed: u32) -> std::process::Child {
    let script = r#"
        use Fcntl;
        my ($mnt, $seed, $rounds, $dirs) = @ARGV;
        srand($seed);
        for my $i (0 .. $rounds - 1) {
            my $dir = "$mnt/d" . int($i * $dirs / $rounds);
            my $a = "$dir/n" . int(rand(5));
            my $b = "$dir/n" . int(rand(5));
            my $op = rand(1);
            if ($op < 0.15) {
                if (sysopen(my $f, $a, O_WRONLY | O_CREAT | O_EXCL)) {
                    print $f "made by $seed at $i\n";
                    close($f);
                }
            } elsif ($op < 0.45) {
                unlink($a);
            } elsif ($op < 0.6) {
                rename($a, $b);
            } elsif (open(my $f, ">>", $a)) {
                print $f "appended by $seed at $i\n";
                close($f);
            }
        }
    "#;
    Command::new("perl")
        .arg("-e")
        .arg(script)
        .arg(mnt)
        .arg(seed.to_string())
        .arg(ROUNDS.to_string())
        .arg(DIRS.to_string())
        .spawn()
        .expect("perl (for the racing processes)")
}
/// What the union shows in `dir`: names and contents.
fn view(dir: &Path) -> Vec<(String, Vec<u8>)> {
    ls(dir)
        .into_iter()
        .map(|n| {
            let data = fs::read(dir.join(&n)).unwrap();
            (n, data)
        })
        .collect()
}

/// What `dir` shows by the OCI layer rules, computed from the branches
/// (topmost first): a name shows from the topmost branch that has it,
/// unless a branch above has its whiteout or is opaque.
fn oci_view(branches: &[PathBuf], dir: &str) -> Vec<(String, Vec<u8>)> {
    let mut shown = std::collections::BTreeMap::new();
    let mut hidden = std::collections::BTreeSet::new();
    for b in branches {
        let d = b.join(dir);
        let Ok(list) = fs::read_dir(&d) else { continue };
        let mut opaque = false;
        for e in list.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n == ".wh..wh..opq" {
                opaque = true;
            } else if let Some(w) = n.strip_prefix(".wh.") {
                if !w.starts_with(".wh.") {
                    hidden.insert(w.to_string());
                }
            } else if !hidden.contains(&n) && !shown.contains_key(&n) {
                shown.insert(n, fs::read(e.path()).unwrap());
            }
        }
        for n in shown.keys() {
            hidden.insert(n.clone());
        }
        if opaque {
            break;
        }
    }
    shown.into_iter().collect()
}

#[test]
fn racing_creates_unlinks_renames_and_copy_ups_agree_with_a_remount() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro"]);
    let chunk = "lower data\n".repeat(4 << 20 >> 4);
    for d in 0..DIRS {
        fs::create_dir(u.b(&format!("ro/d{d}"))).unwrap();
        for i in 0..5 {
            // Large enough that copy-ups overlap the other racers' operations.
            fs::write(u.b(&format!("ro/d{d}/n{i}")), format!("n{i}\n{chunk}")).unwrap();
        }
    }
    u.mount("rw=rw:ro=ro", &[]);
    let racers: Vec<_> = (1..=4).map(|s| racer(&u.mnt, s)).collect();
    for mut r in racers {
        assert!(r.wait().unwrap().success(), "a racer failed");
    }
    let dirs: Vec<String> = (0..DIRS).map(|d| format!("d{d}")).collect();
    let seen: Vec<_> = dirs.iter().map(|d| view(&u.m(d))).collect();
    let branches = [u.b("rw"), u.b("ro")];
    for (d, seen) in dirs.iter().zip(&seen) {
        assert_eq!(
            seen,
            &oci_view(&branches, d),
            "union and branches disagree in {d}"
        );
        let files: Vec<String> = ls_branch(u.b("rw").join(d));
        for n in &files {
            if let Some(w) = n.strip_prefix(".wh.") {
                assert!(
                    !files.iter().any(|f| f == w),
                    "{d}/{w} and its whiteout are both in the writable branch"
                );
            }
        }
        // No file was moved twice (one object under two names).
        let inodes: std::collections::HashSet<u64> = files
            .iter()
            .filter(|n| !n.starts_with(".wh."))
            .map(|n| {
                fs::symlink_metadata(u.b("rw").join(d).join(n))
                    .unwrap()
                    .ino()
            })
            .collect();
        let count = files.iter().filter(|n| !n.starts_with(".wh.")).count();
        assert_eq!(inodes.len(), count, "one file under two names in {d}");
    }
    assert_eq!(ls_branch(work(&u)), Vec::<String>::new(), "a copy was left");
    u.remount("rw=rw:ro=ro", &[]);
    for (d, seen) in dirs.iter().zip(&seen) {
        assert_eq!(
            &view(&u.m(d)),
            seen,
            "a remount shows something else in {d}"
        );
    }
}
