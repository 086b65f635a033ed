//! What envup adds to one backend plugin request, beyond running the
//! plugin: a no-op plugin (`tests/plugins/envup-backend-noop`, a shell
//! script), asked `status`:
//!
//! - raw: the same program started by `std::process::Command` with the
//!   same request on its stdin, its whole stdout read — what running the
//!   plugin costs, measured in the same run;
//! - envup: `protocol::call`, as every lifecycle request goes (its own
//!   process group, the deadline watch, the reply parsed and checked).
//!
//! Target: envup adds at most 5 ms to a request. Run with
//! `cargo bench --bench plugin_call`.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use envup::backend::plugin::protocol;

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:7.2} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/plugins");
    let noop = dir.join("envup-backend-noop");
    let request = serde_json::json!({"name": "m", "dir": "/nonexistent", "id": null, "ssh": null});
    let body = {
        let mut m = request.as_object().unwrap().clone();
        m.insert("protocol".into(), 1.into());
        m.insert("op".into(), "status".into());
        serde_json::to_vec(&m).unwrap()
    };
    let raw_once = || {
        let t = Instant::now();
        let mut c = Command::new(&noop)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(&body).unwrap();
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success() && !out.stdout.is_empty());
        t.elapsed()
    };
    let envup_once = || {
        let t = Instant::now();
        let v = protocol::call(
            &noop,
            "status",
            1,
            request.as_object().unwrap().clone(),
            Duration::from_secs(30),
        )
        .unwrap();
        assert_eq!(v["status"], "running");
        t.elapsed()
    };
    // Interleaved, so that both see the same machine.
    let rounds = 200;
    let (mut raw, mut via) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        raw_once();
        envup_once();
    }
    for _ in 0..rounds {
        raw.push(raw_once());
        via.push(envup_once());
    }
    let (raw, via) = (median(raw), median(via));
    println!("one plugin request (no-op plugin, `status`), median of {rounds}:");
    println!("  raw: spawn, request on stdin, read stdout   {}", ms(raw));
    println!(
        "  envup: protocol::call                       {}   envup adds {}   target <= 5 ms",
        ms(via),
        ms(via.saturating_sub(raw))
    );
}
