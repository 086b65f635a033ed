use crate::cli::{App, CliError, ExitCode, UploadArgs};

pub fn run(app: &App, args: &UploadArgs) -> Result<ExitCode, CliError> {
    let config = app.config()?;
    if !args.src.exists() {
        return Err(CliError::Usage(format!(
            "{} does not exist",
            args.src.display()
        )));
    }
    super::running_machine(app, &config, &args.machine)?;
    Err(CliError::NotBuilt("SSH access"))
}
