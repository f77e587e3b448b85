//! rename of files and directories from any branch, renameat2 flags, errors.

mod common;
use common::*;
use std::fs;
use std::path::Path;

fn renameat2(from: &Path, to: &Path, flags: u32) -> std::io::Result<()> {
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            cstr(from).as_ptr(),
            libc::AT_FDCWD,
            cstr(to).as_ptr(),
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[test]
fn files_from_a_read_only_branch() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro"]);
    write(u.b("ro/a"), "A");
    write(u.b("ro/b"), "B");
    write(u.b("ro/c"), "C");
    u.mount("rw=rw:ro=ro", &[]);
    let ino_a = ino(u.m("a"));
    fs::rename(u.m("a"), u.m("moved")).unwrap();
    assert_eq!(read(u.m("moved")), "A");
    assert_eq!(ino(u.m("moved")), ino_a, "rename changed the inode number");
    assert_errno(fs::metadata(u.m("a")), libc::ENOENT);
    assert_eq!(read(u.b("rw/moved")), "A");
    assert!(exists(u.b("rw/.wh.a")));
    assert_eq!(read(u.b("ro/a")), "A");
    // over an existing lower file
    fs::rename(u.m("b"), u.m("c")).unwrap();
    assert_eq!(read(u.m("c")), "B");
    assert_errno(fs::metadata(u.m("b")), libc::ENOENT);
    assert_eq!(ls(&u.mnt), vec!["c", "moved"]);
    // into a lower-only directory
    fs::create_dir_all(u.b("ro/sub/deeper")).unwrap();
    u.remount("rw=rw:ro=ro", &[]);
    fs::rename(u.m("c"), u.m("sub/deeper/c")).unwrap();
    assert_eq!(read(u.b("rw/sub/deeper/c")), "B");
    assert_eq!(ls(&u.mnt), vec!["moved", "sub"]);
}

#[test]
fn lower_directories_move_with_their_contents() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro"]);
    write(u.b("ro/d/x"), "x");
    write(u.b("ro/d/sub/y"), "y");
    write(u.b("ro/d/gone"), "hidden");
    std::os::unix::fs::symlink("x", u.b("ro/d/link")).unwrap();
    write(u.b("rw/d/up"), "u");
    write(u.b("rw/d/.wh.gone"), "");
    u.mount("rw=rw:ro=ro", &[]);
    fs::rename(u.m("d"), u.m("e")).unwrap();
    assert_eq!(ls(u.m("e")), vec!["link", "sub", "up", "x"]);
    assert_eq!(read(u.m("e/sub/y")), "y");
    assert_eq!(fs::read_link(u.m("e/link")).unwrap().to_str(), Some("x"));
    assert_errno(fs::metadata(u.m("d")), libc::ENOENT);
    assert!(exists(u.b("rw/e/.wh..wh..opq")));
    assert!(exists(u.b("rw/.wh.d")));
    assert_eq!(read(u.b("ro/d/x")), "x", "lower branch changed");
    u.remount("rw=rw:ro=ro", &[]);
    assert_eq!(ls(u.m("e")), vec!["link", "sub", "up", "x"]);
    assert_errno(fs::metadata(u.m("d")), libc::ENOENT);
    // and a directory renamed back over the whiteout of its old name
    fs::rename(u.m("e"), u.m("d")).unwrap();
    assert_eq!(ls(u.m("d")), vec!["link", "sub", "up", "x"]);
    assert!(!exists(u.b("rw/.wh.d")));
}

#[test]
fn upper_only_directories_are_renamed_in_place() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro"]);
    u.mount("rw=rw:ro=ro", &[]);
    fs::create_dir(u.m("a")).unwrap();
    write(u.m("a/f"), "f");
    fs::rename(u.m("a"), u.m("b")).unwrap();
    assert_eq!(ls_branch(u.b("rw")), vec!["b"]);
    assert_eq!(ls(u.b("rw/b")), vec!["f"]);
    // renaming a directory over an empty lower directory hides the lower one
    write(u.b("ro/target/.keep"), "");
    fs::remove_file(u.b("ro/target/.keep")).unwrap();
    u.remount("rw=rw:ro=ro", &[]);
    fs::rename(u.m("b"), u.m("target")).unwrap();
    assert_eq!(ls(u.m("target")), vec!["f"]);
}

#[test]
fn noreplace_and_exchange() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro"]);
    write(u.b("ro/a"), "A");
    write(u.b("ro/b"), "B");
    write(u.b("ro/d1/in1"), "1");
    write(u.b("ro/d2/in2"), "2");
    u.mount("rw=rw:ro=ro", &[]);
    assert_errno(
        renameat2(&u.m("a"), &u.m("b"), libc::RENAME_NOREPLACE),
        libc::EEXIST,
    );
    assert_eq!(read(u.m("b")), "B");
    renameat2(&u.m("a"), &u.m("c"), libc::RENAME_NOREPLACE).unwrap();
    assert_eq!(read(u.m("c")), "A");
    renameat2(&u.m("b"), &u.m("c"), libc::RENAME_EXCHANGE).unwrap();
    assert_eq!(read(u.m("b")), "A");
    assert_eq!(read(u.m("c")), "B");
    renameat2(&u.m("d1"), &u.m("d2"), libc::RENAME_EXCHANGE).unwrap();
    assert_eq!(ls(u.m("d1")), vec!["in2"]);
    assert_eq!(ls(u.m("d2")), vec!["in1"]);
    renameat2(&u.m("b"), &u.m("d1"), libc::RENAME_EXCHANGE).unwrap();
    assert_eq!(read(u.m("d1")), "A");
    assert_eq!(ls(u.m("b")), vec!["in2"]);
    assert_errno(
        renameat2(&u.m("b"), &u.m("nope"), libc::RENAME_EXCHANGE),
        libc::ENOENT,
    );
    assert_errno(
        renameat2(&u.m("b"), &u.m("x"), libc::RENAME_WHITEOUT),
        libc::EINVAL,
    );
    u.remount("rw=rw:ro=ro", &[]);
    assert_eq!(read(u.m("d1")), "A");
    assert_eq!(ls(u.m("b")), vec!["in2"]);
    assert_eq!(ls(u.m("d2")), vec!["in1"]);
}

#[test]
fn rename_errors() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro"]);
    write(u.b("ro/f"), "f");
    write(u.b("ro/full/x"), "x");
    fs::create_dir(u.b("ro/empty")).unwrap();
    u.mount("rw=rw:ro=ro", &[]);
    assert_errno(fs::rename(u.m("f"), u.m("full")), libc::EISDIR);
    assert_errno(fs::rename(u.m("empty"), u.m("f")), libc::ENOTDIR);
    assert_errno(fs::rename(u.m("empty"), u.m("full")), libc::ENOTEMPTY);
    assert_errno(fs::rename(u.m("missing"), u.m("x")), libc::ENOENT);
    assert_errno(fs::rename(u.m("full"), u.m("full/x/y")), libc::ENOTDIR);
    assert!(
        ls_branch(u.b("rw")).is_empty(),
        "a failed rename changed the branch"
    );
    fs::rename(u.m("empty"), u.m("f2")).unwrap();
    assert!(fs::metadata(u.m("f2")).unwrap().is_dir());
}

#[test]
fn no_writable_branch_above_means_erofs() {
    need_fuse!();
    let mut u = Union::new(&["ro", "rw"]);
    write(u.b("ro/top"), "t");
    write(u.b("rw/low"), "l");
    u.mount("ro=ro:rw=rw", &[]);
    assert_errno(fs::rename(u.m("top"), u.m("x")), libc::EROFS);
    assert_errno(fs::rename(u.m("low"), u.m("top")), libc::EROFS);
    fs::rename(u.m("low"), u.m("low2")).unwrap();
    assert_eq!(read(u.b("rw/low2")), "l");
    assert_eq!(read(u.b("ro/top")), "t");
}

#[test]
fn names_looked_up_in_a_lower_directory_work_after_it_is_renamed() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro"]);
    write(u.b("ro/d/f"), "f data");
    write(u.b("ro/d/sub/g"), "g data");
    // The reader's promise is the default mode's (passthrough=all gives it up).
    u.mount("rw=rw:ro=ro", &["passthrough=on"]);
    // The kernel keeps these dentries, and moves them with the directory.
    assert_eq!(read(u.m("d/f")), "f data");
    assert_eq!(read(u.m("d/sub/g")), "g data");
    let mut reader = fs::File::open(u.m("d/f")).unwrap();
    fs::rename(u.m("d"), u.m("e")).unwrap();
    assert_eq!(read(u.m("e/f")), "f data");
    assert_eq!(read(u.m("e/sub/g")), "g data");
    write(u.m("e/f"), "new");
    assert_eq!(read(u.b("rw/e/f")), "new");
    let mut s = String::new();
    std::io::Read::read_to_string(&mut reader, &mut s).unwrap();
    assert_eq!(
        s, "new",
        "a reader opened before the move sees later writes"
    );
    fs::write(u.m("e/sub/h"), "h").unwrap();
    assert_eq!(ls(u.m("e/sub")), ["g", "h"]);
    assert_errno(fs::metadata(u.m("d")), libc::ENOENT);
}
