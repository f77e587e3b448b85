//! snapmerge: round trips against the union's own view, dry runs, an
//! interrupted run, symlinks never followed, refusing a live rw branch.

mod common;
use common::*;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const SNAPMERGE: &str = env!("CARGO_BIN_EXE_snapmerge");

/// A listing of a tree: path, type, mode, owner; for non-directories also
/// size, link count, symlink target and contents. The daemon's work
/// directory is left out, and so are directory sizes and link counts.
fn snapshot_of(root: &Path) -> String {
    sh(&format!(
        "cd {} && find . \\( -path ./.wh..wh.work -o -path ./.wh..wh.index \\) -prune -o -type d -printf '%P d %m %u\\n' -o -printf '%P %y %m %u %s %n %l\\n' | sort && \
         find . \\( -path ./.wh..wh.work -o -path ./.wh..wh.index \\) -prune -o -type f -print0 | sort -z | xargs -0 -r md5sum",
        root.display()
    ))
}

fn merge(args: &[&Path]) -> std::process::Output {
    Command::new(SNAPMERGE).args(args).output().unwrap()
}

/// A base and two snapshots made through a live union with unionctl --snapshot.
fn workflow(u: &mut Union) {
    write(u.b("base/keep"), "keep");
    write(u.b("base/change"), "v0");
    write(u.b("base/gone"), "gone");
    write(u.b("base/dir/old"), "old");
    write(u.b("base/replaced/a"), "a");
    fs::create_dir_all(u.b("snaps/0")).unwrap();
    fs::create_dir_all(u.b("snaps/1")).unwrap();
    u.mount("base", &[]);
    let ctl = |args: &[&str]| {
        let out = Command::new(UNIONCTL)
            .arg(&u.mnt)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ctl(&["--snapshot", u.b("snaps/0").to_str().unwrap()]);
    write(u.m("change"), "v1");
    fs::remove_file(u.m("gone")).unwrap();
    write(u.m("dir/new"), "new");
    fs::remove_dir_all(u.m("replaced")).unwrap();
    fs::create_dir(u.m("replaced")).unwrap();
    write(u.m("replaced/b"), "b");
    write(u.m("linked"), "hard");
    fs::hard_link(u.m("linked"), u.m("linked2")).unwrap();
    std::os::unix::fs::symlink("keep", u.m("sym")).unwrap();
    fs::set_permissions(u.m("keep"), fs::Permissions::from_mode(0o600)).unwrap();
    ctl(&["--snapshot", u.b("snaps/1").to_str().unwrap()]);
    write(u.m("change"), "v2");
    fs::remove_file(u.m("dir/old")).unwrap();
    fs::set_permissions(u.m("dir"), fs::Permissions::from_mode(0o700)).unwrap();
}

#[test]
fn old_states_can_be_mounted_and_dry_run_changes_nothing() {
    need_fuse!();
    let mut u = Union::new(&["base", "snaps"]);
    workflow(&mut u);
    u.unmount();
    // an old state: the base with the first snapshot over it
    let mut old = Union::new(&[]);
    let spec = format!(
        "{}=ro:{}=ro",
        u.b("snaps/0").display(),
        u.b("base").display()
    );
    let out = Command::new(BIN).arg(&spec).arg(&old.mnt).output().unwrap();
    assert!(out.status.success());
    assert_eq!(read(old.m("change")), "v1");
    assert_eq!(read(old.m("dir/old")), "old");
    unmount(&old.mnt);
    let _ = &mut old;

    let before = snapshot_of(&u.b("base"));
    let out = Command::new(SNAPMERGE)
        .arg("--dry-run")
        .arg(u.b("base"))
        .arg(u.b("snaps/0"))
        .arg(u.b("snaps/1"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains("D /gone") && text.contains("A /dir/new") && text.contains("C /change"),
        "{text}"
    );
    assert!(
        text.lines().last().unwrap().contains("would be added"),
        "{text}"
    );
    assert_eq!(
        snapshot_of(&u.b("base")),
        before,
        "--dry-run changed the base"
    );
}

#[test]
fn round_trip_and_rerun() {
    need_fuse!();
    let mut u = Union::new(&["base", "snaps"]);
    workflow(&mut u);
    let view = snapshot_of(&u.mnt);
    u.unmount();
    let out = merge(&[&u.b("base"), &u.b("snaps/0"), &u.b("snaps/1")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.starts_with("snapmerge: ")
            && summary.contains("added")
            && summary.contains("deleted"),
        "{summary}"
    );
    assert_eq!(snapshot_of(&u.b("base")), view);
    assert_eq!(
        ino(u.b("base/linked")),
        ino(u.b("base/linked2")),
        "hard link not kept"
    );
    assert!(fs::symlink_metadata(u.b("base/sym"))
        .unwrap()
        .file_type()
        .is_symlink());
    // running it again changes nothing
    let again = merge(&[&u.b("base"), &u.b("snaps/0"), &u.b("snaps/1")]);
    assert!(again.status.success());
    assert_eq!(snapshot_of(&u.b("base")), view);
}

#[test]
fn an_interrupted_merge_run_again_ends_the_same() {
    need_fuse!();
    let mut u = Union::new(&["base", "snap", "ref"]);
    write(u.b("base/old"), "old");
    for i in 0..300 {
        write(u.b(&format!("snap/d{}/f{i}", i % 10)), &format!("file {i}"));
    }
    sh(&format!(
        "head -c 300M /dev/zero > {}/big",
        u.b("snap").display()
    ));
    write(u.b("snap/.wh.old"), "");
    sh(&format!(
        "cp -a {}/. {}/",
        u.b("base").display(),
        u.b("ref").display()
    ));
    let out = merge(&[&u.b("ref"), &u.b("snap")]);
    assert!(out.status.success());
    let mut child = Command::new(SNAPMERGE)
        .arg(u.b("base"))
        .arg(u.b("snap"))
        .spawn()
        .unwrap();
    let start = Instant::now();
    // kill it while it copies (its temporary files show in the base)
    while !fs::read_dir(u.b("base")).unwrap().any(|e| {
        e.unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(".wh..wh.snapmerge")
    }) {
        if child.try_wait().unwrap().is_some() || start.elapsed() > Duration::from_secs(20) {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let _ = child.kill();
    let _ = child.wait();
    let out = merge(&[&u.b("base"), &u.b("snap")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(snapshot_of(&u.b("base")), snapshot_of(&u.b("ref")));
    let _ = &mut u;
}

#[test]
fn symlinks_in_base_or_snapshot_are_never_followed() {
    need_fuse!();
    let u = Union::new(&["base", "snap", "outside"]);
    write(u.b("outside/victim"), "untouched");
    std::os::unix::fs::symlink(u.b("outside"), u.b("base/d")).unwrap();
    std::os::unix::fs::symlink(u.b("outside/victim"), u.b("base/f")).unwrap();
    write(u.b("snap/d/victim"), "through the symlink?");
    write(u.b("snap/f"), "replaces the symlink");
    std::os::unix::fs::symlink(u.b("outside"), u.b("snap/link")).unwrap();
    write(u.b("snap/.wh.nothing"), "");
    let out = merge(&[&u.b("base"), &u.b("snap")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(read(u.b("outside/victim")), "untouched");
    assert_eq!(ls(u.b("outside")), vec!["victim"]);
    assert!(fs::symlink_metadata(u.b("base/d")).unwrap().is_dir());
    assert_eq!(read(u.b("base/d/victim")), "through the symlink?");
    assert!(fs::symlink_metadata(u.b("base/f")).unwrap().is_file());
    assert_eq!(fs::read_link(u.b("base/link")).unwrap(), u.b("outside"));
}

#[test]
fn refuses_a_live_read_write_branch_and_bad_arguments() {
    need_fuse!();
    let mut u = Union::new(&["base", "snap"]);
    write(u.b("snap/f"), "x");
    u.mount("base", &[]);
    let out = merge(&[&u.b("base"), &u.b("snap")]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("read-write branch of the live union"), "{err}");
    assert!(!exists(u.b("base/f")));
    let out = Command::new(SNAPMERGE)
        .arg("--force")
        .arg(u.b("base"))
        .arg(u.b("snap"))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(read(u.b("base/f")), "x");
    u.unmount();
    let out = merge(&[&u.b("base"), &u.b("missing")]);
    assert_eq!(out.status.code(), Some(2));
    let out = merge(&[&u.b("base"), &u.b("base")]);
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(SNAPMERGE).arg(u.b("base")).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(fs::metadata(u.b("base/f")).unwrap().nlink(), 1);
}

#[test]
fn whiteouts_of_dot_and_dotdot_are_refused_and_change_nothing() {
    need_fuse!();
    let u = Union::new(&["base", "snap", "snap2"]);
    write(u.b("base/keep"), "keep");
    write(u.b("base/d/keep"), "keep");
    write(u.b("snap/new"), "new");
    write(u.b("snap/.wh.."), "");
    write(u.b("snap2/d/.wh..."), "");
    let before = snapshot_of(&u.b("base"));
    for snap in ["snap", "snap2"] {
        let out = merge(&[&u.b("base"), &u.b(snap)]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains("a whiteout of '.' or '..'"), "{err}");
        assert_eq!(snapshot_of(&u.b("base")), before, "{snap} changed the base");
    }
}

#[test]
fn never_crosses_a_mount_point_in_the_base() {
    need_fuse!();
    let u = Union::new(&["base", "snap", "snap2"]);
    fs::create_dir_all(u.b("base/m")).unwrap();
    let _m = Tmpfs::mount(u.b("base/m"), "mode=755");
    write(u.b("base/m/victim"), "on another filesystem");
    write(u.b("snap/.wh.m"), "");
    write(u.b("snap2/m/new"), "x");
    for snap in ["snap", "snap2"] {
        let out = merge(&[&u.b("base"), &u.b(snap)]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{snap}: {err}");
        assert!(err.contains("/m: a mount point"), "{err}");
        assert_eq!(read(u.b("base/m/victim")), "on another filesystem");
        assert!(!exists(u.b("base/m/new")));
    }
}

#[test]
fn a_live_rw_branch_is_recognised_at_any_mount_point_name() {
    need_fuse!();
    let mut u = Union::new(&["base", "snap"]);
    write(u.b("snap/f"), "x");
    // mountinfo writes a space as \040 and passes other bytes as they are.
    u.mnt = u.tmp.path().join("mnt with space ü");
    fs::create_dir(&u.mnt).unwrap();
    u.mount("base", &[]);
    refused_as_live(&u);
}

/// snapmerge of snap into base refuses: base is the union's live rw branch.
fn refused_as_live(u: &Union) {
    let out = merge(&[&u.b("base"), &u.b("snap")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("read-write branch of the live union"), "{err}");
    assert!(!exists(u.b("base/f")));
    assert!(listed(&u.mnt).contains("/base (rw)"));
}

#[test]
fn a_live_rw_branch_is_recognised_whatever_type_the_mount_shows() {
    need_fuse!();
    let mut u = Union::new(&["base", "snap"]);
    write(u.b("snap/f"), "x");
    for (sub, shown) in [
        ("subtype=", "fuse"),
        ("subtype=other.name", "fuse.other.name"),
    ] {
        u.mount("base", &[sub]);
        let info = fs::read_to_string("/proc/self/mounts").unwrap();
        let line = info
            .lines()
            .find(|l| l.split(' ').nth(1) == u.mnt.to_str())
            .unwrap();
        assert_eq!(line.split(' ').nth(2), Some(shown), "{line}");
        refused_as_live(&u);
        u.unmount();
    }
    // Unmounted, the directory is on no union.
    let out = unionctl(&u.mnt, &["--list"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not on a unionfs mount"), "{err}");
}

#[test]
fn a_mount_whose_daemon_died_holds_up_no_merge() {
    need_fuse!();
    let mut u = Union::new(&["base", "snap"]);
    write(u.b("snap/f"), "x");
    u.mount("base", &[]);
    let pid = daemon_pid(&u.mnt);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL).unwrap();
    wait_for("the connection to end", || {
        fs::metadata(&u.mnt).is_err_and(|e| e.raw_os_error() == Some(libc::ENOTCONN))
    });
    // The dead mount and its socket are still there; the merge goes ahead.
    assert!(is_mounted(&u.mnt));
    let out = merge(&[&u.b("base"), &u.b("snap")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(read(u.b("base/f")), "x");
}

#[test]
fn a_user_merges_away_their_own_read_only_directories() {
    need_fuse!();
    let u = Union::new(&["base", "snap"]);
    open_up(&u);
    fs::create_dir_all(u.b("base/x/y/z")).unwrap();
    write(u.b("base/x/y/f"), "f");
    write(u.b("snap/.wh.x"), "");
    give_to_attacker(u.tmp.path());
    // A read-only, empty directory deep inside (as module caches have).
    fs::set_permissions(u.b("base/x/y/z"), fs::Permissions::from_mode(0o555)).unwrap();
    // The user runs a copy of snapmerge (the checkout may be closed to them).
    let bin = u.tmp.path().join("snapmerge");
    fs::copy(SNAPMERGE, &bin).unwrap();
    let out = as_attacker(&format!(
        "{} {} {}",
        bin.display(),
        u.b("base").display(),
        u.b("snap").display()
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!exists(u.b("base/x")));
}
