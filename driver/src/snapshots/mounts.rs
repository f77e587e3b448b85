//! The mounts a snapshot answers, which containerd performs itself.
//!
//! A snapshot on a parent is our union, `fuse3.unionfs-mount`: containerd
//! runs `mount.fuse3`, which runs `unionfs-mount SOURCE TARGET -o OPTS`
//! from PATH with the branches in overlayfs's form (the top layer first in
//! `lowerdir`). A snapshot without a parent is a bind mount of its layer
//! (of an empty directory, for a view), as fuse-overlayfs-snapshotter does.

use std::path::{Path, PathBuf};

use crate::store::Store;
use crate::Error;

/// The mount type containerd is given.
pub const FUSE_TYPE: &str = "fuse3.unionfs-mount";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

/// A path in a mount option: ',' ends an option and ':' a lowerdir item.
fn option_path(p: &Path) -> Result<String, Error> {
    let s = p
        .to_str()
        .ok_or_else(|| Error::Invalid(format!("{}: not UTF-8", p.display())))?;
    if s.contains(',') {
        return Err(Error::Invalid(format!(
            "{s}: a store path with ',' cannot be a mount option"
        )));
    }
    Ok(s.replace(':', "\\:"))
}

/// Can the store's paths be mount options? Checked when serving starts.
pub fn check_root(store: &Store) -> Result<(), Error> {
    option_path(&store.layer_dir("x")).map(drop)
}

/// The mounts of a snapshot with the rw layer `upper` (none: a view) on
/// the layers `lowers`, top first.
pub fn of(store: &Store, upper: Option<&Path>, lowers: &[PathBuf]) -> Result<Vec<Mount>, Error> {
    if lowers.is_empty() {
        let (source, rw) = match upper {
            Some(u) => (u.to_path_buf(), "rw"),
            None => (empty_dir(store)?, "ro"),
        };
        return Ok(vec![Mount {
            kind: "bind".into(),
            source: source.display().to_string(),
            options: vec!["rbind".into(), rw.into()],
        }]);
    }
    let lower: Vec<String> = lowers
        .iter()
        .map(|p| option_path(p))
        .collect::<Result<_, _>>()?;
    let mut options = vec![format!("lowerdir={}", lower.join(":"))];
    match upper {
        Some(u) => options.push(format!("upperdir={}", option_path(u)?)),
        None => options.push("ro".into()),
    }
    // Container users are not root; device nodes and setuid files work as
    // in any container root filesystem.
    options.extend(["allow_other", "dev", "suid"].map(String::from));
    Ok(vec![Mount {
        kind: FUSE_TYPE.into(),
        source: "unionfs".into(),
        options,
    }])
}

/// The empty directory a view without a parent shows.
fn empty_dir(store: &Store) -> Result<PathBuf, Error> {
    let p = store.root.join("empty");
    match std::fs::create_dir(&p) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(store.io("empty", e)),
    }
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .map_err(|e| store.io("empty", e))?;
    Ok(p)
}
