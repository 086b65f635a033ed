//! Vagrant boxes: a `libvirt` box (a qcow2 `box.img`) becomes a qemu box; an
//! `lxc` box (a `rootfs.tar.gz`) becomes a jail and container box.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use indexmap::IndexMap;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::archive::{ArchiveError, Unpacked, damaged, entry_path, hashing_pipe, hex, kind_name};
use super::manifest::{Artifact, Manifest, is_plain_relative};
use super::store::Naming;
use super::{BoxError, io_err};

/// A Vagrant box is a tar (often gzipped); an envup box is zstd.
pub fn is_vagrant_box(path: &Path) -> io::Result<bool> {
    let mut head = [0u8; 262];
    let mut f = File::open(path)?;
    let mut n = 0;
    while n < head.len() {
        let r = f.read(&mut head[n..])?;
        if r == 0 {
            break;
        }
        n += r;
    }
    let gzip = n >= 2 && head[..2] == [0x1f, 0x8b];
    let tar = n >= 262 && &head[257..262] == b"ustar";
    Ok(gzip || tar)
}

#[derive(Deserialize)]
struct VagrantMetadata {
    provider: String,
    #[serde(default)]
    format: Option<String>,
}

fn copy_hashed(mut from: impl Read, to: &Path) -> Result<(String, u64), BoxError> {
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)
        .map_err(io_err("write", to))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    // A Vagrant box declares no sizes: bound what it unpacks to as it
    // grows, against the cap and the free space.
    let arch = |error| BoxError::unpacking("Vagrant box", error);
    let mut next_check = 0u64;
    loop {
        let n = from.read(&mut buf).map_err(|e| arch(damaged(e)))?;
        if n == 0 {
            break;
        }
        let cap = super::archive::max_box();
        if size + n as u64 > cap {
            return Err(arch(super::archive::ArchiveError::TooLarge {
                declared: size + n as u64,
                cap,
            }));
        }
        if size + n as u64 > next_check {
            next_check = size + (64 << 20);
            crate::host::check_space(to, 64 << 20)
                .map_err(|e| arch(super::archive::ArchiveError::NoSpace(e)))?;
        }
        h.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(io_err("write", to))?;
        size += n as u64;
    }
    Ok((hex(&h.finalize()), size))
}

/// Names at the top of a Vagrant box that are not files its Vagrantfile
/// may name: its own, and those of the envup box it becomes.
const RESERVED: [&str; 8] = [
    "metadata.json",
    "box.img",
    "rootfs.tar.gz",
    "Vagrantfile",
    "box.toml",
    "meta.json",
    "disk.qcow2",
    "rootfs.tar",
];

/// How many files beside its image a Vagrant box may have kept for its
/// Vagrantfile to name.
const MAX_EXTRA_FILES: usize = 16;

/// Where a file at the top of the box waits until its Vagrantfile is read
/// (a dot name: no artifact is one).
fn extra_name(name: &str) -> String {
    format!(".vagrant-{name}")
}

/// The path of a tar entry below a top `rootfs/` (or `./rootfs/`); `""`
/// for that directory itself; None for anything else.
fn under_rootfs(path: &[u8]) -> Option<&[u8]> {
    let p = path.strip_prefix(b"./").unwrap_or(path);
    match p {
        b"rootfs" | b"rootfs/" => Some(b""),
        _ => p.strip_prefix(b"rootfs/"),
    }
}

/// A writer that hashes and counts what passes through it.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    size: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A vagrant-lxc box keeps its tree under `./rootfs/` inside
/// `rootfs.tar.gz` (vagrant-lxc strips that level as it unpacks); envup's
/// `rootfs` artifact is the tree itself. When every entry of the tar at
/// `tar_path` is below such a level, the tar is written again without it
/// (hard link targets too; symlink targets are the machine's own paths and
/// stay) and the new hash and size are returned; otherwise None and the
/// tar is left as it is.
fn strip_rootfs_level(tar_path: &Path) -> Result<Option<(String, u64)>, ArchiveError> {
    let open = || File::open(tar_path).map(|f| tar::Archive::new(BufReader::new(f)));
    let mut any = false;
    for e in open().map_err(damaged)?.entries().map_err(damaged)? {
        let e = e.map_err(damaged)?;
        let p = e.path_bytes();
        if &*p == b"." || &*p == b"./" {
            continue;
        }
        if under_rootfs(&p).is_none() {
            return Ok(None);
        }
        any = true;
    }
    if !any {
        return Ok(None);
    }
    let size = std::fs::metadata(tar_path).map_err(damaged)?.len();
    crate::host::check_space(tar_path, size).map_err(ArchiveError::NoSpace)?;
    let tmp = tar_path.with_extension("tar.stripping");
    let out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(damaged)?;
    let written = (|| -> io::Result<(String, u64)> {
        let mut w = Hashing {
            inner: io::BufWriter::new(out),
            hash: Sha256::new(),
            size: 0,
        };
        {
            let mut b = tar::Builder::new(&mut w);
            for e in open()?.entries()? {
                let mut e = e?;
                let path = e.path_bytes().into_owned();
                let Some(rel) = under_rootfs(&path).filter(|r| !r.is_empty()) else {
                    continue;
                };
                let rel = std::ffi::OsStr::from_bytes(rel);
                let mut h = e.header().clone();
                let link = e.link_name_bytes().map(|l| l.into_owned());
                match link {
                    Some(target) if h.entry_type().is_hard_link() => {
                        let target = under_rootfs(&target).unwrap_or(&target).to_vec();
                        let target = std::ffi::OsStr::from_bytes(&target);
                        b.append_link(&mut h, rel, target)?;
                    }
                    Some(target) => {
                        let target = std::ffi::OsStr::from_bytes(&target);
                        b.append_link(&mut h, rel, target)?;
                    }
                    None => b.append_data(&mut h, rel, &mut e)?,
                }
            }
            b.finish()?;
        }
        w.flush()?;
        Ok((hex(&w.hash.finalize()), w.size))
    })();
    match written.and_then(|r| std::fs::rename(&tmp, tar_path).map(|()| r)) {
        Ok(r) => Ok(Some(r)),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(damaged(e))
        }
    }
}

/// Import the Vagrant box at `path` into `dest` as an envup box.
pub fn import(path: &Path, dest: &Path, naming: &Naming) -> Result<Unpacked, BoxError> {
    let arch_err = |error| BoxError::unpacking(&path.display().to_string(), error);
    let f = File::open(path).map_err(io_err("read", path))?;
    let (reader, hasher) = hashing_pipe(BufReader::new(f));
    let mut reader = BufReader::new(reader);
    let gz = {
        use std::io::BufRead;
        let head = reader.fill_buf().map_err(|e| arch_err(damaged(e)))?;
        head.len() >= 2 && head[..2] == [0x1f, 0x8b]
    };
    let inner: Box<dyn Read> = if gz {
        Box::new(flate2::read::GzDecoder::new(reader))
    } else {
        Box::new(reader)
    };
    let mut archive = tar::Archive::new(inner);
    let mut metadata = None;
    let mut vagrantfile = None;
    // Other files at the top of the box, which its Vagrantfile may name
    // (a kernel, an initramfs): kept aside until it is read.
    let mut extra: IndexMap<String, (String, u64)> = IndexMap::new();
    let mut artifacts: IndexMap<String, Artifact> = IndexMap::new();
    for entry in archive.entries().map_err(|e| arch_err(damaged(e)))? {
        let entry = entry.map_err(|e| arch_err(damaged(e)))?;
        let p = entry_path(&entry).map_err(arch_err)?;
        let kind = entry.header().entry_type();
        if kind == tar::EntryType::Directory || p.is_empty() || p == "." {
            continue;
        }
        if !is_plain_relative(&p) {
            return Err(arch_err(ArchiveError::Unexpected(p)));
        }
        if kind != tar::EntryType::Regular {
            return Err(arch_err(ArchiveError::NotAFile {
                path: p,
                kind: kind_name(kind),
            }));
        }
        match p.as_str() {
            "metadata.json" => {
                let mut text = String::new();
                entry
                    .take(1 << 20)
                    .read_to_string(&mut text)
                    .map_err(|e| arch_err(damaged(e)))?;
                let m: VagrantMetadata = serde_json::from_str(&text).map_err(|e| {
                    arch_err(ArchiveError::Damaged(format!(
                        "metadata.json is not valid: {e}"
                    )))
                })?;
                metadata = Some(m);
            }
            "box.img" => {
                let (sha256, size) = copy_hashed(entry, &dest.join("disk.qcow2"))?;
                artifacts.insert(
                    "disk".into(),
                    Artifact {
                        path: "disk.qcow2".into(),
                        sha256,
                        size,
                        format: Some("qcow2".into()),
                    },
                );
            }
            "rootfs.tar.gz" => {
                let tar = dest.join("rootfs.tar");
                let (mut sha256, mut size) =
                    copy_hashed(flate2::read::GzDecoder::new(entry), &tar)?;
                if let Some(stripped) = strip_rootfs_level(&tar).map_err(arch_err)? {
                    (sha256, size) = stripped;
                }
                artifacts.insert(
                    "rootfs".into(),
                    Artifact {
                        path: "rootfs.tar".into(),
                        sha256,
                        size,
                        format: None,
                    },
                );
            }
            "Vagrantfile" => {
                let mut text = String::new();
                entry
                    .take(1 << 20)
                    .read_to_string(&mut text)
                    .map_err(|e| arch_err(damaged(e)))?;
                vagrantfile = Some(text);
            }
            // A box has a few such files (a kernel, an initramfs, notes):
            // more than that are not kept.
            name if !name.contains('/')
                && !RESERVED.contains(&name)
                && extra.len() < MAX_EXTRA_FILES =>
            {
                let (sha256, size) = copy_hashed(entry, &dest.join(extra_name(name)))?;
                extra.insert(name.to_owned(), (sha256, size));
                // Bounded all together, as each one is.
                let total: u64 = extra.values().map(|(_, n)| n).sum();
                let cap = super::archive::max_box();
                if total > cap {
                    return Err(arch_err(ArchiveError::TooLarge {
                        declared: total,
                        cap,
                    }));
                }
            }
            _ => {} // files in directories: nothing a box boots from
        }
    }
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(|e| arch_err(damaged(e)))?;
    drop(rest);
    let digest = hasher
        .join()
        .expect("hashing thread")
        .map_err(io_err("read", path))?;
    let metadata =
        metadata.ok_or_else(|| arch_err(ArchiveError::NoManifest("(no metadata.json)".into())))?;
    // The backend that takes the provider's boxes says how they are laid out.
    let registry = crate::backend::Registry::builtin();
    let (wanted, user, first_login) = match registry.vagrant_provider(&metadata.provider) {
        Some(p) => (p.artifact, p.user, p.first_login),
        None => {
            let mut by_provider: IndexMap<&str, Vec<&str>> = IndexMap::new();
            for b in registry.all() {
                for p in b.vagrant_providers() {
                    by_provider.entry(p.name).or_default().push(b.name());
                }
            }
            let takes: Vec<String> = by_provider
                .iter()
                .map(|(p, bs)| format!("`{p}` ({})", bs.join(", ")))
                .collect();
            return Err(BoxError::Unsupported(format!(
                "a Vagrant box for the `{}` provider: envup imports {} boxes",
                crate::ident::printable(&metadata.provider),
                takes.join(", ")
            )));
        }
    };
    if metadata
        .format
        .as_deref()
        .is_some_and(|f| wanted == "disk" && f != "qcow2")
    {
        return Err(BoxError::Unsupported(format!(
            "a libvirt box in `{}` format (envup reads qcow2)",
            metadata.format.unwrap_or_default()
        )));
    }
    artifacts.retain(|k, _| k == wanted);
    if artifacts.is_empty() {
        let file = if wanted == "disk" {
            "box.img"
        } else {
            "rootfs.tar.gz"
        };
        return Err(arch_err(ArchiveError::Missing(file.into())));
    }
    // A libvirt box may boot through files its Vagrantfile names, and log
    // in as another user.
    let mut boot = None;
    let mut user = user.to_owned();
    let mut asks = Vec::new();
    if wanted == "disk"
        && let Some(text) = &vagrantfile
    {
        let settings =
            super::vagrantfile::read(text).map_err(|e| BoxError::Unsupported(e.to_string()))?;
        for (artifact, file) in [("kernel", &settings.kernel), ("initrd", &settings.initrd)] {
            let Some(file) = file else { continue };
            let (sha256, size) = extra.shift_remove(file).ok_or_else(|| {
                arch_err(ArchiveError::Missing(format!(
                    "{file} (its Vagrantfile's libvirt.{artifact})"
                )))
            })?;
            std::fs::rename(dest.join(extra_name(file)), dest.join(file))
                .map_err(io_err("rename", dest))?;
            artifacts.insert(
                artifact.into(),
                Artifact {
                    path: file.clone(),
                    sha256,
                    size,
                    format: None,
                },
            );
        }
        boot = settings
            .cmd_line
            .map(|cmdline| super::manifest::Boot { cmdline });
        if let Some(u) = settings.ssh_username {
            user = u;
        }
        if let Some(m) = settings.memory_mib {
            asks.push(format!("{m} MiB of memory"));
        }
        if let Some(c) = settings.cpus {
            asks.push(format!("{c} cpus"));
        }
    }
    for name in extra.keys() {
        let _ = std::fs::remove_file(dest.join(extra_name(name)));
    }
    let name = naming.name.clone().ok_or_else(|| {
        BoxError::Unsupported(
            "a Vagrant box does not carry its name: pass --name (a catalog gives it one)".into(),
        )
    })?;
    let manifest = Manifest {
        name,
        version: naming.version.clone().unwrap_or_else(|| "0.0.0".into()),
        arch: "x86_64".into(),
        ssh_user: user,
        description: Some(if asks.is_empty() {
            format!("imported from a Vagrant {} box", metadata.provider)
        } else {
            format!(
                "imported from a Vagrant {} box, whose Vagrantfile asks for {}",
                metadata.provider,
                asks.join(" and ")
            )
        }),
        artifacts,
        boot,
        first_login,
    };
    let text = manifest.to_toml();
    Manifest::parse(&text).map_err(|e| arch_err(e.into()))?;
    std::fs::write(dest.join("box.toml"), text).map_err(io_err("write", dest))?;
    Ok(Unpacked { manifest, digest })
}
