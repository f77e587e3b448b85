//! The container's seccomp filter: a profile in the Docker/OCI format (our
//! default one is `seccomp-default.json`, Docker's default profile as the
//! reference; `--security-opt seccomp=FILE` takes any other, such as the one
//! containers-common ships), evaluated against the container's capabilities
//! and the machine's architecture, built into BPF by libseccomp.

use std::collections::HashSet;

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use serde::Deserialize;

const DEFAULT_PROFILE: &str = include_str!("seccomp-default.json");

/// What `--security-opt seccomp=` chose.
#[derive(Clone, Debug, Default)]
pub enum Seccomp {
    /// Our default profile.
    #[default]
    Default,
    /// No filter at all.
    Unconfined,
    /// A profile read from a file.
    Profile(Box<Profile>),
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    pub default_action: String,
    #[serde(default, deserialize_with = "null_is_default")]
    pub default_errno_ret: Option<u32>,
    /// Older profiles: the architectures to add, without a map.
    #[serde(default, deserialize_with = "null_is_default")]
    pub architectures: Vec<String>,
    #[serde(default, deserialize_with = "null_is_default")]
    pub arch_map: Vec<ArchMap>,
    #[serde(default, deserialize_with = "null_is_default")]
    pub syscalls: Vec<Group>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchMap {
    pub architecture: String,
    #[serde(default, deserialize_with = "null_is_default")]
    pub sub_architectures: Vec<String>,
}

/// One entry of `syscalls`: these names get this action (under conditions).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Group {
    #[serde(default, deserialize_with = "null_is_default")]
    pub names: Vec<String>,
    /// Older profiles name one call per entry.
    #[serde(default, deserialize_with = "null_is_default")]
    pub name: Option<String>,
    pub action: String,
    #[serde(default, deserialize_with = "null_is_default")]
    pub errno_ret: Option<u32>,
    #[serde(default, deserialize_with = "null_is_default")]
    pub args: Vec<Arg>,
    #[serde(default, deserialize_with = "null_is_default")]
    pub includes: Filter,
    #[serde(default, deserialize_with = "null_is_default")]
    pub excludes: Filter,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Arg {
    pub index: u32,
    pub value: u64,
    #[serde(default, deserialize_with = "null_is_default")]
    pub value_two: u64,
    pub op: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Filter {
    #[serde(default, deserialize_with = "null_is_default")]
    pub caps: Vec<String>,
    #[serde(default, deserialize_with = "null_is_default")]
    pub arches: Vec<String>,
    #[serde(default, deserialize_with = "null_is_default")]
    pub min_kernel: Option<String>,
}

/// Profiles written by Go programs say `null` for an empty list.
fn null_is_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

impl Seccomp {
    /// `unconfined` or the path of a profile.
    pub fn parse(value: &str) -> Result<Seccomp, String> {
        if value == "unconfined" {
            return Ok(Seccomp::Unconfined);
        }
        let text =
            std::fs::read_to_string(value).map_err(|e| format!("seccomp profile {value}: {e}"))?;
        let p = Profile::parse(&text).map_err(|e| format!("seccomp profile {value}: {e}"))?;
        Ok(Seccomp::Profile(Box::new(p)))
    }

    /// The filter for a container with capabilities `caps` (names such as
    /// `CAP_SYS_ADMIN`), built now so a bad profile fails the launch before
    /// anything runs; None when unconfined.
    pub fn filter(&self, caps: &HashSet<String>) -> Result<Option<ScmpFilterContext>, String> {
        let owned;
        let p = match self {
            Seccomp::Unconfined => return Ok(None),
            Seccomp::Profile(p) => p,
            Seccomp::Default => {
                owned = Profile::parse(DEFAULT_PROFILE)?;
                &owned
            }
        };
        p.build(caps).map(Some)
    }
}

/// libseccomp's names (`SCMP_ARCH_X86_64`) and the short ones profiles use
/// in `includes.arches` (`amd64`, `x86`, ...).
fn arch(name: &str) -> Option<ScmpArch> {
    let n = name
        .strip_prefix("SCMP_ARCH_")
        .unwrap_or(name)
        .to_ascii_lowercase();
    Some(match n.as_str() {
        "x86_64" | "amd64" => ScmpArch::X8664,
        "x86" | "386" | "i386" => ScmpArch::X86,
        "x32" => ScmpArch::X32,
        "aarch64" | "arm64" => ScmpArch::Aarch64,
        "arm" => ScmpArch::Arm,
        "ppc64le" => ScmpArch::Ppc64Le,
        "ppc64" => ScmpArch::Ppc64,
        "ppc" => ScmpArch::Ppc,
        "s390x" => ScmpArch::S390X,
        "s390" => ScmpArch::S390,
        "riscv64" => ScmpArch::Riscv64,
        "mips" => ScmpArch::Mips,
        "mipsel" => ScmpArch::Mipsel,
        "mips64" => ScmpArch::Mips64,
        "mipsel64" => ScmpArch::Mipsel64,
        "mips64n32" => ScmpArch::Mips64N32,
        "mipsel64n32" => ScmpArch::Mipsel64N32,
        _ => return None,
    })
}

fn action(name: &str, errno: Option<u32>) -> Result<ScmpAction, String> {
    let errno = errno.unwrap_or(libc::EPERM as u32) as i32;
    Ok(match name {
        "SCMP_ACT_ALLOW" => ScmpAction::Allow,
        "SCMP_ACT_ERRNO" => ScmpAction::Errno(errno),
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => ScmpAction::KillThread,
        "SCMP_ACT_KILL_PROCESS" => ScmpAction::KillProcess,
        "SCMP_ACT_TRAP" => ScmpAction::Trap,
        "SCMP_ACT_TRACE" => ScmpAction::Trace(errno as u16),
        "SCMP_ACT_LOG" => ScmpAction::Log,
        other => return Err(format!("action {other} is not supported")),
    })
}

fn compare(a: &Arg) -> Result<ScmpArgCompare, String> {
    let op = match a.op.as_str() {
        "SCMP_CMP_NE" => ScmpCompareOp::NotEqual,
        "SCMP_CMP_LT" => ScmpCompareOp::Less,
        "SCMP_CMP_LE" => ScmpCompareOp::LessOrEqual,
        "SCMP_CMP_EQ" => ScmpCompareOp::Equal,
        "SCMP_CMP_GE" => ScmpCompareOp::GreaterEqual,
        "SCMP_CMP_GT" => ScmpCompareOp::Greater,
        // (arg & value) == valueTwo
        "SCMP_CMP_MASKED_EQ" => ScmpCompareOp::MaskedEqual(a.value),
        other => return Err(format!("comparison {other} is not supported")),
    };
    let datum = if a.op == "SCMP_CMP_MASKED_EQ" {
        a.value_two
    } else {
        a.value
    };
    Ok(ScmpArgCompare::new(a.index, op, datum))
}

/// The running kernel's (major, minor).
fn kernel() -> (u32, u32) {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    version(&release).unwrap_or((0, 0))
}

fn version(s: &str) -> Option<(u32, u32)> {
    let mut it = s.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

impl Filter {
    fn names_arch(&self, native: ScmpArch) -> bool {
        self.arches.iter().any(|a| arch(a) == Some(native))
    }

    /// `includes`: every capability held, the architecture listed (if
    /// any are), the kernel new enough (if it says).
    fn all_hold(&self, caps: &HashSet<String>, native: ScmpArch, kernel: (u32, u32)) -> bool {
        self.caps.iter().all(|c| caps.contains(c))
            && (self.arches.is_empty() || self.names_arch(native))
            && self
                .min_kernel
                .as_deref()
                .and_then(version)
                .is_none_or(|v| kernel >= v)
    }

    /// `excludes`: any capability held, or the architecture listed.
    fn any_holds(&self, caps: &HashSet<String>, native: ScmpArch) -> bool {
        self.caps.iter().any(|c| caps.contains(c)) || self.names_arch(native)
    }
}

impl Profile {
    pub fn parse(text: &str) -> Result<Profile, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }

    fn build(&self, caps: &HashSet<String>) -> Result<ScmpFilterContext, String> {
        let e = |e: libseccomp::error::SeccompError| e.to_string();
        let default_errno = self.default_errno_ret;
        let default = action(&self.default_action, default_errno)?;
        let mut ctx = ScmpFilterContext::new(default).map_err(e)?;
        let native = ScmpArch::native();
        let mut extra: Vec<&String> = self.architectures.iter().collect();
        for m in &self.arch_map {
            if arch(&m.architecture) == Some(native) {
                extra.extend(&m.sub_architectures);
            }
        }
        for a in extra {
            match arch(a) {
                Some(x) if x != native => ctx.add_arch(x).map(drop).map_err(e)?,
                Some(_) => {}
                None => return Err(format!("unknown architecture {a}")),
            }
        }
        let kernel = kernel();
        for g in &self.syscalls {
            let applies =
                g.includes.all_hold(caps, native, kernel) && !g.excludes.any_holds(caps, native);
            if !applies {
                continue;
            }
            // As runc: a group without errnoRet answers EPERM, whatever the default says.
            let act = action(&g.action, g.errno_ret)?;
            if act == default {
                continue;
            }
            let cmps = g.args.iter().map(compare).collect::<Result<Vec<_>, _>>()?;
            // Several conditions on one argument cannot be one rule: each
            // becomes a rule of its own (any of them allows), as runc does.
            let mut seen = HashSet::new();
            let repeated = g.args.iter().any(|a| !seen.insert(a.index));
            for name in g.names.iter().chain(g.name.as_ref()) {
                // A call this libseccomp does not know cannot be made either.
                let Ok(call) = ScmpSyscall::from_name(name) else {
                    continue;
                };
                let added = if cmps.is_empty() {
                    ctx.add_rule(act, call).map(drop)
                } else if repeated {
                    cmps.iter()
                        .try_for_each(|c| ctx.add_rule_conditional(act, call, &[*c]).map(drop))
                } else {
                    ctx.add_rule_conditional(act, call, &cmps).map(drop)
                };
                added.map_err(|err| format!("{name}: {err}"))?;
            }
        }
        Ok(ctx)
    }
}

/// Where a `--security-opt` value goes.
pub fn security_opt(value: &str) -> Result<Seccomp, String> {
    match value.split_once('=') {
        Some(("seccomp", v)) => Seccomp::parse(v),
        _ => Err(format!(
            "--security-opt {value}: only seccomp=unconfined or seccomp=PROFILE.json is supported"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docker_caps() -> HashSet<String> {
        ["CAP_CHOWN", "CAP_SYS_CHROOT", "CAP_KILL"]
            .into_iter()
            .map(String::from)
            .collect()
    }

    #[test]
    fn the_default_profile_builds() {
        let f = Seccomp::Default.filter(&docker_caps()).unwrap();
        assert!(f.is_some());
        assert!(Seccomp::Unconfined
            .filter(&docker_caps())
            .unwrap()
            .is_none());
    }

    #[test]
    fn a_group_without_errno_ret_answers_eperm_whatever_the_default() {
        let p = Profile::parse(
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38,
                "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]}"#,
        )
        .unwrap();
        let ctx = p.build(&docker_caps()).unwrap();
        let out = tempfile::tempfile().unwrap();
        ctx.export_pfc(&out).unwrap();
        let mut text = String::new();
        use std::io::{Read, Seek};
        let mut out = out;
        out.rewind().unwrap();
        out.read_to_string(&mut text).unwrap();
        // The mkdir rule is there (not dropped as "the default"), with EPERM.
        let rule: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.contains("mkdir"))
            .take(3)
            .collect();
        assert!(rule.iter().any(|l| l.contains("ERRNO(1)")), "{text}");
    }

    #[test]
    fn bad_profiles_are_errors() {
        let p = Profile::parse(r#"{"defaultAction":"SCMP_ACT_NOPE"}"#).unwrap();
        assert!(p
            .build(&docker_caps())
            .unwrap_err()
            .contains("SCMP_ACT_NOPE"));
        assert!(Profile::parse("{").is_err());
        assert!(security_opt("apparmor=x").is_err());
        assert_eq!(version("6.18.44-fc"), Some((6, 18)));
    }
}
