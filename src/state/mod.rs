//! Project state under `.envup/`, the project lock, and the host-wide
//! machine index behind `global-status`.

pub mod bytes;
pub mod index;
pub mod lock;
pub mod machine;

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use machine::{Event, MachineState, Status};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read {}", .0.display())]
    Read(PathBuf, #[source] std::io::Error),
    #[error("cannot write {}", .0.display())]
    Write(PathBuf, #[source] std::io::Error),
    #[error("{} is damaged", .0.display())]
    Parse(PathBuf, #[source] serde_json::Error),
    #[error("{} was written by a newer envup (state format {found}, this envup reads {known})", .path.display())]
    Format {
        path: PathBuf,
        found: u32,
        known: u32,
    },
    #[error("machine `{machine}` cannot go from {from} on `{event}`")]
    Transition {
        machine: String,
        from: Status,
        event: Event,
    },
    #[error(
        "another envup{} is still working in {}; gave up after {}s (set ENVUP_LOCK_TIMEOUT to wait longer)",
        .holder.map(|p| format!(" (pid {p})")).unwrap_or_default(),
        .dir.display(),
        .waited_secs
    )]
    LockTimeout {
        dir: PathBuf,
        holder: Option<u32>,
        waited_secs: u64,
    },
    #[error("cannot find a home directory for envup's data; set ENVUP_HOME")]
    NoHome,
}

/// envup's data directory: `ENVUP_HOME`, or the platform's data directory.
pub fn envup_home() -> Result<PathBuf, StateError> {
    if let Some(h) = std::env::var_os("ENVUP_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(h));
    }
    directories::ProjectDirs::from("", "", "envup")
        .map(|d| d.data_dir().to_path_buf())
        .ok_or(StateError::NoHome)
}

/// Make `dir` and its missing parents, each private to this user (0700):
/// project state, the store and downloads are nobody else's to read.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Make `dir` (and its parents) and leave it 0700 even when an older
/// envup made it 0755.
pub fn ensure_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    create_private_dir(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Write `bytes` to `path` so that readers see the old file or the new one,
/// never a part: a temp file in the same directory, synced, then renamed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let err = |e| StateError::Write(path.to_owned(), e);
    create_private_dir(dir).map_err(err)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(err)?;
    tmp.write_all(bytes).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    tmp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}

pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), StateError> {
    let mut bytes = serde_json::to_vec_pretty(value).expect("state serializes");
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

/// Read a JSON file; `None` when it does not exist.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, StateError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StateError::Parse(path.to_owned(), e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StateError::Read(path.to_owned(), e)),
    }
}

/// The `.envup/` directory of one project.
#[derive(Debug, Clone)]
pub struct ProjectState {
    dir: PathBuf,
}

impl ProjectState {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn machine_dir(&self, name: &str) -> PathBuf {
        self.dir.join("machines").join(name)
    }

    fn state_file(&self, name: &str) -> PathBuf {
        self.machine_dir(name).join("state.json")
    }

    /// The machine's recorded state; `None` when it was never created here.
    pub fn load(&self, name: &str) -> Result<Option<MachineState>, StateError> {
        let path = self.state_file(name);
        let mut state: Option<MachineState> = read_json(&path)?;
        if let Some(s) = &mut state {
            s.dir = Some(self.machine_dir(name));
        }
        if let Some(s) = &state
            && s.format > machine::FORMAT
        {
            return Err(StateError::Format {
                path,
                found: s.format,
                known: machine::FORMAT,
            });
        }
        Ok(state)
    }

    pub fn save(&self, state: &MachineState) -> Result<(), StateError> {
        write_json(&self.state_file(&state.name), state)
    }

    /// Remove everything envup keeps for a machine.
    pub fn remove(&self, name: &str) -> Result<(), StateError> {
        let dir = self.machine_dir(name);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StateError::Write(dir, e)),
            _ => Ok(()),
        }
    }

    /// Take the project lock (one envup at a time per project).
    pub fn lock(
        &self,
        timeout: std::time::Duration,
        on_wait: &dyn Fn(Option<u32>),
    ) -> Result<lock::FileLock, StateError> {
        ensure_private_dir(&self.dir).map_err(|e| StateError::Write(self.dir.clone(), e))?;
        lock::FileLock::acquire(&self.dir.join("lock"), timeout, on_wait).map_err(|e| match e {
            lock::LockError::Io(p, e) => StateError::Write(p, e),
            lock::LockError::Timeout { holder, waited } => StateError::LockTimeout {
                dir: self.dir.clone(),
                holder,
                waited_secs: waited.as_secs(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b/state.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let leftovers: Vec<_> = std::fs::read_dir(p.parent().unwrap())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn newer_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ps = ProjectState::new(dir.path().to_owned());
        let mut st = MachineState::new("web", crate::backend::BackendName::new("fake").unwrap());
        st.format = machine::FORMAT + 1;
        ps.save(&st).unwrap();
        assert!(matches!(ps.load("web"), Err(StateError::Format { .. })));
        assert!(ps.load("db").unwrap().is_none());
    }
}
