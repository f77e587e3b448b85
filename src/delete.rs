//! unlink and rmdir in the three delete modes of FSL Unionfs. The whole plan
//! (what to remove, where a whiteout goes) is made before anything is touched,
//! so a delete that cannot complete removes nothing. The whiteout is written
//! first and the instances removed after it: a crash in between leaves the
//! name hidden, never half-deleted.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::path::Path;

use nix::fcntl::OFlag;

use crate::branch::BranchSet;
use crate::options::DeleteMode;
use crate::resolve::{Instance, Scan};
use crate::sys::{self, Dir, Errno, Result};
use crate::union::Union;
use crate::{readdir, whiteout};

struct Plan {
    /// Branch indices whose instance is removed.
    remove: Vec<usize>,
    /// Branch index that gets a whiteout.
    whiteout: Option<usize>,
}

/// A writable directory instance holding nothing but whiteouts can go; one
/// with real entries (hidden by whiteouts above it) must stay and be hidden.
fn dir_clean(i: &Instance) -> Result<bool> {
    let fd = i.dir.as_ref().ok_or(Errno::ENOENT)?;
    Ok(sys::read_dir(fd)?
        .iter()
        .all(|e| whiteout::is_reserved(&e.name)))
}

impl Union {
    pub fn unlink(&self, parent: u64, name: &OsStr) -> Result<()> {
        self.remove(parent, name, false)
    }

    pub fn rmdir(&self, parent: u64, name: &OsStr) -> Result<()> {
        match self.remove(parent, name, true) {
            // The kernel refuses a delete in an append-only or immutable
            // directory, or of such a directory, before it looks at whether
            // the directory is empty: so does the union.
            Err(Errno::ENOTEMPTY) if self.flags_forbid_delete(parent, name) => Err(Errno::EPERM),
            other => other,
        }
    }

    /// Whether the parent's topmost instance is append-only or immutable,
    /// or the entry's is (chattr's `a` and `i`).
    fn flags_forbid_delete(&self, parent: u64, name: &OsStr) -> bool {
        const FORBID: u32 = sys::FS_IMMUTABLE_FL | sys::FS_APPEND_FL;
        let flags = |fd: std::os::fd::OwnedFd| {
            let mut buf = [0u8; 4];
            sys::file_attr_ioctl(fd.as_fd(), sys::FS_IOC_GETFLAGS, &mut buf)
                .map(|()| u32::from_ne_bytes(buf))
                .unwrap_or(0)
        };
        let bs = self.branches();
        let Ok(pnode) = self.resolve.node(parent) else {
            return false;
        };
        let Ok(idx) = self.resolve.top_idx(&bs, &pnode) else {
            return false;
        };
        let Ok(pdir) = self.resolve.layer_dir(&bs, &pnode, idx) else {
            return false;
        };
        let open =
            |name: &OsStr| sys::open_at(&pdir, name, OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0);
        open(OsStr::new(".")).is_ok_and(|p| flags(p) & FORBID != 0)
            || open(name).is_ok_and(|v| flags(v) & FORBID != 0)
    }

    fn remove(&self, parent: u64, name: &OsStr, dir: bool) -> Result<()> {
        if whiteout::is_reserved(name) {
            return Err(Errno::ENOENT);
        }
        let bs = self.branches();
        let pnode = self.resolve.node(parent)?;
        for _ in 0..3 {
            // A first look, with no lock: where a whiteout would go, so that
            // the parent can be made in that branch beforehand.
            let first = self.decide(&bs, &pnode, name, dir)?;
            if let Some(w) = first.1.whiteout {
                self.dir_in(&bs, w, &pnode)?;
            }
            // Then the delete itself, planned again and done under the lock
            // of the parent (and of the directory removed, against changes
            // inside it).
            let victim = self.resolve.node_of(&bs, &first.0).map(|n| n.ino);
            let _lock = match victim.filter(|_| dir) {
                Some(v) => self.resolve.lock_two(&bs, parent, v)?,
                None => self.resolve.lock(&bs, parent)?,
            };
            if pnode.is_unlinked() {
                return Err(Errno::ENOENT);
            }
            let (top, plan) = self.decide(&bs, &pnode, name, dir)?;
            let wdir = match plan.whiteout {
                None => None,
                Some(w) => match self.resolve.layer_dir(&bs, &pnode, w) {
                    Ok(d) => Some(d),
                    // The plan changed under the first look: again.
                    Err(Errno::ENOENT) => continue,
                    Err(e) => return Err(e),
                },
            };
            if let Some(pdir) = wdir {
                whiteout::create_whiteout(&pdir, name)?;
            }
            for idx in plan.remove {
                let pdir = self.resolve.layer_dir(&bs, &pnode, idx)?;
                if dir {
                    clear_whiteouts(&pdir, name)?;
                }
                // Its last name gone, the object's number record goes too
                // (a new object may get its st_ino).
                let last = match bs.get(idx).has_index() {
                    true => sys::stat_at(&pdir, name)
                        .ok()
                        .filter(|st| dir || st.st_nlink == 1),
                    false => None,
                };
                match sys::unlink_at(&pdir, name, dir) {
                    Ok(()) | Err(Errno::ENOENT) => {}
                    Err(e) => return Err(e),
                }
                if let Some(st) = last {
                    bs.get(idx).forget_origin(st.st_ino);
                }
            }
            self.resolve.name_gone(&bs, &top, parent, name);
            return Ok(());
        }
        Err(Errno::EAGAIN)
    }

    /// What `name` in `parent` is, whether it may go, and how.
    fn decide(
        &self,
        bs: &BranchSet,
        pnode: &crate::resolve::Node,
        name: &OsStr,
        dir: bool,
    ) -> Result<(Instance, Plan)> {
        let scan = self.resolve.scan_in(bs, pnode, name, true)?;
        let top = scan.top().ok_or(Errno::ENOENT)?.clone();
        if dir && !top.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        if !dir && top.is_dir() {
            return Err(Errno::EISDIR);
        }
        if dir && !readdir::is_empty(&scan.layer_fds())? {
            return Err(Errno::ENOTEMPTY);
        }
        let plan = self.plan(bs, &scan, &top, dir)?;
        Ok((top, plan))
    }

    fn plan(&self, bs: &BranchSet, scan: &Scan, top: &Instance, dir: bool) -> Result<Plan> {
        let removable = |i: &Instance| -> Result<bool> {
            Ok(bs.get(i.idx).writable() && (!dir || dir_clean(i)?))
        };
        let mut plan = Plan {
            remove: Vec::new(),
            whiteout: None,
        };
        match self.delete {
            DeleteMode::All => {
                let mut stays = None;
                for i in &scan.instances {
                    if removable(i)? {
                        plan.remove.push(i.idx);
                    } else if stays.is_none() {
                        stays = Some(i.idx);
                    }
                }
                if let Some(s) = stays {
                    let w = bs.first_writable().filter(|&w| w < s);
                    plan.whiteout = Some(w.ok_or(Errno::EROFS)?);
                }
            }
            DeleteMode::Whiteout => {
                if removable(top)? {
                    plan.remove.push(top.idx);
                    if scan.has_below(top.idx) {
                        plan.whiteout = Some(top.idx);
                    }
                } else {
                    plan.whiteout = Some(bs.writable_above(top.idx).ok_or(Errno::EROFS)?);
                }
            }
            DeleteMode::First => {
                if removable(top)? {
                    plan.remove.push(top.idx);
                } else {
                    plan.whiteout = Some(bs.writable_above(top.idx).ok_or(Errno::EROFS)?);
                }
            }
        }
        Ok(plan)
    }
}

/// Remove the whiteouts and the opaque marker inside directory `dir/name`,
/// so that it can be rmdir'ed.
fn clear_whiteouts(dir: &Dir, name: &OsStr) -> Result<()> {
    let sub = sys::open_dir(dir, Path::new(name))?;
    for e in sys::read_dir(&sub)? {
        if whiteout::is_reserved(&e.name) {
            sys::unlink_at(&sub, &e.name, false)?;
        }
    }
    Ok(())
}
