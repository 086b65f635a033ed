//! The qemu backend: a machine is a qemu-system-x86_64 VM, daemonized, with
//! a QMP socket per machine; its disk is a qcow2 overlay on the box's
//! stored image, and its first-boot data a NoCloud seed envup writes.

mod probe;
pub mod qmp;
pub mod seed;

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{Backend, BackendError, OwnError, io_err, run_tool, start_time};
use crate::boxes::StoredBox;
use crate::envfile::Machine;
use crate::ssh::MachineKeys;
use crate::state::machine::SshEndpoint;
use crate::state::{MachineState, Status};

pub use probe::probe;

/// How long a guest may take to power off after the ACPI button.
pub const HALT_DEADLINE: Duration = Duration::from_secs(20);
/// qboot: a firmware that only loads a kernel, in milliseconds.
const QBOOT: &str = "/usr/share/qemu/qboot.rom";

pub struct QemuBackend;

/// What only the qemu backend runs into.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error("cannot write the seed disk {}", .path.display())]
    Seed {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot reach qemu's monitor on {}", .path.display())]
    Monitor {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the monitor command `{command}` failed")]
    MonitorCommand {
        command: String,
        #[source]
        source: std::io::Error,
    },
    /// savevm, loadvm and delvm answer with text only when they fail.
    #[error("the monitor command `{command}` failed: {said}")]
    Refused { command: String, said: String },
    #[error(
        "qemu cannot save a running VM that has a share (virtio-9p); \
         `envup halt` it and save a disk snapshot instead"
    )]
    SaveWithShare,
    #[error("qemu started but wrote no pid file {}", .0.display())]
    NoPidFile(PathBuf),
    #[error("qemu (pid {0}) ended as soon as it started")]
    EndedAtOnce(i32),
    #[error("qemu (pid {0}) did not end")]
    DidNotEnd(i32),
    #[error("{0} is not qemu-img's JSON")]
    Info(String, #[source] serde_json::Error),
    #[error(
        "{} is not a layer over the box's disk {} (it names {found}): it is damaged or was \
         edited, and envup does not start it", .overlay.display(), .base.display()
    )]
    NotOurLayer {
        overlay: PathBuf,
        base: PathBuf,
        found: String,
    },
    #[error("{} names an accelerator `{accel}`, which is neither kvm nor tcg", .path.display())]
    BadAccel { accel: String, path: PathBuf },
    #[error("the guest could not mount share {guest}, nor take a copy of it")]
    ShareCopy {
        guest: String,
        #[source]
        source: crate::ssh::SshError,
    },
}

impl OwnError for QemuError {}

/// What `create` decided, kept as a record: facts checked when read, never
/// a command line (qemu's is made again from the Envfile, the store and
/// the machine's own paths at every start; older envups kept one here,
/// which is ignored).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmConfig {
    /// `kvm` or `tcg`.
    pub accel: String,
    pub name: String,
}

pub struct Paths {
    dir: PathBuf,
}

impl Paths {
    fn of(state: &MachineState) -> Result<Paths, BackendError> {
        Ok(Paths {
            dir: super::machine_dir(state)?.join("qemu"),
        })
    }
    fn overlay(&self) -> PathBuf {
        self.dir.join("disk.qcow2")
    }
    fn seed(&self) -> PathBuf {
        self.dir.join("seed.img")
    }
    fn qmp(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }
    fn pidfile(&self) -> PathBuf {
        self.dir.join("qemu.pid")
    }
    fn config(&self) -> PathBuf {
        self.dir.join("vm.json")
    }
    /// The serial console: where `Ssh::wait` points when a boot times out.
    fn console(&self) -> PathBuf {
        self.dir.parent().expect("machine dir").join("console.log")
    }
}

/// `qemu-img ARGS… PATH`.
fn qemu_img_on(args: &[&str], path: &Path) -> Result<String, BackendError> {
    let mut all: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    all.push(path.as_os_str());
    qemu_img(&all)
}

fn qemu_img(args: &[&OsStr]) -> Result<String, BackendError> {
    run_tool(
        Command::new("qemu-img").args(args),
        "apt-get install qemu-utils",
    )
}

/// The qcow2 overlay on the stored image: a backing file, nothing copied;
/// grown to `disk` when that is more than the image's own size.
fn make_overlay(base: &Path, format: &str, overlay: &Path, disk: u64) -> Result<(), BackendError> {
    let info = qemu_img_on(&["info", "--output=json", "-U"], base)?;
    let virtual_size = serde_json::from_str::<serde_json::Value>(&info)
        .ok()
        .and_then(|v| v["virtual-size"].as_u64())
        .unwrap_or(0);
    let size = disk.max(virtual_size).to_string();
    qemu_img(&[
        "create".as_ref(),
        "-q".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        "-F".as_ref(),
        format.as_ref(),
        "-b".as_ref(),
        base.as_ref(),
        overlay.as_ref(),
        size.as_ref(),
    ])?;
    Ok(())
}

/// A key for what makes KVM work or not here: the host's kernel and qemu.
fn kvm_cache_key() -> String {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let qemu = crate::host::which("qemu-system-x86_64")
        .and_then(|p| std::fs::metadata(p).ok())
        .map(|m| format!("{} {:?}", m.len(), m.modified().ok()))
        .unwrap_or_default();
    format!("{release} / {qemu}")
}

#[derive(Serialize, Deserialize)]
struct KvmProbe {
    key: String,
    usable: bool,
}

/// What the last KVM test boot on this host found, if any.
pub fn kvm_answer() -> Option<bool> {
    let c = crate::state::envup_home().ok()?.join("kvm.json");
    let p = crate::state::read_json::<KvmProbe>(&c).ok()??;
    (p.key == kvm_cache_key()).then_some(p.usable)
}

/// Whether guests boot under KVM here. `/dev/kvm` opening is not enough
/// (nested virtualisation can hang a guest in early boot), so envup boots
/// `kernel` under KVM once and watches its console for the kernel's first
/// words; the answer is kept in `$ENVUP_HOME/kvm.json` for this host's
/// kernel and qemu. Without a kernel to try and no answer kept: no.
pub fn kvm_usable(kernel: Option<&Path>) -> bool {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return false;
    }
    if let Some(answer) = kvm_answer() {
        return answer;
    }
    let key = kvm_cache_key();
    let cache = crate::state::envup_home().ok().map(|h| h.join("kvm.json"));
    let Some(kernel) = kernel else {
        return false;
    };
    let usable = boots_under_kvm(kernel);
    if let Some(c) = &cache {
        let _ = crate::state::write_json(c, &KvmProbe { key, usable });
    }
    usable
}

fn boots_under_kvm(kernel: &Path) -> bool {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-accel", "kvm", "-cpu", "host", "-m", "128", "-display", "none",
    ])
    .args([
        "-nodefaults",
        "-no-user-config",
        "-no-reboot",
        "-serial",
        "stdio",
    ]);
    if Path::new(QBOOT).exists() {
        cmd.args(["-bios", QBOOT]);
    }
    let Ok(mut child) = cmd
        .arg("-kernel")
        .arg(kernel)
        .args(["-append", "console=ttyS0 earlyprintk=serial panic=-1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    else {
        return false;
    };
    let mut out = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&seen).contains("Linux version") {
                let _ = tx.send(());
                break;
            }
        }
    });
    let ok = rx.recv_timeout(Duration::from_secs(5)).is_ok();
    let _ = child.kill();
    let _ = child.wait();
    ok
}

/// A path as the value in one of qemu's `key=value,…` option lists, byte
/// for byte: a comma in it is doubled, which qemu reads as a literal comma
/// (a project directory named `a,b` would otherwise end the value there).
fn opt_path(p: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for &b in p.as_os_str().as_bytes() {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    out
}

/// An option list `{before}{path}{after}`, the path as [`opt_path`] gives it.
fn opt_with_path(before: &str, p: &Path, after: &str) -> OsString {
    let mut v = before.as_bytes().to_vec();
    v.extend(opt_path(p));
    v.extend(after.as_bytes());
    OsString::from_vec(v)
}

/// A command line being built.
#[derive(Default)]
struct Args(Vec<OsString>);

impl Args {
    fn add<S: AsRef<OsStr>>(&mut self, xs: &[S]) {
        self.0.extend(xs.iter().map(|x| x.as_ref().to_owned()));
    }
}

/// qemu's arguments for a machine.
#[allow(clippy::too_many_arguments)]
pub fn qemu_args(
    m: &Machine,
    name: &str,
    accel: &str,
    p: &Paths,
    boot: Option<(&Path, Option<&Path>, &str)>,
    ssh_port: u16,
) -> Vec<OsString> {
    let mut a = Args::default();
    a.add(&["-name", &format!("{name},process={name}")]);
    a.add(&["-accel", accel]);
    if accel == "kvm" {
        a.add(&["-cpu", "host"]);
    }
    a.add(&["-smp", &m.cpus.to_string()]);
    a.add(&["-m", &format!("{}M", m.memory.bytes() >> 20)]);
    a.add(&["-display", "none", "-nodefaults", "-no-user-config"]);
    if let Some((kernel, initrd, cmdline)) = boot {
        if Path::new(QBOOT).exists() {
            a.add(&["-bios", QBOOT]);
        }
        a.add(&[OsStr::new("-kernel"), kernel.as_os_str()]);
        if let Some(i) = initrd {
            a.add(&[OsStr::new("-initrd"), i.as_os_str()]);
        }
        a.add(&["-append", cmdline]);
    }
    a.add(&[
        OsStr::new("-drive"),
        &opt_with_path(
            "file=",
            &p.overlay(),
            ",if=virtio,format=qcow2,discard=unmap",
        ),
    ]);
    // Read-only, so it needs no snapshot support of its own.
    a.add(&[
        OsStr::new("-drive"),
        &opt_with_path("file=", &p.seed(), ",if=virtio,format=raw,readonly=on"),
    ]);
    // No IPv6 on the way out: the firewall that keeps machines from the
    // host's own services and other projects is IPv4's.
    let mut net = format!("user,id=net0,ipv6=off,hostfwd=tcp:127.0.0.1:{ssh_port}-:22");
    for f in &m.forwards {
        let proto = f.protocol.name();
        let ip = if f.host_ip.is_unspecified() {
            String::new()
        } else {
            f.host_ip.to_string()
        };
        net.push_str(&format!(",hostfwd={proto}:{ip}:{}-:{}", f.host, f.guest));
    }
    a.add(&["-netdev", &net]);
    a.add(&["-device", "virtio-net-pci,netdev=net0,romfile="]);
    a.add(&["-device", "virtio-rng-pci"]);
    for (i, s) in m.shares.iter().enumerate() {
        // Read-only on qemu's side. Read-write, qemu (root) keeps the
        // guest's owners and modes in extended attributes and gives the
        // files it makes plain private modes: the guest makes no set-uid
        // file or device node of root's on the host.
        let model = if s.read_only {
            "none,readonly=on"
        } else {
            "mapped-xattr"
        };
        a.add(&[
            OsStr::new("-virtfs"),
            &opt_with_path(
                "local,path=",
                &s.host,
                &format!(",mount_tag=envup{i},id=fs{i},security_model={model}"),
            ),
        ]);
    }
    a.add(&[
        OsStr::new("-chardev"),
        &opt_with_path("file,id=console,path=", &p.console(), ",append=on"),
    ]);
    a.add(&["-serial", "chardev:console"]);
    a.add(&[
        OsStr::new("-qmp"),
        &opt_with_path("unix:", &p.qmp(), ",server=on,wait=off"),
    ]);
    a.add(&[OsStr::new("-pidfile"), p.pidfile().as_os_str()]);
    a.add(&["-daemonize"]);
    a.0
}

/// The machine's qemu, if it runs: the process the state records, or (when
/// the state lost it: a kill before it was recorded, a damaged file) the one
/// in qemu's own pid file; either only if its command line names this
/// machine's QMP socket.
fn live_qemu(state: &MachineState) -> Option<i32> {
    let p = Paths::of(state).ok()?;
    // As it stands in qemu's command line.
    let marker = opt_path(&p.qmp());
    let recorded = state.id.clone().or_else(|| {
        let pid: i32 = std::fs::read_to_string(p.pidfile())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        Some(format!("{pid}:{}", start_time(pid)?))
    });
    super::live_process(recorded.as_deref(), &marker)
}

/// The machine's record, checked: an accelerator qemu knows, and the
/// machine's own name on the host.
fn read_config(state: &MachineState) -> Result<VmConfig, BackendError> {
    let p = Paths::of(state)?.config();
    let cfg: VmConfig = crate::state::read_json(&p)?.ok_or(BackendError::Missing(p.clone()))?;
    super::own_host_name(&p, &super::host_name(state, "qemu")?, &cfg.name)?;
    if !["kvm", "tcg"].contains(&cfg.accel.as_str()) {
        return Err(QemuError::BadAccel {
            accel: crate::ident::printable(&cfg.accel).into_owned(),
            path: p,
        }
        .into());
    }
    Ok(cfg)
}

/// The machine's disk, checked to be a qcow2 layer whose backing file is
/// the box's disk in the store, in the box's format (qemu-img reads the
/// header only). qemu and qemu-img follow a layer's backing file: an
/// edited header could point them at any file on the host.
fn checked_overlay(state: &MachineState) -> Result<PathBuf, BackendError> {
    let overlay = Paths::of(state)?.overlay();
    let stored = super::stored_box(state)?;
    let base = stored
        .artifact("disk")
        .ok_or_else(|| BackendError::NoArtifact {
            name: stored.meta.name.clone(),
            artifact: "disk",
        })?;
    let format = disk_format(&stored);
    let info = qemu_img_on(&["info", "--output=json", "-U", "-f", "qcow2"], &overlay)?;
    let v: serde_json::Value = serde_json::from_str(&info)
        .map_err(|e| QemuError::Info(overlay.display().to_string(), e))?;
    let named = v["full-backing-filename"]
        .as_str()
        .or(v["backing-filename"].as_str());
    let named_format = v["backing-filename-format"].as_str();
    if named.map(Path::new) != Some(base.as_path()) || named_format != Some(format.as_str()) {
        return Err(QemuError::NotOurLayer {
            overlay,
            base,
            found: format!(
                "{} ({})",
                crate::ident::printable(named.unwrap_or("no backing file")),
                crate::ident::printable(named_format.unwrap_or("no format"))
            ),
        }
        .into());
    }
    Ok(overlay)
}

/// The format of a box's disk.
fn disk_format(stored: &StoredBox) -> String {
    stored
        .manifest
        .artifacts
        .get("disk")
        .and_then(|a| a.format.clone())
        .unwrap_or_else(|| "qcow2".into())
}

/// qemu's command line for the machine, made now from the Envfile's
/// machine, the stored box (kernel, initrd, command line), what create
/// decided (the accelerator, checked) and the machine's own paths and SSH
/// port.
fn command_line(m: &Machine, state: &MachineState) -> Result<Vec<OsString>, BackendError> {
    let p = Paths::of(state)?;
    let cfg = read_config(state)?;
    let opts: Options = super::options(m, "qemu")?;
    let accel = match opts.accel {
        Accel::Kvm => "kvm",
        Accel::Tcg => "tcg",
        Accel::Auto => cfg.accel.as_str(),
    };
    let stored = super::stored_box(state)?;
    let kernel = stored.artifact("kernel");
    let initrd = stored.artifact("initrd");
    let cmdline = boot_cmdline(&stored);
    let port = state
        .ssh
        .as_ref()
        .map(|e| e.port)
        .ok_or(BackendError::NotRunning)?;
    Ok(qemu_args(
        m,
        &super::host_name(state, "qemu")?,
        accel,
        &p,
        kernel
            .as_deref()
            .map(|k| (k, initrd.as_deref(), cmdline.as_str())),
        port,
    ))
}

/// The kernel command line a box boots with.
fn boot_cmdline(stored: &StoredBox) -> String {
    stored
        .manifest
        .boot
        .as_ref()
        .map(|b| b.cmdline.clone())
        .unwrap_or_else(|| "root=/dev/vda rw console=ttyS0".into())
}

fn monitor(state: &MachineState) -> Result<qmp::Monitor, BackendError> {
    let path = Paths::of(state)?.qmp();
    Ok(qmp::Monitor::connect(&path).map_err(|source| QemuError::Monitor { path, source })?)
}

fn wait_gone(pid: i32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// The snapshots qcow2 holds in `overlay`: (name, has the VM's state).
fn snapshots(overlay: &Path) -> Result<Vec<(String, bool)>, BackendError> {
    let info = qemu_img_on(&["info", "--output=json", "-U"], overlay)?;
    let v: serde_json::Value = serde_json::from_str(&info)
        .map_err(|e| QemuError::Info(overlay.display().to_string(), e))?;
    Ok(v["snapshots"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| {
                    Some((
                        s["name"].as_str()?.to_owned(),
                        s["vm-state-size"].as_u64().unwrap_or(0) > 0,
                    ))
                })
                .collect()
        })
        .unwrap_or_default())
}

/// qemu's monitor reports a failed savevm/loadvm/delvm as text.
fn human(state: &MachineState, command: &str) -> Result<(), BackendError> {
    let out = monitor(state)?
        .human(command)
        .map_err(|source| QemuError::MonitorCommand {
            command: command.to_owned(),
            source,
        })?;
    let out = out.trim();
    if out.is_empty() {
        Ok(())
    } else {
        Err(QemuError::Refused {
            command: command.to_owned(),
            said: out.to_owned(),
        }
        .into())
    }
}

/// Start the machine's qemu with the command line made now for it, unless
/// it runs already.
fn launch(m: &Machine, state: &mut MachineState) -> Result<(), BackendError> {
    if live_qemu(state).is_some() {
        return Ok(());
    }
    let p = Paths::of(state)?;
    checked_overlay(state)?;
    let args = command_line(m, state)?;
    let _ = std::fs::remove_file(p.pidfile());
    let _ = std::fs::remove_file(p.qmp());
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(&args);
    if nix::unistd::geteuid().is_root() {
        // A second NIC on the project network, on the tap of the machine's
        // address; the guest gets its address over SSH.
        let name = &state.name;
        if let Some(at) = crate::network::Attachment::of_machine(&super::machine_dir(state)?, name)?
        {
            let tap = crate::network::link::ensure_tap(&at)
                .map_err(crate::network::NetworkError::from)?;
            cmd.args([
                "-netdev",
                &format!("tap,id=net1,ifname={tap},script=no,downscript=no"),
                "-device",
                &format!(
                    "virtio-net-pci,netdev=net1,mac={},romfile=",
                    crate::network::mac_of(at.address)
                ),
            ]);
        }
        // Its user network's sockets are the helpers' (network/link.rs).
        // SAFETY: setgroups and setgid are async-signal-safe.
        unsafe {
            cmd.pre_exec(crate::network::link::as_helper);
        }
    }
    // With -daemonize, qemu returns once the VM is set up (or failed).
    run_tool(&mut cmd, "apt-get install qemu-system-x86")?;
    crate::fault::point("qemu:spawned");
    let pid: i32 = std::fs::read_to_string(p.pidfile())
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| QemuError::NoPidFile(p.pidfile()))?;
    let start = start_time(pid).ok_or(QemuError::EndedAtOnce(pid))?;
    state.id = Some(format!("{pid}:{start}"));
    Ok(())
}

/// The qemu backend's table, `[machines.NAME.qemu]`.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    #[serde(default)]
    pub accel: Accel,
}

/// How qemu runs the guest's code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM when the host offers it, else TCG.
    #[default]
    Auto,
    Kvm,
    Tcg,
}

impl Backend for QemuBackend {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn artifacts(&self) -> &'static [&'static str] {
        &["disk"]
    }

    fn vagrant_providers(&self) -> &'static [super::VagrantProvider] {
        &[super::VagrantProvider {
            name: "libvirt",
            artifact: "disk",
            user: "vagrant",
            first_login: Some(crate::ssh::first_login::FirstLogin::VagrantInsecureKey),
        }]
    }

    fn probe(&self) -> (bool, Vec<super::Check>) {
        probe()
    }

    fn check_options(&self, table: toml::de::ValueDeserializer<'_>) -> Result<(), toml::de::Error> {
        use serde::Deserialize;
        Options::deserialize(table).map(|_| ())
    }

    fn create(
        &self,
        m: &Machine,
        stored: &StoredBox,
        keys: &MachineKeys,
        state: &mut MachineState,
    ) -> Result<(), BackendError> {
        let disk = stored
            .artifact("disk")
            .ok_or_else(|| BackendError::NoArtifact {
                name: stored.meta.name.clone(),
                artifact: "disk",
            })?;
        let format = disk_format(stored);
        let p = Paths::of(state)?;
        std::fs::create_dir_all(&p.dir).map_err(io_err("make", &p.dir))?;
        let _ = std::fs::remove_file(p.overlay());
        make_overlay(&disk, &format, &p.overlay(), m.disk.bytes())?;
        let name = super::host_name(state, "qemu")?;
        let user = stored.manifest.ssh_user.clone();
        seed::Seed {
            instance_id: &name,
            hostname: &m.hostname,
            user: &user,
            keys: keys.into(),
        }
        .write(&p.seed())
        .map_err(|source| QemuError::Seed {
            path: p.seed(),
            source,
        })?;
        let kernel = stored.artifact("kernel");
        let opts: Options = super::options(m, "qemu")?;
        let accel = match opts.accel {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
            Accel::Auto if kvm_usable(kernel.as_deref()) => "kvm",
            Accel::Auto => "tcg",
        };
        let port = super::ssh_port()?;
        let cfg = VmConfig {
            accel: accel.into(),
            name,
        };
        crate::state::write_json(&p.config(), &cfg)?;
        state.ssh = Some(SshEndpoint {
            host: "127.0.0.1".into(),
            port,
            user,
        });
        state.forwards = m.forwards.clone();
        Ok(())
    }

    /// A stopped VM starts with the Envfile's cpus, memory, forwards and
    /// shares: its command line is made again at every start.
    fn start(&self, m: &Machine, state: &mut MachineState) -> Result<(), BackendError> {
        if live_qemu(state).is_none() {
            state.forwards = m.forwards.clone();
        }
        launch(m, state)
    }

    fn restart_applies(&self) -> &'static [&'static str] {
        &["cpus", "memory", "forwards", "shares"]
    }

    fn stop(&self, state: &MachineState, force: bool) -> Result<(), BackendError> {
        let Some(pid) = live_qemu(state) else {
            return Ok(());
        };
        if !force
            && let Ok(mon) = monitor(state)
            && mon.powerdown().is_ok()
            && wait_gone(pid, HALT_DEADLINE)
        {
            return Ok(());
        }
        if let Ok(mon) = monitor(state) {
            let _ = mon.quit();
        }
        if !wait_gone(pid, Duration::from_secs(5)) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            wait_gone(pid, Duration::from_secs(5));
        }
        Ok(())
    }

    fn destroy(&self, state: &MachineState) -> Result<(), BackendError> {
        self.stop(state, true)?;
        if let Some(pid) = live_qemu(state) {
            return Err(QemuError::DidNotEnd(pid).into());
        }
        let p = Paths::of(state)?;
        match std::fs::remove_dir_all(&p.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err("remove", &p.dir)(e)),
            _ => Ok(()),
        }
    }

    fn status(&self, state: &MachineState) -> Result<Status, BackendError> {
        if !matches!(state.status, Status::Running | Status::Stopped) {
            return Ok(state.status);
        }
        if live_qemu(state).is_none() {
            return Ok(Status::Stopped);
        }
        // Alive: ask qemu itself whether the guest runs.
        Ok(
            match monitor(state).and_then(|m| {
                m.running().map_err(|source| {
                    QemuError::MonitorCommand {
                        command: "query-status".into(),
                        source,
                    }
                    .into()
                })
            }) {
                Ok(true) => Status::Running,
                Ok(false) => Status::Stopped,
                Err(_) => state.status,
            },
        )
    }

    fn joins(&self, _m: &Machine) -> super::Joins {
        super::Joins::Guest
    }

    fn after_boot(&self, m: &Machine, ssh: &crate::ssh::Ssh) -> Result<Vec<String>, BackendError> {
        let mut notes = Vec::new();
        let sudo = if ssh.endpoint.user == "root" {
            ""
        } else {
            "sudo -n "
        };
        for (i, s) in m.shares.iter().enumerate() {
            let ro = if s.read_only { ",ro" } else { "" };
            let guest = crate::ssh::sh_quote(&s.guest);
            let mount = format!(
                "{sudo}mkdir -p {guest} && {{ {sudo}mountpoint -q {guest} || \
                 {sudo}mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144{ro} envup{i} {guest}; }}"
            );
            if let Err(e) = ssh.run("mounting a share", &mount, None) {
                tracing::debug!("9p mount of {} failed: {e}", s.guest);
                ssh.upload(&s.host, &s.guest, !sudo.is_empty())
                    .map_err(|source| QemuError::ShareCopy {
                        guest: s.guest.clone(),
                        source,
                    })?;
                notes.push(format!(
                    "share {} is a copy of {} made now (the guest cannot mount virtio-9p); changes on either side are not seen by the other",
                    s.guest,
                    s.host.display()
                ));
            }
        }
        Ok(notes)
    }

    fn details(&self, state: &MachineState) -> Vec<(String, String)> {
        read_config(state)
            .map(|c| vec![("accel".to_owned(), c.accel)])
            .unwrap_or_default()
    }

    fn snapshot_save(&self, state: &MachineState, name: &str) -> Result<(), BackendError> {
        if let Some(pid) = live_qemu(state) {
            // qemu refuses to save a VM with a virtio-9p device: say so
            // from the running qemu's command line, before asking.
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if cmdline.split(|b| *b == 0).any(|a| a == b"-virtfs") {
                return Err(QemuError::SaveWithShare.into());
            }
            human(state, &format!("savevm {name}"))
        } else {
            let o = checked_overlay(state)?;
            qemu_img_on(&["snapshot", "-c", name], &o).map(|_| ())
        }
    }

    fn snapshot_restore(
        &self,
        m: &Machine,
        state: &mut MachineState,
        name: &str,
    ) -> Result<(), BackendError> {
        let o = checked_overlay(state)?;
        let Some((_, with_vm)) = snapshots(&o)?.into_iter().find(|(n, _)| n == name) else {
            return Err(BackendError::NoSnapshot(name.to_owned()));
        };
        let running = live_qemu(state).is_some();
        if running && with_vm {
            return human(state, &format!("loadvm {name}"));
        }
        // A disk-only snapshot, or a stopped machine: apply it to the disk
        // with qemu stopped, then start again if it ran.
        self.stop(state, true)?;
        qemu_img_on(&["snapshot", "-a", name], &o)?;
        if running {
            launch(m, state)?;
        }
        Ok(())
    }

    fn snapshot_list(&self, state: &MachineState) -> Result<Vec<String>, BackendError> {
        let o = Paths::of(state)?.overlay();
        Ok(snapshots(&o)?.into_iter().map(|(n, _)| n).collect())
    }

    fn snapshot_delete(&self, state: &MachineState, name: &str) -> Result<(), BackendError> {
        let o = checked_overlay(state)?;
        if !snapshots(&o)?.iter().any(|(n, _)| n == name) {
            return Err(BackendError::NoSnapshot(name.to_owned()));
        }
        if live_qemu(state).is_some() {
            human(state, &format!("delvm {name}"))
        } else {
            qemu_img_on(&["snapshot", "-d", name], &o).map(|_| ())
        }
    }
}
