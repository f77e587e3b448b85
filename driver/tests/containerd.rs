//! The store as containerd's snapshotter, under a real containerd (Debian's
//! package) started by the test with a config, root and state of its own:
//! containerd's conformance suite, and an image imported, run and collected.

mod common;
use common::containerd::*;
use common::*;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

const IMAGE: &str = "docker.io/library/uniontest:1";

/// A daemon stopped by its PID when dropped, whatever happened: SIGTERM,
/// then SIGKILL if it has not ended in 10 s.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..1000 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `cmd` and wait for a line of its stderr containing `ready`; the
/// rest of its stderr goes to ours.
fn start(cmd: Command, ready: &str) -> Daemon {
    start_said(cmd, ready).0
}

/// [`start`], answering the ready line too.
fn start_said(mut cmd: Command, ready: &str) -> (Daemon, String) {
    let mut child = cmd
        .env("PATH", path_env())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let mut lines = BufReader::new(child.stderr.take().unwrap());
    let daemon = Daemon(child);
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).unwrap_or(0) == 0 {
            panic!("{cmd:?} ended before it said {ready:?}");
        }
        if line.contains(ready) {
            break;
        }
    }
    std::thread::spawn(move || {
        for l in lines.lines().map_while(Result::ok) {
            eprintln!("{l}");
        }
    });
    (daemon, line)
}

/// Debian's docker-registry on a free loopback port, storing under `dir`;
/// answers its HOST:PORT.
fn registry(dir: &Path) -> (Daemon, String) {
    let config = format!(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:0\n",
        dir.join("registry").display()
    );
    std::fs::write(dir.join("registry.yml"), config).unwrap();
    let mut cmd = Command::new("docker-registry");
    cmd.arg("serve").arg(dir.join("registry.yml"));
    let (d, line) = start_said(cmd, "listening on ");
    let addr = line
        .split("listening on ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("the registry's address")
        .trim_matches('"')
        .to_string();
    (d, addr)
}

/// A snapshotter on `store` at `dir/snapshotter.sock`.
fn snapshotter(dir: &Path, store: &Path) -> (Daemon, PathBuf) {
    let sock = dir.join("snapshotter.sock");
    let mut cmd = Command::new(CLI);
    cmd.arg("--root")
        .arg(store)
        .arg("snapshotter")
        .arg("--address")
        .arg(&sock);
    (start(cmd, "serving containerd's snapshots API"), sock)
}

/// containerd with everything of its own under `dir`, the snapshotter at
/// `sock` as its proxy plugin `unionfs`; answers its socket. containerd
/// removes a snapshot from the backend in its garbage collection, which
/// each deletion starts here (deletion_threshold = 1).
fn containerd(dir: &Path, sock: &Path) -> (Daemon, PathBuf) {
    let d = dir.display();
    let address = dir.join("containerd.sock");
    let config = format!(
        "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
         disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
         [grpc]\n  address = \"{d}/containerd.sock\"\n\
         [ttrpc]\n  address = \"{d}/containerd.sock.ttrpc\"\n\
         [proxy_plugins.unionfs]\n  type = \"snapshot\"\n  address = \"{}\"\n\
         [plugins.\"io.containerd.gc.v1.scheduler\"]\n  deletion_threshold = 1\n",
        sock.display()
    );
    std::fs::write(dir.join("config.toml"), config).unwrap();
    let mut cmd = Command::new("containerd");
    cmd.arg("--config").arg(dir.join("config.toml"));
    (start(cmd, "containerd successfully booted"), address)
}

fn ctr(address: &Path, args: &[&str]) -> Output {
    Command::new("ctr")
        .arg("--address")
        .arg(address)
        .args(args)
        .env("PATH", path_env())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[track_caller]
fn ctr_ok(address: &Path, args: &[&str]) -> String {
    let out = ctr(address, args);
    assert!(
        out.status.success(),
        "ctr {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Mount points at or below `dir`.
fn mounts_under(dir: &Path) -> Vec<String> {
    let d = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| *m == d || m.starts_with(&format!("{d}/")))
        .map(String::from)
        .collect()
}

/// Wait for containerd (its garbage collection, say) to make `done` true
/// (60 s at most).
#[track_caller]
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !done() {
        assert!(std::time::Instant::now() < end, "not after 60 s: {what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A snapshot as the snapshotter records it.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Rec {
    key: String,
    kind: String,
    parent: String,
    layer: String,
}

fn records(store: &Path) -> Vec<Rec> {
    let text = std::fs::read_to_string(store.join("snapshots.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let field = |r: &serde_json::Value, f: &str| r[f].as_str().unwrap_or("").to_string();
    let mut out: Vec<Rec> = v["snapshots"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, r)| Rec {
            key: k.clone(),
            kind: field(r, "kind"),
            parent: field(r, "parent"),
            layer: field(r, "layer"),
        })
        .collect();
    out.sort();
    out
}

/// `unionfs-driver --root STORE ARGS`.
fn driver(store: &Path, args: &[&str]) -> Output {
    Command::new(CLI)
        .arg("--root")
        .arg(store)
        .args(args)
        .output()
        .unwrap()
}

/// The image: a busybox layer with /etc/gone, /etc/keep and /opq/{a,b};
/// on it a layer that whites out /etc/gone, makes /opq opaque with /opq/c
/// and adds /etc/new. An OCI archive, and the layout it was made from.
fn image(dir: &Path) -> (PathBuf, PathBuf) {
    let l1 = busybox_rootfs(
        &dir.join("l1"),
        &["sh", "cat", "ls", "grep", "test", "echo", "rm", "sleep"],
    );
    for d in ["proc", "sys", "dev", "opq"] {
        std::fs::create_dir_all(l1.join(d)).unwrap();
    }
    std::fs::write(l1.join("etc/gone"), "gone\n").unwrap();
    std::fs::write(l1.join("etc/keep"), "keep\n").unwrap();
    std::fs::write(l1.join("opq/a"), "a\n").unwrap();
    std::fs::write(l1.join("opq/b"), "b\n").unwrap();
    let l2 = dir.join("l2");
    std::fs::create_dir_all(l2.join("etc")).unwrap();
    std::fs::create_dir_all(l2.join("opq")).unwrap();
    std::fs::write(l2.join("etc/.wh.gone"), "").unwrap();
    std::fs::write(l2.join("etc/new"), "new\n").unwrap();
    std::fs::write(l2.join("opq/.wh..wh..opq"), "").unwrap();
    std::fs::write(l2.join("opq/c"), "c\n").unwrap();
    let layout = dir.join("layout");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/mkimage.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg(&layout)
        .arg(IMAGE)
        .arg(&l1)
        .arg(&l2)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tar = dir.join("image.tar");
    let out = Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .output()
        .unwrap();
    assert!(out.status.success());
    (tar, layout)
}

fn layers(store: &Path) -> Vec<String> {
    let mut v = ls(&store.join("layers"));
    v.sort();
    v
}

#[test]
fn containerd_conformance_suite_passes_against_the_snapshotter() {
    if !containerd_ready() {
        return;
    }
    let out = Command::new(go_tests())
        .args([
            "-test.root",
            "-test.v",
            "-test.run",
            "TestUnionfsSnapshotter",
        ])
        .env("PATH", path_env())
        .env("UNIONFS_DRIVER", CLI)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let passed = text.matches("--- PASS: TestUnionfsSnapshotter/").count();
    let skipped: Vec<&str> = text.lines().filter(|l| l.contains("--- SKIP")).collect();
    eprintln!("conformance: {passed} passed, skipped by the suite itself: {skipped:?}");
    assert!(
        out.status.success() && passed >= 20,
        "conformance suite ({passed} passed):\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("--- FAIL"), "{text}");
}

#[test]
fn an_image_imports_runs_and_is_collected_through_containerd() {
    if !containerd_ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let store = dir.join("store");
    let (tar, layout) = image(dir);
    let (snap_daemon, sock) = snapshotter(dir, &store);
    let (_ctd, address) = containerd(dir, &sock);
    let a = address.as_path();
    let snap = ["--snapshotter", "unionfs"];

    // containerd unpacks through our union: committed snapshots are layers
    // named by their chain ids, no other layer is left.
    ctr_ok(
        a,
        &[&["image", "import"][..], &snap, &[tar.to_str().unwrap()]].concat(),
    );
    let recs = records(&store);
    assert_eq!(recs.len(), 2, "{recs:?}");
    for r in &recs {
        assert_eq!(r.kind, "committed");
        assert!(
            r.key.starts_with("default/") && r.key.ends_with(&r.layer),
            "{r:?}"
        );
        assert!(r.layer.starts_with("sha256:"), "{r:?}");
    }
    assert_eq!(layers(&store).len(), 2, "{:?}", layers(&store));
    let top = recs
        .iter()
        .find(|r| !r.parent.is_empty())
        .unwrap()
        .layer
        .clone();
    let top_dir = store.join("layers").join(top.replace(':', "%3A"));
    assert!(
        top_dir.join("etc/.wh.gone").exists(),
        "the top layer keeps its whiteout"
    );
    assert!(top_dir.join("etc/new").exists());
    assert!(mounts_under(dir).is_empty(), "{:?}", mounts_under(dir));

    // A container's root is our union; whiteout and opaque directory hold.
    let script = "grep ' / / ' /proc/self/mountinfo; ls /opq; \
                  test -e /etc/gone || echo gone-hidden; cat /etc/keep /etc/new; \
                  echo w > /w && cat /w";
    let out = ctr_ok(
        a,
        &[
            &["run", "--rm"][..],
            &snap,
            &[IMAGE, "t1", "/bin/sh", "-c", script],
        ]
        .concat(),
    );
    let root = out.lines().next().unwrap_or("");
    assert!(
        root.contains(" - fuse.unionfs-mount unionfs "),
        "root: {out}"
    );
    assert_eq!(
        out.lines().skip(1).collect::<Vec<_>>(),
        ["c", "gone-hidden", "keep", "new", "w"],
        "{out}"
    );
    wait_until("--rm removed the container's snapshot", || {
        records(&store).len() == 2
    });
    assert!(mounts_under(dir).is_empty() && mounts_under(Path::new("/run/containerd")).is_empty());

    // Writes land in the active snapshot's layer.
    ctr_ok(
        a,
        &[
            &["run"][..],
            &snap,
            &[
                IMAGE,
                "t2",
                "/bin/sh",
                "-c",
                "echo data > /written; rm /etc/keep",
            ],
        ]
        .concat(),
    );
    let recs = records(&store);
    let t2 = recs
        .iter()
        .find(|r| r.key.ends_with("/t2"))
        .expect("t2's snapshot");
    assert_eq!(t2.kind, "active");
    let rw = store.join("layers").join(&t2.layer);
    assert_eq!(
        std::fs::read_to_string(rw.join("written")).unwrap(),
        "data\n"
    );
    assert!(rw.join("etc/.wh.keep").exists());
    // The driver will not remove a layer a snapshot holds.
    let out = driver(&store, &["rm", &t2.layer]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("holds containerd snapshot"), "{err}");
    ctr_ok(a, &["container", "rm", "t2"]);
    wait_until("the container's layer went with its snapshot", || {
        !rw.exists()
    });

    // containerd owns the mounts: a restart of the snapshotter leaves a
    // running container's root alone.
    ctr_ok(
        a,
        &[
            &["run", "-d"][..],
            &snap,
            &[IMAGE, "t5", "/bin/sh", "-c", "while :; do sleep 1; done"],
        ]
        .concat(),
    );
    drop(snap_daemon);
    let (_snap_daemon, _) = snapshotter(dir, &store);
    // containerd redials a proxy plugin within 3 s (its backoff's limit);
    // Usage is a call that reaches the snapshotter (List is containerd's own).
    let usage = [&["snapshots"][..], &snap, &["usage"]].concat();
    wait_until("containerd reaching the new snapshotter", || {
        ctr(a, &usage).status.success()
    });
    let out = ctr_ok(
        a,
        &[
            "task",
            "exec",
            "--exec-id",
            "e1",
            "t5",
            "/bin/cat",
            "/etc/new",
        ],
    );
    assert_eq!(out, "new\n");
    ctr_ok(a, &["task", "rm", "--force", "t5"]);
    ctr_ok(a, &["container", "rm", "t5"]);
    wait_until("t5's snapshot", || records(&store).len() == 2);
    assert!(mounts_under(dir).is_empty(), "{:?}", mounts_under(dir));

    // After the image and containerd's GC, nothing is left.
    ctr_ok(a, &["image", "rm", "--sync", IMAGE]);
    assert_eq!(records(&store), Vec::new());
    assert_eq!(layers(&store), Vec::<String>::new());
    assert_eq!(
        ctr_ok(a, &[&["snapshots"][..], &snap, &["ls"]].concat())
            .lines()
            .count(),
        1
    );
    assert!(mounts_under(dir).is_empty());

    // An image the driver imported shares its layers with containerd's
    // unpack, and containerd's GC leaves them to the driver's image.
    let out = driver(
        &store,
        &["import", "--name", "uniontest", layout.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let driver_layers = layers(&store);
    assert_eq!(driver_layers.len(), 2);
    ctr_ok(
        a,
        &[&["image", "import"][..], &snap, &[tar.to_str().unwrap()]].concat(),
    );
    assert_eq!(
        layers(&store),
        driver_layers,
        "a layer the store holds is not stored twice"
    );
    ctr_ok(
        a,
        &[
            &["run", "--rm"][..],
            &snap,
            &[IMAGE, "t3", "/bin/cat", "/opq/c"],
        ]
        .concat(),
    );
    // Pushed to a registry on loopback, to be pulled back below.
    let (_registry, host) = registry(dir);
    let remote = format!("{host}/uniontest:1");
    ctr_ok(a, &["image", "tag", IMAGE, &remote]);
    ctr_ok(a, &["image", "push", "--plain-http", &remote]);
    ctr_ok(a, &["image", "rm", "--sync", IMAGE, &remote]);
    assert_eq!(records(&store), Vec::new());
    assert_eq!(
        layers(&store),
        driver_layers,
        "GC removed a layer of the driver's image"
    );
    assert!(mounts_under(dir).is_empty());

    // A pull as CRI makes it asks for each layer by chain id
    // (containerd.io/snapshot.ref): the store holds them, so the unpack
    // skips them; the snapshots are the chain ids themselves, on the
    // driver's layers. (`ctr image pull` unpacks without the label.)
    let out = Command::new(go_tests())
        .args(["-test.v", "-test.run", "^TestPull$"])
        .env("CONTAINERD_ADDRESS", a)
        .env("PULL_REF", &remote)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pull: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let recs = records(&store);
    let keys: Vec<&str> = recs.iter().map(|r| r.key.as_str()).collect();
    let mut want: Vec<String> = driver_layers
        .iter()
        .map(|l| l.replace("%3A", ":"))
        .collect();
    want.sort();
    assert_eq!(
        keys, want,
        "snapshots named by the remote-snapshot protocol"
    );
    assert!(recs
        .iter()
        .all(|r| r.kind == "committed" && r.key == r.layer));
    assert_eq!(layers(&store), driver_layers, "nothing was unpacked");
    let out = ctr_ok(
        a,
        &[
            &["run", "--rm"][..],
            &snap,
            &[&remote, "t4", "/bin/cat", "/opq/c", "/etc/new"],
        ]
        .concat(),
    );
    assert_eq!(out, "c\nnew\n");
    ctr_ok(a, &["image", "rm", "--sync", &remote]);
    wait_until("the pulled snapshots", || records(&store).is_empty());
    assert_eq!(layers(&store), driver_layers);
    assert!(mounts_under(dir).is_empty());
}

#[test]
fn a_bad_snapshotter_address_or_root_is_refused_in_one_line() {
    // No containerd needed: the snapshotter refuses before it serves.
    let env = Env::new();
    let file = env.path("not-a-socket");
    std::fs::write(&file, "x").unwrap();
    env.fails(
        &["snapshotter", "--address", file.to_str().unwrap()],
        "is not a socket",
    );
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "x",
        "left as it was"
    );
    // A live snapshotter on the socket is not replaced.
    let (_live, sock) = snapshotter(env.tmp.path(), &env.root);
    env.fails(
        &["snapshotter", "--address", sock.to_str().unwrap()],
        "serves there already",
    );
    // A store whose paths could not be mount options.
    let comma = env.path("a,b");
    let out = Command::new(CLI)
        .arg("--root")
        .arg(&comma)
        .args(["snapshotter", "--address"])
        .arg(env.path("s.sock"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("cannot be a mount option"), "{err}");
    assert!(!env.path("s.sock").exists());
}
