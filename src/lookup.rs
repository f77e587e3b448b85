//! Name resolution across branches: the first branch that has the name, or a
//! whiteout for it, decides; directories merge downwards until an opaque one,
//! a non-directory, or a whiteout.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::path::Path;

use crate::branch::BranchSet;
use crate::sys::{self, Errno, FileStat, Result};
use crate::whiteout;

#[derive(Clone, Debug)]
pub struct Instance {
    /// Index in the branch set the scan ran on.
    pub idx: usize,
    pub stat: FileStat,
    /// A directory holding the opaque marker.
    pub opaque: bool,
}

impl Instance {
    pub fn is_dir(&self) -> bool {
        self.stat.st_mode & libc::S_IFMT == libc::S_IFDIR
    }

    pub fn kind(&self) -> u32 {
        self.stat.st_mode & libc::S_IFMT
    }
}

/// The instances of one name in the branches of its parent directory.
#[derive(Debug, Default)]
pub struct Scan {
    pub instances: Vec<Instance>,
    /// Index of the branch whose whiteout ended the scan.
    pub whiteout: Option<usize>,
}

impl Scan {
    pub fn top(&self) -> Option<&Instance> {
        self.instances.first()
    }

    /// Branch indices whose directory instances merge into the union
    /// directory (empty when the top instance is not a directory).
    pub fn layers(&self) -> Vec<usize> {
        let mut out = Vec::new();
        for inst in &self.instances {
            if !inst.is_dir() {
                break;
            }
            out.push(inst.idx);
            if inst.opaque {
                break;
            }
        }
        out
    }

    /// Whether anything below branch `idx` would show if `idx` and the
    /// branches above it lost the name.
    pub fn has_below(&self, idx: usize) -> bool {
        self.instances.iter().any(|i| i.idx > idx)
    }
}

/// Scan `name` in the directory `parent_path`, through the branches
/// `parent_layers` (indices, top first). A `full` scan goes on past what is
/// visible, down to a whiteout, to find every instance a delete must hide.
pub fn scan(
    bs: &BranchSet,
    parent_layers: &[usize],
    parent_path: &Path,
    name: &OsStr,
    full: bool,
) -> Result<Scan> {
    let mut out = Scan::default();
    for &idx in parent_layers {
        let dir = match bs.get(idx).dir(parent_path) {
            Ok(fd) => fd,
            Err(Errno::ENOENT | Errno::ENOTDIR) => continue,
            Err(e) => return Err(e),
        };
        let dir = dir.as_fd();
        match sys::stat_at(dir, name) {
            Ok(stat) => {
                let is_dir = stat.st_mode & libc::S_IFMT == libc::S_IFDIR;
                let opaque = is_dir && whiteout::is_opaque(dir, name)?;
                let first_kind_dir = out.top().map(|t| t.is_dir()).unwrap_or(is_dir);
                out.instances.push(Instance { idx, stat, opaque });
                if !full && (!is_dir || !first_kind_dir || opaque) {
                    break;
                }
                // A whiteout beside the name hides what lies below this branch.
                if (is_dir || full) && whiteout::has_whiteout(dir, name)? {
                    out.whiteout = Some(idx);
                    break;
                }
            }
            Err(Errno::ENOENT) => {
                if whiteout::has_whiteout(dir, name)? {
                    out.whiteout = Some(idx);
                    break;
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}
