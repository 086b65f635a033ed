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
    #[error("{} holds the state of project {}, not of this one", .dir.display(), .other.display())]
    OtherProject { dir: PathBuf, other: PathBuf },
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
    remove_stale_temps(dir);
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!("{TEMP}{}-", std::process::id()))
        .tempfile_in(dir)
        .map_err(err)?;
    tmp.write_all(bytes).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    tmp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}

/// What a file being written is called until it is whole: `.tmp-PID-…`,
/// after the process that writes it.
const TEMP: &str = ".tmp-";

/// Remove the files that writers killed midway left in `dir` (their
/// process is gone); a live writer's stay.
fn remove_stale_temps(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.filter_map(Result::ok) {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(TEMP))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<i32>().ok())
        else {
            continue;
        };
        let gone = pid > 0
            && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
                == Err(nix::errno::Errno::ESRCH);
        if gone {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// The recorded states of the machines a project state directory holds
/// (`state_dir/machines/NAME/state.json`, where readable), each named
/// after its directory (the record's own name is evidence only).
pub fn machine_states(state_dir: &Path) -> Vec<MachineState> {
    let Ok(entries) = std::fs::read_dir(state_dir.join("machines")) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let mut st = read_json::<MachineState>(&e.path().join("state.json")).ok()??;
            st.name = name;
            Some(st)
        })
        .collect()
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

/// Where one project's state lives: `$ENVUP_HOME/projects/KEY/`, outside
/// the project, so that no share of the project's directory shows a
/// machine its keys or lets it edit the records of its next start.
#[derive(Debug, Clone)]
pub struct ProjectState {
    dir: PathBuf,
    /// The directory holding the project's Envfile.
    root: PathBuf,
    /// The state is still in the project's `.envup/` (`relocate` could not
    /// move it yet).
    legacy: bool,
}

/// The file in a project's state directory that names the project.
const PROJECT_FILE: &str = "project";

impl ProjectState {
    /// The state of the project whose Envfile is in `root`, under `home`
    /// (`ENVUP_HOME`).
    pub fn of(home: &Path, root: &Path) -> Self {
        Self {
            dir: home.join("projects").join(project_key(root)),
            root: root.to_owned(),
            legacy: false,
        }
    }

    /// The state an earlier envup kept in the project's `.envup/`, used
    /// where it is until it can be moved.
    pub fn in_project(root: &Path) -> Self {
        Self {
            dir: Self::legacy_dir(root),
            root: root.to_owned(),
            legacy: true,
        }
    }

    /// Whether the state is still inside the project (see [`Self::in_project`]).
    pub fn is_legacy(&self) -> bool {
        self.legacy
    }

    /// The state directory earlier envups kept inside the project.
    pub fn legacy_dir(root: &Path) -> PathBuf {
        root.join(".envup")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A machine's identity on the host, from which its host resources are
    /// named (`backend::host_name`): the path `ROOT/.envup/machines/NAME`,
    /// where earlier envups kept the machine's state, so that a machine
    /// made by one of them keeps its names. Only a name is made from it.
    pub fn identity(&self, name: &str) -> PathBuf {
        Self::legacy_dir(&self.root).join("machines").join(name)
    }

    /// Fill in where `state`'s machine keeps its files and its identity.
    pub fn locate(&self, state: &mut MachineState) {
        state.dir = Some(self.machine_dir(&state.name));
        state.identity = Some(self.identity(&state.name));
    }

    /// The project a state directory belongs to, as its `project` file
    /// names it.
    pub fn recorded_root(dir: &Path) -> Option<PathBuf> {
        use std::os::unix::ffi::OsStrExt;
        let bytes = std::fs::read(dir.join(PROJECT_FILE)).ok()?;
        Some(PathBuf::from(std::ffi::OsStr::from_bytes(&bytes)))
    }

    /// Make the state directory (0700) and name the project in it; a
    /// directory that names another project is refused (two project paths
    /// whose hashes met, or a damaged file).
    pub fn ensure(&self) -> Result<(), StateError> {
        use std::os::unix::ffi::OsStrExt;
        ensure_private_dir(&self.dir).map_err(|e| StateError::Write(self.dir.clone(), e))?;
        if self.legacy {
            return Ok(());
        }
        match Self::recorded_root(&self.dir) {
            Some(r) if r == self.root => Ok(()),
            Some(r) => Err(StateError::OtherProject {
                dir: self.dir.clone(),
                other: r,
            }),
            None => write_atomic(
                &self.dir.join(PROJECT_FILE),
                self.root.as_os_str().as_bytes(),
            ),
        }
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
            // The record's own name is evidence only: it is the file's.
            s.name = name.to_owned();
            self.locate(s);
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
        self.ensure()?;
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

/// A project's state directory name: its directory's last part (letters,
/// digits, `.`, `-` and `_`, at most 32) for people, and 16 hex digits of
/// a hash of the whole path, so that two projects never share one.
pub fn project_key(root: &Path) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(root.as_os_str().as_encoded_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let base: String = root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .take(32)
        .collect();
    let base = base.trim_start_matches('.');
    if base.is_empty() {
        hex[..16].to_owned()
    } else {
        format!("{base}-{}", &hex[..16])
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
    fn a_killed_writers_file_goes_a_live_ones_stays() {
        let dir = tempfile::tempdir().unwrap();
        // No process has this number (above the kernel's largest).
        let dead = dir.path().join(".tmp-999999999-x1");
        let live = dir.path().join(format!(".tmp-{}-x2", std::process::id()));
        let other = dir.path().join(".tmp-notapid");
        for f in [&dead, &live, &other] {
            std::fs::write(f, b"half").unwrap();
        }
        write_atomic(&dir.path().join("state.json"), b"whole").unwrap();
        assert!(!dead.exists());
        assert!(live.exists());
        assert!(other.exists());
    }

    #[test]
    fn newer_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ps = ProjectState::of(dir.path(), Path::new("/p"));
        let mut st = MachineState::new("web", crate::backend::BackendName::new("fake").unwrap());
        st.format = machine::FORMAT + 1;
        ps.save(&st).unwrap();
        assert!(matches!(ps.load("web"), Err(StateError::Format { .. })));
        assert!(ps.load("db").unwrap().is_none());
    }
}
