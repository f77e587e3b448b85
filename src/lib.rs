//! unionfs: a userspace union filesystem.
//!
//! Branches (directories) are merged by precedence, leftmost highest. Reads
//! see the topmost instance of each name; writes copy a file up to the
//! highest writable branch; deletions of lower files leave `.wh.` whiteouts.
//! The on-disk format is the OCI image layer format, so an image layer is a
//! branch and a writable branch is a layer diff.
//!
//! The crate is a union model (the `union` module and the operation families
//! beside it, over the `resolve` layer) with a thin FUSE adapter over it
//! (`fs`). Its public face is [`mount`] and what the tools around it need:
//! branch lists, the unionctl channel, snapmerge, mountinfo, path-based views
//! and the fd-relative calls of [`fsat`].
#![deny(unsafe_code)]

// What the binaries, the driver and the tests use.
pub mod branch;
pub mod cli;
pub mod control;
pub mod fsat;
pub mod mountinfo;
pub mod options;
pub mod snapmerge;
pub mod view;
pub mod whiteout;

// The union itself: the FUSE adapter over the model.
mod acl;
mod attr;
mod clone;
mod copyup;
mod create;
mod delete;
mod expiry;
mod file;
mod fs;
mod fuse;
mod handles;
mod readdir;
mod reflinks;
mod rename;
mod resolve;
mod sys;
mod tree;
mod union;
mod waiting;

/// What the daemon's command needs of the process: forking into the
/// background, a session of its own, quiet stdio, unmounting.
pub mod daemon {
    pub use crate::sys::{detach_stdio, fork, setsid, unmount_retrying, Forked};
}

/// The internals that benches/internals.rs measures; not an API.
#[doc(hidden)]
pub mod internals {
    pub use crate::readdir::merged;
    pub use crate::resolve::{open_layers_at, scan, scan_path, InodeTable, NameIndex, Numbers};
    pub use crate::sys::Dir;
}

use std::path::Path;
use std::sync::Arc;

pub use branch::{BranchSet, BranchSpec, Mode};
pub use options::{DeleteMode, IoUring, MountOptions};

use nix::mount::MsFlags;
use options::Flag;

/// How the mount looks to the kernel: as fuser mounted it before the
/// protocol became ours (nodev and nosuid unless asked otherwise).
fn mount_args(opts: &MountOptions) -> fuse::MountArgs {
    let mut flags = MsFlags::MS_NODEV | MsFlags::MS_NOSUID;
    if opts.read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    for f in &opts.flags {
        match f {
            Flag::Dev => flags.remove(MsFlags::MS_NODEV),
            Flag::NoDev => flags.insert(MsFlags::MS_NODEV),
            Flag::Suid => flags.remove(MsFlags::MS_NOSUID),
            Flag::NoSuid => flags.insert(MsFlags::MS_NOSUID),
            Flag::Exec => flags.remove(MsFlags::MS_NOEXEC),
            Flag::NoExec => flags.insert(MsFlags::MS_NOEXEC),
            Flag::Sync => flags.insert(MsFlags::MS_SYNCHRONOUS),
            Flag::Async => flags.remove(MsFlags::MS_SYNCHRONOUS),
            Flag::DirSync => flags.insert(MsFlags::MS_DIRSYNC),
        }
    }
    flags |= match opts.atime {
        options::Atime::Relatime => MsFlags::MS_RELATIME,
        options::Atime::Strict => MsFlags::MS_STRICTATIME,
        options::Atime::No => MsFlags::MS_NOATIME,
    };
    if opts.nodiratime {
        flags |= MsFlags::MS_NODIRATIME;
    }
    fuse::MountArgs {
        fsname: opts.fsname.clone().unwrap_or_else(|| "unionfs".to_string()),
        subtype: opts.subtype.clone(),
        default_permissions: opts.default_permissions,
        // allow_root is allow_other for the kernel, narrowed by the daemon.
        allow_other: opts.allow_other || opts.allow_root,
        flags,
    }
}

fn access(opts: &MountOptions) -> fuse::Access {
    if opts.allow_root && !opts.allow_other {
        fuse::Access::OwnerAndRoot(sys::geteuid())
    } else {
        fuse::Access::Any
    }
}

/// What the adapter asks of the kernel at INIT.
fn want(opts: &MountOptions, ring: bool) -> fuse::Want {
    use fuse::abi::init::*;
    // Reads may be sent in parallel, writes larger than a page; lookups and
    // readdirs in one directory may run at once (the model locks a directory
    // only to change its names); symlink targets never change in place; a
    // file whose mtime or size changed under the kernel's page cache
    // (directly in a branch) has its cached pages dropped.
    // The daemon clears setuid/setgid itself when the kernel says the caller
    // may not keep them (so the kernel stops asking for security.capability
    // before every write), and takes O_TRUNC with the open (no SETATTR
    // after it; a copy-up for it copies no data). The kernel enforces POSIX
    // ACLs (the branches store them) and leaves the umask to the daemon,
    // which applies it only where no default ACL is inherited.
    let mut flags = ASYNC_READ
        | BIG_WRITES
        | MAX_PAGES
        | PARALLEL_DIROPS
        | CACHE_SYMLINKS
        | AUTO_INVAL_DATA
        | HANDLE_KILLPRIV_V2
        | ATOMIC_O_TRUNC;
    if opts.default_permissions {
        // POSIX_ACL turns the kernel's permission checks on by itself.
        flags |= POSIX_ACL | DONT_MASK;
    }
    if opts.readdirplus {
        flags |= DO_READDIRPLUS | READDIRPLUS_AUTO;
    }
    if opts.passthrough != options::Passthrough::Off {
        flags |= PASSTHROUGH;
    }
    if ring {
        flags |= OVER_IO_URING;
    }
    fuse::Want {
        flags,
        max_write: 1 << 20,
        // As large as the kernel allows: fewer round trips for sequential reads.
        max_readahead: 1 << 20,
        max_background: 64,
        // Branches on a local filesystem: the stack is fuse over it.
        max_stack_depth: 1,
    }
}

/// File descriptors kept free of the directory cache: branch roots, open
/// files, FUSE channels.
const FD_HEADROOM: u64 = 8192;

/// The kernel offers FUSE mounts 128 KiB of readahead; sequential reads of
/// files served by the daemon go faster in 1 MiB requests (FUSE's largest).
/// The mount's readahead is a setting of its backing device, in sysfs: set
/// it when this process may (root), else leave the kernel's.
fn set_readahead(mountpoint: &Path, kb: u32) {
    let Some(m) = mountinfo::mount_at(mountpoint) else {
        return;
    };
    let knob = format!("/sys/class/bdi/{}/read_ahead_kb", m.dev);
    if let Err(e) = std::fs::write(&knob, kb.to_string()) {
        log::debug!("readahead stays the kernel's: {knob}: {e}");
    }
}

/// A live mount: the connection, ready to be served, a channel that hears
/// when it has ended, and the unionctl socket (removed when this is dropped).
pub struct Mounted {
    pub server: Server,
    pub ended: std::sync::mpsc::Receiver<()>,
    /// None when no trustworthy directory for the socket exists (the mount
    /// works, unionctl cannot reach it; a warning said why).
    pub control: Option<control::ControlSocket>,
}

/// Serves a mounted connection.
pub struct Server {
    session: Arc<fuse::Session>,
    fs: Arc<fs::UnionFs>,
    threads: usize,
    ended: std::sync::mpsc::Sender<()>,
}

impl Server {
    /// Start the threads that serve requests: over io_uring, one per queue
    /// (all registered when this returns) and one /dev/fuse reader for what
    /// the ring does not carry; else `threads` readers of /dev/fuse, each on
    /// an fd of its own (a clone), so its replies never wait behind
    /// another's. The channel of [`Mounted`] hears when the connection has
    /// ended. Answers how many threads were started.
    pub fn spawn(self) -> std::io::Result<usize> {
        let c = self.session.conn;
        let start = |name: &str, dev: Arc<fuse::session::Dev>| {
            let (session, fs, ended) = (self.session.clone(), self.fs.clone(), self.ended.clone());
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || {
                    session.serve_dev(&*fs, dev);
                    let _ = ended.send(());
                })
                .map(drop)
        };
        if c.has(fuse::abi::init::OVER_IO_URING) {
            let queues = fuse::uring::queues();
            let (ready_tx, ready) = std::sync::mpsc::channel();
            for qid in 0..queues {
                let (session, fs, ready_tx) =
                    (self.session.clone(), self.fs.clone(), ready_tx.clone());
                std::thread::Builder::new()
                    .name(format!("unionfs-q{qid}"))
                    .spawn(move || fuse::uring::serve_queue(&session, &*fs, qid, ready_tx))?;
            }
            for _ in 0..queues {
                ready
                    .recv()
                    .map_err(|_| std::io::Error::other("an io_uring queue ended"))??;
            }
            start("unionfs-fuse", self.session.dev.clone())?;
            log::info!(
                "serving over io_uring: {queues} queues of {} entries, one per CPU (FUSE 7.{})",
                fuse::uring::DEPTH,
                c.minor
            );
            return Ok(queues + 1);
        }
        let threads = self.threads.max(1);
        for i in 0..threads {
            let dev = if i == 0 {
                self.session.dev.clone()
            } else {
                self.session.clone_dev()?
            };
            start("unionfs-fuse", dev)?;
        }
        log::info!(
            "serving over /dev/fuse with {threads} threads (FUSE 7.{}, max_write {} KiB, {} pages a request)",
            c.minor,
            c.max_write >> 10,
            c.max_pages
        );
        Ok(threads)
    }
}

/// Whether the mount is to be served over io_uring: Err names why a mount
/// with io_uring=on cannot be (checked before anything is mounted).
pub fn io_uring_wanted(opts: &MountOptions) -> Result<bool, String> {
    match opts.io_uring {
        options::IoUring::Off => Ok(false),
        options::IoUring::On => fuse::uring::offered().map(|()| true),
        options::IoUring::Auto => match fuse::uring::offered() {
            Ok(()) => Ok(true),
            Err(why) => {
                log::info!("serving over /dev/fuse: {why}");
                Ok(false)
            }
        },
    }
}

/// Mount the union of `branches` on `mountpoint` (absolute). The mount is
/// live when this returns; requests are served once `server.spawn()` is called.
pub fn mount(
    branches: BranchSet,
    mountpoint: &Path,
    opts: &MountOptions,
) -> std::io::Result<Mounted> {
    // Modes come from the requests, already masked by the caller's umask;
    // each new entry gets exactly its mode (see sys::UMASK).
    sys::set_umask(sys::UMASK);
    // Room for the directory cache, the branch roots and open files, made
    // before any thread starts.
    let limit = sys::reserve_fds(opts.dir_cache as u64 + FD_HEADROOM);
    // Under a low hard limit, half of it still goes to the cache.
    let room = limit.saturating_sub(FD_HEADROOM).max(limit / 2);
    let cache_max = opts.dir_cache.min(room as usize);
    let union = union::Union::new(
        branches,
        opts.delete,
        opts.ttl(true).entry,
        cache_max,
        opts.udba,
        opts.max_watches,
    );
    let mut union = union.map_err(std::io::Error::from)?;
    union.passthrough = opts.passthrough;
    union.strictatime = opts.atime == options::Atime::Strict;
    let union = Arc::new(union);
    let ring = io_uring_wanted(opts).map_err(std::io::Error::other)?;
    let dev = fuse::mount(mountpoint, &mount_args(opts))?;
    let session = fuse::Session::init(dev, &want(opts, ring), access(opts)).and_then(|s| {
        if opts.io_uring == options::IoUring::On && !s.conn.has(fuse::abi::init::OVER_IO_URING) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "the kernel did not offer FUSE over io_uring at INIT",
            ));
        }
        Ok(Arc::new(s))
    });
    let session = match session {
        Ok(s) => s,
        Err(e) => {
            let _ = nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH);
            return Err(e);
        }
    };
    let notifier = session.notifier();
    let fs = fs::UnionFs::new(
        union.clone(),
        opts,
        &session.conn,
        session.backings(),
        notifier.clone(),
    );
    set_readahead(mountpoint, opts.readahead_kb);
    expiry::spawn_watcher(&union, notifier.clone())?;
    // After a branch change, every name and inode the kernel may hold: the
    // next access asks again.
    let invalidate: control::Invalidate =
        Box::new(move |u: &union::Union| expiry::everything(u, &notifier));
    let control = match control::serve(union, mountpoint.to_path_buf(), invalidate) {
        Ok(c) => Some(c),
        Err(e) => {
            log::warn!("no unionctl channel for {}: {e}", mountpoint.display());
            None
        }
    };
    let (ended_tx, ended) = std::sync::mpsc::channel();
    Ok(Mounted {
        server: Server {
            session,
            fs: Arc::new(fs),
            threads: opts.threads,
            ended: ended_tx,
        },
        ended,
        control,
    })
}
