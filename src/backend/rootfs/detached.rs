//! Mounts made on the host's side, detached (not attached anywhere in a
//! mount namespace) and handed to a machine as file descriptors: the
//! machine's root (an overlay over its box's rootfs, id-mapped into the
//! machine's user namespace) and its shares. The machine attaches them
//! inside its own namespaces with `move_mount`, so it needs no access to
//! the host paths they come from, and nothing is left on the host when the
//! last descriptor closes.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use rustix::mount::{
    FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, OpenTreeFlags, fsconfig_create,
    fsconfig_set_string, fsmount, fsopen, move_mount, open_tree,
};

use crate::contained::fd_path;

/// A detached mount failed.
#[derive(Debug, thiserror::Error)]
#[error("{what}{}", if .detail.is_empty() { String::new() } else { format!(" ({})", .detail) })]
pub struct MountError {
    pub what: String,
    /// What the file system said, when it said anything.
    pub detail: String,
    #[source]
    pub source: std::io::Error,
}

impl crate::backend::OwnError for MountError {}

fn failed(what: impl std::fmt::Display) -> impl FnOnce(rustix::io::Errno) -> MountError {
    let what = what.to_string();
    move |e| MountError {
        what,
        detail: String::new(),
        source: e.into(),
    }
}

/// `mount_setattr(2)`'s argument (not in rustix).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_IDMAP: u64 = 0x10_0000;

/// Set attributes on every mount of a detached tree: read-only, and an id
/// mapping (the owners on disk seen through `userns`'s map).
fn set_attrs(tree: &OwnedFd, read_only: bool, userns: Option<&OwnedFd>) -> std::io::Result<()> {
    let mut attr = MountAttr {
        attr_set: 0,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    if read_only {
        attr.attr_set |= MOUNT_ATTR_RDONLY;
    }
    if let Some(ns) = userns {
        attr.attr_set |= MOUNT_ATTR_IDMAP;
        attr.userns_fd = u64::try_from(ns.as_raw_fd()).expect("an open descriptor");
    }
    if attr.attr_set == 0 {
        return Ok(());
    }
    // SAFETY: mount_setattr reads `size_of::<MountAttr>()` bytes from a
    // live, properly laid out struct and writes nothing; the path is a
    // NUL-terminated literal.
    let r = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            nix::libc::AT_EMPTY_PATH | nix::libc::AT_RECURSIVE,
            &raw const attr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A copy of the mount tree at `path` (with the mounts below it when
/// `recursive`), detached, read-only if asked, and seen through `userns`'s
/// id map if given.
pub fn tree(
    path: &Path,
    recursive: bool,
    read_only: bool,
    userns: Option<&OwnedFd>,
) -> Result<OwnedFd, MountError> {
    let mut flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= OpenTreeFlags::AT_RECURSIVE;
    }
    let fd = open_tree(rustix::fs::CWD, path, flags).map_err(failed(format!(
        "cannot take a copy of the mount at {}",
        path.display()
    )))?;
    set_attrs(&fd, read_only, userns).map_err(|source| MountError {
        what: format!(
            "cannot {} {}",
            if userns.is_some() {
                "map the owners of"
            } else {
                "make read-only"
            },
            path.display()
        ),
        detail: if userns.is_some() && source.raw_os_error() == Some(nix::libc::EINVAL) {
            "its file system cannot be id-mapped".into()
        } else {
            String::new()
        },
        source,
    })?;
    Ok(fd)
}

/// An overlay of `upper` (and its `work` directory) over `lower`, detached.
/// The three are reached through descriptors, so no character in their
/// paths needs escaping. In a user namespace (`userxattr`) the overlay
/// keeps its own attributes as `user.` extended attributes, the only ones
/// it may write there.
pub fn overlay(
    lower: &OwnedFd,
    upper: &Path,
    work: &Path,
    userxattr: bool,
) -> Result<OwnedFd, MountError> {
    let open = |p: &Path| {
        nix::fcntl::open(
            p,
            nix::fcntl::OFlag::O_PATH
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| MountError {
            what: format!("cannot open {}", p.display()),
            detail: String::new(),
            source: e.into(),
        })
    };
    let (up, wk) = (open(upper)?, open(work)?);
    let fs =
        fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC).map_err(failed("cannot make an overlay"))?;
    let said = |e: rustix::io::Errno| MountError {
        what: "cannot mount the machine's overlay".into(),
        detail: messages(&fs),
        source: e.into(),
    };
    for (key, fd) in [("lowerdir", lower), ("upperdir", &up), ("workdir", &wk)] {
        fsconfig_set_string(&fs, key, fd_path(fd).as_path()).map_err(said)?;
    }
    if userxattr {
        rustix::mount::fsconfig_set_flag(&fs, "userxattr").map_err(said)?;
    }
    fsconfig_create(&fs).map_err(said)?;
    fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, MountAttrFlags::empty()).map_err(said)
}

/// What the kernel wrote to a file system context's log.
fn messages(fs: &OwnedFd) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 512];
    while let Ok(n) = nix::unistd::read(fs, &mut buf) {
        if n == 0 {
            break;
        }
        out.push(String::from_utf8_lossy(&buf[..n]).trim().to_owned());
    }
    out.join("; ")
}

/// Attach the detached mount `tree` onto the directory `onto` (in the
/// caller's mount namespace).
pub fn attach(tree: &OwnedFd, onto: &OwnedFd) -> std::io::Result<()> {
    move_mount(
        tree,
        c"",
        onto,
        c"",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )
    .map_err(Into::into)
}

/// A user namespace with `ids`'s map, to id-map mounts with.
pub fn userns_with(ids: &crate::backend::rootfs::ids::IdMap) -> Result<OwnedFd, MountError> {
    userns_mapping(&ids.uid_line(), &ids.gid_line())
}

/// What a share of the directory `host` is seen through by a machine with
/// the host ids `ids` whose login user has `login` (uid, gid) in it
/// (`IdMap::share_map`): a user namespace to id-map it with, or `None`
/// for a plain bind mount.
pub fn share_userns(
    host: &Path,
    ids: &crate::backend::rootfs::ids::IdMap,
    login: (u32, u32),
) -> Result<Option<OwnedFd>, MountError> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(host).map_err(|source| MountError {
        what: format!("cannot read the owner of {}", host.display()),
        detail: String::new(),
        source,
    })?;
    ids.share_map((md.uid(), md.gid()), login)
        .map(|(u, g)| userns_mapping(&u, &g))
        .transpose()
}

/// A user namespace with the given uid and gid maps, to id-map mounts
/// with: made by a short-lived helper process, which is gone when this
/// returns (the namespace lives on through the descriptor).
fn userns_mapping(uid_map: &str, gid_map: &str) -> Result<OwnedFd, MountError> {
    use std::os::unix::process::CommandExt;
    let failed = |what: &str| {
        let what = what.to_owned();
        move |source: std::io::Error| MountError {
            what,
            detail: String::new(),
            source,
        }
    };
    let mut cmd = std::process::Command::new("sleep");
    cmd.arg("10")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    // SAFETY: unshare is a plain system call, safe between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER).map_err(std::io::Error::from)
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(failed("cannot start a user namespace's helper"))?;
    let proc_dir = std::path::PathBuf::from(format!("/proc/{}", child.id()));
    let made = (|| {
        // The helper may not have unshared yet: wait for its own namespace.
        let own = std::fs::read_link("/proc/self/ns/user")?;
        let mut waited = 0;
        while std::fs::read_link(proc_dir.join("ns/user"))? == own {
            if waited > 2000 {
                return Err(std::io::ErrorKind::TimedOut.into());
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
            waited += 1;
        }
        crate::backend::rootfs::ids::write_map(&proc_dir.join("uid_map"), uid_map)?;
        crate::backend::rootfs::ids::write_map(&proc_dir.join("gid_map"), gid_map)?;
        nix::fcntl::open(
            &proc_dir.join("ns/user"),
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(std::io::Error::from)
    })();
    let _ = child.kill();
    let _ = child.wait();
    made.map_err(failed("cannot make a user namespace for the machine's ids"))
}

/// Attach the detached mount `tree` onto the working directory.
pub fn attach_here(tree: &OwnedFd) -> std::io::Result<()> {
    move_mount(
        tree,
        c"",
        rustix::fs::CWD,
        c".",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(Into::into)
}
