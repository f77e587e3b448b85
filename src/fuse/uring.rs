//! FUSE over io_uring (Linux 6.14+, protocol 7.42): the kernel queues each
//! request on the queue of the CPU that made it, and that queue's thread,
//! pinned to the same CPU, answers and takes the next request in one
//! submission. A round trip then stays on one CPU (a /dev/fuse request
//! wakes whichever thread sleeps, often on the other CPU).
//!
//! INIT, FORGET, INTERRUPT and notifications still use /dev/fuse.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use parking_lot::Mutex;
use zerocopy::FromBytes;

use super::abi::{self, InHeader};
use super::reply::Channel;
use super::session::{Dispatch, Session};
use crate::sys::uring::{Event, Queue};

/// Entries per queue: requests one CPU can have in the daemon at once
/// (libfuse's default too).
pub const DEPTH: usize = 8;

const KNOB: &str = "/sys/module/fuse/parameters/enable_uring";

/// Whether this kernel would serve the mount over io_uring, and if not, why.
pub fn offered() -> Result<(), String> {
    match std::fs::read_to_string(KNOB) {
        Ok(v) if v.trim() == "Y" => {}
        Ok(_) => {
            return Err(format!(
                "the kernel's FUSE over io_uring is off ({KNOB} is N; as root: echo Y > {KNOB})"
            ))
        }
        Err(_) => return Err(format!("this kernel has no FUSE over io_uring (no {KNOB})")),
    }
    // A ring of the kind the queues use (io_uring may be disabled by
    // sysctl or a seccomp filter).
    io_uring::IoUring::<io_uring::squeue::Entry128, io_uring::cqueue::Entry>::builder()
        .build(2)
        .map(drop)
        .map_err(|e| format!("io_uring is not available to this process: {e}"))
}

/// The CPUs in a kernel CPU list such as "0-3,6".
fn cpu_list(s: &str) -> Vec<usize> {
    let mut cpus = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        let mut ends = part.splitn(2, '-').map(|n| n.parse::<usize>());
        match (ends.next(), ends.next()) {
            (Some(Ok(a)), None) => cpus.push(a),
            (Some(Ok(a)), Some(Ok(b))) => cpus.extend(a..=b),
            _ => {}
        }
    }
    cpus
}

fn cpus(which: &str) -> Vec<usize> {
    std::fs::read_to_string(format!("/sys/devices/system/cpu/{which}"))
        .map(|s| cpu_list(&s))
        .unwrap_or_default()
}

/// The kernel has one queue per possible CPU (queue N serves CPU N) and
/// uses the ring only once every queue has an entry.
pub fn queues() -> usize {
    cpus("possible").into_iter().max().map_or(1, |m| m + 1)
}

/// A reply waiting to be committed: (entry, unique, error, body).
type Done = (u32, u64, i32, Vec<u8>);

/// Replies for one queue, made on its thread or on another (a request run
/// on a thread of its own); the queue thread sends them.
struct Replies {
    done: Mutex<Vec<Done>>,
    /// Bodies' buffers, used again: a fresh 1 MiB buffer for each read
    /// reply would be mapped and faulted in page by page every time.
    spare: Mutex<Vec<Vec<u8>>>,
    waker: OwnedFd,
    owner: std::thread::ThreadId,
}

impl Channel for Replies {
    fn send(&self, slot: u32, unique: u64, error: i32, body: &[&[u8]]) {
        let mut buf = self.spare.lock().pop().unwrap_or_default();
        buf.clear();
        for part in body {
            buf.extend_from_slice(part);
        }
        self.done.lock().push((slot, unique, error, buf));
        if std::thread::current().id() != self.owner {
            if let Err(e) = nix::unistd::write(&self.waker, &1u64.to_ne_bytes()) {
                log::error!("cannot wake an io_uring queue: {e}");
            }
        }
    }
}

/// Set up queue `qid` (pinned to its CPU when that CPU is online), say so
/// on `ready`, and serve requests until the connection ends.
pub fn serve_queue(
    session: &Session,
    fs: &dyn Dispatch,
    qid: usize,
    ready: std::sync::mpsc::Sender<std::io::Result<()>>,
) {
    if cpus("online").contains(&qid) {
        let mut set = nix::sched::CpuSet::new();
        if set.set(qid).is_ok() {
            if let Err(e) = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set) {
                log::warn!("io_uring queue {qid} not pinned to its CPU: {e}");
            }
        }
    }
    let c = &session.conn;
    let payload = (c.max_write as usize)
        .max(c.max_pages as usize * 4096)
        .max(abi::MIN_READ_BUFFER);
    let setup = Queue::new(session.dev.fd(), qid as u16, DEPTH, payload).and_then(|mut q| {
        q.register()?;
        let waker = q.waker().try_clone_to_owned()?;
        Ok((q, waker))
    });
    let (mut q, waker) = match setup {
        Ok(s) => {
            let _ = ready.send(Ok(()));
            s
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let replies = Arc::new(Replies {
        done: Mutex::new(Vec::new()),
        spare: Mutex::new(Vec::new()),
        waker,
        owner: std::thread::current().id(),
    });
    let chan: Arc<dyn Channel> = replies.clone();
    loop {
        let events = match q.wait() {
            Ok(e) => e,
            Err(e) => {
                log::error!("io_uring queue {qid}: {e}");
                return;
            }
        };
        for ev in events {
            match ev {
                Event::Request(i) => {
                    let (inh, oph, payload) = q.request(i);
                    let Ok((h, _)) = InHeader::read_from_prefix(inh) else {
                        // Cannot happen with a header area of 128 bytes.
                        log::error!("io_uring queue {qid}: entry {i} without a request header");
                        continue;
                    };
                    let oph = &oph[..abi::op_header_size(h.opcode).min(oph.len())];
                    if !session.handle(fs, &chan, i as u32, &h, oph, payload) {
                        return;
                    }
                }
                Event::Wake => {}
                // The connection ended (unmount, abort).
                Event::Failed(libc::ENOTCONN | libc::ENODEV) => return,
                Event::Failed(e) => {
                    log::error!(
                        "io_uring queue {qid}: {}",
                        std::io::Error::from_raw_os_error(e)
                    );
                    return;
                }
            }
        }
        let done = std::mem::take(&mut *replies.done.lock());
        for (slot, unique, error, body) in done {
            if let Err(e) = q.commit(slot as usize, unique, error, &body) {
                log::error!("io_uring queue {qid}: answering {unique}: {e}");
                return;
            }
            let mut spare = replies.spare.lock();
            if spare.len() < DEPTH {
                spare.push(body);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_read_as_the_kernel_writes_them() {
        assert_eq!(cpu_list("0-1\n"), vec![0, 1]);
        assert_eq!(cpu_list("0,2-4,7"), vec![0, 2, 3, 4, 7]);
        assert_eq!(cpu_list(""), Vec::<usize>::new());
    }
}
