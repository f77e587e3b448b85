//! The FUSE adapter: each request is converted, handed to one call on the
//! union model, and the result turned into a reply. Nothing here decides
//! union behaviour.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    BackingId, Errno as FErrno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use parking_lot::Mutex;

use crate::attr::SetAttr;
use crate::copyup::MayWait;
use crate::create::New;
use crate::handles::Opened;
use crate::options::MountOptions;
use crate::resolve::{Attr, BRANCHES_CHANGED};
use crate::sys::{Errno, FileStat, Result, Time};
use crate::union::{Caller, Union};

/// How the kernel does I/O on one inode: FUSE allows either passthrough
/// opens (all on one backing file) or ordinary ones at a time, never both.
#[derive(Default)]
struct IoMode {
    cached: u32,
    passthrough: u32,
    /// The backing file, and its (st_dev, st_ino).
    backing: Option<(Arc<BackingId>, (u64, u64))>,
}

fn identity(f: &std::fs::File) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    f.metadata().ok().map(|m| (m.dev(), m.ino()))
}

/// The I/O mode of every open inode, and of every handle.
#[derive(Default)]
struct IoModes {
    inodes: Mutex<HashMap<u64, IoMode>>,
    /// fh -> (ino, opened with passthrough)
    handles: Mutex<HashMap<u64, (u64, bool)>>,
}

/// How long the kernel may keep what a reply tells it.
#[derive(Clone, Copy)]
struct Ttl {
    entry: Duration,
    attr: Duration,
    negative: Duration,
}

pub struct UnionFs {
    pub union: Arc<Union>,
    ttl: Ttl,
    passthrough: bool,
    readdirplus: bool,
    io: Arc<IoModes>,
    /// Told when the session has ended (the kernel let go of the mount).
    ended: Option<std::sync::mpsc::Sender<()>>,
}

fn err(e: Errno) -> FErrno {
    FErrno::from_i32(e as i32)
}

fn time(s: i64, ns: i64) -> SystemTime {
    if s >= 0 {
        UNIX_EPOCH + Duration::new(s as u64, ns as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(s.unsigned_abs()) + Duration::from_nanos(ns as u64)
    }
}

fn kind(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        libc::S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    let st: &FileStat = &a.st;
    FileAttr {
        ino: INodeNo(a.ino),
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: time(st.st_atime, st.st_atime_nsec),
        mtime: time(st.st_mtime, st.st_mtime_nsec),
        ctime: time(st.st_ctime, st.st_ctime_nsec),
        crtime: time(st.st_ctime, st.st_ctime_nsec),
        kind: kind(st.st_mode),
        perm: (st.st_mode & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

/// The attributes of a negative entry: node id 0 means "no such name".
fn absent() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 0,
        flags: 0,
    }
}

/// Open flags for an open served through the daemon: the kernel may keep
/// the page cache of a file on a read-only branch across opens (its data
/// changes only by a copy-up, which copies it as it is; writes after that go
/// through this same cache, since an inode with cached opens gets no
/// passthrough ones).
fn cache_flags(opened: &Opened) -> FopenFlags {
    if opened.keep_cache {
        FopenFlags::FOPEN_KEEP_CACHE
    } else {
        FopenFlags::empty()
    }
}

fn to_time(t: TimeOrNow) -> Time {
    match t {
        TimeOrNow::Now => Time::Now,
        TimeOrNow::SpecificTime(t) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Time::Set(d.as_secs() as i64, d.subsec_nanos() as i64),
            Err(e) => {
                let d = e.duration();
                let (s, ns) = (d.as_secs() as i64, d.subsec_nanos() as i64);
                if ns == 0 {
                    Time::Set(-s, 0)
                } else {
                    Time::Set(-s - 1, 1_000_000_000 - ns)
                }
            }
        },
    }
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

impl UnionFs {
    pub fn new(
        union: Arc<Union>,
        opts: &MountOptions,
        ended: Option<std::sync::mpsc::Sender<()>>,
    ) -> UnionFs {
        UnionFs {
            ended,
            union,
            ttl: Ttl {
                entry: opts.entry_timeout,
                negative: opts.negative_timeout,
                attr: opts.attr_timeout,
            },
            passthrough: opts.passthrough,
            readdirplus: opts.readdirplus,
            io: Arc::default(),
        }
    }

    /// Run `op` (a request that may copy up) and answer with `done`. If it
    /// would wait for another request's copy-up of the same object, `op`
    /// answers EINPROGRESS at once and runs again on a thread of its own
    /// that may wait: a waiter never holds one of the threads that serve
    /// everything else.
    fn patiently<T: 'static>(
        &self,
        op: impl Fn(&Union) -> Result<T> + Send + 'static,
        done: impl FnOnce(Result<T>) + Send + 'static,
    ) {
        match settled(&op, &self.union) {
            Err(Errno::EINPROGRESS) => {
                let union = self.union.clone();
                let spawned = std::thread::Builder::new()
                    .name("unionfs-wait".into())
                    .spawn(move || {
                        let _may = MayWait::new();
                        done(settled(&op, &union))
                    });
                // The reply, dropped unsent, answers EIO.
                if let Err(e) = spawned {
                    log::warn!("no thread to wait for a copy-up on: {e}");
                }
            }
            res => done(res),
        }
    }
}

/// Run `op` until it ran on one branch set from start to end (a branch
/// change that came between makes it start again on the new set).
fn settled<T>(op: &impl Fn(&Union) -> Result<T>, union: &Union) -> Result<T> {
    for _ in 0..16 {
        match op(union) {
            Err(BRANCHES_CHANGED) => continue,
            res => return res,
        }
    }
    Err(Errno::EBUSY)
}

fn reply_entry(ttl: Ttl, reply: ReplyEntry, res: Result<Attr>) {
    match res {
        Ok(a) => reply.entry_with_ttls(&ttl.attr, &ttl.entry, &file_attr(&a), Generation(0)),
        Err(e) => reply.error(err(e)),
    }
}

fn reply_attr(ttl: Ttl, reply: ReplyAttr, res: Result<Attr>) {
    match res {
        Ok(a) => reply.attr(&ttl.attr, &file_attr(&a)),
        Err(e) => reply.error(err(e)),
    }
}

fn reply_empty(reply: ReplyEmpty, res: Result<()>) {
    match res {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(err(e)),
    }
}

impl IoModes {
    /// Decide passthrough or not for a new open of `ino`, and account for
    /// it. Answers the backing id to reply with, if any; EIO for an open on
    /// another file than the inode's passthrough opens (the kernel takes
    /// none while it has a backing file, and the union never makes one:
    /// such an open gets a node of its own, see file.rs).
    fn choose(
        &self,
        passthrough: bool,
        ino: u64,
        opened: &Opened,
        open_backing: impl FnOnce(&std::fs::File) -> std::io::Result<BackingId>,
    ) -> Result<Option<Arc<BackingId>>> {
        let mut io = self.inodes.lock();
        let mode = io.entry(ino).or_default();
        let mut backing = None;
        if let Some((id, file)) = &mode.backing {
            if identity(&opened.file) != Some(*file) {
                log::error!("inode {ino}: an open on another file than its passthrough opens'");
                return Err(Errno::EIO);
            }
            backing = Some(id.clone());
        } else if passthrough && opened.passthrough_ok && mode.cached == 0 {
            let file = identity(&opened.file);
            match (open_backing(&opened.file), file) {
                (Ok(id), Some(file)) => mode.backing = Some((Arc::new(id), file)),
                (Err(e), _) => log::debug!("no passthrough for inode {ino}: {e}"),
                (Ok(_), None) => {}
            }
            backing = mode.backing.as_ref().map(|(id, _)| id.clone());
        }
        if backing.is_some() {
            mode.passthrough += 1;
        } else {
            mode.cached += 1;
        }
        self.handles
            .lock()
            .insert(opened.fh, (ino, backing.is_some()));
        Ok(backing)
    }

    fn release(&self, fh: u64) {
        let Some((ino, passthrough)) = self.handles.lock().remove(&fh) else {
            return;
        };
        let mut io = self.inodes.lock();
        if let Some(mode) = io.get_mut(&ino) {
            if passthrough {
                mode.passthrough -= 1;
                if mode.passthrough == 0 {
                    mode.backing = None;
                }
            } else {
                mode.cached -= 1;
            }
            if mode.cached == 0 && mode.passthrough == 0 {
                io.remove(&ino);
            }
        }
    }
}

impl Filesystem for UnionFs {
    fn destroy(&mut self) {
        if let Some(tx) = self.ended.take() {
            let _ = tx.send(());
        }
    }

    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        if self.passthrough {
            if config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok() {
                // Branches on a local filesystem: the stack is fuse over it.
                let _ = config.set_max_stack_depth(1);
            } else {
                log::info!("kernel has no FUSE passthrough; data goes through the daemon");
                self.passthrough = false;
            }
        }
        let _ = config.set_max_write(1 << 20);
        // As large as the kernel allows: fewer round trips for sequential reads.
        if let Err(max) = config.set_max_readahead(1 << 20) {
            let _ = config.set_max_readahead(max);
        }
        let _ = config.set_max_background(64);
        // Lookups and readdirs in one directory may run at once (the model
        // locks a directory only to change its names); symlink targets never change in place;
        // a file whose mtime or size changed under the kernel's page cache
        // (directly in a branch) has its cached pages dropped.
        if self.readdirplus {
            let _ = config.add_capabilities(
                InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO,
            );
        }
        for flag in [
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_AUTO_INVAL_DATA,
        ] {
            let _ = config.add_capabilities(flag);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.union.lookup(parent.0, name) {
            // A negative entry: the kernel keeps the miss for negative_timeout.
            Err(Errno::ENOENT)
                if !self.ttl.negative.is_zero()
                    && self
                        .union
                        .resolve
                        .negatives
                        .admit(parent.0, name, self.ttl.negative) =>
            {
                reply.entry_with_ttls(
                    &Duration::ZERO,
                    &self.ttl.negative,
                    &absent(),
                    Generation(0),
                )
            }
            res => reply_entry(self.ttl, reply, res),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.union.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        reply_attr(self.ttl, reply, self.union.getattr(ino.0, fh.map(|f| f.0)));
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(to_time),
            mtime: mtime.map(to_time),
        };
        let (ttl, fh) = (self.ttl, fh.map(|f| f.0));
        self.patiently(
            move |u| u.setattr(ino.0, set, fh),
            move |res| reply_attr(ttl, reply, res),
        );
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.union.readlink(ino.0) {
            Ok(t) => reply.data(std::os::unix::ffi::OsStrExt::as_bytes(t.as_os_str())),
            Err(e) => reply.error(err(e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let new = if mode & libc::S_IFMT == libc::S_IFREG {
            New::File {
                mode,
                flags: libc::O_RDONLY,
            }
        } else {
            New::Special {
                mode,
                rdev: rdev as u64,
            }
        };
        let (ttl, who, name) = (self.ttl, caller(req), name.to_os_string());
        self.patiently(
            move |u| {
                let (a, f) = u.create(parent.0, &name, who, new)?;
                if let Some(f) = f {
                    u.release(f.fh);
                }
                Ok(a)
            },
            move |res| reply_entry(ttl, reply, res),
        );
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let (ttl, who, name) = (self.ttl, caller(req), name.to_os_string());
        self.patiently(
            move |u| Ok(u.create(parent.0, &name, who, New::Dir { mode })?.0),
            move |res| reply_entry(ttl, reply, res),
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.to_os_string();
        self.patiently(
            move |u| u.unlink(parent.0, &name),
            |res| reply_empty(reply, res),
        );
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.to_os_string();
        self.patiently(
            move |u| u.rmdir(parent.0, &name),
            |res| reply_empty(reply, res),
        );
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let (ttl, who) = (self.ttl, caller(req));
        let (name, target) = (link_name.to_os_string(), target.as_os_str().to_os_string());
        self.patiently(
            move |u| {
                let new = New::Symlink { target: &target };
                Ok(u.create(parent.0, &name, who, new)?.0)
            },
            move |res| reply_entry(ttl, reply, res),
        );
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (name, newname, flags) = (name.to_os_string(), newname.to_os_string(), flags.bits());
        self.patiently(
            move |u| u.rename(parent.0, &name, newparent.0, &newname, flags),
            |res| reply_empty(reply, res),
        );
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let (ttl, newname) = (self.ttl, newname.to_os_string());
        self.patiently(
            move |u| u.link(ino.0, newparent.0, &newname),
            move |res| reply_entry(ttl, reply, res),
        );
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let (io, passthrough, union) = (self.io.clone(), self.passthrough, self.union.clone());
        self.patiently(
            move |u| u.open(ino.0, flags.0),
            move |res| match res {
                Ok(opened) => {
                    let fh = FileHandle(opened.fh);
                    match io.choose(passthrough, ino.0, &opened, |f| reply.open_backing(f)) {
                        Ok(Some(id)) => reply.opened_passthrough(fh, FopenFlags::empty(), &id),
                        Ok(None) => reply.opened(fh, cache_flags(&opened)),
                        Err(e) => {
                            union.release(opened.fh);
                            reply.error(err(e))
                        }
                    }
                }
                Err(e) => reply.error(err(e)),
            },
        );
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let mut reply = Some(reply);
        let res = self.union.read(fh.0, offset, size, |data| {
            if let Some(r) = reply.take() {
                r.data(data)
            }
        });
        if let (Err(e), Some(r)) = (res, reply.take()) {
            r.error(err(e));
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.union.write(fh.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(err(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing to do on close(2): ENOSYS tells the kernel to stop asking.
        reply.error(FErrno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // The I/O mode first: an open racing this release either still sees
        // the handle (and, on another copy, gets a node of its own) or finds
        // neither it nor its passthrough backing.
        self.io.release(fh.0);
        self.union.release(fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.union.fsync(fh.0, datasync));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.union.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(err(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        match self.union.readdir(fh.0, offset) {
            Ok(entries) => {
                for (i, e) in entries.iter().enumerate().skip(offset as usize) {
                    if reply.add(INodeNo(e.ino), (i + 1) as u64, kind(e.kind), &e.name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(err(e)),
        }
    }

    /// Entries with their attributes: each one is looked up as by LOOKUP
    /// (and counted as a lookup the kernel will forget), so `ls -l` or `du`
    /// after a listing asks nothing more. The kernel asks for this only while
    /// entries of the directory are being looked up (READDIRPLUS_AUTO).
    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let entries = match self.union.readdir(fh.0, offset) {
            Ok(e) => e,
            Err(e) => return reply.error(err(e)),
        };
        for (i, e) in entries.iter().enumerate().skip(offset as usize) {
            let off = (i + 1) as u64;
            if i < 2 {
                // "." and "..": the kernel takes neither attributes nor a lookup.
                let mut a = absent();
                a.ino = INodeNo(e.ino);
                a.kind = FileType::Directory;
                if reply.add(
                    INodeNo(e.ino),
                    off,
                    &e.name,
                    &Duration::ZERO,
                    &a,
                    Generation(0),
                ) {
                    break;
                }
                continue;
            }
            // Gone since the listing was taken: left out of this reply.
            let Ok(attr) = self.union.lookup(ino.0, &e.name) else {
                continue;
            };
            let fa = file_attr(&attr);
            if reply.add(fa.ino, off, &e.name, &self.ttl.entry, &fa, Generation(0)) {
                // Not sent: the kernel will not forget it.
                self.union.forget(attr.ino, 1);
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.union.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.union.fsyncdir(ino.0));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.union.statfs() {
            Ok(s) => reply.statfs(
                s.blocks(),
                s.blocks_free(),
                s.blocks_available(),
                s.files(),
                s.files_free(),
                s.block_size() as u32,
                self.union.name_max() as u32,
                s.fragment_size() as u32,
            ),
            Err(e) => reply.error(err(e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let (name, value) = (name.to_os_string(), value.to_vec());
        self.patiently(
            move |u| u.setxattr(ino.0, &name, &value, flags),
            |res| reply_empty(reply, res),
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        xattr_reply(reply, size, |buf| self.union.getxattr(ino.0, name, buf));
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        xattr_reply(reply, size, |buf| self.union.listxattr(ino.0, buf));
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.to_os_string();
        self.patiently(
            move |u| u.removexattr(ino.0, &name),
            |res| reply_empty(reply, res),
        );
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let (ttl, who, name) = (self.ttl, caller(req), name.to_os_string());
        let (io, passthrough, union) = (self.io.clone(), self.passthrough, self.union.clone());
        self.patiently(
            move |u| u.create(parent.0, &name, who, New::File { mode, flags }),
            move |res| match res {
                Ok((a, Some(opened))) => {
                    let (fh, attr) = (FileHandle(opened.fh), file_attr(&a));
                    let backing = io.choose(passthrough, a.ino, &opened, |f| reply.open_backing(f));
                    let gen = Generation(0);
                    match backing {
                        Ok(Some(id)) => {
                            let flags = FopenFlags::empty();
                            reply.created_passthrough(&ttl.entry, &attr, gen, fh, flags, &id)
                        }
                        Ok(None) => reply.created(&ttl.entry, &attr, gen, fh, cache_flags(&opened)),
                        Err(e) => {
                            union.release(opened.fh);
                            reply.error(err(e))
                        }
                    }
                }
                Ok((_, None)) => reply.error(FErrno::EIO),
                Err(e) => reply.error(err(e)),
            },
        );
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.union.fallocate(fh.0, offset, length, mode));
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        match self.union.lseek(fh.0, offset, whence) {
            Ok(off) => reply.offset(off),
            Err(e) => reply.error(err(e)),
        }
    }
}

/// getxattr/listxattr: size 0 asks for the length, else the value if it fits.
fn xattr_reply(reply: ReplyXattr, size: u32, get: impl Fn(&mut [u8]) -> Result<usize>) {
    if size == 0 {
        match get(&mut []) {
            Ok(n) => reply.size(n as u32),
            Err(e) => reply.error(err(e)),
        }
        return;
    }
    let mut buf = vec![0u8; size as usize];
    match get(&mut buf) {
        Ok(n) => reply.data(&buf[..n]),
        Err(e) => reply.error(err(e)),
    }
}
