use crate::cli::{App, CliError, ExitCode, SnapshotCommand};

pub fn run(app: &App, cmd: &SnapshotCommand) -> Result<ExitCode, CliError> {
    let config = app.config()?;
    let machine = match cmd {
        SnapshotCommand::Save { machine, .. }
        | SnapshotCommand::Restore { machine, .. }
        | SnapshotCommand::List { machine }
        | SnapshotCommand::Delete { machine, .. } => machine,
    };
    crate::cli::context::check_machine(&config, machine)?;
    super::created_machine(&app.project(&config), machine)?;
    Err(CliError::NotBuilt("snapshots"))
}
