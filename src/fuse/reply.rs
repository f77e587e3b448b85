//! Replies: each request's answer, encoded once and handed to the transport
//! that carried the request. A reply dropped unsent answers EIO, so every
//! request gets an answer.

use std::sync::Arc;

use zerocopy::IntoBytes;

use super::abi;
use crate::sys::Errno;

/// Where replies go: the transport a request came on.
pub trait Channel: Send + Sync {
    /// Send the answer to request `unique` (taken from `slot` of the
    /// transport): `error` 0 and the body's parts, or a negative errno.
    fn send(&self, slot: u32, unique: u64, error: i32, body: &[&[u8]]);
}

/// The one answer a request gets.
pub struct Reply {
    unique: u64,
    slot: u32,
    chan: Option<Arc<dyn Channel>>,
}

impl Reply {
    pub fn new(chan: Arc<dyn Channel>, slot: u32, unique: u64) -> Reply {
        Reply {
            unique,
            slot,
            chan: Some(chan),
        }
    }

    pub fn unique(&self) -> u64 {
        self.unique
    }

    fn send(mut self, error: i32, body: &[&[u8]]) {
        if let Some(chan) = self.chan.take() {
            chan.send(self.slot, self.unique, error, body);
        }
    }

    pub fn error(self, e: Errno) {
        self.send(-(e as i32), &[]);
    }

    pub fn ok(self) {
        self.send(0, &[]);
    }

    pub fn data(self, data: &[u8]) {
        self.send(0, &[data]);
    }

    pub fn entry(self, e: &abi::EntryOut) {
        self.send(0, &[e.as_bytes()]);
    }

    pub fn attr(self, a: &abi::AttrOut) {
        self.send(0, &[a.as_bytes()]);
    }

    pub fn open(self, o: &abi::OpenOut) {
        self.send(0, &[o.as_bytes()]);
    }

    pub fn create(self, e: &abi::EntryOut, o: &abi::OpenOut) {
        self.send(0, &[e.as_bytes(), o.as_bytes()]);
    }

    pub fn written(self, size: u32) {
        self.send(0, &[abi::WriteOut { size, padding: 0 }.as_bytes()]);
    }

    pub fn statfs(self, s: &abi::StatfsOut) {
        self.send(0, &[s.as_bytes()]);
    }

    /// The size of an xattr value or list (a request of size 0 asks for it).
    pub fn xattr_size(self, size: u32) {
        self.send(0, &[abi::GetxattrOut { size, padding: 0 }.as_bytes()]);
    }

    /// A successful ioctl (result 0) and the bytes it gives back.
    pub fn ioctl(self, out: &[u8]) {
        self.send(0, &[abi::IoctlOut::default().as_bytes(), out]);
    }

    pub fn offset(self, offset: u64) {
        self.send(0, &[abi::LseekOut { offset }.as_bytes()]);
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if let Some(chan) = self.chan.take() {
            chan.send(self.slot, self.unique, -(Errno::EIO as i32), &[]);
        }
    }
}

/// A READDIR or READDIRPLUS reply being filled, up to the size the kernel
/// asked for.
pub struct DirBuf {
    buf: Vec<u8>,
    max: usize,
}

/// The dirent type of a mode (DT_* is the S_IFMT bits shifted down).
pub fn dirent_type(mode: u32) -> u32 {
    (mode & libc::S_IFMT) >> 12
}

impl DirBuf {
    pub fn new(max: u32) -> DirBuf {
        DirBuf {
            buf: Vec::with_capacity(max as usize),
            max: max as usize,
        }
    }

    /// Add an entry; false (and nothing added) once it would not fit.
    pub fn add(&mut self, ino: u64, off: u64, mode: u32, name: &[u8]) -> bool {
        self.push(None, ino, off, mode, name)
    }

    /// Add an entry with its attributes (READDIRPLUS).
    pub fn add_plus(&mut self, e: &abi::EntryOut, off: u64, mode: u32, name: &[u8]) -> bool {
        self.push(Some(e), e.attr.ino, off, mode, name)
    }

    fn push(
        &mut self,
        e: Option<&abi::EntryOut>,
        ino: u64,
        off: u64,
        mode: u32,
        name: &[u8],
    ) -> bool {
        let head = e.map_or(0, |e| e.as_bytes().len()) + std::mem::size_of::<abi::Dirent>();
        // Each entry is padded to 8 bytes.
        let len = (head + name.len() + 7) & !7;
        if self.buf.len() + len > self.max {
            return false;
        }
        let start = self.buf.len();
        if let Some(e) = e {
            self.buf.extend_from_slice(e.as_bytes());
        }
        let d = abi::Dirent {
            ino,
            off,
            namelen: name.len() as u32,
            typ: dirent_type(mode),
        };
        self.buf.extend_from_slice(d.as_bytes());
        self.buf.extend_from_slice(name);
        self.buf.resize(start + len, 0);
        true
    }

    pub fn send(self, reply: Reply) {
        reply.data(&self.buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;

    #[derive(Default)]
    struct Sent(Mutex<Vec<(u64, i32, Vec<u8>)>>);

    impl Channel for Sent {
        fn send(&self, _slot: u32, unique: u64, error: i32, body: &[&[u8]]) {
            self.0.lock().push((unique, error, body.concat()));
        }
    }

    #[test]
    fn an_unsent_reply_answers_eio_and_a_sent_one_only_once() {
        let chan = Arc::new(Sent::default());
        drop(Reply::new(chan.clone(), 0, 5));
        Reply::new(chan.clone(), 0, 6).written(3);
        let sent = chan.0.lock();
        assert_eq!(sent.len(), 2);
        assert_eq!((sent[0].0, sent[0].1), (5, -libc::EIO));
        assert_eq!(
            (sent[1].0, sent[1].1, &sent[1].2[..4]),
            (6, 0, &3u32.to_ne_bytes()[..])
        );
    }

    #[test]
    fn dirents_are_padded_to_eight_bytes_and_stop_when_full() {
        let mut d = DirBuf::new(64);
        assert!(d.add(5, 1, libc::S_IFDIR, b"abc"));
        assert_eq!(d.buf.len(), 32);
        assert!(d.add(6, 2, libc::S_IFREG, b"12345678"));
        assert_eq!(d.buf.len(), 64);
        assert!(!d.add(7, 3, libc::S_IFREG, b"x"));
        assert_eq!(&d.buf[16..20], &3u32.to_ne_bytes());
        assert_eq!(&d.buf[20..24], &(libc::DT_DIR as u32).to_ne_bytes());
    }
}
