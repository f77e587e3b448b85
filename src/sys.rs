//! Syscalls, and the only place in this crate that holds `unsafe`.
//!
//! Every path inside a branch is resolved here, relative to a directory fd,
//! with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`:
//! a symlink or `..` planted in a branch cannot lead the daemon outside it.
//! Every other call takes a directory fd and a single name component and never
//! follows a symlink in its last component. That directory fd is a [`Dir`],
//! which only these beneath-opens (or [`Dir::open_root`] for a directory the
//! caller names, such as a branch root) make: no `*at` call can be handed
//! an arbitrary fd.
#![allow(unsafe_code)]

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

pub use nix::errno::Errno;
use nix::fcntl::{self, AtFlags, OFlag, OpenHow, ResolveFlag};
pub use nix::sys::stat::FileStat;
use nix::sys::stat::{self, Mode, SFlag};
use nix::sys::time::TimeSpec;
use nix::unistd::{self, Gid, Uid};

pub type Result<T> = std::result::Result<T, Errno>;

pub mod fanotify;
pub mod uring;

const RESOLVE: ResolveFlag = ResolveFlag::RESOLVE_BENEATH
    .union(ResolveFlag::RESOLVE_NO_SYMLINKS)
    .union(ResolveFlag::RESOLVE_NO_MAGICLINKS);

/// An `O_PATH` handle on a directory, the anchor of `*at` calls. Made only
/// by the beneath-opens below, or by [`Dir::open_root`] for a directory whose
/// path the caller gives (a branch root, a store).
#[derive(Debug)]
pub struct Dir(OwnedFd);

impl AsFd for Dir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl From<Dir> for OwnedFd {
    fn from(d: Dir) -> OwnedFd {
        d.0
    }
}

impl Dir {
    /// The directory at `path` (symlinks on the way followed: the caller
    /// chose the path).
    pub fn open_root(path: &Path) -> Result<Dir> {
        fcntl::open(
            path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map(Dir)
    }

    /// The directory at `path` (as [`Dir::open_root`]) on a private copy of
    /// the mount it is on, with the access time policy `atime` (MOUNT_ATTR_*
    /// bits) whatever the mount's own: the kernel applies a mount's policy
    /// to the files opened through it, passthrough reads included (those
    /// read through a file of the kernel's with the caller's open flags, so
    /// O_NOATIME cannot reach them). The copy is detached (no one else sees
    /// it) and holds only that mount, not the ones inside it. Needs
    /// CAP_SYS_ADMIN.
    fn open_root_with_atime(path: &Path, atime: u64) -> Result<Dir> {
        const OPEN_TREE_CLONE: libc::c_uint = 1;
        /// `struct mount_attr`, version 0.
        #[repr(C)]
        struct MountAttr {
            attr_set: u64,
            attr_clr: u64,
            propagation: u64,
            userns_fd: u64,
        }
        let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
        // SAFETY: open_tree reads a NUL-terminated path from a live CString
        // and returns a new fd (or -1), which is owned from here on.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_open_tree,
                libc::AT_FDCWD,
                c.as_ptr(),
                OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
            )
        };
        let fd = Errno::result(fd)?;
        // SAFETY: the kernel just returned this fd, and nothing else owns it.
        let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
        let attr = MountAttr {
            attr_set: atime,
            attr_clr: match atime & MOUNT_ATTR_ATIME_MASK {
                0 => 0,
                _ => MOUNT_ATTR_ATIME_MASK,
            },
            propagation: 0,
            userns_fd: 0,
        };
        // SAFETY: mount_setattr reads `size` bytes of a live MountAttr and an
        // empty NUL-terminated path; the fd stays open across the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                fd.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_EMPTY_PATH as libc::c_uint,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        };
        Errno::result(r)?;
        fstat(fd.as_fd())?;
        Ok(Dir(fd))
    }

    /// The directory at `path`, refusing a symlink in its last component.
    pub fn open_nofollow(path: &Path) -> Result<Dir> {
        fcntl::open(
            path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map(Dir)
    }

    /// A second handle on the same directory.
    pub fn try_clone(&self) -> Result<Dir> {
        unistd::dup(&self.0).map(Dir)
    }
}

/// Open `rel` (a relative path, "" for the directory itself) beneath `root`.
pub fn open_beneath(root: &Dir, rel: &Path, flags: OFlag, mode: u32) -> Result<OwnedFd> {
    openat2(root.as_fd(), rel, flags, mode, RESOLVE)
}

/// An `O_PATH` handle on the directory `name` of `dir` on the same
/// filesystem: a mount point there is EXDEV, a symlink ELOOP. For what must
/// never leave one filesystem (tree removal, the work directory).
pub fn open_dir_here(dir: &Dir, name: &OsStr) -> Result<Dir> {
    openat2(
        dir.as_fd(),
        Path::new(name),
        OFlag::O_PATH | OFlag::O_DIRECTORY,
        0,
        RESOLVE.union(ResolveFlag::RESOLVE_NO_XDEV),
    )
    .map(Dir)
}

/// Reads through this process leave access times alone: of files (the
/// mount's noatime) and of directories (noatime, nodiratime). Set once at
/// startup from the mount options; a property of the process, like its umask.
static NOATIME_FILES: AtomicBool = AtomicBool::new(false);
static NOATIME_DIRS: AtomicBool = AtomicBool::new(false);
/// The MOUNT_ATTR_* access time bits branch roots are opened with, on
/// private copies of their mounts (0: the branch's own mount as it is).
static MOUNT_ATIME: AtomicU64 = AtomicU64::new(0);
const MOUNT_ATTR_ATIME_MASK: u64 = 0x70;
pub const MOUNT_ATTR_NOATIME: u64 = 0x10;
pub const MOUNT_ATTR_STRICTATIME: u64 = 0x20;
pub const MOUNT_ATTR_NODIRATIME: u64 = 0x80;

/// The access time policy of this process's reads in branches: O_NOATIME
/// on files and on directories, and the MOUNT_ATTR_* bits of the private
/// mounts branch roots are opened on (0: none).
pub fn set_atime_policy(noatime_files: bool, noatime_dirs: bool, mount_attr: u64) {
    NOATIME_FILES.store(noatime_files, Ordering::Relaxed);
    NOATIME_DIRS.store(noatime_dirs, Ordering::Relaxed);
    MOUNT_ATIME.store(mount_attr, Ordering::Relaxed);
}

/// The root of a branch at `path`: on a private copy of its mount with the
/// policy's access time bits where the daemon may make one (else, said once
/// in the log, passthrough reads follow the branch's own mount).
pub fn open_branch_root(path: &Path) -> Result<Dir> {
    static TOLD: std::sync::Once = std::sync::Once::new();
    let atime = MOUNT_ATIME.load(Ordering::Relaxed);
    if atime != 0 {
        match Dir::open_root_with_atime(path, atime) {
            Ok(d) => return Ok(d),
            Err(e) => TOLD.call_once(|| {
                log::warn!(
                    "no private mount of {} for the atime options ({e}): reads the kernel does itself follow the branch mount's own policy",
                    path.display()
                )
            }),
        }
    }
    Dir::open_root(path)
}

/// `flags` with O_NOATIME where the policy asks for it: opens that read
/// (not O_PATH handles, which read nothing).
fn noatime(flags: OFlag) -> OFlag {
    if flags.contains(OFlag::O_PATH) || flags & OFlag::O_ACCMODE == OFlag::O_WRONLY {
        return flags;
    }
    let policy = match flags.contains(OFlag::O_DIRECTORY) {
        true => &NOATIME_DIRS,
        false => &NOATIME_FILES,
    };
    match policy.load(Ordering::Relaxed) {
        true => flags | OFlag::O_NOATIME,
        false => flags,
    }
}

/// Run `open` with `flags` and O_NOATIME where the policy asks for it;
/// without it when the kernel refuses it (EPERM: the file is another
/// user's and the daemon may not override that).
fn open_reading(flags: OFlag, open: impl Fn(OFlag) -> Result<OwnedFd>) -> Result<OwnedFd> {
    let with = noatime(flags);
    match open(with) {
        Err(Errno::EPERM) if with != flags => open(flags),
        other => other,
    }
}

fn openat2(
    root: BorrowedFd,
    rel: &Path,
    flags: OFlag,
    mode: u32,
    resolve: ResolveFlag,
) -> Result<OwnedFd> {
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    open_reading(flags, |flags| {
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
            .mode(Mode::from_bits_truncate(mode))
            .resolve(resolve);
        // openat2 answers EAGAIN when a concurrent rename raced the lookup.
        for _ in 0..16 {
            match fcntl::openat2(root, rel, how) {
                Err(Errno::EAGAIN) => continue,
                other => return other,
            }
        }
        Err(Errno::EAGAIN)
    })
}

/// An `O_PATH` handle on the directory `rel` beneath `root`.
pub fn open_dir(root: &Dir, rel: &Path) -> Result<Dir> {
    open_beneath(root, rel, OFlag::O_PATH | OFlag::O_DIRECTORY, 0).map(Dir)
}

/// Open the entry `name` of `dir` (never following a symlink).
pub fn open_at(dir: &Dir, name: &OsStr, flags: OFlag, mode: u32) -> Result<OwnedFd> {
    openat2(dir.as_fd(), Path::new(name), flags, mode, RESOLVE)
}

pub fn stat_at(dir: &Dir, name: &OsStr) -> Result<FileStat> {
    stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
}

/// Whether `name` exists in `dir` (as anything, symlinks included).
pub fn exists_at(dir: &Dir, name: &OsStr) -> Result<bool> {
    match stat_at(dir, name) {
        Ok(_) => Ok(true),
        Err(Errno::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Set the file status flags of an open fd (F_SETFL: O_APPEND, O_NONBLOCK, ...).
pub fn set_fl(fd: BorrowedFd, flags: OFlag) -> Result<()> {
    fcntl::fcntl(fd, fcntl::FcntlArg::F_SETFL(flags)).map(drop)
}

pub fn fstat(fd: BorrowedFd) -> Result<FileStat> {
    stat::fstat(fd)
}

pub fn mkdir_at(dir: &Dir, name: &OsStr, mode: u32) -> Result<()> {
    stat::mkdirat(dir, name, Mode::from_bits_truncate(mode))
}

pub fn unlink_at(dir: &Dir, name: &OsStr, is_dir: bool) -> Result<()> {
    let flag = if is_dir {
        unistd::UnlinkatFlags::RemoveDir
    } else {
        unistd::UnlinkatFlags::NoRemoveDir
    };
    unistd::unlinkat(dir, name, flag)
}

pub fn rename_at(from_dir: &Dir, from: &OsStr, to_dir: &Dir, to: &OsStr, flags: u32) -> Result<()> {
    fcntl::renameat2(
        from_dir,
        from,
        to_dir,
        to,
        fcntl::RenameFlags::from_bits_truncate(flags),
    )
}

pub fn symlink_at(target: &OsStr, dir: &Dir, name: &OsStr) -> Result<()> {
    unistd::symlinkat(target, dir, name)
}

pub fn link_at(from_dir: &Dir, from: &OsStr, to_dir: &Dir, to: &OsStr) -> Result<()> {
    unistd::linkat(from_dir, from, to_dir, to, AtFlags::empty())
}

/// The ioctls of `chattr`/`lsattr` (inode flags) and of project ids and
/// extent size hints (struct fsxattr), the ones FUSE passes on for them.
pub const FS_IOC_GETFLAGS: u32 = 0x8008_6601;
pub const FS_IOC_SETFLAGS: u32 = 0x4008_6602;
pub const FS_IOC_FSGETXATTR: u32 = 0x801c_581f;
pub const FS_IOC_FSSETXATTR: u32 = 0x401c_5820;
/// chattr's `i` and `a` among the inode flags.
pub const FS_IMMUTABLE_FL: u32 = 0x10;
pub const FS_APPEND_FL: u32 = 0x20;

/// One of the four ioctls above on the open file `fd`, its argument in
/// `buf` (an int's 4 bytes for the flags, 28 for a struct fsxattr): read
/// from it, or written into it. Any other command: ENOTTY.
pub fn file_attr_ioctl(fd: BorrowedFd, cmd: u32, buf: &mut [u8]) -> Result<()> {
    let size = match cmd {
        FS_IOC_GETFLAGS | FS_IOC_SETFLAGS => 4,
        FS_IOC_FSGETXATTR | FS_IOC_FSSETXATTR => 28,
        _ => return Err(Errno::ENOTTY),
    };
    if buf.len() < size {
        return Err(Errno::EINVAL);
    }
    // SAFETY: each of these commands reads or writes at most `size` bytes
    // (checked above) at the pointer, into a live buffer; fd stays open.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), cmd as _, buf.as_mut_ptr()) };
    Errno::result(r).map(drop)
}

/// A file with no name in directory `dir` (O_TMPFILE), open for reading and
/// writing: gone with its last fd unless linked (see `link_fd_at`).
pub fn tmpfile_in(dir: &Dir, mode: u32) -> Result<OwnedFd> {
    openat2(
        dir.as_fd(),
        Path::new("."),
        OFlag::O_TMPFILE | OFlag::O_RDWR,
        mode,
        RESOLVE,
    )
}

/// Give the file open as `fd` the name `dir/name`: linkat with AT_EMPTY_PATH
/// (which takes CAP_DAC_READ_SEARCH), else through its /proc/self/fd link
/// (which any owner of an O_TMPFILE file may). A file with no links that
/// is not an O_TMPFILE one (or one opened O_EXCL) gets ENOENT.
pub fn link_fd_at(fd: BorrowedFd, dir: &Dir, name: &OsStr) -> Result<()> {
    match unistd::linkat(fd, "", dir, name, AtFlags::AT_EMPTY_PATH) {
        Err(Errno::ENOENT) => unistd::linkat(
            fcntl::AT_FDCWD,
            proc_path(fd).as_c_str(),
            dir,
            name,
            AtFlags::AT_SYMLINK_FOLLOW,
        ),
        other => other,
    }
}

pub fn mknod_at(dir: &Dir, name: &OsStr, mode: u32, rdev: u64) -> Result<()> {
    let kind = SFlag::from_bits_truncate(mode & libc::S_IFMT);
    let perm = Mode::from_bits_truncate(mode & !libc::S_IFMT);
    stat::mknodat(dir, name, kind, perm, rdev)
}

fn chown_in(dir: BorrowedFd, name: &OsStr, uid: Option<u32>, gid: Option<u32>) -> Result<()> {
    unistd::fchownat(
        dir,
        name,
        uid.map(Uid::from_raw),
        gid.map(Gid::from_raw),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
}

pub fn chown_fd(fd: BorrowedFd, uid: Option<u32>, gid: Option<u32>) -> Result<()> {
    unistd::fchown(fd, uid.map(Uid::from_raw), gid.map(Gid::from_raw))
}

/// A timestamp argument for `utimensat`.
#[derive(Clone, Copy, Debug)]
pub enum Time {
    Set(i64, i64),
    Now,
    Omit,
}

impl Time {
    fn spec(self) -> TimeSpec {
        match self {
            Time::Set(s, ns) => TimeSpec::new(s, ns),
            Time::Now => TimeSpec::UTIME_NOW,
            Time::Omit => TimeSpec::UTIME_OMIT,
        }
    }
}

fn utimes_in(dir: BorrowedFd, name: &OsStr, atime: Time, mtime: Time) -> Result<()> {
    stat::utimensat(
        dir,
        name,
        &atime.spec(),
        &mtime.spec(),
        stat::UtimensatFlags::NoFollowSymlink,
    )
}

/// The `/proc/self/fd/N` name of an fd: the way to reach the inode behind an
/// `O_PATH` fd with calls that only take paths (chmod, xattrs).
fn proc_path(fd: BorrowedFd) -> CString {
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("no NUL in a number")
}

// The *xattrat calls (Linux 6.13) and fchmodat2 (Linux 6.6) work on an
// fd plus a name, or on an `O_PATH` fd itself with AT_EMPTY_PATH. Older
// kernels answer ENOSYS once; the calls then go through /proc/self/fd.
const SYS_SETXATTRAT: libc::c_long = 463;
const SYS_GETXATTRAT: libc::c_long = 464;
const SYS_LISTXATTRAT: libc::c_long = 465;
const SYS_REMOVEXATTRAT: libc::c_long = 466;

static NO_XATTRAT: AtomicBool = AtomicBool::new(false);
static NO_FCHMODAT2: AtomicBool = AtomicBool::new(false);

/// `struct xattr_args` of the *xattrat calls.
#[repr(C)]
struct XattrArgs {
    value: u64,
    size: u32,
    flags: u32,
}

/// Where an xattr or mode call lands: the entry `name` of directory `dir`
/// (never following a symlink), or with an empty name the object behind
/// `dir` itself (any fd, `O_PATH` included).
#[derive(Clone, Copy)]
pub struct Obj<'a> {
    dir: BorrowedFd<'a>,
    name: &'a OsStr,
}

impl<'a> Obj<'a> {
    /// The object behind an fd.
    pub fn fd(fd: BorrowedFd<'a>) -> Obj<'a> {
        Obj {
            dir: fd,
            name: OsStr::new(""),
        }
    }

    pub fn at(dir: &'a Dir, name: &'a OsStr) -> Obj<'a> {
        Obj {
            dir: dir.as_fd(),
            name,
        }
    }

    /// The entry's name in its directory ("" for the object behind an fd).
    pub fn name(&self) -> &'a OsStr {
        self.name
    }

    fn at_flags(&self) -> libc::c_uint {
        (libc::AT_SYMLINK_NOFOLLOW
            | if self.name.is_empty() {
                libc::AT_EMPTY_PATH
            } else {
                0
            }) as libc::c_uint
    }

    /// The fallback: a `/proc/self/fd/N` path of an `O_PATH` fd on the object.
    fn with_proc_path<T>(&self, f: impl FnOnce(&CString) -> Result<T>) -> Result<T> {
        if self.name.is_empty() {
            return f(&proc_path(self.dir));
        }
        let fd = openat2(self.dir, Path::new(self.name), OFlag::O_PATH, 0, RESOLVE)?;
        f(&proc_path(fd.as_fd()))
    }

    pub fn stat(&self) -> Result<FileStat> {
        if self.name.is_empty() {
            fstat(self.dir)
        } else {
            stat::fstatat(self.dir, self.name, AtFlags::AT_SYMLINK_NOFOLLOW)
        }
    }

    /// Open the object for I/O: by name, or (an `O_PATH` fd on it) through
    /// its `/proc/self/fd` link, which reaches exactly that inode (never a
    /// symlink, whose target the link would lead on to).
    pub fn open(&self, flags: OFlag) -> Result<OwnedFd> {
        if !self.name.is_empty() {
            return openat2(self.dir, Path::new(self.name), flags, 0, RESOLVE);
        }
        let st = fstat(self.dir)?;
        if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
            return Err(Errno::ELOOP);
        }
        let flags = match st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            true => flags | OFlag::O_DIRECTORY,
            false => flags,
        };
        open_reading(flags, |flags| {
            fcntl::open(
                proc_path(self.dir).as_c_str(),
                flags | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
        })
    }

    pub fn chown(&self, uid: Option<u32>, gid: Option<u32>) -> Result<()> {
        if self.name.is_empty() {
            chown_obj(self.dir, uid, gid)
        } else {
            chown_in(self.dir, self.name, uid, gid)
        }
    }

    pub fn readlink(&self) -> Result<OsString> {
        if self.name.is_empty() {
            readlink_obj(self.dir)
        } else {
            fcntl::readlinkat(self.dir, self.name)
        }
    }

    pub fn utimes(&self, atime: Time, mtime: Time) -> Result<()> {
        if self.name.is_empty() {
            utimes_obj(self.dir, atime, mtime)
        } else {
            utimes_in(self.dir, self.name, atime, mtime)
        }
    }
}

/// Call a *xattrat syscall for `obj`; None when the kernel does not have it,
/// or will not take the fd itself (an `O_PATH` fd with an empty name is
/// EBADF to these calls): the caller then goes through /proc.
fn xattrat(obj: &Obj, call: impl FnOnce() -> libc::c_long) -> Option<Result<usize>> {
    if NO_XATTRAT.load(Ordering::Relaxed) {
        return None;
    }
    match Errno::result(call()) {
        Err(Errno::ENOSYS) => {
            NO_XATTRAT.store(true, Ordering::Relaxed);
            None
        }
        Err(Errno::EBADF) if obj.name.is_empty() => None,
        r => Some(r.map(|n| n as usize)),
    }
}

/// chmod an object (not a symlink: Linux has no symlink modes).
pub fn chmod_obj(obj: Obj, mode: u32) -> Result<()> {
    if !NO_FCHMODAT2.load(Ordering::Relaxed) {
        let path = c_name(obj.name)?;
        // SAFETY: fchmodat2 takes a directory fd that stays open across the
        // call, a NUL-terminated path that outlives it, a mode and flags.
        let r = unsafe {
            libc::syscall(
                libc::SYS_fchmodat2,
                obj.dir.as_raw_fd(),
                path.as_ptr(),
                mode as libc::c_uint,
                obj.at_flags(),
            )
        };
        match Errno::result(r) {
            Err(Errno::ENOSYS) => NO_FCHMODAT2.store(true, Ordering::Relaxed),
            r => return r.map(drop),
        }
    }
    obj.with_proc_path(|p| {
        stat::fchmodat(
            fcntl::AT_FDCWD,
            p.as_c_str(),
            Mode::from_bits_truncate(mode),
            stat::FchmodatFlags::FollowSymlink,
        )
    })
}

/// chmod the inode behind `fd` (which may be an `O_PATH` fd; not a symlink).
pub fn chmod_fd(fd: BorrowedFd, mode: u32) -> Result<()> {
    chmod_obj(Obj::fd(fd), mode)
}

/// Clear setuid, and setgid where the group may execute, as the kernel does
/// when a caller without CAP_FSETID writes or truncates (setgid without
/// group execute marks mandatory locking and stays).
pub fn kill_suidgid(fd: BorrowedFd) -> Result<()> {
    let mode = fstat(fd)?.st_mode & 0o7777;
    let mut keep = mode & !libc::S_ISUID;
    if mode & libc::S_IXGRP != 0 {
        keep &= !libc::S_ISGID;
    }
    if keep != mode {
        chmod_fd(fd, keep)?;
    }
    Ok(())
}

fn c_name(name: &OsStr) -> Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| Errno::EINVAL)
}

/// getxattr of an object; an empty `buf` asks for the size.
pub fn get_xattr_obj(obj: Obj, name: &OsStr, buf: &mut [u8]) -> Result<usize> {
    let key = c_name(name)?;
    let path = c_name(obj.name)?;
    let mut args = XattrArgs {
        value: buf.as_mut_ptr() as u64,
        size: buf.len().min(u32::MAX as usize) as u32,
        flags: 0,
    };
    // SAFETY: dir is open across the call; path and key are NUL-terminated and
    // outlive it; args points at a live xattr_args whose value/size describe
    // `buf` (size 0 only asks for the length).
    let at = xattrat(&obj, || unsafe {
        libc::syscall(
            SYS_GETXATTRAT,
            obj.dir.as_raw_fd(),
            path.as_ptr(),
            obj.at_flags(),
            key.as_ptr(),
            &mut args as *mut XattrArgs,
            std::mem::size_of::<XattrArgs>(),
        )
    });
    if let Some(r) = at {
        return r;
    }
    obj.with_proc_path(|p| {
        // SAFETY: p and key are NUL-terminated and live across the call; buf
        // is valid for buf.len() bytes (zero length with a dangling pointer is allowed).
        let n =
            unsafe { libc::getxattr(p.as_ptr(), key.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        Errno::result(n).map(|n| n as usize)
    })
}

/// listxattr of an object; an empty `buf` asks for the size.
pub fn list_xattr_obj(obj: Obj, buf: &mut [u8]) -> Result<usize> {
    let path = c_name(obj.name)?;
    // SAFETY: dir is open; path is NUL-terminated; buf is valid for buf.len() bytes.
    let at = xattrat(&obj, || unsafe {
        libc::syscall(
            SYS_LISTXATTRAT,
            obj.dir.as_raw_fd(),
            path.as_ptr(),
            obj.at_flags(),
            buf.as_mut_ptr(),
            buf.len(),
        )
    });
    if let Some(r) = at {
        return r;
    }
    obj.with_proc_path(|p| {
        // SAFETY: p is NUL-terminated; buf is valid for buf.len() bytes.
        let n = unsafe { libc::listxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        Errno::result(n).map(|n| n as usize)
    })
}

pub fn set_xattr_obj(obj: Obj, name: &OsStr, value: &[u8], flags: i32) -> Result<()> {
    let key = c_name(name)?;
    let path = c_name(obj.name)?;
    let args = XattrArgs {
        value: value.as_ptr() as u64,
        size: u32::try_from(value.len()).map_err(|_| Errno::E2BIG)?,
        flags: flags as u32,
    };
    // SAFETY: dir is open; path and key are NUL-terminated; args describes
    // `value`, which outlives the call.
    let at = xattrat(&obj, || unsafe {
        libc::syscall(
            SYS_SETXATTRAT,
            obj.dir.as_raw_fd(),
            path.as_ptr(),
            obj.at_flags(),
            key.as_ptr(),
            &args as *const XattrArgs,
            std::mem::size_of::<XattrArgs>(),
        )
    });
    if let Some(r) = at {
        return r.map(drop);
    }
    obj.with_proc_path(|p| {
        // SAFETY: p and key are NUL-terminated; value is valid for value.len() bytes.
        let n = unsafe {
            libc::setxattr(
                p.as_ptr(),
                key.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                flags,
            )
        };
        Errno::result(n).map(drop)
    })
}

pub fn set_xattr(fd: BorrowedFd, name: &OsStr, value: &[u8], flags: i32) -> Result<()> {
    set_xattr_obj(Obj::fd(fd), name, value, flags)
}

pub fn remove_xattr_obj(obj: Obj, name: &OsStr) -> Result<()> {
    let key = c_name(name)?;
    let path = c_name(obj.name)?;
    // SAFETY: dir is open; path and key are NUL-terminated C strings that outlive the call.
    let at = xattrat(&obj, || unsafe {
        libc::syscall(
            SYS_REMOVEXATTRAT,
            obj.dir.as_raw_fd(),
            path.as_ptr(),
            obj.at_flags(),
            key.as_ptr(),
        )
    });
    if let Some(r) = at {
        return r.map(drop);
    }
    obj.with_proc_path(|p| {
        // SAFETY: p and key are NUL-terminated C strings that outlive the call.
        let n = unsafe { libc::removexattr(p.as_ptr(), key.as_ptr()) };
        Errno::result(n).map(drop)
    })
}

/// All xattrs of the inode behind `fd`, as (name, value) pairs.
pub fn all_xattrs(fd: BorrowedFd) -> Result<Vec<(OsString, Vec<u8>)>> {
    all_xattrs_obj(Obj::fd(fd))
}

/// All xattrs of an object, as (name, value) pairs.
pub fn all_xattrs_obj(obj: Obj) -> Result<Vec<(OsString, Vec<u8>)>> {
    let fd = obj;
    let size = match list_xattr_obj(fd, &mut []) {
        Ok(0) | Err(Errno::ENOTSUP) => return Ok(Vec::new()),
        Ok(n) => n,
        Err(e) => return Err(e),
    };
    let mut names = vec![0u8; size];
    let n = list_xattr_obj(fd, &mut names)?;
    names.truncate(n);
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = OsStr::from_bytes(name);
        match xattr_value(fd, name) {
            Ok(value) => out.push((name.to_os_string(), value)),
            Err(Errno::ENODATA) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// The whole value of one xattr of an object (one call where it fits in
/// 1 KiB; a value that grows meanwhile is read again).
pub fn xattr_value(obj: Obj, name: &OsStr) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; 1024];
    loop {
        match get_xattr_obj(obj, name, &mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(Errno::ERANGE) => {
                let n = get_xattr_obj(obj, name, &mut [])?;
                buf.resize(n.max(buf.len() * 2), 0);
            }
            Err(e) => return Err(e),
        }
    }
}

nix::ioctl_write_int!(ficlone_ioctl, 0x94, 9);

/// Share the extents of `src` with `dst` (reflink), where the filesystem can.
pub fn ficlone(dst: BorrowedFd, src: BorrowedFd) -> Result<()> {
    // SAFETY: FICLONE takes the source fd as its integer argument; both fds are
    // open for the duration of the call.
    unsafe { ficlone_ioctl(dst.as_raw_fd(), src.as_raw_fd() as libc::c_ulong) }.map(drop)
}

pub fn copy_range(src: BorrowedFd, off_in: i64, dst: BorrowedFd, len: usize) -> Result<usize> {
    let mut off_in = off_in;
    let mut off_out = off_in;
    fcntl::copy_file_range(src, Some(&mut off_in), dst, Some(&mut off_out), len)
}

pub fn seek(fd: BorrowedFd, offset: i64, whence: i32) -> Result<i64> {
    let whence = match whence {
        libc::SEEK_SET => unistd::Whence::SeekSet,
        libc::SEEK_CUR => unistd::Whence::SeekCur,
        libc::SEEK_END => unistd::Whence::SeekEnd,
        libc::SEEK_DATA => unistd::Whence::SeekData,
        libc::SEEK_HOLE => unistd::Whence::SeekHole,
        _ => return Err(Errno::EINVAL),
    };
    unistd::lseek(fd, offset, whence)
}

pub fn truncate_fd(fd: BorrowedFd, len: u64) -> Result<()> {
    unistd::ftruncate(fd, i64::try_from(len).map_err(|_| Errno::EFBIG)?)
}

pub fn fsync(fd: BorrowedFd, datasync: bool) -> Result<()> {
    if datasync {
        unistd::fdatasync(fd)
    } else {
        unistd::fsync(fd)
    }
}

pub fn fallocate(fd: BorrowedFd, mode: i32, offset: u64, len: u64) -> Result<()> {
    let off = i64::try_from(offset).map_err(|_| Errno::EFBIG)?;
    let len = i64::try_from(len).map_err(|_| Errno::EFBIG)?;
    fcntl::fallocate(
        fd,
        fcntl::FallocateFlags::from_bits_truncate(mode),
        off,
        len,
    )
}

pub fn futimens(fd: BorrowedFd, atime: Time, mtime: Time) -> Result<()> {
    stat::futimens(fd, &atime.spec(), &mtime.spec())
}

/// The type of the filesystem holding `fd` when changes to it can be made
/// where this machine gets no event of them: network and cluster
/// filesystems, and FUSE (whose daemon may change anything).
pub fn remote_fs(fd: BorrowedFd) -> Option<&'static str> {
    const REMOTE: &[(i64, &str)] = &[
        (0x6969, "nfs"),
        (0x517B, "smb"),
        (0xFF53_4D42, "cifs"),
        (0xFE53_4D42, "smb2"),
        (0x6573_5546, "fuse"),
        (0x0102_1997, "9p"),
        (0x00C3_6400, "ceph"),
        (0x5346_414F, "afs"),
        (0x7375_7245, "coda"),
        (0x7461_636F, "ocfs2"),
        (0x0116_1970, "gfs2"),
        (0x2003_0528, "orangefs"),
        (0x0BD0_0BD0, "lustre"),
    ];
    let t = nix::sys::statfs::fstatfs(fd).ok()?.filesystem_type().0 as i64;
    REMOTE.iter().find(|(m, _)| *m == t).map(|(_, n)| *n)
}

pub fn statvfs(fd: BorrowedFd) -> Result<nix::sys::statvfs::Statvfs> {
    nix::sys::statvfs::fstatvfs(fd)
}

/// One entry of a branch directory.
pub struct DirEntry {
    pub name: OsString,
    pub ino: u64,
    /// `S_IFMT` bits from d_type, 0 when the filesystem does not say.
    pub kind: u32,
}

/// The entries of the directory `dir` (any fd on it, `O_PATH` included), without `.` and `..`.
pub fn read_dir(dir: &Dir) -> Result<Vec<DirEntry>> {
    let fd = open_beneath(dir, Path::new("."), OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0)?;
    let mut d = nix::dir::Dir::from_fd(fd)?;
    let mut out = Vec::new();
    for entry in d.iter() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        use nix::dir::Type;
        let kind = match entry.file_type() {
            Some(Type::Fifo) => libc::S_IFIFO,
            Some(Type::CharacterDevice) => libc::S_IFCHR,
            Some(Type::Directory) => libc::S_IFDIR,
            Some(Type::BlockDevice) => libc::S_IFBLK,
            Some(Type::File) => libc::S_IFREG,
            Some(Type::Symlink) => libc::S_IFLNK,
            Some(Type::Socket) => libc::S_IFSOCK,
            None => 0,
        };
        out.push(DirEntry {
            name: OsString::from_vec(name.to_vec()),
            ino: entry.ino(),
            kind,
        });
    }
    Ok(out)
}

/// Turn an fd into a `File` for positioned reads and writes.
pub fn into_file(fd: OwnedFd) -> File {
    File::from(fd)
}

/// The umask the daemon runs with. Nothing relies on it: whatever it takes
/// from a mode that was asked for is put back through the new entry's fd.
pub const UMASK: u32 = 0o022;

pub fn set_umask(mask: u32) {
    stat::umask(Mode::from_bits_truncate(mask));
}

/// What `fork` returned to this process.
pub enum Forked {
    Parent,
    Child,
}

/// fork(2). Call it only while the process has a single thread.
pub fn fork() -> Result<Forked> {
    // SAFETY: callers fork before any thread is started (the daemon forks right
    // after parsing its arguments), so the child cannot inherit a held lock.
    match unsafe { unistd::fork() }? {
        unistd::ForkResult::Parent { .. } => Ok(Forked::Parent),
        unistd::ForkResult::Child => Ok(Forked::Child),
    }
}

pub fn setsid() -> Result<()> {
    unistd::setsid().map(drop)
}

/// Point stdin, stdout (and stderr unless `keep_stderr`) at /dev/null. A
/// pipe or socket as stderr goes too: whoever started us (a mount helper
/// run by containerd, a `$(...)`) reads it until every writer is gone.
pub fn detach_stdio(keep_stderr: bool) -> Result<()> {
    let null = fcntl::open("/dev/null", OFlag::O_RDWR, Mode::empty())?;
    unistd::dup2_stdin(&null)?;
    unistd::dup2_stdout(&null)?;
    let awaited = nix::sys::stat::fstat(std::io::stderr())
        .is_ok_and(|st| matches!(st.st_mode & libc::S_IFMT, libc::S_IFIFO | libc::S_IFSOCK));
    if !keep_stderr || awaited {
        unistd::dup2_stderr(&null)?;
    }
    Ok(())
}

/// The daemon's effective uid (it never changes ids: asked once).
pub fn geteuid() -> u32 {
    static ID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *ID.get_or_init(|| unistd::geteuid().as_raw())
}

/// The daemon's effective gid (asked once).
pub fn getegid() -> u32 {
    static ID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *ID.get_or_init(|| unistd::getegid().as_raw())
}

/// chown the inode behind `fd` (an `O_PATH` fd; symlinks included).
pub fn chown_obj(fd: BorrowedFd, uid: Option<u32>, gid: Option<u32>) -> Result<()> {
    unistd::fchownat(
        fd,
        "",
        uid.map(Uid::from_raw),
        gid.map(Gid::from_raw),
        AtFlags::AT_EMPTY_PATH | AtFlags::AT_SYMLINK_NOFOLLOW,
    )
}

/// Set the times of the inode behind `fd` (an `O_PATH` fd; a symlink's own
/// times when it is one: the magic link is not followed further).
pub fn utimes_obj(fd: BorrowedFd, atime: Time, mtime: Time) -> Result<()> {
    stat::utimensat(
        fcntl::AT_FDCWD,
        proc_path(fd).as_c_str(),
        &atime.spec(),
        &mtime.spec(),
        stat::UtimensatFlags::FollowSymlink,
    )
}

/// readlink of the symlink behind an `O_PATH` fd.
pub fn readlink_obj(fd: BorrowedFd) -> Result<OsString> {
    fcntl::readlinkat(fd, "")
}

/// Make room for `n` open files: raise the soft RLIMIT_NOFILE towards the
/// hard one, then grow the fd table to that size at once. Growing it later,
/// with several threads, costs an RCU grace period (~10 ms) at each
/// doubling. Call it while the process has one thread. Answers how many fds
/// the process may hold.
pub fn reserve_fds(n: u64) -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    let want = n.min(hard).max(soft);
    let limit = if want > soft && setrlimit(Resource::RLIMIT_NOFILE, want, hard).is_ok() {
        want
    } else {
        soft
    };
    if let Ok(fd) = fcntl::open(
        "/dev/null",
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        // A descriptor at the top of the range sizes the table; it is closed at once.
        if let Ok(top) = fcntl::fcntl(&fd, fcntl::FcntlArg::F_DUPFD_CLOEXEC(limit as i32 - 1)) {
            // SAFETY: `top` was just returned by fcntl and is owned by nobody else.
            drop(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(top) });
        }
    }
    limit
}

/// Unmount `path`, retrying for a few seconds while it is busy; when it stays
/// busy, detach it (MNT_DETACH). Without the privilege to unmount, through
/// the setuid `fusermount3 -u` (`-z` to detach). Answers whether the plain
/// unmount worked.
pub fn unmount_retrying(path: &Path) -> bool {
    use nix::mount::{umount2, MntFlags};
    let fusermount = |lazy: bool| {
        let mut c = std::process::Command::new("fusermount3");
        c.arg("-u").arg("-q");
        if lazy {
            c.arg("-z");
        }
        c.arg("--").arg(path);
        c.status().map(|s| s.success()).unwrap_or(false)
    };
    for _ in 0..50 {
        match umount2(path, MntFlags::empty()) {
            Ok(()) | Err(Errno::EINVAL | Errno::ENOENT) => return true,
            Err(Errno::EPERM) if fusermount(false) => return true,
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
    }
    if umount2(path, MntFlags::MNT_DETACH).is_err() {
        fusermount(true);
    }
    false
}
/// Who is at the other end of a Unix socket: for a client, the process that
/// connected; for a server, the one that called listen().
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (SO_PEERGROUPS), empty when the kernel cannot say.
    pub groups: Vec<u32>,
}

pub fn peer(sock: BorrowedFd) -> Result<Peer> {
    let c = nix::sys::socket::getsockopt(&sock, nix::sys::socket::sockopt::PeerCredentials)?;
    let mut groups = vec![0u32; 64];
    loop {
        let mut len = (groups.len() * std::mem::size_of::<u32>()) as libc::socklen_t;
        // SAFETY: SO_PEERGROUPS writes at most `len` bytes of gid_t into the
        // buffer, which is valid for that many bytes, and updates `len`.
        let r = unsafe {
            libc::getsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        match Errno::result(r) {
            Ok(_) => {
                groups.truncate(len as usize / std::mem::size_of::<u32>());
                break;
            }
            // The buffer was small: `len` says how much is needed.
            Err(Errno::ERANGE) if (len as usize) > groups.len() * 4 => {
                groups = vec![0u32; len as usize / 4 + 1];
            }
            Err(_) => {
                groups.clear();
                break;
            }
        }
    }
    Ok(Peer {
        pid: c.pid(),
        uid: c.uid(),
        gid: c.gid(),
        groups,
    })
}

/// Bind a listening Unix socket at `name` in the directory `dir` (reached
/// through the fd, so it lands in exactly the directory that was checked),
/// with `mode` from its birth: bind(2) takes the mode from the umask, which
/// is set for the call and put back. Nothing in this process creates files
/// that rely on the umask, so a thread that creates one meanwhile is unaffected.
pub fn bind_unix(
    dir: &Dir,
    name: &OsStr,
    mode: u32,
) -> std::io::Result<std::os::unix::net::UnixListener> {
    let mut path = OsString::from(format!("/proc/self/fd/{}/", dir.as_fd().as_raw_fd()));
    path.push(name);
    let old = stat::umask(Mode::from_bits_truncate(!mode & 0o777));
    let bound = std::os::unix::net::UnixListener::bind(Path::new(&path));
    stat::umask(old);
    bound
}

// The FUSE device: cloning a channel, passthrough backing files.
nix::ioctl_read!(fuse_dev_clone, 229, 0, u32);
nix::ioctl_write_ptr!(fuse_backing_open, 229, 1, BackingMap);
nix::ioctl_write_ptr!(fuse_backing_close, 229, 2, u32);

/// `struct fuse_backing_map`.
#[repr(C)]
pub struct BackingMap {
    fd: i32,
    flags: u32,
    padding: u64,
}

/// A new fd on the FUSE connection of `dev`, with its own request queue:
/// requests read from it are answered on it.
pub fn fuse_clone(dev: BorrowedFd) -> Result<OwnedFd> {
    let fd = fcntl::open("/dev/fuse", OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())?;
    let mut master = dev.as_raw_fd() as u32;
    // SAFETY: FUSE_DEV_IOC_CLONE reads one u32 (the fd to clone) from a
    // pointer to a live local; both fds stay open across the call.
    unsafe { fuse_dev_clone(fd.as_raw_fd(), &mut master) }?;
    Ok(fd)
}

/// Register `file` as a passthrough backing file of the connection: the id
/// to put in an open reply.
pub fn fuse_backing_open_fd(dev: BorrowedFd, file: BorrowedFd) -> Result<u32> {
    let map = BackingMap {
        fd: file.as_raw_fd(),
        flags: 0,
        padding: 0,
    };
    // SAFETY: the kernel reads a fuse_backing_map from a pointer to a live
    // local of that layout; the fds stay open across the call.
    let id = unsafe { fuse_backing_open(dev.as_raw_fd(), &map) }?;
    Ok(id as u32)
}

pub fn fuse_backing_close_id(dev: BorrowedFd, id: u32) -> Result<()> {
    // SAFETY: the kernel reads one u32 from a pointer to a live local.
    unsafe { fuse_backing_close(dev.as_raw_fd(), &id) }.map(drop)
}

/// The one fd a peer sends over `sock` (SCM_RIGHTS), if it sends one.
pub fn receive_fd(sock: BorrowedFd) -> Option<OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .ok()?;
    let mut fds = Vec::new();
    for c in msg.cmsgs().ok()? {
        if let ControlMessageOwned::ScmRights(got) = c {
            fds.extend(got);
        }
    }
    // SAFETY: each fd was just installed in this process by the kernel for
    // this message and is owned by nothing else; every one is wrapped (and
    // so closed), the first returned.
    let owned: Vec<OwnedFd> = fds
        .into_iter()
        .map(|fd| unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
        .collect();
    owned.into_iter().next()
}
