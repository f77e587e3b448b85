//! Importing images the tests build themselves from busybox-static: an OCI
//! layout (gzip and zstd layers) and a `docker save` archive; shared layers
//! stored once; bad digests and escaping manifests refused; a SIGKILL in the
//! middle of an import leaves a consistent store.

mod common;
use common::*;
use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

fn app_layer() -> Vec<u8> {
    TarBuilder::new()
        .file("hello", b"hello from the image\n")
        .file("etc/.wh.os-release", b"")
        .bytes()
}

#[test]
fn oci_layout_import_mount_and_config() {
    need_root!();
    let e = Env::new();
    let dir = e.path("oci");
    oci_layout(
        &dir,
        &[Layer::gz(busybox_layer()), Layer::zst(app_layer())],
        "latest",
    );
    let out = e.ok(&["import", "--name", "app", dir.to_str().unwrap()]);
    assert!(out.starts_with("app sha256:"), "{out}");
    assert_eq!(e.ok(&["ls"]).lines().count(), 2);
    assert!(e.ok(&["images"]).starts_with("app sha256:"));
    let m = e.mount("app");
    assert_eq!(
        fs::read_to_string(m.join("hello")).unwrap(),
        "hello from the image\n"
    );
    assert!(m.join("bin/busybox").exists());
    assert_eq!(
        fs::read_link(m.join("bin/sh")).unwrap().to_str(),
        Some("busybox")
    );
    assert!(
        !m.join("etc/os-release").exists(),
        "the whiteout of the upper layer did not hide it"
    );
    let status = std::process::Command::new(m.join("bin/busybox"))
        .arg("true")
        .status()
        .unwrap();
    assert!(status.success());
    e.ok(&["umount", "app"]);
    let img: serde_json::Value =
        serde_json::from_slice(&fs::read(e.root.join("images/app.json")).unwrap()).unwrap();
    assert_eq!(img["config"]["Env"][1], "GREETING=hello");
    assert_eq!(img["config"]["Cmd"][0], "/bin/sh");
    assert_eq!(img["config"]["WorkingDir"], "/tmp");
    // DIR:TAG picks the tagged manifest; a missing tag is an error
    let out = e.ok(&["import", &format!("{}:latest", dir.display())]);
    assert!(out.starts_with("latest sha256:"), "{out}");
    e.fails(
        &["import", &format!("{}:nope", dir.display())],
        "no manifest tagged nope",
    );
    assert_eq!(
        e.ok(&["ls"]).lines().count(),
        2,
        "identical layers stored twice"
    );
}

#[test]
fn docker_save_archive_and_shared_layers() {
    need_root!();
    let e = Env::new();
    let oci = e.path("oci");
    oci_layout(&oci, &[Layer::gz(busybox_layer())], "base");
    e.ok(&["import", "--name", "base", oci.to_str().unwrap()]);
    let archive = e.path("saved.tar");
    docker_save(
        &archive,
        &[Layer::plain(busybox_layer()), Layer::plain(app_layer())],
        "example/app:1",
    );
    let out = e.ok(&["import", archive.to_str().unwrap()]);
    assert!(
        out.starts_with("example/app:1 ") || out.contains("app"),
        "{out}"
    );
    // the busybox layer is shared: 2 layers in all, not 3
    assert_eq!(e.ok(&["ls"]).lines().count(), 2);
    let name = out.split_whitespace().next().unwrap().to_string();
    let m = e.mount(&name);
    assert!(m.join("bin/busybox").exists() && m.join("hello").exists());
    e.ok(&["umount", &name]);
    // commit: a container layer on the image becomes a new image
    e.ok(&["create", "--rw", "--parent", &name, "ctr"]);
    let m = e.mount("ctr");
    fs::write(m.join("made-in-container"), "yes").unwrap();
    e.fails(&["commit", "ctr", "snap"], "is mounted");
    e.ok(&["umount", "ctr"]);
    e.ok(&["commit", "ctr", "snap"]);
    assert!(e.ok(&["images"]).contains("snap ctr"));
    assert_eq!(e.ok(&["changes", "snap"]), "A /made-in-container\n");
    let img: serde_json::Value =
        serde_json::from_slice(&fs::read(e.root.join("images/snap.json")).unwrap()).unwrap();
    assert_eq!(
        img["config"]["Cmd"][0], "/bin/sh",
        "the committed image lost its config"
    );
}

#[test]
fn bad_digests_and_escaping_manifests_register_nothing() {
    need_root!();
    let e = Env::new();
    // a layer blob whose content does not match its digest
    let dir = e.path("bad");
    oci_layout(
        &dir,
        &[Layer::gz(busybox_layer()), Layer::gz(app_layer())],
        "t",
    );
    let victim = largest_blob(&dir);
    let mut b = fs::read(&victim).unwrap();
    let n = b.len();
    b[n / 2] ^= 0xff;
    fs::write(&victim, b).unwrap();
    e.fails(&["import", dir.to_str().unwrap()], "digest mismatch");
    assert_eq!(e.ok(&["ls"]), "");
    assert_eq!(e.ok(&["images"]), "");
    // a layer that does not decompress to its diff_id
    let dir2 = e.path("bad2");
    let liar = Layer {
        tar: TarBuilder::new().file("claimed", b"x").bytes(),
        blob: gzip(&app_layer()),
    };
    oci_layout(&dir2, &[Layer::gz(busybox_layer()), liar], "t");
    e.fails(
        &["import", dir2.to_str().unwrap()],
        "does not match diff_id",
    );
    assert_eq!(
        e.ok(&["ls"]),
        "",
        "a layer was registered before every digest was checked"
    );
    // a manifest naming a path outside blobs/
    let dir3 = e.path("escape");
    fs::create_dir_all(&dir3).unwrap();
    fs::write(
        dir3.join("index.json"),
        br#"{"schemaVersion":2,"manifests":[{"digest":"sha256:../../../../etc/passwd","size":1}]}"#,
    )
    .unwrap();
    e.fails(&["import", dir3.to_str().unwrap()], "digest");
    // docker save with a layer path outside the archive
    let t = TarBuilder::new()
        .file(
            "manifest.json",
            br#"[{"Config":"../../etc/passwd","RepoTags":["x:1"],"Layers":[]}]"#,
        )
        .bytes();
    let archive = e.path("escape.tar");
    fs::write(&archive, t).unwrap();
    e.fails(&["import", archive.to_str().unwrap()], "outside the image");
    // a truncated archive
    docker_save(&e.path("full.tar"), &[Layer::plain(busybox_layer())], "t:1");
    let full = fs::read(e.path("full.tar")).unwrap();
    fs::write(e.path("cut.tar"), &full[..full.len() / 2]).unwrap();
    e.fails(&["import", e.path("cut.tar").to_str().unwrap()], "archive");
    e.fails(
        &["import", e.path("missing").to_str().unwrap()],
        "no such image",
    );
    assert_eq!(e.ok(&["ls"]), "");
    assert!(ls(&e.root.join("tmp")).is_empty());
}

#[test]
fn a_killed_import_leaves_a_consistent_store_and_can_be_run_again() {
    need_root!();
    let e = Env::new();
    let big = TarBuilder::new().file("big", &vec![0u8; 300 << 20]).bytes();
    let dir = e.path("oci");
    oci_layout(&dir, &[Layer::gz(busybox_layer()), Layer::gz(big)], "t");
    let mut child = e
        .cmd(&["import", "--name", "big", dir.to_str().unwrap()])
        .spawn()
        .unwrap();
    let start = Instant::now();
    let building = || {
        fs::read_dir(e.root.join("tmp"))
            .map(|d| d.count() > 0)
            .unwrap_or(false)
    };
    while !building()
        && child.try_wait().unwrap().is_none()
        && start.elapsed() < Duration::from_secs(30)
    {
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(Duration::from_millis(100));
    child.kill().unwrap();
    child.wait().unwrap();
    // consistent: every registered layer is complete, no image half-made
    let listed = e.ok(&["ls"]);
    assert!(listed.lines().count() <= 1, "{listed}");
    assert_eq!(e.ok(&["images"]), "");
    assert!(ls(&e.root.join("tmp")).is_empty());
    e.ok(&["import", "--name", "big", dir.to_str().unwrap()]);
    assert_eq!(e.ok(&["ls"]).lines().count(), 2);
    let m = e.mount("big");
    assert_eq!(fs::metadata(m.join("big")).unwrap().len(), 300 << 20);
    e.ok(&["umount", "big"]);
}

/// The biggest blob of an OCI layout: a layer.
fn largest_blob(dir: &std::path::Path) -> std::path::PathBuf {
    fs::read_dir(dir.join("blobs/sha256"))
        .unwrap()
        .map(|x| x.unwrap().path())
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap()
}

#[test]
fn a_fifo_planted_as_a_blob_is_an_error_not_a_hang() {
    need_root!();
    let e = Env::new();
    let dir = e.path("fifo");
    oci_layout(&dir, &[Layer::gz(busybox_layer())], "t");
    let victim = largest_blob(&dir);
    fs::remove_file(&victim).unwrap();
    nix::unistd::mkfifo(&victim, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    // Nobody ever writes to the FIFO: an import that opened it would wait forever.
    let out = Command::new("timeout")
        .arg("20")
        .arg(CLI)
        .arg("--root")
        .arg(&e.root)
        .args(["import", dir.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("not a regular file"), "{err}");
    assert_eq!(e.ok(&["ls"]), "");
}

#[test]
fn a_device_in_a_docker_save_archive_is_never_opened() {
    need_root!();
    let e = Env::new();
    // manifest.json as /dev/null's node: harmless to open, but a watchdog's
    // would arm the host's watchdog. It must be refused unopened.
    let archive = e.path("save.tar");
    fs::write(
        &archive,
        TarBuilder::new()
            .device("manifest.json", tar::EntryType::Char, 1, 3)
            .bytes(),
    )
    .unwrap();
    e.fails(&["import", archive.to_str().unwrap()], "not a regular file");
    assert_eq!(e.ok(&["ls"]), "");
}

#[test]
fn file_capabilities_and_setuid_bits_survive_a_layer() {
    need_root!();
    let e = Env::new();
    e.ok(&["create", "caps"]);
    // cap_net_raw+ep as setcap writes it, on a setuid file of uid 1000.
    let cap: [u8; 20] = [0, 0, 0, 2, 0, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([("SCHILY.xattr.security.capability", &cap[..])])
        .unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o4755);
    h.set_uid(1000);
    h.set_gid(1000);
    h.set_size(4);
    b.append_data(&mut h, "ping", &b"ping"[..]).unwrap();
    let out = e.with_stdin(&["apply-diff", "caps"], &b.into_inner().unwrap());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let f = e.root.join("layers/caps/ping");
    use std::os::unix::fs::MetadataExt;
    let st = fs::metadata(&f).unwrap();
    assert_eq!((st.mode() & 0o7777, st.uid()), (0o4755, 1000));
    let got = Command::new("getfattr")
        .args(["-e", "hex", "-n", "security.capability"])
        .arg(&f)
        .output()
        .unwrap();
    let got = String::from_utf8_lossy(&got.stdout);
    assert!(
        got.contains("security.capability=0x0000000200200000"),
        "the capability was lost: {got}"
    );
}
