//! unionctl: change the branches of a mounted union while it is in use.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use unionfs::control::{self, Position, Request, Response};
use unionfs::mountinfo::{self, Mount};
use unionfs::Mode;

const HELP: &str = "\
unionctl - change the branches of a mounted unionfs while it is in use

USAGE:
    unionctl MOUNTPOINT --list
    unionctl MOUNTPOINT --add [--before BRANCH | --after BRANCH] [--mode rw|ro] DIR
    unionctl MOUNTPOINT --remove BRANCH [--force]
    unionctl MOUNTPOINT --mode BRANCH rw|ro [--force]
    unionctl MOUNTPOINT --snapshot DIR [--force]
    unionctl PATH --query
    unionctl MOUNTPOINT --stats

DESCRIPTION:
    The verbs of FSL Unionfs's unionctl. Changes apply to the running mount at
    once: the kernel's cached names and attributes are dropped, so the next
    stat, ls or open sees them. Requests already running finish on the branch
    set they started with.

    --list       One branch per line in precedence order: PATH (rw) or PATH (ro).
    --add DIR    Add DIR as a branch: on top by default, or just above (--before)
                 or below (--after) an existing branch; rw unless --mode ro.
    --remove B   Remove branch B. Refused (EBUSY, naming the files) while files
                 on it are open or when it is the only writable branch, unless
                 --force; files already open on it keep working, on it.
    --mode B M   Make branch B read-write (rw) or read-only (ro). Making it ro
                 is refused (EBUSY, naming the files) while files on it are
                 open for writing, unless --force (see below).
    --snapshot DIR
                 Add DIR as the new top rw branch and make every other branch ro,
                 as one atomic change. The branches below now hold the state of
                 the union at the time of the snapshot, and nothing more is
                 written to them. Files open for writing on a branch it would
                 freeze are waited for, up to a second (new opens for writing
                 wait meanwhile); still open then: refused (EBUSY, naming the
                 files); close them and try again, or --force.
    --force      With --mode ro or --snapshot: a file open for writing stays
                 pinned to its branch until the last handle on it closes; its
                 writers, and every open of it meanwhile, write that one copy
                 (nothing is lost from the union's view, but the frozen branch
                 is not frozen for those files). Files opened for reading
                 before a change keep reading what their branch holds; opens
                 after it see the new branches.
    --query      Which branches hold PATH, topmost first, with whiteouts and
                 opaque directories marked.
    --stats      How changes made directly in the branches are followed (the
                 mount's udba mode), branch directories watched, branches
                 served as with udba=reval, events seen (and how many were
                 the daemon's own, ignored), event queue overflows, and the
                 kernel entries expired and inodes refreshed because of them.

    The rules for branches hold for every change: no missing or duplicate
    branch, no branch nested in another or in the mount point. Only root or the
    user who mounted may change the branches; anyone may --list, and --query
    what they could see through the mount anyway.

    The daemon listens on a Unix socket (/run/unionfs/HASH.sock for a mount
    made by root, $XDG_RUNTIME_DIR/unionfs/HASH.sock for a user's) and checks
    the caller with SO_PEERCRED; unionctl in turn talks only to a daemon that
    runs as root or as the mount's owner (user_id= in /proc/self/mountinfo).

EXIT STATUS:
    0 done; 1 the daemon refused (the message says why); 2 bad arguments, or
    the path is not on a unionfs mount.

EXAMPLES:
    unionctl /mnt --list
    unionctl /mnt --add --after /srv/base --mode ro /srv/extra
    unionctl /mnt --snapshot /snaps/1
    unionctl /mnt/etc/passwd --query";

fn usage(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("unionctl: {msg}");
    ExitCode::from(2)
}

/// An absolute, canonical path for a branch named on the command line (it may
/// be gone already, for --remove).
fn branch_path(p: &str) -> PathBuf {
    std::fs::canonicalize(p)
        .unwrap_or_else(|_| std::path::absolute(p).unwrap_or_else(|_| PathBuf::from(p)))
}

/// The unionfs mount holding `path`, and `path` relative to it. The last
/// component need not exist (a whited-out name can be queried).
fn find_mount(path: &Path) -> Result<(Mount, PathBuf), String> {
    let canon = match std::fs::canonicalize(path) {
        Ok(c) => c,
        Err(e) => {
            let (parent, name) = match (path.parent(), path.file_name()) {
                (Some(p), Some(n)) => (
                    if p.as_os_str().is_empty() {
                        Path::new(".")
                    } else {
                        p
                    },
                    n,
                ),
                _ => return Err(format!("{}: {e}", path.display())),
            };
            std::fs::canonicalize(parent)
                .map_err(|e| format!("{}: {e}", path.display()))?
                .join(name)
        }
    };
    let mounts = mountinfo::read().map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
    // The mount holding the path is the last one (the topmost) of the longest prefix.
    let best = mounts
        .into_iter()
        .filter(|m| canon.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.as_os_str().len());
    match best {
        Some(m) if control::is_union(&m) => {
            let rel = canon
                .strip_prefix(&m.mount_point)
                .unwrap_or(Path::new(""))
                .to_path_buf();
            Ok((m, rel))
        }
        _ => Err(format!("{} is not on a unionfs mount", path.display())),
    }
}

fn parse(args: &[String]) -> Result<(String, Request), String> {
    if args.is_empty() {
        return Err("no mount point given (see --help)".into());
    }
    let target = args[0].clone();
    let adding = args.iter().any(|a| a == "--add");
    let mut verb: Option<&str> = None;
    let set_verb = |v: &'static str, verb: &mut Option<&str>| -> Result<(), String> {
        match verb {
            Some(old) if *old != v => Err(format!("--{old} and --{v} cannot be combined")),
            _ => {
                *verb = Some(v);
                Ok(())
            }
        }
    };
    let (mut dir, mut before, mut after, mut mode, mut branch, mut force) =
        (None, None, None, None, None, false);
    let mut it = args[1..].iter();
    let value = |it: &mut std::slice::Iter<String>, flag: &str| -> Result<String, String> {
        it.next()
            .cloned()
            .ok_or_else(|| format!("{flag} needs a value"))
    };
    let parse_mode =
        |m: &str| Mode::parse(m).ok_or_else(|| format!("unknown mode '{m}' (use rw or ro)"));
    while let Some(a) = it.next() {
        match a.as_str() {
            "--list" => set_verb("list", &mut verb)?,
            "--query" => set_verb("query", &mut verb)?,
            "--stats" => set_verb("stats", &mut verb)?,
            "--add" => set_verb("add", &mut verb)?,
            "--force" => force = true,
            "--before" => before = Some(value(&mut it, a)?),
            "--after" => after = Some(value(&mut it, a)?),
            "--remove" => {
                set_verb("remove", &mut verb)?;
                branch = Some(value(&mut it, a)?);
            }
            "--snapshot" => {
                set_verb("snapshot", &mut verb)?;
                dir = Some(value(&mut it, a)?);
            }
            "--mode" if adding => mode = Some(parse_mode(&value(&mut it, a)?)?),
            "--mode" => {
                set_verb("mode", &mut verb)?;
                branch = Some(value(&mut it, a)?);
                mode = Some(parse_mode(&value(&mut it, "--mode BRANCH")?)?);
            }
            s if s.starts_with('-') => return Err(format!("unknown option {s}")),
            s if verb == Some("add") && dir.is_none() => dir = Some(s.to_string()),
            s => return Err(format!("unexpected argument '{s}'")),
        }
    }
    if force && !matches!(verb, Some("remove" | "mode" | "snapshot")) {
        return Err("--force goes with --remove, --mode or --snapshot".into());
    }
    let req = match verb {
        None => {
            return Err(
                "no action given: --list, --add, --remove, --mode, --snapshot, --query or --stats"
                    .into(),
            )
        }
        Some("list") => Request::List,
        Some("stats") => Request::Stats,
        Some("query") => Request::Query {
            path: PathBuf::new(),
        },
        Some("add") => {
            let dir = dir.ok_or("--add needs a directory")?;
            let position = match (before, after) {
                (Some(_), Some(_)) => return Err("--before and --after cannot be combined".into()),
                (Some(b), None) => Position::Before(branch_path(&b)),
                (None, Some(b)) => Position::After(branch_path(&b)),
                (None, None) => Position::Top,
            };
            let dir = std::fs::canonicalize(&dir).map_err(|e| format!("{dir}: {e}"))?;
            Request::Add {
                dir,
                mode: mode.unwrap_or(Mode::Rw),
                position,
            }
        }
        Some("remove") => Request::Remove {
            branch: branch_path(&branch.unwrap_or_default()),
            force,
        },
        Some("mode") => Request::SetMode {
            branch: branch_path(&branch.unwrap_or_default()),
            mode: mode.unwrap_or(Mode::Ro),
            force,
        },
        Some("snapshot") => {
            let d = dir.unwrap_or_default();
            let dir = std::fs::canonicalize(&d).map_err(|e| format!("{d}: {e}"))?;
            Request::Snapshot { dir, force }
        }
        Some(v) => unreachable!("verb {v}"),
    };
    Ok((target, req))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{HELP}");
        return ExitCode::SUCCESS;
    }
    if args.iter().any(|a| a == "--version" || a == "-V") {
        println!("unionctl {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let (target, mut req) = match parse(&args) {
        Ok(x) => x,
        Err(e) => return usage(e),
    };
    let (mount, rel) = match find_mount(Path::new(&target)) {
        Ok(x) => x,
        Err(e) => return usage(e),
    };
    if let Request::Query { path } = &mut req {
        *path = rel;
    } else if !rel.as_os_str().is_empty() {
        return usage(format!(
            "{target} is inside the mount at {}, not its mount point",
            mount.mount_point.display()
        ));
    }
    let resp = match control::request(&mount, &req) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("unionctl: {}: {e}", mount.mount_point.display());
            return ExitCode::from(1);
        }
    };
    match resp {
        Response::Branches(list) => {
            if matches!(req, Request::List) {
                for b in list {
                    println!("{} ({})", b.path.display(), b.mode);
                }
            }
            ExitCode::SUCCESS
        }
        Response::Holders(list) => {
            if list.is_empty() {
                println!("{target}: in no branch");
            }
            for h in list {
                println!("{} ({}): {}", h.branch.display(), h.mode, h.what);
            }
            ExitCode::SUCCESS
        }
        Response::Stats(s) => {
            println!("udba: {}", s.udba);
            println!("watched directories: {}", s.watched);
            for b in &s.unwatched {
                println!("not watched (served as with udba=reval): {}", b.display());
            }
            println!("events: {}", s.events);
            println!("own events (ignored): {}", s.own_events);
            println!("overflows: {}", s.overflows);
            println!("kernel entries expired: {}", s.expired_entries);
            println!("kernel inodes refreshed: {}", s.dropped_inodes);
            ExitCode::SUCCESS
        }
        Response::Error { message, .. } => {
            eprintln!("unionctl: {message}");
            ExitCode::from(1)
        }
    }
}
