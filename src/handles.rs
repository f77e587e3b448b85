//! Open files and directory streams: the handles the kernel holds numbers
//! of, and what each one is open on.

use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use nix::fcntl::OFlag;
use parking_lot::{Mutex, RwLock};

use crate::readdir::Entry;
use crate::resolve::Node;
use crate::sys::{Errno, Result};

#[derive(Debug)]
pub struct FileHandle {
    pub node: Arc<Node>,
    pub(crate) file: RwLock<Arc<File>>,
    /// The node's copy-up generation the backing file belongs to.
    pub(crate) generation: AtomicU64,
    pub writable: bool,
    pub(crate) flags: OFlag,
    /// Id of the branch the backing file is on.
    pub(crate) branch: AtomicU32,
}

impl FileHandle {
    pub fn file(&self) -> Arc<File> {
        self.file.read().clone()
    }
}

/// An open directory: a snapshot of the merged listing, taken at the first
/// read and again at each rewind, so offsets stay valid while it is open.
pub struct DirHandle {
    pub node: Arc<Node>,
    pub(crate) entries: Mutex<Arc<Vec<Entry>>>,
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

/// Every open handle, by number.
#[derive(Default)]
pub struct Handles {
    files: Mutex<HashMap<u64, Arc<FileHandle>>>,
    dirs: Mutex<HashMap<u64, Arc<DirHandle>>>,
    next: AtomicU64,
}

impl Handles {
    fn number(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// A new handle on `file`, the backing file of `node` on branch `branch`.
    pub fn add_file(&self, node: Arc<Node>, file: File, flags: OFlag, branch: u32) -> Opened {
        let fh = self.number();
        let file = Arc::new(file);
        let writable = flags & OFlag::O_ACCMODE != OFlag::O_RDONLY;
        let generation = node.generation.load(Ordering::Acquire);
        let h = FileHandle {
            node,
            file: RwLock::new(file.clone()),
            generation: generation.into(),
            writable,
            flags,
            branch: branch.into(),
        };
        self.files.lock().insert(fh, Arc::new(h));
        Opened {
            fh,
            file,
            passthrough_ok: false,
            keep_cache: false,
        }
    }

    pub fn file(&self, fh: u64) -> Result<Arc<FileHandle>> {
        self.files.lock().get(&fh).cloned().ok_or(Errno::EBADF)
    }

    /// The handle `fh` if given, else any open handle of `node`.
    pub fn file_for(&self, node: &Node, fh: Option<u64>) -> Result<Arc<FileHandle>> {
        let files = self.files.lock();
        if let Some(h) = fh.and_then(|fh| files.get(&fh)) {
            return Ok(h.clone());
        }
        files
            .values()
            .find(|h| h.node.ino == node.ino)
            .cloned()
            .ok_or(Errno::ENOENT)
    }

    /// How many open files have their backing file on branch `id`.
    pub fn files_on(&self, id: u32) -> usize {
        self.files
            .lock()
            .values()
            .filter(|h| h.branch.load(Ordering::Relaxed) == id)
            .count()
    }

    pub fn close_file(&self, fh: u64) {
        self.files.lock().remove(&fh);
    }

    /// A new directory stream on `node`.
    pub fn add_dir(&self, node: Arc<Node>) -> u64 {
        let fh = self.number();
        let h = DirHandle {
            node,
            entries: Mutex::new(Arc::new(Vec::new())),
        };
        self.dirs.lock().insert(fh, Arc::new(h));
        fh
    }

    pub fn dir(&self, fh: u64) -> Result<Arc<DirHandle>> {
        self.dirs.lock().get(&fh).cloned().ok_or(Errno::EBADF)
    }

    pub fn close_dir(&self, fh: u64) {
        self.dirs.lock().remove(&fh);
    }
}
