//! fanotify with directory-entry events: the daemon's view of changes made
//! directly in its branches. A group reports, for each event, the directory
//! it happened in (as a file handle) and the entry's name, and the pid of the
//! process that made it, so the daemon can tell its own changes apart.

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use super::{Dir, Errno, Result};

/// `name_to_handle_at` flag: the handle fanotify reports (no NFS export
/// support needed).
const AT_HANDLE_FID: libc::c_int = 0x200;
const MAX_HANDLE_SZ: usize = 128;

/// What a mark on a directory reports: changes of its entries, and changes
/// of the attributes or data of the entries themselves (children, files or
/// directories) and of the directory itself.
pub const DIR_EVENTS: u64 = libc::FAN_CREATE
    | libc::FAN_DELETE
    | libc::FAN_MOVED_FROM
    | libc::FAN_MOVED_TO
    | libc::FAN_ATTRIB
    | libc::FAN_MODIFY
    | libc::FAN_DELETE_SELF
    | libc::FAN_MOVE_SELF
    | libc::FAN_ONDIR
    | libc::FAN_EVENT_ON_CHILD;

/// An object's identity as fanotify reports it: filesystem id, then the
/// kernel's `struct file_handle` (size, type, bytes), byte for byte as in an
/// event's info record, so an event is matched without copying.
pub type Handle = Box<[u8]>;

/// A fanotify group reporting directory fids and names, non-blocking.
#[derive(Debug)]
pub struct Fanotify(OwnedFd);

impl AsFd for Fanotify {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl Fanotify {
    pub fn new() -> Result<Fanotify> {
        let flags = libc::FAN_CLASS_NOTIF
            | libc::FAN_REPORT_DFID_NAME
            | libc::FAN_NONBLOCK
            | libc::FAN_CLOEXEC;
        // SAFETY: plain syscall with constant flags; the fd it returns is
        // owned by the Fanotify from here on.
        let fd = unsafe { libc::fanotify_init(flags, libc::O_RDONLY as libc::c_uint) };
        if fd < 0 {
            return Err(Errno::last());
        }
        // SAFETY: a fresh fd nobody else owns.
        Ok(Fanotify(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn mark_op(&self, flags: libc::c_uint, mask: u64, dir: &Dir) -> Result<()> {
        // SAFETY: the path is a NUL-terminated literal; "." relative to an
        // O_PATH directory fd names that directory (fanotify cannot take an
        // O_PATH fd with a null path).
        let r = unsafe {
            libc::fanotify_mark(
                self.0.as_raw_fd(),
                flags,
                mask,
                dir.as_fd().as_raw_fd(),
                c".".as_ptr(),
            )
        };
        if r < 0 {
            return Err(Errno::last());
        }
        Ok(())
    }

    /// Report [`DIR_EVENTS`] of directory `dir`.
    pub fn watch(&self, dir: &Dir) -> Result<()> {
        self.mark_op(libc::FAN_MARK_ADD | libc::FAN_MARK_ONLYDIR, DIR_EVENTS, dir)
    }

    /// Stop reporting events of `dir`.
    pub fn unwatch(&self, dir: &Dir) -> Result<()> {
        self.mark_op(libc::FAN_MARK_REMOVE, DIR_EVENTS, dir)
    }

    /// Read queued events into `buf`; 0 when none are queued.
    pub fn read(&self, buf: &mut [u8]) -> Result<usize> {
        match nix::unistd::read(&self.0, buf) {
            Ok(n) => Ok(n),
            Err(Errno::EAGAIN) => Ok(0),
            Err(e) => Err(e),
        }
    }
}

/// The handle fanotify reports for directory `dir`.
pub fn handle_of(dir: &Dir) -> Result<Handle> {
    let st = nix::sys::statfs::fstatfs(dir)?;
    // SAFETY: fsid_t is two ints; reading them as bytes is what the kernel's
    // __kernel_fsid_t in an event is.
    let fsid: [u8; 8] = unsafe { std::mem::transmute(st.filesystem_id()) };
    #[repr(C)]
    struct Fh {
        bytes: u32,
        kind: i32,
        data: [u8; MAX_HANDLE_SZ],
    }
    let mut fh = Fh {
        bytes: MAX_HANDLE_SZ as u32,
        kind: 0,
        data: [0; MAX_HANDLE_SZ],
    };
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `fh` is a file_handle with room for MAX_HANDLE_SZ bytes, as
    // its size field says; the path is an empty NUL-terminated literal.
    let r = unsafe {
        libc::name_to_handle_at(
            dir.as_fd().as_raw_fd(),
            c"".as_ptr(),
            (&mut fh as *mut Fh).cast(),
            &mut mount_id,
            libc::AT_EMPTY_PATH | AT_HANDLE_FID,
        )
    };
    if r < 0 {
        return Err(Errno::last());
    }
    let n = (fh.bytes as usize).min(MAX_HANDLE_SZ);
    let mut out = Vec::with_capacity(16 + n);
    out.extend_from_slice(&fsid);
    out.extend_from_slice(&fh.bytes.to_ne_bytes());
    out.extend_from_slice(&fh.kind.to_ne_bytes());
    out.extend_from_slice(&fh.data[..n]);
    Ok(out.into_boxed_slice())
}

/// One event: what happened, who did it, in which directory, to which entry
/// ("." or empty: the directory itself).
#[derive(Debug)]
pub struct Event<'a> {
    pub mask: u64,
    pub pid: i32,
    pub dir: &'a [u8],
    pub name: &'a OsStr,
}

impl Event<'_> {
    pub fn overflow(&self) -> bool {
        self.mask & libc::FAN_Q_OVERFLOW != 0
    }

    pub fn is_dir(&self) -> bool {
        self.mask & libc::FAN_ONDIR != 0
    }

    /// The event names the marked directory itself, not one of its entries.
    pub fn on_self(&self) -> bool {
        self.name.is_empty() || self.name == "."
    }
}

const META: usize = std::mem::size_of::<libc::fanotify_event_metadata>();

/// The events in `buf` (as filled by [`Fanotify::read`]); records that do
/// not parse end the walk.
pub fn events(buf: &[u8]) -> impl Iterator<Item = Event<'_>> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.len() < META {
            return None;
        }
        let len = u32::from_ne_bytes(rest[0..4].try_into().ok()?) as usize;
        let meta_len = u16::from_ne_bytes(rest[6..8].try_into().ok()?) as usize;
        if len < META || len > rest.len() || meta_len < META || meta_len > len {
            return None;
        }
        let (rec, next) = rest.split_at(len);
        rest = next;
        let mask = u64::from_ne_bytes(rec[8..16].try_into().ok()?);
        let fd = i32::from_ne_bytes(rec[16..20].try_into().ok()?);
        let pid = i32::from_ne_bytes(rec[20..24].try_into().ok()?);
        if fd >= 0 {
            // FID groups report no fds; were one given, it must not leak.
            // SAFETY: the kernel opened this fd for us and nothing else owns it.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let mut ev = Event {
            mask,
            pid,
            dir: &[],
            name: OsStr::new(""),
        };
        let mut info = &rec[meta_len..];
        while info.len() >= 4 {
            let kind = info[0];
            let ilen = u16::from_ne_bytes([info[2], info[3]]) as usize;
            if ilen < 4 || ilen > info.len() {
                break;
            }
            let body = &info[4..ilen];
            info = &info[ilen..];
            if matches!(
                kind,
                libc::FAN_EVENT_INFO_TYPE_DFID_NAME | libc::FAN_EVENT_INFO_TYPE_DFID
            ) && body.len() >= 16
            {
                let hbytes = u32::from_ne_bytes(body[8..12].try_into().ok()?) as usize;
                let end = 16 + hbytes;
                if end > body.len() {
                    break;
                }
                ev.dir = &body[..end];
                if kind == libc::FAN_EVENT_INFO_TYPE_DFID_NAME {
                    let name = &body[end..];
                    let nul = name.iter().position(|&b| b == 0).unwrap_or(name.len());
                    ev.name = OsStr::from_bytes(&name[..nul]);
                }
            }
        }
        Some(ev)
    })
}
