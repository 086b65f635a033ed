//! Backends: what runs a machine. One object-safe trait; the command line
//! picks the implementation from the Envfile's `backend` at run time.
//!
//! Each backend module also knows how to probe the host for what it needs
//! (`envup doctor`).

pub mod container;
pub mod jail;
pub mod qemu;

use serde::Serialize;

use crate::boxes::StoredBox;
use crate::envfile::{BackendKind, Machine};
use crate::ssh::MachineKeys;
use crate::state::{MachineState, Status};

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("the {0} backend is not available in this build of envup yet")]
    NotBuilt(BackendKind),
    #[error("the {0} backend cannot take snapshots")]
    NoSnapshots(BackendKind),
    /// A machine's own files name something envup did not create for it
    /// (they are damaged or were edited); envup leaves that thing alone.
    #[error("{0}")]
    NotOurs(String),
    #[error("{0}")]
    Failed(String),
}

/// A machine backend. Optional capabilities (snapshots) get default
/// methods that say the backend does not support them.
pub trait Backend: Send + Sync {
    fn kind(&self) -> BackendKind;
    /// Refuse, before anything is made, a machine this backend cannot run.
    fn check(&self, _m: &Machine) -> Result<(), BackendError> {
        Ok(())
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
    fn start(&self, m: &Machine, state: &mut MachineState) -> Result<(), BackendError>;
    /// Stop gracefully, or at once when `force`.
    fn stop(&self, state: &MachineState, force: bool) -> Result<(), BackendError>;
    /// Remove every trace of the machine outside its state directory.
    fn destroy(&self, state: &MachineState) -> Result<(), BackendError>;
    /// What the machine is doing now, asked of the backend itself.
    fn status(&self, state: &MachineState) -> Result<Status, BackendError>;

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
        Err(BackendError::NoSnapshots(self.kind()))
    }
    /// Bring the machine back to snapshot `name`.
    fn snapshot_restore(&self, _state: &mut MachineState, _name: &str) -> Result<(), BackendError> {
        Err(BackendError::NoSnapshots(self.kind()))
    }
    /// The machine's snapshots, by name.
    fn snapshot_list(&self, _state: &MachineState) -> Result<Vec<String>, BackendError> {
        Err(BackendError::NoSnapshots(self.kind()))
    }
    fn snapshot_delete(&self, _state: &MachineState, _name: &str) -> Result<(), BackendError> {
        Err(BackendError::NoSnapshots(self.kind()))
    }
}

/// A message as a backend error.
pub(crate) fn failed(what: impl std::fmt::Display) -> BackendError {
    BackendError::Failed(what.to_string())
}

/// The machine's state directory; each backend keeps its files under it.
pub(crate) fn machine_dir(state: &MachineState) -> Result<std::path::PathBuf, BackendError> {
    state
        .dir
        .clone()
        .ok_or_else(|| failed("the machine's state does not say where its directory is"))
}

/// The name a machine's resources get on the host (cgroup, netns,
/// container, qemu process): `envup-` and 12 hex digits of its directory.
pub(crate) fn host_name(dir: &std::path::Path) -> String {
    let digest = <sha2::Sha256 as sha2::Digest>::digest(dir.as_os_str().as_encoded_bytes());
    format!("envup-{}", &crate::boxes::archive::hex(&digest)[..12])
}

/// A name read back from a machine's own files (a cgroup, a network
/// namespace, a container): used only when it is the name envup gives the
/// machine whose files are in `dir`. A damaged or edited state file can
/// then not point envup at anything it did not create.
pub(crate) fn own_host_name(dir: &std::path::Path, recorded: &str) -> Result<(), BackendError> {
    let mine = host_name(dir);
    if recorded == mine {
        Ok(())
    } else {
        Err(BackendError::NotOurs(format!(
            "{} names `{}`, but this machine's name on the host is `{mine}`: \
             the file is damaged or was edited, and envup leaves `{}` alone",
            dir.display(),
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
pub(crate) fn live_process(id: Option<&str>, marker: &str) -> Option<i32> {
    let (pid, start) = id?.split_once(':')?;
    let pid: i32 = pid.parse().ok()?;
    if start_time(pid)? != start.parse::<u64>().ok()? {
        return None;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    String::from_utf8_lossy(&cmdline)
        .contains(marker)
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
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| BackendError::Failed(format!("cannot find a free port: {e}")))?;
    Ok(l.local_addr()
        .map_err(|e| BackendError::Failed(e.to_string()))?
        .port())
}

fn getrandom_port(buf: &mut [u8]) -> Result<(), rand_core::Error> {
    use rand_core::RngCore;
    rand_core::OsRng.try_fill_bytes(buf)
}

/// The backend for `kind`, or why there is none.
pub fn get(kind: BackendKind) -> Result<Box<dyn Backend>, BackendError> {
    match kind {
        BackendKind::Jail if cfg!(target_os = "linux") => Ok(Box::new(jail::JailBackend)),
        BackendKind::Container => Ok(Box::new(container::ContainerBackend)),
        BackendKind::Qemu => Ok(Box::new(qemu::QemuBackend)),
        other => Err(BackendError::NotBuilt(other)),
    }
}

/// The machine's status as its backend sees it now, when this envup has
/// the backend; otherwise (and for an interrupted create or destroy) the
/// recorded one.
pub fn observed_status(state: &MachineState) -> Status {
    if state.status.is_interrupted() {
        return state.status;
    }
    get(state.backend)
        .ok()
        .and_then(|b| b.status(state).ok())
        .unwrap_or(state.status)
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
    pub backend: BackendKind,
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

/// Probe the host for every backend, in parallel.
pub fn probe_all() -> Vec<Support> {
    std::thread::scope(|s| {
        let handles = BackendKind::ALL.map(|k| {
            s.spawn(move || {
                let (host_ready, checks) = match k {
                    BackendKind::Qemu => qemu::probe(),
                    BackendKind::Jail => jail::probe(),
                    BackendKind::Container => container::probe(),
                };
                Support {
                    backend: k,
                    host_ready,
                    built: get(k).is_ok(),
                    checks,
                }
            })
        });
        handles
            .into_iter()
            .map(|h| h.join().expect("probe thread"))
            .collect()
    })
}
