//! The box store: boxes unpacked once, under the sha256 of the box file.
//!
//! ```text
//! $ENVUP_HOME/boxes-v1/
//!   <sha256>/box.toml, artifacts…, meta.json   one box, read-only to machines
//!   tmp/                                       unpacking in progress
//!   downloads/<key>.part                       downloads to resume
//! ```
//!
//! A box appears under its digest only when it is whole and checked: it is
//! unpacked into `tmp/` and renamed into place, so a failed or interrupted
//! add leaves nothing behind in the store.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::archive::{self, ArchiveError};
use super::manifest::Manifest;
use super::staging::Staging;
use super::vagrant;
use super::{BoxError, io_err};

/// Where a box came from, and the name and version it is stored under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub name: String,
    pub version: String,
    /// The URL or path it was added from.
    pub source: String,
    /// Seconds since the epoch.
    pub added: u64,
}

#[derive(Debug, Clone)]
pub struct StoredBox {
    pub digest: super::Digest,
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub meta: Meta,
}

impl StoredBox {
    /// The path of an artifact (`rootfs`, `disk`, `kernel`, `initrd`).
    pub fn artifact(&self, name: &str) -> Option<PathBuf> {
        self.manifest
            .artifacts
            .get(name)
            .map(|a| self.dir.join(&a.path))
    }

    pub fn version(&self) -> Option<semver::Version> {
        lenient_version(&self.meta.version)
    }
}

/// A version as semver, padding `12` and `12.8` to `12.0.0` and `12.8.0`.
pub fn lenient_version(v: &str) -> Option<semver::Version> {
    let v = v.trim().trim_start_matches('v');
    semver::Version::parse(v).ok().or_else(|| {
        let parts: Vec<&str> = v.split('.').collect();
        match parts.len() {
            1 => semver::Version::parse(&format!("{v}.0.0")).ok(),
            2 => semver::Version::parse(&format!("{v}.0")).ok(),
            _ => None,
        }
    })
}

/// A box whose bytes are stored already: it keeps the one name and version
/// it is stored under, so a different `naming` is refused rather than
/// dropped without a word.
fn already_stored(b: StoredBox, naming: &Naming) -> Result<StoredBox, BoxError> {
    let differs =
        |given: &Option<String>, stored: &str| given.as_deref().is_some_and(|g| g != stored);
    if differs(&naming.name, &b.meta.name) || differs(&naming.version, &b.meta.version) {
        return Err(BoxError::StoredAs {
            name: b.meta.name.clone(),
            version: b.meta.version.clone(),
            asked: format!(
                "{} {}",
                naming.name.as_deref().unwrap_or(&b.meta.name),
                naming.version.as_deref().unwrap_or(&b.meta.version)
            ),
        });
    }
    Ok(b)
}

/// Name and version given on the command line or by a catalog, which win
/// over what the box says of itself.
#[derive(Debug, Clone, Default)]
pub struct Naming {
    pub name: Option<String>,
    pub version: Option<String>,
}

pub struct Store {
    root: PathBuf,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Store {
    pub fn new(home: &Path) -> Self {
        Self {
            root: home.join("boxes-v1"),
        }
    }

    /// The store's own directory.
    pub fn root_dir(&self) -> &Path {
        &self.root
    }

    pub fn downloads(&self) -> PathBuf {
        self.root.join("downloads")
    }

    fn tmp(&self) -> Result<Staging, BoxError> {
        Staging::new(&self.root).map_err(io_err(
            "make a staging directory in",
            &self.root.join("tmp"),
        ))
    }

    /// What killed envups left half made in the store.
    pub fn leftovers(&self) -> Vec<PathBuf> {
        super::staging::leftovers(&self.root)
    }

    fn load(&self, dir: &Path) -> Option<StoredBox> {
        let digest = super::Digest::parse(dir.file_name()?.to_str()?).ok()?;
        let manifest =
            Manifest::parse(&std::fs::read_to_string(dir.join("box.toml")).ok()?).ok()?;
        let meta: Meta =
            serde_json::from_slice(&std::fs::read(dir.join("meta.json")).ok()?).ok()?;
        Some(StoredBox {
            digest,
            dir: dir.to_owned(),
            manifest,
            meta,
        })
    }

    /// The stored box with this digest.
    pub fn get(&self, digest: &str) -> Option<StoredBox> {
        if !super::manifest::is_hex_digest(digest) {
            return None;
        }
        self.load(&self.root.join(digest))
    }

    /// Every stored box, by name then newest version first.
    pub fn list(&self) -> Result<Vec<StoredBox>, BoxError> {
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io_err("read", &self.root)(e)),
        };
        for e in entries.flatten() {
            if let Some(b) = self.load(&e.path()) {
                out.push(b);
            }
        }
        out.sort_by(|a, b| {
            a.meta
                .name
                .cmp(&b.meta.name)
                .then_with(|| b.version().cmp(&a.version()))
        });
        Ok(out)
    }

    /// Add the box file at `path` (an envup box, or a Vagrant libvirt or lxc
    /// box), checking it against `expected` when given.
    pub fn add_file(
        &self,
        path: &Path,
        expected: Option<&super::Digest>,
        naming: &Naming,
        source: &str,
    ) -> Result<StoredBox, BoxError> {
        if let Some(n) = &naming.name {
            super::check_name("name", n)?;
        }
        if let Some(v) = &naming.version {
            super::check_name("version", v)?;
        }
        if let Some(d) = expected
            && let Some(b) = self.get(d)
        {
            return already_stored(b, naming);
        }
        let tmp = self.tmp()?;
        let unpacked = if vagrant::is_vagrant_box(path).map_err(io_err("read", path))? {
            vagrant::import(path, tmp.path(), naming)?
        } else {
            archive::unpack_file(path, tmp.path()).map_err(|e| match e {
                ArchiveError::Read(err) => io_err("read", path)(err),
                other => BoxError::unpacking(source, other),
            })?
        };
        if let Some(exp) = expected
            && exp.as_str() != unpacked.digest
        {
            return Err(BoxError::Checksum {
                what: source.to_owned(),
                expected: exp.to_string(),
                actual: unpacked.digest,
            });
        }
        let meta = Meta {
            name: naming
                .name
                .clone()
                .unwrap_or_else(|| unpacked.manifest.name.clone()),
            version: naming
                .version
                .clone()
                .unwrap_or_else(|| unpacked.manifest.version.clone()),
            source: source.to_owned(),
            added: now(),
        };
        let meta_path = tmp.path().join("meta.json");
        std::fs::write(
            &meta_path,
            serde_json::to_vec_pretty(&meta).expect("meta serializes"),
        )
        .map_err(io_err("write", &meta_path))?;
        let dest = self.root.join(&unpacked.digest);
        crate::fault::point("box:staged");
        let mut tmp = tmp;
        match tmp.rename_to(&dest) {
            Ok(()) => {}
            // The same bytes are stored already (by an earlier add, or
            // by someone meanwhile): those will do, under their name.
            Err(_) if dest.join("box.toml").exists() => {
                drop(tmp);
                if let Some(b) = self.get(&unpacked.digest) {
                    return already_stored(b, naming);
                }
            }
            Err(e) => return Err(io_err("move into place", &dest)(e)),
        }
        self.get(&unpacked.digest).ok_or_else(|| {
            io_err("read back", &dest)(std::io::Error::other("stored box is unreadable"))
        })
    }

    /// Remove a stored box. It disappears from the store at once (a rename),
    /// then its files are deleted.
    pub fn remove(&self, b: &StoredBox) -> Result<(), BoxError> {
        let tmp = self.tmp()?;
        let grave = tmp.path().join("removed");
        std::fs::rename(&b.dir, &grave).map_err(io_err("remove", &b.dir))?;
        // A rootless user's unpacked rootfs holds files of the user's
        // reserved ids, which only the user namespace's root removes.
        crate::userns::remove_all(&grave).map_err(io_err("remove", &grave))?;
        drop(tmp);
        Ok(())
    }

    /// Hash a stored box's artifacts again; the names of those that differ
    /// from box.toml, with what they hash to now.
    pub fn verify(&self, b: &StoredBox) -> Result<Vec<(String, String)>, BoxError> {
        let mut bad = Vec::new();
        for (name, a) in &b.manifest.artifacts {
            let p = b.dir.join(&a.path);
            let actual = match archive::sha256_file(&p) {
                Ok(d) => d,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => "(missing)".into(),
                Err(e) => return Err(io_err("read", &p)(e)),
            };
            if actual != a.sha256 {
                bad.push((name.clone(), actual));
            }
        }
        Ok(bad)
    }

    /// Remove what interrupted adds and unpacks left (whose maker is gone)
    /// and downloads left more than an hour ago (younger ones may belong
    /// to an envup still at work, and are resumed).
    pub fn clean_leftovers(&self) -> Result<usize, BoxError> {
        let hour = std::time::Duration::from_secs(3600);
        let tmp = self.root.join("tmp");
        let mut n = super::staging::remove_leftovers(&self.root)
            .map_err(io_err("remove leftovers in", &tmp))?;
        let downloads = self.downloads();
        if let Ok(entries) = std::fs::read_dir(&downloads) {
            for e in entries.flatten() {
                let old = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > hour);
                if old {
                    let p = e.path();
                    let res = if p.is_dir() {
                        crate::userns::remove_all(&p)
                    } else {
                        std::fs::remove_file(&p)
                    };
                    res.map_err(io_err("remove", &p))?;
                    n += 1;
                }
            }
        }
        Ok(n)
    }
}
