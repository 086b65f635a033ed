//! What `up`, `halt`, `destroy` and `provision` do to one machine: the
//! plan's steps carried out through its backend, with the machine's state
//! written after every step and the host index kept in step.

use std::sync::Mutex;

use crate::backend::{Backend, BackendError, BackendName, Joins, Registry};
use crate::boxes::lock::{LockEntry, Lockfile};
use crate::boxes::resolve::Resolver;
use crate::boxes::{BoxError, Store};
use crate::envfile::{Config, Machine};
use crate::network::Attachment;
use crate::plan::{self, Action, ProvisionChoice};
use crate::provision::{ProvisionError, Runner, content_hash, template_context};
use crate::ssh::keys::KeyError;
use crate::ssh::{MachineKeys, Ssh, SshError};
use crate::state::index::{Entry, Index};
use crate::state::{Event, MachineState, ProjectState, StateError, Status};
use crate::ui::Reporter;

#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Box(#[from] BoxError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error(transparent)]
    Provision(#[from] ProvisionError),
    #[error("machine `{0}` is not running; `envup up {0}` starts it")]
    NotRunning(String),
    #[error("machine `{0}` has no SSH address recorded; `envup reload {0}` starts it again")]
    NoEndpoint(String),
    #[error(transparent)]
    Network(#[from] crate::network::NetworkError),
    #[error(
        "this project's state is still in {}, where a share of the project shows it to \
         machines: envup starts no machine with it there; `envup halt` the machines that \
         run, and the next command moves it to {}",
        .0.display(), .1.display()
    )]
    StateInProject(std::path::PathBuf, std::path::PathBuf),
    #[error("cannot put machine `{name}` on the project network")]
    Join {
        name: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Everything one machine's operation needs.
pub struct Ops<'a> {
    pub config: &'a Config,
    pub project: &'a ProjectState,
    pub index: &'a Index,
    pub reporter: &'a dyn Reporter,
    /// The backends machines run on.
    pub backends: &'a Registry,
    /// The project network.
    pub net: &'a crate::network::Net,
    pub store: &'a Store,
    /// Envfile.lock as it was when the command started.
    pub lock: &'a Lockfile,
    /// Lock entries for the boxes this command resolved.
    pub resolved: Mutex<Vec<(String, LockEntry)>>,
    /// A running machine could not be given the project's names.
    pub names_failed: std::sync::atomic::AtomicBool,
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

    /// The machine's state, corrected by what its backend sees: a machine
    /// recorded as running whose backend finds it gone is recorded as
    /// stopped (it crashed, or was killed outside envup).
    fn load_observed(&self, name: &str) -> Result<Option<MachineState>, OpError> {
        let mut recorded = self.project.load(name)?;
        if let Some(s) = recorded.as_mut()
            && s.status == Status::Running
            && self.backends.observed_status(s) == Status::Stopped
        {
            self.reporter.line(
                name,
                crate::ui::Stream::Stderr,
                "note: the machine had stopped without envup",
            );
            self.apply(s, Event::Crashed)?;
        }
        Ok(recorded)
    }

    /// Bring a machine to its desired state: the steps of `plan_up`.
    pub fn up(
        &self,
        name: &str,
        choice: &ProvisionChoice,
        keep_on_error: bool,
    ) -> Result<String, OpError> {
        let m = self.machine(name);
        let recorded = self.load_observed(name)?;
        let plan = plan::plan_up(m, recorded.as_ref(), choice);
        if self.project.is_legacy() && !plan.is_noop() {
            let home = crate::state::envup_home()?;
            return Err(OpError::StateInProject(
                self.project.dir().to_owned(),
                ProjectState::of(&home, self.project.root())
                    .dir()
                    .to_owned(),
            ));
        }
        for note in &plan.notes {
            self.reporter
                .line(name, crate::ui::Stream::Stderr, &format!("note: {note}"));
        }
        // A first login that an interrupted `up` left undone is finished.
        let keys_pending = recorded
            .as_ref()
            .is_some_and(|s| s.status == Status::Running && s.first_login.is_some());
        // A running machine may still have to join its project network
        // (an `up` killed between its start and its join): see below.
        let running = recorded
            .as_ref()
            .is_some_and(|s| s.status == Status::Running);
        if plan.is_noop() && !keys_pending && !(running && self.net.enabled()) {
            return Ok("already up; nothing to do".into());
        }
        // A machine made already stays with the backend that made it; a
        // new one goes to the backend its Envfile names (or the one that
        // backend hands it to).
        let made = recorded
            .as_ref()
            .filter(|s| s.status != Status::NotCreated && !s.status.is_interrupted());
        let backend = match made {
            Some(s) => self.backends.for_state(s)?,
            None => {
                let (b, note) = self.backends.for_machine(m)?;
                if let Some(note) = note {
                    self.reporter
                        .line(name, crate::ui::Stream::Stderr, &format!("note: {note}"));
                }
                b
            }
        };
        let joins = if self.net.enabled() {
            backend.joins(m)
        } else {
            Joins::No
        };
        let join_pending = running
            && joins != Joins::No
            && !recorded.as_ref().is_some_and(|s| self.on_network(s, joins));
        if plan.is_noop() && !keys_pending && !join_pending {
            return Ok("already up; nothing to do".into());
        }
        backend.check(m)?;
        // The machine's place on the project network, taken before it is
        // made or started; whether the project's names changed with it.
        let mut attached: Option<Attachment> = None;
        let mut names_changed = false;
        let mut attach = |attached: &mut Option<Attachment>| -> Result<(), OpError> {
            if joins != Joins::No {
                // A machine that joins through its namespace needs the
                // bridge only once it answers: it is made meanwhile.
                let (at, changed) = self.net.attach(name, joins == Joins::Namespace)?;
                *attached = Some(at);
                names_changed |= changed;
            }
            Ok(())
        };
        let new_state = || {
            let mut s = MachineState::new(name, BackendName::of(backend));
            self.project.locate(&mut s);
            s
        };
        let mut state = match recorded {
            Some(mut s) => {
                self.project.locate(&mut s);
                s
            }
            None => new_state(),
        };
        let mut done = Vec::new();
        let mut provision = Vec::new();
        for step in &plan.steps {
            match &step.action {
                Action::CleanUp => {
                    self.reporter
                        .step(name, "cleaning up an interrupted machine");
                    let interrupted = self.backends.for_state(&state)?;
                    self.destroy_with(interrupted, &mut state)?;
                    state = new_state();
                }
                Action::Create => {
                    self.reporter.step(name, "getting the box");
                    let resolver = Resolver {
                        store: self.store,
                        root: &self.config.root,
                        reporter: self.reporter,
                        backends: self.backends,
                    };
                    let locked = self.lock.valid_entry(name, &m.box_, m.box_version.as_ref());
                    let (stored, entry) = resolver.resolve(m, backend, locked)?;
                    state.box_ref = Some(crate::state::machine::BoxRef {
                        name: stored.meta.name.clone(),
                        version: stored.meta.version.clone(),
                        sha256: stored.digest.clone(),
                    });
                    self.resolved
                        .lock()
                        .expect("resolved lock")
                        .push((name.to_owned(), entry));
                    self.reporter.step(name, "creating");
                    self.apply(&mut state, Event::BeginCreate)?;
                    // Whatever fails from here (the backend, or recording
                    // what it made on a full disk), the machine goes.
                    let made = (|| -> Result<(), OpError> {
                        self.index.record(self.entry(m))?;
                        crate::fault::point("up:recorded");
                        let keys = MachineKeys::ensure(&self.project.machine_dir(name), name)?;
                        attach(&mut attached)?;
                        backend.create(m, &stored, &keys, &mut state)?;
                        crate::fault::point("up:created");
                        self.reporter.step(name, "starting");
                        self.net.confine()?;
                        backend.start(m, &mut state)?;
                        crate::fault::point("up:started");
                        state.settings = plan::settings(m);
                        state.first_login = stored.manifest.first_login;
                        self.apply(&mut state, Event::Created)?;
                        self.apply(&mut state, Event::Started)
                    })();
                    if let Err(e) = made {
                        if !keep_on_error {
                            let _ = self.destroy_with(backend, &mut state);
                        }
                        return Err(e);
                    }
                    crate::fault::point("up:running");
                    done.push("created");
                }
                Action::Start if state.status == Status::Running => {}
                Action::Start => {
                    self.reporter.step(name, "starting");
                    attach(&mut attached)?;
                    self.net.confine()?;
                    backend.start(m, &mut state)?;
                    let wanted = plan::settings(m);
                    let applies = backend.restart_applies();
                    state.settings = plan::after_restart(&state.settings, &wanted, applies);
                    let kept = plan::changed_keys(&state.settings, &wanted);
                    if !kept.is_empty() {
                        self.reporter.line(
                            name,
                            crate::ui::Stream::Stderr,
                            &format!(
                                "note: the {} backend cannot change {} of a made machine; \
                                 `envup destroy {name}` then `envup up {name}` applies it",
                                backend.name(),
                                kept.join(", ")
                            ),
                        );
                    }
                    self.apply(&mut state, Event::Started)?;
                    done.push("started");
                }
                Action::Provision { name } => provision.push(name.clone()),
            }
        }
        if join_pending && attached.is_none() {
            self.reporter.step(name, "joining the project network");
            attach(&mut attached)?;
        }
        // `up` ends when the machine answers SSH, provisioners or not.
        let booted = !done.is_empty() || state.first_login.is_some() || join_pending;
        let ssh = if booted {
            // The project network is joined once the machine answers, so
            // a machine that stops at once is reported by the wait, with
            // what its backend kept of why.
            let joined = self.wait_ssh(m, &mut state).and_then(|ssh| {
                match (joins, &attached) {
                    (Joins::Namespace, Some(at)) => {
                        join(self.config, self.net, backend, &state, at)?;
                    }
                    (Joins::Guest, Some(at)) => join_guest(self.config, self.net, name, &ssh, at)?,
                    _ => {}
                }
                Ok(ssh)
            });
            let ssh = match joined {
                Ok(ssh) => ssh,

                // A machine made by this `up` that never answered, or
                // could not join the project network, goes, as one that
                // failed to be created or started does.
                Err(e) if done.contains(&"created") && !keep_on_error => {
                    self.reporter.line(
                        name,
                        crate::ui::Stream::Stderr,
                        "note: the new machine is destroyed (--no-destroy-on-error keeps it)",
                    );
                    let _ = self.destroy_with(backend, &mut state);
                    return Err(e);
                }
                Err(e) => return Err(e),
            };
            if let Some(at) = attached.as_ref().filter(|_| joins != Joins::No) {
                state.joined = Some(at.address);
                self.save(&state)?;
            }
            for note in backend.after_boot(m, &ssh)? {
                self.reporter
                    .line(name, crate::ui::Stream::Stderr, &format!("note: {note}"));
            }
            Some(ssh)
        } else {
            None
        };
        if names_changed {
            self.refresh_names(name);
        }
        let n = self.run_provisioners(m, &mut state, &provision, ssh)?;
        if n > 0 {
            done.push("provisioned");
        }
        Ok(done.join(", "))
    }

    /// Whether running machine `s` is on its project network as recorded:
    /// it joined at its recorded address since it started, and (joined
    /// through its namespace) its link is still on the project's bridge.
    fn on_network(&self, s: &MachineState, joins: Joins) -> bool {
        let Ok(Some(at)) = self.net.attachment(&s.name) else {
            return false;
        };
        s.joined == Some(at.address)
            && (joins != Joins::Namespace || crate::network::link::on_bridge(&at))
    }

    /// Stop a machine; a machine that is not running is left as it is.
    pub fn halt(&self, name: &str, force: bool) -> Result<String, OpError> {
        let Some(mut state) = self.load_observed(name)? else {
            return Ok("not created".into());
        };
        if !state.status.can_stop() {
            return Ok(format!("{}; nothing to stop", state.status));
        }
        let backend = self.backends.for_state(&state)?;
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
        let loaded = match self.project.load(name) {
            // A damaged state file: the Envfile says which backend made
            // the machine (the one it names, or hands the machine to), and
            // the backend identifies what is left from the machine's own
            // files (each checked before it is used).
            Err(StateError::Parse(path, e)) => {
                self.reporter.note(&format!(
                    "{} is damaged ({e}); cleaning up what the machine's own files identify",
                    path.display()
                ));
                let (made_by, _) = self.backends.for_machine(self.machine(name))?;
                let mut s = MachineState::new(name, BackendName::of(made_by));
                s.status = Status::Running;
                self.project.locate(&mut s);
                Some(s)
            }
            other => other?,
        };
        let Some(mut state) = loaded else {
            // An `up` killed before the machine was recorded may have
            // given it an address (and made the network).
            if let (_, Some(note)) = self.net.detach(name)? {
                self.reporter.note(&note);
            }
            return Ok("not created".into());
        };
        if state.status == Status::NotCreated {
            if let (_, Some(note)) = self.net.detach(name)? {
                self.reporter.note(&note);
            }
            self.project.remove(name)?;
            self.index.forget(&self.config.root, name)?;
            return Ok("not created".into());
        }
        let backend = self.backends.for_state(&state)?;
        self.reporter.step(name, "destroying");
        self.destroy_with(backend, &mut state)?;
        Ok("destroyed".into())
    }

    fn destroy_with(&self, backend: &dyn Backend, state: &mut MachineState) -> Result<(), OpError> {
        if state.status.can_destroy() {
            // Recorded first, so that a kill midway leaves `destroying`
            // for the next command; on a full disk it cannot be, and the
            // machine goes all the same (its directory, removed below,
            // frees the space).
            let _ = self.apply(state, Event::BeginDestroy);
            match backend.destroy(state) {
                // envup's own files go; what they named and is not the
                // machine's stays, and the user is told.
                Err(BackendError::NotOurs(what)) => self.reporter.note(&what),
                other => other?,
            }
            state.apply(Event::Destroyed)?;
        }
        let (names_changed, note) = self.net.detach(&state.name)?;
        crate::fault::point("net:detached");
        if let Some(note) = note {
            self.reporter.note(&note);
        }
        if names_changed {
            self.refresh_names(&state.name);
        }
        self.project.remove(&state.name)?;
        self.index.forget(&self.config.root, &state.name)?;
        Ok(())
    }

    /// Run provisioners on a running machine.
    pub fn provision(&self, name: &str, choice: &ProvisionChoice) -> Result<String, OpError> {
        let state = self.load_observed(name)?;
        if !state.as_ref().is_some_and(|s| s.status.can_provision()) {
            return Err(OpError::NotRunning(name.into()));
        }
        let mut state = state.expect("checked above");
        let m = self.machine(name);
        let (run, _) = plan::provision_steps(m, Some(&state), choice);
        let names: Vec<String> = run
            .into_iter()
            .filter_map(|s| match s.action {
                Action::Provision { name } => Some(name),
                _ => None,
            })
            .collect();
        match self.run_provisioners(m, &mut state, &names, None)? {
            0 => Ok("nothing to provision".into()),
            1 => Ok("ran 1 provisioner".into()),
            n => Ok(format!("ran {n} provisioners")),
        }
    }

    /// Log in to the machine, waiting up to its `boot_timeout`; on the
    /// first login to a machine whose box could not take its keys before
    /// it booted, put them in place first (and record that they are).
    fn wait_ssh(&self, m: &Machine, state: &mut MachineState) -> Result<Ssh, OpError> {
        let dir = self.project.machine_dir(&m.name);
        let keys = MachineKeys::ensure(&dir, &m.name)?;
        let ep = state
            .ssh
            .clone()
            .ok_or_else(|| OpError::NoEndpoint(m.name.clone()))?;
        let console = dir.join("console.log");
        let console = console.exists().then_some(console.as_path());
        let dial = self.backends.dial(state);
        // A machine that stops while it boots ends the wait, with what its
        // backend kept of why (when this envup has its backend).
        let backend = self.backends.for_state(state).ok();
        let started = state.clone();
        let stopped = || {
            let backend = backend?;
            (backend.status(&started).ok() == Some(Status::Stopped)).then(|| {
                backend
                    .last_words(&started)
                    .unwrap_or_else(|| "it is not running".into())
            })
        };
        let watch = crate::ssh::Watch {
            console,
            stopped: Some(&stopped),
        };
        // The state file is not trusted to ask for a login without the
        // host key check: the machine's box in the store must ask for it.
        let how = state.first_login.filter(|how| {
            state
                .box_ref
                .as_ref()
                .and_then(|b| self.store.get(b.sha256.as_str()))
                .is_some_and(|b| b.manifest.first_login == Some(*how))
        });
        let Some(how) = how else {
            self.reporter.step(&m.name, "waiting for SSH");
            return Ok(Ssh::wait(&ep, dial.as_ref(), &keys, m.boot_timeout, watch)?);
        };
        self.reporter.step(
            &m.name,
            "waiting for SSH to put the machine's keys in place",
        );
        let ssh = crate::ssh::first_login::place_keys(
            how,
            &ep,
            dial.as_ref(),
            &keys,
            &m.hostname,
            m.boot_timeout,
            watch,
        )?;
        state.first_login = None;
        self.save(state)?;
        Ok(ssh)
    }

    /// Run the named provisioners over one SSH session, recording each
    /// one's hash as soon as it succeeds.
    fn run_provisioners(
        &self,
        m: &Machine,
        state: &mut MachineState,
        names: &[String],
        ssh: Option<Ssh>,
    ) -> Result<usize, OpError> {
        if names.is_empty() {
            return Ok(0);
        }
        let ssh = match ssh {
            Some(s) => s,
            None => self.wait_ssh(m, state)?,
        };
        let dir = self.project.machine_dir(&m.name);
        // Only templated provisioners need the other machines' states.
        let scope = if names
            .iter()
            .any(|n| m.provisioners.iter().any(|p| &p.name == n && p.template))
        {
            let states: Vec<(String, Option<MachineState>)> = self
                .config
                .machine_names()
                .map(|n| (n.to_owned(), self.project.load(n).ok().flatten()))
                .collect();
            let network = self.net.record().ok().flatten();
            template_context(self.config, &states, network.as_ref(), &m.name)
        } else {
            minijinja::Value::UNDEFINED
        };
        let mut runner = Runner {
            ssh: &ssh,
            machine: m,
            reporter: self.reporter,
            scope,
            log: Runner::open_log(&dir.join("provision.log")),
        };
        for n in names {
            let p = m
                .provisioners
                .iter()
                .find(|p| &p.name == n)
                .expect("planned from this machine");
            self.reporter.step(&m.name, &format!("provisioning {n}"));
            let hash = content_hash(p).map_err(|source| ProvisionError::Read {
                name: p.name.clone(),
                path: p.kind.host_path().unwrap_or(&dir).to_path_buf(),
                source,
            })?;
            runner.run(p)?;
            state.provisioned.insert(n.clone(), hash);
            self.save(state)?;
            crate::fault::point("up:provisioned");
        }
        Ok(names.len())
    }

    /// Write the project's names into every running machine but `except`
    /// (`""`: all). A machine that cannot be reached keeps its old names,
    /// with a note.
    pub fn refresh_names(&self, except: &str) {
        let Ok(Some(record)) = self.net.record() else {
            return;
        };
        let _writing = self.net.writing_names();
        let block = hosts_block(self.config, Some(&record));
        for name in record.machines.keys().filter(|n| *n != except) {
            let Some(m) = self.config.machines.get(name) else {
                continue;
            };
            if let Err(e) = self.refresh_one(m, &block) {
                self.names_failed
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                self.reporter.line(
                    name,
                    crate::ui::Stream::Stderr,
                    &format!(
                        "note: its /etc/hosts does not name the project's machines as they are now: {}",
                        crate::cli::error::chain(&e)
                    ),
                );
            }
        }
    }

    fn refresh_one(&self, m: &Machine, block: &str) -> Result<(), OpError> {
        let Some(state) = self.project.load(&m.name)? else {
            return Ok(());
        };
        if state.status != Status::Running {
            return Ok(());
        }
        let backend = self.backends.for_state(&state)?;
        match backend.joins(m) {
            Joins::No => Ok(()),
            Joins::Namespace => names_in_root(&m.name, backend.machine_pid(&state)?, block),
            Joins::Guest => {
                let keys = MachineKeys::ensure(&self.project.machine_dir(&m.name), &m.name)?;
                let ep = state
                    .ssh
                    .clone()
                    .ok_or_else(|| OpError::NoEndpoint(m.name.clone()))?;
                let dial = self.backends.dial(&state);
                let ssh = Ssh::connect(
                    &ep,
                    dial.as_ref(),
                    &keys,
                    std::time::Duration::from_secs(10),
                )?;
                write_names_over(&ssh, block)
            }
        }
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

/// `script` run as root on the machine: through `sudo -n` when SSH logs in
/// as another user.
fn as_root(ssh: &Ssh, script: &str) -> String {
    if ssh.endpoint.user == "root" {
        script.to_owned()
    } else {
        format!("sudo -n sh -c {}", crate::ssh::sh_quote(script))
    }
}

/// The project's names, for each machine's `/etc/hosts`.
fn hosts_block(config: &Config, record: Option<&crate::network::Record>) -> String {
    let entries: Vec<_> = record
        .iter()
        .flat_map(|r| &r.machines)
        .map(|(name, a)| {
            let host = config
                .machines
                .get(name)
                .map_or(name.clone(), |m| m.hostname.clone());
            (*a, name.clone(), host)
        })
        .collect();
    crate::network::hosts::block(&entries)
}

/// Write `block` into the `/etc/hosts` of the machine whose process `pid`
/// is on this host, through its root.
fn names_in_root(name: &str, pid: i32, block: &str) -> Result<(), OpError> {
    let root = format!("/proc/{pid}/root");
    crate::network::hosts::write_in_root(std::path::Path::new(&root), block).map_err(|e| {
        OpError::Join {
            name: name.to_owned(),
            source: e.into(),
        }
    })
}

/// Put a started machine that joins through its network namespace on the
/// project network, and write its names.
fn join(
    config: &Config,
    net: &crate::network::Net,
    backend: &dyn Backend,
    state: &MachineState,
    at: &Attachment,
) -> Result<(), OpError> {
    let failed = |source: Box<dyn std::error::Error + Send + Sync>| OpError::Join {
        name: state.name.clone(),
        source,
    };
    net.bridge_ready(at)?;
    let pid = backend.machine_pid(state)?;
    crate::network::link::join_namespace(pid, at).map_err(|e| failed(e.into()))?;
    let _writing = net.writing_names();
    names_in_root(
        &state.name,
        pid,
        &hosts_block(config, net.record()?.as_ref()),
    )
}

/// Give a booted VM its address on the project NIC, and its names.
fn join_guest(
    config: &Config,
    net: &crate::network::Net,
    name: &str,
    ssh: &Ssh,
    at: &Attachment,
) -> Result<(), OpError> {
    let failed = |source: SshError| OpError::Join {
        name: name.to_owned(),
        source: source.into(),
    };
    let script = format!(
        "mac={mac}; dev=; for i in /sys/class/net/*; do \
         [ \"$(cat $i/address 2>/dev/null)\" = $mac ] && dev=${{i##*/}}; done; \
         [ -n \"$dev\" ] || {{ echo \"no NIC has address $mac\" >&2; exit 1; }}; \
         ip addr flush dev $dev && ip addr add {a}/{p} dev $dev && ip link set $dev up",
        mac = crate::network::mac_of(at.address),
        a = at.address,
        p = at.subnet.prefix(),
    );
    ssh.run(
        "configuring the project network",
        &as_root(ssh, &script),
        None,
    )
    .map_err(failed)?;
    let _writing = net.writing_names();
    write_names_over(ssh, &hosts_block(config, net.record()?.as_ref()))
}

fn write_names_over(ssh: &Ssh, block: &str) -> Result<(), OpError> {
    let script = crate::network::hosts::script(block);
    ssh.run("writing /etc/hosts", &as_root(ssh, &script), None)?;
    Ok(())
}

/// A running machine whose network was made anew without `up` (a snapshot
/// restored) joins its project network again, at its recorded address.
pub fn rejoin(
    config: &Config,
    net: &crate::network::Net,
    backend: &dyn Backend,
    state: &mut MachineState,
    ssh: &Ssh,
) -> Result<(), OpError> {
    state.joined = None;
    let Some(m) = config.machines.get(&state.name) else {
        return Ok(());
    };
    let joins = if net.enabled() {
        backend.joins(m)
    } else {
        Joins::No
    };
    let Some(at) = net.attachment(&m.name)? else {
        return Ok(());
    };
    match joins {
        Joins::No => return Ok(()),
        Joins::Namespace => join(config, net, backend, state, &at)?,
        Joins::Guest => join_guest(config, net, &m.name, ssh, &at)?,
    }
    state.joined = Some(at.address);
    Ok(())
}
