//! Open files and directory streams: the handles the kernel holds numbers
//! of, and what each one is open on.

use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use parking_lot::{Condvar, Mutex, RwLock};

use crate::readdir::Entry;
use crate::resolve::Node;
use crate::sys::{Dir, Errno, Result};
use crate::waiting;

#[derive(Debug)]
pub struct FileHandle {
    pub node: Arc<Node>,
    pub(crate) file: RwLock<Arc<File>>,
    /// The node's copy-up generation the backing file belongs to.
    pub(crate) generation: AtomicU64,
    /// The generation of the branch set the backing file was chosen in: a
    /// read-only handle re-points to a copy-up only within it (after a
    /// branch change, it keeps what its branch holds).
    pub(crate) branches: AtomicU64,
    pub writable: bool,
    pub(crate) flags: OFlag,
    /// Id of the branch the backing file is on.
    pub(crate) branch: AtomicU32,
    /// The kernel does this handle's I/O on its backing file itself (FUSE
    /// passthrough): it can never be re-pointed.
    pub(crate) passthrough: AtomicBool,
    /// The file is a clone of the lower file in branch `branch`, not yet
    /// named (see clone.rs): shared by the node's read-only opens.
    pub(crate) clone: bool,
}

impl FileHandle {
    pub fn file(&self) -> Arc<File> {
        self.file.read().clone()
    }

    /// Move a read-only handle to `file`, the copy of copy-up generation
    /// `generation` on branch `branch`.
    pub(crate) fn repoint(&self, file: File, generation: u64, branch: u32) {
        *self.file.write() = Arc::new(file);
        self.generation.store(generation, Ordering::Release);
        self.branch.store(branch, Ordering::Relaxed);
    }

    /// Id of the branch the backing file is on.
    pub fn on_branch(&self) -> u32 {
        self.branch.load(Ordering::Relaxed)
    }
}

/// An open directory: a snapshot of the merged listing, taken at the first
/// read and again at each rewind, so offsets stay valid while it is open.
pub struct DirHandle {
    pub node: Arc<Node>,
    pub(crate) entries: Mutex<Arc<Vec<Entry>>>,
    /// The topmost instance when opened: what `fstat` reports once the
    /// directory is removed or replaced while open.
    top: Arc<Dir>,
}

/// What `open` answers: the handle number, its backing file, and whether the
/// kernel may do the I/O on that file itself (FUSE passthrough): only when
/// the file cannot be copied up under the handle.
pub struct Opened {
    pub fh: u64,
    pub file: Arc<File>,
    pub passthrough_ok: bool,
    /// The backing file is on a read-only branch: its data cannot change
    /// through the union, so the kernel may keep its page cache.
    pub keep_cache: bool,
}

#[derive(Default)]
struct Files {
    by_fh: HashMap<u64, Arc<FileHandle>>,
    /// The handles open on each node.
    by_node: HashMap<u64, Vec<u64>>,
    /// Nodes pinned to the branch (by id) their open files are on: a branch
    /// change froze it with --force while they were open for writing. Until
    /// the last handle on that branch closes, every open of the node uses
    /// that one copy and none is copied up.
    pinned: HashMap<u64, u32>,
    /// A branch change is waiting for the files open for writing on the
    /// branches it freezes to close; new opens for writing wait for it.
    draining: bool,
    /// Opens for writing admitted and not yet finished (see `admit_writer`).
    entering: usize,
}

impl Files {
    /// The handles with their backing file on one of the branches `ids`
    /// (only those open for writing: `writers`).
    fn on<'a>(
        &'a self,
        ids: &'a [u32],
        writers: bool,
    ) -> impl Iterator<Item = &'a Arc<FileHandle>> {
        self.by_fh
            .values()
            .filter(move |h| ids.contains(&h.on_branch()) && (h.writable || !writers))
    }

    fn of(&self, ino: u64) -> impl Iterator<Item = &Arc<FileHandle>> {
        self.by_node
            .get(&ino)
            .into_iter()
            .flatten()
            .filter_map(|fh| self.by_fh.get(fh))
    }
}

/// New opens for writing are held until this is dropped (see `drain`).
pub struct Drained<'a>(&'a Handles);

impl Drop for Drained<'_> {
    fn drop(&mut self) {
        self.0.files.lock().draining = false;
        self.0.closed.notify_all();
    }
}

/// An open for writing on its way to a handle (see `admit_writer`).
pub struct Admitted<'a>(&'a Handles);

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        let mut files = self.0.files.lock();
        files.entering -= 1;
        if files.draining {
            self.0.closed.notify_all();
        }
    }
}

/// Every open handle, by number.
#[derive(Default)]
pub struct Handles {
    files: Mutex<Files>,
    /// Signalled when a file handle closes and when a drain ends.
    closed: Condvar,
    dirs: Mutex<HashMap<u64, Arc<DirHandle>>>,
    next: AtomicU64,
}

impl Handles {
    fn number(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// A new handle on `file`, the backing file of `node` on branch `branch`
    /// of the branch set of generation `branches`.
    pub fn add_file(
        &self,
        node: Arc<Node>,
        file: File,
        flags: OFlag,
        branch: u32,
        branches: u64,
    ) -> Opened {
        self.add(node, Arc::new(file), flags, branch, branches, false)
    }

    /// A new read-only handle on `clone`, the clone of `node`'s file in
    /// branch `branch` (see clone.rs).
    pub fn add_clone(
        &self,
        node: Arc<Node>,
        clone: Arc<File>,
        branch: u32,
        branches: u64,
    ) -> Opened {
        self.add(node, clone, OFlag::O_RDONLY, branch, branches, true)
    }

    fn add(
        &self,
        node: Arc<Node>,
        file: Arc<File>,
        flags: OFlag,
        branch: u32,
        branches: u64,
        clone: bool,
    ) -> Opened {
        let fh = self.number();
        let writable = flags & OFlag::O_ACCMODE != OFlag::O_RDONLY;
        if writable {
            node.writers.fetch_add(1, Ordering::AcqRel);
        }
        let generation = node.generation.load(Ordering::Acquire);
        let ino = node.ino;
        let h = FileHandle {
            node,
            file: RwLock::new(file.clone()),
            generation: generation.into(),
            branches: branches.into(),
            writable,
            flags,
            branch: branch.into(),
            passthrough: AtomicBool::new(false),
            clone,
        };
        let mut files = self.files.lock();
        files.by_fh.insert(fh, Arc::new(h));
        files.by_node.entry(ino).or_default().push(fh);
        Opened {
            fh,
            file,
            passthrough_ok: false,
            keep_cache: false,
        }
    }

    /// Whether a handle of `ino` holds a clone of its lower file.
    pub fn has_clone(&self, ino: u64) -> bool {
        self.files.lock().of(ino).any(|h| h.clone)
    }

    /// The clone of `ino`'s lower file in branch `branch` that its open
    /// handles share, if there is one.
    pub fn clone_of(&self, ino: u64, branch: u32) -> Option<Arc<File>> {
        self.files
            .lock()
            .of(ino)
            .find(|h| h.clone && h.on_branch() == branch)
            .map(|h| h.file())
    }

    pub fn file(&self, fh: u64) -> Result<Arc<FileHandle>> {
        self.files
            .lock()
            .by_fh
            .get(&fh)
            .cloned()
            .ok_or(Errno::EBADF)
    }

    /// The handle `fh` if given, else any open handle of `node`.
    pub fn file_for(&self, node: &Node, fh: Option<u64>) -> Result<Arc<FileHandle>> {
        let files = self.files.lock();
        if let Some(h) = fh.and_then(|fh| files.by_fh.get(&fh)) {
            return Ok(h.clone());
        }
        let any = files.of(node.ino).next().cloned();
        any.ok_or(Errno::ENOENT)
    }

    /// The open files with their backing file on one of the branches `ids`
    /// (only those open for writing: `writers`).
    pub fn files_on(&self, ids: &[u32], writers: bool) -> Vec<Arc<FileHandle>> {
        self.files.lock().on(ids, writers).cloned().collect()
    }

    /// Hold new opens for writing (see `admit_writer`) and wait, `within`
    /// at most, for the files open for writing on branches `ids` to close;
    /// the hold ends when the answer is dropped. A snapshot taken while
    /// writers open and close their files one line at a time finds its
    /// moment this way instead of being refused again and again.
    pub fn drain(&self, ids: &[u32], within: Duration) -> Drained<'_> {
        let deadline = Instant::now() + within;
        let mut files = self.files.lock();
        files.draining = true;
        let busy = |f: &Files| f.entering > 0 || f.on(ids, true).next().is_some();
        while busy(&files) && !self.closed.wait_until(&mut files, deadline).timed_out() {}
        Drained(self)
    }

    /// Whether a new open for writing may go on: not while a drain is under
    /// way. On a thread that may wait, waits for it to end (EINTR if the
    /// request is interrupted); elsewhere answers EINPROGRESS (the request
    /// is run again on a thread that may wait).
    /// Hold the answer until the open has its handle (or failed): a drain
    /// also waits for the opens admitted before it.
    pub fn admit_writer(&self) -> Result<Admitted<'_>> {
        let mut files = self.files.lock();
        while files.draining {
            if !waiting::may_wait() {
                return Err(Errno::EINPROGRESS);
            }
            waiting::check()?;
            self.closed.wait_for(&mut files, waiting::SLICE);
        }
        files.entering += 1;
        Ok(Admitted(self))
    }

    /// The nodes pinned to a branch.
    pub fn pinned_files(&self) -> Vec<u64> {
        self.files.lock().pinned.keys().copied().collect()
    }

    /// The open files of `ino`.
    pub fn files_of(&self, ino: u64) -> Vec<Arc<FileHandle>> {
        self.files.lock().of(ino).cloned().collect()
    }

    /// Pin every file open for writing on one of the branches `ids` to its
    /// branch (see `Files::pinned`). One lock for finding and pinning: a
    /// handle closing meanwhile would leave a pin nothing ever removes.
    pub fn pin_writers(&self, ids: &[u32]) {
        let mut files = self.files.lock();
        let pins: Vec<(u64, u32)> = files
            .on(ids, true)
            .map(|h| (h.node.ino, h.on_branch()))
            .collect();
        files.pinned.extend(pins);
    }

    /// The branch `ino` is pinned to, if it is.
    pub fn pinned(&self, ino: u64) -> Option<u32> {
        self.files.lock().pinned.get(&ino).copied()
    }

    /// Whether a handle of `ino` opened before the branch set of generation
    /// `branches` keeps a file on another branch than `top` (it reads what
    /// its branch held: a later open must not share the kernel inode).
    pub fn older_elsewhere(&self, ino: u64, branches: u64, top: u32) -> bool {
        self.files
            .lock()
            .of(ino)
            .any(|h| h.branches.load(Ordering::Relaxed) != branches && h.on_branch() != top)
    }

    /// The kernel serves handle `fh` itself from now on.
    pub fn passed_through(&self, fh: u64) {
        if let Some(h) = self.files.lock().by_fh.get(&fh) {
            h.passthrough.store(true, Ordering::Release);
        }
    }

    /// Whether a handle of `ino` served by the kernel itself has its file on
    /// another branch than `top` (that kernel inode cannot take an open of
    /// the file on `top`: a later open must get a node of its own).
    pub fn passthrough_elsewhere(&self, ino: u64, top: u32) -> bool {
        self.files
            .lock()
            .of(ino)
            .any(|h| h.passthrough.load(Ordering::Acquire) && h.on_branch() != top)
    }

    pub fn close_file(&self, fh: u64) {
        let mut files = self.files.lock();
        let Some(h) = files.by_fh.remove(&fh) else {
            return;
        };
        if h.writable {
            h.node.writers.fetch_sub(1, Ordering::AcqRel);
        }
        let ino = h.node.ino;
        if let Some(list) = files.by_node.get_mut(&ino) {
            list.retain(|&f| f != fh);
            if list.is_empty() {
                files.by_node.remove(&ino);
            }
        }
        if let Some(&id) = files.pinned.get(&ino) {
            if !files.of(ino).any(|h| h.on_branch() == id) {
                files.pinned.remove(&ino);
            }
        }
        if files.draining {
            self.closed.notify_all();
        }
    }

    /// A new directory stream on `node`, whose topmost instance is `top`.
    pub fn add_dir(&self, node: Arc<Node>, top: Arc<Dir>) -> u64 {
        let fh = self.number();
        let h = DirHandle {
            node,
            entries: Mutex::new(Arc::new(Vec::new())),
            top,
        };
        self.dirs.lock().insert(fh, Arc::new(h));
        fh
    }

    pub fn dir(&self, fh: u64) -> Result<Arc<DirHandle>> {
        self.dirs.lock().get(&fh).cloned().ok_or(Errno::EBADF)
    }

    /// The instance an open stream of directory `ino` holds, if one is open.
    pub fn dir_instance(&self, ino: u64) -> Option<Arc<Dir>> {
        let dirs = self.dirs.lock();
        let h = dirs.values().find(|h| h.node.ino == ino)?;
        Some(h.top.clone())
    }

    pub fn close_dir(&self, fh: u64) {
        self.dirs.lock().remove(&fh);
    }
}
