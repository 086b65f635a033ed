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
    private_dir_of(&dir, uid.as_raw())?;
    Ok(dir)
}

/// `dir`, made when missing, checked to be a directory (not a link to one)
/// of user `uid`'s, and private to it.
fn private_dir_of(dir: &Path, uid: u32) -> std::io::Result<()> {
    // Made by this call, or found: either way it must be a directory (not
    // a link to one) of this user's before its mode is touched, through a
    // descriptor of the directory itself. Another user may have made the
    // name first in /tmp; that is refused, never used or changed.
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::DirBuilder::new().create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let fd = nix::fcntl::open(
        dir,
        nix::fcntl::OFlag::O_DIRECTORY
            | nix::fcntl::OFlag::O_NOFOLLOW
            | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| {
        std::io::Error::other(format!(
            "{} is not a directory ({e}); envup does not use it",
            dir.display()
        ))
    })?;
    let md = nix::sys::stat::fstat(&fd).map_err(std::io::Error::from)?;
    if md.st_uid != uid {
        return Err(std::io::Error::other(format!(
            "{} belongs to uid {}, not to this user; envup does not use it (set \
             XDG_RUNTIME_DIR to a directory of yours)",
            dir.display(),
            md.st_uid
        )));
    }
    if md.st_mode & 0o077 != 0 {
        nix::sys::stat::fchmod(&fd, nix::sys::stat::Mode::from_bits_truncate(0o700))
            .map_err(std::io::Error::from)?;
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A runtime directory another user made first, or a link put in its
    /// place, is refused and left as it is; one of the user's own is made
    /// private.
    #[test]
    fn runtime_dirs_are_the_users_own() {
        use std::os::unix::fs::PermissionsExt;
        let me = nix::unistd::geteuid().as_raw();
        let base = tempfile::tempdir().unwrap();
        let mine = base.path().join("mine");
        std::fs::create_dir(&mine).unwrap();
        std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir_of(&mine, me).unwrap();
        let mode = std::fs::metadata(&mine).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        // A link to a directory of the user's: refused, its target's mode
        // untouched.
        let target = base.path().join("target");
        std::fs::create_dir(&target).unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755)).unwrap();
        let link = base.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = private_dir_of(&link, me).unwrap_err().to_string();
        assert!(e.contains("not a directory"), "{e}");
        let mode = std::fs::metadata(&target).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        // Made first by someone else.
        let e = private_dir_of(&mine, me + 1).unwrap_err().to_string();
        assert!(e.contains("not to this user"), "{e}");
    }
}
