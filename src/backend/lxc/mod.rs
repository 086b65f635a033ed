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

use crate::backend::rootfs::net::{self, forget_netns, name_netns};
use crate::backend::rootfs::{
    Layer, Login, Network, first_boot_files, is_store_rootfs, lower_dir, snapshots,
};
use crate::backend::{Backend, BackendError, Check, Dial, OwnError, io_err, run_tool};
use crate::boxes::StoredBox;
use crate::envfile::Machine;
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
    Ok(crate::backend::host_name(&crate::backend::machine_dir(
        state,
    )?))
}

/// The container's directory tree: `DIR/NAME/config`, `DIR/upper`,
/// `DIR/lower` (a link to the box's rootfs in the store).
fn lxc_dir(state: &MachineState) -> Result<PathBuf, BackendError> {
    Ok(crate::backend::machine_dir(state)?.join("lxc"))
}

/// Where the links that give LXC plain paths live.
const LINKS: &str = "/run/envup/lxc";

/// The container's directory as the lxc tools and its config name it: a
/// link `/run/envup/lxc/NAME` to [`lxc_dir`]. LXC splits its overlay spec
/// at colons and builds mount options joined by commas without escaping,
/// so a project directory (or `ENVUP_HOME`) whose path holds a colon, a
/// comma or bytes that are not UTF-8 could not be named there; this path
/// holds none. The link is made (again) before every use, and removed by
/// `destroy`.
fn lxc_path(state: &MachineState, name: &str) -> Result<PathBuf, BackendError> {
    let link = Path::new(LINKS).join(name);
    if linked(state, name)? {
        return Ok(link);
    }
    let real = lxc_dir(state)?;
    crate::state::ensure_private_dir(Path::new(LINKS)).map_err(io_err("make", LINKS))?;
    match std::fs::remove_file(&link) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io_err("replace", link)(e));
        }
        _ => {}
    }
    std::os::unix::fs::symlink(&real, &link).map_err(io_err("make the link", &link))?;
    Ok(link)
}

/// Whether the container's link is there and names its directory.
fn linked(state: &MachineState, name: &str) -> Result<bool, BackendError> {
    Ok(std::fs::read_link(Path::new(LINKS).join(name)).ok() == Some(lxc_dir(state)?))
}

/// A path as a field of an fstab line (`lxc.mount.entry`): whitespace and
/// backslashes as octal escapes, which LXC's getmntent decodes.
fn fstab_field(path: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    let mut out = Vec::new();
    for &b in path.as_os_str().as_bytes() {
        match b {
            b' ' | b'\t' | b'\n' | b'\\' => out.extend(format!("\\{b:03o}").bytes()),
            _ => out.push(b),
        }
    }
    out
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
/// sees as `dir` (plain: see [`lxc_path`]). Bytes: a share's path need
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

pub fn config(m: &Machine, name: &str, dir: &Path, cgroup_v1: bool, privileged: bool) -> Vec<u8> {
    let mut c = vec![
        format!("lxc.uts.name = {}", m.hostname),
        format!(
            "lxc.rootfs.path = overlay:{}:{}",
            dir.join("lower").display(),
            dir.join("upper").display()
        ),
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
    let mut out = (c.join("\n") + "\n").into_bytes();
    for s in &m.shares {
        let ro = if s.read_only { ",ro" } else { "" };
        out.extend(b"lxc.mount.entry = ");
        out.extend(fstab_field(&s.host));
        out.push(b' ');
        out.extend(fstab_field(Path::new(s.guest.trim_start_matches('/'))));
        out.extend(format!(" none bind,create=dir{ro} 0 0\n").bytes());
    }
    out
}

/// Write the container's config and the seccomp profile it names.
fn write_config(m: &Machine, state: &MachineState, name: &str) -> Result<(), BackendError> {
    let own = lxc_dir(state)?.join(name);
    crate::state::write_atomic(
        &own.join(SECCOMP),
        crate::backend::rootfs::seccomp::lxc_profile().as_bytes(),
    )?;
    let opts: Options = crate::backend::options(m, "lxc")?;
    let text = config(
        m,
        name,
        &lxc_path(state, name)?,
        crate::host::cgroup_v1(),
        opts.privileged,
    );
    Ok(crate::state::write_atomic(&own.join("config"), &text)?)
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
    std::fs::create_dir_all(dir.join(name)).map_err(io_err("make", dir.join(name)))?;
    std::os::unix::fs::symlink(&lower, dir.join("lower"))
        .map_err(io_err("make the link", dir.join("lower")))?;
    let port = crate::backend::ssh_port()?;
    let layer = Layer {
        lower: &lower,
        upper: &upper,
    };
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
fn refresh_config(m: &Machine, state: &MachineState, name: &str) -> Result<(), BackendError> {
    let dir = lxc_dir(state)?;
    let link = dir.join("lower");
    let lower = std::fs::read_link(&link)
        .ok()
        .filter(|l| is_store_rootfs(l))
        .ok_or_else(|| {
            BackendError::NotOurs(format!(
                "{} does not name a box rootfs in a store: it is damaged or was edited",
                link.display()
            ))
        })?;
    let upper = dir.join("upper");
    let layer = Layer {
        lower: &lower,
        upper: &upper,
    };
    for s in &m.shares {
        layer.mkdir(Path::new(&s.guest), 0o755, (0, 0))?;
    }
    write_config(m, state, name)
}

fn start(m: &Machine, state: &mut MachineState, name: &str) -> Result<(), BackendError> {
    let dir = lxc_path(state, name)?;
    if lxc_state(&dir, name).as_deref() == Some("RUNNING") {
        return Ok(());
    }
    refresh_config(m, state, name)?;
    // The forwards too are the Envfile's, not the state's.
    state.forwards = m.forwards.clone();
    boot(state, name)
}

/// Start the container with the config it has (written from the Envfile
/// by the last `start`).
fn boot(state: &MachineState, name: &str) -> Result<(), BackendError> {
    let dir = lxc_path(state, name)?;
    // A container that powered itself off left its helper holding ports.
    end_net(&dir, name);
    let log = dir.join("lxc.log");
    lxc(
        "lxc-start",
        &dir,
        name,
        &["-d", "-l", "WARN", "-o", &log.to_string_lossy()],
    )?;
    let real_log = lxc_dir(state)?.join("lxc.log");
    let pid = init_pid(&dir, name).ok_or(LxcError::StoppedAtOnce(real_log))?;
    let ns = name_netns(pid, name)?;
    let ep = state.ssh.as_ref().ok_or(LxcError::NoSshPort)?;
    // The helper outlives this command; its pid and start time are kept so
    // that halt ends this process and no other.
    let helper = net::connect(
        &ns,
        name,
        &dir.join("net.log"),
        &net::host_fwds(ep.port, &state.forwards),
        net::Lifetime::Detached,
    );
    let recorded = helper
        .map_err(|e| BackendError::from(LxcError::Network(e)))
        .and_then(|child| {
            let pid = child.id() as i32;
            let started = crate::backend::start_time(pid).unwrap_or(0);
            let id = format!("{pid}:{started}");
            Ok(crate::state::write_atomic(
                &dir.join(NET_PID),
                id.as_bytes(),
            )?)
        });
    if let Err(e) = recorded {
        let _ = stop(state, name, true);
        return Err(e);
    }
    Ok(())
}

/// Where the network helper's `pid:start-time` is kept.
const NET_PID: &str = "net.pid";

/// End the container's network helper, if it still runs, and take its
/// namespace's name away.
fn end_net(dir: &Path, name: &str) {
    let id = std::fs::read_to_string(dir.join(NET_PID)).ok();
    if let Some(pid) =
        crate::backend::live_process(id.as_deref().map(str::trim), net::PROGRAM.as_bytes())
    {
        // Gone before returning: a new helper will want the same ports.
        let p = nix::unistd::Pid::from_raw(pid);
        let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(2);
        while crate::backend::live_process(id.as_deref().map(str::trim), net::PROGRAM.as_bytes())
            .is_some()
        {
            if Instant::now() > deadline {
                let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let _ = std::fs::remove_file(dir.join(NET_PID));
    forget_netns(name);
}

fn stop(state: &MachineState, name: &str, force: bool) -> Result<(), BackendError> {
    let dir = lxc_path(state, name)?;
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
    end_net(&dir, name);
    Ok(())
}

/// Whether the container runs. Asking changes nothing on the host: without
/// its link (made by every start) the container cannot be running.
fn status(state: &MachineState, name: &str) -> Result<Status, BackendError> {
    if !linked(state, name)? {
        return Ok(Status::Stopped);
    }
    Ok(
        match lxc_state(&Path::new(LINKS).join(name), name).as_deref() {
            Some("RUNNING") => Status::Running,
            _ => Status::Stopped,
        },
    )
}

fn destroy(state: &MachineState, name: &str) -> Result<(), BackendError> {
    stop(state, name, true)?;
    let dir = lxc_dir(state)?;
    for (path, gone) in [
        (dir.clone(), std::fs::remove_dir_all(&dir)),
        (
            Path::new(LINKS).join(name),
            std::fs::remove_file(Path::new(LINKS).join(name)),
        ),
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
    let dir = lxc_path(state, host)?;
    let running = lxc_state(&dir, host).as_deref() == Some("RUNNING");
    snapshots::save(&dir, snap, running, |frozen| {
        let tool = if frozen { "lxc-freeze" } else { "lxc-unfreeze" };
        lxc(tool, &dir, host, &[]).map(drop)
    })
}

fn snapshot_restore(state: &MachineState, host: &str, snap: &str) -> Result<(), BackendError> {
    let dir = lxc_path(state, host)?;
    if !snapshots::exists(&dir, snap) {
        return Err(BackendError::NoSnapshot(snap.to_owned()));
    }
    let running = lxc_state(&dir, host).as_deref() == Some("RUNNING");
    stop(state, host, true)?;
    snapshots::restore(&dir, snap)?;
    if running {
        boot(state, host)?;
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

    fn check(&self, _m: &Machine) -> Result<(), BackendError> {
        if crate::host::which("lxc-start").is_none() {
            return Err(LxcError::NotInstalled.into());
        }
        Ok(())
    }

    /// Root reaches the SSH server from inside the container's network
    /// namespace, skipping slirp4netns's port forward.
    fn dial(&self, state: &MachineState) -> Option<Dial> {
        net::dial_in(&host_name(state).ok()?)
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
        status(state, &host_name(state)?)
    }

    fn snapshot_save(&self, state: &MachineState, name: &str) -> Result<(), BackendError> {
        snapshot_save(state, &host_name(state)?, name)
    }

    fn snapshot_restore(&self, state: &mut MachineState, name: &str) -> Result<(), BackendError> {
        let host = host_name(state)?;
        snapshot_restore(state, &host, name)
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
    fn config_has_the_root_limits_and_shares() {
        let mut m = crate::envfile::test_machine(
            "[machines.web]\nbox = \"tiny\"\nbackend = \"lxc\"\ncpus = 2\nmemory = \"512MiB\"\n",
        );
        use std::os::unix::ffi::OsStrExt;
        m.shares = vec![crate::envfile::config::Share {
            host: std::ffi::OsStr::from_bytes(b"/src dir,a:b\\c\td\xff").into(),
            guest: "/srv/app".into(),
            read_only: true,
        }];
        let m = &m;
        let dir = Path::new("/run/envup/lxc/envup-x");
        let v1 = config(m, "envup-x", dir, true, false);
        let share = b"lxc.mount.entry = /src\\040dir,a:b\\134c\\011d\xff srv/app none bind,create=dir,ro 0 0\n";
        assert!(v1.windows(share.len()).any(|w| w == share));
        let v1 = String::from_utf8_lossy(&v1);
        for want in [
            "lxc.uts.name = web",
            "lxc.rootfs.path = overlay:/run/envup/lxc/envup-x/lower:/run/envup/lxc/envup-x/upper",
            "lxc.net.0.type = empty",
            "lxc.cgroup.memory.limit_in_bytes = 536870912",
            "lxc.cgroup.pids.max = 1024",
            "lxc.cgroup.cpu.cfs_quota_us = 200000",
            "lxc.seccomp.profile = /run/envup/lxc/envup-x/envup-x/seccomp",
            "lxc.mount.entry = tmpfs sys/firmware tmpfs ro,",
        ] {
            assert!(v1.contains(want), "{want} missing:\n{v1}");
        }
        let privileged =
            String::from_utf8_lossy(&config(m, "envup-x", dir, false, true)).into_owned();
        assert!(!privileged.contains("lxc.seccomp.profile"), "{privileged}");
        assert!(!privileged.contains("sys/firmware"), "{privileged}");
        let v2 = config(m, "envup-x", dir, false, false);
        let v2 = String::from_utf8_lossy(&v2);
        assert!(v2.contains("lxc.cgroup2.memory.max = 536870912"), "{v2}");
        assert!(v2.contains("lxc.cgroup2.cpu.max = 200000 100000"), "{v2}");
    }
}
