//! Rootless use: an unprivileged user's `unionfs-driver` runs in a user
//! namespace of its own, where the user is root, and in a mount namespace
//! of that user namespace (so its mounts are its own).
//!
//! The user maps to uid/gid 0 inside; the user's subordinate ids
//! (`/etc/subuid`, `/etc/subgid`, written by `newuidmap`/`newgidmap` from
//! Debian's `uidmap`) map to 1..=N, so the other owners of an image are
//! real ids on disk. Without them only 0 is mapped and `setgroups` is
//! denied, as the kernel requires for a map a process writes itself.
//!
//! The command re-executes itself once inside (marked by an environment
//! variable), so everything after parsing runs there unchanged.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

use nix::sched::{unshare, CloneFlags};
use nix::unistd::{getegid, geteuid, Gid, Uid};

use crate::store::DEFAULT_ROOT;
use crate::Error;

/// Set in the re-executed command: it runs in its user namespace already.
const MARKER: &str = "_UNIONFS_DRIVER_USERNS";

/// A range of subordinate ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub start: u32,
    pub count: u32,
}

/// Is this a rootless run: an unprivileged user, or root of a user
/// namespace other than the initial one? Decided by the kernel's maps, not
/// by the environment (which anyone may set for real root).
///
/// Asked once: a process never changes user namespace after `enter`
/// re-executed it (walks of a layer ask for every file).
pub fn rootless() -> bool {
    static ROOTLESS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ROOTLESS.get_or_init(|| !geteuid().is_root() || unionfs::control::outer_root().is_some())
}

/// The store when none is named: /var/lib/unionfs-driver for root, else
/// `$XDG_DATA_HOME/unionfs-driver` (by default `~/.local/share/unionfs-driver`).
pub fn default_root() -> PathBuf {
    if !rootless() {
        return PathBuf::from(DEFAULT_ROOT);
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    data.join("unionfs-driver")
}

/// The snapshotter's socket unless `--address` names one: root's under
/// /run, a rootless user's in its runtime directory (`$XDG_RUNTIME_DIR`,
/// else /run/user/UID with UID as the parent namespace knows the user).
pub fn default_socket() -> PathBuf {
    let run = if rootless() {
        unionfs::control::user_runtime_dir()
    } else {
        PathBuf::from("/run")
    };
    run.join("unionfs-driver/snapshotter.sock")
}

/// The first range of `user` (by name or number) in a subid file's text.
pub fn sub_range(text: &str, name: &str, id: u32) -> Option<Range> {
    text.lines().find_map(|l| {
        let mut f = l.trim().split(':');
        let (who, start, count) = (f.next()?, f.next()?, f.next()?);
        if who != name && who.parse() != Ok(id) {
            return None;
        }
        let r = Range {
            start: start.parse().ok()?,
            count: count.parse().ok()?,
        };
        (r.count > 0).then_some(r)
    })
}

fn on_path(prog: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
}

/// The subordinate uid and gid ranges of the user, when both exist and
/// newuidmap/newgidmap are there to write them.
fn sub_ranges(uid: Uid) -> Option<(Range, Range)> {
    let name = nix::unistd::User::from_uid(uid).ok()??.name;
    let read = |f| std::fs::read_to_string(f).unwrap_or_default();
    let u = sub_range(&read("/etc/subuid"), &name, uid.as_raw())?;
    let g = sub_range(&read("/etc/subgid"), &name, uid.as_raw())?;
    let tools = on_path("newuidmap") && on_path("newgidmap");
    if !tools {
        log::warn!(
            "{name} has subordinate ids, but newuidmap/newgidmap are not on PATH (Debian's \
             uidmap): only the user's own id is mapped"
        );
    }
    tools.then_some((u, g))
}

fn fail(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Io(
        format!("rootless: {what}"),
        std::io::Error::other(e.to_string()),
    )
}

/// For an unprivileged user: enter a new user namespace (and a mount
/// namespace in it) and re-execute this command there; returns only on
/// failure. Root, or a command already inside, goes on at once.
pub fn enter() -> Result<(), Error> {
    if geteuid().is_root() || std::env::var_os(MARKER).is_some() {
        return Ok(());
    }
    let (uid, gid) = (geteuid(), getegid());
    let ranges = sub_ranges(uid);
    // newuidmap must run outside the namespace: a helper forked first
    // writes the maps once this process has unshared.
    let mut helper = None;
    if let Some((u, g)) = ranges {
        let (mut r, w) = std::os::unix::net::UnixStream::pair().map_err(|e| fail("pipe", e))?;
        match crate::sys::fork().map_err(|e| fail("fork", e))? {
            None => {
                drop(w);
                let mut b = [0u8; 1];
                // (The cause is looked for here: the parent, in its new
                // namespace, has a full bounding set whatever it had before.)
                let done = match r.read_exact(&mut b) {
                    Ok(()) => write_maps(nix::unistd::getppid(), uid, gid, u, g)
                        .map_err(|said| map_failure(&said)),
                    Err(e) => Err(e.to_string()),
                };
                // What went wrong goes back to the parent for its one line.
                if let Err(why) = &done {
                    let _ = r.write_all(why.as_bytes());
                }
                std::process::exit(if done.is_ok() { 0 } else { 1 });
            }
            Some(pid) => helper = Some((pid, w)),
        }
    }
    unshare(CloneFlags::CLONE_NEWUSER).map_err(|e| fail("creating a user namespace", e))?;
    match helper {
        Some((pid, mut w)) => {
            w.write_all(b"1").map_err(|e| fail("helper", e))?;
            let exited = nix::sys::wait::waitpid(pid, None);
            if !matches!(exited, Ok(nix::sys::wait::WaitStatus::Exited(_, 0))) {
                let mut why = String::new();
                let _ = w.read_to_string(&mut why);
                return Err(fail("mapping the subordinate ids", why.trim()));
            }
        }
        None => {
            let w = |f: &str, s: String| {
                std::fs::write(f, s).map_err(|e| fail(&format!("writing {f}"), e))
            };
            w("/proc/self/setgroups", "deny".into())?;
            w("/proc/self/uid_map", format!("0 {uid} 1\n"))?;
            w("/proc/self/gid_map", format!("0 {gid} 1\n"))?;
        }
    }
    unshare(CloneFlags::CLONE_NEWNS).map_err(|e| fail("creating a mount namespace", e))?;
    // Mounts made here stay here.
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| fail("making / private", e))?;
    let exe = std::env::current_exe().map_err(|e| fail("current_exe", e))?;
    let e = Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(MARKER, "1")
        .exec();
    Err(fail("re-executing", e))
}

/// `newuidmap PID 0 UID 1 1 START COUNT`, and the same for gids; a failure
/// answers what the tool said.
fn write_maps(pid: nix::unistd::Pid, uid: Uid, gid: Gid, u: Range, g: Range) -> Result<(), String> {
    for (prog, id, r) in [
        ("newuidmap", uid.as_raw(), u),
        ("newgidmap", gid.as_raw(), g),
    ] {
        let out = Command::new(prog)
            .args([pid.to_string(), "0".into(), id.to_string(), "1".into()])
            .args(["1".to_string(), r.start.to_string(), r.count.to_string()])
            .output()
            .map_err(|e| format!("{prog}: {e}"))?;
        if !out.status.success() {
            let said = String::from_utf8_lossy(&out.stderr);
            let said = said.lines().next().unwrap_or("").trim();
            return Err(if said.is_empty() {
                format!("{prog}: {}", out.status)
            } else {
                said.to_string()
            });
        }
    }
    Ok(())
}

/// The line for a failed newuidmap/newgidmap, with the likely cause: the
/// setuid tools need CAP_SETUID and CAP_SETGID, which an exec can give only
/// if they are in the capability bounding set (`setpriv
/// --bounding-set=-all`, say, takes them away); else the ranges themselves.
fn map_failure(said: &str) -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let bounding = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok());
    const SETGID: u64 = 1 << 6;
    const SETUID: u64 = 1 << 7;
    let hint = match bounding {
        Some(b) if b & (SETUID | SETGID) != SETUID | SETGID => {
            "CAP_SETUID and CAP_SETGID are not in this process's capability bounding set, so \
             the setuid newuidmap and newgidmap cannot use them"
        }
        _ => "check this user's lines in /etc/subuid and /etc/subgid",
    };
    format!("{said} ({hint})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_does_not_make_root_rootless() {
        if !geteuid().is_root() {
            return; // only root can show it
        }
        std::env::set_var(MARKER, "1");
        let r = rootless();
        std::env::remove_var(MARKER);
        assert!(!r, "root in the initial user namespace is root");
    }

    #[test]
    fn subid_lines_by_name_or_number() {
        let text = "alice:100000:65536\n1001:200000:1000\nbad line\nzero:5:0\n";
        assert_eq!(
            sub_range(text, "alice", 1000),
            Some(Range {
                start: 100000,
                count: 65536
            })
        );
        assert_eq!(
            sub_range(text, "bob", 1001),
            Some(Range {
                start: 200000,
                count: 1000
            })
        );
        assert_eq!(sub_range(text, "zero", 7), None);
        assert_eq!(sub_range(text, "carol", 1002), None);
    }
}
