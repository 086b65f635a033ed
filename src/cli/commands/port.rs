use serde_json::json;

use crate::cli::{App, CliError, ExitCode, PortArgs};
use crate::ui::{print_json, style};

/// Forwarded ports come from the Envfile; the SSH port from the machine's
/// state once it is created.
pub fn run(app: &App, args: &PortArgs) -> Result<ExitCode, CliError> {
    let config = app.config()?;
    let names: Vec<String> = args.machine.iter().cloned().collect();
    let selected = app.select(&config, &names)?;
    let project = app.project(&config)?;
    let mut out = Vec::new();
    for name in &selected {
        let m = &config.machines[name];
        let ssh = project.load(name)?.and_then(|s| s.ssh);
        out.push((m, ssh));
    }
    if app.mode.json {
        let v: Vec<_> = out
            .iter()
            .map(|(m, ssh)| json!({ "machine": m.name, "ssh": ssh, "forwards": m.forwards }))
            .collect();
        print_json(&v);
        return Ok(ExitCode::SUCCESS);
    }
    let mc = style::MACHINE;
    for (m, ssh) in &out {
        anstream::println!("{mc}{}{mc:#}", m.name);
        match ssh {
            Some(e) => anstream::println!("  {:>5} (ssh)   => {}:{}", 22, e.host, e.port),
            None => anstream::println!(
                "  {:>5} (ssh)   => assigned when the machine is created",
                22
            ),
        }
        for f in &m.forwards {
            let proto = f.protocol.name();
            anstream::println!(
                "  {:>5} (guest) => {}:{} ({proto})",
                f.guest,
                f.host_ip,
                f.host
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
