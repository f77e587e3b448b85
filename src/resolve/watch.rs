//! Following changes made directly in the branches (`udba=notify`): every
//! branch directory instance of a union directory the kernel knows carries a
//! fanotify mark, and each event, unless the daemon made the change itself,
//! updates the daemon's caches at once and queues what the kernel must
//! forget. Requests drain the event queue before they use a cache
//! ([`Resolver::sync`]), so the daemon never answers from a cache a direct
//! change has made stale; the kernel is told by the watcher thread (see
//! lib.rs), which holds no directory lock while it notifies.
//!
//! The marks are bounded (`max_watches`); a directory that is not wholly
//! watched, or lies in a branch that cannot be watched (a network or FUSE
//! filesystem), is served as in `udba=reval`: short kernel timeouts, and
//! daemon caches checked against the directories' change times.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use foldhash::{HashMap, HashSet};
use parking_lot::Mutex;

use super::dircache::DirFds;
use super::node::{Node, ROOT};
use super::Resolver;
use crate::branch::BranchSet;
use crate::options::Udba;
use crate::sys::fanotify::{self, Event, Fanotify, Handle};
use crate::sys::{self, Dir, Errno};
use crate::whiteout;

/// Lookups in a directory before it is watched: a path walked once (a/b/c
/// to reach one file) costs no marks; until its marks are in place a
/// directory is served as with reval.
const WATCH_AFTER: u32 = 2;

/// Notifications queued before they are given up for one "forget everything".
const PENDING_CAP: usize = 65536;
/// The event buffer: fanotify hands out whole events, up to this much at a time.
const EVENT_BUF: usize = 64 * 1024;

/// A marked directory instance: union directory `ino` in branch `branch`.
/// The mark pins the directory's inode (no fd is held: those are bounded by
/// `dir_cache`); it is removed when the kernel forgets the union directory.
#[derive(Debug, Clone, Copy)]
struct Mark {
    ino: u64,
    branch: u32,
}

#[derive(Debug, Default)]
struct Marks {
    by_handle: HashMap<Handle, Mark>,
    /// (union directory, branch id) -> its mark.
    by_node: HashMap<(u64, u32), Handle>,
    /// Marked instances per union directory.
    count: HashMap<u64, usize>,
    /// Branches whose filesystem refused a mark (said once in the log).
    refused: HashSet<u32>,
    /// Instances waiting for the watcher thread to mark them.
    to_mark: Vec<(u64, u32, Arc<Dir>)>,
    queued: HashSet<(u64, u32)>,
    full_said: bool,
}

/// What the kernel must be told; repeated changes to one name coalesce.
#[derive(Debug, Default)]
pub struct Pending {
    /// Names to expire, as (parent, name).
    pub entries: HashSet<(u64, OsString)>,
    /// Inodes whose attributes to drop; with `true`, their cached data too.
    pub inodes: HashMap<u64, bool>,
    /// Directories whose every known name to expire (their layers changed).
    pub children: HashSet<u64>,
    /// Expire everything the kernel may hold (an overflow, or too much queued).
    pub all: bool,
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        !self.all && self.entries.is_empty() && self.inodes.is_empty() && self.children.is_empty()
    }

    fn len(&self) -> usize {
        self.entries.len() + self.inodes.len() + self.children.len()
    }
}

/// `unionctl --stats`: how the branches are followed .
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stats {
    /// notify, reval or none.
    pub udba: String,
    /// Branch directories watched now.
    pub watched: u64,
    /// Branches served as with reval (not watchable).
    pub unwatched: Vec<PathBuf>,
    pub events: u64,
    /// Events of the daemon's own changes, ignored.
    pub own_events: u64,
    pub overflows: u64,
    /// Kernel entries expired and inodes whose attributes were dropped.
    pub expired_entries: u64,
    pub dropped_inodes: u64,
}

/// What the watcher has seen and done, for `unionctl --stats`.
#[derive(Debug, Default)]
pub struct WatchStats {
    pub events: AtomicU64,
    /// Events of the daemon's own changes (ignored).
    pub own: AtomicU64,
    pub overflows: AtomicU64,
    pub expired_entries: AtomicU64,
    pub dropped_inodes: AtomicU64,
}

#[derive(Debug)]
pub struct Watch {
    fan: Fanotify,
    pid: i32,
    max: usize,
    marks: Mutex<Marks>,
    /// Held while the event queue is read and applied.
    reading: Mutex<Vec<u8>>,
    pending: Mutex<Pending>,
    /// Wakes the watcher thread when a request queued notifications.
    wake: OwnedFd,
    pub stats: WatchStats,
}

impl Watch {
    pub fn new(max: usize) -> sys::Result<Watch> {
        Ok(Watch {
            fan: Fanotify::new()?,
            pid: std::process::id() as i32,
            max,
            marks: Mutex::new(Marks::default()),
            reading: Mutex::new(vec![0; EVENT_BUF]),
            pending: Mutex::new(Pending::default()),
            wake: nix::sys::eventfd::EventFd::from_flags(
                nix::sys::eventfd::EfdFlags::EFD_CLOEXEC
                    | nix::sys::eventfd::EfdFlags::EFD_NONBLOCK,
            )?
            .into(),
            stats: WatchStats::default(),
        })
    }

    fn queue(&self, f: impl FnOnce(&mut Pending)) {
        let mut p = self.pending.lock();
        if !p.all {
            f(&mut p);
            if p.len() > PENDING_CAP {
                *p = Pending {
                    all: true,
                    ..Pending::default()
                };
            }
        }
        drop(p);
        self.poke();
    }

    /// Wake the watcher thread.
    fn poke(&self) {
        let _ = nix::unistd::write(&self.wake, &1u64.to_ne_bytes());
    }

    /// Wait until events or queued notifications may be there (or `max` passed).
    pub fn wait(&self, max: Duration) {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let mut fds = [
            PollFd::new(self.fan.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.wake.as_fd(), PollFlags::POLLIN),
        ];
        let ms =
            PollTimeout::try_from(max.as_millis().min(60_000) as u32).unwrap_or(PollTimeout::MAX);
        let _ = poll(&mut fds, ms);
        let mut b = [0u8; 8];
        let _ = nix::unistd::read(&self.wake, &mut b);
    }

    /// What the kernel must be told now; the queue is emptied.
    pub fn take(&self) -> Pending {
        std::mem::take(&mut *self.pending.lock())
    }
}

impl Resolver {
    /// At the start: the root is always in use (its marks are put by the
    /// watcher thread), and branches that cannot be watched are said.
    pub(super) fn watch_root(&self) {
        if self.watch.is_none() {
            return;
        }
        let bs = self.branches();
        let Ok(root) = self.inodes.get(ROOT) else {
            return;
        };
        for b in bs.branches.iter() {
            self.watch(&bs, &root, b.id, &b.root_fd());
        }
    }

    /// A lookup in directory `node` (instances in `layers`): watch it once
    /// it is used, and again when it gained an instance.
    pub fn watch_used(&self, bs: &BranchSet, node: &Node, layers: &[usize]) {
        if self.watch.is_none() || node.used.fetch_add(1, Ordering::Relaxed) + 1 < WATCH_AFTER {
            return;
        }
        if self.exact_in(node.ino, layers.len()) {
            return;
        }
        for &idx in layers {
            if let Ok(fd) = self.layer_dir(bs, node, idx) {
                self.watch(bs, node, bs.get(idx).id, &fd);
            }
        }
    }

    /// Watch the instance `fd` of union directory `node` in branch `id`
    /// (once; nothing when the mode or the bounds say no).
    fn watch(&self, bs: &BranchSet, node: &Node, id: u32, fd: &Arc<Dir>) {
        let Some(w) = &self.watch else { return };
        let mut m = w.marks.lock();
        let key = (node.ino, id);
        if m.by_node.contains_key(&key) || m.refused.contains(&id) || !m.queued.insert(key) {
            return;
        }
        if let Some(fs) = bs.index_of(id).and_then(|i| bs.get(i).remote) {
            m.queued.remove(&key);
            refuse(
                bs,
                &mut m,
                id,
                format!("{fs} changes elsewhere give no local events"),
            );
            return;
        }
        // Marked by the watcher thread, not on the request's time; until
        // then the directory is served as with reval (see `exact_in`).
        m.to_mark.push((node.ino, id, fd.clone()));
        drop(m);
        w.poke();
    }

    /// A directory the union just made (its only instance in branch `idx`):
    /// watched at once, since names are about to be made in it (a tar, a
    /// build) and each gets the long timeouts only in a watched directory.
    pub(crate) fn watch_new(&self, bs: &BranchSet, node: &Node, idx: usize) {
        if self.watch.is_none() {
            return;
        }
        let dir = self
            .parent_in(bs, node, idx)
            .and_then(|(parent, name)| sys::open_dir(&parent, std::path::Path::new(&name)));
        if let Ok(dir) = dir {
            self.mark(bs, node.ino, bs.get(idx).id, &dir);
        }
    }

    /// Mark the directory instances requests asked to watch (the watcher thread).
    pub fn mark_queued(&self) {
        let Some(w) = &self.watch else { return };
        let queued = std::mem::take(&mut w.marks.lock().to_mark);
        let bs = self.branches();
        for (ino, id, fd) in queued {
            w.marks.lock().queued.remove(&(ino, id));
            if self.inodes.get(ino).is_ok() {
                self.mark(&bs, ino, id, &fd);
            }
        }
    }

    /// Put a mark on `fd`, the instance of union directory `ino` in branch `id`.
    fn mark(&self, bs: &BranchSet, ino: u64, id: u32, fd: &Dir) {
        let Some(w) = &self.watch else { return };
        {
            let mut m = w.marks.lock();
            if m.by_node.contains_key(&(ino, id)) || m.refused.contains(&id) {
                return;
            }
            if m.by_handle.len() >= w.max {
                if !m.full_said {
                    m.full_said = true;
                    log::warn!(
                        "{} branch directories watched (max_watches): further ones are served as with udba=reval",
                        w.max
                    );
                }
                return;
            }
        }
        let handle = match fanotify::handle_of(fd) {
            Ok(h) => h,
            Err(e) => {
                let why = format!("no file handles: {}", e.desc());
                return refuse(bs, &mut w.marks.lock(), id, why);
            }
        };
        match w.fan.watch(fd) {
            Ok(()) => {}
            Err(e @ (Errno::ENODEV | Errno::EXDEV | Errno::EOPNOTSUPP | Errno::EINVAL)) => {
                let why = format!("fanotify: {}", e.desc());
                return refuse(bs, &mut w.marks.lock(), id, why);
            }
            Err(e) => {
                log::debug!("directory {ino} not watched: {}", e.desc());
                return;
            }
        }
        let mut m = w.marks.lock();
        if let Some(old) = m.by_handle.insert(handle.clone(), Mark { ino, branch: id }) {
            // The same directory under another union directory (a hard to
            // reach case: a directory renamed in its branch): the newer wins.
            m.by_node.remove(&(old.ino, old.branch));
            dec(&mut m.count, old.ino);
        }
        m.by_node.insert((ino, id), handle);
        *m.count.entry(ino).or_insert(0) += 1;
        drop(m);
        // What was learnt of it before the mark (its opacity, its index) may
        // be stale already: learnt again.
        if let Ok(node) = self.inodes.get(ino) {
            self.unsettle(&node);
        }
    }

    /// What `unionctl --stats` shows.
    pub fn stats(&self) -> Stats {
        let udba = match (self.udba, &self.watch) {
            (Udba::Notify, Some(_)) => "notify",
            (Udba::None, _) => "none",
            _ => "reval",
        };
        let mut out = Stats {
            udba: udba.into(),
            ..Default::default()
        };
        if let Some(w) = &self.watch {
            let m = w.marks.lock();
            out.watched = m.by_handle.len() as u64;
            let bs = self.branches();
            out.unwatched = bs
                .branches
                .iter()
                .filter(|b| m.refused.contains(&b.id))
                .map(|b| b.path.clone())
                .collect();
            let s = &w.stats;
            out.events = s.events.load(Ordering::Relaxed);
            out.own_events = s.own.load(Ordering::Relaxed);
            out.overflows = s.overflows.load(Ordering::Relaxed);
            out.expired_entries = s.expired_entries.load(Ordering::Relaxed);
            out.dropped_inodes = s.dropped_inodes.load(Ordering::Relaxed);
        }
        out
    }

    /// Whether the daemon follows every change of directory `ino`'s names
    /// (so the kernel may keep them long).
    pub fn exact(&self, bs: &BranchSet, ino: u64) -> bool {
        if self.udba != Udba::Notify {
            return self.udba == Udba::None;
        }
        let Ok(node) = self.inodes.get(ino) else {
            return false;
        };
        match self.dir_layers(bs, &node) {
            Ok(layers) => self.exact_in(ino, layers.len()),
            Err(_) => false,
        }
    }

    /// [`Resolver::exact`] for a directory known to have `layers` instances.
    pub(crate) fn exact_in(&self, ino: u64, layers: usize) -> bool {
        match (self.udba, &self.watch) {
            (Udba::None, _) => true,
            (Udba::Notify, Some(w)) => {
                w.marks.lock().count.get(&ino).copied().unwrap_or(0) >= layers
            }
            _ => false,
        }
    }

    /// The kernel forgot directory `node`: its marks go.
    pub(crate) fn unwatch(&self, node: &Node) {
        let Some(w) = &self.watch else { return };
        let branches: Vec<u32> = {
            let mut m = w.marks.lock();
            if m.count.remove(&node.ino).is_none() {
                return;
            }
            let keys: Vec<(u64, u32)> = m
                .by_node
                .keys()
                .filter(|k| k.0 == node.ino)
                .copied()
                .collect();
            for k in &keys {
                if let Some(h) = m.by_node.remove(k) {
                    m.by_handle.remove(&h);
                }
            }
            keys.into_iter().map(|k| k.1).collect()
        };
        let bs = self.branches();
        for id in branches {
            let Some(idx) = bs.index_of(id) else { continue };
            // The instance as the union last knew it (renamed in its branch
            // since: its mark stays until the directory is removed).
            let dir = match self.parent_in(&bs, node, idx) {
                Ok((parent, name)) => sys::open_dir(&parent, std::path::Path::new(&name)),
                Err(e) => Err(e),
            };
            match dir.and_then(|d| w.fan.unwatch(&d)) {
                Ok(()) => {}
                Err(e) => log::debug!("mark of directory {} left: {}", node.ino, e.desc()),
            }
        }
    }

    /// Apply every change event queued so far: the daemon's caches are
    /// current with the branches when this returns.
    pub fn sync(&self) {
        let Some(w) = &self.watch else { return };
        let mut buf = w.reading.lock();
        loop {
            let n = match w.fan.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => n,
                Err(e) => {
                    log::warn!("reading branch events: {}", e.desc());
                    return;
                }
            };
            for ev in fanotify::events(&buf[..n]) {
                self.apply(w, &ev);
            }
        }
    }

    fn apply(&self, w: &Watch, ev: &Event) {
        w.stats.events.fetch_add(1, Ordering::Relaxed);
        if ev.overflow() {
            w.stats.overflows.fetch_add(1, Ordering::Relaxed);
            log::warn!("branch event queue overflowed: every cache dropped");
            self.drop_all();
            w.queue(|p| p.all = true);
            return;
        }
        if ev.pid == w.pid {
            w.stats.own.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let Some(Mark { ino, branch }) = w.marks.lock().by_handle.get(ev.dir).copied() else {
            return;
        };
        let Ok(node) = self.inodes.get(ino) else {
            return;
        };
        if ev.on_self() {
            if ev.mask & (libc::FAN_DELETE_SELF | libc::FAN_MOVE_SELF) != 0 {
                // Its entry in the parent's instance told the rest.
                let mut m = w.marks.lock();
                if let Some(h) = m.by_node.remove(&(ino, branch)) {
                    m.by_handle.remove(&h);
                    dec(&mut m.count, ino);
                }
            }
            if ev.mask & libc::FAN_ATTRIB != 0 {
                w.queue(|p| {
                    p.inodes.entry(ino).or_insert(false);
                });
            }
            return;
        }
        let entry_change = ev.mask
            & (libc::FAN_CREATE | libc::FAN_DELETE | libc::FAN_MOVED_FROM | libc::FAN_MOVED_TO)
            != 0;
        if ev.name == whiteout::OPAQUE {
            // The directory itself merges other layers now.
            self.unsettle(&node);
            let (parent, name) = node.parent_name();
            w.queue(|p| {
                if ino != ROOT {
                    p.entries.insert((parent, name));
                }
                p.children.insert(ino);
                p.inodes.insert(ino, true);
            });
            return;
        }
        let name = whiteout::hidden_name(ev.name).unwrap_or(ev.name);
        if entry_change {
            drop_index(&node);
            if ev.is_dir() {
                if ev.mask & libc::FAN_MOVED_FROM != 0 {
                    // What was cached below it may be somewhere else now.
                    self.dir_moved();
                }
                for child in self.unsettle_child(&node, name) {
                    // Its listing merges other instances now.
                    w.queue(|p| {
                        p.inodes.insert(child, true);
                    });
                }
            }
            // The entry, and the directory's listing the kernel may keep
            // (a name it never looked up has no entry to expire).
            w.queue(|p| {
                p.entries.insert((ino, name.to_os_string()));
                p.inodes.insert(ino, true);
            });
        } else if whiteout::is_reserved(ev.name) {
            // A whiteout's attributes mean nothing to the union.
        } else if let Some(child) = self.child_in(&node, branch, name) {
            let data = ev.mask & libc::FAN_MODIFY != 0;
            if data && child.writers.load(Ordering::Acquire) > 0 {
                // Written through the mount (passthrough writes carry the
                // writer's pid, not ours): the kernel knows.
                w.stats.own.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let ino = child.ino;
            w.queue(|p| {
                *p.inodes.entry(ino).or_insert(false) |= data;
            });
        }
    }

    /// The node the kernel knows for `name` in the instance of directory
    /// `parent` in branch `branch`.
    fn child_in(&self, parent: &Node, branch: u32, name: &OsStr) -> Option<Arc<Node>> {
        let bs = self.branches();
        let idx = bs.index_of(branch)?;
        let dir = self.layer_dir(&bs, parent, idx).ok()?;
        let st = sys::stat_at(&dir, name).ok()?;
        self.inodes.node_for((bs.get(idx).dev, st.st_ino))
    }

    /// Directory `name` of `parent` gained or lost an instance in some
    /// branch: the node it names is located again at its next use.
    /// Returns the directories it names.
    fn unsettle_child(&self, parent: &Node, name: &OsStr) -> Vec<u64> {
        let bs = self.branches();
        let Ok(scan) = self.scan_in(&bs, parent, name, true) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for i in &scan.instances {
            if let Some(n) = self.node_of(&bs, i) {
                if n.is_dir() {
                    self.unsettle(&n);
                    out.push(n.ino);
                }
            }
        }
        out
    }

    /// Forget where `node` lives and what its directory instances are.
    fn unsettle(&self, node: &Node) {
        if node.ino != ROOT {
            node.loc.write().generation = super::node::UNSETTLED;
        }
        *node.dirfds.lock() = DirFds::default();
    }

    /// An event was lost: nothing cached about the branches is trusted.
    pub(crate) fn drop_all(&self) {
        self.dir_moved();
        for node in self.inodes.all() {
            self.unsettle(&node);
        }
    }
}

/// Branch `id` cannot be watched: said once, and served as with reval.
fn refuse(bs: &BranchSet, m: &mut Marks, id: u32, why: String) {
    if !m.refused.insert(id) {
        return;
    }
    let path = bs
        .index_of(id)
        .map(|i| bs.get(i).path.display().to_string())
        .unwrap_or_default();
    log::warn!("branch {path}: not watched ({why}): served as with udba=reval");
}

fn drop_index(node: &Node) {
    let mut c = node.dirfds.lock();
    c.index = None;
    c.no_index = false;
    c.lookups = 0;
}

fn dec(count: &mut HashMap<u64, usize>, ino: u64) {
    if let Some(c) = count.get_mut(&ino) {
        *c -= 1;
        if *c == 0 {
            count.remove(&ino);
        }
    }
}
