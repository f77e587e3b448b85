//! Telling the kernel what to forget: the names and attributes a direct
//! change in a branch made stale (the watcher thread), and everything after
//! a branch change (unionctl). Entries are only expired (FUSE_EXPIRE_ONLY
//! where the kernel has it): the kernel looks them up again at their next
//! use, and nothing mounted on them (a container's /proc, /dev, volumes) is
//! detached unless the name now holds another object. Notifications go out
//! from threads that hold no directory lock: the kernel takes the parent's
//! lock to expire an entry, and a request served in that directory holds it
//! until its reply.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::fuse::Notifier;
use crate::resolve::{Pending, ROOT};
use crate::sys::Errno;
use crate::union::Union;

/// Expire every name and attribute the kernel may hold.
pub fn everything(u: &Union, n: &Notifier) {
    for (ino, parent, name) in u.resolve.inodes.known_names() {
        let _ = n.inval_entry(parent, &name, true);
        let _ = n.inval_inode(ino, true);
    }
    for (parent, name) in u.resolve.negatives.take() {
        let _ = n.inval_entry(parent, &name, true);
    }
    let _ = n.inval_inode(ROOT, true);
}

/// Tell the kernel what `p` holds; false once the connection is gone.
fn tell(u: &Union, n: &Notifier, p: Pending) -> bool {
    let Some(w) = &u.resolve.watch else {
        return true;
    };
    if p.all {
        everything(u, n);
        return true;
    }
    let gone = |r: crate::sys::Result<()>| matches!(r, Err(Errno::ENODEV | Errno::EBADF));
    let mut entries = p.entries;
    if !p.children.is_empty() {
        for (_, parent, name) in u.resolve.inodes.known_names() {
            if p.children.contains(&parent) {
                entries.insert((parent, name));
            }
        }
    }
    for (parent, name) in &entries {
        // ENOENT: the kernel holds no such entry, nothing to expire.
        if gone(n.inval_entry(*parent, name, true)) {
            return false;
        }
    }
    let mut told = 0;
    for (ino, data) in &p.inodes {
        if *data {
            u.reclone(*ino);
        }
        if gone(n.inval_inode(*ino, *data)) {
            return false;
        }
        told += 1;
    }
    let s = &w.stats;
    s.expired_entries
        .fetch_add(entries.len() as u64, Ordering::Relaxed);
    s.dropped_inodes.fetch_add(told, Ordering::Relaxed);
    true
}

/// Start the thread that applies branch events nobody's request drained
/// and tells the kernel what they made stale (udba=notify).
pub fn spawn_watcher(union: &Arc<Union>, notifier: Notifier) -> std::io::Result<()> {
    if union.resolve.watch.is_none() {
        return Ok(());
    }
    let weak: Weak<Union> = Arc::downgrade(union);
    std::thread::Builder::new()
        .name("unionfs-watch".into())
        .spawn(move || loop {
            let Some(u) = weak.upgrade() else { return };
            let Some(w) = &u.resolve.watch else { return };
            w.wait(Duration::from_millis(500));
            u.resolve.mark_queued();
            u.resolve.sync();
            let p = w.take();
            if !p.is_empty() && !tell(&u, &notifier, p) {
                return;
            }
        })?;
    Ok(())
}
