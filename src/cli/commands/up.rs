use crate::cli::{App, CliError, ExitCode, UpArgs};
use crate::orchestrate::Order;
use crate::plan::ProvisionChoice;

pub fn run(app: &App, args: &UpArgs) -> Result<ExitCode, CliError> {
    let config = app.config()?;
    let selected = app.select_with_dependencies(&config, &args.machines)?;
    crate::cli::context::check_provisioners(&config, &selected, &args.provision_with)?;
    if args.locked {
        // Every machine `up` may create must be pinned already.
        let lock = crate::boxes::lock::Lockfile::read(&config.root)?;
        let missing: Vec<&str> = selected
            .iter()
            .filter(|n| {
                let m = &config.machines[n.as_str()];
                lock.valid_entry(n, &m.box_, m.box_version.as_ref())
                    .is_none()
            })
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Err(CliError::Failed(format!(
                "--locked: Envfile.lock does not pin a box for {} (or no longer fits the Envfile); run `envup lock` and check it in",
                missing.join(", ")
            )));
        }
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
