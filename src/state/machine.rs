//! One machine's recorded state, and the transitions its status may take.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::backend::BackendName;
use crate::envfile::config::Forward;

use super::StateError;

/// The version of the state file's layout; bumped on incompatible changes.
pub const FORMAT: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    NotCreated,
    /// Creation started and has not finished (or was interrupted).
    Creating,
    Stopped,
    Running,
    /// Destruction started and has not finished (or was interrupted).
    Destroying,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotCreated => "not created",
            Self::Creating => "creating",
            Self::Stopped => "stopped",
            Self::Running => "running",
            Self::Destroying => "destroying",
        })
    }
}

/// What happens to a machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    BeginCreate,
    Created,
    Started,
    Stopped,
    /// The machine was found dead without envup stopping it.
    Crashed,
    BeginDestroy,
    Destroyed,
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::BeginCreate => "create",
            Self::Created => "created",
            Self::Started => "start",
            Self::Stopped => "stop",
            Self::Crashed => "crash",
            Self::BeginDestroy => "destroy",
            Self::Destroyed => "destroyed",
        })
    }
}

impl Status {
    /// The one table of allowed transitions.
    pub fn next(self, event: Event) -> Option<Status> {
        use Event as E;
        use Status as S;
        Some(match (self, event) {
            (S::NotCreated, E::BeginCreate) => S::Creating,
            (S::Creating, E::Created) => S::Stopped,
            (S::Stopped, E::Started) => S::Running,
            (S::Running, E::Stopped | E::Crashed) => S::Stopped,
            (S::Creating | S::Stopped | S::Running | S::Destroying, E::BeginDestroy) => {
                S::Destroying
            }
            (S::Destroying, E::Destroyed) => S::NotCreated,
            _ => return None,
        })
    }

    pub fn can_start(self) -> bool {
        self.next(Event::Started).is_some()
    }

    pub fn can_stop(self) -> bool {
        self.next(Event::Stopped).is_some()
    }

    pub fn can_destroy(self) -> bool {
        self.next(Event::BeginDestroy).is_some()
    }

    pub fn can_provision(self) -> bool {
        self == Status::Running
    }

    /// An earlier envup stopped half-way through creating or destroying.
    pub fn is_interrupted(self) -> bool {
        matches!(self, Status::Creating | Status::Destroying)
    }
}

/// The box a machine was created from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoxRef {
    pub name: String,
    pub version: String,
    pub sha256: crate::ident::Digest,
}

/// How envup reaches a machine over SSH.
/// Checked where it is read: the host an IP address, the user a user name
/// (a state file is evidence; an edited one names no host name to look up
/// and no SSH option).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawSshEndpoint")]
pub struct SshEndpoint {
    pub host: String,
    pub port: u16,
    pub user: String,
}

#[derive(Deserialize)]
struct RawSshEndpoint {
    host: String,
    port: u16,
    user: String,
}

impl TryFrom<RawSshEndpoint> for SshEndpoint {
    type Error = String;

    fn try_from(r: RawSshEndpoint) -> Result<Self, String> {
        if r.host.parse::<std::net::IpAddr>().is_err() {
            return Err(format!(
                "ssh.host `{}` is not an IP address",
                crate::ident::printable(&r.host)
            ));
        }
        if !crate::ident::is_user_name(&r.user) {
            return Err(format!(
                "ssh.user `{}` is not a user name",
                crate::ident::printable(&r.user)
            ));
        }
        Ok(SshEndpoint {
            host: r.host,
            port: r.port,
            user: r.user,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MachineState {
    pub format: u32,
    pub name: String,
    pub backend: BackendName,
    pub status: Status,
    /// The backend's handle on the machine (container id, supervisor pid…).
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default, rename = "box")]
    pub box_ref: Option<BoxRef>,
    #[serde(default)]
    pub ssh: Option<SshEndpoint>,
    /// How envup logs in the first time, while the machine's own keys are
    /// not in place yet (its box cannot take them before it boots); gone
    /// once they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_login: Option<crate::ssh::first_login::FirstLogin>,
    /// The forwards in force.
    #[serde(default)]
    pub forwards: Vec<Forward>,
    /// The machine's settings when it was created or last reloaded.
    #[serde(default)]
    pub settings: serde_json::Value,
    /// Provisioner name → hash of what last ran successfully.
    #[serde(default)]
    pub provisioned: BTreeMap<String, String>,
    /// Seconds since the epoch of the last change.
    #[serde(default)]
    pub updated: u64,
    /// The address at which the machine joined its project network since
    /// it last started: none until it has, so that an `up` killed between
    /// the start and the join is finished by the next `up`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub joined: Option<std::net::Ipv4Addr>,
    /// The machine's state directory (where backends keep their files);
    /// known from where the state was read, not stored in it.
    #[serde(skip)]
    pub dir: Option<std::path::PathBuf>,
    /// The machine's identity on the host (`ProjectState::identity`),
    /// from which its host resources are named; not stored either.
    #[serde(skip)]
    pub identity: Option<std::path::PathBuf>,
}

impl MachineState {
    pub fn new(name: &str, backend: BackendName) -> Self {
        Self {
            format: FORMAT,
            name: name.to_owned(),
            backend,
            status: Status::NotCreated,
            id: None,
            box_ref: None,
            ssh: None,
            first_login: None,
            forwards: Vec::new(),
            settings: serde_json::Value::Null,
            provisioned: BTreeMap::new(),
            updated: 0,
            joined: None,
            dir: None,
            identity: None,
        }
    }

    /// Apply `event`, refusing a transition the table does not allow.
    pub fn apply(&mut self, event: Event) -> Result<(), StateError> {
        let next = self
            .status
            .next(event)
            .ok_or_else(|| StateError::Transition {
                machine: self.name.clone(),
                from: self.status,
                event,
            })?;
        self.status = next;
        // A machine that starts (again) or stops is on no network yet.
        if event == Event::Started || next != Status::Running {
            self.joined = None;
        }
        self.updated = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle() {
        let mut m = MachineState::new("web", BackendName::new("fake").unwrap());
        assert!(!m.status.can_start());
        m.apply(Event::BeginCreate).unwrap();
        m.apply(Event::Created).unwrap();
        assert!(m.status.can_start());
        m.apply(Event::Started).unwrap();
        assert!(m.status.can_provision());
        m.apply(Event::Crashed).unwrap();
        assert_eq!(m.status, Status::Stopped);
        m.apply(Event::BeginDestroy).unwrap();
        m.apply(Event::Destroyed).unwrap();
        assert_eq!(m.status, Status::NotCreated);
    }

    #[test]
    fn refused_transitions() {
        let mut m = MachineState::new("web", BackendName::new("fake").unwrap());
        let e = m.apply(Event::Started).unwrap_err();
        assert_eq!(
            e.to_string(),
            "machine `web` cannot go from not created on `start`"
        );
        assert!(!Status::NotCreated.can_destroy());
        assert!(Status::Creating.can_destroy());
        assert!(Status::Creating.is_interrupted());
        assert!(!Status::Stopped.can_stop());
    }
}
