//! Small facts about the host: programs on PATH, and running a probe
//! command with a deadline.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The full path of `program` if it is on PATH and executable.
pub fn which(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Where envup keeps what lasts no longer than the host's uptime (its
/// helpers' sockets): `/run/envup` as root; otherwise `envup` in
/// `$XDG_RUNTIME_DIR`, or `/tmp/envup-UID`. Made private to the user; one
/// that another user owns is refused.
pub fn runtime_dir() -> std::io::Result<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let uid = nix::unistd::geteuid();
    let dir = if uid.is_root() {
        PathBuf::from("/run/envup")
    } else {
        match std::env::var_os("XDG_RUNTIME_DIR") {
            Some(d) if std::fs::metadata(&d).is_ok_and(|m| m.uid() == uid.as_raw()) => {
                PathBuf::from(d).join("envup")
            }
            _ => PathBuf::from(format!("/tmp/envup-{uid}")),
        }
    };
    crate::state::ensure_private_dir(&dir)?;
    let md = std::fs::symlink_metadata(&dir)?;
    if !md.is_dir() || md.uid() != uid.as_raw() {
        return Err(std::io::Error::other(format!(
            "{} is not a directory of this user's",
            dir.display()
        )));
    }
    Ok(dir)
}

/// Bytes free to an unprivileged writer on the filesystem that holds
/// `path` (or its nearest existing parent).
pub fn free_bytes(path: &Path) -> Option<u64> {
    let existing = path.ancestors().find(|p| p.exists())?;
    let st = nix::sys::statvfs::statvfs(existing).ok()?;
    Some(st.blocks_available().saturating_mul(st.fragment_size()))
}

/// What envup leaves free on a disk it fills with boxes and downloads.
pub const DISK_RESERVE: u64 = 256 << 20;

/// `need` more bytes do not fit on the disk that holds `path`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "not enough free space on the disk of {}: {} needed, {} free (envup keeps {} free)",
    .path.display(),
    human_bytes(*.need),
    human_bytes(*.free),
    human_bytes(DISK_RESERVE)
)]
pub struct NoSpace {
    pub path: std::path::PathBuf,
    pub need: u64,
    pub free: u64,
}

/// Whether `need` more bytes fit on the disk that holds `path` with
/// [`DISK_RESERVE`] left over.
pub fn check_space(path: &Path, need: u64) -> Result<(), NoSpace> {
    match free_bytes(path) {
        Some(free) if free < need.saturating_add(DISK_RESERVE) => Err(NoSpace {
            path: path.to_owned(),
            need,
            free,
        }),
        _ => Ok(()),
    }
}

/// Bytes in binary units, for messages.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Why a probe of the host's programs got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot run {}", .0.display())]
    Spawn(PathBuf, #[source] std::io::Error),
    #[error("cannot wait for {}", .0.display())]
    Wait(PathBuf, #[source] std::io::Error),
    #[error("{} did not answer within {}s", .0.display(), .1.as_secs())]
    Timeout(PathBuf, Duration),
}

/// Run `program args…` with no input, giving up (and killing it) after
/// `timeout`.
pub fn run_with_timeout(
    program: &Path,
    args: &[&str],
    timeout: Duration,
) -> Result<Output, ProbeError> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| ProbeError::Spawn(program.to_owned(), e))?;
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => {
                return child
                    .wait_with_output()
                    .map_err(|e| ProbeError::Wait(program.to_owned(), e));
            }
            Ok(None) if start.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ProbeError::Timeout(program.to_owned(), timeout));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(ProbeError::Wait(program.to_owned(), e)),
        }
    }
}

/// The first line of a command's stdout (or stderr when stdout is empty).
pub fn first_line(out: &Output) -> String {
    let text = if out.stdout.is_empty() {
        &out.stderr
    } else {
        &out.stdout
    };
    String::from_utf8_lossy(text)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_owned()
}

/// Whether the host's cgroups are the first version's (a memory
/// controller mounted on its own).
pub fn cgroup_v1() -> bool {
    Path::new("/sys/fs/cgroup/memory").is_dir()
}
