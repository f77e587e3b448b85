//! `/proc/self/mountinfo`, decoded once for every tool that needs it.
//!
//! The kernel writes paths as raw bytes with space, tab, newline and
//! backslash octal-escaped (`\040` for a space); so a line is split on
//! spaces first and each field unescaped to bytes after, and paths come out
//! as `OsString`s, never as text (a mount point need not be UTF-8).

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// One mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// `major:minor` of the mounted filesystem.
    pub dev: String,
    pub mount_point: PathBuf,
    /// The filesystem type, `fuse.SUBTYPE` for FUSE mounts.
    pub fstype: String,
    pub source: OsString,
    /// The superblock's options (`user_id=N,group_id=N,...` for FUSE).
    pub super_options: String,
}

impl Mount {
    /// A FUSE mount, whatever its subtype (`fuse`, `fuse.NAME`, `fuseblk`).
    pub fn is_fuse(&self) -> bool {
        self.fstype == "fuse" || self.fstype == "fuseblk" || self.fstype.starts_with("fuse.")
    }

    /// The uid the kernel records as the owner of a FUSE mount (`user_id=`),
    /// the only account of who mounted it that its daemon cannot forge.
    pub fn fuse_owner(&self) -> Option<u32> {
        self.super_options
            .split(',')
            .find_map(|o| o.strip_prefix("user_id="))
            .and_then(|v| v.parse().ok())
    }
}

/// Undo the kernel's octal escapes (`\NNN`) of one field.
pub fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' && i + 3 < field.len() {
            let digits = &field[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let v = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(b) = u8::try_from(v) {
                    out.push(b);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

/// Parse the text of a mountinfo file.
pub fn parse(text: &[u8]) -> Vec<Mount> {
    text.split(|&b| b == b'\n')
        .filter_map(|line| {
            let f: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
            // id parent dev root mount_point options [optional...] - fstype source super
            let sep = f.iter().position(|x| *x == b"-")?;
            if sep < 6 || f.len() < sep + 4 {
                return None;
            }
            let text = |b: &[u8]| String::from_utf8_lossy(&unescape(b)).into_owned();
            Some(Mount {
                dev: text(f[2]),
                mount_point: PathBuf::from(OsString::from_vec(unescape(f[4]))),
                fstype: text(f[sep + 1]),
                source: OsString::from_vec(unescape(f[sep + 2])),
                super_options: text(f[sep + 3]),
            })
        })
        .collect()
}

/// The mounts of this process's mount namespace, in mount order.
pub fn read() -> std::io::Result<Vec<Mount>> {
    Ok(parse(&std::fs::read("/proc/self/mountinfo")?))
}

/// The last (topmost) mount whose mount point is exactly `path`.
pub fn mount_at(path: &Path) -> Option<Mount> {
    read()
        .ok()?
        .into_iter()
        .rev()
        .find(|m| m.mount_point == path)
}

/// Whether something is mounted exactly at `path`.
pub fn is_mount_point(path: &Path) -> bool {
    mount_at(path).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn escapes_and_bytes() {
        let text = b"36 25 0:40 / /tmp/a\\040b\\134c rw,nosuid shared:1 - fuse.unionfs unionfs rw,user_id=1000,group_id=1000\n\
37 25 0:41 / /tmp/\xc3\xbc\xff rw - tmpfs tmp\\011x rw\n\
bad line\n";
        let m = parse(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mount_point, Path::new("/tmp/a b\\c"));
        assert_eq!(m[0].fstype, "fuse.unionfs");
        assert_eq!(m[0].fuse_owner(), Some(1000));
        assert_eq!(m[0].dev, "0:40");
        assert_eq!(
            m[1].mount_point.as_os_str().as_bytes(),
            b"/tmp/\xc3\xbc\xff"
        );
        assert_eq!(m[1].source.as_bytes(), b"tmp\tx");
        assert_eq!(m[1].fuse_owner(), None);
        // A backslash not followed by three octal digits stays.
        assert_eq!(unescape(b"a\\9b\\"), b"a\\9b\\");
        assert_eq!(unescape(b"\\777"), b"\\777");
    }
}
