//! Rootless use: an unprivileged user (no capability left) runs
//! unionfs-driver, which works in a user namespace of its own: the user is
//! root inside, its subordinate ids are the image's other owners.

mod common;
use common::*;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const USER: &str = "unionfs-rootless";

/// The test user (made if missing) with a subordinate id range: uid, gid, range start.
fn user() -> (u32, u32, u32) {
    if nix::unistd::User::from_name(USER).unwrap().is_none() {
        let out = Command::new("useradd")
            .args(["--create-home", USER])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "useradd: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let u = nix::unistd::User::from_name(USER).unwrap().unwrap();
    for f in ["/etc/subuid", "/etc/subgid"] {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        if unionfs_driver::userns::sub_range(&text, USER, u.uid.as_raw()).is_none() {
            // Far above what useradd hands out.
            let line = format!("{USER}:3000000000:65536\n");
            std::fs::write(f, text + &line).unwrap();
        }
    }
    let text = std::fs::read_to_string("/etc/subuid").unwrap();
    let r = unionfs_driver::userns::sub_range(&text, USER, u.uid.as_raw()).unwrap();
    (u.uid.as_raw(), u.gid.as_raw(), r.start)
}

/// A directory the user owns, with the CLI copied in (the build tree may
/// be under a home directory the user cannot enter).
struct Home {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    cli: PathBuf,
}

fn home(uid: u32, gid: u32) -> Home {
    let tmp = tempfile::Builder::new()
        .prefix("rootless")
        .tempdir()
        .unwrap();
    let dir = tmp.path().to_path_buf();
    let cli = dir.join("unionfs-driver");
    std::fs::copy(CLI, &cli).unwrap();
    std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
    Home {
        _tmp: tmp,
        dir,
        cli,
    }
}

/// Run the CLI as the user, as a login gives it (runuser: no capability),
/// HOME and XDG_DATA_HOME in `h`.
fn as_user(h: &Home, args: &[&str]) -> Output {
    Command::new("runuser")
        .args(["-u", USER, "--"])
        .arg(&h.cli)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        .env("HOME", &h.dir)
        .env("XDG_DATA_HOME", h.dir.join("data"))
        .current_dir(&h.dir)
        .output()
        .unwrap()
}

#[track_caller]
fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn an_unprivileged_user_imports_with_the_images_owners_mapped() {
    need_root!();
    assert!(
        Path::new("/usr/bin/newuidmap").exists(),
        "rootless tests need newuidmap: apt-get install -y uidmap"
    );
    let (uid, gid, start) = user();
    let h = home(uid, gid);
    let tar = TarBuilder::new()
        .dir("etc/")
        .file_owned("etc/root-owned", b"r", 0, 0)
        .file_owned("etc/user-owned", b"u", 1000, 1000)
        .file_owned("etc/nobody-owned", b"n", 65534, 65534)
        .bytes();
    let layout = h.dir.join("layout");
    oci_layout(&layout, &[Layer::gz(tar)], "latest");
    Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(&layout)
        .status()
        .unwrap();

    let out = ok(as_user(
        &h,
        &["import", "--name", "img", layout.to_str().unwrap()],
    ));
    let top = out.split_whitespace().nth(1).unwrap().to_string();
    assert_eq!(ok(as_user(&h, &["images"])), format!("img {top}\n"));
    // The store is the user's, under XDG_DATA_HOME.
    let store = h.dir.join("data/unionfs-driver");
    let etc = store
        .join("layers")
        .join(top.replace(':', "%3A"))
        .join("etc");
    let owner = |n: &str| {
        let m = std::fs::metadata(etc.join(n)).unwrap();
        (m.uid(), m.gid())
    };
    assert_eq!(owner("root-owned"), (uid, gid), "root inside is the user");
    assert_eq!(owner("user-owned"), (start + 999, start + 999));
    assert_eq!(owner("nobody-owned"), (start + 65533, start + 65533));
    assert_eq!(std::fs::metadata(&store).unwrap().uid(), uid);

    // Refused input changes nothing and says so in one line.
    let out = as_user(&h, &["import", "/nonexistent"]);
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr)
            .trim_end()
            .lines()
            .count(),
        1
    );
}
