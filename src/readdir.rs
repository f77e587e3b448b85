//! Merged directory listings: each visible name once, topmost instance wins,
//! whiteouts and the work directory never shown.
//!
//! A listing is in the order of its entries' cookies, a hash of the name
//! (as ext4's hashed directories): the offset the kernel resumes a listing
//! from names the same place in any later listing of the directory, so a
//! listing continued on a fresh snapshot (the kernel's cached listing was
//! dropped by a change half-way through) skips and repeats no name that
//! stayed.

use foldhash::{HashSet, HashSetExt};
use std::ffi::OsString;
use std::ops::ControlFlow;
use std::sync::Arc;

use crate::branch::BranchSet;
use crate::resolve::InodeTable;
use crate::sys::{self, Dir, DirEntry, Result};
use crate::whiteout;

#[derive(Clone, Debug)]
pub struct Entry {
    pub name: OsString,
    pub ino: u64,
    /// `S_IFMT` bits.
    pub kind: u32,
    /// Where the listing resumes after this entry (see the module's comment).
    pub cookie: u64,
}

/// The cookies of `.` and `..`; every name's is above.
pub const DOT: u64 = 1;
pub const DOTDOT: u64 = 2;

/// The cookie of `name`: in 3..2^63 (offsets are signed in the kernel).
fn cookie(name: &std::ffi::OsStr) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    let h = BuildHasherDefault::<std::hash::DefaultHasher>::default().hash_one(name);
    (h >> 1).max(DOTDOT + 1)
}

/// The instances of a union directory: (branch index, fd on the directory), top first.
pub type Layers = [(usize, Arc<Dir>)];

/// Call `f` with each visible entry of the union directory whose instances
/// are `layers`: the branch index, an fd on that branch's directory, and the
/// entry. Stops when `f` breaks.
fn each_visible(
    layers: &Layers,
    mut f: impl FnMut(usize, &Dir, DirEntry) -> Result<ControlFlow<()>>,
) -> Result<()> {
    let mut seen: HashSet<OsString> = HashSet::new();
    let mut hidden: HashSet<OsString> = HashSet::new();
    let single = layers.len() == 1;
    for (idx, dir) in layers {
        // A whiteout hides names of lower branches, not of its own.
        let mut whiteouts = Vec::new();
        for e in sys::read_dir(dir)? {
            if whiteout::is_reserved(&e.name) {
                if let Some(h) = whiteout::hidden_name(&e.name) {
                    whiteouts.push(h.to_os_string());
                }
                continue;
            }
            // One branch cannot repeat a name: no need to remember them.
            if !single && (hidden.contains(&e.name) || !seen.insert(e.name.clone())) {
                continue;
            }
            if f(*idx, dir, e)?.is_break() {
                return Ok(());
            }
        }
        hidden.extend(whiteouts);
    }
    Ok(())
}

/// The merged listing of a union directory. Inode numbers come from `inodes`,
/// so they match what lookup answers.
pub fn merged(bs: &BranchSet, layers: &Layers, inodes: &InodeTable) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    let mut keys = Vec::new();
    each_visible(layers, |idx, dir, e| {
        let kind = if e.kind != 0 {
            e.kind
        } else {
            sys::stat_at(dir, &e.name)?.st_mode & libc::S_IFMT
        };
        keys.push((bs.get(idx).dev, e.ino));
        out.push(Entry {
            cookie: cookie(&e.name),
            name: e.name,
            ino: 0,
            kind,
        });
        Ok(ControlFlow::Continue(()))
    })?;
    for (e, ino) in out.iter_mut().zip(inodes.inos_for(keys.into_iter())) {
        e.ino = ino;
    }
    out.sort_unstable_by(|a, b| (a.cookie, &a.name).cmp(&(b.cookie, &b.name)));
    Ok(out)
}

/// Whether the union directory has no visible entry.
pub fn is_empty(layers: &Layers) -> Result<bool> {
    let mut empty = true;
    each_visible(layers, |_, _, _| {
        empty = false;
        Ok(ControlFlow::Break(()))
    })?;
    Ok(empty)
}
