//! The cache of one union directory's instances: an fd per branch, and the
//! index of names in its read-only branches (see dirs.rs for how it is kept
//! current).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::nameindex::NameIndex;
use crate::sys::Dir;

/// Directory fds held by every cache of this process (fds are a process-wide
/// resource); no cache grows past the union's `dir_cache` limit.
pub(super) static CACHED: AtomicUsize = AtomicUsize::new(0);
pub(super) static SERIAL: AtomicU64 = AtomicU64::new(1);

/// The cached instances of one union directory.
#[derive(Debug, Default)]
pub struct DirFds {
    /// Distinct for every emptying of the cache: what was read before it
    /// must not be stored after it.
    pub(super) serial: u64,
    pub(super) generation: u64,
    pub(super) epoch: u64,
    pub(super) layers: Vec<u32>,
    pub(super) expires: Option<Instant>,
    /// (branch id, fd on the directory's instance in that branch)
    pub(super) fds: Vec<(u32, Arc<Dir>)>,
    /// Lookups served since the cache was made, and the index of names in
    /// read-only branches once there were enough (see nameindex.rs).
    pub(super) lookups: u32,
    pub(super) index: Option<Arc<NameIndex>>,
    pub(super) no_index: bool,
}

impl Drop for DirFds {
    fn drop(&mut self) {
        CACHED.fetch_sub(self.fds.len(), Ordering::Relaxed);
    }
}

impl DirFds {
    pub(super) fn current(
        &self,
        generation: u64,
        epoch: u64,
        layers: &[u32],
        now: Instant,
    ) -> bool {
        self.generation == generation
            && self.epoch == epoch
            && self.layers == layers
            && self.expires.is_some_and(|e| now < e)
    }
}
