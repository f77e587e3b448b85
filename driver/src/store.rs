//! The layer store on disk.
//!
//! ```text
//! ROOT/                 0700
//!   lock                flock: one unionfs-driver process changes the store at a time
//!   layers/ID/          a layer's content, in the OCI layer format (= a unionfs branch)
//!   meta/ID.json        its metadata (id, parent, created, diff digest, size, rw)
//!   images/NAME.json    an image: its top layer and its config (Env, Cmd, ...)
//!   mounts/ID/          where a layer chain is mounted; mounts/ID.json its reference count
//!   snapshots.json      containerd's snapshots and the layers that hold them
//!   tmp/                layers being built; emptied when a process takes the lock
//! ```
//!
//! Every change is built aside and renamed into place: a layer in `tmp/`,
//! metadata in a temporary file that is fsynced first. A layer directory
//! without metadata is a leftover and is removed at the next start.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Error;

pub const DEFAULT_ROOT: &str = "/var/lib/unionfs-driver";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerMeta {
    pub id: String,
    pub parent: Option<String>,
    /// Seconds since the epoch.
    pub created: u64,
    /// sha256 of the layer's uncompressed tar, when it came from one.
    pub diff_digest: Option<String>,
    /// Bytes of file data in the layer.
    pub size: u64,
    /// A container's writable layer.
    pub rw: bool,
    /// Made by the containerd snapshotter, which removes it with the last
    /// snapshot that uses it (unless an image or layer of the driver does).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub snapshotter: bool,
}

/// What `run` needs from an image's config.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct ImageConfig {
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: String,
    #[serde(default)]
    pub user: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Image {
    pub name: String,
    pub top: String,
    pub config: ImageConfig,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MountState {
    pub count: u32,
}

pub struct Store {
    pub root: PathBuf,
    /// Held for the life of the Store; closing it releases the lock.
    _lock: nix::fcntl::Flock<File>,
}

/// Ids and names become file names: keep them to a safe alphabet (image
/// names may also hold '/', as in repository names).
pub fn check_name(kind: &str, s: &str) -> Result<(), Error> {
    let extra: &[u8] = if kind.starts_with("image") {
        b"._-:@+/"
    } else {
        b"._-:@+"
    };
    let ok = !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b));
    if ok {
        Ok(())
    } else {
        let chars = String::from_utf8_lossy(extra)
            .chars()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(" ");
        Err(Error::Invalid(format!(
            "bad {kind} '{s}': use letters, digits and {chars} (at most 128, not starting with '.')"
        )))
    }
}

/// A name as a file name: '/' cannot be in one, ':' cannot be in a branch list.
fn file_name(s: &str) -> String {
    s.replace('%', "%25")
        .replace(':', "%3A")
        .replace('/', "%2F")
}

fn from_file_name(s: &str) -> String {
    s.replace("%2F", "/")
        .replace("%3A", ":")
        .replace("%25", "%")
}

impl Store {
    /// Open (creating) the store at `root` and take its lock.
    pub fn open(root: &Path) -> Result<Store, Error> {
        let io = |e: std::io::Error| Error::Io(root.display().to_string(), e);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(io)?;
        fs::set_permissions(root, fs::Permissions::from_mode(0o700)).map_err(io)?;
        for d in ["layers", "meta", "images", "mounts", "tmp"] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(root.join(d))
                .map_err(io)?;
        }
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(root.join("lock"))
            .map_err(io)?;
        let lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| Error::Io(root.display().to_string(), e.into()))?;
        let store = Store {
            root: root.to_path_buf(),
            _lock: lock,
        };
        store.recover()?;
        Ok(store)
    }

    /// Remove everything under tmp/ (only the lock holder builds there).
    pub fn clear_tmp(&self) -> Result<(), Error> {
        for e in fs::read_dir(self.root.join("tmp")).map_err(|e| self.io("tmp", e))? {
            let e = e.map_err(|e| self.io("tmp", e))?;
            remove_path(&e.path())?;
        }
        Ok(())
    }

    /// Leftovers of an interrupted run: temporary builds, layers without
    /// metadata. None of them is visible, so one that cannot be removed now
    /// is left for the next run with a warning: a hostile leftover must not
    /// make every command fail.
    fn recover(&self) -> Result<(), Error> {
        if let Err(e) = self.clear_tmp() {
            log::warn!("leftovers in tmp/ stay for now: {e}");
        }
        for e in fs::read_dir(self.root.join("layers")).map_err(|e| self.io("layers", e))? {
            let e = e.map_err(|e| self.io("layers", e))?;
            let id = from_file_name(&e.file_name().to_string_lossy());
            if !self.meta_path(&id).exists() {
                log::info!("removing leftover layer directory {id}");
                if let Err(e) = remove_path(&e.path()) {
                    log::warn!("leftover layer directory {id} stays for now: {e}");
                }
            }
        }
        Ok(())
    }

    pub fn io(&self, what: &str, e: std::io::Error) -> Error {
        Error::Io(self.root.join(what).display().to_string(), e)
    }

    pub fn layer_dir(&self, id: &str) -> PathBuf {
        self.root.join("layers").join(file_name(id))
    }

    fn meta_path(&self, id: &str) -> PathBuf {
        self.root
            .join("meta")
            .join(format!("{}.json", file_name(id)))
    }

    fn image_path(&self, name: &str) -> PathBuf {
        self.root
            .join("images")
            .join(format!("{}.json", file_name(name)))
    }

    pub fn mount_dir(&self, id: &str) -> PathBuf {
        self.root.join("mounts").join(file_name(id))
    }

    fn mount_state_path(&self, id: &str) -> PathBuf {
        self.root
            .join("mounts")
            .join(format!("{}.json", file_name(id)))
    }

    /// A fresh directory under tmp/ to build in.
    pub fn temp_dir(&self, tag: &str) -> Result<PathBuf, Error> {
        let p = self
            .root
            .join("tmp")
            .join(format!("{tag}-{}", std::process::id()));
        let _ = remove_path(&p);
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&p)
            .map_err(|e| self.io("tmp", e))?;
        Ok(p)
    }

    /// Write `value` as JSON to `path`: a temporary file, fsynced, renamed.
    pub fn write_json<T: Serialize>(&self, path: &Path, value: &T) -> Result<(), Error> {
        let tmp = path.with_extension("json.tmp");
        let io = |e: std::io::Error| Error::Io(path.display().to_string(), e);
        let mut f = File::create(&tmp).map_err(io)?;
        f.write_all(&serde_json::to_vec_pretty(value).map_err(|e| Error::Invalid(e.to_string()))?)
            .map_err(io)?;
        f.sync_all().map_err(io)?;
        fs::rename(&tmp, path).map_err(io)?;
        if let Some(dir) = path.parent() {
            File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        }
        Ok(())
    }

    pub(crate) fn read_json<T: for<'de> Deserialize<'de>>(
        &self,
        path: &Path,
    ) -> Result<Option<T>, Error> {
        match fs::read(path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| Error::Invalid(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Io(path.display().to_string(), e)),
        }
    }

    pub fn meta(&self, id: &str) -> Result<Option<LayerMeta>, Error> {
        self.read_json(&self.meta_path(id))
    }

    pub fn layer(&self, id: &str) -> Result<LayerMeta, Error> {
        self.meta(id)?
            .ok_or_else(|| Error::NotFound(format!("no layer {id}")))
    }

    pub fn save_meta(&self, m: &LayerMeta) -> Result<(), Error> {
        self.write_json(&self.meta_path(&m.id), m)
    }

    pub fn remove_meta(&self, id: &str) -> Result<(), Error> {
        fs::remove_file(self.meta_path(id)).map_err(|e| self.io("meta", e))
    }

    /// Every JSON record in the store directory `dir`.
    fn read_all<T: for<'de> Deserialize<'de>>(&self, dir: &str) -> Result<Vec<T>, Error> {
        let mut out = Vec::new();
        for e in fs::read_dir(self.root.join(dir)).map_err(|e| self.io(dir, e))? {
            let p = e.map_err(|e| self.io(dir, e))?.path();
            if p.extension().is_some_and(|x| x == "json") {
                out.extend(self.read_json::<T>(&p)?);
            }
        }
        Ok(out)
    }

    pub fn layers(&self) -> Result<Vec<LayerMeta>, Error> {
        let mut out: Vec<LayerMeta> = self.read_all("meta")?;
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    pub fn image(&self, name: &str) -> Result<Option<Image>, Error> {
        self.read_json(&self.image_path(name))
    }

    pub fn save_image(&self, img: &Image) -> Result<(), Error> {
        self.write_json(&self.image_path(&img.name), img)
    }

    pub fn images(&self) -> Result<Vec<Image>, Error> {
        let mut out: Vec<Image> = self.read_all("images")?;
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub fn mount_state(&self, id: &str) -> Result<MountState, Error> {
        Ok(self
            .read_json(&self.mount_state_path(id))?
            .unwrap_or_default())
    }

    pub fn save_mount_state(&self, id: &str, s: &MountState) -> Result<(), Error> {
        if s.count == 0 {
            let _ = fs::remove_file(self.mount_state_path(id));
            return Ok(());
        }
        self.write_json(&self.mount_state_path(id), s)
    }

    /// A layer id, or the top layer of the image of that name.
    pub fn resolve(&self, id_or_image: &str) -> Result<String, Error> {
        if self.meta(id_or_image)?.is_some() {
            return Ok(id_or_image.to_string());
        }
        match self.image(id_or_image)? {
            Some(img) => Ok(img.top),
            None => Err(Error::NotFound(format!("no layer or image {id_or_image}"))),
        }
    }

    /// `id` and its ancestors, top first.
    pub fn chain(&self, id: &str) -> Result<Vec<LayerMeta>, Error> {
        let mut out = Vec::new();
        let mut cur = Some(id.to_string());
        while let Some(c) = cur {
            let m = self.layer(&c)?;
            cur = m.parent.clone();
            out.push(m);
            if out.len() > 4096 {
                return Err(Error::Invalid(format!("layer chain of {id} loops")));
            }
        }
        Ok(out)
    }
}

/// Remove a file or a whole tree, never following symlinks.
pub fn remove_path(p: &Path) -> Result<(), Error> {
    let parent = p.parent().unwrap_or(Path::new("/"));
    let name = p.file_name().unwrap_or_default();
    let dir = unionfs::fsat::Dir::open_root(parent)
        .map_err(|e| Error::Io(p.display().to_string(), e.into()))?;
    unionfs::fsat::remove_tree(&dir, name).map_err(|e| Error::Io(p.display().to_string(), e.into()))
}
