//! The snapshotter's socket: root's alone (mode 0600), since whoever can
//! talk to it can make containerd mount anything in the store.

use std::os::unix::fs::{DirBuilderExt, FileTypeExt};
use std::path::Path;

use nix::sys::stat::{umask, Mode};

use crate::Error;

/// Listen on `address`: its directory made 0700 if missing; a socket left
/// there by a snapshotter that is gone is replaced, a live one or any other
/// file is refused.
pub fn bind(address: &Path) -> Result<tokio::net::UnixListener, Error> {
    let io = |e: std::io::Error| Error::Io(address.display().to_string(), e);
    if let Some(dir) = address.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
    }
    match std::fs::symlink_metadata(address) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(address).is_ok() {
                return Err(Error::Busy(format!(
                    "{}: a snapshotter serves there already",
                    address.display()
                )));
            }
            std::fs::remove_file(address).map_err(io)?;
        }
        Ok(_) => {
            return Err(Error::Exists(format!(
                "{}: exists and is not a socket",
                address.display()
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let old = umask(Mode::from_bits_truncate(0o177));
    let l = tokio::net::UnixListener::bind(address);
    umask(old);
    l.map_err(io)
}
