//! An exclusive file lock that waits, says so, and gives up after a timeout.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot lock {}", .0.display())]
    Io(PathBuf, #[source] std::io::Error),
    #[error(
        "the lock is held{} and was not let go in {}s",
        .holder.map(|p| format!(" by pid {p}")).unwrap_or_default(),
        .waited.as_secs()
    )]
    Timeout {
        holder: Option<u32>,
        waited: Duration,
    },
}

/// Held until dropped; the file records the holder's pid for whoever waits.
#[derive(Debug)]
pub struct FileLock {
    _file: File,
}

impl FileLock {
    /// Take the lock on `path`. While another process holds it, call
    /// `on_wait` once with the holder's pid (if it wrote one) and poll until
    /// `timeout` has passed.
    pub fn acquire(
        path: &Path,
        timeout: Duration,
        on_wait: &dyn Fn(Option<u32>),
    ) -> Result<FileLock, LockError> {
        let io = |e| LockError::Io(path.to_owned(), e);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        let start = Instant::now();
        let mut told = false;
        // Held locks are mostly held for a moment (a state file written by
        // another thread or command): look again soon, then less often.
        let mut pause = Duration::from_millis(1);
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) => {
                    let holder = read_pid(&mut file);
                    if !told {
                        on_wait(holder);
                        told = true;
                    }
                    if start.elapsed() >= timeout {
                        return Err(LockError::Timeout {
                            holder,
                            waited: start.elapsed(),
                        });
                    }
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                Err(TryLockError::Error(e)) => return Err(io(e)),
            }
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        write!(file, "{}", std::process::id()).map_err(io)?;
        Ok(FileLock { _file: file })
    }
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut s = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut s).ok()?;
    s.trim().parse().ok()
}

/// How long to wait for a project lock: `ENVUP_LOCK_TIMEOUT` seconds, or 120.
pub fn timeout_from_env() -> Duration {
    std::env::var("ENVUP_LOCK_TIMEOUT")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s >= 0.0)
        .map_or(Duration::from_secs(120), Duration::from_secs_f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn second_holder_waits_then_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lock");
        let _held = FileLock::acquire(&p, Duration::ZERO, &|_| {}).unwrap();
        let waited = Cell::new(None);
        let e = FileLock::acquire(&p, Duration::from_millis(120), &|pid| waited.set(Some(pid)))
            .unwrap_err();
        assert!(matches!(e, LockError::Timeout { .. }));
        assert_eq!(waited.get(), Some(Some(std::process::id())));
    }

    #[test]
    fn released_lock_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lock");
        drop(FileLock::acquire(&p, Duration::ZERO, &|_| {}).unwrap());
        FileLock::acquire(&p, Duration::ZERO, &|_| panic!("should not wait")).unwrap();
    }
}
