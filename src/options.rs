//! `-o` mount options, in the style of FUSE tools and `mount.fuse3`.

use std::time::Duration;

use crate::branch::{split_list, BranchSpec, Mode};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeleteMode {
    /// Remove every writable instance; whiteout what read-only branches keep.
    #[default]
    All,
    /// Remove the topmost writable instance and hide the rest with a whiteout.
    Whiteout,
    /// Remove only the topmost instance, so a lower one shows through.
    First,
}

/// Which transport serves requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum IoUring {
    /// io_uring where the kernel offers it, else /dev/fuse.
    #[default]
    Auto,
    /// io_uring or no mount.
    On,
    /// /dev/fuse only.
    Off,
}

/// How changes made directly in the branches (not through the mount) are
/// followed; aufs's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Udba {
    /// Branch directories are watched: every cache is kept exact by their
    /// events, and the kernel caches for long.
    #[default]
    Notify,
    /// Nothing is watched: the daemon checks its caches against the
    /// branches on every use, and the kernel caches for a second.
    Reval,
    /// Nobody edits the branches: everything is cached for long, unchecked.
    None,
}

/// Which opens the kernel serves itself (FUSE passthrough).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Passthrough {
    /// Wherever a file opened read-only before a copy-up still sees the
    /// writes made after it: files no copy-up can move, and lower files
    /// backed by a reflink clone where the branches allow it.
    #[default]
    On,
    /// Every open; a read-only open made before a copy-up keeps the data it
    /// had (overlayfs before Linux 4.19).
    All,
    /// None: the daemon serves all data.
    Off,
}

/// Generic mount flags passed to the kernel as given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flag {
    Dev,
    NoDev,
    Suid,
    NoSuid,
    Exec,
    NoExec,
    Sync,
    Async,
    DirSync,
}

#[derive(Clone, Debug)]
pub struct MountOptions {
    pub delete: DeleteMode,
    pub allow_other: bool,
    pub allow_root: bool,
    pub default_permissions: bool,
    pub read_only: bool,
    pub threads: usize,
    pub passthrough: Passthrough,
    pub io_uring: IoUring,
    /// Listings carry attributes when entries are being looked up.
    pub readdirplus: bool,
    pub udba: Udba,
    /// Branch directories watched at most (udba=notify); beyond, directories
    /// are served as in `reval`.
    pub max_watches: usize,
    /// Kernel cache timeouts as given (else the `udba` mode's, see `ttl`).
    pub entry_timeout: Option<Duration>,
    pub attr_timeout: Option<Duration>,
    /// How long the kernel keeps a name that does not exist.
    pub negative_timeout: Option<Duration>,
    /// Directory fds kept open for lookups (0: none).
    pub dir_cache: usize,
    /// Readahead of the mount in KiB.
    pub readahead_kb: u32,
    pub fsname: Option<String>,
    /// overlayfs's form of the branches (`lowerdir=`, `upperdir=`, `workdir=`),
    /// as container tools and mount helpers give them.
    pub overlay: OverlayDirs,
    /// The type shown is `fuse.SUBTYPE` (plain `fuse` when empty).
    pub subtype: String,
    pub flags: Vec<Flag>,
    /// When reads update the access time (the mount(8) words).
    pub atime: Atime,
    /// noatime for directories only.
    pub nodiratime: bool,
}

/// Branches given as overlayfs takes them: `lowerdir=A:B` (leftmost on
/// top, read-only), `upperdir=U` (writable, above them) and `workdir=W`,
/// accepted and checked to be a directory: the work directory is always
/// `U/.wh..wh.work`, where a rename from it into the union never crosses
/// filesystems.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OverlayDirs {
    pub lower: Option<String>,
    pub upper: Option<String>,
    pub work: Option<String>,
}

impl OverlayDirs {
    /// The branches, when `lowerdir=` was given: `upperdir=` rw on top,
    /// then the lower directories read-only, leftmost first. `upperdir=` or
    /// `workdir=` without it is an error.
    pub fn branches(&self) -> Result<Option<Vec<BranchSpec>>, String> {
        let Some(lower) = &self.lower else {
            if self.upper.is_some() || self.work.is_some() {
                return Err("options upperdir and workdir need lowerdir".into());
            }
            return Ok(None);
        };
        if let Some(w) = &self.work {
            if self.upper.is_none() {
                return Err("option workdir needs upperdir".into());
            }
            if !std::path::Path::new(w).is_dir() {
                return Err(format!("option workdir: {w} is not a directory"));
            }
        }
        let spec = |path: &str, mode| BranchSpec {
            path: path.into(),
            mode,
        };
        let mut out: Vec<BranchSpec> = self.upper.iter().map(|u| spec(u, Mode::Rw)).collect();
        for dir in split_list(lower) {
            if dir.is_empty() {
                return Err(format!("option lowerdir: an empty directory in '{lower}'"));
            }
            out.push(spec(&dir, Mode::Ro));
        }
        Ok(Some(out))
    }
}

/// Access time updates, as the kernel applies them to local filesystems.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Atime {
    /// Only when the access time is older than the change or modification
    /// time, or a day old (the default).
    Relatime,
    /// On every read.
    Strict,
    /// Never.
    No,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            delete: DeleteMode::All,
            allow_other: false,
            allow_root: false,
            default_permissions: true,
            read_only: false,
            threads: std::thread::available_parallelism()
                .map(|n| n.get().max(2))
                .unwrap_or(2),
            passthrough: Passthrough::On,
            io_uring: IoUring::Auto,
            readdirplus: false,
            udba: Udba::Notify,
            max_watches: 65536,
            entry_timeout: None,
            attr_timeout: None,
            negative_timeout: None,
            dir_cache: 32768,
            readahead_kb: 1024,
            fsname: None,
            overlay: OverlayDirs::default(),
            subtype: program_name(),
            flags: Vec::new(),
            atime: Atime::Relatime,
            nodiratime: false,
        }
    }
}

/// The subtype a mount shows by default: the program's name, as libfuse
/// gives it (so `mount -t fuse.unionfs-mount`, which runs the program of
/// that name, shows that type).
fn program_name() -> String {
    std::env::args_os()
        .next()
        .as_deref()
        .map(std::path::Path::new)
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .filter(|n| is_subtype(n))
        .unwrap_or("unionfs")
        .to_string()
}

/// What a subtype may hold: letters, digits and `._+-` (so the type word
/// in /proc/mounts and the mount helper's name stay plain).
fn is_subtype(s: &str) -> bool {
    s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "._+-".contains(c))
}

/// How long the kernel may keep names, attributes and misses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ttl {
    pub entry: Duration,
    pub attr: Duration,
    pub negative: Duration,
}

/// What the kernel keeps where changes are followed (or nobody makes them).
pub const LONG: Duration = Duration::from_secs(86400);
/// What it keeps where they are not: the daemon checks again after that.
pub const SHORT: Duration = Duration::from_secs(1);

impl MountOptions {
    /// The kernel's timeouts for names in directories whose changes the
    /// daemon follows (`exact`) or does not: given ones win, else the mode's.
    pub fn ttl(&self, exact: bool) -> Ttl {
        let long = exact && self.udba != Udba::Reval;
        let pick = |given: Option<Duration>, default: Duration| match given {
            Some(d) if long => d,
            Some(d) => d.min(default),
            None => default,
        };
        Ttl {
            entry: pick(self.entry_timeout, if long { LONG } else { SHORT }),
            attr: pick(self.attr_timeout, if long { LONG } else { SHORT }),
            negative: pick(
                self.negative_timeout,
                if long { LONG } else { Duration::ZERO },
            ),
        }
    }
}

fn seconds(key: &str, v: &str) -> Result<Duration, String> {
    let secs: f64 = v
        .parse()
        .map_err(|_| format!("option {key}: '{v}' is not a number of seconds"))?;
    if !(0.0..=86400.0 * 365.0).contains(&secs) {
        return Err(format!("option {key}: '{v}' is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn on_off(key: &str, v: &str) -> Result<bool, String> {
    match v {
        "on" | "yes" | "1" | "true" => Ok(true),
        "off" | "no" | "0" | "false" => Ok(false),
        _ => Err(format!("option {key}: '{v}' is not on or off")),
    }
}

/// Options that `mount(8)` and `mount.fuse3` pass along from /etc/fstab and
/// that mean nothing to the daemon itself.
const IGNORED: &[&str] = &[
    "defaults",
    "rw",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "owner",
    "group",
    "_netdev",
    "nofail",
    "lazytime",
    "nolazytime",
    "silent",
    "loud",
    "nosymfollow",
];

impl MountOptions {
    /// Make the atime options this process's policy for reading branches
    /// (see `sys::set_atime_policy`).
    pub fn apply_atime(&self) {
        use crate::sys::{MOUNT_ATTR_NOATIME, MOUNT_ATTR_NODIRATIME, MOUNT_ATTR_STRICTATIME};
        let no = self.atime == Atime::No;
        let mount_attr = match self.atime {
            // The kernel's own default: the branch mount as it is.
            Atime::Relatime => 0,
            Atime::Strict => MOUNT_ATTR_STRICTATIME,
            Atime::No => MOUNT_ATTR_NOATIME,
        } | if self.nodiratime {
            MOUNT_ATTR_NODIRATIME
        } else {
            0
        };
        crate::sys::set_atime_policy(no, no || self.nodiratime, mount_attr);
    }

    /// Apply one comma-separated `-o` list on top of the current options.
    pub fn apply(&mut self, list: &str) -> Result<(), String> {
        for opt in list.split(',').filter(|o| !o.is_empty()) {
            let (key, val) = match opt.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (opt, None),
            };
            match (key, val) {
                ("delete", Some(v)) => {
                    self.delete = match v {
                        "all" => DeleteMode::All,
                        "whiteout" => DeleteMode::Whiteout,
                        "first" => DeleteMode::First,
                        _ => {
                            return Err(format!(
                                "option delete: '{v}' is not all, whiteout or first"
                            ))
                        }
                    }
                }
                ("allow_other", None) => self.allow_other = true,
                ("allow_root", None) => self.allow_root = true,
                ("default_permissions", None) => self.default_permissions = true,
                ("no_default_permissions", None) => self.default_permissions = false,
                ("ro", None) => self.read_only = true,
                ("threads", Some(v)) => {
                    self.threads = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=256).contains(n))
                        .ok_or_else(|| {
                            format!("option threads: '{v}' is not a number from 1 to 256")
                        })?
                }
                ("passthrough", Some(v)) => {
                    self.passthrough = match v {
                        "on" | "yes" | "1" | "true" => Passthrough::On,
                        "all" => Passthrough::All,
                        "off" | "no" | "0" | "false" => Passthrough::Off,
                        _ => {
                            return Err(format!("option passthrough: '{v}' is not on, all or off"))
                        }
                    }
                }
                ("readdirplus", Some(v)) => self.readdirplus = on_off(key, v)?,
                ("io_uring", Some(v)) => {
                    self.io_uring = match v {
                        "auto" => IoUring::Auto,
                        "on" => IoUring::On,
                        "off" => IoUring::Off,
                        _ => return Err(format!("option io_uring: '{v}' is not auto, on or off")),
                    }
                }
                ("entry_timeout", Some(v)) => self.entry_timeout = Some(seconds(key, v)?),
                ("attr_timeout", Some(v)) => self.attr_timeout = Some(seconds(key, v)?),
                ("negative_timeout", Some(v)) => self.negative_timeout = Some(seconds(key, v)?),
                ("udba", Some(v)) => {
                    self.udba = match v {
                        "notify" => Udba::Notify,
                        "reval" => Udba::Reval,
                        "none" => Udba::None,
                        _ => {
                            return Err(format!("option udba: '{v}' is not notify, reval or none"))
                        }
                    }
                }
                ("max_watches", Some(v)) => {
                    self.max_watches =
                        v.parse().ok().filter(|n| *n <= 1 << 22).ok_or_else(|| {
                            format!("option max_watches: '{v}' is not a number from 0 to 4194304")
                        })?
                }
                ("readahead", Some(v)) => {
                    self.readahead_kb = v
                        .parse()
                        .ok()
                        .filter(|n| (4..=1 << 20).contains(n))
                        .ok_or_else(|| {
                            format!(
                                "option readahead: '{v}' is not a number of KiB from 4 to 1048576"
                            )
                        })?
                }
                ("dir_cache", Some(v)) => {
                    self.dir_cache = v.parse().ok().filter(|n| *n <= 1 << 20).ok_or_else(|| {
                        format!("option dir_cache: '{v}' is not a number from 0 to 1048576")
                    })?
                }
                ("fsname", Some(v)) if !v.is_empty() => self.fsname = Some(v.to_string()),
                ("lowerdir", Some(v)) => self.overlay.lower = Some(v.to_string()),
                ("upperdir", Some(v)) => self.overlay.upper = Some(v.to_string()),
                ("workdir", Some(v)) => self.overlay.work = Some(v.to_string()),
                ("subtype", Some(v)) => {
                    if !is_subtype(v) {
                        return Err(format!(
                            "option subtype: '{v}' may hold only letters, digits and ._+-"
                        ));
                    }
                    self.subtype = v.to_string()
                }
                ("dev", None) => self.flags.push(Flag::Dev),
                ("nodev", None) => self.flags.push(Flag::NoDev),
                ("suid", None) => self.flags.push(Flag::Suid),
                ("nosuid", None) => self.flags.push(Flag::NoSuid),
                ("exec", None) => self.flags.push(Flag::Exec),
                ("noexec", None) => self.flags.push(Flag::NoExec),
                // As mount(2) takes them: "atime", "nostrictatime" and
                // "norelatime" undo the word they name.
                ("noatime", None) => self.atime = Atime::No,
                ("relatime", None) | ("atime" | "nostrictatime", None) => {
                    self.atime = Atime::Relatime
                }
                ("strictatime" | "norelatime", None) => self.atime = Atime::Strict,
                ("nodiratime", None) => self.nodiratime = true,
                ("diratime", None) => self.nodiratime = false,
                ("sync", None) => self.flags.push(Flag::Sync),
                ("async", None) => self.flags.push(Flag::Async),
                ("dirsync", None) => self.flags.push(Flag::DirSync),
                (k, None) if IGNORED.contains(&k) => {}
                (k, _) if k.starts_with("x-") || k == "comment" => {}
                (k, Some(_)) if IGNORED.contains(&k) => {
                    return Err(format!("option {k} takes no value"))
                }
                (
                    "delete" | "threads" | "passthrough" | "io_uring" | "readdirplus"
                    | "entry_timeout" | "attr_timeout" | "negative_timeout" | "dir_cache"
                    | "readahead" | "fsname" | "subtype" | "udba" | "max_watches" | "lowerdir"
                    | "upperdir" | "workdir",
                    None,
                ) => return Err(format!("option {key} needs a value ({key}=...)")),
                _ => return Err(format!("unknown mount option '{opt}'")),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_and_fstab_options() {
        let mut o = MountOptions::default();
        o.apply("delete=whiteout,allow_other,threads=3,passthrough=off,entry_timeout=0.5")
            .unwrap();
        o.apply("rw,defaults,_netdev,noatime,x-systemd.automount")
            .unwrap();
        assert_eq!(o.delete, DeleteMode::Whiteout);
        assert!(o.allow_other);
        assert_eq!(o.threads, 3);
        assert_eq!(o.passthrough, Passthrough::Off);
        o.apply("passthrough=all").unwrap();
        assert_eq!(o.passthrough, Passthrough::All);
        assert_eq!(
            o.apply("passthrough=some").unwrap_err(),
            "option passthrough: 'some' is not on, all or off"
        );
        assert_eq!(o.entry_timeout, Some(Duration::from_millis(500)));
        assert!(o.flags.is_empty());
        assert_eq!(o.atime, Atime::No);
        o.apply("nodiratime,strictatime").unwrap();
        assert_eq!((o.atime, o.nodiratime), (Atime::Strict, true));
        o.apply("nostrictatime,diratime").unwrap();
        assert_eq!((o.atime, o.nodiratime), (Atime::Relatime, false));
    }

    #[test]
    fn subtype_is_checked_and_may_be_empty() {
        let mut o = MountOptions::default();
        o.apply("subtype=unionfs-mount").unwrap();
        assert_eq!(o.subtype, "unionfs-mount");
        o.apply("subtype=").unwrap();
        assert_eq!(o.subtype, "");
        assert_eq!(
            o.apply("subtype=a/b").unwrap_err(),
            "option subtype: 'a/b' may hold only letters, digits and ._+-"
        );
        assert_eq!(
            o.apply("subtype").unwrap_err(),
            "option subtype needs a value (subtype=...)"
        );
        assert_eq!(o.subtype, "");
    }

    #[test]
    fn rejects_bad_options() {
        let mut o = MountOptions::default();
        assert_eq!(
            o.apply("delete=some").unwrap_err(),
            "option delete: 'some' is not all, whiteout or first"
        );
        assert_eq!(
            o.apply("bogus").unwrap_err(),
            "unknown mount option 'bogus'"
        );
        assert!(o.apply("threads=0").is_err());
        assert!(o.apply("delete").is_err());
        assert!(o.apply("attr_timeout=-1").is_err());
        assert_eq!(
            o.apply("dir_cache=abc").unwrap_err(),
            "option dir_cache: 'abc' is not a number from 0 to 1048576"
        );
        assert_eq!(
            o.apply("readahead=1").unwrap_err(),
            "option readahead: '1' is not a number of KiB from 4 to 1048576"
        );
        assert_eq!(
            o.apply("readdirplus=maybe").unwrap_err(),
            "option readdirplus: 'maybe' is not on or off"
        );
        assert_eq!(
            o.apply("negative_timeout=-1").unwrap_err(),
            "option negative_timeout: '-1' is out of range"
        );
        assert_eq!(
            o.apply("dir_cache").unwrap_err(),
            "option dir_cache needs a value (dir_cache=...)"
        );
        // a rejected list changes nothing
        let d = MountOptions::default();
        assert_eq!((o.dir_cache, o.readahead_kb), (d.dir_cache, d.readahead_kb));
        assert!(!o.readdirplus);
        assert_eq!(o.negative_timeout, d.negative_timeout);
    }

    #[test]
    fn parses_cache_options() {
        let mut o = MountOptions::default();
        assert_eq!(o.io_uring, IoUring::Auto);
        o.apply("io_uring=off").unwrap();
        assert_eq!(o.io_uring, IoUring::Off);
        assert_eq!(
            o.apply("io_uring=yes").unwrap_err(),
            "option io_uring: 'yes' is not auto, on or off"
        );
        o.apply("dir_cache=0,readahead=128,readdirplus=on,negative_timeout=2.5")
            .unwrap();
        assert_eq!(o.dir_cache, 0);
        assert_eq!(o.readahead_kb, 128);
        assert!(o.readdirplus);
        assert_eq!(o.negative_timeout, Some(Duration::from_millis(2500)));
    }

    #[test]
    fn udba_picks_the_kernel_timeouts() {
        let mut o = MountOptions::default();
        assert_eq!(o.udba, Udba::Notify);
        assert_eq!(o.ttl(true).entry, LONG);
        assert_eq!(o.ttl(true).negative, LONG);
        // A directory nobody watches: a second, and no cached misses.
        assert_eq!(o.ttl(false).attr, SHORT);
        assert_eq!(o.ttl(false).negative, Duration::ZERO);
        o.apply("udba=reval").unwrap();
        assert_eq!(o.ttl(true), o.ttl(false));
        assert_eq!(o.ttl(true).entry, SHORT);
        o.apply("udba=none,entry_timeout=5").unwrap();
        assert_eq!(o.ttl(true).entry, Duration::from_secs(5));
        assert_eq!(o.ttl(true).attr, LONG);
        assert_eq!(o.ttl(false).entry, SHORT);
        assert_eq!(
            o.apply("udba=inotify").unwrap_err(),
            "option udba: 'inotify' is not notify, reval or none"
        );
        o.apply("max_watches=10").unwrap();
        assert_eq!(o.max_watches, 10);
        assert!(o.apply("max_watches=-1").is_err());
    }
}
