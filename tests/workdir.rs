//! The work directory and the metadata of what the daemon makes, as a local
//! user who owns a writable branch of a root mount would attack them.

mod common;
use common::*;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

const WORK: &str = ".wh..wh.work";

#[test]
fn a_work_directory_someone_else_made_is_refused() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro"]);
    open_up(&u);
    give_to_attacker(&u.b("rw"));
    let rw = u.b("rw").display().to_string();
    let out = as_attacker(&format!("mkdir -m 777 {rw}/{WORK}"));
    assert!(out.status.success());
    let out = u.try_mount("rw=rw:ro=ro", &["allow_other"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains(WORK) && err.contains("not this daemon's"),
        "{err}"
    );
    assert!(!is_mounted(&u.mnt));
    // Nor is a symlink there followed: it is removed and the real one made.
    fs::remove_dir(u.b("rw").join(WORK)).unwrap();
    std::os::unix::fs::symlink("/tmp", u.b("rw").join(WORK)).unwrap();
    u.mount("rw=rw:ro=ro", &[]);
    let st = fs::symlink_metadata(u.b("rw").join(WORK)).unwrap();
    assert!(st.is_dir());
    assert_eq!((st.uid(), st.mode() & 0o777), (0, 0o700));
}

#[test]
fn a_work_directory_planted_while_mounted_is_never_used() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro"]);
    open_up(&u);
    write(u.b("ro/tool"), "#!/bin/sh\n");
    fs::set_permissions(u.b("ro/tool"), fs::Permissions::from_mode(0o4755)).unwrap();
    give_to_attacker(&u.b("rw"));
    u.mount("rw=rw:ro=ro", &["allow_other"]);
    // The owner of the branch moves the work directory away and plants one of
    // their own, which they may fill with whatever they like meanwhile.
    let rw = u.b("rw").display().to_string();
    let out = as_attacker(&format!(
        "mv {rw}/{WORK} {rw}/old 2>/dev/null; mkdir -m 777 {rw}/{WORK} && touch -d @1000000000 {rw}/{WORK}"
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let planted = fs::metadata(u.b("rw").join(WORK)).unwrap();
    // A copy-up of a root-owned setuid file, as root.
    sh(&format!(
        "touch -c -d @1200000000 '{}'",
        u.m("tool").display()
    ));
    let up = fs::symlink_metadata(u.b("rw/tool")).unwrap();
    assert_eq!((up.uid(), up.mode() & 0o7777), (0, 0o4755));
    assert_eq!(up.mtime(), 1_200_000_000);
    let after = fs::metadata(u.b("rw").join(WORK)).unwrap();
    assert_eq!(
        (after.mtime(), after.ctime(), after.nlink()),
        (planted.mtime(), planted.ctime(), planted.nlink()),
        "the daemon built its copy in a work directory the user planted"
    );
    assert!(ls(u.b("rw").join(WORK)).is_empty());
}

#[test]
fn new_entries_get_exactly_the_mode_asked_for() {
    need_fuse!();
    let mut u = Union::new(&["rw"]);
    open_up(&u);
    fs::set_permissions(u.b("rw"), fs::Permissions::from_mode(0o1777)).unwrap();
    u.mount("rw", &["allow_other"]);
    let m = u.mnt.display().to_string();
    // Root, with umask 0: the daemon's own umask takes nothing away.
    sh(&format!(
        "umask 0; cd {m} && echo x > f && mkdir d && mkfifo p && mknod c c 1 3 && \
         perl -e 'sysopen(F, \"s\", 0101, 04775) or die $!'"
    ));
    assert_eq!(mode(u.b("rw/f")), 0o666);
    assert_eq!(mode(u.b("rw/d")), 0o777);
    assert_eq!(mode(u.b("rw/p")), 0o666);
    assert_eq!(mode(u.b("rw/c")), 0o666);
    assert_eq!(mode(u.b("rw/s")), 0o4775);
    // A user, whose new entries are chowned to them: setuid bits survive the chown.
    let out = as_attacker(&format!(
        "umask 0; cd {m} && perl -e 'sysopen(F, \"us\", 0101, 04777) or die $!' && \
         mkfifo up && ln -s f ul && umask 077 && echo y > uf"
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (uid, gid) = attacker();
    for (name, want) in [("us", 0o4777), ("up", 0o666), ("uf", 0o600)] {
        let st = fs::symlink_metadata(u.b("rw").join(name)).unwrap();
        assert_eq!(
            (st.uid(), st.gid(), st.mode() & 0o7777),
            (uid, gid, want),
            "{name}"
        );
    }
    let st = fs::symlink_metadata(u.b("rw/ul")).unwrap();
    assert_eq!((st.uid(), st.gid()), (uid, gid));
}

#[test]
fn a_name_swapped_in_the_branch_never_redirects_a_chmod() {
    need_fuse!();
    let mut u = Union::new(&["rw"]);
    open_up(&u);
    // Root's world-writable file on the branch's filesystem: a user may
    // hard-link it (protected_hardlinks allows what they can read and write).
    write(u.b("victim"), "root's");
    fs::set_permissions(u.b("victim"), fs::Permissions::from_mode(0o666)).unwrap();
    give_to_attacker(&u.b("rw"));
    u.mount("rw", &["allow_other,entry_timeout=3600,attr_timeout=3600"]);
    let (m, rw, victim) = (
        u.mnt.display().to_string(),
        u.b("rw").display().to_string(),
        u.b("victim").display().to_string(),
    );
    // The kernel knows `mine` as the user's (attributes cached); the user
    // swaps the name in the branch for a link to root's file and asks the
    // kernel, which checks against what it knows, for a setuid chmod. The
    // daemon must not apply it to what the name now holds (it answers
    // ESTALE; the kernel looks the name up again and refuses).
    let out = as_attacker(&format!(
        ": > {m}/mine && stat {m}/mine >/dev/null && rm {rw}/mine && ln {victim} {rw}/mine && \
         chmod 4777 {m}/mine"
    ));
    assert!(!out.status.success(), "the chmod went through");
    let st = fs::symlink_metadata(u.b("victim")).unwrap();
    assert_eq!((st.uid(), st.mode() & 0o7777), (0, 0o666));
}

#[test]
fn a_name_swapped_in_the_branch_never_opens_another_file() {
    need_fuse!();
    let mut u = Union::new(&["rw"]);
    open_up(&u);
    give_to_attacker(&u.b("rw"));
    u.mount("rw", &["allow_other,entry_timeout=3600,attr_timeout=3600"]);
    // Root keeps a private file in the user's directory (as in a shared tmp).
    write(u.m("secret"), "root only");
    fs::set_permissions(u.m("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    let (m, rw) = (u.mnt.display().to_string(), u.b("rw").display().to_string());
    // The user's own file, known to the kernel; then, in the branch, root's
    // file renamed over it; then a read of "their" file.
    let out = as_attacker(&format!(
        "echo mine > {m}/mine && cat {m}/mine >/dev/null && mv -f {rw}/secret {rw}/mine && \
         cat {m}/mine"
    ));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        !said.contains("root only"),
        "the user read root's file: {said}"
    );
    assert!(!out.status.success());
    // Nor is it truncated by an O_TRUNC open meant for the old file.
    let out = as_attacker(&format!(": > {m}/mine"));
    assert!(!out.status.success());
    assert_eq!(read(u.b("rw/mine")), "root only");
}
