use crate::boxes::Store;
use crate::boxes::lock::Lockfile;
use crate::boxes::resolve::Resolver;
use crate::cli::{App, CliError, ExitCode, MachinesArgs};
use crate::state::envup_home;

/// Resolve the named machines' boxes (all when none are named) and write
/// Envfile.lock. With `fresh`, ignore what the lock says for them.
fn relock(app: &App, names: &[String], fresh: bool) -> Result<ExitCode, CliError> {
    let config = app.config()?;
    let selected = app.select(&config, names)?;
    let store = Store::new(&envup_home()?);
    let reporter = app.reporter();
    let resolver = Resolver {
        store: &store,
        root: &config.root,
        reporter: &*reporter,
        backends: crate::backend::Registry::builtin(),
    };
    let mut lock = Lockfile::read(&config.root)?;
    let mut changed = Vec::new();
    for name in &selected {
        let m = &config.machines[name];
        let current = if fresh {
            None
        } else {
            lock.valid_entry(name, &m.box_, m.box_version.as_ref())
                .cloned()
        };
        let (backend, _) = crate::backend::Registry::builtin().for_machine(m)?;
        let (_, entry) = resolver.resolve(m, backend, current.as_ref())?;
        if lock.machines.get(name) != Some(&entry) {
            changed.push(format!(
                "{name}: {} {} (sha256:{}…)",
                entry.box_,
                entry.version,
                &entry.sha256[..12]
            ));
            lock.machines.insert(name.clone(), entry);
        }
    }
    // Machines no longer in the Envfile leave the lock.
    lock.machines.retain(|n, _| config.machines.contains_key(n));
    lock.write(&config.root)?;
    if !app.mode.quiet {
        if changed.is_empty() {
            anstream::println!("Envfile.lock is up to date");
        } else {
            for c in changed {
                anstream::println!("locked {c}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run(app: &App) -> Result<ExitCode, CliError> {
    relock(app, &[], false)
}

pub fn update(app: &App, args: &MachinesArgs) -> Result<ExitCode, CliError> {
    relock(app, &args.machines, true)
}
