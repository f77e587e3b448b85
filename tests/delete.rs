//! unlink and rmdir in the three delete modes, checked branch by branch.

mod common;
use common::*;
use std::fs;

const SPEC: &str = "rw1=rw:rw2=rw:ro=ro";

/// One case: which branches hold `name` before; after the delete, what the
/// union shows (None = gone) and which of rw1/rw2/ro still hold it or a whiteout.
struct Case {
    holders: &'static [&'static str],
    shows: Option<&'static str>,
    kept: &'static [&'static str],
    whiteout_in: &'static [&'static str],
}

fn run(mode: &str, cases: &[Case], dir: bool) {
    let mut u = Union::new(&["rw1", "rw2", "ro"]);
    for (i, c) in cases.iter().enumerate() {
        for b in c.holders {
            let p = u.b(&format!("{b}/n{i}"));
            if dir {
                fs::create_dir_all(&p).unwrap();
                fs::write(p.join(".wh.hidden"), "").unwrap();
            } else {
                write(&p, b);
            }
        }
    }
    u.mount(SPEC, &[&format!("delete={mode}")]);
    for (i, c) in cases.iter().enumerate() {
        let name = format!("n{i}");
        if dir {
            fs::remove_dir(u.m(&name)).unwrap_or_else(|e| panic!("{mode} case {i}: {e}"));
        } else {
            fs::remove_file(u.m(&name)).unwrap_or_else(|e| panic!("{mode} case {i}: {e}"));
        }
        match c.shows {
            None => assert_errno(fs::symlink_metadata(u.m(&name)), libc::ENOENT),
            Some(b) if !dir => assert_eq!(read(u.m(&name)), b, "{mode} case {i}"),
            Some(_) => assert!(
                fs::metadata(u.m(&name)).unwrap().is_dir(),
                "{mode} case {i}"
            ),
        }
        for b in ["rw1", "rw2", "ro"] {
            assert_eq!(
                exists(u.b(&format!("{b}/{name}"))),
                c.kept.contains(&b),
                "{mode} case {i}: {b}/{name}"
            );
            assert_eq!(
                exists(u.b(&format!("{b}/.wh.{name}"))),
                c.whiteout_in.contains(&b),
                "{mode} case {i}: {b}/.wh.{name}"
            );
        }
    }
    // nothing was left in the work directories
    for b in ["rw1", "rw2"] {
        let w = u.b(&format!("{b}/.wh..wh.work"));
        if w.exists() {
            assert!(ls(&w).is_empty());
        }
    }
}

fn case(
    holders: &'static [&'static str],
    shows: Option<&'static str>,
    kept: &'static [&'static str],
    whiteout_in: &'static [&'static str],
) -> Case {
    Case {
        holders,
        shows,
        kept,
        whiteout_in,
    }
}

fn all_cases() -> Vec<Case> {
    vec![
        case(&["rw1"], None, &[], &[]),
        case(&["ro"], None, &["ro"], &["rw1"]),
        case(&["rw1", "ro"], None, &["ro"], &["rw1"]),
        case(&["rw1", "rw2"], None, &[], &[]),
        case(&["rw2", "ro"], None, &["ro"], &["rw1"]),
    ]
}

fn whiteout_cases() -> Vec<Case> {
    vec![
        case(&["rw1"], None, &[], &[]),
        case(&["ro"], None, &["ro"], &["rw1"]),
        case(&["rw1", "ro"], None, &["ro"], &["rw1"]),
        case(&["rw1", "rw2"], None, &["rw2"], &["rw1"]),
        case(&["rw2", "ro"], None, &["ro"], &["rw2"]),
    ]
}

fn first_cases() -> Vec<Case> {
    vec![
        case(&["rw1"], None, &[], &[]),
        case(&["ro"], None, &["ro"], &["rw1"]),
        case(&["rw1", "ro"], Some("ro"), &["ro"], &[]),
        case(&["rw1", "rw2"], Some("rw2"), &["rw2"], &[]),
        case(&["rw2", "ro"], Some("ro"), &["ro"], &[]),
    ]
}

#[test]
fn unlink_delete_all() {
    need_fuse!();
    run("all", &all_cases(), false);
}

#[test]
fn unlink_delete_whiteout() {
    need_fuse!();
    run("whiteout", &whiteout_cases(), false);
}

#[test]
fn unlink_delete_first() {
    need_fuse!();
    run("first", &first_cases(), false);
}

#[test]
fn rmdir_delete_all() {
    need_fuse!();
    run("all", &all_cases(), true);
}

#[test]
fn rmdir_delete_whiteout() {
    need_fuse!();
    run("whiteout", &whiteout_cases(), true);
}

#[test]
fn rmdir_delete_first() {
    need_fuse!();
    run("first", &first_cases(), true);
}

#[test]
fn rmdir_needs_an_empty_union_directory() {
    need_fuse!();
    for mode in ["all", "whiteout", "first"] {
        let mut u = Union::new(&["rw", "ro"]);
        write(u.b("ro/d/lower"), "x");
        fs::create_dir(u.b("rw/d")).unwrap();
        u.mount("rw=rw:ro=ro", &[&format!("delete={mode}")]);
        assert_errno(fs::remove_dir(u.m("d")), libc::ENOTEMPTY);
        assert_errno(fs::remove_dir(u.m("d/lower")), libc::ENOTDIR);
        assert_errno(fs::remove_file(u.m("d")), libc::EISDIR);
        assert_errno(fs::remove_file(u.m("missing")), libc::ENOENT);
        assert!(exists(u.b("rw/d")) && exists(u.b("ro/d/lower")));
        fs::remove_file(u.m("d/lower")).unwrap();
        assert!(exists(u.b("rw/d/.wh.lower")));
        fs::remove_dir(u.m("d")).unwrap();
        assert!(
            !exists(u.b("rw/d")),
            "{mode}: the writable instance was not removed with its whiteouts"
        );
        if mode == "first" {
            // only the topmost instance goes: the lower directory shows again
            assert_eq!(ls(u.m("d")), vec!["lower"]);
        } else {
            assert_errno(fs::metadata(u.m("d")), libc::ENOENT);
            assert!(exists(u.b("rw/.wh.d")));
        }
    }
}

#[test]
fn a_delete_that_cannot_complete_removes_nothing() {
    need_fuse!();
    let mut u = Union::new(&["ro", "rw"]);
    write(u.b("ro/f"), "top");
    write(u.b("rw/f"), "below");
    fs::create_dir_all(u.b("ro/d")).unwrap();
    fs::create_dir_all(u.b("rw/d")).unwrap();
    for mode in ["all", "whiteout", "first"] {
        u.mount("ro=ro:rw=rw", &[&format!("delete={mode}")]);
        assert_errno(fs::remove_file(u.m("f")), libc::EROFS);
        assert_errno(fs::remove_dir(u.m("d")), libc::EROFS);
        assert_eq!(
            read(u.b("rw/f")),
            "below",
            "{mode} removed the writable copy"
        );
        assert!(exists(u.b("rw/d")));
        assert_eq!(read(u.m("f")), "top");
        u.unmount();
    }
}
