//! Booting an unpacked envup box under qemu (TCG) the way the tests and the
//! benchmarks do, until its SSH server sends its banner.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// qemu under TCG as the tests and benchmarks run it: 256 MiB, no display,
/// no default devices, qboot instead of SeaBIOS.
pub const BASE_ARGS: [&str; 10] = [
    "-accel",
    "tcg",
    "-m",
    "256",
    "-display",
    "none",
    "-nodefaults",
    "-no-user-config",
    "-bios",
    "/usr/share/qemu/qboot.rom",
];

/// Why a box cannot be booted here, if it cannot.
pub fn unavailable() -> Option<String> {
    if crate::common::host_lacks("qemu-system-x86_64")
        || !Path::new("/usr/share/qemu/qboot.rom").exists()
    {
        return Some("qemu-system-x86_64 is missing (apt-get install qemu-system-x86)".into());
    }
    None
}

/// Boot the box unpacked in `dir` (disk.qcow2 as a fresh overlay, vmlinux,
/// initrd.img) and return how long its SSH banner took, or the console's
/// last lines.
pub fn boot_to_banner(dir: &Path, limit: Duration) -> Result<Duration, String> {
    let overlay = dir.join(format!("overlay-{}.qcow2", std::process::id()));
    let _ = std::fs::remove_file(&overlay);
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(dir.join("disk.qcow2"))
        .arg(&overlay)
        .status()
        .map_err(|e| e.to_string())?;
    if !st.success() {
        return Err("qemu-img create failed".into());
    }
    let port = crate::common::sshd::free_port();
    let console = dir.join("console.log");
    let start = Instant::now();
    let mut qemu = Command::new("qemu-system-x86_64")
        .args(BASE_ARGS)
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-kernel")
        .arg(dir.join("vmlinux"))
        .arg("-initrd")
        .arg(dir.join("initrd.img"))
        .args(["-append", "root=/dev/vda rw console=ttyS0 quiet"])
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=qcow2", overlay.display()))
        .args([
            "-netdev",
            &format!("user,id=n,hostfwd=tcp:127.0.0.1:{port}-:22"),
        ])
        .args([
            "-device",
            "virtio-net-pci,netdev=n,romfile=",
            "-device",
            "virtio-rng-pci",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut took = None;
    while start.elapsed() < limit && took.is_none() {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            use std::io::Read;
            s.set_read_timeout(Some(Duration::from_secs(2))).ok();
            let mut b = [0u8; 4];
            if s.read_exact(&mut b).is_ok() && &b == b"SSH-" {
                took = Some(start.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = qemu.kill();
    let _ = qemu.wait();
    let _ = std::fs::remove_file(&overlay);
    took.ok_or_else(|| {
        let text = std::fs::read_to_string(&console).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(15).collect();
        format!(
            "no SSH banner within {}s; console:\n{}",
            limit.as_secs(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    })
}
