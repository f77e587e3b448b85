//! The store as a containerd snapshotter (a proxy plugin): containerd's
//! snapshots API served over gRPC, snapshots kept as the store's layers.
//!
//! `records` holds containerd's snapshots (`ROOT/snapshots.json`), `ops`
//! the operations on them and the layers, `mounts` what containerd is told
//! to mount, `filter` List's filter syntax, `server` the gRPC service and
//! `socket` its listening socket.

mod filter;
mod mounts;
mod ops;
mod records;
mod server;
mod socket;

pub use mounts::FUSE_TYPE;
pub use ops::{Snapshots, REF_LABEL};
pub use records::{Kind, Record, Records};
pub use server::serve;
