//! The union: the resolver (where things are), the open handles, the
//! options; and the operations that change nothing (lookup, attributes,
//! xattrs, statfs). The operation families that do change things each have
//! a file: create.rs, delete.rs, rename.rs, copyup.rs, attr.rs, file.rs.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::branch::BranchSet;
use crate::handles::Handles;
use crate::options::{DeleteMode, Passthrough, Udba};
use crate::resolve::{Attr, Resolver};
use crate::sys::{self, Errno, Result};
use crate::whiteout;

/// Who asks: the uid and gid of the calling process.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    /// Taken from the mode of an entry it makes, unless the directory has
    /// a default ACL (the kernel leaves that to the daemon).
    pub umask: u32,
}

pub struct Union {
    pub(crate) resolve: Resolver,
    pub(crate) handles: Handles,
    pub delete: DeleteMode,
    /// Which opens may be served by the kernel itself (see file.rs).
    pub passthrough: Passthrough,
    /// strictatime: every read reaches the backing file (no page cache
    /// kept across opens), so every read updates its access time.
    pub strictatime: bool,
    /// Which branch pairs share extents (see clone.rs).
    pub(crate) reflinks: crate::reflinks::Reflinks,
    /// Serializes branch changes (never held by a request).
    pub change_lock: Mutex<()>,
}

impl Union {
    /// A union over `bs`; up to `cache_max` directory fds are reused for
    /// `cache_ttl` (zero: never); direct changes to the branches are
    /// followed as `udba` says, with up to `max_watches` watches.
    pub fn new(
        bs: BranchSet,
        delete: DeleteMode,
        cache_ttl: Duration,
        cache_max: usize,
        udba: Udba,
        max_watches: usize,
    ) -> Result<Union> {
        Ok(Union {
            resolve: Resolver::new(bs, cache_ttl, cache_max, udba, max_watches)?,
            handles: Handles::default(),
            delete,
            passthrough: Passthrough::On,
            strictatime: false,
            reflinks: Default::default(),
            change_lock: Mutex::new(()),
        })
    }

    /// The branch set a request works on from start to end.
    pub fn branches(&self) -> Arc<BranchSet> {
        self.resolve.branches()
    }

    /// Whether the daemon follows every change to the names of directory
    /// `dir` made directly in the branches (see resolve/watch.rs).
    pub fn exact(&self, dir: u64) -> bool {
        self.resolve.exact(&self.branches(), dir)
    }

    /// The longest name the union makes (and statfs reports): the
    /// branches' limit less `.wh.`, so that every name made through the
    /// union can be whited out. A longer one already in a branch (an image
    /// layer may hold one, up to the branches' limit) is found and used all
    /// the same; only its whiteout cannot be made (ENAMETOOLONG).
    pub fn name_max(&self) -> u64 {
        self.branches()
            .name_max
            .saturating_sub(whiteout::PREFIX.len() as u64)
    }

    /// A name that may be looked up: within the branches' limit.
    fn check_name(&self, name: &OsStr) -> Result<()> {
        if name.len() as u64 > self.branches().name_max {
            return Err(Errno::ENAMETOOLONG);
        }
        Ok(())
    }

    /// A name that may be created: short enough to have a whiteout, not a
    /// whiteout name.
    pub(crate) fn check_new_name(&self, name: &OsStr) -> Result<()> {
        if name.len() as u64 > self.name_max() {
            return Err(Errno::ENAMETOOLONG);
        }
        if whiteout::is_reserved(name) {
            return Err(Errno::EPERM);
        }
        Ok(())
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<Attr> {
        self.check_name(name)?;
        if whiteout::is_reserved(name) {
            return Err(Errno::ENOENT);
        }
        let bs = self.branches();
        let pnode = self.resolve.node(parent)?;
        let mut scan = self.resolve.scan_in(&bs, &pnode, name, false)?;
        let joined = scan.top().is_some_and(|top| {
            self.join_copy(&bs, &pnode, name, top).unwrap_or_else(|e| {
                log::debug!("{name:?} not linked to its copied-up hard link: {e}");
                false
            })
        });
        if joined {
            scan = self.resolve.scan_in(&bs, &pnode, name, false)?;
        }
        Ok(self.resolve.remember(&bs, parent, name, &scan)?.1)
    }

    pub fn forget(&self, ino: u64, n: u64) {
        self.resolve.forget(ino, n);
    }

    pub fn getattr(&self, ino: u64, fh: Option<u64>) -> Result<Attr> {
        let node = self.resolve.node(ino)?;
        if node.is_unlinked() {
            let mut st = self.open_instance_stat(&node, fh)?;
            // Whited out or removed: no name reaches it any more.
            st.st_nlink = 0;
            return Ok(Attr::of(&node, st));
        }
        let bs = self.branches();
        match self.resolve.on_top(&bs, &node, |top| top.stat()) {
            Ok(st) => Ok(Attr::of(&node, st)),
            // Gone from the union (its branch was removed, say) but open:
            // fstat an open handle (fstat(2) does not always say which).
            Err(e @ (Errno::ENOENT | Errno::ESTALE)) => {
                let mut st = self.open_instance_stat(&node, fh).map_err(|_| e)?;
                st.st_nlink = 0;
                Ok(Attr::of(&node, st))
            }
            Err(e) => Err(e),
        }
    }

    /// The stat of the instance an open handle of `node` holds (a file
    /// handle, `fh` first, or a directory stream): ENOENT without one.
    fn open_instance_stat(
        &self,
        node: &crate::resolve::Node,
        fh: Option<u64>,
    ) -> Result<sys::FileStat> {
        if node.is_dir() {
            let dir = self.handles.dir_instance(node.ino).ok_or(Errno::ENOENT)?;
            return sys::fstat(dir.as_fd());
        }
        let h = self.handles.file_for(node, fh)?;
        sys::fstat(h.file().as_fd())
    }

    pub fn readlink(&self, ino: u64) -> Result<std::ffi::OsString> {
        let node = self.resolve.node(ino)?;
        if node.kind != libc::S_IFLNK {
            return Err(Errno::EINVAL);
        }
        let bs = self.branches();
        self.resolve.on_top(&bs, &node, |obj| obj.readlink())
    }

    pub fn statfs(&self) -> Result<nix::sys::statvfs::Statvfs> {
        let bs = self.branches();
        let idx = bs.first_writable().unwrap_or(0);
        sys::statvfs(bs.get(idx).root().as_fd())
    }

    pub fn getxattr(&self, ino: u64, name: &OsStr, buf: &mut [u8]) -> Result<usize> {
        let node = self.resolve.node(ino)?;
        let bs = self.branches();
        self.resolve
            .on_top(&bs, &node, |obj| sys::get_xattr_obj(obj, name, buf))
    }

    pub fn listxattr(&self, ino: u64, buf: &mut [u8]) -> Result<usize> {
        let node = self.resolve.node(ino)?;
        let bs = self.branches();
        self.resolve
            .on_top(&bs, &node, |obj| sys::list_xattr_obj(obj, buf))
    }
}
