use crate::cli::{App, CliError, ExitCode, UploadArgs};

/// Copy a file (to DST) or a directory (into DST), modes kept.
pub fn run(app: &App, args: &UploadArgs) -> Result<ExitCode, CliError> {
    let config = app.config()?;
    if !args.src.exists() {
        return Err(CliError::Usage(format!(
            "{} does not exist",
            args.src.display()
        )));
    }
    let ssh = super::connect(app, &config, &args.machine)?;
    ssh.upload(&args.src, &args.dst, false)?;
    if !app.mode.quiet {
        anstream::println!(
            "uploaded {} to {}:{}",
            args.src.display(),
            args.machine,
            args.dst
        );
    }
    Ok(ExitCode::SUCCESS)
}
