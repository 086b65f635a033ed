//! libvirt's daemons for the tests that need them: started here when none
//! answers, and stopped when the tests end; ones that already ran are left
//! alone.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

static DAEMONS: std::sync::Mutex<Option<Vec<std::process::Child>>> = std::sync::Mutex::new(None);

fn libvirtd_answers() -> bool {
    std::process::Command::new("virsh")
        .args(["-c", "qemu:///system", "version", "--daemon"])
        .stdin(std::process::Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success())
}

/// libvirtd answering on qemu:///system.
pub fn with_libvirtd() -> Result<(), String> {
    let mut daemons = DAEMONS.lock().unwrap();
    if daemons.is_some() || libvirtd_answers() {
        daemons.get_or_insert_with(Vec::new);
        return Ok(());
    }
    let mut started = Vec::new();
    for d in ["virtlogd", "libvirtd"] {
        started.push(
            std::process::Command::new(d)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot start {d}: {e}"))?,
        );
    }
    *daemons = Some(started);
    let until = Instant::now() + Duration::from_secs(30);
    while !libvirtd_answers() {
        if Instant::now() > until {
            return Err("libvirtd did not answer in 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// The daemons started here, stopped.
pub fn stop_daemons() {
    for mut c in DAEMONS.lock().unwrap().take().unwrap_or_default() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = c.wait();
    }
}

/// The libvirt plugin is built with envup, beside it (or a copy of it
/// where envup may run it from).
pub fn built_plugins() -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_envup-backend-libvirt"))
        .parent()
        .unwrap()
        .to_owned();
    if envup::backend::plugin::strict_modes(&dir).is_ok() {
        return dir;
    }
    static COPY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    COPY.get_or_init(|| {
        let copy = super::trusted_plugins(&tempfile::tempdir().unwrap().keep());
        std::fs::copy(
            env!("CARGO_BIN_EXE_envup-backend-libvirt"),
            copy.join("envup-backend-libvirt"),
        )
        .unwrap();
        copy
    })
    .clone()
}

/// Why the libvirt plugin cannot run here, if it cannot.
pub fn unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("libvirt's system connection needs root".into());
    }
    [
        "libvirtd",
        "virtlogd",
        "virsh",
        "qemu-system-x86_64",
        "qemu-img",
    ]
    .into_iter()
    .find(|t| super::host_lacks(t))
    .map(|t| {
        format!("{t} is missing (apt-get install libvirt-daemon-system qemu-system-x86 qemu-utils)")
    })
}
