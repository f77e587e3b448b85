//! Syscalls, and the only place in this crate that holds `unsafe`.
//!
//! Every path inside a branch is resolved here, relative to a directory fd,
//! with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`:
//! a symlink or `..` planted in a branch cannot lead the daemon outside it.
//! Every other call takes a directory fd and a single name component and never
//! follows a symlink in its last component.
#![allow(unsafe_code)]

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

pub use nix::errno::Errno;
use nix::fcntl::{self, AtFlags, OFlag, OpenHow, ResolveFlag};
pub use nix::sys::stat::FileStat;
use nix::sys::stat::{self, Mode, SFlag};
use nix::sys::time::TimeSpec;
use nix::unistd::{self, Gid, Uid};

pub type Result<T> = std::result::Result<T, Errno>;

const RESOLVE: ResolveFlag = ResolveFlag::RESOLVE_BENEATH
    .union(ResolveFlag::RESOLVE_NO_SYMLINKS)
    .union(ResolveFlag::RESOLVE_NO_MAGICLINKS);

/// Open `rel` (a relative path, "" for the directory itself) beneath `root`.
pub fn open_beneath(root: BorrowedFd, rel: &Path, flags: OFlag, mode: u32) -> Result<OwnedFd> {
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .mode(Mode::from_bits_truncate(mode))
        .resolve(RESOLVE);
    // openat2 answers EAGAIN when a concurrent rename raced the lookup.
    for _ in 0..16 {
        match fcntl::openat2(root, rel, how) {
            Err(Errno::EAGAIN) => continue,
            other => return other,
        }
    }
    Err(Errno::EAGAIN)
}

/// An `O_PATH` handle on the directory `rel` beneath `root`.
pub fn open_dir(root: BorrowedFd, rel: &Path) -> Result<OwnedFd> {
    open_beneath(root, rel, OFlag::O_PATH | OFlag::O_DIRECTORY, 0)
}

/// Open the entry `name` of `dir` (never following a symlink).
pub fn open_at(dir: BorrowedFd, name: &OsStr, flags: OFlag, mode: u32) -> Result<OwnedFd> {
    open_beneath(dir, Path::new(name), flags, mode)
}

pub fn stat_at(dir: BorrowedFd, name: &OsStr) -> Result<FileStat> {
    stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
}

/// Whether `name` exists in `dir` (as anything, symlinks included).
pub fn exists_at(dir: BorrowedFd, name: &OsStr) -> Result<bool> {
    match stat_at(dir, name) {
        Ok(_) => Ok(true),
        Err(Errno::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

pub fn fstat(fd: BorrowedFd) -> Result<FileStat> {
    stat::fstat(fd)
}

pub fn mkdir_at(dir: BorrowedFd, name: &OsStr, mode: u32) -> Result<()> {
    stat::mkdirat(dir, name, Mode::from_bits_truncate(mode))
}

pub fn unlink_at(dir: BorrowedFd, name: &OsStr, is_dir: bool) -> Result<()> {
    let flag = if is_dir {
        unistd::UnlinkatFlags::RemoveDir
    } else {
        unistd::UnlinkatFlags::NoRemoveDir
    };
    unistd::unlinkat(dir, name, flag)
}

pub fn rename_at(
    from_dir: BorrowedFd,
    from: &OsStr,
    to_dir: BorrowedFd,
    to: &OsStr,
    flags: u32,
) -> Result<()> {
    fcntl::renameat2(
        from_dir,
        from,
        to_dir,
        to,
        fcntl::RenameFlags::from_bits_truncate(flags),
    )
}

pub fn symlink_at(target: &OsStr, dir: BorrowedFd, name: &OsStr) -> Result<()> {
    unistd::symlinkat(target, dir, name)
}

pub fn link_at(from_dir: BorrowedFd, from: &OsStr, to_dir: BorrowedFd, to: &OsStr) -> Result<()> {
    unistd::linkat(from_dir, from, to_dir, to, AtFlags::empty())
}

pub fn mknod_at(dir: BorrowedFd, name: &OsStr, mode: u32, rdev: u64) -> Result<()> {
    let kind = SFlag::from_bits_truncate(mode & libc::S_IFMT);
    let perm = Mode::from_bits_truncate(mode & !libc::S_IFMT);
    stat::mknodat(dir, name, kind, perm, rdev)
}

pub fn chown_at(dir: BorrowedFd, name: &OsStr, uid: Option<u32>, gid: Option<u32>) -> Result<()> {
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

pub fn utimes_at(dir: BorrowedFd, name: &OsStr, atime: Time, mtime: Time) -> Result<()> {
    stat::utimensat(
        dir,
        name,
        &atime.spec(),
        &mtime.spec(),
        stat::UtimensatFlags::NoFollowSymlink,
    )
}

pub fn readlink_at(dir: BorrowedFd, name: &OsStr) -> Result<OsString> {
    fcntl::readlinkat(dir, name)
}

/// The `/proc/self/fd/N` name of an fd: the way to reach the inode behind an
/// `O_PATH` fd with calls that only take paths (chmod, xattrs).
fn proc_path(fd: BorrowedFd) -> CString {
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("no NUL in a number")
}

/// chmod the inode behind `fd` (which may be an `O_PATH` fd; not a symlink).
pub fn chmod_fd(fd: BorrowedFd, mode: u32) -> Result<()> {
    stat::fchmodat(
        fcntl::AT_FDCWD,
        proc_path(fd).as_c_str(),
        Mode::from_bits_truncate(mode),
        stat::FchmodatFlags::FollowSymlink,
    )
}

fn c_name(name: &OsStr) -> Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| Errno::EINVAL)
}

/// getxattr on the inode behind `fd`; an empty `buf` asks for the size.
pub fn get_xattr(fd: BorrowedFd, name: &OsStr, buf: &mut [u8]) -> Result<usize> {
    let path = proc_path(fd);
    let name = c_name(name)?;
    // SAFETY: path and name are NUL-terminated and live across the call; buf is
    // valid for buf.len() bytes (a zero length with a dangling pointer is allowed).
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    Errno::result(n).map(|n| n as usize)
}

/// listxattr on the inode behind `fd`; an empty `buf` asks for the size.
pub fn list_xattr(fd: BorrowedFd, buf: &mut [u8]) -> Result<usize> {
    let path = proc_path(fd);
    // SAFETY: path is NUL-terminated; buf is valid for buf.len() bytes.
    let n = unsafe { libc::listxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    Errno::result(n).map(|n| n as usize)
}

pub fn set_xattr(fd: BorrowedFd, name: &OsStr, value: &[u8], flags: i32) -> Result<()> {
    let path = proc_path(fd);
    let name = c_name(name)?;
    // SAFETY: path and name are NUL-terminated; value is valid for value.len() bytes.
    let n = unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    };
    Errno::result(n).map(drop)
}

pub fn remove_xattr(fd: BorrowedFd, name: &OsStr) -> Result<()> {
    let path = proc_path(fd);
    let name = c_name(name)?;
    // SAFETY: path and name are NUL-terminated C strings that outlive the call.
    let n = unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) };
    Errno::result(n).map(drop)
}

/// All xattrs of the inode behind `fd`, as (name, value) pairs.
pub fn all_xattrs(fd: BorrowedFd) -> Result<Vec<(OsString, Vec<u8>)>> {
    let size = match list_xattr(fd, &mut []) {
        Ok(n) => n,
        Err(Errno::ENOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut names = vec![0u8; size];
    let n = list_xattr(fd, &mut names)?;
    names.truncate(n);
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = OsStr::from_bytes(name);
        let len = match get_xattr(fd, name, &mut []) {
            Ok(len) => len,
            Err(Errno::ENODATA) => continue,
            Err(e) => return Err(e),
        };
        let mut value = vec![0u8; len];
        let len = get_xattr(fd, name, &mut value)?;
        value.truncate(len);
        out.push((name.to_os_string(), value));
    }
    Ok(out)
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
pub fn read_dir(dir: BorrowedFd) -> Result<Vec<DirEntry>> {
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

/// Point stdin, stdout (and stderr unless `keep_stderr`) at /dev/null.
pub fn detach_stdio(keep_stderr: bool) -> Result<()> {
    let null = fcntl::open("/dev/null", OFlag::O_RDWR, Mode::empty())?;
    unistd::dup2_stdin(&null)?;
    unistd::dup2_stdout(&null)?;
    if !keep_stderr {
        unistd::dup2_stderr(&null)?;
    }
    Ok(())
}

pub fn getuid() -> u32 {
    unistd::getuid().as_raw()
}

pub fn geteuid() -> u32 {
    unistd::geteuid().as_raw()
}

pub fn getegid() -> u32 {
    unistd::getegid().as_raw()
}

pub fn dup(fd: impl AsFd) -> Result<OwnedFd> {
    unistd::dup(fd)
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
