//! The project network for real: a jail, a Docker container, an LXC
//! container and a qemu VM of one project reach each other by name, also
//! after one of them is halted and started again; the host reaches each at
//! its address; two projects up at once cannot reach each other; the
//! `web-db` template on debian/bookworm reaches PostgreSQL by name; names
//! are written through a machine's root without leaving it; and `destroy`
//! of the last machine leaves nothing of the network on the host.
//! A test that needs what the host lacks is reported as ignored, with why.

mod common;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{Project, check};
use libtest_mimic::{Arguments, Failed, Trial};

fn home() -> &'static tempfile::TempDir {
    static HOME: OnceLock<tempfile::TempDir> = OnceLock::new();
    HOME.get_or_init(|| common::boxes::home_with(&["tiny"]))
}

fn with_debian() {
    static ADDED: OnceLock<()> = OnceLock::new();
    ADDED.get_or_init(|| {
        let b = common::boxes::built_box("debian-bookworm");
        envup(&Project::new(), &["-q", "box", "add", b.to_str().unwrap()]).status(0);
    });
}

fn envup(p: &Project, args: &[&str]) -> common::Done {
    p.cmd(args)
        .env("ENVUP_HOME", home().path().to_str().unwrap())
        .out()
}

fn exec(p: &Project, machine: &str, script: &str) -> String {
    common::exec_in(home().path(), p, machine, script)
}

/// Destroys the project's machines when dropped, so that a failed check
/// leaves no machine, bridge or firewall rule behind.
struct Down<'a>(&'a Project);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        if common::state(self.0).join("machines").exists() {
            let _ = envup(self.0, &["-q", "destroy", "-f"]);
        }
    }
}

/// Each machine serves its hostname over HTTP on port 8000, again at every
/// start.
const HTTPD: &str = r#"
[[defaults.provision]]
name = "httpd"
run = "always"
shell = "mkdir -p /www && hostname > /www/index.html && (busybox httpd -p 8000 -h /www || true)"
"#;

/// What machine `from` fetches from each of `to` (by name or address):
/// the body, or `FAIL`. busybox's wget has no working `-T` in tiny, so
/// `timeout` bounds it.
fn fetch(p: &Project, from: &str, to: &[&str]) -> Vec<String> {
    let script: String = to
        .iter()
        .map(|t| format!("timeout 3 wget -q -O - http://{t}:8000/ 2>/dev/null || echo FAIL; "))
        .collect();
    exec(p, from, &script).lines().map(str::to_owned).collect()
}

/// Each machine's address, from `status --json`.
fn addresses(p: &Project) -> Vec<(String, String)> {
    let v = envup(p, &["status", "--json"]).status(0).json();
    v["machines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap().to_owned(),
                m["address"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

/// The project's bridge: named after the project (its state directory).
fn bridge_of(p: &Project) -> String {
    envup::network::bridge_of(&common::state(p))
}

fn link_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

/// After `destroy`: nothing of the network (common::network_gone), and
/// no bridge or host-side link of this project's subnet.
fn network_gone(p: &Project, bridge: &str) -> Result<(), Failed> {
    common::network_gone(p)?;
    check(!link_exists(bridge), format!("bridge {bridge} left"))?;
    let suffix = &bridge["envup".len()..bridge.len() - 2];
    let left: Vec<String> = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| (n.starts_with("ve") || n.starts_with("vt")) && n[2..].starts_with(suffix))
        .collect();
    check(left.is_empty(), format!("host links left: {left:?}"))
}

fn four_backends() -> Result<(), Failed> {
    let p = Project::with_envfile(&format!(
        "[defaults]\nbox = \"tiny\"\nmemory = \"256MiB\"\n{HTTPD}\n\
         [machines.jail]\nbackend = \"jail\"\n\
         [machines.docker]\nbackend = \"container\"\ncontainer = {{ engine = \"docker\" }}\n\
         [machines.lxc]\nbackend = \"lxc\"\nhostname = \"lxc.example\"\n\
         [machines.vm]\nbackend = \"qemu\"\n"
    ));
    let _down = Down(&p);
    envup(&p, &["up", "--jobs", "4"]).status(0);
    let names = ["jail", "docker", "lxc", "vm"];
    let want: Vec<String> = ["jail", "docker", "lxc.example", "vm"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for from in names {
        let got = fetch(&p, from, &names);
        check(got == want, format!("{from} fetched {got:?}"))?;
    }
    // By hostname too.
    let got = fetch(&p, "vm", &["lxc.example"]);
    check(
        got == ["lxc.example"],
        format!("vm fetched {got:?} from lxc.example"),
    )?;
    // Root on the host reaches each machine at its address.
    let before = addresses(&p);
    for (name, addr) in &before {
        check(!addr.is_empty(), format!("{name} has no address"))?;
        let o = std::process::Command::new("curl")
            .args(["-s", "-m", "5", &format!("http://{addr}:8000/")])
            .output()
            .unwrap();
        let body = String::from_utf8_lossy(&o.stdout).trim().to_owned();
        let want = if name == "lxc" {
            "lxc.example"
        } else {
            name.as_str()
        };
        check(
            body == want,
            format!("the host got {body:?} from {name} at {addr}"),
        )?;
    }
    // Halted and started again, each keeps its address and is reached there.
    envup(&p, &["halt", "docker", "vm"]).status(0);
    envup(&p, &["up", "docker", "vm"]).status(0);
    check(
        addresses(&p) == before,
        "addresses changed over halt and up",
    )?;
    for from in names {
        let got = fetch(&p, from, &names);
        check(
            got == want,
            format!("after halt and up, {from} fetched {got:?}"),
        )?;
    }
    let bridge = bridge_of(&p);
    envup(&p, &["destroy", "-f"]).status(0);
    network_gone(&p, &bridge)
}

fn two_projects_apart() -> Result<(), Failed> {
    let a = Project::with_envfile(&format!(
        "[defaults]\nbox = \"tiny\"\nmemory = \"256MiB\"\n{HTTPD}\n\
         [machines.a1]\nbackend = \"jail\"\n\
         [machines.a2]\nbackend = \"container\"\ncontainer = {{ engine = \"docker\" }}\n"
    ));
    // B chooses its network and addresses; its provisioner sees them.
    let b = Project::with_envfile(&format!(
        "[project]\nnetwork = \"10.231.7.0/24\"\n\
         [defaults]\nbox = \"tiny\"\nmemory = \"256MiB\"\n{HTTPD}\n\
         [machines.b1]\nbackend = \"jail\"\naddress = \"10.231.7.50\"\n\
         [[machines.b1.provision]]\nname = \"seen\"\ntemplate = true\n\
         shell = \"{{% raw %}}echo {{{{ project.network }}}} {{{{ machines.b2.address }}}} > /seen{{% endraw %}}\"\n\
         [machines.b2]\nbackend = \"container\"\ncontainer = {{ engine = \"docker\" }}\naddress = \"10.231.7.60\"\n"
    ));
    let (_da, _db) = (Down(&a), Down(&b));
    envup(&a, &["up"]).status(0);
    envup(&b, &["up"]).status(0);
    let ab = addresses(&b);
    check(
        ab == [
            ("b1".to_owned(), "10.231.7.50".to_owned()),
            ("b2".to_owned(), "10.231.7.60".to_owned()),
        ],
        format!("b's addresses: {ab:?}"),
    )?;
    let seen = exec(&b, "b1", "cat /seen");
    check(
        seen == "10.231.7.0/24 10.231.7.60\n",
        format!("b1's template saw {seen:?}"),
    )?;
    let aa: Vec<String> = addresses(&a).into_iter().map(|(_, x)| x).collect();
    let ba: Vec<String> = ab.into_iter().map(|(_, x)| x).collect();
    for (p, own, theirs, machines) in [
        (&a, ["a1", "a2"], &ba, ["a1", "a2"]),
        (&b, ["b1", "b2"], &aa, ["b1", "b2"]),
    ] {
        for m in machines {
            let got = fetch(p, m, &own);
            check(
                got == own,
                format!("{m} fetched {got:?} from its own project"),
            )?;
            let to: Vec<&str> = theirs.iter().map(String::as_str).collect();
            let got = fetch(p, m, &to);
            check(
                got.iter().all(|g| g == "FAIL"),
                format!("{m} reached the other project's machines {to:?}: {got:?}"),
            )?;
        }
    }
    // Names are written through the machine's root: root in the machine
    // that points /etc/hosts at a host path reaches only its own tree.
    let victim = "/tmp/envup-network-test-victim";
    std::fs::write(victim, "the host's\n").unwrap();
    exec(&a, "a1", &format!("ln -sf {victim} /etc/hosts"));
    a.write(
        "Envfile",
        &format!(
            "[defaults]\nbox = \"tiny\"\nmemory = \"256MiB\"\n{HTTPD}\n\
             [machines.a1]\nbackend = \"jail\"\n\
             [machines.a2]\nbackend = \"container\"\ncontainer = {{ engine = \"docker\" }}\n\
             [machines.a3]\nbackend = \"jail\"\n"
        ),
    );
    envup(&a, &["up", "a3"]).status(0);
    let host_side = std::fs::read_to_string(victim).unwrap();
    let _ = std::fs::remove_file(victim);
    check(
        host_side == "the host's\n",
        format!("the host's file was written: {host_side:?}"),
    )?;
    let inside = exec(&a, "a1", &format!("grep -c a3 {victim} || true"));
    check(
        inside.trim() == "1",
        format!("a1's own {victim} should hold the names: {inside:?}"),
    )?;
    let got = fetch(&a, "a2", &["a3"]);
    check(got == ["a3"], format!("a2 fetched {got:?} from the new a3"))?;
    let (ba_, bb) = (bridge_of(&a), bridge_of(&b));
    envup(&a, &["destroy", "-f"]).status(0);
    envup(&b, &["destroy", "-f"]).status(0);
    network_gone(&a, &ba_)?;
    network_gone(&b, &bb)
}

/// A stand-in for the world outside the host: a network namespace behind a
/// veth pair (not a bridge, not one of the host's addresses), serving
/// `outside` over HTTP on port 8000. Gone when dropped.
struct Outside {
    server: std::process::Child,
}

const OUTSIDE_NS: &str = "envup-test-outside";
const OUTSIDE_ADDR: &str = "10.250.99.2";

impl Outside {
    fn start() -> Outside {
        let ip = |args: &str| {
            let ok = std::process::Command::new("sh")
                .args(["-c", &format!("ip {args}")])
                .status()
                .unwrap()
                .success();
            assert!(ok, "ip {args}");
        };
        let quiet = |args: &[&str]| {
            let _ = std::process::Command::new("ip")
                .args(args)
                .stderr(std::process::Stdio::null())
                .status();
        };
        quiet(&["netns", "del", OUTSIDE_NS]);
        quiet(&["link", "del", "vtestout0"]);
        ip(&format!("netns add {OUTSIDE_NS}"));
        ip(&format!(
            "link add vtestout0 type veth peer name eth0 netns {OUTSIDE_NS}"
        ));
        ip("addr add 10.250.99.1/30 dev vtestout0");
        ip("link set vtestout0 up");
        ip(&format!(
            "-n {OUTSIDE_NS} addr add {OUTSIDE_ADDR}/30 dev eth0"
        ));
        ip(&format!("-n {OUTSIDE_NS} link set eth0 up"));
        let dir = tempfile::tempdir().unwrap().keep();
        std::fs::write(dir.join("index.html"), "outside\n").unwrap();
        let server = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                OUTSIDE_NS,
                "python3",
                "-m",
                "http.server",
                "8000",
            ])
            .args(["--bind", OUTSIDE_ADDR, "--directory"])
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let until = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect((OUTSIDE_ADDR, 8000)).is_err() {
            assert!(Instant::now() < until, "the outside server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Outside { server }
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", OUTSIDE_NS])
            .status();
        let _ = std::process::Command::new("ip")
            .args(["link", "del", "vtestout0"])
            .status();
    }
}

/// A service of the host's on every address (0.0.0.0) and one on its
/// loopback, answering `host`; ended when dropped.
struct HostService {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl HostService {
    fn start() -> HostService {
        use std::io::Write;
        let l = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let port = l.local_addr().unwrap().port();
        l.set_nonblocking(true).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        std::thread::spawn(move || {
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        let _ = c.write_all(
                            b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhost\n",
                        );
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        HostService { port, stop }
    }
}

impl Drop for HostService {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The host's own addresses a machine might try: its address on the way
/// to the world, docker0's, and Podman's default network's.
fn host_addresses() -> Vec<String> {
    let mut out = Vec::new();
    let route = std::process::Command::new("ip")
        .args(["-4", "route", "get", "1.1.1.1"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&route.stdout);
    if let Some(src) = text.split_whitespace().skip_while(|w| *w != "src").nth(1) {
        out.push(src.to_owned());
    }
    for dev in ["docker0", "podman0", "cni-podman0"] {
        let o = std::process::Command::new("ip")
            .args(["-4", "-o", "addr", "show", "dev", dev])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        if let Some(a) = text.split_whitespace().skip_while(|w| *w != "inet").nth(1) {
            out.push(a.split('/').next().unwrap().to_owned());
        }
    }
    out
}

/// `url` from machine `from`, each at once: the body or `FAIL`, in order.
fn fetch_all(p: &Project, from: &str, urls: &[String]) -> Vec<String> {
    let script: String = urls
        .iter()
        .enumerate()
        .map(|(i, u)| {
            format!(
                "(r=$(timeout 4 wget -q -O - {u} 2>/dev/null) || r=FAIL; echo \"{i} $r\" > /tmp/probe{i}) & "
            )
        })
        .collect::<String>()
        + "wait; cat /tmp/probe*; rm -f /tmp/probe*";
    let said = exec(p, from, &script);
    let mut got = vec!["FAIL".to_owned(); urls.len()];
    for line in said.lines() {
        if let Some((i, r)) = line.split_once(' ')
            && let Ok(i) = i.parse::<usize>()
            && i < got.len()
        {
            got[i] = r.trim().to_owned();
        }
    }
    got
}

/// Two projects with a machine of every backend each: from each machine of
/// A, nothing of B answers on any address (its machines on their project
/// network, the engines' networks), and none of the host's own services,
/// whether on a project bridge's address, on the host's other addresses
/// or behind a machine's way out (slirp's and qemu's alias of the host);
/// the world outside still answers, as do A's own machines. A jail on the
/// host's network is held to the same.
fn apart_on_every_path() -> Result<(), Failed> {
    let outside = Outside::start();
    let host = HostService::start();
    let machines = |prefix: &str| {
        format!(
            "[defaults]\nbox = \"tiny\"\nmemory = \"256MiB\"\n{HTTPD}\n\
             [machines.{prefix}jail]\nbackend = \"jail\"\n\
             [machines.{prefix}lxc]\nbackend = \"lxc\"\n\
             [machines.{prefix}docker]\nbackend = \"container\"\ncontainer = {{ engine = \"docker\" }}\n\
             [machines.{prefix}podman]\nbackend = \"container\"\ncontainer = {{ engine = \"podman\" }}\n\
             [machines.{prefix}vm]\nbackend = \"qemu\"\n"
        )
    };
    let a = Project::with_envfile(&format!(
        "{}[machines.ahost]\nbackend = \"jail\"\njail = {{ network = \"host\" }}\nprovision = []\n",
        machines("a")
    ));
    let b = Project::with_envfile(&machines("b"));
    let (_da, _db) = (Down(&a), Down(&b));
    envup(&b, &["up", "--jobs", "5"]).status(0);
    envup(&a, &["up", "--jobs", "6"]).status(0);
    let own: Vec<(String, String)> = addresses(&a);
    let theirs: Vec<(String, String)> = addresses(&b);
    let gateway = |addr: &str| {
        let mut o: Vec<&str> = addr.split('.').collect();
        o[3] = "1";
        o.join(".")
    };
    let mut forbidden: Vec<String> = theirs
        .iter()
        .filter(|(_, a)| !a.is_empty())
        .map(|(_, a)| format!("http://{a}:8000/"))
        .collect();
    // B's containers on any network of their engines.
    for name in common::containers(&b) {
        for engine in ["docker", "podman"] {
            let o = std::process::Command::new(engine)
                .args(["inspect", "--format"])
                .arg("{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}")
                .arg(&name)
                .output();
            if let Ok(o) = o {
                forbidden.extend(
                    String::from_utf8_lossy(&o.stdout)
                        .split_whitespace()
                        .map(|ip| format!("http://{ip}:8000/")),
                );
            }
        }
    }
    let hosts: Vec<String> = [gateway(&own[0].1), gateway(&theirs[0].1), "10.0.2.2".into()]
        .into_iter()
        .chain(host_addresses())
        .collect();
    forbidden.extend(hosts.iter().map(|h| format!("http://{h}:{}/", host.port)));
    let allowed: Vec<String> = own
        .iter()
        .filter(|(n, a)| !a.is_empty() && n != "ahost")
        .map(|(_, a)| format!("http://{a}:8000/"))
        .chain([format!("http://{OUTSIDE_ADDR}:8000/")])
        .collect();
    let mut problems = Vec::new();
    for (from, _) in &own {
        let urls: Vec<String> = forbidden.iter().chain(&allowed).cloned().collect();
        let got = fetch_all(&a, from, &urls);
        for (u, g) in urls.iter().zip(&got) {
            let ok = if forbidden.contains(u) {
                g == "FAIL"
            } else {
                // A jail on the host's network is not on the project's.
                from == "ahost" && !u.contains(OUTSIDE_ADDR) || g != "FAIL"
            };
            if !ok {
                problems.push(format!("{from}: {u} gave {g}"));
            }
        }
    }
    drop(outside);
    let (bridge_a, bridge_b) = (bridge_of(&a), bridge_of(&b));
    envup(&a, &["destroy", "-f"]).status(0);
    envup(&b, &["destroy", "-f"]).status(0);
    network_gone(&a, &bridge_a)?;
    network_gone(&b, &bridge_b)?;
    check(problems.is_empty(), problems.join("\n"))
}

/// Claims are checked for overlap: a subnet inside another project's is
/// refused, naming it. A record edited to name another project's network
/// and its machine's address is not followed: `destroy` takes away this
/// project's bridge and claim, found by the project, and leaves the other
/// project's machine on its network.
fn claims_overlap_and_records_checked() -> Result<(), Failed> {
    let jail = |net: &str| {
        format!(
            "[project]\nnetwork = \"{net}\"\n\
             [defaults]\nbox = \"tiny\"\nmemory = \"128MiB\"\n{HTTPD}\n\
             [machines.m]\nbackend = \"jail\"\n"
        )
    };
    let a = Project::with_envfile(&jail("10.229.70.0/24"));
    let b = Project::with_envfile(&jail("10.229.70.0/25"));
    let c = Project::with_envfile(&jail("10.229.71.0/24"));
    let (_da, _db, _dc) = (Down(&a), Down(&b), Down(&c));
    envup(&a, &["up"]).status(0);
    let out = envup(&b, &["up"]);
    check(
        out.code() != 0
            && out
                .stderr()
                .contains("10.229.70.0/25 overlaps 10.229.70.0/24, another project's"),
        format!("an overlapping network was not refused: {}", out.stderr()),
    )?;
    envup(&c, &["up"]).status(0);
    let a_addr = addresses(&a)[0].1.clone();
    let a_veth = format!(
        "ve{:08x}",
        u32::from(a_addr.parse::<std::net::Ipv4Addr>().unwrap())
    );
    check(link_exists(&a_veth), format!("{a_veth} is missing"))?;
    // C's record now names A's network and A's machine's address.
    let record = common::state(&c).join("network.json");
    std::fs::write(
        &record,
        format!(r#"{{"version":1,"subnet":"10.229.70.0/24","machines":{{"m":"{a_addr}"}}}}"#),
    )
    .unwrap();
    let bridge_c = bridge_of(&c);
    envup(&c, &["destroy", "-f"]).status(0);
    check(
        link_exists(&a_veth),
        "C's destroy removed A's machine's link",
    )?;
    let got = fetch(&a, "m", &[&a_addr]);
    check(
        got == ["m"],
        format!("A's machine after C's destroy: {got:?}"),
    )?;
    network_gone(&c, &bridge_c)?;
    let bridge_a = bridge_of(&a);
    envup(&a, &["destroy", "-f"]).status(0);
    network_gone(&a, &bridge_a)
}

fn no_network() -> Result<(), Failed> {
    let p = Project::with_envfile(
        "[project]\nnetwork = \"none\"\n[machines.x]\nbox = \"tiny\"\nbackend = \"jail\"\n",
    );
    let _down = Down(&p);
    envup(&p, &["up"]).status(0);
    check(
        addresses(&p) == [("x".to_owned(), String::new())],
        "a machine of a project without a network has an address",
    )?;
    check(
        !common::state(&p).join("network.json").exists(),
        "a project without a network has a record",
    )?;
    let links = exec(&p, "x", "ls /sys/class/net");
    check(!links.contains("envup0"), format!("links: {links}"))?;
    envup(&p, &["destroy", "-f"]).status(0);
    Ok(())
}

fn web_db_postgres() -> Result<(), Failed> {
    with_debian();
    let p = Project::new();
    envup(
        &p,
        &[
            "init",
            "--template",
            "web-db",
            "--box",
            "debian/bookworm",
            "--backend",
            "container",
        ],
    )
    .status(0);
    // The template as shipped: its last provisioner runs psql against `db`.
    let _down = Down(&p);
    envup(&p, &["up"]).status(0);
    let ready = exec(&p, "web", "pg_isready -h db");
    check(
        ready.contains("accepting connections"),
        format!("pg_isready: {ready}"),
    )?;
    let one = exec(
        &p,
        "web",
        "psql postgresql://app:app@db/app -tAc 'select 1' 2>&1 || true",
    );
    check(one.trim() == "1", format!("psql from web: {one}"))?;
    let bridge = bridge_of(&p);
    envup(&p, &["destroy", "-f"]).status(0);
    network_gone(&p, &bridge)
}

type TestFn = Box<dyn FnOnce() -> Result<(), Failed> + Send>;

fn main() {
    let args = Arguments::from_args();
    let jails = common::jails_unavailable();
    let docker = common::engine_unavailable("docker");
    let podman = common::engine_unavailable("podman");
    let lxc = common::engine_unavailable("lxc");
    let qemu = ["qemu-system-x86_64", "qemu-img"]
        .into_iter()
        .find(|t| common::host_lacks(t))
        .map(|t| format!("{t} is missing (apt-get install qemu-system-x86 qemu-utils)"));
    let curl = common::host_lacks("curl").then(|| "curl is missing (apt-get install curl)".into());
    let first = |xs: &[&Option<String>]| xs.iter().find_map(|x| (*x).clone());
    let tests: Vec<(&str, Option<String>, TestFn)> = vec![
        (
            "four_backends",
            first(&[&jails, &docker, &lxc, &qemu, &curl]),
            Box::new(four_backends),
        ),
        (
            "two_projects_apart",
            first(&[&jails, &docker]),
            Box::new(two_projects_apart),
        ),
        ("no_network", first(&[&jails]), Box::new(no_network)),
        (
            "claims_overlap_and_records_checked",
            first(&[&jails]),
            Box::new(claims_overlap_and_records_checked),
        ),
        (
            "apart_on_every_path",
            first(&[&jails, &docker, &podman, &lxc, &qemu]),
            Box::new(apart_on_every_path),
        ),
        (
            "web_db_postgres",
            first(&[&docker]),
            Box::new(web_db_postgres),
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
    libtest_mimic::run(&args, trials).exit();
}
