//! POSIX ACLs through the union: set through the mount, enforced by the
//! kernel for other users, inherited from default ACLs by new entries (the
//! umask applies only where there is none), kept on copy-up.

mod common;
use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn need_acl_tools() {
    assert!(
        std::process::Command::new("setfacl")
            .arg("--version")
            .output()
            .is_ok(),
        "setfacl/getfacl are needed (apt-get install acl)"
    );
}

fn perms(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn mounted(spec: &str, branches: &[&str]) -> Union {
    mounted_after(spec, branches, |_| {})
}

/// Mounted once `prepare` has set the branches up.
fn mounted_after(spec: &str, branches: &[&str], prepare: impl FnOnce(&Union)) -> Union {
    need_acl_tools();
    let mut u = Union::new(branches);
    open_up(&u);
    for b in branches {
        fs::set_permissions(u.b(b), fs::Permissions::from_mode(0o755)).unwrap();
    }
    prepare(&u);
    u.mount(spec, &["allow_other"]);
    u
}

#[test]
fn an_access_acl_set_through_the_mount_is_enforced_for_another_user() {
    need_fuse!();
    let u = mounted("rw", &["rw"]);
    let (uid, _) = attacker();
    write(u.m("secret"), "for one user");
    fs::set_permissions(u.m("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    let cat = format!("cat '{}' 2>&1", u.m("secret").display());
    assert!(String::from_utf8_lossy(&as_attacker(&cat).stdout).contains("Permission denied"));
    sh(&format!(
        "setfacl -m u:{uid}:r '{}'",
        u.m("secret").display()
    ));
    // Stored in the branch, as setfacl made it.
    assert!(sh(&format!("getfacl -n '{}'", u.b("rw/secret").display()))
        .contains(&format!("user:{uid}:r--")));
    assert_eq!(
        String::from_utf8_lossy(&as_attacker(&cat).stdout),
        "for one user"
    );
    // Read, not write.
    let append = format!("{{ echo x >> '{}'; }} 2>&1", u.m("secret").display());
    assert!(String::from_utf8_lossy(&as_attacker(&append).stdout).contains("Permission denied"));
    sh(&format!("setfacl -x u:{uid} '{}'", u.m("secret").display()));
    assert!(String::from_utf8_lossy(&as_attacker(&cat).stdout).contains("Permission denied"));
}

#[test]
fn a_default_acl_is_inherited_and_the_umask_applies_only_without_one() {
    need_fuse!();
    let (uid, _) = attacker();
    // The branch root has a default ACL (so the work directory would
    // inherit one); "plain" is made without.
    let u = mounted_after("rw", &["rw"], |u| {
        fs::create_dir(u.b("rw/plain")).unwrap();
        sh(&format!(
            "setfacl -d -m u:{uid}:rwx '{}'",
            u.b("rw").display()
        ));
    });
    fs::create_dir(u.m("shared")).unwrap();
    sh(&format!(
        "setfacl -d -m u:{uid}:rwx '{}'",
        u.m("shared").display()
    ));
    let make = |dir: &str| {
        let d = u.m(dir);
        sh(&format!(
            "umask 077; cd '{}' && echo data > f && mkdir sub && mkfifo fifo",
            d.display()
        ));
    };
    make("shared");
    make("plain");
    // Under the default ACL the umask is not applied: the group class is
    // the ACL's mask, what the mode asked for.
    assert_eq!(perms(&u.m("shared/f")), 0o664);
    assert_eq!(perms(&u.m("shared/sub")), 0o775);
    assert_eq!(perms(&u.m("shared/fifo")), 0o664);
    assert_eq!(perms(&u.m("plain/f")), 0o600);
    assert_eq!(perms(&u.m("plain/sub")), 0o700);
    assert_eq!(perms(&u.m("plain/fifo")), 0o600);
    for name in ["f", "sub", "fifo"] {
        let acl = sh(&format!(
            "getfacl -n '{}'",
            u.m(&format!("shared/{name}")).display()
        ));
        assert!(
            acl.contains(&format!("user:{uid}:rwx")),
            "shared/{name}: {acl}"
        );
    }
    // Nothing of the root's default ACL reaches what is built in the work
    // directory for "plain".
    for name in ["f", "sub", "fifo"] {
        let acl = sh(&format!(
            "getfacl -n '{}'",
            u.b(&format!("rw/plain/{name}")).display()
        ));
        assert!(!acl.contains(&format!("user:{uid}")), "plain/{name}: {acl}");
    }
    // A new directory gets the default ACL itself (made in the work
    // directory, then renamed into place).
    let acl = sh(&format!(
        "getfacl -n -d '{}'",
        u.b("rw/shared/sub").display()
    ));
    assert!(acl.contains(&format!("user:{uid}:rwx")), "{acl}");
    // And the kernel enforces it: the other user may write the file.
    let out = as_attacker(&format!(
        "echo more >> '{}' && echo ok",
        u.m("shared/f").display()
    ));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
    assert_eq!(read(u.m("shared/f")), "data\nmore\n");
    let out = as_attacker(&format!(
        "{{ echo more >> '{}'; }} 2>&1",
        u.m("plain/f").display()
    ));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Permission denied"));
}

#[test]
fn an_acl_of_a_lower_file_is_enforced_and_kept_on_copy_up() {
    need_fuse!();
    need_acl_tools();
    let (uid, _) = attacker();
    let mut u = Union::new(&["rw", "ro"]);
    open_up(&u);
    for b in ["rw", "ro"] {
        fs::set_permissions(u.b(b), fs::Permissions::from_mode(0o755)).unwrap();
    }
    write(u.b("ro/f"), "lower");
    fs::set_permissions(u.b("ro/f"), fs::Permissions::from_mode(0o600)).unwrap();
    sh(&format!("setfacl -m u:{uid}:r '{}'", u.b("ro/f").display()));
    u.mount("rw=rw:ro=ro", &["allow_other"]);
    let cat = format!("cat '{}' 2>&1", u.m("f").display());
    assert_eq!(String::from_utf8_lossy(&as_attacker(&cat).stdout), "lower");
    // A write copies it up, ACL and all.
    fs::OpenOptions::new().append(true).open(u.m("f")).unwrap();
    assert!(u.b("rw/f").exists());
    let acl = sh(&format!("getfacl -n '{}'", u.b("rw/f").display()));
    assert!(acl.contains(&format!("user:{uid}:r--")), "{acl}");
    assert_eq!(String::from_utf8_lossy(&as_attacker(&cat).stdout), "lower");
}
