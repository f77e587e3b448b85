//! Reflink clones behind read-only opens of lower files (passthrough=on).
//!
//! The kernel serves a passthrough open from one backing file that can never
//! change, while a file opened read-only before a copy-up must see the
//! writes made after it. Where the lower branch and the copy-up target are
//! one filesystem that shares extents (xfs, btrfs), both hold: the open is
//! backed by a clone of the lower file, made (no name, O_TMPFILE) in the
//! target's work directory, and a copy-up gives that very clone its name
//! instead of copying. The readers' backing file then is the copy. A clone
//! costs a few metadata writes in the target; it goes with its last open.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsFd;
use std::sync::Arc;

use nix::fcntl::OFlag;

use crate::branch::BranchSet;
use crate::copyup::{copy_meta, Temp};
use crate::options::Passthrough;
use crate::resolve::{Node, BRANCHES_CHANGED};
use crate::sys::{self, Dir, Errno, Obj, Result};
use crate::union::Union;

/// Files smaller than this are read through the daemon: measured on xfs,
/// a clone (an inode made and freed) costs more than serving a small file.
const CLONE_MIN: i64 = 1 << 20;

impl Union {
    /// The branch whose clone would back a read-only open of a file on
    /// branch `idx`: its copy-up target, when that is on the same filesystem
    /// and not known to refuse reflinks.
    pub(crate) fn clone_target(&self, bs: &BranchSet, idx: usize) -> Option<usize> {
        if self.passthrough != Passthrough::On || bs.get(idx).writable() {
            return None;
        }
        let t = bs.writable_above(idx)?;
        let fits = bs.get(t).dev == bs.get(idx).dev
            && !self.reflinks.refused(bs, idx, t)
            && self.reflinks.can(bs, t);
        fits.then_some(t)
    }

    /// Whether a read-only open of `node` is worth a clone: its readers hold
    /// one already (they must share it), or the file is large enough that
    /// reads by the kernel repay making one (a small file is read in a
    /// request or two, and its page cache is kept across opens anyway).
    pub(crate) fn worth_a_clone(&self, bs: &BranchSet, node: &Node) -> bool {
        self.handles.has_clone(node.ino)
            || self
                .resolve
                .on_top(bs, node, |top| top.stat())
                .is_ok_and(|st| st.st_size >= CLONE_MIN)
    }

    /// The clone of `node` (on branch `idx`) in branch `t` its open handles
    /// share, made if there is none. Called with the node's copy-up turn
    /// held, so there is one. Where the pair cannot clone after all, the
    /// open starts again (BRANCHES_CHANGED) and is served by the daemon.
    pub(crate) fn clone_of(
        &self,
        bs: &BranchSet,
        node: &Node,
        idx: usize,
        t: usize,
    ) -> Result<Arc<File>> {
        if let Some(f) = self.handles.clone_of(node.ino, bs.get(t).id) {
            return Ok(f);
        }
        let lower = self.resolve.open_in(bs, node, idx, OFlag::O_RDONLY)?;
        let clone = sys::tmpfile_in(&*bs.get(t).work()?, 0o600)?;
        match sys::ficlone(clone.as_fd(), lower.as_fd()) {
            Ok(()) => Ok(Arc::new(sys::into_file(clone))),
            Err(e @ (Errno::EOPNOTSUPP | Errno::EXDEV | Errno::EINVAL | Errno::ENOTTY)) => {
                self.reflinks.refuse(bs, idx, t, e);
                Err(BRANCHES_CHANGED)
            }
            Err(e) => Err(e),
        }
    }

    /// For a copy-up of `node` (its source `name` in `sdir`) to branch
    /// `target`: the clone its readers hold, made the copy (brought up to
    /// date with the source, or emptied when no `data` is wanted), with the
    /// source's metadata, linked into the work directory. None: no clone.
    pub(crate) fn copy_from_clone(
        &self,
        bs: &BranchSet,
        target: usize,
        node: &Node,
        sdir: &Dir,
        name: &OsStr,
        data: bool,
    ) -> Result<Option<Temp>> {
        if node.kind != libc::S_IFREG {
            return Ok(None);
        }
        let Some(clone) = self.handles.clone_of(node.ino, bs.get(target).id) else {
            return Ok(None);
        };
        let src = Obj::at(sdir, name).open(OFlag::O_RDONLY)?;
        let st = sys::fstat(src.as_fd())?;
        // The lower file may have been changed directly since the clone.
        if data {
            clone_again(&clone, src.as_fd())?;
        } else {
            sys::truncate_fd(clone.as_fd(), 0)?;
        }
        let mut tmp = Temp::new(bs.get(target).work()?);
        sys::link_fd_at(clone.as_fd(), tmp.dir(), &tmp.name.clone())?;
        tmp.arm();
        copy_meta(Obj::fd(src.as_fd()), &st, clone.as_fd())?;
        Ok(Some(tmp))
    }
}

/// Make `clone` a clone of `src` again; where nothing changed its readers
/// see the same bytes throughout. A file of another size is emptied first
/// (the kernel clones a partial last block only to the end of the file).
fn clone_again(clone: &File, src: std::os::fd::BorrowedFd) -> Result<()> {
    let size = sys::fstat(src)?.st_size;
    if sys::fstat(clone.as_fd())?.st_size != size {
        sys::truncate_fd(clone.as_fd(), 0)?;
    }
    if size > 0 {
        sys::ficlone(clone.as_fd(), src)?;
    }
    Ok(())
}

/// A clone readers hold: its node, on branch `idx` of `bs`.
struct Held {
    node: Arc<Node>,
    bs: Arc<BranchSet>,
    idx: usize,
    clone: Arc<File>,
}

impl Union {
    /// The lower file of `ino` was changed directly in its branch (an event
    /// of udba=notify): the clone its readers hold, if any, is cloned again,
    /// so they see the change as readers of the lower file would.
    pub(crate) fn reclone(&self, ino: u64) {
        let Some(Held {
            node,
            bs,
            idx,
            clone,
        }) = self.held_clone(ino)
        else {
            return;
        };
        // Busy: a copy-up is under way, and it clones the file again itself.
        let Ok(_turn) = node.copying.enter() else {
            return;
        };
        if self.resolve.top_idx(&bs, &node).ok() != Some(idx) {
            return;
        }
        let res = self
            .resolve
            .open_in(&bs, &node, idx, OFlag::O_RDONLY)
            .and_then(|src| clone_again(&clone, src.as_fd()));
        if let Err(e) = res {
            log::warn!("inode {ino}: its clone could not follow a direct change: {e}");
        }
    }

    /// The node `ino`, on a read-only branch, with the clone its readers hold.
    fn held_clone(&self, ino: u64) -> Option<Held> {
        // Nothing is resolved (nor settled, off a request) for the files
        // that have no clone: nearly all of them.
        if !self.handles.has_clone(ino) {
            return None;
        }
        let node = self.resolve.node(ino).ok()?;
        let bs = self.branches();
        let idx = self.resolve.top_idx(&bs, &node).ok()?;
        let t = self.clone_target(&bs, idx)?;
        let clone = self.handles.clone_of(ino, bs.get(t).id)?;
        Some(Held {
            node,
            bs,
            idx,
            clone,
        })
    }
}
