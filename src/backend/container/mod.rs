//! The container backend: a machine is a Docker or Podman container made
//! from the box's rootfs, imported once per engine as an image named by the
//! box's digest. The box's own init runs as the container's first process
//! and starts its SSH server; envup reaches it on a port published on
//! 127.0.0.1.

pub mod engine;
mod probe;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{Backend, BackendError, HandOver, OwnError, io_err};
use crate::backend::rootfs::net;
use crate::boxes::StoredBox;
use crate::envfile::Machine;
use crate::ssh::MachineKeys;
use crate::state::machine::SshEndpoint;
use crate::state::{MachineState, Status};
use engine::{BOX_REPO, EngineCli, Kind, box_image, snapshot_repo};

pub use probe::probe;

/// How long a graceful halt may take before the container is stopped hard.
pub const HALT_DEADLINE: Duration = Duration::from_secs(10);
/// The pids limit every container gets.
pub const PIDS_MAX: u64 = 1024;

pub struct ContainerBackend;

/// The init pid (and its start time) of each container this process
/// started, read in the same `inspect` as its limits: the engine's command
/// line costs tens of milliseconds (Podman's about 60), which the join to
/// the project network right after the start would pay again.
static STARTED: std::sync::Mutex<BTreeMap<String, (i32, u64)>> =
    std::sync::Mutex::new(BTreeMap::new());

/// What only the container backend runs into.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("LXC is the lxc backend's, not a container engine")]
    NotAnEngine,
    #[error("no container engine works here: {0} (`envup doctor` says more)")]
    NoEngine(String),
    #[error("{0} is not installed")]
    NotInstalled(&'static str),
    #[error("{engine} does not answer: {said}")]
    NoAnswer { engine: &'static str, said: String },
    #[error(transparent)]
    Probe(crate::host::ProbeError),
    #[error("unknown container engine `{0}` in the machine's state")]
    UnknownEngine(String),
    #[error("the machine was made with {0}, which is no longer installed")]
    Uninstalled(String),
    #[error("{engine} cannot start a container on this host; tried {tried}")]
    NoHostArgs { engine: &'static str, tried: String },
    #[error(
        "box `{name}` logs in as `{user}`; the Docker and Podman engines place keys for \
         root only so far (the lxc and jail backends place them for any user)"
    )]
    NotRoot { name: String, user: String },
    #[error(
        "container {container} is gone from {engine}; `envup destroy` the machine and `up` again"
    )]
    Gone {
        container: String,
        engine: &'static str,
    },
    #[error("{engine} did not remove container {container}")]
    NotRemoved {
        container: String,
        engine: &'static str,
    },
    #[error("cannot lock the box for importing")]
    Lock(#[source] crate::state::lock::LockError),
    #[error(
        "{} is not UTF-8, which Docker and Podman cannot carry, and there is no runtime \
         directory (XDG_RUNTIME_DIR) to link it from",
        .0.display()
    )]
    NoLinkDir(PathBuf),
}

impl OwnError for ContainerError {}

/// The container backend's table, `[machines.NAME.container]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    #[serde(default)]
    pub engine: Engine,
}

/// The engine a machine's container runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// Docker when its engine answers, then Podman; with neither, LXC
    /// when it is installed (the lxc backend).
    #[default]
    Auto,
    Docker,
    Podman,
    /// The lxc backend's, kept so that Envfiles written for it still work.
    Lxc,
}

fn lxc_there() -> bool {
    crate::host::which("lxc-start").is_some()
}

/// What a container was created on, kept as a record: the engine, and its
/// name (checked to be the machine's). What it is created with is made
/// again from the Envfile whenever it is needed (older envups kept their
/// `create` arguments here, which are ignored).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Created {
    engine: Kind,
    name: String,
}

/// Where a container's links live: Docker and Podman take paths as UTF-8
/// text (their APIs speak JSON), so a share or a project directory whose
/// path is not is handed to them as a link here, made again before every
/// start (the directory is on a tmpfs) and removed with the container.
fn links_dir(name: &str) -> Option<PathBuf> {
    let base = if nix::unistd::geteuid().is_root() {
        PathBuf::from("/run/envup")
    } else {
        PathBuf::from(std::env::var_os("XDG_RUNTIME_DIR")?).join("envup")
    };
    let dir = base.join("container").join(name);
    dir.to_str().is_some().then_some(dir)
}

/// The paths the engine sees for a container's mounts.
struct EnginePaths<'a> {
    container: &'a str,
    links: Vec<std::ffi::OsString>,
}

impl EnginePaths<'_> {
    /// `host` as the engine can take it: itself when it is UTF-8, else a
    /// link to it (made now).
    fn of(&mut self, host: &Path) -> Result<String, BackendError> {
        if let Some(text) = host.to_str() {
            return Ok(text.to_owned());
        }
        let dir =
            links_dir(self.container).ok_or_else(|| ContainerError::NoLinkDir(host.to_owned()))?;
        let link = dir.join(self.links.len().to_string());
        self.links.push(host.as_os_str().to_owned());
        make_links(self.container, &self.links)?;
        Ok(link.to_str().expect("links_dir is UTF-8").to_owned())
    }
}

/// Make (again) the links a container's mounts go through.
fn make_links(container: &str, targets: &[std::ffi::OsString]) -> Result<(), BackendError> {
    use std::os::unix::fs::DirBuilderExt;
    if targets.is_empty() {
        return Ok(());
    }
    let dir = links_dir(container)
        .ok_or_else(|| ContainerError::NoLinkDir(PathBuf::from(&targets[0])))?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(io_err("make", &dir))?;
    for (i, target) in targets.iter().enumerate() {
        let link = dir.join(i.to_string());
        match std::fs::remove_file(&link) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io_err("remove", &link)(e));
            }
            _ => {}
        }
        std::os::unix::fs::symlink(target, &link).map_err(io_err("link", &link))?;
    }
    Ok(())
}

/// Remove a container's links, if it has any.
fn remove_links(container: &str) {
    if let Some(dir) = links_dir(container) {
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn record_path(state: &MachineState) -> Result<PathBuf, BackendError> {
    Ok(super::machine_dir(state)?.join("container.json"))
}

/// The machine's record, with the container name envup gave it (an
/// edited record cannot name someone else's container).
fn record(state: &MachineState) -> Result<Created, BackendError> {
    let p = record_path(state)?;
    let c: Created =
        crate::state::read_json(&p)?.ok_or_else(|| BackendError::Missing(p.clone()))?;
    super::own_host_name(&p, &super::host_name(state, "")?, &c.name)?;
    Ok(c)
}

/// The machine's record and its engine.
fn load(state: &MachineState) -> Result<(EngineCli, Created), BackendError> {
    let c = record(state)?;
    Ok((EngineCli::named(c.engine.name())?, c))
}

/// The box's image in this engine, imported on first use (under a lock in
/// the store entry, so machines made at once import it once).
fn ensure_image(e: &EngineCli, stored: &StoredBox) -> Result<String, BackendError> {
    let image = box_image(&stored.digest);
    if e.has_image(&image) {
        return Ok(image);
    }
    let _lock = crate::state::lock::FileLock::acquire(
        &stored.dir.join(format!(".{}-image.lock", e.kind.name())),
        Duration::from_secs(300),
        &|_| {},
    )
    .map_err(ContainerError::Lock)?;
    if e.has_image(&image) {
        return Ok(image);
    }
    let rootfs = stored
        .artifact("rootfs")
        .ok_or_else(|| BackendError::NoArtifact {
            name: stored.meta.name.clone(),
            artifact: "rootfs",
        })?;
    e.import(&rootfs, &image, &stored.digest)?;
    Ok(image)
}

/// Whether envup gives containers their network itself (as root): no
/// engine network at all (`--network none`), and slirp4netns in the
/// container's namespace for its way out, its SSH port and its forwards,
/// as for an LXC container. A container then shares no network with any
/// other container, of another project or of no project. Rootless, the
/// engine's own network stays (the user's engine keeps the user's
/// containers to themselves).
fn own_network() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The `create` arguments for a machine (everything but the image).
fn create_args(
    m: &Machine,
    name: &str,
    ssh_port: u16,
    host_args: &[String],
    cgroup_v1: bool,
    kind: Kind,
    paths: &mut EnginePaths,
) -> Result<Vec<String>, BackendError> {
    let mut a: Vec<String> = vec![
        "--name".into(),
        name.into(),
        "--hostname".into(),
        m.hostname.clone(),
        "--label".into(),
        format!("envup.machine={}", m.name),
        "--cpus".into(),
        m.cpus.to_string(),
        "--memory".into(),
        format!("{}b", m.memory.bytes()),
        "--pids-limit".into(),
        PIDS_MAX.to_string(),
        // What an init such as systemd expects of its container.
        "--tmpfs".into(),
        "/run".into(),
        "--tmpfs".into(),
        "/run/lock".into(),
        "--env".into(),
        "container=envup".into(),
        // No device nodes: one made in a read-write share would be a way
        // into the host's devices for any host user (Docker's default
        // keeps the capability; Podman's drops it).
        "--cap-drop".into(),
        "MKNOD".into(),
    ];
    if cgroup_v1 {
        a.extend(["--volume".into(), "/sys/fs/cgroup:/sys/fs/cgroup:ro".into()]);
    }
    if own_network() {
        a.extend(["--network".into(), "none".into()]);
        // Podman keeps the host's resolver for a container with no
        // network, and takes no `--dns` there; envup writes it at start.
        if kind == Kind::Docker {
            a.extend(["--dns".into(), crate::backend::rootfs::net::DNS_ADDR.into()]);
        }
    } else {
        a.extend(["--publish".into(), format!("127.0.0.1:{ssh_port}:22/tcp")]);
        for f in &m.forwards {
            let proto = f.protocol.name();
            let ip = if f.host_ip.is_unspecified() {
                String::new()
            } else {
                format!("{}:", f.host_ip)
            };
            a.extend([
                "--publish".into(),
                format!("{ip}{}:{}/{proto}", f.host, f.guest),
            ]);
        }
    }
    for s in &m.shares {
        a.extend(bind_mount(&paths.of(&s.host)?, &s.guest, s.read_only));
    }
    a.extend(host_args.iter().cloned());
    Ok(a)
}

/// The container's network helper (see [`own_network`]): its runtime
/// directory is root's, beside the container's links.
fn served<'a>(dir: &Path, runtime: &'a Path, name: &'a str) -> net::Served<'a> {
    net::Served {
        name,
        runtime,
        log: dir.join("net.log"),
        lock: dir.join("net.lock"),
    }
}

/// The root-only runtime directory of container `name`, made when missing.
fn runtime_dir(name: &str) -> Result<PathBuf, BackendError> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = Path::new("/run/envup/container").join(name);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(io_err("make", &dir))?;
    Ok(dir)
}

/// A bind mount as `--mount`, which Docker and Podman both read as CSV:
/// each field quoted (a `"` doubled), so a path with a colon, a comma, a
/// space or a quote stays one path. (`--volume host:guest` splits at the
/// first colon.)
fn bind_mount(host: &str, guest: &str, read_only: bool) -> [String; 2] {
    let field = |k: &str, v: &str| format!("\"{k}={}\"", v.replace('"', "\"\""));
    let mut spec = format!(
        "type=bind,{},{}",
        field("source", host),
        field("target", guest)
    );
    if read_only {
        spec.push_str(",readonly");
    }
    ["--mount".into(), spec]
}

/// Everything `create` is given for the machine but the image, made from
/// the Envfile's machine, the engine's host quirks for the image, the
/// machine's SSH port and its key files; and the links its mounts go
/// through ([`links_dir`]).
fn all_create_args(
    m: &Machine,
    e: &EngineCli,
    image: &str,
    name: &str,
    port: u16,
    dir: &Path,
    keys: &MachineKeys,
) -> Result<(Vec<String>, Vec<std::ffi::OsString>), BackendError> {
    let host_args = e.host_args(image)?;
    let mut paths = EnginePaths {
        container: name,
        links: Vec::new(),
    };
    let mut args = create_args(
        m,
        name,
        port,
        &host_args,
        crate::host::cgroup_v1(),
        e.kind,
        &mut paths,
    )?;
    args.extend(key_mounts(dir, keys, &mut paths)?);
    Ok((args, paths.links))
}

/// The links a container's mounts go through, made again from the
/// Envfile's shares and the machine's key files (never from a record:
/// a link is a mount's source).
fn links_for(m: &Machine, name: &str, dir: &Path) -> Result<(), BackendError> {
    let mut paths = EnginePaths {
        container: name,
        links: Vec::new(),
    };
    for s in &m.shares {
        paths.of(&s.host)?;
    }
    let kdir = dir.join("container");
    for file in ["authorized_keys", "ssh_host_ed25519_key"] {
        paths.of(&kdir.join(file))?;
    }
    make_links(name, &paths.links)
}

/// What the machine finds on first start, as read-only bind mounts from
/// its state directory: its login key for root and its SSH host key.
fn key_mounts(
    dir: &Path,
    keys: &MachineKeys,
    paths: &mut EnginePaths,
) -> Result<Vec<String>, BackendError> {
    let kdir = dir.join("container");
    std::fs::create_dir_all(&kdir).map_err(io_err("make", &kdir))?;
    let files = [
        (
            "authorized_keys",
            format!("{}\n", keys.authorized_key()),
            "/root/.ssh/authorized_keys",
        ),
        (
            "ssh_host_ed25519_key",
            keys.host_private_pem(),
            "/etc/ssh/ssh_host_ed25519_key",
        ),
    ];
    let mut args = Vec::new();
    for (file, text, guest) in files {
        let path = kdir.join(file);
        std::fs::write(&path, text).map_err(io_err("write", &path))?;
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(io_err("set the mode of", &path))?;
        args.extend(bind_mount(&paths.of(&path)?, guest, true));
    }
    Ok(args)
}

/// Stop container `name`: asked to power off (unless `force`), then ended.
fn stop_container(e: &EngineCli, name: &str, force: bool) -> Result<(), BackendError> {
    if engine_status(e, name).as_deref() != Some("running") {
        return Ok(());
    }
    if !force {
        // Power off: busybox init on SIGUSR2, systemd on SIGRTMIN+4.
        let _ = e.run(&["kill", "--signal", "USR2", name]);
        let _ = e.run(&["kill", "--signal", "RTMIN+4", name]);
        let deadline = Instant::now() + HALT_DEADLINE;
        while Instant::now() < deadline {
            if engine_status(e, name).as_deref() != Some("running") {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    e.run(&["stop", "--time", "0", name]).map(|_| ())
}

/// The container's resolver: slirp4netns's DNS forwarder, written through
/// its root (its `/etc/resolv.conf`, resolved inside it).
fn write_resolver(pid: i32) -> Result<(), BackendError> {
    let root = format!("/proc/{pid}/root");
    let text = format!("nameserver {}\n", net::DNS_ADDR);
    crate::contained::Root::open(Path::new(&root))
        .and_then(|r| {
            r.rewrite_file(Path::new("etc/resolv.conf"), 1 << 20, 0o644, &|_| {
                text.clone().into_bytes()
            })
        })
        .map_err(io_err("write the resolver of", Path::new(&root)))
}

/// Wait (up to 5 s) until nothing listens on 127.0.0.1:`port`: an engine
/// releases a stopped or removed container's ports asynchronously.
fn wait_port_free(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpListener::bind(("127.0.0.1", port)).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The container's state as the engine reports it: `running`, `exited`…;
/// None when the engine does not know the container.
fn engine_status(e: &EngineCli, name: &str) -> Option<String> {
    e.run(&["inspect", "--format", "{{.State.Status}}", name])
        .ok()
        .map(|s| s.trim().to_owned())
}

impl Backend for ContainerBackend {
    fn name(&self) -> &'static str {
        "container"
    }

    fn artifacts(&self) -> &'static [&'static str] {
        &["rootfs"]
    }

    fn vagrant_providers(&self) -> &'static [super::VagrantProvider] {
        &[super::rootfs::VAGRANT_LXC]
    }

    fn probe(&self) -> (bool, Vec<super::Check>) {
        probe()
    }

    fn check_options(&self, table: toml::de::ValueDeserializer<'_>) -> Result<(), toml::de::Error> {
        Options::deserialize(table).map(|_| ())
    }

    /// `engine = "lxc"` is the lxc backend's machine; so is `auto` where
    /// neither Docker nor Podman works and LXC is installed.
    fn hand_over(&self, m: &Machine) -> Result<Option<HandOver>, BackendError> {
        let opts: Options = super::options(m, "container")?;
        let to_lxc = match opts.engine {
            Engine::Lxc => Some(
                "`engine = \"lxc\"` is the lxc backend now: write `backend = \"lxc\"`".to_owned(),
            ),
            Engine::Auto if EngineCli::choose(Engine::Auto).is_err() && lxc_there() => Some(
                "neither Docker nor Podman works here: the lxc backend runs the machine".to_owned(),
            ),
            _ => None,
        };
        Ok(to_lxc.map(|note| HandOver {
            to: "lxc",
            note: Some(note),
        }))
    }

    /// Machines made with `engine = "lxc"` before LXC was a backend of its
    /// own carry `"engine": "lxc"` in their record; the lxc backend runs
    /// them (its directories and container name are the same).
    fn adopted_by(&self, state: &MachineState) -> Option<&'static str> {
        let record: serde_json::Value =
            crate::state::read_json(&record_path(state).ok()?).ok()??;
        (record["engine"] == "lxc").then_some("lxc")
    }

    fn boxes_removed(&self, gone: super::Gone<'_>) -> Vec<String> {
        remove_box_images(gone)
    }

    /// Docker's and Podman's root, run by root, is host root: what a
    /// machine writes through a read-write share is root's on the host,
    /// set-uid bits included (docs/security.md).
    fn warnings(&self, m: &Machine) -> Vec<String> {
        if !nix::unistd::geteuid().is_root() {
            return Vec::new();
        }
        m.shares
            .iter()
            .filter(|s| !s.read_only)
            .map(|s| {
                format!(
                    "share {} is read-write, and root in a Docker or Podman container is root on \
                     the host: what the machine writes there is root's, set-uid files included; \
                     share it read-only, or use the jail or lxc backend, which write as the \
                     directory's owner",
                    s.host.display()
                )
            })
            .collect()
    }

    fn check(&self, m: &Machine) -> Result<(), BackendError> {
        match super::options::<Options>(m, "container")?.engine {
            // New machines with it go to the lxc backend; one still here
            // was made with Docker or Podman before the Envfile changed,
            // and runs on the engine it was made with.
            Engine::Lxc => Ok(()),
            engine => EngineCli::choose(engine).map(|_| ()),
        }
    }

    fn create(
        &self,
        m: &Machine,
        stored: &StoredBox,
        keys: &MachineKeys,
        state: &mut MachineState,
    ) -> Result<(), BackendError> {
        let dir = super::machine_dir(state)?;
        let name = super::host_name(state, "")?;
        let opts: Options = super::options(m, "container")?;
        let e = EngineCli::choose(opts.engine)?;
        if stored.manifest.ssh_user != "root" {
            return Err(ContainerError::NotRoot {
                name: stored.meta.name.clone(),
                user: stored.manifest.ssh_user.clone(),
            }
            .into());
        }
        let image = ensure_image(&e, stored)?;
        let port = super::ssh_port()?;
        let (args, _links) = all_create_args(m, &e, &image, &name, port, &dir, keys)?;
        let created = Created {
            engine: e.kind,
            name: name.clone(),
        };
        crate::state::write_json(&record_path(state)?, &created)?;
        let mut cmd: Vec<&str> = vec!["create"];
        cmd.extend(args.iter().map(String::as_str));
        cmd.push(&image);
        if e.run(&cmd).is_err() {
            // A container of that name left by an interrupted create.
            let _ = e.remove_container(&name);
            e.run(&cmd)?;
        }
        state.id = Some(format!("{}:{name}", e.kind.name()));
        state.ssh = Some(SshEndpoint {
            host: "127.0.0.1".into(),
            port,
            user: "root".into(),
        });
        state.forwards = m.forwards.clone();
        Ok(())
    }

    fn start(&self, m: &Machine, state: &mut MachineState) -> Result<(), BackendError> {
        let (e, c) = load(state)?;
        // Starting a running container does nothing, in both engines.
        let was_running = engine_status(&e, &c.name).as_deref() == Some("running");
        if !was_running {
            if own_network() {
                // A container that powered itself off left its helper.
                net::end(&c.name);
            } else if let Some(ep) = &state.ssh {
                wait_port_free(ep.port);
            }
        }
        links_for(m, &c.name, &super::machine_dir(state)?)?;
        e.run(&["start", &c.name]).map(|_| ()).map_err(|err| {
            if engine_status(&e, &c.name).is_none() {
                ContainerError::Gone {
                    container: c.name.clone(),
                    engine: e.kind.name(),
                }
                .into()
            } else {
                err
            }
        })?;
        if was_running {
            return Ok(());
        }
        // The Envfile's limits, applied to the running container when they
        // differ from what it has (Podman does not keep an `update` across
        // a restart, so this is asked at every start).
        let has = e.run(&[
            "inspect",
            "--format",
            "{{.HostConfig.Memory}} {{.HostConfig.NanoCpus}} {{.State.Pid}}",
            &c.name,
        ])?;
        let has: Vec<&str> = has.split_whitespace().collect();
        if let Some(pid) = has.get(2).and_then(|p| p.parse::<i32>().ok())
            && let Some(start) = super::start_time(pid)
        {
            STARTED
                .lock()
                .expect("started lock")
                .insert(c.name.clone(), (pid, start));
        }
        if own_network() {
            let pid = has
                .get(2)
                .and_then(|p| p.parse::<i32>().ok())
                .filter(|p| *p > 0)
                .ok_or(BackendError::NotRunning)?;
            let port = state
                .ssh
                .as_ref()
                .map(|e| e.port)
                .ok_or(BackendError::NotRunning)?;
            let dir = super::machine_dir(state)?;
            let runtime = runtime_dir(&c.name)?;
            let connected = served(&dir, &runtime, &c.name)
                .serve(pid, &net::host_fwds(port, &m.forwards))
                .map_err(BackendError::from)
                .and_then(|()| {
                    if e.kind == Kind::Podman {
                        write_resolver(pid)?;
                    }
                    Ok(())
                });
            if let Err(err) = connected {
                let _ = e.run(&["stop", "--time", "0", &c.name]);
                net::end(&c.name);
                return Err(err);
            }
            state.forwards = m.forwards.clone();
        }
        let (memory, nanos) = (m.memory.bytes(), u64::from(m.cpus) * 1_000_000_000);
        if has.get(..2) != Some(&[memory.to_string().as_str(), nanos.to_string().as_str()]) {
            e.run(&[
                "update",
                "--memory",
                &format!("{memory}b"),
                // Twice the memory, as both engines give at create.
                "--memory-swap",
                &format!("{}b", memory * 2),
                "--cpus",
                &m.cpus.to_string(),
                &c.name,
            ])?;
        }
        Ok(())
    }

    fn restart_applies(&self) -> &'static [&'static str] {
        &["cpus", "memory"]
    }

    fn joins(&self, _m: &Machine) -> super::Joins {
        super::Joins::Namespace
    }

    fn machine_pid(&self, state: &MachineState) -> Result<i32, BackendError> {
        let (e, c) = load(state)?;
        let seen = STARTED.lock().expect("started lock").get(&c.name).copied();
        if let Some((pid, start)) = seen
            && super::start_time(pid) == Some(start)
        {
            return Ok(pid);
        }
        let out = e.run(&["inspect", "--format", "{{.State.Pid}}", &c.name])?;
        match out.trim().parse::<i32>() {
            Ok(pid) if pid > 0 => Ok(pid),
            _ => Err(BackendError::NotRunning),
        }
    }

    fn stop(&self, state: &MachineState, force: bool) -> Result<(), BackendError> {
        let (e, c) = load(state)?;
        let stopped = stop_container(&e, &c.name, force);
        net::end(&c.name);
        stopped
    }

    /// The container named as envup names the machine is removed, with its
    /// snapshots, on the engine the record names or, with no usable
    /// record, on each engine installed here: a damaged or edited record
    /// neither stops envup from removing its own container nor points it
    /// at another.
    fn destroy(&self, state: &MachineState) -> Result<(), BackendError> {
        let name = super::host_name(state, "")?;
        let recorded = record(state);
        let engines: Vec<EngineCli> = match &recorded {
            Ok(c) => vec![EngineCli::named(c.engine.name())?],
            Err(_) => [Kind::Docker, Kind::Podman]
                .into_iter()
                .filter_map(|k| EngineCli::named(k.name()).ok())
                .collect(),
        };
        net::end(&name);
        let _ = std::fs::remove_dir_all(Path::new("/run/envup/container").join(&name));
        for e in &engines {
            if engine_status(e, &name).is_some() {
                let _ = e.remove_container(&name);
                // An engine still at an earlier removal (a destroy killed
                // midway) refuses this one for a moment: asked again.
                let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
                while engine_status(e, &name).is_some() {
                    if std::time::Instant::now() > until {
                        return Err(ContainerError::NotRemoved {
                            container: name,
                            engine: e.kind.name(),
                        }
                        .into());
                    }
                    std::thread::sleep(std::time::Duration::from_millis(200));
                    let _ = e.remove_container(&name);
                }
            }
            for s in snapshot_tags(e, &name)? {
                e.run(&["rmi", &format!("{}:{s}", snapshot_repo(&name))])?;
            }
        }
        remove_links(&name);
        match recorded {
            // What the record named instead is left alone, and said so.
            Err(e @ BackendError::NotOurs(_)) => Err(e),
            _ => Ok(()),
        }
    }

    fn status(&self, state: &MachineState) -> Result<Status, BackendError> {
        if !matches!(state.status, Status::Running | Status::Stopped) {
            return Ok(state.status);
        }
        let (e, c) = load(state)?;
        Ok(match engine_status(&e, &c.name).as_deref() {
            Some("running") => {
                if own_network() {
                    let dir = super::machine_dir(state)?;
                    served(&dir, &runtime_dir(&c.name)?, &c.name).reconnect_if_gone()?;
                }
                Status::Running
            }
            _ => Status::Stopped,
        })
    }

    fn snapshot_save(&self, state: &MachineState, name: &str) -> Result<(), BackendError> {
        let (e, c) = load(state)?;
        let image = format!("{}:{name}", snapshot_repo(&c.name));
        e.run(&["commit", &c.name, &image]).map(|_| ())
    }

    /// The container is made again from the snapshot's image, with what
    /// the Envfile says now (never with arguments read back from a file).
    fn snapshot_restore(
        &self,
        m: &Machine,
        state: &mut MachineState,
        name: &str,
    ) -> Result<(), BackendError> {
        let (e, c) = load(state)?;
        let image = format!("{}:{name}", snapshot_repo(&c.name));
        if !e.has_image(&image) {
            return Err(BackendError::NoSnapshot(name.to_owned()));
        }
        let dir = super::machine_dir(state)?;
        let keys =
            MachineKeys::ensure(&dir, &state.name).map_err(|e| BackendError::Own(Box::new(e)))?;
        let was_running = state.status == Status::Running;
        e.remove_container(&c.name)?;
        net::end(&c.name);
        // The engine lets go of the old container's ports some time after
        // removing it (seconds, with Podman): publish SSH on a new port.
        let port = super::ssh_port()?;
        if let Some(ep) = state.ssh.as_mut() {
            ep.port = port;
        }
        let (args, _links) = all_create_args(m, &e, &image, &c.name, port, &dir, &keys)?;
        state.forwards = m.forwards.clone();
        let mut cmd: Vec<&str> = vec!["create"];
        cmd.extend(args.iter().map(String::as_str));
        cmd.push(&image);
        e.run(&cmd)?;
        if was_running {
            self.start(m, state)?;
        }
        Ok(())
    }

    fn snapshot_list(&self, state: &MachineState) -> Result<Vec<String>, BackendError> {
        let (e, c) = load(state)?;
        snapshot_tags(&e, &c.name)
    }

    fn snapshot_delete(&self, state: &MachineState, name: &str) -> Result<(), BackendError> {
        let (e, c) = load(state)?;
        let image = format!("{}:{name}", snapshot_repo(&c.name));
        if !e.has_image(&image) {
            return Err(BackendError::NoSnapshot(name.to_owned()));
        }
        e.run(&["rmi", &image]).map(|_| ())
    }
}

/// The snapshots an engine holds of container `name`: its snapshot
/// images' tags.
fn snapshot_tags(e: &EngineCli, name: &str) -> Result<Vec<String>, BackendError> {
    let out = e.run(&[
        "images",
        "--format",
        "{{.Tag}}",
        "--filter",
        &format!("reference={}", snapshot_repo(name)),
    ])?;
    let mut tags: Vec<String> = out
        .lines()
        .map(str::trim)
        .filter(|t| !t.is_empty() && *t != "<none>")
        .map(str::to_owned)
        .collect();
    tags.sort();
    tags.dedup();
    Ok(tags)
}

/// How old an image of a box no store here holds must be before `box
/// prune` removes it.
const ORPHAN_AGE: u64 = 600;

/// Seconds since the engine made `image`.
fn image_age(e: &EngineCli, image: &str) -> Option<u64> {
    let created = e
        .run(&["image", "inspect", "--format", "{{.Created}}", image])
        .ok()?;
    let made = utc_seconds(created.trim())?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    Some(now.saturating_sub(made))
}

/// Seconds since the epoch of a UTC time as the engines print it:
/// `2026-12-04T23:20:54.8Z` (Docker) or `2026-12-04 23:20:33.9 +0000 UTC`
/// (Podman); only the date and the whole seconds are read.
fn utc_seconds(text: &str) -> Option<u64> {
    let t = text.get(..19)?.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        std::str::from_utf8(&t[r]).ok()?.parse().ok()
    };
    if t[4] != b'-' || t[7] != b'-' || !matches!(t[10], b'T' | b' ') {
        return None;
    }
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // Days since 1970-01-01 of a proleptic Gregorian date (Howard
    // Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

/// Remove each engine's images of the boxes that are `gone`. An image is a
/// host-wide cache of a stored box: any home that stores the box imports
/// it again when it needs it. One a container uses (of any home) the
/// engine refuses to remove; it is kept, and said so, and `box prune`
/// tries again. An engine that is not installed is skipped.
fn remove_box_images(gone: super::Gone<'_>) -> Vec<String> {
    let mut said = Vec::new();
    for kind in [Kind::Docker, Kind::Podman] {
        let Ok(e) = EngineCli::find(kind) else {
            continue;
        };
        let Ok(tags) = e.run(&["images", "--format", "{{.Tag}}", BOX_REPO]) else {
            continue;
        };
        // Only tags envup writes (a digest); anything else is not ours.
        for tag in tags
            .lines()
            .map(str::trim)
            .filter(|t| crate::ident::is_hex_digest(t))
        {
            let image = box_image(tag);
            let is_gone = match gone {
                super::Gone::These(d) => d.iter().any(|d| d.as_str() == tag),
                // Not one just imported: another home's `up` may be about
                // to make its container from it.
                super::Gone::AllBut(d) => {
                    !d.iter().any(|d| d.as_str() == tag)
                        && image_age(&e, &image).is_some_and(|age| age > ORPHAN_AGE)
                }
            };
            if !is_gone {
                continue;
            }
            said.push(match e.run(&["rmi", &image]) {
                Ok(_) => format!("removed {} image {image}", kind.name()),
                Err(err) => format!(
                    "kept {} image {image}: {} (a container still uses it; \
                     `envup box prune` removes it once none does)",
                    kind.name(),
                    crate::cli::error::chain(&err)
                ),
            });
        }
    }
    said
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envfile::config::{Forward, Protocol, Share};

    #[test]
    fn engine_times_read_as_utc_seconds() {
        assert_eq!(utc_seconds("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(utc_seconds("2000-03-01T00:00:01.5Z"), Some(951_868_801));
        assert_eq!(
            utc_seconds("2026-12-04T23:20:54.820255258Z"),
            utc_seconds("2026-12-04 23:20:54.1 +0000 UTC")
        );
        assert_eq!(utc_seconds("2026-12-04T23:20:54Z"), Some(1_796_426_454));
        assert_eq!(utc_seconds("yesterday"), None);
    }

    /// A machine an earlier envup made with `engine = "lxc"` is run by the
    /// lxc backend; Docker's and Podman's stay here.
    #[test]
    fn lxc_machines_of_earlier_envups_go_to_lxc() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = MachineState::new("web", super::super::BackendName::new("container").unwrap());
        st.dir = Some(dir.path().to_owned());
        let registry = super::super::Registry::builtin();
        let record = |engine: &str| {
            let text = format!(r#"{{"engine":"{engine}","name":"envup-0","args":[]}}"#);
            std::fs::write(dir.path().join("container.json"), text).unwrap();
        };
        record("lxc");
        assert_eq!(registry.for_state(&st).unwrap().name(), "lxc");
        record("docker");
        assert_eq!(registry.for_state(&st).unwrap().name(), "container");
    }

    /// A machine made with Docker or Podman whose Envfile now says
    /// `engine = "lxc"` is not refused: it runs on the engine it was made
    /// with (new machines with it go to the lxc backend).
    #[test]
    fn engine_lxc_is_not_refused_for_a_made_machine() {
        let m = crate::envfile::test_machine(
            "[machines.web]\nbox = \"tiny\"\nbackend = \"container\"\ncontainer = { engine = \"lxc\" }\n",
        );
        assert!(ContainerBackend.check(&m).is_ok());
    }

    #[test]
    fn create_arguments() {
        let mut m = crate::envfile::test_machine(
            "[machines.web]\nbox = \"tiny\"\nbackend = \"container\"\ncpus = 2\nmemory = \"512MiB\"\n",
        );
        m.forwards = vec![Forward {
            host: 8080,
            guest: 80,
            host_ip: "127.0.0.1".parse().unwrap(),
            protocol: Protocol::Tcp,
        }];
        m.shares = vec![Share {
            host: "/src".into(),
            guest: "/srv/src".into(),
            read_only: true,
        }];
        let mut paths = EnginePaths {
            container: "envup-x",
            links: Vec::new(),
        };
        let a = create_args(
            &m,
            "envup-x",
            2200,
            &["--ulimit".into(), "nofile=1:1".into()],
            true,
            Kind::Docker,
            &mut paths,
        )
        .unwrap();
        let s = a.join(" ");
        let mut wanted = vec![
            "--name envup-x",
            "--hostname web",
            "--cpus 2",
            "--memory 536870912b",
            "--pids-limit 1024",
            "--volume /sys/fs/cgroup:/sys/fs/cgroup:ro",
            "--mount type=bind,\"source=/src\",\"target=/srv/src\",readonly",
            "--ulimit nofile=1:1",
        ];
        // As root, no engine network: envup connects the container itself.
        if own_network() {
            wanted.extend(["--network none", "--dns 10.0.2.3"]);
            assert!(!s.contains("--publish"), "{s}");
        } else {
            wanted.extend([
                "--publish 127.0.0.1:2200:22/tcp",
                "--publish 127.0.0.1:8080:80/tcp",
            ]);
        }
        for want in wanted {
            assert!(s.contains(want), "{want} missing from {s}");
        }
        let podman = create_args(&m, "envup-x", 2200, &[], false, Kind::Podman, &mut paths)
            .unwrap()
            .join(" ");
        assert!(!podman.contains("/sys/fs/cgroup"));
        assert!(!podman.contains("--dns"), "{podman}");
    }

    #[test]
    fn bind_mounts_keep_any_path_whole() {
        let [flag, spec] = bind_mount("/a b/my proj:x,y \"q\"", "/srv/a,b", false);
        assert_eq!(flag, "--mount");
        assert_eq!(
            spec,
            "type=bind,\"source=/a b/my proj:x,y \"\"q\"\"\",\"target=/srv/a,b\""
        );
    }

    /// A path that is not UTF-8 reaches the engine as a link to it, made
    /// again before a start and gone with the container.
    #[test]
    fn a_path_that_is_not_utf8_goes_through_a_link() {
        use std::os::unix::ffi::OsStringExt;
        if !nix::unistd::geteuid().is_root() && std::env::var_os("XDG_RUNTIME_DIR").is_none() {
            return;
        }
        let name = format!("envup-test-{}", std::process::id());
        let odd = PathBuf::from(std::ffi::OsString::from_vec(b"/tmp/a\xff b".to_vec()));
        let mut paths = EnginePaths {
            container: &name,
            links: Vec::new(),
        };
        assert_eq!(paths.of(Path::new("/plain/path")).unwrap(), "/plain/path");
        let via = paths.of(&odd).unwrap();
        assert_eq!(std::fs::read_link(&via).unwrap(), odd);
        std::fs::remove_file(&via).unwrap();
        make_links(&name, &paths.links).unwrap();
        assert_eq!(std::fs::read_link(&via).unwrap(), odd);
        remove_links(&name);
        assert!(std::fs::symlink_metadata(&via).is_err());
    }

    #[test]
    fn keys_are_mounted_read_only_with_private_modes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let keys = MachineKeys::ensure(dir.path(), "web").unwrap();
        let mut paths = EnginePaths {
            container: "envup-x",
            links: Vec::new(),
        };
        let a = key_mounts(dir.path(), &keys, &mut paths).unwrap().join(" ");
        assert!(
            a.contains(
                "container/authorized_keys\",\"target=/root/.ssh/authorized_keys\",readonly"
            ),
            "{a}"
        );
        assert!(
            a.contains("\"target=/etc/ssh/ssh_host_ed25519_key\",readonly"),
            "{a}"
        );
        let mode = std::fs::metadata(dir.path().join("container/ssh_host_ed25519_key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
