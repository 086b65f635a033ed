//! The host's side of project networks: bridges, veth pairs and taps made
//! with iproute2's `ip`, and the firewall rules (iptables) that keep
//! projects apart.
//!
//! The rules, in chains of envup's own jumped to first from `FORWARD`,
//! `INPUT` and `OUTPUT` (and from Docker's `DOCKER-USER`, which Docker
//! puts before its own rules whenever it starts):
//!
//! - `ENVUP-FORWARD`: traffic between two machines of one project (bridged,
//!   which the kernel shows to iptables as in and out of the bridge) is
//!   accepted, one rule per project network; anything else routed into or
//!   out of an `envup*` bridge is dropped, and anything routed between two
//!   of the engines' networks envup makes (`evup*`, one per project and
//!   engine). So no project network is a route to another, to the host's
//!   other networks or from them.
//! - `ENVUP-INPUT`: nothing a machine sends reaches the host itself through
//!   a project bridge or an engine network of envup's (the host's services
//!   on those addresses, or on any other of its addresses), but answers to
//!   what the host started (and, on an engine network, DNS).
//! - `ENVUP-OUTPUT` sends what the machines' ways out send to
//!   `ENVUP-CONFINE`: the outbound helpers (slirp4netns and qemu run with
//!   group [`HELPER_GID`]) and the processes of jails on the host's
//!   network (their ids, the range envup gives machines). There nothing
//!   but answers leaves through an `envup*` bridge, an engine network or
//!   the container networks of Docker, Podman, LXC and libvirt, nor goes
//!   to one of the host's own addresses (but DNS): a machine reaches the
//!   world, not other projects' machines nor the host's services.
//!
//! The chains are made before the first machine envup runs as root
//! starts, and stay (they match nothing but envup's own).

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use super::{Attachment, Subnet};

/// The group the machines' outbound helpers (slirp4netns, qemu) run with:
/// just below the ids envup gives machines, in the range systemd keeps for
/// containers, which no user's group has.
pub const HELPER_GID: u32 = 1_073_741_823;

const FORWARD_CHAIN: &str = "ENVUP-FORWARD";
const INPUT_CHAIN: &str = "ENVUP-INPUT";
const OUTPUT_CHAIN: &str = "ENVUP-OUTPUT";
const CONFINE_CHAIN: &str = "ENVUP-CONFINE";
/// The name every project bridge starts with, as iptables matches it.
const BRIDGES: &str = "envup+";
/// The name every engine network envup makes starts with (its bridge on
/// the host), as iptables matches it.
pub const ENGINE_NETS: &str = "evup+";
/// The host ids envup gives machines (jails and LXC containers).
const MACHINE_IDS: &str = "1073741824-1879048191";
/// The container networks of the engines on the host, which a machine's
/// way out must not reach either.
const ENGINE_BRIDGES: [&str; 6] = ["docker0", "br-+", "cni-+", "podman+", "lxcbr+", "virbr+"];
/// The machine's end of its veth pair, in its network namespace.
pub const MACHINE_LINK: &str = "envup0";

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot run {program} (apt-get install {package})")]
    Spawn {
        program: &'static str,
        package: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed: {stderr}")]
    Tool { command: String, stderr: String },
    #[error("cannot {op} {}", .path.display())]
    Io {
        op: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> LinkError {
    let path = path.to_owned();
    move |source| LinkError::Io { op, path, source }
}

/// Run `program` with `args`, `input` on its stdin; in the network
/// namespace at `netns` when given.
fn run(
    program: &'static str,
    args: &[&str],
    input: Option<&str>,
    netns: Option<&std::fs::File>,
) -> Result<(), LinkError> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(ns) = netns {
        let fd = ns.as_raw_fd();
        let enter = move || {
            // SAFETY: `fd` is open for as long as the spawn lasts.
            let ns = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)
        };
        // SAFETY: between fork and exec the closure calls only setns, which
        // is async-signal-safe.
        unsafe {
            cmd.pre_exec(enter);
        }
    }
    let package = match program {
        "ip" => "iproute2",
        p if p.starts_with("iptables") => "iptables",
        p => p,
    };
    let mut child = cmd.spawn().map_err(|source| LinkError::Spawn {
        program,
        package,
        source,
    })?;
    if let Some(text) = input {
        let mut stdin = child.stdin.take().expect("piped");
        let _ = stdin.write_all(text.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|source| LinkError::Spawn {
            program,
            package,
            source,
        })?;
    if out.status.success() {
        return Ok(());
    }
    let mut command = program.to_owned();
    for a in args {
        command.push(' ');
        command.push_str(a);
    }
    if let Some(text) = input {
        command.push_str(&format!(" <<< {:?}", text.trim_end()));
    }
    Err(LinkError::Tool {
        command,
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    })
}

fn ip_batch(lines: &[String], netns: Option<&std::fs::File>) -> Result<(), LinkError> {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    run("ip", &["-batch", "-"], Some(&text), netns)
}

pub fn exists(link: &str) -> bool {
    Path::new("/sys/class/net").join(link).exists()
}

/// Serialises changes to claims and the firewall across envup processes.
pub struct HostLock(#[allow(dead_code)] nix::fcntl::Flock<std::fs::File>);

impl HostLock {
    pub fn take() -> Result<HostLock, LinkError> {
        let dir = Path::new(super::CLAIMS_DIR);
        std::fs::create_dir_all(dir).map_err(io("make", dir))?;
        let path = dir.join(".lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io("open", &path))?;
        nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
            .map(HostLock)
            .map_err(|(_, e)| LinkError::Io {
                op: "lock",
                path,
                source: e.into(),
            })
    }
}

/// Where envup notes that its chains are in place: on a tmpfs, as the
/// rules themselves are gone after a reboot.
const FIREWALL_MARK: &str = "/run/envup/firewall";

/// envup's chains, in place (made when the mark says nothing of them).
/// They hold every machine envup runs as root, with a project network or
/// without, and stay once made (they match nothing but envup's).
pub fn ensure_firewall() -> Result<(), LinkError> {
    if Path::new(FIREWALL_MARK).exists() {
        return Ok(());
    }
    let _host = HostLock::take()?;
    iptables_batch(&firewall_lines(&filter_rules()?))?;
    mark_firewall()
}

fn mark_firewall() -> Result<(), LinkError> {
    let mark = Path::new(FIREWALL_MARK);
    if let Some(dir) = mark.parent() {
        std::fs::create_dir_all(dir).map_err(io("make", dir))?;
    }
    std::fs::write(mark, b"").map_err(io("write", mark))
}

/// The project's bridge `br`, up, with the host's address on `net`: made,
/// with its firewall rule, when missing (a new network, or a host that
/// rebooted), and finished when an envup killed midway left it without
/// its address, down, or without its rule. The bridge an earlier envup
/// named after the subnet goes first when nothing is attached to it (it
/// holds the same address).
pub fn ensure_bridge(net: &Subnet, br: &str) -> Result<(), LinkError> {
    if bridge_whole(net, br) {
        return Ok(());
    }
    let _host = HostLock::take()?;
    remove_unused_bridge(&net.legacy_bridge())?;
    // envup's chains where missing, and the project's rule where missing,
    // in one go.
    let rules = filter_rules()?;
    let mut batch = firewall_lines(&rules);
    if !rules.lines().any(|l| l == bridge_rule(br)) {
        batch.push(format!("-I {FORWARD_CHAIN} 1 -i {br} -o {br} -j ACCEPT"));
    }
    iptables_batch(&batch)?;
    mark_firewall()?;
    if !exists(br) {
        ip_batch(&[format!("link add {br} type bridge")], None)?;
    }
    crate::fault::point("net:bridged");
    // No IPv6 on the bridge: no link-local address to reach the host or
    // another machine by.
    let v6 = Path::new("/proc/sys/net/ipv6/conf")
        .join(br)
        .join("disable_ipv6");
    if v6.exists() {
        std::fs::write(&v6, b"1").map_err(io("write", &v6))?;
    }
    ip_batch(
        &[
            format!("addr replace {}/{} dev {br}", net.gateway(), net.prefix()),
            format!("link set {br} up"),
        ],
        None,
    )
}

/// The rule that lets the machines on bridge `br` reach each other, as
/// `iptables -S` shows it.
fn bridge_rule(br: &str) -> String {
    format!("-A {FORWARD_CHAIN} -i {br} -o {br} -j ACCEPT")
}

/// Whether bridge `br` is there, up, with the host's address on `net`
/// (asked of the kernel, no program run) and envup's chains in place.
fn bridge_whole(net: &Subnet, br: &str) -> bool {
    use nix::net::if_::InterfaceFlags;
    if !exists(br) || !Path::new(FIREWALL_MARK).exists() {
        return false;
    }
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return false;
    };
    let mut up = false;
    let mut addressed = false;
    for a in addrs.filter(|a| a.interface_name == br) {
        up |= a.flags.contains(InterfaceFlags::IFF_UP);
        addressed |= a
            .address
            .as_ref()
            .and_then(|s| s.as_sockaddr_in())
            .is_some_and(|s| s.ip() == net.gateway());
    }
    up && addressed
}

/// Remove the project's bridge `br` (with the machines' links on it, which
/// are its ports) and its firewall rule (each copy of it).
pub fn remove_bridge(br: &str) -> Result<(), LinkError> {
    remove_bridge_rule(br)?;
    for port in ports(br) {
        remove_link(&port)?;
    }
    remove_link(br)
}

/// Remove every copy of bridge `br`'s rule.
fn remove_bridge_rule(br: &str) -> Result<(), LinkError> {
    let rule = bridge_rule(br);
    let copies = filter_rules()?.lines().filter(|l| *l == rule).count();
    if copies > 0 {
        iptables_batch(&vec![rule.replacen("-A", "-D", 1); copies])?;
    }
    Ok(())
}

/// Remove the bridge `br` if it is there and nothing is attached to it.
pub fn remove_unused_bridge(br: &str) -> Result<(), LinkError> {
    if exists(br) && ports(br).is_empty() {
        remove_bridge_rule(br)?;
        remove_link(br)?;
    }
    Ok(())
}

/// The links attached to bridge `br`.
fn ports(br: &str) -> Vec<String> {
    std::fs::read_dir(Path::new("/sys/class/net").join(br).join("brif"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The bridge `link` is attached to, if any.
fn master(link: &str) -> Option<String> {
    let m = std::fs::read_link(Path::new("/sys/class/net").join(link).join("master")).ok()?;
    Some(m.file_name()?.to_string_lossy().into_owned())
}

/// Remove a host link envup made, if it is there.
pub fn remove_link(name: &str) -> Result<(), LinkError> {
    if !exists(name) {
        return Ok(());
    }
    match ip_batch(&[format!("link del {name}")], None) {
        // Gone meanwhile (a veth goes with its machine's namespace).
        Err(_) if !exists(name) => Ok(()),
        other => other,
    }
}

/// Remove a machine's host-side link `name` if it is on the project's
/// bridge `br`: a link of the same name on another bridge is another
/// project's (a record edited to name its address), and stays.
pub fn remove_port(name: &str, br: &str) -> Result<(), LinkError> {
    if master(name).as_deref() == Some(br) {
        remove_link(name)
    } else {
        Ok(())
    }
}

/// Whether the machine attached at `at` that joins through its namespace
/// is on its bridge: the bridge is there and the machine's host-side link
/// is one of its ports.
pub fn on_bridge(at: &Attachment) -> bool {
    let host = super::host_link("ve", at.address);
    exists(&at.bridge) && master(&host).as_deref() == Some(at.bridge.as_str())
}

/// Put the machine whose network namespace is that of process `pid` on
/// its network: a veth pair, `ve…` on the bridge and `envup0` inside with
/// the machine's address.
pub fn join_namespace(pid: i32, at: &Attachment) -> Result<(), LinkError> {
    let host = super::host_link("ve", at.address);
    let br = &at.bridge;
    let ns_path = format!("/proc/{pid}/ns/net");
    let ns = std::fs::File::open(&ns_path).map_err(io("open", Path::new(&ns_path)))?;
    // A pair left from this machine's earlier run goes first.
    remove_port(&host, br)?;
    ip_batch(
        &[
            // The machine's end keeps one MAC address from run to run, so
            // the other machines' neighbour caches stay right.
            format!(
                "link add {host} type veth peer name {MACHINE_LINK} address {} netns {pid}",
                super::mac_of(at.address)
            ),
            format!("link set {host} master {br} up"),
        ],
        None,
    )?;
    crate::fault::point("net:linked");
    ip_batch(
        &[
            format!(
                "addr add {}/{} dev {MACHINE_LINK}",
                at.address,
                at.subnet.prefix()
            ),
            format!("link set {MACHINE_LINK} up"),
        ],
        Some(&ns),
    )
}

/// The tap a VM's project NIC is started on, on the bridge; made when
/// missing (it stays from one run of the VM to the next).
pub fn ensure_tap(at: &Attachment) -> Result<String, LinkError> {
    let tap = super::host_link("vt", at.address);
    let br = &at.bridge;
    if !exists(&tap) {
        ip_batch(&[format!("tuntap add dev {tap} mode tap")], None)?;
    }
    ip_batch(&[format!("link set {tap} master {br} up")], None)?;
    Ok(tap)
}

/// The filter table's rules, as `iptables -S` prints them.
fn filter_rules() -> Result<String, LinkError> {
    let out = Command::new("iptables")
        .args(["-w", "-S"])
        .stdin(Stdio::null())
        .output()
        .map_err(|source| LinkError::Spawn {
            program: "iptables",
            package: "iptables",
            source,
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(LinkError::Tool {
            command: "iptables -w -S".into(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Apply rule commands (`-A CHAIN …`, `-N CHAIN`…) to the filter table
/// in one `iptables-restore`, all or none, leaving every other rule.
fn iptables_batch(lines: &[String]) -> Result<(), LinkError> {
    if lines.is_empty() {
        return Ok(());
    }
    let input = format!("*filter\n{}\nCOMMIT\n", lines.join("\n"));
    run("iptables-restore", &["-w", "--noflush"], Some(&input), None)
}

/// envup's chains: each with where it is jumped to from, and its fixed
/// rules.
fn chains() -> Vec<(&'static str, &'static str, Vec<String>)> {
    let gid = HELPER_GID;
    let mut confine = vec![
        format!("-A {CONFINE_CHAIN} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"),
        format!("-A {CONFINE_CHAIN} -o {BRIDGES} -j DROP"),
        format!("-A {CONFINE_CHAIN} -o {ENGINE_NETS} -j DROP"),
    ];
    confine.extend(
        ENGINE_BRIDGES
            .iter()
            .map(|b| format!("-A {CONFINE_CHAIN} -o {b} -j DROP")),
    );
    confine.extend([
        format!(
            "-A {CONFINE_CHAIN} -p udp -m addrtype --dst-type LOCAL -m udp --dport 53 -j RETURN"
        ),
        format!(
            "-A {CONFINE_CHAIN} -p tcp -m addrtype --dst-type LOCAL -m tcp --dport 53 -j RETURN"
        ),
        format!("-A {CONFINE_CHAIN} -m addrtype --dst-type LOCAL -j DROP"),
    ]);
    vec![
        (CONFINE_CHAIN, "", confine),
        (
            FORWARD_CHAIN,
            "FORWARD",
            vec![
                format!("-A {FORWARD_CHAIN} -i {BRIDGES} -j DROP"),
                format!("-A {FORWARD_CHAIN} -o {BRIDGES} -j DROP"),
                format!("-A {FORWARD_CHAIN} -i {ENGINE_NETS} -o {ENGINE_NETS} -j DROP"),
            ],
        ),
        (
            INPUT_CHAIN,
            "INPUT",
            vec![
                format!("-A {INPUT_CHAIN} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"),
                format!("-A {INPUT_CHAIN} -i {BRIDGES} -j DROP"),
                format!("-A {INPUT_CHAIN} -i {ENGINE_NETS} -p udp -m udp --dport 53 -j RETURN"),
                format!("-A {INPUT_CHAIN} -i {ENGINE_NETS} -p tcp -m tcp --dport 53 -j RETURN"),
                format!("-A {INPUT_CHAIN} -i {ENGINE_NETS} -j DROP"),
            ],
        ),
        (
            OUTPUT_CHAIN,
            "OUTPUT",
            vec![
                format!("-A {OUTPUT_CHAIN} -m owner --gid-owner {gid} -j {CONFINE_CHAIN}"),
                format!("-A {OUTPUT_CHAIN} -m owner --uid-owner {MACHINE_IDS} -j {CONFINE_CHAIN}"),
            ],
        ),
    ]
}

/// What makes envup's chains whole, given the filter table's rules: each
/// chain with its fixed rules where missing or changed, jumped to first
/// (and from Docker's `DOCKER-USER`, where Docker runs).
fn firewall_lines(rules: &str) -> Vec<String> {
    let has = |line: &str| rules.lines().any(|l| l == line);
    let mut lines = Vec::new();
    for (chain, from, fixed) in chains() {
        if !has(&format!("-N {chain}")) {
            lines.push(format!("-N {chain}"));
            lines.extend(fixed);
        } else {
            // Made by an earlier envup: what it lacks is added after what
            // is there (a project's own rules stay first).
            lines.extend(fixed.into_iter().filter(|l| !has(l)));
        }
        let mut froms = vec![from];
        if chain == FORWARD_CHAIN && has("-N DOCKER-USER") {
            froms.push("DOCKER-USER");
        }
        for from in froms.into_iter().filter(|f| !f.is_empty()) {
            if !has(&format!("-A {from} -j {chain}")) {
                lines.push(format!("-I {from} 1 -j {chain}"));
            }
        }
    }
    lines
}

/// What a helper process runs with: no supplementary groups, and the
/// helpers' group (called between fork and exec).
pub fn as_helper() -> std::io::Result<()> {
    nix::unistd::setgroups(&[]).map_err(std::io::Error::from)?;
    nix::unistd::setgid(nix::unistd::Gid::from_raw(HELPER_GID)).map_err(std::io::Error::from)
}
