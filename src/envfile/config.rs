//! The validated Envfile: runtime types with every default applied.
//! Nothing here can be invalid; `validate` is the only way to build one.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

pub use super::schema::{Protocol, RunPolicy};
pub use crate::backend::BackendName;

#[derive(Debug, Clone)]
pub struct Config {
    /// The Envfile.
    pub path: PathBuf,
    /// The directory holding it; relative paths in the Envfile start here.
    pub root: PathBuf,
    pub project: String,
    /// The project network the Envfile asks for.
    pub network: ProjectNetwork,
    /// Machines in the order the Envfile names them.
    pub machines: IndexMap<String, Machine>,
}

impl Config {
    pub fn machine_names(&self) -> impl Iterator<Item = &str> {
        self.machines.keys().map(String::as_str)
    }

    /// The machine `envup ssh` uses when none is named.
    pub fn primary(&self) -> Option<&Machine> {
        self.machines
            .values()
            .find(|m| m.primary)
            .or_else(|| (self.machines.len() == 1).then(|| &self.machines[0]))
    }
}

/// The project network the Envfile asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProjectNetwork {
    /// envup picks a subnet (no `[project] network`, no `address`).
    Pick,
    /// `[project] network`, or the /24 of the machines' `address`es.
    Subnet(crate::network::Subnet),
    /// `[project] network = "none"`: no project network.
    None,
}

/// A machine with `[defaults]` merged in.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub name: String,
    #[serde(rename = "box")]
    pub box_: String,
    #[serde(serialize_with = "ser_display_opt")]
    pub box_version: Option<semver::VersionReq>,
    pub backend: BackendName,
    pub cpus: u32,
    pub memory: Size,
    pub disk: Size,
    pub hostname: String,
    /// The machine's address on the project network, when the Envfile
    /// gives one.
    pub address: Option<std::net::Ipv4Addr>,
    pub depends_on: Vec<String>,
    pub autostart: bool,
    pub primary: bool,
    pub forwards: Vec<Forward>,
    pub shares: Vec<Share>,
    pub env: IndexMap<String, String>,
    #[serde(serialize_with = "ser_duration")]
    pub boot_timeout: Duration,
    #[serde(skip)]
    pub provisioners: Vec<Provisioner>,
    /// The machine's table for each backend that has one
    /// (`[machines.NAME.<backend>]` over `[defaults.<backend>]`, key by
    /// key), checked by that backend; a backend reads its own with
    /// `backend::options` (a machine handed to another backend is run with
    /// that backend's table).
    pub options: IndexMap<String, toml::Table>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forward {
    pub guest: u16,
    pub host: u16,
    pub host_ip: IpAddr,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    /// Absolute host path.
    #[serde(with = "crate::state::bytes::path")]
    pub host: PathBuf,
    pub guest: String,
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provisioner {
    pub name: String,
    pub kind: ProvisionKind,
    pub run: RunPolicy,
    /// The machine's env with the provisioner's own on top.
    pub env: IndexMap<String, String>,
    pub privileged: bool,
    pub template: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProvisionKind {
    /// An inline script, run by `/bin/sh -e`.
    Shell { inline: String, args: Vec<String> },
    /// A host script (absolute path), uploaded and run.
    Script { path: PathBuf, args: Vec<String> },
    /// A host file or directory (absolute path) uploaded to `to`.
    File { src: PathBuf, to: String },
}

impl ProvisionKind {
    /// The host file or directory it reads, if any.
    pub fn host_path(&self) -> Option<&std::path::Path> {
        match self {
            Self::Shell { .. } => None,
            Self::Script { path, .. } => Some(path),
            Self::File { src, .. } => Some(src),
        }
    }

    pub fn word(&self) -> &'static str {
        match self {
            Self::Shell { .. } => "shell",
            Self::Script { .. } => "script",
            Self::File { .. } => "file",
        }
    }
}

/// A size in bytes, written with a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

impl Size {
    pub const KIB: u64 = 1024;
    pub const MIB: u64 = 1024 * 1024;
    pub const GIB: u64 = 1024 * 1024 * 1024;

    pub fn bytes(self) -> u64 {
        self.0
    }

    /// Parse `"512MiB"`, `"1.5GiB"`, `"2GB"`, `"100B"`.
    pub fn parse(s: &str) -> Result<Size, String> {
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = (&t[..split], t[split..].trim());
        if num.is_empty() {
            return Err(format!("`{s}` is not a size: it must start with a number"));
        }
        let mult: u64 = match unit.to_ascii_lowercase().as_str() {
            "b" => 1,
            "kib" => 1 << 10,
            "mib" => 1 << 20,
            "gib" => 1 << 30,
            "tib" => 1 << 40,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "tb" => 1_000_000_000_000,
            "" => {
                return Err(format!(
                    "`{s}` has no unit: write it with one of B, KiB, MiB, GiB, KB, MB, GB (for example \"{num}MiB\")"
                ));
            }
            _ => {
                return Err(format!(
                    "`{unit}` in `{s}` is not a size unit: use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB"
                ));
            }
        };
        let value: f64 = num
            .parse()
            .map_err(|_| format!("`{num}` in `{s}` is not a number"))?;
        let bytes = value * mult as f64;
        if !bytes.is_finite() || bytes >= u64::MAX as f64 {
            return Err(format!("`{s}` is too large"));
        }
        Ok(Size(bytes.round() as u64))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        // The unit that writes it exactly with the smallest number.
        let units = [
            ("TiB", 1u64 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
            ("TB", 1_000_000_000_000),
            ("GB", 1_000_000_000),
            ("MB", 1_000_000),
            ("KB", 1_000),
        ];
        let best = units
            .iter()
            .filter(|(_, m)| b >= *m && b.is_multiple_of(*m))
            .min_by_key(|(_, m)| b / m);
        match best {
            Some((unit, m)) => write!(f, "{}{unit}", b / m),
            None => write!(f, "{b}B"),
        }
    }
}

impl Serialize for Size {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Parse `"120s"`, `"2m"`, `"1m30s"`, `"500ms"`, `"1h"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("an empty string is not a duration".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let split = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if split == 0 {
            return Err(format!(
                "`{s}` is not a duration: write it like \"90s\", \"2m\" or \"1m30s\""
            ));
        }
        let too_large = || format!("`{s}` is too large: envup waits at most 30 days");
        let n: u64 = rest[..split].parse().map_err(|_| too_large())?;
        rest = &rest[split..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let secs = |per: u64| n.checked_mul(per).map(Duration::from_secs);
        let d = match unit {
            "ms" => Some(Duration::from_millis(n)),
            "s" => secs(1),
            "m" => secs(60),
            "h" => secs(3600),
            "" => {
                return Err(format!(
                    "`{s}` needs a unit: ms, s, m or h (for example \"{n}s\")"
                ));
            }
            other => {
                return Err(format!(
                    "`{other}` in `{s}` is not a duration unit: use ms, s, m or h"
                ));
            }
        };
        total = d
            .and_then(|d| total.checked_add(d))
            .filter(|t| *t <= MAX_DURATION)
            .ok_or_else(too_large)?;
    }
    Ok(total)
}

/// The longest duration an Envfile may give: deadlines are added to the
/// clock, and nobody waits longer for a machine.
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let s = d.as_secs();
    match (s / 60, s % 60) {
        (0, s) => format!("{s}s"),
        (m, 0) => format!("{m}m"),
        (m, s) => format!("{m}m{s}s"),
    }
}

fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_duration(*d))
}

fn ser_display_opt<S: serde::Serializer, T: fmt::Display>(
    v: &Option<T>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(Size::parse("1GiB").unwrap().0, 1 << 30);
        assert_eq!(Size::parse("512 MiB").unwrap().0, 512 << 20);
        assert_eq!(Size::parse("1.5GiB").unwrap().0, 3 << 29);
        assert_eq!(Size::parse("2GB").unwrap().0, 2_000_000_000);
        assert_eq!(Size::parse("10kb").unwrap().0, 10_000);
        assert!(Size::parse("1024").unwrap_err().contains("no unit"));
        assert!(Size::parse("1GX").unwrap_err().contains("not a size unit"));
        assert!(
            Size::parse("GiB")
                .unwrap_err()
                .contains("start with a number")
        );
        assert!(Size::parse("1.2.3GiB").is_err());
        assert_eq!(Size(1 << 30).to_string(), "1GiB");
        assert_eq!(Size(2_000_000_000).to_string(), "2GB");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("120s").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("10").unwrap_err().contains("needs a unit"));
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("s").is_err());
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
    }
}
