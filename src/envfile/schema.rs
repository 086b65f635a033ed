//! The Envfile as the user writes it: serde types, every key optional where
//! `[defaults]` may supply it, unknown keys rejected.
//!
//! Values that need checking beyond their TOML type (sizes, ports, names)
//! are kept raw here and turned into runtime types by `validate`.

use indexmap::IndexMap;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEnvfile {
    #[serde(default)]
    pub project: RawProject,
    #[serde(default)]
    pub defaults: RawMachine,
    #[serde(default)]
    pub machines: IndexMap<String, RawMachine>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProject {
    pub name: Option<String>,
    /// The project network, `a.b.c.d/N`; checked by `validate`.
    pub network: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMachine {
    #[serde(rename = "box")]
    pub box_: Option<String>,
    pub box_version: Option<String>,
    pub backend: Option<String>,
    pub cpus: Option<i64>,
    pub memory: Option<String>,
    pub disk: Option<String>,
    pub hostname: Option<String>,
    /// The machine's address on the project network; checked by `validate`.
    pub address: Option<String>,
    pub depends_on: Option<Vec<String>>,
    pub autostart: Option<bool>,
    pub primary: Option<bool>,
    pub forward: Option<Vec<RawForward>>,
    pub share: Option<Vec<RawShare>>,
    pub env: Option<IndexMap<String, String>>,
    /// A duration string or a number of seconds; checked by `validate`.
    pub boot_timeout: Option<toml::Value>,
    pub provision: Option<Vec<RawProvision>>,
    /// Each backend's own table (`[machines.NAME.<backend>]`), taken out
    /// and checked by its backend before the rest is read.
    #[serde(skip)]
    pub backend_tables: IndexMap<String, toml::Table>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawForward {
    pub guest: i64,
    pub host: i64,
    pub host_ip: Option<String>,
    pub protocol: Option<Protocol>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// `tcp` or `udp`, as the Envfile, qemu and the engines spell it.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShare {
    pub host: String,
    pub guest: String,
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvision {
    pub name: Option<String>,
    pub shell: Option<String>,
    pub script: Option<String>,
    pub file: Option<String>,
    pub to: Option<String>,
    pub args: Option<Vec<String>>,
    pub env: Option<IndexMap<String, String>>,
    pub run: Option<RunPolicy>,
    pub privileged: Option<bool>,
    pub template: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunPolicy {
    #[default]
    Once,
    Always,
    Never,
}
