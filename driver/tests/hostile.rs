//! Hostile layer tars: each is refused with a clear error, the layer stays
//! empty, nothing is left in the store, and nothing outside it changes.

mod common;
use common::*;
use std::fs;
use std::process::Command;

/// Apply `tar` to a fresh empty layer: it must fail naming `needle`.
fn refused(e: &Env, id: &str, tar: &[u8], needle: &str) {
    e.ok(&["create", id]);
    let out = e.with_stdin(&["apply-diff", id], tar);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{id}: a hostile tar was accepted");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains(needle), "{id}: {err:?} lacks {needle:?}");
    assert!(
        ls(&e.root.join("layers").join(id)).is_empty(),
        "{id}: the layer was changed"
    );
    // the next run finds nothing half-done
    e.ok(&["ls"]);
    assert!(
        ls(&e.root.join("tmp")).is_empty(),
        "{id}: a partial extraction was left"
    );
}

#[test]
fn hostile_tars_are_refused_and_change_nothing_outside() {
    need_root!();
    let e = Env::new();
    let outside = e.path("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("victim"), "untouched").unwrap();
    let out = outside.display().to_string();
    refused(
        &e,
        "dotdot",
        &TarBuilder::new()
            .file("../../../outside/escaped", b"x")
            .bytes(),
        "'..' is not allowed",
    );
    refused(
        &e,
        "inner-dotdot",
        &TarBuilder::new().file("a/../../b", b"x").bytes(),
        "'..' is not allowed",
    );
    refused(
        &e,
        "absolute",
        &TarBuilder::new().file(&format!("{out}/abs"), b"x").bytes(),
        "absolute paths",
    );
    refused(
        &e,
        "through-symlink",
        &TarBuilder::new()
            .symlink("link", &out)
            .file("link/pwned", b"x")
            .bytes(),
        "through a symlink",
    );
    refused(
        &e,
        "through-symlink-dir",
        &TarBuilder::new().symlink("d", &out).dir("d/sub/").bytes(),
        "through a symlink",
    );
    refused(
        &e,
        "hardlink-outside",
        &TarBuilder::new()
            .hardlink("h", &format!("{out}/victim"))
            .bytes(),
        "is not in the layer",
    );
    refused(
        &e,
        "hardlink-dotdot",
        &TarBuilder::new().hardlink("h", "../outside/victim").bytes(),
        "is not in the layer",
    );
    refused(
        &e,
        "hardlink-via-symlink",
        &TarBuilder::new()
            .symlink("s", &out)
            .hardlink("h", "s/victim")
            .bytes(),
        "is not in the layer",
    );
    refused(
        &e,
        "bare-wh",
        &TarBuilder::new().file("dir/.wh.", b"").bytes(),
        "bare .wh.",
    );
    let mut truncated = TarBuilder::new().file("big", &vec![1u8; 100_000]).bytes();
    truncated.truncate(50_000);
    refused(&e, "truncated", &truncated, "truncated archive");
    refused(&e, "garbage", &[0x55u8; 3000], "archive");
    assert_eq!(
        fs::read_to_string(outside.join("victim")).unwrap(),
        "untouched"
    );
    assert_eq!(ls(&outside), vec!["victim"]);
}

#[test]
fn symlinks_and_whiteouts_are_stored_as_they_are() {
    need_root!();
    let e = Env::new();
    e.ok(&["create", "ok"]);
    let tar = TarBuilder::new()
        .symlink("abs", "/etc/passwd")
        .symlink("rel", "../../x")
        .file(".wh.gone", b"")
        .dir("d/")
        .file("d/.wh..wh..opq", b"")
        .file("d/kept", b"k")
        .file("same", b"first")
        .file("same", b"second")
        .file("f", b"data")
        .hardlink("f2", "f")
        .bytes();
    let out = e.with_stdin(&["apply-diff", "ok"], &tar);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let l = e.root.join("layers/ok");
    assert_eq!(
        fs::read_link(l.join("abs")).unwrap().to_str(),
        Some("/etc/passwd")
    );
    assert_eq!(
        fs::read_link(l.join("rel")).unwrap().to_str(),
        Some("../../x")
    );
    assert!(l.join(".wh.gone").exists() && l.join("d/.wh..wh..opq").exists());
    assert_eq!(fs::read_to_string(l.join("same")).unwrap(), "second");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        fs::metadata(l.join("f")).unwrap().ino(),
        fs::metadata(l.join("f2")).unwrap().ino()
    );
    assert_eq!(
        e.ok(&["changes", "ok"]),
        "A /abs\nA /d\nA /d/kept\nA /f\nA /f2\nD /gone\nA /rel\nA /same\n"
    );
}

#[test]
fn more_hostile_names_are_refused() {
    need_root!();
    let e = Env::new();
    refused(
        &e,
        "under-work",
        &TarBuilder::new().file(".wh..wh.work/x", b"x").bytes(),
        "reserved name",
    );
    refused(
        &e,
        "under-index",
        &TarBuilder::new().file(".wh..wh.index/1", b"x").bytes(),
        "reserved name",
    );
    refused(
        &e,
        "wh-dot",
        &TarBuilder::new().dir("d/").file("d/.wh..", b"").bytes(),
        "whiteout of '.' or '..'",
    );
    refused(
        &e,
        "wh-dotdot",
        &TarBuilder::new().file(".wh...", b"").bytes(),
        "whiteout of '.' or '..'",
    );
}

/// A tar of directories `depth` deep (GNU long names).
fn deep_tar(depth: usize) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut p = String::new();
    for _ in 0..depth {
        p.push_str("a/");
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        b.append_data(&mut h, &p, std::io::empty()).unwrap();
    }
    b.into_inner().unwrap()
}

/// A chain of `depth` directories named `a` below `dir/name`, made one fd at a time.
fn plant_deep(dir: &std::path::Path, name: &str, depth: usize) {
    use unionfs::fsat;
    let top = dir.join(name);
    fs::create_dir_all(&top).unwrap();
    let mut cur = fsat::Dir::open_nofollow(&top).unwrap();
    for _ in 0..depth {
        fsat::mkdir_at(&cur, std::ffi::OsStr::new("a"), 0o755).unwrap();
        cur = fsat::open_dir(&cur, std::path::Path::new("a")).unwrap();
    }
}

#[test]
fn a_hostile_tree_never_disables_the_store() {
    need_root!();
    let e = Env::new();
    // Deeper than any program in a container could name: refused.
    refused(&e, "deep", &deep_tar(3000), "longer than 4096 bytes");
    // Leftovers that deep (a killed import, a layer without metadata) are
    // removed by the next command, under a common open-file limit of 1024.
    plant_deep(&e.root.join("tmp"), "import-1", 3000);
    plant_deep(&e.root.join("layers"), "orphan", 3000);
    let out = Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 1024 && exec \"$0\" \"$@\"")
        .arg(CLI)
        .arg("--root")
        .arg(&e.root)
        .arg("ls")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(ls(&e.root.join("tmp")).is_empty());
    assert!(!e.root.join("layers/orphan").exists());
    // As deep as PATH_MAX allows works, through diff and changes too.
    e.ok(&["create", "ok"]);
    let out = e.with_stdin(&["apply-diff", "ok"], &deep_tar(2000));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(e.ok(&["changes", "ok"]).lines().count(), 2000);
    e.ok(&["rm", "ok"]);
}

#[test]
fn an_entry_that_replaces_a_directory_keeps_its_own_metadata() {
    need_root!();
    use std::os::unix::fs::MetadataExt;
    let e = Env::new();
    e.ok(&["create", "l"]);
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o4755);
    h.set_uid(0);
    h.set_size(0);
    b.append_data(&mut h, "x/", std::io::empty()).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_uid(1000);
    h.set_gid(1000);
    h.set_size(4);
    b.append_data(&mut h, "x", &b"file"[..]).unwrap();
    let out = e.with_stdin(&["apply-diff", "l"], &b.into_inner().unwrap());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st = fs::symlink_metadata(e.root.join("layers/l/x")).unwrap();
    assert!(st.is_file());
    assert_eq!((st.mode() & 0o7777, st.uid()), (0o644, 1000));
}
