//! The lifecycle core (`ops`, `orchestrate`) on a recording fake backend:
//! what envup does when a create or start fails, when a machine died
//! outside envup, when an earlier command was interrupted, when a
//! dependency fails, and how many machines it works on at once.
//!
//! The fake runs nothing; the cases where a machine must answer SSH start
//! a real sshd for it, and are ignored, with the reason, where the host
//! cannot run one.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::boxes::{make_box, rootfs_bytes};
use common::sshd::{Sshd, unavailable};
use envup::backend::Registry;
use envup::backend::fake::{Boot, Fake, World};
use envup::boxes::Store;
use envup::boxes::lock::Lockfile;
use envup::envfile::{BackendName, Config};
use envup::ops::Ops;
use envup::orchestrate::{self, Graph, Order};
use envup::plan::ProvisionChoice;
use envup::ssh::MachineKeys;
use envup::state::index::Index;
use envup::state::{Event, MachineState, ProjectState, Status};
use envup::ui::{Outcome, Reporter, Stream};
use libtest_mimic::{Arguments, Failed, Trial};

/// A reporter that keeps the notes and lines a command printed.
#[derive(Default)]
struct Said(Mutex<Vec<String>>);

impl Reporter for Said {
    fn step(&self, _: &str, _: &str) {}
    fn line(&self, machine: &str, _: Stream, text: &str) {
        self.0.lock().unwrap().push(format!("{machine}: {text}"));
    }
    fn finished(&self, _: &str, _: &Outcome) {}
    fn note(&self, text: &str) {
        self.0.lock().unwrap().push(text.to_owned());
    }
    fn result(&self, _: bool, _: &[(String, Outcome)]) {}
}

/// A project on the fake backend `ct`, its box in a file beside it.
struct Lab {
    dir: tempfile::TempDir,
    home: tempfile::TempDir,
    world: Arc<Mutex<World>>,
    backends: Registry,
    config: Config,
    said: Said,
    /// The sshds the fake started for its machines.
    _sshds: Arc<Mutex<Vec<Sshd>>>,
}

impl Lab {
    /// `machines` is Envfile text after `[defaults]`; `ssh` gives each
    /// started machine a real sshd.
    fn new(machines: &str, ssh: bool, start_time: Duration) -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let home = tempfile::tempdir().unwrap();
        make_box(
            dir.path(),
            "t",
            "1.0.0",
            &[("rootfs", "rootfs.tar", &rootfs_bytes("x"))],
        );
        let sshds: Arc<Mutex<Vec<Sshd>>> = Arc::default();
        let mut fake = Fake::ct();
        fake.start_time = start_time;
        if ssh {
            let kept = sshds.clone();
            let boot: Boot = Arc::new(move |name: &str, dir: &Path| {
                let keys = MachineKeys::ensure(dir, name).map_err(std::io::Error::other)?;
                let sshd = Sshd::start(&keys.host_private_pem(), &keys.authorized_key());
                let port = sshd.port;
                kept.lock().unwrap().push(sshd);
                Ok(port)
            });
            fake = fake.with_boot(boot);
        }
        let world = fake.world.clone();
        // `old` takes no machine of its own: it hands them all to `ct`.
        let mut old = Fake::new("old", &["rootfs"], &[]);
        old.hands_to = Some("ct");
        let backends = Registry::new(vec![Box::new(fake), Box::new(old)]);
        let text = format!(
            "[defaults]\nbox = \"t-1.0.0.box\"\nbackend = \"ct\"\nboot_timeout = \"20s\"\n\n{machines}"
        );
        let path = dir.path().join("Envfile");
        std::fs::write(&path, &text).unwrap();
        let config = envup::envfile::parse_with(&text, &path, dir.path(), &backends)
            .unwrap_or_else(|d| panic!("the Envfile does not parse: {d:?}"));
        Lab {
            dir,
            home,
            world,
            backends,
            config,
            said: Said::default(),
            _sshds: sshds,
        }
    }

    fn project(&self) -> ProjectState {
        ProjectState::of(self.home.path(), self.dir.path())
    }

    /// Run `f` with the `Ops` envup's commands build.
    fn with_ops<T>(&self, f: impl FnOnce(&Ops<'_>) -> T) -> T {
        let project = self.project();
        let index = Index::new(self.home.path());
        let store = Store::new(self.home.path());
        let lock = Lockfile::read(self.dir.path()).unwrap();
        let net = envup::network::Net::new(&self.config, project.dir());
        let ops = Ops {
            config: &self.config,
            project: &project,
            index: &index,
            reporter: &self.said,
            backends: &self.backends,
            net: &net,
            store: &store,
            lock: &lock,
            resolved: Default::default(),
            names_failed: Default::default(),
        };
        f(&ops)
    }

    fn up(&self, name: &str) -> Result<String, String> {
        self.with_ops(|ops| {
            ops.up(name, &ProvisionChoice::default(), false)
                .map_err(|e| e.to_string())
        })
    }

    /// `up` of every machine, as `envup up --jobs N` runs it.
    fn up_all(&self, jobs: usize) -> Vec<(String, Outcome)> {
        let names: Vec<String> = self.config.machines.keys().cloned().collect();
        let graph = Graph::new(&self.config, &names, Order::DependenciesFirst);
        self.with_ops(|ops| {
            orchestrate::run(&graph, jobs, &self.said, |name| {
                ops.up(name, &ProvisionChoice::default(), false)
                    .map_err(|e| e.to_string())
            })
        })
    }

    fn fail(&self, call: &str) {
        self.world.lock().unwrap().fail.insert(call.into());
    }

    fn calls(&self) -> Vec<String> {
        self.world.lock().unwrap().calls.clone()
    }

    fn status(&self, name: &str) -> Option<Status> {
        self.project().load(name).unwrap().map(|s| s.status)
    }

    fn indexed(&self) -> usize {
        Index::new(self.home.path()).entries().unwrap().len()
    }

    /// Record machine `name` in `status`, as an earlier command left it,
    /// existing on the fake host.
    fn leave(&self, name: &str, events: &[Event], running: bool) {
        let project = self.project();
        let mut st = MachineState::new(name, BackendName::new("ct").unwrap());
        st.dir = Some(project.machine_dir(name));
        for e in events {
            st.apply(*e).unwrap();
        }
        std::fs::create_dir_all(project.machine_dir(name)).unwrap();
        project.save(&st).unwrap();
        let mut w = self.world.lock().unwrap();
        w.made.insert(name.into());
        if running {
            w.running.insert(name.into());
        }
    }

    fn said(&self) -> Vec<String> {
        self.said.0.lock().unwrap().clone()
    }
}

fn check(cond: bool, what: impl FnOnce() -> String) -> Result<(), Failed> {
    if cond { Ok(()) } else { Err(what().into()) }
}

const WEB: &str = "[machines.web]\n";

/// A create that fails leaves nothing: no machine on the host, no state,
/// no index entry.
fn create_fails() -> Result<(), Failed> {
    let lab = Lab::new(WEB, false, Duration::ZERO);
    lab.fail("create web");
    let err = lab.up("web").expect_err("up must fail");
    check(err.contains("create web"), || {
        format!("the error names the failed call: {err}")
    })?;
    check(lab.world.lock().unwrap().made.is_empty(), || {
        "a machine was left on the host".into()
    })?;
    check(lab.status("web").is_none(), || {
        format!("state left: {:?}", lab.status("web"))
    })?;
    check(lab.indexed() == 0, || "an index entry was left".into())?;
    let calls = lab.calls();
    check(calls == ["create web", "destroy web"], || {
        format!("calls: {calls:?}")
    })
}

/// A start that fails destroys what the create made.
fn start_fails() -> Result<(), Failed> {
    let lab = Lab::new(WEB, false, Duration::ZERO);
    lab.fail("start web");
    lab.up("web").expect_err("up must fail");
    let calls = lab.calls();
    check(calls == ["create web", "start web", "destroy web"], || {
        format!("calls: {calls:?}")
    })?;
    check(lab.world.lock().unwrap().made.is_empty(), || {
        "the created machine was left".into()
    })?;
    check(lab.status("web").is_none(), || "state left".into())?;
    check(lab.indexed() == 0, || "an index entry was left".into())
}

/// A new machine that never answers SSH is destroyed, as one whose create
/// or start failed is.
fn never_answers_is_destroyed() -> Result<(), Failed> {
    let lab = Lab::new(
        "[machines.web]\nboot_timeout = \"2s\"\n",
        false,
        Duration::ZERO,
    );
    let err = lab.up("web").expect_err("up must fail");
    check(err.contains("no SSH login"), || format!("error: {err}"))?;
    let calls = lab.calls();
    check(calls == ["create web", "start web", "destroy web"], || {
        format!("calls: {calls:?}")
    })?;
    check(lab.world.lock().unwrap().made.is_empty(), || {
        "the machine that never answered was left".into()
    })?;
    check(lab.status("web").is_none(), || "state left".into())
}

/// With --no-destroy-on-error the failed machine stays, recorded as
/// `creating`, and the next `up` cleans it up before making it again.
fn kept_on_error_then_cleaned() -> Result<(), Failed> {
    let lab = Lab::new(WEB, true, Duration::ZERO);
    lab.fail("start web");
    lab.with_ops(|ops| ops.up("web", &ProvisionChoice::default(), true))
        .expect_err("up must fail");
    check(lab.status("web") == Some(Status::Creating), || {
        format!("kept as {:?}", lab.status("web"))
    })?;
    lab.world.lock().unwrap().fail.clear();
    lab.up("web")?;
    let calls = lab.calls();
    check(
        calls
            == [
                "create web",
                "start web",
                "destroy web",
                "create web",
                "start web",
            ],
        || format!("calls: {calls:?}"),
    )?;
    check(lab.status("web") == Some(Status::Running), || {
        format!("now {:?}", lab.status("web"))
    })
}

/// An `up` interrupted while creating or destroying is cleaned up by the
/// next `up`; a `destroy` finishes an interrupted destroy.
fn interrupted_cleaned() -> Result<(), Failed> {
    let lab = Lab::new("[machines.web]\n[machines.db]\n", true, Duration::ZERO);
    lab.leave("web", &[Event::BeginCreate], true);
    lab.leave(
        "db",
        &[
            Event::BeginCreate,
            Event::Created,
            Event::Started,
            Event::BeginDestroy,
        ],
        false,
    );
    lab.up("web")?;
    let calls = lab.calls();
    check(calls == ["destroy web", "create web", "start web"], || {
        format!("calls: {calls:?}")
    })?;
    check(lab.status("web") == Some(Status::Running), || {
        format!("web is {:?}", lab.status("web"))
    })?;
    lab.with_ops(|ops| ops.destroy("db"))?;
    check(
        lab.calls().last().map(String::as_str) == Some("destroy db"),
        || format!("calls: {:?}", lab.calls()),
    )?;
    check(lab.status("db").is_none(), || "db's state was left".into())?;
    check(!lab.world.lock().unwrap().made.contains("db"), || {
        "db was left on the host".into()
    })
}

/// A machine recorded as running that its backend finds gone is noted and
/// recorded as stopped, and `up` starts it again.
fn died_outside() -> Result<(), Failed> {
    let lab = Lab::new(WEB, true, Duration::ZERO);
    lab.up("web")?;
    lab.world.lock().unwrap().running.remove("web");
    let summary = lab.up("web")?;
    check(summary == "started", || format!("up said {summary:?}"))?;
    let said = lab.said();
    check(
        said.iter().any(|l| l.contains("had stopped without envup")),
        || format!("no note; said: {said:?}"),
    )?;
    let calls = lab.calls();
    check(calls == ["create web", "start web", "start web"], || {
        format!("calls: {calls:?}")
    })?;
    // halt, up and destroy of a live machine, for the record of calls.
    lab.with_ops(|ops| ops.halt("web", false))?;
    check(lab.status("web") == Some(Status::Stopped), || {
        format!("after halt: {:?}", lab.status("web"))
    })?;
    lab.with_ops(|ops| ops.destroy("web"))?;
    check(lab.status("web").is_none() && lab.indexed() == 0, || {
        "destroy left state or an index entry".into()
    })?;
    let calls = lab.calls();
    check(calls[3..] == ["stop web", "destroy web"], || {
        format!("calls: {calls:?}")
    })
}

/// The same without SSH: `halt` of a machine that died outside envup says
/// so and records it stopped, without calling the backend's stop.
fn died_outside_halt() -> Result<(), Failed> {
    let lab = Lab::new(WEB, false, Duration::ZERO);
    lab.leave(
        "web",
        &[Event::BeginCreate, Event::Created, Event::Started],
        false,
    );
    let summary = lab.with_ops(|ops| ops.halt("web", false))?;
    check(summary.contains("nothing to stop"), || {
        format!("halt said {summary:?}")
    })?;
    check(lab.status("web") == Some(Status::Stopped), || {
        format!("recorded as {:?}", lab.status("web"))
    })?;
    let said = lab.said();
    check(
        said.iter().any(|l| l.contains("had stopped without envup")),
        || format!("no note; said: {said:?}"),
    )?;
    check(lab.calls().is_empty(), || {
        format!("calls: {:?}", lab.calls())
    })
}

/// A machine whose Envfile names a backend that hands it over is made by
/// the backend it went to, and with its state file damaged `destroy` still
/// asks that backend to remove it.
fn handed_over_then_damaged() -> Result<(), Failed> {
    let lab = Lab::new("[machines.web]\nbackend = \"old\"\n", false, Duration::ZERO);
    lab.fail("start web");
    lab.with_ops(|ops| ops.up("web", &ProvisionChoice::default(), true))
        .expect_err("up must fail");
    let said = lab.said();
    check(
        said.iter()
            .any(|l| l.contains("the ct backend runs this machine now")),
        || format!("no hand-over note; said: {said:?}"),
    )?;
    let state = lab.project().machine_dir("web").join("state.json");
    std::fs::write(&state, "{ damaged").unwrap();
    lab.with_ops(|ops| ops.destroy("web"))?;
    let calls = lab.calls();
    check(calls == ["create web", "start web", "destroy web"], || {
        format!("calls: {calls:?}")
    })?;
    check(lab.world.lock().unwrap().made.is_empty(), || {
        "the machine was left on the host".into()
    })?;
    check(!state.exists(), || "the damaged state was left".into())
}

/// A machine whose dependency failed is skipped, and never created.
fn failed_dependency_skips() -> Result<(), Failed> {
    let lab = Lab::new(
        "[machines.db]\n[machines.web]\ndepends_on = [\"db\"]\n[machines.worker]\ndepends_on = [\"web\"]\n",
        false,
        Duration::ZERO,
    );
    lab.fail("create db");
    let outcomes = lab.up_all(4);
    let get = |n: &str| {
        outcomes
            .iter()
            .find(|(m, _)| m == n)
            .map(|(_, o)| o.clone())
    };
    check(matches!(get("db"), Some(Outcome::Failed { .. })), || {
        format!("db: {:?}", get("db"))
    })?;
    check(
        matches!(get("web"), Some(Outcome::Skipped { reason }) if reason.contains("`db` failed")),
        || format!("web: {:?}", get("web")),
    )?;
    check(
        matches!(get("worker"), Some(Outcome::Skipped { reason }) if reason.contains("`web` was skipped")),
        || format!("worker: {:?}", get("worker")),
    )?;
    let calls = lab.calls();
    check(calls == ["create db", "destroy db"], || {
        format!("calls: {calls:?}")
    })
}

/// `--jobs N` starts at most N machines at once, and does start N.
fn jobs_respected() -> Result<(), Failed> {
    let machines: String = (0..5).map(|i| format!("[machines.m{i}]\n")).collect();
    for jobs in [1, 2, 3] {
        let lab = Lab::new(&machines, false, Duration::from_millis(150));
        for i in 0..5 {
            // Every start fails, so no SSH is needed; the starts still
            // take their time, and overlap as far as --jobs lets them.
            lab.fail(&format!("start m{i}"));
        }
        lab.up_all(jobs);
        let most = lab.world.lock().unwrap().most_busy;
        check(most == jobs, || {
            format!("--jobs {jobs}: {most} machines were busy at once")
        })?;
    }
    Ok(())
}

type Case = fn() -> Result<(), Failed>;

fn main() {
    let args = Arguments::from_args();
    let ssh_cases: [(&str, Case); 3] = [
        ("kept_on_error_then_cleaned", kept_on_error_then_cleaned),
        ("interrupted_cleaned", interrupted_cleaned),
        ("died_outside", died_outside),
    ];
    let plain: [(&str, Case); 7] = [
        ("handed_over_then_damaged", handed_over_then_damaged),
        ("create_fails", create_fails),
        ("start_fails", start_fails),
        ("never_answers_is_destroyed", never_answers_is_destroyed),
        ("died_outside_halt", died_outside_halt),
        ("failed_dependency_skips", failed_dependency_skips),
        ("jobs_respected", jobs_respected),
    ];
    let why = unavailable();
    let mut trials: Vec<Trial> = plain
        .into_iter()
        .map(|(name, f)| Trial::test(name, f))
        .collect();
    for (name, f) in ssh_cases {
        let t = Trial::test(name, f);
        trials.push(match &why {
            Some(why) => t
                .with_ignored_flag(true)
                .with_kind(format!("needs sshd: {why}")),
            None => t,
        });
    }
    libtest_mimic::run(&args, trials).exit();
}
