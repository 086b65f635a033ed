//! Backends: what runs a machine. One object-safe trait, and a registry of
//! the backends this envup has; the rest of envup reaches a backend only
//! through the registry, by the name the Envfile gives.
//!
//! A backend declares what it is (its name, the box artifacts it runs, the
//! Vagrant providers whose boxes it takes, what it needs from the host),
//! owns its Envfile table (`[machines.NAME.<backend>]`), and says how the
//! SSH client reaches its machines. Adding one is a folder here and a line
//! in [`Registry::builtin`] (docs/architecture.md has the checklist).

pub mod container;
#[doc(hidden)]
pub mod fake;
pub mod jail;
pub mod lxc;
pub mod plugin;
pub mod qemu;
pub mod rootfs;

use std::fmt;
use std::sync::LazyLock;

use serde::{Deserialize, Serialize};

use crate::boxes::StoredBox;
use crate::envfile::Machine;
use crate::ssh::MachineKeys;
use crate::state::{MachineState, Status};

/// A backend's name as the Envfile, the state files and the host index
/// write it: a short lowercase word. A name read back from a state file
/// may be one this envup does not have (the registry says so when asked).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BackendName(String);

/// A word that cannot be a backend's name.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "`{}` is not a backend name (lowercase letters, digits and `-`, at most 32)",
    crate::ident::printable(.0)
)]
pub struct BadBackendName(pub String);

impl BackendName {
    pub fn new(name: &str) -> Result<Self, BadBackendName> {
        let ok = !name.is_empty()
            && name.len() <= 32
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(Self(name.to_owned()))
        } else {
            Err(BadBackendName(name.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A backend's own name (checked when its registry was made).
    pub fn of(backend: &dyn Backend) -> Self {
        Self::new(backend.name()).expect("a registry holds only named backends")
    }
}

impl TryFrom<String> for BackendName {
    type Error = BadBackendName;
    fn try_from(s: String) -> Result<Self, BadBackendName> {
        Self::new(&s)
    }
}

impl From<BackendName> for String {
    fn from(n: BackendName) -> String {
        n.0
    }
}

impl fmt::Display for BackendName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for BackendName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for BackendName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(
        "unknown backend `{name}`: this envup has {known}, and found no plugin `{}{name}` in {searched}",
        plugin::PREFIX
    )]
    Unknown {
        name: String,
        known: String,
        searched: String,
    },
    #[error("the {0} backend is not available in this build of envup yet")]
    NotBuilt(&'static str),
    #[error("the {0} backend cannot take snapshots")]
    NoSnapshots(&'static str),
    /// A machine's own files name something envup did not create for it
    /// (they are damaged or were edited); envup leaves that thing alone.
    #[error("{0}")]
    NotOurs(String),
    #[error("the machine is not running")]
    NotRunning,
    /// A backend plugin could not be used, or failed: what it is, where,
    /// and what went wrong.
    #[error("backend plugin `{plugin}` ({}): {message}", .path.display())]
    Plugin {
        plugin: String,
        path: std::path::PathBuf,
        message: String,
    },
    #[error("the {0} backend cannot put machines on a project network")]
    NoNetwork(&'static str),
    #[error("the machine has no snapshot `{0}`")]
    NoSnapshot(String),
    #[error("the machine's state does not say where its directory is")]
    NoDir,
    #[error("cannot find a free port on 127.0.0.1 for SSH")]
    NoPort(#[source] std::io::Error),
    /// A program the backend runs could not be started.
    #[error("cannot run {program} ({install})")]
    Spawn {
        program: String,
        /// How to get it.
        install: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A program the backend ran failed: its command line, and what it
    /// said on stderr.
    #[error("`{command}` failed{}", if .stderr.is_empty() { String::new() } else { format!(": {}", .stderr) })]
    Tool { command: String, stderr: String },
    /// An operation on a file or directory of the machine or the store.
    #[error("cannot {op} {}", .path.display())]
    Io {
        op: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file envup keeps for the machine is missing.
    #[error("{} is missing", .0.display())]
    Missing(std::path::PathBuf),
    #[error(
        "box `{name}` {version} (sha256 {sha256}), which the machine was made from, is no \
         longer in the store: `envup box add` it again, or `envup destroy` the machine"
    )]
    BoxGone {
        name: String,
        version: String,
        sha256: String,
    },
    #[error("box `{name}` has no {artifact} artifact")]
    NoArtifact {
        name: String,
        artifact: &'static str,
    },
    #[error("machine `{machine}`: its `{backend}` settings")]
    Options {
        machine: String,
        backend: String,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    /// What only one backend runs into, as its own error type.
    #[error(transparent)]
    Own(Box<dyn std::error::Error + Send + Sync>),
}

/// Which boxes left the store, for [`Backend::boxes_removed`].
#[derive(Debug, Clone, Copy)]
pub enum Gone<'a> {
    /// These (`box remove`).
    These(&'a [crate::ident::Digest]),
    /// Every box but these, the ones the store holds (`box prune`: what an
    /// earlier removal had to keep is tried again).
    AllBut(&'a [crate::ident::Digest]),
}

/// A backend's own error type: it converts into [`BackendError::Own`], so
/// `?` works on it in any backend method.
pub trait OwnError: std::error::Error + Send + Sync + 'static {}

impl<E: OwnError> From<E> for BackendError {
    fn from(e: E) -> Self {
        BackendError::Own(Box::new(e))
    }
}

/// An I/O error as a backend error: `op` on `path`.
pub(crate) fn io_err(
    op: &'static str,
    path: impl Into<std::path::PathBuf>,
) -> impl FnOnce(std::io::Error) -> BackendError {
    let path = path.into();
    move |source| BackendError::Io { op, path, source }
}

/// Run a program to its end; its stdout, or an error naming the command
/// line and what it said. `install` says how to get the program.
pub(crate) fn run_tool(
    cmd: &mut std::process::Command,
    install: &'static str,
) -> Result<String, BackendError> {
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| BackendError::Spawn {
            program: cmd.get_program().to_string_lossy().into_owned(),
            install,
            source,
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(tool_failed(cmd, &out))
    }
}

/// The error for a program that ran and failed.
fn tool_failed(cmd: &std::process::Command, out: &std::process::Output) -> BackendError {
    let mut command = crate::ssh::sh_quote(&cmd.get_program().to_string_lossy());
    for a in cmd.get_args() {
        command.push(' ');
        command.push_str(&crate::ssh::sh_quote(&a.to_string_lossy()));
    }
    let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    if stderr.is_empty() {
        stderr = format!("{}", out.status);
    }
    BackendError::Tool { command, stderr }
}

/// How envup's SSH client reaches a machine's SSH server when the address
/// in its state is not the way (a jail's server, reached from inside the
/// jail's network namespace): given a timeout, a connected stream.
pub type Dial =
    Box<dyn Fn(std::time::Duration) -> std::io::Result<std::net::TcpStream> + Send + Sync>;

/// A Vagrant provider whose boxes a backend runs, and how its boxes are
/// laid out: the envup artifact its image becomes (`disk`, `rootfs`) and
/// the user its boxes log in as.
#[derive(Debug, Clone, Copy)]
pub struct VagrantProvider {
    pub name: &'static str,
    pub artifact: &'static str,
    pub user: &'static str,
    /// How its boxes let envup in the first time, when the backend cannot
    /// put the machine's keys in place before the machine boots.
    pub first_login: Option<crate::ssh::first_login::FirstLogin>,
}

/// A machine the Envfile gives one backend that another runs (the
/// container backend's `engine = "lxc"` is the lxc backend's), and what to
/// tell the user about it.
pub struct HandOver {
    pub to: &'static str,
    pub note: Option<String>,
}

/// A machine backend. Optional capabilities (snapshots) get default
/// methods that say the backend does not support them.
pub trait Backend: Send + Sync {
    /// The name the Envfile's `backend` and the backend's own table use.
    fn name(&self) -> &'static str;
    /// The box artifacts it runs (`rootfs`, `disk`), by preference.
    fn artifacts(&self) -> &'static [&'static str];
    /// The Vagrant providers whose boxes it runs.
    fn vagrant_providers(&self) -> &'static [VagrantProvider] {
        &[]
    }
    /// Whether this build of envup can run it (on this operating system).
    fn built(&self) -> bool {
        true
    }
    /// Whether envup can use it now, or why not (a build without it, a
    /// plugin that does not answer).
    fn ready(&self) -> Result<(), BackendError> {
        if self.built() {
            Ok(())
        } else {
            Err(BackendError::NotBuilt(self.name()))
        }
    }
    /// What the host has of what the backend needs (`envup doctor`):
    /// whether it is all there, and each check.
    fn probe(&self) -> (bool, Vec<Check>);
    /// Check the backend's own Envfile table, `[machines.NAME.<name>]` or
    /// `[defaults.<name>]`: its keys, their types and values. The error
    /// carries the position of the value at fault, and the Envfile loader
    /// words it as it words every other problem. A backend without
    /// settings takes no keys.
    fn check_options(&self, table: toml::de::ValueDeserializer<'_>) -> Result<(), toml::de::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct NoOptions {}
        NoOptions::deserialize(table).map(|_| ())
    }
    /// Another backend runs this machine, or None.
    fn hand_over(&self, _m: &Machine) -> Result<Option<HandOver>, BackendError> {
        Ok(None)
    }
    /// Another backend runs this recorded machine now (it was made by an
    /// earlier envup, when that backend was part of this one), or None.
    fn adopted_by(&self, _state: &MachineState) -> Option<&'static str> {
        None
    }
    /// Boxes left the store: remove what the backend made of them (engine
    /// images, which are host-wide caches) where nothing uses it; returns
    /// what it removed or had to keep, for the user.
    fn boxes_removed(&self, _gone: Gone<'_>) -> Vec<String> {
        Vec::new()
    }
    /// How SSH reaches the machine, when not at the address in its state.
    fn dial(&self, _state: &MachineState) -> Option<Dial> {
        None
    }
    /// How the machine joins its project's network (`crate::network`).
    fn joins(&self, _m: &Machine) -> Joins {
        Joins::No
    }
    /// For [`Joins::Namespace`]: a process of the running machine whose
    /// network namespace and root directory are the machine's.
    fn machine_pid(&self, _state: &MachineState) -> Result<i32, BackendError> {
        Err(BackendError::NoNetwork(self.name()))
    }
    /// Refuse, before anything is made, a machine this backend cannot run.
    fn check(&self, _m: &Machine) -> Result<(), BackendError> {
        Ok(())
    }
    /// What `plan` warns of for machine `m` on this backend: what it
    /// cannot ensure (a read-write share written by root of the host).
    fn warnings(&self, _m: &Machine) -> Vec<String> {
        Vec::new()
    }
    /// Create the machine from the stored box (read-only: a machine's own
    /// changes go to a layer of its own), with `keys` placed before its first boot (the
    /// client key authorized for its SSH user, the host key for its sshd);
    /// record its id and SSH endpoint in `state`.
    fn create(
        &self,
        m: &Machine,
        stored: &StoredBox,
        keys: &MachineKeys,
        state: &mut MachineState,
    ) -> Result<(), BackendError>;
    /// Start the machine, applying (when it was stopped) the settings
    /// [`Backend::restart_applies`] names from `m`.
    fn start(&self, m: &Machine, state: &mut MachineState) -> Result<(), BackendError>;
    /// The settings (keys of `plan::settings`) that a start of a stopped
    /// machine takes from the Envfile; the others stay as created, and
    /// need `destroy` + `up` to change.
    fn restart_applies(&self) -> &'static [&'static str] {
        &[]
    }
    /// Stop gracefully, or at once when `force`.
    fn stop(&self, state: &MachineState, force: bool) -> Result<(), BackendError>;
    /// Remove every trace of the machine outside its state directory.
    fn destroy(&self, state: &MachineState) -> Result<(), BackendError>;
    /// What the machine is doing now, asked of the backend itself.
    fn status(&self, state: &MachineState) -> Result<Status, BackendError>;

    /// Why a machine that stopped did, as far as the backend kept it (the
    /// last lines of a log), for the error of an `up` it stopped during.
    fn last_words(&self, _state: &MachineState) -> Option<String> {
        None
    }

    /// Facts worth showing in `status` (the qemu backend's accelerator).
    fn details(&self, _state: &MachineState) -> Vec<(String, String)> {
        Vec::new()
    }

    /// Once the machine answers SSH after a boot: finish what needs the
    /// guest (mounting shares). Returns notes for the user.
    fn after_boot(
        &self,
        _m: &Machine,
        _ssh: &crate::ssh::Ssh,
    ) -> Result<Vec<String>, BackendError> {
        Ok(Vec::new())
    }

    /// Save the machine as snapshot `name`.
    fn snapshot_save(&self, _state: &MachineState, _name: &str) -> Result<(), BackendError> {
        Err(BackendError::NoSnapshots(self.name()))
    }
    /// Bring the machine back to snapshot `name`; one that ran is started
    /// again as the Envfile's `m` says (not as its state files say).
    fn snapshot_restore(
        &self,
        _m: &Machine,
        _state: &mut MachineState,
        _name: &str,
    ) -> Result<(), BackendError> {
        Err(BackendError::NoSnapshots(self.name()))
    }
    /// The machine's snapshots, by name.
    fn snapshot_list(&self, _state: &MachineState) -> Result<Vec<String>, BackendError> {
        Err(BackendError::NoSnapshots(self.name()))
    }
    fn snapshot_delete(&self, _state: &MachineState, _name: &str) -> Result<(), BackendError> {
        Err(BackendError::NoSnapshots(self.name()))
    }
}

/// How a machine joins its project's network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Joins {
    /// It does not (a jail on the host's network, a backend without one).
    No,
    /// Through its network namespace on this host: envup adds a veth pair
    /// once it started, and writes `/etc/hosts` through its root.
    Namespace,
    /// As a VM: the backend starts it with a NIC on the tap of its address
    /// (`network::link::ensure_tap`); envup configures the NIC and writes
    /// `/etc/hosts` over SSH.
    Guest,
}

/// The machine's state directory; each backend keeps its files under it.
pub(crate) fn machine_dir(state: &MachineState) -> Result<std::path::PathBuf, BackendError> {
    state.dir.clone().ok_or(BackendError::NoDir)
}

/// The stored box the machine was made from, found in this home's store by
/// the digest its state records: what a backend starts a machine on is
/// the store's, never a path read back from the machine's files.
pub(crate) fn stored_box(state: &MachineState) -> Result<crate::boxes::StoredBox, BackendError> {
    let b = state.box_ref.as_ref().ok_or_else(|| {
        BackendError::NotOurs(format!(
            "machine `{}`'s state records no box; `envup destroy` it and `up` again",
            state.name
        ))
    })?;
    let home = crate::state::envup_home()?;
    crate::boxes::Store::new(&home)
        .get(b.sha256.as_str())
        .ok_or_else(|| BackendError::BoxGone {
            name: b.name.clone(),
            version: b.version.clone(),
            sha256: b.sha256.to_string(),
        })
}

/// The name a machine's resources get on the host (cgroup, netns,
/// container, qemu process): `envup-` and 12 hex digits of a hash of the
/// machine's identity (its project's directory and its name, see
/// `ProjectState::identity`), and of `part` for a backend that names its
/// own directory (`jail`, `qemu`) as earlier envups did. The same machine
/// gets the same name from every envup since the first.
pub(crate) fn host_name(state: &MachineState, part: &str) -> Result<String, BackendError> {
    let identity = state.identity.as_deref().ok_or(BackendError::NoDir)?;
    let seed = if part.is_empty() {
        identity.to_owned()
    } else {
        identity.join(part)
    };
    Ok(name_from(&seed))
}

fn name_from(seed: &std::path::Path) -> String {
    let digest = <sha2::Sha256 as sha2::Digest>::digest(seed.as_os_str().as_encoded_bytes());
    format!("envup-{}", &crate::boxes::archive::hex(&digest)[..12])
}

/// A name read back from a machine's own files (a cgroup, a network
/// namespace, a container): used only when it is `mine`, the name envup
/// gives the machine. A damaged or edited state file can then not point
/// envup at anything it did not create.
pub(crate) fn own_host_name(
    file: &std::path::Path,
    mine: &str,
    recorded: &str,
) -> Result<(), BackendError> {
    if recorded == mine {
        Ok(())
    } else {
        Err(BackendError::NotOurs(format!(
            "{} names `{}`, but this machine's name on the host is `{mine}`: \
             the file is damaged or was edited, and envup leaves `{}` alone \
             (if it is a thing of yours you want gone, remove it yourself)",
            file.display(),
            crate::ident::printable(recorded),
            crate::ident::printable(recorded),
        )))
    }
}

/// A process's start time (clock ticks since boot), from /proc.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    after.split_whitespace().nth(19)?.parse().ok()
}

/// The process a machine's state records as `pid:start-time`, if it still
/// runs and is still ours: the same start time (a pid alone is not proof),
/// and `marker` in its command line.
pub(crate) fn live_process(id: Option<&str>, marker: &[u8]) -> Option<i32> {
    let (pid, start) = id?.split_once(':')?;
    let pid: i32 = pid.parse().ok()?;
    if start_time(pid)? != start.parse::<u64>().ok()? {
        return None;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    cmdline
        .windows(marker.len().max(1))
        .any(|w| w == marker)
        .then_some(pid)
}

/// A port on 127.0.0.1 for a machine's SSH server (and kept for the
/// machine's life): free now, and below the kernel's ephemeral range, so
/// an outgoing connection cannot take it while the machine is stopped.
pub fn ssh_port() -> Result<u16, BackendError> {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (from, to) = if low > 12000 {
        (10000u16, low)
    } else {
        (low, 65535)
    };
    let mut seed = [0u8; 2];
    let _ = getrandom_port(&mut seed);
    let span = u32::from(to - from);
    let start = u32::from(u16::from_le_bytes(seed)) % span;
    for i in 0..span.min(500) {
        let port = from + ((start + i * 7919) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(BackendError::NoPort)?
        .port();
    Ok(port)
}

fn getrandom_port(buf: &mut [u8]) -> Result<(), rand_core::Error> {
    use rand_core::RngCore;
    rand_core::OsRng.try_fill_bytes(buf)
}

/// One thing a backend needs from the host, and whether it is there.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub what: String,
    pub ok: bool,
    pub detail: String,
    /// How to get it, when it is missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    pub fn ok(what: &str, detail: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            ok: true,
            detail: detail.into(),
            fix: None,
        }
    }

    pub fn missing(what: &str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            ok: false,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// What `doctor` found for one backend.
#[derive(Debug, Clone, Serialize)]
pub struct Support {
    pub backend: &'static str,
    /// The host has what the backend needs.
    pub host_ready: bool,
    /// This envup has the backend.
    pub built: bool,
    pub checks: Vec<Check>,
}

impl Support {
    pub fn usable(&self) -> bool {
        self.host_ready && self.built
    }
}

/// The backends an envup has, in the order lists show them, and the one a
/// machine gets when its Envfile names none.
pub struct Registry {
    backends: Vec<Box<dyn Backend>>,
    default: usize,
}

/// The backends built into envup.
fn built_in() -> Vec<Box<dyn Backend>> {
    vec![
        Box::new(qemu::QemuBackend),
        Box::new(jail::JailBackend),
        Box::new(container::ContainerBackend),
        Box::new(lxc::LxcBackend),
    ]
}

static BUILTIN: LazyLock<Registry> = LazyLock::new(|| {
    let mut backends = built_in();
    // Plugins after the built-in backends; the first of a name wins, no
    // plugin takes a built-in backend's name, and one envup may not run
    // (another user could change it) is left out.
    for found in plugin::discover() {
        if found.refused.is_none() && !backends.iter().any(|b| b.name() == found.name) {
            backends.push(Box::new(plugin::Plugin::new(&found)));
        }
    }
    Registry::new(backends).with_default("jail")
});

impl Registry {
    pub fn new(backends: Vec<Box<dyn Backend>>) -> Self {
        assert!(
            !backends.is_empty(),
            "a registry holds at least one backend"
        );
        for b in &backends {
            assert!(
                BackendName::new(b.name()).is_ok(),
                "`{}` is not a backend name",
                b.name()
            );
        }
        Self {
            backends,
            default: 0,
        }
    }

    /// The backend named `name` is the default (the first, unless said).
    pub fn with_default(mut self, name: &str) -> Self {
        self.default = self
            .backends
            .iter()
            .position(|b| b.name() == name)
            .expect("the default backend is in the registry");
        self
    }

    /// The backends envup has: those built into it, then the plugins on
    /// the search path.
    pub fn builtin() -> &'static Registry {
        &BUILTIN
    }

    pub fn all(&self) -> impl Iterator<Item = &dyn Backend> {
        self.backends.iter().map(|b| &**b)
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.all().map(|b| b.name()).collect()
    }

    /// The backend a machine gets when the Envfile names none.
    pub fn default_backend(&self) -> &dyn Backend {
        &*self.backends[self.default]
    }

    /// Every backend, the default first, then the others in order: whose
    /// box to pick when nothing names a backend.
    pub fn by_preference(&self) -> impl Iterator<Item = &dyn Backend> {
        let others = self
            .backends
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != self.default)
            .map(|(_, b)| &**b);
        std::iter::once(self.default_backend()).chain(others)
    }

    /// Whether `name` is a backend built into envup (not a plugin).
    pub fn is_built_in(name: &str) -> bool {
        built_in().iter().any(|b| b.name() == name)
    }

    /// The backend named `name`, built or not.
    pub fn find(&self, name: &str) -> Option<&dyn Backend> {
        self.all().find(|b| b.name() == name)
    }

    /// The backend named `name`, or why this envup cannot run it.
    pub fn get(&self, name: &str) -> Result<&dyn Backend, BackendError> {
        match self.find(name) {
            Some(b) => b.ready().map(|()| b),
            None => {
                // A plugin of that name that envup will not run says why.
                if let Some(f) = plugin::discover()
                    .into_iter()
                    .find(|f| f.name == name && f.refused.is_some())
                {
                    return Err(BackendError::Plugin {
                        plugin: f.name,
                        path: f.path,
                        message: format!(
                            "envup does not run it: {}",
                            f.refused.unwrap_or_default()
                        ),
                    });
                }
                Err(BackendError::Unknown {
                    name: name.to_string(),
                    known: self.names().join(", "),
                    searched: plugin::searched(),
                })
            }
        }
    }

    /// The backends built into envup (none of the plugins, which are run
    /// only by a command that needs them).
    pub fn built_ins(&self) -> impl Iterator<Item = &dyn Backend> {
        self.all().filter(|b| Self::is_built_in(b.name()))
    }

    /// The backend that runs machine `m` (the one its Envfile names, or
    /// the one that one hands it to), and a note for the user.
    pub fn for_machine(&self, m: &Machine) -> Result<(&dyn Backend, Option<String>), BackendError> {
        let named = self.get(m.backend.as_str())?;
        match named.hand_over(m)? {
            Some(h) => Ok((self.get(h.to)?, h.note)),
            None => Ok((named, None)),
        }
    }

    /// The backend that runs the recorded machine of `state`.
    pub fn for_state(&self, state: &MachineState) -> Result<&dyn Backend, BackendError> {
        let recorded = self.get(state.backend.as_str())?;
        match recorded.adopted_by(state) {
            Some(to) => self.get(to),
            None => Ok(recorded),
        }
    }

    /// The machine's status as its backend sees it now, when this envup
    /// has the backend; otherwise (and for an interrupted create or
    /// destroy) the recorded one.
    pub fn observed_status(&self, state: &MachineState) -> Status {
        if state.status.is_interrupted() {
            return state.status;
        }
        self.for_state(state)
            .ok()
            .and_then(|b| b.status(state).ok())
            .unwrap_or(state.status)
    }

    /// Probe the host for every backend, in parallel.
    pub fn probe_all(&self) -> Vec<Support> {
        std::thread::scope(|s| {
            let handles: Vec<_> = self
                .all()
                .map(|b| {
                    s.spawn(move || {
                        let (host_ready, checks) = b.probe();
                        Support {
                            backend: b.name(),
                            host_ready,
                            built: b.built(),
                            checks,
                        }
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("probe thread"))
                .collect()
        })
    }

    /// How SSH reaches the machine of `state`: its backend's way, or (with
    /// none, or a backend this envup lacks) the address in the state.
    pub fn dial(&self, state: &MachineState) -> Option<Dial> {
        self.for_state(state).ok()?.dial(state)
    }

    /// Tell every backend which boxes left the store; what they removed or
    /// kept.
    pub fn boxes_removed(&self, gone: Gone<'_>) -> Vec<String> {
        self.all().flat_map(|b| b.boxes_removed(gone)).collect()
    }

    /// The backend that takes boxes of Vagrant provider `provider`, and how
    /// they are laid out.
    pub fn vagrant_provider(&self, provider: &str) -> Option<VagrantProvider> {
        self.all()
            .flat_map(|b| b.vagrant_providers())
            .find(|p| p.name == provider)
            .copied()
    }
}

/// Backend `backend`'s typed settings for machine `m`, read from the
/// machine's table of it (checked by [`Backend::check_options`] when the
/// Envfile was loaded); its defaults where the machine has none.
pub fn options<T: serde::de::DeserializeOwned>(
    m: &Machine,
    backend: &str,
) -> Result<T, BackendError> {
    m.options
        .get(backend)
        .cloned()
        .unwrap_or_default()
        .try_into()
        .map_err(|source| BackendError::Options {
            machine: m.name.clone(),
            backend: backend.to_owned(),
            source: Box::new(source),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With nothing naming a backend, the default backend's box is the
    /// first choice, then the others in the registry's order.
    #[test]
    fn default_backend_is_preferred() {
        let names: Vec<&str> = Registry::builtin()
            .by_preference()
            .map(|b| b.name())
            .collect();
        assert_eq!(names, ["jail", "qemu", "container", "lxc"]);
        let fakes = Registry::new(vec![Box::new(fake::Fake::vm()), Box::new(fake::Fake::ct())]);
        let names: Vec<&str> = fakes.by_preference().map(|b| b.name()).collect();
        assert_eq!(names, ["vm", "ct"]);
    }
}
