//! Creating names: create, mkdir, mknod, symlink, link. New entries go to the
//! highest writable branch, with their parent directories copied there; a
//! whiteout for the name in that branch is replaced, and a new directory over
//! whited-out lower directories is made opaque.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::path::Path;

use nix::fcntl::OFlag;

use crate::acl;
use crate::copyup::{make_node, Temp};
use crate::handles::Opened;
use crate::resolve::Attr;
use crate::sys::{self, Dir, Errno, Result};
use crate::union::{Caller, Union};
use crate::whiteout;

/// What to create.
#[derive(Clone, Copy, Debug)]
pub enum New<'a> {
    File {
        mode: u32,
        flags: i32,
    },
    /// A file with no name (O_TMPFILE), until a link gives it one.
    Tmpfile {
        mode: u32,
        flags: i32,
    },
    Dir {
        mode: u32,
    },
    Special {
        mode: u32,
        rdev: u64,
    },
    Symlink {
        target: &'a OsStr,
    },
}

impl Union {
    /// Create `name` in directory `parent`; a regular file is also opened.
    pub fn create(
        &self,
        parent: u64,
        name: &OsStr,
        caller: Caller,
        new: New,
    ) -> Result<(Attr, Option<Opened>)> {
        let unnamed = matches!(new, New::Tmpfile { .. });
        if !unnamed {
            self.check_new_name(name)?;
        }
        let _admitted = match new {
            New::File { .. } | New::Tmpfile { .. } => Some(self.handles.admit_writer()?),
            _ => None,
        };
        let bs = self.branches();
        let pnode = self.resolve.node(parent)?;
        if !unnamed
            && self
                .resolve
                .scan_in(&bs, &pnode, name, false)?
                .top()
                .is_some()
        {
            return Err(Errno::EEXIST);
        }
        let up = bs.first_writable().ok_or(Errno::EROFS)?;
        // The parent in the writable branch first (made with no lock held),
        // then the name, under the parent's lock, checked again.
        let pdir = self.dir_in(&bs, up, &pnode)?;
        let pdir: &Dir = &pdir;
        let _lock = self.resolve.lock(&bs, parent)?;
        if pnode.is_unlinked() {
            return Err(Errno::ENOENT);
        }
        let layers = self.resolve.dir_layers(&bs, &pnode)?;
        let (replaces_whiteout, opaque) = match unnamed {
            true => (false, false),
            false => {
                let scan = self.resolve.scan_at(&bs, &pnode, &layers, name, false)?;
                if scan.top().is_some() {
                    return Err(Errno::EEXIST);
                }
                let replaces = whiteout::has_whiteout(pdir, name)?;
                // Something below may be hidden by a whiteout: a new
                // directory must not reveal it.
                (replaces, replaces || scan.whiteout.is_some())
            }
        };
        // The union attributes of the parent are its top instance's.
        let pst = if layers.first() == Some(&up) {
            sys::fstat(pdir.as_fd())?
        } else {
            self.getattr(parent, None)?.st
        };
        let setgid = pst.st_mode & libc::S_ISGID != 0;
        let uid = caller.uid;
        let gid = if setgid { pst.st_gid } else { caller.gid };
        // What the kernel gives a new entry of this daemon anyway needs no chown.
        let chown = uid != sys::geteuid() || (!setgid && gid != sys::getegid());
        // A default ACL of the parent is what the new entry inherits; the
        // caller's umask applies only where there is none.
        let default_acl = match new {
            New::Symlink { .. } => None,
            _ => acl::default_of(pdir)?,
        };
        let masked = |mode: u32| match default_acl {
            Some(_) => mode,
            None => mode & !caller.umask,
        };
        let mut file = None;
        match new {
            New::File { mode, flags } | New::Tmpfile { mode, flags } => {
                let acc = OFlag::from_bits_truncate(
                    flags & (libc::O_ACCMODE | libc::O_APPEND | libc::O_SYNC | libc::O_DSYNC),
                );
                let mode = masked(mode & 0o7777);
                // The branch gives it the parent's default ACL, if any.
                let fd = match unnamed {
                    // O_EXCL: never to be linked, in the branch too.
                    true => sys::open_at(
                        pdir,
                        OsStr::new("."),
                        acc | OFlag::O_TMPFILE | OFlag::from_bits_truncate(flags & libc::O_EXCL),
                        mode,
                    )?,
                    false => sys::open_at(pdir, name, acc | OFlag::O_CREAT | OFlag::O_EXCL, mode)?,
                };
                let owned = if chown {
                    sys::chown_fd(fd.as_fd(), Some(uid), Some(gid))
                } else {
                    Ok(())
                };
                // The daemon's umask took bits, or the chown took setuid
                // ones: exactly the mode asked for (or the ACL gave).
                let moded = match &default_acl {
                    None if mode & sys::UMASK != 0 || (chown && mode & 0o6000 != 0) => {
                        sys::chmod_fd(fd.as_fd(), mode)
                    }
                    Some(d) if chown && mode & 0o6000 != 0 => acl::inherit(d, mode)
                        .and_then(|(m, _)| sys::chmod_fd(fd.as_fd(), m & 0o7777)),
                    _ => Ok(()),
                };
                match unnamed {
                    // Nothing to take back: it goes with its fd.
                    true => owned.and(moded)?,
                    false => undo_on_err(pdir, name, false, owned.and(moded))?,
                }
                file = Some((fd, acc));
            }
            New::Dir { mode } => {
                let mode = masked(mode & 0o7777) | if setgid { libc::S_ISGID } else { 0 };
                let mut tmp = Temp::new(bs.get(up).work()?);
                let tname = tmp.name.clone();
                sys::mkdir_at(tmp.dir(), &tname, 0o700)?;
                tmp.arm();
                let t = sys::open_dir(tmp.dir(), Path::new(&tname))?;
                if opaque {
                    whiteout::make_opaque(&t)?;
                }
                sys::chown_obj(t.as_fd(), Some(uid), Some(gid))?;
                // Made in the work directory: what the parent would give it.
                match &default_acl {
                    Some(d) => acl::apply(t.as_fd(), d, mode, true)?,
                    None => sys::chmod_fd(t.as_fd(), mode)?,
                }
                tmp.commit(pdir, name, libc::RENAME_NOREPLACE)?;
            }
            New::Special { mode, rdev }
                if chown || (default_acl.is_none() && masked(mode) & sys::UMASK != 0) =>
            {
                // Owner and mode are set on the new node through its fd in
                // the work directory, then it is renamed into place.
                let mut tmp = Temp::new(bs.get(up).work()?);
                let tname = tmp.name.clone();
                let made = make_node(tmp.dir(), &tname, mode, rdev, None);
                tmp.arm();
                let fd = made?;
                sys::chown_obj(fd.as_fd(), Some(uid), Some(gid))?;
                match &default_acl {
                    Some(d) => acl::apply(fd.as_fd(), d, mode & 0o7777, false)?,
                    None => sys::chmod_fd(fd.as_fd(), masked(mode) & 0o7777)?,
                }
                tmp.commit(pdir, name, libc::RENAME_NOREPLACE)?;
            }
            New::Special { mode, rdev } => sys::mknod_at(pdir, name, masked(mode), rdev)?,
            New::Symlink { target } if chown => {
                let mut tmp = Temp::new(bs.get(up).work()?);
                let tname = tmp.name.clone();
                let made = make_node(tmp.dir(), &tname, libc::S_IFLNK, 0, Some(target));
                tmp.arm();
                sys::chown_obj(made?.as_fd(), Some(uid), Some(gid))?;
                tmp.commit(pdir, name, libc::RENAME_NOREPLACE)?;
            }
            New::Symlink { target } => sys::symlink_at(target, pdir, name)?,
        }
        if replaces_whiteout {
            whiteout::remove_whiteout(pdir, name)?;
        }
        let st = match &file {
            Some((fd, _)) => sys::fstat(fd.as_fd())?,
            None => sys::stat_at(pdir, name)?,
        };
        let (node, attr) = match unnamed {
            true => self.resolve.created_unnamed(&bs, up, parent, st),
            false => self.resolve.created(&bs, up, parent, name, st),
        };
        let id = bs.get(up).id;
        let opened = file.map(|(fd, flags)| {
            let file = sys::into_file(fd);
            let mut o = self.handles.add_file(node, file, flags, id, bs.generation);
            // On a writable branch: no copy-up can move it under the handle.
            o.passthrough_ok = true;
            o
        });
        Ok((attr, opened))
    }

    /// A hard link `newparent/newname` to the object `ino`, made in the branch
    /// that holds the object once it is copied up.
    pub fn link(&self, ino: u64, newparent: u64, newname: &OsStr) -> Result<Attr> {
        self.check_new_name(newname)?;
        let node = self.resolve.node(ino)?;
        if node.is_dir() {
            return Err(Errno::EPERM);
        }
        if node.is_unlinked() {
            return self.link_unnamed(&node, newparent, newname);
        }
        let pnode = self.resolve.node(newparent)?;
        let scan = self
            .resolve
            .scan_in(&self.branches(), &pnode, newname, false)?;
        if scan.top().is_some() {
            return Err(Errno::EEXIST);
        }
        if self.handles.pinned(node.ino).is_some() {
            // Kept on a read-only branch until its writers close.
            return Err(Errno::EBUSY);
        }
        let bs = self.copy_up(&node, true)?;
        let idx = self.resolve.top_idx(&bs, &node)?;
        let (src_fd, src_name) = self.resolve.parent_in(&bs, &node, idx)?;
        let pdir = self.dir_in(&bs, idx, &pnode)?;
        let _lock = self.resolve.lock(&bs, newparent)?;
        let scan = self.resolve.scan_in(&bs, &pnode, newname, false)?;
        if pnode.is_unlinked() || node.is_unlinked() {
            return Err(Errno::ENOENT);
        }
        if scan.top().is_some() {
            return Err(Errno::EEXIST);
        }
        if scan.whiteout.is_some_and(|w| w < idx) {
            // A whiteout above the object's branch would hide the new name.
            return Err(Errno::EXDEV);
        }
        sys::link_at(&src_fd, &src_name, &pdir, newname)?;
        whiteout::remove_whiteout(&pdir, newname)?;
        self.resolve.linked(&node, newparent, newname);
        let st = sys::stat_at(&pdir, newname)?;
        let (_, attr) = self.resolve.created(&bs, idx, newparent, newname, st);
        Ok(attr)
    }
}

impl Union {
    /// A name for a file that has none (an O_TMPFILE one, or one whose last
    /// name is gone, which the branch refuses with ENOENT), made in the
    /// branch its open file is on.
    fn link_unnamed(
        &self,
        node: &crate::resolve::Node,
        newparent: u64,
        newname: &OsStr,
    ) -> Result<Attr> {
        let h = self.handles.file_for(node, None)?;
        let bs = self.branches();
        let idx = bs.index_of(h.on_branch()).ok_or(Errno::ENOENT)?;
        if !bs.get(idx).writable() {
            return Err(Errno::EROFS);
        }
        let pnode = self.resolve.node(newparent)?;
        let pdir = self.dir_in(&bs, idx, &pnode)?;
        let _lock = self.resolve.lock(&bs, newparent)?;
        let scan = self.resolve.scan_in(&bs, &pnode, newname, false)?;
        if pnode.is_unlinked() {
            return Err(Errno::ENOENT);
        }
        if scan.top().is_some() {
            return Err(Errno::EEXIST);
        }
        if scan.whiteout.is_some_and(|w| w < idx) {
            return Err(Errno::EXDEV);
        }
        sys::link_fd_at(h.file().as_fd(), &pdir, newname)?;
        whiteout::remove_whiteout(&pdir, newname)?;
        // The node's key finds it: it now has this name.
        let st = sys::stat_at(&pdir, newname)?;
        let (_, attr) = self.resolve.created(&bs, idx, newparent, newname, st);
        Ok(attr)
    }
}

/// If the step after a create failed, take the create back.
fn undo_on_err(dir: &Dir, name: &OsStr, is_dir: bool, res: Result<()>) -> Result<()> {
    if let Err(e) = res {
        let _ = sys::unlink_at(dir, name, is_dir);
        return Err(e);
    }
    Ok(())
}
