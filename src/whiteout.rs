//! The on-disk whiteout format, which is the OCI image layer format:
//! `.wh.NAME` hides NAME in lower branches, `.wh..wh..opq` inside a directory
//! hides every lower instance of that directory.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

use nix::fcntl::OFlag;

use crate::sys::{self, Dir, Errno, Result};

pub const PREFIX: &str = ".wh.";
pub const OPAQUE: &str = ".wh..wh..opq";
/// The daemon's work directory at the root of each writable branch.
pub const WORK_DIR: &str = ".wh..wh.work";
/// Beside it: the index of copied-up objects' numbers (see resolve/numbers.rs).
pub const INDEX_DIR: &str = ".wh..wh.index";

/// At a layer's root: what a rootless import could not make (device nodes,
/// owners of symlinks), for the layer's tar to give back (unionfs-driver).
pub const OWNERS_FILE: &str = ".wh..wh.owners";

/// The daemon's (and the driver's) own entries at a branch root: never part
/// of the union, of a layer or of a snapshot merge.
pub fn is_daemon_dir(name: &OsStr) -> bool {
    name == WORK_DIR || name == INDEX_DIR || name == OWNERS_FILE
}

/// Names that are whiteouts on disk and so cannot exist in the union.
pub fn is_reserved(name: &OsStr) -> bool {
    name.as_bytes().starts_with(PREFIX.as_bytes())
}

/// `.wh.NAME`
pub fn whiteout_name(name: &OsStr) -> OsString {
    let mut s = OsString::from(PREFIX);
    s.push(name);
    s
}

/// For a whiteout entry `.wh.NAME`, the hidden NAME (None for the opaque
/// marker, the work dir, non-whiteouts, and `.wh..`/`.wh...`: "." and ".."
/// are not names that can be hidden).
pub fn hidden_name(entry: &OsStr) -> Option<&OsStr> {
    let b = entry.as_bytes();
    let rest = b.strip_prefix(PREFIX.as_bytes())?;
    if rest.starts_with(PREFIX.as_bytes()) || matches!(rest, b"" | b"." | b"..") {
        return None;
    }
    Some(OsStr::from_bytes(rest))
}

/// `.wh..` or `.wh...`: whiteouts of "." and "..", which no layer may hold.
pub fn is_dot_whiteout(entry: &OsStr) -> bool {
    matches!(entry.as_bytes(), b".wh.." | b".wh...")
}

/// Whether `dir` holds a whiteout of `name`. A name within 4 bytes of the
/// branch's limit (an image layer may hold one) cannot have one.
pub fn has_whiteout(dir: &Dir, name: &OsStr) -> Result<bool> {
    match sys::exists_at(dir, &whiteout_name(name)) {
        Err(Errno::ENAMETOOLONG) => Ok(false),
        other => other,
    }
}

/// Whether the directory `name` in `dir` holds the opaque marker.
pub fn is_opaque(dir: &Dir, name: &OsStr) -> Result<bool> {
    let sub = match sys::open_dir(dir, std::path::Path::new(name)) {
        Ok(fd) => fd,
        Err(Errno::ENOENT | Errno::ENOTDIR) => return Ok(false),
        Err(e) => return Err(e),
    };
    sys::exists_at(&sub, OsStr::new(OPAQUE))
}

/// An empty file named `name` in `dir`, mode 0 (as OCI layers carry them).
pub fn create_marker(dir: &Dir, name: &OsStr) -> Result<()> {
    match sys::open_at(
        dir,
        name,
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY,
        0,
    ) {
        Ok(_) | Err(Errno::EEXIST) => Ok(()),
        Err(e) => Err(e),
    }
}

/// A whiteout of `name` in `dir`: ENAMETOOLONG for a name too long to have
/// one (`.wh.` and it are more than the branch takes), before anything
/// changed.
pub fn create_whiteout(dir: &Dir, name: &OsStr) -> Result<()> {
    create_marker(dir, &whiteout_name(name))
}

/// Mark the directory `dir` (an fd on it) opaque.
pub fn make_opaque(dir: &Dir) -> Result<()> {
    create_marker(dir, OsStr::new(OPAQUE))
}

pub fn remove_whiteout(dir: &Dir, name: &OsStr) -> Result<()> {
    match sys::unlink_at(dir, &whiteout_name(name), false) {
        Ok(()) | Err(Errno::ENOENT | Errno::ENAMETOOLONG) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_reserved(OsStr::new(".wh.x")));
        assert!(!is_reserved(OsStr::new(".whx")));
        assert_eq!(hidden_name(OsStr::new(".wh.abc")), Some(OsStr::new("abc")));
        assert_eq!(hidden_name(OsStr::new(OPAQUE)), None);
        assert_eq!(hidden_name(OsStr::new(WORK_DIR)), None);
        assert_eq!(hidden_name(OsStr::new("abc")), None);
        assert_eq!(hidden_name(OsStr::new(".wh..")), None);
        assert_eq!(hidden_name(OsStr::new(".wh...")), None);
        assert!(is_dot_whiteout(OsStr::new(".wh...")));
        assert_eq!(whiteout_name(OsStr::new("a")), OsString::from(".wh.a"));
    }
}
