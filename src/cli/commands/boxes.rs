use crate::cli::{App, BoxCommand, CliError, ExitCode};

pub fn run(_app: &App, cmd: &BoxCommand) -> Result<ExitCode, CliError> {
    Err(CliError::NotBuilt(match cmd {
        BoxCommand::Build { .. } => "building boxes",
        _ => "the box store",
    }))
}
