use crate::backend::{self, Support};
use crate::cli::{App, CliError, ExitCode};
use crate::ui::{print_json, style};

/// Probe the host for each backend. Exits 0 when at least one backend can
/// run machines here.
pub fn run(app: &App) -> Result<ExitCode, CliError> {
    let report = backend::Registry::builtin().probe_all();
    let usable: Vec<&Support> = report.iter().filter(|s| s.usable()).collect();
    let (net_ready, net_checks) = crate::network::probe();
    if app.mode.json {
        print_json(&serde_json::json!({
            "backends": report,
            "network": { "ready": net_ready, "checks": net_checks },
        }));
    } else {
        let (b, ok, err, dim) = (style::BOLD, style::OK, style::ERROR, style::DIM);
        for s in &report {
            let verdict = match (s.host_ready, s.built) {
                (true, true) => format!("{ok}ready{ok:#}"),
                (true, false) => format!(
                    "{err}not in this build{err:#} {dim}(the host has what it needs){dim:#}"
                ),
                (false, _) => format!("{err}missing requirements{err:#}"),
            };
            anstream::println!("{b}{}{b:#}: {verdict}", s.backend);
            for c in &s.checks {
                print_check(c);
            }
        }
        let verdict = if net_ready {
            format!("{ok}ready{ok:#}")
        } else {
            format!("{err}not available{err:#}")
        };
        anstream::println!("{b}project network{b:#}: {verdict}");
        for c in &net_checks {
            print_check(c);
        }
    }
    if usable.is_empty() {
        return Err(CliError::Failed(
            "no backend can run machines on this host with this build of envup".into(),
        ));
    }
    Ok(ExitCode::SUCCESS)
}

fn print_check(c: &backend::Check) {
    let (ok, err, dim) = (style::OK, style::ERROR, style::DIM);
    let mark = if c.ok {
        format!("{ok}✓{ok:#}")
    } else {
        format!("{err}✗{err:#}")
    };
    anstream::println!("  {mark} {:<10} {}", c.what, c.detail);
    if let Some(fix) = &c.fix {
        anstream::println!("    {dim}fix:{dim:#} {fix}");
    }
}
