//! The command line: bad input, --help, background and foreground, signals, fstab.

mod common;
use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The mount must fail with exit status 2, one line on stderr containing
/// `needle`, and nothing mounted.
#[track_caller]
fn refused(u: &mut Union, spec: &str, opts: &[&str], needle: &str) {
    let out = u.try_mount(spec, opts);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err:?}");
    assert!(err.contains(needle), "{err:?} does not name {needle:?}");
    assert!(!is_mounted(&u.mnt));
}

#[test]
fn bad_branches_are_refused_before_mounting() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro", "rw/inner"]);
    write(u.b("file"), "x");
    refused(&mut u, "missing=rw:ro", &[], "missing");
    refused(&mut u, "file=rw:ro", &[], "not a directory");
    refused(&mut u, "rw=rw:rw=ro", &[], "twice");
    refused(&mut u, "rw=rw:rw/inner=ro", &[], "nested");
    refused(&mut u, "rw=rx:ro", &[], "unknown mode 'rx'");
    refused(
        &mut u,
        "rw:ro",
        &["bogus_opt"],
        "unknown mount option 'bogus_opt'",
    );
    refused(&mut u, "rw:ro", &["delete=never"], "delete");
    refused(&mut u, "rw:ro", &["threads=0"], "threads");
    // mount point inside a branch, branch inside the mount point
    let out = Command::new(BIN)
        .arg(format!("{}:{}", u.b("rw").display(), u.b("ro").display()))
        .arg(u.b("rw/inner"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is inside branch"));
    let out = Command::new(BIN)
        .arg(format!("{}", u.b("rw/inner").display()))
        .arg(u.b("rw"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("inside the mount point"));
    // a missing argument is a usage error too
    let out = Command::new(BIN).arg(u.b("rw")).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn help_reads_like_a_man_page() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for section in [
        "BRANCHES:",
        "MOUNT OPTIONS",
        "delete=all|whiteout|first",
        "allow_other",
        "default_permissions",
        "threads=N",
        "passthrough=on|all|off",
        "entry_timeout",
        "fsname=",
        "FSTAB:",
        "EXAMPLES:",
        "RUST_LOG",
    ] {
        assert!(text.contains(section), "--help lacks {section}");
    }
}

#[test]
fn ro_above_rw_mounts_with_a_warning_and_protects_ro_files() {
    need_fuse!();
    let mut u = Union::new(&["ro", "rw"]);
    write(u.b("ro/old"), "old");
    let out = u.try_mount("ro=ro:rw=rw", &[]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("warning") && err.contains("cannot be modified"),
        "{err}"
    );
    write(u.m("new"), "new");
    assert_eq!(read(u.b("rw/new")), "new");
    assert_errno(
        std::fs::OpenOptions::new().append(true).open(u.m("old")),
        libc::EROFS,
    );
    assert_errno(std::fs::remove_file(u.m("old")), libc::EROFS);
    assert_eq!(read(u.b("ro/old")), "old");
}

#[test]
fn background_mount_is_live_when_the_command_returns() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro"]);
    write(u.b("ro/f"), "lower");
    u.mount("rw=rw:ro=ro", &[]);
    // no sleep: the command returned, so the mount answers now
    assert_eq!(read(u.m("f")), "lower");
    u.unmount();
    assert!(!is_mounted(&u.mnt));
}

fn wait_gone(child: &mut std::process::Child) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "daemon did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_mounted(p: &std::path::Path) {
    let start = Instant::now();
    while !is_mounted(p) {
        assert!(start.elapsed() < Duration::from_secs(10), "never mounted");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn foreground_daemon_unmounts_on_sigterm_and_sigint() {
    need_fuse!();
    let u = Union::new(&["rw", "ro"]);
    write(u.b("ro/f"), "x");
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let mut child = Command::new(BIN)
            .arg("-f")
            .arg(u.spec("rw=rw:ro=ro"))
            .arg(&u.mnt)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_mounted(&u.mnt);
        assert_eq!(read(u.m("f")), "x");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::try_from(sig).unwrap(),
        )
        .unwrap();
        let st = wait_gone(&mut child);
        assert!(st.success(), "exit status after signal {sig}: {st:?}");
        assert!(!is_mounted(&u.mnt));
    }
}

#[test]
fn fusermount_u_ends_the_daemon() {
    need_fuse!();
    let u = Union::new(&["rw"]);
    let mut child = Command::new(BIN)
        .arg("-f")
        .arg(u.spec("rw"))
        .arg(&u.mnt)
        .spawn()
        .unwrap();
    wait_mounted(&u.mnt);
    sh(&format!("fusermount3 -u {}", u.mnt.display()));
    assert!(wait_gone(&mut child).success());
}

#[test]
fn mount_t_fuse_unionfs_mount_works_as_from_fstab() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro"]);
    write(u.b("ro/f"), "fstab");
    // mount(8) runs mount.fuse3 with no PATH, so the shell's default one
    // (/usr/local/sbin first) finds the helper: put the binary under test there.
    let helper = std::path::Path::new("/usr/local/sbin/unionfs-mount");
    if let Ok(m) = std::fs::symlink_metadata(helper) {
        assert!(
            m.file_type().is_symlink(),
            "{} is a real file: remove it to run this test",
            helper.display()
        );
        std::fs::remove_file(helper).unwrap();
    }
    std::fs::create_dir_all("/usr/local/sbin").unwrap();
    std::os::unix::fs::symlink(BIN, helper).unwrap();
    struct RemoveOnDrop(&'static std::path::Path);
    impl Drop for RemoveOnDrop {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(self.0);
        }
    }
    let _cleanup = RemoveOnDrop(helper);
    let out = Command::new("mount")
        .args([
            "-t",
            "fuse.unionfs-mount",
            "-o",
            "defaults,allow_other,delete=whiteout",
        ])
        .arg(u.spec("rw=rw:ro=ro"))
        .arg(&u.mnt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mount -t fuse.unionfs-mount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(is_mounted(&u.mnt));
    assert_eq!(read(u.m("f")), "fstab");
    let info = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let line = info
        .lines()
        .find(|l| l.contains(u.mnt.to_str().unwrap()))
        .unwrap();
    // The type is what it was mounted as (mount.fuse3 passes subtype=).
    assert_eq!(line.split(' ').nth(2), Some("fuse.unionfs-mount"), "{line}");
    assert!(listed(&u.mnt).contains("/rw (rw)"));
    std::fs::remove_file(u.m("f")).unwrap();
    assert!(
        exists(u.b("rw/.wh.f")),
        "delete=whiteout was not passed through"
    );
    u.unmount();
    unmount(&u.mnt);
}

#[test]
fn overlay_options_mount_as_mount_fuse3_runs_a_helper() {
    need_fuse!();
    let mut u = Union::new(&["upper", "l1", "l2", "work"]);
    write(u.b("l1/a"), "l1");
    write(u.b("l2/a"), "l2");
    write(u.b("l2/b"), "b");
    // containerd's form: mount.fuse3 SOURCE TARGET -o OPTS -t PROGRAM, which
    // runs `PROGRAM SOURCE TARGET -o OPTS` from PATH.
    let dir = std::path::Path::new(BIN).parent().unwrap();
    let path = format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let lower = format!("lowerdir={}:{}", u.b("l1").display(), u.b("l2").display());
    let upper = format!("upperdir={}", u.b("upper").display());
    let work = format!("workdir={}", u.b("work").display());
    let out = Command::new("mount.fuse3")
        .env("PATH", &path)
        .arg("snap-src")
        .arg(&u.mnt)
        .args(["-o", &lower, "-o", &upper, "-o", &work, "-o", "allow_other"])
        .args(["-t", "unionfs-mount"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let line = info
        .lines()
        .find(|l| l.contains(u.mnt.to_str().unwrap()))
        .unwrap();
    assert!(
        line.starts_with("snap-src "),
        "the source is the fsname: {line}"
    );
    assert_eq!(line.split(' ').nth(2), Some("fuse.unionfs-mount"), "{line}");
    assert!(line.contains("allow_other"), "{line}");
    assert_eq!(read(u.m("a")), "l1", "lowerdir's leftmost is on top");
    assert_eq!(read(u.m("b")), "b");
    write(u.m("c"), "new");
    assert_eq!(read(u.b("upper/c")), "new", "writes land in upperdir");
    std::fs::remove_file(u.m("b")).unwrap();
    assert!(exists(u.b("upper/.wh.b")));
    assert_eq!(read(u.b("l2/b")), "b");
    unmount(&u.mnt);

    // fuse-overlayfs's form: -o lowerdir=... MOUNTPOINT; no upperdir: read-only.
    let out = Command::new(BIN)
        .args(["-o", &lower])
        .arg(&u.mnt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(read(u.m("a")), "l1");
    assert_errno(std::fs::write(u.m("d"), "x"), libc::EROFS);
    unmount(&u.mnt);

    refused(&mut u, "src", &[&upper], "need lowerdir");
    refused(
        &mut u,
        "src",
        &[&lower, "workdir=/nonexistent", &upper],
        "workdir",
    );
    refused(&mut u, "src", &["lowerdir=l1::l2"], "empty directory");
    refused(&mut u, "src", &["lowerdir=/nonexistent"], "nonexistent");
}

#[test]
fn allow_root_lets_only_the_owner_and_root_in_and_allow_other_everyone() {
    need_fuse!();
    let mut u = Union::new(&["rw"]);
    write(u.b("rw/f"), "data");
    open_up(&u);
    let cat = format!("cat '{}' 2>&1", u.m("f").display());
    // Mounted by root: allow_root is the kernel's allow_other, narrowed by
    // the daemon to its owner and root.
    u.mount("rw=rw", &["allow_root"]);
    assert!(sh(&format!("grep ' {} ' /proc/mounts", u.mnt.display())).contains("allow_other"));
    assert_eq!(read(u.m("f")), "data");
    let out = as_attacker(&cat);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    u.remount("rw=rw", &["allow_other"]);
    let out = as_attacker(&cat);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "data");
    u.remount("rw=rw", &[]);
    assert!(
        !as_attacker(&cat).status.success(),
        "the kernel lets only the owner in"
    );
}
