//! The command line, run as a user runs it: the built binary in a temp
//! project with its own ENVUP_HOME. No backend is needed here.

mod common;

use std::fs::OpenOptions;
use std::time::{Duration, Instant};

use common::{NO_ENGINES, Project, TWO_MACHINES};

const COMMANDS: &[&str] = &[
    "init",
    "validate",
    "plan",
    "up",
    "halt",
    "destroy",
    "reload",
    "provision",
    "status",
    "global-status",
    "ssh",
    "exec",
    "ssh-config",
    "upload",
    "port",
    "snapshot",
    "box",
    "lock",
    "update",
    "doctor",
    "plugin",
    "completions",
];

#[test]
fn every_command_has_help() {
    let p = Project::new();
    let top = p.cmd(&["--help"]).out().status(0);
    for c in COMMANDS {
        assert!(top.stdout().contains(c), "top-level help lacks {c}");
        p.cmd(&[c, "--help"])
            .out()
            .status(0)
            .stdout_has("Usage: envup");
    }
    for c in ["save", "restore", "list", "delete"] {
        p.cmd(&["snapshot", c, "--help"]).out().status(0);
    }
    for c in ["add", "list", "remove", "prune", "verify", "build"] {
        p.cmd(&["box", c, "--help"]).out().status(0);
    }
    p.cmd(&["--version"]).out().status(0).stdout_has("envup ");
}

#[test]
fn bad_flags_are_usage_errors() {
    let p = Project::new();
    p.cmd(&["up", "--jobs", "0"]).out().status(2);
    p.cmd(&["frobnicate"]).out().status(2);
    p.cmd(&["exec", "web"]).out().status(2);
}

#[test]
fn completions_for_each_shell() {
    let p = Project::new();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = p.cmd(&["completions", shell]).out().status(0);
        assert!(out.stdout().contains("envup"), "{shell}");
    }
}

#[test]
fn init_writes_each_template_and_they_validate() {
    for t in ["single", "web-db", "ci"] {
        let p = Project::new();
        p.cmd(&["init", "--template", t])
            .out()
            .status(0)
            .stdout_has("wrote");
        p.cmd(&["validate"]).out().status(0);
        // envup keeps no state in the project: nothing to ignore.
        assert!(!p.path().join(".gitignore").exists());
    }
}

#[test]
fn init_refuses_to_overwrite_without_force() {
    let p = Project::new();
    p.write(".gitignore", "target");
    p.cmd(&["init"]).out().status(0);
    let before = std::fs::read_to_string(p.path().join("Envfile")).unwrap();
    p.cmd(&["init", "--template", "ci"])
        .out()
        .status(1)
        .stderr_has("already exists; pass --force");
    assert_eq!(
        std::fs::read_to_string(p.path().join("Envfile")).unwrap(),
        before
    );
    p.cmd(&[
        "init",
        "--template",
        "ci",
        "--force",
        "--box",
        "debian/bookworm",
        "--backend",
        "qemu",
    ])
    .out()
    .status(0);
    let after = std::fs::read_to_string(p.path().join("Envfile")).unwrap();
    assert!(after.contains("box = \"debian/bookworm\""));
    assert!(after.contains("backend = \"qemu\""));
    assert_eq!(
        std::fs::read_to_string(p.path().join(".gitignore")).unwrap(),
        "target"
    );
}

#[test]
fn init_rejects_unknown_template_and_backend() {
    let p = Project::new();
    p.cmd(&["init", "--template", "nope"])
        .out()
        .status(2)
        .stderr_has("the templates are: single");
    p.cmd(&["init", "--backend", "vbox"])
        .out()
        .status(2)
        .stderr_has("unknown backend `vbox`");
    assert!(!p.path().join("Envfile").exists());
}

#[test]
fn validate_prints_nothing_on_success() {
    let p = Project::with_envfile(TWO_MACHINES);
    let out = p.cmd(&["validate"]).out().status(0);
    assert_eq!(out.stdout(), "");
    assert_eq!(out.stderr(), "");
}

#[test]
fn envfile_is_found_from_a_subdirectory_and_by_flags() {
    let p = Project::with_envfile(TWO_MACHINES);
    let sub = p.path().join("a/b");
    std::fs::create_dir_all(&sub).unwrap();
    p.cmd(&["status"])
        .cwd(&sub)
        .out()
        .status(0)
        .stdout_has("web");
    let elsewhere = tempfile::tempdir().unwrap();
    let dir = p.path().to_str().unwrap();
    p.cmd(&["-C", dir, "status"])
        .cwd(elsewhere.path())
        .out()
        .status(0)
        .stdout_has("db");
    let other = p.write("other/Envfile.dev", "[machines.solo]\nbox = \"tiny\"\n");
    p.cmd(&["--envfile", other.to_str().unwrap(), "status"])
        .out()
        .status(0)
        .stdout_has("solo");
}

#[test]
fn missing_envfile_is_a_usage_error() {
    let p = Project::new();
    p.cmd(&["status"])
        .out()
        .status(2)
        .stderr_has("no Envfile in");
    p.cmd(&["--envfile", "nope.toml", "validate"])
        .out()
        .status(1)
        .stderr_has("nope.toml");
}

#[test]
fn status_human_and_json() {
    let p = Project::with_envfile(TWO_MACHINES);
    let out = p.cmd(&["status"]).out().status(0);
    for m in ["db", "web", "extra"] {
        assert!(out.stdout().contains(m));
    }
    assert!(out.stdout().contains("not created"));
    let j = p.cmd(&["--json", "status", "web"]).out().status(0).json();
    assert_eq!(j["machines"].as_array().unwrap().len(), 1);
    assert_eq!(j["machines"][0]["name"], "web");
    assert_eq!(j["machines"][0]["status"], "not_created");
    assert_eq!(j["machines"][0]["forwards"][0]["host"], 8080);
}

#[test]
fn unknown_machine_is_a_usage_error_listing_names() {
    let p = Project::with_envfile(TWO_MACHINES);
    p.cmd(&["status", "wbe"])
        .out()
        .status(2)
        .stderr_has("no machine named `wbe`")
        .stderr_has("did you mean `web`?")
        .stderr_has("the machines are: db, web, extra");
    p.cmd(&["up", "nope"]).out().status(2);
    p.cmd(&["exec", "nope", "--", "true"]).out().status(2);
}

#[test]
fn plan_follows_autostart_and_dependencies() {
    let p = Project::with_envfile(TWO_MACHINES);
    let j = p.cmd(&["--json", "plan"]).out().status(0).json();
    let names: Vec<&str> = j
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["machine"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["db", "web"], "extra has autostart = false");
    let j = p.cmd(&["--json", "plan", "web"]).out().status(0).json();
    assert_eq!(j.as_array().unwrap().len(), 2, "web brings db along");
    let web = &j[1];
    assert_eq!(web["steps"][0]["action"], "create");
    assert_eq!(web["steps"][2]["action"], "provision");
    assert_eq!(web["steps"][2]["name"], "hello");
    let j = p
        .cmd(&["--json", "plan", "--no-provision", "web"])
        .out()
        .status(0)
        .json();
    assert_eq!(j[1]["steps"].as_array().unwrap().len(), 2);
    p.cmd(&["plan", "extra"])
        .out()
        .status(0)
        .stdout_has("+ create");
}

#[test]
fn up_says_plainly_that_no_engine_works() {
    let p = Project::with_envfile(TWO_MACHINES);
    p.cmd(&["up"])
        .env(NO_ENGINES.0, NO_ENGINES.1)
        .out()
        .status(1)
        .stderr_has("no container engine works here")
        .stderr_has("web: skipped: `db` failed")
        .stderr_has("2 of 2 machines could not be brought up");
    assert!(
        !common::state(&p).join("machines/db").exists(),
        "nothing half-made"
    );
}

#[test]
fn up_json_events_end_with_a_result() {
    let p = Project::with_envfile(TWO_MACHINES);
    let out = p
        .cmd(&["--json", "up"])
        .env(NO_ENGINES.0, NO_ENGINES.1)
        .out()
        .status(1);
    let events: Vec<serde_json::Value> = out
        .stdout()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let last = events.last().unwrap();
    assert_eq!(last["event"], "result");
    assert_eq!(last["ok"], false);
    assert_eq!(last["machines"]["web"]["outcome"], "skipped");
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "finished" && e["machine"] == "db" && e["outcome"] == "failed")
    );
}

#[test]
fn halt_and_destroy_of_machines_never_created_succeed() {
    let p = Project::with_envfile(TWO_MACHINES);
    p.cmd(&["halt"]).out().status(0).stderr_has("not created");
    p.cmd(&["destroy", "--force"])
        .out()
        .status(0)
        .stderr_has("not created");
    p.cmd(&["-q", "destroy", "-f"]).out().status(0);
}

#[test]
fn destroy_without_a_terminal_needs_force() {
    let p = Project::with_envfile(TWO_MACHINES);
    p.cmd(&["destroy"])
        .out()
        .status(2)
        .stderr_has("pass --force");
}

#[test]
fn commands_on_machines_that_are_not_created_say_so() {
    let p = Project::with_envfile(TWO_MACHINES);
    p.cmd(&["exec", "web", "--", "true"])
        .out()
        .status(1)
        .stderr_has("machine `web` is not created; `envup up web` creates it");
    p.cmd(&["ssh"])
        .out()
        .status(1)
        .stderr_has("machine `web` is not created");
    p.cmd(&["provision", "db"])
        .out()
        .status(1)
        .stderr_has("machine `db` is not running");
    p.cmd(&["snapshot", "list", "db"])
        .out()
        .status(1)
        .stderr_has("is not created");
    p.cmd(&["ssh-config"])
        .out()
        .status(1)
        .stderr_has("is not created");
}

#[test]
fn lock_says_where_it_looked() {
    // A name no catalog, store or recipe has.
    let p = Project::with_envfile("[machines.web]\nbox = \"acme/nowhere\"\n");
    p.cmd(&["lock"])
        .out()
        .status(1)
        .stderr_has("no box `acme/nowhere`")
        .stderr_has("ENVUP_CATALOGS");
}

#[test]
fn port_lists_forwards() {
    let p = Project::with_envfile(TWO_MACHINES);
    p.cmd(&["port", "web"])
        .out()
        .status(0)
        .stdout_has("80 (guest) => 127.0.0.1:8080 (tcp)");
    let j = p.cmd(&["--json", "port"]).out().status(0).json();
    assert_eq!(j[0]["forwards"][0]["guest"], 5432);
}

#[test]
fn second_envup_waits_for_the_project_lock() {
    let p = Project::with_envfile(TWO_MACHINES);
    std::fs::create_dir_all(common::state(&p)).unwrap();
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(common::state(&p).join("lock"))
        .unwrap();
    lock.lock().unwrap();
    let t = Instant::now();
    p.cmd(&["halt"])
        .env("ENVUP_LOCK_TIMEOUT", "0.4")
        .out()
        .status(1)
        .stderr_has("waiting for another envup")
        .stderr_has("gave up after");
    assert!(t.elapsed() >= Duration::from_millis(400));

    // Released while the second one waits: it goes ahead.
    let child = p
        .cmd(&["halt"])
        .env("ENVUP_LOCK_TIMEOUT", "20")
        .0
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(lock);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("waiting for another envup"));
}

#[test]
fn global_status_reads_and_prunes_the_index() {
    let p = Project::with_envfile(TWO_MACHINES);
    p.cmd(&["global-status"])
        .out()
        .status(0)
        .stdout_has("envup knows no machines");
    // An entry for a project that has since been deleted.
    let gone = p.path().join("deleted-project");
    let index = serde_json::json!({ "machines": [{
        "project": "old", "root": gone, "machine": "vm",
        "backend": "qemu", "state_dir": gone.join(".envup/machines/vm"),
    }]});
    std::fs::write(p.home.path().join("machines.json"), index.to_string()).unwrap();
    p.cmd(&["global-status"])
        .out()
        .status(0)
        .stdout_has("gone")
        .stdout_has("--prune");
    let j = p
        .cmd(&["--json", "global-status", "--prune"])
        .out()
        .status(0)
        .json();
    assert_eq!(j["pruned"], 1);
    assert_eq!(j["machines"].as_array().unwrap().len(), 0);
}

#[test]
fn doctor_reports_every_backend() {
    let p = Project::new();
    let out = p.cmd(&["doctor"]).out();
    for b in ["qemu", "jail", "container", "lxc"] {
        assert!(out.stdout().contains(&format!("{b}:")), "{}", out.stdout());
    }
    // Exit 0 exactly when some backend can run machines here.
    let all = p.cmd(&["--json", "doctor"]).out().json();
    let j = &all["backends"];
    assert_eq!(j.as_array().unwrap().len(), 4);
    assert!(all["network"]["checks"].is_array(), "{all}");
    assert!(
        out.stdout().contains("project network:"),
        "{}",
        out.stdout()
    );
    let usable = j
        .as_array()
        .unwrap()
        .iter()
        .any(|b| b["host_ready"] == true && b["built"] == true);
    assert_eq!(out.code(), if usable { 0 } else { 1 });
    assert_eq!(
        j[1]["built"],
        cfg!(target_os = "linux"),
        "the jail backend is built on Linux"
    );
    assert!(
        j[0]["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["what"] == "kvm")
    );
}

#[test]
fn colour_follows_the_flag() {
    let p = Project::new();
    let always = p.cmd(&["--color", "always", "status"]).out().status(2);
    assert!(always.stderr().contains('\x1b'));
    let never = p.cmd(&["--color", "never", "status"]).out().status(2);
    assert!(!never.stderr().contains('\x1b'));
    let auto = p.cmd(&["status"]).env("NO_COLOR", "1").out().status(2);
    assert!(!auto.stderr().contains('\x1b'));
}

#[test]
fn quiet_and_verbose() {
    let p = Project::new();
    let out = p.cmd(&["-q", "init"]).out().status(0);
    assert_eq!(out.stdout(), "");
    p.cmd(&["-vv", "validate"])
        .out()
        .status(0)
        .stderr_has("DEBUG");
}

#[test]
fn envfile_template_uses_env_and_project() {
    let p = Project::with_envfile(
        "{% for i in range(3) %}\n[machines.node{{ i }}]\nbox = \"{{ env.BOX_FOR_TEST }}\"\nhostname = \"{{ project.name }}-{{ i }}\"\n{% endfor %}\n",
    );
    let j = p
        .cmd(&["--json", "status"])
        .env("BOX_FOR_TEST", "tiny")
        .out()
        .status(0)
        .json();
    assert_eq!(j["machines"].as_array().unwrap().len(), 3);
    assert_eq!(j["machines"][2]["box"], "tiny");
    p.cmd(&["validate"]).out().status(2).stderr_has("undefined");
}

/// Every complete Envfile shown in the README and docs/envfile.md is valid.
#[test]
fn documented_examples_validate() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut checked = 0;
    for doc in ["README.md", "docs/envfile.md"] {
        let text = std::fs::read_to_string(root.join(doc)).unwrap();
        for block in text.split("```toml\n").skip(1) {
            let body = block.split("```").next().unwrap();
            let complete =
                body.lines().any(|l| l.starts_with("[machines.")) && body.contains("box =");
            if !complete {
                continue;
            }
            let p = Project::with_envfile(body);
            let out = p.cmd(&["validate"]).out();
            assert_eq!(out.code(), 0, "{doc}:\n{body}\n{}", out.stderr());
            checked += 1;
        }
    }
    assert!(checked >= 3, "only {checked} examples found");
}
