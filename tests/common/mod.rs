//! Helpers for the integration tests: real branches in a temp dir, a real
//! FUSE mount through the unionfs-mount binary, errno assertions.
#![allow(dead_code)]

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_unionfs-mount");
pub const UNIONCTL: &str = env!("CARGO_BIN_EXE_unionctl");

/// Poll `cond` (made true by another thread or process) until it holds, a
/// minute at most: tests wait for events, never for a fixed time.
#[track_caller]
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "never saw {what}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The FUSE control filesystem (each connection's `waiting` count), mounted
/// if it is not yet (a fresh machine may not have it).
pub fn fusectl() -> std::path::PathBuf {
    static ONCE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONCE.lock().unwrap();
    let dir = std::path::PathBuf::from("/sys/fs/fuse/connections");
    let mounted = std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(2) == Some("fusectl"));
    if !mounted {
        let st = std::process::Command::new("mount")
            .args(["-t", "fusectl", "fusectl"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(
            st.success(),
            "the FUSE control filesystem is not mounted on {} and cannot be",
            dir.display()
        );
    }
    dir
}

/// Tests need root and /dev/fuse. Where they are missing the test fails and
/// says so, unless UNIONFS_SKIP_FUSE_TESTS=1 asks to skip (loudly).
pub fn fuse_available() -> bool {
    let root = nix::unistd::geteuid().is_root();
    let dev = Path::new("/dev/fuse").exists();
    if root && dev {
        return true;
    }
    let why = format!("FUSE tests need root and /dev/fuse (root: {root}, /dev/fuse: {dev})");
    if std::env::var_os("UNIONFS_SKIP_FUSE_TESTS").is_some_and(|v| v == "1") {
        eprintln!("SKIPPED: {why} (UNIONFS_SKIP_FUSE_TESTS=1)");
        return false;
    }
    panic!("{why}; set UNIONFS_SKIP_FUSE_TESTS=1 to skip them explicitly");
}

/// Branch directories and a mount point under one temp dir.
pub struct Union {
    pub tmp: tempfile::TempDir,
    pub mnt: PathBuf,
    mounted: bool,
}

impl Union {
    /// Create the named branch directories (without mounting).
    pub fn new(branches: &[&str]) -> Union {
        let tmp = tempfile::Builder::new()
            .prefix("unionfs-test")
            .tempdir()
            .unwrap();
        for b in branches {
            fs::create_dir_all(tmp.path().join(b)).unwrap();
        }
        let mnt = tmp.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        Union {
            tmp,
            mnt,
            mounted: false,
        }
    }

    /// A path inside branch `b`.
    pub fn b(&self, b: &str) -> PathBuf {
        self.tmp.path().join(b)
    }

    /// A path inside the mount.
    pub fn m(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// The branch list for `spec` like "rw=rw:ro=ro" with paths made absolute.
    pub fn spec(&self, spec: &str) -> String {
        spec.split(':')
            .map(|item| format!("{}/{}", self.tmp.path().display(), item))
            .collect::<Vec<_>>()
            .join(":")
    }

    pub fn try_mount(&mut self, spec: &str, opts: &[&str]) -> Output {
        self.try_mount_abs(&self.spec(spec), opts)
    }

    /// Mount branches given by absolute paths.
    pub fn try_mount_abs(&mut self, spec: &str, opts: &[&str]) -> Output {
        let mut cmd = Command::new(BIN);
        // Every test in another mode: UNIONFS_MOUNT_OPTIONS=passthrough=all
        // (options a test gives come after, so they win).
        if let Some(o) = std::env::var_os("UNIONFS_MOUNT_OPTIONS").filter(|o| !o.is_empty()) {
            cmd.arg("-o").arg(o);
        }
        for o in opts {
            cmd.arg("-o").arg(o);
        }
        cmd.arg(spec).arg(&self.mnt);
        let out = cmd.output().expect("run unionfs-mount");
        if out.status.success() {
            self.mounted = true;
        }
        out
    }

    /// Mount with `spec` (see [`spec`]) and `-o` options; panics on failure.
    pub fn mount(&mut self, spec: &str, opts: &[&str]) {
        let out = self.try_mount(spec, opts);
        assert!(
            out.status.success(),
            "mount failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            is_mounted(&self.mnt),
            "mount command returned before the mount was live"
        );
    }

    pub fn unmount(&mut self) {
        if self.mounted {
            unmount(&self.mnt);
            self.mounted = false;
        }
    }

    pub fn remount(&mut self, spec: &str, opts: &[&str]) {
        self.unmount();
        self.mount(spec, opts);
    }
}

impl Drop for Union {
    fn drop(&mut self) {
        self.unmount();
    }
}

pub fn is_mounted(p: &Path) -> bool {
    let p = fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    unionfs::mountinfo::is_mount_point(&p)
}

pub fn unmount(p: &Path) {
    let ok = Command::new("fusermount3")
        .arg("-u")
        .arg(p)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        let _ = Command::new("umount").arg("-l").arg(p).output();
    }
    let start = Instant::now();
    while is_mounted(p) && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A tmpfs mounted on `dir` (with `opts`, e.g. "size=1m") for one test,
/// lazily unmounted when dropped.
pub struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    pub fn mount(dir: impl AsRef<Path>, opts: &str) -> Tmpfs {
        let dir = dir.as_ref();
        sh(&format!(
            "mount -t tmpfs -o '{opts}' tmpfs '{}'",
            dir.display()
        ));
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Append `data` to the file `p`.
pub fn append(p: impl AsRef<Path>, data: &str) -> io::Result<()> {
    fs::OpenOptions::new()
        .append(true)
        .open(p)
        .and_then(|mut f| std::io::Write::write_all(&mut f, data.as_bytes()))
}

pub fn write(p: impl AsRef<Path>, data: &str) {
    let p = p.as_ref();
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(p, data).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
}

pub fn read(p: impl AsRef<Path>) -> String {
    let p = p.as_ref();
    fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

pub fn exists(p: impl AsRef<Path>) -> bool {
    fs::symlink_metadata(p).is_ok()
}

/// Assert that `res` failed with `errno`.
#[track_caller]
pub fn assert_errno<T: std::fmt::Debug>(res: io::Result<T>, errno: i32) {
    match res {
        Ok(v) => panic!("expected errno {errno}, got success {v:?}"),
        Err(e) => assert_eq!(
            e.raw_os_error(),
            Some(errno),
            "expected errno {errno} ({}), got {e}",
            io::Error::from_raw_os_error(errno)
        ),
    }
}

/// Sorted names of a directory.
pub fn ls(p: impl AsRef<Path>) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(p.as_ref())
        .unwrap_or_else(|e| panic!("readdir {}: {e}", p.as_ref().display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

pub fn ino(p: impl AsRef<Path>) -> u64 {
    fs::symlink_metadata(p).unwrap().ino()
}

pub fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// Run a shell command; panics with its output when it fails.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn mode(p: impl AsRef<Path>) -> u32 {
    fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

#[macro_export]
macro_rules! need_fuse {
    () => {
        if !common::fuse_available() {
            return;
        }
    };
}

/// Stop process `pid` (SIGSTOP) and wait until every thread of it is: a
/// stop takes effect thread by thread, and one still running in user space
/// would answer a request meanwhile.
pub fn stop_process(pid: i32) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGSTOP).unwrap();
    let stopped = || {
        fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .flatten()
            .all(|t| {
                let stat = fs::read_to_string(t.path().join("stat")).unwrap_or_default();
                // "PID (comm) S ...": the state follows the last ')'.
                stat.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with(['T', 't']))
            })
    };
    wait_for("every thread of the daemon to stop", stopped);
}

/// The pid of the unionfs-mount daemon serving `mnt`.
pub fn daemon_pid(mnt: &Path) -> i32 {
    let want = mnt.as_os_str().as_bytes();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
        if args.first().is_some_and(|a| a.ends_with(b"unionfs-mount")) && args.contains(&want) {
            return pid;
        }
    }
    panic!("no daemon serves {}", mnt.display());
}

/// Sorted names of a branch directory, without the daemon's work directory.
pub fn ls_branch(p: impl AsRef<Path>) -> Vec<String> {
    ls(p)
        .into_iter()
        .filter(|n| n != ".wh..wh.work" && n != ".wh..wh.index")
        .collect()
}

/// An unprivileged local account, for the attacks a local user could make:
/// made with useradd the first time it is needed. Answers (uid, gid).
pub fn attacker() -> (u32, u32) {
    static ID: std::sync::OnceLock<(u32, u32)> = std::sync::OnceLock::new();
    *ID.get_or_init(|| {
        const NAME: &str = "unionfs-attacker";
        if nix::unistd::User::from_name(NAME).ok().flatten().is_none() {
            let st = Command::new("useradd")
                .args([
                    "--system",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    NAME,
                ])
                .status()
                .expect("useradd (package passwd) is needed for the attack tests");
            // 9: made meanwhile by another test process.
            assert!(st.success() || st.code() == Some(9), "useradd {NAME}: {st}");
        }
        let u = nix::unistd::User::from_name(NAME)
            .unwrap()
            .expect("the attacker account exists");
        (u.uid.as_raw(), u.gid.as_raw())
    })
}

/// `sh -c SCRIPT` as the attacker; its output.
pub fn as_attacker(script: &str) -> Output {
    use std::os::unix::process::CommandExt;
    let (uid, gid) = attacker();
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .uid(uid)
        .gid(gid)
        .current_dir("/")
        .output()
        .unwrap()
}

/// Let everyone through the test's temp directory (tempfile makes it 0700).
pub fn open_up(u: &Union) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(u.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
}

/// chown -R to the attacker.
pub fn give_to_attacker(p: &Path) {
    let (uid, gid) = attacker();
    sh(&format!("chown -R {uid}:{gid} '{}'", p.display()));
}

/// The daemon's own umask, from /proc.
pub fn daemon_umask(mnt: &Path) -> u32 {
    let status = read(format!("/proc/{}/status", daemon_pid(mnt)));
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .expect("Umask in /proc/PID/status");
    u32::from_str_radix(line.trim(), 8).unwrap()
}

/// `unionctl MNT ARGS...`; its output.
pub fn unionctl(mnt: &Path, args: &[&str]) -> Output {
    Command::new(UNIONCTL).arg(mnt).args(args).output().unwrap()
}

/// `unionctl MNT --list`, which must succeed; what it prints.
pub fn listed(mnt: &Path) -> String {
    let out = unionctl(mnt, &["--list"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `--snapshot` to branch `b` while writers open and close files: a
/// snapshot is refused (EBUSY, naming the file) while one is open for
/// writing, so retry until it lands between two writes.
pub fn snapshot_between_writes(u: &Union, b: &str) {
    let to = u.b(b).display().to_string();
    wait_for(
        &format!("a moment without writers for --snapshot {b}"),
        || {
            let out = unionctl(&u.mnt, &["--snapshot", &to]);
            let refused = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() || refused.contains("has files open for writing"),
                "{refused}"
            );
            out.status.success()
        },
    );
}
