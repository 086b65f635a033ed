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
pub mod probe;
pub(crate) mod supervisor;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::rootfs::ids::{self, Claims};
use super::rootfs::{
    Layer, Login, Network as JailNetwork, first_boot_files, is_store_rootfs, lower_dir, snapshots,
};
use super::{Backend, BackendError, OwnError, io_err};
use crate::boxes::StoredBox;
use crate::envfile::Machine;
use crate::envfile::config::{Forward, Share};
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
    #[serde(with = "crate::state::bytes::path")]
    pub lower: PathBuf,
    #[serde(with = "crate::state::bytes::path")]
    pub upper: PathBuf,
    #[serde(with = "crate::state::bytes::path")]
    pub work: PathBuf,
    #[serde(with = "crate::state::bytes::path")]
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
    /// `privileged = true` in the Envfile (taken from there at every start).
    #[serde(default)]
    pub privileged: bool,
    /// The uid and gid of the user envup logs in as, in the jail: a share's
    /// files are that user's there (`IdMap::share_map`).
    #[serde(default)]
    pub login: (u32, u32),
}

pub struct JailBackend;

/// What only the jail backend runs into.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("{} is missing: it is installed beside envup (cargo install installs both)", .0.display())]
    NoSupervisor(PathBuf),
    #[error(
        "a privileged jail needs root (root in it is the host's root): run envup as root, \
         or drop `privileged = true`"
    )]
    PrivilegedNeedsRoot,
    #[error(
        "a rootless jail cannot be frozen (it has no cgroup of its own): `envup halt` it, \
         then take the snapshot"
    )]
    RootlessRunning,
    #[error("a rootless jail needs {0}")]
    RootlessNeeds(String),
    #[error("cannot start the jail supervisor")]
    Spawn(#[source] std::io::Error),
    #[error("the jail supervisor stopped ({status}): {last}")]
    SupervisorStopped { status: String, last: String },
    #[error("the jail supervisor did not start in 20 s; see {}", .0.display())]
    SupervisorSlow(PathBuf),
    #[error("an earlier supervisor of this jail did not end in 10 s; see {}", .0.display())]
    SupervisorLingers(PathBuf),
    #[error(
        "the jail was made with a {made} network and the Envfile now asks for {asked}: \
         `envup destroy` it and `up` again to change that"
    )]
    NetworkChanged {
        made: &'static str,
        asked: &'static str,
    },
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
}

impl OwnError for JailError {}

/// The jail backend's table, `[machines.NAME.jail]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// A network of its own (`private`, the default) or the host's.
    #[serde(default)]
    pub network: JailNetwork,
    /// Without what the jail hides in /proc and /sys and without its
    /// seccomp filter, for what needs them (root in it is root on the host).
    #[serde(default)]
    pub privileged: bool,
}

fn jail_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("jail")
}

/// The supervisor's program name.
pub const SUPERVISOR: &str = "envup-jail-supervisor";

/// The supervisor binary, installed beside `envup`.
fn supervisor_exe() -> Result<PathBuf, BackendError> {
    let exe = std::env::current_exe().map_err(io_err("find", "envup's own program"))?;
    let sup = exe.with_file_name(SUPERVISOR);
    if sup.is_file() {
        return Ok(sup);
    }
    Err(JailError::NoSupervisor(sup).into())
}

/// The jail's supervisor, if it is still running and still ours: the
/// process the state records or, when the state lost it (a damaged file, a
/// kill before it was recorded), the one the supervisor wrote into its lock
/// file at its first instant; either only with the same start time and
/// this jail's directory on its command line.
fn live_supervisor(state: &MachineState) -> Option<i32> {
    let dir = jail_dir(&super::machine_dir(state).ok()?);
    let recorded = state.id.clone().or_else(|| {
        let text = std::fs::read_to_string(dir.join(supervisor::LOCK)).ok()?;
        let (pid, start) = text.trim().split_once(' ')?;
        Some(format!("{pid}:{start}"))
    });
    super::live_process(recorded.as_deref(), dir.as_os_str().as_encoded_bytes())
}

/// Wait (up to `limit`) until no supervisor holds the jail's lock: the last
/// one has cleaned up after its jail. True if it is free.
fn wait_unlocked(dir: &Path, limit: Duration) -> bool {
    let Ok(f) = std::fs::File::open(dir.join(supervisor::LOCK)) else {
        return true;
    };
    let until = Instant::now() + limit;
    loop {
        match f.try_lock() {
            Ok(()) => return true,
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => return false,
        }
    }
}

impl Backend for JailBackend {
    fn name(&self) -> &'static str {
        "jail"
    }

    fn artifacts(&self) -> &'static [&'static str] {
        &["rootfs"]
    }

    fn vagrant_providers(&self) -> &'static [super::VagrantProvider] {
        &[super::rootfs::VAGRANT_LXC]
    }

    fn built(&self) -> bool {
        cfg!(target_os = "linux")
    }

    fn probe(&self) -> (bool, Vec<super::Check>) {
        probe()
    }

    fn check_options(&self, table: toml::de::ValueDeserializer<'_>) -> Result<(), toml::de::Error> {
        Options::deserialize(table).map(|_| ())
    }

    /// Run by a user other than root, a jail is rootless: it needs the
    /// user's reserved ids and the tools that map them; a privileged one
    /// needs root.
    fn check(&self, m: &Machine) -> Result<(), BackendError> {
        if !crate::userns::rootless() {
            return Ok(());
        }
        let opts: Options = super::options(m, "jail")?;
        if opts.privileged {
            return Err(JailError::PrivilegedNeedsRoot.into());
        }
        ids::SubIds::of_user()?;
        if !ids::SubIds::tools_present() {
            return Err(JailError::RootlessNeeds(
                "newuidmap and newgidmap (apt-get install uidmap)".into(),
            )
            .into());
        }
        if opts.network == JailNetwork::Private
            && crate::host::which(super::rootfs::net::PROGRAM).is_none()
        {
            return Err(JailError::RootlessNeeds(
                "slirp4netns (apt-get install slirp4netns)".into(),
            )
            .into());
        }
        Ok(())
    }

    /// Root reaches a private jail's SSH server from inside its network
    /// namespace, skipping slirp4netns's port forward.
    fn dial(&self, state: &MachineState) -> Option<super::Dial> {
        let cfg = read_config(state).ok()?;
        (cfg.network == JailNetwork::Private)
            .then(|| super::rootfs::net::dial_in(&cfg.id))
            .flatten()
    }

    fn joins(&self, m: &Machine) -> super::Joins {
        let private =
            super::options::<Options>(m, "jail").is_ok_and(|o| o.network == JailNetwork::Private);
        if private && nix::unistd::geteuid().is_root() {
            super::Joins::Namespace
        } else {
            super::Joins::No
        }
    }

    fn machine_pid(&self, state: &MachineState) -> Result<i32, BackendError> {
        let cfg = read_config(state)?;
        super::rootfs::net::init_in(&cfg.id).ok_or(BackendError::NotRunning)
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
            std::fs::create_dir_all(d).map_err(io_err("make", d))?;
        }
        let port = super::ssh_port()?;
        let layer = Layer::new(&lower, &upper)?;
        let opts: Options = super::options(m, "jail")?;
        first_boot_files(&layer, keys, &login, &m.hostname, opts.network, port)?;
        let id = super::host_name(state, "jail")?;
        let cfg = JailConfig {
            lower,
            upper,
            work,
            merged,
            hostname: m.hostname.clone(),
            cpus: m.cpus,
            memory: m.memory.bytes(),
            pids: PIDS_MAX,
            network: opts.network,
            ssh_port: port,
            forwards: m.forwards.clone(),
            shares: m.shares.clone(),
            id,
            privileged: opts.privileged,
            login: (login.uid, login.gid),
        };
        crate::state::write_json(&dir.join("jail.json"), &cfg)?;
        state.ssh = Some(SshEndpoint {
            host: "127.0.0.1".into(),
            port: cfg.ssh_port,
            user: login.name,
        });
        state.forwards = m.forwards.clone();
        Ok(())
    }

    fn start(&self, m: &Machine, state: &mut MachineState) -> Result<(), BackendError> {
        if live_supervisor(state).is_some() {
            return Ok(());
        }
        let cfg = refresh_config(m, state)?;
        launch(state, &cfg)
    }

    /// See [`refresh_config`].
    fn restart_applies(&self) -> &'static [&'static str] {
        &[
            "cpus", "memory", "forwards", "shares", "hostname", "options",
        ]
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
        if !crate::userns::rootless() {
            Claims::host().release(&dir);
        }
        match crate::userns::remove_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err("remove", &dir)(e)),
            // What the jail's files named but envup did not make is told.
            _ => match cfg {
                Err(e @ BackendError::NotOurs(_)) => Err(e),
                _ => Ok(()),
            },
        }
    }

    /// The supervisor's last lines: why the jail's init could not start.
    fn last_words(&self, state: &MachineState) -> Option<String> {
        let log = jail_dir(&super::machine_dir(state).ok()?).join("supervisor.log");
        let text = std::fs::read(&log).ok()?;
        let text = String::from_utf8_lossy(&text);
        let last: Vec<&str> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .rev()
            .take(3)
            .collect();
        (!last.is_empty()).then(|| {
            format!(
                "{} (from {})",
                crate::ident::printable(&last.into_iter().rev().collect::<Vec<_>>().join(" / ")),
                log.display()
            )
        })
    }

    fn status(&self, state: &MachineState) -> Result<Status, BackendError> {
        if state.status == Status::Running {
            thaw_if_left_frozen(state)?;
        }
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
        let running = live_supervisor(state).is_some();
        if running && crate::userns::rootless() {
            return Err(JailError::RootlessRunning.into());
        }
        snapshots::save(&dir, name, running, |frozen| {
            cgroup::Cgroup::freeze(&id, frozen).map_err(|e| JailError::Cgroup(e).into())
        })
    }

    /// The jail is stopped, its layer replaced, and started again if it ran.
    fn snapshot_restore(
        &self,
        m: &Machine,
        state: &mut MachineState,
        name: &str,
    ) -> Result<(), BackendError> {
        let dir = jail_dir(&super::machine_dir(state)?);
        if !snapshots::exists(&dir, name) {
            return Err(BackendError::NoSnapshot(name.to_owned()));
        }
        let running = live_supervisor(state).is_some();
        halt(state, true)?;
        // Marked first: a kill after the swap must not leave a layer that
        // the next start does not shift (shifting twice changes nothing).
        if !crate::userns::rootless() {
            ids::layer_replaced(&dir)?;
        }
        snapshots::restore(&dir, name)?;
        if running {
            self.start(m, state)?;
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

/// What the jail is started with comes from the Envfile and the store,
/// not from the state: a `jail.json` edited to add a share of a host
/// directory, a forward on another address, another lower layer or the
/// host's network grants nothing. (It also means a restart applies changed
/// limits, shares and forwards.) The config is handed to the supervisor
/// on its standard input; `jail.json` keeps it as a record.
fn refresh_config(m: &Machine, state: &mut MachineState) -> Result<JailConfig, BackendError> {
    let dir = jail_dir(&super::machine_dir(state)?);
    let recorded = read_config(state)?;
    let mut cfg = recorded.clone();
    cfg.lower = lower_dir(&super::stored_box(state)?)?;
    if let Some(ep) = &state.ssh {
        let login = Login::of(&cfg.lower, &ep.user)?;
        cfg.login = (login.uid, login.gid);
    }
    let opts: Options = super::options(m, "jail")?;
    if cfg.network != opts.network {
        return Err(JailError::NetworkChanged {
            made: cfg.network.name(),
            asked: opts.network.name(),
        }
        .into());
    }
    cfg.hostname = m.hostname.clone();
    cfg.cpus = m.cpus;
    cfg.memory = m.memory.bytes();
    cfg.pids = PIDS_MAX;
    cfg.forwards = m.forwards.clone();
    cfg.shares = m.shares.clone();
    cfg.privileged = opts.privileged;
    // Written (and synced) only when it changed: the first start follows
    // create, which wrote the same.
    let value = |c: &JailConfig| serde_json::to_value(c).expect("configs serialize");
    if value(&cfg) != value(&recorded) {
        crate::state::write_json(&dir.join("jail.json"), &cfg)?;
    }
    state.forwards = m.forwards.clone();
    Ok(cfg)
}

/// Start the jail's supervisor with `cfg` and record it in `state`.
fn launch(state: &mut MachineState, cfg: &JailConfig) -> Result<(), BackendError> {
    let dir = jail_dir(&super::machine_dir(state)?);
    // A restore cut short is finished before the layer is used.
    snapshots::recover_layer(&dir)?;
    // Rootless, the layer is the user's and its ids the user's map.
    if !crate::userns::rootless() {
        Claims::host().settle(&dir, &cfg.upper, cfg.privileged)?;
    }
    let log = dir.join("supervisor.log");
    let pidfile = dir.join("supervisor.pid");
    // A supervisor of this jail that is still on its way out finishes
    // first (its clean-up would take the new jail's cgroup).
    if !wait_unlocked(&dir, HALT_DEADLINE) {
        return Err(JailError::SupervisorLingers(log).into());
    }
    let _ = std::fs::remove_file(&pidfile);
    let exe = supervisor_exe()?;
    let logf = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(io_err("open", &log))?;
    let mut cmd = Command::new(exe);
    cmd.arg(&dir)
        .arg(&cfg.id)
        // A fault the tests inject is envup's, not the supervisor's.
        .env_remove(crate::fault::VAR)
        .stdin(Stdio::piped())
        // It says on its standard output when the jail has started.
        .stdout(Stdio::piped())
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
    let mut child = cmd.spawn().map_err(JailError::Spawn)?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("piped");
        // A supervisor that died at once says why below.
        let _ = stdin.write_all(&serde_json::to_vec(cfg).expect("configs serialize"));
    }
    crate::fault::point("jail:spawned");
    let out = child.stdout.take().expect("piped");
    let said = said_within(&out, Duration::from_secs(20));
    if let Some((pid, start)) = said.trim().split_once(' ') {
        state.id = Some(format!("{pid}:{start}"));
        // The supervisor lives on; nobody waits for it here.
        std::mem::forget(child);
        return Ok(());
    }
    // Nothing said: it stopped (its stdout closed as it ended), or it is
    // too slow.
    let mut ended = child.try_wait();
    let until = Instant::now() + Duration::from_secs(2);
    while matches!(ended, Ok(None)) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
        ended = child.try_wait();
    }
    match ended {
        Ok(Some(st)) => {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let mut last: Vec<&str> = tail.lines().rev().take(5).collect();
            last.reverse();
            let mut last = last.join(" / ");
            // Its log could not be written either on a full disk.
            if crate::host::free_bytes(&dir).is_some_and(|b| b < 1 << 20) {
                last.push_str(&format!(
                    "{}the disk of {} is full (No space left on device)",
                    if last.is_empty() { "" } else { "; " },
                    dir.display()
                ));
            }
            if last.is_empty() {
                last = format!("it wrote nothing to its log, {}", log.display());
            }
            Err(JailError::SupervisorStopped {
                status: st.to_string(),
                last,
            }
            .into())
        }
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            Err(JailError::SupervisorSlow(log).into())
        }
    }
}

/// What the supervisor says on its standard output before it closes it or
/// `limit` passes (a line with its pid and start time once the jail has
/// started; nothing when it stopped first).
fn said_within(out: &std::process::ChildStdout, limit: Duration) -> String {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    let until = Instant::now() + limit;
    let mut text = Vec::new();
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let mut fds = [PollFd::new(out.as_fd(), PollFlags::POLLIN)];
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) => break,
            Ok(_) => {
                let mut buf = [0u8; 128];
                match nix::unistd::read(out.as_fd(), &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        text.extend_from_slice(&buf[..n]);
                        if text.contains(&b'\n') {
                            break;
                        }
                    }
                }
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&text).into_owned()
}

/// Stop the jail: its supervisor asks init to power off (or kills it, with
/// `force`), within a deadline.
fn halt(state: &MachineState, force: bool) -> Result<(), BackendError> {
    let Some(pid) = live_supervisor(state) else {
        return Ok(());
    };
    // A frozen jail could neither power off nor die.
    thaw_if_left_frozen(state)?;
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
    // Gone from /proc is not yet done: its clean-up ends with its lock.
    if let Ok(dir) = super::machine_dir(state) {
        wait_unlocked(&jail_dir(&dir), Duration::from_secs(5));
    }
    Ok(())
}

/// A jail that a killed `snapshot save` left frozen is thawed.
fn thaw_if_left_frozen(state: &MachineState) -> Result<(), BackendError> {
    let dir = jail_dir(&super::machine_dir(state)?);
    snapshots::recover(&dir, || {
        let id = read_config(state)?.id;
        cgroup::Cgroup::freeze(&id, false).map_err(|e| JailError::Cgroup(e).into())
    })
}

fn read_config(state: &MachineState) -> Result<JailConfig, BackendError> {
    JailConfig::load(
        &jail_dir(&super::machine_dir(state)?),
        &super::host_name(state, "jail")?,
    )
}

impl JailConfig {
    /// The jail's config from its directory `dir`, checked against what
    /// envup writes there: its own layer directories, a box rootfs in a
    /// store as the lower layer, and `id`, the jail's name on the host.
    pub fn load(dir: &Path, id: &str) -> Result<JailConfig, BackendError> {
        let p = dir.join("jail.json");
        let cfg: JailConfig =
            crate::state::read_json(&p)?.ok_or_else(|| BackendError::Missing(p.clone()))?;
        cfg.check(&p, dir, id)
    }

    /// The config a supervisor is started with, read from `r`, checked as
    /// [`JailConfig::load`] checks the file.
    pub fn from_reader(
        r: impl std::io::Read,
        dir: &Path,
        id: &str,
    ) -> Result<JailConfig, BackendError> {
        let what = Path::new("the supervisor's standard input");
        let cfg: JailConfig = serde_json::from_reader(r)
            .map_err(|e| crate::state::StateError::Parse(what.to_owned(), e))?;
        cfg.check(what, dir, id)
    }

    fn check(self, p: &Path, dir: &Path, id: &str) -> Result<JailConfig, BackendError> {
        let cfg = self;
        super::own_host_name(p, id, &cfg.id)?;
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
