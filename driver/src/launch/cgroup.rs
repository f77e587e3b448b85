//! The container's cgroup, v1 or v2, whichever the host has (detected at
//! run time): every container gets one, limits or not, for its device
//! allowlist (see devices.rs) and so that whatever it left running can be
//! found and killed. Removed when the container ends; a cgroup that could
//! not be set up completely is removed at once.

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

pub fn is_v2() -> bool {
    Path::new(ROOT).join("cgroup.controllers").exists()
}

impl Cgroup {
    /// A cgroup named `name` with `limits`, allowing the devices `allowed`.
    pub fn create(name: &str, limits: &Limits, allowed: &[Rule]) -> Result<Cgroup, LaunchError> {
        let mut cg = Cgroup::default();
        // A user's container: no cgroup without delegation to the user (the
        // PID namespace still takes everything with it, and it can make no
        // device node to need an allowlist for). Limits are refused.
        if crate::userns::rootless() {
            if *limits != Limits::default() {
                return Err(LaunchError::Cgroup(format!(
                    "--memory, --pids and --cpus need a cgroup delegated to the user \
                     (cgroup v2 with a user slice); this host {}: run without them",
                    if is_v2() {
                        "has cgroup v2, but delegation is not supported yet"
                    } else {
                        "has cgroup v1, which delegates nothing to users"
                    }
                )));
            }
            return Ok(cg);
        }
        let made = if is_v2() {
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
        if let Some(m) = limits.memory {
            write(&dir, "memory.max", &m.to_string())?;
            let _ = fs::write(dir.join("memory.swap.max"), "0");
        }
        if let Some(p) = limits.pids {
            write(&dir, "pids.max", &p.to_string())?;
        }
        if let Some(c) = limits.cpus {
            write(
                &dir,
                "cpu.max",
                &format!("{} {PERIOD}", (c * PERIOD as f64) as u64),
            )?;
        }
        attach_device_program(&dir, allowed)
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
