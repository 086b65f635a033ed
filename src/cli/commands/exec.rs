use crate::cli::{App, CliError, ExecArgs, ExitCode};

pub fn run(app: &App, args: &ExecArgs) -> Result<ExitCode, CliError> {
    let config = app.config()?;
    super::running_machine(app, &config, &args.machine)?;
    Err(CliError::NotBuilt("SSH access"))
}
