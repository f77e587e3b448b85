//! Criterion micro-benchmarks of the union's hot internals, on real branch
//! directories: resolving a name across 1-64 branches (by path, with cached
//! directory fds, with the name index), a merged readdir of N
//! entries over K branches, whiteout checks. `cargo bench`; the side-by-side
//! comparison with the peer filesystems is `benches/compare.sh`.

use std::ffi::OsStr;
use std::fs;
use std::path::Path;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use unionfs::branch::{BranchSet, BranchSpec, Mode};
use unionfs::internals::{
    merged, open_layers_at, scan, scan_path, Dir, InodeTable, NameIndex, Numbers,
};
use unionfs::whiteout;

/// `k` branches under `dir`; the name `bottom` only in the last one.
fn branches(dir: &Path, k: usize, entries: usize) -> BranchSet {
    let specs: Vec<BranchSpec> = (0..k)
        .map(|i| {
            let p = dir.join(format!("b{i}"));
            fs::create_dir_all(p.join("d")).unwrap();
            for e in 0..entries / k {
                fs::write(p.join("d").join(format!("e{i}-{e}")), "").unwrap();
            }
            BranchSpec {
                path: p,
                mode: if i == 0 { Mode::Rw } else { Mode::Ro },
            }
        })
        .collect();
    fs::write(specs[k - 1].path.join("d/bottom"), "").unwrap();
    BranchSet::open(&specs).unwrap()
}

fn resolve(c: &mut Criterion) {
    let mut g = c.benchmark_group("resolve-bottom-name");
    for k in [1, 4, 16, 64] {
        let t = tempfile::tempdir().unwrap();
        let bs = branches(t.path(), k, 0);
        let layers: Vec<usize> = (0..k).collect();
        let name = OsStr::new("bottom");
        // as the daemon did before it kept directory fds: a path walk per branch
        g.bench_with_input(BenchmarkId::new("by-path", k), &k, |b, _| {
            b.iter(|| {
                let s = scan_path(&bs, &layers, Path::new("d"), name, false).unwrap();
                assert!(s.top().is_some());
            })
        });
        // with the directory fds cached (resolve/dirs.rs)
        let dirs = open_layers_at(&bs, &layers, Path::new("d")).unwrap();
        let dir_of = |idx: usize| Ok(dirs[idx].1.clone());
        g.bench_with_input(BenchmarkId::new("cached-fds", k), &k, |b, _| {
            b.iter(|| {
                let s = scan(&layers, name, false, dir_of, |_| None).unwrap();
                assert!(s.top().is_some());
            })
        });
        // and the read-only branches indexed (resolve/nameindex.rs; branch 0 is rw)
        let ro: Vec<_> = dirs.iter().skip(1).cloned().collect();
        let index = NameIndex::build(&ro).unwrap().unwrap();
        g.bench_with_input(BenchmarkId::new("indexed", k), &k, |b, _| {
            b.iter(|| {
                let s = scan(&layers, name, false, dir_of, |idx| index.hint(idx, name)).unwrap();
                assert!(s.top().is_some());
            })
        });
    }
    g.finish();
}

fn merged_readdir(c: &mut Criterion) {
    let mut g = c.benchmark_group("merged-readdir");
    g.sample_size(20);
    for (n, k) in [(1000, 1), (1000, 5), (20000, 5), (20000, 20)] {
        let t = tempfile::tempdir().unwrap();
        let bs = branches(t.path(), k, n);
        let layers: Vec<usize> = (0..k).collect();
        let inodes = InodeTable::new((0, 0), Vec::new(), Numbers::new(&bs));
        g.bench_with_input(
            BenchmarkId::from_parameter(format!("{n}x{k}")),
            &n,
            |b, _| {
                b.iter(|| {
                    open_layers_at(&bs, &layers, Path::new("d"))
                        .and_then(|dirs| merged(&bs, &dirs, &inodes))
                        .unwrap()
                        .len()
                })
            },
        );
    }
    g.finish();
}

fn whiteouts(c: &mut Criterion) {
    let t = tempfile::tempdir().unwrap();
    fs::write(t.path().join(".wh.gone"), "").unwrap();
    let dir = Dir::open_root(t.path()).unwrap();
    c.bench_function("whiteout-check-hit", |b| {
        b.iter(|| whiteout::has_whiteout(&dir, OsStr::new("gone")).unwrap())
    });
    c.bench_function("whiteout-check-miss", |b| {
        b.iter(|| whiteout::has_whiteout(&dir, OsStr::new("there")).unwrap())
    });
    c.bench_function("reserved-name", |b| {
        b.iter(|| whiteout::is_reserved(OsStr::new(".wh.name")))
    });
}

criterion_group!(benches, resolve, merged_readdir, whiteouts);
criterion_main!(benches);
