//! unionfs-mount: mount a union of directories with FUSE.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgAction, Parser};
use nix::sys::signal::{SigSet, Signal};
use unionfs::{branch, daemon, BranchSet, MountOptions};

const ABOUT: &str = "Mount a union of directories (branches) with FUSE";

const LONG_ABOUT: &str = "\
unionfs-mount merges the directories of BRANCHES into one tree at MOUNTPOINT.
A name is looked up from the leftmost branch rightwards: the first branch that
has it (or a whiteout .wh.NAME for it) decides. Directories of the same name
merge. Writing to a file whose topmost copy is on a read-only branch first
copies it up to the highest writable branch above it; deleting a name that a
read-only branch holds writes a whiteout. The on-disk format is that of OCI
image layers: .wh.NAME whiteouts and .wh..wh..opq opaque directories.

Without -f the command returns once the mount is live and the daemon keeps
serving in the background. Unmount with `fusermount3 -u MOUNTPOINT` or
`umount MOUNTPOINT`; SIGINT and SIGTERM to the daemon unmount cleanly too.";

const AFTER_LONG_HELP: &str = "\
BRANCHES:
    DIR[=rw|=ro] joined by ':', leftmost = highest precedence, as in FSL Unionfs,
    unionfs-fuse, aufs and the lowerdir of overlayfs. A branch without a mode is
    rw when it is leftmost and ro otherwise. '\\:' stands for a ':' inside a path;
    relative paths are resolved when mounting. Refused (exit status 2, nothing
    mounted): a missing or non-directory branch, the same directory twice, a
    branch nested in another, the mount point inside a branch or a branch
    inside the mount point, an unknown mode. A read-only branch above every
    writable one is allowed with a warning: its files cannot be modified.

MOUNT OPTIONS (-o OPT[,OPT...]):
    delete=all|whiteout|first
                  How unlink and rmdir treat a name held by several branches.
                  all (default): remove it from every writable branch, and
                  whiteout what read-only branches still hold. whiteout: remove
                  the topmost writable instance and hide every lower one with a
                  whiteout. first: remove only the topmost instance, so a lower
                  one shows through (a whiteout when the topmost is read-only).
    allow_other   Let every user use the mount (needs user_allow_other in
                  /etc/fuse.conf when not mounted by root).
    allow_root    Let root use the mount too.
    default_permissions
                  Let the kernel check permissions against file modes (on by
                  default; no_default_permissions turns it off).
    ro            Mount read-only.
    threads=N     Threads reading /dev/fuse (default: the number of CPUs, at
                  least 2); over io_uring there is one thread per CPU instead.
    passthrough=on|all|off
                  FUSE passthrough (Linux 6.9+, root): the kernel reads and
                  writes files itself. on (default): files on writable branches,
                  files no copy-up can move, and lower files whose copy-up
                  target shares extents with them (xfs reflink=1, btrfs: a
                  read-only open reads a reflink clone, which a copy-up makes
                  the copy); a file opened read-only before a copy-up sees the
                  writes made after it. Other lower files are read through the
                  daemon, their page cache kept across opens. all: every open;
                  a file opened read-only before a copy-up keeps the data it had
                  (as overlayfs before Linux 4.19). off: the daemon serves all
                  data. Without passthrough (not root, older kernel, a stacked
                  branch) reads go through the daemon; the log says why.
    io_uring=auto|on|off
                  How requests reach the daemon. auto (default): FUSE over
                  io_uring where the kernel offers it (Linux 6.14+, with
                  /sys/module/fuse/parameters/enable_uring = Y): one queue per
                  CPU, each served by a thread on that CPU, so a request never
                  waits for a wakeup on another CPU; else /dev/fuse. on: refuse
                  to mount without it (exit status 2, the cause in one line).
                  off: /dev/fuse only. The kernel's setting is off by default
                  and this command never changes it; root turns it on with
                    echo Y > /sys/module/fuse/parameters/enable_uring
                  (or fuse.enable_uring=1 on the kernel command line). With
                  RUST_LOG=info the daemon says which transport serves it.
    udba=notify|reval|none
                  How changes made directly in the branches (not through the
                  mount) are followed (aufs's names). notify (default): the
                  branch directories in use are watched with fanotify; the
                  daemon's caches are updated before its next request and the
                  kernel is told at once (entries expired, never invalidated:
                  mounts on union directories stay), so the kernel caches names,
                  attributes, misses and listings for a day. Directories not yet
                  watched, past max_watches, or on branches that give no local
                  events (NFS, CIFS, FUSE, ...; said once in the log) are served
                  as with reval. reval: nothing is watched; the kernel asks
                  again after a second, the daemon checks its caches against
                  the directories' change times. none: nothing is followed or
                  checked, for branches nobody changes (the driver's image
                  layers). unionctl MNT --stats shows what was followed.
    max_watches=N Branch directories watched at most (default 65536).
    entry_timeout=SECS, attr_timeout=SECS, negative_timeout=SECS
                  How long the kernel caches names, attributes and names that
                  do not exist; given, they replace the mode's defaults (notify,
                  none: 86400 each; reval and directories not watched: 1, 1
                  and 0). Changes through the mount and unionctl show at once.
    dir_cache=N   Directory fds kept open for lookups, at most (default 32768;
                  0 turns the cache off). The open-file limit is raised to fit.
    readahead=KB  Readahead of the mount (default 1024, FUSE's largest request;
                  the kernel's own default for FUSE is 128).
    readdirplus=on|off
                  Listings carry attributes while entries are being looked up
                  (the kernel's adaptive mode): fewer requests for ls -l, du,
                  rsync; more work for plain listings (default off).
    fsname=NAME   The source shown in /proc/mounts (default unionfs; with
                  lowerdir=, the SOURCE argument when one is given).
    lowerdir=DIR[:DIR...], upperdir=DIR, workdir=DIR
                  The branches in overlayfs's form instead of BRANCHES, as
                  container tools and fuse-overlayfs take them: upperdir
                  writable on top, then lowerdir's directories read-only,
                  leftmost first (without upperdir the union is read-only).
                  workdir is accepted and must be a directory, but the work
                  directory is always UPPER/.wh..wh.work. mount.fuse3 runs
                  this form as `unionfs-mount SOURCE MOUNTPOINT -o OPTS`, so a
                  mount of type fuse3.unionfs-mount works (containerd's).
    subtype=NAME  The type shown in /proc/mounts is fuse.NAME (default: the
                  program's name, fuse.unionfs-mount; empty: plain fuse).
    relatime, strictatime, noatime, nodiratime
                  When reads (exec included) update access times. relatime
                  (default): as the branch's own mount does it (relatime
                  there, unless that mount says otherwise). strictatime: on
                  every read; as root the branches are read through private
                  strictatime copies of their mounts (these leave out mounts
                  inside a branch); others get relatime's behaviour.
                  noatime: never (backing files are opened O_NOATIME).
                  nodiratime: never for directories.
    Generic options that mount(8) passes from /etc/fstab are accepted: rw,
    defaults, dev, nodev, suid, nosuid, exec, noexec, atime, diratime,
    norelatime, nostrictatime, lazytime, sync, async, dirsync, auto, noauto,
    user, users, _netdev, nofail, x-*.

ENVIRONMENT:
    RUST_LOG      Log filter (error, warn, info, debug, trace; default warn).
                  Logs go to stderr; in the background only when RUST_LOG is set
                  and stderr is not a pipe or socket (its reader would wait for
                  the daemon to end).

FSTAB:
    /rw=rw:/ro=ro  /mnt  fuse.unionfs-mount  defaults,allow_other  0 0

EXAMPLES:
    mkdir -p /tmp/u/rw /tmp/u/ro /tmp/u/mnt && echo hi > /tmp/u/ro/hello
    unionfs-mount /tmp/u/rw=rw:/tmp/u/ro=ro /tmp/u/mnt
    echo more >> /tmp/u/mnt/hello      # copied up to /tmp/u/rw/hello
    rm /tmp/u/mnt/hello                # /tmp/u/rw/.wh.hello hides the ro copy
    fusermount3 -u /tmp/u/mnt";

#[derive(Parser, Debug)]
#[command(
    name = "unionfs-mount",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_long_help = AFTER_LONG_HELP,
    override_usage = "unionfs-mount [-f] [-d] [-s] [-o OPT[,OPT...]] BRANCHES MOUNTPOINT\n       \
unionfs-mount [-f] [-d] [-s] -o lowerdir=DIR[:DIR...][,upperdir=DIR][,OPT...] [SOURCE] MOUNTPOINT"
)]
struct Cli {
    /// Stay in the foreground.
    #[arg(short = 'f')]
    foreground: bool,
    /// Debug: log every request (RUST_LOG=debug) and stay in the foreground.
    #[arg(short = 'd')]
    debug: bool,
    /// Serve requests on a single thread (threads=1).
    #[arg(short = 's')]
    single: bool,
    /// Mount options, comma-separated (see MOUNT OPTIONS in --help).
    #[arg(short = 'o', value_name = "OPT[,OPT...]", action = ArgAction::Append)]
    options: Vec<String>,
    /// Branches: DIR[=rw|=ro] joined by ':', leftmost first (with
    /// lowerdir=: the source shown in /proc/mounts, or the mount point).
    branches: String,
    /// Where to mount the union.
    mountpoint: Option<PathBuf>,
}

/// One line on stderr, exit status 2: bad input, nothing mounted.
fn usage_error(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("unionfs-mount: {msg}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let cli: Cli = match unionfs::cli::parse("unionfs-mount") {
        Ok(c) => c,
        Err(code) => return code,
    };
    let log_default = if cli.debug { "debug" } else { "warn" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(log_default)).init();

    let mut opts = MountOptions::default();
    for list in &cli.options {
        if let Err(e) = opts.apply(list) {
            return usage_error(e);
        }
    }
    if cli.single {
        opts.threads = 1;
    }
    // overlayfs's lowerdir=/upperdir= form, as mount.fuse3 runs a mount
    // helper: `PROGRAM SOURCE MOUNTPOINT -o OPTS` (or `-o OPTS MOUNTPOINT`).
    let (specs, mountpoint) = match (opts.overlay.branches(), cli.mountpoint) {
        (Err(e), _) => return usage_error(e),
        (Ok(Some(specs)), Some(mnt)) => {
            opts.fsname.get_or_insert(cli.branches);
            (Ok(specs), mnt)
        }
        (Ok(Some(specs)), None) => (Ok(specs), PathBuf::from(cli.branches)),
        (Ok(None), Some(mnt)) => (branch::parse(&cli.branches), mnt),
        (Ok(None), None) => return usage_error("no MOUNTPOINT given (see --help)"),
    };
    let specs = match specs.and_then(|s| branch::resolve(&s, Some(&mountpoint))) {
        Ok(s) => s,
        Err(e) => return usage_error(e),
    };
    // Absolute, so the daemon can leave its working directory.
    let mountpoint = match std::fs::canonicalize(&mountpoint) {
        Ok(p) => p,
        Err(e) => return usage_error(format!("mount point {}: {e}", mountpoint.display())),
    };
    // Before any branch is opened: strictatime opens their roots on private mounts.
    opts.apply_atime();
    let branches = match BranchSet::open(&specs) {
        Ok(b) => b,
        Err(e) => return usage_error(e),
    };
    if let Some(w) = branches.order_warning() {
        eprintln!("unionfs-mount: {w}");
    }
    // io_uring=on without the kernel's io_uring: refused before anything is mounted.
    if let Err(why) = unionfs::io_uring_wanted(&opts) {
        return usage_error(format!("io_uring=on: {why}"));
    }
    let foreground = cli.foreground || cli.debug;
    if foreground {
        return serve(branches, &mountpoint, &opts, None);
    }
    // Background: the child mounts and serves; this process returns once the
    // child says the mount is live, so scripts can use it on the next line.
    let (mut ready_rx, ready_tx) = match UnixStream::pair() {
        Ok(p) => p,
        Err(e) => return usage_error(format!("cannot create a pipe: {e}")),
    };
    match daemon::fork() {
        Err(e) => {
            eprintln!("unionfs-mount: fork: {e}");
            ExitCode::from(1)
        }
        Ok(daemon::Forked::Parent) => {
            drop(ready_tx);
            let mut b = [0u8; 1];
            match ready_rx.read(&mut b) {
                Ok(1) => ExitCode::SUCCESS,
                _ => ExitCode::from(1),
            }
        }
        Ok(daemon::Forked::Child) => {
            drop(ready_rx);
            let _ = daemon::setsid();
            // Do not pin the caller's working directory.
            let _ = std::env::set_current_dir("/");
            serve(branches, &mountpoint, &opts, Some(ready_tx))
        }
    }
}

/// Mount, say so on `ready`, and serve until unmounted.
fn serve(
    branches: BranchSet,
    mountpoint: &std::path::Path,
    opts: &MountOptions,
    ready: Option<UnixStream>,
) -> ExitCode {
    // Signals are taken by one thread that unmounts; the serving threads never see them.
    let mut signals = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        signals.add(s);
    }
    if let Err(e) = signals.thread_block() {
        eprintln!("unionfs-mount: cannot block signals: {e}");
        return ExitCode::from(1);
    }
    let unionfs::Mounted {
        server,
        ended,
        control: _control,
    } = match unionfs::mount(branches, mountpoint, opts) {
        Ok(m) => m,
        Err(e) => {
            eprintln!(
                "unionfs-mount: cannot mount on {}: {e}",
                mountpoint.display()
            );
            // io_uring=on and the kernel did not offer it: a usage error.
            let unsupported = e.kind() == std::io::ErrorKind::Unsupported;
            return ExitCode::from(if unsupported { 2 } else { 1 });
        }
    };
    let target = mountpoint.to_path_buf();
    std::thread::spawn(move || {
        if let Ok(sig) = signals.wait() {
            log::info!("{sig:?}: unmounting");
            // Busy for a moment (a file being closed, say): tried again,
            // then detached; the daemon ends either way.
            if !daemon::unmount_retrying(&target) {
                log::error!("{}: still busy, detached lazily", target.display());
            }
            std::process::exit(0);
        }
    });
    // Serve first, then say the mount is live: the first request of the
    // caller then finds threads waiting for it, not threads being started.
    let before = threads_running();
    let started = match server.spawn() {
        Ok(n) => n,
        Err(e) => {
            eprintln!("unionfs-mount: cannot serve {}: {e}", mountpoint.display());
            daemon::unmount_retrying(mountpoint);
            return ExitCode::from(1);
        }
    };
    let want = before + started;
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(100);
    while threads_running() < want && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_micros(100));
    }
    if let Some(mut ready) = ready {
        let _ = ready.write_all(b"1");
        let _ = daemon::detach_stdio(std::env::var_os("RUST_LOG").is_some());
    }
    // Serving ends when the kernel lets go of the mount (fusermount3 -u,
    // umount, or the signal thread).
    let _ = ended.recv();
    ExitCode::SUCCESS
}

/// Threads of this process.
fn threads_running() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}
