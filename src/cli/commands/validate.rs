use crate::cli::{App, CliError, ExitCode};

pub fn run(app: &App) -> Result<ExitCode, CliError> {
    app.config()?;
    Ok(ExitCode::SUCCESS)
}
