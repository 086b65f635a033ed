use crate::cli::{App, CliError, ExitCode, MachinesArgs};

pub fn run(app: &App, args: &MachinesArgs) -> Result<ExitCode, CliError> {
    let config = app.config()?;
    for name in app.select(&config, &args.machines)? {
        super::created_machine(&app.project(&config), &name)?;
    }
    Err(CliError::NotBuilt("SSH access"))
}
