use crate::cli::{App, CliError, ExitCode, PlanArgs};
use crate::plan::{Action, ProvisionChoice, Step, plan_up};
use crate::ui::{print_json, style};

pub fn run(app: &App, args: &PlanArgs) -> Result<ExitCode, CliError> {
    let config = app.config()?;
    let selected = app.select_with_dependencies(&config, &args.machines)?;
    crate::cli::context::check_provisioners(&config, &selected, &args.provision_with)?;
    let project = app.project(&config)?;
    let choice = ProvisionChoice {
        skip_all: args.no_provision,
        only: args.provision_with.clone(),
    };
    let mut plans = Vec::new();
    for name in &selected {
        // Plan from what the backend sees, as `up` does.
        let state = project.load(name)?.map(|mut s| {
            s.status = crate::backend::Registry::builtin().observed_status(&s);
            s
        });
        let m = &config.machines[name];
        let mut plan = plan_up(m, state.as_ref(), &choice);
        // What the machine's backend cannot ensure.
        let registry = crate::backend::Registry::builtin();
        let backend = match &state {
            Some(s) if s.status != crate::state::Status::NotCreated => registry.for_state(s).ok(),
            _ => registry.for_machine(m).ok().map(|(b, _)| b),
        };
        if let Some(b) = backend {
            plan.notes.extend(b.warnings(m));
        }
        plans.push(plan);
    }
    if app.mode.json {
        print_json(&plans);
        return Ok(ExitCode::SUCCESS);
    }
    let (mc, ok, dim, warn) = (style::MACHINE, style::OK, style::DIM, style::WARN);
    let line = |sign: &str, s: &Step| {
        let what = match &s.action {
            Action::CleanUp => "clean up".to_owned(),
            Action::Create => "create".to_owned(),
            Action::Start => "start".to_owned(),
            Action::Provision { name } => format!("provision {name}"),
        };
        format!("{sign}{what:<24} {}", s.why)
    };
    for p in &plans {
        anstream::println!("{mc}{}{mc:#} ({})", p.machine, p.status);
        if p.is_noop() {
            anstream::println!("  = nothing to do");
        }
        for s in &p.steps {
            anstream::println!("  {ok}{}{ok:#}", line("+ ", s));
        }
        for s in &p.skipped {
            anstream::println!("  {dim}{}{dim:#}", line("- ", s));
        }
        for n in &p.notes {
            anstream::println!("  {warn}! {n}{warn:#}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
