use std::io::{BufRead, IsTerminal, Write};

use crate::cli::{App, CliError, DestroyArgs, ExitCode};
use crate::orchestrate::Order;

pub fn run(app: &App, args: &DestroyArgs) -> Result<ExitCode, CliError> {
    let config = app.config()?;
    let selected = app.select(&config, &args.machines)?;
    if !args.force {
        confirm(&selected)?;
    }
    super::run_machines(
        app,
        &config,
        &selected,
        Order::DependantsFirst,
        selected.len(),
        "destroyed",
        |ops, name| ops.destroy(name),
    )
}

/// Ask on a terminal; refuse without one, since destroying loses data.
fn confirm(machines: &[String]) -> Result<(), CliError> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(CliError::Usage(
            "destroy deletes the machines and their data; pass --force to do it without a terminal to confirm on".into(),
        ));
    }
    eprint!(
        "Destroy {} and everything on them? [y/N] ",
        machines.join(", ")
    );
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    stdin
        .lock()
        .read_line(&mut answer)
        .map_err(CliError::io("read the answer"))?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(CliError::Failed("nothing destroyed".into()))
    }
}
