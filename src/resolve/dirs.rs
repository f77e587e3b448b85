//! Directory fds, kept per union directory and branch so that a lookup,
//! create or readdir works from an open fd instead of walking a path from the
//! branch root each time (one `fstatat` per branch instead of an `openat2` of
//! the whole path plus the `fstatat`).
//!
//! A cached fd is used only while it is provably current: for the branch set
//! generation and the directory's list of layers it was opened under (any
//! copy-up, rename or branch change that alters them drops the cache), for
//! no directory rename since (a rename, through the union or seen by the
//! watch, drops every cached fd), and for at most the cache lifetime (the
//! kernel's entry timeout: a lookup in the parent, which the kernel makes
//! after that, opens the directory's instances again).
//! Every fd is opened one component at a time with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)` from a branch root or from another such fd.

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use nix::fcntl::OFlag;

use super::dircache::{DirFds, CACHED, SERIAL};
use super::nameindex::{NameIndex, INDEX_AFTER};
use super::node::{Node, ROOT};
use super::Resolver;
use crate::branch::BranchSet;
use crate::sys::{self, Dir, Errno, Result};

/// The instances of a union directory in branches `layers` (indices, top
/// first), each opened by `open`; a branch whose directory is missing is left
/// out (a lookup there finds nothing either).
pub fn open_layers(
    layers: &[usize],
    open: impl Fn(usize) -> Result<Arc<Dir>>,
) -> Result<Vec<(usize, Arc<Dir>)>> {
    let mut out = Vec::with_capacity(layers.len());
    for &idx in layers {
        match open(idx) {
            Ok(fd) => out.push((idx, fd)),
            Err(Errno::ENOENT | Errno::ENOTDIR) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// [`open_layers`] for the union directory `path`, opened from the branch
/// roots (for callers that work by path).
pub fn open_layers_at(
    bs: &BranchSet,
    layers: &[usize],
    path: &Path,
) -> Result<Vec<(usize, Arc<Dir>)>> {
    open_layers(layers, |idx| bs.get(idx).dir(path).map(Arc::new))
}

impl Resolver {
    fn cached_dir(&self, bs: &BranchSet, node: &Node, id: u32) -> Option<Arc<Dir>> {
        let loc = node.loc.read();
        let c = node.dirfds.lock();
        if !c.current(bs.generation, self.dir_epoch(), &loc.layers, Instant::now()) {
            return None;
        }
        c.fds
            .iter()
            .find(|(b, _)| *b == id)
            .map(|(_, fd)| fd.clone())
    }

    /// The cache of `node`, locked, emptied first if it is not current.
    fn fresh<'a>(&self, bs: &BranchSet, node: &'a Node) -> parking_lot::MutexGuard<'a, DirFds> {
        let loc = node.loc.read();
        let mut c = node.dirfds.lock();
        let now = Instant::now();
        let epoch = self.dir_epoch();
        if !c.current(bs.generation, epoch, &loc.layers, now) {
            *c = DirFds::default();
            c.serial = SERIAL.fetch_add(1, Ordering::Relaxed);
            c.generation = bs.generation;
            c.epoch = epoch;
            c.layers = loc.layers.clone();
            c.expires = Some(now + self.cache_ttl);
        }
        c
    }

    fn caching(&self) -> bool {
        !self.cache_ttl.is_zero() && self.cache_max > 0
    }

    /// Remember `fd` as the instance of directory `node` in branch `id`.
    pub(crate) fn cache_dir(&self, bs: &BranchSet, node: &Node, id: u32, fd: Arc<Dir>) {
        if !self.caching() {
            return;
        }
        let mut c = self.fresh(bs, node);
        match c.fds.iter_mut().find(|(b, _)| *b == id) {
            Some(slot) => slot.1 = fd,
            // Full: this fd is used once and closed, as without a cache.
            None if CACHED.load(Ordering::Relaxed) >= self.cache_max => {}
            None => {
                CACHED.fetch_add(1, Ordering::Relaxed);
                c.fds.push((id, fd));
            }
        }
    }

    /// The index of names in the read-only branches among `layers` (those of
    /// directory `node`), once the directory has served enough lookups.
    pub(crate) fn name_index(
        &self,
        bs: &BranchSet,
        node: &Node,
        layers: &[usize],
    ) -> Result<Option<Arc<NameIndex>>> {
        let ro: Vec<usize> = layers
            .iter()
            .copied()
            .filter(|&i| !bs.get(i).writable())
            .collect();
        if ro.len() < 2 || !self.caching() {
            return Ok(None);
        }
        let exact = self.exact_in(node.ino, layers.len());
        let serial = {
            let mut c = self.fresh(bs, node);
            if let Some(index) = &c.index {
                // Unwatched: a change made directly shows in the change times.
                if exact || index.current() {
                    return Ok(Some(index.clone()));
                }
                c.index = None;
                c.lookups = 0;
                return Ok(None);
            }
            if c.no_index {
                return Ok(None);
            }
            c.lookups += 1;
            if c.lookups < INDEX_AFTER {
                return Ok(None);
            }
            c.serial
        };
        // Read the directories without holding the lock.
        let dirs = open_layers(&ro, |idx| self.layer_dir(bs, node, idx))?;
        let index = NameIndex::build(&dirs)?.map(Arc::new);
        log::debug!(
            "directory {}: names of {} branches indexed: {}",
            node.ino,
            dirs.len(),
            index.is_some()
        );
        let mut c = self.fresh(bs, node);
        if c.serial != serial {
            // The cache was emptied while the directories were read: probe.
            return Ok(None);
        }
        if c.index.is_none() {
            c.no_index = index.is_none();
            c.index = index;
        }
        Ok(c.index.clone())
    }

    fn dir_epoch(&self) -> u64 {
        self.dir_epoch.load(Ordering::Acquire)
    }

    /// A directory moved: every cached directory fd is dropped, since the
    /// instances below a moved directory may be other ones now (a merged
    /// directory is made whole in one branch when renamed).
    pub(crate) fn dir_moved(&self) {
        self.dir_epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// An fd on the instance of the union directory `node` in branch `idx`:
    /// from the cache, else opened from the nearest cached ancestor (or the
    /// branch root) one name at a time, caching each step.
    pub(crate) fn layer_dir(&self, bs: &BranchSet, node: &Node, idx: usize) -> Result<Arc<Dir>> {
        let b = bs.get(idx);
        if node.ino == ROOT {
            return Ok(b.root_fd());
        }
        if let Some(fd) = self.cached_dir(bs, node, b.id) {
            return Ok(fd);
        }
        // Walk up to a directory whose fd is known, then open downwards.
        let mut chain: Vec<(Option<Arc<Node>>, std::ffi::OsString)> = Vec::new();
        let (mut parent, name) = {
            let l = node.loc.read();
            (l.parent, l.name.clone())
        };
        chain.push((None, name));
        let mut fd = loop {
            if parent == ROOT {
                break b.root_fd();
            }
            let p = self.inodes.get(parent)?;
            if let Some(fd) = self.cached_dir(bs, &p, b.id) {
                break fd;
            }
            let (pp, pname) = {
                let l = p.loc.read();
                (l.parent, l.name.clone())
            };
            chain.push((Some(p), pname));
            parent = pp;
            if chain.len() > libc::PATH_MAX as usize {
                return Err(Errno::ELOOP);
            }
        };
        for (n, name) in chain.into_iter().rev() {
            fd = Arc::new(sys::open_dir(&fd, Path::new(&name))?);
            self.cache_dir(bs, n.as_deref().unwrap_or(node), b.id, fd.clone());
        }
        Ok(fd)
    }

    /// The instances of directory `node` that merge into it, as (branch
    /// index, fd), top first; layers whose directory has gone are skipped.
    pub(crate) fn layer_fds(&self, bs: &BranchSet, node: &Node) -> Result<Vec<(usize, Arc<Dir>)>> {
        open_layers(&self.dir_layers(bs, node)?, |idx| {
            self.layer_dir(bs, node, idx)
        })
    }

    /// The parent directory of `node` in branch `idx`, and the node's name there.
    pub(crate) fn parent_in(
        &self,
        bs: &BranchSet,
        node: &Node,
        idx: usize,
    ) -> Result<(Arc<Dir>, std::ffi::OsString)> {
        let (parent, name) = {
            let l = node.loc.read();
            (l.parent, l.name.clone())
        };
        let p = self.inodes.get(parent)?;
        Ok((self.layer_dir(bs, &p, idx)?, name))
    }

    /// Run `f` on the topmost instance of `node`, as (directory fd, name) for
    /// calls that take a directory and a name; the root is its own fd.
    pub(crate) fn on_top<T>(
        &self,
        bs: &BranchSet,
        node: &Node,
        f: impl FnOnce(sys::Obj) -> Result<T>,
    ) -> Result<T> {
        let idx = self.top_idx(bs, node)?;
        if node.ino == ROOT {
            return f(sys::Obj::fd(bs.get(idx).root().as_fd()));
        }
        let (dir, name) = self.parent_in(bs, node, idx)?;
        f(sys::Obj::at(&dir, &name))
    }

    /// Like [`Resolver::on_top`], but through an fd on the instance, after
    /// checking that its name still names this object: for the calls that
    /// change owner, mode, size or xattrs, which a name swapped under the
    /// daemon (for a hard link to someone else's file, say) must never
    /// redirect. A name that now holds another object is ESTALE.
    pub(crate) fn on_top_checked<T>(
        &self,
        bs: &BranchSet,
        node: &Node,
        f: impl FnOnce(sys::Obj) -> Result<T>,
    ) -> Result<T> {
        self.on_top(bs, node, |obj| {
            if obj.name().is_empty() {
                return f(obj);
            }
            let fd = obj.open(OFlag::O_PATH)?;
            let st = sys::fstat(fd.as_fd())?;
            let dev = bs.get(self.top_idx(bs, node)?).dev;
            if !node.has_key((dev, st.st_ino)) {
                log::warn!("{:?} was replaced in its branch: not changed", obj.name());
                return Err(Errno::ESTALE);
            }
            f(sys::Obj::fd(fd.as_fd()))
        })
    }

    /// Open the instance of `node` in branch `idx` (never following a
    /// symlink), checking that what the name holds is still this object: the
    /// kernel checked the caller's access against it, so a name renamed or
    /// linked over meanwhile (a root-only file moved into its place, say) is
    /// ESTALE, and the kernel looks the name up again. `O_TRUNC` is done
    /// after the check, never to the wrong file.
    pub(crate) fn open_in(
        &self,
        bs: &BranchSet,
        node: &Node,
        idx: usize,
        flags: OFlag,
    ) -> Result<OwnedFd> {
        if node.ino == ROOT {
            return sys::open_beneath(bs.get(idx).root(), Path::new(""), flags, 0);
        }
        // Non-blocking until checked: a FIFO renamed over the name must not
        // keep this thread waiting for a writer.
        let asked = flags & !OFlag::O_TRUNC;
        let (name, fd) = {
            let mut tries = 0;
            loop {
                let at = node.parent_name();
                let (dir, name) = self.parent_in(bs, node, idx)?;
                match sys::open_at(&dir, OsStr::new(&name), asked | OFlag::O_NONBLOCK, 0) {
                    // Renamed between finding its name and opening it (the
                    // rename may be between its change in the branch and
                    // ours of the location): where it is now.
                    Err(Errno::ENOENT) if tries < 3 && moved_from(node, &at) => tries += 1,
                    res => break (name, res?),
                }
            }
        };
        let st = sys::fstat(fd.as_fd())?;
        if !node.has_key((bs.get(idx).dev, st.st_ino)) {
            log::warn!("{name:?} was replaced in its branch: not opened");
            return Err(Errno::ESTALE);
        }
        if !asked.contains(OFlag::O_NONBLOCK) {
            sys::set_fl(fd.as_fd(), asked)?;
        }
        if flags.contains(OFlag::O_TRUNC) && st.st_size != 0 {
            // Through the fd's own link: whatever its access mode, that inode.
            sys::Obj::fd(fd.as_fd()).open(OFlag::O_WRONLY | OFlag::O_TRUNC)?;
        }
        Ok(fd)
    }
}

/// Whether `node`, not found at `at`, moved from there: a rename under way
/// changes the location right after the branch, under the directory lock
/// (which may be ours to hold here, so it is not taken): waited for briefly.
fn moved_from(node: &Node, at: &(u64, std::ffi::OsString)) -> bool {
    let until = Instant::now() + std::time::Duration::from_millis(20);
    loop {
        if node.is_unlinked() {
            return false;
        }
        if node.parent_name() != *at {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::yield_now();
    }
}
