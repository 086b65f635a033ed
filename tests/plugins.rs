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

/// The plugins of the tests, where envup may run them from.
fn fixtures() -> PathBuf {
    common::trusted_plugins(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/plugins"))
}

fn shipped(name: &str) -> PathBuf {
    common::trusted_plugins(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("plugins")
            .join(name),
    )
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

/// Where a test may make plugin directories whose every parent is root's
/// and closed to others (as envup wants a plugin's).
fn strict_dir() -> PathBuf {
    let d = built_plugins().join(format!("test-plugins-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A plugin that another user could change (in a directory every user
/// may write) is refused, named so, and never run, not even by `plugin
/// list`; of two plugins of one name, the second is shadowed and not run;
/// a machine on the refused one is refused with why.
fn untrusted_plugins_not_run() -> Result<(), Failed> {
    use std::os::unix::fs::PermissionsExt;
    let base = strict_dir();
    let marks = tempfile::tempdir().unwrap();
    let plugin = |dir: &Path, name: &str, mark: &str| {
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join(format!("envup-backend-{name}"));
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\ntouch {}/{mark}\ncat >/dev/null\n\
                 echo '{{\"ok\":{{\"name\":\"{name}\",\"version\":\"1\",\"protocols\":[1],\"artifacts\":[\"rootfs\"]}}}}'\n",
                marks.path().display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    let (first, second, open) = (base.join("first"), base.join("second"), base.join("open"));
    plugin(&first, "marked", "first-ran");
    plugin(&second, "marked", "second-ran");
    plugin(&open, "opened", "open-ran");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let path = format!(
        "{}:{}:{}",
        first.display(),
        second.display(),
        open.display()
    );
    let p = Project::with_envfile("[machines.web]\nbox = \"tiny\"\nbackend = \"opened\"\n");
    let run = |args: &[&str]| {
        p.cmd(args)
            .env("ENVUP_HOME", home().path().to_str().unwrap())
            .env("ENVUP_PLUGIN_PATH", &path)
            .out()
    };
    let v = run(&["--json", "plugin", "list"]).status(0).json();
    let rows = v["plugins"].as_array().cloned().unwrap_or_default();
    let status = |dir: &Path| {
        rows.iter()
            .find(|r| {
                r["path"]
                    .as_str()
                    .is_some_and(|p| p.starts_with(&*dir.to_string_lossy()))
            })
            .map(|r| (r["status"].as_str().unwrap_or("").to_owned(), r.to_string()))
            .unwrap_or_default()
    };
    let mut problems = Vec::new();
    for (dir, want) in [
        (&first, "usable"),
        (&second, "shadowed"),
        (&open, "refused"),
    ] {
        let (got, row) = status(dir);
        if got != want {
            problems.push(format!("{}: {got}, not {want}: {row}", dir.display()));
        }
    }
    if !status(&open).1.contains("written by every user") {
        problems.push(format!("the refusal does not say why: {}", status(&open).1));
    }
    let out = run(&["validate"]);
    if out.code() == 0 || !out.stderr().contains("envup does not run it") {
        problems.push(format!("a machine on the refused plugin: {}", out.stderr()));
    }
    for (mark, should) in [
        ("first-ran", true),
        ("second-ran", false),
        ("open-ran", false),
    ] {
        if marks.path().join(mark).exists() != should {
            problems.push(format!(
                "{mark}: {}",
                if should { "not run" } else { "run" }
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&base);
    check(problems.is_empty(), problems.join("\n"))
}

/// envup killed in the middle of a plugin request: the plugin dies with
/// it, and what the plugin started in its process group is ended by the
/// next envup that asks a plugin anything.
fn killed_envup_ends_its_request() -> Result<(), Failed> {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::ExitStatusExt;
    let dir = strict_dir().join("orphans");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let plugin = dir.join("envup-backend-orphans");
    std::fs::write(&plugin, "#!/bin/sh\nsleep 4747 &\nwait\n").unwrap();
    std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let p = Project::new();
    let mut running = std::process::Command::new(env!("CARGO_BIN_EXE_envup"))
        .args(["plugin", "list"])
        .current_dir(p.path())
        .env("ENVUP_HOME", home().path())
        .env("ENVUP_PLUGIN_PATH", &dir)
        .env("ENVUP_PLUGIN_TIMEOUT", "60")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Killed once the plugin has started what it starts.
    let since = Instant::now();
    while common::processes_naming(b"sleep\x004747").is_empty()
        && since.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    running.kill().unwrap();
    let status = running.wait().unwrap();
    check(
        status.signal() == Some(9),
        format!("envup was not killed: {status}"),
    )?;
    std::thread::sleep(Duration::from_millis(300));
    check(
        common::processes_naming(plugin.as_os_str().as_encoded_bytes()).is_empty(),
        "the plugin outlived the envup that ran it",
    )?;
    check(
        !common::processes_naming(b"sleep\x004747").is_empty(),
        "what the plugin started did not outlive envup (the test proves nothing)",
    )?;
    envup(&p, &dir, &["plugin", "list"]);
    let left = common::processes_naming(b"sleep\x004747");
    let _ = std::process::Command::new("pkill")
        .args(["-f", "sleep 4747"])
        .status();
    check(
        left.is_empty(),
        format!("the next envup left the killed request's processes: {left:?}"),
    )
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
        !common::state(&p).join("machines/a/plugin").exists(),
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

/// The nspawn plugin killed after it started a machine and before it
/// recorded it (its pid file gone): `destroy --force` still ends the
/// machine, found by its root on nspawn's command line.
fn nspawn_unrecorded_machine_destroyed() -> Result<(), Failed> {
    let p = Project::new();
    p.write(
        "Envfile",
        "[machines.web]\nbox = \"tiny\"\nbackend = \"nspawn\"\n",
    );
    let dir = shipped("nspawn");
    let run = |args: &[&str]| cmd(&p, &dir, args).env("ENVUP_PLUGIN_TIMEOUT", "600").out();
    let up = run(&["up"]);
    check(up.code() == 0, format!("up: {}", up.stderr()))?;
    let plugin_dir = common::state(&p).join("machines/web/plugin");
    let root = plugin_dir.join("root");
    check(
        !common::processes_naming(root.as_os_str().as_encoded_bytes()).is_empty(),
        "no nspawn process names the machine's root",
    )?;
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(common::state(&p).join("machines/web/state.json")).unwrap(),
    )
    .unwrap();
    let port = state["ssh"]["port"].as_u64().unwrap_or_default() as u16;
    std::fs::remove_file(plugin_dir.join("pid")).unwrap();
    let out = run(&["destroy", "--force"]);
    // The machine itself too, not only nspawn: its SSH server is gone.
    let answers = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
    let left = common::processes_naming(root.as_os_str().as_encoded_bytes());
    for l in &left {
        if let Some(pid) = l.split(':').next() {
            let _ = std::process::Command::new("kill")
                .args(["-9", pid])
                .status();
        }
    }
    check(out.code() == 0, format!("destroy: {}", out.stderr()))?;
    check(left.is_empty(), format!("left running: {left:?}"))?;
    check(
        !answers,
        format!("the machine's SSH server still answers on port {port}"),
    )
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

use common::libvirt::{built_plugins, stop_daemons, unavailable as libvirt_unavailable};

fn with_libvirtd() -> Result<(), Failed> {
    common::libvirt::with_libvirtd().map_err(Failed::from)
}

type TestFn = Box<dyn FnOnce() -> Result<(), Failed> + Send>;

/// libvirt's schema validator: `virt-xml-validate` (libvirt's clients),
/// which runs `xmllint` (libxml2's utilities).
fn validator_missing() -> Option<String> {
    [
        ("virt-xml-validate", "libvirt-clients"),
        ("xmllint", "libxml2-utils"),
    ]
    .into_iter()
    .find(|(t, _)| common::host_lacks(t))
    .map(|(t, pkg)| format!("{t} is missing (apt-get install {pkg})"))
}

/// The domain the libvirt plugin would define for each driver it writes
/// (`envup-backend-libvirt domain-xml`) is valid by libvirt's own schema:
/// Xen, bhyve and VMware cannot run here, so their XML is checked so.
fn libvirt_domains_valid() -> Result<(), Failed> {
    let dir = tempfile::tempdir().unwrap();
    for uri in [
        "qemu:///system",
        "xen:///system",
        "bhyve:///system",
        "vmwarews:///session",
    ] {
        let req = serde_json::json!({
            "dir": "/var/lib/envup/m's <dir>",
            "ssh_port": 2222,
            "machine": {
                "name": "web", "hostname": "web", "cpus": 1, "memory": 536870912u64, "disk": 0,
                "forwards": [{"guest": 80, "host": 8080, "host_ip": "127.0.0.1", "protocol": "tcp"}],
                "shares": [], "options": {"uri": uri}
            },
            "box": {
                "name": "tiny", "version": "1.0.0", "digest": "0".repeat(64), "dir": "/store/x",
                "user": "root", "unpacked": {}, "formats": {"disk": "qcow2"},
                "artifacts": {"disk": "/store/x/disk.qcow2", "kernel": "/store/x/vmlinux"},
                "boot": {"cmdline": "root=/dev/vda rw console=ttyS0 <&>"}
            }
        });
        let mut child = std::process::Command::new(built_plugins().join("envup-backend-libvirt"))
            .arg("domain-xml")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(req.to_string().as_bytes()).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        check(
            out.status.success(),
            format!("{uri}: {}", String::from_utf8_lossy(&out.stderr)),
        )?;
        let f = dir.path().join("d.xml");
        std::fs::write(&f, &out.stdout).unwrap();
        let o = std::process::Command::new("virt-xml-validate")
            .arg(&f)
            .arg("domain")
            .output()
            .unwrap();
        check(
            o.status.success(),
            format!(
                "{uri}: {}{}\n{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr),
                String::from_utf8_lossy(&out.stdout)
            ),
        )?;
    }
    Ok(())
}

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
            "killed_envup_ends_its_request",
            None,
            Box::new(killed_envup_ends_its_request),
        ),
        (
            "untrusted_plugins_not_run",
            None,
            Box::new(untrusted_plugins_not_run),
        ),
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
            "libvirt_domains_valid",
            validator_missing(),
            Box::new(libvirt_domains_valid),
        ),
        (
            "nspawn_kit_tiny",
            nspawn.clone(),
            Box::new(|| kit(&shipped("nspawn"), "nspawn", "tiny")),
        ),
        (
            "nspawn_unrecorded_machine_destroyed",
            nspawn.clone(),
            Box::new(nspawn_unrecorded_machine_destroyed),
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
