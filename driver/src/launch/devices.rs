//! Which devices a container may use: an allowlist, as runc and crun keep
//! it, enforced by the kernel's device cgroup: the `devices` controller's
//! `devices.allow`/`devices.deny` on cgroup v1, a BPF device program on
//! cgroup v2. Any device node may be made (`m`, as Docker allows, for
//! package installs), but only the listed ones may be opened, so a node
//! made in the container or brought in by an image layer is unusable.

use std::os::fd::{BorrowedFd, OwnedFd};

use crate::sys;

/// Access bits, as the kernel's `BPF_DEVCG_ACC_*` (and v1's `m`, `r`, `w`).
pub const MKNOD: u32 = 1;
pub const READ: u32 = 2;
pub const WRITE: u32 = 4;
pub const RWM: u32 = MKNOD | READ | WRITE;

/// One allowlist entry. `None` is the wildcard `*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    /// `'c'` or `'b'`.
    pub kind: char,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    pub access: u32,
}

const fn char_dev(major: u32, minor: Option<u32>, access: u32) -> Rule {
    Rule {
        kind: 'c',
        major: Some(major),
        minor,
        access,
    }
}

/// Docker's default set: making any node; using null, zero, full, random,
/// urandom, tty, console, ptmx and the pseudo-terminals.
pub const DEFAULT: [Rule; 11] = [
    Rule {
        kind: 'c',
        major: None,
        minor: None,
        access: MKNOD,
    },
    Rule {
        kind: 'b',
        major: None,
        minor: None,
        access: MKNOD,
    },
    char_dev(1, Some(3), RWM), // null
    char_dev(1, Some(5), RWM), // zero
    char_dev(1, Some(7), RWM), // full
    char_dev(1, Some(8), RWM), // random
    char_dev(1, Some(9), RWM), // urandom
    char_dev(5, Some(0), RWM), // tty
    char_dev(5, Some(1), RWM), // console
    char_dev(5, Some(2), RWM), // ptmx
    char_dev(136, None, RWM),  // pts/*
];

impl Rule {
    /// The rule for the device node `st` (what `--device` passes on).
    pub fn for_node(st: &nix::sys::stat::FileStat, access: u32) -> Option<Rule> {
        let kind = match st.st_mode & libc::S_IFMT {
            libc::S_IFCHR => 'c',
            libc::S_IFBLK => 'b',
            _ => return None,
        };
        Some(Rule {
            kind,
            major: Some(libc::major(st.st_rdev)),
            minor: Some(libc::minor(st.st_rdev)),
            access,
        })
    }

    /// The line for cgroup v1's `devices.allow`: `c 1:3 rwm`.
    pub fn v1_line(&self) -> String {
        let n = |v: Option<u32>| v.map_or("*".to_string(), |v| v.to_string());
        let mut acc = String::new();
        for (bit, c) in [(READ, 'r'), (WRITE, 'w'), (MKNOD, 'm')] {
            if self.access & bit != 0 {
                acc.push(c);
            }
        }
        format!("{} {}:{} {acc}", self.kind, n(self.major), n(self.minor))
    }
}

/// `--device` access letters (`rwm`, any subset) as bits.
pub fn parse_access(s: &str) -> Option<u32> {
    let mut bits = 0;
    for c in s.chars() {
        bits |= match c {
            'r' => READ,
            'w' => WRITE,
            'm' => MKNOD,
            _ => return None,
        };
    }
    (bits != 0).then_some(bits)
}

/// eBPF, just what a device program needs (the encoding of `struct bpf_insn`).
mod asm {
    pub type Insn = [u8; 8];

    fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
        let mut b = [0u8; 8];
        b[0] = code;
        b[1] = (src << 4) | (dst & 0xf);
        b[2..4].copy_from_slice(&off.to_le_bytes());
        b[4..8].copy_from_slice(&imm.to_le_bytes());
        b
    }
    /// dst = *(u32 *)(src + off)
    pub fn load32(dst: u8, src: u8, off: i16) -> Insn {
        insn(0x61, dst, src, off, 0)
    }
    /// dst = src (64 bit)
    pub fn mov(dst: u8, src: u8) -> Insn {
        insn(0xbf, dst, src, 0, 0)
    }
    /// dst = imm
    pub fn mov_imm(dst: u8, imm: i32) -> Insn {
        insn(0xb7, dst, 0, 0, imm)
    }
    /// dst &= imm (32 bit)
    pub fn and_imm(dst: u8, imm: i32) -> Insn {
        insn(0x54, dst, 0, 0, imm)
    }
    /// dst >>= imm (32 bit)
    pub fn rsh_imm(dst: u8, imm: i32) -> Insn {
        insn(0x74, dst, 0, 0, imm)
    }
    /// if dst != imm goto +off
    pub fn jne_imm(dst: u8, imm: i32, off: i16) -> Insn {
        insn(0x55, dst, 0, off, imm)
    }
    pub fn exit() -> Insn {
        insn(0x95, 0, 0, 0, 0)
    }
}

/// The device program for `rules`: `struct bpf_cgroup_dev_ctx` (access_type
/// = access << 16 | type, major, minor) in r1; answers 1 to allow, 0 to deny.
pub fn program(rules: &[Rule]) -> Vec<asm::Insn> {
    use asm::*;
    let mut p = vec![
        load32(2, 1, 0),
        mov(3, 2),
        and_imm(3, 0xffff), // r3: type (1 block, 2 char)
        rsh_imm(2, 16),     // r2: access asked for
        load32(4, 1, 4),    // r4: major
        load32(5, 1, 8),    // r5: minor
    ];
    for r in rules {
        let mut body = Vec::new();
        let kind = if r.kind == 'b' { 1 } else { 2 };
        // Each check jumps past the rest of this rule to the next one; the
        // offsets are filled in once the rule's length is known.
        body.push((jne_imm(3, kind, 0), true));
        body.push((mov(6, 2), false));
        body.push((and_imm(6, !(r.access as i32)), false));
        body.push((jne_imm(6, 0, 0), true));
        if let Some(m) = r.major {
            body.push((jne_imm(4, m as i32, 0), true));
        }
        if let Some(m) = r.minor {
            body.push((jne_imm(5, m as i32, 0), true));
        }
        body.push((mov_imm(0, 1), false));
        body.push((exit(), false));
        let len = body.len();
        for (i, (mut ins, jumps)) in body.into_iter().enumerate() {
            if jumps {
                let off = (len - i - 1) as i16;
                ins[2..4].copy_from_slice(&off.to_le_bytes());
            }
            p.push(ins);
        }
    }
    p.push(mov_imm(0, 0));
    p.push(exit());
    p
}

/// Load the device program for `rules` and attach it to the cgroup v2
/// directory `cgroup`; the program lives as long as the cgroup.
pub fn attach(cgroup: BorrowedFd, rules: &[Rule]) -> nix::Result<OwnedFd> {
    let prog = sys::bpf_load_device_program(&program(rules))?;
    sys::bpf_attach_device_program(cgroup, std::os::fd::AsFd::as_fd(&prog))?;
    Ok(prog)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_lines_and_access() {
        assert_eq!(DEFAULT[0].v1_line(), "c *:* m");
        assert_eq!(DEFAULT[2].v1_line(), "c 1:3 rwm");
        assert_eq!(DEFAULT[10].v1_line(), "c 136:* rwm");
        assert_eq!(parse_access("rw"), Some(READ | WRITE));
        assert_eq!(parse_access("x"), None);
        assert_eq!(parse_access(""), None);
    }

    #[test]
    fn program_shape() {
        let p = program(&DEFAULT[2..3]);
        // prologue 6, the rule 8 (type, access 3, major, minor, r0, exit), epilogue 2
        assert_eq!(p.len(), 16);
        // The type check skips the other 7 instructions of its rule.
        assert_eq!(p[6][0], 0x55);
        assert_eq!(i16::from_le_bytes([p[6][2], p[6][3]]), 7);
        assert_eq!(p[15][0], 0x95);
    }
}
