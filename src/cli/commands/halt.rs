use crate::cli::{App, CliError, ExitCode, HaltArgs};
use crate::orchestrate::Order;

pub fn run(app: &App, args: &HaltArgs) -> Result<ExitCode, CliError> {
    let config = app.config()?;
    let selected = app.select(&config, &args.machines)?;
    super::run_machines(
        app,
        &config,
        &selected,
        Order::DependantsFirst,
        selected.len(),
        "halted",
        |ops, name| ops.halt(name, args.force),
    )
}
