//! Reading and writing `.box` files: a zstd-compressed tar whose first entry
//! is `box.toml`, followed by the artifacts it lists.
//!
//! Unpacking trusts nothing in the archive: only regular files, only the
//! paths the manifest names, each exactly the size it declares and hashing to
//! the digest it declares. It writes only inside the directory it is given,
//! which the caller throws away on any error.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use sha2::{Digest, Sha256};

use super::manifest::{Manifest, ManifestError};

const MANIFEST: &str = "box.toml";
const MANIFEST_MAX: u64 = 1 << 20;
const CHUNK: usize = 1 << 20;
/// What may follow the last artifact (tar's end blocks and padding).
const TRAILING_MAX: u64 = 1 << 20;

/// The most bytes one box may unpack to: 256 GiB, or `ENVUP_MAX_BOX`
/// (bytes). What a box unpacks to is what its box.toml declares, so this
/// and the free space are checked before anything is written.
pub fn max_box() -> u64 {
    std::env::var("ENVUP_MAX_BOX")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(256 << 30)
}

/// Refuse a box of `declared` bytes that is over the cap or does not fit
/// on the disk of `dest`.
pub fn check_unpacked_size(declared: u64, dest: &Path) -> Result<(), ArchiveError> {
    let cap = max_box();
    if declared > cap {
        return Err(ArchiveError::TooLarge { declared, cap });
    }
    crate::host::check_space(dest, declared).map_err(ArchiveError::NoSpace)
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("cannot read the box")]
    Read(#[source] io::Error),
    #[error("cannot write {}", .0.display())]
    Write(std::path::PathBuf, #[source] io::Error),
    #[error("the box is damaged or cut short: {0}")]
    Damaged(String),
    #[error("the box's first entry is `{0}`, not box.toml: this is not an envup box")]
    NoManifest(String),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("the box holds `{0}`, which box.toml does not list")]
    Unexpected(String),
    #[error("the box holds `{path}` as a {kind}; a box holds only regular files")]
    NotAFile { path: String, kind: String },
    #[error("the box holds `{0}` twice")]
    Duplicate(String),
    #[error("artifact `{name}` is {actual} bytes, but box.toml declares {declared}")]
    Size {
        name: String,
        declared: u64,
        actual: u64,
    },
    #[error(
        "the box unpacks to {}, more than envup takes ({}; ENVUP_MAX_BOX)",
        crate::host::human_bytes(*.declared), crate::host::human_bytes(*.cap)
    )]
    TooLarge { declared: u64, cap: u64 },
    #[error(transparent)]
    NoSpace(#[from] crate::host::NoSpace),
    #[error(
        "the box goes on for more than {} after its last artifact",
        crate::host::human_bytes(TRAILING_MAX)
    )]
    Trailing,
    #[error("artifact `{0}` is listed in box.toml but missing from the box")]
    Missing(String),
    #[error("artifact `{name}` does not match box.toml: expected sha256 {expected}, got {actual}")]
    Digest {
        name: String,
        expected: String,
        actual: String,
    },
}

pub fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

/// The sha256 of a file, read in large chunks.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// Reads chunks that another thread read and hashed.
pub(super) struct ChunkReader {
    rx: Receiver<io::Result<Vec<u8>>>,
    current: Vec<u8>,
    pos: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            match self.rx.recv() {
                Ok(chunk) => {
                    self.current = chunk?;
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Read `src` to its end on a thread of its own, hashing every byte, and
/// hand the bytes on; the hash of the whole input comes back at the end.
pub(super) fn hashing_pipe<R: Read + Send + 'static>(
    mut src: R,
) -> (ChunkReader, std::thread::JoinHandle<io::Result<String>>) {
    let (tx, rx): (SyncSender<io::Result<Vec<u8>>>, _) = sync_channel(8);
    let handle = std::thread::spawn(move || {
        let mut h = Sha256::new();
        loop {
            let mut chunk = vec![0u8; CHUNK];
            let n = match src.read(&mut chunk) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let text = e.to_string();
                    let _ = tx.send(Err(e));
                    return Err(io::Error::other(text));
                }
            };
            if n == 0 {
                return Ok(hex(&h.finalize()));
            }
            chunk.truncate(n);
            h.update(&chunk);
            if tx.send(Ok(chunk)).is_err() {
                // The unpacker stopped early, on an error of its own.
                return Err(io::Error::other("unpacking stopped"));
            }
        }
    });
    (
        ChunkReader {
            rx,
            current: Vec::new(),
            pos: 0,
        },
        handle,
    )
}

/// What unpacking found.
#[derive(Debug, Clone)]
pub struct Unpacked {
    pub manifest: Manifest,
    /// sha256 of the box file as read.
    pub digest: String,
}

pub(super) fn entry_path(entry: &tar::Entry<'_, impl Read>) -> Result<String, ArchiveError> {
    let raw = entry.path_bytes();
    let text = String::from_utf8(raw.into_owned())
        .map_err(|_| ArchiveError::Unexpected("(a name that is not UTF-8)".into()))?;
    Ok(text.strip_prefix("./").unwrap_or(&text).to_owned())
}

pub(super) fn kind_name(t: tar::EntryType) -> String {
    match t {
        tar::EntryType::Symlink => "symbolic link".into(),
        tar::EntryType::Link => "hard link".into(),
        tar::EntryType::Directory => "directory".into(),
        tar::EntryType::Char | tar::EntryType::Block => "device".into(),
        tar::EntryType::Fifo => "fifo".into(),
        other => format!("{other:?} entry").to_lowercase(),
    }
}

pub(super) fn damaged(e: io::Error) -> ArchiveError {
    ArchiveError::Damaged(e.to_string())
}

/// Unpack the box read from `src` into `dest`, an empty directory.
pub fn unpack<R: Read + Send + 'static>(src: R, dest: &Path) -> Result<Unpacked, ArchiveError> {
    let (reader, hasher) = hashing_pipe(src);
    let result = unpack_entries(reader, dest);
    let digest = hasher.join().expect("hashing thread");
    let manifest = result?;
    let digest = digest.map_err(ArchiveError::Read)?;
    Ok(Unpacked { manifest, digest })
}

fn unpack_entries(reader: ChunkReader, dest: &Path) -> Result<Manifest, ArchiveError> {
    let decoder = zstd::Decoder::new(reader).map_err(damaged)?;
    let mut archive = tar::Archive::new(decoder);
    let mut entries = archive.entries().map_err(damaged)?;

    let first = entries
        .next()
        .ok_or_else(|| ArchiveError::Damaged("the archive is empty".into()))?
        .map_err(damaged)?;
    let first_path = entry_path(&first)?;
    if first_path != MANIFEST {
        return Err(ArchiveError::NoManifest(first_path));
    }
    if first.header().entry_type() != tar::EntryType::Regular {
        return Err(ArchiveError::NotAFile {
            path: first_path,
            kind: kind_name(first.header().entry_type()),
        });
    }
    let mut text = String::new();
    first
        .take(MANIFEST_MAX)
        .read_to_string(&mut text)
        .map_err(damaged)?;
    let manifest = Manifest::parse(&text)?;
    check_unpacked_size(manifest.total_size(), dest)?;
    let manifest_path = dest.join(MANIFEST);
    std::fs::write(&manifest_path, &text).map_err(|e| ArchiveError::Write(manifest_path, e))?;

    let mut seen: Vec<String> = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    for entry in entries {
        let mut entry = entry.map_err(damaged)?;
        let path = entry_path(&entry)?;
        let Some((name, artifact)) = manifest.artifacts.iter().find(|(_, a)| a.path == path) else {
            return Err(ArchiveError::Unexpected(path));
        };
        let kind = entry.header().entry_type();
        if kind != tar::EntryType::Regular {
            return Err(ArchiveError::NotAFile {
                path,
                kind: kind_name(kind),
            });
        }
        if seen.contains(name) {
            return Err(ArchiveError::Duplicate(path));
        }
        let header_size = entry.header().size().map_err(damaged)?;
        if header_size != artifact.size {
            return Err(ArchiveError::Size {
                name: name.clone(),
                declared: artifact.size,
                actual: header_size,
            });
        }
        let target = dest.join(&artifact.path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| ArchiveError::Write(parent.to_owned(), e))?;
        }
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&target)
            .map_err(|e| ArchiveError::Write(target.clone(), e))?;
        let mut h = Sha256::new();
        let mut written = 0u64;
        loop {
            let n = entry.read(&mut buf).map_err(damaged)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            out.write_all(&buf[..n])
                .map_err(|e| ArchiveError::Write(target.clone(), e))?;
            written += n as u64;
        }
        if written != artifact.size {
            return Err(ArchiveError::Damaged(format!(
                "artifact `{name}` ends after {written} of {} bytes",
                artifact.size
            )));
        }
        let actual = hex(&h.finalize());
        if actual != artifact.sha256 {
            return Err(ArchiveError::Digest {
                name: name.clone(),
                expected: artifact.sha256.clone(),
                actual,
            });
        }
        seen.push(name.clone());
    }
    if let Some(missing) = manifest.artifacts.keys().find(|k| !seen.contains(k)) {
        return Err(ArchiveError::Missing(missing.clone()));
    }
    // Read to the end, so that a cut-off stream is noticed and the whole
    // file is hashed.
    let decoder = archive.into_inner();
    let mut rest = decoder.take(TRAILING_MAX + 1);
    if io::copy(&mut rest, &mut io::sink()).map_err(damaged)? > TRAILING_MAX {
        return Err(ArchiveError::Trailing);
    }
    let decoder = rest.into_inner();
    let mut rest = decoder.finish();
    io::copy(&mut rest, &mut io::sink()).map_err(damaged)?;
    Ok(manifest)
}

/// Unpack a box file from disk.
pub fn unpack_file(path: &Path, dest: &Path) -> Result<Unpacked, ArchiveError> {
    let f = File::open(path).map_err(ArchiveError::Read)?;
    unpack(BufReader::with_capacity(CHUNK, f), dest)
}

/// Hashes what passes through to the inner writer.
struct HashingWriter<W> {
    inner: W,
    hash: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Write a box file at `out` from the artifact files in `src`, filling in
/// each artifact's sha256 and size. Entries carry no owner and a fixed time,
/// so the same inputs make the same box. Returns the manifest and the box's
/// sha256.
pub fn pack(
    draft: &Manifest,
    src: &Path,
    out: &Path,
) -> Result<(Manifest, crate::ident::Digest), ArchiveError> {
    let mut manifest = draft.clone();
    for a in manifest.artifacts.values_mut() {
        let p = src.join(&a.path);
        a.sha256 = sha256_file(&p).map_err(ArchiveError::Read)?;
        a.size = std::fs::metadata(&p).map_err(ArchiveError::Read)?.len();
    }
    let text = manifest.to_toml();
    Manifest::parse(&text)?;
    let dir = out.parent().unwrap_or(Path::new("."));
    let werr = |e| ArchiveError::Write(out.to_owned(), e);
    let tmp = tempfile::Builder::new()
        .prefix(".box-")
        .tempfile_in(dir)
        .map_err(werr)?;
    let writer = HashingWriter {
        inner: io::BufWriter::with_capacity(CHUNK, tmp.as_file().try_clone().map_err(werr)?),
        hash: Sha256::new(),
    };
    let mut enc = zstd::Encoder::new(writer, 3).map_err(werr)?;
    enc.multithread(2).map_err(werr)?;
    let mut tar = tar::Builder::new(enc);
    let header = |path: &str, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_path(path).expect("checked paths fit");
        h.set_size(size);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        h
    };
    tar.append(&header(MANIFEST, text.len() as u64), text.as_bytes())
        .map_err(werr)?;
    for a in manifest.artifacts.values() {
        let f = File::open(src.join(&a.path)).map_err(ArchiveError::Read)?;
        tar.append(&header(&a.path, a.size), BufReader::with_capacity(CHUNK, f))
            .map_err(werr)?;
    }
    let enc = tar.into_inner().map_err(werr)?;
    let mut writer = enc.finish().map_err(werr)?;
    writer.flush().map_err(werr)?;
    let HashingWriter { inner, hash } = writer;
    drop(inner);
    let digest = crate::ident::Digest::from_sha256(&hash.finalize());
    tmp.as_file().sync_all().map_err(werr)?;
    tmp.persist(out).map_err(|e| werr(e.error))?;
    Ok((manifest, digest))
}
