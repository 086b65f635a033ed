//! One file per command; each a few lines over the library.

pub mod boxes;
pub mod completions;
pub mod destroy;
pub mod doctor;
pub mod exec;
pub mod global_status;
pub mod halt;
pub mod init;
pub mod lock;
pub mod plan;
pub mod plugin;
pub mod port;
pub mod provision;
pub mod reload;
pub mod snapshot;
pub mod ssh;
pub mod ssh_config;
pub mod status;
pub mod up;
pub mod upload;
pub mod validate;

use crate::boxes::Store;
use crate::boxes::lock::Lockfile;
use crate::cli::{App, CliError, ExitCode};
use crate::envfile::Config;
use crate::ops::Ops;
use crate::orchestrate::{self, Graph, Order};
use crate::state::index::Index;
use crate::state::{ProjectState, envup_home};
use crate::ui::{Outcome, Reporter};

/// Run `action` over `selected` machines as a graph, under the project
/// lock, and turn the outcomes into the command's result.
pub(crate) fn run_machines<F>(
    app: &App,
    config: &Config,
    selected: &[String],
    order: Order,
    jobs: usize,
    verb: &str,
    action: F,
) -> Result<ExitCode, CliError>
where
    F: Fn(&Ops<'_>, &str) -> Result<String, crate::ops::OpError> + Sync,
{
    let project = app.project(config)?;
    let reporter = app.reporter();
    let _lock = app.lock(&project, &*reporter)?;
    let home = envup_home()?;
    let index = Index::new(&home);
    let store = Store::new(&home);
    let lock = Lockfile::read(&config.root)?;
    let net = crate::network::Net::new(config, project.dir());
    let ops = Ops {
        config,
        project: &project,
        index: &index,
        reporter: &*reporter,
        backends: crate::backend::Registry::builtin(),
        net: &net,
        store: &store,
        lock: &lock,
        resolved: Default::default(),
        names_failed: Default::default(),
    };
    // Names an envup killed midway did not give every running machine.
    if net.names_behind().is_some() {
        ops.refresh_names("");
    }
    let graph = Graph::new(config, selected, order);
    let outcomes = orchestrate::run(&graph, jobs, &*reporter, |name| {
        action(&ops, name).map_err(|e| super::error::chain(&e))
    });
    // Each change of the names was followed by writing them, unless a
    // machine failed midway or could not be reached: then all again.
    if let Some(v) = net.names_behind() {
        use std::sync::atomic::Ordering::Relaxed;
        if !outcomes.iter().all(|(_, o)| o.is_done()) || ops.names_failed.swap(false, Relaxed) {
            ops.refresh_names("");
        }
        if !ops.names_failed.load(Relaxed) {
            net.names_written(v)
                .map_err(|e| CliError::Failed(super::error::chain(&e)))?;
        }
    }
    // Pin what this command resolved.
    let resolved = ops.resolved.into_inner().expect("resolved lock");
    if !resolved.is_empty() {
        let mut lock = lock;
        let before = lock.clone();
        lock.machines.extend(resolved);
        if lock != before {
            lock.write(&config.root)?;
        }
    }
    finish(&*reporter, verb, &outcomes)
}

/// Report the result; fail when any machine did not make it.
pub(crate) fn finish(
    reporter: &dyn Reporter,
    verb: &str,
    outcomes: &[(String, Outcome)],
) -> Result<ExitCode, CliError> {
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Failed { .. }))
        .map(|(m, _)| m.as_str())
        .collect();
    let skipped: Vec<&str> = outcomes
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Skipped { .. }))
        .map(|(m, _)| m.as_str())
        .collect();
    let ok = failed.is_empty() && skipped.is_empty();
    reporter.result(ok, outcomes);
    if ok {
        return Ok(ExitCode::SUCCESS);
    }
    let mut msg = format!(
        "{} of {} machines could not be {verb}",
        failed.len() + skipped.len(),
        outcomes.len()
    );
    if !failed.is_empty() {
        msg.push_str(&format!(" (failed: {}", failed.join(", ")));
        if !skipped.is_empty() {
            msg.push_str(&format!("; skipped: {}", skipped.join(", ")));
        }
        msg.push(')');
    } else {
        msg.push_str(&format!(" (skipped: {})", skipped.join(", ")));
    }
    Err(CliError::Failed(msg))
}

/// The machine's recorded state, or an error saying it is not created.
pub(crate) fn created_machine(
    project: &ProjectState,
    name: &str,
) -> Result<crate::state::MachineState, CliError> {
    match project.load(name)? {
        Some(s) if s.status != crate::state::Status::NotCreated => Ok(s),
        _ => Err(CliError::Failed(format!(
            "machine `{name}` is not created; `envup up {name}` creates it"
        ))),
    }
}

/// A machine that must be running for SSH to reach it: its state and keys.
pub(crate) fn running_machine(
    app: &App,
    config: &Config,
    name: &str,
) -> Result<(crate::state::MachineState, crate::ssh::MachineKeys), CliError> {
    super::context::check_machine(config, name)?;
    let project = app.project(config)?;
    let state = created_machine(&project, name)?;
    // As the backend sees it: a machine whose processes died is not
    // running, whatever the state recorded.
    let status = crate::backend::Registry::builtin().observed_status(&state);
    if !status.can_provision() {
        return Err(CliError::Failed(format!(
            "machine `{name}` is not running ({status}); `envup up {name}` starts it"
        )));
    }
    let keys = crate::ssh::MachineKeys::ensure(&project.machine_dir(name), name)
        .map_err(|e| CliError::Failed(super::error::chain(&e)))?;
    Ok((state, keys))
}

/// Log in to a running machine.
pub(crate) fn connect(app: &App, config: &Config, name: &str) -> Result<crate::ssh::Ssh, CliError> {
    let (state, keys) = running_machine(app, config, name)?;
    let ep = state
        .ssh
        .clone()
        .ok_or_else(|| CliError::Failed(format!("machine `{name}` has no SSH address recorded")))?;
    let dial = crate::backend::Registry::builtin().dial(&state);
    crate::ssh::Ssh::connect(
        &ep,
        dial.as_ref(),
        &keys,
        std::time::Duration::from_secs(10),
    )
    .map_err(CliError::from)
}
