//! The host-wide list of machines envup created, behind `global-status`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::lock::FileLock;
use super::{StateError, read_json, write_json};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub project: String,
    /// The directory holding the project's Envfile.
    #[serde(with = "crate::state::bytes::path")]
    pub root: PathBuf,
    pub machine: String,
    pub backend: String,
    /// The machine's state directory.
    #[serde(with = "crate::state::bytes::path")]
    pub state_dir: PathBuf,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct IndexFile {
    machines: Vec<Entry>,
}

pub struct Index {
    path: PathBuf,
    lock: PathBuf,
    /// Where the projects' states are, from which a damaged index is made
    /// again.
    projects: PathBuf,
}

impl Index {
    pub fn new(home: &Path) -> Self {
        Self {
            path: home.join("machines.json"),
            lock: home.join("machines.lock"),
            projects: home.join("projects"),
        }
    }

    pub fn entries(&self) -> Result<Vec<Entry>, StateError> {
        Ok(self.load()?.0.machines)
    }

    /// The index, and whether it was made again: an index that cannot be
    /// parsed (emptied, cut short by a full disk) is only a list of what
    /// the projects' states hold, so it is made from them.
    fn load(&self) -> Result<(IndexFile, bool), StateError> {
        match read_json::<IndexFile>(&self.path) {
            Ok(f) => Ok((f.unwrap_or_default(), false)),
            Err(StateError::Parse(..)) => Ok((
                IndexFile {
                    machines: self.rebuilt(),
                },
                true,
            )),
            Err(e) => Err(e),
        }
    }

    /// Every machine a project state under `projects/` records.
    fn rebuilt(&self) -> Vec<Entry> {
        let mut out = Vec::new();
        let Ok(projects) = std::fs::read_dir(&self.projects) else {
            return out;
        };
        for dir in projects.filter_map(Result::ok).map(|e| e.path()) {
            let Some(root) = super::ProjectState::recorded_root(&dir) else {
                continue;
            };
            for state in super::machine_states(&dir) {
                let state_dir = dir.join("machines").join(&state.name);
                out.push(Entry {
                    project: root
                        .file_name()
                        .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
                    root: root.clone(),
                    machine: state.name,
                    backend: state.backend.to_string(),
                    state_dir,
                });
            }
        }
        out.sort_by(|a, b| (&a.root, &a.machine).cmp(&(&b.root, &b.machine)));
        out
    }

    /// Read, change and write the index under its lock.
    fn update<T>(&self, f: impl FnOnce(&mut Vec<Entry>) -> T) -> Result<T, StateError> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| StateError::Write(dir.to_owned(), e))?;
        }
        let _lock = FileLock::acquire(&self.lock, Duration::from_secs(30), &|_| {}).map_err(
            |e| match e {
                super::lock::LockError::Io(p, e) => StateError::Write(p, e),
                super::lock::LockError::Timeout { holder, waited } => StateError::LockTimeout {
                    dir: self.lock.clone(),
                    holder,
                    waited_secs: waited.as_secs(),
                },
            },
        )?;
        let (mut file, rebuilt) = self.load()?;
        if rebuilt {
            // The damaged file is kept beside, for whoever wants to see it
            // (copied: the new index replaces it whole below).
            let aside = self.path.with_extension("json.damaged");
            let _ = std::fs::copy(&self.path, aside);
        }
        let out = f(&mut file.machines);
        write_json(&self.path, &file)?;
        Ok(out)
    }

    /// Add a machine, or refresh its entry.
    pub fn record(&self, entry: Entry) -> Result<(), StateError> {
        self.update(|list| {
            list.retain(|e| !(e.root == entry.root && e.machine == entry.machine));
            list.push(entry);
        })
    }

    pub fn forget(&self, root: &Path, machine: &str) -> Result<(), StateError> {
        self.update(|list| list.retain(|e| !(e.root == root && e.machine == machine)))
    }

    /// Entries whose state directory is under `from` have it under `to`
    /// (a project's state moved, `relocate`).
    pub fn rehome(&self, from: &Path, to: &Path) -> Result<(), StateError> {
        if !self.path.exists() {
            return Ok(());
        }
        self.update(|list| {
            for e in list.iter_mut() {
                if let Ok(rest) = e.state_dir.strip_prefix(from) {
                    e.state_dir = to.join(rest);
                }
            }
        })
    }

    /// Drop the entries for which `gone` says true; return them.
    pub fn prune(&self, gone: impl Fn(&Entry) -> bool) -> Result<Vec<Entry>, StateError> {
        self.update(|list| {
            let (dropped, kept) = std::mem::take(list).into_iter().partition(|e| gone(e));
            *list = kept;
            dropped
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(root: &Path, machine: &str) -> Entry {
        Entry {
            project: "p".into(),
            root: root.to_owned(),
            machine: machine.into(),
            backend: "fake".into(),
            state_dir: root.join(".envup/machines").join(machine),
        }
    }

    #[test]
    fn record_forget_prune() {
        let home = tempfile::tempdir().unwrap();
        let idx = Index::new(home.path());
        let root = home.path().join("proj");
        idx.record(entry(&root, "a")).unwrap();
        idx.record(entry(&root, "b")).unwrap();
        idx.record(entry(&root, "a")).unwrap();
        assert_eq!(idx.entries().unwrap().len(), 2);
        idx.forget(&root, "a").unwrap();
        assert_eq!(idx.entries().unwrap().len(), 1);
        let dropped = idx.prune(|e| !e.root.exists()).unwrap();
        assert_eq!(dropped.len(), 1);
        assert!(idx.entries().unwrap().is_empty());
    }

    #[test]
    fn a_damaged_index_is_made_from_the_projects() {
        let home = tempfile::tempdir().unwrap();
        let root = home.path().join("proj");
        std::fs::create_dir_all(&root).unwrap();
        let project = crate::state::ProjectState::of(home.path(), &root);
        project.ensure().unwrap();
        for name in ["web", "db"] {
            let st = crate::state::MachineState::new(
                name,
                crate::backend::BackendName::new("fake").unwrap(),
            );
            project.save(&st).unwrap();
        }
        let idx = Index::new(home.path());
        std::fs::write(home.path().join("machines.json"), "").unwrap();
        let names: Vec<String> = idx
            .entries()
            .unwrap()
            .into_iter()
            .map(|e| e.machine)
            .collect();
        assert_eq!(names, ["db", "web"]);
        // Changed, it is written whole again; the damaged file kept beside.
        idx.forget(&root, "db").unwrap();
        let left = idx.entries().unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].root, root);
        assert_eq!(left[0].backend, "fake");
        assert!(home.path().join("machines.json.damaged").exists());
    }
}
