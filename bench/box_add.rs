//! Adding a local box, against raw tools on the same file in the same run:
//!
//! - envup: `envup box add FILE` (hash the file, check every artifact,
//!   unpack into the store);
//! - baseline: `sha256sum FILE` followed by `zstd -dc FILE | tar -x`.
//!
//! Target: envup at most 1.3x the baseline. Also: the sha256 rate (target
//! at least 1 GB/s), and the bytes written when the same box is needed
//! again (a second machine, a second add): none.
//!
//! The box's rootfs is a tar of this host's /usr/lib and /usr/share, cut to
//! about 700 MB, which zstd packs to roughly 300 MB. `cargo bench --bench box_add`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use envup::boxes::archive::{pack, sha256_file};
use envup::boxes::manifest::{Artifact, Manifest};

const ROOTFS_BYTES: u64 = 700 << 20;

fn run(cmd: &mut Command) -> Duration {
    let t = Instant::now();
    let st = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .unwrap();
    assert!(st.success(), "{cmd:?} failed");
    t.elapsed()
}

fn secs(d: Duration) -> String {
    format!("{:6.2} s", d.as_secs_f64())
}

/// Bytes a command wrote through write(2), itself and its children.
fn bytes_written(script: &str) -> u64 {
    let out = Command::new("sh")
        .args([
            "-c",
            &format!("{script} >/dev/null 2>&1; grep '^wchar' /proc/$$/io"),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn main() {
    for tool in ["zstd", "tar", "sha256sum"] {
        if envup::host::which(tool).is_none() {
            println!("box_add bench skipped: {tool} is not installed (scripts/install-deps)");
            return;
        }
    }
    let work =
        tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into()))
            .unwrap();
    let w = work.path();
    let src = w.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let rootfs = src.join("rootfs.tar");
    // A real filesystem's mix of binaries and text.
    let st = Command::new("sh")
        .args([
            "-c",
            &format!(
                "tar -cf - -C / usr/lib usr/share 2>/dev/null | head -c {ROOTFS_BYTES} > {}",
                rootfs.display()
            ),
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let mut m = Manifest {
        name: "bench/usr".into(),
        version: "1.0.0".into(),
        arch: "x86_64".into(),
        ssh_user: "root".into(),
        description: None,
        artifacts: Default::default(),
        boot: None,
        first_login: None,
    };
    m.artifacts.insert(
        "rootfs".into(),
        Artifact {
            path: "rootfs.tar".into(),
            sha256: String::new(),
            size: 0,
            format: None,
        },
    );
    let file = w.join("bench.box");
    pack(&m, &src, &file).unwrap();
    std::fs::remove_dir_all(&src).unwrap();
    let size = std::fs::metadata(&file).unwrap().len();

    // Warm the page cache so both sides read from memory.
    sha256_file(&file).unwrap();
    let t = Instant::now();
    sha256_file(&file).unwrap();
    let hash_rate = size as f64 / t.elapsed().as_secs_f64() / 1e9;

    let bin = env!("CARGO_BIN_EXE_envup");
    let f = file.to_str().unwrap();
    let mut envup_runs = Vec::new();
    let mut base_runs = Vec::new();
    for i in 0..3 {
        run(&mut Command::new("sync"));
        let home = w.join(format!("home{i}"));
        envup_runs.push(run(Command::new(bin)
            .args(["-q", "box", "add", f])
            .env("ENVUP_HOME", &home)));
        let out = w.join(format!("raw{i}"));
        std::fs::create_dir_all(&out).unwrap();
        run(&mut Command::new("sync"));
        let t = Instant::now();
        run(Command::new("sha256sum").arg(f));
        run(Command::new("sh").args(["-c", &format!("zstd -dc {f} | tar -x -C {}", out.display())]));
        base_runs.push(t.elapsed());
        std::fs::remove_dir_all(&home).ok();
        std::fs::remove_dir_all(&out).ok();
    }
    let best = |v: &[Duration]| *v.iter().min().unwrap();
    let (e, b) = (best(&envup_runs), best(&base_runs));

    // The same box needed again: nothing is written.
    let home = w.join("again");
    let first = bytes_written(&format!(
        "ENVUP_HOME={} {bin} -q box add {f}",
        home.display()
    ));
    let digest = sha256_file(&file).unwrap();
    let again = bytes_written(&format!(
        "ENVUP_HOME={} {bin} -q box add {f} --checksum sha256:{digest}",
        home.display()
    ));
    let baseline_noop = bytes_written("true");

    println!(
        "adding a local box of {:.0} MB ({:.0} MB unpacked), best of 3:",
        size as f64 / 1e6,
        ROOTFS_BYTES as f64 / 1e6
    );
    println!("  envup box add                          {}", secs(e));
    println!("  sha256sum + zstd -dc | tar -x          {}", secs(b));
    println!(
        "  ratio                                  {:6.2}x   target <= 1.3x: {}",
        e.as_secs_f64() / b.as_secs_f64(),
        if e.as_secs_f64() <= 1.3 * b.as_secs_f64() {
            "met"
        } else {
            "NOT met"
        }
    );
    println!(
        "  sha256 rate                            {hash_rate:6.2} GB/s   target >= 1 GB/s: {}",
        if hash_rate >= 1.0 { "met" } else { "NOT met" }
    );
    println!("  bytes written by the first add         {first}");
    println!(
        "  bytes written when it is needed again  {again}   (a shell that does nothing: {baseline_noop})"
    );
}
