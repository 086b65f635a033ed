use std::os::unix::process::CommandExt;

use crate::cli::{App, CliError, ExitCode, SshArgs};
use crate::host::which;

/// An interactive shell (or a command with a terminal) through the system's
/// OpenSSH client, given the machine's key and host key; envup hands the
/// terminal over to it, and its exit code is envup's.
pub fn run(app: &App, args: &SshArgs) -> Result<ExitCode, CliError> {
    let config = app.config()?;
    let name = match &args.machine {
        Some(n) => n.clone(),
        None => config.primary().map(|m| m.name.clone()).ok_or_else(|| {
            CliError::Usage("name a machine, or mark one `primary = true` in the Envfile".into())
        })?,
    };
    let (state, keys) = super::running_machine(app, &config, &name)?;
    let ssh = which("ssh").ok_or_else(|| {
        CliError::Failed("`envup ssh` runs the OpenSSH client, which is not installed: apt-get install openssh-client (`envup exec` needs no client)".into())
    })?;
    let mut cmd = std::process::Command::new(ssh);
    for (k, v) in super::ssh_config::options(&config, &name, &state, &keys)? {
        let mut o = std::ffi::OsString::from(format!("{k}="));
        o.push(v);
        cmd.arg("-o").arg(o);
    }
    if !args.command.is_empty() {
        cmd.arg("-t");
    }
    cmd.arg(&name);
    if !args.command.is_empty() {
        cmd.arg("--").args(&args.command);
    }
    let err = cmd.exec();
    Err(CliError::Io {
        what: "run ssh".into(),
        source: err,
    })
}
