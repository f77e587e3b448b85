//! unionfs-driver: the layer store and its operations from the command line.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use unionfs_driver::store::DEFAULT_ROOT;
use unionfs_driver::{image, GraphDriver, Store};

#[derive(Parser)]
#[command(
    name = "unionfs-driver",
    version,
    about = "Graph driver: stores image layers and stacks them under a unionfs mount",
    long_about = "unionfs-driver keeps image layers in a store (each a directory in the OCI \
layer format, plus JSON metadata) and mounts layer chains with unionfs-mount, one process per \
mount, as containers/storage does with a mount program. The operations are those of Docker's \
graph driver. Wherever a layer is expected, an image name stands for its top layer."
)]
struct Cli {
    /// The store (default /var/lib/unionfs-driver, or $UNIONFS_DRIVER_ROOT).
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
}

fn run(cli: Cli) -> Result<(), unionfs_driver::Error> {
    let root = cli.root.unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT));
    let s = Store::open(&root)?;
    match cli.cmd {
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
    let cli: Cli = match unionfs::cli::parse("unionfs-driver") {
        Ok(c) => c,
        Err(code) => return code,
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("unionfs-driver: {e}");
            ExitCode::from(1)
        }
    }
}
