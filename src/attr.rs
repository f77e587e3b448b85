//! Changing attributes and xattrs: the object is copied up first, then the
//! change made through an fd on the instance (see `Resolver::on_top_checked`).

use std::ffi::OsStr;
use std::os::fd::AsFd;

use nix::fcntl::OFlag;

use crate::resolve::{Attr, Node};
use crate::sys::{self, Errno, Result, Time};
use crate::union::Union;

/// What a setattr changes.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<Time>,
    pub mtime: Option<Time>,
    /// The caller may not keep setuid/setgid through a truncate or chown
    /// (the kernel leaves clearing them to the daemon: HANDLE_KILLPRIV_V2).
    pub kill_suidgid: bool,
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

impl Union {
    pub fn setattr(&self, ino: u64, set: SetAttr, fh: Option<u64>) -> Result<Attr> {
        let node = self.resolve.node(ino)?;
        if set.is_empty() {
            return self.getattr(ino, fh);
        }
        if node.is_unlinked() {
            return self.setattr_unlinked(&node, set, fh);
        }
        let data = set.size != Some(0);
        let bs = self.copy_up(&node, data)?;
        let _steady = self.resolve.steady(&bs)?;
        self.resolve.on_top_checked(&bs, &node, |obj| {
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
            if set.kill_suidgid && node.kind == libc::S_IFREG && set.mode.is_none() {
                let fd = obj.open(OFlag::O_PATH)?;
                sys::kill_suidgid(fd.as_fd())?;
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
            Ok(Attr::of(&node, obj.stat()?))
        })
    }

    /// setattr on an object whose names are all gone: only its open fds reach it.
    fn setattr_unlinked(&self, node: &Node, set: SetAttr, fh: Option<u64>) -> Result<Attr> {
        let h = self.handles.file_for(node, fh)?;
        let bs = self.branches();
        if bs
            .index_of(h.on_branch())
            .is_some_and(|i| !bs.get(i).writable())
        {
            // Its copy is on a read-only branch (a snapshot's, say).
            return Err(Errno::EROFS);
        }
        let _steady = self.resolve.steady(&bs)?;
        let f = h.file();
        if let Some(size) = set.size {
            sys::truncate_fd(f.as_fd(), size)?;
        }
        if set.uid.is_some() || set.gid.is_some() {
            sys::chown_fd(f.as_fd(), set.uid, set.gid)?;
        }
        if set.kill_suidgid && set.mode.is_none() {
            sys::kill_suidgid(f.as_fd())?;
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
        Ok(Attr::of(node, sys::fstat(f.as_fd())?))
    }

    pub fn setxattr(&self, ino: u64, name: &OsStr, value: &[u8], flags: i32) -> Result<()> {
        let node = self.resolve.node(ino)?;
        let bs = self.copy_up(&node, true)?;
        let _steady = self.resolve.steady(&bs)?;
        self.resolve.on_top_checked(&bs, &node, |obj| {
            sys::set_xattr_obj(obj, name, value, flags)
        })
    }

    /// `lsattr`/`chattr` and struct fsxattr (the FS_IOC_* ioctls FUSE passes
    /// on) on the topmost instance of a file or directory; a change copies
    /// it up first. The kernel has checked the caller (owner, and
    /// CAP_LINUX_IMMUTABLE for `i` and `a`). Anything else: ENOTTY.
    pub fn file_attr(&self, ino: u64, cmd: u32, input: &[u8], out_size: u32) -> Result<Vec<u8>> {
        let set = matches!(cmd, sys::FS_IOC_SETFLAGS | sys::FS_IOC_FSSETXATTR);
        if !set && !matches!(cmd, sys::FS_IOC_GETFLAGS | sys::FS_IOC_FSGETXATTR) {
            return Err(Errno::ENOTTY);
        }
        let node = self.resolve.node(ino)?;
        // Never an open of a device node or fifo: only files and directories.
        let flags = match node.kind {
            libc::S_IFDIR => OFlag::O_RDONLY | OFlag::O_DIRECTORY,
            libc::S_IFREG => OFlag::O_RDONLY | OFlag::O_NONBLOCK,
            _ => return Err(Errno::ENOTTY),
        };
        let bs = match set {
            true => self.copy_up(&node, true)?,
            false => self.branches(),
        };
        let _steady = self.resolve.steady(&bs)?;
        let idx = self.resolve.top_idx(&bs, &node)?;
        let fd = self.resolve.open_in(&bs, &node, idx, flags)?;
        let mut buf = vec![0u8; 28];
        let n = input.len().min(buf.len());
        buf[..n].copy_from_slice(&input[..n]);
        sys::file_attr_ioctl(fd.as_fd(), cmd, &mut buf)?;
        buf.truncate(if set { 0 } else { out_size as usize });
        Ok(buf)
    }

    pub fn removexattr(&self, ino: u64, name: &OsStr) -> Result<()> {
        let node = self.resolve.node(ino)?;
        {
            // Removing an xattr that is not there changes nothing: no copy-up.
            let bs = self.branches();
            self.resolve
                .on_top(&bs, &node, |obj| sys::get_xattr_obj(obj, name, &mut []))?;
        }
        let bs = self.copy_up(&node, true)?;
        let _steady = self.resolve.steady(&bs)?;
        self.resolve
            .on_top_checked(&bs, &node, |obj| sys::remove_xattr_obj(obj, name))
    }
}
