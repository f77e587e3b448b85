//! Layer tars in and out.
//!
//! Extraction treats every tar as hostile: no absolute paths, no `..`, no
//! bare `.wh.`, nothing written through a symlink (parents are opened with
//! `openat2(RESOLVE_NO_SYMLINKS)` from the layer root, so a symlink made
//! earlier in the same tar is refused too), hard links only to files already
//! in the layer. Whiteouts are kept as they are: the on-disk format of a
//! branch is the OCI layer format, so `.wh.NAME` and `.wh..wh..opq` mean
//! exactly what OCI says (they hide lower layers; entries of the same layer
//! stay).

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::fcntl::OFlag;
use sha2::{Digest, Sha256};
use unionfs::fsat::{self, Dir, Errno, Time};
use unionfs::whiteout;

#[derive(Debug, thiserror::Error)]
pub enum TarError {
    #[error("tar entry {0}: absolute paths are not allowed")]
    Absolute(PathBuf),
    #[error("tar entry {0}: '..' is not allowed")]
    DotDot(PathBuf),
    #[error("tar entry {0}: a bare .wh. is not a whiteout")]
    BareWhiteout(PathBuf),
    #[error("tar entry {0}: a whiteout of '.' or '..' is not allowed")]
    DotWhiteout(PathBuf),
    #[error("tar entry {}...: paths longer than {PATH_MAX} bytes are not allowed", .0.display().to_string().chars().take(64).collect::<String>())]
    TooLong(PathBuf),
    #[error("tar entry {0}: reserved name")]
    Reserved(PathBuf),
    #[error("tar entry {0}: writes through a symlink are not allowed")]
    ThroughSymlink(PathBuf),
    #[error("tar entry {0}: hard link target {1} is not in the layer")]
    LinkOutside(PathBuf, PathBuf),
    #[error("tar entry {0}: unsupported entry type")]
    Unsupported(PathBuf),
    #[error("tar entry {0}: {1}")]
    Fs(PathBuf, Errno),
    #[error("bad or truncated archive: {0}")]
    Archive(io::Error),
}

/// A reader that hashes what passes through it (the layer's DiffID).
pub struct Hashing<R> {
    inner: R,
    pub hasher: Sha256,
    pub bytes: u64,
}

impl<R: Read> Hashing<R> {
    pub fn new(inner: R) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    pub fn digest(self) -> String {
        format!("sha256:{}", hex::encode(self.hasher.finalize()))
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// A tar path made relative and checked; empty for the root itself.
fn clean(p: &Path) -> Result<PathBuf, TarError> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(x) => out.push(x),
            Component::CurDir => {}
            Component::ParentDir => return Err(TarError::DotDot(p.to_path_buf())),
            Component::RootDir | Component::Prefix(_) => {
                return Err(TarError::Absolute(p.to_path_buf()))
            }
        }
    }
    Ok(out)
}

/// What an extraction wrote.
#[derive(Debug, Default)]
pub struct Extracted {
    /// Bytes of regular file data.
    pub size: u64,
    pub entries: u64,
    /// What a rootless import could not make as the tar had it.
    pub kept: Vec<crate::owners::Kept>,
}

type Xattrs = Vec<(OsString, Vec<u8>)>;

/// The longest path a layer may hold: what programs in the container can
/// name (and so every walk of a layer stays within a few thousand levels).
pub const PATH_MAX: usize = 4096;

struct Extractor<'a> {
    root: &'a Dir,
    /// Directory metadata is set last: filling a directory changes its times.
    dirs: Vec<(PathBuf, tar::Header, Xattrs)>,
    /// The parent directory of the last entry, and the last directory made:
    /// tars list a directory's entries together, after the directory, so
    /// most lookups start at one of them. Dropped whenever an entry replaces
    /// something, which might lie on their paths.
    last: [Option<(PathBuf, Dir)>; 2],
    out: Extracted,
}

fn fs_err(p: &Path) -> impl Fn(Errno) -> TarError + '_ {
    move |e| match e {
        Errno::ELOOP | Errno::ENOTDIR => TarError::ThroughSymlink(p.to_path_buf()),
        e => TarError::Fs(p.to_path_buf(), e),
    }
}

/// Extract the tar read from `reader` into the directory `root`.
pub fn extract(reader: impl Read, root: &Dir) -> Result<Extracted, TarError> {
    let mut archive = tar::Archive::new(reader);
    let mut x = Extractor {
        root,
        dirs: Vec::new(),
        last: [None, None],
        out: Extracted::default(),
    };
    for entry in archive.entries().map_err(TarError::Archive)? {
        let mut entry = entry.map_err(TarError::Archive)?;
        x.entry(&mut entry)?;
    }
    // Deepest first, so a parent's times are set after its children's.
    x.dirs
        .sort_by_key(|d| std::cmp::Reverse(d.0.components().count()));
    for (path, header, xattrs) in std::mem::take(&mut x.dirs) {
        let (dir, name) = x.parent(&path, false)?;
        set_meta(&dir, &name, &header, &xattrs, false).map_err(fs_err(&path))?;
    }
    if !x.out.kept.is_empty() {
        let p = Path::new(whiteout::OWNERS_FILE);
        let json = serde_json::to_vec(&x.out.kept).map_err(|e| TarError::Archive(e.into()))?;
        let f = fsat::open_at(
            root,
            p.as_os_str(),
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY,
            0o600,
        )
        .map_err(fs_err(p))?;
        std::fs::File::from(f)
            .write_all(&json)
            .map_err(TarError::Archive)?;
    }
    Ok(x.out)
}

impl Extractor<'_> {
    /// An fd on the parent directory of `path` and its last name; missing
    /// parents are created (as tar allows omitting them).
    fn parent(&self, path: &Path, create: bool) -> Result<(Dir, OsString), TarError> {
        let comps: Vec<&OsStr> = path.iter().collect();
        let (name, dirs) = comps
            .split_last()
            .ok_or(TarError::Reserved(path.to_path_buf()))?;
        let parent = path.parent().unwrap_or(Path::new(""));
        for (p, fd) in self.last.iter().flatten() {
            if p == parent {
                return Ok((fd.try_clone().map_err(fs_err(path))?, name.to_os_string()));
            }
        }
        let mut cur = self.root.try_clone().map_err(fs_err(path))?;
        for d in dirs {
            let next = match fsat::open_dir(&cur, Path::new(d)) {
                Err(Errno::ENOENT) if create => {
                    fsat::mkdir_at(&cur, d, 0o755).map_err(fs_err(path))?;
                    fsat::open_dir(&cur, Path::new(d))
                }
                other => other,
            };
            cur = next.map_err(fs_err(path))?;
        }
        Ok((cur, name.to_os_string()))
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<R>) -> Result<(), TarError> {
        let raw = entry.path().map_err(TarError::Archive)?.into_owned();
        if raw.as_os_str().len() > PATH_MAX {
            return Err(TarError::TooLong(raw));
        }
        let path = clean(&raw)?;
        if path.as_os_str().is_empty() {
            return Ok(()); // "./" itself
        }
        let name = path.file_name().unwrap_or_default();
        if name.as_bytes() == whiteout::PREFIX.as_bytes() {
            return Err(TarError::BareWhiteout(raw));
        }
        if whiteout::is_dot_whiteout(name) {
            return Err(TarError::DotWhiteout(raw));
        }
        // The daemon's own directories, and anything below them.
        if path.iter().next().is_some_and(whiteout::is_daemon_dir) {
            return Err(TarError::Reserved(raw));
        }
        let xattrs = pax_xattrs(entry)?;
        let header = entry.header().clone();
        let kind = header.entry_type();
        if kind.is_pax_global_extensions()
            || kind.is_pax_local_extensions()
            || kind.is_gnu_longname()
        {
            return Ok(());
        }
        let (dirfd, name) = self.parent(&path, true)?;
        let err = fs_err(&path);
        let parent = path.parent().unwrap_or(Path::new("")).to_path_buf();
        self.last[0] = Some((parent, dirfd.try_clone().map_err(&err)?));
        let dir: &Dir = &dirfd;
        let existing = match fsat::stat_at(dir, &name) {
            Ok(st) => Some(st.st_mode & libc::S_IFMT),
            Err(Errno::ENOENT) => None,
            Err(e) => return Err(err(e)),
        };
        // A later entry of the same name replaces the earlier one (a directory
        // stays a directory and gets merged into). What was pending for the
        // replaced directory and below it no longer applies.
        let replaced = existing.is_some() && !(kind.is_dir() && existing == Some(libc::S_IFDIR));
        if replaced {
            fsat::remove_tree(dir, &name).map_err(&err)?;
            self.dirs.retain(|(p, _, _)| !p.starts_with(&path));
            self.last = [None, None];
        }
        // What was kept aside for this name (or below it, if replaced) goes too.
        self.out.kept.retain(|k| {
            let p = Path::new(OsStr::from_bytes(&k.path));
            p != path && !(replaced && p.starts_with(&path))
        });
        self.out.entries += 1;
        match kind {
            k if k.is_dir() => {
                if existing != Some(libc::S_IFDIR) {
                    fsat::mkdir_at(dir, &name, 0o700).map_err(&err)?;
                }
                let made = fsat::open_dir(dir, Path::new(&name)).map_err(&err)?;
                self.last[1] = Some((path.clone(), made));
                self.dirs.push((path.clone(), header, xattrs));
                return Ok(());
            }
            k if k.is_file() || k == tar::EntryType::Continuous => {
                let f = fsat::open_at(
                    dir,
                    &name,
                    OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY,
                    0o600,
                )
                .map_err(&err)?;
                let mut f = std::fs::File::from(f);
                let n = io::copy(entry, &mut f).map_err(TarError::Archive)?;
                f.flush().map_err(TarError::Archive)?;
                self.out.size += n;
            }
            k if k.is_symlink() => {
                let target = entry
                    .link_name()
                    .map_err(TarError::Archive)?
                    .ok_or(TarError::Unsupported(raw.clone()))?;
                fsat::symlink_at(target.as_os_str(), dir, &name).map_err(&err)?;
            }
            k if k.is_hard_link() => {
                let target = entry
                    .link_name()
                    .map_err(TarError::Archive)?
                    .ok_or(TarError::Unsupported(raw.clone()))?;
                let t = clean(&target)
                    .map_err(|_| TarError::LinkOutside(path.clone(), target.to_path_buf()))?;
                let outside = || TarError::LinkOutside(path.clone(), target.to_path_buf());
                let (tdir, tname) = self.parent(&t, false).map_err(|_| outside())?;
                match fsat::stat_at(&tdir, &tname) {
                    Ok(st) if st.st_mode & libc::S_IFMT != libc::S_IFDIR => {}
                    _ => return Err(outside()),
                }
                fsat::link_at(&tdir, &tname, dir, &name).map_err(&err)?;
                return Ok(()); // a link shares the target's metadata
            }
            k if k.is_character_special() || k.is_block_special() || k.is_fifo() => {
                let t = if k.is_fifo() {
                    libc::S_IFIFO
                } else if k.is_block_special() {
                    libc::S_IFBLK
                } else {
                    libc::S_IFCHR
                };
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                match fsat::mknod_at(dir, &name, t | 0o600, libc::makedev(major, minor)) {
                    // No user may make a device node, not even in its own namespace.
                    Err(Errno::EPERM) if t != libc::S_IFIFO && crate::userns::rootless() => {
                        log::warn!(
                            "{}: device node {major}:{minor} not made (a user cannot make one); \
                             kept for the layer's tar",
                            path.display()
                        );
                        let node = crate::owners::Node {
                            kind: if t == libc::S_IFBLK { 'b' } else { 'c' },
                            major,
                            minor,
                            mode: header.mode().unwrap_or(0o600) & 0o7777,
                            mtime: header.mtime().unwrap_or(0),
                        };
                        self.out
                            .kept
                            .push(crate::owners::Kept::of(&path, &header, Some(node)));
                        return Ok(());
                    }
                    r => r.map_err(&err)?,
                }
            }
            _ => return Err(TarError::Unsupported(raw)),
        }
        let kept = set_meta(dir, &name, &header, &xattrs, kind.is_symlink()).map_err(err)?;
        if kept {
            self.out
                .kept
                .push(crate::owners::Kept::of(&path, &header, None));
        }
        Ok(())
    }
}

fn pax_xattrs<R: Read>(entry: &mut tar::Entry<R>) -> Result<Vec<(OsString, Vec<u8>)>, TarError> {
    let mut out = Vec::new();
    if let Some(exts) = entry.pax_extensions().map_err(TarError::Archive)? {
        for ext in exts {
            let ext = ext.map_err(TarError::Archive)?;
            if let Some(k) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                out.push((
                    OsStr::from_bytes(k).to_os_string(),
                    ext.value_bytes().to_vec(),
                ));
            }
        }
    }
    Ok(out)
}

fn set_meta(
    dir: &Dir,
    name: &OsStr,
    h: &tar::Header,
    xattrs: &[(OsString, Vec<u8>)],
    link: bool,
) -> fsat::Result<bool> {
    let fd = fsat::open_at(dir, name, OFlag::O_PATH, 0)?;
    // Owner first: a chown clears setuid bits and file capabilities.
    let uid = h.uid().ok().map(|u| u as u32);
    let gid = h.gid().ok().map(|g| g as u32);
    // EINVAL: an id this user namespace does not map (a rootless user
    // without subordinate ids): the owners are recorded instead.
    let unmapped = match fsat::chown_obj(fd.as_fd(), uid, gid) {
        Ok(()) => false,
        Err(Errno::EINVAL) => true,
        Err(e) => return Err(e),
    };
    let mut kept = false;
    if unmapped {
        let value = crate::owners::encode(uid.unwrap_or(0), gid.unwrap_or(0));
        match fsat::set_xattr(fd.as_fd(), OsStr::new(crate::owners::XATTR), &value, 0) {
            Ok(()) => {}
            // user.* xattrs can be only on files and directories: owners of
            // symlinks, FIFOs and sockets are kept in the layer's record.
            Err(Errno::EPERM | Errno::EOPNOTSUPP)
                if link
                    || !matches!(
                        fsat::fstat(fd.as_fd()).map(|st| st.st_mode & libc::S_IFMT),
                        Ok(libc::S_IFREG | libc::S_IFDIR)
                    ) =>
            {
                kept = true
            }
            Err(e) => return Err(e),
        }
    }
    if !link {
        fsat::chmod_fd(fd.as_fd(), h.mode().unwrap_or(0o644) & 0o7777)?;
        for (k, v) in xattrs {
            match fsat::set_xattr(fd.as_fd(), k, v, 0) {
                Ok(()) | Err(Errno::EOPNOTSUPP | Errno::EPERM) => {}
                Err(e) => return Err(e),
            }
        }
    }
    let mtime = h.mtime().unwrap_or(0) as i64;
    fsat::utimes_obj(fd.as_fd(), Time::Set(mtime, 0), Time::Set(mtime, 0))?;
    Ok(kept)
}

/// Write the layer directory `root` as a tar to `out`, as it is on disk:
/// whiteouts stay `.wh.` files, which is the OCI form. Hard links within the
/// layer stay links; xattrs go in PAX records. The work directory is left out.
pub fn write_layer(root: &Dir, out: impl Write) -> io::Result<u64> {
    let mut b = tar::Builder::new(out);
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut n = 0;
    let kept = kept_of(root)?;
    walk(root, Path::new(""), &mut b, &mut links, &kept, &mut n)?;
    // Device nodes a rootless import could not make, as the tar had them.
    for k in kept.values() {
        let Some(node) = &k.node else { continue };
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(if node.kind == 'b' {
            tar::EntryType::Block
        } else {
            tar::EntryType::Char
        });
        h.set_mode(node.mode);
        h.set_uid(k.uid as u64);
        h.set_gid(k.gid as u64);
        h.set_mtime(node.mtime);
        h.set_size(0);
        h.set_device_major(node.major)?;
        h.set_device_minor(node.minor)?;
        b.append_data(&mut h, Path::new(OsStr::from_bytes(&k.path)), io::empty())?;
        n += 1;
    }
    b.into_inner()?.flush()?;
    Ok(n)
}

/// The layer's record of what a rootless import kept aside, by path (read
/// only for a rootless user: for root the ids are on the files).
fn kept_of(root: &Dir) -> io::Result<BTreeMap<Vec<u8>, crate::owners::Kept>> {
    let name = OsStr::new(whiteout::OWNERS_FILE);
    if !crate::userns::rootless() {
        return Ok(BTreeMap::new());
    }
    let f = match fsat::open_at(root, name, OFlag::O_RDONLY | OFlag::O_NOFOLLOW, 0) {
        Ok(f) => f,
        Err(Errno::ENOENT) => return Ok(BTreeMap::new()),
        Err(e) => return Err(e.into()),
    };
    let kept: Vec<crate::owners::Kept> =
        serde_json::from_reader(std::fs::File::from(f)).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", whiteout::OWNERS_FILE),
            )
        })?;
    Ok(kept.into_iter().map(|k| (k.path.clone(), k)).collect())
}

fn walk<W: Write>(
    dir: &Dir,
    rel: &Path,
    b: &mut tar::Builder<W>,
    links: &mut HashMap<(u64, u64), PathBuf>,
    kept: &BTreeMap<Vec<u8>, crate::owners::Kept>,
    n: &mut u64,
) -> io::Result<()> {
    let mut entries = fsat::read_dir(dir)?;
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    for e in entries {
        if rel.as_os_str().is_empty() && whiteout::is_daemon_dir(&e.name) {
            continue;
        }
        let path = rel.join(&e.name);
        let st = fsat::stat_at(dir, &e.name)?;
        let fd = fsat::open_at(dir, &e.name, OFlag::O_PATH, 0)?;
        let kind = st.st_mode & libc::S_IFMT;
        let mut h = tar::Header::new_gnu();
        h.set_mode(st.st_mode & 0o7777);
        h.set_uid(st.st_uid as u64);
        h.set_gid(st.st_gid as u64);
        h.set_mtime(st.st_mtime.max(0) as u64);
        h.set_size(0);
        if kind != libc::S_IFLNK {
            let mut xattrs = fsat::all_xattrs(fd.as_fd())?;
            // Owners a rootless import could not give go back into the header.
            if crate::userns::rootless() {
                if let Some(i) = xattrs.iter().position(|(k, _)| k == crate::owners::XATTR) {
                    let (_, v) = xattrs.remove(i);
                    if let Some((uid, gid)) = crate::owners::decode(&v) {
                        if uid != crate::owners::NOOP_ID {
                            h.set_uid(uid as u64);
                        }
                        if gid != crate::owners::NOOP_ID {
                            h.set_gid(gid as u64);
                        }
                    }
                }
            }
            if !xattrs.is_empty() {
                append_pax(b, &xattrs)?;
            }
        }
        *n += 1;
        match kind {
            libc::S_IFDIR => {
                h.set_entry_type(tar::EntryType::Directory);
                b.append_data(&mut h, &path, io::empty())?;
                let sub = fsat::open_dir(dir, Path::new(&e.name))?;
                walk(&sub, &path, b, links, kept, n)?;
            }
            libc::S_IFREG => {
                let key = (st.st_dev, st.st_ino);
                if st.st_nlink > 1 {
                    if let Some(first) = links.get(&key) {
                        h.set_entry_type(tar::EntryType::Link);
                        b.append_link(&mut h, &path, first)?;
                        continue;
                    }
                    links.insert(key, path.clone());
                }
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(st.st_size as u64);
                let f = std::fs::File::from(fsat::open_at(dir, &e.name, OFlag::O_RDONLY, 0)?);
                b.append_data(&mut h, &path, f)?;
            }
            libc::S_IFLNK => {
                h.set_entry_type(tar::EntryType::Symlink);
                if let Some(k) = kept.get(path.as_os_str().as_bytes()) {
                    h.set_uid(k.uid as u64);
                    h.set_gid(k.gid as u64);
                }
                let target = fsat::readlink_obj(fd.as_fd())?;
                b.append_link(&mut h, &path, target)?;
            }
            _ => {
                h.set_entry_type(match kind {
                    libc::S_IFIFO => tar::EntryType::Fifo,
                    libc::S_IFBLK => tar::EntryType::Block,
                    _ => tar::EntryType::Char,
                });
                h.set_device_major(libc::major(st.st_rdev))?;
                h.set_device_minor(libc::minor(st.st_rdev))?;
                b.append_data(&mut h, &path, io::empty())?;
            }
        }
    }
    Ok(())
}

/// A PAX extended header carrying xattrs for the next entry.
fn append_pax<W: Write>(b: &mut tar::Builder<W>, xattrs: &[(OsString, Vec<u8>)]) -> io::Result<()> {
    let mut data = Vec::new();
    for (k, v) in xattrs {
        let mut body = b"SCHILY.xattr.".to_vec();
        body.extend_from_slice(k.as_bytes());
        body.push(b'=');
        body.extend_from_slice(v);
        body.push(b'\n');
        // The length field counts itself: find the fixed point.
        let mut len = body.len() + 2;
        while format!("{len} ").len() + body.len() != len {
            len = format!("{len} ").len() + body.len();
        }
        data.extend_from_slice(format!("{len} ").as_bytes());
        data.extend_from_slice(&body);
    }
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::XHeader);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    b.append_data(&mut h, "PaxHeader", data.as_slice())
}
