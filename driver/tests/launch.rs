//! The launcher on a rootfs built from busybox-static, and `unionfs-driver
//! run` on an imported image: isolation, identity, capabilities, limits,
//! exit statuses, signals, no leftovers.

mod common;
use common::*;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn rootfs(at: &Path) -> PathBuf {
    busybox_rootfs(
        at,
        &[
            "sh", "ls", "cat", "echo", "id", "hostname", "sleep", "ps", "grep", "wc",
        ],
    )
}

fn run(args: &[&str], root: &Path, script: &str) -> Output {
    run_script(args, root, script)
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn pid1_hostname_env_workdir_user() {
    need_root!();
    let e = Env::new();
    let r = rootfs(e.tmp.path());
    let o = run(
        &[
            "--hostname",
            "box",
            "-e",
            "A=1",
            "-e",
            "B=two words",
            "-w",
            "/tmp",
            "-u",
            "1000:1001",
        ],
        &r,
        "echo $$; hostname; echo $A; echo $B; pwd; id -u; id -g; echo $HOSTNAME",
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(out(&o), "1\nbox\n1\ntwo words\n/tmp\n1000\n1001\nbox\n");
    assert_ne!(
        fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap()
            .trim(),
        "box",
        "the host hostname changed"
    );
}

#[test]
fn the_root_and_proc_are_the_containers() {
    need_root!();
    let e = Env::new();
    let r = rootfs(e.tmp.path());
    fs::write(e.path("host-only"), "x").unwrap();
    let o = run(
        &[],
        &r,
        "ls /; echo; ls -d /proc/[0-9]*; echo; cat /proc/1/cmdline | tr '\\0' ' '",
    );
    let text = out(&o);
    let mut parts = text.split("\n\n");
    assert_eq!(parts.next().unwrap(), "bin\ndata\ndev\netc\nproc\nsys\ntmp");
    let pids = parts.next().unwrap();
    assert!(
        pids.lines().count() <= 3 && pids.contains("/proc/1"),
        "{pids}"
    );
    assert!(parts.next().unwrap().starts_with("/bin/sh -c"));
    let o = run(&[], &r, "echo x > /proc/sys/kernel/hostname; echo $?; echo x > /sys/kernel/test 2>/dev/null; echo $?; ls /dev | tr '\\n' ' '");
    let t = out(&o);
    assert!(
        t.starts_with("1\n1\n"),
        "{t}: /proc/sys or /sys is writable"
    );
    assert!(
        t.contains("full null ptmx pts random shm") && t.contains("tty urandom zero"),
        "{t}"
    );
}

#[test]
fn capabilities_no_new_privs_and_fds() {
    need_root!();
    let e = Env::new();
    let r = rootfs(e.tmp.path());
    // an fd the launcher inherits must not reach the command
    let f = fs::File::open("/etc/hostname").unwrap();
    let inherited = nix::unistd::dup(&f).unwrap();
    // exec: ls itself shows its fds, 3 being the one it reads /proc/self/fd with
    let o = run(&[], &r, "grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs)' /proc/$$/status; exec ls /proc/self/fd");
    drop(inherited);
    assert_eq!(
        out(&o),
        "CapInh:\t0000000000000000\nCapPrm:\t00000000a80425fb\nCapEff:\t00000000a80425fb\n\
         CapBnd:\t00000000a80425fb\nCapAmb:\t0000000000000000\nNoNewPrivs:\t1\n0\n1\n2\n3\n"
    );
    // a non-root user has no effective capabilities
    let o = run(&["-u", "1000"], &r, "grep CapEff /proc/$$/status");
    assert_eq!(out(&o), "CapEff:\t0000000000000000\n");
}

#[test]
fn volumes_and_read_only_root() {
    need_root!();
    let e = Env::new();
    let r = rootfs(e.tmp.path());
    let vol = e.path("vol");
    fs::create_dir(&vol).unwrap();
    fs::write(vol.join("f"), "host data").unwrap();
    let ro = format!("{}:/data:ro", vol.display());
    let o = run(
        &["-v", &ro],
        &r,
        "cat /data/f; echo; echo x > /data/new; echo $?",
    );
    assert_eq!(out(&o), "host data\n1\n");
    assert!(String::from_utf8_lossy(&o.stderr).contains("Read-only file system"));
    assert!(!vol.join("new").exists());
    let rw = format!("{}:/mnt/inside", vol.display());
    let o = run(
        &["-v", &rw],
        &r,
        "echo from container > /mnt/inside/new; echo $?",
    );
    assert_eq!(out(&o), "0\n");
    assert_eq!(
        fs::read_to_string(vol.join("new")).unwrap(),
        "from container\n"
    );
    let o = run(&["--read-only"], &r, "echo x > /tmp/x; echo $?");
    assert_eq!(out(&o), "1\n");
    assert!(!r.join("tmp/x").exists());
    let o = Command::new(RUN)
        .args(["-v", "nocolon"])
        .arg(&r)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn network_is_loopback_only_by_default() {
    need_root!();
    let e = Env::new();
    let r = rootfs(e.tmp.path());
    let o = run(&[], &r, "cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '; cat /sys/class/net/lo/operstate 2>/dev/null; grep -c . /proc/net/dev");
    let t = out(&o);
    assert!(t.starts_with("lo\n"), "{t}");
    assert!(t.ends_with("3\n"), "more than loopback: {t}");
    let o = run(&["--net", "host"], &r, "grep -c . /proc/net/dev");
    let n: u32 = out(&o).trim().parse().unwrap();
    let host = fs::read_to_string("/proc/net/dev").unwrap().lines().count() as u32;
    assert_eq!(n, host);
}

#[test]
fn memory_and_pids_limits() {
    need_root!();
    let e = Env::new();
    let r = rootfs(e.tmp.path());
    let o = run(
        &["--memory", "16m"],
        &r,
        "x=aaaaaaaaaaaaaaaa; while true; do x=$x$x; done",
    );
    assert_eq!(
        o.status.code(),
        Some(137),
        "an over-allocating process was not killed"
    );
    let flood = "n=0; while [ $n -lt 40 ]; do sleep 1 & n=$((n+1)); done; echo started $n";
    let o = run(&["--pids", "10"], &r, flood);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("can't fork"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = run(&[], &r, flood);
    assert_eq!(out(&o), "started 40\n");
    let o = run(&["--cpus", "0.5"], &r, "echo ok");
    assert_eq!(out(&o), "ok\n");
    assert_eq!(
        Command::new(RUN)
            .args(["--memory", "lots"])
            .arg(&r)
            .output()
            .unwrap()
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn exit_statuses() {
    need_root!();
    let e = Env::new();
    let r = rootfs(e.tmp.path());
    assert_eq!(run(&[], &r, "exit 7").status.code(), Some(7));
    let o = Command::new(RUN)
        .arg(&r)
        .args(["--", "nosuchcommand"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(127));
    assert!(String::from_utf8_lossy(&o.stderr).contains("nosuchcommand: command not found"));
    let o = Command::new(RUN)
        .arg(&r)
        .args(["--", "/etc/passwd"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(126));
    let o = Command::new(RUN)
        .arg(e.path("missing"))
        .args(["--", "/bin/sh"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(125));
    let o = run(&["-w", "/nope"], &r, "true");
    assert_eq!(o.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&o.stderr).contains("entering the working directory"));
}

#[test]
fn signals_reach_the_container() {
    need_root!();
    let e = Env::new();
    let r = rootfs(e.tmp.path());
    let child = Command::new(RUN)
        .arg(&r)
        .args([
            "--",
            "/bin/sh",
            "-c",
            "trap 'echo got TERM; exit 42' TERM; echo ready; while true; do sleep 0.1; done",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(42));
    assert_eq!(out(&o), "ready\ngot TERM\n");
}

/// The cgroups a launcher with this pid made (tests run in parallel: look at
/// one launcher's own only).
fn cgroups_of(pid: u32) -> Vec<String> {
    let name = format!("unionfs-run-{pid}");
    let mut v = Vec::new();
    for base in ["/sys/fs/cgroup"] {
        if let Ok(o) = Command::new("find")
            .args([base, "-maxdepth", "5", "-name", &name])
            .output()
        {
            v.extend(String::from_utf8_lossy(&o.stdout).lines().map(String::from));
        }
    }
    v
}

/// Kills the child if a test fails before it does.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A number for a sleep no other run of these tests uses.
fn unique_secs() -> String {
    (100_000 + std::process::id() % 100_000).to_string()
}

/// Processes whose whole command line is `cmdline` (NUL-separated).
fn processes_exact(cmdline: &str) -> usize {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            fs::read(e.path().join("cmdline"))
                .map(|c| c == cmdline.as_bytes())
                .unwrap_or(false)
        })
        .count()
}

#[test]
fn nothing_is_left_after_exit_or_sigkill() {
    need_root!();
    let e = Env::new();
    let r = rootfs(e.tmp.path());
    // Other tests mount at the same time: look for this rootfs only.
    let rootfs_mounted = || {
        fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(r.to_str().unwrap())
    };
    let child = Command::new(RUN)
        .args(["--memory", "64m", "--pids", "50"])
        .arg(&r)
        .args(["--", "/bin/sh", "-c", "true"])
        .spawn()
        .unwrap();
    let pid = child.id();
    assert!(child.wait_with_output().unwrap().status.success());
    assert!(
        cgroups_of(pid).is_empty(),
        "cgroup left: {:?}",
        cgroups_of(pid)
    );
    assert!(!rootfs_mounted(), "a mount of the container was left");
    let secs = unique_secs();
    // The container's sleep: its command line is exactly this.
    let marker = format!("/bin/sleep\u{0}{secs}\u{0}");
    let mut child = KillOnDrop(
        Command::new(RUN)
            .args(["--memory", "64m", "--pids", "50"])
            .arg(&r)
            .args(["--", "/bin/sleep", &secs])
            .process_group(0)
            .spawn()
            .unwrap(),
    );
    let pid = child.0.id();
    let start = Instant::now();
    while processes_exact(&marker) == 0 && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !cgroups_of(pid).is_empty(),
        "no cgroup was made for the limits"
    );
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    let start = Instant::now();
    while (processes_exact(&marker) > 0 || !cgroups_of(pid).is_empty())
        && start.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        processes_exact(&marker),
        0,
        "the container outlived its launcher"
    );
    assert!(
        cgroups_of(pid).is_empty(),
        "a cgroup was left behind: {:?}",
        cgroups_of(pid)
    );
    assert!(!rootfs_mounted());
}

#[test]
fn a_symlinked_dev_or_proc_never_touches_the_host() {
    need_root!();
    let e = Env::new();
    let r = rootfs(e.tmp.path());
    let host = e.path("hostdir");
    fs::create_dir(&host).unwrap();
    std::os::unix::fs::symlink(&host, r.join("dev")).unwrap();
    let o = run(&[], &r, "true");
    assert_eq!(o.status.code(), Some(125));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("mounting /dev") && err.contains("symlink"),
        "{err}"
    );
    assert!(
        ls(&host).is_empty(),
        "the launcher wrote into the host directory"
    );
    fs::remove_file(r.join("dev")).unwrap();
    // the failed run made the /proc mount point, as runc does
    let _ = fs::remove_dir(r.join("proc"));
    std::os::unix::fs::symlink(&host, r.join("proc")).unwrap();
    let o = run(&[], &r, "true");
    assert_eq!(o.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&o.stderr).contains("mounting /proc"));
    assert!(ls(&host).is_empty());
    assert!(!fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .contains(host.to_str().unwrap()));
}

fn import_busybox(e: &Env) {
    let app = TarBuilder::new().file("etc/motd", b"welcome\n").bytes();
    oci_layout(
        &e.path("oci"),
        &[Layer::gz(busybox_layer()), Layer::gz(app)],
        "latest",
    );
    e.ok(&["import", "--name", "bb", e.path("oci").to_str().unwrap()]);
}

#[test]
fn driver_run_uses_the_image_config_and_cleans_up() {
    need_root!();
    let e = Env::new();
    import_busybox(&e);
    let layers = e.ok(&["ls"]);
    // --rm: nothing stays
    let o = e.run(&[
        "run",
        "--rm",
        "bb",
        "--",
        "/bin/sh",
        "-c",
        "cat /etc/motd; echo $GREETING; pwd; echo made > /made",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(out(&o), "welcome\nhello\n/tmp\n");
    assert_eq!(e.ok(&["ls"]), layers);
    // the image's Cmd (/bin/sh) is the default command
    let mut child = e
        .cmd(&["run", "--rm", "bb"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"echo from the default command\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(out(&o), "from the default command\n");
    // without --rm the container layer stays for changes and commit
    let o = e.run(&[
        "run",
        "--name",
        "c1",
        "-e",
        "GREETING=hi",
        "bb",
        "--",
        "/bin/sh",
        "-c",
        "echo $GREETING > /result; exit 3",
    ]);
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(e.ok(&["changes", "c1"]), "A /result\n");
    assert!(e.ok(&["ls"]).contains("c1 "));
    assert!(!unionfs_driver::layer::is_mounted(
        &e.root.join("mounts/c1")
    ));
    e.ok(&["commit", "c1", "bb2"]);
    let o = e.run(&["run", "--rm", "bb2", "--", "/bin/cat", "/result"]);
    assert_eq!(out(&o), "hi\n");
    assert_eq!(
        e.run(&["run", "--rm", "bb", "--", "nosuch"]).status.code(),
        Some(127)
    );
}

#[test]
fn a_killed_driver_run_leaves_no_mount_or_layer() {
    need_root!();
    let e = Env::new();
    import_busybox(&e);
    let layers = e.ok(&["ls"]);
    // As root and as another user: a change of identity must not cut the
    // container loose from its launcher.
    for (i, user) in [None, Some("1000:1000")].into_iter().enumerate() {
        let secs = (unique_secs().parse::<u64>().unwrap() + i as u64 * 7).to_string();
        let marker = format!("/bin/sleep\u{0}{secs}\u{0}");
        let name = format!("doomed{i}");
        let mut args = vec!["run", "--rm", "--name", &name];
        if let Some(u) = user {
            args.extend(["-u", u]);
        }
        args.extend(["bb", "--", "/bin/sleep", &secs]);
        let mut child = KillOnDrop(e.cmd(&args).process_group(0).spawn().unwrap());
        let pid = child.0.id();
        let start = Instant::now();
        while processes_exact(&marker) == 0 && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(
            processes_exact(&marker),
            1,
            "{user:?}: the container did not start"
        );
        child.0.kill().unwrap();
        child.0.wait().unwrap();
        let mnt = e.root.join(format!("mounts/{name}"));
        let start = Instant::now();
        while (unionfs_driver::layer::is_mounted(&mnt)
            || e.ok(&["ls"]) != layers
            || processes_exact(&marker) > 0
            || !cgroups_of(pid).is_empty())
            && start.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(
            processes_exact(&marker),
            0,
            "{user:?}: the container outlived its launcher"
        );
        assert!(
            cgroups_of(pid).is_empty(),
            "{user:?}: cgroup left: {:?}",
            cgroups_of(pid)
        );
        assert!(
            !unionfs_driver::layer::is_mounted(&mnt),
            "{user:?}: the container's mount was left"
        );
        assert_eq!(
            e.ok(&["ls"]),
            layers,
            "{user:?}: the --rm container layer was left"
        );
    }
}

#[test]
fn a_limit_the_kernel_refuses_leaves_no_cgroup() {
    need_root!();
    let e = Env::new();
    let r = rootfs(e.tmp.path());
    // A quota of 0 us: the kernel says EINVAL.
    let child = Command::new(RUN)
        .args(["--memory", "64m", "--cpus", "0.000001"])
        .arg(&r)
        .args(["--", "/bin/sh", "-c", "echo ran"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(125));
    assert!(out(&o).is_empty());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("cgroup") && err.contains("cpu"), "{err}");
    assert!(
        cgroups_of(pid).is_empty(),
        "cgroup left: {:?}",
        cgroups_of(pid)
    );
}

#[test]
fn a_read_only_volume_keeps_the_host_mounts_flags() {
    need_root!();
    let e = Env::new();
    let r = rootfs(e.tmp.path());
    let src = e.path("locked");
    fs::create_dir(&src).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "nosuid,nodev,noexec", "tmpfs"])
        .arg(&src)
        .status()
        .unwrap();
    assert!(ok.success());
    let vol = format!("{}:/data:ro", src.display());
    let o = run(&["-v", &vol], &r, "grep ' /data ' /proc/self/mountinfo");
    let _ = Command::new("umount").arg(&src).status();
    let line = out(&o);
    let opts = line
        .split_whitespace()
        .nth(5)
        .unwrap_or_default()
        .to_string();
    for f in ["ro", "nosuid", "nodev", "noexec"] {
        assert!(opts.split(',').any(|o| o == f), "{f} missing: {line}");
    }
}
