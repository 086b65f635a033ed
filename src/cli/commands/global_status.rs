use serde_json::json;

use crate::cli::{App, CliError, ExitCode, GlobalStatusArgs};
use crate::state::index::{Entry, Index};
use crate::state::{MachineState, ProjectState, envup_home};
use crate::ui::{print_json, style};

/// The machine's state as its project's state directory records it, or
/// `None` when the machine is gone. The state lives under `ENVUP_HOME`, so
/// a machine whose project directory was deleted still has it.
fn recorded(entry: &Entry) -> Option<MachineState> {
    project_of(entry)?
        .load(&entry.machine)
        .ok()
        .flatten()
        .filter(|s| s.status != crate::state::Status::NotCreated)
}

/// The project state `entry` belongs to, if the index names the machine's
/// state directory where envup keeps it (the index is only a list; what it
/// says is checked).
fn project_of(entry: &Entry) -> Option<ProjectState> {
    if !crate::envfile::validate::valid_machine_name(&entry.machine) {
        return None;
    }
    let home = envup_home().ok()?;
    [
        ProjectState::of(&home, &entry.root),
        ProjectState::in_project(&entry.root),
    ]
    .into_iter()
    .find(|p| p.machine_dir(&entry.machine) == entry.state_dir)
}

/// Whether `entry`'s project directory (its Envfile) is gone.
fn project_gone(entry: &Entry) -> bool {
    !entry.root.join(crate::envfile::FILE_NAME).is_file()
}

/// Destroy a machine whose project directory is gone, from its state alone:
/// its backend takes it away by the names envup derives, it leaves its
/// project network (the last one takes the bridge and the claim), and its
/// state goes; a project state with no machine left goes too.
fn destroy_orphan(entry: &Entry, state: &MachineState) -> Result<(), String> {
    let chain = |e: &dyn std::error::Error| crate::cli::error::chain(e);
    let project = project_of(entry).ok_or("its state is not where envup keeps it")?;
    let _lock = project
        .lock(std::time::Duration::from_secs(30), &|_| {})
        .map_err(|e| chain(&e))?;
    let registry = crate::backend::Registry::builtin();
    let backend = registry.for_state(state).map_err(|e| chain(&e))?;
    match backend.destroy(state) {
        Ok(()) | Err(crate::backend::BackendError::NotOurs(_)) => {}
        Err(e) => return Err(chain(&e)),
    }
    let net = crate::network::Net::orphaned(project.dir());
    net.detach(&entry.machine).map_err(|e| chain(&e))?;
    project.remove(&entry.machine).map_err(|e| chain(&e))?;
    let empty =
        std::fs::read_dir(project.dir().join("machines")).map_or(true, |mut d| d.next().is_none());
    if empty && !project.is_legacy() {
        let _ = std::fs::remove_dir_all(project.dir());
    }
    Ok(())
}

pub fn run(app: &App, args: &GlobalStatusArgs) -> Result<ExitCode, CliError> {
    let index = Index::new(&envup_home()?);
    let mut failed = 0;
    let pruned = if args.prune {
        // Machines whose project directory is gone are destroyed first;
        // one that cannot be keeps its entry, and the user is told.
        for e in index.entries()?.iter().filter(|e| project_gone(e)) {
            if let Some(state) = recorded(e)
                && let Err(why) = destroy_orphan(e, &state)
            {
                failed += 1;
                anstream::eprintln!(
                    "error: machine `{}` of {} (its project directory is gone) could not be destroyed: {why}",
                    e.machine,
                    e.root.display()
                );
            }
        }
        index.prune(|e| recorded(e).is_none())?
    } else {
        Vec::new()
    };
    let entries = index.entries()?;
    let rows: Vec<(Entry, String)> = entries
        .into_iter()
        .map(|e| {
            let status = recorded(&e).map_or("gone".to_owned(), |s| {
                let seen = crate::backend::Registry::builtin()
                    .observed_status(&s)
                    .to_string();
                if project_gone(&e) {
                    format!("{seen}, no project")
                } else {
                    seen
                }
            });
            (e, status)
        })
        .collect();
    if app.mode.json {
        let machines: Vec<_> = rows
            .iter()
            .map(|(e, status)| {
                json!({
                    "project": e.project, "root": e.root.to_string_lossy(), "machine": e.machine,
                    "backend": e.backend, "status": status,
                })
            })
            .collect();
        print_json(&json!({ "machines": machines, "pruned": pruned.len() }));
        return Ok(ExitCode::SUCCESS);
    }
    if args.prune {
        anstream::println!(
            "pruned {} entr{}",
            pruned.len(),
            if pruned.len() == 1 { "y" } else { "ies" }
        );
    }
    if rows.is_empty() {
        anstream::println!("envup knows no machines on this host");
        return Ok(ExitCode::SUCCESS);
    }
    let b = style::BOLD;
    let w_proj = rows
        .iter()
        .map(|(e, _)| e.project.len())
        .max()
        .unwrap_or(0)
        .max(7);
    let w_mach = rows
        .iter()
        .map(|(e, _)| e.machine.len())
        .max()
        .unwrap_or(0)
        .max(7);
    anstream::println!(
        "{b}{:<w_proj$}  {:<w_mach$}  {:<9}  {:<11}  directory{b:#}",
        "project",
        "machine",
        "backend",
        "status"
    );
    for (e, status) in &rows {
        anstream::println!(
            "{:<w_proj$}  {:<w_mach$}  {:<9}  {:<11}  {}",
            e.project,
            e.machine,
            e.backend,
            status,
            e.root.display()
        );
    }
    if rows.iter().any(|(_, s)| s == "gone") {
        anstream::println!("\n`envup global-status --prune` drops the entries marked gone");
    }
    if rows.iter().any(|(_, s)| s.ends_with("no project")) {
        anstream::println!(
            "\nmachines marked `no project` outlived their project directory; \
             `envup global-status --prune` destroys them"
        );
    }
    if failed > 0 {
        return Err(CliError::Failed(format!(
            "{failed} machine(s) could not be destroyed; see above"
        )));
    }
    Ok(ExitCode::SUCCESS)
}
