//! The launcher: run a command with a directory as its root, in new mount,
//! PID, UTS, IPC and (unless `--net host`) network namespaces, in the order
//! runc, crun and youki use: cgroup, namespaces, mounts, pivot_root, hostname,
//! capabilities cut to Docker's default set, identity, no_new_privs, fds above
//! 2 closed, cwd checked, exec. The launcher exits with the command's status
//! (128+signal when it was killed) and leaves no mount, cgroup or process.

pub mod cgroup;
pub mod devices;
mod rootfs;
pub mod seccomp;

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use caps::{CapSet, Capability};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{Gid, Uid};

use crate::sys;
pub use cgroup::Limits;
pub use seccomp::Seccomp;

/// The steps of a launch, so a failure says which one broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Session,
    Namespaces,
    Loopback,
    MountPropagation,
    BindRootfs,
    MountProc,
    MountSys,
    MountDev,
    Devices,
    Volume,
    ReadOnly,
    PivotRoot,
    Hostname,
    Capabilities,
    Identity,
    NoNewPrivs,
    Keyring,
    Seccomp,
    Workdir,
    Exec,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let s = match self {
            Step::Session => "starting a new session",
            Step::Namespaces => "creating namespaces",
            Step::Loopback => "bringing up loopback",
            Step::MountPropagation => "making mount propagation private",
            Step::BindRootfs => "binding the rootfs",
            Step::MountProc => "mounting /proc",
            Step::MountSys => "mounting /sys",
            Step::MountDev => "mounting /dev",
            Step::Devices => "creating devices",
            Step::Volume => "binding a volume",
            Step::ReadOnly => "making the rootfs read-only",
            Step::PivotRoot => "pivot_root",
            Step::Hostname => "setting the hostname",
            Step::Capabilities => "dropping capabilities",
            Step::Identity => "setting uid/gid",
            Step::NoNewPrivs => "setting no_new_privs",
            Step::Keyring => "joining a new session keyring",
            Step::Seccomp => "installing the seccomp filter",
            Step::Workdir => "entering the working directory",
            Step::Exec => "exec",
        };
        f.write_str(s)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("{0}: {1}")]
    Step(Step, String),
    #[error("cgroup: {0}")]
    Cgroup(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}: {1}")]
    Sys(&'static str, nix::errno::Errno),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    pub src: PathBuf,
    pub dst: PathBuf,
    pub read_only: bool,
}

impl std::str::FromStr for Volume {
    type Err = String;
    fn from_str(s: &str) -> Result<Volume, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let (src, dst, ro) = match parts.as_slice() {
            [s, d] => (s, d, false),
            [s, d, "ro"] => (s, d, true),
            [s, d, "rw"] => (s, d, false),
            _ => return Err(format!("volume '{s}': use SRC:DST or SRC:DST:ro")),
        };
        if !dst.starts_with('/') || dst.split('/').any(|c| c == "..") {
            return Err(format!(
                "volume '{s}': DST must be an absolute path without '..'"
            ));
        }
        Ok(Volume {
            src: PathBuf::from(src),
            dst: PathBuf::from(dst),
            read_only: ro,
        })
    }
}

/// A host device given to the container (`--device`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    /// The host's node.
    pub host: PathBuf,
    /// Where it appears in the container (absolute, under /dev).
    pub path: PathBuf,
    /// `S_IFCHR` or `S_IFBLK`, its number and permission bits (the host node's).
    pub kind: u32,
    pub rdev: u64,
    pub mode: u32,
    /// `devices::READ | WRITE | MKNOD` bits.
    pub access: u32,
}

impl Device {
    pub fn rule(&self) -> devices::Rule {
        devices::Rule {
            kind: if self.kind == libc::S_IFBLK { 'b' } else { 'c' },
            major: Some(libc::major(self.rdev)),
            minor: Some(libc::minor(self.rdev)),
            access: self.access,
        }
    }
}

impl std::str::FromStr for Device {
    type Err = String;
    /// `HOST[:CONTAINER[:PERMS]]`, as docker run's --device.
    fn from_str(s: &str) -> Result<Device, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let (host, path, perms) = match parts.as_slice() {
            [h] => (*h, *h, "rwm"),
            [h, p] if devices::parse_access(p).is_some() => (*h, *h, *p),
            [h, c] => (*h, *c, "rwm"),
            [h, c, p] => (*h, *c, *p),
            _ => return Err(format!("device '{s}': use HOST[:CONTAINER[:PERMS]]")),
        };
        let access = devices::parse_access(perms)
            .ok_or_else(|| format!("device '{s}': permissions are letters of rwm"))?;
        let st = nix::sys::stat::stat(host).map_err(|e| format!("device {host}: {e}"))?;
        let kind = st.st_mode & libc::S_IFMT;
        if kind != libc::S_IFCHR && kind != libc::S_IFBLK {
            return Err(format!("device {host}: not a character or block device"));
        }
        // Only the launcher's /dev may hold usable nodes (the rest is nodev).
        if !path.starts_with("/dev/") || path.split('/').any(|c| c == "..") {
            return Err(format!(
                "device '{s}': the container path must lie under /dev"
            ));
        }
        Ok(Device {
            host: PathBuf::from(host),
            path: PathBuf::from(path),
            kind,
            rdev: st.st_rdev,
            mode: st.st_mode & 0o777,
            access,
        })
    }
}

/// `UID[:GID]`.
pub fn parse_user(s: &str) -> Result<(u32, Option<u32>), String> {
    let (u, g) = match s.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (s, None),
    };
    let u = u
        .parse()
        .map_err(|_| format!("user '{s}': use a numeric UID[:GID]"))?;
    let g = g
        .map(|g| {
            g.parse()
                .map_err(|_| format!("user '{s}': use a numeric UID[:GID]"))
        })
        .transpose()?;
    Ok((u, g))
}

/// `BYTES` with an optional k, m or g suffix.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t.as_str(), 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("'{s}' is not a size (BYTES with k, m or g)"))
}

#[derive(Clone, Debug, Default)]
pub struct Options {
    pub hostname: Option<String>,
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<(u32, Option<u32>)>,
    pub volumes: Vec<Volume>,
    pub limits: Limits,
    pub net_host: bool,
    pub read_only: bool,
    /// Host devices beyond the default set.
    pub devices: Vec<Device>,
    pub seccomp: Seccomp,
}

/// Docker's default capability set.
const DEFAULT_CAPS: [Capability; 14] = [
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FSETID,
    Capability::CAP_FOWNER,
    Capability::CAP_MKNOD,
    Capability::CAP_NET_RAW,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETFCAP,
    Capability::CAP_SETPCAP,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_KILL,
    Capability::CAP_AUDIT_WRITE,
];

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn errno(what: &'static str) -> impl Fn(nix::errno::Errno) -> LaunchError {
    move |e| LaunchError::Sys(what, e)
}

/// Run `cmd` in `rootfs`; answers its exit status. When the launcher itself
/// is killed, a watcher process removes the cgroup and then runs `cleanup`
/// (an argv), so nothing is left behind.
pub fn run(
    rootfs: &Path,
    opts: &Options,
    cmd: &[String],
    cleanup: Option<Vec<String>>,
) -> Result<i32, LaunchError> {
    if cmd.is_empty() {
        return Err(LaunchError::Invalid("no command to run".into()));
    }
    let rootfs = std::fs::canonicalize(rootfs)
        .map_err(|e| LaunchError::Invalid(format!("rootfs {}: {e}", rootfs.display())))?;
    if crate::userns::rootless() {
        if let Some(d) = opts.devices.iter().find(|d| d.access & devices::WRITE == 0) {
            return Err(LaunchError::Invalid(format!(
                "device {}: as a user a device cannot be given read-only (no device cgroup \
                 holds it to reading); give it rw",
                d.host.display()
            )));
        }
    }
    if !rootfs.is_dir() {
        return Err(LaunchError::Invalid(format!(
            "rootfs {}: not a directory",
            rootfs.display()
        )));
    }
    let caps: std::collections::HashSet<String> =
        DEFAULT_CAPS.iter().map(|c| c.to_string()).collect();
    // Built before anything starts: a bad profile is a launch error.
    let filter = opts
        .seccomp
        .filter(&caps)
        .map_err(|e| LaunchError::Step(Step::Seccomp, e))?;
    let mut allowed = devices::DEFAULT.to_vec();
    allowed.extend(opts.devices.iter().map(Device::rule));
    let cg = cgroup::Cgroup::create(
        &format!("unionfs-run-{}", std::process::id()),
        &opts.limits,
        &allowed,
    )?;
    let (watch_r, watch_w) = nix::unistd::pipe().map_err(errno("pipe"))?;
    if sys::fork().map_err(errno("fork"))?.is_none() {
        drop(watch_w);
        watcher(watch_r, &cg, cleanup);
    }
    drop(watch_r);
    let (go_r, go_w) = nix::unistd::pipe().map_err(errno("pipe"))?;
    // Held open by this process until it ends: the child sees EOF on it once
    // the launcher is gone (getppid() says nothing inside a PID namespace).
    let (alive_r, alive_w) = nix::unistd::pipe().map_err(errno("pipe"))?;
    // The next child is PID 1 of a new PID namespace.
    unshare(CloneFlags::CLONE_NEWPID)
        .map_err(|e| LaunchError::Step(Step::Namespaces, e.to_string()))?;
    let child = match sys::fork().map_err(errno("fork"))? {
        None => {
            drop(go_w);
            drop(watch_w);
            drop(alive_w);
            let code = child_main(go_r, alive_r, &rootfs, opts, filter.as_ref(), cmd);
            std::process::exit(code);
        }
        Some(pid) => pid,
    };
    drop(alive_r);
    drop(go_r);
    if let Err(e) = cg.add(child.as_raw()) {
        let _ = kill(child, Signal::SIGKILL);
        let _ = waitpid(child, None);
        cg.remove();
        return Err(e);
    }
    let mut go = std::fs::File::from(go_w);
    let _ = go.write_all(b"g");
    drop(go);
    // SIGINT, SIGTERM, SIGHUP and SIGQUIT sent to the launcher go to the
    // container. (No thread for it: none can be made after CLONE_NEWPID.)
    let mut signals = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        signals.add(s);
    }
    let _ = signals.thread_block();
    let status = loop {
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, c)) => break c,
            Ok(WaitStatus::Signaled(_, s, _)) => break 128 + s as i32,
            Ok(_) => {
                if let Some(sig) = sys::sigtimedwait(&signals, std::time::Duration::from_millis(20))
                {
                    let _ = kill(child, sig);
                }
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(LaunchError::Sys("waitpid", e)),
        }
    };
    // What the container left running (daemons it started) goes with it.
    cg.kill_all();
    cg.remove();
    // Tell the watcher we cleaned up ourselves.
    let mut w = std::fs::File::from(watch_w);
    let _ = w.write_all(b"d");
    drop(alive_w);
    Ok(status)
}

/// Waits for the launcher to end; if it did not say it cleaned up (it was
/// killed), removes the cgroup and runs `cleanup`.
fn watcher(r: OwnedFd, cg: &cgroup::Cgroup, cleanup: Option<Vec<String>>) -> ! {
    let _ = nix::unistd::setsid();
    let mut b = [0u8; 1];
    let done = matches!(std::fs::File::from(r).read(&mut b), Ok(1));
    if !done {
        cg.kill_all();
        cg.remove();
        if let Some(argv) = cleanup {
            let _ = std::process::Command::new(&argv[0])
                .args(&argv[1..])
                .status();
        }
    }
    std::process::exit(0);
}

/// In the child (PID 1 of the new PID namespace): every step, then exec.
/// Errors are printed here, naming the step; the status is 125 for a setup
/// failure, 126 for a command that cannot run, 127 for one not found.
fn child_main(
    go: OwnedFd,
    alive: OwnedFd,
    rootfs: &Path,
    opts: &Options,
    filter: Option<&libseccomp::ScmpFilterContext>,
    cmd: &[String],
) -> i32 {
    // Dies with the launcher, and so does everything in the namespace.
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    let mut b = [0u8; 1];
    if !matches!(std::fs::File::from(go).read(&mut b), Ok(1)) {
        return 125;
    }
    match setup(rootfs, opts, &alive, filter, cmd) {
        Ok(never) => match never {},
        Err((code, e)) => {
            eprintln!("unionfs-run: {e}");
            code
        }
    }
}

enum Never {}

fn setup(
    rootfs: &Path,
    opts: &Options,
    alive: &OwnedFd,
    filter: Option<&libseccomp::ScmpFilterContext>,
    cmd: &[String],
) -> Result<Never, (i32, LaunchError)> {
    let fail = |e: LaunchError| (125, e);
    // A session of its own, without a controlling terminal: the caller's
    // terminal stays usable as stdin/stdout, but the container cannot push
    // input into it (TIOCSTI) for the caller's shell to run after it exits.
    nix::unistd::setsid().map_err(|e| fail(LaunchError::Step(Step::Session, e.to_string())))?;
    let mut flags = CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC;
    if !opts.net_host {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    unshare(flags).map_err(|e| fail(LaunchError::Step(Step::Namespaces, e.to_string())))?;
    if !opts.net_host {
        sys::loopback_up().map_err(|e| fail(LaunchError::Step(Step::Loopback, e.to_string())))?;
    }
    // A keyring of its own: the launcher's session keyring stays out of reach.
    sys::join_new_session_keyring()
        .map_err(|e| fail(LaunchError::Step(Step::Keyring, e.to_string())))?;
    rootfs::enter(rootfs, opts).map_err(fail)?;
    let hostname = opts.hostname.clone().unwrap_or_else(|| "container".into());
    nix::unistd::sethostname(&hostname)
        .map_err(|e| fail(LaunchError::Step(Step::Hostname, e.to_string())))?;
    let capfail =
        |e: caps::errors::CapsError| fail(LaunchError::Step(Step::Capabilities, e.to_string()));
    let keep: caps::CapsHashSet = DEFAULT_CAPS.iter().copied().collect();
    for c in caps::all() {
        if !keep.contains(&c) {
            // Capabilities this kernel does not know cannot be dropped: fine.
            let _ = caps::drop(None, CapSet::Bounding, c);
        }
    }
    caps::clear(None, CapSet::Inheritable).map_err(capfail)?;
    caps::clear(None, CapSet::Ambient).map_err(capfail)?;
    caps::set(None, CapSet::Effective, &keep).map_err(capfail)?;
    caps::set(None, CapSet::Permitted, &keep).map_err(capfail)?;
    let idfail = |e: nix::errno::Errno| fail(LaunchError::Step(Step::Identity, e.to_string()));
    let (uid, gid) = opts
        .user
        .map(|(u, g)| (u, g.unwrap_or(u)))
        .unwrap_or((0, 0));
    // A user namespace mapping only its user denies setgroups (the
    // kernel's rule): the supplementary groups stay what the user's were
    // (none mapped: the overflow group).
    let denied = std::fs::read_to_string("/proc/self/setgroups").is_ok_and(|s| s.trim() == "deny");
    if !denied {
        nix::unistd::setgroups(&[Gid::from_raw(gid)]).map_err(idfail)?;
    }
    nix::unistd::setgid(Gid::from_raw(gid)).map_err(idfail)?;
    nix::unistd::setuid(Uid::from_raw(uid)).map_err(idfail)?;
    // A change of identity clears the parent death signal: set it again, then
    // make sure the launcher did not die before it was (EOF on `alive`).
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    if sys::hung_up(alive) {
        return Err(fail(LaunchError::Step(
            Step::Identity,
            "the launcher is gone".into(),
        )));
    }
    nix::sys::prctl::set_no_new_privs()
        .map_err(|e| fail(LaunchError::Step(Step::NoNewPrivs, e.to_string())))?;
    let workdir = opts
        .workdir
        .clone()
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".into());
    let wfail = |e: String| fail(LaunchError::Step(Step::Workdir, format!("{workdir}: {e}")));
    nix::unistd::chdir(workdir.as_str()).map_err(|e| wfail(e.to_string()))?;
    // A cwd outside the new root would have no name here.
    nix::unistd::getcwd().map_err(|e| wfail(e.to_string()))?;
    // Environment: the image's and -e's, with PATH and HOSTNAME defaults.
    let mut env: Vec<String> = Vec::new();
    for kv in &opts.env {
        let key = kv.split('=').next().unwrap_or("");
        env.retain(|e| e.split('=').next() != Some(key));
        env.push(kv.clone());
    }
    for (k, v) in [
        ("PATH", DEFAULT_PATH),
        ("HOSTNAME", hostname.as_str()),
        ("HOME", if uid == 0 { "/root" } else { "/" }),
    ] {
        if !env.iter().any(|e| e.starts_with(&format!("{k}="))) {
            env.push(format!("{k}={v}"));
        }
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH)
        .to_string();
    let cstr = |s: &str| {
        CString::new(s).map_err(|_| fail(LaunchError::Invalid(format!("'{s}' holds a NUL byte"))))
    };
    let argv = cmd.iter().map(|a| cstr(a)).collect::<Result<Vec<_>, _>>()?;
    let envp = env.iter().map(|a| cstr(a)).collect::<Result<Vec<_>, _>>()?;
    // Only 0, 1 and 2 survive the exec.
    sys::cloexec_from(3).map_err(|e| fail(LaunchError::Step(Step::Exec, e.to_string())))?;
    // Last: from here on the filter applies to this process too.
    if let Some(f) = filter {
        f.load()
            .map_err(|e| fail(LaunchError::Step(Step::Seccomp, e.to_string())))?;
    }
    let program = &cmd[0];
    let candidates: Vec<String> = if program.contains('/') {
        vec![program.clone()]
    } else {
        path.split(':')
            .filter(|d| !d.is_empty())
            .map(|d| format!("{d}/{program}"))
            .collect()
    };
    let mut last = nix::errno::Errno::ENOENT;
    for c in candidates {
        let Ok(cp) = CString::new(c) else { continue };
        match nix::unistd::execve(&cp, &argv, &envp) {
            Err(e) => {
                if e != nix::errno::Errno::ENOENT && e != nix::errno::Errno::ENOTDIR {
                    last = e;
                }
            }
            Ok(never) => match never {},
        }
    }
    let code = if last == nix::errno::Errno::ENOENT {
        127
    } else {
        126
    };
    let what = if code == 127 {
        "command not found".to_string()
    } else {
        last.to_string()
    };
    Err((
        code,
        LaunchError::Step(Step::Exec, format!("{program}: {what}")),
    ))
}

/// The launch options, the same for `unionfs-run` and `unionfs-driver run`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RunArgs {
    /// The container's hostname (default: container).
    #[arg(long)]
    pub hostname: Option<String>,
    /// Set an environment variable (repeatable).
    #[arg(short = 'e', value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', value_name = "DIR")]
    pub workdir: Option<String>,
    /// Run as UID[:GID] (numeric).
    #[arg(short = 'u', value_name = "UID[:GID]", value_parser = parse_user)]
    pub user: Option<(u32, Option<u32>)>,
    /// Bind SRC from the host at DST (read-only with :ro); repeatable.
    #[arg(short = 'v', value_name = "SRC:DST[:ro]")]
    pub volume: Vec<Volume>,
    /// Memory limit (BYTES, with k, m or g).
    #[arg(long, value_parser = parse_bytes)]
    pub memory: Option<u64>,
    /// Most processes at once.
    #[arg(long)]
    pub pids: Option<u64>,
    /// CPU share, in CPUs (0.5 = half of one).
    #[arg(long)]
    pub cpus: Option<f64>,
    /// none (default): a new network namespace with loopback up; host: the host's.
    #[arg(long, default_value = "none", value_parser = ["none", "host"])]
    pub net: String,
    /// Mount the rootfs read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Give the container a host device (e.g. /dev/fuse), as docker run's
    /// --device; repeatable.
    #[arg(long, value_name = "HOST[:CONTAINER[:PERMS]]")]
    pub device: Vec<Device>,
    /// seccomp=unconfined (no filter) or seccomp=PROFILE.json (a Docker/OCI
    /// profile) instead of the default profile.
    #[arg(long, value_name = "seccomp=unconfined|PROFILE.json", value_parser = seccomp::security_opt)]
    pub security_opt: Option<Seccomp>,
}

impl RunArgs {
    /// The options, on top of `base` (an image's Env, WorkingDir and User).
    pub fn options(&self, base: Options) -> Result<Options, LaunchError> {
        for kv in &self.env {
            if !kv.contains('=') {
                return Err(LaunchError::Invalid(format!("-e {kv}: use KEY=VALUE")));
            }
        }
        if let Some(c) = self.cpus {
            if !(c > 0.0 && c <= 1024.0) {
                return Err(LaunchError::Invalid(format!("--cpus {c}: must be above 0")));
            }
        }
        let mut env = base.env;
        env.extend(self.env.iter().cloned());
        Ok(Options {
            hostname: self.hostname.clone(),
            env,
            workdir: self.workdir.clone().or(base.workdir),
            user: self.user.or(base.user),
            volumes: self.volume.clone(),
            limits: Limits {
                memory: self.memory,
                pids: self.pids,
                cpus: self.cpus,
            },
            net_host: self.net == "host",
            read_only: self.read_only,
            devices: self.device.clone(),
            seccomp: self.security_opt.clone().unwrap_or_default(),
        })
    }
}
