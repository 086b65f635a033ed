//! envup's own records are evidence, never commands. For every backend,
//! every record file it keeps for a machine has each of its string fields
//! rewritten with hostile values — a host path, a path that climbs out, a
//! URI that names a program to run, an extra argument, shell
//! metacharacters — and the next `status`, `up`, `snapshot restore`,
//! `halt --force` and finally `destroy` must touch nothing outside the machine,
//! run no process of the attacker's, and either do what the Envfile and
//! the store say or refuse, naming the file.
//!
//! And each record file emptied, as a full disk or a kill can leave it:
//! `status` and `up` work or name the file, `destroy --force` leaves nothing.
//!
//! A backend that cannot run here is reported as ignored, with the reason.

mod common;

use std::path::{Path, PathBuf};

use common::victim::Victim;
use common::{Project, check};
use libtest_mimic::{Arguments, Failed, Trial};
use serde_json::Value;

fn home() -> &'static tempfile::TempDir {
    static HOME: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    HOME.get_or_init(|| common::boxes::home_with(&["tiny"]))
}

/// A backend and what it keeps for machine `web`, relative to the
/// machine's state directory.
struct Case {
    backend: &'static str,
    table: &'static str,
    files: &'static [&'static str],
    /// Plugins are found here.
    plugins: Option<PathBuf>,
    /// VMs boot slowly: fewer hostile values for them.
    slow: bool,
}

fn envup(p: &Project, case: &Case, args: &[&str]) -> common::Done {
    let mut run = p
        .cmd(args)
        .env("ENVUP_HOME", home().path().to_str().unwrap())
        .env("ENVUP_PLUGIN_TIMEOUT", "600");
    if let Some(dir) = &case.plugins {
        run = run.env("ENVUP_PLUGIN_PATH", dir.to_str().unwrap());
    }
    run.out()
}

/// Where `v` holds strings, as JSON pointers: each string, and each list
/// of strings (which a hostile value is added to, as one argument more).
fn string_fields(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::String(_) => out.push(at),
        Value::Array(items) => {
            if !items.is_empty() && items.iter().all(Value::is_string) {
                out.push(format!("{at}/+"));
            }
            for (i, item) in items.iter().enumerate() {
                string_fields(item, format!("{at}/{i}"), out);
            }
        }
        Value::Object(map) => {
            for (k, item) in map {
                let k = k.replace('~', "~0").replace('/', "~1");
                string_fields(item, format!("{at}/{k}"), out);
            }
        }
        _ => {}
    }
}

/// `v` with the field at `pointer` set to `hostile` (or, for a list's
/// `/+`, `hostile` added to the list).
fn tamper(v: &mut Value, pointer: &str, hostile: &str) {
    if let Some(list) = pointer.strip_suffix("/+") {
        if let Some(Value::Array(items)) = v.pointer_mut(list) {
            items.push(Value::String(hostile.to_owned()));
        }
    } else if let Some(field) = v.pointer_mut(pointer) {
        *field = Value::String(hostile.to_owned());
    }
}

/// The hostile values, some of which run `pwn` (a program that changes
/// the victim) when something obeys them.
fn hostile_values(victim: &Path, pwn: &Path, slow: bool) -> Vec<String> {
    let (v, pwn) = (victim.display(), pwn.display());
    let mut values = vec![v.to_string(), format!("qemu+ext:///system?command={pwn}")];
    if !slow {
        values.extend([
            ARGV.to_owned(),
            format!("../../../../../../../../..{v}"),
            format!("$({pwn});`{pwn}`|{pwn}"),
        ]);
    }
    values
}

/// One argument more, which would give a container the host's root.
const ARGV: &str = "--volume=/:/hostroot";

/// A program that leaves a mark in the victim when run.
fn pwn(victim: &Path) -> (tempfile::TempDir, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pwn");
    std::fs::write(
        &path,
        format!("#!/bin/sh\ntouch {}/pwned\n", victim.display()),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    (dir, path)
}

/// The record files as they were, to put back between rounds.
fn keep(dir: &Path, files: &[&str]) -> Vec<(PathBuf, Option<Vec<u8>>)> {
    files
        .iter()
        .map(|f| {
            let p = dir.join(f);
            let bytes = std::fs::read(&p).ok();
            (p, bytes)
        })
        .collect()
}

fn put_back(kept: &[(PathBuf, Option<Vec<u8>>)]) {
    for (p, bytes) in kept {
        match bytes {
            Some(b) => std::fs::write(p, b).unwrap(),
            None => {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

/// Processes of the attacker's: anything naming the victim or the host's
/// root as a volume.
fn attackers(victim: &Path) -> Vec<String> {
    let mut found = common::processes_naming(victim.as_os_str().as_encoded_bytes());
    found.extend(common::processes_naming(b"hostroot"));
    found
}

fn records_are_not_commands(case: &Case) -> Result<(), Failed> {
    let v = Victim::new();
    let (_pwn_dir, pwn) = pwn(v.path());
    let p = Project::with_envfile(&format!(
        "[machines.web]\nbox = \"tiny\"\nmemory = \"256MiB\"\n{}",
        case.table
    ));
    envup(&p, case, &["up"]).status(0);
    envup(&p, case, &["snapshot", "save", "web", "s1"]).status(0);
    envup(&p, case, &["halt", "--force"]).status(0);
    let dir = common::state(&p).join("machines/web");
    let kept = keep(&dir, case.files);
    let mut problems = Vec::new();
    // Each string field of each file, alone, with each hostile value (one
    // for the state file, whose fields are many and plainly checked).
    let mut rounds: Vec<(&str, String, String)> = Vec::new();
    for file in case.files {
        let Ok(bytes) = std::fs::read(dir.join(file)) else {
            problems.push(format!("{file} was not written"));
            continue;
        };
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        let mut fields = Vec::new();
        string_fields(&value, String::new(), &mut fields);
        // The state file's fields are read the same way whatever the
        // backend (every one is tried on jails); on the others, those the
        // backend itself uses.
        if case.backend != "jail" && *file == "state.json" {
            fields
                .retain(|f| ["/id", "/ssh/host", "/ssh/user", "/box/sha256"].contains(&f.as_str()));
        }
        let values = hostile_values(v.path(), &pwn, case.slow || *file == "state.json");
        let values = if *file == "state.json" {
            values[..1].to_vec()
        } else {
            values
        };
        for f in &fields {
            if f.ends_with("/+") {
                // A list takes one argument more.
                rounds.push((*file, f.clone(), ARGV.to_owned()));
            } else {
                rounds.extend(values.iter().map(|h| (*file, f.clone(), h.clone())));
            }
        }
    }
    for (file, field, hostile) in &rounds {
        put_back(&kept);
        let path = dir.join(file);
        let mut value: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        tamper(&mut value, field, hostile);
        std::fs::write(&path, serde_json::to_vec(&value).unwrap()).unwrap();
        let name = Path::new(file).file_name().unwrap().to_string_lossy();
        let what = format!("{file} {field} = {hostile:?}");
        for args in [
            &["status"][..],
            &["up"],
            &["snapshot", "restore", "web", "s1"],
            &["halt", "--force"],
        ] {
            let out = envup(&p, case, args);
            if out.code() != 0 && !out.stderr().contains(&*name) {
                problems.push(format!(
                    "{what}: `{}` failed without naming the file: {}",
                    args.join(" "),
                    out.stderr().trim()
                ));
            }
            let running = attackers(v.path());
            if !running.is_empty() {
                problems.push(format!("{what}: `{}` left {running:?}", args.join(" ")));
            }
            if let Err(e) = v.untouched() {
                problems.push(format!("{what}: `{}`: {e:?}", args.join(" ")));
            }
        }
        // Whatever the round did, the machine is halted with its own
        // records before the next.
        put_back(&kept);
        let out = envup(&p, case, &["halt", "--force"]);
        if out.code() != 0 {
            problems.push(format!("halt with the records put back: {}", out.stderr()));
        }
    }
    // Destroy with every record naming the victim: the machine's own
    // things go, found by what envup derives; nothing else is touched.
    let ids = common::jail_ids(&p);
    for file in case.files {
        let path = dir.join(file);
        if let Ok(bytes) = std::fs::read(&path) {
            let mut value: Value = serde_json::from_slice(&bytes).unwrap();
            let mut fields = Vec::new();
            string_fields(&value, String::new(), &mut fields);
            for f in &fields {
                tamper(&mut value, f, &v.path().display().to_string());
            }
            std::fs::write(&path, serde_json::to_vec(&value).unwrap()).unwrap();
        }
    }
    let out = envup(&p, case, &["destroy", "--force"]);
    if out.code() != 0 {
        problems.push(format!("destroy: {}", out.stderr()));
    }
    v.untouched()?;
    common::nothing_left(&p, &ids)?;
    check(problems.is_empty(), problems.join("\n"))
}

/// Each record file emptied in turn (as a full disk or a kill can leave
/// it), the machine running: `status` and `up` work or name the file, and
/// `destroy --force` works and leaves nothing of the machine running or on
/// the host.
fn records_emptied(case: &Case) -> Result<(), Failed> {
    let mut problems = Vec::new();
    for file in case.files {
        let p = Project::with_envfile(&format!(
            "[machines.web]\nbox = \"tiny\"\nmemory = \"256MiB\"\n{}",
            case.table
        ));
        envup(&p, case, &["up"]).status(0);
        let mut names = common::jail_ids(&p);
        names.extend(common::containers(&p));
        let path = common::state(&p).join("machines/web").join(file);
        std::fs::write(&path, "").unwrap();
        let name = Path::new(file).file_name().unwrap().to_string_lossy();
        for args in [&["status"][..], &["up"]] {
            let out = envup(&p, case, args);
            if out.code() != 0 && !out.stderr().contains(&*name) {
                problems.push(format!(
                    "{file} emptied: `{}` failed without naming the file: {}",
                    args.join(" "),
                    out.stderr().trim()
                ));
            }
        }
        let out = envup(&p, case, &["destroy", "--force"]);
        if out.code() != 0 {
            problems.push(format!("{file} emptied: destroy: {}", out.stderr().trim()));
        }
        if let Err(e) = common::nothing_left(&p, &names) {
            problems.push(format!("{file} emptied: after destroy: {e:?}"));
        }
        let left = common::engine_containers_left(case.backend, &names);
        if !left.is_empty() {
            problems.push(format!(
                "{file} emptied: {} containers {left:?} left",
                case.backend
            ));
        }
    }
    check(problems.is_empty(), problems.join("\n"))
}

/// The qcow2 layer's header names its backing file: pointed at a host file,
/// the VM is not started on it, and a snapshot is not applied through it.
fn qemu_layer_backing_file() -> Result<(), Failed> {
    let v = Victim::new();
    let case = &CASES[4];
    let p = Project::with_envfile(&format!(
        "[machines.web]\nbox = \"tiny\"\nmemory = \"256MiB\"\n{}",
        case.table
    ));
    envup(&p, case, &["up"]).status(0);
    envup(&p, case, &["halt", "--force"]).status(0);
    let layer = common::state(&p).join("machines/web/qemu/disk.qcow2");
    let target = v.path().join("x.part");
    let ok = std::process::Command::new("qemu-img")
        .args(["rebase", "-u", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&target)
        .arg(&layer)
        .status()
        .unwrap()
        .success();
    check(ok, "qemu-img rebase failed")?;
    let mut problems = Vec::new();
    for args in [&["up"][..], &["snapshot", "save", "web", "s2"]] {
        let out = envup(&p, case, args);
        if out.code() == 0 || !out.stderr().contains("disk.qcow2") {
            problems.push(format!(
                "`{}` with a layer over a host file: exit {}: {}",
                args.join(" "),
                out.code(),
                out.stderr()
            ));
        }
    }
    let ids = common::jail_ids(&p);
    envup(&p, case, &["destroy", "--force"]).status(0);
    v.untouched()?;
    common::nothing_left(&p, &ids)?;
    check(problems.is_empty(), problems.join("\n"))
}

const NET: &str = "../../network.json";

static CASES: std::sync::LazyLock<Vec<Case>> = std::sync::LazyLock::new(|| {
    vec![
        Case {
            backend: "jail",
            table: "backend = \"jail\"\n",
            files: &["state.json", "jail/jail.json", "jail/ids.json", NET],
            plugins: None,
            slow: false,
        },
        Case {
            backend: "lxc",
            table: "backend = \"lxc\"\n",
            files: &["state.json", "lxc/ids.json", NET],
            plugins: None,
            slow: false,
        },
        Case {
            backend: "docker",
            table: "backend = \"container\"\ncontainer = { engine = \"docker\" }\n",
            files: &["state.json", "container.json", NET],
            plugins: None,
            slow: false,
        },
        Case {
            backend: "podman",
            table: "backend = \"container\"\ncontainer = { engine = \"podman\" }\n",
            files: &["state.json", "container.json", NET],
            plugins: None,
            slow: false,
        },
        Case {
            backend: "qemu",
            table: "backend = \"qemu\"\n",
            files: &["state.json", "qemu/vm.json", NET],
            plugins: None,
            slow: true,
        },
        Case {
            backend: "nspawn",
            table: "backend = \"nspawn\"\n",
            files: &["state.json", "plugin/config.json"],
            plugins: Some(common::trusted_plugins(
                &Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/nspawn"),
            )),
            slow: false,
        },
        Case {
            backend: "libvirt",
            table: "backend = \"libvirt\"\n",
            files: &["state.json", "plugin/machine.json"],
            plugins: Some(common::libvirt::built_plugins()),
            slow: true,
        },
    ]
});

fn unavailable(backend: &str) -> Option<String> {
    let jails = common::jails_unavailable();
    match backend {
        "jail" => jails,
        "lxc" => jails.or_else(|| common::engine_unavailable("lxc")),
        "docker" | "podman" => common::engine_unavailable(backend),
        "qemu" => common::qemu::unavailable(),
        "nspawn" => (!nix::unistd::geteuid().is_root())
            .then(|| "the nspawn plugin needs root".to_owned())
            .or_else(|| {
                common::host_lacks("systemd-nspawn")
                    .then(|| "systemd-nspawn is missing (apt-get install systemd-container)".into())
            }),
        _ => common::libvirt::unavailable(),
    }
}

fn main() {
    let args = Arguments::from_args();
    let mut trials = Vec::new();
    for (i, case) in CASES.iter().enumerate() {
        let why = unavailable(case.backend);
        let name = format!("records_are_not_commands_{}", case.backend);
        if let Some(why) = &why {
            eprintln!("skipping {name}: {why}");
        }
        let libvirt = case.backend == "libvirt";
        trials.push(
            Trial::test(name, move || {
                if libvirt {
                    common::libvirt::with_libvirtd()?;
                }
                records_are_not_commands(&CASES[i])
            })
            .with_ignored_flag(why.is_some())
            .with_kind(why.unwrap_or_default()),
        );
    }
    // Emptied records: the built-in backends (the plugins' own records
    // are the plugins' to recover).
    for (i, case) in CASES
        .iter()
        .enumerate()
        .filter(|(_, c)| c.plugins.is_none())
    {
        let why = unavailable(case.backend);
        trials.push(
            Trial::test(format!("records_emptied_{}", case.backend), move || {
                records_emptied(&CASES[i])
            })
            .with_ignored_flag(why.is_some())
            .with_kind(why.unwrap_or_default()),
        );
    }
    let why = unavailable("qemu");
    trials.push(
        Trial::test("qemu_layer_backing_file", qemu_layer_backing_file)
            .with_ignored_flag(why.is_some())
            .with_kind(why.unwrap_or_default()),
    );
    let done = libtest_mimic::run(&args, trials);
    common::libvirt::stop_daemons();
    done.exit();
}
