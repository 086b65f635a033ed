//! How long the `tiny` box takes to boot to SSH under TCG (qemu without
//! KVM), target <= 10 s; against the raw baseline of the same qemu starting
//! and stopping with no guest code to run, measured in the same run.
//! Builds the box first. `cargo bench --bench tiny_boot` (as root).

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn main() {
    if !nix::unistd::geteuid().is_root() {
        println!("tiny_boot bench skipped: box builds need root");
        return;
    }
    if let Some(why) = common::qemu::unavailable() {
        println!("tiny_boot bench skipped: {why}");
        return;
    }
    let p = common::Project::new();
    let out = p.path().join("tiny.box");
    p.cmd(&["-q", "box", "build", "tiny", "-o", out.to_str().unwrap()])
        .out()
        .status(0);
    let dir = tempfile::tempdir().unwrap();
    let f = std::fs::File::open(&out).unwrap();
    tar::Archive::new(zstd::Decoder::new(f).unwrap())
        .unpack(dir.path())
        .unwrap();

    // Baseline: qemu itself, with the same firmware, paused before the
    // first guest instruction and told to quit.
    let mut base = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let st = Command::new("qemu-system-x86_64")
            .args(common::qemu::BASE_ARGS)
            .args(["-S", "-monitor", "stdio"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(b"quit\n")?;
                c.wait()
            })
            .unwrap();
        assert!(st.success());
        base.push(t.elapsed());
    }
    let mut boots = Vec::new();
    for _ in 0..3 {
        boots.push(common::qemu::boot_to_banner(dir.path(), Duration::from_secs(60)).unwrap());
    }
    let best = |v: &[Duration]| *v.iter().min().unwrap();
    let mean = |v: &[Duration]| v.iter().sum::<Duration>() / v.len() as u32;
    println!("tiny under TCG, 3 boots each:");
    println!(
        "  qemu start and quit (baseline)   best {:5.2} s",
        best(&base).as_secs_f64()
    );
    println!(
        "  boot to the SSH banner           best {:5.2} s, mean {:5.2} s   target <= 10 s: {}",
        best(&boots).as_secs_f64(),
        mean(&boots).as_secs_f64(),
        if mean(&boots) <= Duration::from_secs(10) {
            "met"
        } else {
            "NOT met"
        }
    );
    println!(
        "  ratio to the baseline            {:5.1}x",
        mean(&boots).as_secs_f64() / best(&base).as_secs_f64()
    );
}
