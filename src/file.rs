//! Open files and directory streams.
//!
//! A file handle holds the backing fd opened at `open`; data never goes
//! through a path lookup. A read-only handle opened before a copy-up notices
//! the object's new generation and re-opens the copied-up instance, so it sees
//! writes made after the copy-up (as overlayfs re-points such files); one
//! opened before a branch change keeps reading what its branch holds.

use std::ffi::OsString;
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use nix::fcntl::OFlag;

use crate::branch::BranchSet;
use crate::handles::{FileHandle, Opened};
use crate::options::Passthrough;
use crate::readdir::{self, Entry};
use crate::resolve::{Node, BRANCHES_CHANGED};
use crate::sys::{self, Errno, Result};
use crate::union::Union;

/// The flags of a union open that are passed on to the backing open.
fn backing_flags(flags: i32) -> OFlag {
    let keep = libc::O_ACCMODE
        | libc::O_APPEND
        | libc::O_SYNC
        | libc::O_DSYNC
        | libc::O_NONBLOCK
        | libc::O_TRUNC;
    OFlag::from_bits_truncate(flags & keep)
}

impl Union {
    /// Open `ino` with `flags`; `kill_suidgid`: an O_TRUNC open by a caller
    /// that may not keep setuid/setgid (the kernel leaves it to us).
    pub fn open(&self, ino: u64, flags: i32, kill_suidgid: bool) -> Result<Opened> {
        let node = self.resolve.node(ino)?;
        if node.is_dir() {
            return Err(Errno::EISDIR);
        }
        let oflags = backing_flags(flags);
        let writable = oflags & OFlag::O_ACCMODE != OFlag::O_RDONLY;
        let trunc = oflags.contains(OFlag::O_TRUNC);
        let _admitted = match writable || trunc {
            true => Some(self.handles.admit_writer()?),
            false => None,
        };
        // Where this open will find the file: its copy-up target if it
        // copies up. Files opened before a branch change keep what their
        // branch holds; an open of another copy must not share their
        // kernel inode (nor its page cache, nor re-point the readers that
        // share it): the name gets a new node before anything is copied,
        // and ESTALE makes the kernel look it up again.
        let bs = self.branches();
        let idx = self.resolve.top_idx(&bs, &node)?;
        let moves = (writable || trunc)
            && !bs.get(idx).writable()
            && self.handles.pinned(node.ino).is_none();
        // A read-only open of a lower file may be backed by a clone in its
        // copy-up target (see clone.rs): the file is then there.
        let clone_at = match writable || trunc {
            true => None,
            false => self
                .clone_target(&bs, idx)
                .filter(|_| self.worth_a_clone(&bs, &node)),
        };
        let dest = match (moves, clone_at) {
            (true, _) => bs.writable_above(idx).map(|t| bs.get(t).id),
            (false, Some(t)) => Some(bs.get(t).id),
            (false, None) => Some(bs.get(idx).id),
        };
        if dest.is_some_and(|d| {
            self.handles.older_elsewhere(node.ino, bs.generation, d)
                || self.handles.passthrough_elsewhere(node.ino, d)
        }) {
            return self.detach(&bs, &node);
        }
        let bs = if writable || trunc {
            self.copy_up(&node, !trunc)?
        } else {
            bs
        };
        let idx = self.resolve.top_idx(&bs, &node)?;
        let top = bs.get(idx).id;
        // Again: a copy-up (this one, or another request's) or a branch
        // change may have moved the file meanwhile.
        if self.handles.older_elsewhere(node.ino, bs.generation, top)
            || self.handles.passthrough_elsewhere(node.ino, top)
        {
            return self.detach(&bs, &node);
        }
        // Opened, truncated and counted on a steady branch set: a branch
        // change either sees this handle or is seen by it.
        let _steady = self.resolve.steady(&bs)?;
        if let Some(t) = clone_at {
            // One clone per node: made and counted in the node's turn.
            let _turn = node.copying.enter()?;
            if self.resolve.top_idx(&bs, &node)? != idx {
                // Copied up meanwhile: open it again, where it is now.
                return Err(BRANCHES_CHANGED);
            }
            let clone = self.clone_of(&bs, &node, idx, t)?;
            let mut opened =
                self.handles
                    .add_clone(node.clone(), clone, bs.get(t).id, bs.generation);
            opened.passthrough_ok = !drops_privileges(&opened.file);
            return Ok(opened);
        }
        let fd = self.resolve.open_in(&bs, &node, idx, oflags)?;
        if kill_suidgid && trunc {
            sys::kill_suidgid(fd.as_fd())?;
        }
        let mut opened =
            self.handles
                .add_file(node, sys::into_file(fd), oflags, top, bs.generation);
        // Passthrough only where the promise of `repoint_readers` holds (no
        // copy-up can move the file), unless the user gave it up (`all`):
        // then readers keep the data they had, and a copy-up gives the name
        // a node of its own (see `passthrough_elsewhere`).
        opened.passthrough_ok = match self.passthrough {
            Passthrough::Off => false,
            Passthrough::All => true,
            Passthrough::On => bs.get(idx).writable() || bs.writable_above(idx).is_none(),
        } && !drops_privileges(&opened.file);
        opened.keep_cache = !bs.get(idx).writable() && !self.strictatime;
        Ok(opened)
    }

    /// Give the name of `node` a new node (see `open`); answers ESTALE.
    fn detach<T>(&self, bs: &BranchSet, node: &Node) -> Result<T> {
        let (parent, _) = node.parent_name();
        let _lock = self.resolve.lock(bs, parent)?;
        self.resolve.detached(node);
        Err(Errno::ESTALE)
    }

    /// Right after a copy-up of `node` into branch `target` (under its
    /// parent's lock, so on a steady branch set): the read-only handles
    /// opened in this branch set move to the copy at once, so a branch
    /// change coming later cannot leave them on the version below the
    /// copy (which would hide from them a write made before a snapshot).
    pub(crate) fn repoint_readers(&self, bs: &BranchSet, node: &Node, target: usize) {
        let generation = node.generation.load(Ordering::Acquire);
        for h in self.handles.files_of(node.ino) {
            // The kernel holds a passthrough handle's file: it stays there.
            if h.writable
                || h.passthrough.load(Ordering::Acquire)
                || h.branches.load(Ordering::Acquire) != bs.generation
                || h.generation.load(Ordering::Acquire) == generation
            {
                continue;
            }
            match self
                .resolve
                .open_in(bs, node, target, h.flags & !OFlag::O_TRUNC)
            {
                Ok(fd) => h.repoint(sys::into_file(fd), generation, bs.get(target).id),
                // It tries again at its next read (see `current`).
                Err(e) => log::debug!("re-pointing a reader of inode {}: {e}", node.ino),
            }
        }
    }

    /// The backing file of a handle, re-opened on the copied-up instance if
    /// the object was copied up since the handle was opened.
    fn current(&self, h: &FileHandle) -> Result<Arc<File>> {
        let generation = h.node.generation.load(Ordering::Acquire);
        if h.writable
            || h.passthrough.load(Ordering::Acquire)
            || generation == h.generation.load(Ordering::Acquire)
        {
            return Ok(h.file());
        }
        let bs = self.branches();
        if h.branches.load(Ordering::Acquire) != bs.generation {
            // Opened before a branch change: it reads what its branch holds.
            return Ok(h.file());
        }
        let Ok(idx) = self.resolve.top_idx(&bs, &h.node) else {
            return Ok(h.file());
        };
        match self
            .resolve
            .open_in(&bs, &h.node, idx, h.flags & !OFlag::O_TRUNC)
        {
            Ok(fd) => h.repoint(sys::into_file(fd), generation, bs.get(idx).id),
            // Removed or detached meanwhile (see `open`): the handle keeps
            // what it has, as a file open on a removed name does.
            Err(e) => log::debug!("re-pointing a reader of inode {}: {e}", h.node.ino),
        }
        Ok(h.file())
    }

    /// Read up to `size` bytes at `offset` and hand them to `reply`. The
    /// bytes land in a buffer of the serving thread, reused from one read to
    /// the next (no allocation or zeroing of up to 1 MiB per request).
    pub fn read<R>(
        &self,
        fh: u64,
        offset: u64,
        size: u32,
        reply: impl FnOnce(&[u8]) -> R,
    ) -> Result<R> {
        thread_local! {
            static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let h = self.handles.file(fh)?;
        let file = self.current(&h)?;
        BUF.with_borrow_mut(|buf| {
            let size = size as usize;
            if buf.len() < size {
                buf.resize(size, 0);
            }
            let mut done = 0;
            while done < size {
                match file.read_at(&mut buf[done..size], offset + done as u64) {
                    Ok(0) => break,
                    Ok(n) => done += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(io_errno(e)),
                }
            }
            Ok(reply(&buf[..done]))
        })
    }

    /// Write `data` at `offset`; `kill_suidgid`: the writer may not keep
    /// setuid/setgid (cleared first, as the kernel does).
    pub fn write(&self, fh: u64, offset: u64, data: &[u8], kill_suidgid: bool) -> Result<u32> {
        let h = self.handles.file(fh)?;
        if !h.writable {
            return Err(Errno::EBADF);
        }
        if kill_suidgid {
            sys::kill_suidgid(h.file().as_fd())?;
        }
        h.file().write_all_at(data, offset).map_err(io_errno)?;
        Ok(data.len() as u32)
    }

    pub fn release(&self, fh: u64) {
        self.handles.close_file(fh);
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> Result<()> {
        let h = self.handles.file(fh)?;
        sys::fsync(h.file().as_fd(), datasync)
    }

    pub fn fallocate(&self, fh: u64, offset: u64, len: u64, mode: i32) -> Result<()> {
        let h = self.handles.file(fh)?;
        if !h.writable {
            return Err(Errno::EBADF);
        }
        sys::fallocate(h.file().as_fd(), mode, offset, len)
    }

    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> Result<i64> {
        let h = self.handles.file(fh)?;
        let file = self.current(&h)?;
        sys::seek(file.as_fd(), offset, whence)
    }

    pub fn opendir(&self, ino: u64) -> Result<u64> {
        let node = self.resolve.node(ino)?;
        if !node.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        let bs = self.branches();
        let top = self.resolve.layer_fds(&bs, &node)?.into_iter().next();
        let (_, top) = top.ok_or(Errno::ENOENT)?;
        Ok(self.handles.add_dir(node, top))
    }

    /// The listing of an open directory, `.` and `..` first, in cookie
    /// order. Offset 0 (the first read, or a rewind) takes a fresh snapshot,
    /// and so does a read from the middle on a handle that has none (the
    /// kernel served the start from its cache, then dropped it).
    pub fn readdir(&self, fh: u64, offset: u64) -> Result<Arc<Vec<Entry>>> {
        let h = self.handles.dir(fh)?;
        if offset != 0 {
            let taken = h.entries.lock().clone();
            if !taken.is_empty() {
                return Ok(taken);
            }
        }
        let bs = self.branches();
        let layers = self.resolve.layer_fds(&bs, &h.node)?;
        // A listing is a use: the directory is watched once used.
        let idx: Vec<usize> = layers.iter().map(|(i, _)| *i).collect();
        self.resolve.watch_used(&bs, &h.node, &idx);
        let parent = h.node.parent_name().0;
        let mut entries = vec![
            Entry {
                name: OsString::from("."),
                ino: h.node.ino,
                kind: libc::S_IFDIR,
                cookie: readdir::DOT,
            },
            Entry {
                name: OsString::from(".."),
                ino: parent,
                kind: libc::S_IFDIR,
                cookie: readdir::DOTDOT,
            },
        ];
        entries.extend(readdir::merged(&bs, &layers, &self.resolve.inodes)?);
        let entries = Arc::new(entries);
        *h.entries.lock() = entries.clone();
        Ok(entries)
    }

    pub fn releasedir(&self, fh: u64) {
        self.handles.close_dir(fh);
    }

    pub fn fsyncdir(&self, ino: u64) -> Result<()> {
        let node = self.resolve.node(ino)?;
        let bs = self.branches();
        let idx = self.resolve.top_idx(&bs, &node)?;
        let fd = self
            .resolve
            .open_in(&bs, &node, idx, OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
        sys::fsync(fd.as_fd(), false)
    }
}

/// Whether a write may have to clear setuid/setgid: the kernel leaves that to
/// the daemon (HANDLE_KILLPRIV_V2) but never tells it of a passthrough write,
/// so such files are served by the daemon.
fn drops_privileges(file: &File) -> bool {
    sys::fstat(file.as_fd()).map_or(true, |st| {
        let m = st.st_mode;
        m & libc::S_ISUID != 0
            || m & (libc::S_ISGID | libc::S_IXGRP) == libc::S_ISGID | libc::S_IXGRP
    })
}

pub(crate) fn io_errno(e: std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}
