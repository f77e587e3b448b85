//! Resource limits through cgroups, v1 or v2, whichever the host has
//! (detected at run time). A container gets its own cgroup, removed when it ends.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::LaunchError;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Limits {
    pub memory: Option<u64>,
    pub pids: Option<u64>,
    pub cpus: Option<f64>,
}

impl Limits {
    pub fn any(&self) -> bool {
        self.memory.is_some() || self.pids.is_some() || self.cpus.is_some()
    }
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
    /// A cgroup named `name` with `limits`; none is made when there are no limits.
    pub fn create(name: &str, limits: &Limits) -> Result<Cgroup, LaunchError> {
        let mut cg = Cgroup::default();
        if !limits.any() {
            return Ok(cg);
        }
        if is_v2() {
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
            let dir = parent.join(name);
            fs::create_dir(&dir)
                .map_err(|e| LaunchError::Cgroup(format!("{}: {e}", dir.display())))?;
            cg.dirs.push(dir.clone());
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
            return Ok(cg);
        }
        let mut make = |ctrl: &str| -> Result<PathBuf, LaunchError> {
            let base = Path::new(ROOT)
                .join(ctrl)
                .join(own_path(|c| c.split(',').any(|x| x == ctrl)));
            let dir = base.join(name);
            fs::create_dir(&dir)
                .map_err(|e| LaunchError::Cgroup(format!("{}: {e}", dir.display())))?;
            cg.dirs.push(dir.clone());
            Ok(dir)
        };
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
        Ok(cg)
    }

    pub fn add(&self, pid: i32) -> Result<(), LaunchError> {
        for d in &self.dirs {
            write(d, "cgroup.procs", &pid.to_string())?;
        }
        Ok(())
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
