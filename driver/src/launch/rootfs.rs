//! The container's mount namespace: private propagation, the rootfs bound
//! onto itself, /proc (with Docker's masked and read-only paths), /sys
//! read-only, a tmpfs /dev, volumes, then pivot_root with the old root
//! detached. Paths inside the rootfs are resolved from a directory handle
//! with RESOLVE_NO_SYMLINKS and mounts go through /proc/self/fd: an image
//! whose /dev or /proc is a symlink cannot make the launcher touch the host.

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use unionfs::fsat::{self, Dir};

use super::{Device, LaunchError, Options, Step};

fn fd_path(fd: BorrowedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn step(s: Step) -> impl Fn(Errno) -> LaunchError {
    move |e| LaunchError::Step(s, e.to_string())
}

/// The directory `rel` inside the rootfs (created when missing); a symlink
/// on the way is refused.
fn dir_in(root: &Dir, rel: &Path, s: Step) -> Result<Dir, LaunchError> {
    let mut cur = root.try_clone().map_err(step(s))?;
    for c in rel.iter() {
        let next = match fsat::open_dir(&cur, Path::new(c)) {
            Err(Errno::ENOENT) => {
                fsat::mkdir_at(&cur, c, 0o755).map_err(step(s))?;
                fsat::open_dir(&cur, Path::new(c))
            }
            other => other,
        };
        cur = next.map_err(|e| match e {
            Errno::ELOOP | Errno::ENOTDIR => LaunchError::Step(
                s,
                format!(
                    "/{} in the rootfs is a symlink or not a directory",
                    rel.display()
                ),
            ),
            e => LaunchError::Step(s, e.to_string()),
        })?;
    }
    Ok(cur)
}

fn mnt(
    src: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
    s: Step,
) -> Result<(), LaunchError> {
    mount(src, target, fstype, flags, data)
        .map_err(|e| LaunchError::Step(s, format!("{}: {e}", target.display())))
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

fn proc_fs(root: &Dir) -> Result<(), LaunchError> {
    let s = Step::MountProc;
    let p = dir_in(root, Path::new("proc"), s)?;
    mnt(
        Some("proc"),
        &fd_path(p.as_fd()),
        Some("proc"),
        NOSUID_NODEV_NOEXEC,
        None,
        s,
    )?;
    let p = dir_in(root, Path::new("proc"), s)?;
    // Docker's masked paths: /dev/null over files, an empty read-only tmpfs over directories.
    for name in [
        "kcore",
        "keys",
        "timer_list",
        "sched_debug",
        "latency_stats",
        "timer_stats",
        "acpi",
        "scsi",
    ] {
        let Ok(st) = fsat::stat_at(&p, OsStr::new(name)) else {
            continue;
        };
        let fd = fsat::open_at(&p, OsStr::new(name), OFlag::O_PATH, 0).map_err(step(s))?;
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            mnt(
                Some("tmpfs"),
                &fd_path(fd.as_fd()),
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                Some("size=0"),
                s,
            )?;
        } else {
            mnt(
                Some("/dev/null"),
                &fd_path(fd.as_fd()),
                None,
                MsFlags::MS_BIND,
                None,
                s,
            )?;
        }
    }
    // ... and its read-only ones.
    for name in ["asound", "bus", "fs", "irq", "sys", "sysrq-trigger"] {
        if fsat::stat_at(&p, OsStr::new(name)).is_err() {
            continue;
        }
        let fd = fsat::open_at(&p, OsStr::new(name), OFlag::O_PATH, 0).map_err(step(s))?;
        let target = fd_path(fd.as_fd());
        mnt(
            Some(target.to_str().unwrap_or_default()),
            &target,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
            s,
        )?;
        let fd = fsat::open_at(&p, OsStr::new(name), OFlag::O_PATH, 0).map_err(step(s))?;
        mnt(
            None,
            &fd_path(fd.as_fd()),
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None,
            s,
        )?;
    }
    Ok(())
}

/// The device node `name` in `dir` (`node`: kind, number, permission
/// bits): made, or for a user (who may make none, even in its own
/// namespace) the host's node `host` bound onto an empty file, as runc's
/// rootless mode does (`run` refuses a user's device without w first).
fn device(
    dir: &Dir,
    name: &OsStr,
    node: (u32, libc::dev_t, u32),
    host: &Path,
) -> Result<(), LaunchError> {
    let s = Step::Devices;
    let (kind, rdev, mode) = node;
    if crate::userns::rootless() {
        let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY;
        let f = fsat::open_at(dir, name, flags, 0o600).map_err(step(s))?;
        let target = fd_path(f.as_fd());
        let host = host.to_str().unwrap_or_default();
        return mnt(Some(host), &target, None, MsFlags::MS_BIND, None, s);
    }
    fsat::mknod_at(dir, name, kind | 0o600, rdev).map_err(step(s))?;
    let fd = fsat::open_at(dir, name, OFlag::O_PATH, 0).map_err(step(s))?;
    fsat::chmod_fd(fd.as_fd(), mode).map_err(step(s))
}

fn dev_fs(root: &Dir, extra: &[Device]) -> Result<(), LaunchError> {
    let s = Step::MountDev;
    let d = dir_in(root, Path::new("dev"), s)?;
    mnt(
        Some("tmpfs"),
        &fd_path(d.as_fd()),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
        s,
    )?;
    let d = dir_in(root, Path::new("dev"), s)?;
    let s = Step::Devices;
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        let host = Path::new("/dev").join(name);
        let node = (libc::S_IFCHR, libc::makedev(major, minor), 0o666);
        device(&d, OsStr::new(name), node, &host)?;
    }
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        fsat::symlink_at(OsStr::new(target), &d, OsStr::new(name)).map_err(step(s))?;
    }
    for dev in extra {
        let rel = dev.path.strip_prefix("/dev").unwrap_or(&dev.path);
        let (parent, name) = (
            rel.parent().unwrap_or(Path::new("")),
            rel.file_name().unwrap_or_default(),
        );
        let pd = dir_in(&d, parent, s)?;
        let _ = fsat::unlink_at(&pd, name, false);
        device(&pd, name, (dev.kind, dev.rdev, dev.mode), &dev.host)?;
    }
    let pts = dir_in(&d, Path::new("pts"), s)?;
    mnt(
        Some("devpts"),
        &fd_path(pts.as_fd()),
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
        s,
    )?;
    let shm = dir_in(&d, Path::new("shm"), s)?;
    mnt(
        Some("shm"),
        &fd_path(shm.as_fd()),
        Some("tmpfs"),
        NOSUID_NODEV_NOEXEC,
        Some("mode=1777,size=65536k"),
        s,
    )?;
    Ok(())
}

/// Set up the mount namespace of the child and pivot into `rootfs`.
pub fn enter(rootfs: &Path, opts: &Options) -> Result<(), LaunchError> {
    mnt(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
        Step::MountPropagation,
    )?;
    let r = rootfs.to_str().unwrap_or_default();
    mnt(
        Some(r),
        rootfs,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
        Step::BindRootfs,
    )?;
    // Device nodes in the image are never opened (nodev); only the
    // launcher's own /dev has them. The mount's other flags stay.
    let kept = kept_flags(rootfs).map_err(step(Step::BindRootfs))? | MsFlags::MS_NODEV;
    mnt(
        None,
        rootfs,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | kept,
        None,
        Step::BindRootfs,
    )?;
    let root = Dir::open_root(rootfs).map_err(step(Step::BindRootfs))?;
    proc_fs(&root)?;
    let sysd = dir_in(&root, Path::new("sys"), Step::MountSys)?;
    mnt(
        Some("sysfs"),
        &fd_path(sysd.as_fd()),
        Some("sysfs"),
        NOSUID_NODEV_NOEXEC | MsFlags::MS_RDONLY,
        None,
        Step::MountSys,
    )?;
    dev_fs(&root, &opts.devices)?;
    for v in &opts.volumes {
        let s = Step::Volume;
        let src = std::fs::canonicalize(&v.src)
            .map_err(|e| LaunchError::Step(s, format!("{}: {e}", v.src.display())))?;
        let rel = v.dst.strip_prefix("/").unwrap_or(&v.dst);
        let target: OwnedFd = if src.is_dir() {
            dir_in(&root, rel, s)?.into()
        } else {
            let (parent, name) = (
                rel.parent().unwrap_or(Path::new("")),
                rel.file_name().unwrap_or_default(),
            );
            let pd = dir_in(&root, parent, s)?;
            // The mount point: made when missing, never opened when there
            // (the image may have put a FIFO or a device node at that name).
            let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY;
            match fsat::open_at(&pd, name, flags, 0o644) {
                Ok(_) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(LaunchError::Step(s, format!("{}: {e}", v.dst.display()))),
            }
            fsat::open_at(&pd, name, OFlag::O_PATH, 0).map_err(step(s))?
        };
        let t = fd_path(target.as_fd());
        mnt(
            src.to_str(),
            &t,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
            s,
        )?;
        if v.read_only {
            let target = dir_or_file(&root, rel).map_err(step(s))?;
            let at = fd_path(target.as_fd());
            // The host mount's nosuid, nodev, noexec stay.
            let kept = kept_flags(&at).map_err(step(s))?;
            mnt(
                None,
                &at,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | kept,
                None,
                s,
            )?;
        }
    }
    if opts.read_only {
        mnt(
            None,
            rootfs,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | kept,
            None,
            Step::ReadOnly,
        )?;
    }
    nix::unistd::fchdir(&root).map_err(step(Step::PivotRoot))?;
    nix::unistd::pivot_root(".", ".").map_err(step(Step::PivotRoot))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(step(Step::PivotRoot))?;
    nix::unistd::chdir("/").map_err(step(Step::PivotRoot))?;
    Ok(())
}

/// The per-mount flags of the mount at `path` that a bind remount must
/// repeat (it sets them all at once): nosuid, noexec, nodev, read-only, atime.
fn kept_flags(path: &Path) -> nix::Result<MsFlags> {
    use nix::sys::statvfs::FsFlags;
    let f = nix::sys::statvfs::statvfs(path)?.flags();
    let mut m = MsFlags::empty();
    for (fs, ms) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(fs) {
            m |= ms;
        }
    }
    Ok(m)
}

/// The mounted object at `rel` (after a bind mount, a fresh handle sees it).
fn dir_or_file(root: &Dir, rel: &Path) -> nix::Result<OwnedFd> {
    fsat::open_beneath(root, rel, OFlag::O_PATH, 0)
}
