//! Which branch filesystems share extents (reflink), for the clones of
//! clone.rs: probed once per filesystem, and pairs that refused after all.

use std::collections::{HashMap, HashSet};
use std::os::fd::AsFd;

use crate::branch::BranchSet;
use crate::sys::{self, Errno};

/// Which filesystems (by the target branch's st_dev) share extents, tried
/// once with two files of its work directory, and which branch pairs were
/// found not to after all (another mount of it, say): said once in the log.
#[derive(Default)]
pub struct Reflinks {
    by_dev: parking_lot::Mutex<HashMap<u64, bool>>,
    refused: parking_lot::Mutex<HashSet<(u32, u32)>>,
}

impl Reflinks {
    /// Whether branch `t`'s filesystem can clone (tried on first use).
    pub(crate) fn can(&self, bs: &BranchSet, t: usize) -> bool {
        let b = bs.get(t);
        let mut by_dev = self.by_dev.lock();
        if let Some(&can) = by_dev.get(&b.dev) {
            return can;
        }
        let tried = b.work().and_then(|work| {
            let src = sys::tmpfile_in(&work, 0o600)?;
            sys::truncate_fd(src.as_fd(), 4096)?;
            let dst = sys::tmpfile_in(&work, 0o600)?;
            sys::ficlone(dst.as_fd(), src.as_fd())
        });
        let path = b.path.display();
        match tried {
            Ok(()) => log::info!(
                "{path} shares extents (reflink): lower files opened read-only are clones there, read by the kernel"
            ),
            Err(e) => log::info!(
                "{path} cannot reflink ({e}): reads of the lower files it would copy up go through the daemon"
            ),
        }
        by_dev.insert(b.dev, tried.is_ok());
        tried.is_ok()
    }

    pub(crate) fn refuse(&self, bs: &BranchSet, idx: usize, t: usize, e: Errno) {
        if self.refused.lock().insert((bs.get(idx).id, bs.get(t).id)) {
            log::info!(
                "no reflink from {} to {} ({e}): reads of its files go through the daemon",
                bs.get(idx).path.display(),
                bs.get(t).path.display()
            );
        }
    }

    pub(crate) fn refused(&self, bs: &BranchSet, idx: usize, t: usize) -> bool {
        self.refused
            .lock()
            .contains(&(bs.get(idx).id, bs.get(t).id))
    }
}
