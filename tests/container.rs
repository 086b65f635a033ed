//! The container backend for real, on each engine this host runs (Docker,
//! Podman, LXC): `tiny` and `debian/bookworm` up, provisioned, exec, halt,
//! up with data kept, snapshots, destroy; one image import for two machines
//! (Docker, Podman).
//! A box laid out as vagrant-lxc makes them comes up on each engine, on the
//! lxc backend and on a jail.
//! An engine the host lacks is reported as ignored, with the reason.

mod common;

use std::sync::OnceLock;

use common::{Project, check};
use libtest_mimic::{Arguments, Failed, Trial};

/// One ENVUP_HOME with `tiny` and `debian/bookworm`, shared by the tests.
fn home() -> &'static tempfile::TempDir {
    static HOME: OnceLock<tempfile::TempDir> = OnceLock::new();
    HOME.get_or_init(|| common::boxes::home_with(&["tiny", "debian-bookworm"]))
}

fn envup(p: &Project, args: &[&str]) -> common::Done {
    p.cmd(args)
        .env("ENVUP_HOME", home().path().to_str().unwrap())
        .out()
}

fn exec(p: &Project, machine: &str, script: &str) -> String {
    common::exec_in(home().path(), p, machine, script)
}

fn engine_knows(engine: &str, what: &[&str]) -> String {
    let o = std::process::Command::new(engine)
        .args(what)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn lifecycle(engine: &'static str, boxname: &'static str) -> Result<(), Failed> {
    // In a directory whose name holds a space, a comma, a colon and
    // quotes, with a share from inside it (`--volume` splits at the colon;
    // LXC's overlay spec at colons, its mount options at commas).
    let (dir, share) = ("envup a,b:'q' ", "da,ta");
    // LXC is a backend of its own; `container` with `engine = "lxc"` is
    // handed over to it (tiny goes that way, debian the direct one).
    let backend = if engine == "lxc" && boxname != "tiny" {
        "backend = \"lxc\"".to_owned()
    } else {
        format!("backend = \"container\"\ncontainer = {{ engine = \"{engine}\" }}")
    };
    let p = Project::with_envfile_in(
        dir,
        &format!(
            "[machines.web]\nbox = \"{boxname}\"\n{backend}\nmemory = \"512MiB\"\n\
             share = [{{ host = \"{share}\", guest = \"/srv/data\", read_only = true }}]\n\
             provision = [{{ name = \"hi\", shell = \"echo provisioned > /root/p\" }}]\n"
        ),
    );
    p.write(&format!("{share}/hello"), "shared\n");
    envup(&p, &["up"]).status(0);
    check(
        exec(&p, "web", "cat /srv/data/hello") == "shared\n",
        "the share is not mounted",
    )?;
    let names = common::containers(&p);
    check(names.len() == 1, format!("containers: {names:?}"))?;
    check(
        exec(&p, "web", "cat /root/p") == "provisioned\n",
        "provisioner did not run",
    )?;
    check(exec(&p, "web", "hostname") == "web\n", "hostname")?;
    if engine == "lxc" {
        common::kernel_paths_guarded(&|script| exec(&p, "web", script))?;
        // The host's processes (this test's) are out of reach.
        common::root_is_confined(
            &|script| exec(&p, "web", script),
            "envup",
            std::process::id(),
        )?;
        if boxname != "tiny" {
            // systemd's services stay in the container's cgroup (LXC's
            // payload cgroup, delegated to it) and under its pids limit.
            let cg = std::path::Path::new("/sys/fs/cgroup/pids")
                .join(format!("lxc.payload.{}", names[0]));
            common::storm_held(&|script| exec(&p, "web", script), &cg)?;
        }
        if boxname != "tiny" {
            common::keyctl_refused(&|script| exec(&p, "web", script))?;
        }
    }
    exec(&p, "web", "echo kept > /root/data");
    envup(&p, &["halt"]).status(0);
    let j = envup(&p, &["--json", "status"]).status(0).json();
    check(j["machines"][0]["status"] == "stopped", j.to_string())?;
    envup(&p, &["up"]).status(0);
    check(
        exec(&p, "web", "cat /root/data") == "kept\n",
        "data lost across halt and up",
    )?;
    // Snapshots: save, change, restore.
    envup(&p, &["snapshot", "save", "web", "before"]).status(0);
    exec(&p, "web", "rm /root/data");
    envup(&p, &["snapshot", "list", "web"])
        .status(0)
        .stdout_has("before");
    envup(&p, &["snapshot", "restore", "web", "before"]).status(0);
    envup(&p, &["up"]).status(0);
    check(
        exec(&p, "web", "cat /root/data") == "kept\n",
        "the snapshot did not bring the file back",
    )?;
    envup(&p, &["destroy", "-f"]).status(0);
    check(
        !common::state(&p).join("machines/web").exists(),
        "state directory left",
    )?;
    if engine == "lxc" {
        let procs = std::process::Command::new("pgrep")
            .args(["-af", &names[0]])
            .output()
            .unwrap();
        check(
            procs.stdout.is_empty(),
            format!("left: {}", String::from_utf8_lossy(&procs.stdout)),
        )?;
        return check(
            !std::path::Path::new("/run/netns").join(&names[0]).exists(),
            "netns name left",
        );
    }
    let left = engine_knows(engine, &["ps", "-a", "--format", "{{.Names}}"]);
    check(
        !left.lines().any(|l| l.trim() == names[0]),
        format!("container {} left", names[0]),
    )?;
    let images = engine_knows(engine, &["images", "--format", "{{.Repository}}"]);
    check(
        !images.contains(&format!("envup-snapshot-{}", names[0])),
        "snapshot image left",
    )?;
    check(
        !common::state(&p).join("machines/web").exists(),
        "state directory left",
    )?;
    Ok(())
}

/// The engine's images made from box `stored` (and snapshots of machines
/// from it, which carry its label too): `ID REPOSITORY` lines.
fn box_images(engine: &str, stored: &str) -> String {
    engine_knows(
        engine,
        &[
            "images",
            "--no-trunc",
            "--format",
            "{{.ID}} {{.Repository}}",
            "--filter",
            &format!("label=envup.box={stored}"),
        ],
    )
}

/// Two machines from one box, made at once: one image import between them.
fn one_import_for_two(engine: &'static str) -> Result<(), Failed> {
    let stored = common::boxes::stored_digest(home().path(), "tiny");
    // Every image of the box goes first, tagged or left untagged by an
    // earlier run that was interrupted or raced another on this host.
    // (Snapshots carry the label too; they are other tests' and stay.)
    let old = box_images(engine, &stored);
    for line in old.lines().filter(|l| !l.contains("envup-snapshot-")) {
        if let Some(id) = line.split_whitespace().next() {
            let _ = std::process::Command::new(engine)
                .args(["rmi", "--force", id])
                .output();
        }
    }
    let p = Project::with_envfile(&format!(
        "[defaults]\nbox = \"tiny\"\nbackend = \"container\"\ncontainer = {{ engine = \"{engine}\" }}\n\
         [machines.a]\n[machines.b]\n"
    ));
    envup(&p, &["up", "--jobs", "2"]).status(0);
    // Images from the box's rootfs (snapshots made from it carry its label
    // too, under their own names): a second import would leave one more.
    let ids = box_images(engine, &stored);
    let n = ids
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.contains("envup-snapshot-"))
        .count();
    envup(&p, &["destroy", "-f"]).status(0);
    check(n == 1, format!("{n} images of the box: {ids}"))
}

/// A box as vagrant-lxc builds them (its tree under `./rootfs/` inside
/// `rootfs.tar.gz`), made here from `tiny`'s rootfs, comes up on `backend`
/// (a container engine, `lxc` or `jail`) and answers as `tiny` does.
fn vagrant_lxc_box(backend: &'static str) -> Result<(), Failed> {
    let rootfs = common::boxes::stored_dir(home().path(), "tiny").join("rootfs.tar");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tiny-lxc.box");
    common::boxes::vagrant_lxc_box(&rootfs, &file);
    let machine = match backend {
        "docker" | "podman" => {
            format!("backend = \"container\"\ncontainer = {{ engine = \"{backend}\" }}")
        }
        _ => format!("backend = \"{backend}\""),
    };
    // In a home of its own, so that removing the box at the end (which
    // removes the engine's image of it) touches no other test.
    let p = Project::with_envfile(&format!(
        "[machines.web]\nbox = \"vagrant/tiny-lxc\"\nmemory = \"256MiB\"\n{machine}\n"
    ));
    let run = |args: &[&str]| p.cmd(args).out();
    run(&[
        "-q",
        "box",
        "add",
        file.to_str().unwrap(),
        "--name",
        "vagrant/tiny-lxc",
    ])
    .status(0);
    if matches!(backend, "docker" | "podman") {
        // An image left by an earlier run would hide how this one imports.
        let digest = common::boxes::stored_digest(p.home.path(), "vagrant/tiny-lxc");
        let image = envup::backend::container::engine::box_image(&digest);
        let _ = std::process::Command::new(backend)
            .args(["rmi", "--force", &image])
            .output();
    }
    let up = run(&["up"]);
    let seen = (up.code() == 0).then(|| common::exec_in(p.home.path(), &p, "web", "hostname"));
    run(&["destroy", "-f"]).status(0);
    run(&["-q", "box", "remove", "vagrant/tiny-lxc", "--force"]).status(0);
    check(up.code() == 0, format!("up failed: {}", up.stderr()))?;
    let seen = seen.unwrap_or_default();
    check(seen == "web\n", format!("the machine said {seen:?}"))
}

type TestFn = Box<dyn FnOnce() -> Result<(), Failed> + Send>;

fn main() {
    let args = Arguments::from_args();
    let mut trials = Vec::new();
    for engine in ["docker", "podman", "lxc"] {
        let skip = common::engine_unavailable(engine);
        if let Some(why) = &skip {
            eprintln!("skipping the {engine} tests: {why}");
        }
        let mut tests: Vec<(String, TestFn)> = vec![
            (
                format!("{engine}_tiny_lifecycle"),
                Box::new(move || lifecycle(engine, "tiny")),
            ),
            (
                format!("{engine}_debian_lifecycle"),
                Box::new(move || lifecycle(engine, "debian/bookworm")),
            ),
        ];
        tests.push((
            format!("{engine}_vagrant_lxc_box"),
            Box::new(move || vagrant_lxc_box(engine)),
        ));
        // LXC runs the box's rootfs in place: there is no image to import.
        if engine != "lxc" {
            tests.push((
                format!("{engine}_one_import_for_two_machines"),
                Box::new(move || one_import_for_two(engine)),
            ));
        }
        for (n, f) in tests {
            trials.push(Trial::test(n, f).with_ignored_flag(skip.is_some()));
        }
    }
    // The same box on a jail (the other backend that runs rootfs trees).
    let jails = common::jails_unavailable();
    trials.push(
        Trial::test("jail_vagrant_lxc_box", || vagrant_lxc_box("jail"))
            .with_ignored_flag(jails.is_some())
            .with_kind(jails.unwrap_or_default()),
    );
    libtest_mimic::run(&args, trials).exit();
}
