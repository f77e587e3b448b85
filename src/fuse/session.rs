//! A FUSE connection: the INIT handshake, who may use the mount, and what
//! the daemon may send on its own (notifications, passthrough backing ids).

use std::ffi::OsStr;
use std::io::IoSlice;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use zerocopy::IntoBytes;

use super::abi::{self, init, op, OutHeader};
use super::reply::{Channel, Reply};
use super::request::{self, Op, Request};
use crate::sys::{self, Errno};

/// What the filesystem asks of the kernel at INIT.
#[derive(Debug, Clone, Copy)]
pub struct Want {
    /// INIT flags to turn on where the kernel offers them.
    pub flags: u64,
    pub max_write: u32,
    pub max_readahead: u32,
    pub max_background: u16,
    /// Filesystems stacked below (for passthrough).
    pub max_stack_depth: u32,
}

/// What INIT settled.
#[derive(Debug, Clone, Copy)]
pub struct Conn {
    pub minor: u32,
    /// Everything the kernel offered.
    pub offered: u64,
    /// What is on: wanted and offered.
    pub flags: u64,
    pub max_write: u32,
    pub max_pages: u16,
}

impl Conn {
    pub fn has(&self, flag: u64) -> bool {
        self.flags & flag != 0
    }
}

/// Who may use the mount besides what the kernel already checks.
#[derive(Debug, Clone, Copy)]
pub enum Access {
    /// The mounting user, and root (mounted with allow_other; the rest are
    /// refused here).
    OwnerAndRoot(u32),
    /// Whoever the kernel lets in.
    Any,
}

impl Access {
    /// Requests from others than those allowed are answered EACCES; the
    /// ones that belong to an open file or to the kernel's housekeeping are
    /// served whoever sends them (a file opened by root stays usable after a
    /// setuid, the kernel forgets nodes in any process's context).
    fn allows(&self, r: &Request) -> bool {
        match *self {
            Access::Any => true,
            Access::OwnerAndRoot(owner) => {
                r.uid == owner
                    || r.uid == 0
                    || matches!(
                        r.opcode,
                        op::INIT
                            | op::DESTROY
                            | op::READ
                            | op::READDIR
                            | op::READDIRPLUS
                            | op::FORGET
                            | op::BATCH_FORGET
                            | op::WRITE
                            | op::FSYNC
                            | op::FSYNCDIR
                            | op::RELEASE
                            | op::RELEASEDIR
                            | op::INTERRUPT
                    )
            }
        }
    }
}

/// The filesystem behind the protocol: one operation in, one reply out.
pub trait Dispatch: Send + Sync + 'static {
    fn dispatch(&self, req: Request<'_>, reply: Reply);
    /// The kernel dropped `nlookup` references to a node (no reply).
    fn forget(&self, nodeid: u64, nlookup: u64);
    /// The process behind request `unique` was signalled.
    fn interrupt(&self, _unique: u64) {}
}

/// The /dev/fuse fd of a connection: replies and notifications are written
/// to it whole, one writev each.
pub struct Dev {
    fd: OwnedFd,
}

impl Dev {
    pub fn new(fd: OwnedFd) -> Dev {
        Dev { fd }
    }

    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Write one message: an out header (`error`, or a notify code with
    /// unique 0) and its body.
    pub fn write(&self, unique: u64, error: i32, body: &[&[u8]]) -> sys::Result<()> {
        let len = std::mem::size_of::<OutHeader>() + body.iter().map(|b| b.len()).sum::<usize>();
        let h = OutHeader {
            len: len as u32,
            error,
            unique,
        };
        // At most a header and three parts (a notification): no allocation.
        let mut iov = [IoSlice::new(&[]); 4];
        iov[0] = IoSlice::new(h.as_bytes());
        let mut n = 1;
        for b in body.iter().filter(|b| !b.is_empty()) {
            if n == iov.len() {
                return Err(Errno::EINVAL);
            }
            iov[n] = IoSlice::new(b);
            n += 1;
        }
        nix::sys::uio::writev(&self.fd, &iov[..n]).map(drop)
    }

    /// Read one message into `buf`: its length; None once the connection
    /// has ended (unmounted or aborted).
    pub fn read(&self, buf: &mut [u8]) -> Option<usize> {
        loop {
            match nix::unistd::read(&self.fd, buf) {
                Ok(n) => return Some(n),
                // A request the kernel took back (interrupted), a signal: read again.
                Err(Errno::ENOENT | Errno::EINTR | Errno::EAGAIN) => continue,
                Err(Errno::ENODEV) => return None,
                Err(e) => {
                    log::error!("reading /dev/fuse: {e}");
                    return None;
                }
            }
        }
    }
}

impl Channel for Dev {
    fn send(&self, _slot: u32, unique: u64, error: i32, body: &[&[u8]]) {
        match self.write(unique, error, body) {
            // The request was interrupted and taken back: nobody waits.
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => log::debug!("reply to {unique}: {e}"),
        }
    }
}

/// Sends what the daemon tells the kernel unasked: invalidations.
#[derive(Clone)]
pub struct Notifier {
    dev: Arc<Dev>,
    expire_only: bool,
}

impl Notifier {
    /// Drop the kernel's entry for `name` in `parent` (with `expire`, only
    /// mark it stale where the kernel can: nothing mounted on it is
    /// detached).
    pub fn inval_entry(&self, parent: u64, name: &OsStr, expire: bool) -> sys::Result<()> {
        let out = abi::NotifyInvalEntry {
            parent,
            namelen: name.len() as u32,
            flags: if expire && self.expire_only {
                abi::EXPIRE_ONLY
            } else {
                0
            },
        };
        let body = [out.as_bytes(), name.as_bytes(), &[0]];
        self.dev.write(0, abi::notify::INVAL_ENTRY, &body)
    }

    /// Drop the kernel's attributes of `ino`, and with `data` its cached pages.
    pub fn inval_inode(&self, ino: u64, data: bool) -> sys::Result<()> {
        let out = abi::NotifyInvalInode {
            ino,
            // A negative offset: the attributes only.
            off: if data { 0 } else { -1 },
            len: 0,
        };
        self.dev
            .write(0, abi::notify::INVAL_INODE, &[out.as_bytes()])
    }
}

/// A file registered for passthrough; the kernel's id is closed on drop.
pub struct Backing {
    dev: Arc<Dev>,
    pub id: u32,
}

impl Drop for Backing {
    fn drop(&mut self) {
        if let Err(e) = sys::fuse_backing_close_id(self.dev.fd(), self.id) {
            log::debug!("closing backing id {}: {e}", self.id);
        }
    }
}

/// Opens backing files on a connection.
#[derive(Clone)]
pub struct Backings {
    dev: Arc<Dev>,
}

impl Backings {
    pub fn open(&self, file: &std::fs::File) -> sys::Result<Backing> {
        let id = sys::fuse_backing_open_fd(self.dev.fd(), file.as_fd())?;
        Ok(Backing {
            dev: self.dev.clone(),
            id,
        })
    }
}

/// A mounted connection after INIT.
pub struct Session {
    pub dev: Arc<Dev>,
    pub conn: Conn,
    pub access: Access,
}

impl Session {
    /// Answer the kernel's INIT on `dev` with what `want` asks for.
    pub fn init(dev: OwnedFd, want: &Want, access: Access) -> std::io::Result<Session> {
        let dev = Arc::new(Dev::new(dev));
        let mut buf = vec![0u8; abi::MIN_READ_BUFFER.max(4096 + 64)];
        loop {
            let Some(n) = dev.read(&mut buf) else {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "the FUSE connection ended before INIT",
                ));
            };
            let Some((h, oph, rest)) = request::split(&buf[..n]) else {
                continue;
            };
            let init = match request::parse(&h, oph, rest) {
                Ok(Request {
                    op: Op::Init(init), ..
                }) => init,
                // Nothing is served before INIT.
                _ => {
                    let _ = dev.write(h.unique, -(Errno::EIO as i32), &[]);
                    continue;
                }
            };
            if init.major > abi::KERNEL_VERSION {
                // The kernel sends INIT again with our major.
                let out = abi::InitOut {
                    major: abi::KERNEL_VERSION,
                    minor: abi::KERNEL_MINOR_VERSION,
                    ..Default::default()
                };
                let _ = dev.write(h.unique, 0, &[out.as_bytes()]);
                continue;
            }
            if init.major < abi::KERNEL_VERSION || init.minor < abi::MIN_MINOR {
                let _ = dev.write(h.unique, -(Errno::EPROTO as i32), &[]);
                return Err(std::io::Error::other(format!(
                    "kernel FUSE protocol {}.{} is too old (7.{} needed)",
                    init.major,
                    init.minor,
                    abi::MIN_MINOR
                )));
            }
            let (out, conn) = negotiate(&init, want);
            let size = match init.minor {
                0..=4 => abi::COMPAT_INIT_OUT_SIZE,
                5..=22 => abi::COMPAT_22_INIT_OUT_SIZE,
                _ => std::mem::size_of::<abi::InitOut>(),
            };
            dev.write(h.unique, 0, &[&out.as_bytes()[..size]])?;
            return Ok(Session { dev, conn, access });
        }
    }

    pub fn notifier(&self) -> Notifier {
        Notifier {
            dev: self.dev.clone(),
            expire_only: self.conn.offered & init::HAS_EXPIRE_ONLY != 0,
        }
    }

    pub fn backings(&self) -> Backings {
        Backings {
            dev: self.dev.clone(),
        }
    }

    /// The buffer one request needs: the largest write and its headers.
    pub fn buffer_size(&self) -> usize {
        (self.conn.max_write as usize + 4096).max(abi::MIN_READ_BUFFER)
    }

    /// Handle one decoded message from `chan`. False once the kernel said
    /// the connection is over (DESTROY).
    pub fn handle(
        &self,
        fs: &dyn Dispatch,
        chan: &Arc<dyn Channel>,
        slot: u32,
        h: &abi::InHeader,
        oph: &[u8],
        rest: &[u8],
    ) -> bool {
        let req = match request::parse(h, oph, rest) {
            Ok(r) => r,
            Err(e) => {
                log::warn!("malformed request (opcode {})", e.0);
                Reply::new(chan.clone(), slot, h.unique).error(Errno::EIO);
                return true;
            }
        };
        log::debug!(
            "request {} from pid {}: {:?} on node {}",
            req.unique,
            req.pid,
            req.op,
            req.nodeid
        );
        match req.op {
            Op::Forget { nlookup } => fs.forget(req.nodeid, nlookup),
            Op::BatchForget(ref all) => {
                for f in all {
                    fs.forget(f.nodeid, f.nlookup)
                }
            }
            Op::Interrupt { unique } => fs.interrupt(unique),
            Op::Destroy => {
                Reply::new(chan.clone(), slot, req.unique).ok();
                return false;
            }
            Op::Init(_) => Reply::new(chan.clone(), slot, req.unique).error(Errno::EIO),
            _ if !self.access.allows(&req) => {
                Reply::new(chan.clone(), slot, req.unique).error(Errno::EACCES)
            }
            Op::Unsupported => Reply::new(chan.clone(), slot, req.unique).error(Errno::ENOSYS),
            _ => {
                let reply = Reply::new(chan.clone(), slot, req.unique);
                fs.dispatch(req, reply)
            }
        }
        true
    }

    /// Serve requests read from `dev` (the connection's fd or a clone of
    /// it) until the connection ends.
    pub fn serve_dev(&self, fs: &dyn Dispatch, dev: Arc<Dev>) {
        let mut buf = vec![0u8; self.buffer_size()];
        let chan: Arc<dyn Channel> = dev.clone();
        while let Some(n) = dev.read(&mut buf) {
            let Some((h, oph, rest)) = request::split(&buf[..n]) else {
                log::warn!("short message from /dev/fuse ({n} bytes)");
                continue;
            };
            if !self.handle(fs, &chan, 0, &h, oph, rest) {
                return;
            }
        }
    }

    /// A new fd on this connection with a request queue of its own.
    pub fn clone_dev(&self) -> std::io::Result<Arc<Dev>> {
        Ok(Arc::new(Dev::new(sys::fuse_clone(self.dev.fd())?)))
    }
}

fn negotiate(init: &abi::InitIn, want: &Want) -> (abi::InitOut, Conn) {
    let mut offered = init.flags as u64;
    if offered & init::INIT_EXT != 0 {
        offered |= (init.flags2 as u64) << 32;
    }
    let flags = (want.flags | init::INIT_EXT) & offered;
    let max_readahead = want.max_readahead.min(init.max_readahead);
    let page = 4096;
    let max_pages = (want.max_write.max(max_readahead).div_ceil(page)).min(u16::MAX as u32) as u16;
    let out = abi::InitOut {
        major: abi::KERNEL_VERSION,
        minor: abi::KERNEL_MINOR_VERSION,
        max_readahead,
        flags: flags as u32,
        max_background: want.max_background,
        congestion_threshold: (want.max_background as u32 * 3 / 4) as u16,
        max_write: want.max_write,
        time_gran: 1,
        max_pages,
        map_alignment: 0,
        flags2: (flags >> 32) as u32,
        max_stack_depth: if flags & init::PASSTHROUGH != 0 {
            want.max_stack_depth
        } else {
            0
        },
        unused: [0; 6],
    };
    let conn = Conn {
        minor: init.minor.min(abi::KERNEL_MINOR_VERSION),
        offered,
        flags,
        max_write: want.max_write,
        max_pages,
    };
    (out, conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_turns_on_only_what_is_both_wanted_and_offered() {
        let kernel = abi::InitIn {
            major: 7,
            minor: 44,
            max_readahead: 128 * 1024,
            flags: (init::ASYNC_READ | init::INIT_EXT | init::MAX_PAGES) as u32,
            flags2: (init::PASSTHROUGH >> 32) as u32,
            unused: [0; 11],
        };
        let want = Want {
            flags: init::ASYNC_READ | init::PASSTHROUGH | init::OVER_IO_URING | init::MAX_PAGES,
            max_write: 1 << 20,
            max_readahead: 1 << 20,
            max_background: 64,
            max_stack_depth: 1,
        };
        let (out, conn) = negotiate(&kernel, &want);
        assert!(conn.has(init::PASSTHROUGH) && conn.has(init::ASYNC_READ));
        assert!(!conn.has(init::OVER_IO_URING), "not offered: not on");
        assert_eq!(
            (out.max_readahead, out.max_pages, out.max_stack_depth),
            (128 * 1024, 256, 1)
        );
        assert_eq!(out.flags2 as u64, init::PASSTHROUGH >> 32);
        assert_eq!((out.minor, conn.minor), (abi::KERNEL_MINOR_VERSION, 42));
    }
}
