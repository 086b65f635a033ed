//! Catalogs: JSON in the shape of Vagrant's box metadata, so that Vagrant
//! catalogs work as they are.
//!
//! ```json
//! { "name": "debian/bookworm",
//!   "versions": [ { "version": "12.8.0",
//!     "providers": [ { "name": "envup", "url": "https://…/bookworm-12.8.0.box",
//!                      "checksum_type": "sha256", "checksum": "…",
//!                      "architecture": "amd64", "mirrors": ["https://…"] } ] } ] }
//! ```
//!
//! Provider `envup` is an envup box (any backend it has artifacts for);
//! `libvirt` serves qemu and `lxc` serves jail and container. Providers of one
//! version with the same checksum are mirrors of each other, as are the
//! URLs in `mirrors`.

use serde::Deserialize;

use super::store::lenient_version;
use crate::backend::Backend;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot read the catalog {location}: {reason}")]
    Read { location: String, reason: String },
    #[error("the catalog {location} is not valid box metadata: {reason}")]
    Invalid { location: String, reason: String },
    #[error("the catalog for `{name}` has no version{} with a box for the {backend} backend on {arch}{}", .req.as_ref().map(|r| format!(" matching `{r}`")).unwrap_or_default(), if .versions.is_empty() { String::new() } else { format!(" (it has {})", .versions.join(", ")) })]
    NoMatch {
        name: String,
        req: Option<String>,
        backend: &'static str,
        arch: String,
        versions: Vec<String>,
    },
}

#[derive(Debug, Clone, Deserialize)]
pub struct Catalog {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    pub versions: Vec<CatalogVersion>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CatalogVersion {
    pub version: String,
    #[serde(default)]
    pub providers: Vec<Provider>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Provider {
    pub name: String,
    pub url: String,
    #[serde(default)]
    pub checksum_type: Option<String>,
    #[serde(default)]
    pub checksum: Option<String>,
    #[serde(default)]
    pub architecture: Option<String>,
    #[serde(default)]
    pub mirrors: Vec<String>,
}

/// What a catalog offers for one machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub name: String,
    pub version: String,
    pub provider: String,
    /// The URL and its mirrors, in order.
    pub urls: Vec<String>,
    /// The sha256 the catalog promises, when it gives one.
    pub sha256: Option<crate::ident::Digest>,
}

/// The host's architecture in the names catalogs use.
pub fn host_arch() -> &'static str {
    std::env::consts::ARCH
}

fn same_arch(a: &str, b: &str) -> bool {
    fn norm(s: &str) -> &str {
        match s {
            "amd64" | "x86_64" => "x86_64",
            "arm64" | "aarch64" => "aarch64",
            other => other,
        }
    }
    norm(a) == norm(b)
}

/// An `envup` provider serves every backend (its box says which artifacts
/// it holds); a Vagrant provider, the backends that take its boxes.
fn provider_serves(provider: &str, backend: &dyn Backend) -> bool {
    provider == "envup"
        || backend
            .vagrant_providers()
            .iter()
            .any(|p| p.name == provider)
}

impl Catalog {
    /// Parse a catalog read from `location`. Everything a catalog says is
    /// checked here: its name and versions are box names, every sha256
    /// checksum is a digest, and a catalog from a server names only
    /// `http(s)` URLs (never a file on this host).
    pub fn parse(text: &str, location: &str) -> Result<Catalog, CatalogError> {
        let invalid = |reason: String| CatalogError::Invalid {
            location: crate::ident::printable(location).into(),
            reason,
        };
        let cat: Catalog = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let remote = is_remote(location);
        let name_problem = |what: &str, v: &str| {
            crate::ident::box_name_problem(v)
                .map(|why| invalid(format!("{what} `{}`: {why}", crate::ident::printable(v))))
        };
        if let Some(e) = name_problem("name", &cat.name) {
            return Err(e);
        }
        for v in &cat.versions {
            if let Some(e) = name_problem("version", &v.version) {
                return Err(e);
            }
            for p in &v.providers {
                if let (Some("sha256") | None, Some(c)) = (p.checksum_type.as_deref(), &p.checksum)
                    && let Err(e) = crate::ident::Digest::parse(&c.to_ascii_lowercase())
                {
                    return Err(invalid(format!("version {}: {e}", v.version)));
                }
                for url in std::iter::once(&p.url).chain(&p.mirrors) {
                    let web = url.starts_with("http://") || url.starts_with("https://");
                    if remote && !web {
                        return Err(invalid(format!(
                            "version {}: `{}` is not an http(s) URL; a catalog from a server \
                             may not point at this host's files",
                            v.version,
                            crate::ident::printable(url)
                        )));
                    }
                }
            }
        }
        Ok(cat)
    }

    /// The newest version meeting `req` with a provider for `backend` on
    /// `arch`; an `envup` provider is preferred over a Vagrant one.
    pub fn choose(
        &self,
        req: Option<&semver::VersionReq>,
        backend: &dyn Backend,
        arch: &str,
    ) -> Result<Choice, CatalogError> {
        let mut versions: Vec<(&CatalogVersion, semver::Version)> = self
            .versions
            .iter()
            .filter_map(|v| lenient_version(&v.version).map(|s| (v, s)))
            .filter(|(_, s)| req.is_none_or(|r| r.matches(s)))
            .collect();
        versions.sort_by(|a, b| b.1.cmp(&a.1));
        for (v, _) in versions {
            let fits: Vec<&Provider> = v
                .providers
                .iter()
                .filter(|p| provider_serves(&p.name, backend))
                .filter(|p| {
                    p.architecture
                        .as_deref()
                        .is_none_or(|a| a == "unknown" || same_arch(a, arch))
                })
                .collect();
            let Some(best) = fits
                .iter()
                .find(|p| p.name == "envup")
                .or_else(|| fits.first())
            else {
                continue;
            };
            let sha256 = match (best.checksum_type.as_deref(), &best.checksum) {
                (Some("sha256") | None, Some(c)) => {
                    crate::ident::Digest::parse(&c.to_ascii_lowercase()).ok()
                }
                _ => None,
            };
            let mut urls = vec![best.url.clone()];
            urls.extend(best.mirrors.iter().cloned());
            for p in &fits {
                if p.name == best.name
                    && p.url != best.url
                    && sha256.is_some()
                    && p.checksum.as_ref().map(|c| c.to_ascii_lowercase())
                        == sha256.as_ref().map(ToString::to_string)
                {
                    urls.push(p.url.clone());
                    urls.extend(p.mirrors.iter().cloned());
                }
            }
            urls.dedup();
            return Ok(Choice {
                name: self.name.clone(),
                version: v.version.clone(),
                provider: best.name.clone(),
                urls,
                sha256,
            });
        }
        Err(CatalogError::NoMatch {
            name: self.name.clone(),
            req: req.map(ToString::to_string),
            backend: backend.name(),
            arch: arch.into(),
            versions: self.versions.iter().map(|v| v.version.clone()).collect(),
        })
    }
}

/// The largest catalog envup reads: catalogs list versions and URLs, and a
/// larger one is a mistake or an attack.
pub const MAX_CATALOG: u64 = 16 << 20;

fn is_remote(location: &str) -> bool {
    location.starts_with("http://") || location.starts_with("https://")
}

/// Read a catalog from a URL (`http`, `https`, `file`) or a path, at most
/// [`MAX_CATALOG`] bytes.
pub fn load(location: &str) -> Result<Catalog, CatalogError> {
    use std::io::Read;
    let read_err = |reason: String| CatalogError::Read {
        location: crate::ident::printable(location).into(),
        reason,
    };
    let reader: Box<dyn Read> = if is_remote(location) {
        let resp = super::download::client()
            .get(location)
            .send()
            .map_err(|e| read_err(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(read_err(format!("HTTP {}", resp.status())));
        }
        Box::new(super::download::Paced::new(
            resp,
            super::download::MinRate::from_env(),
        ))
    } else {
        let path = location.strip_prefix("file://").unwrap_or(location);
        let f = std::fs::File::open(path).map_err(|e| read_err(e.to_string()))?;
        let meta = f.metadata().map_err(|e| read_err(e.to_string()))?;
        if !meta.is_file() {
            return Err(read_err("not a regular file".into()));
        }
        Box::new(f)
    };
    let mut bytes = Vec::new();
    reader
        .take(MAX_CATALOG + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| read_err(e.to_string()))?;
    if bytes.len() as u64 > MAX_CATALOG {
        return Err(read_err(format!(
            "it is larger than {} (envup's limit for a catalog)",
            crate::host::human_bytes(MAX_CATALOG)
        )));
    }
    let text = String::from_utf8(bytes).map_err(|_| read_err("it is not UTF-8".into()))?;
    Catalog::parse(&text, location)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::fake::Fake;

    const VAGRANT: &str = r#"{
      "name": "acme/base", "description": "Vagrant-shaped",
      "versions": [
        { "version": "1.2.0", "status": "active", "providers": [
          { "name": "virtualbox", "url": "http://x/vb.box" },
          { "name": "libvirt", "url": "http://x/lv.box", "checksum_type": "sha256", "checksum": "AA11AA11AA11AA11AA11AA11AA11AA11AA11AA11AA11AA11AA11AA11AA11AA11", "architecture": "amd64" } ] },
        { "version": "1.10.0", "providers": [
          { "name": "lxc", "url": "http://x/lxc.box", "checksum_type": "sha256", "checksum": "bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22" },
          { "name": "lxc", "url": "http://mirror/lxc.box", "checksum_type": "sha256", "checksum": "bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22" },
          { "name": "envup", "url": "http://x/e.box", "checksum_type": "sha256", "checksum": "cc33cc33cc33cc33cc33cc33cc33cc33cc33cc33cc33cc33cc33cc33cc33cc33", "architecture": "arm64" } ] },
        { "version": "2.0.0", "providers": [ { "name": "virtualbox", "url": "http://x/new.box" } ] }
      ] }"#;

    #[test]
    fn chooses_newest_fitting_version_and_provider() {
        let c = Catalog::parse(VAGRANT, "t").unwrap();
        let (vm, ct) = (Fake::vm(), Fake::ct());
        let q = c.choose(None, &vm, "x86_64").unwrap();
        assert_eq!(
            (q.version.as_str(), q.provider.as_str()),
            ("1.2.0", "libvirt")
        );
        assert_eq!(q.sha256.as_deref(), Some("aa11".repeat(16).as_str()));
        let j = c.choose(None, &ct, "x86_64").unwrap();
        assert_eq!((j.version.as_str(), j.provider.as_str()), ("1.10.0", "lxc"));
        assert_eq!(j.urls, ["http://x/lxc.box", "http://mirror/lxc.box"]);
        let arm = c.choose(None, &ct, "aarch64").unwrap();
        assert_eq!(arm.provider, "envup");
        let req = semver::VersionReq::parse("<1.5").unwrap();
        let e = c.choose(Some(&req), &ct, "x86_64").unwrap_err();
        assert!(e.to_string().contains("matching `<1.5`"), "{e}");
    }

    #[test]
    fn hostile_catalogs_are_refused_whole() {
        let one = |name: &str, url: &str, sum: &str| {
            format!(
                r#"{{"name": "{name}", "versions": [{{"version": "1.0.0", "providers": [
                {{"name": "envup", "url": "{url}", "checksum_type": "sha256", "checksum": "{sum}"}}]}}]}}"#
            )
        };
        let d = "ab".repeat(32);
        assert!(Catalog::parse(&one("a/b", "http://x/b.box", &d), "http://c/a.json").is_ok());
        // A checksum that is no digest would become a file name.
        let e = Catalog::parse(&one("a/b", "http://x/b.box", "../../x"), "c.json").unwrap_err();
        assert!(e.to_string().contains("not a sha256"), "{e}");
        // A server's catalog may not send envup to this host's files.
        let e =
            Catalog::parse(&one("a/b", "file:///etc/shadow", &d), "https://c/a.json").unwrap_err();
        assert!(e.to_string().contains("not an http(s) URL"), "{e}");
        // A local catalog the user named may.
        assert!(Catalog::parse(&one("a/b", "file:///srv/b.box", &d), "/srv/a.json").is_ok());
        let e = Catalog::parse(&one("a/../b\\u001b[31m", "http://x", &d), "c.json").unwrap_err();
        assert!(e.to_string().contains("name `a/../b\\u{1b}[31m`"), "{e}");
    }
}
