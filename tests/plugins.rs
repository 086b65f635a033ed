//! Backend plugins: broken ones (a crash, a hang, garbage, an unknown
//! protocol version, a wrong name) get clear errors naming the plugin, with
//! nothing left running; a plugin's options are checked against its schema
//! with the Envfile's line; an unknown backend says where envup looked;
//! and the plugins in `plugins/` pass the conformance kit on real boxes.
//! A test that needs what the host lacks is reported as ignored, with why.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{Project, check};
use libtest_mimic::{Arguments, Failed, Trial};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/plugins")
}

fn shipped(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("plugins")
        .join(name)
}

fn home() -> &'static tempfile::TempDir {
    static HOME: OnceLock<tempfile::TempDir> = OnceLock::new();
    HOME.get_or_init(|| common::boxes::home_with(&["tiny"]))
}

fn with_debian() {
    static ADDED: OnceLock<()> = OnceLock::new();
    ADDED.get_or_init(|| {
        let b = common::boxes::built_box("debian-bookworm");
        envup(
            &Project::new(),
            &fixtures(),
            &["-q", "box", "add", b.to_str().unwrap()],
        )
        .status(0);
    });
}

/// envup with plugins searched for in `dir` first (PATH is the system's,
/// which holds none), and a deadline of 2 s on every call.
fn cmd(p: &Project, dir: &Path, args: &[&str]) -> common::Run {
    p.cmd(args)
        .env("ENVUP_HOME", home().path().to_str().unwrap())
        .env("ENVUP_PLUGIN_PATH", dir.to_str().unwrap())
        .env("ENVUP_PLUGIN_TIMEOUT", "2")
}

fn envup(p: &Project, dir: &Path, args: &[&str]) -> common::Done {
    cmd(p, dir, args).out()
}

fn broken_plugins_named() -> Result<(), Failed> {
    let p = Project::new();
    home();
    let started = Instant::now();
    let out = envup(&p, &fixtures(), &["--json", "plugin", "list"]).status(0);
    // Every plugin is asked at once: the hang costs its deadline once.
    check(
        started.elapsed() < Duration::from_secs(10),
        format!("plugin list took {:?}", started.elapsed()),
    )?;
    let v: serde_json::Value = serde_json::from_str(&out.stdout()).unwrap();
    let row = |name: &str| {
        v["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} not listed: {v}"))
    };
    let expect = [
        ("noop", "usable", ""),
        ("lingers", "usable", ""),
        (
            "crashy",
            "broken",
            "was killed by signal 11 (SIGSEGV) on `describe` without a reply; it said:\n  crashy: segmentation fault (pretend)",
        ),
        (
            "hangs",
            "broken",
            "it did not answer `describe` within 2 s, and was killed",
        ),
        (
            "garbage",
            "broken",
            "its reply to `describe` is not the protocol's JSON (expected value at line 1 column 1; it printed \"hello there\\n\")",
        ),
        (
            "future",
            "incompatible",
            "it speaks protocol 7, 8; this envup speaks 1",
        ),
        (
            "misnamed",
            "broken",
            "it calls itself `other`, but its file name says `misnamed`",
        ),
    ];
    for (name, status, problem) in expect {
        let r = row(name);
        check(r["status"] == status, format!("{name}: {r}"))?;
        check(
            r["problem"].as_str().unwrap_or("").contains(problem),
            format!("{name}: {r}"),
        )?;
    }
    // The hang was killed with its process group; what `lingers` left
    // behind holding its stdout did not hold envup.
    check(
        common::processes_naming(b"sleep\x004242").is_empty(),
        "the hung plugin still runs",
    )?;
    let _ = std::process::Command::new("pkill")
        .args(["-f", "sleep 4343"])
        .status();

    // An Envfile that names a broken plugin: `up` names it and says why.
    p.write(
        "Envfile",
        "[machines.a]\nbox = \"tiny\"\nbackend = \"crashy\"\n",
    );
    envup(&p, &fixtures(), &["up"])
        .status(1)
        .stderr_has("backend plugin `crashy` (")
        .stderr_has("envup-backend-crashy): it was killed by signal 11 (SIGSEGV)");
    check(
        !p.path().join(".envup/machines/a/plugin").exists(),
        "a machine directory was made for a plugin that never answered",
    )?;
    Ok(())
}

fn unknown_backend_says_where() -> Result<(), Failed> {
    let p = Project::with_envfile("[machines.a]\nbox = \"tiny\"\nbackend = \"nosuch\"\n");
    envup(&p, &fixtures(), &["validate"])
        .status(2)
        .stderr_has("unknown backend `nosuch`")
        .stderr_has(&format!(
            "no plugin `envup-backend-nosuch` was found in {} (ENVUP_PLUGIN_PATH)",
            fixtures().display()
        ))
        .stderr_has("(PATH)");
    Ok(())
}

fn options_checked_by_schema() -> Result<(), Failed> {
    let p = Project::with_envfile(
        "[machines.a]\nbox = \"tiny\"\nbackend = \"noop\"\n\n[machines.a.noop]\nsize = 0\n",
    );
    envup(&p, &fixtures(), &["validate"])
        .status(2)
        .stderr_has("0 is less than 1")
        .stderr_has("Envfile:6:8");
    p.write(
        "Envfile",
        "[machines.a]\nbox = \"tiny\"\nbackend = \"noop\"\n\n[defaults.noop]\ncolour = \"red\"\n",
    );
    envup(&p, &fixtures(), &["validate"])
        .status(2)
        .stderr_has("unknown key `colour`, expected one of `size`")
        .stderr_has("Envfile:6:1");
    p.write(
        "Envfile",
        "[machines.a]\nbox = \"tiny\"\nbackend = \"noop\"\n\n[machines.a.noop]\nsize = 3\n",
    );
    envup(&p, &fixtures(), &["validate"]).status(0);
    Ok(())
}

/// The conformance kit on a plugin in `dir`, from `box_`: every step
/// passes.
fn kit(dir: &Path, plugin: &str, box_: &str) -> Result<(), Failed> {
    let p = Project::new();
    let out = cmd(
        &p,
        dir,
        &["--json", "plugin", "check", plugin, "--box", box_],
    )
    .env("ENVUP_PLUGIN_TIMEOUT", "600")
    .out();
    let v: serde_json::Value = serde_json::from_str(&out.stdout())
        .map_err(|e| format!("{e}: {}\n{}", out.stdout(), out.stderr()))?;
    let steps = v["steps"].as_array().cloned().unwrap_or_default();
    let failed: Vec<String> = steps
        .iter()
        .filter(|s| s["result"] == "fail")
        .map(|s| format!("{}: {}", s["step"], s["detail"]))
        .collect();
    check(
        failed.is_empty() && v["passed"] == true,
        format!("failed steps:\n{}", failed.join("\n")),
    )?;
    for step in ["up", "provisioner", "halt", "up again", "destroy"] {
        check(
            steps
                .iter()
                .any(|s| s["step"] == step && s["result"] == "pass"),
            format!("no passing `{step}` step: {v}"),
        )?;
    }
    check(out.code() == 0, format!("exit {}", out.code()))?;
    Ok(())
}

/// libvirtd (and virtlogd) started here when none answers, and stopped
/// when the tests end; one that already ran is left alone.
static DAEMONS: std::sync::Mutex<Option<Vec<std::process::Child>>> = std::sync::Mutex::new(None);

fn libvirtd_answers() -> bool {
    std::process::Command::new("virsh")
        .args(["-c", "qemu:///system", "version", "--daemon"])
        .stdin(std::process::Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success())
}

fn with_libvirtd() -> Result<(), Failed> {
    let mut daemons = DAEMONS.lock().unwrap();
    if daemons.is_some() || libvirtd_answers() {
        daemons.get_or_insert_with(Vec::new);
        return Ok(());
    }
    let mut started = Vec::new();
    for d in ["virtlogd", "libvirtd"] {
        started.push(
            std::process::Command::new(d)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot start {d}: {e}"))?,
        );
    }
    *daemons = Some(started);
    let until = Instant::now() + Duration::from_secs(30);
    while !libvirtd_answers() {
        check(Instant::now() < until, "libvirtd did not answer in 30 s")?;
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn stop_daemons() {
    for mut c in DAEMONS.lock().unwrap().take().unwrap_or_default() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = c.wait();
    }
}

/// The libvirt plugin is built with envup, beside it.
fn built_plugins() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_envup-backend-libvirt"))
        .parent()
        .unwrap()
        .to_owned()
}

fn libvirt_unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("libvirt's system connection needs root".into());
    }
    [
        "libvirtd",
        "virtlogd",
        "virsh",
        "qemu-system-x86_64",
        "qemu-img",
    ]
    .into_iter()
    .find(|t| common::host_lacks(t))
    .map(|t| {
        format!("{t} is missing (apt-get install libvirt-daemon-system qemu-system-x86 qemu-utils)")
    })
}

type TestFn = Box<dyn FnOnce() -> Result<(), Failed> + Send>;

fn nspawn_unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("the nspawn plugin needs root".into());
    }
    common::host_lacks("systemd-nspawn")
        .then(|| "systemd-nspawn is missing (apt-get install systemd-container)".into())
}

fn main() {
    let args = Arguments::from_args();
    let nspawn = nspawn_unavailable();
    let libvirt = libvirt_unavailable();
    let tests: Vec<(&str, Option<String>, TestFn)> = vec![
        ("broken_plugins_named", None, Box::new(broken_plugins_named)),
        (
            "unknown_backend_says_where",
            None,
            Box::new(unknown_backend_says_where),
        ),
        (
            "options_checked_by_schema",
            None,
            Box::new(options_checked_by_schema),
        ),
        (
            "nspawn_kit_tiny",
            nspawn.clone(),
            Box::new(|| kit(&shipped("nspawn"), "nspawn", "tiny")),
        ),
        (
            "nspawn_kit_debian",
            nspawn,
            Box::new(|| {
                with_debian();
                kit(&shipped("nspawn"), "nspawn", "debian/bookworm")
            }),
        ),
        (
            "libvirt_kit_tiny",
            libvirt.clone(),
            Box::new(|| {
                with_libvirtd()?;
                kit(&built_plugins(), "libvirt", "tiny")
            }),
        ),
        (
            "libvirt_kit_debian",
            libvirt,
            Box::new(|| {
                with_libvirtd()?;
                with_debian();
                kit(&built_plugins(), "libvirt", "debian/bookworm")
            }),
        ),
    ];
    let trials = tests
        .into_iter()
        .map(|(name, skip, f)| {
            if let Some(why) = &skip {
                eprintln!("skipping {name}: {why}");
            }
            Trial::test(name, f)
                .with_ignored_flag(skip.is_some())
                .with_kind(skip.unwrap_or_default())
        })
        .collect();
    let done = libtest_mimic::run(&args, trials);
    stop_daemons();
    done.exit();
}
