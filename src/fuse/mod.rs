//! The FUSE protocol, ours: the wire format (`abi`, from the kernel's
//! `include/uapi/linux/fuse.h`), requests decoded from it, replies and
//! notifications encoded into it, the mount, and the transports that carry
//! them (`/dev/fuse` reads and writes; the kernel's io_uring queues). Every
//! transport hands decoded requests to one [`Dispatch`], the adapter over
//! the union model.

pub mod abi;
pub mod mount;
pub mod reply;
pub mod request;
pub mod session;
pub mod uring;

pub use mount::{mount, MountArgs};
pub use reply::{DirBuf, Reply};
pub use request::{Op, Request, SetTime};
pub use session::{Access, Backing, Backings, Conn, Dispatch, Notifier, Session, Want};
