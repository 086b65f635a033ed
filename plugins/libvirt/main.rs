//! envup-backend-libvirt: envup's machines as libvirt domains, through
//! `virsh`. A machine's disk is a qcow2 layer over the box's disk (a
//! backing file, read-only), its keys and hostname are on a small seed disk
//! it reads at first boot, and SSH and the Envfile's forwards reach it
//! through qemu's user-mode network on 127.0.0.1. docs/plugins/libvirt.md
//! says what runs where; docs/plugins.md is the protocol.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use envup::backend::plugin::protocol::{BoxSpec, KeySpec, MachineSpec};
use envup::backend::qemu::seed::{Seed, SeedKeys};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

const NAME: &str = "libvirt";
const DEFAULT_URI: &str = "qemu:///system";

/// An error reply: a kind envup acts on and a message.
#[derive(Debug)]
struct Fault {
    kind: &'static str,
    message: String,
    fix: Option<String>,
}

fn failed(message: impl Into<String>) -> Fault {
    Fault {
        kind: "failed",
        message: message.into(),
        fix: None,
    }
}

type Result<T> = std::result::Result<T, Fault>;

/// The machine's `[machines.X.libvirt]` table.
#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct Options {
    /// The libvirt connection.
    uri: Option<String>,
    /// `qemu` (TCG, runs anywhere) or `kvm`.
    domain_type: Option<String>,
}

/// What the plugin keeps of a machine, in its directory.
#[derive(Serialize, Deserialize)]
struct Kept {
    uri: String,
    domain: String,
    port: u16,
    user: String,
}

fn options_schema() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "uri": {"type": "string", "minLength": 1,
                    "description": "the libvirt connection URI, a local driver's (default qemu:///system)"},
            "domain_type": {"enum": ["qemu", "kvm"],
                    "description": "qemu: emulated (TCG); kvm: hardware virtualization (default qemu)"}
        }
    })
}

fn main() {
    let mut input = String::new();
    if std::env::args().nth(1).as_deref() == Some("domain-xml") {
        // A diagnostic: the domain a `create` request would define, printed
        // and nothing made (docs/plugins/libvirt.md).
        let xml = std::io::stdin()
            .read_to_string(&mut input)
            .map_err(|e| failed(format!("cannot read the request: {e}")))
            .and_then(|_| {
                serde_json::from_str::<Value>(&input)
                    .map_err(|e| failed(format!("the request is not JSON: {e}")))
            })
            .and_then(|req| planned_domain(&req));
        match xml {
            Ok(xml) => print!("{xml}"),
            Err(f) => {
                eprintln!("{}", f.message);
                std::process::exit(1);
            }
        }
        return;
    }
    let reply = match std::io::stdin().read_to_string(&mut input) {
        Ok(_) => match serde_json::from_str::<Value>(&input) {
            Ok(req) => dispatch(&req),
            Err(e) => Err(failed(format!("the request is not JSON: {e}"))),
        },
        Err(e) => Err(failed(format!("cannot read the request: {e}"))),
    };
    let out = match reply {
        Ok(v) => json!({ "ok": v }),
        Err(f) => json!({"error": {"kind": f.kind, "message": f.message, "fix": f.fix}}),
    };
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{out}");
}

fn dispatch(req: &Value) -> Result<Value> {
    let op = req["op"].as_str().unwrap_or("");
    match op {
        "describe" => Ok(json!({
            "name": NAME,
            "version": env!("CARGO_PKG_VERSION"),
            "protocols": [1],
            "artifacts": ["disk"],
            "snapshots": true,
            "restart_applies": [],
            "options_schema": options_schema(),
        })),
        "probe" => Ok(probe()),
        "check" => check(&field(req, "machine")?),
        "create" => create(req),
        "start" => start(req),
        "stop" => stop(req, req["force"].as_bool().unwrap_or(false)),
        "destroy" => destroy(req),
        "status" => status(req),
        "last_words" => last_words(req),
        "snapshot_save" => snapshot(req, "snapshot-create-as"),
        "snapshot_restore" => snapshot_restore(req),
        "snapshot_list" => snapshot_list(req),
        "snapshot_delete" => snapshot(req, "snapshot-delete"),
        other => Err(Fault {
            kind: "unsupported",
            message: format!("the libvirt plugin has no operation `{other}`"),
            fix: None,
        }),
    }
}

fn field<T: serde::de::DeserializeOwned>(req: &Value, key: &str) -> Result<T> {
    serde_json::from_value(req[key].clone()).map_err(|e| {
        failed(format!(
            "the request's `{key}` is not what the protocol says: {e}"
        ))
    })
}

/// Run virsh on `uri`; its stdout, or a fault with what it said.
fn virsh(uri: &str, args: &[&str]) -> Result<String> {
    let out = Command::new("virsh")
        .args(["-q", "-c", uri])
        .args(args)
        .output()
        .map_err(|e| Fault {
            kind: "missing_tool",
            message: format!("cannot run virsh: {e}"),
            fix: Some("apt-get install libvirt-clients".into()),
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(failed(format!(
            "`virsh -c {uri} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn probe() -> Value {
    let mut checks = Vec::new();
    let mut ready = true;
    let mut add = |what: &str, r: std::result::Result<String, (String, &str)>| match r {
        Ok(detail) => checks.push(json!({"what": what, "ok": true, "detail": detail})),
        Err((detail, fix)) => {
            ready = false;
            checks.push(json!({"what": what, "ok": false, "detail": detail, "fix": fix}));
        }
    };
    add(
        "virsh",
        virsh(DEFAULT_URI, &["version", "--daemon"])
            .map(|v| {
                v.lines()
                    .filter(|l| !l.is_empty())
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .map_err(|f| {
                (
                    f.message,
                    "apt-get install libvirt-daemon-system, and start libvirtd",
                )
            }),
    );
    add(
        "qemu-img",
        Command::new("qemu-img")
            .arg("--version")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_owned()
            })
            .ok_or_else(|| ("not found".into(), "apt-get install qemu-utils")),
    );
    json!({"ready": ready, "checks": checks})
}

fn check(m: &MachineSpec) -> Result<Value> {
    let invalid = |message: String| Fault {
        kind: "invalid",
        message,
        fix: None,
    };
    if !m.shares.is_empty() {
        return Err(invalid(format!(
            "machine `{}`: the libvirt plugin cannot share folders yet",
            m.name
        )));
    }
    let opts = serde_json::from_value::<Options>(m.options.clone())
        .map_err(|e| invalid(format!("machine `{}`: {e}", m.name)))?;
    let uri = opts.uri.as_deref().unwrap_or(DEFAULT_URI);
    if !local_uri(uri) {
        return Err(invalid(format!(
            "machine `{}`: the libvirt plugin takes a local connection such as \
             qemu:///system or qemu:///session, not `{}` (the machine's disks are files here)",
            m.name,
            uri.escape_default()
        )));
    }
    let driver = Driver::of(uri)?;
    if !driver.forwards() && !m.forwards.is_empty() {
        return Err(invalid(format!(
            "machine `{}`: forwards need the qemu driver; reach the machine at its address instead",
            m.name
        )));
    }
    Ok(json!({}))
}

struct Machine {
    dir: PathBuf,
    /// The name envup gives the machine on the host (older envups sent
    /// none: then one made from the directory, as they did).
    host_name: Option<String>,
    /// The connection the Envfile names, when the request carries the
    /// machine's options.
    uri: Option<String>,
}

/// The connections the plugin takes: a local driver's system or session
/// daemon, with no transport and no parameters (the machine's disks are
/// files on this host; a URI's parameters can name programs to run).
fn local_uri(uri: &str) -> bool {
    let Some((scheme, path)) = uri.split_once(":///") else {
        return false;
    };
    ["qemu", "xen", "bhyve", "vmwarews", "vmwareplayer"].contains(&scheme)
        && ["system", "session"].contains(&path)
}

impl Machine {
    fn of(req: &Value) -> Result<Self> {
        let dir: PathBuf = field(req, "dir")?;
        if !dir.is_absolute() {
            return Err(failed("the request's `dir` is not an absolute path"));
        }
        let host_name = req["host_name"]
            .as_str()
            .filter(|n| n.len() <= 64 && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
            .map(str::to_owned);
        let uri = match req["machine"]["options"].get("uri") {
            None => None,
            Some(u) => Some(
                u.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| failed("the machine's `uri` is not text"))?,
            ),
        };
        Ok(Self {
            dir,
            host_name,
            uri,
        })
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
    /// What the plugin kept of the machine, checked: its connection is a
    /// local one, and the Envfile's where the request says which (an
    /// edited file names no other), its SSH user a user name.
    fn kept(&self) -> Result<Option<Kept>> {
        let path = self.path("machine.json");
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(None);
        };
        let k: Kept = serde_json::from_str(&text)
            .map_err(|e| failed(format!("{} is damaged: {e}", path.display())))?;
        let wanted = self.uri.as_deref().unwrap_or(&k.uri);
        if !local_uri(&k.uri) || k.uri != wanted {
            return Err(failed(format!(
                "{} names the connection `{}`, which is not the machine's ({}): the file is \
                 damaged or was edited, and the plugin does not use it",
                path.display(),
                k.uri.escape_default(),
                wanted.escape_default()
            )));
        }
        if !envup::ident::is_user_name(&k.user) {
            return Err(failed(format!(
                "{} names the user `{}`, which is not a user name",
                path.display(),
                k.user.escape_default()
            )));
        }
        Ok(Some(k))
    }
    /// The domain's name: the one envup gives the machine on the host,
    /// never read from a file, so that no damaged file can point at
    /// another domain.
    fn domain(&self) -> String {
        if let Some(n) = &self.host_name {
            return n.clone();
        }
        use sha2::Digest;
        let d = sha2::Sha256::digest(self.dir.as_os_str().as_encoded_bytes());
        format!("envup-{}", &envup::boxes::archive::hex(&d)[..12])
    }
}

fn io(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> Fault {
    let what = format!("cannot {what} {}", path.display());
    move |e| failed(format!("{what}: {e}"))
}

/// Text for XML.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

/// The domain XML a `create` request defines, made as `create` makes it.
fn planned_domain(req: &Value) -> Result<String> {
    let m: MachineSpec = field(req, "machine")?;
    let boxed: BoxSpec = field(req, "box")?;
    let port: u16 = field(req, "ssh_port")?;
    let opts: Options =
        serde_json::from_value(m.options.clone()).map_err(|e| failed(e.to_string()))?;
    let me = Machine::of(req)?;
    let driver = Driver::of(opts.uri.as_deref().unwrap_or(DEFAULT_URI))?;
    Ok(domain_xml(
        driver,
        &m,
        &boxed,
        &opts,
        &me,
        &me.domain(),
        port,
    ))
}

fn create(req: &Value) -> Result<Value> {
    let m: MachineSpec = field(req, "machine")?;
    let boxed: BoxSpec = field(req, "box")?;
    let keys: KeySpec = field(req, "keys")?;
    let port: u16 = field(req, "ssh_port")?;
    let opts: Options =
        serde_json::from_value(m.options.clone()).map_err(|e| failed(e.to_string()))?;
    let me = Machine::of(req)?;
    let uri = opts.uri.clone().unwrap_or_else(|| DEFAULT_URI.into());
    let domain = me.domain();

    let disk = boxed
        .artifacts
        .get("disk")
        .ok_or_else(|| failed(format!("box `{}` has no disk", boxed.name)))?;
    let format = boxed.formats.get("disk").map_or("qcow2", String::as_str);
    if !["qcow2", "raw"].contains(&format) {
        return Err(failed(format!(
            "box `{}`: a disk of format `{format}`",
            boxed.name
        )));
    }
    let driver = Driver::of(&uri)?;
    let own = me.path(driver.disk_file());
    let info = run(
        "qemu-img",
        &["info", "--output=json", "-U", "-f", format].map(std::ffi::OsStr::new),
        disk,
    )?;
    let size = serde_json::from_str::<Value>(&info)
        .ok()
        .and_then(|v| v["virtual-size"].as_u64())
        .unwrap_or(0)
        .max(m.disk)
        .to_string();
    let _ = std::fs::remove_file(&own);
    if driver.disk_format() == "qcow2" {
        // A layer over the box's disk, which stays read-only.
        let args = ["create", "-q", "-f", "qcow2", "-F", format, "-b"].map(std::ffi::OsStr::new);
        let mut args = args.to_vec();
        args.push(disk.as_os_str());
        args.push(own.as_os_str());
        args.push(size.as_ref());
        run("qemu-img", &args, Path::new(""))?;
    } else {
        // The driver reads no backing chain: a copy of its own.
        let args =
            ["convert", "-q", "-f", format, "-O", driver.disk_format()].map(std::ffi::OsStr::new);
        let mut args = args.to_vec();
        args.push(disk.as_os_str());
        args.push(own.as_os_str());
        run("qemu-img", &args, Path::new(""))?;
    }
    // The seed: the machine's keys and hostname for its first boot.
    let raw = me.path("seed.img");
    Seed {
        instance_id: &domain,
        hostname: &m.hostname,
        user: &boxed.user,
        keys: SeedKeys {
            authorized_key: keys.authorized_key,
            host_private: keys.host_key,
            host_public: keys.host_public_key,
        },
    }
    .write(&raw)
    .map_err(io("write the seed disk", &raw))?;
    let seed = me.path(driver.seed_file());
    if seed != raw {
        // qcow2 lets the qemu driver take internal snapshots of the whole
        // machine; VMware reads vmdk only.
        let _ = std::fs::remove_file(&seed);
        let fmt = if driver == Driver::Qemu {
            "qcow2"
        } else {
            "vmdk"
        };
        let mut args = ["convert", "-q", "-f", "raw", "-O", fmt]
            .map(std::ffi::OsStr::new)
            .to_vec();
        args.push(raw.as_os_str());
        args.push(seed.as_os_str());
        run("qemu-img", &args, Path::new(""))?;
        let _ = std::fs::remove_file(&raw);
    }

    let xml = domain_xml(driver, &m, &boxed, &opts, &me, &domain, port);
    let xml_path = me.path("domain.xml");
    std::fs::write(&xml_path, xml).map_err(io("write", &xml_path))?;
    let kept = Kept {
        uri: uri.clone(),
        domain: domain.clone(),
        port,
        user: boxed.user.clone(),
    };
    let kept_path = me.path("machine.json");
    std::fs::write(&kept_path, serde_json::to_vec(&kept).expect("JSON"))
        .map_err(io("write", &kept_path))?;
    // An earlier, interrupted create may have defined it already.
    if virsh(&uri, &["dominfo", &domain]).is_ok() {
        virsh(&uri, &["undefine", &domain, "--snapshots-metadata"])?;
    }
    virsh(&uri, &["define", &xml_path.to_string_lossy()])?;
    Ok(json!({"id": domain, "ssh": {"host": "127.0.0.1", "port": port, "user": boxed.user}}))
}

/// Run `program` with `args` (and `last`, unless empty); its stdout.
fn run(program: &str, args: &[&std::ffi::OsStr], last: &Path) -> Result<String> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    if !last.as_os_str().is_empty() {
        cmd.arg(last);
    }
    let out = cmd.output().map_err(|e| Fault {
        kind: "missing_tool",
        message: format!("cannot run {program}: {e}"),
        fix: Some("apt-get install qemu-utils".into()),
    })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(failed(format!(
            "{program} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// The libvirt driver a connection URI reaches: what its domains are made
/// of differs (docs/plugins/libvirt.md has the table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Driver {
    /// qemu:///system, qemu:///session: run here, under TCG.
    Qemu,
    /// xen:///system (libxl): written from libvirt's documentation.
    Xen,
    /// bhyve:///system (FreeBSD): written from libvirt's documentation.
    Bhyve,
    /// vmwarews:///session, vmwareplayer:///session: written from
    /// libvirt's documentation.
    Vmware,
}

impl Driver {
    fn of(uri: &str) -> Result<Driver> {
        let scheme = uri.split(':').next().unwrap_or("");
        Ok(match scheme.split('+').next().unwrap_or("") {
            "qemu" => Driver::Qemu,
            "xen" | "libxl" => Driver::Xen,
            "bhyve" => Driver::Bhyve,
            "vmwarews" | "vmwareplayer" | "vmwarefusion" => Driver::Vmware,
            other => {
                return Err(Fault {
                    kind: "invalid",
                    message: format!(
                        "libvirt URI `{uri}`: the `{other}` driver is not one this plugin knows \
                         (qemu, xen, bhyve, vmwarews)"
                    ),
                    fix: None,
                });
            }
        })
    }

    /// The disk image format its domains use, and the format of the
    /// machine's own disk: a qcow2 layer over the box's disk where the
    /// driver reads qcow2 backing chains, a full copy otherwise.
    fn disk_format(self) -> &'static str {
        match self {
            Driver::Qemu | Driver::Xen => "qcow2",
            Driver::Bhyve => "raw",
            Driver::Vmware => "vmdk",
        }
    }

    fn disk_file(self) -> &'static str {
        match self {
            Driver::Qemu | Driver::Xen => "disk.qcow2",
            Driver::Bhyve => "disk.img",
            Driver::Vmware => "disk.vmdk",
        }
    }

    fn seed_file(self) -> &'static str {
        match self {
            Driver::Qemu => "seed.qcow2",
            Driver::Xen | Driver::Bhyve => "seed.img",
            Driver::Vmware => "seed.vmdk",
        }
    }

    /// Whether envup reaches SSH through a forward on 127.0.0.1 (qemu's
    /// user network), or at the guest's address on a libvirt network.
    fn forwards(self) -> bool {
        self == Driver::Qemu
    }
}

/// The domain's XML for `driver`. qemu: direct kernel boot when the box
/// has a kernel, the layer and the seed as virtio disks, the serial console
/// to a file, and qemu's user network with SSH and the forwards on
/// 127.0.0.1 (libvirt's own `user` interface cannot forward ports with its
/// SLIRP back end, so the network is given to qemu on its command line).
/// The others: a NIC on a libvirt network, SSH at the guest's address.
fn domain_xml(
    driver: Driver,
    m: &MachineSpec,
    b: &BoxSpec,
    o: &Options,
    me: &Machine,
    domain: &str,
    port: u16,
) -> String {
    let p = |name: &str| esc(&me.path(name).to_string_lossy());
    let kernel = b.artifacts.get("kernel").map(|k| esc(&k.to_string_lossy()));
    let initrd = b.artifacts.get("initrd").map(|k| esc(&k.to_string_lossy()));
    let cmdline = b
        .boot
        .as_ref()
        .and_then(|v| v["cmdline"].as_str())
        .unwrap_or("root=/dev/vda rw console=ttyS0")
        .to_owned();
    let (disk, seed) = (p(driver.disk_file()), p(driver.seed_file()));
    let console = p("console.log");
    let direct = |cmdline: &str| -> String {
        match &kernel {
            Some(k) => format!(
                "<kernel>{k}</kernel>{}<cmdline>{}</cmdline>",
                initrd
                    .as_ref()
                    .map(|i| format!("<initrd>{i}</initrd>"))
                    .unwrap_or_default(),
                esc(cmdline)
            ),
            None => "<boot dev='hd'/>".into(),
        }
    };
    let head = |kind: &str, os: String| {
        format!(
            "<domain type='{kind}'{ns}>
  <name>{domain}</name>
  <description>envup machine {name}: {dir}</description>
  <memory unit='KiB'>{memory}</memory>
  <vcpu>{cpus}</vcpu>
  <os>{os}</os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
",
            ns = if driver == Driver::Qemu {
                " xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'"
            } else {
                ""
            },
            name = esc(&m.name),
            dir = esc(&me.dir.to_string_lossy()),
            memory = m.memory / 1024,
            cpus = m.cpus,
        )
    };
    match driver {
        Driver::Qemu => {
            let mut net = format!("user,id=envnet,hostfwd=tcp:127.0.0.1:{port}-:22");
            for f in &m.forwards {
                let ip = if f.host_ip == "0.0.0.0" {
                    ""
                } else {
                    &f.host_ip
                };
                net.push_str(&format!(
                    ",hostfwd={}:{ip}:{}-:{}",
                    f.protocol, f.host, f.guest
                ));
            }
            let kind = o.domain_type.as_deref().unwrap_or("qemu");
            head(
                kind,
                format!("<type arch='x86_64' machine='pc'>hvm</type>{}", direct(&cmdline)),
            ) + &format!(
                "  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2' discard='unmap'/><source file='{disk}'/><target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{seed}'/><target dev='vdb' bus='virtio'/></disk>
    <serial type='file'><source path='{console}' append='on'/><target port='0'/></serial>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
    <memballoon model='none'/>
  </devices>
  <seclabel type='static' model='dac' relabel='no'><label>+0:+0</label></seclabel>
  <qemu:commandline>
    <qemu:arg value='-netdev'/><qemu:arg value='{net}'/>
    <qemu:arg value='-device'/><qemu:arg value='virtio-net-pci,netdev=envnet,romfile=,bus=pci.0,addr=0x1e'/>
  </qemu:commandline>
</domain>
",
                net = esc(&net),
            )
        }
        Driver::Xen => {
            // An HVM guest (its device model is qemu), booted from the
            // box's kernel; its disks are Xen's paravirtual ones (xvd*).
            let cmdline = cmdline.replace("/dev/vda", "/dev/xvda");
            head(
                "xen",
                format!("<type arch='x86_64' machine='xenfv'>hvm</type>{}", direct(&cmdline)),
            ) + &format!(
                "  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{disk}'/><target dev='xvda' bus='xen'/></disk>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{seed}'/><target dev='xvdb' bus='xen'/><readonly/></disk>
    <interface type='network'><source network='default'/><model type='netfront'/></interface>
    <serial type='file'><source path='{console}'/><target port='0'/></serial>
  </devices>
</domain>
"
            )
        }
        Driver::Bhyve => {
            // bhyve boots no kernel given from outside: the box's disk
            // must boot by itself (UEFI).
            head(
                "bhyve",
                "<type>hvm</type><loader readonly='yes' type='pflash'>/usr/local/share/uefi-firmware/BHYVE_UEFI.fd</loader>".into(),
            ) + &format!(
                "  <devices>
    <disk type='file' device='disk'><driver name='file' type='raw'/><source file='{disk}'/><target dev='hda' bus='sata'/></disk>
    <disk type='file' device='disk'><driver name='file' type='raw'/><source file='{seed}'/><target dev='hdb' bus='sata'/><readonly/></disk>
    <interface type='bridge'><source bridge='virbr0'/><model type='virtio'/></interface>
    <serial type='nmdm'><source master='/dev/nmdm-{domain}A' slave='/dev/nmdm-{domain}B'/></serial>
  </devices>
</domain>
"
            )
        }
        Driver::Vmware => {
            // VMware Workstation boots the disk's own boot loader; its NAT
            // network is vmnet8.
            head("vmware", "<type>hvm</type>".into())
                + &format!(
                    "  <devices>
    <disk type='file' device='disk'><source file='{disk}'/><target dev='sda' bus='scsi'/><address type='drive' controller='0' bus='0' unit='0'/></disk>
    <disk type='file' device='disk'><source file='{seed}'/><target dev='sdb' bus='scsi'/><address type='drive' controller='0' bus='0' unit='1'/></disk>
    <controller type='scsi' index='0' model='lsilogic'/>
    <interface type='bridge'><source bridge='vmnet8'/><model type='e1000'/></interface>
  </devices>
</domain>
"
                )
        }
    }
}

fn kept(me: &Machine) -> Result<Kept> {
    me.kept()?
        .ok_or_else(|| failed(format!("{} is missing", me.path("machine.json").display())))
}

/// The domain's state: running, stopped, or gone.
fn state(k: &Kept, domain: &str) -> &'static str {
    match virsh(&k.uri, &["domstate", domain]) {
        Ok(s) if s.trim() == "shut off" || s.trim() == "crashed" => "stopped",
        Ok(_) => "running",
        Err(_) => "not_created",
    }
}

fn start(req: &Value) -> Result<Value> {
    let me = Machine::of(req)?;
    let k = kept(&me)?;
    let domain = me.domain();
    match state(&k, &domain) {
        "running" => {}
        "not_created" => {
            virsh(
                &k.uri,
                &["define", &me.path("domain.xml").to_string_lossy()],
            )?;
            virsh(&k.uri, &["start", &domain])?;
        }
        _ => {
            virsh(&k.uri, &["start", &domain])?;
        }
    }
    ssh_reply(&k, &domain)
}

/// Where SSH reaches the machine: the forward on 127.0.0.1, or (drivers
/// without one) the guest's address on its network, once it has one.
fn ssh_reply(k: &Kept, domain: &str) -> Result<Value> {
    if Driver::of(&k.uri)?.forwards() {
        return Ok(json!({"ssh": {"host": "127.0.0.1", "port": k.port, "user": k.user}}));
    }
    let until = Instant::now() + Duration::from_secs(300);
    loop {
        for source in ["lease", "arp"] {
            if let Ok(out) = virsh(&k.uri, &["domifaddr", domain, "--source", source]) {
                let addr = out
                    .split_whitespace()
                    .filter_map(|w| w.split('/').next()?.parse::<std::net::Ipv4Addr>().ok())
                    .next();
                if let Some(a) = addr {
                    return Ok(json!({"ssh": {"host": a.to_string(), "port": 22, "user": k.user}}));
                }
            }
        }
        if Instant::now() > until {
            return Err(failed(format!(
                "domain {domain} got no address on its network in 300 s"
            )));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn stop(req: &Value, force: bool) -> Result<Value> {
    let me = Machine::of(req)?;
    let Some(k) = me.kept()? else {
        return Ok(json!({}));
    };
    let domain = me.domain();
    if state(&k, &domain) != "running" {
        return Ok(json!({}));
    }
    if !force {
        // The ACPI power button; the guest powers off.
        let _ = virsh(&k.uri, &["shutdown", &domain, "--mode", "acpi"]);
        let until = Instant::now() + Duration::from_secs(60);
        while Instant::now() < until && state(&k, &domain) == "running" {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    if state(&k, &domain) == "running" {
        virsh(&k.uri, &["destroy", &domain])?;
    }
    Ok(json!({}))
}

/// The machine's domain (by its own name) destroyed and undefined, then its
/// directory removed. A kept file that is damaged or was edited is not
/// followed: the domain of the machine's name goes from the Envfile's
/// connection when the request says it, else from the default one.
fn destroy(req: &Value) -> Result<Value> {
    let me = Machine::of(req)?;
    let domain = me.domain();
    match me.kept() {
        Ok(Some(k)) => {
            stop(req, true)?;
            if state(&k, &domain) != "not_created" {
                virsh(&k.uri, &["undefine", &domain, "--snapshots-metadata"])?;
            }
        }
        Ok(None) => {}
        Err(_) => {
            let uri = me.uri.clone().unwrap_or_else(|| DEFAULT_URI.into());
            if local_uri(&uri) {
                let _ = virsh(&uri, &["destroy", &domain]);
                let _ = virsh(&uri, &["undefine", &domain, "--snapshots-metadata"]);
            }
        }
    }
    if me.dir.exists() {
        std::fs::remove_dir_all(&me.dir).map_err(io("remove", &me.dir))?;
    }
    Ok(json!({}))
}

fn status(req: &Value) -> Result<Value> {
    let me = Machine::of(req)?;
    let s = match me.kept()? {
        None => "not_created",
        Some(k) => match state(&k, &me.domain()) {
            // Defined files without a domain: start defines it again.
            "not_created" => "stopped",
            s => s,
        },
    };
    Ok(json!({"status": s}))
}

fn last_words(req: &Value) -> Result<Value> {
    let me = Machine::of(req)?;
    let text = std::fs::read(me.path("console.log")).unwrap_or_default();
    let tail = &text[text.len().saturating_sub(4096)..];
    Ok(json!({"text": String::from_utf8_lossy(tail).trim()}))
}

fn snapshot(req: &Value, verb: &str) -> Result<Value> {
    let me = Machine::of(req)?;
    let k = kept(&me)?;
    let name: String = field(req, "snapshot")?;
    if verb == "snapshot-delete" && !snapshot_names(&k, &me.domain())?.contains(&name) {
        return Err(Fault {
            kind: "no_snapshot",
            message: format!("the machine has no snapshot `{name}`"),
            fix: None,
        });
    }
    virsh(&k.uri, &[verb, &me.domain(), &name])?;
    Ok(json!({}))
}

fn snapshot_names(k: &Kept, domain: &str) -> Result<Vec<String>> {
    Ok(virsh(&k.uri, &["snapshot-list", domain, "--name"])?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

fn snapshot_list(req: &Value) -> Result<Value> {
    let me = Machine::of(req)?;
    let k = kept(&me)?;
    Ok(json!({"snapshots": snapshot_names(&k, &me.domain())?}))
}

fn snapshot_restore(req: &Value) -> Result<Value> {
    let me = Machine::of(req)?;
    let k = kept(&me)?;
    let name: String = field(req, "snapshot")?;
    let domain = me.domain();
    if !snapshot_names(&k, &domain)?.contains(&name) {
        return Err(Fault {
            kind: "no_snapshot",
            message: format!("the machine has no snapshot `{name}`"),
            fix: None,
        });
    }
    let was_running = state(&k, &domain) == "running";
    let mut args = vec!["snapshot-revert", domain.as_str(), name.as_str()];
    if was_running {
        args.push("--running");
    }
    virsh(&k.uri, &args)?;
    ssh_reply(&k, &domain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> MachineSpec {
        serde_json::from_value(json!({
            "name": "web", "hostname": "web", "cpus": 1, "memory": 536870912u64, "disk": 0,
            "forwards": [{"guest": 80, "host": 8080, "host_ip": "127.0.0.1", "protocol": "tcp"}],
            "shares": [], "options": {}
        }))
        .unwrap()
    }

    fn tiny() -> BoxSpec {
        serde_json::from_value(json!({
            "name": "tiny", "version": "1.0.0", "digest": "0".repeat(64), "dir": "/store/x",
            "user": "root", "unpacked": {}, "formats": {"disk": "qcow2"},
            "artifacts": {"disk": "/store/x/disk.qcow2", "kernel": "/store/x/vmlinux", "initrd": "/store/x/initrd.img"},
            "boot": {"cmdline": "root=/dev/vda rw console=ttyS0 <&>"}
        }))
        .unwrap()
    }

    /// Each driver's domain says what the driver needs, with every
    /// value escaped. (tests/plugins.rs checks each against libvirt's
    /// schema, where its validator is installed.)
    #[test]
    fn domains_say_what_each_driver_needs() {
        let me = Machine {
            dir: PathBuf::from("/var/lib/envup/m's <dir>"),
            host_name: None,
            uri: None,
        };
        for (uri, wants) in [
            (
                "qemu:///system",
                "hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=tcp:127.0.0.1:8080-:80",
            ),
            ("xen:///system", "<target dev='xvda' bus='xen'/>"),
            ("bhyve:///system", "<driver name='file' type='raw'/>"),
            ("vmwarews:///session", "disk.vmdk"),
        ] {
            let d = Driver::of(uri).unwrap();
            let xml = domain_xml(
                d,
                &machine(),
                &tiny(),
                &Options::default(),
                &me,
                "envup-x",
                2222,
            );
            assert!(xml.contains(wants), "{uri}: {xml}");
            assert!(
                xml.contains("m&apos;s &lt;dir&gt;"),
                "{uri}: not escaped: {xml}"
            );
        }
        assert_eq!(Driver::of("lxc:///").err().map(|f| f.kind), Some("invalid"));
    }

    /// Only a local driver's daemon: no transport, no parameters (which
    /// can name a program to run).
    #[test]
    fn connections_are_local() {
        for ok in ["qemu:///system", "qemu:///session", "xen:///system"] {
            assert!(local_uri(ok), "{ok}");
        }
        for bad in [
            "qemu+ext:///system?command=/bin/sh",
            "qemu+ssh://host/system",
            "qemu:///system?socket=/tmp/x",
            "qemu:///embed?root=/tmp",
            "lxc:///",
        ] {
            assert!(!local_uri(bad), "{bad}");
        }
    }

    /// A kept file whose connection is not the machine's is refused,
    /// naming the file.
    #[test]
    fn kept_connection_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let write = |uri: &str| {
            let k = Kept {
                uri: uri.into(),
                domain: "x".into(),
                port: 2222,
                user: "root".into(),
            };
            std::fs::write(
                dir.path().join("machine.json"),
                serde_json::to_vec(&k).unwrap(),
            )
            .unwrap();
        };
        let me = |uri: Option<&str>| Machine {
            dir: dir.path().to_owned(),
            host_name: Some("envup-abc".into()),
            uri: uri.map(str::to_owned),
        };
        write("qemu:///system");
        assert!(me(None).kept().unwrap().is_some());
        assert!(me(Some("qemu:///system")).kept().unwrap().is_some());
        let e = me(Some("qemu:///session")).kept().err().unwrap();
        assert!(e.message.contains("machine.json"), "{}", e.message);
        write("qemu+ext:///system?command=/bin/touch");
        assert!(me(None).kept().is_err());
        assert_eq!(me(None).domain(), "envup-abc");
    }
}
