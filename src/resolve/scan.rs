//! Name resolution across branches: the first branch that has the name, or a
//! whiteout for it, decides; directories merge downwards until an opaque one,
//! a non-directory, or a whiteout.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;

use super::nameindex::Hint;
use crate::branch::BranchSet;
use crate::sys::{self, Dir, Errno, FileStat, Result};
use crate::whiteout;

#[derive(Clone, Debug)]
pub struct Instance {
    /// Index in the branch set the scan ran on.
    pub idx: usize,
    pub stat: FileStat,
    /// A directory holding the opaque marker.
    pub opaque: bool,
    /// Directories: an fd on this instance, opened while checking it.
    pub dir: Option<Arc<Dir>>,
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
    /// The location tick when the scan began (see `Loc::moved`).
    pub seen: u64,
}

impl Scan {
    pub fn top(&self) -> Option<&Instance> {
        self.instances.first()
    }

    /// The directory instances that merge into the union directory (empty
    /// when the top instance is not a directory), top first.
    fn merging(&self) -> impl Iterator<Item = &Instance> {
        let mut done = false;
        self.instances.iter().take_while(move |i| {
            let take = !done && i.is_dir();
            done = done || i.opaque;
            take
        })
    }

    /// Branch indices whose directory instances merge into the union
    /// directory (empty when the top instance is not a directory).
    pub fn layers(&self) -> Vec<usize> {
        self.merging().map(|i| i.idx).collect()
    }

    /// The merging directory instances as (branch index, fd), top first.
    pub fn layer_fds(&self) -> Vec<(usize, Arc<Dir>)> {
        self.merging()
            .filter_map(|i| i.dir.clone().map(|d| (i.idx, d)))
            .collect()
    }

    /// Whether anything below branch `idx` would show if `idx` and the
    /// branches above it lost the name.
    pub fn has_below(&self, idx: usize) -> bool {
        self.instances.iter().any(|i| i.idx > idx)
    }
}

/// Scan `name` in a directory whose instances are in the branches
/// `parent_layers` (indices, top first); `dir_of` gives an fd on the
/// directory's instance in a branch. A `full` scan goes on past what is
/// visible, down to a whiteout, to find every instance a delete must hide.
pub fn scan(
    parent_layers: &[usize],
    name: &OsStr,
    full: bool,
    dir_of: impl Fn(usize) -> Result<Arc<Dir>>,
    hint: impl Fn(usize) -> Option<Hint>,
) -> Result<Scan> {
    let mut out = Scan::default();
    for &idx in parent_layers {
        // An indexed read-only branch needs no probe unless it holds the name.
        match hint(idx) {
            Some(Hint::Absent) => continue,
            Some(Hint::Whiteout) => {
                out.whiteout = Some(idx);
                break;
            }
            Some(Hint::Present) | None => {}
        }
        let dir = match dir_of(idx) {
            Ok(fd) => fd,
            Err(Errno::ENOENT | Errno::ENOTDIR) => continue,
            Err(e) => return Err(e),
        };
        let dir: &Dir = &dir;
        // Below a directory instance the name is most likely a directory too:
        // open it at once (the fd is kept) and fstat the fd, rather than a
        // stat by name then an open by name.
        let found = if out.top().is_some_and(|t| t.is_dir()) {
            match sys::open_dir(dir, Path::new(name)) {
                Ok(sub) => sys::fstat(std::os::fd::AsFd::as_fd(&sub)).map(|st| (st, Some(sub))),
                Err(Errno::ENOTDIR | Errno::ELOOP) => sys::stat_at(dir, name).map(|st| (st, None)),
                Err(e) => Err(e),
            }
        } else {
            sys::stat_at(dir, name).map(|st| (st, None))
        };
        match found {
            Ok((stat, opened)) => {
                let is_dir = stat.st_mode & libc::S_IFMT == libc::S_IFDIR;
                let first_kind_dir = out.top().map(|t| t.is_dir()).unwrap_or(is_dir);
                let (sub, opaque) = if is_dir && (full || first_kind_dir) {
                    let sub = match opened {
                        Some(sub) => sub,
                        None => match sys::open_dir(dir, Path::new(name)) {
                            Ok(sub) => sub,
                            // Replaced since the stat: not a directory after all.
                            Err(Errno::ENOENT | Errno::ENOTDIR) => continue,
                            Err(e) => return Err(e),
                        },
                    };
                    let opaque = sys::exists_at(&sub, OsStr::new(whiteout::OPAQUE))?;
                    (Some(Arc::new(sub)), opaque)
                } else {
                    (None, false)
                };
                out.instances.push(Instance {
                    idx,
                    stat,
                    opaque,
                    dir: sub,
                });
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

/// [`scan`] with the parent directory given as a path below each branch root.
pub fn scan_path(
    bs: &BranchSet,
    parent_layers: &[usize],
    parent_path: &Path,
    name: &OsStr,
    full: bool,
) -> Result<Scan> {
    scan(
        parent_layers,
        name,
        full,
        |idx| bs.get(idx).dir(parent_path).map(Arc::new),
        |_| None,
    )
}
