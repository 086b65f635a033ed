use crate::cli::{App, CliError, ExitCode, SshArgs};

pub fn run(app: &App, args: &SshArgs) -> Result<ExitCode, CliError> {
    let config = app.config()?;
    let name = match &args.machine {
        Some(n) => n.clone(),
        None => config.primary().map(|m| m.name.clone()).ok_or_else(|| {
            CliError::Usage("name a machine, or mark one `primary = true` in the Envfile".into())
        })?,
    };
    super::running_machine(app, &config, &name)?;
    Err(CliError::NotBuilt("SSH access"))
}
