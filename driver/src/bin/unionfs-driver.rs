//! unionfs-driver: the layer store and its operations from the command line.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use unionfs_driver::{image, GraphDriver, Store};

const SNAPSHOTTER_HELP: &str = "\
Serve containerd's snapshots API (containerd.services.snapshots.v1) on SOCKET
until SIGTERM or SIGINT. Committed snapshots are the store's layers, named by
their chain id, so an image unpacked by containerd and one imported with
`unionfs-driver import` share their layers; active snapshots are rw layers,
views read-only unions. containerd mounts them itself: a snapshot with a
parent as type fuse3.unionfs-mount (mount.fuse3 runs unionfs-mount, which
must be on containerd's PATH), one without as a bind mount. containerd's
config.toml:

    [proxy_plugins.unionfs]
      type = \"snapshot\"
      address = \"/run/unionfs-driver/snapshotter.sock\"

then `ctr image pull --snapshotter unionfs ...`, or for Kubernetes
[plugins.\"io.containerd.grpc.v1.cri\".containerd] snapshotter = \"unionfs\".";

#[derive(Parser)]
#[command(
    name = "unionfs-driver",
    version,
    about = "Graph driver: stores image layers and stacks them under a unionfs mount",
    long_about = "unionfs-driver keeps image layers in a store (each a directory in the OCI \
layer format, plus JSON metadata) and mounts layer chains with unionfs-mount, one process per \
mount, as containers/storage does with a mount program. The operations are those of Docker's \
graph driver. Wherever a layer is expected, an image name stands for its top layer.

As an unprivileged user it re-executes itself in a user namespace of its own (the user is root \
inside; subordinate ids from /etc/subuid and /etc/subgid, through newuidmap/newgidmap, are the \
image's other owners), with the store in the user's data directory; owners it cannot map are \
recorded in the user.rootlesscontainers xattr and written back by diff.",
    after_help = "EXAMPLES:
    unionfs-driver import --name alpine ./alpine-oci
    unionfs-driver run --rm alpine -- /bin/sh -c 'id; ls /'
    unionfs-driver diff alpine > top-layer.tar"
)]
struct Cli {
    /// The store (default /var/lib/unionfs-driver; for an unprivileged user
    /// $XDG_DATA_HOME/unionfs-driver, else ~/.local/share/unionfs-driver; or
    /// $UNIONFS_DRIVER_ROOT).
    #[arg(long, global = true, env = "UNIONFS_DRIVER_ROOT")]
    root: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create an empty layer (a container's writable layer with --rw).
    Create {
        #[arg(long)]
        rw: bool,
        #[arg(long)]
        parent: Option<String>,
        id: String,
    },
    /// Mount a layer with its ancestors; prints the mount point (reference counted).
    Mount { id: String },
    /// Drop one reference to a mount; the last one unmounts.
    Umount { id: String },
    /// Remove a layer (refused while mounted or while it has children).
    Rm { id: String },
    /// Exit status 0 if the layer or image exists, 1 if not.
    Exists { id: String },
    /// One layer per line: id, parent, size, mounts.
    Ls,
    /// The driver's status.
    Status,
    /// A layer's metadata as JSON.
    Metadata { id: String },
    /// Unmount everything the driver mounted.
    Cleanup,
    /// The layer's changes as a tar on stdout (whiteouts in OCI form).
    Diff { id: String },
    /// Read a layer tar on stdin into an empty layer; prints its size.
    ApplyDiff { id: String },
    /// The layer's changes, one per line: A, C or D and the path.
    Changes { id: String },
    /// Bytes of file data in the layer.
    DiffSize { id: String },
    /// Make a container's rw layer the top layer of a new image.
    Commit { container: String, name: String },
    /// The images: name and top layer.
    Images,
    /// Import an OCI image layout (DIR or DIR:TAG) or a docker save archive.
    Import {
        #[arg(long)]
        name: Option<String>,
        path: String,
    },
    /// Run a command in a new container of IMAGE: a rw layer on the image,
    /// mounted, launched (CMD, Env, WorkingDir and User default to the
    /// image's config), then unmounted; removed too with --rm.
    Run {
        /// Remove the container layer afterwards.
        #[arg(long)]
        rm: bool,
        /// The container layer's id (default: ctr-PID-TIME).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        run: Box<unionfs_driver::launch::RunArgs>,
        image: String,
        #[arg(last = true)]
        cmd: Vec<String>,
    },
    /// Serve containerd's snapshots API on a Unix socket, as a proxy
    /// snapshotter plugin over this store.
    #[command(long_about = SNAPSHOTTER_HELP)]
    Snapshotter {
        /// The socket containerd's config names (made 0600; its directory
        /// 0700). Default /run/unionfs-driver/snapshotter.sock; for an
        /// unprivileged user $XDG_RUNTIME_DIR/unionfs-driver/snapshotter.sock.
        #[arg(long, value_name = "SOCKET")]
        address: Option<PathBuf>,
    },
    /// Drop a container's mount (and with --rm its layer): the launcher's
    /// clean-up when it was killed.
    #[command(hide = true)]
    Release {
        #[arg(long)]
        rm: bool,
        id: String,
    },
}

/// Undo a container's mount, and with `rm` remove its layer.
fn release(root: &std::path::Path, id: &str, rm: bool) -> Result<(), unionfs_driver::Error> {
    let s = Store::open(root)?;
    if s.mount_state(id)?.count > 0 {
        s.put(id)?;
    }
    if rm && s.exists(id) {
        s.remove(id)?;
    }
    Ok(())
}

/// `run`: the store is locked only while the container is set up and torn
/// down, not while it runs.
fn run_container(
    root: &std::path::Path,
    rm: bool,
    name: Option<String>,
    args: &unionfs_driver::launch::RunArgs,
    image: &str,
    cmd: Vec<String>,
) -> Result<i32, unionfs_driver::Error> {
    use unionfs_driver::launch::{self, parse_user, Options};
    let (id, mnt, opts, argv) = {
        let s = Store::open(root)?;
        let top = s.resolve(image)?;
        let config = match s.image(image)? {
            Some(i) => i.config,
            None => s
                .images()?
                .into_iter()
                .find(|i| i.top == top)
                .map(|i| i.config)
                .unwrap_or_default(),
        };
        let user = match config.user.as_str() {
            "" => None,
            u => Some(parse_user(u).map_err(unionfs_driver::Error::Invalid)?),
        };
        let base = Options {
            env: config.env.clone(),
            workdir: Some(config.working_dir.clone()).filter(|w| !w.is_empty()),
            user,
            ..Default::default()
        };
        let opts = args.options(base)?;
        let mut argv = config.entrypoint.clone().unwrap_or_default();
        if cmd.is_empty() {
            argv.extend(config.cmd.clone().unwrap_or_default());
        } else {
            argv.extend(cmd);
        }
        if argv.is_empty() {
            argv.push("/bin/sh".into());
        }
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let id = name.unwrap_or_else(|| format!("ctr-{}-{secs}", std::process::id()));
        s.create(&id, Some(&top), true)?;
        let mnt = match s.get(&id) {
            Ok(m) => m,
            Err(e) => {
                let _ = s.remove(&id);
                return Err(e);
            }
        };
        (id, mnt, opts, argv)
    };
    let exe =
        std::env::current_exe().map_err(|e| unionfs_driver::Error::Io("current_exe".into(), e))?;
    let mut cleanup = vec![
        exe.display().to_string(),
        "--root".into(),
        root.display().to_string(),
        "release".into(),
        id.clone(),
    ];
    if rm {
        cleanup.push("--rm".into());
    }
    let res = launch::run(&mnt, &opts, &argv, Some(cleanup));
    release(root, &id, rm)?;
    Ok(res?)
}

fn run(cli: Cli) -> Result<(), unionfs_driver::Error> {
    let root = cli
        .root
        .unwrap_or_else(unionfs_driver::userns::default_root);
    match cli.cmd {
        Cmd::Run {
            rm,
            name,
            run,
            image,
            cmd,
        } => {
            let code = run_container(&root, rm, name, &run, &image, cmd)?;
            std::process::exit(code);
        }
        Cmd::Release { rm, id } => return release(&root, &id, rm),
        Cmd::Snapshotter { address } => {
            let address = address.unwrap_or_else(unionfs_driver::userns::default_socket);
            return unionfs_driver::snapshots::serve(&root, &address);
        }
        _ => {}
    }
    let s = Store::open(&root)?;
    match cli.cmd {
        Cmd::Run { .. } | Cmd::Release { .. } | Cmd::Snapshotter { .. } => {
            unreachable!("handled above")
        }
        Cmd::Create { rw, parent, id } => s.create(&id, parent.as_deref(), rw)?,
        Cmd::Mount { id } => println!("{}", s.get(&id)?.display()),
        Cmd::Umount { id } => s.put(&id)?,
        Cmd::Rm { id } => s.remove(&id)?,
        Cmd::Exists { id } => {
            if !s.exists(&id) {
                std::process::exit(1);
            }
        }
        Cmd::Ls => {
            for m in s.layers()? {
                println!(
                    "{} {} {} {}",
                    m.id,
                    m.parent.as_deref().unwrap_or("-"),
                    m.size,
                    s.mount_state(&m.id)?.count
                );
            }
        }
        Cmd::Status => {
            for (k, v) in s.status()? {
                println!("{k}: {v}");
            }
        }
        Cmd::Metadata { id } => {
            let m = s.metadata(&id)?;
            println!("{}", serde_json::to_string_pretty(&m).unwrap_or_default());
        }
        Cmd::Cleanup => s.cleanup()?,
        Cmd::Diff { id } => s.diff(&id, &mut std::io::stdout().lock())?,
        Cmd::ApplyDiff { id } => println!("{}", s.apply_diff(&id, &mut std::io::stdin().lock())?),
        Cmd::Changes { id } => {
            for (c, p) in s.changes(&id)? {
                println!("{c} {p}");
            }
        }
        Cmd::DiffSize { id } => println!("{}", s.diff_size(&id)?),
        Cmd::Commit { container, name } => s.commit(&container, &name)?,
        Cmd::Images => {
            for i in s.images()? {
                println!("{} {}", i.name, i.top);
            }
        }
        Cmd::Import { name, path } => {
            let bar = std::io::stderr()
                .is_terminal()
                .then(|| indicatif::ProgressBar::new(0));
            let mut progress = |done: usize, total: usize| {
                if let Some(b) = &bar {
                    b.set_length(total as u64);
                    b.set_position(done as u64);
                }
            };
            let img = image::import(&s, &path, name.as_deref(), &mut progress)?;
            if let Some(b) = &bar {
                b.finish_and_clear();
            }
            println!("{} {}", img.name, img.top);
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    // Walks of a layer hold an fd per level, and a layer may be as deep as
    // PATH_MAX allows (2048 levels): room for that under any soft limit.
    unionfs::fsat::reserve_fds(2 * unionfs_driver::tar::PATH_MAX as u64);
    let cli: Cli = match unionfs::cli::parse("unionfs-driver") {
        Ok(c) => c,
        Err(code) => return code,
    };
    // An unprivileged user goes on in a user namespace of its own.
    if let Err(e) = unionfs_driver::userns::enter() {
        eprintln!("unionfs-driver: {e}");
        return ExitCode::from(1);
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("unionfs-driver: {e}");
            // As docker run: 125 when the container could not be started.
            ExitCode::from(if matches!(e, unionfs_driver::Error::Launch(_)) {
                125
            } else {
                1
            })
        }
    }
}
