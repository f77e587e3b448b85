//! The nodes: union inode numbers, where each object lives, lookup counts.
//!
//! A union inode number is allocated the first time an object is seen, keyed
//! by the (st_dev, st_ino) of its topmost instance. A copy-up adds the new
//! instance's key to the same number, so the number survives it; two hard
//! links in a branch share a key and so are one union object. Keys are kept
//! after the kernel forgets a node (numbers stay stable for the life of the
//! mount) and dropped only when the object's last name is deleted.
//!
//! The number is the object's `st_ino`; the kernel's node id is the same
//! number except after a detach (see `renumber`): the name then gets a new
//! node id for the same number, so `stat` still shows one object while the
//! kernel holds two inodes (one for the files opened before, one after).

use foldhash::{HashMap, HashMapExt};
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, RwLock};

use super::dircache::DirFds;
use super::numbers::{Numbers, ALLOCATED};
use crate::sys::{Errno, Result};
use crate::waiting;

pub const ROOT: u64 = 1;

pub type Key = (u64, u64);

/// A `Loc::generation` that matches no branch set: the location is computed
/// again at its next use (a direct change in a branch may have moved it).
pub const UNSETTLED: u64 = u64::MAX;

/// Where a union object lives now. Only the resolver writes it (see
/// resolve/mod.rs); everyone else reads copies.
#[derive(Clone, Debug)]
pub struct Loc {
    pub parent: u64,
    pub name: OsString,
    /// Branch id of the topmost instance.
    pub top: u32,
    /// Directories: ids of the branches whose instances merge into it, top first.
    pub layers: Vec<u32>,
    /// The last name is gone (the object lives on through open handles).
    pub unlinked: bool,
    /// The branch set generation `top` and `layers` were computed in.
    pub generation: u64,
    /// When an operation holding the directory lock last moved it (a tick
    /// of `InodeTable::moves`): a lookup whose scan started before that
    /// may have seen the old state and must not write it back.
    pub moved: u64,
}

/// One at a time: a copy-up of an object is done by one request; others
/// wait for it, or are told it is under way.
#[derive(Debug, Default)]
pub struct OneAtATime {
    busy: Mutex<bool>,
    freed: Condvar,
}

/// The turn of the one request doing it; given back when dropped.
pub struct Turn<'a>(&'a OneAtATime);

impl OneAtATime {
    /// Take the turn; when it is someone else's, wait for it on a thread
    /// that may wait (EINTR if the request is interrupted meanwhile), else
    /// answer EINPROGRESS at once.
    pub fn enter(&self) -> Result<Turn<'_>> {
        let mut busy = self.busy.lock();
        while *busy {
            if !waiting::may_wait() {
                return Err(Errno::EINPROGRESS);
            }
            waiting::check()?;
            self.freed.wait_for(&mut busy, waiting::SLICE);
        }
        *busy = true;
        Ok(Turn(self))
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        *self.0.busy.lock() = false;
        self.0.freed.notify_all();
    }
}

#[derive(Debug)]
pub struct Node {
    /// The kernel's node id.
    pub ino: u64,
    /// The object's number, its `st_ino` (see the module's comment).
    pub number: u64,
    /// `S_IFMT` bits.
    pub kind: u32,
    pub(super) loc: RwLock<Loc>,
    lookups: AtomicU64,
    /// Copy-ups of this object, one at a time.
    pub(crate) copying: OneAtATime,
    /// Bumped by every copy-up, so handles opened before it re-point.
    pub(crate) generation: AtomicU64,
    keys: Mutex<Vec<Key>>,
    /// Other names of a hard-linked object, as (parent ino, name).
    pub(super) aliases: Mutex<Vec<(u64, OsString)>>,
    /// Directories: fds on their instances (see dirs.rs).
    pub(super) dirfds: Mutex<DirFds>,
    /// Handles open for writing through the mount: the kernel knows of
    /// their writes, which reach the branch as another process's.
    pub(crate) writers: AtomicU32,
    /// Directories: lookups served in them (they are watched once used).
    pub(super) used: AtomicU32,
}

impl Node {
    /// Whether `key` is one of this object's instances.
    pub fn has_key(&self, key: Key) -> bool {
        self.keys.lock().contains(&key)
    }

    pub fn is_dir(&self) -> bool {
        self.kind == libc::S_IFDIR
    }

    pub fn loc(&self) -> Loc {
        self.loc.read().clone()
    }

    /// The directory and name the object is known by.
    pub fn parent_name(&self) -> (u64, OsString) {
        let l = self.loc.read();
        (l.parent, l.name.clone())
    }

    /// The last name is gone (the object lives on through open handles).
    pub fn is_unlinked(&self) -> bool {
        self.loc.read().unlinked
    }

    /// The other names of a hard-linked object.
    pub fn aliases(&self) -> Vec<(u64, OsString)> {
        self.aliases.lock().clone()
    }
}

#[derive(Debug)]
pub struct InodeTable {
    nodes: RwLock<HashMap<u64, Arc<Node>>>,
    /// Instance key -> object number.
    keys: Mutex<HashMap<Key, u64>>,
    /// Object number -> node id, for the numbers whose node id differs.
    renumbered: Mutex<HashMap<u64, u64>>,
    /// How an instance's number is derived (see numbers.rs).
    pub(super) numbers: RwLock<Numbers>,
    /// The next allocated number or node id (above every derived one).
    next: AtomicU64,
    /// Ticks of location changes made under directory locks (see `Loc::moved`).
    moves: AtomicU64,
}

impl InodeTable {
    pub fn new(root_key: Key, root_layers: Vec<u32>, numbers: Numbers) -> InodeTable {
        let top = root_layers.first().copied().unwrap_or(0);
        let root = Arc::new(Node {
            ino: ROOT,
            number: ROOT,
            kind: libc::S_IFDIR,
            loc: RwLock::new(Loc {
                parent: ROOT,
                name: OsString::new(),
                top,
                layers: root_layers,
                unlinked: false,
                generation: 0,
                moved: 0,
            }),
            lookups: AtomicU64::new(1),
            copying: OneAtATime::default(),
            generation: AtomicU64::new(0),
            keys: Mutex::new(vec![root_key]),
            aliases: Mutex::new(Vec::new()),
            dirfds: Mutex::new(DirFds::default()),
            writers: AtomicU32::new(0),
            used: AtomicU32::new(0),
        });
        let mut keys = HashMap::new();
        keys.insert(root_key, ROOT);
        InodeTable {
            nodes: RwLock::new({
                let mut m = HashMap::new();
                m.insert(ROOT, root);
                m
            }),
            keys: Mutex::new(keys),
            renumbered: Mutex::new(HashMap::new()),
            numbers: RwLock::new(numbers),
            next: AtomicU64::new(ALLOCATED),
            moves: AtomicU64::new(0),
        }
    }

    pub fn get(&self, ino: u64) -> Result<Arc<Node>> {
        self.nodes.read().get(&ino).cloned().ok_or(Errno::ESTALE)
    }

    /// The node id of object number `number`.
    fn node_id(&self, number: u64) -> u64 {
        self.renumbered
            .lock()
            .get(&number)
            .copied()
            .unwrap_or(number)
    }

    /// The union inode number for an instance key: derived on first sight
    /// (numbers.rs; the index read there is no work for the key map's lock),
    /// else allocated.
    pub fn ino_for(&self, key: Key) -> u64 {
        if let Some(&n) = self.keys.lock().get(&key) {
            return n;
        }
        // The root's number is its own.
        let derived = self.numbers.read().of(key).filter(|&n| n != ROOT);
        *self
            .keys
            .lock()
            .entry(key)
            .or_insert_with(|| derived.unwrap_or_else(|| self.next.fetch_add(1, Ordering::Relaxed)))
    }

    /// Union inode numbers for many instance keys.
    pub fn inos_for(&self, keys: impl Iterator<Item = Key>) -> Vec<u64> {
        keys.map(|key| self.ino_for(key)).collect()
    }

    /// The node an instance key names, if the kernel knows it.
    pub fn node_for(&self, key: Key) -> Option<Arc<Node>> {
        let number = *self.keys.lock().get(&key)?;
        let id = self.node_id(number);
        self.nodes.read().get(&id).cloned()
    }

    /// Record a name the kernel now knows (a lookup or a create): returns the
    /// node, with one more lookup reference.
    /// The tick a scan starting now records (see `Loc::moved`).
    pub(super) fn seen(&self) -> u64 {
        self.moves.load(Ordering::Acquire)
    }

    /// A new tick for a location change made under a directory lock.
    pub(super) fn tick(&self) -> u64 {
        self.moves.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// The node for `key`, made or refreshed with `loc` from a scan that
    /// began at tick `seen` (`u64::MAX`: made under the directory lock).
    pub(super) fn found(&self, key: Key, kind: u32, loc: Loc, seen: u64) -> Arc<Node> {
        let mut number = self.ino_for(key);
        let mut id = self.node_id(number);
        let mut nodes = self.nodes.write();
        if let Some(node) = nodes.get(&id) {
            // An object whose last name is gone keeps no key: one with this
            // key is a new object on the st_ino the branch reused (an
            // O_TMPFILE node kept its key, and is this one).
            let gone = node.is_unlinked() && !node.has_key(key);
            if node.kind == kind && !gone {
                let node = node.clone();
                // Counted under the table lock, so a racing forget cannot drop it.
                node.lookups.fetch_add(1, Ordering::Relaxed);
                drop(nodes);
                self.refresh(&node, loc, seen);
                return node;
            }
            if node.kind == kind {
                // The kernel may still hold the old node: the new object
                // keeps the number (its st_ino) on a node id of its own.
                id = self.next.fetch_add(1, Ordering::Relaxed);
                self.renumbered.lock().insert(number, id);
            } else {
                // The key was reused by the branch for an object of another type.
                number = self.next.fetch_add(1, Ordering::Relaxed);
                id = number;
                self.keys.lock().insert(key, number);
            }
        }
        // A renumbered object's new node takes all its keys (see `renumber`).
        let keys = match id == number {
            true => vec![key],
            false => {
                let map = self.keys.lock();
                map.iter()
                    .filter(|(_, n)| **n == number)
                    .map(|(k, _)| *k)
                    .collect()
            }
        };
        let node = Arc::new(Node {
            ino: id,
            number,
            kind,
            loc: RwLock::new(loc),
            lookups: AtomicU64::new(1),
            copying: OneAtATime::default(),
            generation: AtomicU64::new(0),
            keys: Mutex::new(keys),
            aliases: Mutex::new(Vec::new()),
            dirfds: Mutex::new(DirFds::default()),
            writers: AtomicU32::new(0),
            used: AtomicU32::new(0),
        });
        nodes.insert(id, node.clone());
        node
    }

    /// `node` gives its object number to a node id not yet used: the next
    /// lookup of its names makes that node, with the same `st_ino`; `node`
    /// keeps none of the object's keys.
    pub(super) fn renumber(&self, node: &Node) {
        node.keys.lock().clear();
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.renumbered.lock().insert(node.number, id);
    }

    /// A fresh lookup of a known node: its location may have changed; a hard
    /// link seen under a second name becomes an alias.
    fn refresh(&self, node: &Node, mut new: Loc, seen: u64) {
        let mut loc = node.loc.write();
        if loc.moved > seen {
            // Moved after the scan began: what it saw may be gone.
            return;
        }
        new.moved = loc.moved;
        let same_name = loc.parent == new.parent && loc.name == new.name;
        if !same_name && !loc.unlinked && !node.is_dir() {
            let mut aliases = node.aliases.lock();
            if !aliases
                .iter()
                .any(|(p, n)| *p == new.parent && *n == new.name)
            {
                aliases.push((new.parent, new.name.clone()));
            }
            // The location stays the first name's (where a copy-up of it
            // put the object: the other name's instance in its branch may
            // be the old copy).
            return;
        }
        *loc = new;
    }

    /// Another key for an existing object (its copy-up).
    pub(super) fn add_key(&self, node: &Node, key: Key) {
        self.keys.lock().insert(key, node.number);
        node.keys.lock().push(key);
    }

    /// The object's last name is gone: its keys may be reused by the branch.
    pub(super) fn drop_keys(&self, node: &Node) {
        let keys = std::mem::take(&mut *node.keys.lock());
        if keys.is_empty() {
            return;
        }
        let mut map = self.keys.lock();
        for k in keys {
            if map.get(&k) == Some(&node.number) {
                map.remove(&k);
            }
        }
        let mut renumbered = self.renumbered.lock();
        if renumbered.get(&node.number) == Some(&node.ino) {
            renumbered.remove(&node.number);
        }
    }

    /// Drop `n` lookup references; the node when that was its last.
    pub(super) fn forget(&self, ino: u64, n: u64) -> Option<Arc<Node>> {
        if ino == ROOT {
            return None;
        }
        let mut nodes = self.nodes.write();
        let node = nodes.get(&ino)?;
        let left = node.lookups.load(Ordering::Relaxed).saturating_sub(n);
        node.lookups.store(left, Ordering::Relaxed);
        if left == 0 {
            return nodes.remove(&ino);
        }
        None
    }

    /// Every node the kernel knows.
    pub(super) fn all(&self) -> Vec<Arc<Node>> {
        self.nodes.read().values().cloned().collect()
    }

    /// Every (ino, parent, name) the table knows, for cache invalidation.
    pub fn known_names(&self) -> Vec<(u64, u64, OsString)> {
        self.nodes
            .read()
            .values()
            .filter(|n| n.ino != ROOT)
            .map(|n| {
                let loc = n.loc.read();
                (n.ino, loc.parent, loc.name.clone())
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.nodes.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The path of a node relative to the union root ("" for the root).
    pub fn path(&self, ino: u64) -> Result<PathBuf> {
        let mut parts = Vec::new();
        let mut cur = ino;
        while cur != ROOT {
            let node = self.get(cur)?;
            let loc = node.loc.read();
            parts.push(loc.name.clone());
            cur = loc.parent;
            if parts.len() > libc::PATH_MAX as usize {
                return Err(Errno::ELOOP);
            }
        }
        Ok(parts.iter().rev().collect())
    }
}

/// Names the kernel was told do not exist (negative entries, cached for a
/// time): a branch change must invalidate them like any other name. The set
/// is bounded; when it is full of live entries, misses are answered uncached.
#[derive(Debug)]
pub struct Negatives {
    names: Mutex<HashMap<(u64, OsString), Instant>>,
    cap: usize,
}

impl Negatives {
    pub fn new(cap: usize) -> Negatives {
        Negatives {
            names: Mutex::new(HashMap::new()),
            cap,
        }
    }

    /// Record that `parent/name` is absent for `ttl`; false when there is no
    /// room (the miss must then not be cached).
    pub fn admit(&self, parent: u64, name: &std::ffi::OsStr, ttl: Duration) -> bool {
        let mut names = self.names.lock();
        let now = Instant::now();
        if names.len() >= self.cap {
            names.retain(|_, until| *until > now);
            if names.len() >= self.cap {
                return false;
            }
        }
        names.insert((parent, name.to_os_string()), now + ttl);
        true
    }

    /// Every name the kernel may still hold as absent; the set is emptied.
    pub fn take(&self) -> Vec<(u64, OsString)> {
        let now = Instant::now();
        std::mem::take(&mut *self.names.lock())
            .into_iter()
            .filter(|(_, until)| *until > now)
            .map(|(k, _)| k)
            .collect()
    }
}
