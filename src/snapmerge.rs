//! snapmerge: fold snapshot branches back into a base branch.
//!
//! Each snapshot is applied in turn, oldest first: new and changed entries
//! with their metadata and xattrs, `.wh.NAME` as the deletion of NAME,
//! `.wh..wh..opq` as "this directory replaces the base's". Files are copied to
//! a temporary name in their directory and renamed into place, and deletions
//! of what is already gone change nothing, so an interrupted run, run again,
//! ends in the same state. Every path is walked fd-relative: a symlink in the
//! base or a snapshot is copied or removed as a symlink, never followed.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::OFlag;

use crate::copyup::{copy_data, copy_meta, make_node};
use crate::sys::{self, Dir, Errno, FileStat};
use crate::tree::remove_tree;
use crate::whiteout::{self, OPAQUE};

/// Temporary names in base directories: `.wh..wh.` names are never shown by
/// a union, and a later run removes leftovers.
const TEMP_PREFIX: &str = ".wh..wh.snapmerge.";
static NEXT_TEMP: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub added: u64,
    pub changed: u64,
    pub deleted: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Added,
    Changed,
    Deleted,
}

impl Change {
    pub fn letter(self) -> char {
        match self {
            Change::Added => 'A',
            Change::Changed => 'C',
            Change::Deleted => 'D',
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("{0}: {1}")]
    Open(PathBuf, Errno),
    #[error("/{}: a mount point: snapmerge never crosses into another filesystem", .path.display())]
    MountPoint { path: PathBuf },
    #[error("/{}: {errno}", .path.display())]
    Apply { path: PathBuf, errno: Errno },
    #[error("{0}: a whiteout of '.' or '..' is not allowed; nothing was merged")]
    DotWhiteout(PathBuf),
}

fn open_root(p: &Path) -> Result<Dir, MergeError> {
    Dir::open_root(p).map_err(|e| MergeError::Open(p.to_path_buf(), e))
}

fn kind(st: &FileStat) -> u32 {
    st.st_mode & libc::S_IFMT
}

/// One merge run. `on_change` hears of every change (made, or with
/// `dry_run`, that would be made); `on_entry` of every snapshot entry visited.
pub struct Merge<'a> {
    pub dry_run: bool,
    pub on_change: &'a mut dyn FnMut(Change, &Path),
    pub on_entry: &'a mut dyn FnMut(),
    summary: Summary,
    /// Hard links: snapshot (dev, ino) -> its path in the base.
    links: HashMap<(u64, u64), PathBuf>,
    base: Option<Dir>,
}

impl<'a> Merge<'a> {
    pub fn new(
        dry_run: bool,
        on_change: &'a mut dyn FnMut(Change, &Path),
        on_entry: &'a mut dyn FnMut(),
    ) -> Self {
        Merge {
            dry_run,
            on_change,
            on_entry,
            summary: Summary::default(),
            links: HashMap::new(),
            base: None,
        }
    }

    /// Apply `snaps` (oldest first) to `base`.
    pub fn run(mut self, base: &Path, snaps: &[PathBuf]) -> Result<Summary, MergeError> {
        let b = open_root(base)?;
        for snap in snaps {
            let s = open_root(snap)?;
            self.links.clear();
            self.base = Some(
                b.try_clone()
                    .map_err(|e| MergeError::Open(base.to_path_buf(), e))?,
            );
            self.dir(&b, &s, Path::new(""))
                .map_err(|(path, errno)| match errno {
                    Errno::EXDEV | Errno::EBUSY => MergeError::MountPoint { path },
                    errno => MergeError::Apply { path, errno },
                })?;
        }
        Ok(self.summary)
    }

    fn note(&mut self, c: Change, path: &Path) {
        match c {
            Change::Added => self.summary.added += 1,
            Change::Changed => self.summary.changed += 1,
            Change::Deleted => self.summary.deleted += 1,
        }
        (self.on_change)(c, path);
    }

    /// Apply the snapshot directory `sdir` to the base directory `bdir` (`rel` below the roots).
    fn dir(&mut self, bdir: &Dir, sdir: &Dir, rel: &Path) -> Result<(), (PathBuf, Errno)> {
        let at = |e: Errno| (rel.to_path_buf(), e);
        let entries = sys::read_dir(sdir).map_err(at)?;
        let names: HashSet<&OsStr> = entries.iter().map(|e| e.name.as_os_str()).collect();
        if !self.dry_run {
            // Leftovers of an interrupted run.
            for e in sys::read_dir(bdir).map_err(at)? {
                if e.name.as_bytes().starts_with(TEMP_PREFIX.as_bytes()) {
                    remove_tree(bdir, &e.name).map_err(at)?;
                }
            }
        }
        if names.contains(OsStr::new(OPAQUE)) {
            // This directory replaces the base's: what the snapshot lacks goes.
            for e in sys::read_dir(bdir).map_err(at)? {
                if !names.contains(e.name.as_os_str()) && !whiteout::is_reserved(&e.name) {
                    self.delete(bdir, &e.name, &rel.join(&e.name))?;
                }
            }
        }
        for e in &entries {
            (self.on_entry)();
            let name = e.name.as_os_str();
            let path = rel.join(name);
            if name == OPAQUE || (rel.as_os_str().is_empty() && whiteout::is_daemon_dir(name)) {
                continue;
            }
            if let Some(hidden) = whiteout::hidden_name(name) {
                self.delete(bdir, hidden, &rel.join(hidden))?;
                continue;
            }
            if whiteout::is_reserved(name) {
                continue;
            }
            self.entry(bdir, sdir, name, &path)?;
        }
        Ok(())
    }

    fn delete(&mut self, bdir: &Dir, name: &OsStr, path: &Path) -> Result<(), (PathBuf, Errno)> {
        match sys::exists_at(bdir, name) {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(e) => return Err((path.to_path_buf(), e)),
        }
        if !self.dry_run {
            remove_tree(bdir, name).map_err(|e| (path.to_path_buf(), e))?;
        }
        self.note(Change::Deleted, path);
        Ok(())
    }

    fn entry(
        &mut self,
        bdir: &Dir,
        sdir: &Dir,
        name: &OsStr,
        path: &Path,
    ) -> Result<(), (PathBuf, Errno)> {
        let at = |e: Errno| (path.to_path_buf(), e);
        // One object of the snapshot, whatever its name holds meanwhile.
        let sfd = sys::open_at(sdir, name, OFlag::O_PATH, 0).map_err(at)?;
        let st = sys::fstat(sfd.as_fd()).map_err(at)?;
        let old = match sys::stat_at(bdir, name) {
            Ok(b) => Some(b),
            Err(Errno::ENOENT) => None,
            Err(e) => return Err(at(e)),
        };
        if kind(&st) == libc::S_IFDIR {
            let change = match old {
                Some(o) if kind(&o) == libc::S_IFDIR => {
                    (!same_meta(&o, &st)).then_some(Change::Changed)
                }
                Some(_) => {
                    if !self.dry_run {
                        remove_tree(bdir, name).map_err(at)?;
                    }
                    Some(Change::Changed)
                }
                None => Some(Change::Added),
            };
            if self.dry_run {
                if let Some(c) = change {
                    self.note(c, path);
                }
                if old.is_some_and(|o| kind(&o) == libc::S_IFDIR) {
                    let bsub = sys::open_dir_here(bdir, name).map_err(at)?;
                    let ssub = sys::open_dir_here(sdir, name).map_err(at)?;
                    return self.dir(&bsub, &ssub, path);
                }
                return Ok(());
            }
            if change == Some(Change::Added) || old.is_some_and(|o| kind(&o) != libc::S_IFDIR) {
                match sys::mkdir_at(bdir, name, 0o700) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(at(e)),
                }
            }
            let bsub = sys::open_dir_here(bdir, name).map_err(at)?;
            let ssub = sys::open_dir_here(sdir, name).map_err(at)?;
            self.dir(&bsub, &ssub, path)?;
            // Metadata last: filling the directory changed its times.
            copy_meta(sys::Obj::fd(sfd.as_fd()), &st, bsub.as_fd()).map_err(at)?;
            if let Some(c) = change {
                self.note(c, path);
            }
            return Ok(());
        }
        if old
            .is_some_and(|o| same_meta(&o, &st) && o.st_size == st.st_size && kind(&o) == kind(&st))
        {
            // Unchanged, or applied already by an interrupted run.
            if st.st_nlink > 1 {
                self.links
                    .entry((st.st_dev, st.st_ino))
                    .or_insert_with(|| path.to_path_buf());
            }
            return Ok(());
        }
        let change = if old.is_some() {
            Change::Changed
        } else {
            Change::Added
        };
        if !self.dry_run {
            self.copy(bdir, name, path, &st, &sfd).map_err(at)?;
        }
        self.note(change, path);
        Ok(())
    }

    /// Copy a non-directory into the base: to a temporary name, then renamed
    /// over the old entry. A second name of a hard-linked file becomes a link.
    fn copy(
        &mut self,
        bdir: &Dir,
        name: &OsStr,
        path: &Path,
        st: &FileStat,
        sfd: &OwnedFd,
    ) -> sys::Result<()> {
        let tmp = OsString::from(format!(
            "{TEMP_PREFIX}{}.{}",
            std::process::id(),
            NEXT_TEMP.fetch_add(1, Ordering::Relaxed)
        ));
        let key = (st.st_dev, st.st_ino);
        let linked = match (st.st_nlink > 1, self.links.get(&key), &self.base) {
            (true, Some(first), Some(base)) => {
                let (fp, fname) = crate::view::split(first);
                let fdir = sys::open_dir(base, fp)?;
                sys::link_at(&fdir, fname, bdir, &tmp)?;
                true
            }
            _ => false,
        };
        if !linked {
            let dst = match kind(st) {
                libc::S_IFREG => {
                    let dst = sys::open_at(
                        bdir,
                        &tmp,
                        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY,
                        0o600,
                    )?;
                    let src = sys::Obj::fd(sfd.as_fd()).open(OFlag::O_RDONLY)?;
                    copy_data(src.as_fd(), dst.as_fd(), st.st_size as u64)?;
                    sys::fsync(dst.as_fd(), true)?;
                    dst
                }
                _ => {
                    // Symlinks and special files have no O_EXCL open: made in
                    // a directory of our own, where nobody can swap them
                    // before their owner and mode are set, then moved out.
                    let target = match kind(st) {
                        libc::S_IFLNK => Some(sys::readlink_obj(sfd.as_fd())?),
                        _ => None,
                    };
                    let staging = Staging::new(bdir)?;
                    let node = OsStr::new("n");
                    let fd =
                        make_node(&staging.fd, node, st.st_mode, st.st_rdev, target.as_deref())?;
                    copy_meta(sys::Obj::fd(sfd.as_fd()), st, fd.as_fd())?;
                    sys::rename_at(&staging.fd, node, bdir, &tmp, 0)?;
                    drop(staging);
                    return self.place(bdir, &tmp, name, path, st);
                }
            };
            copy_meta(sys::Obj::fd(sfd.as_fd()), st, dst.as_fd())?;
        }
        self.place(bdir, &tmp, name, path, st)
    }

    /// Rename the finished `tmp` over `name` (a directory there goes first).
    fn place(
        &mut self,
        bdir: &Dir,
        tmp: &OsStr,
        name: &OsStr,
        path: &Path,
        st: &FileStat,
    ) -> sys::Result<()> {
        if let Ok(o) = sys::stat_at(bdir, name) {
            if kind(&o) == libc::S_IFDIR {
                remove_tree(bdir, name)?;
            }
        }
        sys::rename_at(bdir, tmp, bdir, name, 0)?;
        if st.st_nlink > 1 {
            self.links
                .entry((st.st_dev, st.st_ino))
                .or_insert_with(|| path.to_path_buf());
        }
        Ok(())
    }
}

/// A directory of this process's own inside a base directory (which others
/// may write), for making what needs its metadata set before anyone can
/// reach it. Its name is a temporary one, removed by a later run if left.
struct Staging<'a> {
    dir: &'a Dir,
    name: OsString,
    fd: Dir,
}

impl<'a> Staging<'a> {
    fn new(dir: &'a Dir) -> sys::Result<Staging<'a>> {
        let name = OsString::from(format!(
            "{TEMP_PREFIX}{}.{}.d",
            std::process::id(),
            NEXT_TEMP.fetch_add(1, Ordering::Relaxed)
        ));
        sys::mkdir_at(dir, &name, 0o700)?;
        let fd = sys::open_dir_here(dir, &name)?;
        let st = sys::fstat(fd.as_fd())?;
        // Replaced by someone else's between the mkdir and the open?
        if st.st_uid != sys::geteuid() || st.st_mode & 0o077 != 0 {
            return Err(Errno::ESTALE);
        }
        Ok(Staging { dir, name, fd })
    }
}

impl Drop for Staging<'_> {
    fn drop(&mut self) {
        let _ = remove_tree(self.dir, &self.name);
    }
}

fn same_meta(a: &FileStat, b: &FileStat) -> bool {
    a.st_mode == b.st_mode
        && a.st_uid == b.st_uid
        && a.st_gid == b.st_gid
        && a.st_mtime == b.st_mtime
        && a.st_mtime_nsec == b.st_mtime_nsec
}

/// Walk the snapshots before anything is merged: count their entries (for a
/// progress bar) and refuse what no snapshot may hold (whiteouts of "." and
/// "..", which would mean "delete the directory itself").
pub fn survey(snaps: &[PathBuf]) -> Result<u64, MergeError> {
    fn walk(dir: &Dir, at: &Path) -> Result<u64, MergeError> {
        let entries = sys::read_dir(dir).map_err(|e| MergeError::Open(at.to_path_buf(), e))?;
        let mut n = entries.len() as u64;
        for e in entries {
            let path = at.join(&e.name);
            if whiteout::is_dot_whiteout(&e.name) {
                return Err(MergeError::DotWhiteout(path));
            }
            if e.kind == libc::S_IFDIR {
                let sub = sys::open_dir_here(dir, &e.name)
                    .map_err(|e| MergeError::Open(path.clone(), e))?;
                n += walk(&sub, &path)?;
            }
        }
        Ok(n)
    }
    let mut n = 0;
    for s in snaps {
        n += walk(&open_root(s)?, s)?;
    }
    Ok(n)
}
