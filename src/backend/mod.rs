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
    #[error("{0}")]
    Failed(String),
}

/// A machine backend. Optional capabilities (snapshots) get default
/// methods that say the backend does not support them.
pub trait Backend: Send + Sync {
    fn kind(&self) -> BackendKind;
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
}

/// The backend for `kind`, or why there is none.
pub fn get(kind: BackendKind) -> Result<Box<dyn Backend>, BackendError> {
    match kind {
        BackendKind::Jail if cfg!(target_os = "linux") => Ok(Box::new(jail::JailBackend)),
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
