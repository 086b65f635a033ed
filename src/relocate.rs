//! Moving a project's state out of the project. Earlier envups kept it in
//! `.envup/` beside the Envfile, where a share of the project directory
//! showed it to machines (their private keys, the records of their next
//! start). The first command that finds it there moves it to the
//! project's directory under `$ENVUP_HOME/projects/` in one rename, with
//! the host-wide claims and the index that name it, as long as none of its
//! machines is recorded as running (a running machine's processes name
//! its directory). Machines keep their names on the host: those are made
//! from the project's directory and the machine's name, not from where
//! the state lives.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::state::index::Index;
use crate::state::{ProjectState, StateError, Status};

/// What became of a project's `.envup/`.
#[derive(Debug)]
pub enum Relocated {
    /// There was none (or it was moved by an earlier command).
    Nothing,
    /// It was moved, from the first path to the second.
    Moved(PathBuf, PathBuf),
    /// It stays where it is for now, for the reason given; the project's
    /// commands use it there.
    Stays(String),
    /// It is not envup's (not a directory of this user's, private to it):
    /// left alone, for the reason given, and not used.
    NotOurs(String),
}

/// Move `project`'s `.envup/`, if it has one, to its state directory.
pub fn relocate(project: &ProjectState, index: &Index) -> Result<Relocated, StateError> {
    let legacy = ProjectState::legacy_dir(project.root());
    let Ok(md) = std::fs::symlink_metadata(&legacy) else {
        return Ok(Relocated::Nothing);
    };
    // A checked-out repository may carry a `.envup`: only a private
    // directory of this user's is one envup made.
    let me = nix::unistd::geteuid().as_raw();
    if !md.is_dir() || md.uid() != me || md.mode() & 0o077 != 0 {
        return Ok(Relocated::NotOurs(format!(
            "{} is not a directory envup made (one private to this user): envup leaves it \
             alone and keeps this project's state in {}",
            legacy.display(),
            project.dir().display()
        )));
    }
    if project.dir().join("machines").exists() {
        return Ok(Relocated::Stays(format!(
            "this project has state both in {} (an earlier envup's) and in {}: envup uses \
             the second and leaves the first alone; `envup destroy` with the envup that made \
             the first, or remove it",
            legacy.display(),
            project.dir().display()
        )));
    }
    // One envup at a time: the earlier layout's lock, then a look at what
    // runs.
    let _lock = crate::state::lock::FileLock::acquire(
        &legacy.join("lock"),
        crate::state::lock::timeout_from_env(),
        &|_| {},
    )
    .map_err(|e| match e {
        crate::state::lock::LockError::Io(p, e) => StateError::Write(p, e),
        crate::state::lock::LockError::Timeout { holder, waited } => StateError::LockTimeout {
            dir: legacy.clone(),
            holder,
            waited_secs: waited.as_secs(),
        },
    })?;
    let running = running_machines(&legacy);
    if !running.is_empty() {
        return Ok(Relocated::Stays(format!(
            "machine{} {} still run{} with {} state in {}, where a share of the project \
             shows it to machines; `envup halt` {}, and the next command moves the state to {}",
            if running.len() == 1 { "" } else { "s" },
            running.join(", "),
            if running.len() == 1 { "s" } else { "" },
            if running.len() == 1 { "its" } else { "their" },
            legacy.display(),
            if running.len() == 1 { "it" } else { "them" },
            project.dir().display()
        )));
    }
    let parent = project
        .dir()
        .parent()
        .expect("a state directory has a parent");
    crate::state::ensure_private_dir(parent).map_err(|e| StateError::Write(parent.into(), e))?;
    // A directory left empty by a command that made it (`status` of a new
    // project) is in the way of the rename.
    if std::fs::remove_dir(project.dir()).is_err() && project.dir().exists() {
        let _ = std::fs::remove_file(project.dir().join("project"));
        let _ = std::fs::remove_file(project.dir().join("lock"));
        let _ = std::fs::remove_dir(project.dir());
    }
    match std::fs::rename(&legacy, project.dir()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(nix::libc::EXDEV) => {
            return Ok(Relocated::Stays(format!(
                "{} and {} are on different file systems, so envup cannot move the \
                 project's state in one step; set ENVUP_HOME to a directory on the \
                 project's file system, or `envup destroy` the machines and `up` them again",
                legacy.display(),
                project.dir().display()
            )));
        }
        Err(e) => return Err(StateError::Write(project.dir().to_owned(), e)),
    }
    project.ensure()?;
    // What names the old place, host-wide: the claims of id blocks and of
    // subnets, and the index.
    if nix::unistd::geteuid().is_root() {
        crate::backend::rootfs::ids::Claims::host().rehome(&legacy, project.dir());
        crate::network::rehome_claims(&legacy, project.dir());
    }
    index.rehome(&legacy, project.dir())?;
    Ok(Relocated::Moved(legacy, project.dir().to_owned()))
}

/// The machines of the state in `state_dir` whose state says they run.
fn running_machines(state_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = crate::state::machine_states(state_dir)
        .into_iter()
        .filter(|st| st.status == Status::Running)
        .map(|st| st.name)
        .collect();
    names.sort();
    names
}

/// `path` with its prefix `from` replaced by `to`, if it has it.
pub fn rehomed(path: &Path, from: &Path, to: &Path) -> Option<PathBuf> {
    path.strip_prefix(from).ok().map(|rest| {
        if rest.as_os_str().is_empty() {
            to.to_owned()
        } else {
            to.join(rest)
        }
    })
}
