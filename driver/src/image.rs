//! Importing images: OCI image layouts and `docker save` archives.
//!
//! Every blob is checked against its digest, and every layer's uncompressed
//! tar against the config's DiffID, before anything is registered: layers are
//! extracted under tmp/ and renamed into place only when all of them passed.
//! Layers are stored under their chain id, so a layer two images share is
//! stored once.

use std::fs::File;
use std::io::{BufReader, Read};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use unionfs::fsat::{self, Dir};

use crate::store::{check_name, Image, ImageConfig, LayerMeta, Store};
use crate::tar::{extract, Hashing};
use crate::Error;

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
    #[serde(default)]
    annotations: std::collections::HashMap<String, String>,
}

#[derive(Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Manifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

#[derive(Deserialize)]
struct ConfigFile {
    #[serde(default)]
    config: Option<ImageConfig>,
    rootfs: RootFs,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SaveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::Invalid(msg.into())
}

/// `sha256:HEX` -> HEX, refusing anything else (so no digest names a path
/// outside blobs/).
fn digest_hex(d: &str) -> Result<&str, Error> {
    let hex = d
        .strip_prefix("sha256:")
        .ok_or_else(|| invalid(format!("unsupported digest '{d}'")))?;
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return Err(invalid(format!("malformed digest '{d}'")));
    }
    Ok(hex)
}

fn sha256_of(r: impl Read) -> std::io::Result<String> {
    let mut h = Hashing::new(r);
    std::io::copy(&mut h, &mut std::io::sink())?;
    Ok(h.digest())
}

/// A regular file inside `root`, opened fd-relative (no symlink, no `..`;
/// a FIFO or device planted in an image is an error, never a wait).
fn open_in(root: &Dir, rel: &Path) -> Result<File, Error> {
    if rel.is_absolute()
        || rel
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(invalid(format!(
            "{} points outside the image",
            rel.display()
        )));
    }
    let bad = |e: fsat::Errno| invalid(format!("{}: {e}", rel.display()));
    // Looked at before it is opened: opening a device can act (a watchdog
    // arms itself), a FIFO waits.
    let fd = fsat::open_beneath(root, rel, OFlag::O_PATH, 0).map_err(bad)?;
    if fsat::fstat(fd.as_fd()).map_err(bad)?.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(invalid(format!("{}: not a regular file", rel.display())));
    }
    let file = fsat::Obj::fd(fd.as_fd())
        .open(OFlag::O_RDONLY)
        .map_err(bad)?;
    Ok(File::from(file))
}

/// A layer blob: gzip, zstd or plain tar, told apart by its first bytes.
fn decompress(f: File) -> Result<Box<dyn Read>, Error> {
    let mut r = BufReader::new(f);
    let magic = {
        use std::io::BufRead;
        r.fill_buf()
            .map_err(|e| Error::Io("layer".into(), e))?
            .get(..4)
            .map(|m| m.to_vec())
            .unwrap_or_default()
    };
    Ok(if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::GzDecoder::new(r))
    } else if magic == [0x28, 0xb5, 0x2f, 0xfd] {
        Box::new(
            zstd::stream::read::Decoder::with_buffer(r).map_err(|e| Error::Io("zstd".into(), e))?,
        )
    } else {
        Box::new(r)
    })
}

struct Parts {
    root: Dir,
    config: ImageConfig,
    diff_ids: Vec<String>,
    /// Layer blob paths inside `root`, bottom first, with the digest the
    /// compressed blob must have (OCI) if any.
    layers: Vec<(PathBuf, Option<String>)>,
    name: Option<String>,
}

fn read_json<T: for<'de> Deserialize<'de>>(root: &Dir, rel: &Path) -> Result<T, Error> {
    let mut b = Vec::new();
    open_in(root, rel)?
        .read_to_end(&mut b)
        .map_err(|e| Error::Io(rel.display().to_string(), e))?;
    serde_json::from_slice(&b).map_err(|e| invalid(format!("{}: {e}", rel.display())))
}

fn blob_path(digest: &str) -> Result<PathBuf, Error> {
    Ok(PathBuf::from("blobs/sha256").join(digest_hex(digest)?))
}

fn verify_blob(root: &Dir, digest: &str) -> Result<(), Error> {
    let p = blob_path(digest)?;
    let got = sha256_of(open_in(root, &p)?).map_err(|e| Error::Io(p.display().to_string(), e))?;
    if got != digest {
        return Err(invalid(format!(
            "digest mismatch for {}: content is {got}",
            p.display()
        )));
    }
    Ok(())
}

fn oci_layout(dir: &Path, tag: Option<&str>) -> Result<Parts, Error> {
    let root = Dir::open_root(dir).map_err(|e| Error::Io(dir.display().to_string(), e.into()))?;
    let index: Index = read_json(&root, Path::new("index.json"))?;
    let ref_name = "org.opencontainers.image.ref.name";
    let desc = match tag {
        Some(t) => index
            .manifests
            .iter()
            .find(|m| m.annotations.get(ref_name).map(String::as_str) == Some(t)),
        None => index.manifests.first(),
    }
    .ok_or_else(|| {
        invalid(format!(
            "no manifest{} in {}/index.json",
            tag.map(|t| format!(" tagged {t}")).unwrap_or_default(),
            dir.display()
        ))
    })?;
    verify_blob(&root, &desc.digest)?;
    let manifest: Manifest = read_json(&root, &blob_path(&desc.digest)?)?;
    verify_blob(&root, &manifest.config.digest)?;
    let cfg: ConfigFile = read_json(&root, &blob_path(&manifest.config.digest)?)?;
    let layers = manifest
        .layers
        .iter()
        .map(|l| Ok((blob_path(&l.digest)?, Some(l.digest.clone()))))
        .collect::<Result<Vec<_>, Error>>()?;
    Ok(Parts {
        root,
        config: cfg.config.unwrap_or_default(),
        diff_ids: cfg.rootfs.diff_ids,
        layers,
        name: desc
            .annotations
            .get(ref_name)
            .cloned()
            .or(tag.map(String::from)),
    })
}

fn docker_save(store: &Store, archive: &Path) -> Result<Parts, Error> {
    // Unpacked with the same hostile-input rules as any layer.
    let tmp = store.temp_dir("save")?;
    let troot = Dir::open_root(&tmp).map_err(|e| Error::Io(tmp.display().to_string(), e.into()))?;
    let f = File::open(archive).map_err(|e| Error::Io(archive.display().to_string(), e))?;
    extract(decompress(f)?, &troot)?;
    let manifest: Vec<SaveEntry> = read_json(&troot, Path::new("manifest.json"))?;
    let entry = manifest
        .into_iter()
        .next()
        .ok_or_else(|| invalid("empty manifest.json"))?;
    let cfg_path = PathBuf::from(&entry.config);
    let mut cfg_bytes = Vec::new();
    open_in(&troot, &cfg_path)?
        .read_to_end(&mut cfg_bytes)
        .map_err(|e| Error::Io(entry.config.clone(), e))?;
    // The config is named by its digest (HEX.json or blobs/sha256/HEX).
    let want = cfg_path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("")
        .trim_end_matches(".json")
        .to_string();
    let got = hex::encode(Sha256::digest(&cfg_bytes));
    if want.len() == 64 && want != got {
        return Err(invalid(format!(
            "digest mismatch for {}: content is sha256:{got}",
            entry.config
        )));
    }
    let cfg: ConfigFile = serde_json::from_slice(&cfg_bytes)
        .map_err(|e| invalid(format!("{}: {e}", entry.config)))?;
    Ok(Parts {
        root: troot,
        config: cfg.config.unwrap_or_default(),
        diff_ids: cfg.rootfs.diff_ids,
        layers: entry
            .layers
            .iter()
            .map(|l| (PathBuf::from(l), None))
            .collect(),
        name: entry.repo_tags.and_then(|t| t.into_iter().next()),
    })
}

/// ChainID(L0) = DiffID(L0); ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln)).
pub fn chain_id(parent: Option<&str>, diff_id: &str) -> String {
    match parent {
        None => diff_id.to_string(),
        Some(p) => format!(
            "sha256:{}",
            hex::encode(Sha256::digest(format!("{p} {diff_id}").as_bytes()))
        ),
    }
}

/// Import the image at `path` (`DIR[:TAG]` for an OCI layout, a file for a
/// `docker save` archive); answers the image. `progress` hears each layer done.
/// On failure nothing is registered and nothing half-built stays behind.
pub fn import(
    store: &Store,
    path: &str,
    name: Option<&str>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Image, Error> {
    let res = import_inner(store, path, name, progress);
    let _ = store.clear_tmp();
    res
}

fn import_inner(
    store: &Store,
    path: &str,
    name: Option<&str>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Image, Error> {
    let (p, tag) = match path.rsplit_once(':') {
        Some((p, t)) if !Path::new(path).exists() && Path::new(p).exists() => {
            (Path::new(p), Some(t))
        }
        _ => (Path::new(path), None),
    };
    let parts = if p.is_dir() {
        oci_layout(p, tag)?
    } else if p.is_file() {
        docker_save(store, p)?
    } else {
        return Err(Error::NotFound(format!(
            "{path}: no such image layout or archive"
        )));
    };
    if parts.layers.len() != parts.diff_ids.len() {
        return Err(invalid(format!(
            "{} layers but {} diff_ids in the config",
            parts.layers.len(),
            parts.diff_ids.len()
        )));
    }
    for d in &parts.diff_ids {
        digest_hex(d)?;
    }
    // 1. every compressed blob against its digest
    for (blob, digest) in &parts.layers {
        if let Some(d) = digest {
            verify_blob(&parts.root, d)?;
        } else {
            open_in(&parts.root, blob)?;
        }
    }
    // 2. extract the new layers aside, checking each DiffID
    let mut parent: Option<String> = None;
    let mut staged = Vec::new();
    let total = parts.layers.len();
    for (i, ((blob, _), diff_id)) in parts.layers.iter().zip(&parts.diff_ids).enumerate() {
        let id = chain_id(parent.as_deref(), diff_id);
        if store.meta(&id)?.is_none()
            && !staged
                .iter()
                .any(|(s, _, _): &(String, PathBuf, u64)| s == &id)
        {
            let tmp = store.temp_dir(&format!("layer{i}"))?;
            let tfd =
                Dir::open_root(&tmp).map_err(|e| Error::Io(tmp.display().to_string(), e.into()))?;
            let mut h = Hashing::new(decompress(open_in(&parts.root, blob)?)?);
            let x = extract(&mut h, &tfd)?;
            std::io::copy(&mut h, &mut std::io::sink())
                .map_err(|e| Error::Io(blob.display().to_string(), e))?;
            let got = h.digest();
            if &got != diff_id {
                return Err(invalid(format!(
                    "layer {}: uncompressed digest {got} does not match diff_id {diff_id}",
                    blob.display()
                )));
            }
            staged.push((id.clone(), tmp, x.size));
        }
        progress(i + 1, total);
        parent = Some(id);
    }
    // 3. register, bottom first
    let mut prev: Option<String> = None;
    let mut staged = staged.into_iter().peekable();
    for diff_id in &parts.diff_ids {
        let id = chain_id(prev.as_deref(), diff_id);
        if staged.peek().is_some_and(|(s, _, _)| s == &id) {
            let (_, tmp, size) = staged.next().expect("peeked");
            std::fs::rename(&tmp, store.layer_dir(&id)).map_err(|e| store.io("layers", e))?;
            store.save_meta(&LayerMeta {
                id: id.clone(),
                parent: prev.clone(),
                created: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
                diff_digest: Some(diff_id.clone()),
                size,
                rw: false,
                snapshotter: false,
            })?;
        }
        prev = Some(id);
    }
    let top = prev.ok_or_else(|| invalid("the image has no layers"))?;
    let name = name
        .map(String::from)
        .or(parts.name)
        .unwrap_or_else(|| top.replace("sha256:", "")[..12].to_string());
    check_name("image name", &name)?;
    let img = Image {
        name,
        top,
        config: parts.config,
    };
    store.save_image(&img)?;
    Ok(img)
}
