//! One lock per union directory, by inode number, as overlayfs takes the
//! parent's inode lock: every change to a directory's names happens under
//! it. Keyed by number rather than kept in the node, so the lock is the
//! directory's whatever node object a request holds. Held only around the
//! few syscalls that change names (never across a data copy), so waiting
//! for one is short.

use foldhash::{HashSet, HashSetExt};
use parking_lot::{Condvar, Mutex};

const SHARDS: usize = 64;

#[derive(Debug)]
struct Shard {
    held: Mutex<HashSet<u64>>,
    freed: Condvar,
}

#[derive(Debug)]
pub struct DirLocks {
    shards: Vec<Shard>,
}

/// The locks of one or two directories; released when dropped.
#[must_use]
pub struct DirGuard<'a> {
    locks: &'a DirLocks,
    inos: [Option<u64>; 2],
}

impl DirLocks {
    pub fn new() -> DirLocks {
        DirLocks {
            shards: (0..SHARDS)
                .map(|_| Shard {
                    held: Mutex::new(HashSet::new()),
                    freed: Condvar::new(),
                })
                .collect(),
        }
    }

    fn shard(&self, ino: u64) -> &Shard {
        &self.shards[(ino as usize) % SHARDS]
    }

    fn take(&self, ino: u64) {
        let s = self.shard(ino);
        let mut held = s.held.lock();
        while held.contains(&ino) {
            s.freed.wait(&mut held);
        }
        held.insert(ino);
    }

    fn give(&self, ino: u64) {
        let s = self.shard(ino);
        s.held.lock().remove(&ino);
        s.freed.notify_all();
    }

    /// Lock directory `ino`.
    pub fn lock(&self, ino: u64) -> DirGuard<'_> {
        self.take(ino);
        DirGuard {
            locks: self,
            inos: [Some(ino), None],
        }
    }

    /// Lock two directories (the parents of a rename), lower number first,
    /// so two renames between the same directories cannot deadlock.
    pub fn lock_two(&self, a: u64, b: u64) -> DirGuard<'_> {
        if a == b {
            return self.lock(a);
        }
        let (first, second) = if a < b { (a, b) } else { (b, a) };
        self.take(first);
        self.take(second);
        DirGuard {
            locks: self,
            inos: [Some(first), Some(second)],
        }
    }
}

impl Default for DirLocks {
    fn default() -> Self {
        DirLocks::new()
    }
}

impl Drop for DirGuard<'_> {
    fn drop(&mut self) {
        for ino in self.inos.iter().rev().flatten() {
            self.locks.give(*ino);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn one_holder_per_directory() {
        let locks = Arc::new(DirLocks::new());
        let inside = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let (locks, inside) = (locks.clone(), inside.clone());
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        let _g = if i % 2 == 0 {
                            locks.lock_two(7, 7 + 64)
                        } else {
                            locks.lock_two(7 + 64, 7)
                        };
                        assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0);
                        inside.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }
}
