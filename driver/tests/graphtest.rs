//! A conformance suite in the style of moby's graphtest: empty, base and
//! snapshot layers, a chain of 64 layers read from the top, diff/apply round
//! trips, changes, diff-size, reference-counted mounts, rm rules, crash
//! leftovers and the store lock.

mod common;
use common::*;
use std::fs;
use std::path::Path;

#[test]
fn create_empty_layer() {
    need_root!();
    let e = Env::new();
    e.ok(&["create", "empty"]);
    let mnt = e.mount("empty");
    assert!(ls(&mnt).is_empty());
    assert_eq!(e.ok(&["ls"]), "empty - 0 1\n");
    e.ok(&["umount", "empty"]);
    assert!(!unionfs_driver::layer::is_mounted(&mnt));
    assert_eq!(e.ok(&["diff-size", "empty"]), "0\n");
    assert_eq!(e.ok(&["changes", "empty"]), "");
    let meta: serde_json::Value = serde_json::from_str(&e.ok(&["metadata", "empty"])).unwrap();
    assert_eq!(meta["id"], "empty");
    assert_eq!(meta["parent"], serde_json::Value::Null);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&e.root).unwrap().permissions().mode() & 0o777,
        0o700
    );
}

#[test]
fn base_and_snapshot_layers() {
    need_root!();
    let e = Env::new();
    e.ok(&["create", "--rw", "base"]);
    let m = e.mount("base");
    fs::write(m.join("a"), "base a").unwrap();
    fs::create_dir(m.join("dir")).unwrap();
    fs::write(m.join("dir/b"), "base b").unwrap();
    fs::write(m.join("gone"), "x").unwrap();
    e.ok(&["umount", "base"]);
    e.ok(&["create", "--rw", "--parent", "base", "snap"]);
    let m = e.mount("snap");
    assert_eq!(fs::read_to_string(m.join("dir/b")).unwrap(), "base b");
    fs::write(m.join("a"), "snap a").unwrap();
    fs::write(m.join("dir/c"), "new").unwrap();
    fs::remove_file(m.join("gone")).unwrap();
    e.ok(&["umount", "snap"]);
    assert_eq!(
        e.ok(&["changes", "snap"]),
        "C /a\nC /dir\nA /dir/c\nD /gone\n"
    );
    assert_eq!(
        e.ok(&["changes", "base"]),
        "A /a\nA /dir\nA /dir/b\nA /gone\n"
    );
    assert_eq!(e.ok(&["diff-size", "snap"]), "9\n");
    // the base is unchanged underneath
    let m = e.mount("base");
    assert_eq!(fs::read_to_string(m.join("a")).unwrap(), "base a");
    e.ok(&["umount", "base"]);
}

#[test]
fn a_chain_of_64_layers_reads_from_the_top() {
    need_root!();
    let e = Env::new();
    let mut parent: Option<String> = None;
    for i in 0..64 {
        let id = format!("l{i}");
        let mut args = vec!["create"];
        if let Some(p) = &parent {
            args.extend(["--parent", p.as_str()]);
        }
        args.push(&id);
        e.ok(&args);
        let tar = TarBuilder::new()
            .file(&format!("file{i}"), format!("layer {i}").as_bytes())
            .file("common", format!("top is {i}").as_bytes())
            .bytes();
        let out = e.with_stdin(&["apply-diff", &id], &tar);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        parent = Some(id);
    }
    let m = e.mount("l63");
    assert_eq!(ls(&m).len(), 65);
    assert_eq!(fs::read_to_string(m.join("common")).unwrap(), "top is 63");
    assert_eq!(fs::read_to_string(m.join("file0")).unwrap(), "layer 0");
    assert_eq!(fs::read_to_string(m.join("file31")).unwrap(), "layer 31");
    e.ok(&["umount", "l63"]);
}

#[test]
fn diff_then_apply_round_trip() {
    need_root!();
    let e = Env::new();
    e.ok(&["create", "--rw", "src"]);
    let m = e.mount("src");
    fs::create_dir_all(m.join("d/e")).unwrap();
    fs::write(m.join("d/e/f"), "deep").unwrap();
    fs::write(m.join("x"), vec![7u8; 100_000]).unwrap();
    fs::hard_link(m.join("x"), m.join("x2")).unwrap();
    std::os::unix::fs::symlink("d/e/f", m.join("link")).unwrap();
    std::process::Command::new("setfattr")
        .args(["-n", "user.k", "-v", "v"])
        .arg(m.join("x"))
        .status()
        .ok();
    e.ok(&["umount", "src"]);
    let diff = e.run(&["diff", "src"]).stdout;
    e.ok(&["create", "dst"]);
    let out = e.with_stdin(&["apply-diff", "dst"], &diff);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "100004\n");
    assert_eq!(e.ok(&["changes", "dst"]), e.ok(&["changes", "src"]));
    assert_eq!(e.ok(&["diff-size", "dst"]), "100004\n");
    let d = e.root.join("layers/dst");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        fs::metadata(d.join("x")).unwrap().ino(),
        fs::metadata(d.join("x2")).unwrap().ino()
    );
    assert_eq!(fs::read_link(d.join("link")).unwrap(), Path::new("d/e/f"));
    // and the second diff is the same as the first
    assert_eq!(e.run(&["diff", "dst"]).stdout.len(), diff.len());
    // applying into a layer that is not empty is refused
    e.fails(&["apply-diff", "src"], "not empty");
    let meta: serde_json::Value = serde_json::from_str(&e.ok(&["metadata", "dst"])).unwrap();
    assert_eq!(meta["diff_digest"], sha256(&diff));
}

#[test]
fn whiteouts_in_diffs_are_oci_whiteouts() {
    need_root!();
    let e = Env::new();
    e.ok(&["create", "base"]);
    let base = TarBuilder::new()
        .file("a", b"a")
        .dir("d/")
        .file("d/x", b"x")
        .file("d/y", b"y")
        .file("k", b"k")
        .bytes();
    assert!(e
        .with_stdin(&["apply-diff", "base"], &base)
        .status
        .success());
    e.ok(&["create", "--rw", "--parent", "base", "c"]);
    let m = e.mount("c");
    // A copy-up: its number is recorded beside the work directory, which
    // no diff exports.
    let mut k = fs::OpenOptions::new()
        .append(true)
        .open(m.join("k"))
        .unwrap();
    std::io::Write::write_all(&mut k, b"+").unwrap();
    drop(k);
    fs::remove_file(m.join("a")).unwrap();
    fs::remove_dir_all(m.join("d")).unwrap();
    fs::create_dir(m.join("d")).unwrap();
    fs::write(m.join("d/z"), "z").unwrap();
    e.ok(&["umount", "c"]);
    let diff = e.run(&["diff", "c"]).stdout;
    let mut names: Vec<String> = tar::Archive::new(diff.as_slice())
        .entries()
        .unwrap()
        .map(|x| x.unwrap().path().unwrap().display().to_string())
        .collect();
    names.sort();
    assert_eq!(names, vec![".wh.a", "d", "d/.wh..wh..opq", "d/z", "k"]);
    assert_eq!(
        e.ok(&["changes", "c"]),
        "D /a\nC /d\nD /d/x\nD /d/y\nA /d/z\nC /k\n"
    );
}

#[test]
fn mounts_are_reference_counted() {
    need_root!();
    let e = Env::new();
    e.ok(&["create", "l"]);
    let a = e.mount("l");
    let b = e.mount("l");
    assert_eq!(a, b);
    assert_eq!(e.ok(&["ls"]), "l - 0 2\n");
    e.ok(&["umount", "l"]);
    assert!(unionfs_driver::layer::is_mounted(&a));
    e.ok(&["umount", "l"]);
    assert!(!unionfs_driver::layer::is_mounted(&a));
    e.fails(&["umount", "l"], "not mounted");
    // cleanup unmounts everything
    e.mount("l");
    e.ok(&["cleanup"]);
    assert!(!unionfs_driver::layer::is_mounted(&a));
}

#[test]
fn rm_rules() {
    need_root!();
    let e = Env::new();
    e.ok(&["create", "parent"]);
    e.ok(&["create", "--parent", "parent", "child"]);
    e.fails(&["rm", "parent"], "has a child layer");
    e.mount("child");
    e.fails(&["rm", "child"], "is mounted");
    e.ok(&["umount", "child"]);
    e.ok(&["rm", "child"]);
    e.ok(&["rm", "parent"]);
    assert_eq!(e.ok(&["ls"]), "");
    assert!(!e.run(&["exists", "parent"]).status.success());
    e.fails(&["rm", "parent"], "no layer or image parent");
    e.fails(
        &["create", "--parent", "nothing", "x"],
        "no layer or image nothing",
    );
    e.ok(&["create", "y"]);
    e.fails(&["create", "y"], "exists");
    e.fails(&["create", "../evil"], "bad layer id");
    assert!(e.run(&["exists", "y"]).status.success());
}

#[test]
fn leftovers_of_an_interrupted_run_are_removed() {
    need_root!();
    let e = Env::new();
    e.ok(&["create", "kept"]);
    fs::create_dir_all(e.root.join("tmp/half-built/x")).unwrap();
    fs::create_dir_all(e.root.join("layers/orphan/y")).unwrap();
    assert_eq!(e.ok(&["ls"]), "kept - 0 0\n");
    assert!(ls(&e.root.join("tmp")).is_empty());
    assert!(!e.root.join("layers/orphan").exists());
    assert!(e.root.join("layers/kept").exists());
}

#[test]
fn one_process_changes_the_store_at_a_time() {
    need_root!();
    let e = Env::new();
    let held = unionfs_driver::Store::open(&e.root).unwrap();
    let mut child = e.cmd(&["create", "waits"]).spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "a second process did not wait for the lock"
    );
    drop(held);
    assert!(child.wait().unwrap().success());
    assert!(e.ok(&["ls"]).contains("waits"));
}

#[test]
fn a_store_root_with_a_colon_or_an_equals_sign_works() {
    need_root!();
    let mut e = Env::new();
    e.root = e.tmp.path().join("odd:name=x/store");
    e.ok(&["create", "--rw", "base"]);
    let m = e.mount("base");
    fs::write(m.join("f"), "in base").unwrap();
    e.ok(&["umount", "base"]);
    e.ok(&["create", "--rw", "--parent", "base", "top"]);
    let m = e.mount("top");
    assert_eq!(fs::read_to_string(m.join("f")).unwrap(), "in base");
    fs::write(m.join("g"), "in top").unwrap();
    e.ok(&["umount", "top"]);
    assert_eq!(e.ok(&["changes", "top"]), "A /g\n");
}
