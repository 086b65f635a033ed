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
        if self.0.path().join(".envup/machines").exists() {
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

/// The project's subnet and bridge, from its record.
fn bridge_of(p: &Project) -> String {
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(p.path().join(".envup/network.json")).unwrap())
            .unwrap();
    let subnet: envup::network::Subnet = r["subnet"].as_str().unwrap().parse().unwrap();
    subnet.bridge()
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
        !p.path().join(".envup/network.json").exists(),
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
