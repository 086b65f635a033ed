use crate::cli::{App, CliError, ExitCode, MachinesArgs};
use crate::orchestrate::Order;
use crate::plan::ProvisionChoice;

/// Halt, then up: a stopped machine starts with the Envfile's settings.
pub fn run(app: &App, args: &MachinesArgs) -> Result<ExitCode, CliError> {
    let config = app.config()?;
    let selected = app.select(&config, &args.machines)?;
    let choice = ProvisionChoice::default();
    super::run_machines(
        app,
        &config,
        &selected,
        Order::DependenciesFirst,
        selected.len(),
        "reloaded",
        |ops, name| {
            ops.halt(name, false)?;
            ops.up(name, &choice, false)
        },
    )
}
