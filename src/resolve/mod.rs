//! The resolver: the one layer that knows where union objects live. It owns
//! the branch set, the nodes and their locations, name resolution across
//! branches (whiteouts, opaque directories), the directory fd cache and name
//! index, and the per-directory locks. The operation families (create,
//! delete, rename, copy-up, files, attributes) ask it where things are and
//! tell it what they changed; none of them writes a location itself.

mod dircache;
mod dirs;
mod locks;
mod nameindex;
mod node;
mod numbers;
mod scan;
mod watch;

use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{RwLock, RwLockReadGuard};

use crate::branch::BranchSet;
use crate::options::Udba;
use crate::sys::{self, Errno, FileStat, Result};

pub use dirs::open_layers_at;
use locks::DirGuard;
pub use nameindex::NameIndex;
pub use node::{InodeTable, Loc, Negatives, Node, ROOT};
pub use numbers::Numbers;
pub use scan::{scan, scan_path, Instance, Scan};
pub use watch::{Pending, Stats, Watch};

/// Attributes of a union object: the topmost instance's, with the union inode number.
#[derive(Clone, Copy, Debug)]
pub struct Attr {
    /// The kernel's node id (the object's `st_ino` is `st.st_ino`).
    pub ino: u64,
    pub st: FileStat,
}

impl Attr {
    /// The attributes `st` of an instance of `node`, as the union shows them.
    pub fn of(node: &Node, mut st: FileStat) -> Attr {
        st.st_ino = node.number;
        Attr { ino: node.ino, st }
    }
}

/// What a change answers when the branch set it was planned on is no longer
/// the union's (a branch change came between): the request starts again on
/// the new set (see fs.rs). No filesystem call answers this errno.
pub const BRANCHES_CHANGED: Errno = Errno::ECHRNG;

/// While held, the branch set stays the one a change was planned on: a
/// branch change waits for it (a change is a few syscalls long).
pub struct Steady<'a> {
    _held: RwLockReadGuard<'a, Arc<BranchSet>>,
}

/// Directory locks taken on a steady branch set (released in that order:
/// the directories, then the branch set).
pub struct Locked<'a> {
    _dirs: DirGuard<'a>,
    _steady: Steady<'a>,
}

/// At most this many negative entries are handed to the kernel at a time
/// (each costs a name in memory until it expires).
const NEGATIVE_CAP: usize = 65536;

pub struct Resolver {
    branches: RwLock<Arc<BranchSet>>,
    pub inodes: InodeTable,
    /// Names the kernel caches as absent.
    pub negatives: Negatives,
    /// One lock per directory for changes to its names.
    locks: locks::DirLocks,
    /// How long directory fds are reused, and how many at most (see dirs.rs).
    cache_ttl: Duration,
    cache_max: usize,
    /// Bumped when a directory moves: cached directory fds are dropped.
    dir_epoch: AtomicU64,
    /// How direct changes to the branches are followed, and the watch that
    /// follows them (udba=notify).
    udba: Udba,
    pub watch: Option<Watch>,
}

/// Branch ids to indices in `bs` (branches no longer in the set drop out).
fn indices(bs: &BranchSet, ids: &[u32]) -> Vec<usize> {
    ids.iter().filter_map(|&id| bs.index_of(id)).collect()
}

fn ids(bs: &BranchSet, idx: &[usize]) -> Vec<u32> {
    idx.iter().map(|&i| bs.get(i).id).collect()
}

impl Resolver {
    /// A resolver over `bs`; up to `cache_max` directory fds are reused for
    /// `cache_ttl` (zero: never); with `udba=notify`, up to `max_watches`
    /// branch directories are watched.
    pub fn new(
        bs: BranchSet,
        cache_ttl: Duration,
        cache_max: usize,
        udba: Udba,
        max_watches: usize,
    ) -> Result<Resolver> {
        if bs.is_empty() {
            return Err(Errno::EINVAL);
        }
        let top = bs.get(0);
        let st = sys::fstat(std::os::fd::AsFd::as_fd(top.root()))?;
        let layers = bs.branches.iter().map(|b| b.id).collect();
        let watch = match udba {
            Udba::Notify => match Watch::new(max_watches) {
                Ok(w) => Some(w),
                Err(e) => {
                    log::warn!(
                        "branches not watched (fanotify: {}): served as with udba=reval",
                        e.desc()
                    );
                    None
                }
            },
            _ => None,
        };
        match (udba, &watch) {
            (Udba::Notify, Some(_)) => log::info!(
                "direct changes to the branches followed by fanotify (udba=notify, up to {max_watches} directories watched)"
            ),
            (Udba::None, _) => log::info!(
                "direct changes to the branches are not followed (udba=none): the branches must not change"
            ),
            _ => log::info!(
                "direct changes to the branches seen within a second (udba=reval)"
            ),
        }
        let resolver = Resolver {
            inodes: InodeTable::new((top.dev, st.st_ino), layers, Numbers::new(&bs)),
            branches: RwLock::new(Arc::new(bs)),
            negatives: Negatives::new(NEGATIVE_CAP),
            locks: locks::DirLocks::new(),
            cache_ttl,
            cache_max,
            dir_epoch: AtomicU64::new(0),
            udba,
            watch,
        };
        resolver.watch_root();
        Ok(resolver)
    }

    /// The branch set a request works on from start to end. (Recursive:
    /// never waits behind a branch change while a `Steady` is held.)
    pub fn branches(&self) -> Arc<BranchSet> {
        self.branches.read_recursive().clone()
    }

    /// Swap in a new branch set once `ready` agrees, with no change to any
    /// branch under way meanwhile: what `ready` sees of open files and
    /// commits stays true until the next request runs on `bs`.
    pub fn set_branches<E>(
        &self,
        bs: Arc<BranchSet>,
        ready: impl FnOnce() -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let mut current = self.branches.write();
        ready()?;
        self.inodes.numbers.write().update(&bs);
        *current = bs;
        Ok(())
    }

    /// Hold the branch set `bs` steady for a change planned on it;
    /// BRANCHES_CHANGED if it is no longer the union's.
    pub fn steady(&self, bs: &BranchSet) -> Result<Steady<'_>> {
        let current = self.branches.read_recursive();
        if current.generation != bs.generation {
            return Err(BRANCHES_CHANGED);
        }
        Ok(Steady { _held: current })
    }

    pub fn node(&self, ino: u64) -> Result<Arc<Node>> {
        self.inodes.get(ino)
    }

    pub fn forget(&self, ino: u64, n: u64) {
        if let Some(node) = self.inodes.forget(ino, n) {
            if node.is_dir() {
                self.unwatch(&node);
            }
        }
    }

    /// Lock directory `ino` for a change to its names planned on `bs`.
    pub fn lock(&self, bs: &BranchSet, ino: u64) -> Result<Locked<'_>> {
        let steady = self.steady(bs)?;
        Ok(Locked {
            _dirs: self.locks.lock(ino),
            _steady: steady,
        })
    }

    /// Lock two directories (a rename's), in a fixed order.
    pub fn lock_two(&self, bs: &BranchSet, a: u64, b: u64) -> Result<Locked<'_>> {
        let steady = self.steady(bs)?;
        Ok(Locked {
            _dirs: self.locks.lock_two(a, b),
            _steady: steady,
        })
    }

    /// The layers of a directory node as indices (the root is in every branch).
    pub fn dir_layers(&self, bs: &BranchSet, node: &Node) -> Result<Vec<usize>> {
        if !node.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        Ok(self.located(bs, node)?.1)
    }

    /// The index of the branch holding a node's topmost instance.
    pub fn top_idx(&self, bs: &BranchSet, node: &Node) -> Result<usize> {
        Ok(self.located(bs, node)?.0)
    }

    /// Where `node` lives in `bs`: its topmost branch and (for a directory)
    /// its layers, as indices. A location computed against another branch set
    /// (the set changed since) is resolved again, parents first.
    pub fn located(&self, bs: &BranchSet, node: &Node) -> Result<(usize, Vec<usize>)> {
        if node.ino == ROOT {
            return Ok((0, (0..bs.len()).collect()));
        }
        let loc = node.loc();
        if loc.generation == bs.generation {
            if let Some(top) = bs.index_of(loc.top) {
                return Ok((top, indices(bs, &loc.layers)));
            }
        }
        if loc.unlinked {
            return Err(Errno::ESTALE);
        }
        let parent = self.inodes.get(loc.parent)?;
        let (_, players) = self.located(bs, &parent)?;
        let scan = self.scan_at(bs, &parent, &players, &loc.name, false)?;
        let top = scan.top().ok_or(Errno::ENOENT)?;
        let layers = scan.layers();
        if bs.generation == self.branches().generation {
            {
                let mut l = node.loc.write();
                l.top = bs.get(top.idx).id;
                l.layers = ids(bs, &layers);
                l.generation = bs.generation;
            }
            // The object now lives (at the top) in that instance too.
            let key = (bs.get(top.idx).dev, top.stat.st_ino);
            if !node.has_key(key) {
                self.inodes.add_key(node, key);
            }
        }
        Ok((top.idx, layers))
    }

    /// Scan `name` in the directory node `parent`, whose instances are in `layers`.
    pub fn scan_at(
        &self,
        bs: &BranchSet,
        parent: &Node,
        layers: &[usize],
        name: &OsStr,
        full: bool,
    ) -> Result<Scan> {
        let seen = self.inodes.seen();
        self.watch_used(bs, parent, layers);
        let index = self.name_index(bs, parent, layers)?;
        let mut scan = scan::scan(
            layers,
            name,
            full,
            |idx| self.layer_dir(bs, parent, idx),
            |idx| index.as_ref().and_then(|i| i.hint(idx, name)),
        )?;
        scan.seen = seen;
        Ok(scan)
    }

    /// Scan `name` in the directory node `parent`.
    pub fn scan_in(&self, bs: &BranchSet, parent: &Node, name: &OsStr, full: bool) -> Result<Scan> {
        let layers = self.dir_layers(bs, parent)?;
        self.scan_at(bs, parent, &layers, name, full)
    }

    /// Register what a scan found as a node the kernel knows (one lookup reference).
    pub fn remember(
        &self,
        bs: &BranchSet,
        parent: u64,
        name: &OsStr,
        scan: &Scan,
    ) -> Result<(Arc<Node>, Attr)> {
        let top = scan.top().ok_or(Errno::ENOENT)?;
        let b = bs.get(top.idx);
        if let Some(known) = self.inodes.node_for((b.dev, top.stat.st_ino)) {
            self.moved_directly(bs, &known, top.idx, parent, name);
        }
        let loc = Loc {
            parent,
            name: name.to_os_string(),
            top: b.id,
            layers: ids(bs, &scan.layers()),
            unlinked: false,
            generation: bs.generation,
            moved: 0,
        };
        let node = self
            .inodes
            .found((b.dev, top.stat.st_ino), top.kind(), loc, scan.seen);
        // The directory fds the scan opened serve the next lookups inside it.
        for i in scan.instances.iter() {
            if let Some(fd) = &i.dir {
                self.cache_dir(bs, &node, bs.get(i.idx).id, fd.clone());
            }
        }
        let attr = Attr::of(&node, top.stat);
        Ok((node, attr))
    }

    /// A known file found under another name: a second hard link, or the
    /// same file renamed directly in its branch. Renamed (its name no longer
    /// holds it), the new name becomes its name.
    fn moved_directly(&self, bs: &BranchSet, node: &Node, idx: usize, parent: u64, name: &OsStr) {
        if node.is_dir() {
            return;
        }
        let (p, n) = node.parent_name();
        if p == parent && n == name {
            return;
        }
        let held = self
            .inodes
            .get(p)
            .and_then(|pn| self.layer_dir(bs, &pn, idx))
            .and_then(|d| sys::stat_at(&d, &n))
            .is_ok_and(|st| node.has_key((bs.get(idx).dev, st.st_ino)));
        if !held {
            let mut loc = node.loc.write();
            if loc.parent == p && loc.name == n {
                loc.moved = self.inodes.tick();
                loc.parent = parent;
                loc.name = name.to_os_string();
            }
        }
    }

    // What the operation families changed. These are the only writers of
    // where a node lives.

    /// An entry just made in branch `idx` (its attributes: `st`): its node,
    /// with one lookup reference.
    pub fn created(
        &self,
        bs: &BranchSet,
        idx: usize,
        parent: u64,
        name: &OsStr,
        st: FileStat,
    ) -> (Arc<Node>, Attr) {
        let kind = st.st_mode & libc::S_IFMT;
        let b = bs.get(idx);
        let loc = Loc {
            parent,
            name: name.to_os_string(),
            top: b.id,
            layers: if kind == libc::S_IFDIR {
                vec![b.id]
            } else {
                Vec::new()
            },
            unlinked: false,
            generation: bs.generation,
            moved: 0,
        };
        let node = self.inodes.found((b.dev, st.st_ino), kind, loc, u64::MAX);
        if kind == libc::S_IFDIR {
            self.watch_new(bs, &node, idx);
        }
        let attr = Attr::of(&node, st);
        (node, attr)
    }

    /// A file with no name (O_TMPFILE) made in directory `parent`: unlinked
    /// until a link names it (its key stays, so that link finds this node).
    /// Its attributes say one link: the kernel takes that one away itself.
    pub fn created_unnamed(
        &self,
        bs: &BranchSet,
        idx: usize,
        parent: u64,
        mut st: FileStat,
    ) -> (Arc<Node>, Attr) {
        st.st_nlink = 1;
        let (node, attr) = self.created(bs, idx, parent, OsStr::new(""), st);
        node.loc.write().unlinked = true;
        (node, attr)
    }

    /// `parent/name` is a new hard link to `node`.
    pub fn linked(&self, node: &Node, parent: u64, name: &OsStr) {
        node.aliases.lock().push((parent, name.to_os_string()));
    }

    /// A file's topmost instance is now in branch `target` (a copy-up; its
    /// attributes there: `st`). Handles opened before it re-point.
    pub fn copied_up(&self, node: &Node, bs: &BranchSet, target: usize, st: &FileStat) {
        let b = bs.get(target);
        {
            let mut loc = node.loc.write();
            loc.moved = self.inodes.tick();
            loc.top = b.id;
            loc.generation = bs.generation;
            if node.is_dir() && !loc.layers.contains(&b.id) {
                let mut idx = indices(bs, &loc.layers);
                idx.push(target);
                idx.sort_unstable();
                loc.layers = ids(bs, &idx);
            }
        }
        self.inodes.add_key(node, (b.dev, st.st_ino));
        self.keep_number(node, b, st.st_ino);
        node.generation.fetch_add(1, Ordering::Release);
    }

    /// `node`, hard-linked in the branch it was copied up from, is now `ino`
    /// in branch `b`: its names there that no lookup has met yet join the
    /// copy when they are looked up (see `Union::lookup`), in this mount or
    /// a later one.
    pub fn copied_up_linked(&self, node: &Node, b: &crate::branch::Branch, ino: u64) {
        if node.number >= numbers::ALLOCATED {
            return;
        }
        let res = self
            .inodes
            .path(node.ino)
            .and_then(|path| b.record_copy(node.number, ino, &path));
        if let Err(e) = res {
            log::warn!(
                "{}: a copied-up hard link is not recorded ({e}): its other names keep the old data",
                b.path.display()
            );
        }
    }

    /// The copy `ino` in branch `b` of `node` keeps the node's number after
    /// a remount too (see numbers.rs). A number allocated for this mount
    /// only is not recorded.
    fn keep_number(&self, node: &Node, b: &crate::branch::Branch, ino: u64) {
        if node.number >= numbers::ALLOCATED || node.number == ROOT {
            return;
        }
        if self.inodes.numbers.read().of((b.dev, ino)) == Some(node.number) {
            return;
        }
        if let Err(e) = b.record_origin(ino, node.number) {
            log::warn!(
                "{}: the number of a copied-up object is not recorded ({e}): it changes at the next mount",
                b.path.display()
            );
        }
    }

    /// A directory gained an instance in branch `target` (made opaque there:
    /// the layers below it no longer merge).
    pub fn dir_gained(
        &self,
        node: &Node,
        bs: &BranchSet,
        target: usize,
        st: &FileStat,
        opaque: bool,
    ) {
        {
            let mut loc = node.loc.write();
            loc.moved = self.inodes.tick();
            let mut idx = indices(bs, &loc.layers);
            if opaque {
                idx.retain(|&i| i < target);
            }
            idx.push(target);
            idx.sort_unstable();
            idx.dedup();
            loc.layers = ids(bs, &idx);
            loc.top = bs.get(idx[0]).id;
            loc.generation = bs.generation;
        }
        self.inodes.add_key(node, (bs.get(target).dev, st.st_ino));
        if indices(bs, &node.loc.read().layers).first() == Some(&target) {
            self.keep_number(node, bs.get(target), st.st_ino);
        }
    }

    /// A directory is now whole in branch `up` alone (a rename made it so).
    pub fn made_whole(&self, node: &Node, bs: &BranchSet, up: usize) {
        let mut loc = node.loc.write();
        loc.moved = self.inodes.tick();
        loc.layers = vec![bs.get(up).id];
    }

    /// `node` is now `newparent/newname`, wholly in branch `up`.
    pub fn renamed(&self, node: &Node, bs: &BranchSet, newparent: u64, newname: &OsStr, up: usize) {
        let upid = bs.get(up).id;
        let mut loc = node.loc.write();
        loc.moved = self.inodes.tick();
        loc.parent = newparent;
        loc.name = newname.to_os_string();
        loc.top = upid;
        loc.generation = bs.generation;
        if node.is_dir() {
            loc.layers = vec![upid];
        }
    }

    /// The node the kernel knows for the instance `top` found by a scan.
    pub fn node_of(&self, bs: &BranchSet, top: &Instance) -> Option<Arc<Node>> {
        self.inodes.node_for((bs.get(top.idx).dev, top.stat.st_ino))
    }

    /// The name found by a scan (its topmost instance `top`) is gone from
    /// the union: update the node it named, if the kernel knows one.
    pub fn name_gone(&self, bs: &BranchSet, top: &Instance, parent: u64, name: &OsStr) {
        let key = (bs.get(top.idx).dev, top.stat.st_ino);
        if let Some(node) = self.inodes.node_for(key) {
            self.unlinked(&node, parent, name);
        }
    }

    /// `node` gives up its names (the next lookup makes a new node for
    /// them): it lives on only for the handles open on it.
    pub fn detached(&self, node: &Node) {
        {
            let mut loc = node.loc.write();
            loc.moved = self.inodes.tick();
            loc.unlinked = true;
        }
        node.aliases.lock().clear();
        // The new node is the same object to the user: the same st_ino.
        self.inodes.renumber(node);
    }

    /// `parent/name` no longer names `node`.
    pub fn unlinked(&self, node: &Node, parent: u64, name: &OsStr) {
        let mut loc = node.loc.write();
        loc.moved = self.inodes.tick();
        let mut aliases = node.aliases.lock();
        if loc.parent == parent && loc.name == name {
            if let Some((p, n)) = aliases.pop() {
                loc.parent = p;
                loc.name = n;
                // Where that name's instance is: found again at next use.
                loc.generation = node::UNSETTLED;
            } else {
                loc.unlinked = true;
                drop(aliases);
                drop(loc);
                self.inodes.drop_keys(node);
            }
        } else {
            aliases.retain(|(p, n)| !(*p == parent && n == name));
        }
    }
}
