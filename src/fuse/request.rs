//! Requests decoded from the wire: a header and one operation with its
//! arguments, borrowed from the transport's buffer.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use zerocopy::FromBytes;

use super::abi::{self, op, InHeader};

/// A request: who asks, about which node, and what.
#[derive(Debug)]
pub struct Request<'a> {
    pub unique: u64,
    pub nodeid: u64,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    pub opcode: u32,
    pub op: Op<'a>,
}

/// A time that SETATTR sets: now, or a given one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetTime {
    Now,
    At(i64, u32),
}

/// SETATTR's fields: only those the kernel marked valid are Some.
#[derive(Debug, Clone, Copy, Default)]
pub struct Setattr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
    pub fh: Option<u64>,
    /// The caller may not keep setuid/setgid (HANDLE_KILLPRIV_V2).
    pub kill_suidgid: bool,
}

#[derive(Debug)]
pub enum Op<'a> {
    Init(abi::InitIn),
    Destroy,
    Interrupt {
        unique: u64,
    },
    Lookup {
        name: &'a OsStr,
    },
    Forget {
        nlookup: u64,
    },
    BatchForget(Vec<abi::ForgetOne>),
    Getattr {
        fh: Option<u64>,
    },
    Setattr(Setattr),
    Readlink,
    Symlink {
        name: &'a OsStr,
        target: &'a OsStr,
    },
    Mknod {
        name: &'a OsStr,
        mode: u32,
        rdev: u32,
        /// The caller's umask, for the daemon to apply (DONT_MASK).
        umask: u32,
    },
    Mkdir {
        name: &'a OsStr,
        mode: u32,
        umask: u32,
    },
    Unlink {
        name: &'a OsStr,
    },
    Rmdir {
        name: &'a OsStr,
    },
    Rename {
        name: &'a OsStr,
        newdir: u64,
        newname: &'a OsStr,
        flags: u32,
    },
    Link {
        oldnodeid: u64,
        newname: &'a OsStr,
    },
    Open {
        flags: u32,
        /// The caller may not keep setuid/setgid (an O_TRUNC open).
        kill_suidgid: bool,
    },
    Read {
        fh: u64,
        offset: u64,
        size: u32,
    },
    Write {
        fh: u64,
        offset: u64,
        data: &'a [u8],
        /// The caller may not keep setuid/setgid.
        kill_suidgid: bool,
    },
    Statfs,
    Release {
        fh: u64,
    },
    Fsync {
        fh: u64,
        datasync: bool,
    },
    Setxattr {
        name: &'a OsStr,
        value: &'a [u8],
        flags: i32,
    },
    Getxattr {
        name: &'a OsStr,
        size: u32,
    },
    Listxattr {
        size: u32,
    },
    Removexattr {
        name: &'a OsStr,
    },
    Flush,
    Opendir,
    Readdir {
        fh: u64,
        offset: u64,
        size: u32,
        plus: bool,
    },
    Releasedir {
        fh: u64,
    },
    Fsyncdir,
    Create {
        name: &'a OsStr,
        mode: u32,
        flags: u32,
        umask: u32,
    },
    /// An ioctl the kernel passes on: `cmd` with `input` (`in_size`
    /// bytes), answered with at most `out_size` bytes.
    Ioctl {
        cmd: u32,
        input: &'a [u8],
        out_size: u32,
    },
    /// open(dir, O_TMPFILE): a file with no name in the directory.
    Tmpfile {
        mode: u32,
        flags: u32,
        umask: u32,
    },
    Fallocate {
        fh: u64,
        offset: u64,
        length: u64,
        mode: i32,
    },
    Lseek {
        fh: u64,
        offset: i64,
        whence: i32,
    },
    /// Anything else: answered ENOSYS, so the kernel stops asking where it can.
    Unsupported,
}

/// Why a request could not be decoded (answered EIO).
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed(pub u32);

/// Split a /dev/fuse message into header, op header and the rest.
pub fn split(buf: &[u8]) -> Option<(InHeader, &[u8], &[u8])> {
    let (h, rest) = InHeader::read_from_prefix(buf).ok()?;
    let end = (h.len as usize).checked_sub(std::mem::size_of::<InHeader>())?;
    let rest = rest.get(..end)?;
    // INIT's own header grew over the versions: all of it is the op header.
    let n = if h.opcode == op::INIT {
        rest.len()
    } else {
        abi::op_header_size(h.opcode).min(rest.len())
    };
    let (oph, payload) = rest.split_at(n);
    Some((h, oph, payload))
}

fn arg<T: FromBytes>(oph: &[u8], opcode: u32) -> Result<T, Malformed> {
    T::read_from_prefix(oph)
        .map(|(t, _)| t)
        .map_err(|_| Malformed(opcode))
}

/// The NUL-terminated string at the start of `b`, and what follows it.
fn cstr(b: &[u8], opcode: u32) -> Result<(&OsStr, &[u8]), Malformed> {
    let nul = b.iter().position(|&c| c == 0).ok_or(Malformed(opcode))?;
    Ok((OsStr::from_bytes(&b[..nul]), &b[nul + 1..]))
}

fn name(b: &[u8], opcode: u32) -> Result<&OsStr, Malformed> {
    cstr(b, opcode).map(|(n, _)| n)
}

fn set_time(now: bool, set: bool, s: u64, ns: u32) -> Option<SetTime> {
    if now {
        Some(SetTime::Now)
    } else if set {
        Some(SetTime::At(s as i64, ns))
    } else {
        None
    }
}

fn setattr(a: &abi::SetattrIn) -> Setattr {
    let has = |bit: u32| a.valid & bit != 0;
    Setattr {
        mode: has(abi::FATTR_MODE).then_some(a.mode),
        uid: has(abi::FATTR_UID).then_some(a.uid),
        gid: has(abi::FATTR_GID).then_some(a.gid),
        size: has(abi::FATTR_SIZE).then_some(a.size),
        atime: set_time(
            has(abi::FATTR_ATIME_NOW),
            has(abi::FATTR_ATIME),
            a.atime,
            a.atimensec,
        ),
        mtime: set_time(
            has(abi::FATTR_MTIME_NOW),
            has(abi::FATTR_MTIME),
            a.mtime,
            a.mtimensec,
        ),
        fh: has(abi::FATTR_FH).then_some(a.fh),
        kill_suidgid: has(abi::FATTR_KILL_SUIDGID),
    }
}

/// Decode a request from its header, its op header and its other arguments
/// (contiguous on /dev/fuse; the op_in area and the payload over io_uring).
pub fn parse<'a>(h: &InHeader, oph: &'a [u8], rest: &'a [u8]) -> Result<Request<'a>, Malformed> {
    let o = h.opcode;
    let op = match o {
        op::INIT => {
            // Older kernels send a shorter INIT; the missing fields are zero.
            let mut init = abi::InitIn::default();
            let n = oph.len().min(std::mem::size_of::<abi::InitIn>());
            zerocopy::IntoBytes::as_mut_bytes(&mut init)[..n].copy_from_slice(&oph[..n]);
            if n < 16 {
                return Err(Malformed(o));
            }
            Op::Init(init)
        }
        op::DESTROY => Op::Destroy,
        op::INTERRUPT => Op::Interrupt {
            unique: arg::<abi::InterruptIn>(oph, o)?.unique,
        },
        op::LOOKUP => Op::Lookup {
            name: name(rest, o)?,
        },
        op::FORGET => Op::Forget {
            nlookup: arg::<u64>(oph, o)?,
        },
        op::BATCH_FORGET => {
            let count = arg::<u32>(oph, o)? as usize;
            let mut all = Vec::with_capacity(count);
            let mut b = rest;
            for _ in 0..count {
                let (one, tail) = abi::ForgetOne::read_from_prefix(b).map_err(|_| Malformed(o))?;
                all.push(one);
                b = tail;
            }
            Op::BatchForget(all)
        }
        op::GETATTR => {
            let a: abi::GetattrIn = arg(oph, o)?;
            Op::Getattr {
                fh: (a.getattr_flags & abi::GETATTR_FH != 0).then_some(a.fh),
            }
        }
        op::SETATTR => Op::Setattr(setattr(&arg(oph, o)?)),
        op::READLINK => Op::Readlink,
        op::SYMLINK => {
            let (name, tail) = cstr(rest, o)?;
            Op::Symlink {
                name,
                target: self::name(tail, o)?,
            }
        }
        op::MKNOD => {
            let a: abi::MknodIn = arg(oph, o)?;
            Op::Mknod {
                name: name(rest, o)?,
                mode: a.mode,
                rdev: a.rdev,
                umask: a.umask,
            }
        }
        op::MKDIR => {
            let a: abi::MkdirIn = arg(oph, o)?;
            Op::Mkdir {
                name: name(rest, o)?,
                mode: a.mode,
                umask: a.umask,
            }
        }
        op::UNLINK => Op::Unlink {
            name: name(rest, o)?,
        },
        op::RMDIR => Op::Rmdir {
            name: name(rest, o)?,
        },
        op::RENAME | op::RENAME2 => {
            let (newdir, flags) = if o == op::RENAME {
                (arg::<u64>(oph, o)?, 0)
            } else {
                let a: abi::Rename2In = arg(oph, o)?;
                (a.newdir, a.flags)
            };
            let (name, tail) = cstr(rest, o)?;
            Op::Rename {
                name,
                newdir,
                newname: self::name(tail, o)?,
                flags,
            }
        }
        op::LINK => Op::Link {
            oldnodeid: arg::<u64>(oph, o)?,
            newname: name(rest, o)?,
        },
        op::OPEN => {
            let a: abi::OpenIn = arg(oph, o)?;
            Op::Open {
                flags: a.flags,
                kill_suidgid: a.open_flags & abi::OPEN_KILL_SUIDGID != 0,
            }
        }
        op::OPENDIR => Op::Opendir,
        op::READ | op::READDIR | op::READDIRPLUS => {
            let a: abi::ReadIn = arg(oph, o)?;
            if o == op::READ {
                Op::Read {
                    fh: a.fh,
                    offset: a.offset,
                    size: a.size,
                }
            } else {
                Op::Readdir {
                    fh: a.fh,
                    offset: a.offset,
                    size: a.size,
                    plus: o == op::READDIRPLUS,
                }
            }
        }
        op::WRITE => {
            let a: abi::WriteIn = arg(oph, o)?;
            Op::Write {
                fh: a.fh,
                offset: a.offset,
                data: rest.get(..a.size as usize).ok_or(Malformed(o))?,
                kill_suidgid: a.read_flags & abi::WRITE_KILL_SUIDGID != 0,
            }
        }
        op::STATFS => Op::Statfs,
        op::RELEASE => Op::Release {
            fh: arg::<abi::ReleaseIn>(oph, o)?.fh,
        },
        op::RELEASEDIR => Op::Releasedir {
            fh: arg::<abi::ReleaseIn>(oph, o)?.fh,
        },
        op::FSYNC | op::FSYNCDIR => {
            let a: abi::FsyncIn = arg(oph, o)?;
            let datasync = a.fsync_flags & abi::FSYNC_FDATASYNC != 0;
            if o == op::FSYNC {
                Op::Fsync { fh: a.fh, datasync }
            } else {
                Op::Fsyncdir
            }
        }
        op::SETXATTR => {
            let a: abi::SetxattrIn = arg(oph, o)?;
            let (name, value) = cstr(rest, o)?;
            Op::Setxattr {
                name,
                value: value.get(..a.size as usize).ok_or(Malformed(o))?,
                flags: a.flags as i32,
            }
        }
        op::GETXATTR => Op::Getxattr {
            size: arg::<abi::GetxattrIn>(oph, o)?.size,
            name: name(rest, o)?,
        },
        op::LISTXATTR => Op::Listxattr {
            size: arg::<abi::GetxattrIn>(oph, o)?.size,
        },
        op::REMOVEXATTR => Op::Removexattr {
            name: name(rest, o)?,
        },
        op::FLUSH => Op::Flush,
        op::CREATE => {
            let a: abi::CreateIn = arg(oph, o)?;
            Op::Create {
                name: name(rest, o)?,
                mode: a.mode,
                flags: a.flags,
                umask: a.umask,
            }
        }
        op::IOCTL => {
            let a: abi::IoctlIn = arg(oph, o)?;
            Op::Ioctl {
                cmd: a.cmd,
                input: rest.get(..a.in_size as usize).ok_or(Malformed(o))?,
                out_size: a.out_size,
            }
        }
        op::TMPFILE => {
            // The kernel sends a name too ("/"): none is made.
            let a: abi::CreateIn = arg(oph, o)?;
            Op::Tmpfile {
                mode: a.mode,
                flags: a.flags,
                umask: a.umask,
            }
        }
        op::FALLOCATE => {
            let a: abi::FallocateIn = arg(oph, o)?;
            Op::Fallocate {
                fh: a.fh,
                offset: a.offset,
                length: a.length,
                mode: a.mode as i32,
            }
        }
        op::LSEEK => {
            let a: abi::LseekIn = arg(oph, o)?;
            Op::Lseek {
                fh: a.fh,
                offset: a.offset as i64,
                whence: a.whence as i32,
            }
        }
        _ => Op::Unsupported,
    };
    Ok(Request {
        unique: h.unique,
        nodeid: h.nodeid,
        uid: h.uid,
        gid: h.gid,
        pid: h.pid,
        opcode: o,
        op,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::IntoBytes;

    fn message(opcode: u32, oph: &[u8], rest: &[u8]) -> Vec<u8> {
        let len = (std::mem::size_of::<InHeader>() + oph.len() + rest.len()) as u32;
        let h = InHeader {
            len,
            opcode,
            unique: 7,
            nodeid: 1,
            uid: 1000,
            gid: 100,
            pid: 42,
            total_extlen: 0,
            padding: 0,
        };
        [h.as_bytes(), oph, rest].concat()
    }

    fn decode(buf: &[u8]) -> Result<Request<'_>, Malformed> {
        let (h, oph, rest) = split(buf).expect("a whole message");
        parse(&h, oph, rest)
    }

    #[test]
    fn lookup_takes_the_name_up_to_its_nul() {
        let m = message(op::LOOKUP, &[], b"hello\0");
        let r = decode(&m).unwrap();
        assert_eq!((r.unique, r.nodeid, r.uid, r.gid), (7, 1, 1000, 100));
        assert!(matches!(r.op, Op::Lookup { name } if name == "hello"));
    }

    #[test]
    fn rename2_has_both_names_and_its_flags() {
        let a = abi::Rename2In {
            newdir: 9,
            flags: 1,
            padding: 0,
        };
        let m = message(op::RENAME2, a.as_bytes(), b"a\0b\0");
        match decode(&m).unwrap().op {
            Op::Rename {
                name,
                newdir,
                newname,
                flags,
            } => assert_eq!(
                (name.as_bytes(), newdir, newname.as_bytes(), flags),
                (&b"a"[..], 9, &b"b"[..], 1)
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn write_data_is_as_long_as_the_header_says() {
        let a = abi::WriteIn {
            fh: 3,
            offset: 10,
            size: 4,
            ..Default::default()
        };
        let m = message(op::WRITE, a.as_bytes(), b"data");
        assert!(
            matches!(decode(&m).unwrap().op, Op::Write { fh: 3, offset: 10, data, kill_suidgid: false } if data == b"data")
        );
        let short = abi::WriteIn { size: 5, ..a };
        let m = message(op::WRITE, short.as_bytes(), b"data");
        assert_eq!(decode(&m).unwrap_err(), Malformed(op::WRITE));
    }

    #[test]
    fn a_name_without_nul_or_a_short_header_is_malformed() {
        assert!(decode(&message(op::UNLINK, &[], b"x")).is_err());
        assert!(decode(&message(op::GETATTR, &[0; 4], &[])).is_err());
        // A length beyond the buffer is no message at all.
        let mut m = message(op::STATFS, &[], &[]);
        m[0] = 200;
        assert!(split(&m).is_none());
    }

    #[test]
    fn setattr_keeps_only_the_valid_fields() {
        let a = abi::SetattrIn {
            valid: abi::FATTR_MODE | abi::FATTR_MTIME_NOW | abi::FATTR_ATIME,
            mode: 0o600,
            atime: 5,
            atimensec: 6,
            uid: 77,
            ..Default::default()
        };
        let Op::Setattr(s) = decode(&message(op::SETATTR, a.as_bytes(), &[])).unwrap().op else {
            panic!()
        };
        assert_eq!((s.mode, s.uid, s.size), (Some(0o600), None, None));
        assert_eq!(
            (s.atime, s.mtime),
            (Some(SetTime::At(5, 6)), Some(SetTime::Now))
        );
    }

    #[test]
    fn unknown_opcodes_are_unsupported_not_errors() {
        assert!(matches!(
            decode(&message(4000, &[], &[])).unwrap().op,
            Op::Unsupported
        ));
    }
}
