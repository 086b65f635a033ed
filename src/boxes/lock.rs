//! `Envfile.lock`: the box each machine uses, pinned by the sha256 of the
//! box file. Written by `envup up` and `envup lock`, checked in.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::state::{StateError, write_atomic};

pub const FILE_NAME: &str = "Envfile.lock";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot read {}", .0.display())]
    Read(PathBuf, #[source] std::io::Error),
    #[error("{} is not a valid lock file: {message}", .path.display())]
    Parse { path: PathBuf, message: String },
    #[error(transparent)]
    Write(#[from] StateError),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockEntry {
    /// The Envfile's `box`, as written.
    #[serde(rename = "box")]
    pub box_: String,
    pub version: String,
    /// Where the bytes came from: a URL, or a path relative to the Envfile.
    pub url: String,
    pub sha256: crate::ident::Digest,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lockfile {
    pub version: u32,
    #[serde(default)]
    pub machines: BTreeMap<String, LockEntry>,
}

impl Lockfile {
    pub fn path(root: &Path) -> PathBuf {
        root.join(FILE_NAME)
    }

    /// The lock file beside the Envfile; empty when there is none.
    pub fn read(root: &Path) -> Result<Lockfile, LockError> {
        let path = Self::path(root);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let lock: Lockfile = toml::from_str(&text).map_err(|e| LockError::Parse {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
                // The digest was checked as it was read; the rest is text
                // that is printed and matched, never a path of its own.
                for (machine, e) in &lock.machines {
                    let bad = [&e.box_, &e.url]
                        .iter()
                        .any(|s| s.chars().any(char::is_control))
                        || crate::ident::box_name_problem(&e.version).is_some();
                    if bad {
                        return Err(LockError::Parse {
                            path,
                            message: format!(
                                "the entry for `{}` has a box, version or url that is not usable",
                                crate::ident::printable(machine)
                            ),
                        });
                    }
                }
                if lock.version != 1 {
                    return Err(LockError::Parse {
                        path,
                        message: format!(
                            "version {} is not one this envup reads (1)",
                            lock.version
                        ),
                    });
                }
                Ok(lock)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Lockfile {
                version: 1,
                machines: BTreeMap::new(),
            }),
            Err(e) => Err(LockError::Read(path, e)),
        }
    }

    pub fn write(&self, root: &Path) -> Result<(), LockError> {
        let text = format!(
            "# Written by envup (`envup lock`, `envup up`, `envup update`). Check it in:\n# every machine's box is pinned by the sha256 of the box file.\n\n{}",
            toml::to_string(self).expect("lock files serialize")
        );
        write_atomic(&Self::path(root), text.as_bytes())?;
        Ok(())
    }

    /// The entry for `machine`, if it still fits the Envfile's `box` and
    /// `box_version`.
    pub fn valid_entry(
        &self,
        machine: &str,
        box_: &str,
        req: Option<&semver::VersionReq>,
    ) -> Option<&LockEntry> {
        self.machines.get(machine).filter(|e| {
            e.box_ == box_
                && req.is_none_or(|r| {
                    super::store::lenient_version(&e.version).is_some_and(|v| r.matches(&v))
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_validity() {
        let dir = tempfile::tempdir().unwrap();
        let mut lock = Lockfile::read(dir.path()).unwrap();
        assert!(lock.machines.is_empty());
        lock.machines.insert(
            "web".into(),
            LockEntry {
                box_: "debian/bookworm".into(),
                version: "12.8.0".into(),
                url: "https://x/b.box".into(),
                sha256: crate::ident::Digest::parse(&"ab".repeat(32)).unwrap(),
            },
        );
        lock.write(dir.path()).unwrap();
        let back = Lockfile::read(dir.path()).unwrap();
        assert_eq!(back, lock);
        assert!(back.valid_entry("web", "debian/bookworm", None).is_some());
        assert!(back.valid_entry("web", "other", None).is_none());
        let req = semver::VersionReq::parse(">=13").unwrap();
        assert!(
            back.valid_entry("web", "debian/bookworm", Some(&req))
                .is_none()
        );
        std::fs::write(
            Lockfile::path(dir.path()),
            "version = 1\n[machines.web]\nbox = 1\n",
        )
        .unwrap();
        assert!(matches!(
            Lockfile::read(dir.path()),
            Err(LockError::Parse { .. })
        ));
    }
}
