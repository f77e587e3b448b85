//! The container's walls, tried from inside as an attacker would: host
//! devices (made with mknod, or brought in by an image layer), the keyrings
//! and the syscalls that seccomp keeps out; and the walls' settings
//! (`--device`, `--security-opt seccomp=`).

mod common;
use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A busybox rootfs with the probes of tests/probe/ (built static).
fn rootfs(at: &Path) -> PathBuf {
    let r = busybox_rootfs(
        at,
        &["sh", "cat", "head", "mknod", "echo", "grep", "wc", "mkdir"],
    );
    for probe in ["keys", "tiocsti"] {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/probe/{probe}.c"));
        let cc = Command::new("gcc")
            .args(["-static", "-O1", "-o"])
            .arg(r.join("bin").join(probe))
            .arg(&src)
            .output()
            .expect("gcc (with libc6-dev) builds the probes");
        assert!(
            cc.status.success(),
            "{}",
            String::from_utf8_lossy(&cc.stderr)
        );
    }
    r
}

fn run(args: &[&str], root: &Path, script: &str) -> Output {
    run_script(args, root, script)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn host_block_devices_are_out_of_reach() {
    need_root!();
    let e = Env::new();
    let r = rootfs(e.tmp.path());
    let lo = Loop::new("supersecret");
    let n = lo.minor;
    // A node in the launcher's /dev: made, but neither read nor written.
    let o = run(
        &[],
        &r,
        &format!("mknod /dev/x b 7 {n} && head -c 11 /dev/x; echo pwned > /dev/x; echo done"),
    );
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    assert!(!out.contains("supersecret"), "{out}");
    assert!(out.contains("done"), "{out} {err}");
    assert_eq!(err.matches("Operation not permitted").count(), 2, "{err}");
    // On the rootfs (nodev) not even that far.
    let o = run(
        &[],
        &r,
        &format!("mknod /tmp/y b 7 {n} && head -c 11 /tmp/y"),
    );
    assert!(!text(&o.stdout).contains("supersecret"));
    assert!(
        text(&o.stderr).contains("Permission denied"),
        "{}",
        text(&o.stderr)
    );
    assert!(fs::read(&lo.dev).unwrap().starts_with(b"supersecret"));
    // The default set works.
    let o = run(
        &[],
        &r,
        "echo x > /dev/null && head -c 3 /dev/urandom | wc -c",
    );
    assert_eq!(text(&o.stdout).trim(), "3", "{}", text(&o.stderr));
    // And a device given on purpose is usable: the allowlist is what stopped it.
    let dev = lo.dev.display().to_string();
    let o = run(&["--device", &dev], &r, &format!("head -c 11 {dev}"));
    assert_eq!(text(&o.stdout), "supersecret", "{}", text(&o.stderr));
    let o = Command::new(RUN)
        .args(["--device", "/etc/passwd"])
        .arg(&r)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("not a character or block device"));
}

#[test]
fn device_nodes_in_an_image_are_unusable() {
    need_root!();
    let e = Env::new();
    let lo = Loop::new("imagesecret");
    let layer = TarBuilder::new()
        .device("disk", tar::EntryType::Block, 7, lo.minor)
        .bytes();
    oci_layout(
        &e.path("oci"),
        &[Layer::gz(busybox_layer()), Layer::gz(layer)],
        "latest",
    );
    e.ok(&["import", "--name", "dev", e.path("oci").to_str().unwrap()]);
    let o = e.run(&["run", "--rm", "dev", "--", "/bin/cat", "/disk"]);
    assert!(!text(&o.stdout).contains("imagesecret"));
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("Permission denied"),
        "{}",
        text(&o.stderr)
    );
}

/// A cgroup v2 directory for this test (on a v1 host, the unified hierarchy).
fn cgroup2_dir() -> PathBuf {
    let mounts = unionfs::mountinfo::read().unwrap();
    let m = mounts
        .iter()
        .find(|m| m.fstype == "cgroup2")
        .expect("a cgroup2 hierarchy is mounted (the device program needs one)");
    let d = m
        .mount_point
        .join(format!("unionfs-devtest-{}", std::process::id()));
    fs::create_dir(&d).unwrap();
    d
}

#[test]
fn the_device_program_guards_a_cgroup_v2() {
    need_root!();
    use unionfs_driver::launch::{cgroup, devices};
    let lo = Loop::new("bpfsecret");
    let dir = cgroup2_dir();
    cgroup::attach_device_program(&dir, &devices::DEFAULT).unwrap();
    // A shell moves itself into the cgroup, then reads.
    let inside = |what: &str| {
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec head -c 9 {what}",
                dir.display()
            ))
            .output()
            .unwrap()
    };
    let o = inside(&lo.dev.display().to_string());
    let _ = fs::remove_dir(&dir);
    assert!(!text(&o.stdout).contains("bpfsecret"));
    assert!(
        text(&o.stderr).contains("Operation not permitted"),
        "{}",
        text(&o.stderr)
    );
    let dir2 = cgroup2_dir();
    cgroup::attach_device_program(&dir2, &devices::DEFAULT).unwrap();
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec head -c 4 /dev/zero",
            dir2.display()
        ))
        .output()
        .unwrap();
    let _ = fs::remove_dir(&dir2);
    assert_eq!(o.stdout, vec![0u8; 4], "{}", text(&o.stderr));
}

/// The probe's lines as (call, result).
fn probe(args: &[&str], r: &Path) -> Vec<(String, String)> {
    let o = Command::new(RUN)
        .args(args)
        .arg(r)
        .args(["--", "/bin/keys"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    text(&o.stdout)
        .lines()
        .map(|l| {
            let (k, v) = l.split_once(' ').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect()
}

#[test]
fn keyrings_are_out_of_reach_and_the_session_keyring_is_fresh() {
    need_root!();
    let e = Env::new();
    let r = rootfs(e.tmp.path());
    let eperm = format!("-{}", libc::EPERM);
    for (call, result) in probe(&[], &r) {
        assert!(result.starts_with(&eperm), "{call}: {result}");
    }
    let o = run(&[], &r, "grep Seccomp: /proc/self/status");
    assert_eq!(text(&o.stdout).split_whitespace().nth(1), Some("2"));
    // Unconfined the calls work, and the session keyring is a new one of
    // the container's own, even where a local user has made and opened up a
    // keyring under a name a launcher might join.
    let planter = e.path("keys");
    fs::copy(r.join("bin/keys"), &planter).unwrap();
    use std::os::unix::fs::PermissionsExt;
    for p in [e.tmp.path(), planter.as_path()] {
        fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut plant = {
        use std::os::unix::process::CommandExt;
        Command::new(&planter)
            .args(["plant", "unionfs-run"])
            .uid(65534)
            .gid(65534)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut said = [0u8; 8];
    use std::io::Read;
    plant
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut said)
        .unwrap();
    assert_eq!(&said, b"planted\n");
    let got = probe(&["--security-opt", "seccomp=unconfined"], &r);
    drop(plant.stdin.take());
    let _ = plant.wait();
    let field = |k: &str| got.iter().find(|(c, _)| c == k).unwrap().1.clone();
    assert!(field("describe").contains(" keyring;0;0;"), "{got:?}");
    assert!(field("describe").ends_with(";_ses"), "{got:?}");
    assert_eq!(field("search"), format!("-{}", libc::ENOKEY), "{got:?}");
    let o = run(
        &["--security-opt", "seccomp=unconfined"],
        &r,
        "grep Seccomp: /proc/self/status",
    );
    assert_eq!(text(&o.stdout).split_whitespace().nth(1), Some("0"));
}

#[test]
fn seccomp_profiles_come_from_files_in_the_docker_format() {
    need_root!();
    let e = Env::new();
    let r = rootfs(e.tmp.path());
    // The profile containers-common ships (Podman's and Buildah's default).
    let shipped = "/usr/share/containers/seccomp.json";
    assert!(
        Path::new(shipped).exists(),
        "{shipped} is missing: apt-get install golang-github-containers-common"
    );
    let opt = format!("seccomp={shipped}");
    let o = run(
        &["--security-opt", &opt],
        &r,
        "echo works; mkdir /tmp/d && echo made",
    );
    assert_eq!(text(&o.stdout), "works\nmade\n", "{}", text(&o.stderr));
    // That profile allows the keyring calls (Podman gives each container a
    // keyring): the session keyring they reach is the container's own.
    let got = probe(&["--security-opt", &opt], &r);
    let describe = &got.iter().find(|(k, _)| k == "describe").unwrap().1;
    assert!(describe.ends_with(";_ses"), "{describe}");
    // One of our own: everything but mkdir, which fails with EACCES.
    let mine = e.path("profile.json");
    fs::write(
        &mine,
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]}"#,
    )
    .unwrap();
    let opt = format!("seccomp={}", mine.display());
    let o = run(&["--security-opt", &opt], &r, "mkdir /tmp/x; echo after");
    assert_eq!(text(&o.stdout), "after\n");
    assert!(
        text(&o.stderr).contains("Permission denied"),
        "{}",
        text(&o.stderr)
    );
    // A bad profile: one line naming it, nothing runs.
    fs::write(&mine, r#"{"defaultAction": "SCMP_ACT_SOMETIMES"}"#).unwrap();
    let o = run(&["--security-opt", &opt], &r, "echo ran");
    assert_eq!(o.status.code(), Some(125));
    assert!(text(&o.stdout).is_empty());
    let err = text(&o.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("SCMP_ACT_SOMETIMES"), "{err}");
}

#[test]
fn the_callers_terminal_takes_no_input_from_the_container() {
    need_root!();
    let e = Env::new();
    let r = rootfs(e.tmp.path());
    // On a terminal (script makes one), as when a user runs a container from
    // their shell: the container pushes a line into the terminal's input,
    // which the shell would run once the container exits.
    let cmd = format!("{RUN} {} -- /bin/tiocsti", r.display());
    let o = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .output()
        .expect("script (bsdutils) makes the terminal");
    let out = text(&o.stdout);
    assert!(out.contains(&format!("tiocsti -{}", libc::EPERM)), "{out}");
    assert!(!out.contains("#injected"), "{out}");
    // The terminal is still the container's stdin and stdout.
    let cmd = format!("{RUN} {} -- /bin/sh -c 'read x; echo got $x'", r.display());
    let mut child = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"typed\n").unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(text(&o.stdout).contains("got typed"), "{}", text(&o.stdout));
}

#[test]
fn the_walls_hold_in_a_driver_run_container() {
    need_root!();
    let e = Env::new();
    let lo = Loop::new("runsecret");
    oci_layout(&e.path("oci"), &[Layer::gz(busybox_layer())], "latest");
    e.ok(&["import", "--name", "bb", e.path("oci").to_str().unwrap()]);
    let script = format!(
        "cat /proc/self/status; mknod /dev/x b 7 {} && cat /dev/x; echo end",
        lo.minor
    );
    let o = e.run(&["run", "--rm", "bb", "--", "/bin/sh", "-c", &script]);
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    let field = |k: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_string())
    };
    assert_eq!(field("Seccomp:").as_deref(), Some("2"), "{out}");
    assert_eq!(field("NoNewPrivs:").as_deref(), Some("1"));
    assert!(!out.contains("runsecret") && out.contains("end"), "{out}");
    assert!(err.contains("Operation not permitted"), "{err}");
}
