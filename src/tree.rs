//! Removing whole trees, as root, in directories others may write.
//!
//! Everything is fd-relative: a symlink is removed, never followed; a mount
//! point is never entered (its removal fails with EXDEV); and however deep a
//! tree is, at most three fds are open: instead of holding one fd per level,
//! the subdirectories of each directory being emptied are moved up into the
//! directory being removed, and the tree is emptied one level per pass.

use std::ffi::{OsStr, OsString};

use crate::sys::{self, Dir, Errno, Result};

fn is_dir(dir: &Dir, e: &sys::DirEntry) -> Result<bool> {
    if e.kind != 0 {
        return Ok(e.kind == libc::S_IFDIR);
    }
    match sys::stat_at(dir, &e.name) {
        Ok(st) => Ok(st.st_mode & libc::S_IFMT == libc::S_IFDIR),
        Err(Errno::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `unlink`, where a name already gone counts as removed.
fn unlink(dir: &Dir, name: &OsStr, is_dir: bool) -> Result<()> {
    match sys::unlink_at(dir, name, is_dir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Remove `name` in `dir` and, if it is a directory, everything below it.
pub fn remove_tree(dir: &Dir, name: &OsStr) -> Result<()> {
    let st = match sys::stat_at(dir, name) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return unlink(dir, name, false);
    }
    match sys::unlink_at(dir, name, true) {
        Ok(()) | Err(Errno::ENOENT) => return Ok(()),
        Err(Errno::ENOTEMPTY | Errno::EEXIST) => {}
        Err(e) => return Err(e),
    }
    let top = sys::open_dir_here(dir, name)?;
    empty_dir(&top)?;
    unlink(dir, name, true)
}

/// Remove everything inside the directory `top` (it stays).
pub fn empty_dir(top: &Dir) -> Result<()> {
    let mut moved: u64 = 0;
    loop {
        let entries = sys::read_dir(top)?;
        if entries.is_empty() {
            return Ok(());
        }
        for e in &entries {
            if !is_dir(top, e)? {
                unlink(top, &e.name, false)?;
                continue;
            }
            match sys::unlink_at(top, &e.name, true) {
                Ok(()) | Err(Errno::ENOENT) => continue,
                Err(Errno::ENOTEMPTY | Errno::EEXIST) => {}
                Err(e) => return Err(e),
            }
            let sub = sys::open_dir_here(top, &e.name)?;
            for s in sys::read_dir(&sub)? {
                if !is_dir(&sub, &s)? {
                    unlink(&sub, &s.name, false)?;
                    continue;
                }
                // Empty: gone at once, no move (which would need write
                // permission on it as well, for its "..").
                match sys::unlink_at(&sub, &s.name, true) {
                    Ok(()) | Err(Errno::ENOENT) => {}
                    Err(Errno::ENOTEMPTY | Errno::EEXIST) => hoist(&sub, &s.name, top, &mut moved)?,
                    Err(e) => return Err(e),
                }
            }
            // Emptied, unless something was added meanwhile: the next pass sees it.
            match sys::unlink_at(top, &e.name, true) {
                Ok(()) | Err(Errno::ENOENT | Errno::ENOTEMPTY | Errno::EEXIST) => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Move the directory `name` of `from` up into `top`, under a fresh name.
/// Moving a directory to another parent needs write permission on it (its
/// ".." changes): one of our own that is read-only (a module cache, say) is
/// made writable for its owner first, as `rm -rf` would need anyway to empty it.
fn hoist(from: &Dir, name: &OsStr, top: &Dir, n: &mut u64) -> Result<()> {
    let mut tried_chmod = false;
    loop {
        *n += 1;
        let fresh = OsString::from(format!(".#rm{n}"));
        match sys::rename_at(from, name, top, &fresh, libc::RENAME_NOREPLACE) {
            Err(Errno::EEXIST) => continue,
            Err(Errno::ENOENT) => return Ok(()),
            Err(Errno::EACCES) if !tried_chmod => {
                tried_chmod = true;
                let d = sys::open_dir_here(from, name)?;
                let st = sys::fstat(std::os::fd::AsFd::as_fd(&d))?;
                if st.st_uid != sys::geteuid() {
                    return Err(Errno::EACCES);
                }
                sys::chmod_fd(std::os::fd::AsFd::as_fd(&d), (st.st_mode & 0o7777) | 0o700)?;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn deep_trees_go_with_few_fds() {
        let t = tempfile::tempdir().unwrap();
        let root = Dir::open_nofollow(t.path()).unwrap();
        std::fs::create_dir(t.path().join("d")).unwrap();
        // 3000 levels: more than a 1024-fd limit could hold one fd each.
        let mut cur = sys::open_dir(&root, Path::new("d")).unwrap();
        for i in 0..3000 {
            sys::mkdir_at(&cur, OsStr::new("a"), 0o755).unwrap();
            if i % 100 == 0 {
                sys::symlink_at(OsStr::new("/"), &cur, OsStr::new("ln")).unwrap();
            }
            cur = sys::open_dir(&cur, Path::new("a")).unwrap();
        }
        drop(cur);
        std::fs::write(t.path().join("d/a/f"), "x").unwrap();
        remove_tree(&root, OsStr::new("d")).unwrap();
        assert!(!t.path().join("d").exists());
        // The symlinks to / were removed, not followed.
        assert!(Path::new("/proc").exists());
    }
}
