//! Hostile layer tars: each is refused with a clear error, the layer stays
//! empty, nothing is left in the store, and nothing outside it changes.

mod common;
use common::*;
use std::fs;

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
