//! Branch list parsing, validation, and the live branch set.
//!
//! `DIR[=rw|=ro]` joined by `:`, leftmost first; `\:` escapes a colon. A branch
//! without a mode is `rw` when leftmost, `ro` otherwise.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::sys::{self, Dir, Errno};
use crate::whiteout::{INDEX_DIR, WORK_DIR};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Rw,
    Ro,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            Mode::Rw => "rw",
            Mode::Ro => "ro",
        })
    }
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "rw" | "RW" => Some(Mode::Rw),
            "ro" | "RO" => Some(Mode::Ro),
            _ => None,
        }
    }
}

/// A branch as written on the command line, before it is opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BranchSpec {
    pub path: PathBuf,
    pub mode: Mode,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BranchError {
    #[error("no branches given")]
    Empty,
    #[error("empty branch in list (two ':' in a row?)")]
    EmptyItem,
    #[error("branch {0}: unknown mode '{1}' (use rw or ro)")]
    UnknownMode(String, String),
    #[error("branch {0}: {1}")]
    Unusable(String, String),
    #[error("branch {0}: not a directory")]
    NotDirectory(String),
    #[error("branch {0} is given twice")]
    Duplicate(String),
    #[error("branch {0} is nested inside branch {1}")]
    Nested(String, String),
    #[error("mount point {0}: {1}")]
    MountPoint(String, String),
    #[error("mount point {0} is inside branch {1}")]
    MountInsideBranch(String, String),
    #[error("branch {0} is inside the mount point {1}")]
    BranchInsideMount(String, String),
}

/// Parse `DIR[=MODE]:DIR[=MODE]...`. Relative paths are kept relative here;
/// [`resolve`] makes them absolute.
pub fn parse(list: &str) -> Result<Vec<BranchSpec>, BranchError> {
    let items = split_list(list);
    if items.len() == 1 && items[0].is_empty() {
        return Err(BranchError::Empty);
    }
    let mut specs = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        if item.is_empty() {
            return Err(BranchError::EmptyItem);
        }
        let (path, mode) = match item.rsplit_once('=') {
            Some((path, mode)) if !mode.contains('/') => {
                let m = Mode::parse(mode)
                    .ok_or_else(|| BranchError::UnknownMode(path.into(), mode.into()))?;
                (path.to_string(), Some(m))
            }
            _ => (item, None),
        };
        if path.is_empty() {
            return Err(BranchError::EmptyItem);
        }
        let mode = mode.unwrap_or(if i == 0 { Mode::Rw } else { Mode::Ro });
        specs.push(BranchSpec {
            path: PathBuf::from(path),
            mode,
        });
    }
    Ok(specs)
}

/// The items of a ':'-separated list in which `\:` stands for a ':'.
pub fn split_list(list: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut cur = String::new();
    let mut chars = list.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&':') => {
                cur.push(':');
                chars.next();
            }
            ':' => items.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    items.push(cur);
    items
}

/// The branch list for `specs`, as [`parse`] reads it: each `PATH=MODE`,
/// a ':' inside a path written `\:`.
pub fn format(specs: &[BranchSpec]) -> OsString {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let mut out = Vec::new();
    for (i, s) in specs.iter().enumerate() {
        if i > 0 {
            out.push(b':');
        }
        for &b in s.path.as_os_str().as_bytes() {
            if b == b':' {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.extend_from_slice(format!("={}", s.mode).as_bytes());
    }
    OsString::from_vec(out)
}

fn shown(p: &Path) -> String {
    p.display().to_string()
}

/// Make every branch path absolute and canonical, and check the rules of
/// DESIGN.md section 2 against each other and against the mount point.
pub fn resolve(
    specs: &[BranchSpec],
    mountpoint: Option<&Path>,
) -> Result<Vec<BranchSpec>, BranchError> {
    let mut out: Vec<BranchSpec> = Vec::new();
    let mut ids = std::collections::HashSet::new();
    for spec in specs {
        let canon = std::fs::canonicalize(&spec.path).map_err(|e| {
            BranchError::Unusable(shown(&spec.path), strip_os_error(&e.to_string()))
        })?;
        let meta = std::fs::metadata(&canon).map_err(|e| {
            BranchError::Unusable(shown(&spec.path), strip_os_error(&e.to_string()))
        })?;
        if !meta.is_dir() {
            return Err(BranchError::NotDirectory(shown(&spec.path)));
        }
        if !ids.insert((meta.dev(), meta.ino())) {
            return Err(BranchError::Duplicate(shown(&spec.path)));
        }
        out.push(BranchSpec {
            path: canon,
            mode: spec.mode,
        });
    }
    // Nested: a branch one of whose ancestors is a branch (a set lookup per
    // ancestor, not a comparison of every pair: 64 branches mount fast).
    let all: std::collections::HashSet<&Path> = out.iter().map(|b| b.path.as_path()).collect();
    for b in &out {
        if let Some(outer) = b.path.ancestors().skip(1).find(|a| all.contains(a)) {
            return Err(BranchError::Nested(shown(&b.path), shown(outer)));
        }
    }
    if let Some(mp) = mountpoint {
        let canon = std::fs::canonicalize(mp)
            .map_err(|e| BranchError::MountPoint(shown(mp), strip_os_error(&e.to_string())))?;
        if !canon.is_dir() {
            return Err(BranchError::MountPoint(shown(mp), "not a directory".into()));
        }
        for b in &out {
            if canon.starts_with(&b.path) {
                return Err(BranchError::MountInsideBranch(
                    shown(&canon),
                    shown(&b.path),
                ));
            }
            if b.path.starts_with(&canon) {
                return Err(BranchError::BranchInsideMount(
                    shown(&b.path),
                    shown(&canon),
                ));
            }
        }
    }
    Ok(out)
}

/// "No such file or directory (os error 2)" -> "No such file or directory".
fn strip_os_error(s: &str) -> String {
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s.to_string(),
    }
}

static NEXT_BRANCH_ID: AtomicU32 = AtomicU32::new(1);
static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);
static NEXT_TEMP: AtomicU64 = AtomicU64::new(1);

/// Why the work directory cannot be used.
#[derive(Debug)]
struct WorkError {
    errno: Errno,
    why: String,
}

/// An open branch: its root directory fd is the anchor of every path in it.
#[derive(Debug)]
pub struct Branch {
    /// Stable identity for the life of the process (indices change with unionctl).
    pub id: u32,
    pub path: PathBuf,
    pub mode: Mode,
    pub dev: u64,
    pub name_max: u64,
    /// The filesystem's type name when changes to it may come from
    /// elsewhere without a local event (a network or FUSE filesystem):
    /// such a branch is served in `udba=reval` mode.
    pub remote: Option<&'static str>,
    root: Arc<Dir>,
    work: Mutex<Option<Arc<Dir>>>,
    /// The index of copied-up objects' numbers, once there is one.
    index: Mutex<Option<Arc<Dir>>>,
}

impl Branch {
    /// Open the branch (a writable one's work directory too, see
    /// [`Branch::prepare_work`]); errors name the branch.
    pub fn open(spec: &BranchSpec) -> std::io::Result<Branch> {
        let named = |e: Errno| {
            std::io::Error::new(
                std::io::Error::from(e).kind(),
                format!("branch {}: {}", spec.path.display(), e.desc()),
            )
        };
        let root = sys::open_branch_root(&spec.path).map_err(named)?;
        let st = sys::fstat(root.as_fd()).map_err(named)?;
        let name_max = sys::statvfs(root.as_fd())
            .map(|s| s.name_max())
            .unwrap_or(255);
        let b = Branch {
            id: NEXT_BRANCH_ID.fetch_add(1, Ordering::Relaxed),
            path: spec.path.clone(),
            mode: spec.mode,
            dev: st.st_dev,
            name_max,
            remote: sys::remote_fs(root.as_fd()),
            root: Arc::new(root),
            work: Mutex::new(None),
            index: Mutex::new(None),
        };
        // Read too where the branch is read-only now: its copied-up objects
        // keep their numbers when it is a lower branch (a snapshot, say).
        *b.index.lock() = b.open_index(false).ok();
        b.prepare_work()?;
        Ok(b)
    }

    /// The same branch (same identity, same root, same work directory) in
    /// another mode.
    pub fn with_mode(&self, mode: Mode) -> std::io::Result<Branch> {
        let b = Branch {
            id: self.id,
            path: self.path.clone(),
            mode,
            dev: self.dev,
            name_max: self.name_max,
            remote: self.remote,
            root: self.root.clone(),
            work: Mutex::new(self.work.lock().clone()),
            index: Mutex::new(self.index.lock().clone()),
        };
        if self.mode != Mode::Rw {
            b.prepare_work()?;
        }
        Ok(b)
    }

    pub fn writable(&self) -> bool {
        self.mode == Mode::Rw
    }

    /// The index directory beside the work directory (INDEX_DIR), made
    /// if `make`: this daemon's own (owner, mode 0700, this filesystem, no
    /// symlink), like the work directory.
    fn open_index(&self, make: bool) -> sys::Result<Arc<Dir>> {
        let name = OsStr::new(INDEX_DIR);
        if make {
            match sys::mkdir_at(self.root(), name, 0o700) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(e),
            }
        }
        let fd = sys::open_dir_here(self.root(), name)?;
        let st = sys::fstat(fd.as_fd())?;
        if !self.is_own_dir(&st) {
            log::warn!(
                "{}: {INDEX_DIR} is not this daemon's (owner uid {}, mode {:o}): not used",
                self.path.display(),
                st.st_uid,
                st.st_mode & 0o7777
            );
            return Err(Errno::EPERM);
        }
        Ok(Arc::new(fd))
    }

    /// Whether a directory of the daemon's (the work directory, the index)
    /// is its own: its owner, mode 0700 or less, on this branch's filesystem.
    fn is_own_dir(&self, st: &sys::FileStat) -> bool {
        st.st_uid == sys::geteuid() && st.st_mode & 0o077 == 0 && st.st_dev == self.dev
    }

    /// The target of index entry `name`, if the index has one.
    fn record(&self, name: &str) -> Option<OsString> {
        let index = self.index.lock().clone()?;
        sys::Obj::at(&index, OsStr::new(name)).readlink().ok()
    }

    /// The number recorded for this branch's object `ino` (a copy-up of an
    /// object that had it), if any.
    pub fn origin_of(&self, ino: u64) -> Option<u64> {
        self.record(&ino.to_string())?.to_str()?.parse().ok()
    }

    /// Record that this branch's object `ino` is union object `number`:
    /// a symlink `ino` -> `number` in the index, replaced whole.
    pub fn record_origin(&self, ino: u64, number: u64) -> sys::Result<()> {
        self.put_record(&ino.to_string(), OsString::from(number.to_string()))
    }

    /// Record that union object `number`, hard-linked in a lower branch,
    /// was copied up here as `ino` at the union path `path`: a symlink
    /// `oNUMBER` -> `INO/PATH`, so that its other lower names join it when
    /// they are looked up (after a remount too; see `copy_of`).
    pub fn record_copy(&self, number: u64, ino: u64, path: &Path) -> sys::Result<()> {
        let mut target = OsString::from(format!("{ino}/"));
        target.push(path.as_os_str());
        self.put_record(&format!("o{number}"), target)
    }

    /// Where union object `number` was copied up in this branch: its
    /// `st_ino` there and its union path then (check both before use).
    pub fn copy_of(&self, number: u64) -> Option<(u64, PathBuf)> {
        use std::os::unix::ffi::OsStrExt;
        let target = self.record(&format!("o{number}"))?;
        let bytes = target.as_bytes();
        let slash = bytes.iter().position(|&b| b == b'/')?;
        let ino = std::str::from_utf8(&bytes[..slash]).ok()?.parse().ok()?;
        Some((ino, PathBuf::from(OsStr::from_bytes(&bytes[slash + 1..]))))
    }

    /// Write the index entry `name` -> `target`, replacing one there whole.
    fn put_record(&self, name: &str, target: OsString) -> sys::Result<()> {
        let index = {
            let mut slot = self.index.lock();
            match &*slot {
                Some(i) => i.clone(),
                None => {
                    let i = self.open_index(true)?;
                    *slot = Some(i.clone());
                    i
                }
            }
        };
        let tmp = OsString::from(format!(".{name}.new"));
        let _ = sys::unlink_at(&index, &tmp, false);
        sys::symlink_at(&target, &index, &tmp)?;
        sys::rename_at(&index, &tmp, &index, OsStr::new(name), 0)
    }

    pub fn has_index(&self) -> bool {
        self.index.lock().is_some()
    }

    /// This branch's object `ino` is gone: its number with it.
    pub fn forget_origin(&self, ino: u64) {
        if let Some(index) = self.index.lock().clone() {
            let _ = sys::unlink_at(&index, OsStr::new(&ino.to_string()), false);
        }
    }

    pub fn root(&self) -> &Dir {
        &self.root
    }

    /// The root fd, shared (directory fd caches hand it out like any other).
    pub fn root_fd(&self) -> Arc<Dir> {
        self.root.clone()
    }

    /// The directory `rel` (relative to the branch root) as an `O_PATH` fd.
    pub fn dir(&self, rel: &Path) -> sys::Result<Dir> {
        sys::open_dir(self.root(), rel)
    }

    /// The branch's work directory, where copy-ups and new entries are built
    /// before they are renamed into place; made on first use. Only a
    /// directory this daemon can trust is used: a real directory on the
    /// branch's filesystem, owned by the daemon's user and closed to everyone
    /// else (see [`Branch::prepare_work`]). Its fd is kept: renaming it away
    /// or planting another one later changes nothing.
    pub fn work(&self) -> sys::Result<Arc<Dir>> {
        self.open_work().map_err(|e| {
            log::error!("{}: {}", self.path.display(), e.why);
            e.errno
        })
    }

    fn open_work(&self) -> Result<Arc<Dir>, WorkError> {
        let mut work = self.work.lock();
        if let Some(fd) = &*work {
            return Ok(fd.clone());
        }
        let name = OsStr::new(WORK_DIR);
        let bad = |errno: Errno, why: String| WorkError { errno, why };
        match sys::mkdir_at(self.root(), name, 0o700) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(bad(e, format!("cannot make {WORK_DIR}: {e}"))),
        }
        let fd = sys::open_dir_here(self.root(), name).map_err(|e| match e {
            Errno::EXDEV => bad(e, format!("{WORK_DIR} is a mount point")),
            Errno::ELOOP | Errno::ENOTDIR => {
                bad(e, format!("{WORK_DIR} is a symlink or not a directory"))
            }
            e => bad(e, format!("{WORK_DIR}: {e}")),
        })?;
        let st = sys::fstat(fd.as_fd()).map_err(|e| bad(e, format!("{WORK_DIR}: {e}")))?;
        if !self.is_own_dir(&st) {
            return Err(bad(
                Errno::EPERM,
                format!(
                    "{WORK_DIR} is not this daemon's work directory (owner uid {}, mode {:o}{}): \
                     remove it while nothing is mounted",
                    st.st_uid,
                    st.st_mode & 0o7777,
                    if st.st_dev != self.dev {
                        ", another filesystem"
                    } else {
                        ""
                    }
                ),
            ));
        }
        // What is built here gets the ACL its destination gives (acl.rs),
        // never one inherited from a default ACL of the branch root.
        match sys::remove_xattr_obj(sys::Obj::fd(fd.as_fd()), OsStr::new(crate::acl::DEFAULT)) {
            Ok(()) | Err(Errno::ENODATA | Errno::EOPNOTSUPP) => {}
            Err(e) => return Err(bad(e, format!("{WORK_DIR}: its default ACL: {e}"))),
        }
        let fd = Arc::new(fd);
        *work = Some(fd.clone());
        Ok(fd)
    }

    /// For a writable branch: make or check its work directory now, and
    /// clear what an interrupted run left there (nothing in it is ever
    /// visible through the union). A branch whose root the daemon cannot
    /// write keeps it for later (copy-ups to it fail anyway); a directory of
    /// that name that is not the daemon's own is an error naming it.
    pub fn prepare_work(&self) -> std::io::Result<()> {
        if !self.writable() {
            return Ok(());
        }
        let name = OsStr::new(WORK_DIR);
        let shown = |why: &dyn std::fmt::Display| {
            std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("branch {}: {why}", self.path.display()),
            )
        };
        match sys::stat_at(self.root(), name) {
            // Not a directory (a symlink planted there, say): the name is
            // reserved; remove it, never follow it.
            Ok(st) if st.st_mode & libc::S_IFMT != libc::S_IFDIR => {
                sys::unlink_at(self.root(), name, false).map_err(|e| shown(&e))?
            }
            Ok(_) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(shown(&e)),
        }
        let work = match self.open_work() {
            Ok(w) => w,
            Err(WorkError {
                errno: Errno::EROFS | Errno::EACCES,
                ..
            }) => return Ok(()),
            Err(e) => return Err(shown(&e.why)),
        };
        crate::tree::empty_dir(&work).map_err(|e| shown(&format!("clearing {WORK_DIR}: {e}")))
    }
}

impl Branch {
    /// Remove the work directory `open` made, if it is still empty (a
    /// branch change that opened this branch was refused).
    pub fn discard_work(&self) {
        *self.work.lock() = None;
        let _ = sys::unlink_at(self.root(), OsStr::new(WORK_DIR), true);
    }
}

/// A fresh name for a temporary entry in a work directory.
pub fn temp_name() -> OsString {
    // getpid(2) is a syscall each time; the daemon forks before it names anything.
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    OsString::from(format!(
        "#{}-{}",
        PID.get_or_init(std::process::id),
        NEXT_TEMP.fetch_add(1, Ordering::Relaxed)
    ))
}

/// The branches of a mount, highest precedence first. Requests take an `Arc`
/// of the current set and work on it from start to end.
#[derive(Debug)]
pub struct BranchSet {
    pub branches: Vec<Arc<Branch>>,
    /// Distinct for every set made: node locations computed against another
    /// generation are re-resolved before use.
    pub generation: u64,
    /// The longest name the branches take (found and used through the
    /// union; see `Union::name_max` for the longest one it makes).
    pub name_max: u64,
}

impl BranchSet {
    pub fn new(branches: Vec<Arc<Branch>>) -> BranchSet {
        let min = branches.iter().map(|b| b.name_max).min().unwrap_or(255);
        BranchSet {
            branches,
            generation: NEXT_GENERATION.fetch_add(1, Ordering::Relaxed),
            name_max: min,
        }
    }

    pub fn open(specs: &[BranchSpec]) -> std::io::Result<BranchSet> {
        let branches = specs
            .iter()
            .map(|s| Branch::open(s).map(Arc::new))
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(BranchSet::new(branches))
    }

    pub fn len(&self) -> usize {
        self.branches.len()
    }

    pub fn is_empty(&self) -> bool {
        self.branches.is_empty()
    }

    pub fn get(&self, idx: usize) -> &Arc<Branch> {
        &self.branches[idx]
    }

    pub fn index_of(&self, id: u32) -> Option<usize> {
        self.branches.iter().position(|b| b.id == id)
    }

    /// The highest writable branch strictly above `idx` (where a copy-up of
    /// something whose topmost instance is in `idx` goes).
    pub fn writable_above(&self, idx: usize) -> Option<usize> {
        (0..idx.min(self.len())).find(|&i| self.branches[i].writable())
    }

    /// The highest writable branch at or above `idx`.
    pub fn writable_at_or_above(&self, idx: usize) -> Option<usize> {
        if idx < self.len() && self.branches[idx].writable() {
            Some(idx)
        } else {
            self.writable_above(idx)
        }
    }

    /// Where new entries go: the highest writable branch.
    pub fn first_writable(&self) -> Option<usize> {
        self.branches.iter().position(|b| b.writable())
    }

    /// A read-only branch above every writable one means files there cannot
    /// be changed: the message the mount prints, if any.
    pub fn order_warning(&self) -> Option<String> {
        let first_rw = self.first_writable()?;
        let ro_above: Vec<String> = self.branches[..first_rw]
            .iter()
            .map(|b| shown(&b.path))
            .collect();
        if ro_above.is_empty() {
            return None;
        }
        Some(format!(
            "warning: read-only branch {} lies above every writable branch: new files go to {}, \
             but files whose topmost copy is in {} cannot be modified (EROFS)",
            ro_above.join(", "),
            shown(&self.branches[first_rw].path),
            ro_above.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(p: &str, m: Mode) -> BranchSpec {
        BranchSpec {
            path: PathBuf::from(p),
            mode: m,
        }
    }

    #[test]
    fn default_modes_and_escapes() {
        assert_eq!(
            parse("/a:/b\\:c=rw:/d=ro:/e").unwrap(),
            vec![
                spec("/a", Mode::Rw),
                spec("/b:c", Mode::Rw),
                spec("/d", Mode::Ro),
                spec("/e", Mode::Ro)
            ]
        );
        assert_eq!(parse("/x=y=ro").unwrap(), vec![spec("/x=y", Mode::Ro)]);
    }

    #[test]
    fn format_is_what_parse_reads() {
        let specs = vec![spec("/a:b=c", Mode::Rw), spec("/d", Mode::Ro)];
        let text = format(&specs);
        assert_eq!(text, "/a\\:b=c=rw:/d=ro");
        assert_eq!(parse(text.to_str().unwrap()).unwrap(), specs);
    }

    #[test]
    fn bad_lists() {
        assert_eq!(parse(""), Err(BranchError::Empty));
        assert_eq!(parse("/a::/b"), Err(BranchError::EmptyItem));
        assert_eq!(
            parse("/a=rx"),
            Err(BranchError::UnknownMode("/a".into(), "rx".into()))
        );
    }

    #[test]
    fn nesting_duplicates_and_mountpoint() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("a");
        let ab = a.join("b");
        let m = t.path().join("m");
        std::fs::create_dir_all(&ab).unwrap();
        std::fs::create_dir_all(&m).unwrap();
        let s = |p: &Path| spec(p.to_str().unwrap(), Mode::Rw);
        assert!(matches!(
            resolve(&[s(&a), s(&ab)], None),
            Err(BranchError::Nested(..))
        ));
        assert!(matches!(
            resolve(&[s(&a), s(&a)], None),
            Err(BranchError::Duplicate(..))
        ));
        assert!(matches!(
            resolve(&[s(&ab)], Some(&a)),
            Err(BranchError::BranchInsideMount(..))
        ));
        assert!(matches!(
            resolve(&[s(&a)], Some(&ab)),
            Err(BranchError::MountInsideBranch(..))
        ));
        assert!(resolve(&[s(&a), s(&m)], None).is_ok());
        assert!(matches!(
            resolve(&[s(&t.path().join("nope"))], None),
            Err(BranchError::Unusable(..))
        ));
    }
}
