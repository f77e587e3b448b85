//! Making the FUSE mount: the kernel's mount(2) with an fd of `/dev/fuse`
//! when this process may (root), else the setuid `fusermount3`, which mounts
//! and hands the fd back over a socket (its `_FUSE_COMMFD` convention).
//! fuser could only mount by also owning the channel and its INIT, so the
//! mount is ours, as is everything after it.

use std::io::{Error, ErrorKind};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use nix::fcntl::{self, OFlag};
use nix::mount::MsFlags;
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType};
use nix::sys::stat::Mode;
use nix::unistd::{getgid, getuid};

/// What the mount looks like to the kernel.
#[derive(Debug, Clone)]
pub struct MountArgs {
    /// The source shown in /proc/mounts.
    pub fsname: String,
    /// The type shown is `fuse.SUBTYPE`, or `fuse` when it is empty.
    pub subtype: String,
    pub default_permissions: bool,
    /// Users other than the owner may enter the mount (the daemon may still
    /// refuse them: allow_root).
    pub allow_other: bool,
    /// Mount flags (MS_RDONLY, MS_NOSUID, ...).
    pub flags: MsFlags,
}

/// The option words of the mount flags, as mount(8) and fusermount3 spell them.
const FLAG_WORDS: [(MsFlags, &str, &str); 10] = [
    (MsFlags::MS_RDONLY, "ro", "rw"),
    (MsFlags::MS_NOSUID, "nosuid", "suid"),
    (MsFlags::MS_NODEV, "nodev", "dev"),
    (MsFlags::MS_NOEXEC, "noexec", "exec"),
    (MsFlags::MS_NOATIME, "noatime", ""),
    (MsFlags::MS_RELATIME, "relatime", ""),
    (MsFlags::MS_STRICTATIME, "strictatime", ""),
    (MsFlags::MS_NODIRATIME, "nodiratime", ""),
    (MsFlags::MS_SYNCHRONOUS, "sync", "async"),
    (MsFlags::MS_DIRSYNC, "dirsync", ""),
];

impl MountArgs {
    fn fs_options(&self) -> Vec<String> {
        let mut o = Vec::new();
        if self.default_permissions {
            o.push("default_permissions".to_string());
        }
        if self.allow_other {
            o.push("allow_other".to_string());
        }
        o
    }
}

/// Mount a FUSE filesystem on `mountpoint`: the fd of its connection.
pub fn mount(mountpoint: &Path, args: &MountArgs) -> std::io::Result<OwnedFd> {
    let rootmode = std::fs::metadata(mountpoint)?.mode() & libc::S_IFMT;
    let dev = match fcntl::open("/dev/fuse", OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty()) {
        Ok(fd) => fd,
        // Not ours to open: the setuid helper may (not in a user namespace
        // where host root is unmapped, nor where /dev/fuse is root's only).
        Err(e @ (nix::errno::Errno::EACCES | nix::errno::Errno::EPERM)) => {
            return fusermount(mountpoint, args).map_err(|f| {
                Error::new(
                    f.kind(),
                    format!(
                        "/dev/fuse: {e}, and {f} (a user needs /dev/fuse mode 0666, as \
                         Debian's udev rule makes it)"
                    ),
                )
            })
        }
        Err(e) => {
            return Err(Error::new(
                std::io::Error::from(e).kind(),
                format!("/dev/fuse cannot be opened (is the fuse module loaded?): {e}"),
            ))
        }
    };
    let mut data = format!(
        "fd={},rootmode={rootmode:o},user_id={},group_id={}",
        dev.as_raw_fd(),
        getuid(),
        getgid()
    );
    for o in args.fs_options() {
        data.push(',');
        data.push_str(&o);
    }
    let fstype = match args.subtype.as_str() {
        "" => "fuse".to_string(),
        sub => format!("fuse.{sub}"),
    };
    match nix::mount::mount(
        Some(args.fsname.as_str()),
        mountpoint,
        Some(fstype.as_str()),
        args.flags,
        Some(data.as_str()),
    ) {
        Ok(()) => Ok(dev),
        Err(nix::errno::Errno::EPERM) => fusermount(mountpoint, args),
        Err(e) => Err(e.into()),
    }
}

/// Mount through the setuid fusermount3: it opens /dev/fuse, mounts, and
/// sends the fd back over the socket named by `_FUSE_COMMFD`.
fn fusermount(mountpoint: &Path, args: &MountArgs) -> std::io::Result<OwnedFd> {
    // Our end is close-on-exec; the helper's end must survive its exec.
    let (ours, theirs) = socket::socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::empty(),
    )?;
    fcntl::fcntl(&ours, fcntl::FcntlArg::F_SETFD(fcntl::FdFlag::FD_CLOEXEC))?;
    let mut opts = vec![format!("fsname={}", args.fsname)];
    if !args.subtype.is_empty() {
        opts.push(format!("subtype={}", args.subtype));
    }
    opts.extend(args.fs_options());
    for (flag, on, off) in FLAG_WORDS {
        let word = if args.flags.contains(flag) { on } else { off };
        // fusermount3 knows no relatime or strictatime: its mounts get the
        // kernel's default, relatime.
        if !word.is_empty() && !matches!(word, "relatime" | "strictatime") {
            opts.push(word.to_string());
        }
    }
    // Its complaint becomes part of our one line rather than a line of its own.
    let child = Command::new("fusermount3")
        .arg("-o")
        .arg(opts.join(","))
        .arg("--")
        .arg(mountpoint)
        .env("_FUSE_COMMFD", theirs.as_raw_fd().to_string())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| Error::new(e.kind(), format!("fusermount3: {e}")))?;
    drop(theirs);
    let fd = crate::sys::receive_fd(ours.as_fd());
    let out = child.wait_with_output()?;
    match fd {
        Some(fd) if out.status.success() => Ok(fd),
        _ => {
            let said = String::from_utf8_lossy(&out.stderr);
            Err(Error::new(
                ErrorKind::PermissionDenied,
                match said.lines().map(str::trim).find(|l| !l.is_empty()) {
                    Some(l) => l.to_string(),
                    None => format!("fusermount3 failed ({})", out.status),
                },
            ))
        }
    }
}
