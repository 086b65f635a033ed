use crate::cli::{App, CliError, ExitCode, MachinesArgs};
use crate::envfile::Config;
use crate::ssh::MachineKeys;
use crate::state::MachineState;

/// The name the machine's host key is filed under in its known_hosts.
pub(crate) fn host_key_alias(config: &Config, machine: &str) -> String {
    format!("envup-{}-{machine}", config.project)
}

/// A value as OpenSSH reads it in a config file and in `-o`: in double
/// quotes, so paths with spaces stay one value. A value OpenSSH cannot
/// quote (a control character, a `"`) is refused: from a damaged state
/// file it would add options of its own.
fn quoted(machine: &str, key: &str, v: &str) -> Result<String, CliError> {
    if v.chars().any(|c| c.is_control() || c == '"') {
        return Err(CliError::Failed(format!(
            "machine `{machine}`: its {key} `{}` cannot be written into an SSH config",
            crate::ident::printable(v)
        )));
    }
    Ok(format!("\"{v}\""))
}

/// OpenSSH client options that reach `machine` with its own key and host key.
/// What comes from the machine's state is checked first: the host is an
/// IP address, the user a POSIX user name.
pub(crate) fn options(
    config: &Config,
    machine: &str,
    state: &MachineState,
    keys: &MachineKeys,
) -> Result<Vec<(&'static str, String)>, CliError> {
    let ep = state.ssh.as_ref().ok_or_else(|| {
        CliError::Failed(format!("machine `{machine}` has no SSH address recorded"))
    })?;
    if ep.host.parse::<std::net::IpAddr>().is_err() || !crate::ident::is_user_name(&ep.user) {
        return Err(CliError::Failed(format!(
            "machine `{machine}`: its state records SSH as `{}@{}`, which is not a user name \
             at an IP address (the state file is damaged or was edited)",
            crate::ident::printable(&ep.user),
            crate::ident::printable(&ep.host)
        )));
    }
    let alias = host_key_alias(config, machine);
    let known = keys
        .known_hosts(&alias)
        .map_err(|e| CliError::Failed(crate::cli::error::chain(&e)))?;
    let path = |key: &str, p: &std::path::Path| quoted(machine, key, &p.display().to_string());
    Ok(vec![
        ("HostName", ep.host.clone()),
        ("Port", ep.port.to_string()),
        ("User", ep.user.clone()),
        (
            "IdentityFile",
            path("IdentityFile", &keys.client_key_path())?,
        ),
        ("IdentitiesOnly", "yes".into()),
        ("UserKnownHostsFile", path("UserKnownHostsFile", &known)?),
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
