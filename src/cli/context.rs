//! What every command gets: where it runs, how to print, and the Envfile.

use std::path::PathBuf;

use super::{Cli, CliError};
use crate::envfile::diag::did_you_mean;
use crate::envfile::{self, Config};
use crate::state::lock::{FileLock, timeout_from_env};
use crate::state::{ProjectState, StateError};
use crate::ui::{self, OutputMode, Reporter};

pub struct App {
    pub cwd: PathBuf,
    envfile: Option<PathBuf>,
    pub mode: OutputMode,
}

impl App {
    pub fn new(cli: &Cli) -> Result<Self, CliError> {
        if let Some(dir) = &cli.dir {
            std::env::set_current_dir(dir).map_err(CliError::io(format!(
                "change to directory {} (given with -C)",
                dir.display()
            )))?;
        }
        let cwd = std::env::current_dir().map_err(CliError::io("find the current directory"))?;
        Ok(Self {
            cwd,
            envfile: cli.envfile.clone(),
            mode: OutputMode {
                json: cli.json,
                quiet: cli.quiet,
            },
        })
    }

    /// The project's Envfile, found, rendered and checked.
    pub fn config(&self) -> Result<Config, CliError> {
        let path = envfile::find(&self.cwd, self.envfile.as_deref())?;
        Ok(envfile::load(&path)?)
    }

    /// The project's state: in its directory under `ENVUP_HOME`, moved
    /// there first from the project's `.envup/` where an earlier envup kept
    /// it (`relocate`).
    pub fn project(&self, config: &Config) -> Result<ProjectState, CliError> {
        use crate::relocate::{Relocated, relocate};
        let home = crate::state::envup_home()?;
        let project = ProjectState::of(&home, &config.root);
        let index = crate::state::index::Index::new(&home);
        let note = |text: &str| self.reporter().note(text);
        Ok(match relocate(&project, &index)? {
            Relocated::Nothing => project,
            Relocated::Moved(from, to) => {
                note(&format!(
                    "moved this project's state from {} to {}, where no share of the project \
                     shows it to machines",
                    from.display(),
                    to.display()
                ));
                project
            }
            Relocated::NotOurs(why) => {
                note(&why);
                project
            }
            Relocated::Stays(why) => {
                note(&why);
                if project.dir().join("machines").exists() {
                    project
                } else {
                    ProjectState::in_project(&config.root)
                }
            }
        })
    }

    pub fn reporter(&self) -> Box<dyn Reporter> {
        ui::reporter(self.mode)
    }

    /// Take the project lock, telling the user if another envup holds it.
    pub fn lock(
        &self,
        project: &ProjectState,
        reporter: &dyn Reporter,
    ) -> Result<FileLock, StateError> {
        project.lock(timeout_from_env(), &|holder| {
            let who = holder.map(|p| format!(" (pid {p})")).unwrap_or_default();
            reporter.note(&format!(
                "waiting for another envup{who} to finish in this project…"
            ));
        })
    }

    /// The machines named on the command line, checked; all when none are.
    pub fn select(&self, config: &Config, names: &[String]) -> Result<Vec<String>, CliError> {
        if names.is_empty() {
            return Ok(config.machines.keys().cloned().collect());
        }
        let mut out: Vec<String> = Vec::new();
        for n in names {
            check_machine(config, n)?;
            if !out.contains(n) {
                out.push(n.clone());
            }
        }
        Ok(out)
    }

    /// The machines `up` works on: those named (or every autostart machine)
    /// and everything they depend on, in Envfile order.
    pub fn select_with_dependencies(
        &self,
        config: &Config,
        names: &[String],
    ) -> Result<Vec<String>, CliError> {
        let roots: Vec<String> = if names.is_empty() {
            config
                .machines
                .values()
                .filter(|m| m.autostart)
                .map(|m| m.name.clone())
                .collect()
        } else {
            self.select(config, names)?
        };
        let mut wanted: Vec<&str> = Vec::new();
        let mut stack: Vec<&str> = roots.iter().map(String::as_str).collect();
        while let Some(n) = stack.pop() {
            if !wanted.contains(&n) {
                wanted.push(n);
                stack.extend(config.machines[n].depends_on.iter().map(String::as_str));
            }
        }
        Ok(config
            .machine_names()
            .filter(|n| wanted.contains(n))
            .map(str::to_owned)
            .collect())
    }
}

/// A usage error for a provisioner name that none of `machines` has.
pub fn check_provisioners(
    config: &Config,
    machines: &[String],
    names: &[String],
) -> Result<(), CliError> {
    let known: Vec<&str> = machines
        .iter()
        .flat_map(|m| {
            config.machines[m]
                .provisioners
                .iter()
                .map(|p| p.name.as_str())
        })
        .collect();
    for n in names {
        if !known.contains(&n.as_str()) {
            let hint = did_you_mean(n, known.iter().copied())
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
            return Err(CliError::Usage(format!(
                "no provisioner named `{n}` on {}{hint}; the provisioners are: {}",
                machines.join(", "),
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            )));
        }
    }
    Ok(())
}

/// A usage error for a machine name the Envfile does not have.
pub fn check_machine(config: &Config, name: &str) -> Result<(), CliError> {
    if config.machines.contains_key(name) {
        return Ok(());
    }
    let known: Vec<&str> = config.machine_names().collect();
    let hint = did_you_mean(name, known.iter().copied())
        .map(|s| format!(" (did you mean `{s}`?)"))
        .unwrap_or_default();
    Err(CliError::Usage(format!(
        "no machine named `{name}` in {}{hint}; the machines are: {}",
        config.path.display(),
        known.join(", ")
    )))
}
