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
mod attr;
mod copyup;
mod create;
mod delete;
mod file;
mod fs;
mod handles;
mod readdir;
mod rename;
mod resolve;
mod sys;
mod tree;
mod union;

/// What the daemon's command needs of the process: forking into the
/// background, a session of its own, quiet stdio, unmounting.
pub mod daemon {
    pub use crate::sys::{detach_stdio, fork, setsid, unmount_retrying, Forked};
}

/// The internals that benches/internals.rs measures; not an API.
#[doc(hidden)]
pub mod internals {
    pub use crate::readdir::merged;
    pub use crate::resolve::{open_layers_at, scan, scan_path, InodeTable, NameIndex};
    pub use crate::sys::Dir;
}

use std::path::Path;
use std::sync::Arc;

pub use branch::{BranchSet, BranchSpec, Mode};
pub use options::{DeleteMode, MountOptions};

use fuser::{Config, MountOption, SessionACL};
use options::Flag;

fn fuse_config(opts: &MountOptions) -> Config {
    let mut c = Config::default();
    let fsname = opts.fsname.clone().unwrap_or_else(|| "unionfs".to_string());
    c.mount_options.push(MountOption::FSName(fsname));
    // A kernel option, so /proc/mounts shows the type as fuse.unionfs.
    c.mount_options
        .push(MountOption::CUSTOM("subtype=unionfs".to_string()));
    if opts.default_permissions {
        c.mount_options.push(MountOption::DefaultPermissions);
    }
    if opts.read_only {
        c.mount_options.push(MountOption::RO);
    }
    for f in &opts.flags {
        c.mount_options.push(match f {
            Flag::Dev => MountOption::Dev,
            Flag::NoDev => MountOption::NoDev,
            Flag::Suid => MountOption::Suid,
            Flag::NoSuid => MountOption::NoSuid,
            Flag::Exec => MountOption::Exec,
            Flag::NoExec => MountOption::NoExec,
            Flag::Atime => MountOption::Atime,
            Flag::NoAtime => MountOption::NoAtime,
            Flag::Sync => MountOption::Sync,
            Flag::Async => MountOption::Async,
            Flag::DirSync => MountOption::DirSync,
        });
    }
    c.acl = if opts.allow_other {
        SessionACL::All
    } else if opts.allow_root {
        SessionACL::RootAndOwner
    } else {
        SessionACL::Owner
    };
    c.n_threads = Some(opts.threads);
    c.clone_fd = opts.threads > 1;
    c
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

/// A live mount: the FUSE session (serving once `run` or `spawn` is called),
/// a channel that hears when the session has ended, and the unionctl socket
/// (removed when this is dropped).
pub struct Mounted {
    pub session: fuser::Session<fs::UnionFs>,
    pub ended: std::sync::mpsc::Receiver<()>,
    /// None when no trustworthy directory for the socket exists (the mount
    /// works, unionctl cannot reach it; a warning said why).
    pub control: Option<control::ControlSocket>,
}

/// Mount the union of `branches` on `mountpoint` (absolute). The mount is
/// live when this returns; requests are served once `session.run()` is called.
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
    let union = union::Union::new(branches, opts.delete, opts.entry_timeout, cache_max);
    let union = Arc::new(union.map_err(std::io::Error::from)?);
    let (ended_tx, ended) = std::sync::mpsc::channel();
    let fs = fs::UnionFs::new(union.clone(), opts, Some(ended_tx));
    let session = fuser::Session::new(fs, mountpoint, &fuse_config(opts))?;
    set_readahead(mountpoint, opts.readahead_kb);
    let notifier = session.notifier();
    let invalidate: control::Invalidate = Box::new(move |u: &union::Union| {
        // Every name and inode the kernel may hold: the next access asks again.
        for (ino, parent, name) in u.resolve.inodes.known_names() {
            let _ = notifier.inval_entry(fuser::INodeNo(parent), &name);
            let _ = notifier.inval_inode(fuser::INodeNo(ino), 0, 0);
        }
        for (parent, name) in u.resolve.negatives.take() {
            let _ = notifier.inval_entry(fuser::INodeNo(parent), &name);
        }
        let _ = notifier.inval_inode(fuser::INodeNo(resolve::ROOT), 0, 0);
    });
    let control = match control::serve(union, mountpoint.to_path_buf(), invalidate) {
        Ok(c) => Some(c),
        Err(e) => {
            log::warn!("no unionctl channel for {}: {e}", mountpoint.display());
            None
        }
    };
    Ok(Mounted {
        session,
        ended,
        control,
    })
}
