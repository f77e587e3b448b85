//! setuid, setgid and file capabilities are cleared exactly as the kernel
//! clears them on a local filesystem: on a write or truncate by a caller
//! without CAP_FSETID (setgid only with group execute), on open with O_TRUNC,
//! on chown; capabilities on any write. With FUSE_HANDLE_KILLPRIV_V2 the
//! daemon does it, told by the kernel when the caller may not keep them.

mod common;
use common::*;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

/// cap_net_raw+ep, as setcap writes it (VFS_CAP_REVISION_2).
const CAP: &str = "0sAQAAAgAgAAAAAAAAAAAAAAAAAAA=";

fn set_mode(p: &std::path::Path, m: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap();
}

fn mode_of(u: &Union, name: &str) -> u32 {
    fs::metadata(u.m(name)).unwrap().mode() & 0o7777
}

fn has_cap(p: &std::path::Path) -> bool {
    let out = std::process::Command::new("getfattr")
        .args(["-e", "base64", "-n", "security.capability"])
        .arg(p)
        .output()
        .expect("getfattr (package attr)");
    String::from_utf8_lossy(&out.stdout).contains(CAP)
}

fn set_cap(p: &std::path::Path) {
    sh(&format!(
        "setfattr -n security.capability -v {CAP} '{}'",
        p.display()
    ));
    assert!(has_cap(p));
}

/// Files in the writable branch and in the read-only one (copied up by the
/// change), each mode given, on a mount everyone may use.
fn setup(pt: &str, files: &[(&str, u32)]) -> Union {
    let mut u = Union::new(&["rw", "ro"]);
    open_up(&u);
    for (name, m) in files {
        for b in ["rw", "ro"] {
            let p = u.b(&format!("{b}/{name}"));
            write(&p, "data");
            set_mode(&p, *m);
        }
    }
    set_mode(&u.b("rw"), 0o755);
    set_mode(&u.b("ro"), 0o755);
    u.mount("rw=rw:ro=ro", &[&format!("allow_other,passthrough={pt}")]);
    u
}

#[test]
fn a_write_by_another_user_clears_setuid_and_setgid() {
    need_fuse!();
    for pt in ["on", "all", "off"] {
        let u = setup(
            pt,
            &[("suid", 0o4777), ("sgid", 0o2777), ("sgid-nox", 0o2767)],
        );
        for name in ["suid", "sgid", "sgid-nox"] {
            let out = as_attacker(&format!("printf more >> '{}'", u.m(name).display()));
            assert!(out.status.success(), "{name}: {out:?}");
        }
        assert_eq!(mode_of(&u, "suid"), 0o777, "passthrough={pt}");
        assert_eq!(mode_of(&u, "sgid"), 0o777, "passthrough={pt}");
        // Without group execute, setgid is mandatory locking: kept.
        assert_eq!(mode_of(&u, "sgid-nox"), 0o2767, "passthrough={pt}");
        assert_eq!(read(u.m("suid")), "datamore");
        assert_eq!(fs::metadata(u.b("rw/suid")).unwrap().mode() & 0o7777, 0o777);
    }
}

#[test]
fn root_keeps_setuid_on_write_but_not_capabilities() {
    need_fuse!();
    for pt in ["on", "all", "off"] {
        let u = setup(pt, &[("suid", 0o4755), ("cap", 0o755)]);
        set_cap(&u.b("rw/cap"));
        fs::OpenOptions::new()
            .append(true)
            .open(u.m("suid"))
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"x"))
            .unwrap();
        assert_eq!(mode_of(&u, "suid"), 0o4755, "passthrough={pt}");
        assert!(has_cap(&u.m("cap")));
        fs::OpenOptions::new()
            .append(true)
            .open(u.m("cap"))
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"x"))
            .unwrap();
        assert!(!has_cap(&u.m("cap")), "passthrough={pt}: capability kept");
        assert!(!has_cap(&u.b("rw/cap")));
    }
}

#[test]
fn truncate_and_o_trunc_by_another_user_clear_setuid() {
    need_fuse!();
    for pt in ["on", "all", "off"] {
        let u = setup(pt, &[("t", 0o4777), ("o", 0o4777), ("lower-o", 0o6777)]);
        // lower-o exists only below: its open with O_TRUNC copies it up.
        fs::remove_file(u.b("rw/lower-o")).unwrap();
        let out = as_attacker(&format!(
            "truncate -s 2 '{}' && : > '{}' && : > '{}'",
            u.m("t").display(),
            u.m("o").display(),
            u.m("lower-o").display()
        ));
        assert!(out.status.success(), "{out:?}");
        assert_eq!(mode_of(&u, "t"), 0o777, "passthrough={pt}");
        assert_eq!(read(u.m("t")), "da");
        assert_eq!(mode_of(&u, "o"), 0o777, "passthrough={pt}");
        assert_eq!(read(u.m("o")), "");
        assert_eq!(mode_of(&u, "lower-o"), 0o777, "passthrough={pt}");
        assert_eq!(read(u.m("lower-o")), "");
        assert_eq!(read(u.b("ro/lower-o")), "data");
    }
}

#[test]
fn chown_clears_setuid_and_capabilities_even_for_root() {
    need_fuse!();
    let (uid, gid) = attacker();
    for pt in ["on", "all", "off"] {
        let u = setup(
            pt,
            &[("suid", 0o6755), ("cap", 0o755), ("dir-like", 0o4755)],
        );
        set_cap(&u.b("ro/cap"));
        fs::remove_file(u.b("rw/cap")).unwrap();
        sh(&format!("chown {uid}:{gid} '{}'", u.m("suid").display()));
        assert_eq!(mode_of(&u, "suid"), 0o755, "passthrough={pt}");
        sh(&format!("chown {uid} '{}'", u.m("cap").display()));
        assert!(!has_cap(&u.m("cap")), "passthrough={pt}: capability kept");
        assert_eq!(fs::metadata(u.m("cap")).unwrap().uid(), uid);
    }
}
