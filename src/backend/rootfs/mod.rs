//! What the jail and LXC backends share: a machine's root as an overlay of
//! the box's rootfs (unpacked once in the store, read-only) under the
//! machine's own layer; the files a machine finds on its first boot; the
//! private network helper (`net`); snapshots of the machine's layer.

pub mod detached;
pub mod ids;
pub mod net;
pub mod seccomp;
pub(crate) mod snapshots;

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backend::{BackendError, OwnError, io_err};
use crate::boxes::StoredBox;
use crate::contained::Root;
use crate::ssh::MachineKeys;
use ids::SubIds;

/// What can go wrong with a box's rootfs and a machine's own layer.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("cannot lock the box's rootfs to unpack it")]
    Lock(#[source] crate::state::lock::LockError),
    #[error("cannot unpack the rootfs of `{}`", crate::ident::printable(.name))]
    Unpack {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the box's /etc/passwd")]
    Passwd(#[source] std::io::Error),
    #[error("the box logs in as `{0}`, but its /etc/passwd has no such user")]
    NoUser(String),
    #[error("cannot open {} as the machine's files", .path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `/PATH` is not a directory in the machine's layer or the box.
    #[error("/{} is not a directory in the {where_}", .path.display())]
    NotADirectory { path: PathBuf, where_: &'static str },
    #[error("in the machine's layer")]
    Layer(#[source] std::io::Error),
}

impl OwnError for RootfsError {}

/// Vagrant `lxc` boxes, which every backend that runs a rootfs tree takes:
/// their `rootfs.tar.gz` becomes the `rootfs` artifact, logging in as root.
pub const VAGRANT_LXC: crate::backend::VagrantProvider = crate::backend::VagrantProvider {
    name: "lxc",
    artifact: "rootfs",
    user: "root",
    first_login: None,
};

/// Which network a machine whose root is an overlay is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// A network namespace of its own, reached through slirp4netns.
    #[default]
    Private,
    /// The host's own network.
    Host,
}

impl Network {
    /// The word the Envfile uses.
    pub fn name(self) -> &'static str {
        match self {
            Network::Private => "private",
            Network::Host => "host",
        }
    }
}

/// The box's rootfs unpacked once, beside its artifacts in the store; every
/// jail from the box uses it read-only as its lower layer.
pub(crate) fn lower_dir(stored: &StoredBox) -> Result<PathBuf, BackendError> {
    let dir = stored.dir.join("rootfs");
    if dir.is_dir() {
        return Ok(dir);
    }
    let tar_path = stored
        .artifact("rootfs")
        .ok_or_else(|| BackendError::NoArtifact {
            name: stored.meta.name.clone(),
            artifact: "rootfs",
        })?;
    let lock_path = stored.dir.join(".rootfs.lock");
    let lock = crate::state::lock::FileLock::acquire(&lock_path, Duration::from_secs(300), &|_| {})
        .map_err(RootfsError::Lock)?;
    if dir.is_dir() {
        return Ok(dir);
    }
    // Put together in the store's staging area, which tells a partial
    // unpack (its envup killed) from one at work.
    let store = stored.dir.parent().unwrap_or(&stored.dir);
    let tmp = crate::boxes::staging::Staging::new(store)
        .map_err(io_err("make a staging directory in", store.join("tmp")))?;
    let unpacking = tmp.path().join("rootfs");
    // Rootless, the files get their owners from the helper: root's are the
    // user's, the rest the user's reserved ids.
    let unpacked = if crate::userns::rootless() {
        crate::userns::run("unpack", &[tar_path.as_os_str(), unpacking.as_os_str()])
    } else {
        unpack_rootfs(&tar_path, &unpacking)
    };
    unpacked.map_err(|source| RootfsError::Unpack {
        name: stored.meta.name.clone(),
        source,
    })?;
    crate::fault::point("rootfs:unpacked");
    std::fs::rename(&unpacking, &dir).map_err(io_err("rename to its place", &unpacking))?;
    drop(tmp);
    drop(lock);
    Ok(dir)
}

/// Unpack a box's rootfs tar into `dest` (made here, in the store's staging
/// area), bounded: the store is private to its owner (no other host user reaches a setuid file in it), the
/// disk must hold the tar's size, and no entry may make the tree larger
/// than the tar itself (sparse entries, which could, are refused). The
/// tar crate keeps every path and link inside `dest`.
pub(crate) fn unpack_rootfs(tar_path: &Path, dest: &Path) -> std::io::Result<()> {
    std::fs::create_dir(dest)?;
    let f = std::fs::File::open(tar_path)?;
    let budget = f.metadata()?.len();
    crate::host::check_space(dest, budget).map_err(std::io::Error::other)?;
    let mut a = tar::Archive::new(std::io::BufReader::new(f));
    a.set_preserve_permissions(true);
    a.set_preserve_ownerships(true);
    a.set_preserve_mtime(true);
    a.set_unpack_xattrs(true);
    let dest = &dest.canonicalize()?;
    let mut total = 0u64;
    // As the tar crate's own unpack does: directories last, deepest
    // first, so that their modes do not stop what goes inside them.
    let mut directories = Vec::new();
    for entry in a.entries()? {
        let mut entry = entry?;
        if entry.header().entry_type() == tar::EntryType::GNUSparse {
            return Err(std::io::Error::other(format!(
                "{} is a sparse file; a box's rootfs holds none",
                String::from_utf8_lossy(&entry.path_bytes()).escape_default()
            )));
        }
        total += entry.size();
        if total > budget {
            return Err(std::io::Error::other(
                "its files add up to more than the rootfs tar itself",
            ));
        }
        if entry.header().entry_type() == tar::EntryType::Directory {
            directories.push(entry);
        } else {
            entry.unpack_in(dest)?;
        }
    }
    directories.sort_by(|a, b| b.path_bytes().cmp(&a.path_bytes()));
    for mut dir in directories {
        dir.unpack_in(dest)?;
    }
    Ok(())
}

/// Whether `p` has the shape of a box rootfs in a store (`<sha256>/rootfs`,
/// as [`lower_dir`] makes it): the only lower layer a machine's files may
/// name.
pub(crate) fn is_store_rootfs(p: &Path) -> bool {
    p.file_name() == Some("rootfs".as_ref())
        && p.parent()
            .and_then(|d| d.file_name()?.to_str())
            .is_some_and(crate::ident::is_hex_digest)
}

/// The box's user that envup logs in as, from the box's own /etc/passwd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Login {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Relative to the machine's root.
    pub home: PathBuf,
}

impl Login {
    /// `user`'s entry in the /etc/passwd of the rootfs at `root` (read
    /// inside that root: a symlink there cannot point at the host's).
    pub fn of(root: &Path, user: &str) -> Result<Login, BackendError> {
        let bytes = Root::open(root)
            .and_then(|r| r.read_file(Path::new("etc/passwd"), 4 << 20))
            .map_err(RootfsError::Passwd)?;
        let text = String::from_utf8_lossy(&bytes);
        Ok(Login::from_passwd(&text, user).ok_or_else(|| RootfsError::NoUser(user.to_owned()))?)
    }

    fn from_passwd(text: &str, user: &str) -> Option<Login> {
        text.lines().find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.len() >= 7 && f[0] == user).then_some(())?;
            Some(Login {
                name: user.to_owned(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                // Inside the machine, as its own root would see it.
                home: crate::contained::normalize(Path::new(f[5])),
            })
        })
    }
}

/// A machine's root as an overlay: the box's rootfs (`lower`, read-only,
/// shared) under the machine's own layer (`upper`). What envup writes goes
/// into `upper`; a directory it has to make there takes the mode and owner
/// of the box's (as the overlay's own copy-up would), so writing
/// `/root/.ssh` leaves `/root` as private as the box made it.
pub(crate) struct Layer<'a> {
    pub lower: &'a Path,
    pub upper: &'a Path,
    /// Rootless: the map through which the layers' owners are seen, and
    /// the owners the user cannot give files itself (given by
    /// [`Layer::finish`]).
    rootless: Option<(SubIds, RefCell<Vec<Owner>>)>,
}

/// A file (relative to the layer) and the uid and gid it is to have.
type Owner = (PathBuf, u32, u32);

impl<'a> Layer<'a> {
    pub fn new(lower: &'a Path, upper: &'a Path) -> Result<Layer<'a>, BackendError> {
        let rootless = if crate::userns::rootless() {
            Some((SubIds::of_user()?, RefCell::default()))
        } else {
            None
        };
        Ok(Layer {
            lower,
            upper,
            rootless,
        })
    }

    /// The owner to make a file with now: `owner` as root, the user (the
    /// machine's root) rootless, with `owner` noted for [`Layer::finish`].
    fn own(&self, rel: &Path, owner: (u32, u32)) -> (u32, u32) {
        match &self.rootless {
            None => owner,
            Some((ids, later)) => {
                if owner != (0, 0) {
                    later.borrow_mut().push((rel.to_owned(), owner.0, owner.1));
                }
                (ids.uid, ids.gid)
            }
        }
    }

    /// Give the files written rootless the owners they were written for.
    pub fn finish(&self) -> Result<(), BackendError> {
        if let Some((_, later)) = &self.rootless {
            crate::userns::chown(self.upper, &later.borrow())
                .map_err(|e| RootfsError::Layer(e).into())
        } else {
            Ok(())
        }
    }

    /// Both layers as roots that paths are resolved inside.
    pub fn roots(&self) -> Result<(Root, Root), BackendError> {
        let open = |p: &Path| {
            Root::open(p).map_err(|source| RootfsError::Open {
                path: p.to_owned(),
                source,
            })
        };
        Ok((open(self.lower)?, open(self.upper)?))
    }

    /// Make directory `rel` (relative to the root; `..` stops at the top)
    /// in the upper layer; directories the box lacks get `mode` and
    /// `owner`. A symlink on the way is refused, not followed.
    pub fn mkdir(&self, rel: &Path, mode: u32, owner: (u32, u32)) -> Result<(), BackendError> {
        use std::os::unix::fs::MetadataExt;
        let (lower, upper) = self.roots()?;
        let mut done = PathBuf::new();
        for part in crate::contained::normalize(rel).components() {
            done.push(part);
            match upper.symlink_metadata(&done) {
                Ok(m) if m.is_dir() => continue,
                Ok(_) => {
                    return Err(RootfsError::NotADirectory {
                        path: done,
                        where_: "machine",
                    }
                    .into());
                }
                Err(_) => {}
            }
            let (mode, uid, gid) = match lower.symlink_metadata(&done) {
                Ok(m) if m.is_dir() => {
                    let (uid, gid) = match &self.rootless {
                        Some((ids, _)) => ids.inside(m.uid(), m.gid()),
                        None => (m.uid(), m.gid()),
                    };
                    (m.mode() & 0o7777, uid, gid)
                }
                Ok(_) => {
                    return Err(RootfsError::NotADirectory {
                        path: done,
                        where_: "box",
                    }
                    .into());
                }
                Err(_) => (mode, owner.0, owner.1),
            };
            let owner = self.own(&done, (uid, gid));
            upper
                .mkdir_all(&done, mode, Some(owner))
                .map_err(RootfsError::Layer)?;
        }
        Ok(())
    }

    /// Write file `rel` with `mode`, owned by `owner`.
    pub fn write(
        &self,
        rel: impl AsRef<Path>,
        text: &str,
        mode: u32,
        owner: (u32, u32),
    ) -> Result<(), BackendError> {
        let rel = crate::contained::normalize(rel.as_ref());
        if let Some(dir) = rel.parent() {
            self.mkdir(dir, 0o755, (0, 0))?;
        }
        let (_, upper) = self.roots()?;
        let owner = self.own(&rel, owner);
        upper
            .write_file(&rel, text.as_bytes(), mode, owner)
            .map_err(|e| RootfsError::Layer(e).into())
    }
}

/// What a machine whose root is an overlay finds on first boot, written to
/// its upper layer: its host key, the login key for `login`, its name, the
/// host's resolver (reached through slirp4netns on a private network),
/// and, when it shares the host's network, where its SSH server is to
/// listen.
pub(crate) fn first_boot_files(
    layer: &Layer,
    keys: &MachineKeys,
    login: &Login,
    hostname: &str,
    network: Network,
    ssh_port: u16,
) -> Result<(), BackendError> {
    let root = (0, 0);
    layer.write(
        "etc/ssh/ssh_host_ed25519_key",
        &keys.host_private_pem(),
        0o600,
        root,
    )?;
    let user = (login.uid, login.gid);
    let ssh_dir = login.home.join(".ssh");
    layer.mkdir(&login.home, 0o700, user)?;
    layer.mkdir(&ssh_dir, 0o700, user)?;
    layer.write(
        ssh_dir.join("authorized_keys"),
        &format!("{}\n", keys.authorized_key()),
        0o600,
        user,
    )?;
    layer.write("etc/hostname", &format!("{hostname}\n"), 0o644, root)?;
    if let Ok(host) = std::fs::read_to_string("/etc/resolv.conf") {
        let resolv = match network {
            Network::Private => net::resolv_conf(&host),
            Network::Host => host,
        };
        layer.write("etc/resolv.conf", &resolv, 0o644, root)?;
    }
    if network == Network::Host {
        layer.write(LISTEN_CONF, &listen_conf(ssh_port), 0o644, root)?;
    }
    layer.finish()
}

/// An sshd_config drop-in (OpenSSH reads it; `tiny`'s dropbear start-up
/// does too) for a jail on the host's network: the host's port 22 is not
/// the jail's to take, and its SSH server listens on the host's loopback
/// only.
pub const LISTEN_CONF: &str = "etc/ssh/sshd_config.d/envup-listen.conf";

pub fn listen_conf(port: u16) -> String {
    format!(
        "# Written by envup: this jail shares the host's network.\n\
         Port {port}\nListenAddress 127.0.0.1\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_from_passwd() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\nvagrant:x:1000:1001:,,,:/home/vagrant:/bin/bash\nbad:x:z:0::/:/bin/sh\n";
        assert_eq!(
            Login::from_passwd(passwd, "vagrant"),
            Some(Login {
                name: "vagrant".into(),
                uid: 1000,
                gid: 1001,
                home: "home/vagrant".into(),
            })
        );
        assert_eq!(
            Login::from_passwd(passwd, "root").unwrap().home,
            Path::new("root")
        );
        assert_eq!(Login::from_passwd(passwd, "nobody"), None);
        assert_eq!(Login::from_passwd(passwd, "bad"), None);
    }

    #[test]
    fn listen_conf_names_port_and_loopback() {
        let c = listen_conf(2222);
        assert!(c.contains("\nPort 2222\n"));
        assert!(c.ends_with("ListenAddress 127.0.0.1\n"));
    }
}
