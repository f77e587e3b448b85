//! Which read-only branch holds which name of a directory, so that lookups in
//! a deep stack skip the branches that hold nothing of a name: no `fstatat`
//! and no whiteout probe there. Only read-only branches are indexed: nothing
//! done through the union changes them; writable branches are always probed.
//! A change made directly in an indexed directory drops the index: its event
//! where the directory is watched (watch.rs), else its change time, which is
//! checked before every use (`current`).
//!
//! A directory is indexed once it has served a few lookups (one lookup is
//! cheaper by probing than by reading whole directories), and only while the
//! process-wide count of indexed names stays under a budget.

use std::ffi::{OsStr, OsString};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use foldhash::{HashSet, HashSetExt};

use crate::sys::{self, Dir, Result};
use crate::whiteout;

/// Lookups in a directory before it is indexed.
pub const INDEX_AFTER: u32 = 4;
/// Names one directory may bring into the index.
const MAX_DIR_NAMES: usize = 16384;
/// Names indexed in the whole process (some 20 MiB at most).
const MAX_NAMES: usize = 262144;

static INDEXED: AtomicUsize = AtomicUsize::new(0);

/// What a read-only branch holds of a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hint {
    /// Neither the name nor a whiteout for it: skip the branch.
    Absent,
    /// Only a whiteout: the name ends here.
    Whiteout,
    /// The name (maybe with a whiteout beside it): probe the branch.
    Present,
}

#[derive(Debug)]
struct LayerNames {
    idx: usize,
    names: HashSet<OsString>,
    whiteouts: HashSet<OsString>,
    dir: Arc<Dir>,
    /// The directory's change and modification times before it was read.
    stamp: Stamp,
}

type Stamp = [i64; 4];

fn stamp(dir: &Dir) -> Result<Stamp> {
    let st = sys::fstat(std::os::fd::AsFd::as_fd(dir))?;
    Ok([st.st_ctime, st.st_ctime_nsec, st.st_mtime, st.st_mtime_nsec])
}

#[derive(Debug)]
pub struct NameIndex {
    layers: Vec<LayerNames>,
    count: usize,
}

impl Drop for NameIndex {
    fn drop(&mut self) {
        INDEXED.fetch_sub(self.count, Ordering::Relaxed);
    }
}

impl NameIndex {
    /// Read the directory instances `dirs` (read-only branches: index, fd).
    /// None when the directory is too large or the budget is spent.
    pub fn build(dirs: &[(usize, Arc<Dir>)]) -> Result<Option<NameIndex>> {
        let mut layers = Vec::with_capacity(dirs.len());
        let mut count = 0;
        for (idx, fd) in dirs {
            let mut l = LayerNames {
                idx: *idx,
                names: HashSet::new(),
                whiteouts: HashSet::new(),
                dir: fd.clone(),
                stamp: stamp(fd)?,
            };
            for e in sys::read_dir(fd)? {
                if whiteout::is_reserved(&e.name) {
                    if let Some(h) = whiteout::hidden_name(&e.name) {
                        l.whiteouts.insert(h.to_os_string());
                    }
                } else {
                    l.names.insert(e.name);
                }
            }
            count += l.names.len() + l.whiteouts.len();
            if count > MAX_DIR_NAMES {
                return Ok(None);
            }
            layers.push(l);
        }
        if INDEXED.fetch_add(count, Ordering::Relaxed) + count > MAX_NAMES {
            INDEXED.fetch_sub(count, Ordering::Relaxed);
            return Ok(None);
        }
        Ok(Some(NameIndex { layers, count }))
    }

    /// Whether no indexed directory changed since it was read (on filesystems
    /// with fine-grained change times, as tmpfs, ext4, xfs and btrfs have
    /// once a time was read, every change shows).
    pub fn current(&self) -> bool {
        self.layers
            .iter()
            .all(|l| stamp(&l.dir).is_ok_and(|s| s == l.stamp))
    }

    /// What branch `idx` holds of `name`; None when `idx` is not indexed.
    pub fn hint(&self, idx: usize, name: &OsStr) -> Option<Hint> {
        let l = self.layers.iter().find(|l| l.idx == idx)?;
        Some(if l.names.contains(name) {
            Hint::Present
        } else if l.whiteouts.contains(name) {
            Hint::Whiteout
        } else {
            Hint::Absent
        })
    }
}
