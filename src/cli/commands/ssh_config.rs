use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use crate::cli::{App, CliError, ExitCode, MachinesArgs};
use crate::envfile::Config;
use crate::ssh::MachineKeys;
use crate::state::MachineState;

/// The name the machine's host key is filed under in its known_hosts.
pub(crate) fn host_key_alias(config: &Config, machine: &str) -> String {
    format!("envup-{}-{machine}", config.project)
}

/// A path as OpenSSH reads it in a config file and in `-o`: in double
/// quotes, so paths with spaces stay one value; byte for byte. A path
/// OpenSSH cannot quote (a control character, a `"`) is refused: it would
/// add options of its own.
fn quoted(machine: &str, key: &str, p: &std::path::Path) -> Result<OsString, CliError> {
    let bytes = p.as_os_str().as_bytes();
    if bytes.iter().any(|&b| b.is_ascii_control() || b == b'"') {
        return Err(CliError::Failed(format!(
            "machine `{machine}`: its {key} `{}` cannot be written into an SSH config",
            crate::ident::printable(&p.to_string_lossy())
        )));
    }
    let mut v = b"\"".to_vec();
    v.extend(bytes);
    v.push(b'"');
    Ok(OsString::from_vec(v))
}

/// OpenSSH client options that reach `machine` with its own key and host key.
/// What comes from the machine's state is checked first: the host is an
/// IP address, the user a POSIX user name.
pub(crate) fn options(
    config: &Config,
    machine: &str,
    state: &MachineState,
    keys: &MachineKeys,
) -> Result<Vec<(&'static str, OsString)>, CliError> {
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
    Ok(vec![
        ("HostName", ep.host.clone().into()),
        ("Port", ep.port.to_string().into()),
        ("User", ep.user.clone().into()),
        (
            "IdentityFile",
            quoted(machine, "IdentityFile", &keys.client_key_path())?,
        ),
        ("IdentitiesOnly", "yes".into()),
        (
            "UserKnownHostsFile",
            quoted(machine, "UserKnownHostsFile", &known)?,
        ),
        ("StrictHostKeyChecking", "yes".into()),
        ("HostKeyAlias", alias.into()),
        ("LogLevel", "ERROR".into()),
    ])
}

pub fn run(app: &App, args: &MachinesArgs) -> Result<ExitCode, CliError> {
    let config = app.config()?;
    // Bytes: a path in it need not be UTF-8.
    let mut text: Vec<u8> = Vec::new();
    for name in app.select(&config, &args.machines)? {
        let (state, keys) = super::running_machine(app, &config, &name)?;
        text.extend(format!("Host {name}\n").as_bytes());
        for (k, v) in options(&config, &name, &state, &keys)? {
            text.extend(format!("  {k} ").as_bytes());
            text.extend(v.as_bytes());
            text.push(b'\n');
        }
        text.push(b'\n');
    }
    use std::io::Write;
    std::io::stdout()
        .write_all(&text)
        .map_err(|source| CliError::Io {
            what: "write the SSH config".into(),
            source,
        })?;
    Ok(ExitCode::SUCCESS)
}
