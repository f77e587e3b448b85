//! The filesystem calls of this crate for tools built on it (the graph
//! driver, the launcher): every one relative to a [`Dir`] handle, which only
//! a beneath-open (no `..`, no symlink, no magic link) or a caller-named root
//! makes, so nothing they do can be led outside the tree they work in.

pub use crate::sys::{
    all_xattrs, chmod_fd, chown_obj, exists_at, fstat, link_at, mkdir_at, mknod_at, open_at,
    open_beneath, open_dir, open_dir_here, read_dir, readlink_obj, rename_at, reserve_fds,
    set_xattr, stat_at, symlink_at, unlink_at, utimes_obj, Dir, DirEntry, Errno, FileStat, Obj,
    Result, Time,
};
pub use crate::tree::{empty_dir, remove_tree};
