//! What `up`, `halt`, `destroy` and `provision` do to one machine: the
//! plan's steps carried out through its backend, with the machine's state
//! written after every step and the host index kept in step.

use crate::backend::{self, Backend, BackendError};
use crate::envfile::{Config, Machine};
use crate::plan::{self, Action, ProvisionChoice};
use crate::state::index::{Entry, Index};
use crate::state::{Event, MachineState, ProjectState, StateError, Status};
use crate::ui::Reporter;

#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("machine `{0}` is not running; `envup up {0}` starts it")]
    NotRunning(String),
    #[error("{0} is not available in this build of envup yet")]
    NotBuilt(&'static str),
}

/// Everything one machine's operation needs.
pub struct Ops<'a> {
    pub config: &'a Config,
    pub project: &'a ProjectState,
    pub index: &'a Index,
    pub reporter: &'a dyn Reporter,
}

impl Ops<'_> {
    fn machine(&self, name: &str) -> &Machine {
        &self.config.machines[name]
    }

    fn save(&self, state: &MachineState) -> Result<(), OpError> {
        self.project.save(state)?;
        Ok(())
    }

    fn apply(&self, state: &mut MachineState, event: Event) -> Result<(), OpError> {
        state.apply(event)?;
        self.save(state)
    }

    /// Bring a machine to its desired state: the steps of `plan_up`.
    pub fn up(
        &self,
        name: &str,
        choice: &ProvisionChoice,
        keep_on_error: bool,
    ) -> Result<String, OpError> {
        let m = self.machine(name);
        let recorded = self.project.load(name)?;
        let plan = plan::plan_up(m, recorded.as_ref(), choice);
        for note in &plan.notes {
            self.reporter
                .line(name, crate::ui::Stream::Stderr, &format!("note: {note}"));
        }
        if plan.is_noop() {
            return Ok("already up; nothing to do".into());
        }
        let backend = backend::get(m.backend)?;
        let mut state = recorded.unwrap_or_else(|| MachineState::new(name, m.backend));
        let mut done = Vec::new();
        for step in &plan.steps {
            match &step.action {
                Action::CleanUp => {
                    self.reporter
                        .step(name, "cleaning up an interrupted machine");
                    self.destroy_with(&*backend, &mut state)?;
                    state = MachineState::new(name, m.backend);
                }
                Action::Create => {
                    self.reporter.step(name, "creating");
                    self.apply(&mut state, Event::BeginCreate)?;
                    self.index.record(self.entry(m))?;
                    let created = backend.create(m, &mut state).and_then(|()| {
                        self.reporter.step(name, "starting");
                        backend.start(m, &mut state)
                    });
                    if let Err(e) = created {
                        if !keep_on_error {
                            let _ = self.destroy_with(&*backend, &mut state);
                        }
                        return Err(e.into());
                    }
                    state.settings = plan::settings(m);
                    self.apply(&mut state, Event::Created)?;
                    self.apply(&mut state, Event::Started)?;
                    done.push("created");
                }
                Action::Start if state.status == Status::Running => {}
                Action::Start => {
                    self.reporter.step(name, "starting");
                    backend.start(m, &mut state)?;
                    state.settings = plan::settings(m);
                    self.apply(&mut state, Event::Started)?;
                    done.push("started");
                }
                Action::Provision { .. } => return Err(OpError::NotBuilt("provisioning over SSH")),
            }
        }
        Ok(done.join(", "))
    }

    /// Stop a machine; a machine that is not running is left as it is.
    pub fn halt(&self, name: &str, force: bool) -> Result<String, OpError> {
        let Some(mut state) = self.project.load(name)? else {
            return Ok("not created".into());
        };
        if !state.status.can_stop() {
            return Ok(format!("{}; nothing to stop", state.status));
        }
        let backend = backend::get(state.backend)?;
        self.reporter.step(
            name,
            if force {
                "stopping (forced)"
            } else {
                "stopping"
            },
        );
        backend.stop(&state, force)?;
        self.apply(&mut state, Event::Stopped)?;
        Ok("stopped".into())
    }

    /// Remove a machine and all envup kept for it.
    pub fn destroy(&self, name: &str) -> Result<String, OpError> {
        let Some(mut state) = self.project.load(name)? else {
            return Ok("not created".into());
        };
        if state.status == Status::NotCreated {
            self.project.remove(name)?;
            self.index.forget(&self.config.root, name)?;
            return Ok("not created".into());
        }
        let backend = backend::get(state.backend)?;
        self.reporter.step(name, "destroying");
        self.destroy_with(&*backend, &mut state)?;
        Ok("destroyed".into())
    }

    fn destroy_with(&self, backend: &dyn Backend, state: &mut MachineState) -> Result<(), OpError> {
        if state.status.can_destroy() {
            self.apply(state, Event::BeginDestroy)?;
            backend.destroy(state)?;
            state.apply(Event::Destroyed)?;
        }
        self.project.remove(&state.name)?;
        self.index.forget(&self.config.root, &state.name)?;
        Ok(())
    }

    /// Run provisioners on a running machine.
    pub fn provision(&self, name: &str, choice: &ProvisionChoice) -> Result<String, OpError> {
        let state = self.project.load(name)?;
        if !state.as_ref().is_some_and(|s| s.status.can_provision()) {
            return Err(OpError::NotRunning(name.into()));
        }
        let (run, _) = plan::provision_steps(self.machine(name), state.as_ref(), choice);
        if run.is_empty() {
            return Ok("nothing to provision".into());
        }
        Err(OpError::NotBuilt("provisioning over SSH"))
    }

    fn entry(&self, m: &Machine) -> Entry {
        Entry {
            project: self.config.project.clone(),
            root: self.config.root.clone(),
            machine: m.name.clone(),
            backend: m.backend.to_string(),
            state_dir: self.project.machine_dir(&m.name),
        }
    }
}
