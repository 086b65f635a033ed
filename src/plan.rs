//! Desired (the Envfile) against actual (`.envup/` state): what `up` will do
//! to each machine, and why.

use serde::Serialize;
use serde_json::{Value, json};

use crate::envfile::Machine;
use crate::envfile::config::RunPolicy;
use crate::provision::content_hash;
use crate::state::{MachineState, Status};

/// What `up` does to bring a machine to its desired state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Remove what an interrupted create or destroy left.
    CleanUp,
    Create,
    Start,
    Provision {
        name: String,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    #[serde(flatten)]
    pub action: Action,
    pub why: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct MachinePlan {
    pub machine: String,
    pub status: Status,
    pub steps: Vec<Step>,
    /// Provisioners that will not run, and why.
    pub skipped: Vec<Step>,
    /// Things `up` will not change but the user may want to.
    pub notes: Vec<String>,
}

impl MachinePlan {
    pub fn is_noop(&self) -> bool {
        self.steps.is_empty()
    }
}

/// What provisioning `up` (or `provision`) should do.
#[derive(Debug, Clone, Default)]
pub struct ProvisionChoice {
    /// `--no-provision`.
    pub skip_all: bool,
    /// `--provision-with` / `--with`: only these, whatever their hashes say.
    pub only: Vec<String>,
}

/// The settings that need a reload to change, as recorded in state.
pub fn settings(m: &Machine) -> Value {
    json!({
        "box": m.box_,
        "box_version": m.box_version.as_ref().map(ToString::to_string),
        "backend": m.backend,
        "cpus": m.cpus,
        "memory": m.memory,
        "disk": m.disk,
        "hostname": m.hostname,
        "forwards": m.forwards,
        "shares": m.shares,
        "options": m.options.get(m.backend.as_str()).cloned().unwrap_or_default(),
    })
}

/// The settings a machine has after a start that applied `applies` (keys
/// of [`settings`]) from `current`: the others stay as `recorded`.
pub fn after_restart(recorded: &Value, current: &Value, applies: &[&str]) -> Value {
    let mut out = recorded.clone();
    if let (Some(out), Some(new)) = (out.as_object_mut(), current.as_object()) {
        for k in applies {
            if let Some(v) = new.get(*k) {
                out.insert((*k).to_owned(), v.clone());
            }
        }
    }
    out
}

/// The settings that differ.
pub fn changed_keys(recorded: &Value, current: &Value) -> Vec<String> {
    let (Some(old), Some(new)) = (recorded.as_object(), current.as_object()) else {
        return Vec::new();
    };
    new.iter()
        .filter(|(k, v)| old.get(*k).unwrap_or(&Value::Null) != *v)
        .map(|(k, _)| k.clone())
        .collect()
}

/// `key: old → new` for every setting that differs.
pub fn changed_settings(recorded: &Value, current: &Value) -> Vec<String> {
    let (Some(old), Some(new)) = (recorded.as_object(), current.as_object()) else {
        return Vec::new();
    };
    changed_keys(recorded, current)
        .into_iter()
        .map(|k| (old.get(&k).unwrap_or(&Value::Null), &new[&k], k))
        .map(|(o, v, k)| {
            // The recorded side comes from a state file: shown escaped.
            let show = |v: &Value| match v {
                Value::String(s) => crate::ident::printable(s).into_owned(),
                Value::Null => "unset".into(),
                other => crate::ident::printable(&other.to_string()).into_owned(),
            };
            format!("{k}: {} → {}", show(o), show(v))
        })
        .collect()
}

/// Which provisioners run, given the machine's recorded hashes.
pub fn provision_steps(
    m: &Machine,
    state: Option<&MachineState>,
    choice: &ProvisionChoice,
) -> (Vec<Step>, Vec<Step>) {
    let mut run = Vec::new();
    let mut skip = Vec::new();
    for p in &m.provisioners {
        let step = |why: String| Step {
            action: Action::Provision {
                name: p.name.clone(),
            },
            why,
        };
        let named = choice.only.iter().any(|n| n == &p.name);
        if choice.skip_all {
            skip.push(step("--no-provision".into()));
        } else if !choice.only.is_empty() {
            if named {
                run.push(step("asked for by name".into()));
            } else {
                skip.push(step("not among the provisioners asked for".into()));
            }
        } else {
            match p.run {
                RunPolicy::Never => skip.push(step(
                    "run = \"never\" (runs only when asked for by name)".into(),
                )),
                RunPolicy::Always => run.push(step("run = \"always\"".into())),
                RunPolicy::Once => {
                    let last = state.and_then(|s| s.provisioned.get(&p.name));
                    match (content_hash(p), last) {
                        (Err(e), _) => {
                            run.push(step(format!("cannot read its files to compare ({e})")));
                        }
                        (Ok(_), None) => run.push(step("has not run on this machine".into())),
                        (Ok(h), Some(old)) if &h != old => {
                            run.push(step("changed since it last ran".into()));
                        }
                        (Ok(_), Some(_)) => skip.push(step("unchanged since it last ran".into())),
                    }
                }
            }
        }
    }
    (run, skip)
}

/// What `up` will do to machine `m`, whose recorded state is `state`.
pub fn plan_up(m: &Machine, state: Option<&MachineState>, choice: &ProvisionChoice) -> MachinePlan {
    let status = state.map_or(Status::NotCreated, |s| s.status);
    let mut steps = Vec::new();
    let mut notes = Vec::new();
    let fresh = |steps: &mut Vec<Step>| {
        steps.push(Step {
            action: Action::Create,
            why: format!("from box `{}` with the {} backend", m.box_, m.backend),
        });
        steps.push(Step {
            action: Action::Start,
            why: "newly created".into(),
        });
    };
    // A new machine has no recorded hashes, so every provisioner counts as new.
    let provision_state = match status {
        Status::NotCreated | Status::Creating | Status::Destroying => None,
        Status::Stopped | Status::Running => state,
    };
    match status {
        Status::NotCreated => fresh(&mut steps),
        Status::Creating | Status::Destroying => {
            steps.push(Step {
                action: Action::CleanUp,
                why: format!("an earlier envup stopped while it was {status}"),
            });
            fresh(&mut steps);
        }
        Status::Stopped => steps.push(Step {
            action: Action::Start,
            why: "stopped".into(),
        }),
        Status::Running => {}
    }
    if let Some(s) = state.filter(|_| matches!(status, Status::Stopped | Status::Running)) {
        // The backend the Envfile named when the machine was made (the one
        // that runs it may be another it was handed to).
        let named = s
            .settings
            .get("backend")
            .and_then(|b| b.as_str())
            .unwrap_or(s.backend.as_str());
        if named != m.backend.as_str() {
            // `named` comes from the state file: shown escaped.
            notes.push(format!(
                "the Envfile now says backend `{}` but the machine was created with `{}`; `envup destroy {}` then `envup up {}` moves it",
                m.backend,
                crate::ident::printable(named),
                m.name,
                m.name
            ));
        } else if status == Status::Running {
            let changed = changed_settings(&s.settings, &settings(m));
            if !changed.is_empty() {
                notes.push(format!(
                    "settings changed since it was made ({}); `envup reload {}` applies what its backend can change",
                    changed.join(", "),
                    m.name
                ));
            }
        }
    }
    let (run, skipped) = provision_steps(m, provision_state, choice);
    steps.extend(run);
    MachinePlan {
        machine: m.name.clone(),
        status,
        steps,
        skipped,
        notes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Event;

    use crate::envfile::test_machine as machine;

    const WEB: &str = "[machines.web]\nbox = \"b\"\nprovision = [{ shell = \"echo 1\", name = \"a\" }, { shell = \"echo 2\", run = \"always\", name = \"b\" }, { shell = \"x\", run = \"never\", name = \"c\" }]\n";

    fn running(m: &Machine) -> MachineState {
        let mut s = MachineState::new(&m.name, crate::backend::BackendName::new("fake").unwrap());
        s.apply(Event::BeginCreate).unwrap();
        s.apply(Event::Created).unwrap();
        s.apply(Event::Started).unwrap();
        s.settings = settings(m);
        s
    }

    #[test]
    fn new_machine_is_created_started_provisioned() {
        let m = machine(WEB);
        let p = plan_up(&m, None, &ProvisionChoice::default());
        let actions: Vec<_> = p.steps.iter().map(|s| s.action.clone()).collect();
        assert_eq!(actions[0], Action::Create);
        assert_eq!(actions[1], Action::Start);
        assert_eq!(actions[2], Action::Provision { name: "a".into() });
        assert_eq!(actions[3], Action::Provision { name: "b".into() });
        assert_eq!(p.skipped.len(), 1);
    }

    #[test]
    fn once_runs_again_only_when_changed() {
        let m = machine(WEB);
        let mut s = running(&m);
        s.provisioned
            .insert("a".into(), content_hash(&m.provisioners[0]).unwrap());
        let p = plan_up(&m, Some(&s), &ProvisionChoice::default());
        assert_eq!(p.steps.len(), 1, "{:?}", p.steps);
        assert_eq!(p.steps[0].action, Action::Provision { name: "b".into() });
        s.provisioned.insert("a".into(), "old".into());
        let p = plan_up(&m, Some(&s), &ProvisionChoice::default());
        assert_eq!(p.steps[0].why, "changed since it last ran");
    }

    #[test]
    fn named_provisioners_and_no_provision() {
        let m = machine(WEB);
        let s = running(&m);
        let only = ProvisionChoice {
            skip_all: false,
            only: vec!["c".into()],
        };
        let p = plan_up(&m, Some(&s), &only);
        assert_eq!(p.steps.len(), 1);
        assert_eq!(p.steps[0].action, Action::Provision { name: "c".into() });
        let none = ProvisionChoice {
            skip_all: true,
            only: vec![],
        };
        assert!(plan_up(&m, Some(&s), &none).is_noop());
    }

    #[test]
    fn a_restart_records_only_what_it_applied() {
        let old = settings(&machine(WEB));
        let new = settings(&machine(
            &WEB.replace("box = \"b\"", "box = \"b\"\nmemory = \"2GiB\"\ncpus = 3"),
        ));
        let after = after_restart(&old, &new, &["memory"]);
        let left = changed_settings(&after, &new);
        assert_eq!(left.len(), 1, "{left:?}");
        assert!(left[0].starts_with("cpus:"), "{left:?}");
        assert!(changed_settings(&after_restart(&old, &new, &["memory", "cpus"]), &new).is_empty());
    }

    #[test]
    fn changed_settings_are_noted() {
        let m = machine(WEB);
        let s = running(&m);
        let m2 = machine(&WEB.replace("box = \"b\"", "box = \"b\"\nmemory = \"2GiB\""));
        let p = plan_up(
            &m2,
            Some(&s),
            &ProvisionChoice {
                skip_all: true,
                only: vec![],
            },
        );
        assert!(p.notes[0].contains("memory: 1GiB → 2GiB"), "{:?}", p.notes);
    }

    /// What a state file recorded is shown with its control characters
    /// escaped (a damaged or edited file cannot drive the terminal).
    #[test]
    fn recorded_text_is_shown_escaped() {
        let m = machine(WEB);
        let mut s = running(&m);
        let quiet = ProvisionChoice {
            skip_all: true,
            only: vec![],
        };
        s.settings["memory"] = "1\u{1b}[2J".into();
        let p = plan_up(&m, Some(&s), &quiet);
        assert!(p.notes[0].contains("1\\u{1b}[2J"), "{:?}", p.notes);
        s.settings["backend"] = "x\u{1b}[2J".into();
        let p = plan_up(&m, Some(&s), &quiet);
        assert!(p.notes[0].contains("`x\\u{1b}[2J`"), "{:?}", p.notes);
        assert!(!p.notes.concat().contains('\u{1b}'));
    }

    #[test]
    fn interrupted_create_is_cleaned_up() {
        let m = machine(WEB);
        let mut s = MachineState::new("web", crate::backend::BackendName::new("fake").unwrap());
        s.apply(Event::BeginCreate).unwrap();
        let p = plan_up(&m, Some(&s), &ProvisionChoice::default());
        assert_eq!(p.steps[0].action, Action::CleanUp);
        assert_eq!(p.steps[1].action, Action::Create);
    }
}
