//! Making boxes for tests.

use std::io::Write;
use std::path::{Path, PathBuf};

use envup::boxes::archive::pack;
use envup::boxes::manifest::{Artifact, Manifest};

/// Pack a box with these artifacts (name, file name, bytes) into `dir`.
pub fn make_box(
    dir: &Path,
    name: &str,
    version: &str,
    artifacts: &[(&str, &str, &[u8])],
) -> PathBuf {
    make_box_as(dir, name, version, "root", artifacts)
}

/// `make_box`, logging in as `ssh_user`.
pub fn make_box_as(
    dir: &Path,
    name: &str,
    version: &str,
    ssh_user: &str,
    artifacts: &[(&str, &str, &[u8])],
) -> PathBuf {
    let src = tempfile::tempdir().unwrap();
    let mut m = Manifest {
        name: name.into(),
        version: version.into(),
        arch: "x86_64".into(),
        ssh_user: ssh_user.into(),
        description: None,
        artifacts: Default::default(),
        boot: None,
        first_login: None,
    };
    for (kind, file, bytes) in artifacts {
        std::fs::write(src.path().join(file), bytes).unwrap();
        m.artifacts.insert(
            (*kind).into(),
            Artifact {
                path: (*file).into(),
                sha256: String::new(),
                size: 0,
                format: None,
            },
        );
    }
    let out = dir.join(format!("{}-{version}.box", name.replace('/', "-")));
    pack(&m, src.path(), &out).unwrap();
    out
}

/// A small rootfs tar, as a rootfs artifact's bytes.
pub fn rootfs_bytes(marker: &str) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let data = marker.as_bytes();
    let mut h = tar::Header::new_gnu();
    h.set_path("etc/marker").unwrap();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append(&h, data).unwrap();
    b.into_inner().unwrap()
}

/// The rootfs tar at `from`, rewritten: `edit` may change each entry's
/// data (given its path without `./`); entries named in `links` are
/// replaced by those symlinks or hard links (path, kind, target).
pub fn rewrite_rootfs(
    from: &Path,
    edit: impl Fn(&str, &mut Vec<u8>),
    links: &[(&str, tar::EntryType, &str)],
) -> tar::Builder<Vec<u8>> {
    let mut out = tar::Builder::new(Vec::new());
    let mut a = tar::Archive::new(std::fs::File::open(from).unwrap());
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e
            .path()
            .unwrap()
            .to_string_lossy()
            .trim_start_matches("./")
            .to_owned();
        if links.iter().any(|(p, _, _)| *p == path) {
            continue;
        }
        let mut header = e.header().clone();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        edit(&path, &mut data);
        header.set_size(data.len() as u64);
        header.set_cksum();
        if header.entry_type().is_symlink() || header.entry_type().is_hard_link() {
            out.append(&header, std::io::empty()).unwrap();
        } else {
            out.append(&header, data.as_slice()).unwrap();
        }
    }
    for (path, kind, target) in links {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_mode(0o777);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(0);
        out.append_link(&mut h, path, target).unwrap();
    }
    out
}

/// The rootfs tar at `from` with a user added: `name` (uid and gid 1000,
/// home /home/NAME, no password), as the rootfs of a box that logs in as
/// that user.
pub fn rootfs_with_user(from: &Path, name: &str) -> Vec<u8> {
    let mut out = rewrite_rootfs(
        from,
        |path, data| {
            let extra = match path {
                "etc/passwd" => format!("{name}:x:1000:1000::/home/{name}:/bin/sh\n"),
                "etc/shadow" => format!("{name}:*:19000:0:99999:7:::\n"),
                "etc/group" => format!("{name}:x:1000:\n"),
                _ => String::new(),
            };
            data.extend_from_slice(extra.as_bytes());
        },
        &[],
    );
    let mut h = tar::Header::new_gnu();
    h.set_path(format!("home/{name}")).unwrap();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o750);
    h.set_uid(1000);
    h.set_gid(1000);
    h.set_size(0);
    h.set_cksum();
    out.append(&h, std::io::empty()).unwrap();
    out.into_inner().unwrap()
}

pub fn sha256(path: &Path) -> String {
    envup::boxes::archive::sha256_file(path).unwrap()
}

/// A zstd tar built entry by entry, names written raw (so tests can write
/// names a well-behaved builder refuses).
pub struct RawBox {
    tar: Vec<u8>,
}

impl RawBox {
    pub fn new() -> Self {
        RawBox { tar: Vec::new() }
    }

    pub fn entry(
        mut self,
        name: &str,
        kind: tar::EntryType,
        data: &[u8],
        link: Option<&str>,
        declared_size: Option<u64>,
    ) -> Self {
        let mut h = tar::Header::new_old();
        {
            let old = h.as_old_mut();
            old.name[..name.len()].copy_from_slice(name.as_bytes());
            if let Some(l) = link {
                old.linkname[..l.len()].copy_from_slice(l.as_bytes());
            }
        }
        h.set_entry_type(kind);
        h.set_size(declared_size.unwrap_or(data.len() as u64));
        h.set_mode(0o644);
        h.set_cksum();
        self.tar.extend_from_slice(h.as_bytes());
        self.tar.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.tar.extend(std::iter::repeat_n(0u8, pad));
        self
    }

    pub fn file(self, name: &str, data: &[u8]) -> Self {
        self.entry(name, tar::EntryType::Regular, data, None, None)
    }

    /// `n` bytes after the end of the tar (its two zero blocks).
    pub fn trailing(mut self, n: usize) -> Self {
        self.tar.extend(std::iter::repeat_n(0u8, 1024 + n));
        self
    }

    pub fn write(mut self, path: &Path) {
        self.tar.extend(std::iter::repeat_n(0u8, 1024));
        let mut enc = zstd::Encoder::new(std::fs::File::create(path).unwrap(), 3).unwrap();
        enc.write_all(&self.tar).unwrap();
        enc.finish().unwrap();
    }
}

pub fn manifest_for(artifacts: &[(&str, &str, &[u8])]) -> String {
    let mut s = String::from("name = \"evil\"\nversion = \"1.0.0\"\n");
    for (kind, path, bytes) in artifacts {
        s.push_str(&format!(
            "[artifacts.{kind}]\npath = \"{path}\"\nsha256 = \"{}\"\nsize = {}\n",
            envup::boxes::archive::hex(&<sha2::Sha256 as sha2::Digest>::digest(bytes)),
            bytes.len()
        ));
    }
    s
}

/// A box built from `boxes/<recipe>.toml`, once per recipe text: kept in
/// `target/test-boxes/` and shared by every test binary (each takes a file
/// lock while it builds), so the end-to-end tests of the jail, container
/// and qemu backends build `debian-bookworm` once between them.
pub fn built_box(recipe: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read(root.join("boxes").join(format!("{recipe}.toml"))).unwrap();
    let digest = envup::boxes::archive::hex(&<sha2::Sha256 as sha2::Digest>::digest(&text));
    let dir = root.join("target/test-boxes");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join(format!("{recipe}-{}.box", &digest[..12]));
    let lock = std::fs::File::create(dir.join(format!("{recipe}.lock"))).unwrap();
    lock.lock().unwrap();
    if !out.exists() {
        let home = tempfile::tempdir().unwrap();
        let tmp = dir.join(format!("{recipe}.box.part"));
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_envup"))
            .args(["-q", "box", "build", recipe, "-o"])
            .arg(&tmp)
            .env("ENVUP_HOME", home.path())
            .current_dir(root)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "building {recipe} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        std::fs::rename(&tmp, &out).unwrap();
    }
    out
}

/// An ENVUP_HOME holding these built boxes.
pub fn home_with(recipes: &[&str]) -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    super::register_home(home.path());
    for r in recipes {
        let b = built_box(r);
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_envup"))
            .args(["-q", "box", "add"])
            .arg(&b)
            .env("ENVUP_HOME", home.path())
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "adding {}: {}",
            b.display(),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    home
}

/// The rootfs tar of `tiny` as stored at `home`, to make variants from.
pub fn stored_tiny_rootfs(home: &Path) -> PathBuf {
    stored_dir(home, "tiny").join("rootfs.tar")
}

/// A box `name` 1.0.0, written in `dir`, of one artifact, the rootfs tar
/// `rootfs`, logging in as `ssh_user`.
pub fn rootfs_box(dir: &Path, name: &str, ssh_user: &str, rootfs: &[u8]) -> PathBuf {
    make_box_as(
        dir,
        name,
        "1.0.0",
        ssh_user,
        &[("rootfs", "rootfs.tar", rootfs)],
    )
}

/// The sha256 of the stored box `name` in the store at `home`.
/// Where box `name` is stored in the store of `home`.
pub fn stored_dir(home: &Path, name: &str) -> PathBuf {
    home.join("boxes-v1").join(stored_digest(home, name))
}

pub fn stored_digest(home: &Path, name: &str) -> String {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_envup"))
        .args(["--json", "box", "list"])
        .env("ENVUP_HOME", home)
        .output()
        .unwrap();
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == name)
        .and_then(|b| b["sha256"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("{name} is not stored"))
}

/// A Vagrant `lxc` box laid out as vagrant-lxc's base boxes are:
/// `metadata.json`, a `Vagrantfile`, and `rootfs.tar.gz` holding the tree
/// of the rootfs tar at `from` under `./rootfs/`.
pub fn vagrant_lxc_box(from: &Path, out: &Path) {
    let mut inner = tar::Builder::new(Vec::new());
    let mut top = tar::Header::new_gnu();
    top.set_entry_type(tar::EntryType::Directory);
    top.set_mode(0o755);
    top.set_size(0);
    inner
        .append_data(&mut top, "./rootfs/", std::io::empty())
        .unwrap();
    let mut a = tar::Archive::new(std::fs::File::open(from).unwrap());
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let rel = e
            .path()
            .unwrap()
            .to_string_lossy()
            .trim_start_matches("./")
            .to_owned();
        if rel.is_empty() {
            continue;
        }
        let path = format!("./rootfs/{rel}");
        let mut h = e.header().clone();
        match e.link_name().unwrap().map(|l| l.into_owned()) {
            Some(target) if h.entry_type().is_hard_link() => {
                let target = format!(
                    "./rootfs/{}",
                    target.to_string_lossy().trim_start_matches("./")
                );
                inner.append_link(&mut h, path, target).unwrap();
            }
            Some(target) => inner.append_link(&mut h, path, target).unwrap(),
            None => inner.append_data(&mut h, path, &mut e).unwrap(),
        }
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&inner.into_inner().unwrap()).unwrap();
    let rootfs = gz.finish().unwrap();
    let mut outer = tar::Builder::new(Vec::new());
    for (name, data) in [
        (
            "metadata.json",
            &br#"{"provider": "lxc", "version": "1.0.0"}"#[..],
        ),
        (
            "Vagrantfile",
            &b"Vagrant.configure(\"2\") do |config|\nend\n"[..],
        ),
        ("rootfs.tar.gz", &rootfs[..]),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        outer.append_data(&mut h, name, data).unwrap();
    }
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(out).unwrap(),
        flate2::Compression::fast(),
    );
    gz.write_all(&outer.into_inner().unwrap()).unwrap();
    gz.finish().unwrap();
}
