//! Copy-up: bring an object whose topmost instance is on a read-only branch to
//! the highest writable branch above it, parents first. Each copy is built in
//! the branch's work directory (data, then xattrs, then owner, mode, times) and
//! renamed into place, so a crash never leaves a partial file visible.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use nix::fcntl::OFlag;

use crate::branch::{temp_name, BranchSet};
use crate::resolve::{Node, ROOT};
use crate::sys::{self, Dir, Errno, FileStat, Obj, Result, Time};
use crate::tree::remove_tree;
use crate::union::Union;
use crate::waiting::may_wait;
use crate::whiteout;

const RENAME_NOREPLACE: u32 = libc::RENAME_NOREPLACE;

/// An entry being built in a work directory; removed on drop unless committed.
pub(crate) struct Temp {
    work: Arc<Dir>,
    pub name: OsString,
    armed: bool,
}

impl Temp {
    pub fn new(work: Arc<Dir>) -> Temp {
        Temp {
            work,
            name: temp_name(),
            armed: false,
        }
    }

    /// The work directory the entry lives in.
    pub fn dir(&self) -> &Dir {
        &self.work
    }

    /// From now on the entry exists and is cleaned up on failure.
    pub fn arm(&mut self) {
        self.armed = true;
    }

    /// Rename the entry into `dir/name`: the one step that makes it visible.
    pub fn commit(mut self, dir: &Dir, name: &OsStr, flags: u32) -> Result<()> {
        sys::rename_at(&self.work, &self.name, dir, name, flags)?;
        self.armed = false;
        Ok(())
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = remove_tree(&self.work, &self.name) {
                log::warn!("could not remove work entry {:?}: {e}", self.name);
            }
        }
    }
}

fn is_kind(st: &FileStat, kind: u32) -> bool {
    st.st_mode & libc::S_IFMT == kind
}

/// Copy owner, mode, xattrs and times from `src` (an fd on the source) to
/// `dst`, an fd on the copy that this process made itself (`O_PATH` for what
/// cannot be opened otherwise): calls on the fd, never on a name that
/// someone could replace meanwhile. The owner first, since a chown clears
/// setuid bits and file capabilities; the times last.
pub fn copy_meta(src: Obj, st: &FileStat, dst: BorrowedFd) -> Result<()> {
    let link = is_kind(st, libc::S_IFLNK);
    let to = Obj::fd(dst);
    // A new entry belongs to this daemon already.
    if (st.st_uid, st.st_gid) != (sys::geteuid(), sys::getegid()) {
        to.chown(Some(st.st_uid), Some(st.st_gid))?;
    }
    if !link {
        sys::chmod_obj(to, st.st_mode & 0o7777)?;
        for (k, v) in sys::all_xattrs_obj(src)? {
            match sys::set_xattr_obj(to, &k, &v, 0) {
                // The branch may not take every namespace (security.*, trusted.*).
                Ok(()) | Err(Errno::EOPNOTSUPP | Errno::EPERM) => {}
                Err(e) => return Err(e),
            }
        }
    }
    to.utimes(
        Time::Set(st.st_atime, st.st_atime_nsec),
        Time::Set(st.st_mtime, st.st_mtime_nsec),
    )
}

/// Make an entry of the kind `mode & S_IFMT` (not a regular file: those are
/// made with `O_CREAT | O_EXCL`, which gives the fd at once) as `name` in
/// `dir`, closed to others until its metadata is set, and answer an `O_PATH`
/// fd on it. `dir` must be a directory only this process can write (a work
/// directory): nobody can swap the name between the making and the open.
pub fn make_node(
    dir: &Dir,
    name: &OsStr,
    mode: u32,
    rdev: u64,
    target: Option<&OsStr>,
) -> Result<OwnedFd> {
    let kind = mode & libc::S_IFMT;
    match kind {
        libc::S_IFDIR => sys::mkdir_at(dir, name, 0o700)?,
        libc::S_IFLNK => sys::symlink_at(target.ok_or(Errno::EINVAL)?, dir, name)?,
        _ => sys::mknod_at(dir, name, kind | 0o600, rdev)?,
    }
    sys::open_at(dir, name, OFlag::O_PATH, 0)
}

/// Below this size a reflink is not worth its extra call (and most
/// filesystems have none): the data is copied.
const REFLINK_MIN: u64 = 1 << 20;

/// Copy `size` bytes of `src` to `dst`, keeping holes: FICLONE when the
/// filesystem shares extents, else copy_file_range over the data ranges, else
/// read and write.
pub fn copy_data(src: BorrowedFd, dst: BorrowedFd, size: u64) -> Result<()> {
    if size == 0 || (size >= REFLINK_MIN && sys::ficlone(dst, src).is_ok()) {
        return Ok(());
    }
    let size = size as i64;
    let mut off = 0i64;
    while off < size {
        let data = match sys::seek(src, off, libc::SEEK_DATA) {
            Ok(d) => d,
            Err(Errno::ENXIO) => break,
            Err(Errno::EINVAL | Errno::EOPNOTSUPP) => off,
            Err(e) => return Err(e),
        };
        if data >= size {
            break;
        }
        let end = sys::seek(src, data, libc::SEEK_HOLE)
            .unwrap_or(size)
            .min(size);
        copy_span(src, dst, data, end)?;
        off = end;
    }
    sys::truncate_fd(dst, size as u64)
}

fn copy_span(src: BorrowedFd, dst: BorrowedFd, mut pos: i64, end: i64) -> Result<()> {
    while pos < end {
        let want = (end - pos).min(1 << 30) as usize;
        match sys::copy_range(src, pos, dst, want) {
            Ok(0) => return Ok(()),
            Ok(n) => pos += n as i64,
            Err(Errno::EXDEV | Errno::ENOSYS | Errno::EOPNOTSUPP | Errno::EINVAL) => {
                return copy_rw(src, dst, pos, end)
            }
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn copy_rw(src: BorrowedFd, dst: BorrowedFd, mut pos: i64, end: i64) -> Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    while pos < end {
        let want = ((end - pos) as usize).min(buf.len());
        let n = nix::sys::uio::pread(src, &mut buf[..want], pos)?;
        if n == 0 {
            break;
        }
        let mut done = 0;
        while done < n {
            done += nix::sys::uio::pwrite(dst, &buf[done..n], pos + done as i64)?;
        }
        pos += n as i64;
    }
    Ok(())
}

/// A copy-up of more data than this is not done on a thread that serves
/// requests (it answers EINPROGRESS and runs again on a thread of its own,
/// as a waiter does): over io_uring a queue's thread serves every request
/// of its CPU, and none of them should wait behind a large copy.
pub(crate) const SLOW_COPY: i64 = 1 << 20;

/// Renames of a copy that find the name changed under them try again this
/// many times.
const ATTEMPTS: usize = 8;

impl Union {
    /// Make sure the topmost instance of `node` is on a writable branch;
    /// answers the branch set it worked on. `data: false` skips the file's
    /// contents (it is about to be truncated to zero).
    pub(crate) fn copy_up(&self, node: &Node, data: bool) -> Result<Arc<BranchSet>> {
        let bs = self.branches();
        if self.handles.pinned(node.ino).is_some() {
            // Changed where it is, on its frozen branch, until its writers
            // close (see handles.rs).
            return Ok(bs);
        }
        let idx = self.resolve.top_idx(&bs, node)?;
        if bs.get(idx).writable() {
            return Ok(bs);
        }
        let target = bs.writable_above(idx).ok_or(Errno::EROFS)?;
        self.copy_up_to(&bs, node, target, data)?;
        Ok(bs)
    }

    /// Copy `node` up to branch `target` unless its topmost instance is
    /// already there or higher. One copy-up of an object at a time; the
    /// copy is built with no lock held (other names of the directory stay
    /// usable meanwhile) and renamed into place under the parent's lock,
    /// only if the name is still the object's: a name removed meanwhile
    /// never comes back (ENOENT), one renamed is copied where it is now.
    pub(crate) fn copy_up_to(
        &self,
        bs: &BranchSet,
        node: &Node,
        target: usize,
        data: bool,
    ) -> Result<()> {
        if self.handles.pinned(node.ino).is_some() {
            return Err(Errno::EBUSY);
        }
        let _turn = node.copying.enter()?;
        for _ in 0..ATTEMPTS {
            // Another request may have copied it up while we waited.
            let idx = self.resolve.top_idx(bs, node)?;
            if idx <= target {
                return Ok(());
            }
            if node.ino == ROOT {
                return Err(Errno::EROFS);
            }
            let (pino, name) = node.parent_name();
            let parent = self.resolve.node(pino)?;
            let pdir = self.dir_in(bs, target, &parent)?;
            let sdir = self.resolve.layer_dir(bs, &parent, idx)?;
            if data && node.kind == libc::S_IFREG && !may_wait() {
                let st = sys::stat_at(&sdir, &name)?;
                if st.st_size > SLOW_COPY {
                    return Err(Errno::EINPROGRESS);
                }
            }
            // Other names of a hard-linked file join the copy (see lookup).
            let linked = node.kind == libc::S_IFREG
                && sys::stat_at(&sdir, &name).is_ok_and(|st| st.st_nlink > 1);
            let tmp = match self.copy_from_clone(bs, target, node, &sdir, &name, data)? {
                Some(tmp) => tmp,
                None => self.build_copy(bs, target, Obj::at(&sdir, &name), node.kind, data)?,
            };
            let _lock = self.resolve.lock(bs, pino)?;
            if node.is_unlinked() {
                return Err(Errno::ENOENT);
            }
            if node.parent_name() != (pino, name.clone()) {
                continue;
            }
            match sys::stat_at(&pdir, &name) {
                // Already there: copied along with a directory, or made directly.
                Ok(st) if is_kind(&st, node.kind) => {
                    self.resolve.copied_up(node, bs, target, &st);
                    self.repoint_readers(bs, node, target);
                    return Ok(());
                }
                Ok(_) => return Err(Errno::EEXIST),
                Err(Errno::ENOENT) => {}
                Err(e) => return Err(e),
            }
            tmp.commit(&pdir, &name, RENAME_NOREPLACE)?;
            let new = sys::stat_at(&pdir, &name)?;
            self.resolve.copied_up(node, bs, target, &new);
            if linked {
                self.resolve
                    .copied_up_linked(node, bs.get(target), new.st_ino);
            }
            self.repoint_readers(bs, node, target);
            drop(_lock);
            self.link_aliases(bs, target, node, &pdir, &name);
            return Ok(());
        }
        Err(Errno::EAGAIN)
    }

    /// Build a copy of the entry `src` (of the kind `kind`, `S_IFMT` bits)
    /// in the work directory of branch `target`. The source is opened once
    /// and everything is read through that fd: data, owner, mode and xattrs
    /// all come from one object, even if the name is swapped meanwhile (say,
    /// for the user's own program beside a root-owned setuid one).
    pub(crate) fn build_copy(
        &self,
        bs: &BranchSet,
        target: usize,
        src: Obj,
        kind: u32,
        data: bool,
    ) -> Result<Temp> {
        let src = src.open(OFlag::O_PATH)?;
        let st = sys::fstat(src.as_fd())?;
        if !is_kind(&st, kind) {
            return Err(Errno::ESTALE);
        }
        let from = Obj::fd(src.as_fd());
        let mut tmp = Temp::new(bs.get(target).work()?);
        let tname = tmp.name.clone();
        let dst = if kind == libc::S_IFREG {
            let dst = sys::open_at(
                tmp.dir(),
                &tname,
                OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY,
                0o600,
            )?;
            tmp.arm();
            if data && st.st_size > 0 {
                let s = from.open(OFlag::O_RDONLY)?;
                copy_data(s.as_fd(), dst.as_fd(), st.st_size as u64)?;
                sys::fsync(dst.as_fd(), true)?;
            }
            dst
        } else {
            let target = match kind == libc::S_IFLNK {
                true => Some(sys::readlink_obj(src.as_fd())?),
                false => None,
            };
            let made = make_node(tmp.dir(), &tname, st.st_mode, st.st_rdev, target.as_deref());
            tmp.arm();
            made?
        };
        copy_meta(from, &st, dst.as_fd())?;
        Ok(tmp)
    }

    /// Other names of a hard-linked object follow its copy-up, so a change
    /// through one name shows through the others after a remount too.
    fn link_aliases(&self, bs: &BranchSet, target: usize, node: &Node, dir: &Dir, name: &OsStr) {
        for (parent, alias) in node.aliases() {
            let res = self
                .resolve
                .node(parent)
                .and_then(|p| self.dir_in(bs, target, &p))
                .and_then(|pdir| {
                    let _lock = self.resolve.lock(bs, parent)?;
                    // Still a name of the object?
                    if !node.aliases().contains(&(parent, alias.clone())) {
                        return Ok(());
                    }
                    sys::link_at(dir, name, &pdir, &alias)?;
                    whiteout::remove_whiteout(&pdir, &alias)
                });
            if let Err(e) = res {
                log::warn!("hard link {alias:?} not copied up with its object: {e}");
            }
        }
    }

    /// A lower name of a hard-linked file that another of its names copied
    /// up (in this mount or an earlier one, see `copied_up_linked`): linked
    /// to that copy in the copy's branch, so the names stay one file. True
    /// when it was (the name is then to be looked up again).
    pub(crate) fn join_copy(
        &self,
        bs: &BranchSet,
        pnode: &Node,
        name: &OsStr,
        top: &crate::resolve::Instance,
    ) -> Result<bool> {
        let st = &top.stat;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_nlink < 2 {
            return Ok(false);
        }
        let Some(w) = bs.writable_above(top.idx) else {
            return Ok(false);
        };
        let number = self
            .resolve
            .inodes
            .ino_for((bs.get(top.idx).dev, st.st_ino));
        let Some((ino, path)) = bs.get(w).copy_of(number) else {
            return Ok(false);
        };
        // The copy where it was made, still that file (else: nothing to join).
        let Ok(copy) = sys::open_beneath(bs.get(w).root(), &path, OFlag::O_PATH, 0) else {
            return Ok(false);
        };
        let cst = sys::fstat(copy.as_fd())?;
        if cst.st_ino != ino || cst.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Ok(false);
        }
        let pdir = self.dir_in(bs, w, pnode)?;
        let _lock = self.resolve.lock(bs, pnode.ino)?;
        let again = self.resolve.scan_in(bs, pnode, name, false)?;
        if !again
            .top()
            .is_some_and(|t| t.idx == top.idx && t.stat.st_ino == st.st_ino)
        {
            return Ok(false);
        }
        sys::link_fd_at(copy.as_fd(), &pdir, name)?;
        Ok(true)
    }

    /// The directory `dir` in branch `idx`, created there (with its parents,
    /// as copies of their union attributes) when missing.
    pub(crate) fn dir_in(&self, bs: &BranchSet, idx: usize, dir: &Node) -> Result<Arc<Dir>> {
        match self.resolve.layer_dir(bs, dir, idx) {
            Ok(fd) => Ok(fd),
            Err(Errno::ENOENT) => self.ensure_dirs(bs, idx, dir).map(Arc::new),
            Err(e) => Err(e),
        }
    }

    /// Create the directory of `dir` (and its parents) in branch `target`, each
    /// as a copy of the union directory's topmost instance; answers an fd on it.
    pub(crate) fn ensure_dirs(&self, bs: &BranchSet, target: usize, dir: &Node) -> Result<Dir> {
        let mut chain = Vec::new();
        let mut cur = dir.ino;
        while cur != ROOT {
            let n = self.resolve.node(cur)?;
            cur = n.parent_name().0;
            chain.push(n);
        }
        let b = bs.get(target);
        let mut fd = b.dir(Path::new(""))?;
        for node in chain.iter().rev() {
            let (pino, name) = node.parent_name();
            // Made under the parent's lock, and only for a directory the
            // union still has there (a removed one must not come back).
            let _lock = self.resolve.lock(bs, pino)?;
            if node.is_unlinked() || node.parent_name() != (pino, name.clone()) {
                return Err(Errno::ENOENT);
            }
            match sys::open_dir(&fd, Path::new(&name)) {
                Ok(sub) => {
                    if !node.loc().layers.contains(&b.id) {
                        let st = sys::fstat(sub.as_fd())?;
                        self.resolve.dir_gained(node, bs, target, &st, false);
                    }
                    fd = sub;
                    continue;
                }
                Err(Errno::ENOENT) => {}
                Err(e) => return Err(e),
            }
            let hide_below = whiteout::has_whiteout(&fd, &name)?;
            let tmp = self.resolve.on_top(bs, node, |src| {
                self.build_copy(bs, target, src, libc::S_IFDIR, false)
            })?;
            if hide_below {
                let t = sys::open_dir(tmp.dir(), Path::new(&tmp.name))?;
                whiteout::make_opaque(&t)?;
            }
            match tmp.commit(&fd, &name, RENAME_NOREPLACE) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(e),
            }
            if hide_below {
                whiteout::remove_whiteout(&fd, &name)?;
            }
            let sub = sys::open_dir(&fd, Path::new(&name))?;
            let st = sys::fstat(sub.as_fd())?;
            self.resolve.dir_gained(node, bs, target, &st, hide_below);
            fd = sub;
        }
        Ok(fd)
    }
}
