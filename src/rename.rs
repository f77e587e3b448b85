//! rename, wherever the source and target live: copy up what is needed to the
//! highest writable branch, rename inside that branch, hide what remains below
//! with whiteouts. A directory with lower parts is first made whole in the
//! writable branch and opaque, so a renamed directory keeps its contents and
//! the union never answers EXDEV.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;

use crate::branch::BranchSet;
use crate::resolve::{self, Node, Scan};
use crate::sys::{self, Errno, Obj, Result};
use crate::union::Union;
use crate::{readdir, whiteout};

const NOREPLACE: u32 = libc::RENAME_NOREPLACE;
const EXCHANGE: u32 = libc::RENAME_EXCHANGE;

impl Union {
    pub fn rename(
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
        let sscan = self.resolve.scan_in(&bs, &sp, name, true)?;
        let dscan = self.resolve.scan_in(&bs, &dp, newname, true)?;
        let src = sscan.top().ok_or(Errno::ENOENT)?.clone();
        let dst = dscan.top().cloned();
        if parent == newparent && name == newname {
            return Ok(());
        }
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
                    return Ok(());
                }
                if d.is_dir() && !readdir::is_empty(&dscan.layer_fds())? {
                    return Err(Errno::ENOTEMPTY);
                }
            }
            _ => {}
        }
        let up = bs.first_writable().ok_or(Errno::EROFS)?;
        if src.idx < up || dst.as_ref().is_some_and(|d| d.idx < up) {
            return Err(Errno::EROFS);
        }
        let snode = self.node_of(&bs, parent, name, &sscan)?;
        let dnode = match &dst {
            Some(_) => Some(self.node_of(&bs, newparent, newname, &dscan)?),
            None => None,
        };
        self.bring_up(&bs, up, &snode)?;
        if exchange {
            if let Some(d) = &dnode {
                self.bring_up(&bs, up, d)?;
            }
        }
        let sdir = self.dir_in(&bs, up, &sp)?;
        let ddir = self.dir_in(&bs, up, &dp)?;
        let below = |scan: &Scan| {
            scan.instances.iter().any(|i| i.idx > up) || scan.whiteout.is_some_and(|w| w > up)
        };
        if !exchange && sscan.instances.iter().any(|i| i.idx > up) {
            whiteout::create_whiteout(&sdir, name)?;
        }
        let dst_whiteout = whiteout::has_whiteout(&ddir, newname)?;
        if snode.is_dir() && (exchange || below(&dscan) || dst_whiteout) {
            let d = sys::open_dir(&sdir, Path::new(name))?;
            whiteout::make_opaque(&d)?;
        }
        if exchange {
            if dnode.as_ref().is_some_and(|d| d.is_dir()) {
                let fd = sys::open_dir(&ddir, Path::new(newname))?;
                whiteout::make_opaque(&fd)?;
            }
        } else if dst.as_ref().is_some_and(|d| d.is_dir()) {
            // The writable instance of the target may hold whiteouts only
            // (the union directory is empty): clear them so rename can replace it.
            if let Ok(fd) = sys::open_dir(&ddir, Path::new(newname)) {
                for e in sys::read_dir(&fd)? {
                    if whiteout::is_reserved(&e.name) {
                        sys::unlink_at(&fd, &e.name, false)?;
                    }
                }
            }
        }
        sys::rename_at(&sdir, name, &ddir, newname, flags)?;
        if snode.is_dir() || dnode.as_ref().is_some_and(|d| d.is_dir()) {
            self.resolve.dir_moved();
        }
        if !exchange && dst_whiteout {
            whiteout::remove_whiteout(&ddir, newname)?;
        }
        if exchange {
            if let Some(d) = &dnode {
                self.resolve.renamed(d, &bs, parent, name, up);
            }
        } else if let Some(d) = &dnode {
            self.resolve.unlinked(d, newparent, newname);
        }
        self.resolve.renamed(&snode, &bs, newparent, newname, up);
        self.release_node(&snode);
        if let Some(d) = &dnode {
            self.release_node(d);
        }
        Ok(())
    }

    /// The node a scan found, with a lookup reference the caller gives back
    /// with [`release_node`].
    fn node_of(&self, bs: &BranchSet, parent: u64, name: &OsStr, scan: &Scan) -> Result<Arc<Node>> {
        Ok(self.resolve.remember(bs, parent, name, scan)?.0)
    }

    fn release_node(&self, node: &Node) {
        self.resolve.forget(node.ino, 1);
    }

    /// Put the whole object in branch `up`: a copy-up for files; for
    /// directories also every entry visible through lower branches, then
    /// the opaque marker.
    fn bring_up(&self, bs: &BranchSet, up: usize, node: &Node) -> Result<()> {
        if !node.is_dir() {
            return self.copy_up_to(bs, node, up, true);
        }
        self.ensure_dirs(bs, up, node)?;
        let layers = self.resolve.dir_layers(bs, node)?;
        if layers == [up] {
            return Ok(());
        }
        let path = self.resolve.inodes.path(node.ino)?;
        self.merge_into(bs, up, &layers, &path)?;
        let fd = bs.get(up).dir(&path)?;
        whiteout::make_opaque(&fd)?;
        self.resolve.made_whole(node, bs, up);
        Ok(())
    }

    /// Copy into branch `up` every entry of the union directory `path`
    /// (instances in `layers`) that `up` does not hold yet, recursively.
    fn merge_into(&self, bs: &BranchSet, up: usize, layers: &[usize], path: &Path) -> Result<()> {
        let updir = bs.get(up).dir(path)?;
        let dirs = resolve::open_layers_at(bs, layers, path)?;
        for e in readdir::merged(bs, &dirs, &self.resolve.inodes)? {
            let scan = resolve::scan_path(bs, layers, path, &e.name, false)?;
            let Some(top) = scan.top() else { continue };
            let child = path.join(&e.name);
            if top.idx != up {
                let src = bs.get(top.idx).dir(path)?;
                let tmp = self.build_copy(bs, up, Obj::at(&src, &e.name), top.kind(), true)?;
                tmp.commit(&updir, &e.name, NOREPLACE)?;
            }
            if top.is_dir() {
                let mut sub = scan.layers();
                if !sub.contains(&up) {
                    sub.insert(0, up);
                }
                if sub != [up] {
                    self.merge_into(bs, up, &sub, &child)?;
                }
            }
        }
        Ok(())
    }
}
