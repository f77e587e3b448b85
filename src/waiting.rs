//! Whether the request running on this thread may wait for another one,
//! and whether its caller gave up (FUSE INTERRUPT).
//!
//! The threads that serve FUSE requests may not wait: a request that would
//! wait for another request's copy-up (or do a slow one itself) answers
//! EINPROGRESS, never passed on to the kernel, and is run again on a thread
//! of its own (see fs.rs), so waiters never hold up the rest. Such a thread
//! waits in slices, so that an interrupt of its request ends the wait with
//! EINTR.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::sys::{Errno, Result};

thread_local! {
    /// Some on a thread that may wait: the flag its interrupt sets.
    static WAITER: RefCell<Option<Arc<AtomicBool>>> = const { RefCell::new(None) };
}

/// How often a waiting request looks whether it was interrupted.
pub(crate) const SLICE: Duration = Duration::from_millis(20);

pub(crate) fn may_wait() -> bool {
    WAITER.with(|w| w.borrow().is_some())
}

/// EINTR once this thread's request has been interrupted.
pub(crate) fn check() -> Result<()> {
    match WAITER.with(|w| {
        w.borrow()
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Relaxed))
    }) {
        true => Err(Errno::EINTR),
        false => Ok(()),
    }
}

/// Allow waiting on this thread until the guard is dropped; `interrupted`
/// is set when the request is interrupted.
pub(crate) struct MayWait(Option<Arc<AtomicBool>>);

impl MayWait {
    pub fn new(interrupted: Arc<AtomicBool>) -> MayWait {
        MayWait(WAITER.with(|w| w.replace(Some(interrupted))))
    }
}

impl Drop for MayWait {
    fn drop(&mut self) {
        let old = self.0.take();
        WAITER.with(|w| *w.borrow_mut() = old);
    }
}
