//! The LXC engine: a system container run by the lxc tools, its root an
//! overlay of the box's rootfs (unpacked once in the store, as for jails)
//! and a layer of the machine's own; its network namespace connected by
//! slirp4netns, as a private jail's is. The container's files live in the
//! machine's state directory (`lxc-* -P DIR`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{Created, HALT_DEADLINE, PIDS_MAX, engine::Kind};
use crate::backend::jail::supervisor::{forget_netns, name_netns};
use crate::backend::jail::{Layer, Login, first_boot_files, lower_dir, net, snapshots};
use crate::backend::{BackendError, failed};
use crate::boxes::StoredBox;
use crate::envfile::Machine;
use crate::envfile::config::JailNetwork;
use crate::ssh::MachineKeys;
use crate::state::machine::SshEndpoint;
use crate::state::{MachineState, Status};

/// The container's directory tree: `DIR/NAME/config`, `DIR/upper`.
fn lxc_dir(state: &MachineState) -> Result<PathBuf, BackendError> {
    Ok(crate::backend::machine_dir(state)?.join("lxc"))
}

fn lxc(tool: &str, dir: &Path, name: &str, args: &[&str]) -> Result<String, BackendError> {
    let out = Command::new(tool)
        .arg("-P")
        .arg(dir)
        .args(["-n", name])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| failed(format!("cannot run {tool} (apt-get install lxc): {e}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(failed(format!(
            "`{tool}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// The container's config file.
pub fn config(m: &Machine, name: &str, lower: &Path, upper: &Path, cgroup_v1: bool) -> String {
    let mut c = vec![
        format!("lxc.uts.name = {}", m.hostname),
        format!(
            "lxc.rootfs.path = overlay:{}:{}",
            lower.display(),
            upper.display()
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
    for s in &m.shares {
        let ro = if s.read_only { ",ro" } else { "" };
        c.push(format!(
            "lxc.mount.entry = {} {} none bind,create=dir{ro} 0 0",
            s.host.display().to_string().replace(' ', "\\040"),
            s.guest.trim_start_matches('/').replace(' ', "\\040"),
        ));
    }
    c.join("\n") + "\n"
}

pub fn create(
    m: &Machine,
    stored: &StoredBox,
    keys: &MachineKeys,
    state: &mut MachineState,
    name: &str,
) -> Result<Created, BackendError> {
    let lower = lower_dir(stored)?;
    let login = Login::of(&lower, &stored.manifest.ssh_user)?;
    let dir = lxc_dir(state)?;
    let upper = dir.join("upper");
    std::fs::create_dir_all(&upper).map_err(failed)?;
    std::fs::create_dir_all(dir.join(name)).map_err(failed)?;
    let port = crate::backend::ssh_port()?;
    let layer = Layer {
        lower: &lower,
        upper: &upper,
    };
    first_boot_files(
        &layer,
        keys,
        &login,
        &m.hostname,
        JailNetwork::Private,
        port,
    )?;
    let text = config(m, name, &lower, &upper, super::cgroup_v1());
    crate::state::write_atomic(&dir.join(name).join("config"), text.as_bytes()).map_err(failed)?;
    state.id = Some(format!("lxc:{name}"));
    state.ssh = Some(SshEndpoint {
        host: "127.0.0.1".into(),
        port,
        user: login.name,
        netns: Some(Path::new("/run/netns").join(name)),
    });
    state.forwards = m.forwards.clone();
    Ok(Created {
        engine: Kind::Lxc,
        name: name.to_owned(),
        args: Vec::new(),
    })
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
/// be authority over the host. Only the lower layer is kept from it, and
/// only if it is a box rootfs in a store. Share targets are made again in
/// the machine's layer, where a symlink root in the container planted
/// cannot redirect them.
fn refresh_config(m: &Machine, dir: &Path, name: &str) -> Result<(), BackendError> {
    let path = dir.join(name).join("config");
    let old = std::fs::read_to_string(&path)
        .map_err(|e| failed(format!("cannot read {}: {e}", path.display())))?;
    let upper = dir.join("upper");
    let lower = old
        .lines()
        .find_map(|l| l.strip_prefix("lxc.rootfs.path = overlay:"))
        .and_then(|v| v.strip_suffix(&format!(":{}", upper.display())))
        .map(PathBuf::from)
        .filter(|l| crate::backend::jail::is_store_rootfs(l))
        .ok_or_else(|| {
            BackendError::NotOurs(format!(
                "{} does not name a box rootfs over this container's own layer: \
                 it is damaged or was edited",
                path.display()
            ))
        })?;
    let layer = Layer {
        lower: &lower,
        upper: &upper,
    };
    for s in &m.shares {
        layer.mkdir(Path::new(&s.guest), 0o755, (0, 0))?;
    }
    let text = config(m, name, &lower, &upper, super::cgroup_v1());
    crate::state::write_atomic(&path, text.as_bytes()).map_err(failed)
}

pub fn start(m: &Machine, state: &mut MachineState, c: &Created) -> Result<(), BackendError> {
    let dir = lxc_dir(state)?;
    if lxc_state(&dir, &c.name).as_deref() == Some("RUNNING") {
        return Ok(());
    }
    refresh_config(m, &dir, &c.name)?;
    // The forwards too are the Envfile's, not the state's.
    state.forwards = m.forwards.clone();
    boot(state, c)
}

/// Start the container with the config it has (written from the Envfile
/// by the last `start`).
fn boot(state: &MachineState, c: &Created) -> Result<(), BackendError> {
    let dir = lxc_dir(state)?;
    // A container that powered itself off left its helper holding ports.
    end_net(&dir, &c.name);
    let log = dir.join("lxc.log");
    lxc(
        "lxc-start",
        &dir,
        &c.name,
        &["-d", "-l", "WARN", "-o", &log.to_string_lossy()],
    )?;
    let pid = init_pid(&dir, &c.name).ok_or_else(|| {
        failed(format!(
            "the container stopped at once; see {}",
            log.display()
        ))
    })?;
    let ns = name_netns(pid, &c.name).map_err(failed)?;
    let ep = state
        .ssh
        .as_ref()
        .ok_or_else(|| failed("no SSH port recorded"))?;
    // The helper outlives this command; its pid and start time are kept so
    // that halt ends this process and no other.
    let helper = net::connect(
        &ns,
        &c.name,
        &dir.join("net.log"),
        &net::host_fwds(ep.port, &state.forwards),
        net::Lifetime::Detached,
    );
    let recorded = helper.and_then(|child| {
        let pid = child.id() as i32;
        let started = crate::backend::start_time(pid).unwrap_or(0);
        crate::state::write_atomic(&dir.join(NET_PID), format!("{pid}:{started}").as_bytes())
            .map_err(|e| e.to_string())
    });
    if let Err(e) = recorded {
        let _ = stop(state, c, true);
        return Err(failed(format!(
            "cannot connect the container's network: {e}"
        )));
    }
    Ok(())
}

/// Where the network helper's `pid:start-time` is kept.
const NET_PID: &str = "net.pid";

/// End the container's network helper, if it still runs, and take its
/// namespace's name away.
fn end_net(dir: &Path, name: &str) {
    let id = std::fs::read_to_string(dir.join(NET_PID)).ok();
    if let Some(pid) = crate::backend::live_process(id.as_deref().map(str::trim), net::PROGRAM) {
        // Gone before returning: a new helper will want the same ports.
        let p = nix::unistd::Pid::from_raw(pid);
        let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(2);
        while crate::backend::live_process(id.as_deref().map(str::trim), net::PROGRAM).is_some() {
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

pub fn stop(state: &MachineState, c: &Created, force: bool) -> Result<(), BackendError> {
    let dir = lxc_dir(state)?;
    if lxc_state(&dir, &c.name).as_deref() == Some("RUNNING") {
        let mut stopped = false;
        if !force && let Some(pid) = init_pid(&dir, &c.name) {
            // Power off: busybox init on SIGUSR2, systemd on SIGRTMIN+4.
            let p = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGUSR2);
            // SAFETY: sending a signal number to a pid.
            unsafe {
                nix::libc::kill(pid, nix::libc::SIGRTMIN() + 4);
            }
            let deadline = Instant::now() + HALT_DEADLINE;
            while Instant::now() < deadline {
                if lxc_state(&dir, &c.name).as_deref() != Some("RUNNING") {
                    stopped = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        if !stopped {
            lxc("lxc-stop", &dir, &c.name, &["-k"])?;
        }
    }
    end_net(&dir, &c.name);
    Ok(())
}

pub fn status(state: &MachineState, c: &Created) -> Result<Status, BackendError> {
    let dir = lxc_dir(state)?;
    Ok(match lxc_state(&dir, &c.name).as_deref() {
        Some("RUNNING") => Status::Running,
        _ => Status::Stopped,
    })
}

pub fn destroy(state: &MachineState, c: &Created) -> Result<(), BackendError> {
    stop(state, c, true)?;
    let dir = lxc_dir(state)?;
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(failed(format!("cannot remove {}: {e}", dir.display())))
        }
        _ => Ok(()),
    }
}

/// Snapshots: copies of the machine's own layer (jail::snapshots), frozen
/// with lxc-freeze while copied.
pub fn snapshot_save(state: &MachineState, c: &Created, name: &str) -> Result<(), BackendError> {
    let dir = lxc_dir(state)?;
    let running = lxc_state(&dir, &c.name).as_deref() == Some("RUNNING");
    snapshots::save(&dir, name, running, |frozen| {
        let tool = if frozen { "lxc-freeze" } else { "lxc-unfreeze" };
        lxc(tool, &dir, &c.name, &[]).map(drop)
    })
}

pub fn snapshot_restore(state: &MachineState, c: &Created, name: &str) -> Result<(), BackendError> {
    let dir = lxc_dir(state)?;
    if !snapshots::exists(&dir, name) {
        return Err(failed(format!("machine has no snapshot `{name}`")));
    }
    let running = lxc_state(&dir, &c.name).as_deref() == Some("RUNNING");
    stop(state, c, true)?;
    snapshots::restore(&dir, name)?;
    if running {
        boot(state, c)?;
    }
    Ok(())
}

pub fn snapshot_list(state: &MachineState) -> Result<Vec<String>, BackendError> {
    Ok(snapshots::list(&lxc_dir(state)?))
}

pub fn snapshot_delete(state: &MachineState, name: &str) -> Result<(), BackendError> {
    snapshots::delete(&lxc_dir(state)?, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_has_the_root_limits_and_shares() {
        let cfg = crate::envfile::parse(
            "[machines.web]\nbox = \"tiny\"\nbackend = \"container\"\ncpus = 2\nmemory = \"512MiB\"\n",
            Path::new("/p/Envfile"),
            Path::new("/p"),
        )
        .unwrap();
        let mut m = cfg.machines["web"].clone();
        m.shares = vec![crate::envfile::config::Share {
            host: "/src dir".into(),
            guest: "/srv/app".into(),
            read_only: true,
        }];
        let m = &m;
        let v1 = config(
            m,
            "envup-x",
            Path::new("/s/rootfs"),
            Path::new("/m/upper"),
            true,
        );
        for want in [
            "lxc.uts.name = web",
            "lxc.rootfs.path = overlay:/s/rootfs:/m/upper",
            "lxc.net.0.type = empty",
            "lxc.cgroup.memory.limit_in_bytes = 536870912",
            "lxc.cgroup.pids.max = 1024",
            "lxc.cgroup.cpu.cfs_quota_us = 200000",
            "lxc.mount.entry = /src\\040dir srv/app none bind,create=dir,ro 0 0",
        ] {
            assert!(v1.contains(want), "{want} missing:\n{v1}");
        }
        let v2 = config(
            m,
            "envup-x",
            Path::new("/s/rootfs"),
            Path::new("/m/upper"),
            false,
        );
        assert!(v2.contains("lxc.cgroup2.memory.max = 536870912"), "{v2}");
        assert!(v2.contains("lxc.cgroup2.cpu.max = 200000 100000"), "{v2}");
    }
}
