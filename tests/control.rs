//! unionctl on live mounts: every verb, cache invalidation, permissions,
//! EBUSY, snapshot atomicity, concurrent load during changes.

mod common;
use common::*;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

fn ctl(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(UNIONCTL).args(args).output().unwrap()
}

fn ctl_ok(u: &Union, args: &[&str]) -> String {
    let mut a: Vec<&std::ffi::OsStr> = vec![u.mnt.as_os_str()];
    a.extend(args.iter().map(std::ffi::OsStr::new));
    let out = ctl(&a);
    assert!(
        out.status.success(),
        "unionctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// unionctl must fail with `code`, one line on stderr containing `needle`.
#[track_caller]
fn ctl_fails(u: &Union, args: &[&str], code: i32, needle: &str) {
    let mut a: Vec<&std::ffi::OsStr> = vec![u.mnt.as_os_str()];
    a.extend(args.iter().map(std::ffi::OsStr::new));
    let out = ctl(&a);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "unionctl {args:?}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains(needle), "{err:?} lacks {needle:?}");
}

/// `unionctl MNT --list`, killed after `secs` seconds if no answer came.
fn list_within(u: &Union, secs: u32) -> Output {
    Command::new("timeout")
        .arg(secs.to_string())
        .arg(UNIONCTL)
        .arg(&u.mnt)
        .arg("--list")
        .output()
        .unwrap()
}

fn list(u: &Union) -> Vec<String> {
    ctl_ok(u, &["--list"])
        .lines()
        .map(|l| l.replace(&u.tmp.path().display().to_string(), ""))
        .collect()
}

fn p(u: &Union, b: &str) -> String {
    u.b(b).display().to_string()
}

/// Long kernel caches: only the invalidation can make changes visible at once.
const CACHED: &str = "entry_timeout=3600,attr_timeout=3600,negative_timeout=3600";

#[test]
fn list_add_remove_mode_take_effect_at_once() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro", "extra", "mid"]);
    write(u.b("ro/f"), "from ro");
    write(u.b("extra/f"), "from extra");
    write(u.b("extra/only"), "only in extra");
    write(u.b("mid/m"), "mid");
    u.mount("rw=rw:ro=ro", &[CACHED]);
    assert_eq!(list(&u), vec!["/rw (rw)", "/ro (ro)"]);
    assert_eq!(read(u.m("f")), "from ro");
    assert_errno(fs::metadata(u.m("only")), libc::ENOENT);
    ctl_ok(
        &u,
        &[
            "--add",
            "--mode",
            "ro",
            "--before",
            &p(&u, "ro"),
            &p(&u, "extra"),
        ],
    );
    assert_eq!(list(&u), vec!["/rw (rw)", "/extra (ro)", "/ro (ro)"]);
    assert_eq!(read(u.m("f")), "from extra", "cached entry not invalidated");
    assert_eq!(read(u.m("only")), "only in extra");
    ctl_ok(
        &u,
        &[
            "--add",
            "--after",
            &p(&u, "extra"),
            "--mode",
            "ro",
            &p(&u, "mid"),
        ],
    );
    assert_eq!(
        list(&u),
        vec!["/rw (rw)", "/extra (ro)", "/mid (ro)", "/ro (ro)"]
    );
    assert_eq!(read(u.m("m")), "mid");
    ctl_ok(&u, &["--remove", &p(&u, "extra")]);
    assert_eq!(read(u.m("f")), "from ro");
    assert_errno(fs::metadata(u.m("only")), libc::ENOENT);
    // --mode: the rw branch becomes ro and its files refuse writes
    write(u.m("new"), "n");
    ctl_ok(&u, &["--mode", &p(&u, "rw"), "ro"]);
    assert_eq!(list(&u), vec!["/rw (ro)", "/mid (ro)", "/ro (ro)"]);
    assert_errno(
        fs::OpenOptions::new().append(true).open(u.m("new")),
        libc::EROFS,
    );
    ctl_ok(&u, &["--mode", &p(&u, "rw"), "rw"]);
    fs::OpenOptions::new()
        .append(true)
        .open(u.m("new"))
        .unwrap()
        .write_all(b"+")
        .unwrap();
    assert_eq!(read(u.b("rw/new")), "n+");
    // added on top by default, rw by default
    fs::create_dir(u.b("top")).unwrap();
    ctl_ok(&u, &["--add", &p(&u, "top")]);
    assert_eq!(list(&u)[0], "/top (rw)");
    write(u.m("created"), "c");
    assert_eq!(read(u.b("top/created")), "c");
}

#[test]
fn query_shows_every_branch_with_whiteouts_and_opaque_dirs() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro1", "ro2"]);
    write(u.b("ro1/f"), "1");
    write(u.b("ro2/f"), "2");
    write(u.b("ro1/d/x"), "x");
    write(u.b("ro2/d/y"), "y");
    u.mount("rw=rw:ro1=ro:ro2=ro", &[]);
    fs::remove_file(u.m("f")).unwrap();
    fs::remove_dir_all(u.m("d")).unwrap();
    fs::create_dir(u.m("d")).unwrap();
    let q = |path: &str| {
        let out = ctl(&[u.m(path).as_os_str(), "--query".as_ref()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).replace(&u.tmp.path().display().to_string(), "")
    };
    assert_eq!(
        q("f"),
        "/rw (rw): whiteout\n/ro1 (ro): file\n/ro2 (ro): file\n"
    );
    assert_eq!(
        q("d"),
        "/rw (rw): opaque directory\n/ro1 (ro): directory\n/ro2 (ro): directory\n"
    );
    assert_eq!(q("nothing"), "/mnt/nothing: in no branch\n");
}

#[test]
fn only_root_or_the_mounting_user_may_change_branches() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro", "extra"]);
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(u.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    u.mount("rw=rw:ro=ro", &["allow_other"]);
    // The user runs a copy of unionctl: the checkout may be closed to them
    // (a clone under /root is 0700).
    let bin = u.tmp.path().join("unionctl");
    fs::copy(UNIONCTL, &bin).unwrap();
    let (uid, gid) = attacker();
    let as_user = |args: &[&str]| {
        Command::new(&bin)
            .arg(&u.mnt)
            .args(args)
            .uid(uid)
            .gid(gid)
            .output()
            .unwrap()
    };
    let out = as_user(&["--add", &p(&u, "extra")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("permission denied"));
    let out = as_user(&["--remove", &p(&u, "ro")]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(list(&u).len(), 2, "a refused change changed the branches");
    let out = as_user(&["--list"]);
    assert!(out.status.success(), "--list is for everyone");
}

#[test]
fn busy_branches_need_force_and_their_open_files_keep_working() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro"]);
    write(u.b("ro/held"), "held data");
    u.mount("rw=rw:ro=ro", &[]);
    let mut f = fs::File::open(u.m("held")).unwrap();
    ctl_fails(&u, &["--remove", &p(&u, "ro")], 1, "open file");
    ctl_fails(&u, &["--remove", &p(&u, "rw")], 1, "only writable branch");
    ctl_ok(&u, &["--remove", &p(&u, "ro"), "--force"]);
    assert_errno(fs::metadata(u.m("held")), libc::ENOENT);
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "held data");
    ctl_fails(&u, &["--remove", &p(&u, "rw")], 1, "only");
}

#[test]
fn changes_follow_the_branch_rules_and_bad_requests_change_nothing() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro", "ro/nested"]);
    write(u.b("file"), "x");
    u.mount("rw=rw:ro=ro", &[]);
    let before = list(&u);
    ctl_fails(&u, &["--add", &p(&u, "ro/nested")], 1, "nested");
    ctl_fails(&u, &["--add", &p(&u, "ro")], 1, "twice");
    ctl_fails(&u, &["--add", &p(&u, "missing")], 2, "No such file");
    ctl_fails(&u, &["--add", &p(&u, "file")], 1, "not a directory");
    ctl_fails(&u, &["--add", u.tmp.path().to_str().unwrap()], 1, "inside");
    ctl_fails(&u, &["--remove", &p(&u, "unknown")], 1, "is not a branch");
    ctl_fails(&u, &["--mode", &p(&u, "ro"), "rx"], 2, "unknown mode 'rx'");
    ctl_fails(
        &u,
        &["--add", "--before", &p(&u, "unknown"), &p(&u, "ro/nested")],
        1,
        "is not a branch",
    );
    ctl_fails(
        &u,
        &["--add", &p(&u, "extra"), "--force"],
        2,
        "--force goes with",
    );
    ctl_fails(&u, &["--list", "--force"], 2, "--force goes with");
    ctl_fails(&u, &["--frobnicate"], 2, "unknown option");
    ctl_fails(&u, &[], 2, "no action");
    assert_eq!(list(&u), before);
    let out = Command::new(UNIONCTL)
        .arg(u.tmp.path())
        .arg("--list")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not on a unionfs mount"));
}

#[test]
fn snapshot_is_one_atomic_change() {
    need_fuse!();
    let mut u = Union::new(&["base", "s0", "s1"]);
    write(u.b("base/f"), "v0");
    u.mount("base", &[CACHED]);
    write(u.m("f"), "v1");
    ctl_ok(&u, &["--snapshot", &p(&u, "s0")]);
    assert_eq!(list(&u), vec!["/s0 (rw)", "/base (ro)"]);
    write(u.m("f"), "v2");
    assert_eq!(read(u.b("base/f")), "v1");
    assert_eq!(read(u.b("s0/f")), "v2");
    // a writer running during the next snapshot never sees an error
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU32::new(0));
    let mnt = u.mnt.clone();
    let (s, w) = (stop.clone(), written.clone());
    let writer = std::thread::spawn(move || {
        while !s.load(Ordering::Relaxed) {
            let n = w.load(Ordering::Relaxed);
            fs::write(mnt.join(format!("w{}", n % 50)), n.to_string())
                .expect("write during snapshot");
            w.fetch_add(1, Ordering::Relaxed);
        }
    });
    wait_for("a first write", || written.load(Ordering::Relaxed) > 0);
    snapshot_between_writes(&u, "s1");
    let after = written.load(Ordering::Relaxed);
    wait_for("writes after the snapshot", || {
        written.load(Ordering::Relaxed) > after + 10
    });
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert_eq!(list(&u), vec!["/s1 (rw)", "/s0 (ro)", "/base (ro)"]);
    assert_eq!(read(u.m("f")), "v2");
    write(u.m("f"), "v3");
    assert_eq!(read(u.b("s1/f")), "v3");
    assert_eq!(read(u.b("s0/f")), "v2");
}

#[test]
fn concurrent_load_during_changes_loses_nothing() {
    need_fuse!();
    let mut u = Union::new(&["rw", "ro", "extra"]);
    for i in 0..20 {
        write(u.b(&format!("ro/r{i}")), &format!("lower {i}"));
    }
    write(u.b("extra/e"), "e");
    u.mount("rw=rw:ro=ro", &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..4 {
        let mnt = u.mnt.clone();
        let stop = stop.clone();
        workers.push(std::thread::spawn(move || {
            let mut lines = 0u32;
            let path = mnt.join(format!("log{w}"));
            while !stop.load(Ordering::Relaxed) {
                let mut f = fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .expect("open");
                writeln!(f, "{lines}").expect("append");
                lines += 1;
                let i = lines % 20;
                let got = fs::read_to_string(mnt.join(format!("r{i}"))).expect("read lower file");
                assert_eq!(got, format!("lower {i}"));
            }
            lines
        }));
    }
    for _ in 0..15 {
        ctl_ok(
            &u,
            &[
                "--add",
                "--mode",
                "ro",
                "--after",
                &p(&u, "ro"),
                &p(&u, "extra"),
            ],
        );
        ctl_ok(&u, &["--mode", &p(&u, "extra"), "rw"]);
        ctl_ok(&u, &["--mode", &p(&u, "extra"), "ro"]);
        ctl_ok(&u, &["--remove", &p(&u, "extra")]);
    }
    stop.store(true, Ordering::Relaxed);
    for (w, t) in workers.into_iter().enumerate() {
        let n = t.join().expect("worker failed");
        let text = read(u.m(&format!("log{w}")));
        let got: Vec<u32> = text.lines().map(|l| l.parse().unwrap()).collect();
        assert_eq!(got, (0..n).collect::<Vec<_>>(), "worker {w} lost writes");
    }
    assert_eq!(list(&u), vec!["/rw (rw)", "/ro (ro)"]);
}

// The channel as a local attacker sees it.

/// A Perl one-off: a Unix-socket server at ARGV[0] that listens as uid
/// ARGV[1] (bound as root first, so it can sit where root's sockets do) and
/// answers every request with ARGV[2]; prints "ready" once listening.
const FAKE_SERVER: &str = r#"
use Socket;
my ($path, $uid, $answer) = @ARGV;
socket(S, PF_UNIX, SOCK_STREAM, 0) or die "socket: $!";
unlink $path;
bind(S, pack_sockaddr_un($path)) or die "bind: $!";
chmod 0666, $path;
$> = $uid;
listen(S, 5) or die "listen: $!";
$| = 1;
print "ready\n";
while (accept(C, S)) {
    my $l = <C>;
    if ($answer eq "trickle") { select(C); $| = 1; while (1) { print C " "; sleep 1; } }
    print C "$answer\n"; close C;
}
"#;

/// A Perl one-off client: connects to ARGV[0], sends ARGV[1] and a newline,
/// prints the answer.
const RAW_CLIENT: &str = r#"
use Socket;
socket(S, PF_UNIX, SOCK_STREAM, 0) or die "socket: $!";
connect(S, pack_sockaddr_un($ARGV[0])) or die "connect: $!";
syswrite(S, "$ARGV[1]\n");
my $b; while (sysread(S, $b, 65536)) { print $b }
"#;

/// The attacker's server at `sock`, answering `answer`, once it listens.
fn fake_server(sock: &std::path::Path, uid: u32, answer: &str) -> std::process::Child {
    let mut fake = Command::new("perl")
        .args(["-e", FAKE_SERVER])
        .arg(sock)
        .arg(uid.to_string())
        .arg(answer)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = [0u8; 6];
    fake.stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut ready)
        .unwrap();
    assert_eq!(&ready, b"ready\n");
    fake
}

/// A Perl one-off: opens ARGV[1] connections to ARGV[0] that send half a
/// request each, then one more, whose answer it prints; then holds them all
/// until its stdin closes.
const HOARDER: &str = r#"
use Socket;
# The daemon may answer "too many" and close before our write: no SIGPIPE.
$SIG{PIPE} = 'IGNORE';
my ($path, $n) = @ARGV;
my @held;
for my $i (0 .. $n) {
    socket(my $s, PF_UNIX, SOCK_STREAM, 0) or die "socket: $!";
    connect($s, pack_sockaddr_un($path)) or die "connect: $!";
    syswrite($s, '{"op":');
    push @held, $s;
}
my $b; sysread($held[-1], $b, 65536);
$| = 1;
print "$b";
<STDIN>;
"#;

fn socket_of(u: &Union) -> std::path::PathBuf {
    unionfs::control::socket_path(&fs::canonicalize(&u.mnt).unwrap())
}

#[test]
fn the_socket_directory_is_roots_alone_and_the_daemon_umask_is_not_zero() {
    need_fuse!();
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    // As an older version left it: world-writable.
    let _ = fs::create_dir_all("/run/unionfs");
    fs::set_permissions("/run/unionfs", fs::Permissions::from_mode(0o777)).unwrap();
    let mut u = Union::new(&["rw"]);
    u.mount("rw", &[]);
    let dir = fs::symlink_metadata("/run/unionfs").unwrap();
    assert!(dir.is_dir());
    assert_eq!(dir.uid(), 0);
    assert_eq!(dir.mode() & 0o022, 0, "mode {:o}", dir.mode() & 0o7777);
    let sock = fs::symlink_metadata(socket_of(&u)).unwrap();
    assert!(sock.file_type().is_socket());
    assert_eq!((sock.uid(), sock.mode() & 0o7777), (0, 0o666));
    // A local user can neither squat a name nor plant a symlink there.
    let out = as_attacker("ln -s /etc/shadow /run/unionfs/x.sock || touch /run/unionfs/y");
    assert!(!out.status.success());
    assert!(!exists("/run/unionfs/x.sock") && !exists("/run/unionfs/y"));
    assert_ne!(daemon_umask(&u.mnt), 0, "the daemon runs with umask 0");
}

#[test]
fn a_socket_bound_by_someone_else_is_not_believed() {
    need_fuse!();
    let mut u = Union::new(&["rw", "base", "snap"]);
    open_up(&u);
    u.mount("base=rw", &[]);
    let sock = socket_of(&u);
    let (uid, _) = attacker();
    // The attacker's server in place of the daemon's: it lies about the branches.
    let lie = r#"{"branches":[{"path":"/lie","mode":"ro"}]}"#;
    let mut fake = fake_server(&sock, uid, lie);
    let out = ctl(&[u.mnt.as_os_str(), "--list".as_ref()]);
    let err = String::from_utf8_lossy(&out.stderr);
    fake.kill().unwrap();
    let _ = fake.wait();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("/lie"));
    assert!(
        err.contains(&format!("served by uid {uid}")) && err.contains("not trusted"),
        "{err}"
    );
    // snapmerge, told the same lie, refuses to merge into the live rw branch.
    let mut fake = fake_server(&sock, uid, lie);
    write(u.b("snap/new"), "x");
    let out = Command::new(env!("CARGO_BIN_EXE_snapmerge"))
        .arg(u.b("base"))
        .arg(u.b("snap"))
        .output()
        .unwrap();
    fake.kill().unwrap();
    let _ = fake.wait();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("not trusted"), "{err}");
    assert!(
        !exists(u.b("base/new")),
        "snapmerge merged into a live rw branch"
    );
}

#[test]
fn a_stalled_client_delays_no_one_and_is_cut_off() {
    need_fuse!();
    let mut u = Union::new(&["rw"]);
    u.mount("rw", &[]);
    let sock = socket_of(&u);
    // One connection that sends half a request and then nothing.
    let mut stalled = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    stalled.write_all(b"{\"op\":").unwrap();
    let start = std::time::Instant::now();
    let out = list_within(&u, 3);
    assert!(out.status.success(), "--list waited for a stalled client");
    assert!(start.elapsed() < std::time::Duration::from_secs(3));
    // The stalled one is answered with an error at the deadline and closed.
    let mut answer = String::new();
    stalled.read_to_string(&mut answer).unwrap();
    assert!(answer.contains("did not arrive within"), "{answer}");
    // A request with no end is refused once it is too long, and costs no memory.
    let mut big = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    let chunk = vec![b'x'; 1 << 20];
    let mut sent = 0;
    while sent < 64 << 20 && big.write_all(&chunk).is_ok() {
        sent += chunk.len();
    }
    assert!(sent < 64 << 20, "the daemon read 64 MiB of one request");
    let status = read(format!("/proc/{}/status", daemon_pid(&u.mnt)));
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(rss_kb < 64 << 10, "daemon RSS {rss_kb} kB");
}

#[test]
fn query_tells_a_user_only_what_they_could_see() {
    need_fuse!();
    use std::os::unix::fs::PermissionsExt;
    let mut u = Union::new(&["rw", "ro"]);
    open_up(&u);
    write(u.b("ro/secret/plans"), "x");
    write(u.b("ro/public/readme"), "x");
    fs::set_permissions(u.b("ro/secret"), fs::Permissions::from_mode(0o700)).unwrap();
    u.mount("rw=rw:ro=ro", &["allow_other"]);
    let sock = socket_of(&u).display().to_string();
    let ask = |path: &str| {
        let req = format!(r#"{{"op":"query","path":"{path}"}}"#);
        let out = as_attacker(&format!(
            "perl -e '{}' '{sock}' '{req}'",
            RAW_CLIENT.replace('\'', "")
        ));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let hidden = ask("secret/plans");
    assert!(
        hidden.contains("cannot see") && !hidden.contains("holders"),
        "{hidden}"
    );
    let seen = ask("public/readme");
    assert!(seen.contains("holders") && seen.contains("file"), "{seen}");
    // Root sees everything.
    let out = ctl(&[u.m("secret/plans").as_os_str(), "--query".as_ref()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("file"));
}

#[test]
fn a_user_who_hoards_connections_blocks_only_themselves() {
    need_fuse!();
    use std::os::unix::process::CommandExt;
    let mut u = Union::new(&["rw"]);
    u.mount("rw", &[]);
    let (uid, gid) = attacker();
    let mut hoarder = Command::new("perl")
        .args(["-e", HOARDER])
        .arg(socket_of(&u))
        .arg("8")
        .uid(uid)
        .gid(gid)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(hoarder.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(line.contains("too many connections"), "{line}");
    // Root, meanwhile, is served at once.
    let out = list_within(&u, 3);
    drop(hoarder.stdin.take());
    let _ = hoarder.wait();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_daemon_that_answers_a_byte_at_a_time_holds_up_no_client() {
    need_fuse!();
    let mut u = Union::new(&["rw"]);
    u.mount("rw", &[]);
    // Root's own uid: trusted, and still not waited for forever.
    let mut fake = fake_server(&socket_of(&u), 0, "trickle");
    let start = std::time::Instant::now();
    let out = list_within(&u, 30);
    fake.kill().unwrap();
    let _ = fake.wait();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no answer within"), "{err}");
    assert!(start.elapsed() < std::time::Duration::from_secs(20));
}
