use serde_json::json;

use crate::backend;
use crate::cli::{App, CliError, ExitCode, MachinesArgs};
use crate::state::Status;
use crate::ui::{print_json, style};

pub fn run(app: &App, args: &MachinesArgs) -> Result<ExitCode, CliError> {
    let config = app.config()?;
    let selected = app.select(&config, &args.machines)?;
    let project = app.project(&config)?;
    // A damaged record shows no addresses here; `up` and `destroy` say
    // what is wrong with it.
    let network = crate::network::Record::load(project.dir()).ok().flatten();
    let address = |name: &str| network.as_ref().and_then(|r| r.machines.get(name)).copied();
    let mut rows = Vec::new();
    for name in &selected {
        let m = &config.machines[name];
        let state = project.load(name)?;
        let status = state.as_ref().map_or(Status::NotCreated, |s| {
            backend::Registry::builtin().observed_status(s)
        });
        let details: Vec<(String, String)> = state
            .as_ref()
            .and_then(|s| {
                backend::Registry::builtin()
                    .for_state(s)
                    .ok()
                    .map(|b| b.details(s))
            })
            .unwrap_or_default();
        rows.push((m, state, status, details));
    }
    if app.mode.json {
        let machines: Vec<_> = rows
            .iter()
            .map(|(m, s, status, details)| {
                json!({
                    "name": m.name,
                    "status": status,
                    "backend": s.as_ref().map_or(&m.backend, |s| &s.backend),
                    "box": m.box_,
                    "ssh": s.as_ref().and_then(|s| s.ssh.as_ref()),
                    "address": address(&m.name).map(|a| a.to_string()),
                    "forwards": m.forwards,
                    "details": details.iter().map(|(k, v)| (k.clone(), serde_json::Value::from(v.as_str()))).collect::<serde_json::Map<_, _>>(),
                })
            })
            .collect();
        print_json(&json!({
            "project": config.project,
            "root": config.root.to_string_lossy(),
            "state": project.dir().to_string_lossy(),
            "network": network.as_ref().map(|r| r.subnet.to_string()),
            "machines": machines,
        }));
        return Ok(ExitCode::SUCCESS);
    }
    let width = rows.iter().map(|(m, ..)| m.name.len()).max().unwrap_or(0);
    let (b, mc) = (style::BOLD, style::MACHINE);
    let net = network
        .as_ref()
        .map(|r| format!(", network {}", r.subnet))
        .unwrap_or_default();
    anstream::println!(
        "{b}project {}{b:#} ({}{net})",
        config.project,
        config.root.display()
    );
    for (m, s, status, details) in &rows {
        let mut backend = s.as_ref().map_or(&m.backend, |s| &s.backend).to_string();
        for (_, v) in details {
            backend.push_str(&format!(" ({v})"));
        }
        let ssh = s
            .as_ref()
            .and_then(|s| s.ssh.as_ref())
            .filter(|_| *status == Status::Running)
            .map(|e| format!("  ssh {}:{}", e.host, e.port))
            .unwrap_or_default();
        let pad = " ".repeat(width - m.name.len());
        let addr = address(&m.name).map_or(String::new(), |a| a.to_string());
        anstream::println!(
            "  {mc}{}{mc:#}{pad}  {:<12} {:<10} {:<15}{ssh}",
            m.name,
            status.to_string(),
            backend,
            addr
        );
    }
    Ok(ExitCode::SUCCESS)
}
