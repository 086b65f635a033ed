//! `box.toml`: what a box is and which files it carries.

use std::path::{Component, Path};

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use crate::backend::{Backend, Registry};

/// The artifacts a box may carry, and the backends each serves.
pub const ARTIFACTS: [&str; 4] = ["rootfs", "disk", "kernel", "initrd"];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    #[serde(default = "default_arch")]
    pub arch: String,
    #[serde(default = "default_user")]
    pub ssh_user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub artifacts: IndexMap<String, Artifact>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<Boot>,
    /// How the box lets envup in before the machine's own keys are in
    /// place, when it cannot take them before it boots (a Vagrant box).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_login: Option<crate::ssh::first_login::FirstLogin>,
}

fn default_arch() -> String {
    "x86_64".into()
}

fn default_user() -> String {
    "root".into()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    /// Where it is inside the box (and inside the store entry).
    pub path: String,
    /// Hex sha256 of its bytes.
    pub sha256: String,
    /// Its length in bytes; unpacking refuses anything else.
    pub size: u64,
    /// For `disk`: `qcow2` or `raw`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Boot {
    pub cmdline: String,
}

/// Why a manifest cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("box.toml is not valid: {0}")]
    Syntax(String),
    #[error("box.toml: unknown artifact `{0}` (a box carries rootfs, disk, kernel and initrd)")]
    UnknownArtifact(String),
    #[error(
        "box.toml: artifact `{name}` has path `{path}`, which is not a plain relative path inside the box"
    )]
    UnsafePath { name: String, path: String },
    #[error("box.toml: artifacts `{0}` and `{1}` have the same path")]
    SamePath(String, String),
    #[error("box.toml: artifact `{0}` has a sha256 that is not 64 hex digits")]
    BadDigest(String),
    #[error(
        "box.toml: the box carries no artifact: it needs `rootfs` (a root file tree) or `disk` (a disk image)"
    )]
    Empty,
    #[error("box.toml: `{0}` needs `disk` too")]
    Orphan(&'static str),
    #[error("box.toml: `{0}` is empty")]
    EmptyField(&'static str),
    #[error("box.toml: {field} `{}` is not usable: {why}", crate::ident::printable(.value))]
    BadName {
        field: &'static str,
        value: String,
        why: &'static str,
    },
    #[error(
        "box.toml: ssh_user `{}` is not a user name ([a-z_][a-z0-9_-]*, at most 32 bytes)",
        crate::ident::printable(.0)
    )]
    BadUser(String),
}

/// A path that stays inside the directory it is joined to.
pub fn is_plain_relative(p: &str) -> bool {
    !p.is_empty()
        && !p.contains('\\')
        && Path::new(p)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

pub use crate::ident::is_hex_digest;

impl Manifest {
    pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
        let m: Manifest =
            toml::from_str(text).map_err(|e| ManifestError::Syntax(e.message().to_owned()))?;
        m.check()?;
        Ok(m)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("manifests serialize")
    }

    fn check(&self) -> Result<(), ManifestError> {
        if self.name.trim().is_empty() {
            return Err(ManifestError::EmptyField("name"));
        }
        if self.version.trim().is_empty() {
            return Err(ManifestError::EmptyField("version"));
        }
        for (field, value) in [("name", &self.name), ("version", &self.version)] {
            if let Some(why) = crate::ident::box_name_problem(value) {
                return Err(ManifestError::BadName {
                    field,
                    value: value.clone(),
                    why,
                });
            }
        }
        if !crate::ident::is_user_name(&self.ssh_user) {
            return Err(ManifestError::BadUser(self.ssh_user.clone()));
        }
        if self.artifacts.is_empty() {
            return Err(ManifestError::Empty);
        }
        for (name, a) in &self.artifacts {
            if !ARTIFACTS.contains(&name.as_str()) {
                return Err(ManifestError::UnknownArtifact(name.clone()));
            }
            if !is_plain_relative(&a.path) || a.path == "box.toml" {
                return Err(ManifestError::UnsafePath {
                    name: name.clone(),
                    path: a.path.clone(),
                });
            }
            if !is_hex_digest(&a.sha256) {
                return Err(ManifestError::BadDigest(name.clone()));
            }
            if let Some((other, _)) = self
                .artifacts
                .iter()
                .find(|(o, b)| *o != name && b.path == a.path)
            {
                return Err(ManifestError::SamePath(name.clone(), other.clone()));
            }
        }
        for dependent in ["kernel", "initrd"] {
            if self.artifacts.contains_key(dependent) && !self.artifacts.contains_key("disk") {
                return Err(ManifestError::Orphan(if dependent == "kernel" {
                    "kernel"
                } else {
                    "initrd"
                }));
            }
        }
        if !self.artifacts.contains_key("rootfs") && !self.artifacts.contains_key("disk") {
            return Err(ManifestError::Empty);
        }
        Ok(())
    }

    /// The backends this box can serve.
    pub fn backends(&self, registry: &Registry) -> Vec<&'static str> {
        registry
            .all()
            .filter(|b| self.serves(*b))
            .map(|b| b.name())
            .collect()
    }

    /// Whether the box holds an artifact `backend` runs.
    pub fn serves(&self, backend: &dyn Backend) -> bool {
        backend
            .artifacts()
            .iter()
            .any(|a| self.artifacts.contains_key(*a))
    }

    /// Total bytes of all artifacts.
    pub fn total_size(&self) -> u64 {
        self.artifacts.values().map(|a| a.size).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "0000000000000000000000000000000000000000000000000000000000000000";

    fn manifest(artifacts: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(&format!("name = \"t\"\nversion = \"1.0.0\"\n{artifacts}"))
    }

    #[test]
    fn good_manifest_serves_backends() {
        let m = manifest(&format!(
            "[artifacts.rootfs]\npath = \"rootfs.tar\"\nsha256 = \"{D}\"\nsize = 10\n"
        ))
        .unwrap();
        let registry = Registry::new(vec![
            Box::new(crate::backend::fake::Fake::vm()),
            Box::new(crate::backend::fake::Fake::ct()),
        ]);
        assert_eq!(m.backends(&registry), ["ct"]);
        assert_eq!(m.ssh_user, "root");
        assert_eq!(Manifest::parse(&m.to_toml()).unwrap(), m);
    }

    #[test]
    fn unsafe_paths_are_refused() {
        for p in ["/etc/passwd", "../x", "a/../../x", "", "box.toml", "a\\\\b"] {
            let e = manifest(&format!(
                "[artifacts.rootfs]\npath = \"{p}\"\nsha256 = \"{D}\"\nsize = 1\n"
            ))
            .unwrap_err();
            assert!(matches!(e, ManifestError::UnsafePath { .. }), "{p}: {e}");
        }
        manifest(&format!(
            "[artifacts.rootfs]\npath = \"images/rootfs.tar\"\nsha256 = \"{D}\"\nsize = 1\n"
        ))
        .unwrap();
    }

    #[test]
    fn other_problems() {
        assert!(matches!(manifest(""), Err(ManifestError::Syntax(_))));
        assert!(matches!(
            manifest(&format!(
                "[artifacts.iso]\npath = \"a\"\nsha256 = \"{D}\"\nsize = 1\n"
            )),
            Err(ManifestError::UnknownArtifact(_))
        ));
        assert!(matches!(
            manifest("[artifacts.rootfs]\npath = \"a\"\nsha256 = \"xyz\"\nsize = 1\n"),
            Err(ManifestError::BadDigest(_))
        ));
        assert!(matches!(
            manifest(&format!(
                "[artifacts.kernel]\npath = \"k\"\nsha256 = \"{D}\"\nsize = 1\n[artifacts.rootfs]\npath = \"r\"\nsha256 = \"{D}\"\nsize = 1\n"
            )),
            Err(ManifestError::Orphan("kernel"))
        ));
        assert!(
            matches!(
                manifest(&format!(
                    "[artifacts.rootfs]\npath = \"a\"\nsha256 = \"{D}\"\n"
                )),
                Err(ManifestError::Syntax(_))
            ),
            "size is required"
        );
    }
}
