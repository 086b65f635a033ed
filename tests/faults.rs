//! Faults injected for real: `envup up` (and `snapshot save` and
//! `restore`, `box add`)
//! killed with SIGKILL at each step boundary (`ENVUP_FAULT=POINT` makes
//! envup send itself the signal there), and helpers killed under running
//! machines, on each backend this host runs. After each: the next `up`
//! converges on a working machine, and `destroy -f` leaves no process,
//! mount, network namespace, cgroup, container or store debris.
//! A backend the host lacks is reported as ignored, with the reason.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::sync::OnceLock;

use common::{Project, check};
use libtest_mimic::{Arguments, Failed, Trial};

/// One ENVUP_HOME with `tiny`, shared by the tests.
fn home() -> &'static tempfile::TempDir {
    static HOME: OnceLock<tempfile::TempDir> = OnceLock::new();
    HOME.get_or_init(|| common::boxes::home_with(&["tiny"]))
}

fn envup_in(home: &Path, p: &Project, args: &[&str]) -> common::Done {
    p.cmd(args).env("ENVUP_HOME", home.to_str().unwrap()).out()
}

/// `envup ARGS` with `ENVUP_FAULT=point`: it must die of SIGKILL there.
fn killed_at(home: &Path, p: &Project, args: &[&str], point: &str) -> Result<(), Failed> {
    let o = p
        .cmd(args)
        .env("ENVUP_HOME", home.to_str().unwrap())
        .env("ENVUP_FAULT", point)
        .out();
    check(
        o.0.status.signal() == Some(9),
        format!(
            "envup {} did not die at {point}: {} {}",
            args.join(" "),
            o.0.status,
            o.stderr()
        ),
    )
}

fn envfile(backend: &str) -> String {
    let table = match backend {
        "docker" | "podman" => format!("\n[machines.web.container]\nengine = \"{backend}\"\n"),
        _ => String::new(),
    };
    let backend = match backend {
        "docker" | "podman" => "container",
        b => b,
    };
    format!(
        "[machines.web]\nbox = \"tiny\"\nbackend = \"{backend}\"\nmemory = \"256MiB\"\n\
         provision = [{{ name = \"mark\", shell = \"echo x >> /root/runs\" }}]\n{table}"
    )
}

/// What the project's machines hold on the host, by name.
fn host_names(p: &Project) -> Vec<String> {
    let mut names = common::jail_ids(p);
    names.extend(common::containers(p));
    names
}

/// After a fault: `up` brings the machine up and provisioned, then
/// `destroy -f` leaves nothing of it.
fn converges(home: &Path, p: &Project, engine: Option<&str>) -> Result<(), Failed> {
    let up = envup_in(home, p, &["up"]);
    check(
        up.code() == 0,
        format!("up after the fault: {}", up.stderr()),
    )?;
    let ran = common::exec_in(home, p, "web", "cat /root/runs");
    check(
        ran == "x\n",
        format!("the provisioner ran {ran:?} times, not once"),
    )?;
    on_its_network(home, p)?;
    let names = host_names(p);
    let destroyed = envup_in(home, p, &["destroy", "-f"]);
    check(
        destroyed.code() == 0,
        format!("destroy: {}", destroyed.stderr()),
    )?;
    common::nothing_left(p, &names)?;
    if let Some(engine) = engine {
        let left = common::engine_containers_left(engine, &names);
        check(
            left.is_empty(),
            format!("{engine} containers {left:?} left"),
        )?;
    }
    Ok(())
}

/// The machine is on the project network as recorded: its names say its
/// recorded address, and the host reaches it there.
fn on_its_network(home: &Path, p: &Project) -> Result<(), Failed> {
    let status = envup_in(home, p, &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&status.stdout()).unwrap();
    let web = v["machines"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["name"] == "web"))
        .cloned()
        .unwrap_or_default();
    let Some(addr) = web["address"].as_str() else {
        return Err(format!("no address recorded: {}", status.stdout()).into());
    };
    let named = common::exec_in(home, p, "web", "grep -w web /etc/hosts || true");
    check(
        named
            .lines()
            .any(|l| l.split_whitespace().next() == Some(addr)),
        format!("/etc/hosts names web {named:?}, its address is {addr}"),
    )?;
    common::exec_in(
        home,
        p,
        "web",
        "mkdir -p /www && echo here > /www/index.html && (busybox httpd -p 8000 -h /www || true)",
    );
    let o = std::process::Command::new("curl")
        .args(["-s", "-m", "5", &format!("http://{addr}:8000/")])
        .output()
        .unwrap();
    let body = String::from_utf8_lossy(&o.stdout).trim().to_owned();
    check(
        body == "here",
        format!("the host got {body:?} from web at {addr}"),
    )
}

/// One machine of an `up -j 1` fails (its forwarded port is taken): the
/// machine after it comes up on the project network all the same (the
/// failed one's going takes the network, which the next one makes again),
/// and once the port is free the next `up` brings up the first.
fn neighbour_fails(backend: &'static str) -> Result<(), Failed> {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let (kind, table) = match backend {
        "docker" | "podman" => (
            "container",
            format!("[machines.a.container]\nengine = \"{backend}\"\n"),
        ),
        b => (b, String::new()),
    };
    let p = Project::with_envfile(&format!(
        "[machines.a]\nbox = \"tiny\"\nbackend = \"{kind}\"\n\
         forward = [{{ guest = 80, host = {port} }}]\n{table}\n{}",
        envfile(backend)
    ));
    let home = home().path();
    let up = envup_in(home, &p, &["up", "-j", "1"]);
    check(up.code() != 0, "up with a's port taken succeeded")?;
    let status = envup_in(home, &p, &["status"]);
    check(
        status
            .stdout()
            .lines()
            .any(|l| l.trim_start().starts_with("web ") && l.contains("running")),
        format!("web is not running: {}{}", status.stdout(), up.stderr()),
    )?;
    on_its_network(home, &p)?;
    drop(taken);
    let engine = matches!(backend, "docker" | "podman").then_some(backend);
    converges(home, &p, engine)?;
    Ok(())
}

/// `destroy peer` killed once peer has left the network's record, before
/// the other machines' names say so: the next command (here `up web`,
/// which has nothing else to do) writes them.
fn names_after_killed_destroy() -> Result<(), Failed> {
    let p = Project::with_envfile(&format!(
        "{}\n[machines.peer]\nbox = \"tiny\"\nbackend = \"jail\"\nmemory = \"128MiB\"\n",
        envfile("jail")
    ));
    let home = home().path();
    envup_in(home, &p, &["up"]).status(0);
    let hosts = |p: &Project| common::exec_in(home, p, "web", "cat /etc/hosts");
    check(
        hosts(&p).contains("peer"),
        format!("web's names lack peer: {}", hosts(&p)),
    )?;
    killed_at(home, &p, &["destroy", "-f", "peer"], "net:detached")?;
    let up = envup_in(home, &p, &["up", "web"]);
    check(up.code() == 0, format!("up web: {}", up.stderr()))?;
    check(
        !hosts(&p).contains("peer"),
        format!("web still names peer: {}", hosts(&p)),
    )?;
    converges(home, &p, None)
}

/// A project directory deleted under its running machine: `global-status`
/// shows the machine running with no project, `global-status --prune`
/// destroys it, and nothing of it is left (its network's claim neither).
fn deleted_project(backend: &'static str) -> Result<(), Failed> {
    let p = Project::with_envfile(&envfile(backend));
    let home = home().path();
    envup_in(home, &p, &["up"]).status(0);
    let names = host_names(&p);
    std::fs::remove_dir_all(p.path()).unwrap();
    let global = |args: &[&str]| {
        p.cmd(args)
            .cwd(Path::new("/"))
            .env("ENVUP_HOME", home.to_str().unwrap())
            .out()
    };
    let shown = global(&["global-status"]);
    check(
        shown
            .stdout()
            .lines()
            .any(|l| l.contains(&*p.path().to_string_lossy()) && l.contains("running, no project")),
        format!("global-status: {}", shown.stdout()),
    )?;
    let pruned = global(&["global-status", "--prune"]);
    check(
        pruned.code() == 0,
        format!("--prune: {} {}", pruned.stdout(), pruned.stderr()),
    )?;
    let shown = global(&["global-status"]);
    check(
        !shown.stdout().contains(&*p.path().to_string_lossy()),
        format!("global-status after --prune: {}", shown.stdout()),
    )?;
    common::nothing_left(&p, &names)?;
    let left = common::engine_containers_left(backend, &names);
    check(
        left.is_empty(),
        format!("{backend} containers {left:?} left"),
    )
}

/// A halted machine's bridge gone (as after a reboot), and the `up` that
/// makes it again killed once the bridge is there, down and without its
/// address: the next `up` finishes the bridge, and the machine is on it.
fn half_made_bridge() -> Result<(), Failed> {
    let p = Project::with_envfile(&envfile("jail"));
    let home = home().path();
    envup_in(home, &p, &["up"]).status(0);
    envup_in(home, &p, &["halt"]).status(0);
    let br = envup::network::bridge_of(&common::state(&p));
    let del = std::process::Command::new("ip")
        .args(["link", "del", &br])
        .status()
        .unwrap();
    check(del.success(), format!("ip link del {br}"))?;
    killed_at(home, &p, &["up"], "net:bridged")?;
    let up = envup_in(home, &p, &["up"]);
    check(
        up.code() == 0,
        format!("up after the kill: {}", up.stderr()),
    )?;
    on_its_network(home, &p)?;
    converges(home, &p, None)
}

/// An emptied `network.json`: no other project can take the subnet
/// meanwhile, the next `up` makes the record again from the project's
/// claim and its running machines (which stay on the network, at their
/// addresses), and `destroy -f` leaves nothing.
fn emptied_network_record() -> Result<(), Failed> {
    let p = Project::with_envfile(&envfile("jail"));
    let home = home().path();
    envup_in(home, &p, &["up"]).status(0);
    let status = envup_in(home, &p, &["status", "--json"]).status(0).stdout();
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    let subnet = v["network"].as_str().unwrap_or_default().to_owned();
    let addr = v["machines"][0]["address"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    std::fs::write(common::state(&p).join("network.json"), "").unwrap();
    let other = Project::with_envfile(&format!(
        "[project]\nnetwork = \"{subnet}\"\n\n{}",
        envfile("jail")
    ));
    let taken = envup_in(home, &other, &["up"]);
    if taken.code() == 0 {
        envup_in(home, &other, &["destroy", "-f"]);
    }
    check(
        taken.code() != 0 && taken.stderr().contains("another project's"),
        format!("another project took {subnet}: {}", taken.stderr()),
    )?;
    let up = envup_in(home, &p, &["up"]);
    check(
        up.code() == 0,
        format!("up after emptying: {}", up.stderr()),
    )?;
    let again = envup_in(home, &p, &["status", "--json"]).status(0).stdout();
    check(
        again.contains(&format!("\"{addr}\"")),
        format!("web is no longer at {addr}: {again}"),
    )?;
    on_its_network(home, &p)?;
    converges(home, &p, None)
}

/// `up` killed at `point`, then `up` and `destroy -f`.
fn kill_up(backend: &'static str, point: &'static str) -> Result<(), Failed> {
    let p = Project::with_envfile(&envfile(backend));
    killed_at(home().path(), &p, &["up"], point)?;
    let engine = matches!(backend, "docker" | "podman").then_some(backend);
    converges(home().path(), &p, engine)
}

/// The first unpack of a box's rootfs killed before it was complete: the
/// partial tree is named as such by `box verify`, the next `up` unpacks
/// afresh, and `box prune` leaves no partial tree behind.
fn killed_unpack() -> Result<(), Failed> {
    let home = common::boxes::home_with(&["tiny"]);
    let p = Project::with_envfile(&envfile("jail"));
    killed_at(home.path(), &p, &["up"], "rootfs:unpacked")?;
    let stored = common::boxes::stored_dir(home.path(), "tiny");
    let tmp = home.path().join("boxes-v1/tmp");
    let partial = |dir: &Path| {
        std::fs::read_dir(dir)
            .map(|d| d.flatten().filter(|e| e.path().is_dir()).count())
            .unwrap_or(0)
    };
    check(partial(&tmp) == 1, "no partial unpack to find")?;
    check(
        !stored.join("rootfs").exists(),
        "a partial rootfs is in place",
    )?;
    let verify = envup_in(home.path(), &p, &["box", "verify"]);
    check(
        verify.stdout().contains("partial"),
        format!("box verify: {} {}", verify.stdout(), verify.stderr()),
    )?;
    converges(home.path(), &p, None)?;
    check(
        partial(&tmp) == 0,
        "the partial unpack is still in the store",
    )
}

/// `box add` killed with the box staged: no half-stored box; the next add
/// stores it and removes what the first left.
fn killed_add() -> Result<(), Failed> {
    let home = tempfile::tempdir().unwrap();
    let p = Project::new();
    let b = common::boxes::built_box("tiny");
    let add = ["box", "add", b.to_str().unwrap()];
    killed_at(home.path(), &p, &add, "box:staged")?;
    let list = envup_in(home.path(), &p, &["box", "list"]);
    check(
        !list.stdout().contains("tiny"),
        format!("a box is listed after a killed add: {}", list.stdout()),
    )?;
    envup_in(home.path(), &p, &add).status(0);
    let tmp = home.path().join("boxes-v1/tmp");
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    check(
        left.is_empty(),
        format!("left in the store's tmp: {left:?}"),
    )?;
    envup_in(home.path(), &p, &["box", "verify"]).status(0);
    Ok(())
}

/// A jail's supervisor killed under it: `status` says stopped, `exec`
/// says it is not running, `up` starts it again.
fn supervisor_killed() -> Result<(), Failed> {
    let p = Project::with_envfile(&envfile("jail"));
    envup_in(home().path(), &p, &["up"]).status(0);
    let pidfile = common::state(&p).join("machines/web/jail/supervisor.pid");
    let text = std::fs::read_to_string(&pidfile).unwrap();
    let pid: i32 = text.split_whitespace().next().unwrap().parse().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let exec = envup_in(home().path(), &p, &["exec", "web", "--", "true"]);
    check(
        exec.code() != 0 && exec.stderr().contains("not running"),
        format!("exec on a dead jail: {}", exec.stderr()),
    )?;
    let status = envup_in(home().path(), &p, &["status"]);
    check(
        status.stdout().contains("stopped"),
        format!("status: {}", status.stdout()),
    )?;
    converges(home().path(), &p, None)
}

/// `snapshot save` killed with the machine frozen: the next command finds
/// it frozen and thaws it.
fn snapshot_killed(backend: &'static str) -> Result<(), Failed> {
    let p = Project::with_envfile(&envfile(backend));
    envup_in(home().path(), &p, &["up"]).status(0);
    killed_at(
        home().path(),
        &p,
        &["snapshot", "save", "web", "s1"],
        "snapshot:frozen",
    )?;
    let status = envup_in(home().path(), &p, &["status"]);
    check(
        status.stdout().contains("running"),
        format!("status: {}", status.stdout()),
    )?;
    let ran = common::exec_in(home().path(), &p, "web", "echo alive");
    check(ran == "alive\n", format!("exec after the kill: {ran:?}"))?;
    envup_in(home().path(), &p, &["snapshot", "save", "web", "s1"]).status(0);
    converges(home().path(), &p, None)
}

/// `snapshot restore` killed once the snapshot's copy is made, and once it
/// has taken the layer's place: the machine's files are whole (its own,
/// or the snapshot's), `up` starts it, and a restore again works.
fn restore_killed(backend: &'static str, point: &'static str) -> Result<(), Failed> {
    let p = Project::with_envfile(&envfile(backend));
    let home = home().path();
    envup_in(home, &p, &["up"]).status(0);
    common::exec_in(home, &p, "web", "echo saved > /root/mark");
    envup_in(home, &p, &["snapshot", "save", "web", "s1"]).status(0);
    common::exec_in(home, &p, "web", "echo changed > /root/mark");
    killed_at(home, &p, &["snapshot", "restore", "web", "s1"], point)?;
    let up = envup_in(home, &p, &["up"]);
    check(
        up.code() == 0,
        format!("up after the kill: {}", up.stderr()),
    )?;
    let want = if point == "snapshot:copied" {
        "changed\n"
    } else {
        "saved\n"
    };
    let mark = common::exec_in(home, &p, "web", "cat /root/mark");
    check(
        mark == want,
        format!("after the kill the machine has {mark:?}"),
    )?;
    let again = envup_in(home, &p, &["snapshot", "restore", "web", "s1"]);
    check(
        again.code() == 0,
        format!("restore again: {}", again.stderr()),
    )?;
    let mark = common::exec_in(home, &p, "web", "cat /root/mark");
    check(mark == "saved\n", format!("restored: {mark:?}"))?;
    converges(home, &p, None)
}

/// The memory limit of the cgroup process `pid` is in, as the host sees it.
fn memory_limit_of(pid: &str) -> Option<u64> {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let read = |p: String| std::fs::read_to_string(p).ok()?.trim().parse::<u64>().ok();
    for line in cgroups.lines() {
        let mut f = line.splitn(3, ':');
        let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
        if controllers.split(',').any(|c| c == "memory") {
            return read(format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"));
        }
        if controllers.is_empty() {
            for root in ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"] {
                if let Some(v) = read(format!("{root}{path}/memory.max")) {
                    return Some(v);
                }
            }
        }
    }
    None
}

/// The memory the machine `web` has now, as its backend gave it.
fn memory_now(backend: &str, p: &Project) -> Option<u64> {
    match backend {
        "jail" => {
            let id = common::jail_ids(p).pop()?;
            let procs =
                std::fs::read_to_string(format!("/sys/fs/cgroup/pids/envup/{id}/cgroup.procs"))
                    .or_else(|_| {
                        std::fs::read_to_string(format!("/sys/fs/cgroup/envup/{id}/cgroup.procs"))
                    })
                    .ok()?;
            memory_limit_of(procs.lines().next()?.trim())
        }
        "docker" | "podman" => {
            let name = common::containers(p).pop()?;
            let o = std::process::Command::new(backend)
                .args(["inspect", "--format", "{{.State.Pid}}", &name])
                .output()
                .ok()?;
            memory_limit_of(String::from_utf8_lossy(&o.stdout).trim())
        }
        _ => {
            // qemu's -m, in MiB, on its command line.
            let procs = common::processes_naming(common::state(p).as_os_str().as_encoded_bytes());
            let line = procs.iter().find(|l| l.contains("qemu-system"))?;
            let mut words = line.split(' ');
            words.find(|w| *w == "-m")?;
            let mib: u64 = words.next()?.trim_end_matches('M').parse().ok()?;
            Some(mib << 20)
        }
    }
}

/// `reload` after `memory` changed in the Envfile: the machine then has
/// the new memory (in its cgroup, in the engine, on qemu's command line),
/// and `plan` no longer shows the change.
fn reload_applies(backend: &'static str) -> Result<(), Failed> {
    let p = Project::with_envfile(&envfile(backend));
    envup_in(home().path(), &p, &["up"]).status(0);
    let before = memory_now(backend, &p);
    check(
        before == Some(256 << 20),
        format!("memory before: {before:?}"),
    )?;
    p.write("Envfile", &envfile(backend).replace("256MiB", "384MiB"));
    let plan = envup_in(home().path(), &p, &["plan"]);
    check(
        plan.stderr().contains("memory") || plan.stdout().contains("memory"),
        format!(
            "plan does not show the change: {}{}",
            plan.stdout(),
            plan.stderr()
        ),
    )?;
    envup_in(home().path(), &p, &["reload"]).status(0);
    let after = memory_now(backend, &p);
    check(
        after == Some(384 << 20),
        format!("memory after reload: {after:?}"),
    )?;
    let plan = envup_in(home().path(), &p, &["plan"]);
    check(
        !(plan.stderr() + &plan.stdout()).contains("memory:"),
        format!(
            "plan still shows a change: {}{}",
            plan.stdout(),
            plan.stderr()
        ),
    )?;
    converges_after_reload(&p, backend)
}

/// The machine keeps working after the reload, and goes cleanly.
fn converges_after_reload(p: &Project, backend: &str) -> Result<(), Failed> {
    let names = host_names(p);
    envup_in(home().path(), p, &["destroy", "-f"]).status(0);
    common::nothing_left(p, &names)?;
    if matches!(backend, "docker" | "podman") {
        check(common::containers(p).is_empty(), "a container is left")?;
    }
    Ok(())
}

/// A small tmpfs, unmounted on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn new(size: &str) -> Tmpfs {
        let d = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(d.path())
            .status()
            .unwrap();
        assert!(ok.success(), "cannot mount a tmpfs");
        Tmpfs(d)
    }

    /// Fill it, but for about `free` KiB.
    fn fill_but(&self, free: u64) {
        use std::io::Write;
        let reserve = self.0.path().join("reserve");
        std::fs::write(&reserve, vec![0u8; (free * 1024) as usize]).unwrap();
        let mut f = std::fs::File::create(self.0.path().join("filler")).unwrap();
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        drop(f);
        std::fs::remove_file(reserve).unwrap();
    }

    fn empty(&self) {
        let _ = std::fs::remove_file(self.0.path().join("filler"));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .status();
    }
}

/// A project on a disk that fills up at one step or another of `up`
/// (the space left is tried from 16 KiB up): `up` either works or fails
/// with an error that says so, never a panic or a hang; a new machine that
/// failed is gone, nothing of it left running; with space again, `up`
/// works and `destroy` leaves nothing.
fn disk_full() -> Result<(), Failed> {
    let disk = Tmpfs::new("4m");
    // The projects' state (the machine's own layer, its records) on the
    // small disk; the store, with the box, on the host's.
    let home = common::boxes::home_with(&["tiny"]);
    let states = disk.0.path().join("projects");
    std::fs::create_dir(&states).unwrap();
    std::os::unix::fs::symlink(&states, home.path().join("projects")).unwrap();
    let home = home.path();
    let mut failed_while_creating = 0;
    for free in (16..=112).step_by(16) {
        let p = Project {
            dir: tempfile::tempdir_in(disk.0.path()).unwrap(),
            home: tempfile::tempdir().unwrap(),
        };
        p.write("Envfile", &envfile("jail"));
        disk.fill_but(free);
        let up = envup_in(home, &p, &["up"]);
        let said = up.stdout() + &up.stderr();
        if up.code() != 0 {
            check(
                up.code() == 1 && said.contains("No space left"),
                format!("with {free} KiB free, up said (exit {}): {said}", up.code()),
            )?;
            if said.contains("creating") {
                failed_while_creating += 1;
            }
            // No machine half made: none, or one that runs (when only the
            // lock file could not be written).
            let state = std::fs::read_to_string(common::state(&p).join("machines/web/state.json"))
                .unwrap_or_default();
            check(
                !state.contains("\"creating\""),
                format!("with {free} KiB free, a machine is left creating: {said}"),
            )?;
        }
        disk.empty();
        converges(home, &p, None)?;
    }
    check(
        failed_while_creating > 0,
        "the disk never filled up while a machine was being made",
    )
}

/// A jail's or LXC container's network helper killed under it: the jail's
/// supervisor starts another at once, LXC's next command (`status` here)
/// does; SSH answers on the forwarded port again.
fn helper_killed(backend: &'static str) -> Result<(), Failed> {
    let p = Project::with_envfile(&envfile(backend));
    envup_in(home().path(), &p, &["up"]).status(0);
    let id = common::jail_ids(&p).pop().unwrap();
    let helpers = |id: &str| -> Vec<i32> {
        let o = std::process::Command::new("pgrep")
            .args(["-f", &format!("slirp4netns.*{id}")])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .filter_map(|s| s.parse().ok())
            .collect()
    };
    let old = helpers(&id);
    check(old.len() == 1, format!("helpers: {old:?}"))?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    envup_in(home().path(), &p, &["status"]).status(0);
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(common::state(&p).join("machines/web/state.json")).unwrap(),
    )
    .unwrap();
    let port = state["ssh"]["port"].as_u64().unwrap() as u16;
    let banner = || -> Option<String> {
        use std::io::Read;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .ok()?;
        let mut b = [0u8; 4];
        s.read_exact(&mut b).ok()?;
        Some(String::from_utf8_lossy(&b).into_owned())
    };
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while banner().as_deref() != Some("SSH-") {
        check(
            std::time::Instant::now() < until,
            "the forwarded SSH port did not answer again in 10 s",
        )?;
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let new = helpers(&id);
    check(
        new.len() == 1 && new != old,
        format!("helpers before {old:?}, after {new:?}"),
    )?;
    converges(home().path(), &p, None)
}

/// `box remove --force` of a box a container uses: the engine keeps its
/// image (any home's container may use it), envup says so, the machine
/// goes on working; once no container uses it, removing the box removes
/// the image. (A box of its own, so that no other test's image is touched.)
fn image_kept_in_use(engine: &'static str) -> Result<(), Failed> {
    let home = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rootfs = common::boxes::rootfs_with_user(
        &common::boxes::stored_tiny_rootfs(self::home().path()),
        &format!("img{engine}"),
    );
    let b = common::boxes::rootfs_box(dir.path(), "tiny-img", "root", &rootfs);
    let p = Project::with_envfile(&envfile(engine).replace("\"tiny\"", "\"tiny-img\""));
    let add = ["-q", "box", "add", b.to_str().unwrap()];
    envup_in(home.path(), &p, &add).status(0);
    envup_in(home.path(), &p, &["up"]).status(0);
    let digest = common::boxes::stored_digest(home.path(), "tiny-img");
    let image = format!("localhost/envup-box:{digest}");
    let has = |image: &str| {
        std::process::Command::new(engine)
            .args(["image", "inspect", image])
            .output()
            .unwrap()
            .status
            .success()
    };
    check(has(&image), "no image was made")?;
    let removed = envup_in(home.path(), &p, &["box", "remove", "tiny-img", "--force"]);
    check(
        removed.code() == 0
            && removed
                .stderr()
                .contains(&format!("kept {engine} image {image}")),
        format!("box remove said: {}{}", removed.stdout(), removed.stderr()),
    )?;
    check(has(&image), "the image in use was removed")?;
    let ran = common::exec_in(home.path(), &p, "web", "echo alive");
    check(ran == "alive\n", format!("exec: {ran:?}"))?;
    envup_in(home.path(), &p, &["destroy", "-f"]).status(0);
    envup_in(home.path(), &p, &add).status(0);
    let removed = envup_in(home.path(), &p, &["box", "remove", "tiny-img"]);
    check(
        removed
            .stdout()
            .contains(&format!("removed {engine} image {image}")),
        format!("box remove said: {}{}", removed.stdout(), removed.stderr()),
    )?;
    check(!has(&image), "the image is left")
}

/// `up` killed while a provisioner runs (which goes on in the machine):
/// the next `up` waits for it before running it again, never beside it.
fn provisioner_not_twice() -> Result<(), Failed> {
    let p = Project::with_envfile(
        "[machines.web]\nbox = \"tiny\"\nbackend = \"jail\"\n\
         provision = [{ name = \"slow\", shell = \"trap '' HUP PIPE; echo start >> /root/log; sleep 3; echo end >> /root/log\" }]\n",
    );
    let mut up = p
        .cmd(&["up"])
        .env("ENVUP_HOME", home().path().to_str().unwrap())
        .0
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Killed once the provisioner has started (the project's state is
    // found once `up` has made it).
    let log = || common::state(&p).join("machines/web/jail/upper/root/log");
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let started = loop {
        if std::fs::read_to_string(log()).is_ok_and(|t| t.contains("start")) {
            break true;
        }
        if std::time::Instant::now() > until {
            break false;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    up.kill().unwrap();
    up.wait().unwrap();
    check(started, "the provisioner never started")?;
    let again = envup_in(home().path(), &p, &["up"]);
    check(
        again.code() == 0,
        format!("up after the kill: {}", again.stderr()),
    )?;
    check(
        again.stderr().contains("waiting for a provisioner"),
        format!("up did not wait: {}", again.stderr()),
    )?;
    let ran = common::exec_in(home().path(), &p, "web", "cat /root/log");
    check(
        ran == "start\nend\nstart\nend\n",
        format!("the provisioner ran beside itself: {ran:?}"),
    )?;
    let names = host_names(&p);
    envup_in(home().path(), &p, &["destroy", "-f"]).status(0);
    common::nothing_left(&p, &names)
}

/// A jail whose init cannot start stops at once: `up` says why (from the
/// supervisor's log) without waiting out the boot timeout, and the new
/// machine goes.
fn init_missing_fails_fast() -> Result<(), Failed> {
    let home = common::boxes::home_with(&["tiny"]);
    let dir = tempfile::tempdir().unwrap();
    let rootfs = common::boxes::rewrite_rootfs(
        &common::boxes::stored_tiny_rootfs(home.path()),
        |_, _| {},
        &[("sbin/init", tar::EntryType::Symlink, "/nowhere/init")],
    )
    .into_inner()
    .unwrap();
    let b = common::boxes::rootfs_box(dir.path(), "tiny-noinit", "root", &rootfs);
    let p = Project::with_envfile(
        "[machines.web]\nbox = \"tiny-noinit\"\nbackend = \"jail\"\nboot_timeout = \"90s\"\n",
    );
    envup_in(home.path(), &p, &["-q", "box", "add", b.to_str().unwrap()]).status(0);
    let started = std::time::Instant::now();
    let up = envup_in(home.path(), &p, &["up"]);
    let took = started.elapsed();
    check(
        up.code() == 1
            && up.stderr().contains("stopped while envup waited")
            && up.stderr().contains("cannot start /sbin/init"),
        format!("up said: {}", up.stderr()),
    )?;
    check(
        took < std::time::Duration::from_secs(20),
        format!("up took {took:?}"),
    )?;
    common::nothing_left(&p, &[])
}

/// `box add` to a store on a disk too small: the error is about the disk,
/// not the box, and nothing is left in the store.
fn add_disk_full() -> Result<(), Failed> {
    let disk = Tmpfs::new("40m");
    let p = Project::new();
    let b = common::boxes::built_box("tiny");
    let add = envup_in(disk.0.path(), &p, &["box", "add", b.to_str().unwrap()]);
    check(
        add.code() == 1
            && add.stderr().contains("not enough free space")
            && !add.stderr().contains("not a usable box"),
        format!("box add said: {}", add.stderr()),
    )?;
    let tmp = disk.0.path().join("boxes-v1/tmp");
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    check(left.is_empty(), format!("left in the store: {left:?}"))
}

type TestFn = Box<dyn FnOnce() -> Result<(), Failed> + Send>;

fn main() {
    let args = Arguments::from_args();
    let mut trials: Vec<Trial> = Vec::new();
    let mut add = |name: String, skip: &Option<String>, f: TestFn| {
        trials.push(Trial::test(name, f).with_ignored_flag(skip.is_some()));
    };
    let up_points = [
        "up:recorded",
        "up:created",
        "up:started",
        "up:running",
        "up:provisioned",
    ];
    let jails = common::jails_unavailable();
    if let Some(why) = &jails {
        eprintln!("skipping the jail cases: {why}");
    }
    for point in
        up_points
            .into_iter()
            .chain(["jail:spawned", "net:recorded", "net:bridged", "net:linked"])
    {
        add(
            format!("jail_{point}"),
            &jails,
            Box::new(move || kill_up("jail", point)),
        );
    }
    add("jail_rootfs_unpack".into(), &jails, Box::new(killed_unpack));
    add(
        "jail_supervisor_killed".into(),
        &jails,
        Box::new(supervisor_killed),
    );
    add(
        "jail_snapshot_frozen".into(),
        &jails,
        Box::new(|| snapshot_killed("jail")),
    );
    for point in ["snapshot:copied", "snapshot:swapped"] {
        add(
            format!("jail_{point}"),
            &jails,
            Box::new(move || restore_killed("jail", point)),
        );
    }
    add(
        "jail_emptied_network_record".into(),
        &jails,
        Box::new(emptied_network_record),
    );
    add(
        "jail_half_made_bridge".into(),
        &jails,
        Box::new(half_made_bridge),
    );
    add(
        "jail_deleted_project".into(),
        &jails,
        Box::new(|| deleted_project("jail")),
    );
    add(
        "jail_names_after_killed_destroy".into(),
        &jails,
        Box::new(names_after_killed_destroy),
    );
    add(
        "jail_neighbour_fails".into(),
        &jails,
        Box::new(|| neighbour_fails("jail")),
    );
    add("store_add_killed".into(), &jails, Box::new(killed_add));
    add(
        "store_add_disk_full".into(),
        &jails,
        Box::new(add_disk_full),
    );
    add("jail_disk_full".into(), &jails, Box::new(disk_full));
    add(
        "jail_init_missing_fails_fast".into(),
        &jails,
        Box::new(init_missing_fails_fast),
    );
    add(
        "jail_provisioner_not_twice".into(),
        &jails,
        Box::new(provisioner_not_twice),
    );
    add(
        "jail_helper_killed".into(),
        &jails,
        Box::new(|| helper_killed("jail")),
    );
    add(
        "jail_reload_applies".into(),
        &jails,
        Box::new(|| reload_applies("jail")),
    );
    for engine in ["lxc", "docker", "podman"] {
        let skip = common::engine_unavailable(engine);
        if let Some(why) = &skip {
            eprintln!("skipping the {engine} cases: {why}");
        }
        let extra: &[&'static str] = if engine == "lxc" {
            &["net:spawned", "net:linked"]
        } else {
            &["net:bridged", "net:linked"]
        };
        for &point in up_points.iter().chain(extra) {
            add(
                format!("{engine}_{point}"),
                &skip,
                Box::new(move || kill_up(engine, point)),
            );
        }
        if engine == "docker" {
            add(
                "docker_neighbour_fails".into(),
                &skip,
                Box::new(|| neighbour_fails("docker")),
            );
            add(
                "docker_deleted_project".into(),
                &skip,
                Box::new(|| deleted_project("docker")),
            );
        }
        if engine != "lxc" {
            add(
                format!("{engine}_reload_applies"),
                &skip,
                Box::new(move || reload_applies(engine)),
            );
            add(
                format!("{engine}_image_kept_in_use"),
                &skip,
                Box::new(move || image_kept_in_use(engine)),
            );
        }
        if engine == "lxc" {
            add(
                "lxc_helper_killed".into(),
                &skip,
                Box::new(|| helper_killed("lxc")),
            );
            add(
                "lxc_snapshot_frozen".into(),
                &skip,
                Box::new(|| snapshot_killed("lxc")),
            );
            for point in ["snapshot:copied", "snapshot:swapped"] {
                add(
                    format!("lxc_{point}"),
                    &skip,
                    Box::new(move || restore_killed("lxc", point)),
                );
            }
        }
    }
    let qemu = common::qemu::unavailable();
    if let Some(why) = &qemu {
        eprintln!("skipping the qemu cases: {why}");
    }
    for point in up_points.into_iter().chain(["qemu:spawned"]) {
        add(
            format!("qemu_{point}"),
            &qemu,
            Box::new(move || kill_up("qemu", point)),
        );
    }
    add(
        "qemu_reload_applies".into(),
        &qemu,
        Box::new(|| reload_applies("qemu")),
    );
    libtest_mimic::run(&args, trials).exit();
}
