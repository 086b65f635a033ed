use crate::cli::{App, CliError, ExitCode, MachinesArgs};
use crate::envfile::Config;
use crate::ssh::MachineKeys;
use crate::state::MachineState;

/// The name the machine's host key is filed under in its known_hosts.
pub(crate) fn host_key_alias(config: &Config, machine: &str) -> String {
    format!("envup-{}-{machine}", config.project)
}

/// OpenSSH client options that reach `machine` with its own key and host key.
pub(crate) fn options(
    config: &Config,
    machine: &str,
    state: &MachineState,
    keys: &MachineKeys,
) -> Result<Vec<(&'static str, String)>, CliError> {
    let ep = state.ssh.as_ref().ok_or_else(|| {
        CliError::Failed(format!("machine `{machine}` has no SSH address recorded"))
    })?;
    let alias = host_key_alias(config, machine);
    let known = keys
        .known_hosts(&alias)
        .map_err(|e| CliError::Failed(crate::cli::error::chain(&e)))?;
    Ok(vec![
        ("HostName", ep.host.clone()),
        ("Port", ep.port.to_string()),
        ("User", ep.user.clone()),
        ("IdentityFile", keys.client_key_path().display().to_string()),
        ("IdentitiesOnly", "yes".into()),
        ("UserKnownHostsFile", known.display().to_string()),
        ("StrictHostKeyChecking", "yes".into()),
        ("HostKeyAlias", alias),
        ("LogLevel", "ERROR".into()),
    ])
}

pub fn run(app: &App, args: &MachinesArgs) -> Result<ExitCode, CliError> {
    let config = app.config()?;
    let mut text = String::new();
    for name in app.select(&config, &args.machines)? {
        let (state, keys) = super::running_machine(app, &config, &name)?;
        text.push_str(&format!("Host {name}\n"));
        for (k, v) in options(&config, &name, &state, &keys)? {
            text.push_str(&format!("  {k} {v}\n"));
        }
        text.push('\n');
    }
    anstream::print!("{text}");
    Ok(ExitCode::SUCCESS)
}
