//! The FUSE adapter: each request is converted, handed to one call on the
//! union model, and the result turned into a reply. Nothing here decides
//! union behaviour.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::attr::SetAttr;
use crate::create::New;
use crate::fuse::abi::{self, EntryOut};
use crate::fuse::{
    Backing, Backings, Conn, DirBuf, Dispatch, Notifier, Op, Reply, Request, SetTime,
};
use crate::handles::Opened;
use crate::options::{MountOptions, Passthrough, Ttl};
use crate::resolve::{Attr, BRANCHES_CHANGED, ROOT};
use crate::sys::{Errno, FileStat, Result, Time};
use crate::union::{Caller, Union};
use crate::waiting::MayWait;

/// How the kernel does I/O on one inode: FUSE allows either passthrough
/// opens (all on one backing file) or ordinary ones at a time, never both.
#[derive(Default)]
struct IoMode {
    cached: u32,
    passthrough: u32,
    /// The backing file, and its (st_dev, st_ino).
    backing: Option<(Arc<Backing>, (u64, u64))>,
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
    /// Why the kernel refused backing files, each said once in the log.
    refusals: Mutex<std::collections::HashSet<i32>>,
}

/// What a refused backing file means (FUSE_DEV_IOC_BACKING_OPEN's errors).
fn refusal(e: Errno) -> &'static str {
    match e {
        Errno::EPERM => "only root (CAP_SYS_ADMIN) may give the kernel backing files",
        Errno::ELOOP => {
            "the branch is itself a stacked filesystem (overlayfs, FUSE): too deep to stack on"
        }
        _ => "refused by the kernel",
    }
}

/// The requests running on threads of their own, by unique: an INTERRUPT
/// of one sets its flag, and its wait ends with EINTR.
#[derive(Default)]
struct Waiters {
    running: HashMap<u64, Arc<AtomicBool>>,
    /// Interrupts that came before their request was handed to its thread.
    early: std::collections::HashSet<u64>,
}

impl Waiters {
    fn start(&mut self, unique: u64) -> Arc<AtomicBool> {
        let flag = Arc::new(AtomicBool::new(self.early.remove(&unique)));
        self.running.insert(unique, flag.clone());
        flag
    }

    fn interrupt(&mut self, unique: u64) {
        match self.running.get(&unique) {
            Some(flag) => flag.store(true, Ordering::Relaxed),
            None => {
                // Mostly interrupts of requests already answered: kept
                // only a while.
                if self.early.len() > 1024 {
                    self.early.clear();
                }
                self.early.insert(unique);
            }
        }
    }
}

pub struct UnionFs {
    pub union: Arc<Union>,
    waiters: Arc<Mutex<Waiters>>,
    /// How long the kernel may keep what a reply tells it: in directories
    /// whose changes the daemon follows, and in the others.
    exact_ttl: Ttl,
    loose_ttl: Ttl,
    /// Where passthrough opens get their backing ids; None: no passthrough.
    backings: Option<Backings>,
    io: Arc<IoModes>,
    notifier: Notifier,
}

fn attr_out(a: &Attr) -> abi::Attr {
    let st: &FileStat = &a.st;
    abi::Attr {
        ino: st.st_ino,
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: st.st_atime as u64,
        mtime: st.st_mtime as u64,
        ctime: st.st_ctime as u64,
        atimensec: st.st_atime_nsec as u32,
        mtimensec: st.st_mtime_nsec as u32,
        ctimensec: st.st_ctime_nsec as u32,
        mode: st.st_mode,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

fn entry_out(ttl: Ttl, a: &Attr) -> EntryOut {
    EntryOut {
        nodeid: a.ino,
        generation: 0,
        entry_valid: ttl.entry.as_secs(),
        attr_valid: ttl.attr.as_secs(),
        entry_valid_nsec: ttl.entry.subsec_nanos(),
        attr_valid_nsec: ttl.attr.subsec_nanos(),
        attr: attr_out(a),
    }
}

/// A negative entry: node id 0 means "no such name", kept for `negative`.
fn absent(negative: Duration) -> EntryOut {
    EntryOut {
        entry_valid: negative.as_secs(),
        entry_valid_nsec: negative.subsec_nanos(),
        ..Default::default()
    }
}

/// The open reply. Through the daemon, the kernel may keep the page cache
/// of a file on a read-only branch across opens (its data changes only by a
/// copy-up, which copies it as it is; writes after that go through this
/// same cache, since an inode with cached opens gets no passthrough ones).
/// Only a passthrough file open for writing is flushed on close (see
/// `Op::Flush`); every other close asks the daemon nothing.
fn open_out(opened: &Opened, backing: Option<&Backing>, flags: i32) -> abi::OpenOut {
    let writable = flags & libc::O_ACCMODE != libc::O_RDONLY;
    match backing {
        Some(b) => abi::OpenOut {
            fh: opened.fh,
            open_flags: abi::FOPEN_PASSTHROUGH | if writable { 0 } else { abi::FOPEN_NOFLUSH },
            backing_id: b.id as i32,
        },
        None => abi::OpenOut {
            fh: opened.fh,
            open_flags: abi::FOPEN_NOFLUSH
                | if opened.keep_cache {
                    abi::FOPEN_KEEP_CACHE
                } else {
                    0
                },
            backing_id: 0,
        },
    }
}

fn to_time(t: SetTime) -> Time {
    match t {
        SetTime::Now => Time::Now,
        SetTime::At(s, ns) => Time::Set(s, ns as i64),
    }
}

/// Who asks; `umask` for the requests that make entries (the kernel leaves
/// it to the daemon, FUSE_DONT_MASK), 0 for the rest.
fn caller(req: &Request, umask: u32) -> Caller {
    Caller {
        uid: req.uid,
        gid: req.gid,
        umask,
    }
}

impl UnionFs {
    /// The adapter for a connection INIT settled as `conn`; passthrough
    /// when the options ask for it and the kernel granted it.
    pub fn new(
        union: Arc<Union>,
        opts: &MountOptions,
        conn: &Conn,
        backings: Backings,
        notifier: Notifier,
    ) -> UnionFs {
        let wanted = opts.passthrough != Passthrough::Off;
        let passthrough = wanted && conn.has(abi::init::PASSTHROUGH);
        if wanted && !passthrough {
            log::warn!("no passthrough: the kernel has no FUSE passthrough (Linux 6.9+); the daemon serves all data");
        }
        UnionFs {
            union,
            exact_ttl: opts.ttl(true),
            loose_ttl: opts.ttl(false),
            backings: passthrough.then_some(backings),
            io: Arc::default(),
            waiters: Arc::default(),
            notifier,
        }
    }

    /// Run `op` (a request that may copy up) and answer with `done`. If it
    /// would wait for another request's copy-up of the same object, or copy
    /// much (a large file, a directory tree: copyup::SLOW_COPY), `op`
    /// answers EINPROGRESS at once and runs again on a thread of its own
    /// that may wait: slow work never holds one of the threads that serve
    /// everything else.
    fn patiently<T: 'static>(
        &self,
        unique: u64,
        op: impl Fn(&Union) -> Result<T> + Send + 'static,
        done: impl FnOnce(Result<T>) + Send + 'static,
    ) {
        match settled(&op, &self.union) {
            Err(Errno::EINPROGRESS) => {
                let (union, waiters) = (self.union.clone(), self.waiters.clone());
                let interrupted = waiters.lock().start(unique);
                let spawned = std::thread::Builder::new()
                    .name("unionfs-wait".into())
                    .spawn(move || {
                        let _may = MayWait::new(interrupted);
                        let res = settled(&op, &union);
                        waiters.lock().running.remove(&unique);
                        done(res)
                    });
                // The reply, dropped unsent, answers EIO.
                if let Err(e) = spawned {
                    log::warn!("no thread to wait for a copy-up on: {e}");
                }
            }
            res => done(res),
        }
    }

    /// The timeouts for names in directory `dir`.
    fn ttl_in(&self, dir: u64) -> Ttl {
        if self.union.exact(dir) {
            self.exact_ttl
        } else {
            self.loose_ttl
        }
    }

    /// The timeouts for the entry of `a` in directory `dir`: a directory's
    /// entry also says which branches it merges, which its own instances
    /// decide (an opaque marker made in it): long only once it is watched too.
    fn ttl_entry(&self, dir: u64, a: &Attr) -> Ttl {
        let ttl = self.ttl_in(dir);
        if ttl == self.exact_ttl && is_dir(a) && !self.union.exact(a.ino) {
            return self.unwatched_dir(ttl);
        }
        ttl
    }

    /// `ttl` (of the directory holding it) for the entry of a directory
    /// that is not watched itself: its misses as in its parent, the rest loose.
    fn unwatched_dir(&self, ttl: Ttl) -> Ttl {
        Ttl {
            negative: ttl.negative,
            ..self.loose_ttl
        }
    }

    /// The timeouts for the attributes of `ino` (its changes are seen
    /// through its parent's instances).
    fn ttl_of(&self, ino: u64) -> Ttl {
        match self.union.resolve.node(ino) {
            Ok(n) if ino != ROOT => self.ttl_in(n.parent_name().0),
            _ => self.ttl_in(ROOT),
        }
    }

    fn lookup(&self, parent: u64, name: &OsStr, reply: Reply) {
        let ttl = self.ttl_in(parent);
        match self.union.lookup(parent, name) {
            // A negative entry: the kernel keeps the miss for negative_timeout.
            Err(Errno::ENOENT)
                if !ttl.negative.is_zero()
                    && self
                        .union
                        .resolve
                        .negatives
                        .admit(parent, name, ttl.negative) =>
            {
                reply.entry(&absent(ttl.negative))
            }
            Ok(a) => reply.entry(&entry_out(self.ttl_entry(parent, &a), &a)),
            Err(e) => reply.error(e),
        }
    }

    /// Make a new name (file, node, directory, symlink) in `parent` and
    /// answer with its entry.
    fn make(
        &self,
        parent: u64,
        reply: Reply,
        new: impl Fn(&Union) -> Result<Attr> + Send + 'static,
    ) {
        let ttl = self.ttl_in(parent);
        // A new directory is not watched yet (see ttl_entry).
        let dir_ttl = self.unwatched_dir(ttl);
        self.patiently(reply.unique(), new, move |res| match res {
            Ok(a) if is_dir(&a) => reply.entry(&entry_out(dir_ttl, &a)),
            res => reply_entry(ttl, reply, res),
        });
    }

    /// A change that answers nothing but success or an errno.
    fn change(&self, reply: Reply, op: impl Fn(&Union) -> Result<()> + Send + 'static) {
        self.patiently(reply.unique(), op, |res| reply_empty(reply, res));
    }

    fn open(&self, ino: u64, flags: i32, kill_suidgid: bool, reply: Reply) {
        let (io, backings, union) = (self.io.clone(), self.backings.clone(), self.union.clone());
        self.patiently(
            reply.unique(),
            move |u| u.open(ino, flags, kill_suidgid),
            move |res| match res.and_then(|o| io.choose(backings.as_ref(), ino, o, &union)) {
                Ok((opened, backing)) => reply.open(&open_out(&opened, backing.as_deref(), flags)),
                Err(e) => reply.error(e),
            },
        );
    }

    /// CREATE of `name`, or (None) TMPFILE.
    fn create(
        &self,
        who: Caller,
        parent: u64,
        name: Option<&OsStr>,
        mode: u32,
        flags: i32,
        reply: Reply,
    ) {
        let (ttl, name) = (self.ttl_in(parent), name.map(OsStr::to_os_string));
        let (io, backings, union) = (self.io.clone(), self.backings.clone(), self.union.clone());
        self.patiently(
            reply.unique(),
            move |u| match &name {
                Some(name) => u.create(parent, name, who, New::File { mode, flags }),
                None => u.create(parent, OsStr::new(""), who, New::Tmpfile { mode, flags }),
            },
            move |res| {
                let res = res.and_then(|(a, opened)| {
                    let opened = opened.ok_or(Errno::EIO)?;
                    Ok((a, io.choose(backings.as_ref(), a.ino, opened, &union)?))
                });
                match res {
                    Ok((a, (opened, backing))) => reply.create(
                        &entry_out(ttl, &a),
                        &open_out(&opened, backing.as_deref(), flags),
                    ),
                    Err(e) => reply.error(e),
                }
            },
        );
    }

    fn read(&self, fh: u64, offset: u64, size: u32, reply: Reply) {
        let mut reply = Some(reply);
        let res = self.union.read(fh, offset, size, |data| {
            if let Some(r) = reply.take() {
                r.data(data)
            }
        });
        if let (Err(e), Some(r)) = (res, reply.take()) {
            r.error(e);
        }
    }

    /// Entries of a directory handle from `offset` on, as many as fit in
    /// `size`. With `plus`, each one comes with its attributes and is looked
    /// up as by LOOKUP (and counted as a lookup the kernel will forget), so
    /// `ls -l` or `du` after a listing asks nothing more. The kernel asks
    /// for that only while entries of the directory are being looked up
    /// (READDIRPLUS_AUTO).
    fn readdir(&self, ino: u64, fh: u64, offset: u64, size: u32, plus: bool, reply: Reply) {
        let entries = match self.union.readdir(fh, offset) {
            Ok(e) => e,
            Err(e) => return reply.error(e),
        };
        let mut buf = DirBuf::new(size);
        let start = entries.partition_point(|e| e.cookie <= offset);
        for e in &entries[start..] {
            let off = e.cookie;
            let name = std::os::unix::ffi::OsStrExt::as_bytes(e.name.as_os_str());
            if !plus {
                if !buf.add(e.ino, off, e.kind, name) {
                    break;
                }
                continue;
            }
            if off <= crate::readdir::DOTDOT {
                // "." and "..": the kernel takes neither attributes nor a lookup.
                let mut dot = EntryOut::default();
                dot.attr.ino = e.ino;
                dot.attr.mode = libc::S_IFDIR;
                if !buf.add_plus(&dot, off, libc::S_IFDIR, name) {
                    break;
                }
                continue;
            }
            // Gone since the listing was taken: left out of this reply.
            let Ok(attr) = self.union.lookup(ino, &e.name) else {
                continue;
            };
            let entry = entry_out(self.ttl_entry(ino, &attr), &attr);
            if !buf.add_plus(&entry, off, attr.st.st_mode, name) {
                // Not sent: the kernel will not forget it.
                self.union.forget(attr.ino, 1);
                break;
            }
        }
        buf.send(reply);
    }

    fn statfs(&self, reply: Reply) {
        match self.union.statfs() {
            Ok(s) => reply.statfs(&abi::StatfsOut {
                blocks: s.blocks(),
                bfree: s.blocks_free(),
                bavail: s.blocks_available(),
                files: s.files(),
                ffree: s.files_free(),
                bsize: s.block_size() as u32,
                namelen: self.union.name_max() as u32,
                frsize: s.fragment_size() as u32,
                ..Default::default()
            }),
            Err(e) => reply.error(e),
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

fn is_dir(a: &Attr) -> bool {
    a.st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

fn reply_entry(ttl: Ttl, reply: Reply, res: Result<Attr>) {
    match res {
        Ok(a) => reply.entry(&entry_out(ttl, &a)),
        Err(e) => reply.error(e),
    }
}

fn reply_attr(ttl: Ttl, reply: Reply, res: Result<Attr>) {
    match res {
        Ok(a) => reply.attr(&abi::AttrOut {
            attr_valid: ttl.attr.as_secs(),
            attr_valid_nsec: ttl.attr.subsec_nanos(),
            dummy: 0,
            attr: attr_out(&a),
        }),
        Err(e) => reply.error(e),
    }
}

fn reply_empty(reply: Reply, res: Result<()>) {
    match res {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

/// getxattr/listxattr: size 0 asks for the length, else the value if it fits.
fn xattr_reply(reply: Reply, size: u32, get: impl Fn(&mut [u8]) -> Result<usize>) {
    if size == 0 {
        return match get(&mut []) {
            Ok(n) => reply.xattr_size(n as u32),
            Err(e) => reply.error(e),
        };
    }
    let mut buf = vec![0u8; size as usize];
    match get(&mut buf) {
        Ok(n) => reply.data(&buf[..n]),
        Err(e) => reply.error(e),
    }
}

impl IoModes {
    /// Decide passthrough or not for a new open of `ino`, and account for
    /// it: the open, with the backing to reply with if any. EIO (and the
    /// handle released) for an open on another file than the inode's
    /// passthrough opens (the kernel takes none while it has a backing
    /// file, and the union never makes one: such an open gets a node of its
    /// own, see file.rs).
    fn choose(
        &self,
        backings: Option<&Backings>,
        ino: u64,
        opened: Opened,
        union: &Union,
    ) -> Result<(Opened, Option<Arc<Backing>>)> {
        let mut io = self.inodes.lock();
        let mode = io.entry(ino).or_default();
        let mut backing = None;
        if let Some((id, file)) = &mode.backing {
            if identity(&opened.file) != Some(*file) {
                log::error!("inode {ino}: an open on another file than its passthrough opens'");
                drop(io);
                union.release(opened.fh);
                return Err(Errno::EIO);
            }
            backing = Some(id.clone());
        } else if let Some(backings) =
            backings.filter(|_| opened.passthrough_ok && mode.cached == 0)
        {
            let file = identity(&opened.file);
            match (backings.open(&opened.file), file) {
                (Ok(id), Some(file)) => mode.backing = Some((Arc::new(id), file)),
                (Err(e), _) => {
                    if self.refusals.lock().insert(e as i32) {
                        log::warn!(
                            "no passthrough for some files: {} ({e}); the daemon serves their data",
                            refusal(e)
                        );
                    }
                    log::debug!("no passthrough for inode {ino}: {e}");
                }
                (Ok(_), None) => {}
            }
            backing = mode.backing.as_ref().map(|(id, _)| id.clone());
        }
        if backing.is_some() {
            mode.passthrough += 1;
            union.handles.passed_through(opened.fh);
        } else {
            mode.cached += 1;
        }
        self.handles
            .lock()
            .insert(opened.fh, (ino, backing.is_some()));
        Ok((opened, backing))
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

impl Dispatch for UnionFs {
    fn forget(&self, nodeid: u64, nlookup: u64) {
        self.union.forget(nodeid, nlookup);
    }

    fn interrupt(&self, unique: u64) {
        self.waiters.lock().interrupt(unique);
    }

    fn dispatch(&self, req: Request<'_>, reply: Reply) {
        let ino = req.nodeid;
        let u = &self.union;
        // Changes made directly in the branches first: no cache they made
        // stale answers this request.
        u.resolve.sync();
        match req.op {
            Op::Lookup { name } => self.lookup(ino, name, reply),
            Op::Getattr { fh } => reply_attr(self.ttl_of(ino), reply, u.getattr(ino, fh)),
            Op::Setattr(a) => {
                let set = SetAttr {
                    mode: a.mode,
                    uid: a.uid,
                    gid: a.gid,
                    size: a.size,
                    atime: a.atime.map(to_time),
                    mtime: a.mtime.map(to_time),
                    kill_suidgid: a.kill_suidgid,
                };
                let ttl = self.ttl_of(ino);
                self.patiently(
                    reply.unique(),
                    move |u| u.setattr(ino, set, a.fh),
                    move |res| reply_attr(ttl, reply, res),
                );
            }
            Op::Readlink => match u.readlink(ino) {
                Ok(t) => reply.data(std::os::unix::ffi::OsStrExt::as_bytes(t.as_os_str())),
                Err(e) => reply.error(e),
            },
            Op::Mknod {
                name,
                mode,
                rdev,
                umask,
            } => {
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
                let (who, name) = (caller(&req, umask), name.to_os_string());
                self.make(ino, reply, move |u| {
                    let (a, f) = u.create(ino, &name, who, new)?;
                    if let Some(f) = f {
                        u.release(f.fh);
                    }
                    Ok(a)
                });
            }
            Op::Mkdir { name, mode, umask } => {
                let (who, name) = (caller(&req, umask), name.to_os_string());
                self.make(ino, reply, move |u| {
                    Ok(u.create(ino, &name, who, New::Dir { mode })?.0)
                });
            }
            Op::Symlink { name, target } => {
                let (who, name, target) =
                    (caller(&req, 0), name.to_os_string(), target.to_os_string());
                self.make(ino, reply, move |u| {
                    Ok(u.create(ino, &name, who, New::Symlink { target: &target })?
                        .0)
                });
            }
            Op::Link { oldnodeid, newname } => {
                let newname = newname.to_os_string();
                self.make(ino, reply, move |u| u.link(oldnodeid, ino, &newname));
            }
            Op::Unlink { name } => {
                let name = name.to_os_string();
                self.change(reply, move |u| u.unlink(ino, &name));
            }
            Op::Rmdir { name } => {
                let name = name.to_os_string();
                self.change(reply, move |u| u.rmdir(ino, &name));
            }
            Op::Rename {
                name,
                newdir,
                newname,
                flags,
            } => {
                let (name, newname) = (name.to_os_string(), newname.to_os_string());
                self.change(reply, move |u| {
                    u.rename(ino, &name, newdir, &newname, flags)
                });
            }
            Op::Open {
                flags,
                kill_suidgid,
            } => self.open(ino, flags as i32, kill_suidgid, reply),
            Op::Create {
                name,
                mode,
                flags,
                umask,
            } => {
                let who = caller(&req, umask);
                self.create(who, ino, Some(name), mode, flags as i32, reply)
            }
            Op::Tmpfile { mode, flags, umask } => {
                let who = caller(&req, umask);
                self.create(who, ino, None, mode, flags as i32, reply)
            }
            Op::Read { fh, offset, size } => self.read(fh, offset, size, reply),
            Op::Write {
                fh,
                offset,
                data,
                kill_suidgid,
            } => match u.write(fh, offset, data, kill_suidgid) {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(e),
            },
            // The close of a passthrough file open for writing (no other
            // open asks for a flush): its writes through a shared mapping
            // changed the backing file's times without the kernel's
            // attributes of our inode knowing; the next stat asks again.
            Op::Flush => {
                let _ = self.notifier.inval_inode(ino, false);
                reply.ok();
            }
            Op::Release { fh } => {
                // The I/O mode first: an open racing this release either still sees
                // the handle (and, on another copy, gets a node of its own) or finds
                // neither it nor its passthrough backing.
                self.io.release(fh);
                u.release(fh);
                reply.ok();
            }
            Op::Fsync { fh, datasync } => reply_empty(reply, u.fsync(fh, datasync)),
            Op::Opendir => match u.opendir(ino) {
                // Where the daemon follows every change, the kernel keeps
                // listings too: each change it is told of drops them.
                Ok(fh) => reply.open(&abi::OpenOut {
                    fh,
                    open_flags: if self.exact_ttl != self.loose_ttl && u.exact(ino) {
                        abi::FOPEN_KEEP_CACHE | abi::FOPEN_CACHE_DIR
                    } else {
                        0
                    },
                    ..Default::default()
                }),
                Err(e) => reply.error(e),
            },
            Op::Readdir {
                fh,
                offset,
                size,
                plus,
            } => self.readdir(ino, fh, offset, size, plus, reply),
            Op::Releasedir { fh } => {
                u.releasedir(fh);
                reply.ok();
            }
            Op::Fsyncdir => reply_empty(reply, u.fsyncdir(ino)),
            Op::Statfs => self.statfs(reply),
            Op::Setxattr { name, value, flags } => {
                let (name, value) = (name.to_os_string(), value.to_vec());
                self.change(reply, move |u| u.setxattr(ino, &name, &value, flags));
            }
            Op::Getxattr { name, size } => {
                xattr_reply(reply, size, |buf| u.getxattr(ino, name, buf))
            }
            Op::Listxattr { size } => xattr_reply(reply, size, |buf| u.listxattr(ino, buf)),
            Op::Ioctl {
                cmd,
                input,
                out_size,
            } => {
                let input = input.to_vec();
                self.patiently(
                    reply.unique(),
                    move |u| u.file_attr(ino, cmd, &input, out_size),
                    move |res| match res {
                        Ok(out) => reply.ioctl(&out),
                        Err(e) => reply.error(e),
                    },
                );
            }
            Op::Removexattr { name } => {
                let name = name.to_os_string();
                self.change(reply, move |u| u.removexattr(ino, &name));
            }
            Op::Fallocate {
                fh,
                offset,
                length,
                mode,
            } => reply_empty(reply, u.fallocate(fh, offset, length, mode)),
            Op::Lseek { fh, offset, whence } => match u.lseek(fh, offset, whence) {
                Ok(off) => reply.offset(off as u64),
                Err(e) => reply.error(e),
            },
            // Answered by the session itself.
            Op::Init(_)
            | Op::Destroy
            | Op::Interrupt { .. }
            | Op::Forget { .. }
            | Op::BatchForget(_)
            | Op::Unsupported => reply.error(Errno::ENOSYS),
        }
    }
}
