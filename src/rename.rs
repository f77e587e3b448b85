//! rename, wherever the source and target live: copy up what is needed to the
//! highest writable branch, rename inside that branch, hide what remains below
//! with whiteouts. A directory with lower parts is first made whole in the
//! writable branch and opaque, so a renamed directory keeps its contents and
//! the union never answers EXDEV.
//!
//! In two phases: first, with no lock held, everything the rename needs is
//! brought into the writable branch (copy-ups, which may take long); then,
//! under the locks of both parents, the names are looked at again, the rename
//! is planned, and only a plan that can be done is carried out, in an order
//! in which each step can be taken back if a later one fails.

use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::sync::Arc;

use crate::branch::BranchSet;
use crate::resolve::{self, Instance, Node, Scan};
use crate::sys::{self, Dir, Errno, Obj, Result};
use crate::union::Union;
use crate::waiting::may_wait;
use crate::{readdir, whiteout};

const NOREPLACE: u32 = libc::RENAME_NOREPLACE;
const EXCHANGE: u32 = libc::RENAME_EXCHANGE;

/// A node held for the rename (one lookup reference, given back when dropped).
struct Held<'a> {
    union: &'a Union,
    node: Arc<Node>,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.union.resolve.forget(self.node.ino, 1);
    }
}

/// What the rename will do, decided under the locks before anything is done.
struct Plan {
    /// Lower instances of the source stay below: a whiteout hides them.
    whiteout_source: bool,
    /// The target name has a whiteout in the writable branch (it goes).
    target_whiteout: bool,
    /// Directories to mark opaque (they are whole in the writable branch,
    /// so the marker changes nothing of what they show).
    opaque_source: bool,
    opaque_target: bool,
    /// Whiteouts inside the writable instance of a target directory that
    /// the union shows as empty: removed so the rename can replace it.
    target_leftovers: Vec<OsString>,
}

/// Phase two found other objects than phase one planned for (a racing
/// change): the rename starts over. (ERESTART never comes from a syscall.)
const AGAIN: Errno = Errno::ERESTART;

impl Union {
    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> Result<()> {
        for _ in 0..8 {
            match self.rename_once(parent, name, newparent, newname, flags) {
                Err(AGAIN) => continue,
                other => return other,
            }
        }
        Err(Errno::EBUSY)
    }

    fn rename_once(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> Result<()> {
        if flags & !(NOREPLACE | EXCHANGE) != 0 || flags == NOREPLACE | EXCHANGE {
            return Err(Errno::EINVAL);
        }
        if whiteout::is_reserved(name) {
            return Err(Errno::ENOENT);
        }
        self.check_new_name(newname)?;
        let exchange = flags & EXCHANGE != 0;
        let bs = self.branches();
        let sp = self.resolve.node(parent)?;
        let dp = self.resolve.node(newparent)?;
        // Phase one: what is there, and everything the rename needs in the
        // writable branch.
        let sscan = self.resolve.scan_in(&bs, &sp, name, true)?;
        let dscan = self.resolve.scan_in(&bs, &dp, newname, true)?;
        if parent == newparent && name == newname {
            sscan.top().ok_or(Errno::ENOENT)?;
            return Ok(());
        }
        let Some((src, dst)) = self.rename_check(&bs, &sscan, &dscan, flags)? else {
            return Ok(());
        };
        let up = bs.first_writable().ok_or(Errno::EROFS)?;
        if src.idx < up || dst.as_ref().is_some_and(|d| d.idx < up) {
            return Err(Errno::EROFS);
        }
        let snode = self.hold(&bs, parent, name, &sscan)?;
        let dnode = match &dst {
            Some(_) => Some(self.hold(&bs, newparent, newname, &dscan)?),
            None => None,
        };
        self.bring_up(&bs, up, &snode.node)?;
        if exchange {
            if let Some(d) = &dnode {
                self.bring_up(&bs, up, &d.node)?;
            }
        }
        let sdir = self.dir_in(&bs, up, &sp)?;
        let ddir = self.dir_in(&bs, up, &dp)?;
        // Phase two, under both parents' locks: the names again, the plan,
        // and the rename.
        let _locks = self.resolve.lock_two(&bs, parent, newparent)?;
        if sp.is_unlinked() || dp.is_unlinked() {
            return Err(Errno::ENOENT);
        }
        if snode.node.is_unlinked() {
            // Removed, or its names given to a new node: look again.
            return Err(AGAIN);
        }
        let sscan = self.resolve.scan_in(&bs, &sp, name, true)?;
        let dscan = self.resolve.scan_in(&bs, &dp, newname, true)?;
        let Some((src, dst)) = self.rename_check(&bs, &sscan, &dscan, flags)? else {
            return Ok(());
        };
        // The same objects as in phase one, now whole in the writable branch.
        let same = |i: &Instance, n: &Node| n.has_key((bs.get(i.idx).dev, i.stat.st_ino));
        let dnode = match (&dst, dnode) {
            (None, None) => None,
            (Some(d), Some(h)) if same(d, &h.node) => Some(h),
            _ => return Err(AGAIN),
        };
        if !same(&src, &snode.node) || src.idx != up {
            return Err(AGAIN);
        }
        if exchange && dst.as_ref().is_some_and(|d| d.idx != up) {
            return Err(AGAIN);
        }
        let plan = self.rename_plan(
            &sscan,
            &dscan,
            &ddir,
            newname,
            up,
            exchange,
            &snode.node,
            &dnode,
        )?;
        self.rename_apply(&plan, &sdir, name, &ddir, newname, flags)?;
        let moved_dir = snode.node.is_dir() || dnode.as_ref().is_some_and(|d| d.node.is_dir());
        if moved_dir {
            self.resolve.dir_moved();
        }
        if exchange {
            if let Some(d) = &dnode {
                self.resolve.renamed(&d.node, &bs, parent, name, up);
            }
        } else if let Some(d) = &dnode {
            self.resolve.unlinked(&d.node, newparent, newname);
        }
        self.resolve
            .renamed(&snode.node, &bs, newparent, newname, up);
        Ok(())
    }

    /// The source and target instances, if rename(2) allows the rename:
    /// Some(None) target when there is none; None when there is nothing to
    /// do (two names of one object).
    fn rename_check(
        &self,
        bs: &BranchSet,
        sscan: &Scan,
        dscan: &Scan,
        flags: u32,
    ) -> Result<Option<(Instance, Option<Instance>)>> {
        let exchange = flags & EXCHANGE != 0;
        let src = sscan.top().ok_or(Errno::ENOENT)?.clone();
        let dst = dscan.top().cloned();
        match &dst {
            None if exchange => return Err(Errno::ENOENT),
            Some(_) if flags & NOREPLACE != 0 => return Err(Errno::EEXIST),
            Some(d) if !exchange => {
                if src.is_dir() && !d.is_dir() {
                    return Err(Errno::ENOTDIR);
                }
                if !src.is_dir() && d.is_dir() {
                    return Err(Errno::EISDIR);
                }
                if bs.get(src.idx).dev == bs.get(d.idx).dev && src.stat.st_ino == d.stat.st_ino {
                    // Two names of one object: rename(2) does nothing.
                    return Ok(None);
                }
                if d.is_dir() && !readdir::is_empty(&dscan.layer_fds())? {
                    return Err(Errno::ENOTEMPTY);
                }
            }
            _ => {}
        }
        Ok(Some((src, dst)))
    }

    #[allow(clippy::too_many_arguments)]
    fn rename_plan(
        &self,
        sscan: &Scan,
        dscan: &Scan,
        ddir: &Dir,
        newname: &OsStr,
        up: usize,
        exchange: bool,
        snode: &Node,
        dnode: &Option<Held>,
    ) -> Result<Plan> {
        let below = |scan: &Scan| {
            scan.instances.iter().any(|i| i.idx > up) || scan.whiteout.is_some_and(|w| w > up)
        };
        let target_whiteout = whiteout::has_whiteout(ddir, newname)?;
        let target_is_dir = dscan.top().is_some_and(|d| d.is_dir());
        let mut target_leftovers = Vec::new();
        if !exchange && target_is_dir {
            if let Ok(fd) = sys::open_dir(ddir, Path::new(newname)) {
                target_leftovers = sys::read_dir(&fd)?
                    .into_iter()
                    .map(|e| e.name)
                    .filter(|n| whiteout::is_reserved(n))
                    .collect();
            }
        }
        Ok(Plan {
            whiteout_source: !exchange && sscan.instances.iter().any(|i| i.idx > up),
            target_whiteout: !exchange && target_whiteout,
            opaque_source: snode.is_dir() && (exchange || below(dscan) || target_whiteout),
            opaque_target: exchange && dnode.as_ref().is_some_and(|d| d.node.is_dir()),
            target_leftovers,
        })
    }

    /// Carry out `plan`; a step that fails takes back the ones before it.
    fn rename_apply(
        &self,
        plan: &Plan,
        sdir: &Dir,
        name: &OsStr,
        ddir: &Dir,
        newname: &OsStr,
        flags: u32,
    ) -> Result<()> {
        if plan.opaque_source {
            whiteout::make_opaque(&sys::open_dir(sdir, Path::new(name))?)?;
        }
        if plan.opaque_target {
            whiteout::make_opaque(&sys::open_dir(ddir, Path::new(newname))?)?;
        }
        let leftovers = match plan.target_leftovers.is_empty() {
            true => None,
            false => Some(sys::open_dir(ddir, Path::new(newname))?),
        };
        let restore = |upto: usize| {
            if let Some(fd) = &leftovers {
                for n in &plan.target_leftovers[..upto] {
                    let _ = whiteout::create_marker(fd, n);
                }
            }
        };
        if let Some(fd) = &leftovers {
            for (i, n) in plan.target_leftovers.iter().enumerate() {
                if let Err(e) = sys::unlink_at(fd, n, false) {
                    restore(i);
                    return Err(e);
                }
            }
        }
        if let Err(e) = sys::rename_at(sdir, name, ddir, newname, flags) {
            restore(plan.target_leftovers.len());
            return Err(e);
        }
        if plan.whiteout_source {
            if let Err(e) = whiteout::create_whiteout(sdir, name) {
                // Back where it was: the source must not vanish half-moved.
                let _ = sys::rename_at(ddir, newname, sdir, name, NOREPLACE);
                restore(plan.target_leftovers.len());
                return Err(e);
            }
        }
        if plan.target_whiteout {
            // Beside the name it is harmless (the name shows): not worth a failure.
            if let Err(e) = whiteout::remove_whiteout(ddir, newname) {
                log::warn!("whiteout of {newname:?} stays beside it: {e}");
            }
        }
        Ok(())
    }

    /// The node a scan found, held for the rename.
    fn hold(&self, bs: &BranchSet, parent: u64, name: &OsStr, scan: &Scan) -> Result<Held<'_>> {
        let node = self.resolve.remember(bs, parent, name, scan)?.0;
        Ok(Held { union: self, node })
    }

    /// Put the whole object in branch `up`: a copy-up for files; for
    /// directories also every entry visible through lower branches, then
    /// the opaque marker.
    fn bring_up(&self, bs: &BranchSet, up: usize, node: &Node) -> Result<()> {
        if !node.is_dir() {
            return self.copy_up_to(bs, node, up, true);
        }
        if self.holds_pinned(node.ino) {
            // Its copy would take a pinned file away from its writers.
            return Err(Errno::EBUSY);
        }
        self.ensure_dirs(bs, up, node)?;
        let layers = self.resolve.dir_layers(bs, node)?;
        if layers == [up] {
            return Ok(());
        }
        if !may_wait() {
            // A tree to copy: not on a thread that serves other requests
            // (see copyup::SLOW_COPY).
            return Err(Errno::EINPROGRESS);
        }
        let path = self.resolve.inodes.path(node.ino)?;
        self.merge_into(bs, up, &layers, &path, Some(node.ino))?;
        let _lock = self.resolve.lock(bs, node.ino)?;
        let fd = bs.get(up).dir(&path)?;
        whiteout::make_opaque(&fd)?;
        self.resolve.made_whole(node, bs, up);
        Ok(())
    }

    /// Whether a file pinned to its branch (see handles.rs) lies under the
    /// directory `dir`.
    fn holds_pinned(&self, dir: u64) -> bool {
        let pinned = self.handles.pinned_files();
        if pinned.is_empty() {
            return false;
        }
        let Ok(top) = self.resolve.inodes.path(dir) else {
            return false;
        };
        pinned.into_iter().any(|ino| {
            self.resolve
                .inodes
                .path(ino)
                .is_ok_and(|p| p.starts_with(&top))
        })
    }

    /// Copy into branch `up` every entry of the union directory `path`
    /// (instances in `layers`) that `up` does not hold yet, recursively. Each
    /// copy is built unlocked and renamed in under the directory's lock
    /// (`dir`, the directory's node if it has one); one that someone made
    /// there meanwhile is left as it is.
    fn merge_into(
        &self,
        bs: &BranchSet,
        up: usize,
        layers: &[usize],
        path: &Path,
        dir: Option<u64>,
    ) -> Result<()> {
        let updir = bs.get(up).dir(path)?;
        let dirs = resolve::open_layers_at(bs, layers, path)?;
        for e in readdir::merged(bs, &dirs, &self.resolve.inodes)? {
            let scan = resolve::scan_path(bs, layers, path, &e.name, false)?;
            let Some(top) = scan.top() else { continue };
            let child = path.join(&e.name);
            if top.idx != up {
                let src = bs.get(top.idx).dir(path)?;
                let tmp = self.build_copy(bs, up, Obj::at(&src, &e.name), top.kind(), true)?;
                // A directory no node stands for has no names the kernel
                // knows to race with, but the branch set must hold still.
                let _steady = self.resolve.steady(bs)?;
                let _lock = dir.map(|d| self.resolve.lock(bs, d)).transpose()?;
                // Removed or renamed away meanwhile: it must not come back.
                if whiteout::has_whiteout(&updir, &e.name)? {
                    continue;
                }
                match tmp.commit(&updir, &e.name, NOREPLACE) {
                    Ok(()) => {
                        // A node the kernel knows for the entry lives in
                        // `up` now (its dentry moves with the directory).
                        if let Some(node) = self.resolve.node_of(bs, top) {
                            let st = sys::stat_at(&updir, &e.name)?;
                            if node.is_dir() {
                                self.resolve.dir_gained(&node, bs, up, &st, false);
                            } else {
                                self.resolve.copied_up(&node, bs, up, &st);
                                self.repoint_readers(bs, &node, up);
                            }
                        }
                    }
                    Err(Errno::EEXIST) => {}
                    Err(e) => return Err(e),
                }
            }
            if top.is_dir() {
                let mut sub = scan.layers();
                if !sub.contains(&up) {
                    sub.insert(0, up);
                }
                if sub != [up] {
                    let node = self.resolve.node_of(bs, top);
                    self.merge_into(bs, up, &sub, &child, node.as_ref().map(|n| n.ino))?;
                    if let Some(node) = node {
                        let _lock = self.resolve.lock(bs, node.ino)?;
                        self.resolve.made_whole(&node, bs, up);
                    }
                }
            }
        }
        Ok(())
    }
}
