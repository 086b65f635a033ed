use clap::CommandFactory;

use crate::cli::{Cli, CliError, CompletionsArgs, ExitCode};

pub fn run(args: &CompletionsArgs) -> Result<ExitCode, CliError> {
    clap_complete::generate(
        args.shell,
        &mut Cli::command(),
        "envup",
        &mut std::io::stdout(),
    );
    Ok(ExitCode::SUCCESS)
}
