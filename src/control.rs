//! The unionctl channel: a Unix socket per mount, one JSON request and one
//! JSON answer per connection. The socket lives in a directory only its
//! daemon's user may write (`/run/unionfs` for root, the user's runtime
//! directory otherwise) and has its mode from birth. The server identifies
//! the caller with SO_PEERCRED: anyone may list, and query what they could
//! see through the mount anyway; only root or the user who mounted may
//! change the branch set. Each connection has its own thread, a size limit
//! and a deadline, so a stalled client delays nobody. The client believes
//! only a server that is root or the mount's owner as the kernel records it.
//!
//! A change builds a whole new branch set, checks it with the rules of
//! DESIGN.md section 2, swaps it in atomically (requests in flight finish on
//! the set they started with), then invalidates the kernel's cached entries
//! and attributes so that the next lookup sees the change.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::branch::{self, Branch, BranchSet, BranchSpec, Mode};
use crate::mountinfo::Mount;
use crate::sys::{self, Dir, Errno};
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
        /// Make it read-only even with files open for writing on it.
        #[serde(default)]
        force: bool,
    },
    Snapshot {
        dir: PathBuf,
        /// Freeze the branches even with files open for writing on them.
        #[serde(default)]
        force: bool,
    },
    /// Which branches hold PATH (relative to the union root).
    Query {
        path: PathBuf,
    },
    /// How direct changes to the branches are followed, and what that did.
    Stats,
}

impl Request {
    fn changes(&self) -> bool {
        !matches!(self, Request::List | Request::Query { .. } | Request::Stats)
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

pub use crate::resolve::Stats;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Branches(Vec<BranchInfo>),
    Holders(Vec<Holding>),
    Stats(Stats),
    Error { message: String, errno: i32 },
}

/// A branch error (its message names the branch) as an answer.
fn io_error(e: std::io::Error) -> Response {
    error(
        Errno::from_raw(e.raw_os_error().unwrap_or(libc::EPERM)),
        e.to_string(),
    )
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

/// Where the sockets of mounts owned by root live.
const ROOT_DIR: &str = "/run/unionfs";

/// The runtime directory of `uid`: its own `$XDG_RUNTIME_DIR` when that is
/// whom this process runs as, else the standard `/run/user/UID`.
fn runtime_dir(uid: u32) -> PathBuf {
    if uid == sys::geteuid() {
        if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
            return PathBuf::from(d);
        }
    }
    PathBuf::from(format!("/run/user/{uid}"))
}

/// The uid that this user namespace's root is outside it, when this
/// process runs in a user namespace other than the initial one (a rootless
/// user's: the driver asks too).
pub fn outer_root() -> Option<u32> {
    let map = std::fs::read_to_string("/proc/self/uid_map").ok()?;
    let mut lines = map
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>());
    let first = lines.next()?;
    if first == ["0", "0", "4294967295"] {
        return None;
    }
    std::iter::once(first)
        .chain(lines)
        .find(|f| f.first() == Some(&"0"))
        .and_then(|f| f.get(1)?.parse().ok())
}

/// The runtime directory of the user this process is: `$XDG_RUNTIME_DIR`,
/// else /run/user/UID, UID as the parent namespace knows the user (root of
/// a rootless user's namespace is that user; the driver asks too).
pub fn user_runtime_dir() -> PathBuf {
    std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let uid = outer_root().unwrap_or_else(sys::geteuid);
            PathBuf::from(format!("/run/user/{uid}"))
        })
}

/// The directory holding the sockets of mounts owned by `uid`. Root of a
/// rootless user's namespace is no root: its sockets go where the user's do.
fn socket_dir(uid: u32) -> PathBuf {
    match (uid, outer_root()) {
        (0, None) => PathBuf::from(ROOT_DIR),
        (0, Some(_)) => user_runtime_dir().join("unionfs"),
        _ => runtime_dir(uid).join("unionfs"),
    }
}

/// The socket a daemon running as this process's user serves `mountpoint` on.
pub fn socket_path(mountpoint: &Path) -> PathBuf {
    socket_dir(sys::geteuid()).join(socket_name(mountpoint))
}

/// Check that `fd` (an `O_PATH` fd on the directory `path`) is owned by this
/// process's user and that nobody else may write it; group or other write
/// bits on our own directory (as older versions left it) are taken away.
fn check_dir(fd: BorrowedFd, path: &Path) -> Result<(), String> {
    let st = sys::fstat(fd).map_err(|e| format!("{}: {e}", path.display()))?;
    let me = sys::geteuid();
    if st.st_uid != me {
        return Err(format!(
            "{} belongs to uid {}, not to uid {me}",
            path.display(),
            st.st_uid
        ));
    }
    if st.st_mode & 0o022 != 0 {
        let mode = st.st_mode & 0o7777 & !0o022;
        sys::chmod_fd(fd, mode).map_err(|e| format!("{}: {e}", path.display()))?;
        log::warn!(
            "{}: mode {:o} let others in; now {mode:o}",
            path.display(),
            st.st_mode & 0o7777
        );
    }
    Ok(())
}

/// Open (making it when missing) the socket directory of this daemon and
/// check every directory on the way that it must trust: the directory
/// itself, and for a user its runtime directory.
fn open_socket_dir() -> Result<(PathBuf, Dir), String> {
    let me = sys::geteuid();
    let dir = socket_dir(me);
    let parent = dir.parent().unwrap_or(Path::new("/"));
    let pfd = Dir::open_nofollow(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    if me != 0 || outer_root().is_some() {
        // $XDG_RUNTIME_DIR must be the user's own, mode 0700 (the XDG rule).
        let st = sys::fstat(pfd.as_fd()).map_err(|e| format!("{}: {e}", parent.display()))?;
        if st.st_uid != me || st.st_mode & 0o077 != 0 {
            return Err(format!(
                "{} is not a private runtime directory of uid {me} (owner {}, mode {:o})",
                parent.display(),
                st.st_uid,
                st.st_mode & 0o7777
            ));
        }
    }
    let name = dir.file_name().unwrap_or_default();
    match sys::mkdir_at(&pfd, name, 0o755) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    }
    let fd = sys::open_dir(&pfd, Path::new(name)).map_err(|e| match e {
        Errno::ELOOP | Errno::ENOTDIR => {
            format!("{} is a symlink or not a directory", dir.display())
        }
        e => format!("{}: {e}", dir.display()),
    })?;
    check_dir(fd.as_fd(), &dir)?;
    Ok((dir, fd))
}

/// Removes the socket when the mount ends, if it is still this daemon's (a
/// new mount at the same place may have bound its own by then).
pub struct ControlSocket {
    dir: Dir,
    name: String,
    /// (st_dev, st_ino) of the socket this daemon bound.
    id: (u64, u64),
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let name = OsStr::new(&self.name);
        if let Ok(st) = sys::stat_at(&self.dir, name) {
            if (st.st_dev, st.st_ino) == self.id {
                let _ = sys::unlink_at(&self.dir, name, false);
            }
        }
    }
}

/// How the kernel's caches are dropped after a change.
pub type Invalidate = Box<dyn Fn(&Union) + Send + Sync>;

/// A request, newline included, is at most this long.
const MAX_REQUEST: usize = 64 * 1024;
/// A connection gets this long, all told, to send its request and read the answer.
const DEADLINE: Duration = Duration::from_secs(5);
/// Connections served at once for one uid, and in all (root and the owner
/// are not counted against the total): a client that stalls holds a slot of
/// its own uid's, never another user's.
const MAX_PER_UID: usize = 8;
const MAX_TOTAL: usize = 128;

/// Serve unionctl requests for `union` mounted at `mountpoint`, each
/// connection on a thread of its own. Without a trustworthy socket directory
/// the mount runs without the channel (the error says why).
pub fn serve(
    union: Arc<Union>,
    mountpoint: PathBuf,
    invalidate: Invalidate,
) -> Result<ControlSocket, String> {
    let (dir, dirfd) = open_socket_dir()?;
    let name = socket_name(&mountpoint);
    // A socket left by a daemon that died; the directory is ours alone.
    match sys::unlink_at(&dirfd, OsStr::new(&name), false) {
        Ok(()) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(format!("{}/{name}: {e}", dir.display())),
    }
    // Anyone may connect; each request is checked against the caller's uid.
    let listener = sys::bind_unix(&dirfd, OsStr::new(&name), 0o666)
        .map_err(|e| format!("{}/{name}: {e}", dir.display()))?;
    let st = sys::stat_at(&dirfd, OsStr::new(&name))
        .map_err(|e| format!("{}/{name}: {e}", dir.display()))?;
    let server = Arc::new(Server {
        union,
        mountpoint,
        owner: sys::geteuid(),
        invalidate,
        busy: Mutex::new(HashMap::new()),
    });
    std::thread::Builder::new()
        .name("unionctl".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(stream) => Server::accept(&server, stream),
                    Err(e) => log::warn!("control socket: {e}"),
                }
            }
        })
        .map_err(|e| format!("control thread: {e}"))?;
    Ok(ControlSocket {
        dir: dirfd,
        name,
        id: (st.st_dev, st.st_ino),
    })
}

struct Server {
    union: Arc<Union>,
    mountpoint: PathBuf,
    owner: u32,
    invalidate: Invalidate,
    /// Connections being served, per uid.
    busy: Mutex<HashMap<u32, usize>>,
}

/// One connection's slot; given back when dropped.
struct Slot {
    server: Arc<Server>,
    uid: u32,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut busy = self.server.busy.lock();
        if let Some(n) = busy.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                busy.remove(&self.uid);
            }
        }
    }
}

impl Server {
    fn take_slot(server: &Arc<Server>, uid: u32) -> Option<Slot> {
        let mut busy = server.busy.lock();
        let total: usize = busy.values().sum();
        // Root and the owner are never kept out by other users' connections.
        let privileged = uid == 0 || uid == server.owner;
        let mine = busy.entry(uid).or_insert(0);
        if *mine >= MAX_PER_UID || (total >= MAX_TOTAL && !privileged) {
            return None;
        }
        *mine += 1;
        Some(Slot {
            server: server.clone(),
            uid,
        })
    }

    /// Hand a new connection to a thread of its own, or (over the limits)
    /// answer at once without waiting for the client.
    fn accept(server: &Arc<Server>, stream: UnixStream) {
        let peer = match sys::peer(stream.as_fd()) {
            Ok(p) => p,
            Err(e) => return log::warn!("control socket: no peer credentials: {e}"),
        };
        let Some(slot) = Server::take_slot(server, peer.uid) else {
            // A new socket's buffer takes the short answer without blocking.
            let _ = stream.set_nonblocking(true);
            let busy = error(Errno::EBUSY, "too many connections from this user at once");
            return reply(&stream, &busy, Instant::now());
        };
        let spawned = std::thread::Builder::new()
            .name("unionctl-conn".into())
            .spawn(move || slot.server.connection(&stream, &peer));
        if let Err(e) = spawned {
            log::warn!("control socket: no thread for a connection: {e}");
        }
    }

    fn connection(&self, stream: &UnixStream, peer: &sys::Peer) {
        let deadline = Instant::now() + DEADLINE;
        let response = match read_request(stream, deadline) {
            Err(r) => r,
            Ok(line) => match serde_json::from_slice::<Request>(&line) {
                Err(e) => error(Errno::EINVAL, format!("bad request: {e}")),
                Ok(req) if req.changes() && peer.uid != 0 && peer.uid != self.owner => error(
                    Errno::EPERM,
                    match self.owner {
                        0 => "permission denied: only root may change the branches of this mount".to_string(),
                        o => format!("permission denied: only root or uid {o} (who mounted) may change the branches"),
                    },
                ),
                Ok(req) => self.handle(req, peer),
            },
        };
        reply(stream, &response, deadline);
    }

    fn handle(&self, req: Request, peer: &sys::Peer) -> Response {
        match req {
            Request::List => Response::Branches(list(&self.union.branches())),
            Request::Stats => Response::Stats(self.union.resolve.stats()),
            Request::Query { path } => {
                let bs = self.union.branches();
                // The daemon's own user sees all it can anyway.
                let trusted = peer.uid == 0 || peer.uid == self.owner;
                let seen = if trusted {
                    Ok(())
                } else {
                    may_see(&bs, &path, peer)
                };
                match seen {
                    Ok(()) => query(&bs, &path),
                    Err(e) => error(
                        e,
                        format!(
                            "{}: {e}: you cannot see this name through the mount",
                            path.display()
                        ),
                    ),
                }
            }
            change => match self.change(change) {
                Ok(bs) => Response::Branches(list(&bs)),
                Err(r) => r,
            },
        }
    }
    fn change(&self, req: Request) -> Result<Arc<BranchSet>, Response> {
        let _serial = self.union.change_lock.lock();
        let force = match &req {
            Request::Remove { force, .. }
            | Request::SetMode { force, .. }
            | Request::Snapshot { force, .. } => *force,
            _ => false,
        };
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
                if !force {
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
            Request::SetMode { branch, mode, .. } => {
                let at = find(&next, &branch)?;
                next[at].1.mode = mode;
            }
            Request::Snapshot { dir, .. } => {
                for (_, s) in next.iter_mut() {
                    s.mode = Mode::Ro;
                }
                next.insert(0, new_spec(dir, Mode::Rw)?);
            }
            Request::List | Request::Query { .. } | Request::Stats => {
                unreachable!("not a change")
            }
        }
        let losing = Losing::between(&old, &next);
        // Every path syscall first: while the drain below holds an open,
        // the kernel may hold the lock of a directory of the mount, which a
        // path resolving through the mount would wait for.
        let specs: Vec<BranchSpec> = next.iter().map(|(_, s)| s.clone()).collect();
        let checked = branch::resolve(&specs, Some(&self.mountpoint))
            .map_err(|e| error(Errno::EINVAL, e.to_string()))?;
        let mut branches = Vec::new();
        let mut added = Vec::new();
        for ((existing, spec), canon) in next.into_iter().zip(checked) {
            let b = match existing {
                Some(b) if b.mode == spec.mode => b,
                Some(b) => Arc::new(b.with_mode(spec.mode).map_err(io_error)?),
                None => {
                    let b = Arc::new(Branch::open(&canon).map_err(io_error)?);
                    added.push(b.clone());
                    b
                }
            };
            branches.push(b);
        }
        // A refused change leaves nothing behind in the branches it added.
        let refused = |e: Response| {
            added.iter().for_each(|b| b.discard_work());
            e
        };
        // Writers that open and close files all the time (an appended log)
        // leave a change that freezes their branch only brief moments:
        // new opens for writing wait while the open ones close.
        let drained = (!force && !losing.frozen.is_empty())
            .then(|| self.union.handles.drain(&losing.frozen, DRAIN));
        let bs = Arc::new(BranchSet::new(branches));
        self.union
            .resolve
            .set_branches(bs.clone(), || self.open_files_allow(&old, &losing, force))
            .map_err(refused)?;
        // Before the invalidation: a held open may hold the kernel's lock of
        // a directory the invalidation needs.
        drop(drained);
        (self.invalidate)(&self.union);
        log::info!("branches now: {:?}", list(&bs));
        Ok(bs)
    }
}

/// How long a change that freezes a branch waits for its files open for
/// writing to close before it is refused.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(1);

/// What a change takes from the branches of the old set (ids).
struct Losing {
    /// Branches the new set no longer has.
    removed: Vec<u32>,
    /// Writable branches the new set keeps read-only.
    frozen: Vec<u32>,
}

impl Losing {
    /// From `old` to `next` (the kept branches carry their old `Branch`).
    fn between(old: &BranchSet, next: &[(Option<Arc<Branch>>, BranchSpec)]) -> Losing {
        let mode_in_next = |id: u32| {
            next.iter()
                .find(|(b, _)| b.as_ref().is_some_and(|b| b.id == id))
                .map(|(_, s)| s.mode)
        };
        let mut losing = Losing {
            removed: Vec::new(),
            frozen: Vec::new(),
        };
        for b in &old.branches {
            match mode_in_next(b.id) {
                None => losing.removed.push(b.id),
                Some(Mode::Ro) if b.writable() => losing.frozen.push(b.id),
                Some(_) => {}
            }
        }
        losing
    }
}

impl Server {
    /// Whether the open files allow the change from `old` that loses
    /// `losing` (run with no request changing anything meanwhile). A
    /// branch removed must have no open files; one made read-only, none
    /// open for writing: they would go on writing into a branch the union
    /// no longer writes to, and a snapshot would not hold what it was
    /// taken with. With `force`, files on a removed branch keep working on
    /// it, and files open for writing on a frozen one are pinned to it
    /// (see handles.rs).
    fn open_files_allow(
        &self,
        old: &BranchSet,
        losing: &Losing,
        force: bool,
    ) -> Result<(), Response> {
        let handles = &self.union.handles;
        if force {
            handles.pin_writers(&losing.frozen);
            return Ok(());
        }
        let busy = |id: u32, writers: bool| {
            let open = handles.files_on(&[id], writers);
            if open.is_empty() {
                return Ok(());
            }
            let path = old.get(old.index_of(id).unwrap_or(0)).path.display();
            let what = match writers {
                true => "files open for writing",
                false => "open files",
            };
            let names = self.names_of(&open);
            Err(error(
                Errno::EBUSY,
                format!("{path} has {what}: {names} (close them first, or --force)"),
            ))
        };
        for &id in &losing.removed {
            busy(id, false)?;
        }
        for &id in &losing.frozen {
            busy(id, true)?;
        }
        Ok(())
    }

    /// The union paths of open files, for a message: a few, then how many more.
    fn names_of(&self, open: &[Arc<crate::handles::FileHandle>]) -> String {
        const SHOWN: usize = 5;
        let mut names: Vec<String> = open
            .iter()
            .map(|h| {
                let path = self.union.resolve.inodes.path(h.node.ino);
                let path = path.map(|p| format!("/{}", p.display()));
                match (path, h.node.is_unlinked()) {
                    (Ok(p), false) => p,
                    (Ok(p), true) => format!("{p} (removed)"),
                    (Err(_), _) => format!("(a removed file, inode {})", h.node.ino),
                }
            })
            .collect();
        names.sort();
        names.dedup();
        let more = names.len().saturating_sub(SHOWN);
        names.truncate(SHOWN);
        let mut s = names.join(", ");
        if more > 0 {
            s += &format!(" and {more} more");
        }
        s
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
    let (parent, name) = crate::view::split(path);
    let mut out = Vec::new();
    for b in &bs.branches {
        let what = if path.as_os_str().is_empty() {
            Some("directory".to_string())
        } else {
            match b.dir(parent) {
                Err(_) => None,
                Ok(dir) => describe(&dir, name),
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

fn describe(dir: &sys::Dir, name: &std::ffi::OsStr) -> Option<String> {
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

/// Why a line could not be read.
enum LineError {
    TooLong,
    Late,
    Io(std::io::Error),
}

/// Read one line (without its newline) of at most `max` bytes, all of it
/// before `deadline`: a peer sending a byte now and then gains nothing.
fn read_line(mut stream: &UnixStream, deadline: Instant, max: usize) -> Result<Vec<u8>, LineError> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(LineError::Late);
        }
        let _ = stream.set_read_timeout(Some(left));
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(buf),
            Ok(n) => {
                let chunk = &chunk[..n];
                if let Some(end) = chunk.iter().position(|&b| b == b'\n') {
                    buf.extend_from_slice(&chunk[..end]);
                    return Ok(buf);
                }
                buf.extend_from_slice(chunk);
                if buf.len() >= max {
                    return Err(LineError::TooLong);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::Interrupted
                        | std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(LineError::Io(e)),
        }
    }
}

/// Read one request line, at most [`MAX_REQUEST`] bytes, before `deadline`.
fn read_request(stream: &UnixStream, deadline: Instant) -> Result<Vec<u8>, Response> {
    read_line(stream, deadline, MAX_REQUEST).map_err(|e| match e {
        LineError::Late => error(
            Errno::ETIMEDOUT,
            format!("the request did not arrive within {} s", DEADLINE.as_secs()),
        ),
        LineError::TooLong => error(
            Errno::E2BIG,
            format!("the request is longer than {MAX_REQUEST} bytes"),
        ),
        LineError::Io(e) => error(Errno::EIO, format!("cannot read the request: {e}")),
    })
}

/// Write the answer, giving up at `deadline`.
fn reply(mut stream: &UnixStream, response: &Response, deadline: Instant) {
    let mut text = serde_json::to_vec(response).unwrap_or_default();
    text.push(b'\n');
    let left = deadline.saturating_duration_since(Instant::now());
    let _ = stream.set_write_timeout(Some(left.max(Duration::from_millis(10))));
    let _ = stream.write_all(&text);
}

/// Whether `who` may ask what `st` holds: `want` is `R_OK`/`W_OK`/`X_OK` bits.
fn allowed(st: &sys::FileStat, who: &sys::Peer, want: u32) -> bool {
    let shift = if who.uid == st.st_uid {
        6
    } else if who.gid == st.st_gid || who.groups.contains(&st.st_gid) {
        3
    } else {
        0
    };
    (st.st_mode >> shift) & want == want
}

/// Whether `who` could see the name `path` through the union: every
/// directory on the way searchable by them, and the one holding the name
/// readable too (what `ls -l DIR` needs). `--query` tells no more than that.
fn may_see(bs: &BranchSet, path: &Path, who: &sys::Peer) -> Result<(), Errno> {
    crate::view::each_dir_on_the_way(bs, path, |dir, holds_name| {
        let want = if holds_name { 0o5 } else { 0o1 };
        if allowed(dir, who, want) {
            Ok(())
        } else {
            Err(Errno::EACCES)
        }
    })
}

/// Whether `mount` is a union: a FUSE mount (of any subtype: the type is
/// whatever the user named it) with a control socket where its owner's
/// daemon puts one. Who serves the socket is checked by `request`.
pub fn is_union(mount: &Mount) -> bool {
    use std::os::unix::fs::FileTypeExt;
    mount.is_fuse()
        && std::fs::symlink_metadata(socket_of(mount).0).is_ok_and(|m| m.file_type().is_socket())
}

/// Whether the FUSE connection of `mount` is gone (its daemon died and the
/// mount was left behind): the kernel answers ENOTCONN for it, and nothing
/// can change a branch through it any more.
pub fn is_dead(mount: &Mount) -> bool {
    std::fs::symlink_metadata(&mount.mount_point)
        .is_err_and(|e| e.raw_os_error() == Some(libc::ENOTCONN))
}

/// Where the daemon of `mount` serves it, and the mount's owner.
fn socket_of(mount: &Mount) -> (PathBuf, u32) {
    let owner = mount.fuse_owner().unwrap_or(0);
    (
        socket_dir(owner).join(socket_name(&mount.mount_point)),
        owner,
    )
}

/// Send one request to the daemon serving `mount`, after checking that it is
/// root or the mount's owner as the kernel records it: a socket someone else
/// bound is never believed.
pub fn request(mount: &Mount, req: &Request) -> Result<Response, String> {
    let (path, owner) = socket_of(mount);
    let shown = path.display();
    let mut stream = UnixStream::connect(&path)
        .map_err(|e| format!("cannot reach its daemon at {shown}: {e}"))?;
    let server = sys::peer(stream.as_fd()).map_err(|e| format!("{shown}: {e}"))?;
    if server.uid != 0 && server.uid != owner {
        return Err(format!(
            "{shown} is served by uid {}, neither root nor the mount's owner (uid {owner}): not trusted",
            server.uid
        ));
    }
    // All of it within one deadline: a daemon that answers a byte now and
    // then (or never) holds up no unionctl or snapmerge for long.
    let deadline = Instant::now() + DEADLINE * 2;
    let mut text = serde_json::to_vec(req).map_err(|e| e.to_string())?;
    text.push(b'\n');
    stream
        .set_write_timeout(Some(DEADLINE))
        .and_then(|()| stream.write_all(&text))
        .map_err(|e| format!("{shown}: {e}"))?;
    let line = read_line(&stream, deadline, 16 << 20).map_err(|e| match e {
        LineError::Late => format!("{shown}: no answer within {} s", (DEADLINE * 2).as_secs()),
        LineError::TooLong => format!("{shown}: an answer of over 16 MiB"),
        LineError::Io(e) => format!("{shown}: {e}"),
    })?;
    serde_json::from_slice(&line).map_err(|e| format!("{shown}: bad answer: {e}"))
}
