//! `envup plugin list` and `envup plugin check`: what backend plugins were
//! found where, and the conformance kit that drives one through a whole
//! machine lifecycle on a real box.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::backend::plugin::{self, Plugin, protocol};
use crate::backend::{Backend, Registry};
use crate::cli::{App, CliError, ExitCode, PluginCommand};
use crate::ui::{print_json, style};

pub fn run(app: &App, cmd: &PluginCommand) -> Result<ExitCode, CliError> {
    match cmd {
        PluginCommand::List => list(app),
        PluginCommand::Check { name, box_, keep } => check(app, name, box_, *keep),
    }
}

/// What a plugin program found is to envup before it is run: refused (a
/// program another user could change), shadowed (a backend or plugin of
/// its name comes first), or the one used.
fn standing(found: &[plugin::Found]) -> Vec<Option<(&'static str, String)>> {
    let mut first: Vec<&str> = Vec::new();
    found
        .iter()
        .map(|f| {
            if let Some(why) = &f.refused {
                Some(("refused", format!("envup does not run it: {why}")))
            } else if Registry::is_built_in(&f.name) {
                Some((
                    "shadowed",
                    "the built-in backend of that name is used instead".to_string(),
                ))
            } else if first.contains(&f.name.as_str()) {
                Some((
                    "shadowed",
                    "a plugin of that name found earlier is used instead".to_string(),
                ))
            } else {
                first.push(&f.name);
                None
            }
        })
        .collect()
}

/// One plugin program found, and what it is to envup: for the one used,
/// what it says of itself (a refused or shadowed one is not run).
fn verdict(found: &plugin::Found, p: &Plugin, standing: Option<(&str, String)>) -> Value {
    let mut row = json!({
        "name": found.name,
        "path": found.path,
        "source": found.source,
    });
    if let Some((status, why)) = standing {
        row["status"] = json!(status);
        row[status] = json!(why);
        return row;
    }
    match p.described() {
        Ok(d) => {
            row["version"] = json!(d.description.version);
            row["protocols"] = json!(d.description.protocols);
            row["protocol"] = json!(d.protocol);
            row["artifacts"] = json!(d.description.artifacts);
            row["snapshots"] = json!(d.description.snapshots);
            row["status"] = json!("usable");
        }
        Err(e) => {
            let message = match e {
                crate::backend::BackendError::Plugin { message, .. } => message,
                other => other.to_string(),
            };
            let status = if message.starts_with("it speaks protocol") {
                "incompatible"
            } else {
                "broken"
            };
            row["status"] = json!(status);
            row["problem"] = json!(message);
        }
    }
    row
}

fn list(app: &App) -> Result<ExitCode, CliError> {
    let found = plugin::discover();
    let standing = standing(&found);
    // The plugins used are asked to describe themselves, all at once.
    let described: Vec<Plugin> = found.iter().map(Plugin::new).collect();
    std::thread::scope(|s| {
        for (p, st) in described.iter().zip(&standing) {
            if st.is_none() {
                s.spawn(|| {
                    let _ = p.described();
                });
            }
        }
    });
    let rows: Vec<Value> = found
        .iter()
        .zip(&described)
        .zip(standing)
        .map(|((f, p), st)| verdict(f, p, st))
        .collect();
    if app.mode.json {
        print_json(&json!({
            "plugins": rows,
            "searched": plugin::search_dirs().iter().map(|(s, d)| json!({"dir": d, "source": s})).collect::<Vec<_>>(),
            "protocols": protocol::PROTOCOLS,
        }));
        return Ok(ExitCode::SUCCESS);
    }
    let (b, ok, err, dim) = (style::BOLD, style::OK, style::ERROR, style::DIM);
    if rows.is_empty() {
        println!("No backend plugins found.");
    }
    for (r, f) in rows.iter().zip(&found) {
        let s = |k: &str| r[k].as_str().unwrap_or("").to_owned();
        let state = match s("status").as_str() {
            "usable" => format!("{ok}usable{ok:#}"),
            other => format!("{err}{other}{err:#}"),
        };
        let version = if r["version"].is_string() {
            format!(
                " {} (protocol {})",
                crate::ident::printable(&s("version")),
                r["protocol"]
            )
        } else {
            String::new()
        };
        anstream::println!("{b}{}{b:#}{version}: {state}", f.name);
        anstream::println!(
            "  {dim}at{dim:#} {} {dim}({}){dim:#}",
            f.path.display(),
            f.source.label()
        );
        for k in ["shadowed", "refused", "problem"] {
            if r[k].is_string() {
                anstream::println!("  {}", crate::ident::printable(&s(k)));
            }
        }
    }
    anstream::println!("{dim}searched, in order:{dim:#} {}", plugin::searched());
    Ok(ExitCode::SUCCESS)
}

/// One step of the kit: passed or failed, what it found, how long it took.
struct Step {
    name: String,
    ok: Option<bool>,
    detail: String,
    took: Duration,
}

struct Kit<'a> {
    app: &'a App,
    steps: Vec<Step>,
}

impl Kit<'_> {
    fn record(&mut self, name: &str, started: Instant, result: Result<String, String>) -> bool {
        let took = started.elapsed();
        let (ok, detail) = match result {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        if !self.app.mode.json {
            let (okc, err, dim) = (style::OK, style::ERROR, style::DIM);
            let mark = if ok {
                format!("{okc}pass{okc:#}")
            } else {
                format!("{err}FAIL{err:#}")
            };
            anstream::println!(
                "{mark} {name:<18} {dim}{:>7.2} s{dim:#} {}",
                took.as_secs_f64(),
                detail.lines().next().unwrap_or("")
            );
            for more in detail.lines().skip(1) {
                anstream::println!("                            {more}");
            }
        }
        self.steps.push(Step {
            name: name.into(),
            ok: Some(ok),
            detail,
            took,
        });
        ok
    }

    fn skip(&mut self, name: &str, why: &str) {
        if !self.app.mode.json {
            let dim = style::DIM;
            anstream::println!("{dim}skip {name:<18}           {why}{dim:#}");
        }
        self.steps.push(Step {
            name: name.into(),
            ok: None,
            detail: why.into(),
            took: Duration::ZERO,
        });
    }

    fn step(&mut self, name: &str, f: impl FnOnce() -> Result<String, String>) -> bool {
        let started = Instant::now();
        let r = f();
        self.record(name, started, r)
    }
}

/// Run envup itself in the kit's project; its stdout, or its stderr as
/// the failure.
fn envup(project: &Path, args: &[&str]) -> Result<String, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find envup itself: {e}"))?;
    let out = Command::new(exe)
        .arg("-C")
        .arg(project)
        .arg("--color=never")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run envup: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let text = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = text.trim().lines().rev().take(6).collect();
        Err(format!(
            "`envup {}` failed: {}",
            args.join(" "),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ))
    }
}

/// The machine's status as `envup status --json` says it.
fn status_is(project: &Path, want: &str) -> Result<String, String> {
    let out = envup(project, &["--json", "status"])?;
    let v: Value = serde_json::from_str(&out).map_err(|e| format!("status --json: {e}"))?;
    let got = v["machines"][0]["status"]
        .as_str()
        .unwrap_or("?")
        .to_owned();
    if got == want {
        Ok(format!("status says {got}"))
    } else {
        Err(format!("status says {got}, not {want}"))
    }
}

fn expect_output(project: &Path, script: &str, want: &str) -> Result<String, String> {
    let out = envup(project, &["exec", "check", "--", "sh", "-c", script])?;
    if out.trim() == want {
        Ok(format!("`{script}` printed {want}"))
    } else {
        Err(format!("`{script}` printed {:?}, not {want:?}", out.trim()))
    }
}

fn check(app: &App, name: &str, box_: &str, keep: bool) -> Result<ExitCode, CliError> {
    let found = plugin::discover()
        .into_iter()
        .find(|f| f.name == name)
        .ok_or_else(|| {
            CliError::Usage(format!(
                "no plugin `{}{name}` was found in {}",
                plugin::PREFIX,
                plugin::searched()
            ))
        })?;
    if Registry::is_built_in(name) {
        return Err(CliError::Usage(format!(
            "`{name}` is a built-in backend; a plugin of that name is never used"
        )));
    }
    if let Some(why) = &found.refused {
        return Err(CliError::Failed(format!(
            "envup does not run {}: {why}",
            found.path.display()
        )));
    }
    let p = Plugin::new(&found);
    let mut kit = Kit {
        app,
        steps: Vec::new(),
    };
    if !app.mode.json {
        let dim = style::DIM;
        anstream::println!("Checking {} {dim}(box {box_}){dim:#}", found.path.display());
    }

    let mut snapshots = false;
    let described = kit.step("describe", || {
        let d = p.described().map_err(|e| e.to_string())?;
        snapshots = d.description.snapshots;
        if d.description.artifacts.is_empty() {
            return Err("it names no box artifact it runs".into());
        }
        Ok(format!(
            "{} {}, protocol {}, runs {}",
            d.description.name,
            crate::ident::printable(&d.description.version),
            d.protocol,
            d.description.artifacts.join(", ")
        ))
    });
    if !described {
        return finish(app, kit, name);
    }
    let protocol = p.described().map(|d| d.protocol).unwrap_or(1);
    kit.step("unknown operation", || {
        match protocol::call(
            p.path(),
            "envup-check-no-such-operation",
            protocol,
            serde_json::Map::new(),
            protocol::deadline("status"),
        ) {
            Err(protocol::CallError::Fault(f)) if f.kind == "unsupported" => {
                Ok("answered `unsupported`".into())
            }
            Err(e) => Err(format!("expected an `unsupported` error: {e}")),
            Ok(v) => Err(format!("expected an `unsupported` error, got ok {v}")),
        }
    });
    let ready = kit.step("probe", || {
        let (ready, checks) = p.probe();
        let lines: Vec<String> = checks
            .iter()
            .map(|c| format!("{} {}: {}", if c.ok { "✓" } else { "✗" }, c.what, c.detail))
            .collect();
        if ready {
            Ok(lines.join("\n"))
        } else {
            Err(format!(
                "the host is not ready for it\n{}",
                lines.join("\n")
            ))
        }
    });
    if !ready {
        return finish(app, kit, name);
    }

    // The lifecycle, through envup itself, in a project of its own.
    let dir = tempfile::Builder::new()
        .prefix("envup-plugin-check-")
        .tempdir()
        .map_err(|source| CliError::Io {
            what: "make a project directory for the check".into(),
            source,
        })?;
    let project = dir.path();
    let envfile = format!(
        "[project]\nname = \"plugin-check\"\nnetwork = \"none\"\n\n\
         [machines.check]\nbox = \"{box_}\"\nbackend = \"{name}\"\n\
         hostname = \"envup-check\"\n\n\
         [[machines.check.provision]]\nname = \"mark\"\n\
         shell = \"echo provisioned > \\\"$HOME/envup-check\\\"\"\n"
    );
    std::fs::write(project.join("Envfile"), envfile).map_err(|source| CliError::Io {
        what: "write the check's Envfile".into(),
        source,
    })?;

    let up = kit.step("up", || {
        envup(project, &["up"]).map(|_| "created, started, provisioned".into())
    });
    if up {
        kit.step("ssh", || expect_output(project, "hostname", "envup-check"));
        kit.step("provisioner", || {
            expect_output(project, "cat \"$HOME/envup-check\"", "provisioned")
        });
        kit.step("status running", || status_is(project, "running"));
        let halted = kit.step("halt", || {
            envup(project, &["halt"]).map(|_| "stopped".into())
        });
        if halted {
            kit.step("status stopped", || status_is(project, "stopped"));
            let again = kit.step("up again", || {
                envup(project, &["up"]).map(|_| "started again".into())
            });
            if again {
                kit.step("kept its disk", || {
                    expect_output(project, "cat \"$HOME/envup-check\"", "provisioned")
                });
            }
        }
        if snapshots {
            snapshot_steps(&mut kit, project);
        } else {
            kit.skip("snapshots", "the plugin does not offer them");
        }
    }
    if keep && up {
        kit.skip("destroy", "--keep: the machine is left up");
        if !app.mode.json {
            println!("The machine is left in {}", dir.keep().display());
        }
        return finish(app, kit, name);
    }
    kit.step("destroy", || {
        envup(project, &["destroy", "--force"])?;
        status_is(project, "not_created")?;
        Ok("removed".into())
    });
    finish(app, kit, name)
}

fn snapshot_steps(kit: &mut Kit<'_>, project: &Path) {
    let saved = kit.step("snapshot save", || {
        envup(project, &["snapshot", "save", "check", "before"]).map(|_| "saved".into())
    });
    if !saved {
        return;
    }
    kit.step("snapshot list", || {
        let out = envup(project, &["snapshot", "list", "check"])?;
        if out.lines().any(|l| l.trim() == "before") {
            Ok("lists it".into())
        } else {
            Err(format!("`before` is not in {:?}", out.trim()))
        }
    });
    kit.step("snapshot restore", || {
        envup(
            project,
            &[
                "exec",
                "check",
                "--",
                "sh",
                "-c",
                "echo changed > \"$HOME/envup-check\"",
            ],
        )?;
        envup(project, &["snapshot", "restore", "check", "before"])?;
        expect_output(project, "cat \"$HOME/envup-check\"", "provisioned")
    });
    kit.step("snapshot delete", || {
        envup(project, &["snapshot", "delete", "check", "before"])?;
        let out = envup(project, &["snapshot", "list", "check"])?;
        if out.lines().any(|l| l.trim() == "before") {
            Err("it is still listed".into())
        } else {
            Ok("gone".into())
        }
    });
}

fn finish(app: &App, kit: Kit<'_>, name: &str) -> Result<ExitCode, CliError> {
    let failed: Vec<&str> = kit
        .steps
        .iter()
        .filter(|s| s.ok == Some(false))
        .map(|s| s.name.as_str())
        .collect();
    if app.mode.json {
        print_json(&json!({
            "plugin": name,
            "passed": failed.is_empty(),
            "steps": kit.steps.iter().map(|s| json!({
                "step": s.name,
                "result": match s.ok { Some(true) => "pass", Some(false) => "fail", None => "skip" },
                "detail": s.detail,
                "seconds": s.took.as_secs_f64(),
            })).collect::<Vec<_>>(),
        }));
    }
    if failed.is_empty() {
        if !app.mode.json {
            println!("Plugin `{name}` passed every step.");
        }
        Ok(ExitCode::SUCCESS)
    } else {
        Err(CliError::Failed(format!(
            "plugin `{name}` failed: {}",
            failed.join(", ")
        )))
    }
}
