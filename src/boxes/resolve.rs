//! From an Envfile's `box` (a name, a path, a URL to a box or a catalog) to
//! a stored, checked box and the lock entry that pins it.

use std::path::{Path, PathBuf};

use super::catalog::{self, Catalog, CatalogError, Choice};
use super::download;
use super::lock::LockEntry;
use super::store::{Naming, Store, StoredBox};
use super::{BoxError, parse_checksum};
use crate::backend::{Backend, Registry};
use crate::envfile::Machine;
use crate::ui::Reporter;

/// How a box built from one of envup's recipes names its source (and its
/// URL in Envfile.lock): `recipe NAME`.
pub const RECIPE_SOURCE: &str = "recipe ";

/// What a `box` value names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A box file on this host.
    Path(PathBuf),
    /// A box file at a URL.
    BoxUrl(String),
    /// A catalog at a URL or path (ends in `.json`).
    Catalog(String),
    /// A name, looked up in the store, then in the catalogs.
    Name(String),
}

impl Source {
    pub fn classify(s: &str, root: &Path) -> Source {
        let is_url =
            s.starts_with("http://") || s.starts_with("https://") || s.starts_with("file://");
        if is_url || s.ends_with(".json") {
            if s.ends_with(".json") {
                return Source::Catalog(s.to_owned());
            }
            if let Some(p) = s.strip_prefix("file://") {
                return Source::Path(PathBuf::from(p));
            }
            return Source::BoxUrl(s.to_owned());
        }
        let pathish = s.starts_with('/')
            || s.starts_with("./")
            || s.starts_with("../")
            || s.ends_with(".box");
        if pathish || root.join(s).is_file() {
            return Source::Path(root.join(s));
        }
        Source::Name(s.to_owned())
    }
}

/// Where names are looked up: `ENVUP_CATALOGS`, a space- or comma-separated
/// list of catalog bases (URLs or directories); `NAME` is found at
/// `BASE/NAME.json`.
pub fn catalog_bases() -> Vec<String> {
    std::env::var("ENVUP_CATALOGS")
        .unwrap_or_default()
        .split([' ', ',', '\n'])
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('/').to_owned())
        .collect()
}

pub struct Resolver<'a> {
    pub store: &'a Store,
    /// The Envfile's directory: relative paths start here.
    pub root: &'a Path,
    pub reporter: &'a dyn Reporter,
    /// The backends boxes are chosen for.
    pub backends: &'a Registry,
}

impl Resolver<'_> {
    /// How a lock entry records where a box came from.
    /// What the lock file records for a box added from `source` (the
    /// store's text for it): a path inside the project relative to its
    /// root, so the lock holds wherever the project is checked out. Both
    /// are compared as text, as the store keeps it.
    fn url_for_lock(&self, source: &str) -> String {
        let root = self.root.to_string_lossy();
        match source.strip_prefix(root.as_ref()) {
            Some(rel) if !source.contains("://") && rel.starts_with('/') => {
                rel.trim_start_matches('/').to_owned()
            }
            _ => source.to_owned(),
        }
    }

    /// Where a box file the lock file names as a path is: inside the
    /// project when the path is relative (byte for byte, whatever the
    /// project directory's name).
    fn locked_path(&self, url: &str) -> PathBuf {
        let p = Path::new(url.strip_prefix("file://").unwrap_or(url));
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.root.join(p)
        }
    }

    fn add_path(
        &self,
        path: &Path,
        expected: Option<&super::Digest>,
        naming: &Naming,
    ) -> Result<StoredBox, BoxError> {
        if !path.is_file() {
            return Err(BoxError::Io {
                what: "find the box file",
                path: path.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            });
        }
        let source = path.canonicalize().unwrap_or_else(|_| path.to_owned());
        self.store
            .add_file(path, expected, naming, &source.display().to_string())
    }

    fn add_urls(
        &self,
        urls: &[String],
        expected: Option<&super::Digest>,
        naming: &Naming,
    ) -> Result<StoredBox, BoxError> {
        if let Some(d) = expected
            && let Some(b) = self.store.get(d)
        {
            return Ok(b);
        }
        if let Some(p) = urls.first().and_then(|u| u.strip_prefix("file://")) {
            return self.add_path(Path::new(p), expected, naming);
        }
        let got = download::fetch(urls, expected, &self.store.downloads(), self.reporter)?;
        let result = self
            .store
            .add_file(&got.path, Some(&got.sha256), naming, &got.url);
        // Whole and checked, or useless: either way the part is done with.
        let _ = std::fs::remove_file(&got.path);
        result
    }

    fn add_choice(&self, c: &Choice) -> Result<StoredBox, BoxError> {
        let naming = Naming {
            name: Some(c.name.clone()),
            version: Some(c.version.clone()),
        };
        if c.sha256.is_none() {
            self.reporter.note(&format!(
                "the catalog gives no sha256 for `{}` {}; envup pins what it downloads in Envfile.lock",
                c.name, c.version
            ));
        }
        self.add_urls(&c.urls, c.sha256.as_ref(), &naming)
    }

    fn choose(
        &self,
        cat: &Catalog,
        req: Option<&semver::VersionReq>,
        backend: Option<&dyn Backend>,
    ) -> Result<Choice, CatalogError> {
        let arch = catalog::host_arch();
        match backend {
            Some(b) => cat.choose(req, b, arch),
            // Any backend's: the default backend's if the catalog has a
            // box for it, else the first other's that it has.
            None => {
                let mut first_err = None;
                for b in self.backends.by_preference() {
                    match cat.choose(req, b, arch) {
                        Ok(c) => return Ok(c),
                        Err(e) => {
                            first_err.get_or_insert(e);
                        }
                    }
                }
                Err(first_err.expect("a registry holds a backend"))
            }
        }
    }

    /// A name: the newest fitting version in the first catalog that has
    /// the name (no download when those bytes are stored already); else,
    /// with no catalog answering, the newest fitting box in the store.
    fn by_name(
        &self,
        name: &str,
        req: Option<&semver::VersionReq>,
        backend: Option<&dyn Backend>,
    ) -> Result<StoredBox, BoxError> {
        let bases = catalog_bases();
        let mut tried = Vec::new();
        for base in &bases {
            let location = format!("{base}/{name}.json");
            match catalog::load(&location) {
                Ok(cat) => {
                    let choice = self.choose(&cat, req, backend)?;
                    return self.add_choice(&choice);
                }
                Err(e) => tried.push(e.to_string()),
            }
        }
        if bases.is_empty() {
            tried.push("no catalogs are configured (ENVUP_CATALOGS)".into());
        }
        let stored = self.store.list()?.into_iter().find(|b| {
            b.meta.name == name
                && req.is_none_or(|r| b.version().is_some_and(|v| r.matches(&v)))
                && backend.is_none_or(|k| b.manifest.serves(k))
        });
        if let Some(b) = stored {
            return Ok(b);
        }
        tried.push("not in the box store".into());
        // A box envup has a recipe for is built on the way.
        if let Some(recipe) = super::build::recipe_for_box(name) {
            let b = self.build_recipe(name, &recipe)?;
            if backend.is_none_or(|k| b.manifest.serves(k)) {
                return Ok(b);
            }
        }
        Err(BoxError::NotFound {
            name: name.to_owned(),
            req: req.map(ToString::to_string),
            tried: tried.join("; "),
        })
    }

    /// Build the box `name` from envup's `recipe` for it and store it.
    fn build_recipe(
        &self,
        name: &str,
        recipe: &super::build::Recipe,
    ) -> Result<StoredBox, BoxError> {
        self.reporter.note(&format!(
            "box `{name}` is not stored; building it from its recipe"
        ));
        let out = self
            .store
            .root_dir()
            .join(format!(".build-{}.box", std::process::id()));
        let built = super::build::build(recipe, &out, self.reporter);
        let result = built.and_then(|(_, digest)| {
            self.store.add_file(
                &out,
                Some(&digest),
                &Naming::default(),
                &format!("{RECIPE_SOURCE}{name}"),
            )
        });
        let _ = std::fs::remove_file(&out);
        result
    }

    /// `envup box add SOURCE`.
    pub fn add(
        &self,
        source: &std::ffi::OsStr,
        checksum: Option<&str>,
        naming: &Naming,
    ) -> Result<StoredBox, BoxError> {
        let expected = checksum.map(parse_checksum).transpose()?;
        let expected = expected.as_ref();
        // `--version V` picks exactly V from a catalog or the store.
        let req = naming
            .version
            .as_deref()
            .and_then(|v| semver::VersionReq::parse(&format!("={v}")).ok());
        // Only a path can be other than text.
        let source = match source.to_str() {
            Some(text) => Source::classify(text, self.root),
            None => Source::Path(self.root.join(source)),
        };
        match source {
            Source::Path(p) => self.add_path(&p, expected, naming),
            Source::BoxUrl(u) => self.add_urls(&[u], expected, naming),
            Source::Catalog(loc) => {
                let cat = catalog::load(&loc)?;
                self.add_choice(&self.choose(&cat, req.as_ref(), None)?)
            }
            Source::Name(n) => self.by_name(&n, req.as_ref(), None),
        }
    }

    /// The box for machine `m`: the locked one when `locked` is given (its
    /// bytes must hash to the locked digest), else resolved afresh.
    pub fn resolve(
        &self,
        m: &Machine,
        backend: &dyn Backend,
        locked: Option<&LockEntry>,
    ) -> Result<(StoredBox, LockEntry), BoxError> {
        let req = m.box_version.as_ref();
        let stored = match locked {
            Some(e) => {
                let naming = Naming::default();
                let url = &e.url;
                if url.starts_with("http://") || url.starts_with("https://") {
                    self.add_urls(std::slice::from_ref(url), Some(&e.sha256), &naming)?
                } else if let Some(name) = e.url.strip_prefix(RECIPE_SOURCE) {
                    // Built from a recipe where the lock was written: build it
                    // here too, and use it only if the bytes are the same.
                    match self.store.get(&e.sha256) {
                        Some(b) => b,
                        None => {
                            let recipe = super::build::recipe_for_box(name).ok_or_else(|| {
                                BoxError::NotFound {
                                    name: name.to_owned(),
                                    req: None,
                                    tried: "Envfile.lock names a recipe envup does not have".into(),
                                }
                            })?;
                            let b = self.build_recipe(name, &recipe)?;
                            if b.digest != e.sha256 {
                                return Err(BoxError::RecipeDiffers {
                                    name: name.to_owned(),
                                    machine: m.name.clone(),
                                    locked: e.sha256.to_string(),
                                    built: b.digest.to_string(),
                                });
                            }
                            b
                        }
                    }
                } else {
                    match self.store.get(&e.sha256) {
                        Some(b) => b,
                        None => self
                            .add_path(&self.locked_path(url), Some(&e.sha256), &naming)
                            .map_err(|source| BoxError::LockedNotStored {
                                machine: m.name.clone(),
                                sha256: e.sha256.to_string(),
                                url: crate::ident::printable(url).into_owned(),
                                source: Box::new(source),
                            })?,
                    }
                }
            }
            None => match Source::classify(&m.box_, self.root) {
                Source::Path(p) => self.add_path(&p, None, &Naming::default())?,
                Source::BoxUrl(u) => self.add_urls(&[u], None, &Naming::default())?,
                Source::Catalog(loc) => {
                    let cat = catalog::load(&loc)?;
                    self.add_choice(&self.choose(&cat, req, Some(backend))?)?
                }
                Source::Name(n) => self.by_name(&n, req, Some(backend))?,
            },
        };
        if !stored.manifest.serves(backend) {
            return Err(BoxError::WrongBackend {
                name: stored.meta.name.clone(),
                version: stored.meta.version.clone(),
                serves: stored.manifest.backends(self.backends).join(" and "),
                machine: m.name.clone(),
                backend: m.backend.to_string(),
            });
        }
        let entry = LockEntry {
            box_: m.box_.clone(),
            version: stored.meta.version.clone(),
            url: locked
                .map(|e| e.url.clone())
                .unwrap_or_else(|| self.url_for_lock(&stored.meta.source)),
            sha256: stored.digest.clone(),
        };
        Ok((stored, entry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_sources() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("boxes")).unwrap();
        std::fs::write(root.join("boxes/local"), "").unwrap();
        assert_eq!(
            Source::classify("debian/bookworm", root),
            Source::Name("debian/bookworm".into())
        );
        assert_eq!(
            Source::classify("boxes/local", root),
            Source::Path(root.join("boxes/local"))
        );
        assert_eq!(
            Source::classify("./x.box", root),
            Source::Path(root.join("./x.box"))
        );
        assert_eq!(
            Source::classify("/abs/x.box", root),
            Source::Path("/abs/x.box".into())
        );
        assert_eq!(
            Source::classify("https://h/x.box", root),
            Source::BoxUrl("https://h/x.box".into())
        );
        assert_eq!(
            Source::classify("https://h/cat.json", root),
            Source::Catalog("https://h/cat.json".into())
        );
        assert_eq!(
            Source::classify("file:///b/x.box", root),
            Source::Path("/b/x.box".into())
        );
    }
}
