use crate::cli::{App, CliError, ExitCode, MachinesArgs};

pub fn run(app: &App) -> Result<ExitCode, CliError> {
    app.config()?;
    Err(CliError::NotBuilt("box resolution for Envfile.lock"))
}

pub fn update(app: &App, args: &MachinesArgs) -> Result<ExitCode, CliError> {
    let config = app.config()?;
    app.select(&config, &args.machines)?;
    Err(CliError::NotBuilt("box resolution for Envfile.lock"))
}
