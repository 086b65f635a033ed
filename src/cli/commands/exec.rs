use std::io::{IsTerminal, Write};

use crate::cli::{App, CliError, ExecArgs, ExitCode};
use crate::ssh::sh_quote;
use crate::ui::Stream;

/// Run a command without a terminal. Each argument reaches the machine as
/// one word (`exec web -- sh -c '…'` for shell syntax); stdout and stderr
/// stay apart; standard input is passed on when it is not a terminal; the
/// command's exit code is envup's.
pub fn run(app: &App, args: &ExecArgs) -> Result<ExitCode, CliError> {
    let config = app.config()?;
    let ssh = super::connect(app, &config, &args.machine)?;
    let command: Vec<String> = args.command.iter().map(|a| sh_quote(a)).collect();
    let mut stdin = std::io::stdin();
    let input: Option<&mut dyn std::io::Read> = if stdin.is_terminal() {
        None
    } else {
        Some(&mut stdin)
    };
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    let code = ssh.exec(&command.join(" "), input, &mut |s, b| {
        let _ = match s {
            Stream::Stdout => out.write_all(b).and_then(|()| out.flush()),
            Stream::Stderr => err.write_all(b).and_then(|()| err.flush()),
        };
    })?;
    Ok(ExitCode(u8::try_from(code).unwrap_or(255)))
}
