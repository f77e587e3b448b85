//! Rootless use: an unprivileged user (no capability left) runs
//! unionfs-driver, which works in a user namespace of its own: the user is
//! root inside, its subordinate ids are the image's other owners.

mod common;
use common::*;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A user with subordinate ids, and one without.
const USER: &str = "unionfs-rootless";
const SOLO: &str = "unionfs-solo";
/// A user without subordinate ids, given a cgroup v2 of its own.
const DELEG: &str = "unionfs-deleg";
/// A user with subordinate ids whose snapshotter runs in its namespace.
const CTRD: &str = "unionfs-ctrd";

fn subid_lines(name: &str, uid: u32) -> [Option<unionfs_driver::userns::Range>; 2] {
    ["/etc/subuid", "/etc/subgid"].map(|f| {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        unionfs_driver::userns::sub_range(&text, name, uid)
    })
}

/// The test user `name` (made if missing), with a subordinate id range or
/// with none: uid, gid, the range's start.
fn user(name: &str, subids: bool) -> (u32, u32, Option<u32>) {
    // Tests run in parallel: one makes the user, the others wait for it.
    static MADE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _made = MADE.lock().unwrap_or_else(|e| e.into_inner());
    if nix::unistd::User::from_name(name).unwrap().is_none() {
        let out = Command::new("useradd")
            .args([
                "--create-home",
                "-K",
                "SUB_UID_COUNT=0",
                "-K",
                "SUB_GID_COUNT=0",
                name,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "useradd: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let u = nix::unistd::User::from_name(name).unwrap().unwrap();
    let uid = u.uid.as_raw();
    let lines = subid_lines(name, uid);
    if subids {
        for (f, l) in ["/etc/subuid", "/etc/subgid"].iter().zip(lines) {
            if l.is_none() {
                // Far above what useradd hands out.
                let text = std::fs::read_to_string(f).unwrap_or_default();
                std::fs::write(f, text + &format!("{name}:3000000000:65536\n")).unwrap();
            }
        }
    } else {
        assert_eq!(lines, [None, None], "{name} must have no subordinate ids");
    }
    let start = subid_lines(name, uid)[0].map(|r| r.start);
    (uid, u.gid.as_raw(), start)
}

/// A directory the user owns, with the CLI copied in (the build tree may
/// be under a home directory the user cannot enter).
struct Home {
    user: &'static str,
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    cli: PathBuf,
}

fn home(user: &'static str, uid: u32, gid: u32) -> Home {
    let tmp = tempfile::Builder::new()
        .prefix("rootless")
        .tempdir()
        .unwrap();
    let dir = tmp.path().to_path_buf();
    let cli = dir.join("unionfs-driver");
    std::fs::copy(CLI, &cli).unwrap();
    std::fs::copy(
        Path::new(CLI).with_file_name("unionfs-mount"),
        dir.join("unionfs-mount"),
    )
    .unwrap();
    // Its runtime directory, private as XDG wants it.
    let run = dir.join("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::set_permissions(&run, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    for d in [&dir, &run] {
        std::os::unix::fs::chown(d, Some(uid), Some(gid)).unwrap();
    }
    Home {
        user,
        _tmp: tmp,
        dir,
        cli,
    }
}

/// `prog` as the user `h` is for, as a login gives it (runuser: no
/// capability), with HOME, XDG_DATA_HOME and XDG_RUNTIME_DIR in `h`.
fn user_cmd(h: &Home, prog: &Path) -> Command {
    user_cmd_in(h, prog, None)
}

/// `user_cmd`, started in the cgroup v2 directory `cgroup` if one is given.
fn user_cmd_in(h: &Home, prog: &Path, cgroup: Option<&Path>) -> Command {
    let mut c = match cgroup {
        None => Command::new("runuser"),
        Some(cg) => {
            let mut c = Command::new("sh");
            c.args(["-c", "echo $$ > \"$0\"/cgroup.procs && exec runuser \"$@\""])
                .arg(cg);
            c
        }
    };
    c.args(["-u", h.user, "--"])
        .arg(prog)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        .env("HOME", &h.dir)
        .env("XDG_DATA_HOME", h.dir.join("data"))
        .env("XDG_RUNTIME_DIR", h.dir.join("run"))
        .env("UNIONFS_MOUNT", h.dir.join("unionfs-mount"))
        .current_dir(&h.dir);
    c
}

/// The CLI with `args` as the user.
fn as_user(h: &Home, args: &[&str]) -> Output {
    user_cmd(h, &h.cli).args(args).output().unwrap()
}

/// Wait (10 s at most) until `user` runs nothing and `done` holds.
#[track_caller]
fn nothing_left(user: &str, done: impl Fn() -> bool) {
    let running = || {
        let ps = Command::new("ps")
            .args(["-u", user, "-o", "pid=,comm="])
            .output()
            .unwrap();
        String::from_utf8_lossy(&ps.stdout).trim().to_string()
    };
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !running().is_empty() || !done() {
        assert!(
            std::time::Instant::now() < end,
            "left running: {}",
            running()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Start `run` (a `unionfs-driver run ... IMG` through runuser) with a
/// container that says it started, call `meanwhile`, then SIGKILL the
/// launcher.
fn kill_launcher_once_started(mut run: Command, meanwhile: impl FnOnce()) {
    run.args(["--", "/bin/sh", "-c", "echo started; exec sleep 1000"])
        .stdout(std::process::Stdio::piped());
    let mut child = run.spawn().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line, "started\n");
    meanwhile();
    signal_runusers_child(&child, nix::sys::signal::Signal::SIGKILL);
    let _ = child.wait();
}

/// Send `sig` to the program runuser runs (`runuser` itself would pass it
/// on and end by it).
fn signal_runusers_child(runuser: &std::process::Child, sig: nix::sys::signal::Signal) {
    let pg = Command::new("pgrep")
        .args(["-P", &runuser.id().to_string()])
        .output()
        .unwrap();
    let pid: i32 = String::from_utf8_lossy(&pg.stdout).trim().parse().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).unwrap();
}

#[track_caller]
fn ok_bytes(out: Output) -> Vec<u8> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[track_caller]
fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An image with files of three owners, as an OCI layout the user can read.
fn image(h: &Home) -> PathBuf {
    let tar = TarBuilder::new()
        .dir("etc/")
        .file_owned("etc/root-owned", b"r", 0, 0)
        .file_owned("etc/user-owned", b"u", 1000, 1000)
        .file_owned("etc/nobody-owned", b"n", 65534, 65534)
        .symlink_owned("etc/link", "user-owned", 1000, 1000)
        .device("etc/null", tar::EntryType::Char, 1, 3)
        .bytes();
    let layout = h.dir.join("layout");
    oci_layout(&layout, &[Layer::gz(tar)], "latest");
    let st = Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(&layout)
        .status()
        .unwrap();
    assert!(st.success());
    layout
}

/// Import the image as the user: the store's `etc` of its layer.
fn import(h: &Home) -> (String, PathBuf) {
    let layout = image(h);
    let out = ok(as_user(
        h,
        &["import", "--name", "img", layout.to_str().unwrap()],
    ));
    let top = out.split_whitespace().nth(1).unwrap().to_string();
    assert_eq!(ok(as_user(h, &["images"])), format!("img {top}\n"));
    // The store is the user's, under XDG_DATA_HOME.
    let store = h.dir.join("data/unionfs-driver");
    let etc = store
        .join("layers")
        .join(top.replace(':', "%3A"))
        .join("etc");
    (top, etc)
}

fn owner(p: &Path) -> (u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap();
    (m.uid(), m.gid())
}

fn need_newuidmap() {
    assert!(
        Path::new("/usr/bin/newuidmap").exists(),
        "rootless tests need newuidmap: apt-get install -y uidmap"
    );
}

#[test]
fn an_unprivileged_user_imports_with_the_images_owners_mapped() {
    need_root!();
    need_newuidmap();
    let (uid, gid, start) = user(USER, true);
    let start = start.unwrap();
    let h = home(USER, uid, gid);
    // Without CAP_SETUID/CAP_SETGID in the bounding set the setuid
    // newuidmap gets nothing from its bit: one line says so, and nothing is
    // made.
    let out = Command::new("setpriv")
        .args(["--reuid", USER, "--regid", USER, "--init-groups"])
        .args(["--bounding-set=-all", "--"])
        .arg(&h.cli)
        .arg("ls")
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", &h.dir)
        .env("XDG_DATA_HOME", h.dir.join("data"))
        .current_dir(&h.dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("newuidmap") && err.contains("bounding set"),
        "{err}"
    );
    assert!(!h.dir.join("data").exists());
    // Subordinate ids but no newuidmap: it works with the user's own id,
    // and a warning says why the others are not mapped.
    let out = user_cmd(&h, &h.cli)
        .arg("ls")
        .env("PATH", "/usr/sbin:/sbin")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("newuidmap/newgidmap are not on PATH") && err.lines().count() == 1,
        "{err}"
    );
    std::fs::remove_dir_all(h.dir.join("data")).unwrap();
    let (_, etc) = import(&h);
    assert_eq!(
        owner(&etc.join("root-owned")),
        (uid, gid),
        "root inside is the user"
    );
    assert_eq!(owner(&etc.join("user-owned")), (start + 999, start + 999));
    assert_eq!(
        owner(&etc.join("nobody-owned")),
        (start + 65533, start + 65533)
    );
    assert_eq!(owner(&h.dir.join("data/unionfs-driver")).0, uid);

    // apply-diff extracts in the namespace too, and diff gives the tar's
    // owners back (mapped ids on disk, the image's in the tar).
    ok(as_user(&h, &["create", "applied"]));
    let tar = TarBuilder::new()
        .dir("d/")
        .file_owned("d/theirs", b"t", 1000, 1001)
        .symlink_owned("d/link", "theirs", 65534, 65534)
        .bytes();
    let mut c = user_cmd(&h, &h.cli);
    c.args(["apply-diff", "applied"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), &tar).unwrap();
    ok(child.wait_with_output().unwrap());
    let layer = h.dir.join("data/unionfs-driver/layers/applied");
    assert_eq!(owner(&layer.join("d/theirs")), (start + 999, start + 1000));
    assert_eq!(owner(&layer.join("d/link")), (start + 65533, start + 65533));
    let out = ok_bytes(as_user(&h, &["diff", "applied"]));
    let mut owners: Vec<(String, u64, u64)> = tar::Archive::new(&out[..])
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let hd = e.header();
            (
                e.path().unwrap().display().to_string(),
                hd.uid().unwrap(),
                hd.gid().unwrap(),
            )
        })
        .collect();
    owners.sort();
    assert_eq!(
        owners,
        [
            ("d".to_string(), 0, 0),
            ("d/link".to_string(), 65534, 65534),
            ("d/theirs".to_string(), 1000, 1001),
        ]
    );

    // Refused input changes nothing and says so in one line.
    let out = as_user(&h, &["import", "/nonexistent"]);
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr)
            .trim_end()
            .lines()
            .count(),
        1
    );
}

#[test]
fn without_subordinate_ids_owners_are_recorded_and_diff_gives_them_back() {
    need_root!();
    let (uid, gid, _) = user(SOLO, false);
    let h = home(SOLO, uid, gid);
    let (top, etc) = import(&h);
    // Every file is the user's; the owners it could not give are in the xattr.
    for n in ["root-owned", "user-owned", "nobody-owned"] {
        assert_eq!(owner(&etc.join(n)), (uid, gid), "{n}");
    }
    let xattr = |n: &str| xattr_of(&etc.join(n), unionfs_driver::owners::XATTR);
    assert_eq!(
        xattr("root-owned"),
        None,
        "root inside is the user: nothing to record"
    );
    assert_eq!(
        xattr("user-owned"),
        Some(unionfs_driver::owners::encode(1000, 1000))
    );
    assert_eq!(
        xattr("nobody-owned"),
        Some(unionfs_driver::owners::encode(65534, 65534))
    );

    // The layer's tar has the image's owners again, and no xattr of ours.
    let out = as_user(&h, &["diff", &top]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut a = tar::Archive::new(&out.stdout[..]);
    let mut seen = Vec::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().display().to_string();
        let h = e.header();
        seen.push((path, h.uid().unwrap(), h.gid().unwrap()));
        if let Some(exts) = e.pax_extensions().unwrap() {
            for x in exts {
                assert!(!x.unwrap().key().unwrap().contains("rootlesscontainers"));
            }
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            ("etc".to_string(), 0, 0),
            ("etc/link".to_string(), 1000, 1000),
            ("etc/nobody-owned".to_string(), 65534, 65534),
            ("etc/null".to_string(), 0, 0),
            ("etc/root-owned".to_string(), 0, 0),
            ("etc/user-owned".to_string(), 1000, 1000),
        ],
        "a symlink's owner and a device node a user could not make come back"
    );
    // The device node is in the tar as the image had it.
    let mut a = tar::Archive::new(&out.stdout[..]);
    let null = a
        .entries()
        .unwrap()
        .map(|e| e.unwrap())
        .find(|e| e.path().unwrap().ends_with("null"))
        .unwrap();
    let hd = null.header();
    assert_eq!(hd.entry_type(), tar::EntryType::Char);
    assert_eq!(
        (hd.device_major().unwrap(), hd.device_minor().unwrap()),
        (Some(1), Some(3))
    );
    assert!(!etc.join("null").exists(), "no user can make a device node");
}

fn xattr_of(p: &Path, name: &str) -> Option<Vec<u8>> {
    let out = Command::new("getfattr")
        .args(["--only-values", "-n", name])
        .arg(p)
        .output()
        .unwrap();
    out.status.success().then_some(out.stdout)
}

/// FUSE for users: /dev/fuse is 0666 on Debian (udev's rule); a machine
/// without udev (a container) leaves it 0600, and is given the mode udev gives.
fn fuse_for_users() {
    use std::os::unix::fs::PermissionsExt;
    let m = std::fs::metadata("/dev/fuse").expect("/dev/fuse");
    if m.permissions().mode() & 0o006 != 0o006 {
        eprintln!(
            "/dev/fuse was {:o}: made 0666, as udev makes it",
            m.permissions().mode() & 0o777
        );
        std::fs::set_permissions("/dev/fuse", std::fs::Permissions::from_mode(0o666)).unwrap();
    }
}

/// A busybox image by scripts/mkimage.sh from a rootfs with files of several
/// owners (/data/theirs 1000:1000, /tmp 65534:65534), readable by the user.
fn busybox_image(h: &Home) -> PathBuf {
    let rootfs = busybox_rootfs(
        &h.dir.join("img"),
        &["sh", "id", "ls", "cat", "echo", "sleep"],
    );
    for d in ["proc", "sys", "dev"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::write(rootfs.join("data/theirs"), "t").unwrap();
    std::os::unix::fs::chown(rootfs.join("data/theirs"), Some(1000), Some(1000)).unwrap();
    std::os::unix::fs::chown(rootfs.join("tmp"), Some(65534), Some(65534)).unwrap();
    let layout = h.dir.join("layout");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/mkimage.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg(&layout)
        .arg("latest")
        .arg(&rootfs)
        .output();
    ok(out.unwrap());
    assert!(Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(&layout)
        .status()
        .unwrap()
        .success());
    layout
}

#[test]
fn an_unprivileged_user_runs_a_container_on_the_union() {
    need_root!();
    need_newuidmap();
    fuse_for_users();
    let (uid, gid, start) = user(USER, true);
    let start = start.unwrap();
    let h = home(USER, uid, gid);
    let layout = busybox_image(&h);
    // A host file only root may read, bound into the container.
    let secret = h.dir.join("secret");
    std::fs::write(&secret, "host secret").unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();

    let env_run = |args: &[&str]| as_user(&h, args);
    ok(env_run(&[
        "import",
        "--name",
        "img",
        layout.to_str().unwrap(),
    ]));
    let vol = format!("{}:/secret", secret.display());
    let script = "id -u; ls -n /data; ls -nd /tmp; echo mine > /written; echo theirs > /chowned; \
                  /bin/busybox chown 1000:1000 /chowned; cat /secret 2>&1 || echo unreadable";
    let out = env_run(&[
        "run", "--name", "c1", "-v", &vol, "img", "--", "/bin/sh", "-c", script,
    ]);
    let text = ok(out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "0", "root inside: {text}");
    let theirs = lines
        .iter()
        .find(|l| l.ends_with(" theirs"))
        .expect("ls -n /data");
    assert!(
        theirs.contains(" 1000 "),
        "the image's owner inside: {text}"
    );
    assert!(
        text.contains("Permission denied") && text.ends_with("unreadable\n"),
        "{text}"
    );
    assert!(!text.contains("host secret"));
    // The container's writes are in its layer, owned as the namespace maps them.
    let layer = h.dir.join("data/unionfs-driver/layers/c1");
    assert_eq!(
        std::fs::read_to_string(layer.join("written")).unwrap(),
        "mine\n"
    );
    assert_eq!(owner(&layer.join("written")), (uid, gid));
    assert_eq!(owner(&layer.join("chowned")), (start + 999, start + 999));
    ok(env_run(&["rm", "c1"]));
    assert!(!layer.exists());
    // Nothing of the user's is left running (the daemon ends once the
    // kernel lets go of its unmounted union).
    nothing_left(USER, || true);

    // The launcher killed: the container, its mount and its layer go too.
    let mut c = user_cmd(&h, &h.cli);
    c.args(["run", "--rm", "--name", "k1", "img"]);
    // Meanwhile the union's control socket is in the user's runtime
    // directory (root of the namespace is not root), the user's own.
    kill_launcher_once_started(c, || {
        let dir = h.dir.join("run/unionfs");
        let socks: Vec<std::fs::Metadata> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap())
            .filter(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
            .collect();
        assert_eq!(socks.len(), 1, "one union, one socket in {}", dir.display());
        assert_eq!(socks[0].uid(), uid);
    });
    let k1 = h.dir.join("data/unionfs-driver/layers/k1");
    nothing_left(USER, || !k1.exists());
    assert_eq!(
        std::fs::read_dir(h.dir.join("run/unionfs"))
            .unwrap()
            .count(),
        0,
        "the socket goes with the union"
    );

    // A host device is the host's node bound in; read-only is refused (only
    // a device cgroup could hold it to reading).
    let out = ok(env_run(&[
        "run",
        "--rm",
        "--device",
        "/dev/null:/dev/mynull",
        "img",
        "--",
        "/bin/sh",
        "-c",
        "echo x > /dev/mynull && cat /dev/mynull && echo written",
    ]));
    assert_eq!(out, "written\n");
    let out = env_run(&[
        "run",
        "--rm",
        "--device",
        "/dev/null:/dev/mynull:r",
        "img",
        "--",
        "/bin/true",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("read-only"), "{err}");

    // Limits need cgroup delegation; without it one line says so.
    let out = env_run(&["run", "--rm", "--pids", "10", "img", "--", "/bin/true"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("delegated to the user"), "{err}");
}

#[test]
fn an_unprivileged_user_runs_unionfs_run_on_its_own_rootfs() {
    need_root!();
    need_newuidmap();
    let (uid, gid, _) = user(USER, true);
    let h = home(USER, uid, gid);
    let run = h.dir.join("unionfs-run");
    std::fs::copy(RUN, &run).unwrap();
    let rootfs = busybox_rootfs(&h.dir, &["sh", "id", "cat"]);
    for d in ["proc", "sys", "dev"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    let st = Command::new("chown")
        .arg("-R")
        .arg(format!("{uid}:{gid}"))
        .arg(&rootfs)
        .status();
    assert!(st.unwrap().success());
    let out = user_cmd(&h, &run)
        .arg(&rootfs)
        .args(["--", "/bin/sh", "-c", "id -u; cat /proc/self/uid_map"])
        .output()
        .unwrap();
    let text = ok(out);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("0"), "{text}");
    let map: Vec<String> = lines
        .next()
        .unwrap()
        .split_whitespace()
        .map(String::from)
        .collect();
    assert_eq!(
        map,
        ["0", &uid.to_string(), "1"],
        "the user is root inside: {text}"
    );
}

#[test]
fn without_subordinate_ids_a_user_runs_a_container_too() {
    need_root!();
    fuse_for_users();
    let (uid, gid, _) = user(SOLO, false);
    let h = home(SOLO, uid, gid);
    let layout = busybox_image(&h);
    let run = |args: &[&str]| as_user(&h, args);
    ok(run(&["import", "--name", "img", layout.to_str().unwrap()]));
    let out = ok(run(&[
        "run",
        "--rm",
        "img",
        "--",
        "/bin/sh",
        "-c",
        "id -u; cat /data/theirs; echo w > /w && cat /w",
    ]));
    assert_eq!(out, "0\ntw\n");

    // The same walls as root's: Docker's capability set, no_new_privs,
    // seccomp, masked and read-only paths; mounting is refused.
    let script = "cat /proc/self/status; cat /proc/kcore | /bin/busybox wc -c; \
                  echo x > /proc/sys/kernel/hostname 2>&1 || echo ro-sys; \
                  /bin/busybox mount -t tmpfs t /tmp 2>&1 || echo no-mount";
    let out = ok(run(&["run", "--rm", "img", "--", "/bin/sh", "-c", script]));
    let field = |k: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_string())
    };
    assert_eq!(field("Seccomp:").as_deref(), Some("2"), "{out}");
    assert_eq!(field("NoNewPrivs:").as_deref(), Some("1"), "{out}");
    assert_eq!(
        field("CapEff:").as_deref(),
        Some("00000000a80425fb"),
        "Docker's default set: {out}"
    );
    assert!(out.contains("\n0\n"), "/proc/kcore masked: {out}");
    assert!(out.contains("ro-sys") && out.contains("no-mount"), "{out}");
}

#[test]
fn a_users_own_union_mounts_through_fusermount3_and_unionctl_and_snapmerge_reach_it() {
    need_root!();
    fuse_for_users();
    // Not USER: its other tests wait until it runs nothing, and this
    // union's daemon runs for the whole test.
    let (uid, gid, _) = user(SOLO, false);
    let h = home(SOLO, uid, gid);
    let unionctl = h.dir.join("unionctl");
    std::fs::copy(Path::new(CLI).with_file_name("unionctl"), &unionctl).unwrap();
    for d in ["rw", "ro", "mnt"] {
        std::fs::create_dir(h.dir.join(d)).unwrap();
        std::os::unix::fs::chown(h.dir.join(d), Some(uid), Some(gid)).unwrap();
    }
    std::fs::write(h.dir.join("ro/f"), "lower").unwrap();
    std::os::unix::fs::chown(h.dir.join("ro/f"), Some(uid), Some(gid)).unwrap();
    let mnt = h.dir.join("mnt");
    let spec = format!(
        "{}=rw:{}=ro",
        h.dir.join("rw").display(),
        h.dir.join("ro").display()
    );
    let out = user_cmd(&h, &h.dir.join("unionfs-mount"))
        .arg(&spec)
        .arg(&mnt)
        .output()
        .unwrap();
    ok(out);
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _u = Unmount(mnt.clone());
    let line = std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .find(|l| l.contains(mnt.to_str().unwrap()))
        .map(String::from)
        .expect("mounted");
    assert!(
        line.contains(&format!("user_id={uid}")),
        "the user's mount: {line}"
    );
    let listed = ok(user_cmd(&h, &unionctl)
        .arg(&mnt)
        .arg("--list")
        .output()
        .unwrap());
    assert_eq!(
        listed,
        format!("{}/rw (rw)\n{}/ro (ro)\n", h.dir.display(), h.dir.display())
    );
    // Only the user may use it (no allow_other): the user reads and writes.
    let out = user_cmd(&h, Path::new("/bin/sh"))
        .args([
            "-c",
            &format!("cat {0}/f; echo upper >> {0}/f", mnt.display()),
        ])
        .output()
        .unwrap();
    ok(out);
    assert_eq!(
        std::fs::read_to_string(h.dir.join("rw/f")).unwrap(),
        "lowerupper\n"
    );
    assert_eq!(owner(&h.dir.join("rw/f")), (uid, gid));

    // A snapshot of the user's union, and snapmerge asking its daemon: the
    // live read-write branch is refused, the frozen one takes the merge.
    let snapmerge = h.dir.join("snapmerge");
    std::fs::copy(Path::new(CLI).with_file_name("snapmerge"), &snapmerge).unwrap();
    for d in ["snap0", "empty"] {
        std::fs::create_dir(h.dir.join(d)).unwrap();
        std::os::unix::fs::chown(h.dir.join(d), Some(uid), Some(gid)).unwrap();
    }
    let snap0 = h.dir.join("snap0");
    ok(user_cmd(&h, &unionctl)
        .arg(&mnt)
        .arg("--snapshot")
        .arg(&snap0)
        .output()
        .unwrap());
    ok(user_cmd(&h, Path::new("/bin/sh"))
        .args(["-c", &format!("echo v2 > {}/f", mnt.display())])
        .output()
        .unwrap());
    assert_eq!(std::fs::read_to_string(snap0.join("f")).unwrap(), "v2\n");
    let out = user_cmd(&h, &snapmerge)
        .arg(&snap0)
        .arg(h.dir.join("empty"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("is a read-write branch of the live union at"),
        "{err}"
    );
    ok(user_cmd(&h, &snapmerge)
        .arg(h.dir.join("rw"))
        .arg(&snap0)
        .output()
        .unwrap());
    assert_eq!(std::fs::read_to_string(h.dir.join("rw/f")).unwrap(), "v2\n");
    assert_eq!(owner(&h.dir.join("rw/f")), (uid, gid));
}

/// A cgroup v2 directory under the hierarchy's root, for a test: removed
/// (its child directories first) when dropped.
struct TestCgroup(PathBuf);

impl TestCgroup {
    fn new(name: &str) -> TestCgroup {
        let root = v2_root();
        let dir = root.join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        TestCgroup(dir)
    }

    fn children(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap()
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for c in self.children() {
            let _ = std::fs::remove_dir(self.0.join(c));
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Where cgroup v2 is mounted (hybrid hosts too); a host without it fails
/// the test by name.
fn v2_root() -> PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info
        .lines()
        .find(|l| l.contains(" - cgroup2 "))
        .expect("a cgroup v2 hierarchy is mounted (these tests need one)");
    PathBuf::from(line.split(' ').nth(4).unwrap())
}

fn procs(cg: &Path) -> String {
    std::fs::read_to_string(cg.join("cgroup.procs")).unwrap()
}

#[test]
fn a_users_container_gets_a_cgroup_in_the_cgroup_delegated_to_it() {
    need_root!();
    fuse_for_users();
    let (uid, gid, _) = user(DELEG, false);
    let h = home(DELEG, uid, gid);
    let layout = busybox_image(&h);
    ok(as_user(
        &h,
        &["import", "--name", "img", layout.to_str().unwrap()],
    ));
    // Delegated as the kernel's cgroup-v2 guide says (and systemd does for
    // a Delegate=yes scope): the directory and these files owned by the user.
    let cg = TestCgroup::new("unionfs-test-delegated");
    for f in [
        "",
        "cgroup.procs",
        "cgroup.subtree_control",
        "cgroup.threads",
    ] {
        std::os::unix::fs::chown(cg.0.join(f), Some(uid), Some(gid)).unwrap();
    }
    let run = |args: &[&str]| {
        user_cmd_in(&h, &h.cli, Some(&cg.0))
            .args(args)
            .output()
            .unwrap()
    };
    let rel = cg.0.strip_prefix(v2_root()).unwrap().display().to_string();
    // The container's cgroup v2 path, as it sees it, run with `limits`.
    let cgroup_inside = |limits: &[&str]| {
        let mut args = vec!["run", "--rm"];
        args.extend_from_slice(limits);
        args.extend_from_slice(&["img", "--", "/bin/cat", "/proc/self/cgroup"]);
        let text = ok(run(&args));
        text.lines()
            .find_map(|l| l.strip_prefix("0::/"))
            .unwrap_or_else(|| panic!("{text}"))
            .to_string()
    };
    let own = cgroup_inside(&[]);
    assert!(
        own.starts_with(&format!("{rel}/unionfs-run-")),
        "the container is in a cgroup of its own in the delegated one: {own}"
    );
    // Its cgroup is gone after the run; the launcher waited in the leaf
    // (its container never starts in the delegated cgroup itself).
    let leaf = cg.0.join("unionfs-init");
    let settled = |what: &str| {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while cg.children() != ["unionfs-init"]
            || !procs(&cg.0).is_empty()
            || !procs(&leaf).is_empty()
        {
            assert!(
                std::time::Instant::now() < end,
                "{what}: {:?}, procs {:?} {:?}",
                cg.children(),
                procs(&cg.0),
                procs(&leaf)
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    settled("left after the run");

    // The launcher killed: its container's cgroup goes too. (The container
    // dies with its PID namespace anyway; the cgroup's removal is the point.)
    let mut c = user_cmd_in(&h, &h.cli, Some(&cg.0));
    c.args(["run", "--rm", "img"]);
    kill_launcher_once_started(c, || {});
    settled("left after a kill");

    // A limit whose controller the delegated cgroup lacks (here all three:
    // they are on cgroup v1): one line naming the controller and the
    // cgroup, nothing made. Where it has them all, the limit is set.
    let has = std::fs::read_to_string(cg.0.join("cgroup.controllers")).unwrap();
    let absent = [
        ("pids", "--pids", "10"),
        ("memory", "--memory", "64m"),
        ("cpu", "--cpus", "1"),
    ]
    .into_iter()
    .find(|(c, _, _)| !has.split_whitespace().any(|h| h == *c));
    match absent {
        Some((ctrl, flag, value)) => {
            let out = run(&["run", "--rm", flag, value, "img", "--", "/bin/true"]);
            assert!(!out.status.success());
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(err.trim_end().lines().count(), 1, "{err}");
            assert!(
                err.contains(&format!("{flag} needs the {ctrl} controller")) && err.contains(&rel),
                "{err}"
            );
            settled("left after a refusal");
        }
        None => {
            let own = cgroup_inside(&["--pids", "10"]);
            eprintln!("limits applied in the delegated cgroup: {own}");
            let on = std::fs::read_to_string(cg.0.join("cgroup.subtree_control")).unwrap();
            assert!(on.split_whitespace().any(|c| c == "pids"), "{on}");
        }
    }
}

/// cgroup v2's rule that a cgroup handing controllers down holds no process
/// (the kernel answers EBUSY), met by moving its processes into a leaf, with
/// whichever controller this host's cgroup v2 root has free.
#[test]
fn enabling_controllers_moves_a_delegated_cgroups_processes_into_a_leaf() {
    need_root!();
    let root = v2_root();
    let free = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap();
    let ctrl = free
        .split_whitespace()
        .next()
        .expect("a controller free for cgroup v2 on this host (all are on v1)")
        .to_string();
    /// Undoes the test's changes whatever happens: the sleeper killed, the
    /// controller off in the test cgroup, its directories removed, then the
    /// controller off at the root if the test turned it on.
    struct Undo {
        sleeper: std::process::Child,
        cg: Option<TestCgroup>,
        root: PathBuf,
        ctrl: String,
        enabled_here: bool,
    }
    impl Drop for Undo {
        fn drop(&mut self) {
            let _ = self.sleeper.kill();
            let _ = self.sleeper.wait();
            if let Some(cg) = self.cg.take() {
                let off = format!("-{}", self.ctrl);
                let _ = std::fs::write(cg.0.join("cgroup.subtree_control"), off);
            }
            if self.enabled_here {
                let off = format!("-{}", self.ctrl);
                let _ = std::fs::write(self.root.join("cgroup.subtree_control"), off);
            }
        }
    }
    let root_on = std::fs::read_to_string(root.join("cgroup.subtree_control")).unwrap();
    let enabled_here = !root_on.split_whitespace().any(|c| c == ctrl);
    if enabled_here {
        std::fs::write(root.join("cgroup.subtree_control"), format!("+{ctrl}")).unwrap();
    }
    let mut undo = Undo {
        sleeper: Command::new("sleep").arg("1000").spawn().unwrap(),
        cg: Some(TestCgroup::new("unionfs-test-enable")),
        root: root.clone(),
        ctrl: ctrl.clone(),
        enabled_here,
    };
    let cg = undo.cg.as_ref().unwrap().0.clone();
    let sleeper = undo.sleeper.id();
    std::fs::write(cg.join("cgroup.procs"), sleeper.to_string()).unwrap();
    // Not without the move: the kernel's rule itself.
    let e = std::fs::write(cg.join("cgroup.subtree_control"), format!("+{ctrl}")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(nix::libc::EBUSY), "{e}");

    unionfs_driver::launch::cgroup::enable(&cg, &[&ctrl]).unwrap();
    let moved = std::fs::read_to_string(format!("/proc/{sleeper}/cgroup")).unwrap();
    let rel = cg.strip_prefix(&root).unwrap().display().to_string();
    assert!(
        moved.contains(&format!("0::/{rel}/unionfs-init\n")),
        "{moved}"
    );
    let on = std::fs::read_to_string(cg.join("cgroup.subtree_control")).unwrap();
    assert_eq!(on.trim(), ctrl);
    assert_eq!(procs(&cg), "");
    // A container's cgroup beside the leaf has the controller; asking again
    // changes nothing.
    std::fs::create_dir(cg.join("c")).unwrap();
    let has = std::fs::read_to_string(cg.join("c/cgroup.controllers")).unwrap();
    assert_eq!(has.trim(), ctrl);
    unionfs_driver::launch::cgroup::enable(&cg, &[&ctrl]).unwrap();
    assert_eq!(undo.cg.as_ref().unwrap().children(), ["c", "unionfs-init"]);
    // The sleeper gone, the directories can go (Undo, in its order).
    let _ = undo.sleeper.kill();
    let _ = undo.sleeper.wait();
}

/// A user's snapshotter as rootless containerd runs one (rootlesskit's
/// user namespace, where the user is root and its subordinate ids the
/// others, and a mount namespace of its own; the snapshotter started there,
/// as uid 0 of that namespace): containerd's conformance suite passes, the
/// union mounted by mount.fuse3 in the namespace; a real containerd there
/// imports an image through it with the image's owners mapped; started by
/// the user, it serves on a socket in the user's runtime directory.
#[test]
fn a_users_snapshotter_serves_containerd_in_the_users_namespace() {
    if !common::containerd::containerd_ready() {
        return;
    }
    need_newuidmap();
    fuse_for_users();
    let (uid, gid, start) = user(CTRD, true);
    let h = home(CTRD, uid, gid);
    let suite = h.dir.join("containerd-go.test");
    std::fs::copy(common::containerd::go_tests(), &suite).unwrap();
    let tmp = h.dir.join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    std::os::unix::fs::chown(&tmp, Some(uid), Some(gid)).unwrap();
    let ids = format!("{},1,65536", start.unwrap());
    let out = user_cmd(&h, Path::new("/usr/bin/unshare"))
        .args(["--user", "--map-root-user", "--mount"])
        .arg(format!("--map-users={ids}"))
        .arg(format!("--map-groups={ids}"))
        .args([
            "--",
            "/bin/sh",
            "-c",
            "cat /proc/self/uid_map && exec \"$0\" \"$@\"",
        ])
        .arg(&suite)
        .args([
            "-test.root",
            "-test.v",
            "-test.run",
            "TestUnionfsSnapshotter",
        ])
        .env(
            "PATH",
            format!("{}:/usr/bin:/bin:/usr/sbin:/sbin", h.dir.display()),
        )
        .env("TMPDIR", &tmp)
        .env("UNIONFS_DRIVER", &h.cli)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let map: Vec<Vec<&str>> = text
        .lines()
        .take(2)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        map,
        [
            vec!["0", &uid.to_string(), "1"],
            vec!["1", &start.unwrap().to_string(), "65536"]
        ],
        "the suite runs as root of the user's namespace: {text}"
    );
    let passed = text.matches("--- PASS: TestUnionfsSnapshotter/").count();
    assert!(
        out.status.success() && passed >= 20 && !text.contains("--- FAIL"),
        "conformance suite in the user's namespace ({passed} passed):\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("conformance in a user namespace: {passed} passed");

    // containerd and the snapshotter in one user namespace, with a PID
    // namespace so that both end with the script; /run a tmpfs of its own,
    // as rootlesskit gives containerd. The snapshotter's store and socket
    // are its defaults for a user.
    let d = h.dir.display();
    let sock = h.dir.join("run/unionfs-driver/snapshotter.sock");
    let config = format!(
        "version = 2\nroot = \"{d}/croot\"\nstate = \"{d}/cstate\"\n\
         disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
         [grpc]\n  address = \"{d}/c.sock\"\n[ttrpc]\n  address = \"{d}/c.sock.ttrpc\"\n\
         [proxy_plugins.unionfs]\n  type = \"snapshot\"\n  address = \"{}\"\n",
        sock.display()
    );
    std::fs::write(h.dir.join("config.toml"), config).unwrap();
    let layout = busybox_image(&h);
    let st = Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(h.dir.join("img.tar"))
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::set_permissions(
        h.dir.join("img.tar"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let script = r#"set -e
        D="$0"; S="$1"
        mount -t tmpfs none /run
        unionfs-driver snapshotter 2> "$D/sn.log" &
        containerd --config "$D/config.toml" > "$D/c.log" 2>&1 &
        i=0
        until [ -S "$D/c.sock" ] && [ -S "$S" ]; do
            i=$((i+1)); [ $i -lt 600 ] || { echo "no sockets: $(cat "$D/sn.log" "$D/c.log")"; exit 1; }
            sleep 0.05
        done
        ctr -a "$D/c.sock" images import --snapshotter unionfs --index-name img:1 "$D/img.tar"
        ctr -a "$D/c.sock" snapshots --snapshotter unionfs ls
        # No cgroup: runc cannot make one for a user on cgroup v1.
        ctr -a "$D/c.sock" run --cgroup "" --cpu-shares 0 --snapshotter unionfs img:1 c1 \
            /bin/sh -c 'id -u; ls -n /data; echo hi > /written; cat /proc/self/mounts'"#;
    let out = user_cmd(&h, Path::new("/usr/bin/unshare"))
        .args([
            "--user",
            "--map-root-user",
            "--mount",
            "--pid",
            "--mount-proc",
        ])
        .args(["--fork", "--kill-child"])
        .arg(format!("--map-users={ids}"))
        .arg(format!("--map-groups={ids}"))
        .args(["--", "/bin/sh", "-c", script])
        .arg(&h.dir)
        .arg(&sock)
        .env(
            "PATH",
            format!("{}:/usr/bin:/bin:/usr/sbin:/sbin", h.dir.display()),
        )
        .output()
        .unwrap();
    let text = ok(out);
    assert!(text.contains("unpacking img:1"), "{text}");
    let committed: Vec<&str> = text.lines().filter(|l| l.contains(" Committed")).collect();
    assert_eq!(committed.len(), 1, "one layer, committed: {text}");
    let chain = committed[0].split_whitespace().next().unwrap();
    let layer = h
        .dir
        .join("data/unionfs-driver/layers")
        .join(chain.replace(':', "%3A"));
    assert_eq!(owner(&layer.join("bin/busybox")), (uid, gid), "{text}");
    assert_eq!(
        owner(&layer.join("data/theirs")),
        (start.unwrap() + 999, start.unwrap() + 999),
        "the image's owner, mapped"
    );
    // The container: root inside, the image's owners, its root the union,
    // its write in its snapshot's layer owned by the user outside.
    assert!(text.contains("\n0\n"), "uid 0 inside: {text}");
    assert!(
        text.lines()
            .any(|l| l.ends_with(" theirs") && l.contains(" 1000 ")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("unionfs / fuse.unionfs-mount ")),
        "{text}"
    );
    let layers = h.dir.join("data/unionfs-driver/layers");
    let written: Vec<PathBuf> = std::fs::read_dir(&layers)
        .unwrap()
        .map(|e| e.unwrap().path().join("written"))
        .filter(|p| p.exists())
        .collect();
    assert_eq!(written.len(), 1, "in the active snapshot's layer: {text}");
    assert_eq!(std::fs::read_to_string(&written[0]).unwrap(), "hi\n");
    assert_eq!(owner(&written[0]), (uid, gid));
    // The PID namespace's end takes everything in it (the kernel kills
    // them after its init, so they may take a moment).
    nothing_left(CTRD, || true);

    // Started by the user directly, it enters a namespace of its own and
    // serves on a socket in the user's runtime directory by default.
    let mut sn = user_cmd(&h, &h.cli)
        .arg("snapshotter")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(sn.stderr.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let sock = h.dir.join("run/unionfs-driver/snapshotter.sock");
    let listening = std::fs::symlink_metadata(&sock);
    signal_runusers_child(&sn, nix::sys::signal::Signal::SIGTERM);
    let status = sn.wait().unwrap();
    assert!(
        line.contains(&format!(
            "serving containerd's snapshots API on {}",
            sock.display()
        )),
        "{line}"
    );
    let m = listening.unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()));
    assert_eq!(m.mode() & 0o777, 0o600);
    assert_eq!(m.uid(), uid);
    assert!(status.success(), "{status}");
}
