//! What a rootless user cannot give a layer's files, kept so the layer's
//! tar gives it back. Owners: in the `user.rootlesscontainers` xattr as
//! umoci and runc's rootless mode do (its value is their protobuf message
//! `Resource { uint32 uid = 1; uint32 gid = 2; }`, where 4294967295, NoopID,
//! leaves that id as the file has it). What no xattr can be on (a symlink)
//! and what cannot be made at all (a device node): in the layer's
//! `.wh..wh.owners` (JSON), read by `diff`.

use serde::{Deserialize, Serialize};

/// An entry the layer could not hold as the tar had it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Kept {
    /// Its path in the layer, as bytes (names need not be UTF-8).
    pub path: Vec<u8>,
    pub uid: u32,
    pub gid: u32,
    /// A device node not made: 'c' or 'b', major, minor, permission bits, mtime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<Node>,
}

impl Kept {
    /// The entry at `path` (in the layer) with the tar header's owners.
    pub fn of(path: &std::path::Path, h: &tar::Header, node: Option<Node>) -> Kept {
        use std::os::unix::ffi::OsStrExt;
        Kept {
            path: path.as_os_str().as_bytes().to_vec(),
            uid: h.uid().unwrap_or(0) as u32,
            gid: h.gid().unwrap_or(0) as u32,
            node,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Node {
    pub kind: char,
    pub major: u32,
    pub minor: u32,
    pub mode: u32,
    pub mtime: u64,
}

/// The xattr's name.
pub const XATTR: &str = "user.rootlesscontainers";

/// u32::MAX: this id is the file's own.
pub const NOOP_ID: u32 = u32::MAX;

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The message for `uid` and `gid`, both fields written (0 too).
pub fn encode(uid: u32, gid: u32) -> Vec<u8> {
    let mut out = Vec::new();
    for (tag, v) in [(0x08u8, uid), (0x10, gid)] {
        out.push(tag);
        varint(v as u64, &mut out);
    }
    out
}

/// (uid, gid) of a message; a field not given is 0 (proto3's default, which
/// umoci leaves out). None: not the message.
pub fn decode(b: &[u8]) -> Option<(u32, u32)> {
    let (mut uid, mut gid) = (0, 0);
    let mut i = 0;
    let next = |i: &mut usize| -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *b.get(*i)?;
            *i += 1;
            v |= ((byte & 0x7f) as u64) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    };
    while i < b.len() {
        let key = next(&mut i)?;
        if key & 7 != 0 {
            return None; // only varints in this message
        }
        let v = u32::try_from(next(&mut i)?).ok()?;
        match key >> 3 {
            1 => uid = v,
            2 => gid = v,
            _ => {}
        }
    }
    Some((uid, gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_as_protobuf() {
        assert_eq!(encode(1000, 1000), [0x08, 0xe8, 0x07, 0x10, 0xe8, 0x07]);
        assert_eq!(decode(&encode(1000, 5)), Some((1000, 5)));
        assert_eq!(decode(&encode(0, 65534)), Some((0, 65534)));
        assert_eq!(
            decode(&[0x10, 0x05]),
            Some((0, 5)),
            "uid 0 left out, as proto3 does"
        );
        assert_eq!(decode(&[]), Some((0, 0)));
        assert_eq!(decode(&encode(NOOP_ID, 7)), Some((NOOP_ID, 7)));
        assert_eq!(
            decode(&[0x0a, 0x01, 0x00]),
            None,
            "a length-delimited field"
        );
        assert_eq!(decode(&[0x08, 0xff]), None, "truncated");
    }
}
