//! The unionctl channel, server side: a Unix socket per mount, one JSON
//! request and one JSON answer per connection. The caller is identified with
//! SO_PEERCRED: anyone may list and query, only root or the user who mounted
//! may change the branch set.
//!
//! A change builds a whole new branch set, checks it with the rules of
//! DESIGN.md section 2, swaps it in atomically (requests in flight finish on
//! the set they started with), then invalidates the kernel's cached entries
//! and attributes so that the next lookup sees the change.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::branch::{self, Branch, BranchSet, BranchSpec, Mode};
use crate::sys::{self, Errno};
use crate::union::Union;
use crate::whiteout;

/// Where a new branch goes.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Position {
    Top,
    Before(PathBuf),
    After(PathBuf),
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    List,
    Add {
        dir: PathBuf,
        mode: Mode,
        position: Position,
    },
    Remove {
        branch: PathBuf,
        force: bool,
    },
    SetMode {
        branch: PathBuf,
        mode: Mode,
    },
    Snapshot {
        dir: PathBuf,
    },
    /// Which branches hold PATH (relative to the union root).
    Query {
        path: PathBuf,
    },
}

impl Request {
    fn changes(&self) -> bool {
        !matches!(self, Request::List | Request::Query { .. })
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BranchInfo {
    pub path: PathBuf,
    pub mode: Mode,
}

/// One branch's instance of a queried path.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Holding {
    pub branch: PathBuf,
    pub mode: Mode,
    /// "file", "directory", "opaque directory", "symlink", "whiteout", ...
    pub what: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Branches(Vec<BranchInfo>),
    Holders(Vec<Holding>),
    Error { message: String, errno: i32 },
}

fn error(errno: Errno, message: impl Into<String>) -> Response {
    Response::Error {
        message: message.into(),
        errno: errno as i32,
    }
}

/// The name of the socket of the mount at `mountpoint` (canonical): a hash
/// of the mount point, since socket paths are limited to 108 bytes.
fn socket_name(mountpoint: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    // FNV-1a: stable across builds, unlike the std hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in mountpoint.as_os_str().as_bytes() {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}.sock")
}

/// Where a daemon run by `uid` puts its socket: /run/unionfs for root,
/// $XDG_RUNTIME_DIR/unionfs (or /tmp/unionfs-UID) for anyone else.
fn socket_dir(uid: u32) -> PathBuf {
    if uid == 0 {
        return PathBuf::from("/run/unionfs");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) => PathBuf::from(d).join("unionfs"),
        None => PathBuf::from(format!("/tmp/unionfs-{uid}")),
    }
}

/// The socket this process would serve `mountpoint` on.
pub fn socket_path(mountpoint: &Path) -> PathBuf {
    socket_dir(sys::getuid()).join(socket_name(mountpoint))
}

/// The socket of the daemon serving `mountpoint`, whoever mounted it.
fn find_socket(mountpoint: &Path) -> PathBuf {
    let name = socket_name(mountpoint);
    let owner = std::fs::metadata(mountpoint)
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap_or(0);
    [socket_dir(0), socket_dir(sys::getuid()), socket_dir(owner)]
        .into_iter()
        .map(|d| d.join(&name))
        .find(|p| p.exists())
        .unwrap_or_else(|| socket_dir(0).join(&name))
}

/// Removes the socket when the mount ends.
pub struct ControlSocket {
    path: PathBuf,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// How the kernel's caches are dropped after a change.
pub type Invalidate = Box<dyn Fn(&Union) + Send>;

/// Serve unionctl requests for `union` mounted at `mountpoint` on a thread.
pub fn serve(
    union: Arc<Union>,
    mountpoint: PathBuf,
    invalidate: Invalidate,
) -> std::io::Result<ControlSocket> {
    let path = socket_path(&mountpoint);
    let dir = path.parent().expect("socket path has a directory");
    std::fs::create_dir_all(dir)?;
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    // Anyone may connect; each request is checked against the caller's uid.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))?;
    let owner = sys::getuid();
    std::thread::Builder::new()
        .name("unionctl".into())
        .spawn(move || {
            let server = Server {
                union,
                mountpoint,
                owner,
                invalidate,
            };
            for conn in listener.incoming() {
                match conn {
                    Ok(stream) => server.connection(stream),
                    Err(e) => log::warn!("control socket: {e}"),
                }
            }
        })?;
    Ok(ControlSocket { path })
}

struct Server {
    union: Arc<Union>,
    mountpoint: PathBuf,
    owner: u32,
    invalidate: Invalidate,
}

impl Server {
    fn connection(&self, stream: UnixStream) {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let uid = nix::sys::socket::getsockopt(
            &stream.as_fd(),
            nix::sys::socket::sockopt::PeerCredentials,
        )
        .map(|c| c.uid())
        .unwrap_or(u32::MAX);
        let mut line = String::new();
        let response = match BufReader::new(&stream).read_line(&mut line) {
            Err(e) => error(Errno::EIO, format!("cannot read the request: {e}")),
            Ok(_) => match serde_json::from_str::<Request>(&line) {
                Err(e) => error(Errno::EINVAL, format!("bad request: {e}")),
                Ok(req) if req.changes() && uid != 0 && uid != self.owner => error(
                    Errno::EPERM,
                    match self.owner {
                        0 => "permission denied: only root may change the branches of this mount".to_string(),
                        o => format!("permission denied: only root or uid {o} (who mounted) may change the branches"),
                    },
                ),
                Ok(req) => self.handle(req),
            },
        };
        let mut text = serde_json::to_string(&response).unwrap_or_default();
        text.push('\n');
        let mut stream = stream;
        let _ = stream.write_all(text.as_bytes());
    }

    fn handle(&self, req: Request) -> Response {
        match req {
            Request::List => Response::Branches(list(&self.union.branches())),
            Request::Query { path } => query(&self.union.branches(), &path),
            change => match self.change(change) {
                Ok(bs) => Response::Branches(list(&bs)),
                Err(r) => r,
            },
        }
    }

    fn change(&self, req: Request) -> Result<Arc<BranchSet>, Response> {
        let _serial = self.union.change_lock.lock();
        let old = self.union.branches();
        let mut next: Vec<(Option<Arc<Branch>>, BranchSpec)> = old
            .branches
            .iter()
            .map(|b| {
                (
                    Some(b.clone()),
                    BranchSpec {
                        path: b.path.clone(),
                        mode: b.mode,
                    },
                )
            })
            .collect();
        let find = |next: &[(Option<Arc<Branch>>, BranchSpec)], p: &Path| {
            next.iter().position(|(_, s)| s.path == p).ok_or_else(|| {
                error(
                    Errno::ENOENT,
                    format!("{} is not a branch of this union", p.display()),
                )
            })
        };
        let new_spec = |dir: PathBuf, mode: Mode| -> Result<_, Response> {
            if !dir.is_absolute() {
                return Err(error(
                    Errno::EINVAL,
                    format!("{}: the branch path must be absolute", dir.display()),
                ));
            }
            Ok((None, BranchSpec { path: dir, mode }))
        };
        match req {
            Request::Add {
                dir,
                mode,
                position,
            } => {
                let at = match &position {
                    Position::Top => 0,
                    Position::Before(b) => find(&next, b)?,
                    Position::After(b) => find(&next, b)? + 1,
                };
                next.insert(at, new_spec(dir, mode)?);
            }
            Request::Remove { branch, force } => {
                let at = find(&next, &branch)?;
                if next.len() == 1 {
                    return Err(error(Errno::EBUSY, "cannot remove the only branch"));
                }
                let id = next[at].0.as_ref().map(|b| b.id).unwrap_or(0);
                if !force {
                    let open = self.union.open_files_on(id);
                    if open > 0 {
                        return Err(error(
                            Errno::EBUSY,
                            format!(
                                "{} has {open} open file(s) (--force removes it anyway)",
                                branch.display()
                            ),
                        ));
                    }
                    let writable = next.iter().filter(|(_, s)| s.mode == Mode::Rw).count();
                    if next[at].1.mode == Mode::Rw && writable == 1 {
                        return Err(error(
                            Errno::EBUSY,
                            format!(
                                "{} is the only writable branch (--force removes it anyway)",
                                branch.display()
                            ),
                        ));
                    }
                }
                next.remove(at);
            }
            Request::SetMode { branch, mode } => {
                let at = find(&next, &branch)?;
                next[at].1.mode = mode;
            }
            Request::Snapshot { dir } => {
                for (_, s) in next.iter_mut() {
                    s.mode = Mode::Ro;
                }
                next.insert(0, new_spec(dir, Mode::Rw)?);
            }
            Request::List | Request::Query { .. } => unreachable!("not a change"),
        }
        let specs: Vec<BranchSpec> = next.iter().map(|(_, s)| s.clone()).collect();
        let checked = branch::resolve(&specs, Some(&self.mountpoint))
            .map_err(|e| error(Errno::EINVAL, e.to_string()))?;
        let mut branches = Vec::new();
        for ((existing, spec), canon) in next.into_iter().zip(checked) {
            let b = match existing {
                Some(b) if b.mode == spec.mode => b,
                Some(b) => Arc::new(
                    b.with_mode(spec.mode)
                        .map_err(|e| error(e, format!("{}: {e}", spec.path.display())))?,
                ),
                None => {
                    let b = Branch::open(&canon).map_err(|e| {
                        error(
                            Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
                            format!("{}: {e}", canon.path.display()),
                        )
                    })?;
                    b.clean_work()
                        .map_err(|e| error(e, format!("{}: {e}", canon.path.display())))?;
                    Arc::new(b)
                }
            };
            branches.push(b);
        }
        let bs = Arc::new(BranchSet::new(branches));
        self.union.set_branches(bs.clone());
        (self.invalidate)(&self.union);
        log::info!("branches now: {:?}", list(&bs));
        Ok(bs)
    }
}

fn list(bs: &BranchSet) -> Vec<BranchInfo> {
    bs.branches
        .iter()
        .map(|b| BranchInfo {
            path: b.path.clone(),
            mode: b.mode,
        })
        .collect()
}

/// What each branch holds at `path`, topmost first.
fn query(bs: &BranchSet, path: &Path) -> Response {
    if path.is_absolute()
        || path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return error(Errno::EINVAL, "the query path must lie inside the union");
    }
    let (parent, name) = crate::union::split(path);
    let mut out = Vec::new();
    for b in &bs.branches {
        let what = if path.as_os_str().is_empty() {
            Some("directory".to_string())
        } else {
            match b.dir(parent) {
                Err(_) => None,
                Ok(dir) => describe(dir.as_fd(), name),
            }
        };
        if let Some(what) = what {
            out.push(Holding {
                branch: b.path.clone(),
                mode: b.mode,
                what,
            });
        }
    }
    Response::Holders(out)
}

fn describe(dir: std::os::fd::BorrowedFd, name: &std::ffi::OsStr) -> Option<String> {
    let mut what = match sys::stat_at(dir, name) {
        Ok(st) => match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR if whiteout::is_opaque(dir, name).unwrap_or(false) => "opaque directory",
            libc::S_IFDIR => "directory",
            libc::S_IFLNK => "symlink",
            libc::S_IFREG => "file",
            _ => "special file",
        }
        .to_string(),
        Err(_) => String::new(),
    };
    if whiteout::has_whiteout(dir, name).unwrap_or(false) {
        what = if what.is_empty() {
            "whiteout".into()
        } else {
            format!("{what} (and a whiteout)")
        };
    }
    (!what.is_empty()).then_some(what)
}

/// Send one request to the daemon serving `mountpoint` (canonical) and read its answer.
pub fn request(mountpoint: &Path, req: &Request) -> std::io::Result<Response> {
    let mut stream = UnixStream::connect(find_socket(mountpoint))?;
    let mut text = serde_json::to_string(req)?;
    text.push('\n');
    stream.write_all(text.as_bytes())?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    Ok(serde_json::from_str(&line)?)
}
