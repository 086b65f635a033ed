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
}

impl Index {
    pub fn new(home: &Path) -> Self {
        Self {
            path: home.join("machines.json"),
            lock: home.join("machines.lock"),
        }
    }

    pub fn entries(&self) -> Result<Vec<Entry>, StateError> {
        Ok(read_json::<IndexFile>(&self.path)?
            .unwrap_or_default()
            .machines)
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
        let mut file = read_json::<IndexFile>(&self.path)?.unwrap_or_default();
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
}
