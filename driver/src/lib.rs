//! unionfs-driver: a graph driver (Docker's contract) that stores image
//! layers in the OCI layer format and stacks them with the unionfs union.
//!
//! `store` is the on-disk layout (see its header), `layer` the driver
//! operations, `image` the import of OCI layouts and `docker save` archives,
//! `tar` the hostile-input-proof layer extraction and the diff writer,
//! `snapshots` the store as a containerd snapshotter.
#![deny(unsafe_code)]

pub mod image;
pub mod launch;
pub mod layer;
pub mod owners;
pub mod snapshots;
pub mod store;
mod sys;
pub mod tar;
pub mod userns;

pub use layer::GraphDriver;
pub use store::Store;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Exists(String),
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Mount(String),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error(transparent)]
    Tar(#[from] tar::TarError),
    #[error(transparent)]
    Launch(#[from] launch::LaunchError),
}
