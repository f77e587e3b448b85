//! Reading: precedence, whiteouts, opaque directories, merged readdir, inode
//! numbers, hard links, name limits, deep paths.

mod common;
use common::*;
use std::fs;
use std::os::unix::fs::{DirEntryExt, MetadataExt, PermissionsExt};

#[test]
fn leftmost_branch_wins() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro1", "ro2"]);
    write(u.b("ro2/a"), "ro2");
    write(u.b("ro1/a"), "ro1");
    write(u.b("ro2/b"), "only ro2");
    u.mount("rw=rw:ro1=ro:ro2=ro", &[]);
    assert_eq!(read(u.m("a")), "ro1");
    assert_eq!(read(u.m("b")), "only ro2");
    assert_errno(fs::metadata(u.m("c")), libc::ENOENT);
}

#[test]
fn whiteouts_hide_lower_names_and_never_show() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro"]);
    write(u.b("ro/a"), "gone");
    write(u.b("ro/b"), "kept");
    write(u.b("rw/.wh.a"), "");
    write(u.b("ro/.wh.b"), ""); // a whiteout in the lowest branch hides nothing visible
    u.mount("rw=rw:ro=ro", &[]);
    assert_errno(fs::metadata(u.m("a")), libc::ENOENT);
    assert_errno(fs::metadata(u.m(".wh.a")), libc::ENOENT);
    assert_eq!(read(u.m("b")), "kept");
    assert_eq!(ls(&u.mnt), vec!["b"]);
}

#[test]
fn opaque_directories_stop_the_merge() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro"]);
    write(u.b("ro/d/lower"), "x");
    write(u.b("ro/e/lower"), "x");
    write(u.b("rw/d/.wh..wh..opq"), "");
    write(u.b("rw/d/upper"), "y");
    write(u.b("rw/e/upper"), "y");
    u.mount("rw=rw:ro=ro", &[]);
    assert_eq!(ls(u.m("d")), vec!["upper"]);
    assert_errno(fs::metadata(u.m("d/lower")), libc::ENOENT);
    assert_eq!(ls(u.m("e")), vec!["lower", "upper"]);
}

#[test]
fn a_file_hides_a_lower_directory() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro"]);
    write(u.b("ro/x/inner"), "x");
    write(u.b("rw/x"), "file");
    u.mount("rw=rw:ro=ro", &[]);
    assert!(fs::metadata(u.m("x")).unwrap().is_file());
    assert_errno(fs::metadata(u.m("x/inner")), libc::ENOTDIR);
}

#[test]
fn readdir_lists_each_visible_name_once() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro1", "ro2"]);
    for (b, n) in [
        ("rw", "a"),
        ("ro1", "a"),
        ("ro2", "a"),
        ("ro1", "b"),
        ("ro2", "c"),
        ("ro2", "d"),
    ] {
        write(u.b(&format!("{b}/dir/{n}")), b);
    }
    write(u.b("ro1/dir/.wh.d"), "");
    u.mount("rw=rw:ro1=ro:ro2=ro", &[]);
    assert_eq!(ls(u.m("dir")), vec!["a", "b", "c"]);
    assert_eq!(read(u.m("dir/a")), "rw");
    // the work directory never shows, even once it exists
    write(u.m("new"), "n");
    write(u.m("dir/b"), "copied up"); // a copy-up goes through the work directory
    assert!(exists(u.b("rw/.wh..wh.work")));
    assert_eq!(ls(&u.mnt), vec!["dir", "new"]);
}

#[test]
fn inode_numbers_match_readdir_and_survive_copy_up() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro"]);
    write(u.b("ro/f"), "x");
    write(u.b("ro/d/g"), "y");
    write(u.b("rw/h"), "z");
    u.mount("rw=rw:ro=ro", &[]);
    for e in fs::read_dir(&u.mnt).unwrap() {
        let e = e.unwrap();
        assert_eq!(
            e.ino(),
            ino(e.path()),
            "d_ino != st_ino for {:?}",
            e.file_name()
        );
    }
    let before = ino(u.m("f"));
    let dir_before = ino(u.m("d"));
    fs::set_permissions(u.m("f"), fs::Permissions::from_mode(0o600)).unwrap();
    write(u.m("d/g"), "changed");
    assert!(exists(u.b("rw/f")) && exists(u.b("rw/d/g")));
    assert_eq!(ino(u.m("f")), before);
    assert_eq!(ino(u.m("d")), dir_before);
    let listed: Vec<u64> = fs::read_dir(&u.mnt)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name() == "f")
        .map(|e| e.unwrap().ino())
        .collect();
    assert_eq!(listed, vec![before]);
    let all: Vec<u64> = ["f", "d", "h"].iter().map(|n| ino(u.m(n))).collect();
    let mut dedup = all.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(dedup.len(), 3, "distinct objects share a number: {all:?}");
}

#[test]
fn hard_links_in_a_branch_are_one_object() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro"]);
    write(u.b("ro/a"), "shared");
    fs::hard_link(u.b("ro/a"), u.b("ro/b")).unwrap();
    u.mount("rw=rw:ro=ro", &[]);
    assert_eq!(ino(u.m("a")), ino(u.m("b")));
    assert_eq!(fs::metadata(u.m("a")).unwrap().nlink(), 2);
    fs::set_permissions(u.m("a"), fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(mode(u.m("b")), 0o600);
    append(u.m("a"), "+more").unwrap();
    assert_eq!(read(u.m("b")), "shared+more");
    // the copy-up kept the two names linked on disk
    assert_eq!(ino(u.b("rw/a")), ino(u.b("rw/b")));
    u.remount("rw=rw:ro=ro", &[]);
    assert_eq!(read(u.m("b")), "shared+more");
}

#[test]
fn a_hard_link_first_looked_up_after_a_copy_up_is_the_copied_object() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro"]);
    write(u.b("ro/a"), "shared");
    fs::hard_link(u.b("ro/a"), u.b("ro/b")).unwrap();
    u.mount("rw=rw:ro=ro", &[]);
    append(u.m("a"), "+more").unwrap();
    // b was never looked up before the copy-up: it is the same object, and
    // finding it must not send a back to its old copy.
    assert_eq!(read(u.m("b")), "shared+more");
    assert_eq!(read(u.m("a")), "shared+more");
    assert_eq!(ino(u.m("a")), ino(u.m("b")));
}

#[test]
fn statfs_name_length_and_enametoolong() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro"]);
    u.mount("rw=rw:ro=ro", &[]);
    let branch = nix::sys::statvfs::statvfs(&u.b("rw")).unwrap().name_max();
    let union = nix::sys::statvfs::statvfs(&u.mnt).unwrap().name_max();
    // Less the 4 bytes of ".wh.": every name made can be whited out (a
    // longer one already in a branch is usable: see the test of such names).
    assert_eq!(union, branch - 4);
    let ok = "n".repeat(union as usize);
    write(u.m(&ok), "fits");
    assert_eq!(read(u.m(&ok)), "fits");
    let long = "n".repeat(union as usize + 1);
    assert_errno(fs::write(u.m(&long), "x"), libc::ENAMETOOLONG);
    // A lookup of it may find one a branch holds: none here.
    assert_errno(fs::metadata(u.m(&long)), libc::ENOENT);
    let past = "n".repeat(branch as usize + 1);
    assert_errno(fs::metadata(u.m(&past)), libc::ENAMETOOLONG);
}

#[test]
fn paths_up_to_path_max_work_below_a_deep_branch() {
    need_fuse!();
    let mut u = Union::new(&[]);
    // branch roots 2000 bytes deep; union paths of ~3500 bytes on top
    let deep = "b".repeat(200);
    let mut rel = std::path::PathBuf::new();
    for _ in 0..10 {
        rel.push(&deep);
    }
    let rw = u.tmp.path().join("rw").join(&rel);
    let ro = u.tmp.path().join("ro").join(&rel);
    fs::create_dir_all(&rw).unwrap();
    fs::create_dir_all(&ro).unwrap();
    let comp = "c".repeat(240);
    let inner: Vec<&str> = std::iter::repeat_n(comp.as_str(), 14).collect();
    let inner = inner.join("/");
    sh(&format!(
        "cd {} && mkdir -p {inner} && echo lower > {inner}/f",
        ro.display()
    ));
    let spec = format!("{}=rw:{}=ro", rw.display(), ro.display());
    let out = std::process::Command::new(BIN)
        .arg(&spec)
        .arg(&u.mnt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let f = u.mnt.join(&inner).join("f");
    assert!(f.as_os_str().len() > 3400 && f.as_os_str().len() < 4096);
    assert_eq!(read(&f), "lower\n");
    fs::write(&f, "upper").unwrap(); // copy-up with 14 parents, 5000+ bytes below /
    assert_eq!(read(&f), "upper");
    sh(&format!(
        "cd {} && test \"$(cat {inner}/f)\" = upper",
        rw.display()
    ));
    unmount(&u.mnt);
    let _ = &mut u;
}

#[test]
fn fstat_of_open_unlinked_files_reports_nlink_zero() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro"]);
    write(u.b("ro/lower"), "l");
    u.mount("rw=rw:ro=ro", &[]);
    write(u.m("upper"), "u");
    for name in ["upper", "lower"] {
        let f = fs::File::open(u.m(name)).unwrap();
        fs::remove_file(u.m(name)).unwrap();
        assert_eq!(f.metadata().unwrap().nlink(), 0, "{name}");
        assert_errno(fs::metadata(u.m(name)), libc::ENOENT);
    }
}

#[test]
fn fstat_of_open_files_and_directories_replaced_by_rename_reports_nlink_zero() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro"]);
    for n in ["lf1", "lf2"] {
        write(u.b(&format!("ro/{n}")), n);
    }
    for d in ["ld1", "ld2"] {
        fs::create_dir(u.b(&format!("ro/{d}"))).unwrap();
    }
    u.mount("rw=rw:ro=ro", &[]);
    write(u.m("uf1"), "uf1");
    write(u.m("uf2"), "uf2");
    fs::create_dir(u.m("ud1")).unwrap();
    fs::create_dir(u.m("ud2")).unwrap();
    // Upper over upper, lower over lower, for files and for directories.
    for (from, to, dir) in [
        ("uf1", "uf2", false),
        ("lf1", "lf2", false),
        ("ud1", "ud2", true),
        ("ld1", "ld2", true),
    ] {
        let victim = fs::File::open(u.m(to)).unwrap();
        fs::rename(u.m(from), u.m(to)).unwrap();
        let st = victim.metadata().unwrap();
        assert_eq!(st.nlink(), 0, "{to}");
        assert_eq!(st.is_dir(), dir, "{to}");
        assert!(u.m(to).is_dir() == dir && !exists(u.m(from)), "{to}");
    }
}

#[test]
fn cached_directories_follow_direct_branch_changes_after_the_timeout() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro"]);
    write(u.b("ro/d/x"), "x");
    write(u.b("ro/d/sub/y"), "y");
    u.mount("rw=rw:ro=ro", &["entry_timeout=0.2,attr_timeout=0.2"]);
    assert_eq!(read(u.m("d/x")), "x");
    assert_eq!(read(u.m("d/sub/y")), "y");
    // the directory is renamed and replaced directly in the branch
    fs::rename(u.b("ro/d"), u.b("ro/e")).unwrap();
    write(u.b("ro/d/z"), "z");
    std::thread::sleep(std::time::Duration::from_millis(400));
    assert_errno(fs::metadata(u.m("d/x")), libc::ENOENT);
    assert_errno(fs::metadata(u.m("d/sub/y")), libc::ENOENT);
    assert_eq!(read(u.m("d/z")), "z");
    assert_eq!(read(u.m("e/sub/y")), "y");
    assert_eq!(ls(u.m("d")), vec!["z"]);
    // a new file lands in the new directory's copy in the writable branch
    write(u.m("d/new"), "n");
    assert_eq!(read(u.b("rw/d/new")), "n");
    assert!(!u.b("rw/e").exists());
}

#[test]
fn negative_entries_are_cached_and_dropped_by_changes() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro"]);
    u.mount(
        "rw=rw:ro=ro",
        &["entry_timeout=3600,attr_timeout=3600,negative_timeout=3600"],
    );
    assert_errno(fs::metadata(u.m("later")), libc::ENOENT);
    // created through the union: the kernel replaces its negative entry
    write(u.m("later"), "1");
    assert_eq!(read(u.m("later")), "1");
    fs::remove_file(u.m("later")).unwrap();
    assert_errno(fs::metadata(u.m("later")), libc::ENOENT);
    fs::create_dir(u.m("later")).unwrap();
    assert!(fs::metadata(u.m("later")).unwrap().is_dir());
}

#[test]
fn readdirplus_listings_carry_the_attributes_lookup_gives() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro"]);
    write(u.b("ro/f"), "lower");
    write(u.b("ro/d/g"), "y");
    write(u.b("rw/h"), "upper!");
    write(u.b("ro/gone"), "1");
    write(u.b("rw/.wh.gone"), "");
    for i in 0..300 {
        write(u.b(&format!("ro/many/n{i}")), &"x".repeat(i % 7));
    }
    u.mount(
        "rw=rw:ro=ro",
        &["readdirplus=on,entry_timeout=60,attr_timeout=60"],
    );
    let mut names = Vec::new();
    for e in fs::read_dir(&u.mnt).unwrap() {
        let e = e.unwrap();
        let m = fs::symlink_metadata(e.path()).unwrap();
        assert_eq!(e.ino(), m.ino(), "d_ino != st_ino for {:?}", e.file_name());
        names.push(e.file_name().into_string().unwrap());
    }
    names.sort();
    assert_eq!(names, vec!["d", "f", "h", "many"]);
    assert_eq!(fs::metadata(u.m("f")).unwrap().len(), 5);
    assert_eq!(fs::metadata(u.m("h")).unwrap().len(), 6);
    assert!(fs::metadata(u.m("d")).unwrap().is_dir());
    // a long listing, in several replies: every entry once, with its size
    let mut sizes: Vec<(String, u64)> = fs::read_dir(u.m("many"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                e.metadata().unwrap().len(),
            )
        })
        .collect();
    sizes.sort();
    assert_eq!(sizes.len(), 300);
    for (n, len) in &sizes {
        let i: usize = n[1..].parse().unwrap();
        assert_eq!(*len, (i % 7) as u64, "{n}");
    }
    // entries the listing introduced behave as looked-up ones
    write(u.m("f"), "copied");
    assert_eq!(read(u.b("rw/f")), "copied");
    fs::remove_file(u.m("many/n3")).unwrap();
    assert_errno(fs::metadata(u.m("many/n3")), libc::ENOENT);
    write(u.m("d/new"), "n");
    assert_eq!(read(u.b("rw/d/new")), "n");
    assert_eq!(ls(u.m("d")), vec!["g", "new"]);
}

/// Open fds of a process.
fn open_fds(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

#[test]
fn directory_fd_cache_is_bounded_by_dir_cache() {
    need_fuse!();
    for (limit, opts) in [(50, "dir_cache=50"), (0, "dir_cache=0")] {
        let mut u = Union::new(&["rw", "ro1", "ro2"]);
        for i in 0..200 {
            write(u.b(&format!("ro1/d{i}/a")), "1");
            write(u.b(&format!("ro2/d{i}/b")), "2");
        }
        u.mount(
            "rw=rw:ro1=ro:ro2=ro",
            &[&format!("{opts},entry_timeout=3600,attr_timeout=3600")],
        );
        let pid = common::daemon_pid(&u.mnt);
        let before = open_fds(pid);
        for i in 0..200 {
            assert_eq!(ls(u.m(&format!("d{i}"))), vec!["a", "b"], "{opts}");
        }
        // A directory stream holds its instance until RELEASEDIR, which
        // the kernel sends after closedir returns: wait for the last one.
        wait_for(
            &format!("{opts}: at most {limit} more fds after walking 200 merged directories"),
            || open_fds(pid) - before <= limit,
        );
        // and the walk still answers right when nothing is cached
        assert_eq!(read(u.m("d199/b")), "2");
    }
}

#[test]
fn indexed_deep_directories_resolve_like_probed_ones() {
    need_fuse!();
    let names: Vec<String> = (0..8).map(|k| format!("ro{k}")).collect();
    let mut all = vec!["rw".to_string()];
    all.extend(names.iter().cloned());
    let refs: Vec<&str> = all.iter().map(|s| s.as_str()).collect();
    let mut u = Union::new(&refs);
    for k in 0..8 {
        write(u.b(&format!("ro{k}/d/x{k}")), &k.to_string());
        write(u.b(&format!("ro{k}/d/common")), &k.to_string());
    }
    // ro3 hides x5 below it; ro2 has x2 and a whiteout beside it (x2 shows,
    // and hides lower x2s); ro6 makes sub opaque
    write(u.b("ro3/d/.wh.x5"), "");
    write(u.b("ro2/d/.wh.x2"), "");
    write(u.b("ro7/d/x2"), "lower x2");
    write(u.b("ro6/d/sub/.wh..wh..opq"), "");
    write(u.b("ro6/d/sub/s6"), "6");
    write(u.b("ro7/d/sub/s7"), "7");
    let spec = std::iter::once("rw=rw".to_string())
        .chain(names.iter().map(|n| format!("{n}=ro")))
        .collect::<Vec<_>>()
        .join(":");
    // names are looked up again and again: the directory gets indexed
    u.mount(&spec, &["entry_timeout=3600,attr_timeout=3600"]);
    for round in 0..3 {
        for k in 0..8 {
            let p = u.m(&format!("d/x{k}"));
            match k {
                5 => assert_errno(fs::metadata(&p), libc::ENOENT),
                _ => assert_eq!(read(&p), k.to_string(), "round {round}"),
            }
        }
        assert_eq!(read(u.m("d/common")), "0");
        assert_errno(fs::metadata(u.m(&format!("d/none{round}"))), libc::ENOENT);
    }
    assert_eq!(ls(u.m("d/sub")), vec!["s6"]);
    // changes through the union in the indexed directory
    fs::remove_file(u.m("d/x6")).unwrap();
    assert_errno(fs::metadata(u.m("d/x6")), libc::ENOENT);
    write(u.m("d/x5"), "new 5");
    assert_eq!(read(u.m("d/x5")), "new 5");
    fs::rename(u.m("d/x7"), u.m("d/x6")).unwrap();
    assert_eq!(read(u.m("d/x6")), "7");
    assert_errno(fs::metadata(u.m("d/x7")), libc::ENOENT);
    let mut listed = ls(u.m("d"));
    listed.sort();
    assert_eq!(
        listed,
        vec!["common", "sub", "x0", "x1", "x2", "x3", "x4", "x5", "x6"]
    );
}

#[test]
fn misses_made_real_directly_show() {
    need_fuse!();
    // reval: the kernel keeps no misses, so the very next access sees them
    let mut u = Union::new(&["rw", "ro"]);
    u.mount("rw=rw:ro=ro", &["udba=reval"]);
    assert_errno(fs::metadata(u.m("fresh")), libc::ENOENT);
    assert_errno(fs::metadata(u.m("lower")), libc::ENOENT);
    write(u.b("rw/fresh"), "f");
    write(u.b("ro/lower"), "l");
    assert_eq!(read(u.m("fresh")), "f");
    assert_eq!(read(u.m("lower")), "l");
    u.unmount();
    // notify (default): the kernel caches misses, and the daemon expires
    // them when it is told of the direct change, asynchronously but soon
    let mut u = Union::new(&["rw", "ro"]);
    u.mount("rw=rw:ro=ro", &[]);
    assert_errno(fs::metadata(u.m("fresh")), libc::ENOENT);
    assert_errno(fs::metadata(u.m("lower")), libc::ENOENT);
    write(u.b("rw/fresh"), "f");
    write(u.b("ro/lower"), "l");
    wait_for("the direct creations through the mount", || {
        exists(u.m("fresh")) && exists(u.m("lower"))
    });
    assert_eq!(read(u.m("fresh")), "f");
    assert_eq!(read(u.m("lower")), "l");
}

#[test]
fn names_up_to_the_branch_limit_are_usable_and_only_their_whiteout_fails() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro"]);
    let long = |c: &str, n: usize| c.repeat(n);
    // An image layer may hold names of 252-255 bytes: no room for ".wh.".
    for (c, n) in [("a", 252), ("b", 255)] {
        write(u.b(&format!("ro/{}", long(c, n))), c);
    }
    u.mount("rw=rw:ro=ro", &[]);
    let (a, b) = (long("a", 252), long("b", 255));
    let mut names = ls(&u.mnt);
    names.sort();
    assert_eq!(names, [a.clone(), b.clone()]);
    assert_eq!(read(u.m(&a)), "a");
    assert_eq!(fs::metadata(u.m(&b)).unwrap().len(), 1);
    // Written: copied up, under its own name.
    append(u.m(&b), "+").unwrap();
    assert_eq!(read(u.m(&b)), "b+");
    assert_eq!(read(u.b(&format!("rw/{b}"))), "b+");
    // Deleting or moving a name a lower branch holds needs a whiteout that
    // cannot be written: ENAMETOOLONG, and nothing changed.
    assert_errno(fs::remove_file(u.m(&a)), libc::ENAMETOOLONG);
    assert_errno(fs::rename(u.m(&b), u.m("short")), libc::ENAMETOOLONG);
    assert_eq!(read(u.m(&a)), "a");
    assert_eq!(read(u.m(&b)), "b+");
    assert!(!exists(u.m("short")));
    // New names are made no longer than a whiteout leaves room for, which
    // statfs reports: each can be deleted wherever it lands.
    assert_eq!(nix::sys::statvfs::statvfs(&u.mnt).unwrap().name_max(), 251);
    let z = long("z", 251);
    write(u.m(&z), "z");
    fs::rename(u.m(&z), u.m(&long("y", 251))).unwrap();
    fs::remove_file(u.m(&long("y", 251))).unwrap();
    assert_errno(fs::write(u.m(&long("x", 252)), "x"), libc::ENAMETOOLONG);
    assert_errno(
        fs::rename(u.m(&b), u.m(&long("w", 252))),
        libc::ENAMETOOLONG,
    );
    assert_errno(fs::metadata(u.m(&long("x", 256))), libc::ENAMETOOLONG);
}
