//! The transports that carry FUSE requests: /dev/fuse, and io_uring where
//! the kernel offers it (/sys/module/fuse/parameters/enable_uring = Y; the
//! default io_uring=auto then serves every mount of the suite over it).
//! Every test here runs on whichever transport the kernel gives; `.ci/run`
//! runs the suite once with each.

mod common;
use common::*;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};

const KNOB: &str = "/sys/module/fuse/parameters/enable_uring";

fn ring_enabled() -> bool {
    fs::read_to_string(KNOB).is_ok_and(|v| v.trim() == "Y")
}

/// The daemon's threads: (tid, name).
fn threads(pid: i32) -> Vec<(i32, String)> {
    fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|t| {
            let tid = t.file_name().to_string_lossy().parse().ok()?;
            let name = fs::read_to_string(t.path().join("comm")).ok()?;
            Some((tid, name.trim().to_string()))
        })
        .collect()
}

/// The io_uring queue threads of the daemon serving `mnt`, by queue.
fn queues(mnt: &Path) -> Vec<i32> {
    let mut q: Vec<(usize, i32)> = threads(daemon_pid(mnt))
        .into_iter()
        .filter_map(|(tid, n)| Some((n.strip_prefix("unionfs-q")?.parse().ok()?, tid)))
        .collect();
    q.sort();
    q.into_iter().map(|(_, tid)| tid).collect()
}

fn cpu_list(which: &str) -> Vec<usize> {
    let s = fs::read_to_string(format!("/sys/devices/system/cpu/{which}")).unwrap();
    let mut cpus = Vec::new();
    for part in s.trim().split(',') {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<usize>().unwrap()..=b.parse().unwrap()),
            None => cpus.push(part.parse().unwrap()),
        }
    }
    cpus
}

/// How often a thread of the daemon went to sleep: a queue thread sleeps
/// once for each request it waits for.
fn sleeps(pid: i32, tid: i32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn pin(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).unwrap();
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).unwrap();
}

#[test]
fn the_transport_is_the_one_the_kernel_offers_unless_an_option_says() {
    need_fuse!();
    let possible = cpu_list("possible").into_iter().max().unwrap() + 1;
    let mut u = Union::new(&["rw"]);
    u.mount("rw=rw", &[]);
    if ring_enabled() {
        assert_eq!(queues(&u.mnt).len(), possible, "one queue per possible CPU");
    } else {
        assert!(
            queues(&u.mnt).is_empty(),
            "io_uring queues without {KNOB} = Y"
        );
    }
    write(u.m("f"), "data");
    assert_eq!(read(u.m("f")), "data");
    u.remount("rw=rw", &["io_uring=off"]);
    assert!(
        queues(&u.mnt).is_empty(),
        "io_uring=off served over io_uring"
    );
    assert_eq!(read(u.m("f")), "data");
    u.unmount();
    let out = u.try_mount("rw=rw", &["io_uring=on"]);
    if ring_enabled() {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(queues(&u.mnt).len(), possible);
        assert_eq!(read(u.m("f")), "data");
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("io_uring=on") && err.contains(KNOB), "{err}");
        assert!(!is_mounted(&u.mnt));
    }
}

#[test]
fn every_cpu_has_a_queue_that_serves_the_requests_made_on_it() {
    need_fuse!();
    if !ring_enabled() {
        eprintln!("SKIPPED: FUSE over io_uring is off ({KNOB} = N); .ci/run runs this with it on");
        return;
    }
    let mut u = Union::new(&["rw"]);
    u.mount("rw=rw", &["io_uring=on"]);
    let pid = daemon_pid(&u.mnt);
    let q = queues(&u.mnt);
    const N: u64 = 400;
    for cpu in cpu_list("online") {
        let before: Vec<u64> = q.iter().map(|&t| sleeps(pid, t)).collect();
        let mnt = u.mnt.clone();
        std::thread::spawn(move || {
            pin(cpu);
            // Names that do not exist: each stat is one LOOKUP.
            for i in 0..N {
                assert!(fs::metadata(mnt.join(format!("none-{cpu}-{i}"))).is_err());
            }
        })
        .join()
        .unwrap();
        let grew: Vec<u64> = q
            .iter()
            .zip(&before)
            .map(|(&t, b)| sleeps(pid, t) - b)
            .collect();
        assert!(
            grew[cpu] >= N / 2,
            "queue {cpu} served few of CPU {cpu}'s requests: {grew:?}"
        );
        for (other, g) in grew.iter().enumerate() {
            if other != cpu {
                assert!(
                    *g < N / 4,
                    "queue {other} served CPU {cpu}'s requests: {grew:?}"
                );
            }
        }
    }
}

/// An inner union whose daemon the test can stop: a branch of the union
/// under test on it makes that union's requests wait for as long as the
/// test wants, with no timing involved.
struct Stoppable {
    inner: Union,
    pid: i32,
}

impl Stoppable {
    fn new() -> Stoppable {
        let mut inner = Union::new(&["data"]);
        // Over 1 MiB: its copy-up runs on a thread of its own (SLOW_COPY).
        let chunk = vec![b'x'; 1 << 20];
        let mut f = fs::File::create(inner.b("data/f")).unwrap();
        f.write_all(&chunk).unwrap();
        f.write_all(&chunk).unwrap();
        inner.mount("data=rw", &[]);
        let pid = daemon_pid(&inner.mnt);
        Stoppable { inner, pid }
    }

    fn stop(&self) {
        stop_process(self.pid);
    }

    fn cont(&self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid),
            nix::sys::signal::SIGCONT,
        )
        .unwrap();
    }

    /// Stop the inner daemon and start an open for writing of `f` in `u`
    /// (a union over this one) from CPU 0: it copies the file up (on a
    /// thread of its own: the file is large) and stays in the middle of it,
    /// its reads of the inner union waiting.
    fn stuck_copy_up(&self, u: &Union) -> std::thread::JoinHandle<std::io::Result<fs::File>> {
        self.stop();
        let path = u.m("f");
        let a = std::thread::spawn(move || {
            pin(0);
            OpenOptions::new().append(true).open(path)
        });
        wait_for("the copy-up to wait for the stopped daemon", || {
            self.waiting() > 0
        });
        a
    }

    /// Requests the stopped daemon has not answered.
    fn waiting(&self) -> u32 {
        let dev = fs::metadata(&self.inner.mnt).unwrap().dev();
        let conn = nix::sys::stat::minor(dev);
        fs::read_to_string(fusectl().join(format!("{conn}/waiting")))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for Stoppable {
    fn drop(&mut self) {
        self.cont();
    }
}

/// The union under test: a writable branch over the stoppable one.
fn over(s: &Stoppable) -> Union {
    let mut u = Union::new(&["rw"]);
    let ro = s.inner.mnt.display().to_string();
    let spec = format!("{}=rw:{ro}=ro", u.b("rw").display());
    let out = u.try_mount_abs(&spec, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Known to the kernel and the daemon before the inner one stops.
    assert_eq!(fs::metadata(u.m("f")).unwrap().len(), 2 << 20);
    u
}

fn wait_threads(mnt: &Path) -> usize {
    threads(daemon_pid(mnt))
        .iter()
        .filter(|(_, n)| n == "unionfs-wait")
        .count()
}

#[test]
fn an_interrupted_wait_for_a_copy_up_ends_with_eintr() {
    need_fuse!();
    let online = cpu_list("online");
    if ring_enabled() && online.len() < 2 {
        panic!("this test needs two online CPUs over io_uring (one queue is kept busy)");
    }
    let s = Stoppable::new();
    let u = over(&s);
    // A: an open for writing copies the file up, stuck in the middle.
    let a = s.stuck_copy_up(&u);
    // B, on the other CPU: an open of the same file waits for A's copy-up
    // (on a thread of its own), until a signal interrupts it.
    let cpu = online.last().unwrap().to_string();
    let b = Command::new("taskset")
        .args(["-c", &cpu, "perl", "-e"])
        .arg(r#"$SIG{USR1} = sub {}; if (open(my $f, ">>", $ARGV[0])) { print "opened" } else { print "$!"; exit 3 }"#)
        .arg(u.m("f"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("B to wait for the copy-up", || wait_threads(&u.mnt) == 2);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(b.id() as i32),
        nix::sys::signal::SIGUSR1,
    )
    .unwrap();
    let out = b.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Interrupted system call"
    );
    assert_eq!(out.status.code(), Some(3));
    assert!(
        s.waiting() > 0,
        "the copy-up ended before B was interrupted"
    );
    // A's copy-up goes on once the inner daemon does.
    s.cont();
    let mut f = a.join().unwrap().unwrap();
    f.write_all(b"!").unwrap();
    drop(f);
    assert_eq!(fs::metadata(u.b("rw/f")).unwrap().len(), (2 << 20) + 1);
    wait_for("the waiting thread to end", || wait_threads(&u.mnt) == 0);
}

#[test]
fn sigkill_of_the_daemon_mid_request_aborts_the_request_and_leaves_a_dead_mount() {
    need_fuse!();
    let s = Stoppable::new();
    let mut u = over(&s);
    let pid = daemon_pid(&u.mnt);
    let a = s.stuck_copy_up(&u);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL).unwrap();
    // The killed daemon's thread in the inner union ends once that answers;
    // then the connection is gone: the request in flight fails with
    // ECONNABORTED, every later one with ENOTCONN (as the kernel does for
    // any FUSE daemon).
    s.cont();
    assert_errno(a.join().unwrap(), libc::ECONNABORTED);
    // Its other threads' channels close as they die (the last release of a
    // channel may come after its fd is gone); once the last one has, the
    // connection is gone. A request queued before that is aborted; none is
    // answered.
    wait_for("ENOTCONN for a later request", || {
        let errno = fs::metadata(u.m("not-cached")).unwrap_err().raw_os_error();
        assert!(
            matches!(errno, Some(libc::ENOTCONN | libc::ECONNABORTED)),
            "a request after SIGKILL got {errno:?}"
        );
        errno == Some(libc::ENOTCONN)
    });
    u.unmount();
    assert!(!is_mounted(&u.mnt));
    // Nothing half-copied is visible in the branch.
    assert_eq!(ls_branch(u.b("rw")), Vec::<String>::new());
}

#[test]
fn sigterm_while_requests_are_in_flight_unmounts_and_ends_the_daemon() {
    need_fuse!();
    let mut u = Union::new(&["rw"]);
    for i in 0..64 {
        write(u.b(&format!("rw/f{i}")), "x");
    }
    u.mount("rw=rw", &[]);
    let pid = daemon_pid(&u.mnt);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let served = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let clients: Vec<_> = online_cpus()
        .into_iter()
        .map(|cpu| {
            let (mnt, stop, served) = (u.mnt.clone(), stop.clone(), served.clone());
            std::thread::spawn(move || {
                pin(cpu);
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // Served, or refused once the mount is gone; never a hang.
                    if fs::read(mnt.join(format!("f{}", i % 64))).is_ok() {
                        served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    let _ = fs::metadata(mnt.join(format!("new{i}")));
                    i += 1;
                }
            })
        })
        .collect();
    wait_for("requests in flight", || {
        served.load(std::sync::atomic::Ordering::Relaxed) > 200
    });
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGTERM).unwrap();
    wait_for("the daemon to end", || {
        !Path::new(&format!("/proc/{pid}")).exists() || zombie(pid)
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    assert!(!is_mounted(&u.mnt), "SIGTERM left the mount");
    u.unmount();
}

fn online_cpus() -> Vec<usize> {
    cpu_list("online")
}

/// Ended, not yet reaped (the daemon is no child of ours).
fn zombie(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(true)
}
