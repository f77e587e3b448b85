//! The union model: the branch set, the inode table and the operations that
//! do not change the namespace (lookup, attributes, xattrs, statfs). Namespace
//! changes live in create.rs, delete.rs and rename.rs; copy-up in copyup.rs;
//! open files and directory streams in file.rs.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use nix::fcntl::OFlag;
use parking_lot::{Mutex, RwLock};

use crate::branch::BranchSet;
use crate::file::{DirHandle, FileHandle};
use crate::inode::{InodeTable, Loc, Negatives, Node, ROOT};
use crate::lookup::{self, Scan};
use crate::options::DeleteMode;
use crate::sys::{self, Errno, FileStat, Result, Time};
use crate::whiteout;

/// Who asks: the uid and gid of the calling process.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// Attributes of a union object: the topmost instance's, with the union inode number.
#[derive(Clone, Copy, Debug)]
pub struct Attr {
    pub ino: u64,
    pub st: FileStat,
}

/// What a setattr changes.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<Time>,
    pub mtime: Option<Time>,
}

impl SetAttr {
    fn is_empty(&self) -> bool {
        self.mode.is_none()
            && self.uid.is_none()
            && self.gid.is_none()
            && self.size.is_none()
            && self.atime.is_none()
            && self.mtime.is_none()
    }
}

/// At most this many negative entries are handed to the kernel at a time
/// (each costs a name in memory until it expires).
const NEGATIVE_CAP: usize = 65536;

pub struct Union {
    branches: RwLock<Arc<BranchSet>>,
    pub inodes: InodeTable,
    /// Names the kernel caches as absent.
    pub negatives: Negatives,
    pub delete: DeleteMode,
    pub(crate) files: Mutex<HashMap<u64, Arc<FileHandle>>>,
    pub(crate) dirs: Mutex<HashMap<u64, Arc<DirHandle>>>,
    pub(crate) next_fh: AtomicU64,
    /// Serializes branch changes (never held by a request).
    pub change_lock: Mutex<()>,
    /// How long directory fds are reused, and how many at most (see dircache.rs).
    pub(crate) cache_ttl: Duration,
    pub(crate) cache_max: usize,
    /// Bumped when a directory moves: cached directory fds are dropped.
    pub(crate) dir_epoch: AtomicU64,
}

impl Union {
    /// A union over `bs`; up to `cache_max` directory fds are reused for
    /// `cache_ttl` (zero: never).
    pub fn new(
        bs: BranchSet,
        delete: DeleteMode,
        cache_ttl: Duration,
        cache_max: usize,
    ) -> Result<Union> {
        if bs.is_empty() {
            return Err(Errno::EINVAL);
        }
        let top = bs.get(0);
        let st = sys::fstat(top.root())?;
        let layers = bs.branches.iter().map(|b| b.id).collect();
        Ok(Union {
            inodes: InodeTable::new((top.dev, st.st_ino), layers),
            branches: RwLock::new(Arc::new(bs)),
            negatives: Negatives::new(NEGATIVE_CAP),
            delete,
            files: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            change_lock: Mutex::new(()),
            cache_ttl,
            cache_max,
            dir_epoch: AtomicU64::new(0),
        })
    }

    /// The branch set this request works on from start to end.
    pub fn branches(&self) -> Arc<BranchSet> {
        self.branches.read().clone()
    }

    /// Swap in a new branch set: the next request works on it.
    pub fn set_branches(&self, bs: Arc<BranchSet>) {
        *self.branches.write() = bs;
    }

    /// The longest name the union accepts: the branches' limit less `.wh.`.
    pub fn name_max(&self) -> u64 {
        self.branches.read().name_max
    }

    fn check_name(&self, name: &OsStr) -> Result<()> {
        if name.len() as u64 > self.name_max() {
            return Err(Errno::ENAMETOOLONG);
        }
        Ok(())
    }

    /// A name that may be created: not too long, not a whiteout name.
    pub(crate) fn check_new_name(&self, name: &OsStr) -> Result<()> {
        self.check_name(name)?;
        if whiteout::is_reserved(name) {
            return Err(Errno::EPERM);
        }
        Ok(())
    }

    /// Branch ids to indices in `bs` (branches no longer in the set drop out).
    pub(crate) fn indices(bs: &BranchSet, ids: &[u32]) -> Vec<usize> {
        ids.iter().filter_map(|&id| bs.index_of(id)).collect()
    }

    pub(crate) fn ids(bs: &BranchSet, idx: &[usize]) -> Vec<u32> {
        idx.iter().map(|&i| bs.get(i).id).collect()
    }

    /// The layers of a directory node as indices (the root is in every branch).
    pub(crate) fn dir_layers(&self, bs: &BranchSet, node: &Node) -> Result<Vec<usize>> {
        if !node.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        Ok(self.located(bs, node)?.1)
    }

    /// Where `node` lives in `bs`: its topmost branch and (for a directory)
    /// its layers, as indices. A location computed against another branch set
    /// (the set changed since) is resolved again, parents first.
    pub(crate) fn located(&self, bs: &BranchSet, node: &Node) -> Result<(usize, Vec<usize>)> {
        if node.ino == ROOT {
            return Ok((0, (0..bs.len()).collect()));
        }
        let loc = node.loc();
        if loc.generation == bs.generation {
            if let Some(top) = bs.index_of(loc.top) {
                return Ok((top, Self::indices(bs, &loc.layers)));
            }
        }
        if loc.unlinked {
            return Err(Errno::ESTALE);
        }
        let parent = self.inodes.get(loc.parent)?;
        let (_, players) = self.located(bs, &parent)?;
        let scan = self.scan_at(bs, &parent, &players, &loc.name, false)?;
        let top = scan.top().ok_or(Errno::ENOENT)?;
        let layers = scan.layers();
        if bs.generation == self.branches().generation {
            {
                let mut l = node.loc.write();
                l.top = bs.get(top.idx).id;
                l.layers = Self::ids(bs, &layers);
                l.generation = bs.generation;
            }
            // The object now lives (at the top) in that instance too.
            let key = (bs.get(top.idx).dev, top.stat.st_ino);
            if !node.has_key(key) {
                self.inodes.add_key(node, key);
            }
        }
        Ok((top.idx, layers))
    }

    /// Scan `name` in the directory node `parent`, whose instances are in `layers`.
    pub(crate) fn scan_at(
        &self,
        bs: &BranchSet,
        parent: &Node,
        layers: &[usize],
        name: &OsStr,
        full: bool,
    ) -> Result<Scan> {
        let index = self.name_index(bs, parent, layers)?;
        lookup::scan(
            layers,
            name,
            full,
            |idx| self.layer_dir(bs, parent, idx),
            |idx| index.as_ref().and_then(|i| i.hint(idx, name)),
        )
    }

    /// Scan `name` in the directory node `parent`.
    pub(crate) fn scan_in(
        &self,
        bs: &BranchSet,
        parent: &Node,
        name: &OsStr,
        full: bool,
    ) -> Result<Scan> {
        let layers = self.dir_layers(bs, parent)?;
        self.scan_at(bs, parent, &layers, name, full)
    }

    /// Register what a scan found as a node the kernel knows (one lookup reference).
    pub(crate) fn remember(
        &self,
        bs: &BranchSet,
        parent: u64,
        name: &OsStr,
        scan: &Scan,
    ) -> Result<(Arc<Node>, Attr)> {
        let top = scan.top().ok_or(Errno::ENOENT)?;
        let b = bs.get(top.idx);
        let loc = Loc {
            parent,
            name: name.to_os_string(),
            top: b.id,
            layers: Self::ids(bs, &scan.layers()),
            unlinked: false,
            generation: bs.generation,
        };
        let node = self.inodes.found((b.dev, top.stat.st_ino), top.kind(), loc);
        // The directory fds the scan opened serve the next lookups inside it.
        for i in scan.instances.iter() {
            if let Some(fd) = &i.dir {
                self.cache_dir(bs, &node, bs.get(i.idx).id, fd.clone());
            }
        }
        let attr = Attr {
            ino: node.ino,
            st: top.stat,
        };
        Ok((node, attr))
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<Attr> {
        self.check_name(name)?;
        if whiteout::is_reserved(name) {
            return Err(Errno::ENOENT);
        }
        let bs = self.branches();
        let pnode = self.inodes.get(parent)?;
        let scan = self.scan_in(&bs, &pnode, name, false)?;
        Ok(self.remember(&bs, parent, name, &scan)?.1)
    }

    pub fn forget(&self, ino: u64, n: u64) {
        self.inodes.forget(ino, n);
    }

    /// The index of the branch holding a node's topmost instance.
    pub(crate) fn top_idx(&self, bs: &BranchSet, node: &Node) -> Result<usize> {
        Ok(self.located(bs, node)?.0)
    }

    pub fn getattr(&self, ino: u64, fh: Option<u64>) -> Result<Attr> {
        let node = self.inodes.get(ino)?;
        if node.loc.read().unlinked {
            let h = self.file_for(&node, fh)?;
            let mut st = sys::fstat(h.file().as_fd())?;
            // Whited out or removed: no name reaches it any more.
            st.st_nlink = 0;
            return Ok(Attr { ino, st });
        }
        let bs = self.branches();
        match self.on_top(&bs, &node, |top| top.stat()) {
            Ok(st) => Ok(Attr { ino, st }),
            // Gone from the union (its branch was removed, say) but open:
            // fstat an open handle (fstat(2) does not always say which).
            Err(e @ (Errno::ENOENT | Errno::ESTALE)) => {
                let h = self.file_for(&node, fh).map_err(|_| e)?;
                let mut st = sys::fstat(h.file().as_fd())?;
                st.st_nlink = 0;
                Ok(Attr { ino, st })
            }
            Err(e) => Err(e),
        }
    }

    pub fn setattr(&self, ino: u64, set: SetAttr, fh: Option<u64>) -> Result<Attr> {
        let node = self.inodes.get(ino)?;
        if set.is_empty() {
            return self.getattr(ino, fh);
        }
        if node.loc.read().unlinked {
            return self.setattr_unlinked(&node, set, fh);
        }
        let data = set.size != Some(0);
        let bs = self.copy_up(&node, data)?;
        self.on_top_pinned(&bs, &node, |obj| {
            if let Some(size) = set.size {
                if node.is_dir() {
                    return Err(Errno::EISDIR);
                }
                let w = obj.open(OFlag::O_WRONLY)?;
                sys::truncate_fd(w.as_fd(), size)?;
            }
            if set.uid.is_some() || set.gid.is_some() {
                obj.chown(set.uid, set.gid)?;
            }
            if let Some(mode) = set.mode {
                if node.kind == libc::S_IFLNK {
                    return Err(Errno::EOPNOTSUPP);
                }
                sys::chmod_obj(obj, mode & 0o7777)?;
            }
            if set.atime.is_some() || set.mtime.is_some() {
                obj.utimes(
                    set.atime.unwrap_or(Time::Omit),
                    set.mtime.unwrap_or(Time::Omit),
                )?;
            }
            Ok(Attr {
                ino: node.ino,
                st: obj.stat()?,
            })
        })
    }

    /// setattr on an object whose names are all gone: only its open fds reach it.
    fn setattr_unlinked(&self, node: &Node, set: SetAttr, fh: Option<u64>) -> Result<Attr> {
        let h = self.file_for(node, fh)?;
        let f = h.file();
        if let Some(size) = set.size {
            sys::truncate_fd(f.as_fd(), size)?;
        }
        if set.uid.is_some() || set.gid.is_some() {
            sys::chown_fd(f.as_fd(), set.uid, set.gid)?;
        }
        if let Some(mode) = set.mode {
            sys::chmod_fd(f.as_fd(), mode & 0o7777)?;
        }
        if set.atime.is_some() || set.mtime.is_some() {
            sys::futimens(
                f.as_fd(),
                set.atime.unwrap_or(Time::Omit),
                set.mtime.unwrap_or(Time::Omit),
            )?;
        }
        Ok(Attr {
            ino: node.ino,
            st: sys::fstat(f.as_fd())?,
        })
    }

    pub fn readlink(&self, ino: u64) -> Result<std::ffi::OsString> {
        let node = self.inodes.get(ino)?;
        if node.kind != libc::S_IFLNK {
            return Err(Errno::EINVAL);
        }
        let bs = self.branches();
        self.on_top(&bs, &node, |obj| sys::readlink_at(obj.dir, obj.name))
    }

    pub fn statfs(&self) -> Result<nix::sys::statvfs::Statvfs> {
        let bs = self.branches();
        let idx = bs.first_writable().unwrap_or(0);
        sys::statvfs(bs.get(idx).root())
    }

    pub fn getxattr(&self, ino: u64, name: &OsStr, buf: &mut [u8]) -> Result<usize> {
        let node = self.inodes.get(ino)?;
        let bs = self.branches();
        self.on_top(&bs, &node, |obj| sys::get_xattr_obj(obj, name, buf))
    }

    pub fn listxattr(&self, ino: u64, buf: &mut [u8]) -> Result<usize> {
        let node = self.inodes.get(ino)?;
        let bs = self.branches();
        self.on_top(&bs, &node, |obj| sys::list_xattr_obj(obj, buf))
    }

    pub fn setxattr(&self, ino: u64, name: &OsStr, value: &[u8], flags: i32) -> Result<()> {
        let node = self.inodes.get(ino)?;
        let bs = self.copy_up(&node, true)?;
        self.on_top_pinned(&bs, &node, |obj| {
            sys::set_xattr_obj(obj, name, value, flags)
        })
    }

    pub fn removexattr(&self, ino: u64, name: &OsStr) -> Result<()> {
        let node = self.inodes.get(ino)?;
        {
            // Removing an xattr that is not there changes nothing: no copy-up.
            let bs = self.branches();
            self.on_top(&bs, &node, |obj| sys::get_xattr_obj(obj, name, &mut []))?;
        }
        let bs = self.copy_up(&node, true)?;
        self.on_top_pinned(&bs, &node, |obj| sys::remove_xattr_obj(obj, name))
    }

    /// The directory `rel` in branch `idx`, created there (with its parents,
    /// as copies of their union attributes) when missing.
    pub(crate) fn dir_in(&self, bs: &BranchSet, idx: usize, dir: &Node) -> Result<Arc<OwnedFd>> {
        match self.layer_dir(bs, dir, idx) {
            Ok(fd) => Ok(fd),
            Err(Errno::ENOENT) => self.ensure_dirs(bs, idx, dir).map(Arc::new),
            Err(e) => Err(e),
        }
    }
}

/// Split a node path into (parent path, last name).
pub(crate) fn split(path: &Path) -> (&Path, &OsStr) {
    (
        path.parent().unwrap_or(Path::new("")),
        path.file_name().unwrap_or(OsStr::new("")),
    )
}
