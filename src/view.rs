//! The union of a branch set seen by path, without a mount: what tools ask
//! of it (does a path exist, what does a directory hold, who may see a
//! name), with the same rules of whiteouts and opaque directories as the
//! mount's.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use crate::branch::BranchSet;
use crate::resolve::{self, InodeTable, Scan};
use crate::sys::{Errno, FileStat, Result};

/// Split a union path into (parent path, last name).
pub fn split(path: &Path) -> (&Path, &OsStr) {
    (
        path.parent().unwrap_or(Path::new("")),
        path.file_name().unwrap_or(OsStr::new("")),
    )
}

/// Walk `path` from the union's root: `each` sees the attributes of every
/// directory on the way (the root first; `true` with the one that holds the
/// last name); answers the layers of that directory and the scan of the name.
fn walk(
    bs: &BranchSet,
    path: &Path,
    mut each: impl FnMut(&FileStat, bool) -> Result<()>,
) -> Result<(Vec<usize>, Option<Scan>)> {
    let mut layers: Vec<usize> = (0..bs.len()).collect();
    let mut dir = crate::sys::fstat(std::os::fd::AsFd::as_fd(bs.get(0).root()))?;
    let mut cur = PathBuf::new();
    let mut comps = path.iter().peekable();
    let mut last = None;
    while let Some(c) = comps.next() {
        let is_last = comps.peek().is_none();
        each(&dir, is_last)?;
        let scan = resolve::scan_path(bs, &layers, &cur, c, false)?;
        if is_last {
            last = Some(scan);
            break;
        }
        match scan.top() {
            Some(t) if t.is_dir() => dir = t.stat,
            Some(_) => return Err(Errno::ENOTDIR),
            None => return Err(Errno::ENOENT),
        }
        layers = scan.layers();
        cur.push(c);
    }
    Ok((layers, last))
}

/// Whether `path` names something in the union of `bs`.
pub fn exists(bs: &BranchSet, path: &Path) -> Result<bool> {
    match walk(bs, path, |_, _| Ok(())) {
        Ok((_, scan)) => Ok(scan.is_none_or(|s| s.top().is_some())),
        Err(Errno::ENOENT | Errno::ENOTDIR) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The names in the union directory `path` of `bs` (none if it is not one).
pub fn names(bs: &BranchSet, path: &Path) -> Vec<OsString> {
    let layers = match walk(bs, path, |_, _| Ok(())) {
        Ok((_, None)) => (0..bs.len()).collect(),
        Ok((_, Some(scan))) if scan.top().is_some_and(|t| t.is_dir()) => scan.layers(),
        _ => return Vec::new(),
    };
    let inodes = InodeTable::new((0, 0), Vec::new(), resolve::Numbers::new(bs));
    resolve::open_layers_at(bs, &layers, path)
        .and_then(|dirs| crate::readdir::merged(bs, &dirs, &inodes))
        .map(|v| v.into_iter().map(|e| e.name).collect())
        .unwrap_or_default()
}

/// Call `may` with the attributes of every directory a lookup of `path`
/// passes through, the root first (`true` with the one that holds the last
/// name); its error ends the walk.
pub fn each_dir_on_the_way(
    bs: &BranchSet,
    path: &Path,
    may: impl FnMut(&FileStat, bool) -> Result<()>,
) -> Result<()> {
    walk(bs, path, may).map(drop)
}
