//! The container's cgroup, v1 or v2, whichever the host has (detected at
//! run time): every container gets one, limits or not, for its device
//! allowlist (see devices.rs) and so that whatever it left running can be
//! found and killed. Removed when the container ends; a cgroup that could
//! not be set up completely is removed at once.
//!
//! A user's container (rootless) gets one only in a cgroup v2 delegated to
//! the user (the launcher's own, writable by the user, as systemd gives
//! `Delegate=yes` scopes): its limits work as root's; without delegation it
//! runs without a cgroup and limits are refused.

use std::fs;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::devices::{self, Rule};
use super::LaunchError;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Limits {
    pub memory: Option<u64>,
    pub pids: Option<u64>,
    pub cpus: Option<f64>,
}

#[derive(Debug, Default)]
pub struct Cgroup {
    pub dirs: Vec<PathBuf>,
}

const ROOT: &str = "/sys/fs/cgroup";
const PERIOD: u64 = 100_000;

fn write(dir: &Path, file: &str, value: &str) -> Result<(), LaunchError> {
    fs::write(dir.join(file), value)
        .map_err(|e| LaunchError::Cgroup(format!("{}/{file} = {value}: {e}", dir.display())))
}

/// This process's cgroup path in the hierarchy that `matches` picks from /proc/self/cgroup.
fn own_path(matches: impl Fn(&str) -> bool) -> String {
    let text = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let (_, ctrls, path) = (it.next()?, it.next()?, it.next()?);
            matches(ctrls).then(|| path.trim_start_matches('/').to_string())
        })
        .next()
        .unwrap_or_default()
}

/// Where cgroup v2 is mounted (/sys/fs/cgroup on a unified host,
/// /sys/fs/cgroup/unified on a hybrid one), and the directory of the
/// hierarchy that mount shows as its root.
fn v2_mount() -> Option<(PathBuf, String)> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (fields, fs_part) = l.split_once(" - ")?;
        let f: Vec<&str> = fields.split(' ').collect();
        (fs_part.split(' ').next()? == "cgroup2")
            .then(|| Some((PathBuf::from(f.get(4)?), f.get(3)?.to_string())))?
    })
}

/// This process's cgroup v2 directory, reached through the v2 mount (whose
/// root may be a directory below the hierarchy's: a cgroup namespace's).
fn v2_own_dir() -> Option<PathBuf> {
    let (point, root) = v2_mount()?;
    let own = format!("/{}", own_path(str::is_empty));
    let rel = match root.as_str() {
        "/" => own.as_str(),
        r => own
            .strip_prefix(r)
            .filter(|rest| rest.is_empty() || rest.starts_with('/'))?,
    };
    Some(point.join(rel.trim_start_matches('/')))
}

/// The leaf the processes of a delegated cgroup move into (see `enable`).
const LEAF: &str = "unionfs-init";

/// The cgroup v2 directory delegated to this process: the one it is in (a
/// leaf this launcher made counts as its parent), if it may make cgroups,
/// move processes and hand controllers down there. Ownership decides, as
/// the kernel's delegation model has it: a cgroup owned by an id outside the
/// user namespace is not writable from it.
pub fn delegated() -> Option<PathBuf> {
    let mut dir = v2_own_dir()?;
    if dir.file_name() == Some(LEAF.as_ref()) {
        dir.pop();
    }
    let writable =
        |f: &str| nix::unistd::access(&dir.join(f), nix::unistd::AccessFlags::W_OK).is_ok();
    (writable("") && writable("cgroup.procs") && writable("cgroup.subtree_control")).then_some(dir)
}

/// `base`'s leaf, made if missing.
fn leaf_of(base: &Path) -> Result<PathBuf, LaunchError> {
    let leaf = base.join(LEAF);
    match fs::create_dir(&leaf) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            Err(LaunchError::Cgroup(format!("{}: {e}", leaf.display())))
        }
        _ => Ok(leaf),
    }
}

/// The pids in a cgroup.procs file (0 stands for one outside this PID
/// namespace: it cannot be named, so it is left out).
fn pids_in(dir: &Path) -> Vec<String> {
    words(&dir.join("cgroup.procs"))
        .into_iter()
        .filter(|p| p != "0")
        .collect()
}

/// The words of a cgroup file such as cgroup.controllers.
fn words(file: &Path) -> Vec<String> {
    fs::read_to_string(file)
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Hand `controllers` down from `base` to its children. cgroup v2 allows it
/// only while `base` holds no process itself (its only exception is the
/// root), so the processes in it (the union's daemon, and whatever else the
/// user runs there) move into a leaf first, as docker-in-docker does with
/// /init. The leaf and the controllers stay for the next container; the
/// delegated cgroup goes with its owner's session.
pub fn enable(base: &Path, controllers: &[&str]) -> Result<(), LaunchError> {
    let on = words(&base.join("cgroup.subtree_control"));
    let missing: Vec<String> = controllers
        .iter()
        .filter(|c| !on.iter().any(|o| o == *c))
        .map(|c| format!("+{c}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let leaf = leaf_of(base)?;
    // Processes may fork while they are moved: a few rounds, until none is
    // left (one that exited meanwhile cannot be moved and need not be).
    for _ in 0..20 {
        let pids = pids_in(base);
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            let _ = fs::write(leaf.join("cgroup.procs"), pid);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let left = fs::read_to_string(base.join("cgroup.procs")).unwrap_or_default();
    if !left.trim().is_empty() {
        return Err(LaunchError::Cgroup(format!(
            "{}: processes that cannot be moved into {LEAF} (pids {}) keep it from handing \
             controllers down; start the launcher in a cgroup of its own (systemd-run --user \
             --scope -p Delegate=yes ...)",
            base.display(),
            left.split_whitespace().collect::<Vec<_>>().join(" ")
        )));
    }
    write(base, "cgroup.subtree_control", &missing.join(" "))
}

/// The cgroup v2 limit files (the controllers are enabled by the caller).
fn set_v2_limits(dir: &Path, limits: &Limits) -> Result<(), LaunchError> {
    if let Some(m) = limits.memory {
        write(dir, "memory.max", &m.to_string())?;
        let _ = fs::write(dir.join("memory.swap.max"), "0");
    }
    if let Some(p) = limits.pids {
        write(dir, "pids.max", &p.to_string())?;
    }
    if let Some(c) = limits.cpus {
        write(
            dir,
            "cpu.max",
            &format!("{} {PERIOD}", (c * PERIOD as f64) as u64),
        )?;
    }
    Ok(())
}

impl Limits {
    /// The flags that set these limits, for a message.
    fn flags(&self) -> String {
        let f: Vec<&str> = self.controllers().iter().map(|(_, f)| *f).collect();
        f.join(", ")
    }

    /// The cgroup v2 controllers these limits need, each with its flag.
    fn controllers(&self) -> Vec<(&'static str, &'static str)> {
        [
            ("memory", "--memory", self.memory.is_some()),
            ("pids", "--pids", self.pids.is_some()),
            ("cpu", "--cpus", self.cpus.is_some()),
        ]
        .into_iter()
        .filter(|(_, _, set)| *set)
        .map(|(c, f, _)| (c, f))
        .collect()
    }
}

pub fn is_v2() -> bool {
    Path::new(ROOT).join("cgroup.controllers").exists()
}

impl Cgroup {
    /// A cgroup named `name` with `limits`, allowing the devices `allowed`.
    pub fn create(name: &str, limits: &Limits, allowed: &[Rule]) -> Result<Cgroup, LaunchError> {
        let mut cg = Cgroup::default();
        let made = if crate::userns::rootless() {
            match delegated() {
                Some(base) => cg.make_delegated(&base, name, limits),
                // No cgroup: the PID namespace still takes everything with
                // it, and a user can make no device node to need an
                // allowlist for.
                None if *limits == Limits::default() => Ok(()),
                None => Err(LaunchError::Cgroup(format!(
                    "{} as a user need a cgroup v2 delegated to the user; {}: run without \
                     them",
                    limits.flags(),
                    match v2_own_dir() {
                        Some(d) => format!(
                            "this process's cgroup {} is not the user's (start under \
                             `systemd-run --user --scope -p Delegate=yes ...` where systemd \
                             runs cgroup v2)",
                            d.display()
                        ),
                        None => "this host has no cgroup v2 hierarchy".to_string(),
                    }
                ))),
            }
        } else if is_v2() {
            cg.make_v2(name, limits, allowed)
        } else {
            cg.make_v1(name, limits, allowed)
        };
        if let Err(e) = made {
            cg.remove();
            return Err(e);
        }
        Ok(cg)
    }

    fn make_dir(&mut self, dir: PathBuf) -> Result<PathBuf, LaunchError> {
        fs::create_dir(&dir).map_err(|e| LaunchError::Cgroup(format!("{}: {e}", dir.display())))?;
        self.dirs.push(dir.clone());
        Ok(dir)
    }

    fn make_v2(
        &mut self,
        name: &str,
        limits: &Limits,
        allowed: &[Rule],
    ) -> Result<(), LaunchError> {
        // Under a group of our own at the root, where controllers can be
        // delegated (a leaf holding processes cannot enable them).
        let parent = Path::new(ROOT).join("unionfs-run");
        fs::create_dir_all(&parent)
            .map_err(|e| LaunchError::Cgroup(format!("{}: {e}", parent.display())))?;
        for d in [Path::new(ROOT), parent.as_path()] {
            for c in ["+memory", "+pids", "+cpu"] {
                let _ = fs::write(d.join("cgroup.subtree_control"), c);
            }
        }
        let dir = self.make_dir(parent.join(name))?;
        set_v2_limits(&dir, limits)?;
        attach_device_program(&dir, allowed)
    }

    /// In the user's delegated cgroup `base`. No device program: loading one
    /// needs privileges a user lacks, and a user makes no device node.
    fn make_delegated(
        &mut self,
        base: &Path,
        name: &str,
        limits: &Limits,
    ) -> Result<(), LaunchError> {
        // The launcher waits in the leaf, so its container starts there,
        // never in `base`, where another launcher's `enable` moves every
        // process it finds.
        let leaf = leaf_of(base)?;
        write(&leaf, "cgroup.procs", &std::process::id().to_string())?;
        let wanted = limits.controllers();
        if !wanted.is_empty() {
            let have = words(&base.join("cgroup.controllers"));
            if let Some((c, flag)) = wanted.iter().find(|(c, _)| !have.iter().any(|h| h == c)) {
                let v2_has = v2_mount().is_some_and(|(m, _)| {
                    words(&m.join("cgroup.controllers")).contains(&c.to_string())
                });
                return Err(LaunchError::Cgroup(format!(
                    "{flag} needs the {c} controller, which the cgroup delegated to the user \
                     ({}) does not have (it has: {}): {}",
                    base.display(),
                    if have.is_empty() {
                        "none".to_string()
                    } else {
                        have.join(" ")
                    },
                    if v2_has {
                        format!("delegate it, or run without {flag}")
                    } else {
                        format!("this host's cgroup v2 has no {c} controller (it is on cgroup v1): run without {flag}")
                    }
                )));
            }
            let names: Vec<&str> = wanted.iter().map(|(c, _)| *c).collect();
            enable(base, &names)?;
        }
        let dir = self.make_dir(base.join(name))?;
        set_v2_limits(&dir, limits)
    }

    fn make_v1(
        &mut self,
        name: &str,
        limits: &Limits,
        allowed: &[Rule],
    ) -> Result<(), LaunchError> {
        let mut make = |ctrl: &str| -> Result<PathBuf, LaunchError> {
            let hierarchy = Path::new(ROOT).join(ctrl);
            if !hierarchy.join("cgroup.procs").exists() {
                return Err(LaunchError::Cgroup(format!(
                    "the {ctrl} controller is not mounted at {}",
                    hierarchy.display()
                )));
            }
            let base = hierarchy.join(own_path(|c| c.split(',').any(|x| x == ctrl)));
            self.make_dir(base.join(name))
        };
        let dev = make("devices")?;
        write(&dev, "devices.deny", "a")?;
        for r in allowed {
            write(&dev, "devices.allow", &r.v1_line())?;
        }
        if let Some(m) = limits.memory {
            let dir = make("memory")?;
            write(&dir, "memory.limit_in_bytes", &m.to_string())?;
            let _ = fs::write(dir.join("memory.memsw.limit_in_bytes"), m.to_string());
        }
        if let Some(p) = limits.pids {
            let dir = make("pids")?;
            write(&dir, "pids.max", &p.to_string())?;
        }
        if let Some(c) = limits.cpus {
            let dir = make("cpu")?;
            write(&dir, "cpu.cfs_period_us", &PERIOD.to_string())?;
            write(
                &dir,
                "cpu.cfs_quota_us",
                &((c * PERIOD as f64) as u64).to_string(),
            )?;
        }
        Ok(())
    }

    pub fn add(&self, pid: i32) -> Result<(), LaunchError> {
        for d in &self.dirs {
            write(d, "cgroup.procs", &pid.to_string())?;
        }
        Ok(())
    }

    /// SIGKILL every process in the cgroup (what a killed launcher left):
    /// at once with cgroup v2's `cgroup.kill`, else pid by pid.
    pub fn kill_all(&self) {
        let start = Instant::now();
        for d in &self.dirs {
            let _ = fs::write(d.join("cgroup.kill"), "1");
            while start.elapsed() < Duration::from_secs(5) {
                let procs = fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
                let pids: Vec<i32> = procs.lines().filter_map(|l| l.parse().ok()).collect();
                if pids.is_empty() {
                    break;
                }
                for p in pids {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(p),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// Remove the cgroup once its processes are gone (waits a little for them).
    pub fn remove(&self) {
        for d in &self.dirs {
            let start = Instant::now();
            while fs::remove_dir(d).is_err()
                && d.exists()
                && start.elapsed() < Duration::from_secs(5)
            {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// cgroup v2 has no devices files: a BPF program attached to the cgroup
/// answers each device access.
pub fn attach_device_program(dir: &Path, allowed: &[Rule]) -> Result<(), LaunchError> {
    let fd = nix::fcntl::open(
        dir,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| LaunchError::Cgroup(format!("{}: {e}", dir.display())))?;
    devices::attach(fd.as_fd(), allowed)
        .map(drop)
        .map_err(|e| LaunchError::Cgroup(format!("{}: device program: {e}", dir.display())))
}
