use crate::cli::{App, CliError, ExitCode, UpArgs};
use crate::orchestrate::Order;
use crate::plan::ProvisionChoice;

pub fn run(app: &App, args: &UpArgs) -> Result<ExitCode, CliError> {
    let config = app.config()?;
    let selected = app.select_with_dependencies(&config, &args.machines)?;
    crate::cli::context::check_provisioners(&config, &selected, &args.provision_with)?;
    if args.locked {
        return Err(CliError::NotBuilt("Envfile.lock (`--locked`)"));
    }
    let choice = ProvisionChoice {
        skip_all: args.no_provision,
        only: args.provision_with.clone(),
    };
    super::run_machines(
        app,
        &config,
        &selected,
        Order::DependenciesFirst,
        args.jobs.into(),
        "brought up",
        |ops, name| ops.up(name, &choice, args.no_destroy_on_error),
    )
}
