//! containerd's snapshots API (`containerd.services.snapshots.v1`) over
//! gRPC on a Unix socket: the `containerd-snapshots` crate's service, each
//! call run on a blocking thread that takes the store's lock for its length
//! (so a `unionfs-driver` command and the snapshotter never interleave).

// The trait's error type is tonic's Status, large or not.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use containerd_snapshots::api::types::Mount as ApiMount;
use containerd_snapshots::tonic::{self, Status};
use containerd_snapshots::{Info, Kind as ApiKind, Snapshotter, Usage as ApiUsage};

use super::mounts::Mount;
use super::ops::Snapshots;
use super::records::{Kind, Record};
use crate::store::Store;
use crate::Error;

pub struct Server {
    root: PathBuf,
}

fn status(e: Error) -> Status {
    let msg = e.to_string();
    match e {
        Error::NotFound(_) => Status::not_found(msg),
        Error::Exists(_) => Status::already_exists(msg),
        Error::Busy(_) => Status::failed_precondition(msg),
        Error::Invalid(_) => Status::invalid_argument(msg),
        _ => Status::internal(msg),
    }
}

fn time(nanos: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(nanos)
}

fn info(name: String, r: Record) -> Info {
    Info {
        kind: match r.kind {
            Kind::Active => ApiKind::Active,
            Kind::View => ApiKind::View,
            Kind::Committed => ApiKind::Committed,
        },
        name,
        parent: r.parent,
        labels: r.labels.into_iter().collect(),
        created_at: time(r.created),
        updated_at: time(r.updated),
    }
}

fn api_mounts(m: Vec<Mount>) -> Vec<ApiMount> {
    m.into_iter()
        .map(|m| ApiMount {
            r#type: m.kind,
            source: m.source,
            target: String::new(),
            options: m.options,
        })
        .collect()
}

fn sorted(labels: HashMap<String, String>) -> BTreeMap<String, String> {
    labels.into_iter().collect()
}

impl Server {
    pub fn new(root: &Path) -> Server {
        Server {
            root: root.to_path_buf(),
        }
    }

    /// Run `f` on the snapshots with the store locked, off the async threads.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Snapshots) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Status> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            let store = Store::open(&root)?;
            let mut s = Snapshots::open(&store)?;
            f(&mut s)
        })
        .await
        .map_err(|e| Status::internal(format!("snapshotter task: {e}")))?
        .map_err(|e| {
            log::debug!("{e}");
            status(e)
        })
    }

    /// Prepare or View.
    async fn create(
        &self,
        kind: Kind,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<ApiMount>, Status> {
        self.with(move |s| {
            s.create(kind, &key, &parent, sorted(labels))
                .map(api_mounts)
        })
        .await
    }
}

#[tonic::async_trait]
impl Snapshotter for Server {
    type Error = Status;

    async fn stat(&self, key: String) -> Result<Info, Status> {
        self.with(move |s| Ok(info(key.clone(), s.stat(&key)?.clone())))
            .await
    }

    async fn update(&self, i: Info, paths: Option<Vec<String>>) -> Result<Info, Status> {
        self.with(move |s| {
            let r = s.update(&i.name, sorted(i.labels), &paths.unwrap_or_default())?;
            Ok(info(i.name, r))
        })
        .await
    }

    async fn usage(&self, key: String) -> Result<ApiUsage, Status> {
        let u = self.with(move |s| s.usage(&key)).await?;
        Ok(ApiUsage {
            size: u.size as i64,
            inodes: u.inodes as i64,
        })
    }

    async fn mounts(&self, key: String) -> Result<Vec<ApiMount>, Status> {
        self.with(move |s| s.mounts(&key).map(api_mounts)).await
    }

    async fn prepare(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<ApiMount>, Status> {
        self.create(Kind::Active, key, parent, labels).await
    }

    async fn view(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<ApiMount>, Status> {
        self.create(Kind::View, key, parent, labels).await
    }

    async fn commit(
        &self,
        name: String,
        key: String,
        labels: HashMap<String, String>,
    ) -> Result<(), Status> {
        self.with(move |s| s.commit(&name, &key, sorted(labels)))
            .await
    }

    async fn remove(&self, key: String) -> Result<(), Status> {
        self.with(move |s| s.remove(&key)).await
    }

    async fn clear(&self) -> Result<(), Status> {
        self.with(|s| s.cleanup()).await
    }

    type InfoStream = tokio_stream::Iter<std::vec::IntoIter<Result<Info, Status>>>;

    async fn list(&self, _name: String, filters: Vec<String>) -> Result<Self::InfoStream, Status> {
        let all = self.with(move |s| s.list(&filters)).await?;
        let infos: Vec<Result<Info, Status>> =
            all.into_iter().map(|(k, r)| Ok(info(k, r))).collect();
        Ok(tokio_stream::iter(infos))
    }
}

/// Serve on `address` until SIGINT or SIGTERM; the socket is removed then.
pub fn serve(root: &Path, address: &Path) -> Result<(), Error> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Io("tokio runtime".into(), e))?;
    rt.block_on(serve_on(root, address))
}

async fn serve_on(root: &Path, address: &Path) -> Result<(), Error> {
    use tokio::signal::unix::{signal, SignalKind};
    let io = |e: std::io::Error| Error::Io(address.display().to_string(), e);
    // Opened once now: a bad root is an error at start, not at the first call.
    let store = Store::open(root)?;
    Snapshots::open(&store)?;
    super::mounts::check_root(&store)?;
    drop(store);
    let listener = super::socket::bind(address)?;
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let mut term = signal(SignalKind::terminate()).map_err(io)?;
    let mut int = signal(SignalKind::interrupt()).map_err(io)?;
    let stop = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        log::info!("stopping");
    };
    eprintln!(
        "unionfs-driver snapshotter: serving containerd's snapshots API on {} (store {})",
        address.display(),
        root.display()
    );
    let res = tonic::transport::Server::builder()
        .add_service(containerd_snapshots::server(Arc::new(Server::new(root))))
        .serve_with_incoming_shutdown(incoming, stop)
        .await;
    let _ = std::fs::remove_file(address);
    res.map_err(|e| {
        Error::Io(
            format!("serving {}", address.display()),
            std::io::Error::other(e),
        )
    })
}
