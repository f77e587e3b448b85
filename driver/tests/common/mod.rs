//! Helpers for the driver tests: a store in a temp dir, the CLI, tar builders.
#![allow(dead_code)]

pub mod containerd;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub const CLI: &str = env!("CARGO_BIN_EXE_unionfs-driver");
pub const RUN: &str = env!("CARGO_BIN_EXE_unionfs-run");

/// A rootfs at `at/rootfs` from busybox-static: bin (with `applets` linked
/// to busybox), etc with a passwd, tmp, data.
pub fn busybox_rootfs(at: &Path, applets: &[&str]) -> PathBuf {
    let r = at.join("rootfs");
    for d in ["bin", "etc", "tmp", "data"] {
        fs::create_dir_all(r.join(d)).unwrap();
    }
    fs::copy("/bin/busybox", r.join("bin/busybox")).expect("/bin/busybox (busybox-static)");
    for a in applets {
        std::os::unix::fs::symlink("busybox", r.join("bin").join(a)).unwrap();
    }
    fs::write(r.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    r
}

/// `unionfs-run ARGS ROOT -- /bin/sh -c SCRIPT`.
pub fn run_script(args: &[&str], root: &Path, script: &str) -> Output {
    Command::new(RUN)
        .args(args)
        .arg(root)
        .args(["--", "/bin/sh", "-c", script])
        .output()
        .unwrap()
}

/// Mounts need root, /dev/fuse and the unionfs-mount binary beside the CLI.
pub fn ready() -> bool {
    let root = nix::unistd::geteuid().is_root();
    let fuse = Path::new("/dev/fuse").exists();
    let mount = Path::new(CLI).with_file_name("unionfs-mount").exists();
    if root && fuse && mount {
        return true;
    }
    let why = format!(
        "driver tests need root ({root}), /dev/fuse ({fuse}) and unionfs-mount beside {CLI} ({mount}; `cargo build --workspace` builds it)"
    );
    if std::env::var_os("UNIONFS_SKIP_FUSE_TESTS").is_some_and(|v| v == "1") {
        eprintln!("SKIPPED: {why}");
        return false;
    }
    panic!("{why}; set UNIONFS_SKIP_FUSE_TESTS=1 to skip them explicitly");
}

#[macro_export]
macro_rules! need_root {
    () => {
        if !common::ready() {
            return;
        }
    };
}

pub struct Env {
    pub tmp: tempfile::TempDir,
    pub root: PathBuf,
}

impl Env {
    pub fn new() -> Env {
        let tmp = tempfile::Builder::new()
            .prefix("driver-test")
            .tempdir()
            .unwrap();
        let root = tmp.path().join("store");
        Env { tmp, root }
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.tmp.path().join(p)
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(CLI);
        c.arg("--root").arg(&self.root).args(args);
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Run; panic unless it succeeds; stdout.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "unionfs-driver {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Run; it must fail with one line on stderr containing `needle`.
    #[track_caller]
    pub fn fails(&self, args: &[&str], needle: &str) {
        let out = self.run(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "unionfs-driver {args:?} succeeded");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains(needle), "{err:?} lacks {needle:?}");
    }

    pub fn with_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        let mut child = self
            .cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).ok();
        child.wait_with_output().unwrap()
    }

    pub fn mount(&self, id: &str) -> PathBuf {
        PathBuf::from(self.ok(&["mount", id]).trim())
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = Command::new(CLI)
            .arg("--root")
            .arg(&self.root)
            .arg("cleanup")
            .output();
    }
}

/// A tar in memory; entries added with raw names (no checks, as a hostile
/// tar would have them).
pub struct TarBuilder {
    b: tar::Builder<Vec<u8>>,
}

fn header(name: &str, kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_old();
    let bytes = name.as_bytes();
    h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(1_000_000_000);
    h.set_cksum();
    h
}

impl TarBuilder {
    pub fn new() -> TarBuilder {
        TarBuilder {
            b: tar::Builder::new(Vec::new()),
        }
    }

    pub fn file(self, name: &str, data: &[u8]) -> Self {
        self.file_mode(name, data, 0o644)
    }

    pub fn file_mode(mut self, name: &str, data: &[u8], mode: u32) -> Self {
        let h = header(name, tar::EntryType::Regular, data.len() as u64, mode);
        self.b.append(&h, data).unwrap();
        self
    }

    /// A file owned by `uid`:`gid`.
    pub fn file_owned(mut self, name: &str, data: &[u8], uid: u64, gid: u64) -> Self {
        let mut h = header(name, tar::EntryType::Regular, data.len() as u64, 0o644);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_cksum();
        self.b.append(&h, data).unwrap();
        self
    }

    pub fn dir(mut self, name: &str) -> Self {
        let h = header(name, tar::EntryType::Directory, 0, 0o755);
        self.b.append(&h, std::io::empty()).unwrap();
        self
    }

    fn link_entry(mut self, name: &str, target: &str, kind: tar::EntryType) -> Self {
        let mut h = header(name, kind, 0, 0o777);
        let t = target.as_bytes();
        h.as_old_mut().linkname[..t.len()].copy_from_slice(t);
        h.set_cksum();
        self.b.append(&h, std::io::empty()).unwrap();
        self
    }

    /// A symlink owned by `uid`:`gid`.
    pub fn symlink_owned(mut self, name: &str, target: &str, uid: u64, gid: u64) -> Self {
        let mut h = header(name, tar::EntryType::Symlink, 0, 0o777);
        let t = target.as_bytes();
        h.as_old_mut().linkname[..t.len()].copy_from_slice(t);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_cksum();
        self.b.append(&h, std::io::empty()).unwrap();
        self
    }

    pub fn symlink(self, name: &str, target: &str) -> Self {
        self.link_entry(name, target, tar::EntryType::Symlink)
    }

    pub fn hardlink(self, name: &str, target: &str) -> Self {
        self.link_entry(name, target, tar::EntryType::Link)
    }

    pub fn bytes(self) -> Vec<u8> {
        self.b.into_inner().unwrap()
    }
}

pub fn sha256(b: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)))
}

pub fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

pub fn zstd(b: &[u8]) -> Vec<u8> {
    zstd::encode_all(b, 3).unwrap()
}

/// A base layer from busybox-static: /bin/busybox and a few applet links.
pub fn busybox_layer() -> Vec<u8> {
    let busybox = fs::read("/bin/busybox").expect("/bin/busybox (install busybox-static)");
    let mut t = TarBuilder::new()
        .dir("bin/")
        .dir("etc/")
        .dir("tmp/")
        .dir("dev/")
        .dir("proc/")
        .dir("sys/");
    t = t.file_mode("bin/busybox", &busybox, 0o755);
    for app in ["sh", "ls", "cat", "echo", "id", "hostname", "sleep"] {
        t = t.symlink(&format!("bin/{app}"), "busybox");
    }
    t.file(
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n",
    )
    .file("etc/os-release", b"NAME=busybox\n")
    .bytes()
}

pub struct Layer {
    pub tar: Vec<u8>,
    /// The blob as stored (compressed or not).
    pub blob: Vec<u8>,
}

impl Layer {
    pub fn gz(tar: Vec<u8>) -> Layer {
        Layer {
            blob: gzip(&tar),
            tar,
        }
    }
    pub fn zst(tar: Vec<u8>) -> Layer {
        Layer {
            blob: zstd(&tar),
            tar,
        }
    }
    pub fn plain(tar: Vec<u8>) -> Layer {
        Layer {
            blob: tar.clone(),
            tar,
        }
    }
}

pub fn config_json(layers: &[Layer]) -> Vec<u8> {
    let diff_ids: Vec<String> = layers.iter().map(|l| sha256(&l.tar)).collect();
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin", "GREETING=hello"], "Cmd": ["/bin/sh"], "WorkingDir": "/tmp", "User": "0"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap()
}

/// Write an OCI image layout with `layers` (bottom first) at `dir`, tagged `tag`.
pub fn oci_layout(dir: &Path, layers: &[Layer], tag: &str) {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let put = |b: &[u8]| -> String {
        let d = sha256(b);
        fs::write(blobs.join(d.trim_start_matches("sha256:")), b).unwrap();
        d
    };
    let config = config_json(layers);
    let cdig = put(&config);
    let ldescs: Vec<serde_json::Value> = layers
        .iter()
        .map(|l| serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": put(&l.blob), "size": l.blob.len()}))
        .collect();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cdig, "size": config.len()},
        "layers": ldescs,
    }))
    .unwrap();
    let mdig = put(&manifest);
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": mdig, "size": manifest.len(),
             "annotations": {"org.opencontainers.image.ref.name": tag}}]}))
        .unwrap(),
    )
    .unwrap();
}

/// Write a `docker save` archive with `layers` at `path`.
pub fn docker_save(path: &Path, layers: &[Layer], repo_tag: &str) {
    let config = config_json(layers);
    let cname = format!("{}.json", sha256(&config).trim_start_matches("sha256:"));
    let mut t = TarBuilder::new().file(&cname, &config);
    let mut names = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let dir = format!("layer{i}");
        t = t
            .dir(&format!("{dir}/"))
            .file(&format!("{dir}/layer.tar"), &l.tar);
        names.push(format!("{dir}/layer.tar"));
    }
    let manifest = serde_json::to_vec(
        &serde_json::json!([{"Config": cname, "RepoTags": [repo_tag], "Layers": names}]),
    )
    .unwrap();
    fs::write(path, t.file("manifest.json", &manifest).bytes()).unwrap();
}

/// Sorted names of a directory (without the union's work directory).
pub fn ls(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".wh..wh.work" && n != ".wh..wh.index")
        .collect();
    v.sort();
    v
}

impl TarBuilder {
    /// A device node entry (`kind`: Char or Block).
    pub fn device(mut self, name: &str, kind: tar::EntryType, major: u32, minor: u32) -> Self {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).unwrap();
        h.set_entry_type(kind);
        h.set_size(0);
        h.set_mode(0o666);
        h.set_mtime(1_000_000_000);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        h.set_cksum();
        self.b.append(&h, std::io::empty()).unwrap();
        self
    }
}

/// A loop device over a file holding `secret`, detached when dropped: a
/// host block device a container must not reach.
pub struct Loop {
    pub dev: PathBuf,
    pub minor: u32,
    _file: tempfile::NamedTempFile,
}

impl Loop {
    pub fn new(secret: &str) -> Loop {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(secret.as_bytes()).unwrap();
        f.write_all(&vec![0u8; 1 << 20]).unwrap();
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(f.path())
            .output()
            .expect("losetup (util-linux) is needed for the device tests");
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        use std::os::unix::fs::MetadataExt;
        let minor = libc::minor(fs::metadata(&dev).unwrap().rdev());
        Loop {
            dev,
            minor,
            _file: f,
        }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).output();
    }
}
