//! Object numbers (`st_ino`) that are the same after an unmount and a mount
//! of the same branches, and after a reboot that gives a branch another
//! `st_dev` (tmpfs): derived from the branch filesystems' own numbers, as
//! overlayfs's xino does. Each filesystem of the branch list gets an index
//! by its first place in the list (the top one 0, so a union on one
//! filesystem shows that filesystem's own numbers); an instance's number is
//! `index << 56 | st_ino`. Where that cannot be (an `st_ino` of 57 bits or
//! more, more than 255 filesystems, the root's number 1) the number is
//! allocated for the life of the mount instead (see InodeTable).
//!
//! A copy-up keeps the number of its origin: the writable branch records it
//! in its index directory (`whiteout::INDEX_DIR`, beside the work directory,
//! outside the union and every layer), one symlink `st_ino -> number` per
//! copied-up object, read by any later mount that has that branch, as a
//! lower branch too; a copied-up hard link also gets `oNUMBER -> INO/PATH`,
//! by which its other lower names join the copy when looked up (copyup.rs,
//! `join_copy`). A name deleted through the union drops its record; one
//! deleted directly in the branch leaves a record that a new object reusing
//! its `st_ino` would inherit (README, "Inode numbers").

use std::sync::Arc;

use crate::branch::{Branch, BranchSet};

const SHIFT: u32 = 56;

#[derive(Debug, Default)]
pub struct Numbers {
    /// Filesystems (`st_dev`) in the order the branch lists had them (one
    /// met only inside a branch, a mount there, gets allocated numbers).
    devs: Vec<u64>,
    /// Branches whose index may hold a copied-up object's number.
    branches: Vec<Arc<Branch>>,
}

impl Numbers {
    pub fn new(bs: &BranchSet) -> Numbers {
        let mut n = Numbers::default();
        n.update(bs);
        n
    }

    /// The branch set changed: filesystems new to it get the next indices
    /// (those of the others stay).
    pub fn update(&mut self, bs: &BranchSet) {
        for b in &bs.branches {
            if !self.devs.contains(&b.dev) {
                self.devs.push(b.dev);
            }
        }
        self.branches = bs.branches.clone();
    }

    /// The number of instance `key` from its index record, or from its
    /// filesystem's number; None where it has no number of its own.
    pub fn of(&self, key: (u64, u64)) -> Option<u64> {
        let (dev, ino) = key;
        let recorded = self
            .branches
            .iter()
            .filter(|b| b.dev == dev)
            .find_map(|b| b.origin_of(ino));
        if recorded.is_some() {
            return recorded;
        }
        let idx = self.devs.iter().position(|&d| d == dev)? as u64;
        let n = idx << SHIFT | ino;
        (idx < 0xff && ino >> SHIFT == 0).then_some(n)
    }
}

/// Allocated numbers (and node ids of renumbered objects) start here: above
/// every derived one.
pub const ALLOCATED: u64 = 0xff << SHIFT;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_the_filesystems_own_with_its_index_above() {
        let n = Numbers {
            devs: vec![10, 20],
            branches: Vec::new(),
        };
        assert_eq!(n.of((10, 1234)), Some(1234));
        assert_eq!(n.of((20, 1234)), Some(1 << 56 | 1234));
        assert_eq!(n.of((30, 5)), None, "a filesystem never seen");
        assert_eq!(n.of((10, 1 << 56)), None, "57 bits");
        assert!(n.of((20, (1 << 56) - 1)).unwrap() < ALLOCATED);
    }
}
