//! The project network: one private IPv4 network per project, which every
//! machine of the project joins whatever its backend, so machines reach
//! each other by address and by name.
//!
//! On the host it is a Linux bridge, `envupXXXXXXXX` (the subnet's base
//! address in hex), with the subnet's first address (the host's own, so
//! root on the host reaches every machine). A machine joins through its
//! backend ([`crate::backend::Joins`]): a jail, an LXC container or an
//! engine's container gets a veth pair, one end on the bridge and the
//! other, `envup0`, in the machine's network namespace; a VM gets a second
//! NIC on a tap on the bridge, which envup configures over SSH. Each
//! machine's `/etc/hosts` gets a block naming every machine of the project.
//! The machines' outbound traffic and their forwards on 127.0.0.1 stay on
//! the paths they had before (slirp4netns, the engine's network, qemu's
//! user network); the project network is for machines to reach each other.
//!
//! What envup makes here is recorded before it is made: the subnet in a
//! host-wide claim (`/var/lib/envup/networks/`, naming the project's state
//! directory) and in `.envup/network.json`, with each machine's address;
//! the host-side links are named from those addresses. `destroy` of the
//! last machine removes the bridge, its firewall rule, the record and the
//! claim. The firewall (`link.rs`) keeps projects apart.

pub mod hosts;
pub mod link;

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::envfile::config::ProjectNetwork;

/// A subnet: a base address with its host bits clear, and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Subnet {
    base: Ipv4Addr,
    prefix: u8,
}

/// The prefix lengths a project network may have: from 65534 machines to 5.
pub const PREFIXES: std::ops::RangeInclusive<u8> = 16..=29;

impl Subnet {
    pub fn new(base: Ipv4Addr, prefix: u8) -> Result<Subnet, String> {
        if !PREFIXES.contains(&prefix) {
            return Err(format!(
                "a project network's prefix is /{} to /{}, not /{prefix}",
                PREFIXES.start(),
                PREFIXES.end()
            ));
        }
        let mask = Self::mask_of(prefix);
        let b = u32::from(base);
        if b & !mask != 0 {
            return Err(format!(
                "{base}/{prefix} has host bits set; the network is {}/{prefix}",
                Ipv4Addr::from(b & mask)
            ));
        }
        let s = Subnet { base, prefix };
        if let Some(what) = s.reserved() {
            return Err(format!("{s} is {what}, not a network machines can have"));
        }
        Ok(s)
    }

    /// The special range `self` overlaps, if any: where no project network
    /// may be (the host's own loopback, "this network", link-local
    /// addresses, multicast and the reserved block with the broadcast
    /// address).
    pub fn reserved(&self) -> Option<&'static str> {
        const SPECIAL: [(u32, u8, &str); 5] = [
            (0x0000_0000, 8, "in 0.0.0.0/8 (this network)"),
            (0x7f00_0000, 8, "in 127.0.0.0/8 (the host's loopback)"),
            (0xa9fe_0000, 16, "in 169.254.0.0/16 (link-local)"),
            (0xe000_0000, 4, "in 224.0.0.0/4 (multicast)"),
            (0xf000_0000, 4, "in 240.0.0.0/4 (reserved)"),
        ];
        SPECIAL
            .iter()
            .find(|(b, p, _)| {
                self.overlaps(&Subnet {
                    base: Ipv4Addr::from(*b),
                    prefix: *p,
                })
            })
            .map(|(_, _, what)| *what)
    }

    /// The /24 holding `addr` (a network the Envfile implies by giving
    /// machines addresses and no `[project] network`).
    pub fn around(addr: Ipv4Addr) -> Subnet {
        Subnet {
            base: Ipv4Addr::from(u32::from(addr) & Self::mask_of(24)),
            prefix: 24,
        }
    }

    fn mask_of(prefix: u8) -> u32 {
        u32::MAX << (32 - u32::from(prefix))
    }

    pub fn base(&self) -> Ipv4Addr {
        self.base
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn size(&self) -> u32 {
        1 << (32 - u32::from(self.prefix))
    }

    pub fn contains(&self, a: Ipv4Addr) -> bool {
        u32::from(a) & Self::mask_of(self.prefix) == u32::from(self.base)
    }

    pub fn overlaps(&self, o: &Subnet) -> bool {
        let p = self.prefix.min(o.prefix);
        let m = Self::mask_of(p);
        u32::from(self.base) & m == u32::from(o.base) & m
    }

    /// The host's address on the network: the first.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) + 1)
    }

    /// Whether a machine may have `a`: inside, and not the network's own
    /// address, its broadcast address or the host's.
    pub fn usable(&self, a: Ipv4Addr) -> bool {
        let n = u32::from(a).wrapping_sub(u32::from(self.base));
        self.contains(a) && n >= 2 && n < self.size() - 1
    }

    /// The first and last machine addresses.
    pub fn machine_range(&self) -> (Ipv4Addr, Ipv4Addr) {
        let b = u32::from(self.base);
        (Ipv4Addr::from(b + 2), Ipv4Addr::from(b + self.size() - 2))
    }

    /// The machine addresses in order.
    fn machine_addresses(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        (2..self.size() - 1).map(|n| Ipv4Addr::from(u32::from(self.base) + n))
    }

    /// The name earlier envups gave a project's bridge: `envup` and the
    /// base address in hex. Taken away when this envup makes the project's
    /// own ([`bridge_of`]) and nothing is attached to it any more.
    pub fn legacy_bridge(&self) -> String {
        format!("envup{:08x}", u32::from(self.base))
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

impl FromStr for Subnet {
    type Err = String;
    fn from_str(s: &str) -> Result<Subnet, String> {
        let bad = || {
            format!(
                "`{}` is not a network like 10.20.0.0/24",
                crate::ident::printable(s)
            )
        };
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        let base: Ipv4Addr = a.parse().map_err(|_| bad())?;
        if p.is_empty() || p.len() > 2 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        Subnet::new(base, p.parse().map_err(|_| bad())?)
    }
}

impl TryFrom<String> for Subnet {
    type Error = String;
    fn try_from(s: String) -> Result<Subnet, String> {
        s.parse()
    }
}

impl From<Subnet> for String {
    fn from(s: Subnet) -> String {
        s.to_string()
    }
}

/// The bridge of the project whose state directory is `state_dir`: `envup`
/// and 8 hex digits of a hash of that directory (13 characters; a link
/// name has at most 15). Made from the project, not from its subnet, so
/// two projects never share one, whatever networks they ask for.
pub fn bridge_of(state_dir: &Path) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(state_dir.as_os_str().as_encoded_bytes());
    format!("envup{:02x}{:02x}{:02x}{:02x}", d[0], d[1], d[2], d[3])
}

/// The host-side link of the machine at `addr`: `ve` (a veth) or `vt` (a
/// tap) and the address in hex. Addresses are unique on the host, as the
/// subnets they are in are.
pub fn host_link(prefix: &str, addr: Ipv4Addr) -> String {
    format!("{prefix}{:08x}", u32::from(addr))
}

/// A VM's NIC on the project network: a locally administered address made
/// from the machine's address, so the guest finds its NIC by it.
pub fn mac_of(addr: Ipv4Addr) -> String {
    let o = addr.octets();
    format!("52:54:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

/// The host's IPv4 routes: each destination and the link it goes out of
/// (the default route left out).
pub fn host_routes() -> Vec<(Subnet, String)> {
    let text = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    parse_routes(&text)
}

fn parse_routes(text: &str) -> Vec<(Subnet, String)> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            continue;
        }
        let hex = |s: &str| u32::from_str_radix(s, 16).ok().map(u32::from_be);
        let (Some(dest), Some(mask)) = (hex(f[1]), hex(f[7])) else {
            continue;
        };
        if mask == 0 || mask.leading_ones() + mask.trailing_zeros() != 32 {
            continue;
        }
        let prefix = mask.leading_ones() as u8;
        out.push((
            Subnet {
                base: Ipv4Addr::from(dest & mask),
                prefix,
            },
            f[0].to_owned(),
        ));
    }
    out
}

/// A host route `net` would overlap, other than a project bridge's (those
/// are told apart by their projects' claims).
pub fn route_overlapping(net: &Subnet, routes: &[(Subnet, String)]) -> Option<String> {
    routes
        .iter()
        .find(|(r, dev)| !dev.starts_with("envup") && r.overlaps(net))
        .map(|(r, dev)| format!("{r} on {dev}"))
}

/// An address of the host's own inside `net` (one on any interface, a
/// /32 without a route of its own among them).
pub fn local_address_in(net: &Subnet) -> Option<Ipv4Addr> {
    nix::ifaddrs::getifaddrs()
        .ok()?
        .filter(|i| !i.interface_name.starts_with("envup"))
        .filter_map(|i| i.address?.as_sockaddr_in().map(|a| a.ip()))
        .find(|a| net.contains(*a))
}

/// What can go wrong with the project network.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("{} is damaged ({reason}); `envup up` makes it again from the project's claim and its running machines, and `envup destroy` of every machine of the project removes it", .path.display())]
    Damaged { path: PathBuf, reason: String },
    #[error("cannot {op} {}", .path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the project network is {recorded} (recorded in {}), but the Envfile asks for {wanted}; \
         `envup destroy` every machine of the project, then `envup up`, to change it",
        .path.display()
    )]
    Changed {
        recorded: Subnet,
        wanted: Subnet,
        path: PathBuf,
    },
    #[error("the project network {net} overlaps {theirs}, another project's ({})", .holder.display())]
    Taken {
        net: Subnet,
        theirs: Subnet,
        holder: PathBuf,
    },
    #[error("the project network {net} takes in the host's own address {addr}")]
    LocalAddress { net: Subnet, addr: Ipv4Addr },
    #[error("the project network {net} overlaps the host's route {route}")]
    Overlaps { net: Subnet, route: String },
    #[error("no free /24 is left in {POOL_TEXT} for a project network; set `[project] network`")]
    Exhausted,
    #[error(
        "address {addr} is machine `{other}`'s; give `{name}` another `address` or destroy `{other}` first"
    )]
    AddressTaken {
        addr: Ipv4Addr,
        name: String,
        other: String,
    },
    #[error("every address of the project network {0} is taken")]
    Full(Subnet),
    #[error(transparent)]
    Link(#[from] link::LinkError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
}

impl crate::backend::OwnError for NetworkError {}

/// Where envup picks project networks: /24s from 10.213.0.0 to 10.220.255.0.
const POOL: std::ops::Range<u32> = 0x0ad5_0000..0x0add_0000;
const POOL_TEXT: &str = "10.213.0.0/16–10.220.0.0/16";

/// Where subnets are claimed, host-wide.
pub const CLAIMS_DIR: &str = "/var/lib/envup/networks";

/// `.envup/network.json`: the project's subnet and each machine's address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub version: u32,
    pub subnet: Subnet,
    pub machines: BTreeMap<String, Ipv4Addr>,
    /// The version of the project's names, one more at every change of
    /// `machines`.
    #[serde(default)]
    pub names: u64,
    /// The version of the names every running machine was last given:
    /// behind `names` when an envup was killed between a change and
    /// writing the names, which the next command then writes.
    #[serde(default)]
    pub names_written: u64,
}

const RECORD_VERSION: u32 = 1;

impl Record {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("network.json")
    }

    /// The project's record, checked: every name a machine name, every
    /// address a machine address of the subnet, none twice.
    pub fn load(state_dir: &Path) -> Result<Option<Record>, NetworkError> {
        let path = Self::path(state_dir);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(NetworkError::Io {
                    op: "read",
                    path,
                    source,
                });
            }
        };
        let damaged = |reason: String| NetworkError::Damaged {
            path: path.clone(),
            reason,
        };
        let r: Record = serde_json::from_slice(&bytes).map_err(|e| damaged(e.to_string()))?;
        if r.version != RECORD_VERSION {
            return Err(damaged(format!(
                "format {} is not {RECORD_VERSION}",
                r.version
            )));
        }
        let mut seen = std::collections::HashSet::new();
        for (name, a) in &r.machines {
            if !crate::envfile::validate::valid_machine_name(name) {
                return Err(damaged(format!(
                    "`{}` is not a machine name",
                    crate::ident::printable(name)
                )));
            }
            if !r.subnet.usable(*a) || !seen.insert(*a) {
                return Err(damaged(format!(
                    "machine `{name}`'s address {a} is not one of {}'s, or is given twice",
                    r.subnet
                )));
            }
        }
        Ok(Some(r))
    }

    fn save(&self, state_dir: &Path) -> Result<(), NetworkError> {
        let path = Self::path(state_dir);
        let bytes = serde_json::to_vec_pretty(self).expect("a record serializes");
        crate::state::write_atomic(&path, &bytes).map_err(NetworkError::from)
    }
}

/// A machine's place on the project network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub address: Ipv4Addr,
    pub subnet: Subnet,
    /// The project's bridge ([`bridge_of`]).
    pub bridge: String,
}

impl Attachment {
    /// The recorded attachment of machine `name` of the project whose
    /// state directory is `state_dir` (a backend asks when it starts one).
    pub fn of(state_dir: &Path, name: &str) -> Result<Option<Attachment>, NetworkError> {
        Ok(Record::load(state_dir)?.and_then(|r| {
            r.machines.get(name).map(|a| Attachment {
                address: *a,
                subnet: r.subnet,
                bridge: bridge_of(state_dir),
            })
        }))
    }

    /// From a machine's own state directory (`.envup/machines/NAME`).
    pub fn of_machine(machine_dir: &Path, name: &str) -> Result<Option<Attachment>, NetworkError> {
        match machine_dir.parent().and_then(Path::parent) {
            Some(state_dir) => Attachment::of(state_dir, name),
            None => Ok(None),
        }
    }
}

/// The project network as one command uses it; shared by the command's
/// threads.
/// The project's bridge, as one command sees it.
enum Bridge {
    /// Not looked at yet.
    Unchecked,
    /// Being made (or checked) on a thread of its own, beside the
    /// machine's create and start: a machine that joins through its
    /// namespace needs it only once it answers SSH.
    Making(std::thread::JoinHandle<Result<(), link::LinkError>>),
    Ready,
}

impl Bridge {
    /// Wait for a bridge being made; what making it said.
    fn settle(&mut self) -> Result<(), NetworkError> {
        if let Bridge::Making(_) = self {
            let Bridge::Making(h) = std::mem::replace(self, Bridge::Unchecked) else {
                unreachable!()
            };
            h.join().expect("the bridge's thread")?;
            *self = Bridge::Ready;
        }
        Ok(())
    }
}

pub struct Net {
    state_dir: PathBuf,
    /// The project's bridge ([`bridge_of`]).
    bridge: String,
    /// The Envfile's `[project] network`, or the network its addresses imply.
    wanted: Option<Subnet>,
    /// The Envfile's `address` of each machine that has one.
    fixed: BTreeMap<String, Ipv4Addr>,
    /// Whether envup can make networks here (it runs as root).
    enabled: bool,
    /// Held while the record changes; what this command knows of the
    /// project's bridge.
    lock: Mutex<Bridge>,
    /// Held while names are written into machines, so that two threads
    /// never rewrite one machine's `/etc/hosts` at once.
    names: Mutex<()>,
}

impl Drop for Net {
    /// A bridge still being made is waited for: no command ends with a
    /// thread changing the host.
    fn drop(&mut self) {
        if let Ok(b) = self.lock.get_mut() {
            let _ = b.settle();
        }
    }
}

impl Net {
    pub fn new(config: &crate::envfile::Config, state_dir: &Path) -> Net {
        let mut net = Net::orphaned(state_dir);
        net.wanted = match config.network {
            ProjectNetwork::Subnet(s) => Some(s),
            _ => None,
        };
        net.fixed = config
            .machines
            .values()
            .filter_map(|m| m.address.map(|a| (m.name.clone(), a)))
            .collect();
        net.enabled &= config.network != ProjectNetwork::None;
        net
    }

    /// The network of the project whose state is `state_dir`, as far as it
    /// is known without its Envfile (no wanted subnet, no fixed addresses):
    /// enough to take the machines of a project whose Envfile is gone off
    /// it ([`Net::detach`]).
    pub fn orphaned(state_dir: &Path) -> Net {
        Net {
            state_dir: state_dir.to_owned(),
            bridge: bridge_of(state_dir),
            wanted: None,
            fixed: BTreeMap::new(),
            enabled: nix::unistd::geteuid().is_root(),
            lock: Mutex::new(Bridge::Unchecked),
            names: Mutex::new(()),
        }
    }

    /// envup's firewall in place before a machine starts, as root: it keeps
    /// every machine's way out from the host's services and from other
    /// projects, with a project network or without.
    pub fn confine(&self) -> Result<(), NetworkError> {
        if nix::unistd::geteuid().is_root() {
            link::ensure_firewall()?;
        }
        Ok(())
    }

    /// Held while writing names into machines.
    pub fn writing_names(&self) -> std::sync::MutexGuard<'_, ()> {
        self.names.lock().expect("names lock")
    }

    /// Whether envup makes project networks here.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn record(&self) -> Result<Option<Record>, NetworkError> {
        Record::load(&self.state_dir)
    }

    /// Machine `name`'s recorded place on the network.
    pub fn attachment(&self, name: &str) -> Result<Option<Attachment>, NetworkError> {
        Attachment::of(&self.state_dir, name)
    }

    /// Give machine `name` its address (recorded before anything is made),
    /// with the network's bridge and firewall in place. Returns the
    /// attachment and whether the project's names changed.
    /// Machine `name`'s place on the network, recorded (with whether the
    /// project's names changed), and the bridge made where missing: now,
    /// or, with `beside`, on a thread that [`Net::bridge_ready`] waits for.
    pub fn attach(&self, name: &str, beside: bool) -> Result<(Attachment, bool), NetworkError> {
        let mut bridge = self.lock.lock().expect("network lock");
        let mut record = match self.record_or_rebuilt()? {
            Some(r) => {
                if let Some(w) = self.wanted
                    && w != r.subnet
                {
                    if r.machines.is_empty() {
                        self.remove(&mut bridge, Some(&r))?;
                        self.claim_new(Some(w))?
                    } else {
                        return Err(NetworkError::Changed {
                            recorded: r.subnet,
                            wanted: w,
                            path: Record::path(&self.state_dir),
                        });
                    }
                } else {
                    // A claim taken again (its file lost) or checked.
                    let _host = link::HostLock::take()?;
                    claim(r.subnet, &self.state_dir)?;
                    r
                }
            }
            None => self.claim_new(self.wanted)?,
        };
        let wanted = self.fixed.get(name).copied();
        let current = record.machines.get(name).copied();
        let address = match (wanted, current) {
            (Some(w), Some(c)) if w == c => c,
            (None, Some(c)) if !self.fixed.values().any(|f| *f == c) => c,
            (Some(w), _) => {
                if let Some((other, _)) =
                    record.machines.iter().find(|(n, a)| **a == w && *n != name)
                {
                    return Err(NetworkError::AddressTaken {
                        addr: w,
                        name: name.to_owned(),
                        other: other.clone(),
                    });
                }
                w
            }
            (None, _) => record
                .subnet
                .machine_addresses()
                .find(|a| {
                    !record.machines.values().any(|b| b == a)
                        && !self.fixed.values().any(|b| b == a)
                })
                .ok_or(NetworkError::Full(record.subnet))?,
        };
        let changed = current != Some(address);
        if changed {
            record.machines.insert(name.to_owned(), address);
            record.names += 1;
            record.save(&self.state_dir)?;
        }
        crate::fault::point("net:recorded");
        match &*bridge {
            Bridge::Ready => {}
            Bridge::Making(_) if beside => {}
            Bridge::Making(_) => bridge.settle()?,
            Bridge::Unchecked if beside => {
                let (subnet, name) = (record.subnet, self.bridge.clone());
                *bridge = Bridge::Making(std::thread::spawn(move || {
                    link::ensure_bridge(&subnet, &name)
                }));
            }
            Bridge::Unchecked => {
                link::ensure_bridge(&record.subnet, &self.bridge)?;
                *bridge = Bridge::Ready;
            }
        }
        Ok((
            Attachment {
                address,
                subnet: record.subnet,
                bridge: self.bridge.clone(),
            },
            changed,
        ))
    }

    /// A subnet for the project: `wanted`, or the first free one of the
    /// pool (from a place that depends on the project), claimed and
    /// recorded with no machines.
    fn claim_new(&self, wanted: Option<Subnet>) -> Result<Record, NetworkError> {
        let _host = link::HostLock::take()?;
        let routes = host_routes();
        let subnet = match wanted {
            Some(w) => {
                if let Some(route) = route_overlapping(&w, &routes) {
                    return Err(NetworkError::Overlaps { net: w, route });
                }
                if let Some(addr) = local_address_in(&w) {
                    return Err(NetworkError::LocalAddress { net: w, addr });
                }
                claim(w, &self.state_dir)?;
                w
            }
            None => {
                let n = (POOL.end - POOL.start) >> 8;
                let start = {
                    use std::hash::{Hash, Hasher};
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    self.state_dir.hash(&mut h);
                    (h.finish() % u64::from(n)) as u32
                };
                let mut found = None;
                for i in 0..n {
                    let base = Ipv4Addr::from(POOL.start + (((start + i) % n) << 8));
                    let s = Subnet { base, prefix: 24 };
                    if route_overlapping(&s, &routes).is_some() || local_address_in(&s).is_some() {
                        continue;
                    }
                    if claim(s, &self.state_dir).is_ok() {
                        found = Some(s);
                        break;
                    }
                }
                found.ok_or(NetworkError::Exhausted)?
            }
        };
        let r = Record {
            version: RECORD_VERSION,
            subnet,
            machines: BTreeMap::new(),
            names: 0,
            names_written: 0,
        };
        r.save(&self.state_dir)?;
        Ok(r)
    }

    /// The bridge of `at`'s network is there: made by this command, or
    /// checked now.
    pub fn bridge_ready(&self, at: &Attachment) -> Result<(), NetworkError> {
        let mut bridge = self.lock.lock().expect("network lock");
        if let Bridge::Unchecked = *bridge {
            link::ensure_bridge(&at.subnet, &self.bridge)?;
            *bridge = Bridge::Ready;
        }
        bridge.settle()
    }

    /// The record, or, when it cannot be read, the record made again from
    /// what is known elsewhere: the subnet the project claims host-wide and
    /// the addresses its running machines joined at (`joined` in their
    /// states). The damaged file is kept beside it; with no claim of the
    /// project's, the network starts afresh.
    fn record_or_rebuilt(&self) -> Result<Option<Record>, NetworkError> {
        let damaged = match self.record() {
            Err(e @ NetworkError::Damaged { .. }) => e,
            other => return other,
        };
        let path = Record::path(&self.state_dir);
        let ours: Vec<Subnet> = claims()
            .into_iter()
            .filter(|(p, _)| holder(p).as_deref() == Some(self.state_dir.as_path()))
            .map(|(_, s)| s)
            .collect();
        // The damaged file is copied aside, and replaced only by a whole
        // record: a kill between the two loses nothing.
        let set_aside = || {
            std::fs::copy(&path, path.with_extension("json.damaged"))
                .map(drop)
                .map_err(|source| NetworkError::Io {
                    op: "copy aside",
                    path: path.clone(),
                    source,
                })
        };
        let subnet = match ours[..] {
            [s] => s,
            // Nothing is claimed for the project: it starts afresh.
            [] => {
                set_aside()?;
                std::fs::remove_file(&path).map_err(|source| NetworkError::Io {
                    op: "remove",
                    path: path.clone(),
                    source,
                })?;
                return Ok(None);
            }
            // Claims of several subnets: which one was the record's?
            _ => return Err(damaged),
        };
        let mut machines = BTreeMap::new();
        for st in crate::state::machine_states(&self.state_dir) {
            if crate::envfile::validate::valid_machine_name(&st.name)
                && st.status == crate::state::Status::Running
                && let Some(a) = st.joined
                && subnet.usable(a)
                && !machines.values().any(|b| *b == a)
            {
                machines.insert(st.name, a);
            }
        }
        let r = Record {
            version: RECORD_VERSION,
            subnet,
            machines,
            names: 1,
            names_written: 0,
        };
        set_aside()?;
        r.save(&self.state_dir)?;
        Ok(Some(r))
    }

    /// The version of the project's names, when running machines may not
    /// all have been given it yet.
    pub fn names_behind(&self) -> Option<u64> {
        let r = self.record().ok()??;
        (r.names_written < r.names).then_some(r.names)
    }

    /// Every running machine has been given the names of version `v`.
    pub fn names_written(&self, v: u64) -> Result<(), NetworkError> {
        let _bridge = self.lock.lock().expect("network lock");
        if let Some(mut r) = self.record()?
            && r.names_written < v
        {
            r.names_written = v;
            r.save(&self.state_dir)?;
        }
        Ok(())
    }

    /// Machine `name` leaves: its host-side links go (only from this
    /// project's bridge), and its address; after the last machine, the
    /// whole network. Returns whether the project's names changed, and what
    /// the user should know: a record that could not be read is not
    /// followed (the network is taken away with the project's last
    /// machine, found by the project, not by the record).
    pub fn detach(&self, name: &str) -> Result<(bool, Option<String>), NetworkError> {
        let mut bridge = self.lock.lock().expect("network lock");
        // Nothing is removed while a thread still makes it.
        let _ = bridge.settle();
        let mut record = match self.record() {
            Ok(Some(r)) => r,
            Ok(None) => {
                if !self.others_remain(name) {
                    self.remove(&mut bridge, None)?;
                }
                return Ok((false, None));
            }
            Err(e) => {
                let last = !self.others_remain(name);
                if last {
                    self.remove(&mut bridge, None)?;
                }
                return Ok((
                    false,
                    Some(format!(
                        "{e}; {}",
                        if last {
                            "envup removed this project's bridge and claims, found by the project, and the record"
                        } else {
                            "envup leaves the project network as it is until the project's last machine goes"
                        }
                    )),
                ));
            }
        };
        let gone = record.machines.remove(name);
        if let Some(a) = gone {
            link::remove_port(&host_link("ve", a), &self.bridge)?;
            link::remove_port(&host_link("vt", a), &self.bridge)?;
        }
        if record.machines.is_empty() {
            self.remove(&mut bridge, Some(&record))?;
        } else if gone.is_some() {
            record.names += 1;
            record.save(&self.state_dir)?;
        }
        Ok((gone.is_some(), None))
    }

    /// Whether the project has machines other than `name`.
    fn others_remain(&self, name: &str) -> bool {
        std::fs::read_dir(self.state_dir.join("machines")).is_ok_and(|d| {
            d.filter_map(Result::ok)
                .any(|e| e.file_name().to_str() != Some(name))
        })
    }

    /// Remove the network: the project's own bridge (with the machines'
    /// links on it), the claims that name the project, the record; the
    /// bridge an earlier envup named after the subnet, when the record
    /// (checked) names one and nothing is attached to it.
    fn remove(&self, bridge: &mut Bridge, record: Option<&Record>) -> Result<(), NetworkError> {
        // Nothing is removed while a thread still makes it; whoever
        // attaches next makes the bridge again (a machine of the same
        // command after one that failed and went).
        let _ = bridge.settle();
        *bridge = Bridge::Unchecked;
        let ours: Vec<PathBuf> = claims()
            .into_iter()
            .map(|(path, _)| path)
            .filter(|path| holder(path).as_deref() == Some(self.state_dir.as_path()))
            .collect();
        let made = link::exists(&self.bridge) || !ours.is_empty();
        if made {
            let _host = link::HostLock::take()?;
            link::remove_bridge(&self.bridge)?;
            if let Some(r) = record {
                let legacy = r.subnet.legacy_bridge();
                if holder(&claim_path(r.subnet)).as_deref() == Some(self.state_dir.as_path()) {
                    link::remove_unused_bridge(&legacy)?;
                }
            }
            for path in &ours {
                let _ = std::fs::remove_file(path);
            }
        }
        let rp = Record::path(&self.state_dir);
        match std::fs::remove_file(&rp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(NetworkError::Io {
                    op: "remove",
                    path: rp,
                    source,
                });
            }
        }
        Ok(())
    }
}

/// What the project network needs from the host (`envup doctor`): whether
/// it is all there, and each check.
pub fn probe() -> (bool, Vec<crate::backend::Check>) {
    use crate::backend::Check;
    let mut checks = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        checks.push(Check::missing(
            "root",
            "envup runs as a user: machines get no project network (docs/networking.md)",
            "run envup as root for a project network",
        ));
        return (false, checks);
    }
    for (program, package) in [("ip", "iproute2"), ("iptables", "iptables")] {
        checks.push(match crate::host::which(program) {
            Some(p) => Check::ok(program, p.display().to_string()),
            None => Check::missing(
                program,
                format!("{program} not found"),
                format!("apt-get install {package}"),
            ),
        });
    }
    // A bridge made and removed, which also loads the bridge module.
    let probe = "envupprobe0";
    let made = Command::new("ip")
        .args(["link", "add", probe, "type", "bridge"])
        .stderr(std::process::Stdio::piped())
        .output();
    checks.push(match made {
        Ok(o) if o.status.success() => {
            let _ = Command::new("ip").args(["link", "del", probe]).status();
            Check::ok("bridge", "a bridge can be made")
        }
        Ok(o) => Check::missing(
            "bridge",
            format!(
                "cannot make a bridge: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            "load the bridge module (modprobe bridge)",
        ),
        Err(e) => Check::missing("bridge", e.to_string(), "apt-get install iproute2"),
    });
    (checks.iter().all(|c| c.ok), checks)
}

fn claim_path(s: Subnet) -> PathBuf {
    Path::new(CLAIMS_DIR).join(format!("{}_{}", s.base, s.prefix))
}

/// Every claim on the host: its file and its subnet (a file whose name is
/// not a subnet's is not a claim).
fn claims() -> Vec<(PathBuf, Subnet)> {
    let Ok(d) = std::fs::read_dir(CLAIMS_DIR) else {
        return Vec::new();
    };
    d.filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let (base, prefix) = name.split_once('_')?;
            let s = Subnet::new(base.parse().ok()?, prefix.parse().ok()?).ok()?;
            Some((e.path(), s))
        })
        .collect()
}

/// Whether the project at `holder` still holds `s`: its state directory is
/// there and its record names `s`, or cannot be read (a damaged record
/// frees nothing), or is gone while the project still has machines.
fn live(holder: &Path, s: Subnet) -> bool {
    if !holder.is_dir() {
        return false;
    }
    match Record::load(holder) {
        Ok(Some(r)) => r.subnet == s,
        Err(_) => true,
        Ok(None) => {
            std::fs::read_dir(holder.join("machines")).is_ok_and(|mut d| d.next().is_some())
        }
    }
}

fn holder(path: &Path) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let b = std::fs::read(path).ok()?;
    Some(PathBuf::from(std::ffi::OsStr::from_bytes(&b)))
}

/// Subnet claims that name the project state directory `from` name `to`
/// (the project's state moved, `relocate`).
pub fn rehome_claims(from: &Path, to: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(_host) = link::HostLock::take() else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(CLAIMS_DIR) else {
        return;
    };
    for e in entries.filter_map(Result::ok) {
        if e.file_name().as_bytes().starts_with(b".") {
            continue;
        }
        if holder(&e.path()).as_deref() == Some(from) {
            let _ = crate::state::write_atomic(&e.path(), to.as_os_str().as_bytes());
        }
    }
}

/// Claim `s` for the project at `state_dir` (held under the host lock). A
/// subnet that overlaps another project's live claim is refused; a claim
/// whose project no longer holds it (its directory is gone, or its network
/// was removed by an envup killed midway) is taken away first.
fn claim(s: Subnet, state_dir: &Path) -> Result<(), NetworkError> {
    use std::os::unix::ffi::OsStrExt;
    let path = claim_path(s);
    let dir = Path::new(CLAIMS_DIR);
    std::fs::create_dir_all(dir).map_err(|source| NetworkError::Io {
        op: "make",
        path: dir.to_owned(),
        source,
    })?;
    for (other, theirs) in claims() {
        if !theirs.overlaps(&s) {
            continue;
        }
        let Some(h) = holder(&other) else { continue };
        if h == state_dir {
            if theirs == s {
                return Ok(());
            }
            continue;
        }
        if live(&h, theirs) {
            return Err(NetworkError::Taken {
                net: s,
                theirs,
                holder: h,
            });
        }
        let _ = std::fs::remove_file(&other);
    }
    crate::state::write_atomic(&path, state_dir.as_os_str().as_bytes()).map_err(NetworkError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets() {
        let s: Subnet = "10.20.30.0/24".parse().unwrap();
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 20, 30, 1));
        assert!(s.usable(Ipv4Addr::new(10, 20, 30, 2)));
        assert!(!s.usable(Ipv4Addr::new(10, 20, 30, 1)));
        assert!(!s.usable(Ipv4Addr::new(10, 20, 30, 255)));
        assert!(!s.usable(Ipv4Addr::new(10, 20, 31, 5)));
        assert_eq!(s.legacy_bridge(), "envup0a141e00");
        for special in [
            "127.0.0.0/16",
            "0.0.0.0/16",
            "169.254.3.0/24",
            "224.1.0.0/16",
            "239.0.0.0/24",
            "255.255.255.0/24",
        ] {
            assert!(special.parse::<Subnet>().is_err(), "{special}");
        }
        assert!(bridge_of(Path::new("/a")).len() <= 15);
        assert_ne!(bridge_of(Path::new("/a")), bridge_of(Path::new("/b")));
        assert!(s.overlaps(&"10.20.0.0/16".parse().unwrap()));
        assert!(!s.overlaps(&"10.20.31.0/24".parse().unwrap()));
        assert!(
            "10.20.30.1/24"
                .parse::<Subnet>()
                .unwrap_err()
                .contains("host bits")
        );
        assert!("10.20.30.0/8".parse::<Subnet>().is_err());
        assert!("10.20.30.0/+4".parse::<Subnet>().is_err());
        assert!("10.20.30.0".parse::<Subnet>().is_err());
        assert_eq!(
            Subnet::around(Ipv4Addr::new(192, 168, 56, 10)).to_string(),
            "192.168.56.0/24"
        );
        let small: Subnet = "10.0.0.0/29".parse().unwrap();
        assert_eq!(small.machine_addresses().count(), 5);
    }

    #[test]
    fn routes_from_proc() {
        let text = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                    eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                    docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n";
        let r = parse_routes(text);
        assert_eq!(
            r,
            vec![("172.17.0.0/16".parse().unwrap(), "docker0".to_owned())]
        );
        let inside: Subnet = "172.17.5.0/24".parse().unwrap();
        assert_eq!(
            route_overlapping(&inside, &r).unwrap(),
            "172.17.0.0/16 on docker0"
        );
        assert!(route_overlapping(&"10.1.0.0/24".parse().unwrap(), &r).is_none());
    }

    #[test]
    fn damaged_records_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let write = |t: &str| std::fs::write(Record::path(dir.path()), t).unwrap();
        write(r#"{"version":1,"subnet":"10.1.2.0/24","machines":{"web":"10.1.2.2"}}"#);
        assert!(Record::load(dir.path()).unwrap().is_some());
        for bad in [
            r#"{"version":1,"subnet":"10.1.2.0/24","machines":{"web":"10.1.3.2"}}"#,
            r#"{"version":1,"subnet":"10.1.2.0/24","machines":{"web":"10.1.2.1"}}"#,
            r#"{"version":1,"subnet":"10.1.2.0/24","machines":{"a":"10.1.2.2","b":"10.1.2.2"}}"#,
            r#"{"version":1,"subnet":"10.1.2.0/24","machines":{"../x":"10.1.2.2"}}"#,
            r#"{"version":1,"subnet":"10.1.2.1/24","machines":{}}"#,
            r#"{"version":2,"subnet":"10.1.2.0/24","machines":{}}"#,
        ] {
            write(bad);
            let e = Record::load(dir.path()).unwrap_err().to_string();
            assert!(e.contains("is damaged"), "{bad}: {e}");
        }
    }
}
