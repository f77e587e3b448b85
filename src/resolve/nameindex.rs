//! Which read-only branch holds which name of a directory, so that lookups in
//! a deep stack skip the branches that hold nothing of a name: no `fstatat`
//! and no whiteout probe there. Only read-only branches are indexed: nothing
//! done through the union changes them, so an index stays exact for as long as
//! the directory's cached fds do (same branch set, layers and directory
//! renames, at most `entry_timeout`); writable branches are always probed.
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
