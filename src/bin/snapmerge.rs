//! snapmerge: fold snapshot branches back into their base.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use unionfs::control::{self, Request, Response};
use unionfs::mountinfo;
use unionfs::snapmerge::{survey, Change, Merge};
use unionfs::Mode;

const LONG_ABOUT: &str = "\
snapmerge applies snapshot branches to BASE, oldest first (in the order given):
new and changed files and directories with their metadata and xattrs, each
.wh.NAME whiteout as the deletion of NAME, each opaque directory (.wh..wh..opq)
as a replacement of the base's directory, hard links kept. Files are copied to
a temporary name and renamed into place, so a run that was interrupted, run
again, ends in the same state. Symlinks in BASE or the snapshots are never
followed. It refuses to merge into a directory that a live union uses as a
read-write branch, unless --force.";

const AFTER: &str = "\
EXAMPLE (the snapshot workflow):
    unionfs-mount /base /data                 # one rw branch
    unionctl /data --snapshot /snaps/0        # /snaps/0 rw on top, /base ro
    unionctl /data --snapshot /snaps/1
    fusermount3 -u /data
    snapmerge /base /snaps/0 /snaps/1         # fold both back into /base

EXIT STATUS:
    0 merged; 1 a step failed (the message names the path); 2 bad arguments.";

#[derive(Parser, Debug)]
#[command(name = "snapmerge", version, about = "Fold snapshot branches back into a base branch", long_about = LONG_ABOUT, after_long_help = AFTER)]
struct Cli {
    /// Print what would change (A, C or D and the path), change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Show a progress bar even when stderr is not a terminal.
    #[arg(long)]
    progress: bool,
    /// Merge even into a directory a live union uses as a read-write branch.
    #[arg(long)]
    force: bool,
    /// The branch to merge into.
    base: PathBuf,
    /// Snapshot branches, oldest first.
    #[arg(required = true)]
    snaps: Vec<PathBuf>,
}

fn fail(code: u8, msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("snapmerge: {msg}");
    ExitCode::from(code)
}

/// The live union (if any) that uses `base` as a read-write branch. A union
/// whose daemon cannot be asked, or answers without being root or the
/// mount's owner, might: that is an error too (`--force` skips the check).
/// A mount left behind by a daemon that died is not asked: it is no union.
/// Unions of users who cannot write `base` are not asked: they cannot change
/// it (so one user's broken or hostile daemon cannot hold up a merge).
fn rw_user(base: &Path) -> Result<Option<PathBuf>, String> {
    use std::os::unix::fs::MetadataExt;
    let st = std::fs::metadata(base).map_err(|e| format!("{}: {e}", base.display()))?;
    // Group and other write bits: any user might (their groups are not known here).
    let may_write = |uid: u32| uid == 0 || uid == st.uid() || st.mode() & 0o022 != 0;
    let mounts = mountinfo::read().map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
    // Every union is asked: one that uses BASE is the answer, whatever
    // others could not say.
    let mut unknown = Vec::new();
    for m in mounts
        .iter()
        .filter(|m| control::is_union(m) && may_write(m.fuse_owner().unwrap_or(0)))
        // A union whose daemon died changes nothing any more.
        .filter(|m| !control::is_dead(m))
    {
        let shown = m.mount_point.display();
        match control::request(m, &Request::List) {
            Ok(Response::Branches(list)) => {
                if list.iter().any(|b| b.path == base && b.mode == Mode::Rw) {
                    return Ok(Some(m.mount_point.clone()));
                }
            }
            Ok(other) => unknown.push(format!("the union at {shown} answered {other:?}")),
            Err(e) => unknown.push(format!("the union at {shown}: {e}")),
        }
    }
    if unknown.is_empty() {
        return Ok(None);
    }
    Err(format!(
        "cannot tell whether a live union uses {}: {}",
        base.display(),
        unknown.join("; ")
    ))
}

fn main() -> ExitCode {
    let cli: Cli = match unionfs::cli::parse("snapmerge") {
        Ok(c) => c,
        Err(code) => return code,
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let canon = |p: &Path| -> Result<PathBuf, String> {
        let c = std::fs::canonicalize(p).map_err(|e| format!("{}: {e}", p.display()))?;
        if !c.is_dir() {
            return Err(format!("{}: not a directory", p.display()));
        }
        Ok(c)
    };
    let base = match canon(&cli.base) {
        Ok(b) => b,
        Err(e) => return fail(2, e),
    };
    let mut snaps = Vec::new();
    for s in &cli.snaps {
        match canon(s) {
            Ok(c) if c == base => return fail(2, format!("{} is the base itself", s.display())),
            Ok(c) if c.starts_with(&base) || base.starts_with(&c) => {
                return fail(2, format!("{} and the base are nested", s.display()))
            }
            Ok(c) => snaps.push(c),
            Err(e) => return fail(2, e),
        }
    }
    if !cli.force && !cli.dry_run {
        match rw_user(&base) {
            Ok(None) => {}
            Ok(Some(mp)) => return fail(1, format!("{} is a read-write branch of the live union at {} (unmount it, make it ro with unionctl, or --force)", base.display(), mp.display())),
            Err(e) => return fail(1, format!("{e} (--force merges anyway)")),
        }
    }
    let entries = match survey(&snaps) {
        Ok(n) => n,
        Err(e) => return fail(1, e),
    };
    let bar = if cli.progress || std::io::stderr().is_terminal() {
        let b = indicatif::ProgressBar::new(entries);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} entries {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(b)
    } else {
        None
    };
    let dry = cli.dry_run;
    let mut on_change = |c: Change, p: &Path| {
        if dry {
            let line = format!("{} /{}", c.letter(), p.display());
            match &bar {
                Some(b) => b.println(line),
                None => println!("{line}"),
            }
        }
    };
    let bar2 = bar.clone();
    let mut on_entry = || {
        if let Some(b) = &bar2 {
            b.inc(1);
        }
    };
    let res = Merge::new(dry, &mut on_change, &mut on_entry).run(&base, &snaps);
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    match res {
        Ok(s) => {
            let verb = if dry { "would be " } else { "" };
            println!(
                "snapmerge: {} {verb}added, {} {verb}changed, {} {verb}deleted",
                s.added, s.changed, s.deleted
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(1, e),
    }
}
