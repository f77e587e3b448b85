//! One FUSE-over-io_uring queue: a ring (128-byte SQEs, as the FUSE
//! commands need) whose entries' buffers it owns, so the kernel never
//! writes into memory that is gone. Everything that hands the kernel a
//! pointer is here.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use zerocopy::{FromBytes, IntoBytes};

use crate::fuse::abi::uring::{self as ab, CmdReq, EntInOut};
use crate::fuse::abi::OutHeader;

/// The user_data of the read that wakes the queue.
const WAKE: u64 = u64::MAX;

/// One ring entry: the header area and the payload buffer the kernel
/// fills with a request and reads a reply from.
struct Ent {
    hdr: Box<[u8]>,
    payload: Box<[u8]>,
    iov: Box<[libc::iovec; 2]>,
    commit_id: u64,
}

/// What the kernel told the queue.
pub enum Event {
    /// Entry `i` holds a request.
    Request(usize),
    /// Someone wrote the wake eventfd (replies from other threads wait).
    Wake,
    /// An entry came back with an error: the connection is gone (ENOTCONN
    /// at unmount), or a command was refused.
    Failed(i32),
}

pub struct Queue {
    // Dropped first: the ring's teardown cancels the commands before the
    // buffers they point at are freed.
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
    ents: Vec<Ent>,
    dev: i32,
    qid: u16,
    wake: OwnedFd,
    wake_buf: Box<u64>,
}

fn cmd(
    dev: i32,
    op: u32,
    qid: u16,
    commit_id: u64,
    iov: Option<&[libc::iovec; 2]>,
) -> squeue::Entry128 {
    let req = CmdReq {
        flags: 0,
        commit_id,
        qid,
        padding: [0; 6],
    };
    let mut area = [0u8; 80];
    area[..std::mem::size_of::<CmdReq>()].copy_from_slice(req.as_bytes());
    let mut c = opcode::UringCmd80::new(types::Fd(dev), op).cmd(area);
    if let Some(iov) = iov {
        c = c.addr(Some(iov.as_ptr() as u64));
    }
    let e = c.build();
    if iov.is_none() {
        return e;
    }
    // REGISTER passes two iovecs (header, payload): sqe->len = 2, which the
    // builder has no setter for.
    const _: () = assert!(std::mem::size_of::<squeue::Entry128>() == 128);
    // SAFETY: Entry128 is repr(C), exactly 128 bytes (checked above) of
    // plain integers, the kernel's io_uring_sqe followed by its command
    // area; any byte pattern is a valid value of both types.
    let mut raw: [u8; 128] = unsafe { std::mem::transmute(e) };
    raw[24..28].copy_from_slice(&2u32.to_ne_bytes());
    // SAFETY: as above, back to the same type.
    unsafe { std::mem::transmute::<[u8; 128], squeue::Entry128>(raw) }
}

impl Queue {
    /// A queue `qid` with `depth` entries of `payload` bytes each, on the
    /// connection `dev`. Nothing is registered yet.
    pub fn new(dev: BorrowedFd, qid: u16, depth: usize, payload: usize) -> std::io::Result<Queue> {
        let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder()
            .setup_cqsize((depth * 2 + 2) as u32)
            .setup_coop_taskrun()
            .setup_single_issuer()
            .build((depth + 2) as u32)?;
        let ents = (0..depth)
            .map(|_| {
                let mut hdr = vec![0u8; ab::HEADER_SIZE].into_boxed_slice();
                let mut payload = vec![0u8; payload].into_boxed_slice();
                let iov = Box::new([
                    libc::iovec {
                        iov_base: hdr.as_mut_ptr().cast(),
                        iov_len: hdr.len(),
                    },
                    libc::iovec {
                        iov_base: payload.as_mut_ptr().cast(),
                        iov_len: payload.len(),
                    },
                ]);
                Ent {
                    hdr,
                    payload,
                    iov,
                    commit_id: 0,
                }
            })
            .collect();
        let wake = nix::sys::eventfd::EventFd::from_value_and_flags(
            0,
            nix::sys::eventfd::EfdFlags::EFD_CLOEXEC,
        )?;
        Ok(Queue {
            ring,
            ents,
            dev: dev.as_raw_fd(),
            qid,
            wake: wake.into(),
            wake_buf: Box::new(0),
        })
    }

    /// The fd that wakes this queue when 8 bytes are written to it.
    pub fn waker(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.wake.as_fd()
    }

    fn push(&mut self, e: &squeue::Entry128) -> std::io::Result<()> {
        loop {
            // SAFETY: every pointer in the entry is into a buffer this
            // queue owns (an entry's iovecs, header and payload, or the
            // wake buffer), which lives until the ring is torn down.
            let pushed = unsafe { self.ring.submission().push(e) };
            if pushed.is_ok() {
                return Ok(());
            }
            // The submission queue is full: hand it to the kernel first.
            self.ring.submit()?;
        }
    }

    fn arm_wake(&mut self) -> std::io::Result<()> {
        let buf: *mut u64 = &mut *self.wake_buf;
        let read = opcode::Read::new(types::Fd(self.wake.as_raw_fd()), buf.cast(), 8)
            .build()
            .user_data(WAKE);
        self.push(&read.into())
    }

    /// Hand every entry to the kernel, and arm the wake read. The kernel
    /// switches the connection to the ring once every queue has an entry.
    pub fn register(&mut self) -> std::io::Result<()> {
        for i in 0..self.ents.len() {
            let e = cmd(
                self.dev,
                ab::CMD_REGISTER,
                self.qid,
                0,
                Some(&self.ents[i].iov),
            )
            .user_data(i as u64);
            self.push(&e)?;
        }
        self.arm_wake()?;
        self.ring.submit()?;
        Ok(())
    }

    /// Submit what is queued and wait for at least one event.
    pub fn wait(&mut self) -> std::io::Result<Vec<Event>> {
        loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => break,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(e),
            }
        }
        let done: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        let mut events = Vec::with_capacity(done.len());
        for (ud, res) in done {
            if ud == WAKE {
                self.arm_wake()?;
                events.push(Event::Wake);
            } else if res < 0 {
                events.push(Event::Failed(-res));
            } else {
                let i = ud as usize;
                let io = self.ent_in_out(i);
                self.ents[i].commit_id = io.commit_id;
                events.push(Event::Request(i));
            }
        }
        Ok(events)
    }

    fn ent_in_out(&self, i: usize) -> EntInOut {
        EntInOut::read_from_prefix(&self.ents[i].hdr[ab::ENT_IN_OUT..])
            .map(|(v, _)| v)
            .unwrap_or_default()
    }

    /// Entry `i`'s request: the in header area, the op header area, and
    /// the payload the kernel filled.
    pub fn request(&self, i: usize) -> (&[u8], &[u8], &[u8]) {
        let e = &self.ents[i];
        let n = (self.ent_in_out(i).payload_sz as usize).min(e.payload.len());
        (
            &e.hdr[ab::IN_OUT..ab::OP_IN],
            &e.hdr[ab::OP_IN..ab::ENT_IN_OUT],
            &e.payload[..n],
        )
    }

    /// Answer entry `i`'s request and take the next one into it.
    pub fn commit(
        &mut self,
        i: usize,
        unique: u64,
        error: i32,
        body: &[u8],
    ) -> std::io::Result<()> {
        let e = &mut self.ents[i];
        let n = body.len().min(e.payload.len());
        e.payload[..n].copy_from_slice(&body[..n]);
        let h = OutHeader {
            len: (std::mem::size_of::<OutHeader>() + n) as u32,
            error,
            unique,
        };
        e.hdr[..std::mem::size_of::<OutHeader>()].copy_from_slice(h.as_bytes());
        let mut io = self.ent_in_out(i);
        io.payload_sz = n as u32;
        self.ents[i].hdr[ab::ENT_IN_OUT..ab::ENT_IN_OUT + std::mem::size_of::<EntInOut>()]
            .copy_from_slice(io.as_bytes());
        let commit_id = self.ents[i].commit_id;
        let c = cmd(
            self.dev,
            ab::CMD_COMMIT_AND_FETCH,
            self.qid,
            commit_id,
            None,
        )
        .user_data(i as u64);
        self.push(&c)
    }
}
