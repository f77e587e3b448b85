//! Merged directory listings: each visible name once, topmost instance wins,
//! whiteouts and the work directory never shown.

use std::collections::HashSet;
use std::ffi::OsString;
use std::os::fd::AsFd;
use std::path::Path;

use crate::branch::BranchSet;
use crate::inode::InodeTable;
use crate::sys::{self, Errno, Result};
use crate::whiteout;

#[derive(Clone, Debug)]
pub struct Entry {
    pub name: OsString,
    pub ino: u64,
    /// `S_IFMT` bits.
    pub kind: u32,
}

/// The merged listing of the directory `path` whose instances are in the
/// branches `layers` (indices, top first). Inode numbers come from `inodes`,
/// so they match what lookup answers.
pub fn merged(
    bs: &BranchSet,
    layers: &[usize],
    path: &Path,
    inodes: &InodeTable,
) -> Result<Vec<Entry>> {
    let mut seen: HashSet<OsString> = HashSet::new();
    let mut hidden: HashSet<OsString> = HashSet::new();
    let mut out = Vec::new();
    for &idx in layers {
        let b = bs.get(idx);
        let dir = match b.dir(path) {
            Ok(fd) => fd,
            Err(Errno::ENOENT | Errno::ENOTDIR) => continue,
            Err(e) => return Err(e),
        };
        let mut whiteouts = Vec::new();
        for e in sys::read_dir(dir.as_fd())? {
            if whiteout::is_reserved(&e.name) {
                if let Some(h) = whiteout::hidden_name(&e.name) {
                    whiteouts.push(h.to_os_string());
                }
                continue;
            }
            if hidden.contains(&e.name) || seen.contains(&e.name) {
                continue;
            }
            let kind = if e.kind != 0 {
                e.kind
            } else {
                sys::stat_at(dir.as_fd(), &e.name)?.st_mode & libc::S_IFMT
            };
            let ino = inodes.ino_for((b.dev, e.ino));
            seen.insert(e.name.clone());
            out.push(Entry {
                name: e.name,
                ino,
                kind,
            });
        }
        hidden.extend(whiteouts);
    }
    Ok(out)
}

/// Whether the union directory has no visible entry.
pub fn is_empty(bs: &BranchSet, layers: &[usize], path: &Path) -> Result<bool> {
    let mut hidden: HashSet<OsString> = HashSet::new();
    for &idx in layers {
        let dir = match bs.get(idx).dir(path) {
            Ok(fd) => fd,
            Err(Errno::ENOENT | Errno::ENOTDIR) => continue,
            Err(e) => return Err(e),
        };
        let mut whiteouts = Vec::new();
        for e in sys::read_dir(dir.as_fd())? {
            if whiteout::is_reserved(&e.name) {
                if let Some(h) = whiteout::hidden_name(&e.name) {
                    whiteouts.push(h.to_os_string());
                }
            } else if !hidden.contains(&e.name) {
                return Ok(false);
            }
        }
        hidden.extend(whiteouts);
    }
    Ok(true)
}
