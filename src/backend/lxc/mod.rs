//! The lxc backend: a system container run by the lxc tools, its root an
//! overlay of the box's rootfs (unpacked once in the store, as for jails)
//! and a layer of the machine's own; its network namespace connected by
//! slirp4netns, as a private jail's is. The container's files live in the
//! machine's state directory (`lxc-* -P DIR`); its name on the host is the
//! machine's (`backend::host_name`), so nothing read back from a file
//! names it.

mod probe;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use std::os::unix::fs::PermissionsExt;

use crate::backend::rootfs::detached;
use crate::backend::rootfs::ids::{self, BLOCK, Claims, IdMap};
use crate::backend::rootfs::net;
use crate::backend::rootfs::{Layer, Login, Network, first_boot_files, lower_dir, snapshots};
use crate::backend::{Backend, BackendError, Check, Dial, OwnError, io_err, run_tool};
use crate::boxes::StoredBox;
use crate::contained::Root;
use crate::envfile::Machine;
use crate::envfile::config::Share;
use crate::ssh::MachineKeys;
use crate::state::machine::SshEndpoint;
use crate::state::{MachineState, Status};

/// How long a graceful halt may take before the container is killed.
const HALT_DEADLINE: Duration = Duration::from_secs(10);
/// The pids limit every container gets.
const PIDS_MAX: u64 = 1024;

pub struct LxcBackend;

/// What only the lxc backend runs into.
#[derive(Debug, thiserror::Error)]
pub enum LxcError {
    #[error("lxc is not installed (apt-get install lxc)")]
    NotInstalled,
    #[error(
        "an unprivileged LXC container needs ids reserved for root in /etc/subuid and /etc/subgid \
         (LXC maps them with newuidmap): `usermod --add-subuids 1073741824-1879048191 \
         --add-subgids 1073741824-1879048191 root` (scripts/install-deps does), \
         or `privileged = true` in [machines.NAME.lxc]"
    )]
    IdsNotReserved,
    #[error("the container stopped at once; see {}", .0.display())]
    StoppedAtOnce(PathBuf),
    #[error("the machine's state records no SSH port")]
    NoSshPort,
    #[error("cannot connect the container's network")]
    Network(#[source] crate::backend::rootfs::net::NetError),
}

impl OwnError for LxcError {}

/// The container's name on the host.
fn host_name(state: &MachineState) -> Result<String, BackendError> {
    crate::backend::host_name(state, "")
}

/// The container's directory tree: `DIR/NAME/config`, `DIR/upper`,
/// `DIR/lower` (a link to the box's rootfs in the store).
fn lxc_dir(state: &MachineState) -> Result<PathBuf, BackendError> {
    Ok(crate::backend::machine_dir(state)?.join("lxc"))
}

/// Where LXC's own files for each container live.
const RUNTIME: &str = "/run/envup-lxc";
/// Where an earlier envup linked each container's directory.
const OLD_LINKS: &str = "/run/envup/lxc";

/// The container's directory as the lxc tools see it (`-P`):
/// `/run/envup-lxc/NAME`, envup's own, holding only what LXC keeps for the
/// container: `NAME/config` and the seccomp profile (written from the
/// Envfile at every start), LXC's log and runtime files, and `rootfs`,
/// where the container's root is mounted while it starts. The machine's own
/// files stay in [`lxc_dir`]. LXC splits and joins paths at colons and
/// commas without escaping, and this path holds none; and the root of an
/// unprivileged container must be able to pass through it (LXC checks),
/// so it and its parent are mode 0711: passable, not listable. Made before
/// every use, removed by `destroy`.
fn lxc_path(name: &str) -> Result<PathBuf, BackendError> {
    let dir = Path::new(RUNTIME).join(name);
    for d in [Path::new(RUNTIME), &dir, &dir.join(name)] {
        match std::fs::create_dir(d) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(io_err("make", d)(e));
            }
            _ => {}
        }
        if !std::fs::symlink_metadata(d).is_ok_and(|m| m.is_dir()) {
            return Err(BackendError::NotOurs(format!(
                "{} is not a directory",
                d.display()
            )));
        }
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o711))
            .map_err(io_err("set the mode of", d))?;
    }
    Ok(dir)
}

fn lxc(tool: &str, dir: &Path, name: &str, args: &[&str]) -> Result<String, BackendError> {
    run_tool(
        Command::new(tool)
            .arg("-P")
            .arg(dir)
            .args(["-n", name])
            .args(args),
        "apt-get install lxc",
    )
}

/// The container's config file, for the container whose directory LXC
/// sees as `dir` ([`lxc_path`]). Bytes: a share's path need
/// not be UTF-8.
/// The lxc backend's table, `[machines.NAME.lxc]`.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// Without the seccomp filter and the hidden /sys/firmware, for what
    /// needs them (root in it is root on the host).
    #[serde(default)]
    pub privileged: bool,
}

pub fn config(
    m: &Machine,
    name: &str,
    dir: &Path,
    cgroup_v1: bool,
    ids: Option<&IdMap>,
) -> Vec<u8> {
    let privileged = ids.is_none();
    let mut c = vec![
        format!("lxc.uts.name = {}", m.hostname),
        // The root envup mounted for this start (see `mount_root`).
        format!("lxc.rootfs.path = dir:{}", dir.join(ROOTFS).display()),
        "lxc.init.cmd = /sbin/init".into(),
        // An empty network namespace: slirp4netns connects it once it starts.
        "lxc.net.0.type = empty".into(),
        "lxc.mount.auto = proc:mixed sys:ro cgroup:mixed".into(),
        "lxc.autodev = 1".into(),
        "lxc.tty.max = 0".into(),
        "lxc.pty.max = 64".into(),
        "lxc.console.path = none".into(),
        "lxc.apparmor.profile = unconfined".into(),
        "lxc.environment = container=lxc".into(),
        "lxc.cap.drop = sys_module sys_rawio sys_time mac_admin mac_override".into(),
        format!("# envup machine {} ({name})", m.name),
    ];
    if let Some(ids) = ids {
        c.push(format!("lxc.idmap = u 0 {} {BLOCK}", ids.uid));
        c.push(format!("lxc.idmap = g 0 {} {BLOCK}", ids.gid));
    }
    if !privileged {
        c.push(format!(
            "lxc.seccomp.profile = {}",
            dir.join(name).join(SECCOMP).display()
        ));
        // What runc hides in /sys and LXC's own defaults leave visible.
        c.push(
            "lxc.mount.entry = tmpfs sys/firmware tmpfs ro,nosuid,nodev,noexec,size=0 0 0".into(),
        );
    }
    let mem = m.memory.bytes();
    let quota = u64::from(m.cpus) * 100_000;
    if cgroup_v1 {
        c.push(format!("lxc.cgroup.memory.limit_in_bytes = {mem}"));
        c.push(format!("lxc.cgroup.pids.max = {PIDS_MAX}"));
        c.push("lxc.cgroup.cpu.cfs_period_us = 100000".into());
        c.push(format!("lxc.cgroup.cpu.cfs_quota_us = {quota}"));
    } else {
        c.push(format!("lxc.cgroup2.memory.max = {mem}"));
        c.push(format!("lxc.cgroup2.pids.max = {PIDS_MAX}"));
        c.push(format!("lxc.cgroup2.cpu.max = {quota} 100000"));
    }
    (c.join("\n") + "\n").into_bytes()
}

/// Write the container's config and the seccomp profile it names.
/// With the container's own layer owned by its block of ids (or by the
/// host's, privileged), which are returned.
fn write_config(
    m: &Machine,
    state: &MachineState,
    name: &str,
) -> Result<Option<IdMap>, BackendError> {
    let real = lxc_dir(state)?;
    let dir = lxc_path(name)?;
    let own = dir.join(name);
    crate::state::write_atomic(
        &own.join(SECCOMP),
        crate::backend::rootfs::seccomp::lxc_profile().as_bytes(),
    )?;
    let opts: Options = crate::backend::options(m, "lxc")?;
    let ids = Claims::host().settle(&real, &real.join("upper"), opts.privileged)?;
    let text = config(m, name, &dir, crate::host::cgroup_v1(), ids.as_ref());
    crate::state::write_atomic(&own.join("config"), &text)?;
    Ok(ids)
}

/// Where a container's root is mounted (in [`lxc_path`]) while
/// `lxc-start` takes it.
const ROOTFS: &str = "rootfs";

/// The container's lower layer: the rootfs of the box the machine was made
/// from, found in the store by the digest its state records (the `lower`
/// link the container's directory keeps is a record, never followed), and
/// the login user's ids in it.
fn lower_of(state: &MachineState) -> Result<(PathBuf, (u32, u32)), BackendError> {
    let lower = lower_dir(&crate::backend::stored_box(state)?)?;
    let login = match &state.ssh {
        Some(ep) => {
            let l = Login::of(&lower, &ep.user)?;
            (l.uid, l.gid)
        }
        None => (0, 0),
    };
    Ok((lower, login))
}

/// Mount the container's root at `rootfs` in [`lxc_path`] for `lxc-start` to take (it
/// binds it, with the mounts below it, into the container): the overlay of
/// the box's rootfs, id-mapped into the container's ids, and the machine's
/// layer, with the shares attached at their targets (resolved inside the
/// root, id-mapped too). Made by root on the host, so the container's root
/// needs no access to the paths they come from; taken away again as soon
/// as the container runs (see `unmount_root`).
fn mount_root(
    state: &MachineState,
    name: &str,
    shares: &[Share],
    ids: Option<&IdMap>,
) -> Result<(), BackendError> {
    let dir = &lxc_dir(state)?;
    let (lower, login) = lower_of(state)?;
    let userns = ids.map(detached::userns_with).transpose()?;
    let tree = detached::tree(&lower, false, true, userns.as_ref())?;
    let work = dir.join("work");
    std::fs::create_dir_all(&work).map_err(io_err("make", &work))?;
    let root = detached::overlay(&tree, &dir.join("upper"), &work, false)?;
    unmount_root(name);
    let at = lxc_path(name)?.join(ROOTFS);
    std::fs::create_dir_all(&at).map_err(io_err("make", &at))?;
    let attached = (|| {
        let onto = Root::open(&at).map_err(io_err("open", &at))?;
        detached::attach(
            &root,
            &onto
                .fd()
                .try_clone_to_owned()
                .map_err(io_err("open", &at))?,
        )
        .map_err(io_err("mount the container's root on", &at))?;
        let inside = Root::from_fd(root);
        let owner = ids.map_or((0, 0), |i| (i.uid, i.gid));
        for s in shares {
            // Seen as the login user's where the directory is a user's;
            // nobody in the container writes as host root.
            let map = match ids {
                Some(ids) => detached::share_userns(&s.host, ids, login)?,
                None => None,
            };
            let share = detached::tree(&s.host, true, s.read_only, map.as_ref())?;
            let target = inside
                .mkdir_all(Path::new(&s.guest), 0o755, Some(owner))
                .map_err(io_err("make the share target", &s.guest))?;
            detached::attach(&share, &target).map_err(io_err("mount the share on", &s.guest))?;
        }
        Ok::<(), BackendError>(())
    })();
    if attached.is_err() {
        unmount_root(name);
    }
    attached
}

/// Take the root `mount_root` made off the host (the container keeps its
/// own copy), with everything mounted below it.
fn unmount_root(name: &str) {
    let at = Path::new(RUNTIME).join(name).join(ROOTFS);
    while nix::mount::umount2(&at, nix::mount::MntFlags::MNT_DETACH).is_ok() {}
    let _ = std::fs::remove_dir(&at);
}

/// The seccomp profile's file, beside the config.
const SECCOMP: &str = "seccomp";

fn create(
    m: &Machine,
    stored: &StoredBox,
    keys: &MachineKeys,
    state: &mut MachineState,
) -> Result<(), BackendError> {
    let name = &host_name(state)?;
    let lower = lower_dir(stored)?;
    let login = Login::of(&lower, &stored.manifest.ssh_user)?;
    let dir = lxc_dir(state)?;
    let upper = dir.join("upper");
    std::fs::create_dir_all(&upper).map_err(io_err("make", &upper))?;
    std::os::unix::fs::symlink(&lower, dir.join("lower"))
        .map_err(io_err("make the link", dir.join("lower")))?;
    let port = crate::backend::ssh_port()?;
    let layer = Layer::new(&lower, &upper)?;
    first_boot_files(&layer, keys, &login, &m.hostname, Network::Private, port)?;
    write_config(m, state, name)?;
    state.id = Some(format!("lxc:{name}"));
    state.ssh = Some(SshEndpoint {
        host: "127.0.0.1".into(),
        port,
        user: login.name,
    });
    state.forwards = m.forwards.clone();
    Ok(())
}

/// `RUNNING`, `STOPPED`…, from lxc-info.
fn lxc_state(dir: &Path, name: &str) -> Option<String> {
    lxc("lxc-info", dir, name, &["-s", "-H"])
        .ok()
        .map(|s| s.trim().to_owned())
}

fn init_pid(dir: &Path, name: &str) -> Option<i32> {
    lxc("lxc-info", dir, name, &["-p", "-H"])
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The container's config again, from the Envfile: `lxc-start` runs what
/// the config says (hooks, mounts, capabilities), so an edited one would
/// be authority over the host. Only the lower layer is kept (the `lower`
/// link), and only if it is a box rootfs in a store. Share targets are made
/// again in the machine's layer, where a symlink root in the container
/// planted cannot redirect them.
fn refresh_config(
    m: &Machine,
    state: &MachineState,
    name: &str,
) -> Result<Option<IdMap>, BackendError> {
    lower_of(state)?;
    write_config(m, state, name)
}

fn start(m: &Machine, state: &mut MachineState, name: &str) -> Result<(), BackendError> {
    let dir = lxc_path(name)?;
    if lxc_state(&dir, name).as_deref() == Some("RUNNING") {
        return Ok(());
    }
    snapshots::recover_layer(&lxc_dir(state)?)?;
    let ids = refresh_config(m, state, name)?;
    // The forwards too are the Envfile's, not the state's.
    state.forwards = m.forwards.clone();
    boot(state, name, &m.shares, ids.as_ref())
}

/// Start the container with the config `start` just wrote from the
/// Envfile, its shares and the ids its layer is owned by.
fn boot(
    state: &MachineState,
    name: &str,
    shares: &[Share],
    ids: Option<&IdMap>,
) -> Result<(), BackendError> {
    let dir = lxc_path(name)?;
    let real = lxc_dir(state)?;
    // A container that powered itself off left its helper holding ports.
    net::end(name);
    mount_root(state, name, shares, ids)?;
    let log = dir.join("lxc.log");
    let started = lxc(
        "lxc-start",
        &dir,
        name,
        &["-d", "-l", "WARN", "-o", &log.to_string_lossy()],
    );
    unmount_root(name);
    started?;
    let pid = init_pid(&dir, name).ok_or_else(|| LxcError::StoppedAtOnce(dir.join("lxc.log")))?;
    let ep = state.ssh.as_ref().ok_or(LxcError::NoSshPort)?;
    // The helper outlives this command; halt finds it by the namespace it
    // serves (net::helpers_of), which is this container's alone.
    let fwds = net::host_fwds(ep.port, &state.forwards);
    if let Err(e) = served(&real, &dir, name).serve(pid, &fwds) {
        let _ = stop(state, name, true);
        return Err(LxcError::Network(e).into());
    }
    Ok(())
}

/// The container's network helper: its runtime directory is the
/// container's own under [`RUNTIME`], root's alone.
fn served<'a>(real: &Path, runtime: &'a Path, name: &'a str) -> net::Served<'a> {
    net::Served {
        name,
        runtime,
        log: real.join("net.log"),
        lock: real.join("net.lock"),
    }
}

/// A running container whose network helper died (or was killed) gets a
/// new one, so SSH and its forwards answer again.
fn reconnect_if_gone(state: &MachineState, name: &str) -> Result<(), BackendError> {
    let (real, runtime) = (lxc_dir(state)?, lxc_path(name)?);
    served(&real, &runtime, name)
        .reconnect_if_gone()
        .map_err(|e| LxcError::Network(e).into())
}

/// A container that a killed `snapshot save` left frozen is thawed.
fn thaw_if_left_frozen(state: &MachineState, name: &str) -> Result<(), BackendError> {
    snapshots::recover(&lxc_dir(state)?, || {
        lxc("lxc-unfreeze", &lxc_path(name)?, name, &[]).map(drop)
    })
}

fn stop(state: &MachineState, name: &str, force: bool) -> Result<(), BackendError> {
    let dir = lxc_path(name)?;
    thaw_if_left_frozen(state, name)?;
    if lxc_state(&dir, name).as_deref() == Some("RUNNING") {
        let mut stopped = false;
        if !force && let Some(pid) = init_pid(&dir, name) {
            // Power off: busybox init on SIGUSR2, systemd on SIGRTMIN+4.
            let p = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGUSR2);
            // SAFETY: sending a signal number to a pid.
            unsafe {
                nix::libc::kill(pid, nix::libc::SIGRTMIN() + 4);
            }
            let deadline = Instant::now() + HALT_DEADLINE;
            while Instant::now() < deadline {
                if lxc_state(&dir, name).as_deref() != Some("RUNNING") {
                    stopped = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        if !stopped {
            lxc("lxc-stop", &dir, name, &["-k"])?;
        }
    }
    net::end(name);
    Ok(())
}

/// Whether the container runs. Asking changes nothing on the host: without
/// its config (written by every start) the container cannot be running.
fn status(name: &str) -> Result<Status, BackendError> {
    let dir = Path::new(RUNTIME).join(name);
    if !dir.join(name).join("config").is_file() {
        return Ok(Status::Stopped);
    }
    Ok(match lxc_state(&dir, name).as_deref() {
        Some("RUNNING") => Status::Running,
        _ => Status::Stopped,
    })
}

fn destroy(state: &MachineState, name: &str) -> Result<(), BackendError> {
    stop(state, name, true)?;
    unmount_root(name);
    let dir = lxc_dir(state)?;
    Claims::host().release(&dir);
    let runtime = Path::new(RUNTIME).join(name);
    let old_link = Path::new(OLD_LINKS).join(name);
    for (path, gone) in [
        (dir.clone(), std::fs::remove_dir_all(&dir)),
        (runtime.clone(), std::fs::remove_dir_all(&runtime)),
        (old_link.clone(), std::fs::remove_file(&old_link)),
    ] {
        if let Err(e) = gone
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(io_err("remove", path)(e));
        }
    }
    Ok(())
}

/// Snapshots: copies of the machine's own layer (rootfs::snapshots), frozen
/// with lxc-freeze while copied.
fn snapshot_save(state: &MachineState, host: &str, snap: &str) -> Result<(), BackendError> {
    let dir = lxc_path(host)?;
    let running = lxc_state(&dir, host).as_deref() == Some("RUNNING");
    snapshots::save(&lxc_dir(state)?, snap, running, |frozen| {
        let tool = if frozen { "lxc-freeze" } else { "lxc-unfreeze" };
        lxc(tool, &dir, host, &[]).map(drop)
    })
}

fn snapshot_restore(
    m: &Machine,
    state: &mut MachineState,
    host: &str,
    snap: &str,
) -> Result<(), BackendError> {
    let dir = lxc_path(host)?;
    let real = lxc_dir(state)?;
    if !snapshots::exists(&real, snap) {
        return Err(BackendError::NoSnapshot(snap.to_owned()));
    }
    let running = lxc_state(&dir, host).as_deref() == Some("RUNNING");
    stop(state, host, true)?;
    // Marked first, as the jail's (a kill after the swap).
    ids::layer_replaced(&real)?;
    snapshots::restore(&real, snap)?;
    if running {
        start(m, state, host)?;
    }
    Ok(())
}

fn snapshot_list(state: &MachineState) -> Result<Vec<String>, BackendError> {
    Ok(snapshots::list(&lxc_dir(state)?))
}

fn snapshot_delete(state: &MachineState, name: &str) -> Result<(), BackendError> {
    snapshots::delete(&lxc_dir(state)?, name)
}

impl Backend for LxcBackend {
    fn name(&self) -> &'static str {
        "lxc"
    }

    fn artifacts(&self) -> &'static [&'static str] {
        &["rootfs"]
    }

    fn vagrant_providers(&self) -> &'static [crate::backend::VagrantProvider] {
        &[crate::backend::rootfs::VAGRANT_LXC]
    }

    fn probe(&self) -> (bool, Vec<Check>) {
        probe::probe()
    }

    fn check_options(&self, table: toml::de::ValueDeserializer<'_>) -> Result<(), toml::de::Error> {
        use serde::Deserialize;
        Options::deserialize(table).map(|_| ())
    }

    fn check(&self, m: &Machine) -> Result<(), BackendError> {
        if crate::host::which("lxc-start").is_none() {
            return Err(LxcError::NotInstalled.into());
        }
        // LXC maps ids with newuidmap, which maps only reserved ranges.
        let opts: Options = crate::backend::options(m, "lxc")?;
        if !opts.privileged
            && crate::host::which("newuidmap").is_some()
            && crate::backend::rootfs::ids::Pool::reserved().is_none()
        {
            return Err(LxcError::IdsNotReserved.into());
        }
        Ok(())
    }

    /// Root reaches the SSH server from inside the container's network
    /// namespace, skipping slirp4netns's port forward.
    fn dial(&self, state: &MachineState) -> Option<Dial> {
        net::dial_in(&host_name(state).ok()?)
    }

    fn joins(&self, _m: &Machine) -> super::Joins {
        super::Joins::Namespace
    }

    fn machine_pid(&self, state: &MachineState) -> Result<i32, BackendError> {
        net::init_in(&host_name(state)?).ok_or(BackendError::NotRunning)
    }

    fn create(
        &self,
        m: &Machine,
        stored: &StoredBox,
        keys: &MachineKeys,
        state: &mut MachineState,
    ) -> Result<(), BackendError> {
        create(m, stored, keys, state)
    }

    fn start(&self, m: &Machine, state: &mut MachineState) -> Result<(), BackendError> {
        let name = host_name(state)?;
        start(m, state, &name)
    }

    /// Every start writes the container's config from the Envfile.
    fn restart_applies(&self) -> &'static [&'static str] {
        &[
            "cpus", "memory", "forwards", "shares", "hostname", "options",
        ]
    }

    fn stop(&self, state: &MachineState, force: bool) -> Result<(), BackendError> {
        stop(state, &host_name(state)?, force)
    }

    fn destroy(&self, state: &MachineState) -> Result<(), BackendError> {
        destroy(state, &host_name(state)?)
    }

    fn status(&self, state: &MachineState) -> Result<Status, BackendError> {
        if !matches!(state.status, Status::Running | Status::Stopped) {
            return Ok(state.status);
        }
        let name = host_name(state)?;
        thaw_if_left_frozen(state, &name)?;
        let now = status(&name)?;
        if now == Status::Running {
            reconnect_if_gone(state, &name)?;
        }
        Ok(now)
    }

    fn snapshot_save(&self, state: &MachineState, name: &str) -> Result<(), BackendError> {
        snapshot_save(state, &host_name(state)?, name)
    }

    fn snapshot_restore(
        &self,
        m: &Machine,
        state: &mut MachineState,
        name: &str,
    ) -> Result<(), BackendError> {
        let host = host_name(state)?;
        snapshot_restore(m, state, &host, name)
    }

    fn snapshot_list(&self, state: &MachineState) -> Result<Vec<String>, BackendError> {
        snapshot_list(state)
    }

    fn snapshot_delete(&self, state: &MachineState, name: &str) -> Result<(), BackendError> {
        snapshot_delete(state, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A machine the container backend hands over is run with the lxc
    /// table of its own (its container table says `engine = "lxc"`).
    #[test]
    fn a_handed_over_machine_reads_its_lxc_table() {
        let m = crate::envfile::test_machine(
            "[machines.web]\nbox = \"tiny\"\nbackend = \"container\"\ncontainer = { engine = \"lxc\" }\n",
        );
        let o: Options = crate::backend::options(&m, "lxc").unwrap();
        assert!(!o.privileged);
        let m = crate::envfile::test_machine(
            "[machines.web]\nbox = \"tiny\"\nbackend = \"container\"\ncontainer = { engine = \"lxc\" }\nlxc = { privileged = true }\n",
        );
        let o: Options = crate::backend::options(&m, "lxc").unwrap();
        assert!(o.privileged);
    }

    #[test]
    fn config_has_the_root_ids_and_limits() {
        let m = crate::envfile::test_machine(
            "[machines.web]\nbox = \"tiny\"\nbackend = \"lxc\"\ncpus = 2\nmemory = \"512MiB\"\n",
        );
        let m = &m;
        let dir = Path::new("/run/envup-lxc/envup-x");
        let ids = IdMap {
            uid: 1_073_807_360,
            gid: 1_073_872_896,
            shifted: true,
        };
        let v1 = String::from_utf8_lossy(&config(m, "envup-x", dir, true, Some(&ids))).into_owned();
        for want in [
            "lxc.uts.name = web",
            "lxc.rootfs.path = dir:/run/envup-lxc/envup-x/rootfs",
            "lxc.idmap = u 0 1073807360 65536",
            "lxc.idmap = g 0 1073872896 65536",
            "lxc.net.0.type = empty",
            "lxc.cgroup.memory.limit_in_bytes = 536870912",
            "lxc.cgroup.pids.max = 1024",
            "lxc.cgroup.cpu.cfs_quota_us = 200000",
            "lxc.seccomp.profile = /run/envup-lxc/envup-x/envup-x/seccomp",
            "lxc.mount.entry = tmpfs sys/firmware tmpfs ro,",
        ] {
            assert!(v1.contains(want), "{want} missing:\n{v1}");
        }
        let privileged =
            String::from_utf8_lossy(&config(m, "envup-x", dir, false, None)).into_owned();
        for unwanted in ["lxc.seccomp.profile", "sys/firmware", "lxc.idmap"] {
            assert!(!privileged.contains(unwanted), "{privileged}");
        }
        let v2 = config(m, "envup-x", dir, false, Some(&ids));
        let v2 = String::from_utf8_lossy(&v2);
        assert!(v2.contains("lxc.cgroup2.memory.max = 536870912"), "{v2}");
        assert!(v2.contains("lxc.cgroup2.cpu.max = 200000 100000"), "{v2}");
    }
}
