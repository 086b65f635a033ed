//! A backend that runs nothing and records every call: the tests of the
//! lifecycle core (`ops`, `orchestrate`) put it where a real backend would
//! be. It is never in the registry envup itself uses
//! ([`Registry::builtin`](super::Registry::builtin)), so no Envfile can
//! name it.
//!
//! Its "machines" live in a [`World`] the test holds: which exist, which
//! run, every call in order, the calls told to fail. A test that needs the
//! machine to answer SSH gives it a [`Boot`], which starts a real SSH
//! server for the machine's keys.

use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Backend, BackendError, Check, OwnError, VagrantProvider};
use crate::boxes::StoredBox;
use crate::envfile::Machine;
use crate::ssh::MachineKeys;
use crate::state::machine::SshEndpoint;
use crate::state::{MachineState, Status};

/// Start what answers SSH for machine `name` (its keys are in `dir`, as
/// envup made them); the port it listens on at 127.0.0.1.
pub type Boot = Arc<dyn Fn(&str, &Path) -> std::io::Result<u16> + Send + Sync>;

/// The fake's failures.
#[derive(Debug, thiserror::Error)]
pub enum FakeError {
    /// A call the test told to fail.
    #[error("{0}: failing, as the test asked")]
    Told(String),
    #[error("cannot boot machine `{0}`")]
    Boot(String, #[source] std::io::Error),
}

impl OwnError for FakeError {}

#[derive(Default)]
pub struct World {
    /// Every call, in order: `create web`, `start web`, `destroy web`…
    pub calls: Vec<String>,
    /// Calls that fail, written as `calls` records them.
    pub fail: HashSet<String>,
    /// Machines that exist on the "host", and those running.
    pub made: BTreeSet<String>,
    pub running: BTreeSet<String>,
    /// Creates and starts going on now, and the most there were at once.
    pub busy: usize,
    pub most_busy: usize,
}

pub struct Fake {
    name: &'static str,
    artifacts: &'static [&'static str],
    providers: &'static [VagrantProvider],
    pub world: Arc<Mutex<World>>,
    boot: Option<Boot>,
    /// How long a start takes (long enough to see machines overlap).
    pub start_time: Duration,
    /// The backend this one hands its machines to, if any.
    pub hands_to: Option<&'static str>,
}

impl Fake {
    pub fn new(
        name: &'static str,
        artifacts: &'static [&'static str],
        providers: &'static [VagrantProvider],
    ) -> Self {
        Self {
            name,
            artifacts,
            providers,
            world: Arc::default(),
            boot: None,
            start_time: Duration::ZERO,
            hands_to: None,
        }
    }

    /// A backend for disk images, taking Vagrant `libvirt` boxes.
    pub fn vm() -> Self {
        Self::new(
            "vm",
            &["disk"],
            &[VagrantProvider {
                name: "libvirt",
                artifact: "disk",
                user: "vagrant",
                first_login: Some(crate::ssh::first_login::FirstLogin::VagrantInsecureKey),
            }],
        )
    }

    /// A backend for rootfs trees, taking Vagrant `lxc` boxes.
    pub fn ct() -> Self {
        Self::new(
            "ct",
            &["rootfs"],
            &[VagrantProvider {
                name: "lxc",
                artifact: "rootfs",
                user: "root",
                first_login: None,
            }],
        )
    }

    pub fn with_boot(mut self, boot: Boot) -> Self {
        self.boot = Some(boot);
        self
    }

    /// Record `op` on machine `name`; fail when the test said so.
    fn call(&self, op: &str, name: &str) -> Result<(), BackendError> {
        let call = format!("{op} {name}");
        let mut w = self.world.lock().expect("world");
        w.calls.push(call.clone());
        if w.fail.contains(&call) {
            return Err(FakeError::Told(call).into());
        }
        Ok(())
    }

    fn busy(&self, by: isize) {
        let mut w = self.world.lock().expect("world");
        w.busy = w.busy.saturating_add_signed(by);
        w.most_busy = w.most_busy.max(w.busy);
    }
}

impl Backend for Fake {
    fn name(&self) -> &'static str {
        self.name
    }

    fn artifacts(&self) -> &'static [&'static str] {
        self.artifacts
    }

    fn vagrant_providers(&self) -> &'static [VagrantProvider] {
        self.providers
    }

    fn probe(&self) -> (bool, Vec<Check>) {
        (true, vec![Check::ok("nothing", "the fake needs nothing")])
    }

    fn check_options(&self, table: toml::de::ValueDeserializer<'_>) -> Result<(), toml::de::Error> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Options {
            color: Option<String>,
        }
        serde::Deserialize::deserialize(table).map(|_: Options| ())
    }

    fn hand_over(&self, _m: &Machine) -> Result<Option<super::HandOver>, BackendError> {
        Ok(self.hands_to.map(|to| super::HandOver {
            to,
            note: Some(format!("the {to} backend runs this machine now")),
        }))
    }

    fn create(
        &self,
        m: &Machine,
        _stored: &StoredBox,
        _keys: &MachineKeys,
        state: &mut MachineState,
    ) -> Result<(), BackendError> {
        self.busy(1);
        let done = self.call("create", &m.name);
        self.busy(-1);
        done?;
        self.world
            .lock()
            .expect("world")
            .made
            .insert(m.name.clone());
        state.id = Some(format!("fake:{}", m.name));
        Ok(())
    }

    fn start(&self, m: &Machine, state: &mut MachineState) -> Result<(), BackendError> {
        self.busy(1);
        std::thread::sleep(self.start_time);
        let done = self.call("start", &m.name);
        self.busy(-1);
        done?;
        let port = match &self.boot {
            Some(boot) => boot(&m.name, &super::machine_dir(state)?)
                .map_err(|e| FakeError::Boot(m.name.clone(), e))?,
            // Nothing answers there.
            None => 1,
        };
        state.ssh = Some(SshEndpoint {
            host: "127.0.0.1".into(),
            port,
            user: "root".into(),
        });
        self.world
            .lock()
            .expect("world")
            .running
            .insert(m.name.clone());
        Ok(())
    }

    fn stop(&self, state: &MachineState, _force: bool) -> Result<(), BackendError> {
        self.call("stop", &state.name)?;
        self.world
            .lock()
            .expect("world")
            .running
            .remove(&state.name);
        Ok(())
    }

    fn destroy(&self, state: &MachineState) -> Result<(), BackendError> {
        self.call("destroy", &state.name)?;
        let mut w = self.world.lock().expect("world");
        w.running.remove(&state.name);
        w.made.remove(&state.name);
        Ok(())
    }

    fn status(&self, state: &MachineState) -> Result<Status, BackendError> {
        let w = self.world.lock().expect("world");
        Ok(if w.running.contains(&state.name) {
            Status::Running
        } else {
            Status::Stopped
        })
    }
}
