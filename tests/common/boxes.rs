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
    let src = tempfile::tempdir().unwrap();
    let mut m = Manifest {
        name: name.into(),
        version: version.into(),
        arch: "x86_64".into(),
        ssh_user: "root".into(),
        description: None,
        artifacts: Default::default(),
        boot: None,
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

/// The sha256 of the stored box `name` in the store at `home`.
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
