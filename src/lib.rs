//! unionfs: a userspace union filesystem.
//!
//! Branches (directories) are merged by precedence, leftmost highest. Reads
//! see the topmost instance of each name; writes copy a file up to the
//! highest writable branch; deletions of lower files leave `.wh.` whiteouts.
//! The on-disk format is the OCI image layer format, so an image layer is a
//! branch and a writable branch is a layer diff.
//!
//! The crate is a union model ([`union::Union`]: lookup, copy-up, whiteouts,
//! merged readdir) with a thin FUSE adapter over it ([`fs::UnionFs`]).
#![deny(unsafe_code)]

pub mod branch;
pub mod copyup;
pub mod create;
pub mod delete;
pub mod file;
pub mod fs;
pub mod inode;
pub mod lookup;
pub mod options;
pub mod readdir;
pub mod rename;
pub mod sys;
pub mod union;
pub mod whiteout;

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

/// Mount the union of `branches` on `mountpoint`. The returned session serves
/// requests once `run` is called on it; the mount is live already.
pub fn mount(
    branches: BranchSet,
    mountpoint: &Path,
    opts: &MountOptions,
) -> std::io::Result<fuser::Session<fs::UnionFs>> {
    // Modes come from the requests (already masked by the caller's umask).
    sys::set_umask(0);
    let union = union::Union::new(branches, opts.delete).map_err(std::io::Error::from)?;
    let fs = fs::UnionFs::new(Arc::new(union), opts);
    fuser::Session::new(fs, mountpoint, &fuse_config(opts))
}
