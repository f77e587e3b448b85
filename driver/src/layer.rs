//! The graph driver operations (Docker's contract: Create, CreateReadWrite,
//! Get, Put, Remove, Exists, Status, GetMetadata, Cleanup, Diff, Changes,
//! ApplyDiff, DiffSize), on the store. A mount is served by its own
//! `unionfs-mount` process with the layer chain as branches, top first, the
//! top one rw for a container layer (as containers/storage's mount_program).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use unionfs::branch::{BranchSet, BranchSpec, Mode};
use unionfs::fsat::{self, Dir};
use unionfs::whiteout;

use crate::store::{check_name, remove_path, LayerMeta, MountState, Store};
use crate::tar::{extract, write_layer, Hashing};
use crate::Error;

/// Docker's graph driver contract.
pub trait GraphDriver {
    fn create(&self, id: &str, parent: Option<&str>, rw: bool) -> Result<(), Error>;
    /// Mount the layer chain; answers the mount point (reference counted).
    fn get(&self, id: &str) -> Result<PathBuf, Error>;
    fn put(&self, id: &str) -> Result<(), Error>;
    fn remove(&self, id: &str) -> Result<(), Error>;
    fn exists(&self, id: &str) -> bool;
    fn status(&self) -> Result<Vec<(String, String)>, Error>;
    fn metadata(&self, id: &str) -> Result<LayerMeta, Error>;
    fn cleanup(&self) -> Result<(), Error>;
    fn diff(&self, id: &str, out: &mut dyn Write) -> Result<(), Error>;
    fn changes(&self, id: &str) -> Result<Vec<(char, String)>, Error>;
    fn apply_diff(&self, id: &str, diff: &mut dyn Read) -> Result<u64, Error>;
    fn diff_size(&self, id: &str) -> Result<u64, Error>;
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn open_dir(p: &Path) -> Result<Dir, Error> {
    Dir::open_root(p).map_err(|e| Error::Io(p.display().to_string(), e.into()))
}

/// Is `p` a mount point now (per /proc/self/mountinfo)?
pub fn is_mounted(p: &Path) -> bool {
    unionfs::mountinfo::is_mount_point(p)
}

/// The unionfs-mount to run: $UNIONFS_MOUNT, else beside this binary, else $PATH.
fn mount_program() -> PathBuf {
    if let Some(p) = std::env::var_os("UNIONFS_MOUNT") {
        return PathBuf::from(p);
    }
    if let Ok(exe) = std::env::current_exe() {
        let beside = exe.with_file_name("unionfs-mount");
        if beside.exists() {
            return beside;
        }
        // cargo test binaries live in target/*/deps
        if let Some(up) = exe.parent().and_then(|d| d.parent()) {
            let p = up.join("unionfs-mount");
            if p.exists() {
                return p;
            }
        }
    }
    PathBuf::from("unionfs-mount")
}

/// Bytes of file data below `dir`, each hard-linked file counted once.
fn sum_sizes(dir: &Dir) -> Result<u64, fsat::Errno> {
    fn walk(
        dir: &Dir,
        seen: &mut std::collections::HashSet<(u64, u64)>,
    ) -> Result<u64, fsat::Errno> {
        let mut n = 0;
        for e in fsat::read_dir(dir)? {
            let st = fsat::stat_at(dir, &e.name)?;
            match st.st_mode & libc::S_IFMT {
                libc::S_IFREG if seen.insert((st.st_dev, st.st_ino)) => n += st.st_size as u64,
                libc::S_IFDIR => n += walk(&fsat::open_dir(dir, Path::new(&e.name))?, seen)?,
                _ => {}
            }
        }
        Ok(n)
    }
    walk(dir, &mut std::collections::HashSet::new())
}

impl Store {
    /// The union of the ancestors of `id` (without it), to compare a layer against.
    fn parent_view(&self, id: &str) -> Result<Option<BranchSet>, Error> {
        let chain = self.chain(id)?;
        let specs: Vec<BranchSpec> = chain[1..]
            .iter()
            .map(|m| BranchSpec {
                path: self.layer_dir(&m.id),
                mode: Mode::Ro,
            })
            .collect();
        if specs.is_empty() {
            return Ok(None);
        }
        BranchSet::open(&specs)
            .map(Some)
            .map_err(|e| self.io("layers", e))
    }

    /// What of the driver's needs the layer `id`: a child layer or an image
    /// it is the top of, said in a line.
    pub(crate) fn dependent(&self, id: &str) -> Result<Option<String>, Error> {
        if let Some(child) = self
            .layers()?
            .iter()
            .find(|m| m.parent.as_deref() == Some(id))
        {
            return Ok(Some(format!("layer {id} has a child layer ({})", child.id)));
        }
        Ok(self
            .images()?
            .iter()
            .find(|i| i.top == id)
            .map(|img| format!("layer {id} is the top of image {}", img.name)))
    }

    /// A new empty layer `id` on the layer `parent`: its directory is made
    /// aside and renamed in, then its metadata written.
    pub(crate) fn new_layer(
        &self,
        id: &str,
        parent: Option<String>,
        rw: bool,
        snapshotter: bool,
    ) -> Result<(), Error> {
        let tmp = self.temp_dir("create")?;
        std::fs::rename(&tmp, self.layer_dir(id)).map_err(|e| self.io("layers", e))?;
        self.save_meta(&LayerMeta {
            id: id.to_string(),
            parent,
            created: now(),
            diff_digest: None,
            size: 0,
            rw,
            snapshotter,
        })
    }

    pub(crate) fn refresh_size(&self, m: &mut LayerMeta) -> Result<(), Error> {
        let fd = open_dir(&self.layer_dir(&m.id))?;
        m.size = sum_sizes(&fd).map_err(|e| self.io("layers", e.into()))?;
        self.save_meta(m)
    }

    /// A container's rw layer becomes the top layer of the image `name`.
    pub fn commit(&self, container: &str, name: &str) -> Result<(), Error> {
        check_name("image name", name)?;
        let mut m = self.layer(container)?;
        if !m.rw {
            return Err(Error::Invalid(format!(
                "{container} is not a container (rw) layer"
            )));
        }
        if self.mount_state(container)?.count > 0 {
            return Err(Error::Busy(format!("{container} is mounted")));
        }
        if let Some(key) = crate::snapshots::Records::load(self)?.user_of(container) {
            return Err(Error::Busy(format!(
                "{container} holds containerd snapshot {key}"
            )));
        }
        let config = match &m.parent {
            Some(p) => self
                .images()?
                .into_iter()
                .find(|i| &i.top == p)
                .map(|i| i.config)
                .unwrap_or_default(),
            None => Default::default(),
        };
        m.rw = false;
        self.refresh_size(&mut m)?;
        self.save_image(&crate::store::Image {
            name: name.to_string(),
            top: container.to_string(),
            config,
        })
    }
}

impl GraphDriver for Store {
    fn create(&self, id: &str, parent: Option<&str>, rw: bool) -> Result<(), Error> {
        check_name("layer id", id)?;
        if self.meta(id)?.is_some() {
            return Err(Error::Exists(format!("layer {id} exists")));
        }
        let parent = match parent {
            Some(p) => Some(self.resolve(p)?),
            None => None,
        };
        self.new_layer(id, parent, rw, false)
    }

    fn get(&self, id: &str) -> Result<PathBuf, Error> {
        let id = self.resolve(id)?;
        let chain = self.chain(&id)?;
        let mnt = self.mount_dir(&id);
        let mut state = self.mount_state(&id)?;
        if state.count > 0 && is_mounted(&mnt) {
            state.count += 1;
            self.save_mount_state(&id, &state)?;
            return Ok(mnt);
        }
        std::fs::create_dir_all(&mnt).map_err(|e| self.io("mounts", e))?;
        let spec: Vec<BranchSpec> = chain
            .iter()
            .enumerate()
            .map(|(i, m)| BranchSpec {
                path: self.layer_dir(&m.id),
                mode: if i == 0 && m.rw { Mode::Rw } else { Mode::Ro },
            })
            .collect();
        let out = Command::new(mount_program())
            .args(["-o", "allow_other,dev,suid,fsname=unionfs-driver,udba=none"])
            .arg(unionfs::branch::format(&spec))
            .arg(&mnt)
            .output()
            .map_err(|e| Error::Io("unionfs-mount".into(), e))?;
        if !out.status.success() {
            // One line, whatever the mount program printed.
            let msg = String::from_utf8_lossy(&out.stderr);
            let lines: Vec<&str> = msg
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            return Err(Error::Mount(format!("mounting {id}: {}", lines.join("; "))));
        }
        self.save_mount_state(&id, &MountState { count: 1 })?;
        Ok(mnt)
    }

    fn put(&self, id: &str) -> Result<(), Error> {
        let id = self.resolve(id)?;
        let mut state = self.mount_state(&id)?;
        if state.count == 0 {
            return Err(Error::Invalid(format!("{id} is not mounted")));
        }
        state.count -= 1;
        if state.count == 0 {
            unmount(&self.mount_dir(&id))?;
        }
        self.save_mount_state(&id, &state)
    }

    fn remove(&self, id: &str) -> Result<(), Error> {
        let id = self.resolve(id)?;
        if self.mount_state(&id)?.count > 0 && is_mounted(&self.mount_dir(&id)) {
            return Err(Error::Busy(format!("layer {id} is mounted")));
        }
        if let Some(why) = self.dependent(&id)? {
            return Err(Error::Busy(why));
        }
        if let Some(key) = crate::snapshots::Records::load(self)?.user_of(&id) {
            return Err(Error::Busy(format!(
                "layer {id} holds containerd snapshot {key}"
            )));
        }
        // Metadata first: a crash after it leaves a directory the next start removes.
        self.remove_meta(&id)?;
        let _ = self.save_mount_state(&id, &MountState::default());
        let _ = std::fs::remove_dir(self.mount_dir(&id));
        remove_path(&self.layer_dir(&id))
    }

    fn exists(&self, id: &str) -> bool {
        self.resolve(id).is_ok()
    }

    fn status(&self) -> Result<Vec<(String, String)>, Error> {
        let layers = self.layers()?;
        let mounted = layers
            .iter()
            .filter(|m| is_mounted(&self.mount_dir(&m.id)))
            .count();
        let fs = match nix::sys::statfs::statfs(&self.root).map(|s| s.filesystem_type().0 as u64) {
            Ok(0xef53) => "ext4".to_string(),
            Ok(0x0102_1994) => "tmpfs".to_string(),
            Ok(0x5846_5342) => "xfs".to_string(),
            Ok(0x9123_683e) => "btrfs".to_string(),
            Ok(other) => format!("{other:#x}"),
            Err(e) => e.to_string(),
        };
        Ok(vec![
            ("Root Dir".into(), self.root.display().to_string()),
            ("Backing Filesystem".into(), fs),
            ("Layers".into(), layers.len().to_string()),
            ("Images".into(), self.images()?.len().to_string()),
            ("Mounted".into(), mounted.to_string()),
            (
                "Mount Program".into(),
                mount_program().display().to_string(),
            ),
        ])
    }

    fn metadata(&self, id: &str) -> Result<LayerMeta, Error> {
        self.layer(&self.resolve(id)?)
    }

    fn cleanup(&self) -> Result<(), Error> {
        for m in self.layers()? {
            let mnt = self.mount_dir(&m.id);
            if is_mounted(&mnt) {
                unmount(&mnt)?;
            }
            self.save_mount_state(&m.id, &MountState::default())?;
        }
        Ok(())
    }

    fn diff(&self, id: &str, out: &mut dyn Write) -> Result<(), Error> {
        let id = self.resolve(id)?;
        let fd = open_dir(&self.layer_dir(&id))?;
        write_layer(&fd, out).map_err(|e| self.io("layers", e))?;
        Ok(())
    }

    fn changes(&self, id: &str) -> Result<Vec<(char, String)>, Error> {
        let id = self.resolve(id)?;
        let view = self.parent_view(&id)?;
        let fd = open_dir(&self.layer_dir(&id))?;
        let mut out = BTreeMap::new();
        changes_in(&fd, Path::new(""), view.as_ref(), &mut out)
            .map_err(|e| self.io("layers", e.into()))?;
        Ok(out.into_iter().map(|(p, c)| (c, p)).collect())
    }

    fn apply_diff(&self, id: &str, diff: &mut dyn Read) -> Result<u64, Error> {
        let id = self.resolve(id)?;
        let mut m = self.layer(&id)?;
        let dir = self.layer_dir(&id);
        let fd = open_dir(&dir)?;
        if !fsat::read_dir(&fd)
            .map_err(|e| self.io("layers", e.into()))?
            .is_empty()
        {
            return Err(Error::Invalid(format!("layer {id} is not empty")));
        }
        let tmp = self.temp_dir("apply")?;
        let tfd = open_dir(&tmp)?;
        let mut hashing = Hashing::new(diff);
        let extracted = extract(&mut hashing, &tfd)
            .map_err(Error::from)
            .and_then(|_| {
                std::io::copy(&mut hashing, &mut std::io::sink())
                    .map_err(|e| Error::Io("tar".into(), e))
            });
        if let Err(e) = extracted {
            // Nothing half-extracted stays behind.
            let _ = self.clear_tmp();
            return Err(e);
        }
        // The empty layer directory is replaced whole.
        std::fs::rename(&tmp, &dir).map_err(|e| self.io("layers", e))?;
        m.diff_digest = Some(hashing.digest());
        self.refresh_size(&mut m)?;
        Ok(m.size)
    }

    fn diff_size(&self, id: &str) -> Result<u64, Error> {
        let id = self.resolve(id)?;
        let fd = open_dir(&self.layer_dir(&id))?;
        sum_sizes(&fd).map_err(|e| self.io("layers", e.into()))
    }
}

pub fn unmount(p: &Path) -> Result<(), Error> {
    if !is_mounted(p) {
        return Ok(());
    }
    let ok = Command::new("fusermount3")
        .arg("-u")
        .arg(p)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH)
            .map_err(|e| Error::Io(p.display().to_string(), e.into()))?;
    }
    Ok(())
}

/// `docker diff` lines for the layer directory `dir` (at `rel`) against `view`.
fn changes_in(
    dir: &Dir,
    rel: &Path,
    view: Option<&BranchSet>,
    out: &mut BTreeMap<String, char>,
) -> Result<(), fsat::Errno> {
    let entries = fsat::read_dir(dir)?;
    let shown = |p: &Path| format!("/{}", p.display());
    if entries.iter().any(|e| e.name == whiteout::OPAQUE) {
        // An opaque directory hides what the parents held in it.
        if let Some(v) = view {
            for n in unionfs::view::names(v, rel) {
                if !entries.iter().any(|e| e.name == n) {
                    out.insert(shown(&rel.join(&n)), 'D');
                }
            }
        }
    }
    for e in &entries {
        if (rel.as_os_str().is_empty() && whiteout::is_daemon_dir(&e.name))
            || e.name == whiteout::OPAQUE
        {
            continue;
        }
        if let Some(h) = whiteout::hidden_name(&e.name) {
            out.insert(shown(&rel.join(h)), 'D');
            continue;
        }
        if whiteout::is_reserved(&e.name) {
            continue;
        }
        let p = rel.join(&e.name);
        let existed = match view {
            Some(v) => unionfs::view::exists(v, &p)?,
            None => false,
        };
        out.insert(shown(&p), if existed { 'C' } else { 'A' });
        if e.kind == libc::S_IFDIR
            || (e.kind == 0 && fsat::stat_at(dir, &e.name)?.st_mode & libc::S_IFMT == libc::S_IFDIR)
        {
            let sub = fsat::open_dir(dir, Path::new(&e.name))?;
            changes_in(&sub, &p, if existed { view } else { None }, out)?;
        }
    }
    Ok(())
}
