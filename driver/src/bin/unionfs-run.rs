//! unionfs-run: run a command with a directory as its root filesystem.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use unionfs_driver::launch::{self, RunArgs};

#[derive(Parser)]
#[command(
    name = "unionfs-run",
    version,
    about = "Run a command in ROOTFS with new namespaces and pivot_root",
    long_about = "unionfs-run runs CMD with ROOTFS as its root directory, in new mount, PID, UTS, \
IPC and (unless --net host) network namespaces: private mount propagation, the rootfs bound onto \
itself, /proc with Docker's masked and read-only paths, /sys read-only, a minimal /dev, \
pivot_root with the old root detached, a new session keyring, capabilities cut to Docker's \
default set, no_new_privs, a seccomp filter (our profile, Docker's default as the reference; \
--security-opt seccomp=unconfined|PROFILE.json), only fds 0-2 inherited, a cgroup (v1 or v2) \
with Docker's device allowlist (--device adds one) and the resource limits, the rootfs nodev. It exits with CMD's status \
(128+signal when CMD was killed; 125 when the launch failed, 126 when CMD cannot run, 127 when \
it is not found) and leaves no mount, cgroup or process behind. As an unprivileged user it runs \
in a user namespace of its own (the user is root inside; subordinate ids from /etc/subuid map \
to the others), with the host's device nodes bound in, and a cgroup only inside a cgroup v2 delegated to the \
user (systemd-run --user --scope -p Delegate=yes ...; without one, resource limits are refused).",
    after_help = "EXAMPLE:\n    unionfs-run --hostname box --memory 64m ./rootfs -- /bin/sh -c 'hostname; id'"
)]
struct Cli {
    #[command(flatten)]
    run: RunArgs,
    /// The directory to use as /.
    rootfs: PathBuf,
    /// The command and its arguments (default /bin/sh).
    #[arg(last = true)]
    cmd: Vec<String>,
}

fn main() -> ExitCode {
    let cli: Cli = match unionfs::cli::parse("unionfs-run") {
        Ok(c) => c,
        Err(code) => return code,
    };
    let opts = match cli.run.options(Default::default()) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("unionfs-run: {e}");
            return ExitCode::from(2);
        }
    };
    // An unprivileged user goes on in a user namespace of its own.
    if let Err(e) = unionfs_driver::userns::enter() {
        eprintln!("unionfs-run: {e}");
        return ExitCode::from(125);
    }
    let cmd = if cli.cmd.is_empty() {
        vec!["/bin/sh".to_string()]
    } else {
        cli.cmd
    };
    match launch::run(&cli.rootfs, &opts, &cmd, None) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("unionfs-run: {e}");
            ExitCode::from(125)
        }
    }
}
