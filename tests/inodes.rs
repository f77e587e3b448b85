//! Inode numbers that survive a remount: lower, copied-up, new and renamed
//! objects, hard links, branches on two filesystems; the index of copied-up
//! numbers stays outside the union.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;

fn numbers(u: &Union, names: &[&str]) -> BTreeMap<String, u64> {
    names
        .iter()
        .map(|n| (n.to_string(), fs::symlink_metadata(u.m(n)).unwrap().ino()))
        .collect()
}

const NAMES: &[&str] = &[
    "lower", "copied", "linked", "linked2", "dir", "dir/in", "new", "renamed", "newdir", "",
];

fn prepare(u: &mut Union, spec: &str) -> BTreeMap<String, u64> {
    write(u.b("ro/lower"), "l");
    write(u.b("ro/copied"), "c");
    write(u.b("ro/linked"), "h");
    fs::hard_link(u.b("ro/linked"), u.b("ro/linked2")).unwrap();
    write(u.b("ro/dir/in"), "i");
    write(u.b("ro/tomove"), "m");
    u.mount(spec, &[]);
    // Everything seen before it changes: a copy-up keeps the number.
    let _ = numbers(
        u,
        &[
            "lower", "copied", "linked", "linked2", "dir", "dir/in", "tomove",
        ],
    );
    write(u.m("new"), "n");
    fs::create_dir(u.m("newdir")).unwrap();
    append(u.m("copied"), "+").unwrap();
    append(u.m("linked"), "+").unwrap();
    write(u.m("dir/added"), "a");
    fs::rename(u.m("tomove"), u.m("renamed")).unwrap();
    let seen = numbers(u, NAMES);
    assert_eq!(seen["linked"], seen["linked2"]);
    seen
}

#[test]
fn numbers_are_the_same_after_a_remount() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro"]);
    let before = prepare(&mut u, "rw=rw:ro=ro");
    // One filesystem: the branch's own numbers, for what never moved.
    assert_eq!(before["lower"], ino(u.b("ro/lower")));
    assert_eq!(before["new"], ino(u.b("rw/new")));
    u.remount("rw=rw:ro=ro", &[]);
    // Names looked up in another order this time.
    let mut rev: Vec<&str> = NAMES.to_vec();
    rev.reverse();
    let after = numbers(&u, &rev);
    assert_eq!(before, after);
    // The hard links still one object, with the data written through one.
    assert_eq!(read(u.m("linked2")), "h+");
    assert_eq!(read(u.m("copied")), "c+");
    // The index is no part of the union.
    assert!(!ls(&u.mnt).iter().any(|n| n.starts_with(".wh.")));
    assert!(exists(u.b("rw/.wh..wh.index")));
}

#[test]
fn numbers_across_two_filesystems_keep_apart_and_survive_a_remount() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro"]);
    // The upper branch on a tmpfs of its own (its st_dev differs at every
    // mount of it; its place in the branch list does not).
    let _t = Tmpfs::mount(u.b("rw"), "mode=755");
    let before = prepare(&mut u, "rw=rw:ro=ro");
    let mut all: Vec<u64> = before.values().copied().collect();
    all.sort();
    all.dedup();
    // linked and linked2 share one; every other object has its own.
    assert_eq!(all.len(), NAMES.len() - 1, "{before:?}");
    assert_eq!(
        before["new"],
        ino(u.b("rw/new")),
        "the top filesystem's own"
    );
    assert_ne!(
        before["lower"],
        ino(u.b("ro/lower")),
        "the second one's shifted"
    );
    assert_eq!(before["lower"] & ((1 << 56) - 1), ino(u.b("ro/lower")));
    u.remount("rw=rw:ro=ro", &[]);
    assert_eq!(before, numbers(&u, NAMES));
}

#[test]
fn a_deleted_copy_up_takes_its_record_with_it() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro"]);
    write(u.b("ro/f"), "f");
    u.mount("rw=rw:ro=ro", &[]);
    let n = ino(u.m("f"));
    write(u.m("f"), "copied");
    let upper = ino(u.b("rw/f"));
    let record = u.b(&format!("rw/.wh..wh.index/{upper}"));
    assert_eq!(
        fs::read_link(&record).unwrap().to_str().unwrap(),
        n.to_string()
    );
    fs::remove_file(u.m("f")).unwrap();
    assert!(!exists(&record));
}

#[test]
fn a_reused_inode_number_is_a_new_object_while_the_kernel_holds_the_old() {
    need_fuse!();
    use std::os::unix::fs::OpenOptionsExt;
    let mut u = Union::new(&["rw"]);
    u.mount("rw", &[]);
    // Filesystems such as ext4 hand a freed inode number to the next new
    // file: try until the branch does. An O_PATH fd holds the kernel's
    // node of the old file without holding the file open in the branch.
    for i in 0..200 {
        let (x, y) = (format!("x{i}"), format!("y{i}"));
        write(u.m(&x), "old");
        let held = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH)
            .open(u.m(&x))
            .unwrap();
        let was = ino(u.b(&format!("rw/{x}")));
        fs::remove_file(u.m(&x)).unwrap();
        write(u.m(&y), "the new object");
        if ino(u.b(&format!("rw/{y}"))) != was {
            continue;
        }
        // Same st_ino (the branch's own number), but not the old node: what
        // the kernel holds of the old file says nothing of the new one.
        assert_eq!(ino(u.m(&y)), was);
        assert_eq!(read(u.m(&y)), "the new object");
        if let Ok(st) = held.metadata() {
            assert_eq!(
                (st.nlink(), st.len()),
                (0, 3),
                "the old node shows the new object"
            );
        }
        return;
    }
    panic!(
        "the branch filesystem of {} never reused an inode number",
        u.b("rw").display()
    );
}

#[test]
fn hard_links_stay_linked_across_a_copy_up_after_a_remount() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro"]);
    write(u.b("ro/a"), "one file");
    fs::create_dir(u.b("ro/x")).unwrap();
    fs::hard_link(u.b("ro/a"), u.b("ro/x/b")).unwrap();
    u.mount("rw=rw:ro=ro", &[]);
    // Copied up through a, in a mount that never met x/b.
    append(u.m("a"), "+").unwrap();
    u.remount("rw=rw:ro=ro", &[]);
    // x/b, met for the first time, is the copied file: linked to it.
    assert_eq!(read(u.m("x/b")), "one file+");
    assert_eq!(ino(u.m("x/b")), ino(u.m("a")));
    assert_eq!(ino(u.b("rw/x/b")), ino(u.b("rw/a")));
    // As hard links are: one name gone, the other keeps the data.
    fs::remove_file(u.m("a")).unwrap();
    assert_eq!(read(u.m("x/b")), "one file+");
    append(u.m("x/b"), "!").unwrap();
    assert_eq!(read(u.m("x/b")), "one file+!");
    assert_eq!(read(u.b("ro/x/b")), "one file");
    // tar through the union sees a pair copied up through one name before
    // a remount as the branch has it: one file, two names.
    write(u.b("ro/c"), "c");
    fs::hard_link(u.b("ro/c"), u.b("ro/x/d")).unwrap();
    append(u.m("c"), "+").unwrap();
    u.remount("rw=rw:ro=ro", &[]);
    let listed = sh(&format!(
        "cd '{}' && tar cf - c x/d | tar tvf -",
        u.mnt.display()
    ));
    assert!(listed.contains("x/d link to c"), "{listed}");
}
