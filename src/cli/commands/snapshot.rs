use crate::cli::{App, CliError, ExitCode, SnapshotCommand};

/// Snapshot names become image tags and file names: keep them plain.
fn check_name(name: &str) -> Result<(), CliError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        && !name.starts_with(['.', '-']);
    if ok {
        Ok(())
    } else {
        Err(CliError::Usage(format!(
            "snapshot name `{name}` is not valid: use up to 64 letters, digits, `_`, `.` or `-`, not starting with `.` or `-`"
        )))
    }
}

pub fn run(app: &App, cmd: &SnapshotCommand) -> Result<ExitCode, CliError> {
    let config = app.config()?;
    let machine = match cmd {
        SnapshotCommand::Save { machine, .. }
        | SnapshotCommand::Restore { machine, .. }
        | SnapshotCommand::List { machine }
        | SnapshotCommand::Delete { machine, .. } => machine,
    };
    crate::cli::context::check_machine(&config, machine)?;
    let project = app.project(&config)?;
    let reporter = app.reporter();
    let _lock = app.lock(&project, &*reporter)?;
    let mut state = super::created_machine(&project, machine)?;
    let backend = crate::backend::Registry::builtin().for_state(&state)?;
    let say = |text: String| {
        if app.mode.json {
            anstream::println!(
                "{}",
                serde_json::json!({ "machine": machine, "result": text })
            );
        } else if !app.mode.quiet {
            anstream::println!("{text}");
        }
    };
    match cmd {
        SnapshotCommand::Save { name, .. } => {
            check_name(name)?;
            if backend.snapshot_list(&state)?.contains(name) {
                return Err(CliError::Failed(format!(
                    "machine `{machine}` already has a snapshot `{name}`; delete it first"
                )));
            }
            backend.snapshot_save(&state, name)?;
            say(format!("saved snapshot `{name}` of {machine}"));
        }
        SnapshotCommand::Restore { name, .. } => {
            check_name(name)?;
            // It joins its network again once it answers (below); until
            // then, for an `up` after a kill, it has not: recorded first.
            state.joined = None;
            project.save(&state)?;
            backend.snapshot_restore(&config.machines[machine.as_str()], &mut state, name)?;
            project.save(&state)?;
            // A running machine is back when it answers SSH again.
            if backend.status(&state)? == crate::state::Status::Running
                && let Some(ep) = &state.ssh
            {
                let keys = crate::ssh::MachineKeys::ensure(&project.machine_dir(machine), machine)
                    .map_err(|e| CliError::Failed(crate::cli::error::chain(&e)))?;
                let m = &config.machines[machine.as_str()];
                let ssh = crate::ssh::Ssh::wait(
                    ep,
                    backend.dial(&state).as_ref(),
                    &keys,
                    m.boot_timeout,
                    crate::ssh::Watch::default(),
                )?;
                // Its network was made anew: it joins the project's again.
                let net = crate::network::Net::new(&config, project.dir());
                crate::ops::rejoin(&config, &net, backend, &mut state, &ssh)
                    .map_err(|e| CliError::Failed(crate::cli::error::chain(&e)))?;
                project.save(&state)?;
            }
            say(format!("restored {machine} to snapshot `{name}`"));
        }
        SnapshotCommand::Delete { name, .. } => {
            check_name(name)?;
            backend.snapshot_delete(&state, name)?;
            say(format!("deleted snapshot `{name}` of {machine}"));
        }
        SnapshotCommand::List { .. } => {
            let names = backend.snapshot_list(&state)?;
            if app.mode.json {
                anstream::println!(
                    "{}",
                    serde_json::json!({ "machine": machine, "snapshots": names })
                );
            } else if names.is_empty() {
                anstream::println!("{machine} has no snapshots");
            } else {
                for n in names {
                    anstream::println!("{n}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::check_name;

    #[test]
    fn snapshot_names() {
        for good in ["before-upgrade", "v1.2", "a_b"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-x", ".x", "a/b", "a b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
