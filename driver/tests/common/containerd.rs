//! containerd's side of the tests: what they need on the machine, and
//! the Go tests in tests/containerd built against Debian's containerd sources.

use super::*;

pub const SUITE: &str =
    "/usr/share/gocode/src/github.com/containerd/containerd/snapshots/testsuite";

/// containerd, runc, Go and containerd's Go sources, or a loud failure
/// (UNIONFS_SKIP_CONTAINERD_TESTS=1 skips, saying so).
pub fn containerd_ready() -> bool {
    if !ready() {
        return false;
    }
    let missing: Vec<&str> = [
        "containerd",
        "ctr",
        "runc",
        "containerd-shim-runc-v2",
        "go",
        "docker-registry",
    ]
    .into_iter()
    .filter(|p| !on_path(p))
    .chain((!Path::new(SUITE).is_dir()).then_some(SUITE))
    .collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "containerd tests need {missing:?}: apt-get install -y containerd runc golang-go \
         golang-github-containerd-containerd-dev docker-registry"
    );
    if std::env::var_os("UNIONFS_SKIP_CONTAINERD_TESTS").is_some_and(|v| v == "1") {
        eprintln!("SKIPPED: {why}");
        return false;
    }
    panic!("{why}; set UNIONFS_SKIP_CONTAINERD_TESTS=1 to skip them explicitly");
}

pub fn on_path(prog: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
}

/// PATH with our binaries first: mount.fuse3 runs unionfs-mount from it.
pub fn path_env() -> String {
    let ours = Path::new(CLI).parent().unwrap();
    let rest = std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    format!("{}:{rest}", ours.display())
}

/// The Go tests in tests/containerd (containerd's conformance suite, a
/// pull as CRI makes it), built once: in GOPATH mode, offline, against
/// containerd's sources and their dependencies as Debian packages them.
pub fn go_tests() -> &'static Path {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("containerd-go");
        let pkg = base.join("gopath/src/unionfs-conformance");
        let _ = std::fs::remove_dir_all(&pkg);
        std::fs::create_dir_all(&pkg).unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/containerd");
        for f in ls(&src) {
            std::fs::copy(src.join(&f), pkg.join(&f)).unwrap();
        }
        let bin = base.join("containerd-go.test");
        let out = Command::new("go")
            .args(["test", "-c", "-o"])
            .arg(&bin)
            .arg(".")
            .current_dir(&pkg)
            .env("GO111MODULE", "off")
            .env("GOPROXY", "off")
            .env("GOFLAGS", "")
            .env("GOCACHE", base.join("cache"))
            .env(
                "GOPATH",
                format!("{}:/usr/share/gocode", base.join("gopath").display()),
            )
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "building the Go tests: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        bin
    })
}
