//! Private networks for jails and LXC containers. slirp4netns connects a
//! network namespace to the host through a user-mode TCP/IP stack: the
//! namespace gets `tap0` with 10.0.2.100, a route out through 10.0.2.2 and
//! a DNS forwarder at 10.0.2.3. What the machine sends out leaves from
//! ordinary sockets of the host, so it reaches what the host reaches. SSH
//! and the Envfile's forwards are host ports slirp4netns listens on,
//! added through its API socket before the machine is reported started.
//!
//! Measured here, slirp4netns costs about 4 ms of CPU to start, against
//! about 27 ms for pasta (which zeroes some 30 MB of buffers at start);
//! with four jails starting on two cores that was the difference between
//! meeting the speed target and missing it (docs/backends/jail.md).

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::envfile::config::{Forward, Protocol};

/// What can go wrong connecting a machine's network.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot {op} {}", .path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot make a pipe for {PROGRAM}'s readiness")]
    Pipe(#[source] nix::Error),
    #[error("cannot start {PROGRAM} (apt-get install {PROGRAM})")]
    Spawn(#[source] std::io::Error),
    #[error("{PROGRAM} could not connect the network namespace: {0}")]
    NotReady(String),
    #[error("cannot listen on {addr}/{proto} for the machine's port {guest} (is the port in use?)")]
    Port {
        addr: String,
        proto: &'static str,
        guest: u16,
        #[source]
        source: ApiError,
    },
    #[error("cannot name the network namespace of pid {pid} {}", .path.display())]
    Name {
        pid: i32,
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
}

impl crate::backend::OwnError for NetError {}

/// What slirp4netns's API socket answered, when it was not yes.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ApiError {
    #[error("{PROGRAM}'s API socket: {0}")]
    Io(String),
    #[error("an unreadable answer {0:?}")]
    Unreadable(String),
    #[error("{0}")]
    Refused(String),
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> NetError {
    let path = path.to_owned();
    move |source| NetError::Io { op, path, source }
}

/// The address the machine's DNS queries go to; slirp4netns forwards them
/// to the host's resolver.
pub const DNS_ADDR: &str = "10.0.2.3";
/// The program, from Debian's package of the same name.
pub const PROGRAM: &str = "slirp4netns";

/// Whether the helper ends with the process that started it (a jail's
/// supervisor) or outlives it (an LXC container started by `envup up`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    WithParent,
    Detached,
}

/// The ports slirp4netns listens on: SSH on 127.0.0.1:`ssh_port`, then
/// each of the machine's forwards.
pub fn host_fwds(ssh_port: u16, forwards: &[Forward]) -> Vec<Forward> {
    let ssh = Forward {
        guest: 22,
        host: ssh_port,
        host_ip: std::net::Ipv4Addr::LOCALHOST.into(),
        protocol: Protocol::Tcp,
    };
    std::iter::once(ssh)
        .chain(forwards.iter().copied())
        .collect()
}

/// The arguments for the namespace at `netns`: no way to the host's own
/// loopback services (10.0.2.2 is not the host's 127.0.0.1), a seccomp
/// filter on the helper itself, and readiness reported on `ready_fd`.
/// slirp4netns's `--enable-sandbox` is not used: run as root, the mount
/// changes it makes to sandbox itself reach the host's /run/netns.
pub fn args(netns: &Path, userns: Option<&Path>, api: &Path, ready_fd: i32) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "--configure".into(),
        "--mtu=65520".into(),
        "--disable-host-loopback".into(),
        "--enable-seccomp".into(),
        format!("--ready-fd={ready_fd}"),
        format!("--api-socket={}", api.display()),
        "--netns-type=path".into(),
    ];
    // Rootless: the namespace belongs to the machine's user namespace,
    // which the helper joins first.
    if let Some(u) = userns {
        a.push(format!("--userns-path={}", u.display()));
    }
    a.extend([netns.display().to_string(), "tap0".into()]);
    a
}

/// The helper's API socket while ports are being added (a short path: a
/// socket's path may not exceed 107 bytes).
fn api_path(id: &str) -> Result<PathBuf, NetError> {
    let dir =
        crate::host::runtime_dir().map_err(io("make", Path::new("envup's runtime directory")))?;
    Ok(dir.join(format!("{id}.api")))
}

/// The request that adds one forwarded port.
pub fn add_hostfwd_request(f: &Forward) -> serde_json::Value {
    serde_json::json!({
        "execute": "add_hostfwd",
        "arguments": {
            "proto": f.protocol.name(),
            "host_addr": f.host_ip.to_string(),
            "host_port": f.host,
            "guest_port": f.guest,
        }
    })
}

/// Connect the network namespace at `netns` (named `id` on the host; in
/// user namespace `userns` when rootless) and open its forwarded ports.
/// Returns once every port listens; the helper's messages go to `log`.
pub fn connect(
    netns: &Path,
    userns: Option<&Path>,
    id: &str,
    log: &Path,
    fwds: &[Forward],
    lifetime: Lifetime,
) -> Result<Child, NetError> {
    let api = api_path(id)?;
    let _ = std::fs::remove_file(&api);
    let (ready_r, ready_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(NetError::Pipe)?;
    let logf = std::fs::File::create(log).map_err(io("create", log))?;
    let w = ready_w.as_raw_fd();
    // Run as root: its sockets are the helpers' (network/link.rs), which
    // never reach a project network.
    let helper = userns.is_none() && nix::unistd::geteuid().is_root();
    let mut cmd = Command::new(PROGRAM);
    cmd.args(args(netns, userns, &api, w))
        .stdin(Stdio::null())
        .stdout(logf.try_clone().map_err(io("open again", log))?)
        .stderr(logf);
    let before_exec = move || {
        // The ready pipe's end is the one descriptor the helper keeps.
        // SAFETY: F_SETFD on a descriptor this process owns.
        if unsafe { nix::libc::fcntl(w, nix::libc::F_SETFD, 0) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if helper {
            crate::network::link::as_helper()?;
        }
        match lifetime {
            Lifetime::WithParent => {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
            }
            Lifetime::Detached => {
                nix::unistd::setsid()?;
            }
        }
        Ok(())
    };
    // SAFETY: between fork and exec the closure calls only fcntl, setgroups,
    // setgid, prctl
    // and setsid, which are async-signal-safe.
    unsafe {
        cmd.pre_exec(before_exec);
    }
    let mut child = cmd.spawn().map_err(NetError::Spawn)?;
    crate::fault::point("net:spawned");
    drop(ready_w);
    let result = wait_ready(&ready_r, log).and_then(|()| {
        fwds.iter().try_for_each(|f| {
            call(&api, &add_hostfwd_request(f)).map_err(|source| NetError::Port {
                addr: format!("{}:{}", f.host_ip, f.host),
                proto: f.protocol.name(),
                guest: f.guest,
                source,
            })
        })
    });
    let _ = std::fs::remove_file(&api);
    match result {
        Ok(()) => Ok(child),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(e)
        }
    }
}

/// Wait for slirp4netns to say the namespace is configured.
fn wait_ready(ready: &impl AsFd, log: &Path) -> Result<(), NetError> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut fds = [PollFd::new(ready.as_fd(), PollFlags::POLLIN)];
    let n = poll(&mut fds, PollTimeout::from(10_000u16)).map_err(NetError::Pipe)?;
    let mut b = [0u8; 1];
    if n == 1 && nix::unistd::read(ready.as_fd(), &mut b) == Ok(1) && b[0] == b'1' {
        return Ok(());
    }
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or(if n == 0 {
            "no answer in 10 s"
        } else {
            "it stopped"
        });
    Err(NetError::NotReady(last.to_owned()))
}

/// One request on the API socket, one answer.
fn call(api: &Path, req: &serde_json::Value) -> Result<(), ApiError> {
    let io = |e: std::io::Error| ApiError::Io(format!("{}: {e}", api.display()));
    let mut s = UnixStream::connect(api).map_err(io)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(io)?;
    s.write_all(req.to_string().as_bytes()).map_err(io)?;
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).map_err(io)?;
    answer(&buf[..n])
}

/// What an API answer says: `{"return": …}` or `{"error": {"desc": …}}`.
pub fn answer(bytes: &[u8]) -> Result<(), ApiError> {
    let v: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|_| ApiError::Unreadable(String::from_utf8_lossy(bytes).into_owned()))?;
    if v.get("return").is_some() {
        return Ok(());
    }
    let desc = v["error"]["desc"].as_str().unwrap_or("unknown error");
    // slirp4netns says "bad request: add_hostfwd: slirp_add_hostfwd failed".
    Err(ApiError::Refused(
        desc.rsplit(": ").next().unwrap_or(desc).to_owned(),
    ))
}

/// The machine's /etc/resolv.conf on a private network: the host's, with a
/// nameserver on the host's loopback (which the machine cannot reach)
/// replaced by slirp4netns's forwarder.
pub fn resolv_conf(host: &str) -> String {
    let mut out = String::new();
    let mut servers = 0;
    for line in host.lines() {
        let mut words = line.split_whitespace();
        if words.next() == Some("nameserver") {
            servers += 1;
            let addr = words.next().unwrap_or("");
            let loopback = addr
                .parse::<std::net::IpAddr>()
                .is_ok_and(|a| a.is_loopback());
            if loopback {
                out.push_str(&format!("nameserver {DNS_ADDR}\n"));
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    if servers == 0 {
        out.push_str(&format!("nameserver {DNS_ADDR}\n"));
    }
    out
}

/// Where the network namespace named `name` is (as `ip netns` names them).
pub fn netns_path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

/// The init of the machine in the network namespace named `name`: the
/// process there that is pid 1 in its own pid namespace.
pub fn init_in(name: &str) -> Option<i32> {
    use std::os::unix::fs::MetadataExt;
    let target = std::fs::metadata(netns_path(name)).ok()?;
    let key = (target.dev(), target.ino());
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(ns) = std::fs::metadata(format!("/proc/{pid}/ns/net")) else {
            continue;
        };
        if (ns.dev(), ns.ino()) != key {
            continue;
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let init = status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .and_then(|l| l.split_whitespace().last())
            == Some("1");
        if init {
            return Some(pid);
        }
    }
    None
}

/// For root: a dial that reaches the SSH server at 127.0.0.1:22 inside
/// the network namespace named `name`, from a thread that enters it (a
/// socket stays in the namespace it was made in), skipping the port
/// forward everyone else goes through. None for other users.
pub fn dial_in(name: &str) -> Option<crate::backend::Dial> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let ns = netns_path(name);
    Some(Box::new(move |timeout| {
        let f = std::fs::File::open(&ns)?;
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)?;
                std::net::TcpStream::connect_timeout(
                    &(std::net::Ipv4Addr::LOCALHOST, 22).into(),
                    timeout,
                )
            })
            .join()
            .expect("connect thread")
        })
    }))
}

/// Give the network namespace of process `pid` the name `name`
/// (/run/netns/NAME, as `ip netns` does), so the network helper can join
/// it and envup can reach the machine's SSH server inside it.
pub(crate) fn name_netns(pid: i32, name: &str) -> Result<std::path::PathBuf, NetError> {
    std::fs::create_dir_all("/run/netns").map_err(io("make", Path::new("/run/netns")))?;
    own_netns_dir(pid)?;
    let ns = netns_path(name);
    std::fs::write(&ns, b"").map_err(io("create", &ns))?;
    nix::mount::mount(
        Some(&format!("/proc/{pid}/ns/net")[..]),
        &ns,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|source| NetError::Name {
        pid,
        path: ns.clone(),
        source,
    })?;
    Ok(ns)
}

/// Make `/run/netns` a shared mount of its own, as `ip netns` does, unless
/// it is one already. Otherwise the first tool that does it later (ip,
/// Podman) mounts it over itself and hides the names made before, which
/// then can be neither seen nor taken away.
fn own_netns_dir(pid: i32) -> Result<(), NetError> {
    let dir = Path::new("/run/netns");
    // One envup at a time looks and mounts: two at once would both mount,
    // and the second would hide the names made under the first.
    let lock = std::fs::File::open(dir).map_err(io("open", dir))?;
    lock.lock().map_err(io("lock", dir))?;
    let mounted = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some("/run/netns"));
    let fail = |source| NetError::Name {
        pid,
        path: dir.to_owned(),
        source,
    };
    if !mounted {
        nix::mount::mount(
            Some(dir),
            dir,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND | nix::mount::MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(fail)?;
    }
    nix::mount::mount(
        None::<&str>,
        dir,
        None::<&str>,
        nix::mount::MsFlags::MS_SHARED | nix::mount::MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(fail)
}

/// The network helpers serving the namespace at `netns`: slirp4netns
/// processes with that path on their command line. A helper is found this
/// way even when its envup was killed before it recorded its pid.
pub(crate) fn helpers_of(netns: &Path) -> Vec<i32> {
    let want = netns.as_os_str().as_encoded_bytes();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let mut args = cmdline.split(|&b| b == 0);
            let prog = args.next()?;
            let ours = prog.rsplit(|&b| b == b'/').next() == Some(PROGRAM.as_bytes())
                && args.any(|a| a == want);
            ours.then_some(pid)
        })
        .collect()
}

/// A machine whose network namespace a detached helper serves (an LXC
/// container, an engine's container): the helper outlives the command that
/// starts it, and is found again by the namespace it serves, which is
/// named after the machine (`name`). `runtime` is a root-only directory of
/// envup's for the machine (what the helper serves is kept there, for a
/// helper started again while the machine runs); `log` and `lock` are in
/// the machine's own directory.
pub struct Served<'a> {
    pub name: &'a str,
    pub runtime: &'a Path,
    pub log: PathBuf,
    pub lock: PathBuf,
}

/// The forwards a served machine's helper serves, in its runtime
/// directory.
const FORWARDS: &str = "forwards.json";

impl Served<'_> {
    /// Connect the network namespace of process `pid` (the machine's
    /// init): a new helper serving `fwds` (SSH and the Envfile's forwards),
    /// after any an earlier run left. Held under the machine's network
    /// lock, so no other command takes the machine for one whose helper
    /// died meanwhile.
    pub fn serve(&self, pid: i32, fwds: &[Forward]) -> Result<(), NetError> {
        let lock = self.lock()?;
        lock.lock().map_err(io("lock", &self.lock))?;
        end(self.name);
        let ns = name_netns(pid, self.name)?;
        let record = self.runtime.join(FORWARDS);
        let text = serde_json::to_vec(fwds).expect("forwards serialize");
        crate::state::write_atomic(&record, &text).map_err(|e| match e {
            crate::state::StateError::Write(path, source) => NetError::Io {
                op: "write",
                path,
                source,
            },
            other => io("write", &record)(std::io::Error::other(other.to_string())),
        })?;
        connect(&ns, None, self.name, &self.log, fwds, Lifetime::Detached).map(drop)
    }

    fn lock(&self) -> Result<std::fs::File, NetError> {
        std::fs::File::create(&self.lock).map_err(io("create", &self.lock))
    }

    /// A running machine whose helper died (or was killed) gets a new
    /// one, so SSH and its forwards answer again: with what the start that
    /// made the running machine opened (kept in the root-only runtime
    /// directory), and nothing else.
    pub fn reconnect_if_gone(&self) -> Result<(), NetError> {
        let ns = netns_path(self.name);
        if !ns.exists() || !helpers_of(&ns).is_empty() {
            return Ok(());
        }
        // A start connecting it now holds the lock: nothing is missing.
        let lock = self.lock()?;
        if lock.try_lock().is_err() || !helpers_of(&ns).is_empty() {
            return Ok(());
        }
        let Some(fwds) = crate::state::read_json::<Vec<Forward>>(&self.runtime.join(FORWARDS))
            .ok()
            .flatten()
        else {
            return Ok(());
        };
        connect(&ns, None, self.name, &self.log, &fwds, Lifetime::Detached).map(drop)
    }
}

/// End the helpers of the machine whose network namespace is named `name`
/// (found by the namespace they serve, so also one whose envup was killed
/// as it started it), then take the namespace's name away.
pub fn end(name: &str) {
    let ns = netns_path(name);
    for pid in helpers_of(&ns) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    // Gone before returning: a new helper will want the same ports.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while !helpers_of(&ns).is_empty() {
        if std::time::Instant::now() > deadline {
            for pid in helpers_of(&ns) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    forget_netns(name);
}

/// Take a network namespace's name away again.
pub(crate) fn forget_netns(name: &str) {
    let ns = netns_path(name);
    let _ = nix::mount::umount2(&ns, nix::mount::MntFlags::MNT_DETACH);
    let _ = std::fs::remove_file(&ns);
}

/// What a private network needs: slirp4netns, and the tun device it
/// makes the namespace's interface with. LXC containers need the same.
pub fn check() -> crate::backend::Check {
    let name = PROGRAM;
    match crate::host::which(name) {
        None => crate::backend::Check::missing(
            name,
            "not found on PATH (needed for network = \"private\" and LXC)",
            "apt-get install slirp4netns",
        ),
        Some(_) if !Path::new("/dev/net/tun").exists() => {
            crate::backend::Check::missing(name, "/dev/net/tun is missing", "modprobe tun")
        }
        Some(_) => {
            crate::backend::Check::ok(name, "connects private networks and forwards their ports")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_first_then_forwards() {
        let f = Forward {
            guest: 80,
            host: 8080,
            host_ip: std::net::Ipv4Addr::UNSPECIFIED.into(),
            protocol: Protocol::Tcp,
        };
        let all = host_fwds(2222, &[f]);
        assert_eq!(all[0].host_ip.to_string(), "127.0.0.1");
        assert_eq!((all[0].host, all[0].guest), (2222, 22));
        assert_eq!((all[1].host, all[1].guest), (8080, 80));
        let req = add_hostfwd_request(&all[1]);
        assert_eq!(req["execute"], "add_hostfwd");
        assert_eq!(req["arguments"]["proto"], "tcp");
        assert_eq!(req["arguments"]["host_port"], 8080);
        assert_eq!(req["arguments"]["guest_port"], 80);
    }

    #[test]
    fn reads_answers() {
        assert!(answer(br#"{"return":{"id":1}}"#).is_ok());
        assert_eq!(
            answer(br#"{"error":{"desc":"bad request: add_hostfwd: slirp_add_hostfwd failed"}}"#),
            Err(ApiError::Refused("slirp_add_hostfwd failed".into()))
        );
        assert!(answer(b"").is_err());
    }

    #[test]
    fn loopback_resolver_is_replaced() {
        assert_eq!(
            resolv_conf("search lan\nnameserver 127.0.0.53\noptions edns0\n"),
            "search lan\nnameserver 10.0.2.3\noptions edns0\n"
        );
        assert_eq!(
            resolv_conf("nameserver 10.255.255.53\n"),
            "nameserver 10.255.255.53\n"
        );
        assert_eq!(resolv_conf(""), "nameserver 10.0.2.3\n");
    }

    #[test]
    fn arguments_name_the_namespace_last() {
        let a = args(
            Path::new("/run/netns/envup-x"),
            None,
            Path::new("/run/envup/x.api"),
            7,
        );
        assert!(a.contains(&"--ready-fd=7".to_string()));
        assert!(a.contains(&"--disable-host-loopback".to_string()));
        assert!(!a.iter().any(|x| x.contains("sandbox")));
        assert_eq!(a[a.len() - 2..], ["/run/netns/envup-x", "tap0"]);
        let b = args(
            Path::new("/proc/9/ns/net"),
            Some(Path::new("/proc/9/ns/user")),
            Path::new("/tmp/envup-1000/x.api"),
            7,
        );
        assert_eq!(
            b[b.len() - 3..],
            ["--userns-path=/proc/9/ns/user", "/proc/9/ns/net", "tap0"]
        );
    }
}
