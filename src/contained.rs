//! Paths resolved inside a directory that stands for a machine's root.
//!
//! A machine's files (a box's rootfs, a jail's layer, a mounted overlay)
//! are written by the box's author and by root inside the machine, so any
//! of their symlinks or `..` may point at the host. Everything envup
//! reads from or writes into such a tree goes through [`Root`], which
//! resolves every path with `openat2(RESOLVE_IN_ROOT)`: `..` and absolute
//! symlinks stop at the root, as they would inside the machine, and no
//! magic link (`/proc/self/…`) is followed. Nothing here joins a string
//! onto a host path.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::Mode;

/// A directory handle that paths are resolved inside.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
}

/// A path made relative, with `.` dropped. `..` stays: the kernel keeps it
/// inside the root.
fn relative(rel: &Path) -> PathBuf {
    rel.components()
        .filter(|c| {
            !matches!(
                c,
                Component::RootDir | Component::CurDir | Component::Prefix(_)
            )
        })
        .collect()
}

/// `rel` resolved lexically as it would be inside a root: `..` never
/// climbs above the top. (Symlinks are the kernel's to resolve.)
pub fn normalize(rel: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

fn err(what: &str, path: &Path, e: impl Into<std::io::Error>) -> std::io::Error {
    let e: std::io::Error = e.into();
    std::io::Error::new(e.kind(), format!("{what} /{}: {e}", path.display()))
}

impl Root {
    /// Open `path` (a host path envup chose) as a root.
    pub fn open(path: &Path) -> std::io::Result<Root> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| {
            std::io::Error::new(
                std::io::Error::from(e).kind(),
                format!("{}: {e}", path.display()),
            )
        })?;
        Ok(Root { fd })
    }

    /// The directory behind `fd` as a root (a mount envup made).
    pub fn from_fd(fd: OwnedFd) -> Root {
        Root { fd }
    }

    /// The root's own descriptor.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Open `rel` inside the root.
    fn resolve(&self, rel: &Path, flags: OFlag, mode: u32) -> nix::Result<OwnedFd> {
        let rel = relative(rel);
        let rel: &Path = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            &rel
        };
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC)
            .mode(Mode::from_bits_truncate(mode))
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        loop {
            match openat2(self.fd.as_fd(), rel, how) {
                Err(Errno::EAGAIN | Errno::EINTR) => continue,
                other => return other,
            }
        }
    }

    /// The directory `rel`, opened for use as a mount target or a parent.
    pub fn open_dir(&self, rel: &Path) -> std::io::Result<OwnedFd> {
        self.resolve(rel, OFlag::O_DIRECTORY | OFlag::O_RDONLY, 0)
            .map_err(|e| err("cannot open", rel, e))
    }

    /// Make directory `rel` and its missing parents inside the root. New
    /// directories get `mode` and `owner` (unless `owner` is `None`).
    pub fn mkdir_all(
        &self,
        rel: &Path,
        mode: u32,
        owner: Option<(u32, u32)>,
    ) -> std::io::Result<OwnedFd> {
        let rel = relative(rel);
        let mut dir = self.open_dir(Path::new("."))?;
        let mut done = PathBuf::new();
        for part in rel.components() {
            done.push(part);
            match self.resolve(&done, OFlag::O_DIRECTORY | OFlag::O_RDONLY, 0) {
                Ok(fd) => {
                    dir = fd;
                    continue;
                }
                Err(Errno::ENOENT) => {}
                Err(e) => return Err(err("cannot open", &done, e)),
            }
            let name = part.as_os_str();
            match nix::sys::stat::mkdirat(dir.as_fd(), name, Mode::from_bits_truncate(0o700)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(err("cannot make", &done, e)),
            }
            let fd = self
                .resolve(&done, OFlag::O_DIRECTORY | OFlag::O_RDONLY, 0)
                .map_err(|e| err("cannot open", &done, e))?;
            if let Some((uid, gid)) = owner {
                nix::unistd::fchown(fd.as_fd(), Some(uid.into()), Some(gid.into()))
                    .map_err(|e| err("cannot chown", &done, e))?;
            }
            nix::sys::stat::fchmod(fd.as_fd(), Mode::from_bits_truncate(mode))
                .map_err(|e| err("cannot chmod", &done, e))?;
            dir = fd;
        }
        Ok(dir)
    }

    /// Write `bytes` to file `rel` inside the root, replacing whatever is
    /// there (a symlink is replaced, not followed); the file gets `mode`
    /// and `owner`. Its parent must exist.
    pub fn write_file(
        &self,
        rel: &Path,
        bytes: &[u8],
        mode: u32,
        owner: (u32, u32),
    ) -> std::io::Result<()> {
        let rel = normalize(rel);
        let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
            return Err(err(
                "cannot write",
                &rel,
                std::io::Error::from(std::io::ErrorKind::InvalidInput),
            ));
        };
        let dir = self.open_dir(parent)?;
        match nix::unistd::unlinkat(dir.as_fd(), name, nix::unistd::UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(err("cannot replace", &rel, e)),
        }
        let fd = nix::fcntl::openat(
            dir.as_fd(),
            name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| err("cannot write", &rel, e))?;
        nix::unistd::fchown(fd.as_fd(), Some(owner.0.into()), Some(owner.1.into()))
            .map_err(|e| err("cannot chown", &rel, e))?;
        nix::sys::stat::fchmod(fd.as_fd(), Mode::from_bits_truncate(mode))
            .map_err(|e| err("cannot chmod", &rel, e))?;
        let mut f = std::fs::File::from(fd);
        f.write_all(bytes).map_err(|e| err("cannot write", &rel, e))
    }

    /// Read regular file `rel` inside the root, at most `max` bytes (a
    /// FIFO, a device or a larger file is refused).
    pub fn read_file(&self, rel: &Path, max: u64) -> std::io::Result<Vec<u8>> {
        let fd = self
            .resolve(
                rel,
                OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY,
                0,
            )
            .map_err(|e| err("cannot open", rel, e))?;
        let f = std::fs::File::from(fd);
        let meta = f.metadata()?;
        if !meta.is_file() {
            return Err(err(
                "cannot read",
                rel,
                std::io::Error::other("not a regular file"),
            ));
        }
        if meta.len() > max {
            return Err(err(
                "cannot read",
                rel,
                std::io::Error::other(format!("larger than {max} bytes")),
            ));
        }
        let mut out = Vec::new();
        f.take(max).read_to_end(&mut out)?;
        Ok(out)
    }

    /// Rewrite regular file `rel` inside the root in place (its inode kept:
    /// it may be a bind mount) with what `edit` makes of its contents, at
    /// most `max` bytes of them; a missing file is made with `mode`, owned
    /// by the owner of the root itself (the machine's root, not the
    /// host's). Anything but a regular file is refused before it is opened
    /// for writing.
    pub fn rewrite_file(
        &self,
        rel: &Path,
        max: u64,
        mode: u32,
        edit: &dyn Fn(&[u8]) -> Vec<u8>,
    ) -> std::io::Result<()> {
        let fd = match self.resolve(rel, OFlag::O_PATH, 0) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => {
                let made = self
                    .resolve(
                        rel,
                        // A dangling symlink is followed, inside the root.
                        OFlag::O_WRONLY | OFlag::O_CREAT,
                        mode,
                    )
                    .map_err(|e| err("cannot make", rel, e))?;
                let root =
                    nix::sys::stat::fstat(self.fd()).map_err(|e| err("cannot stat", rel, e))?;
                nix::unistd::fchown(
                    made.as_fd(),
                    Some(nix::unistd::Uid::from_raw(root.st_uid)),
                    Some(nix::unistd::Gid::from_raw(root.st_gid)),
                )
                .map_err(|e| err("cannot give", rel, e))?;
                made
            }
            Err(e) => return Err(err("cannot open", rel, e)),
        };
        let meta = nix::sys::stat::fstat(fd.as_fd()).map_err(|e| err("cannot stat", rel, e))?;
        if meta.st_mode & nix::libc::S_IFMT != nix::libc::S_IFREG {
            return Err(err(
                "cannot rewrite",
                rel,
                std::io::Error::other("not a regular file"),
            ));
        }
        if meta.st_size as u64 > max {
            return Err(err(
                "cannot rewrite",
                rel,
                std::io::Error::other(format!("larger than {max} bytes")),
            ));
        }
        // The file the descriptor holds, opened again for reading and
        // writing: nothing is resolved a second time.
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(fd_path(&fd))
            .map_err(|e| err("cannot open", rel, e))?;
        let mut old = Vec::new();
        (&mut f)
            .take(max)
            .read_to_end(&mut old)
            .map_err(|e| err("cannot read", rel, e))?;
        let new = edit(&old);
        if new == old {
            return Ok(());
        }
        use std::io::{Seek, SeekFrom};
        f.set_len(0).map_err(|e| err("cannot truncate", rel, e))?;
        f.seek(SeekFrom::Start(0))?;
        f.write_all(&new).map_err(|e| err("cannot write", rel, e))
    }

    /// Metadata of `rel` inside the root, not following a final symlink.
    pub fn symlink_metadata(&self, rel: &Path) -> std::io::Result<std::fs::Metadata> {
        let fd = self
            .resolve(rel, OFlag::O_PATH | OFlag::O_NOFOLLOW, 0)
            .map_err(|e| err("cannot open", rel, e))?;
        std::fs::File::from(fd).metadata()
    }
}

/// A path through which a syscall that takes a path (`mount`) reaches the
/// file behind `fd` without resolving anything again.
pub fn fd_path(fd: &impl AsRawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_stay_inside_and_take_only_regular_files() {
        let top = tempfile::tempdir().unwrap();
        let root = top.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        let victim = top.path().join("hosts");
        std::fs::write(&victim, "host's own\n").unwrap();
        // `/etc/hosts` inside points at `../hosts`, which on the host is the victim.
        std::os::unix::fs::symlink("../../hosts", root.join("etc/hosts")).unwrap();
        let r = Root::open(&root).unwrap();
        let add = |old: &[u8]| [old, b"x\n"].concat();
        r.rewrite_file(Path::new("etc/hosts"), 1024, 0o644, &add)
            .unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "host's own\n");
        assert_eq!(std::fs::read_to_string(root.join("hosts")).unwrap(), "x\n");
        r.rewrite_file(Path::new("hosts"), 1024, 0o644, &add)
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(root.join("hosts")).unwrap(),
            "x\nx\n"
        );
        nix::unistd::mkfifo(&root.join("etc/fifo"), Mode::from_bits_truncate(0o644)).unwrap();
        let e = r
            .rewrite_file(Path::new("etc/fifo"), 1024, 0o644, &add)
            .unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let e = r
            .rewrite_file(Path::new("hosts"), 2, 0o644, &add)
            .unwrap_err();
        assert!(e.to_string().contains("larger than"), "{e}");
    }

    #[test]
    fn writes_stay_inside_through_symlinks_and_dotdot() {
        let top = tempfile::tempdir().unwrap();
        let root = top.path().join("root");
        let victim = top.path().join("victim");
        std::fs::create_dir_all(root.join("inside")).unwrap();
        std::fs::create_dir_all(&victim).unwrap();
        // Inside the machine `/abs` is `/inside`; on the host `rel` would
        // be the victim.
        std::os::unix::fs::symlink("/inside", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../victim", root.join("rel")).unwrap();
        let r = Root::open(&root).unwrap();
        let me = (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        );
        r.mkdir_all(Path::new("abs/a/b"), 0o755, None).unwrap();
        assert!(root.join("inside/a/b").is_dir());
        // A symlink that leads nowhere inside the root is an error, never
        // a way out.
        assert!(r.mkdir_all(Path::new("rel/c"), 0o755, None).is_err());
        r.mkdir_all(Path::new("../../victim/d"), 0o755, None)
            .unwrap();
        assert!(root.join("victim/d").is_dir());
        r.write_file(Path::new("abs/f"), b"x", 0o644, me).unwrap();
        assert!(root.join("inside/f").is_file());
        r.write_file(Path::new("../../victim/g"), b"x", 0o644, me)
            .unwrap();
        assert!(root.join("victim/g").is_file());
        assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 0);
    }

    #[test]
    fn write_replaces_a_symlink_instead_of_following_it() {
        let top = tempfile::tempdir().unwrap();
        let outside = top.path().join("outside");
        std::fs::write(&outside, "keep").unwrap();
        let root = top.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("f")).unwrap();
        let r = Root::open(&root).unwrap();
        let me = (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        );
        r.write_file(Path::new("f"), b"new", 0o600, me).unwrap();
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "keep");
        assert_eq!(std::fs::read_to_string(root.join("f")).unwrap(), "new");
    }

    #[test]
    fn reads_refuse_fifos_and_escapes() {
        let top = tempfile::tempdir().unwrap();
        std::fs::write(top.path().join("secret"), "s").unwrap();
        let root = top.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        nix::unistd::mkfifo(&root.join("etc/fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        std::os::unix::fs::symlink("../../secret", root.join("etc/passwd")).unwrap();
        let r = Root::open(&root).unwrap();
        assert!(r.read_file(Path::new("etc/fifo"), 10).is_err());
        assert!(r.read_file(Path::new("etc/passwd"), 10).is_err());
    }

    #[test]
    fn normalize_stays_at_the_top() {
        assert_eq!(normalize(Path::new("/../../a/./b/../c")), Path::new("a/c"));
        assert_eq!(normalize(Path::new("..")), Path::new(""));
    }
}
