use serde_json::json;

use crate::cli::{App, CliError, ExitCode, GlobalStatusArgs};
use crate::state::index::{Entry, Index};
use crate::state::{MachineState, envup_home, read_json};
use crate::ui::{print_json, style};

/// The machine's status as its project records it, or `None` when the
/// project or the machine is gone.
fn recorded(entry: &Entry) -> Option<MachineState> {
    if !entry.root.join(crate::envfile::FILE_NAME).is_file() {
        return None;
    }
    read_json::<MachineState>(&entry.state_dir.join("state.json"))
        .ok()
        .flatten()
        .filter(|s| s.status != crate::state::Status::NotCreated)
}

pub fn run(app: &App, args: &GlobalStatusArgs) -> Result<ExitCode, CliError> {
    let index = Index::new(&envup_home()?);
    let pruned = if args.prune {
        index.prune(|e| recorded(e).is_none())?
    } else {
        Vec::new()
    };
    let entries = index.entries()?;
    let rows: Vec<(Entry, String)> = entries
        .into_iter()
        .map(|e| {
            let status = recorded(&e).map_or("gone".to_owned(), |s| {
                crate::backend::Registry::builtin()
                    .observed_status(&s)
                    .to_string()
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
    Ok(ExitCode::SUCCESS)
}
