//! Boxes: the `.box` format, the content-addressed store, verified and
//! resumable downloads, catalogs in Vagrant's shape, Vagrant box imports,
//! and resolving an Envfile's `box` to stored bytes.

pub mod archive;
pub mod build;
pub mod catalog;
pub mod download;
pub mod lock;
pub mod manifest;
pub mod resolve;
pub mod staging;
pub mod store;
pub mod vagrant;
pub mod vagrantfile;

use std::path::{Path, PathBuf};

pub use store::{Store, StoredBox};

pub use crate::ident::Digest;

#[derive(Debug, thiserror::Error)]
pub enum BoxError {
    #[error("cannot {what} {}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{source_name} is not a usable box")]
    Archive {
        source_name: String,
        #[source]
        error: archive::ArchiveError,
    },
    #[error("{what} does not match its checksum: expected sha256 {expected}, got {actual}")]
    Checksum {
        what: String,
        expected: String,
        actual: String,
    },
    #[error(transparent)]
    Download(#[from] download::DownloadError),
    #[error(transparent)]
    Catalog(#[from] catalog::CatalogError),
    #[error("envup cannot use {0}")]
    Unsupported(String),
    #[error("no box `{name}`{}: {tried}", .req.as_ref().map(|r| format!(" matching `{r}`")).unwrap_or_default())]
    NotFound {
        name: String,
        req: Option<String>,
        tried: String,
    },
    #[error(
        "box `{name}` {version} serves {serves}, but machine `{machine}` uses the {backend} backend"
    )]
    WrongBackend {
        name: String,
        version: String,
        serves: String,
        machine: String,
        backend: String,
    },
    #[error("box {what} `{}` is not usable: {why}", crate::ident::printable(.value))]
    BadName {
        what: &'static str,
        value: String,
        why: &'static str,
    },
    #[error(
        "these bytes are stored already, as `{name}` {version}; a box is stored under one name, \
         so it cannot also be `{asked}` (`envup box remove {name}` first to store it under the new name)"
    )]
    StoredAs {
        name: String,
        version: String,
        asked: String,
    },
    #[error("`--checksum {0}` is not sha256:<64 hex digits>")]
    BadChecksum(String),
    #[error(
        "Envfile.lock pins box `{name}` for machine `{machine}` at sha256:{locked}, built from \
         envup's recipe elsewhere; built here it is sha256:{built} (other packages or another \
         recipe). Run `envup update {machine}` to pin this build, or share the box file \
         and lock that"
    )]
    RecipeDiffers {
        name: String,
        machine: String,
        locked: String,
        built: String,
    },
    #[error(
        "the box Envfile.lock pins for `{machine}` (sha256 {sha256}) is not stored, and \
         cannot be added again from {url}; `envup update {machine}` pins one anew"
    )]
    LockedNotStored {
        machine: String,
        sha256: String,
        url: String,
        #[source]
        source: Box<BoxError>,
    },
    #[error(transparent)]
    NoSpace(crate::host::NoSpace),
    #[error(transparent)]
    Lock(#[from] lock::LockError),
    #[error(transparent)]
    Build(#[from] build::BuildError),
}

impl BoxError {
    /// What went wrong unpacking the box `source_name`: the host's disk
    /// when it was (no space, a write that failed), else the box.
    pub(crate) fn unpacking(source_name: &str, error: archive::ArchiveError) -> BoxError {
        match error {
            archive::ArchiveError::NoSpace(n) => BoxError::NoSpace(n),
            archive::ArchiveError::Write(p, e) => io_err("write", &p)(e),
            error => BoxError::Archive {
                source_name: source_name.to_owned(),
                error,
            },
        }
    }
}

pub(crate) fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BoxError {
    let path = path.to_owned();
    move |source| BoxError::Io { what, path, source }
}

/// `sha256:HEX` (or bare HEX) → HEX.
pub fn parse_checksum(s: &str) -> Result<Digest, BoxError> {
    let hex = s.strip_prefix("sha256:").unwrap_or(s).to_ascii_lowercase();
    Digest::parse(&hex).map_err(|_| BoxError::BadChecksum(crate::ident::printable(s).into()))
}

/// A box name or version given to envup (by a catalog, `--name`,
/// `--version`), checked before it is stored.
pub fn check_name(what: &'static str, value: &str) -> Result<(), BoxError> {
    match crate::ident::box_name_problem(value) {
        None => Ok(()),
        Some(why) => Err(BoxError::BadName {
            what,
            value: value.to_owned(),
            why,
        }),
    }
}
