use crate::cli::{App, CliError, ExitCode, ProvisionArgs};
use crate::orchestrate::Order;
use crate::plan::ProvisionChoice;

pub fn run(app: &App, args: &ProvisionArgs) -> Result<ExitCode, CliError> {
    let config = app.config()?;
    let selected = app.select(&config, &args.machines)?;
    crate::cli::context::check_provisioners(&config, &selected, &args.with)?;
    let choice = ProvisionChoice {
        skip_all: false,
        only: args.with.clone(),
    };
    super::run_machines(
        app,
        &config,
        &selected,
        Order::DependenciesFirst,
        selected.len(),
        "provisioned",
        |ops, name| ops.provision(name, &choice),
    )
}
