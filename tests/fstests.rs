//! Runs the quick group of the xfstests-style suite (fstests/) on our mount,
//! with the binary under test. `fstests/check -g auto` runs everything.

mod common;
use std::process::Command;

#[test]
fn fstests_quick_group_passes() {
    need_fuse!();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fstests");
    let out = Command::new("bash")
        .arg(format!("{dir}/check"))
        .args(["-g", "quick"])
        .env("FSTYP", "unionfs")
        .env("UNIONFS_MOUNT", common::BIN)
        .output()
        .expect("run fstests/check");
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}{}", String::from_utf8_lossy(&out.stderr));
    let last = text.lines().last().unwrap_or("");
    assert!(
        out.status.success(),
        "fstests quick group failed: {last} (results in fstests/results/unionfs/)"
    );
    assert!(
        last.contains(" passed, 0 failed"),
        "unexpected summary: {last}"
    );
}
