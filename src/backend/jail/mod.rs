//! The jail backend on Linux: mount, pid, uts, ipc and network namespaces,
//! an overlayfs over the stored box rootfs, `pivot_root`, a fresh /proc, a
//! minimal /dev, a read-only /sys, cgroup limits, and slirp4netns for the
//! private network and its forwarded ports. A small supervisor process
//! (`envup-jail-supervisor DIR`, a binary of its own installed beside
//! `envup` so that it stays small in memory) keeps each jail and outlives
//! the command that started it.

mod cgroup;
// Built everywhere so its parameters are tested everywhere; nothing runs
// them yet.
#[allow(dead_code)]
pub mod freebsd;
pub mod net;
pub mod probe;
pub(crate) mod snapshots;
pub(crate) mod supervisor;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{Backend, BackendError, failed};
use crate::boxes::StoredBox;
use crate::contained::Root;
use crate::envfile::config::{Forward, JailNetwork, Share};
use crate::envfile::{BackendKind, Machine};
use crate::ssh::MachineKeys;
use crate::state::machine::SshEndpoint;
use crate::state::{MachineState, Status};

pub use probe::probe;
pub use supervisor::{DROPPED_CAPS, supervise};

/// How long a graceful halt may take before the jail is killed.
pub const HALT_DEADLINE: Duration = Duration::from_secs(10);
/// The pids limit every jail gets.
pub const PIDS_MAX: u64 = 1024;

/// What the supervisor needs to start a jail; written at create.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JailConfig {
    pub lower: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub merged: PathBuf,
    pub hostname: String,
    pub cpus: u32,
    pub memory: u64,
    pub pids: u64,
    pub network: JailNetwork,
    pub ssh_port: u16,
    pub forwards: Vec<Forward>,
    pub shares: Vec<Share>,
    /// Names the jail's cgroup and network namespace on the host.
    pub id: String,
}

pub struct JailBackend;

fn jail_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("jail")
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
        .ok_or_else(|| failed(format!("box `{}` has no rootfs", stored.meta.name)))?;
    let lock = crate::state::lock::FileLock::acquire(
        &stored.dir.join(".rootfs.lock"),
        Duration::from_secs(300),
        &|_| {},
    )
    .map_err(|_| failed("cannot lock the box's rootfs for unpacking"))?;
    if dir.is_dir() {
        return Ok(dir);
    }
    let tmp = tempfile::Builder::new()
        .prefix(".rootfs-")
        .tempdir_in(&stored.dir)
        .map_err(failed)?;
    unpack_rootfs(&tar_path, tmp.path()).map_err(|e| {
        failed(format!(
            "cannot unpack the rootfs of `{}`: {}",
            crate::ident::printable(&stored.meta.name),
            crate::cli::error::chain(&e)
        ))
    })?;
    std::fs::rename(tmp.keep(), &dir).map_err(failed)?;
    drop(lock);
    Ok(dir)
}

/// Unpack a box's rootfs tar into `dest`, bounded: the store is private
/// to its owner (no other host user reaches a setuid file in it), the
/// disk must hold the tar's size, and no entry may make the tree larger
/// than the tar itself (sparse entries, which could, are refused). The
/// tar crate keeps every path and link inside `dest`.
fn unpack_rootfs(tar_path: &Path, dest: &Path) -> std::io::Result<()> {
    if let Some(store) = dest.parent().and_then(Path::parent) {
        crate::state::ensure_private_dir(store)?;
    }
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
            .map_err(|e| failed(format!("cannot read the box's /etc/passwd: {e}")))?;
        let text = String::from_utf8_lossy(&bytes);
        Login::from_passwd(&text, user).ok_or_else(|| {
            failed(format!(
                "the box logs in as `{user}`, but its /etc/passwd has no such user"
            ))
        })
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
}

impl Layer<'_> {
    /// Both layers as roots that paths are resolved inside.
    fn roots(&self) -> Result<(Root, Root), BackendError> {
        let open = |p: &Path| {
            Root::open(p).map_err(|e| failed(format!("cannot open the machine's files: {e}")))
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
                    return Err(failed(format!(
                        "/{} is not a directory in the machine",
                        done.display()
                    )));
                }
                Err(_) => {}
            }
            let (mode, uid, gid) = match lower.symlink_metadata(&done) {
                Ok(m) if m.is_dir() => (m.mode() & 0o7777, m.uid(), m.gid()),
                Ok(_) => {
                    return Err(failed(format!(
                        "/{} is not a directory in the box",
                        done.display()
                    )));
                }
                Err(_) => (mode, owner.0, owner.1),
            };
            upper
                .mkdir_all(&done, mode, Some((uid, gid)))
                .map_err(|e| failed(format!("in the machine's layer: {e}")))?;
        }
        Ok(())
    }

    /// Write file `rel` with `mode`, owned by `owner`.
    fn write(
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
        upper
            .write_file(&rel, text.as_bytes(), mode, owner)
            .map_err(|e| failed(format!("in the machine's layer: {e}")))
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
    network: JailNetwork,
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
            JailNetwork::Private => net::resolv_conf(&host),
            JailNetwork::Host => host,
        };
        layer.write("etc/resolv.conf", &resolv, 0o644, root)?;
    }
    if network == JailNetwork::Host {
        layer.write(LISTEN_CONF, &listen_conf(ssh_port), 0o644, root)?;
    }
    Ok(())
}

/// An sshd_config drop-in (OpenSSH reads it; `tiny`'s dropbear start-up
/// does too) for a jail on the host's network: the host's port 22 is not
/// the jail's to take, and its SSH server listens on the host's loopback
/// only.
pub const LISTEN_CONF: &str = "etc/ssh/sshd_config.d/envup-listen.conf";

fn listen_conf(port: u16) -> String {
    format!(
        "# Written by envup: this jail shares the host's network.\n\
         Port {port}\nListenAddress 127.0.0.1\n"
    )
}

/// The supervisor's program name.
pub const SUPERVISOR: &str = "envup-jail-supervisor";

/// The supervisor binary, installed beside `envup`.
fn supervisor_exe() -> Result<PathBuf, BackendError> {
    let exe = std::env::current_exe().map_err(failed)?;
    let sup = exe.with_file_name(SUPERVISOR);
    if sup.is_file() {
        return Ok(sup);
    }
    Err(failed(format!(
        "{} is missing: it is installed beside envup (cargo install installs both)",
        sup.display()
    )))
}

/// The jail's supervisor, if it is still running and still ours: the
/// process the state records or, when the state lost it (a damaged file, a
/// kill before it was recorded), the one in the supervisor's own pid file;
/// either only with the same start time and this jail's directory on its
/// command line.
fn live_supervisor(state: &MachineState) -> Option<i32> {
    let dir = jail_dir(&super::machine_dir(state).ok()?);
    let recorded = state.id.clone().or_else(|| {
        let text = std::fs::read_to_string(dir.join("supervisor.pid")).ok()?;
        let (pid, start) = text.trim().split_once(' ')?;
        Some(format!("{pid}:{start}"))
    });
    super::live_process(recorded.as_deref(), &dir.to_string_lossy())
}

impl Backend for JailBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Jail
    }

    fn create(
        &self,
        m: &Machine,
        stored: &StoredBox,
        keys: &MachineKeys,
        state: &mut MachineState,
    ) -> Result<(), BackendError> {
        let lower = lower_dir(stored)?;
        let login = Login::of(&lower, &stored.manifest.ssh_user)?;
        let dir = jail_dir(&super::machine_dir(state)?);
        let (upper, work, merged) = (dir.join("upper"), dir.join("work"), dir.join("merged"));
        for d in [&upper, &work, &merged] {
            std::fs::create_dir_all(d).map_err(failed)?;
        }
        let port = super::ssh_port()?;
        let layer = Layer {
            lower: &lower,
            upper: &upper,
        };
        first_boot_files(&layer, keys, &login, &m.hostname, m.jail.network, port)?;
        let id = super::host_name(&dir);
        let cfg = JailConfig {
            lower,
            upper,
            work,
            merged,
            hostname: m.hostname.clone(),
            cpus: m.cpus,
            memory: m.memory.bytes(),
            pids: PIDS_MAX,
            network: m.jail.network,
            ssh_port: port,
            forwards: m.forwards.clone(),
            shares: m.shares.clone(),
            id,
        };
        crate::state::write_json(&dir.join("jail.json"), &cfg).map_err(failed)?;
        state.ssh = Some(SshEndpoint {
            host: "127.0.0.1".into(),
            port: cfg.ssh_port,
            user: login.name,
            netns: (cfg.network == JailNetwork::Private).then(|| supervisor::netns_path(&cfg)),
        });
        state.forwards = m.forwards.clone();
        Ok(())
    }

    fn start(&self, m: &Machine, state: &mut MachineState) -> Result<(), BackendError> {
        if live_supervisor(state).is_none() {
            refresh_config(m, state)?;
        }
        launch(state)
    }

    fn stop(&self, state: &MachineState, force: bool) -> Result<(), BackendError> {
        halt(state, force)
    }

    fn destroy(&self, state: &MachineState) -> Result<(), BackendError> {
        halt(state, true)?;
        let cfg = read_config(state);
        if let Ok(cfg) = &cfg {
            cgroup::Cgroup::kill_all(&cfg.id);
            supervisor::clean_up(cfg);
        }
        let dir = jail_dir(&super::machine_dir(state)?);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(failed(format!("cannot remove {}: {e}", dir.display())))
            }
            // What the jail's files named but envup did not make is told.
            _ => match cfg {
                Err(e @ BackendError::NotOurs(_)) => Err(e),
                _ => Ok(()),
            },
        }
    }

    fn status(&self, state: &MachineState) -> Result<Status, BackendError> {
        Ok(match state.status {
            Status::Running if live_supervisor(state).is_none() => Status::Stopped,
            other => other,
        })
    }

    /// A copy of the jail's own layer, taken with the jail frozen (cgroup
    /// freezer) when it runs.
    fn snapshot_save(&self, state: &MachineState, name: &str) -> Result<(), BackendError> {
        let dir = jail_dir(&super::machine_dir(state)?);
        let id = read_config(state)?.id;
        snapshots::save(&dir, name, live_supervisor(state).is_some(), |frozen| {
            cgroup::Cgroup::freeze(&id, frozen).map_err(failed)
        })
    }

    /// The jail is stopped, its layer replaced, and started again if it ran.
    fn snapshot_restore(&self, state: &mut MachineState, name: &str) -> Result<(), BackendError> {
        let dir = jail_dir(&super::machine_dir(state)?);
        if !snapshots::exists(&dir, name) {
            return Err(failed(format!("machine has no snapshot `{name}`")));
        }
        let running = live_supervisor(state).is_some();
        halt(state, true)?;
        snapshots::restore(&dir, name)?;
        if running {
            launch(state)?;
        }
        Ok(())
    }

    fn snapshot_list(&self, state: &MachineState) -> Result<Vec<String>, BackendError> {
        Ok(snapshots::list(&jail_dir(&super::machine_dir(state)?)))
    }

    fn snapshot_delete(&self, state: &MachineState, name: &str) -> Result<(), BackendError> {
        snapshots::delete(&jail_dir(&super::machine_dir(state)?), name)
    }
}

/// What the jail is started with comes from the Envfile, not from the
/// state: a `jail.json` edited to add a share of a host directory, a
/// forward on another address or the host's network grants nothing.
/// (It also means a restart applies changed limits, shares and forwards.)
fn refresh_config(m: &Machine, state: &mut MachineState) -> Result<(), BackendError> {
    let dir = jail_dir(&super::machine_dir(state)?);
    let recorded = JailConfig::load(&dir)?;
    let mut cfg = recorded.clone();
    if cfg.network != m.jail.network {
        return Err(failed(format!(
            "the jail was made with a {} network and the Envfile now asks for {}: \
             `envup destroy` it and `up` again to change that",
            cfg.network.name(),
            m.jail.network.name()
        )));
    }
    cfg.hostname = m.hostname.clone();
    cfg.cpus = m.cpus;
    cfg.memory = m.memory.bytes();
    cfg.pids = PIDS_MAX;
    cfg.forwards = m.forwards.clone();
    cfg.shares = m.shares.clone();
    // Written (and synced) only when it changed: the first start follows
    // create, which wrote the same.
    let value = |c: &JailConfig| serde_json::to_value(c).expect("configs serialize");
    if value(&cfg) != value(&recorded) {
        crate::state::write_json(&dir.join("jail.json"), &cfg).map_err(failed)?;
    }
    state.forwards = m.forwards.clone();
    Ok(())
}

/// Start the jail's supervisor (unless it runs) and record it in `state`.
fn launch(state: &mut MachineState) -> Result<(), BackendError> {
    if live_supervisor(state).is_some() {
        return Ok(());
    }
    let dir = jail_dir(&super::machine_dir(state)?);
    let log = dir.join("supervisor.log");
    let pidfile = dir.join("supervisor.pid");
    let _ = std::fs::remove_file(&pidfile);
    let exe = supervisor_exe()?;
    let logf = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(failed)?;
    let mut cmd = Command::new(exe);
    cmd.arg(&dir)
        .stdin(Stdio::null())
        .stdout(logf.try_clone().map_err(failed)?)
        .stderr(logf);
    // SAFETY: setsid is async-signal-safe; the supervisor leaves the
    // command's session so it outlives it and its terminal.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()
                .map(|_| ())
                .map_err(std::io::Error::from)
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| failed(format!("cannot start the jail supervisor: {e}")))?;
    let started = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(&pidfile)
            && let Some((pid, start)) = text.trim().split_once(' ')
        {
            state.id = Some(format!("{pid}:{start}"));
            // The supervisor lives on; nobody waits for it here.
            std::mem::forget(child);
            return Ok(());
        }
        if let Ok(Some(st)) = child.try_wait() {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let last: Vec<&str> = tail.lines().rev().take(5).collect();
            return Err(failed(format!(
                "the jail supervisor stopped ({st}): {}",
                last.into_iter().rev().collect::<Vec<_>>().join(" / ")
            )));
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            return Err(failed(format!(
                "the jail supervisor did not start; see {}",
                log.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Stop the jail: its supervisor asks init to power off (or kills it, with
/// `force`), within a deadline.
fn halt(state: &MachineState, force: bool) -> Result<(), BackendError> {
    let Some(pid) = live_supervisor(state) else {
        return Ok(());
    };
    let sig = if force {
        nix::sys::signal::Signal::SIGINT
    } else {
        nix::sys::signal::Signal::SIGTERM
    };
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    let deadline = Instant::now() + HALT_DEADLINE + Duration::from_secs(5);
    while live_supervisor(state).is_some() {
        if Instant::now() > deadline {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            std::thread::sleep(Duration::from_millis(100));
            if let Ok(cfg) = read_config(state) {
                cgroup::Cgroup::kill_all(&cfg.id);
                supervisor::clean_up(&cfg);
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn read_config(state: &MachineState) -> Result<JailConfig, BackendError> {
    JailConfig::load(&jail_dir(&super::machine_dir(state)?))
}

impl JailConfig {
    /// The jail's config from its directory `dir`, checked against what
    /// envup writes there: its own layer directories, a box rootfs in a
    /// store as the lower layer, and the host name that belongs to `dir`.
    pub fn load(dir: &Path) -> Result<JailConfig, BackendError> {
        let p = dir.join("jail.json");
        let cfg: JailConfig = crate::state::read_json(&p)
            .map_err(failed)?
            .ok_or_else(|| failed(format!("{} is missing", p.display())))?;
        super::own_host_name(dir, &cfg.id)?;
        let own = [
            (&cfg.upper, "upper"),
            (&cfg.work, "work"),
            (&cfg.merged, "merged"),
        ];
        if own.iter().any(|(path, name)| **path != dir.join(name)) || !is_store_rootfs(&cfg.lower) {
            return Err(BackendError::NotOurs(format!(
                "{} names directories that are not this jail's: it is damaged or was edited",
                p.display()
            )));
        }
        Ok(cfg)
    }
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
