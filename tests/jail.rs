//! The jail backend for real: `envup up` on the `tiny` box (built on the
//! way), provisioning, exec, halt, up, destroy, and what a jail cannot do.
//! Ignored, with the reason, where jails cannot run.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use common::{Project, check};
use libtest_mimic::{Arguments, Failed, Trial};

/// One ENVUP_HOME with `tiny` in its store, shared by the tests.
fn home() -> &'static tempfile::TempDir {
    static HOME: OnceLock<tempfile::TempDir> = OnceLock::new();
    HOME.get_or_init(|| common::boxes::home_with(&["tiny"]))
}

/// `debian/bookworm` added to that store, for the test that needs it.
fn with_debian() {
    static ADDED: OnceLock<()> = OnceLock::new();
    ADDED.get_or_init(|| {
        let b = common::boxes::built_box("debian-bookworm");
        Project::new()
            .cmd(&["-q", "box", "add", b.to_str().unwrap()])
            .env("ENVUP_HOME", home().path().to_str().unwrap())
            .out()
            .status(0);
    });
}

fn project(envfile: &str) -> Project {
    Project::with_envfile(envfile)
}

fn envup(p: &Project, args: &[&str]) -> common::Done {
    p.cmd(args)
        .env("ENVUP_HOME", home().path().to_str().unwrap())
        .out()
}

fn exec(p: &Project, machine: &str, script: &str) -> String {
    common::exec_in(home().path(), p, machine, script)
}

/// The host's name for a jail (its cgroup and network namespace).
fn jail_id(p: &Project, machine: &str) -> String {
    let cfg: serde_json::Value = serde_json::from_slice(
        &std::fs::read(common::state(p).join(format!("machines/{machine}/jail/jail.json")))
            .unwrap(),
    )
    .unwrap();
    cfg["id"].as_str().unwrap().to_owned()
}

/// The host pid of a jail's init (the first process in its pids cgroup).
fn jail_init(p: &Project, machine: &str) -> u32 {
    let id = jail_id(p, machine);
    let procs = std::fs::read_to_string(format!("/sys/fs/cgroup/pids/envup/{id}/cgroup.procs"))
        .or_else(|_| std::fs::read_to_string(format!("/sys/fs/cgroup/envup/{id}/cgroup.procs")))
        .unwrap_or_default();
    procs
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0)
}

/// Destroy the project's machines, then check nothing of them is left.
fn destroy_and_check(p: &Project) -> Result<(), Failed> {
    let ids = common::jail_ids(p);
    check(!ids.is_empty(), "no jails to destroy")?;
    envup(p, &["destroy", "-f"]).status(0);
    common::nothing_left(p, &ids)
}

const TINY: &str = "[machines.web]\nbox = \"tiny\"\nbackend = \"jail\"\nmemory = \"256MiB\"\n";

fn lifecycle() -> Result<(), Failed> {
    // In a directory whose name holds a space, a comma, a colon and quotes
    // (overlayfs options end at a comma and split lower layers at colons),
    // with a share from inside it.
    let p = Project::with_envfile_in(
        "envup a,b:'q' ",
        &format!(
            "{TINY}provision = [{{ name = \"hi\", shell = \"echo provisioned > /root/p\" }}]\n\
             share = [{{ host = \"da,ta\", guest = \"/srv/data\", read_only = true }}]\n"
        ),
    );
    p.write("da,ta/hello", "shared\n");
    envup(&p, &["up"]).status(0);
    // What checks that nothing is left finds the jail's supervisor by the
    // project's path (its mounts are in its own mount namespace).
    check(
        !common::processes_naming(common::state(&p).as_os_str().as_encoded_bytes()).is_empty(),
        "the jail's supervisor is not found",
    )?;
    check(
        exec(&p, "web", "cat /root/p") == "provisioned\n",
        "provisioner did not run",
    )?;
    check(
        exec(&p, "web", "cat /srv/data/hello") == "shared\n",
        "the share is not mounted",
    )?;
    check(
        exec(
            &p,
            "web",
            "touch /srv/data/x 2>/dev/null && echo rw || echo ro",
        ) == "ro\n",
        "the read-only share is writable",
    )?;
    check(exec(&p, "web", "hostname") == "web\n", "hostname")?;
    exec(&p, "web", "echo kept > /root/data");
    envup(&p, &["halt"]).status(0);
    let j = envup(&p, &["--json", "status"]).status(0).json();
    check(j["machines"][0]["status"] == "stopped", j.to_string())?;
    envup(&p, &["up"]).status(0);
    check(
        exec(&p, "web", "cat /root/data") == "kept\n",
        "data lost across halt and up",
    )?;
    // Killed by hand: the machine shows as stopped, and up brings it back.
    let st: serde_json::Value = serde_json::from_slice(
        &std::fs::read(common::state(&p).join("machines/web/state.json")).unwrap(),
    )
    .unwrap();
    let pid: i32 = st["id"]
        .as_str()
        .unwrap()
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let j = envup(&p, &["--json", "status"]).status(0).json();
    check(
        j["machines"][0]["status"] == "stopped",
        format!("after kill: {j}"),
    )?;
    envup(&p, &["up"]).status(0);
    check(
        exec(&p, "web", "cat /root/data") == "kept\n",
        "data lost after the supervisor died",
    )?;
    // Snapshots: taken running (frozen while copied), restored running.
    envup(&p, &["snapshot", "save", "web", "v1.0"]).status(0);
    check(
        exec(&p, "web", "echo ok") == "ok\n",
        "the jail stayed frozen after the snapshot",
    )?;
    exec(&p, "web", "echo changed > /root/data; touch /root/new");
    envup(&p, &["snapshot", "list", "web"])
        .status(0)
        .stdout_has("v1.0");
    envup(&p, &["snapshot", "restore", "web", "v1.0"]).status(0);
    check(
        exec(
            &p,
            "web",
            "cat /root/data; ls /root/new 2>/dev/null || echo gone",
        ) == "kept\ngone\n",
        "the snapshot did not bring the files back",
    )?;
    envup(&p, &["snapshot", "delete", "web", "v1.0"]).status(0);
    envup(&p, &["snapshot", "restore", "web", "v1.0"])
        .status(1)
        .stderr_has("no snapshot `v1.0`");
    destroy_and_check(&p)
}

/// A real distribution with systemd as the jail's init.
fn debian_lifecycle() -> Result<(), Failed> {
    with_debian();
    let p = project(
        "[machines.web]\nbox = \"debian/bookworm\"\nbackend = \"jail\"\nmemory = \"1GiB\"\n\
         provision = [{ name = \"hi\", shell = \"echo provisioned > /root/p\" }]\n\
         [machines.other]\nbox = \"tiny\"\nbackend = \"jail\"\n",
    );
    envup(&p, &["up"]).status(0);
    check(
        exec(&p, "web", "cat /root/p") == "provisioned\n",
        "provisioner did not run",
    )?;
    check(
        exec(&p, "web", "cat /proc/1/comm") == "systemd\n",
        "systemd is not the jail's init",
    )?;
    let state = exec(&p, "web", "systemctl is-system-running --wait || true");
    check(
        state.trim() == "running" || state.trim() == "degraded",
        format!("systemd says {state:?}"),
    )?;
    // The units that cannot work in a container, and only those, fail
    // (docs/backends/jail.md lists them).
    let failed = exec(
        &p,
        "web",
        "systemctl --failed --no-legend --plain | cut -d' ' -f1",
    );
    check(
        failed.lines().all(|u| u == "systemd-remount-fs.service"),
        format!("failed units: {failed}"),
    )?;
    common::kernel_paths_guarded(&|script| exec(&p, "web", script))?;
    common::keyctl_refused(&|script| exec(&p, "web", script))?;
    common::root_is_confined(
        &|script| exec(&p, "web", script),
        &jail_id(&p, "other"),
        jail_init(&p, "other"),
    )?;
    systemd_stays_inside(&p)?;
    exec(&p, "web", "echo kept > /root/data");
    let t = std::time::Instant::now();
    envup(&p, &["halt"]).status(0);
    check(
        t.elapsed() < envup::backend::jail::HALT_DEADLINE,
        format!("systemd did not power off in time ({:?})", t.elapsed()),
    )?;
    envup(&p, &["up"]).status(0);
    check(
        exec(&p, "web", "cat /root/data") == "kept\n",
        "data lost across halt and up",
    )?;
    destroy_and_check(&p)
}

/// systemd in a jail keeps its services in the jail's own cgroup (delegated
/// to it, in a cgroup namespace), so the jail's limits hold for them: a fork
/// storm started as a service stops at the jail's pids.max.
fn systemd_stays_inside(p: &Project) -> Result<(), Failed> {
    let id = jail_id(p, "web");
    let hierarchies: Vec<_> = std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    let ssh = hierarchies
        .iter()
        .map(|h| h.join("envup").join(&id).join("system.slice/ssh.service"))
        .find(|d| d.exists());
    check(ssh.is_some(), "ssh.service is not below the jail's cgroup")?;
    for h in &hierarchies {
        check(
            !h.join("system.slice").exists(),
            format!("{}/system.slice was made on the host", h.display()),
        )?;
    }
    let cg = Path::new("/sys/fs/cgroup/pids/envup").join(&id);
    let cg = if cg.exists() {
        cg
    } else {
        Path::new("/sys/fs/cgroup/envup").join(&id)
    };
    common::storm_held(&|script| exec(p, "web", script), &cg)
}

fn http_get(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn two_jails_serve_port_80() -> Result<(), Failed> {
    let (p1, p2) = (common::sshd::free_port(), common::sshd::free_port());
    let p = project(&format!(
        "[defaults]\nbox = \"tiny\"\nbackend = \"jail\"\nmemory = \"128MiB\"\n\
         provision = [{{ shell = \"mkdir -p /www && hostname > /www/index.html && httpd -p 80 -h /www\" }}]\n\
         [machines.a]\nforward = [{{ guest = 80, host = {p1} }}]\n[machines.b]\nforward = [{{ guest = 80, host = {p2} }}]\n"
    ));
    envup(&p, &["up", "--jobs", "2"]).status(0);
    check(
        http_get(p1).ends_with("a\n"),
        format!("a: {}", http_get(p1)),
    )?;
    check(
        http_get(p2).ends_with("b\n"),
        format!("b: {}", http_get(p2)),
    )?;
    // One box, one lower layer: a write in `a` stays in `a`.
    exec(&p, "a", "echo mine > /bin/only-in-a");
    check(
        exec(&p, "b", "test -e /bin/only-in-a && echo yes || echo no") == "no\n",
        "a's write reached b",
    )?;
    let lowers: Vec<_> = std::fs::read_dir(home().path().join("boxes-v1"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("rootfs/bin/busybox").exists())
        .collect();
    check(lowers.len() == 1, "the rootfs was unpacked more than once")?;
    check(
        !lowers[0].path().join("rootfs/bin/only-in-a").exists(),
        "a jail wrote into the shared lower layer",
    )?;
    destroy_and_check(&p)
}

/// `privileged = true` in the jail's table keeps the view a jail had
/// before it hid kernel paths and filtered system calls.
fn privileged_jail() -> Result<(), Failed> {
    let p = project(&format!("{TINY}[machines.web.jail]\nprivileged = true\n"));
    envup(&p, &["up"]).status(0);
    let firmware = exec(&p, "web", "ls -A /sys/firmware | wc -l");
    let seccomp = exec(&p, "web", "grep '^Seccomp:' /proc/self/status");
    // Root in it is the host's root: the checks of an unprivileged jail fail.
    let confined = common::root_is_confined(
        &|script| exec(&p, "web", script),
        &jail_id(&p, "web"),
        std::process::id(),
    );
    check(confined.is_err(), "a privileged jail passed as confined")?;
    // Made unprivileged, the same machine keeps its files and their owners
    // as it sees them; on the host its layer is owned by its block of ids.
    exec(
        &p,
        "web",
        "echo mine > /root/mine && touch /root/f && chown 1000:1000 /root/f",
    );
    envup(&p, &["halt"]).status(0);
    p.write("Envfile", TINY);
    envup(&p, &["up"]).status(0);
    let owners = exec(
        &p,
        "web",
        "cat /root/mine; stat -c '%u %g' /root/mine /root/f",
    );
    let ids: serde_json::Value = serde_json::from_slice(
        &std::fs::read(common::state(&p).join("machines/web/jail/ids.json")).unwrap(),
    )
    .unwrap();
    let base = ids["uid"].as_u64().unwrap();
    let upper = common::state(&p).join("machines/web/jail/upper");
    let host_owner = |rel: &str| {
        std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(upper.join(rel)).unwrap())
    };
    let shifted = (
        u64::from(host_owner("root/mine")),
        u64::from(host_owner("root/f")),
    );
    // And back: privileged again, the host's own ids.
    envup(&p, &["halt"]).status(0);
    p.write(
        "Envfile",
        &format!("{TINY}[machines.web.jail]\nprivileged = true\n"),
    );
    envup(&p, &["up"]).status(0);
    let back = exec(&p, "web", "stat -c '%u' /root/mine /root/f");
    envup(&p, &["destroy", "-f"]).status(0);
    check(
        owners == "mine\n0 0\n1000 1000\n",
        format!("after the shift the jail sees {owners:?}"),
    )?;
    check(
        base >= 65536 && shifted == (base, base + 1000),
        format!("the layer is owned by {shifted:?} for ids from {base}"),
    )?;
    check(back == "0\n1000\n", format!("shifted back: {back:?}"))?;
    check(
        firmware.trim() != "0",
        "/sys/firmware is hidden in a privileged jail",
    )?;
    check(
        seccomp.split_whitespace().nth(1) == Some("0"),
        format!("a privileged jail is filtered: {seccomp:?}"),
    )
}

fn jail_cannot_see_or_exceed() -> Result<(), Failed> {
    let secret = Path::new("/tmp/envup-host-secret-for-jail-test");
    std::fs::write(secret, "secret").unwrap();
    let p = project(
        "[defaults]\nbox = \"tiny\"\nbackend = \"jail\"\n[machines.web]\nmemory = \"64MiB\"\n[machines.many]\nmemory = \"1GiB\"\n",
    );
    envup(&p, &["up", "--jobs", "2"]).status(0);
    let pids: usize = exec(&p, "web", "ls /proc | grep -c '^[0-9]'")
        .trim()
        .parse()
        .unwrap();
    check(pids < 20, format!("the jail sees {pids} processes"))?;
    check(
        exec(
            &p,
            "web",
            "cat /tmp/envup-host-secret-for-jail-test 2>/dev/null || echo unseen",
        ) == "unseen\n",
        "a host path is visible",
    )?;
    // Root in the jail lacks the capabilities that reach past it.
    let bounding = exec(&p, "web", "grep CapBnd /proc/self/status | cut -f2");
    let bounding = u64::from_str_radix(bounding.trim(), 16).unwrap();
    for (cap, name) in envup::backend::jail::DROPPED_CAPS {
        check(bounding & (1 << cap) == 0, format!("{name} is kept"))?;
    }
    check(
        exec(
            &p,
            "web",
            "mknod /tmp/sda b 8 0 2>/dev/null && echo made || echo refused",
        ) == "refused\n",
        "mknod of a block device worked",
    )?;
    common::kernel_paths_guarded(&|script| exec(&p, "web", script))?;
    common::root_is_confined(
        &|script| exec(&p, "web", script),
        &jail_id(&p, "many"),
        jail_init(&p, "many"),
    )?;
    // The jail sees its own cgroup as the top (a cgroup namespace).
    let own = exec(&p, "web", "cat /proc/self/cgroup");
    check(
        own.lines().all(|l| l.ends_with(":/")),
        format!("the jail's cgroups as it sees them: {own}"),
    )?;
    // The memory limit is the Envfile's, on the jail's own cgroup.
    let on_host = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/memory/envup/{}/memory.limit_in_bytes",
        jail_id(&p, "web")
    ))
    .unwrap_or_default();
    check(
        on_host.trim() == (64u64 << 20).to_string(),
        format!("memory limit {on_host:?}"),
    )?;
    // More than 64 MiB in memory: killed, not granted.
    let out = envup(
        &p,
        &[
            "exec",
            "web",
            "--",
            "sh",
            "-c",
            "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo ${#x}",
        ],
    );
    check(
        out.code() != 0,
        "allocating 200 MB under a 64 MiB limit succeeded",
    )?;
    // The pids limit stops a fork storm (in a jail with memory to spare):
    // the shell dies when it cannot fork, and the host's cgroup counts the
    // refusals.
    let storm = envup(
        &p,
        &[
            "exec",
            "many",
            "--",
            "sh",
            "-c",
            "for i in $(seq 1 1500); do sleep 3 & done",
        ],
    );
    check(
        storm.code() != 0,
        "1500 processes fitted under a pids limit of 1024",
    )?;
    // The jail's pids cgroup: v1 (pids hierarchy) or v2 (unified).
    let id = jail_id(&p, "many");
    let cg = ["/sys/fs/cgroup/pids/envup", "/sys/fs/cgroup/envup"]
        .iter()
        .map(|base| Path::new(base).join(&id))
        .find(|d| d.join("pids.max").exists())
        .ok_or_else(|| Failed::from(format!("no pids cgroup for jail {id}")))?;
    let max = std::fs::read_to_string(cg.join("pids.max")).unwrap();
    check(
        max.trim() == envup::backend::jail::PIDS_MAX.to_string(),
        format!("pids.max {max}"),
    )?;
    let events = std::fs::read_to_string(cg.join("pids.events")).unwrap();
    let refused: u64 = events
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    check(refused > 0, format!("no fork was refused: {events}"))?;
    std::thread::sleep(Duration::from_secs(4));
    let _ = std::fs::remove_file(secret);
    destroy_and_check(&p)
}

/// Answer every connection on `l` with `text`, in the background.
fn serve(l: TcpListener, text: &'static str) -> u16 {
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let _ = c.write_all(text.as_bytes());
        }
    });
    port
}

/// The host's address on its default route (no packet is sent).
fn host_address() -> std::net::IpAddr {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    s.connect("192.0.2.1:9")
        .expect("the host has a default route");
    s.local_addr().unwrap().ip()
}

/// A private network reaches what the host reaches, but none of the
/// host's own services (loopback-only, or on its address); a forward whose
/// host port is taken fails `up` plainly and leaves nothing.
fn private_network() -> Result<(), Failed> {
    let open = serve(TcpListener::bind("0.0.0.0:0").unwrap(), "from the host\n");
    let local = serve(TcpListener::bind("127.0.0.1:0").unwrap(), "loopback\n");
    let p = project(TINY);
    envup(&p, &["up"]).status(0);
    // Another tool naming a namespace afterwards (ip netns, as Podman
    // does) must not hide the jail's name from its destroy.
    let probe = format!("envup-probe-{}", std::process::id());
    let ip = |args: &[&str]| std::process::Command::new("ip").args(args).status();
    let added = ip(&["netns", "add", &probe]).is_ok_and(|s| s.success());
    let _ = ip(&["netns", "del", &probe]);
    check(added, format!("ip netns add {probe} failed"))?;
    // The host's own services are not the jail's to reach, on any of its
    // addresses (envup's firewall; the world outside is reached, see
    // tests/network.rs).
    let addr = host_address();
    let got = exec(
        &p,
        "web",
        &format!("nc -w 3 {addr} {open} </dev/null || true"),
    );
    check(
        !got.contains("from the host"),
        format!("the jail reached the host's service on {addr}:{open}"),
    )?;
    let got = exec(
        &p,
        "web",
        &format!("nc -w 2 10.0.2.2 {local} </dev/null || true"),
    );
    check(
        !got.contains("loopback"),
        "the jail reached a service on the host's loopback",
    )?;
    check(
        exec(&p, "web", "grep -c ^nameserver /etc/resolv.conf") != "0\n",
        "no nameserver in the jail's resolv.conf",
    )?;
    destroy_and_check(&p)?;

    // The port `open` is taken by the listener above.
    let busy = project(&format!(
        "{TINY}forward = [{{ guest = 80, host = {open} }}]\n"
    ));
    let out = envup(&busy, &["up"]);
    check(out.code() != 0, "up with a taken port succeeded")?;
    check(
        out.stderr().contains(&format!("{open}/tcp")) && out.stderr().contains("in use"),
        format!("the error does not name the port: {}", out.stderr()),
    )?;
    common::nothing_left(&busy, &[])
}

/// Two jails on the host's network at once: each SSH server on a port of
/// its own on the host's loopback (not port 22), the host's interfaces
/// visible, and no CAP_NET_ADMIN over them.
fn host_network() -> Result<(), Failed> {
    let p = project(
        "[defaults]\nbox = \"tiny\"\nbackend = \"jail\"\nmemory = \"128MiB\"\n\
         [defaults.jail]\nnetwork = \"host\"\n[machines.a]\n[machines.b]\n",
    );
    envup(&p, &["up", "--jobs", "2"]).status(0);
    let listening = std::fs::read_to_string("/proc/net/tcp").unwrap();
    for m in ["a", "b"] {
        check(
            exec(&p, m, "hostname") == format!("{m}\n"),
            format!("{m}: hostname"),
        )?;
        let conf = envup(&p, &["ssh-config", m]).status(0).stdout();
        let port: u16 = conf
            .lines()
            .find_map(|l| l.trim().strip_prefix("Port "))
            .and_then(|s| s.parse().ok())
            .unwrap();
        check(port != 22, format!("{m} took the host's port 22"))?;
        // 127.0.0.1:PORT in /proc/net/tcp, listening (state 0A).
        let entry = format!("0100007F:{port:04X} 00000000:0000 0A");
        check(
            listening.contains(&entry),
            format!("{m}'s SSH server is not on the host's 127.0.0.1:{port} only"),
        )?;
        let bounding = exec(&p, m, "grep CapBnd /proc/self/status | cut -f2");
        let bounding = u64::from_str_radix(bounding.trim(), 16).unwrap();
        check(
            bounding & (1 << 12) == 0,
            "CAP_NET_ADMIN kept on the host's network",
        )?;
    }
    // The jail sees the host's interfaces: the one of the host's default
    // route among them (a private network has only its own). Counting
    // them would race with the other tests' links coming and going.
    let uplink = std::fs::read_to_string("/proc/net/route")
        .unwrap()
        .lines()
        .skip(1)
        .find(|l| l.split_whitespace().nth(1) == Some("00000000"))
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .expect("the host has a default route");
    let jail_ifaces = exec(&p, "a", "cat /proc/net/dev");
    check(
        jail_ifaces
            .lines()
            .any(|l| l.trim_start().starts_with(&format!("{uplink}:"))),
        format!("the jail does not see the host's {uplink}:\n{jail_ifaces}"),
    )?;
    destroy_and_check(&p)
}

/// A box that logs in as a user other than root: the login key goes to
/// that user's home, owned by them; the box's own directories keep their
/// modes and owners.
fn non_root_login() -> Result<(), Failed> {
    let stored = common::boxes::stored_tiny_rootfs(home().path());
    let rootfs = common::boxes::rootfs_with_user(&stored, "dev");
    let dir = tempfile::tempdir().unwrap();
    let b = common::boxes::rootfs_box(dir.path(), "tiny-dev", "dev", &rootfs);
    let p = project(
        "[machines.web]\nbox = \"tiny-dev\"\nbackend = \"jail\"\nmemory = \"128MiB\"\n\
         provision = [{ shell = \"touch ~/made-by-provisioner\", privileged = false }]\n",
    );
    envup(&p, &["box", "add", b.to_str().unwrap()]).status(0);
    envup(&p, &["up"]).status(0);
    check(exec(&p, "web", "id -un") == "dev\n", "not logged in as dev")?;
    check(
        exec(
            &p,
            "web",
            "stat -c '%U %a' /home/dev /home/dev/.ssh /home/dev/.ssh/authorized_keys",
        ) == "dev 750\ndev 700\ndev 600\n",
        "the login key's directories are not dev's, or have other modes",
    )?;
    check(
        exec(&p, "web", "ls ~/made-by-provisioner") == "/home/dev/made-by-provisioner\n",
        "the provisioner did not run as dev",
    )?;
    check(
        exec(&p, "web", "stat -c '%U %a' /root 2>&1 || true").starts_with("root 700"),
        "/root lost the box's mode",
    )?;
    destroy_and_check(&p)?;
    envup(&p, &["box", "remove", "tiny-dev", "--force"]).status(0);
    Ok(())
}

/// The README's first command brings up `examples/quickstart`: the same
/// Envfile and files, here with `tiny` already stored.
fn quickstart() -> Result<(), Failed> {
    let p = Project::new();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/quickstart");
    for f in ["Envfile", "files/motd"] {
        p.write(f, &std::fs::read_to_string(example.join(f)).unwrap());
    }
    let out = envup(&p, &["up"]).status(0);
    check(
        out.stdout().contains("hello is up;") || out.stderr().contains("hello is up;"),
        format!("no greeting: {}{}", out.stdout(), out.stderr()),
    )?;
    check(
        exec(&p, "hello", "cat /etc/motd")
            == std::fs::read_to_string(example.join("files/motd")).unwrap(),
        "the motd was not uploaded",
    )?;
    let ids = common::jail_ids(&p);
    envup(&p, &["destroy", "-f"]).status(0);
    check(
        !common::state(&p).join("machines/hello").exists(),
        "state directory of hello left",
    )?;
    common::nothing_left(&p, &ids)
}

/// A lock that pins a box built from a recipe: built here, it is used when
/// its bytes hash to the pinned digest, and refused, naming both digests,
/// when they do not. (Each case builds `tiny` in a store of its own.)
fn locked_recipe_box() -> Result<(), Failed> {
    let digest = common::boxes::stored_digest(home().path(), "tiny");
    let lock = |sha: &str| {
        format!(
            "version = 1\n\n[machines.web]\nbox = \"tiny\"\nversion = \"1.0.0\"\n\
             url = \"recipe tiny\"\nsha256 = \"{sha}\"\n"
        )
    };
    let same = Project::with_envfile(TINY);
    same.write("Envfile.lock", &lock(&digest));
    same.cmd(&["up"]).out().status(0);
    let ids = common::jail_ids(&same);
    same.cmd(&["destroy", "-f"]).out().status(0);
    common::nothing_left(&same, &ids)?;

    let other = "0".repeat(64);
    let differs = Project::with_envfile(TINY);
    differs.write("Envfile.lock", &lock(&other));
    let out = differs.cmd(&["up"]).out();
    check(
        out.code() != 0,
        "a build with other bytes than the lock's was used",
    )?;
    let err = out.stderr();
    check(
        err.contains(&other) && err.contains(&digest) && err.contains("envup update web"),
        format!("the error does not name both digests and the fix: {err}"),
    )?;
    check(
        !common::state(&differs).join("machines/web").exists(),
        "a machine was created",
    )
}

type TestFn = fn() -> Result<(), Failed>;

/// The user the rootless test runs envup as.
const ROOTLESS_USER: &str = "envup-rootless-test";

/// Why this host cannot run a rootless jail, if it cannot.
fn rootless_unavailable() -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    if read("/proc/sys/user/max_user_namespaces").trim() == "0"
        || read("/proc/sys/kernel/unprivileged_userns_clone").trim() == "0"
    {
        return Some("this host forbids unprivileged user namespaces".into());
    }
    if common::host_lacks("newuidmap") {
        return Some("newuidmap is missing (apt-get install uidmap)".into());
    }
    let tun = std::fs::metadata("/dev/net/tun").map(|m| m.permissions().mode() & 0o006);
    if tun.ok() != Some(0o006) {
        return Some(
            "/dev/net/tun is not open to users (scripts/install-deps makes it 0666)".into(),
        );
    }
    None
}

/// Processes of `uid` that still run (zombies aside: they wait for the
/// host's init to reap them).
fn live_processes_of(uid: u32) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .unwrap_or("")
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_owned()
        };
        if field("Uid:") == uid.to_string() && !field("State:").starts_with('Z') {
            found.push(format!("{} {}", field("Pid:"), field("Name:")));
        }
    }
    found
}

/// Run by a user that is not root, with the ids /etc/subuid gives it,
/// envup brings up, provisions, halts, starts and destroys two rootless
/// jails: one logging in as root, one as a user of the box (whose files
/// get that user's ids). Root in them is the user on the host.
fn rootless() -> Result<(), Failed> {
    let user = ROOTLESS_USER;
    let id = |args: &[&str]| {
        let o = std::process::Command::new("id")
            .args(args)
            .arg(user)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout)
            .trim()
            .parse::<u32>()
            .ok()
    };
    if id(&["-u"]).is_none() {
        let made = std::process::Command::new("useradd")
            .args(["-M", "-s", "/bin/sh", user])
            .output()
            .unwrap();
        check(
            made.status.success(),
            format!(
                "cannot make user {user}: {}",
                String::from_utf8_lossy(&made.stderr)
            ),
        )?;
    }
    let uid = id(&["-u"]).unwrap();
    let subuid = std::fs::read_to_string("/etc/subuid").unwrap_or_default();
    if !subuid.lines().any(|l| l.starts_with(&format!("{user}:"))) {
        let range = "1900000000-1900065535";
        let ok = std::process::Command::new("usermod")
            .args(["--add-subuids", range, "--add-subgids", range, user])
            .status()
            .unwrap();
        check(ok.success(), "usermod --add-subuids failed")?;
    }
    // The boxes, readable by the user: tiny, and tiny with a user `dev`
    // that envup logs in as.
    let p = project(
        "[machines.web]\nbox = \"tiny\"\nbackend = \"jail\"\n\
         provision = [{ shell = \"echo provisioned > /root/p; id -u > /srv/data/id\" }]\n\
         share = [{ host = \"data\", guest = \"/srv/data\" }]\n\
         [machines.dev]\nbox = \"tiny-dev\"\nbackend = \"jail\"\n\
         provision = [{ shell = \"touch ~/made-by-provisioner\", privileged = false }]\n",
    );
    std::fs::create_dir_all(p.path().join("data")).unwrap();
    std::fs::copy(common::boxes::built_box("tiny"), p.path().join("tiny.box")).unwrap();
    let rootfs =
        common::boxes::rootfs_with_user(&common::boxes::stored_tiny_rootfs(home().path()), "dev");
    let tiny_dev = common::boxes::rootfs_box(p.path(), "tiny-dev", "dev", &rootfs);
    let chown = std::process::Command::new("chown")
        .args(["-R", user])
        .arg(p.path())
        .status()
        .unwrap();
    check(chown.success(), "chown failed")?;
    let envup_as = |args: &[&str]| {
        let o = std::process::Command::new("runuser")
            .args(["-u", user, "--", "env", "-u", "XDG_RUNTIME_DIR"])
            .arg(format!("HOME={}", p.path().display()))
            .arg(format!("ENVUP_HOME={}/envup-home", p.path().display()))
            .arg(env!("CARGO_BIN_EXE_envup"))
            .args(args)
            .current_dir(p.path())
            .output()
            .unwrap();
        (
            o.status.success(),
            format!(
                "envup {}: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        )
    };
    let must = |args: &[&str]| -> Result<String, Failed> {
        let (ok, said) = envup_as(args);
        check(ok, &said)?;
        Ok(said)
    };
    let result = (|| {
        must(&["-q", "box", "add", "tiny.box"])?;
        must(&["-q", "box", "add", tiny_dev.to_str().unwrap()])?;
        must(&["up"])?;
        let run = |m: &str, script: &str| must(&["exec", m, "--", "sh", "-c", script]);
        let said = run("web", "id -u; cat /proc/self/uid_map; cat /root/p")?;
        let flat = said.split_whitespace().collect::<Vec<_>>().join(" ");
        check(
            flat.contains(&format!("0 0 {uid} 1")) && said.contains("provisioned"),
            format!("web is not rootless or not provisioned: {said}"),
        )?;
        use std::os::unix::fs::MetadataExt;
        let written = std::fs::metadata(p.path().join("data/id")).map(|m| m.uid());
        check(
            written.ok() == Some(uid),
            "a file root in the jail wrote to a share is not the user's on the host",
        )?;
        let said = run(
            "dev",
            "id -un; stat -c '%U %a' ~ ~/.ssh ~/.ssh/authorized_keys; ls ~/made-by-provisioner",
        )?;
        check(
            said.contains("dev\ndev 750\ndev 700\ndev 600\n/home/dev/made-by-provisioner"),
            format!("dev's login files are not dev's: {said}"),
        )?;
        let state = envup::state::ProjectState::of(&p.path().join("envup-home"), p.path());
        let sup = std::fs::read_to_string(state.machine_dir("web").join("jail/supervisor.pid"))
            .unwrap_or_default();
        let pid = sup.split_whitespace().next().unwrap_or("0");
        let owner = std::fs::metadata(format!("/proc/{pid}")).map(|m| m.uid());
        check(
            owner.ok() == Some(uid),
            "the jail's supervisor is not the user's",
        )?;
        must(&["halt"])?;
        must(&["up"])?;
        check(
            run("web", "cat /root/p")?.contains("provisioned"),
            "web lost its files",
        )?;
        must(&["destroy", "-f"])?;
        let left: Vec<_> = std::fs::read_dir(common::state(&p).join("machines"))
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        check(left.is_empty(), format!("machines left: {left:?}"))?;
        must(&["-q", "box", "remove", "tiny"])?;
        let running = live_processes_of(uid);
        check(
            running.iter().all(|p| p.contains("podman")),
            format!("processes of {user} left: {running:?}"),
        )
    })();
    // Whatever a failure left (and the Podman process `box remove` starts
    // to ask about images) goes, and the project with it.
    let _ = std::process::Command::new("pkill")
        .args(["-KILL", "-u", user])
        .status();
    std::thread::sleep(Duration::from_millis(200));
    let _ = std::process::Command::new("chown")
        .args(["-R", "root"])
        .arg(p.path())
        .status();
    result
}

fn main() {
    let args = Arguments::from_args();
    let skip = common::jails_unavailable();
    if let Some(why) = &skip {
        eprintln!("skipping the jail tests: {why}");
    }
    let tests: Vec<(&str, TestFn)> = vec![
        ("lifecycle", lifecycle),
        ("debian_lifecycle", debian_lifecycle),
        ("two_jails_serve_port_80", two_jails_serve_port_80),
        ("jail_cannot_see_or_exceed", jail_cannot_see_or_exceed),
        ("privileged_jail", privileged_jail),
        ("private_network", private_network),
        ("host_network", host_network),
        ("non_root_login", non_root_login),
        ("quickstart", quickstart),
        ("locked_recipe_box", locked_recipe_box),
        ("rootless", rootless),
    ];
    let no_rootless = rootless_unavailable();
    if let (None, Some(why)) = (&skip, &no_rootless) {
        eprintln!("skipping the rootless test: {why}");
    }
    let trials = tests
        .into_iter()
        .map(|(n, f)| {
            let off = skip.is_some() || (n == "rootless" && no_rootless.is_some());
            Trial::test(n, f).with_ignored_flag(off)
        })
        .collect();
    libtest_mimic::run(&args, trials).exit();
}
