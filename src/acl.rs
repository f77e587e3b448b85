//! POSIX ACLs of new entries. The kernel enforces ACLs (FUSE_POSIX_ACL) and
//! leaves the umask to us (FUSE_DONT_MASK): a directory with a default ACL
//! gives it to what is made in it, and the umask applies only where there
//! is none, as on a local filesystem. An entry made in its branch directory
//! gets that from the branch; one made in the work directory and renamed
//! into place (directories, owned nodes) is given it here, computed as the
//! kernel's `posix_acl_create` does.

use std::ffi::OsStr;
use std::os::fd::AsFd;

use crate::sys::{self, Dir, Errno, Obj, Result};

pub const ACCESS: &str = "system.posix_acl_access";
pub const DEFAULT: &str = "system.posix_acl_default";

/// The xattr form (`posix_acl_xattr`): a version, then 8-byte entries.
const VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const GROUP_OBJ: u16 = 0x04;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;

/// The default ACL of `dir`, if it has one.
pub fn default_of(dir: &Dir) -> Result<Option<Vec<u8>>> {
    match sys::xattr_value(Obj::fd(dir.as_fd()), OsStr::new(DEFAULT)) {
        Ok(acl) => Ok(Some(acl)),
        Err(Errno::ENODATA | Errno::EOPNOTSUPP) => Ok(None),
        Err(e) => Err(e),
    }
}

/// What an entry of `mode` made under a default ACL gets: its mode, and
/// an access ACL when the default holds more than owner, group and other.
pub fn inherit(default: &[u8], mode: u32) -> Result<(u32, Option<Vec<u8>>)> {
    let body = default.get(4..).filter(|b| b.len() % 8 == 0);
    let version = default
        .get(..4)
        .map(|v| u32::from_le_bytes(v.try_into().unwrap()));
    let (Some(body), Some(VERSION)) = (body, version) else {
        return Err(Errno::EINVAL);
    };
    let mut acl = default.to_vec();
    let mut mode = mode;
    let (mut group_at, mut mask_at) = (None, None);
    let n = body.len() / 8;
    for i in 0..n {
        let at = 4 + i * 8;
        let tag = u16::from_le_bytes([acl[at], acl[at + 1]]);
        let perm = u16::from_le_bytes([acl[at + 2], acl[at + 3]]) as u32;
        let masked = match tag {
            USER_OBJ => {
                let p = perm & (mode >> 6 & 7);
                mode &= !0o700 | p << 6;
                Some(p)
            }
            OTHER => {
                let p = perm & (mode & 7);
                mode &= !0o007 | p;
                Some(p)
            }
            GROUP_OBJ => {
                group_at = Some(at);
                None
            }
            MASK => {
                mask_at = Some(at);
                None
            }
            _ => None,
        };
        if let Some(p) = masked {
            acl[at + 2..at + 4].copy_from_slice(&(p as u16).to_le_bytes());
        }
    }
    // The group class is the mask's where there is one, else the owning group's.
    let at = mask_at.or(group_at).ok_or(Errno::EINVAL)?;
    let perm = u16::from_le_bytes([acl[at + 2], acl[at + 3]]) as u32;
    let p = perm & (mode >> 3 & 7);
    mode &= !0o070 | p << 3;
    acl[at + 2..at + 4].copy_from_slice(&(p as u16).to_le_bytes());
    Ok((mode, (n > 3).then_some(acl)))
}

/// Give the entry behind `fd`, made by this daemon in a work directory,
/// what `default` (its future parent's default ACL) gives an entry of
/// `mode`: that mode, its access ACL, and for a directory the default ACL
/// too.
pub fn apply(fd: std::os::fd::BorrowedFd, default: &[u8], mode: u32, is_dir: bool) -> Result<()> {
    let (mode, access) = inherit(default, mode)?;
    let obj = Obj::fd(fd);
    sys::chmod_obj(obj, mode & 0o7777)?;
    if let Some(access) = access {
        sys::set_xattr_obj(obj, OsStr::new(ACCESS), &access, 0)?;
    }
    if is_dir {
        sys::set_xattr_obj(obj, OsStr::new(DEFAULT), default, 0)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        let mut v = VERSION.to_le_bytes().to_vec();
        for (tag, perm, id) in entries {
            v.extend(tag.to_le_bytes());
            v.extend(perm.to_le_bytes());
            v.extend(id.to_le_bytes());
        }
        v
    }

    #[test]
    fn a_minimal_default_gives_only_a_mode() {
        let d = acl(&[(USER_OBJ, 7, 0), (GROUP_OBJ, 5, 0), (OTHER, 0, 0)]);
        assert_eq!(inherit(&d, 0o666).unwrap(), (0o640, None));
        assert_eq!(inherit(&d, 0o777).unwrap(), (0o750, None));
    }

    #[test]
    fn a_named_entry_is_kept_and_the_mask_takes_the_group_bits() {
        let u1000 = (0x02, 7, 1000);
        let d = acl(&[
            (USER_OBJ, 7, 0),
            u1000,
            (GROUP_OBJ, 7, 0),
            (MASK, 7, 0),
            (OTHER, 5, 0),
        ]);
        let (mode, access) = inherit(&d, 0o640).unwrap();
        assert_eq!(mode, 0o640);
        let want = acl(&[
            (USER_OBJ, 6, 0),
            u1000,
            (GROUP_OBJ, 7, 0),
            (MASK, 4, 0),
            (OTHER, 0, 0),
        ]);
        assert_eq!(access.unwrap(), want);
    }

    #[test]
    fn a_bad_acl_is_einval() {
        assert_eq!(inherit(&[1, 0, 0, 0], 0o644), Err(Errno::EINVAL));
        assert_eq!(
            inherit(&acl(&[(USER_OBJ, 7, 0)]), 0o644),
            Err(Errno::EINVAL)
        );
    }
}
