//! The command line: clap types, the context every command gets, and the
//! error that maps to an exit code.

pub mod commands;
pub mod context;
pub mod error;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use context::App;
pub use error::{CliError, ExitCode};

/// Declarative dev environments: VMs, jails and containers from one Envfile.
#[derive(Debug, Parser)]
#[command(
    name = "envup",
    version,
    about,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// Run as if envup was started in DIR.
    #[arg(short = 'C', global = true, value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// Use this Envfile instead of searching for one.
    #[arg(long, global = true, value_name = "PATH")]
    pub envfile: Option<PathBuf>,

    /// Machine-readable output: one JSON document, or one JSON event per line
    /// for long commands.
    #[arg(long, global = true)]
    pub json: bool,

    /// Print only errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    /// Log more (-v info, -vv debug, -vvv trace), on stderr.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// When to use colour.
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto, value_name = "WHEN")]
    pub color: ColorChoice,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a new Envfile from a template.
    Init(InitArgs),
    /// Check the Envfile; print nothing on success.
    Validate,
    /// Show what `up` would create, start, provision, or leave alone.
    Plan(PlanArgs),
    /// Create, start and provision machines.
    Up(UpArgs),
    /// Stop machines.
    Halt(HaltArgs),
    /// Stop machines and remove everything envup made for them.
    Destroy(DestroyArgs),
    /// Halt and start machines again, applying changed settings.
    Reload(MachinesArgs),
    /// Run provisioners on running machines.
    Provision(ProvisionArgs),
    /// Show the state of this project's machines.
    Status(MachinesArgs),
    /// Show every machine envup knows on this host, in any project.
    GlobalStatus(GlobalStatusArgs),
    /// Open a shell on a machine, or run a command with a terminal.
    Ssh(SshArgs),
    /// Run a command on a machine without a terminal; its exit code is envup's.
    Exec(ExecArgs),
    /// Print an OpenSSH client config block per machine.
    SshConfig(MachinesArgs),
    /// Copy a file or directory to a machine.
    Upload(UploadArgs),
    /// Show guest → host port mappings.
    Port(PortArgs),
    /// Save, restore, list and delete machine snapshots.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Manage boxes: the images machines are made from.
    #[command(subcommand, name = "box")]
    Box(BoxCommand),
    /// Resolve every machine's box and write Envfile.lock.
    Lock,
    /// Resolve boxes again, ignoring Envfile.lock, and rewrite it.
    Update(MachinesArgs),
    /// Say which backends work on this host, and what to install for the rest.
    Doctor,
    /// Backend plugins: what was found where, and the conformance kit.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Print a shell completion script.
    Completions(CompletionsArgs),
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The template to start from.
    #[arg(long, short, default_value = "single", value_name = "NAME")]
    pub template: String,
    /// The box for the machines.
    #[arg(long = "box", value_name = "BOX")]
    pub box_: Option<String>,
    /// The backend for the machines (`envup doctor` lists those this envup has).
    #[arg(long, value_name = "B")]
    pub backend: Option<String>,
    /// Overwrite an existing Envfile.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct MachinesArgs {
    /// Machines to act on (default: all).
    #[arg(value_name = "MACHINE")]
    pub machines: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Machines to plan for (default: what `up` would start).
    #[arg(value_name = "MACHINE")]
    pub machines: Vec<String>,
    /// Plan without provisioning.
    #[arg(long)]
    pub no_provision: bool,
    /// Plan only these provisioners.
    #[arg(long, value_name = "NAME", num_args = 1.., value_delimiter = ',')]
    pub provision_with: Vec<String>,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Machines to bring up (default: every machine with autostart); what
    /// they depend on comes up first.
    #[arg(value_name = "MACHINE")]
    pub machines: Vec<String>,
    /// Do not run provisioners.
    #[arg(long, conflicts_with = "provision_with")]
    pub no_provision: bool,
    /// Run only these provisioners (whatever their `run` says).
    #[arg(long, value_name = "NAME", num_args = 1.., value_delimiter = ',')]
    pub provision_with: Vec<String>,
    /// How many machines to work on at once.
    #[arg(long, short, default_value_t = 4, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub jobs: u16,
    /// Fail instead of changing Envfile.lock.
    #[arg(long)]
    pub locked: bool,
    /// Keep a machine that failed to come up, for debugging.
    #[arg(long)]
    pub no_destroy_on_error: bool,
}

#[derive(Debug, Args)]
pub struct HaltArgs {
    #[arg(value_name = "MACHINE")]
    pub machines: Vec<String>,
    /// Stop at once, without a graceful shutdown.
    #[arg(long, short)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct DestroyArgs {
    #[arg(value_name = "MACHINE")]
    pub machines: Vec<String>,
    /// Do not ask for confirmation.
    #[arg(long, short)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct ProvisionArgs {
    #[arg(value_name = "MACHINE")]
    pub machines: Vec<String>,
    /// Run only these provisioners.
    #[arg(long, value_name = "NAME", num_args = 1.., value_delimiter = ',')]
    pub with: Vec<String>,
}

#[derive(Debug, Args)]
pub struct GlobalStatusArgs {
    /// Drop entries whose project or machine no longer exists.
    #[arg(long)]
    pub prune: bool,
}

#[derive(Debug, Args)]
pub struct SshArgs {
    /// The machine (default: the primary one).
    pub machine: Option<String>,
    /// A command to run instead of a shell.
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    pub machine: String,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct UploadArgs {
    pub machine: String,
    /// A host file or directory.
    pub src: PathBuf,
    /// Where to put it on the machine.
    pub dst: String,
}

#[derive(Debug, Args)]
pub struct PortArgs {
    /// The machine (default: all).
    pub machine: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Save a snapshot.
    Save { machine: String, name: String },
    /// Go back to a snapshot.
    Restore { machine: String, name: String },
    /// List a machine's snapshots.
    List { machine: String },
    /// Delete a snapshot.
    Delete { machine: String, name: String },
}

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// List the backend plugins found, where, and whether envup can use them.
    List,
    /// Drive a plugin through a whole machine lifecycle on a real box, and
    /// report each step.
    Check {
        /// The plugin's backend name (`envup-backend-NAME`).
        name: String,
        /// The box to make the machine from.
        #[arg(long = "box", default_value = "tiny", value_name = "BOX")]
        box_: String,
        /// Leave the machine up at the end (its project directory is printed).
        #[arg(long)]
        keep: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum BoxCommand {
    /// Add a box from a catalog name, a URL or a file.
    #[command(disable_version_flag = true)]
    Add {
        /// A catalog name, a URL, or a path to a .box file.
        source: std::ffi::OsString,
        /// The sha256 the box file must have (sha256:HEX).
        #[arg(long, value_name = "sha256:HEX")]
        checksum: Option<String>,
        /// The name to store it under.
        #[arg(long)]
        name: Option<String>,
        /// The version to store it under.
        #[arg(long = "version", id = "box_version", value_name = "V")]
        version: Option<String>,
    },
    /// List stored boxes.
    List,
    /// Remove a stored box.
    #[command(disable_version_flag = true)]
    Remove {
        name: String,
        /// Only this version.
        #[arg(long = "version", id = "box_version", value_name = "V")]
        version: Option<String>,
        /// Remove it even if machines use it.
        #[arg(long)]
        force: bool,
    },
    /// Remove boxes no machine uses and older versions.
    Prune,
    /// Hash stored boxes again and compare.
    Verify { name: Option<String> },
    /// Build a box from a recipe in boxes/.
    Build {
        recipe: String,
        /// Where to write the .box file.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Parse the command line, run the command, print any error once, and
/// return the exit code.
pub fn main() -> std::process::ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == crate::userns::HELPER) {
        return std::process::ExitCode::from(crate::userns::helper_main(&args[2..]));
    }
    let cli = Cli::parse();
    let choice = match cli.color {
        ColorChoice::Always => anstream::ColorChoice::Always,
        ColorChoice::Never => anstream::ColorChoice::Never,
        ColorChoice::Auto => anstream::ColorChoice::Auto,
    };
    choice.write_global();
    init_logging(cli.verbose);
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            error::print(&e);
            e.exit_code()
        }
    };
    std::process::ExitCode::from(code.0)
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => return,
        1 => tracing::Level::INFO,
        2 => tracing::Level::DEBUG,
        _ => tracing::Level::TRACE,
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(anstream::ColorChoice::global() != anstream::ColorChoice::Never)
        .with_target(false)
        .init();
}

fn run(cli: Cli) -> Result<ExitCode, CliError> {
    let app = App::new(&cli)?;
    use commands as c;
    match cli.command {
        Command::Init(a) => c::init::run(&app, &a),
        Command::Validate => c::validate::run(&app),
        Command::Plan(a) => c::plan::run(&app, &a),
        Command::Up(a) => c::up::run(&app, &a),
        Command::Halt(a) => c::halt::run(&app, &a),
        Command::Destroy(a) => c::destroy::run(&app, &a),
        Command::Reload(a) => c::reload::run(&app, &a),
        Command::Provision(a) => c::provision::run(&app, &a),
        Command::Status(a) => c::status::run(&app, &a),
        Command::GlobalStatus(a) => c::global_status::run(&app, &a),
        Command::Ssh(a) => c::ssh::run(&app, &a),
        Command::Exec(a) => c::exec::run(&app, &a),
        Command::SshConfig(a) => c::ssh_config::run(&app, &a),
        Command::Upload(a) => c::upload::run(&app, &a),
        Command::Port(a) => c::port::run(&app, &a),
        Command::Snapshot(a) => c::snapshot::run(&app, &a),
        Command::Box(a) => c::boxes::run(&app, &a),
        Command::Lock => c::lock::run(&app),
        Command::Update(a) => c::lock::update(&app, &a),
        Command::Doctor => c::doctor::run(&app),
        Command::Plugin(a) => c::plugin::run(&app, &a),
        Command::Completions(a) => c::completions::run(&a),
    }
}
