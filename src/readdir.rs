//! Merged directory listings: each visible name once, topmost instance wins,
//! whiteouts and the work directory never shown.

use std::collections::HashSet;
use std::ffi::OsString;
use std::ops::ControlFlow;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use crate::branch::BranchSet;
use crate::inode::InodeTable;
use crate::sys::{self, DirEntry, Errno, Result};
use crate::whiteout;

#[derive(Clone, Debug)]
pub struct Entry {
    pub name: OsString,
    pub ino: u64,
    /// `S_IFMT` bits.
    pub kind: u32,
}

/// Call `f` with each visible entry of the union directory `path` whose
/// instances are in branches `layers` (indices, top first): the branch index,
/// an fd on that branch's directory, and the entry. Stops when `f` breaks.
fn each_visible(
    bs: &BranchSet,
    layers: &[usize],
    path: &Path,
    mut f: impl FnMut(usize, BorrowedFd, DirEntry) -> Result<ControlFlow<()>>,
) -> Result<()> {
    let mut seen: HashSet<OsString> = HashSet::new();
    let mut hidden: HashSet<OsString> = HashSet::new();
    for &idx in layers {
        let dir = match bs.get(idx).dir(path) {
            Ok(fd) => fd,
            Err(Errno::ENOENT | Errno::ENOTDIR) => continue,
            Err(e) => return Err(e),
        };
        // A whiteout hides names of lower branches, not of its own.
        let mut whiteouts = Vec::new();
        for e in sys::read_dir(dir.as_fd())? {
            if whiteout::is_reserved(&e.name) {
                if let Some(h) = whiteout::hidden_name(&e.name) {
                    whiteouts.push(h.to_os_string());
                }
                continue;
            }
            if hidden.contains(&e.name) || !seen.insert(e.name.clone()) {
                continue;
            }
            if f(idx, dir.as_fd(), e)?.is_break() {
                return Ok(());
            }
        }
        hidden.extend(whiteouts);
    }
    Ok(())
}

/// The merged listing of a union directory. Inode numbers come from `inodes`,
/// so they match what lookup answers.
pub fn merged(
    bs: &BranchSet,
    layers: &[usize],
    path: &Path,
    inodes: &InodeTable,
) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    each_visible(bs, layers, path, |idx, dir, e| {
        let kind = if e.kind != 0 {
            e.kind
        } else {
            sys::stat_at(dir, &e.name)?.st_mode & libc::S_IFMT
        };
        let ino = inodes.ino_for((bs.get(idx).dev, e.ino));
        out.push(Entry {
            name: e.name,
            ino,
            kind,
        });
        Ok(ControlFlow::Continue(()))
    })?;
    Ok(out)
}

/// Whether the union directory has no visible entry.
pub fn is_empty(bs: &BranchSet, layers: &[usize], path: &Path) -> Result<bool> {
    let mut empty = true;
    each_visible(bs, layers, path, |_, _, _| {
        empty = false;
        Ok(ControlFlow::Break(()))
    })?;
    Ok(empty)
}
