//! Backend plugins: a backend that is a separate program,
//! `envup-backend-NAME`, spoken to in the protocol of [`protocol`]. A plugin
//! found on the search path is one more entry in the registry; it is run
//! (`describe`) only when something needs more than its name.

pub mod protocol;
pub mod schema;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::{Map, Value, json};

use super::{Backend, BackendError, Check, VagrantProvider};
use crate::boxes::StoredBox;
use crate::envfile::Machine;
use crate::ssh::MachineKeys;
use crate::state::machine::SshEndpoint;
use crate::state::{MachineState, Status};
use protocol::{CallError, Description, PluginStatus};

/// The prefix of a plugin's file name.
pub const PREFIX: &str = "envup-backend-";

/// Where plugins are looked for, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// `ENVUP_PLUGIN_PATH`.
    PluginPath,
    /// `plugins/` under envup's data directory.
    DataDir,
    /// `PATH`.
    Path,
}

impl Source {
    pub fn label(self) -> &'static str {
        match self {
            Source::PluginPath => "ENVUP_PLUGIN_PATH",
            Source::DataDir => "envup's plugins directory",
            Source::Path => "PATH",
        }
    }
}

/// The directories searched, in order, each with where it came from.
pub fn search_dirs() -> Vec<(Source, PathBuf)> {
    let mut dirs = Vec::new();
    let split = |var: &str| {
        std::env::var_os(var)
            .map(|v| std::env::split_paths(&v).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    for d in split("ENVUP_PLUGIN_PATH") {
        dirs.push((Source::PluginPath, d));
    }
    if let Ok(home) = crate::state::envup_home() {
        dirs.push((Source::DataDir, home.join("plugins")));
    }
    for d in split("PATH") {
        dirs.push((Source::Path, d));
    }
    // Relative entries would depend on where envup runs; a directory
    // listed twice is searched once.
    let mut seen = std::collections::HashSet::new();
    dirs.retain(|(_, d)| d.is_absolute() && seen.insert(d.clone()));
    dirs
}

/// Where the search looked, for an error about a backend not found.
pub fn searched() -> String {
    let dirs: Vec<String> = search_dirs()
        .iter()
        .map(|(s, d)| format!("{} ({})", d.display(), s.label()))
        .collect();
    if dirs.is_empty() {
        "nowhere (no search path is set)".into()
    } else {
        dirs.join(", ")
    }
}

/// A plugin program found on the search path.
#[derive(Debug, Clone)]
pub struct Found {
    pub name: String,
    pub path: PathBuf,
    pub source: Source,
    /// Why envup does not run it, when it does not ([`strict_modes`]).
    pub refused: Option<String>,
}

/// Whether envup may run the program at `path`: it, and each directory
/// above it (after its symlinks), belong to root or to the user running
/// envup and can be written by nobody else. This is OpenSSH's StrictModes
/// rule: a program that another user can replace would run with envup's
/// privileges. Otherwise, why not.
pub fn strict_modes(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let real = std::fs::canonicalize(path).map_err(|e| format!("cannot resolve it: {e}"))?;
    let me = nix::unistd::geteuid().as_raw();
    for p in real.ancestors() {
        let md = std::fs::metadata(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        if md.uid() != 0 && md.uid() != me {
            return Err(format!(
                "{} belongs to uid {}, neither root nor the user running envup",
                p.display(),
                md.uid()
            ));
        }
        if md.mode() & 0o022 != 0 {
            return Err(format!(
                "{} can be written by {} (mode {:o})",
                p.display(),
                if md.mode() & 0o002 != 0 {
                    "every user"
                } else {
                    "its group"
                },
                md.mode() & 0o7777
            ));
        }
    }
    Ok(())
}

/// Every `envup-backend-NAME` executable on the search path, in search
/// order (a name found twice is listed twice; the first is the one used).
pub fn discover() -> Vec<Found> {
    let mut found = Vec::new();
    for (source, dir) in search_dirs() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut here: Vec<Found> = entries
            .flatten()
            .filter_map(|e| {
                let file = e.file_name();
                let name = file.to_str()?.strip_prefix(PREFIX)?;
                super::BackendName::new(name).ok()?;
                let path = dir.join(&file);
                is_executable(&path).then(|| Found {
                    name: name.to_owned(),
                    refused: strict_modes(&path).err(),
                    path,
                    source,
                })
            })
            .collect();
        here.sort_by(|a, b| a.name.cmp(&b.name));
        found.extend(here);
    }
    found
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// What envup made of a plugin's `describe`.
pub struct Described {
    pub description: Description,
    /// The protocol version both speak (the highest).
    pub protocol: u32,
    artifacts: &'static [&'static str],
    providers: &'static [VagrantProvider],
    restart_applies: &'static [&'static str],
}

/// A backend plugin, as a backend.
pub struct Plugin {
    name: &'static str,
    path: PathBuf,
    described: OnceLock<Result<Described, String>>,
}

/// A string that lives as long as envup: a plugin's words, kept once per
/// plugin and run (the registry's backends are all `'static`).
fn keep(s: &str) -> &'static str {
    Box::leak(s.to_owned().into_boxed_str())
}

impl Plugin {
    pub fn new(found: &Found) -> Self {
        Self {
            name: keep(&found.name),
            path: found.path.clone(),
            described: OnceLock::new(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The plugin's description, asked once.
    pub fn described(&self) -> Result<&Described, BackendError> {
        self.described
            .get_or_init(|| self.describe())
            .as_ref()
            .map_err(|message| BackendError::Plugin {
                plugin: self.name.to_owned(),
                path: self.path.clone(),
                message: message.clone(),
            })
    }

    fn describe(&self) -> Result<Described, String> {
        let request = json!({"envup": env!("CARGO_PKG_VERSION"), "protocols": protocol::PROTOCOLS});
        let v = protocol::call(
            &self.path,
            "describe",
            protocol::PROTOCOLS[protocol::PROTOCOLS.len() - 1],
            into_map(request),
            protocol::deadline("describe"),
        )
        .map_err(|e| e.to_string())?;
        let d: Description = serde_json::from_value(v)
            .map_err(|e| format!("its reply to `describe` is not the protocol's JSON ({e})"))?;
        if d.name != self.name {
            return Err(format!(
                "it calls itself `{}`, but its file name says `{}`",
                crate::ident::printable(&d.name),
                self.name
            ));
        }
        let protocol = d
            .protocols
            .iter()
            .copied()
            .filter(|p| protocol::PROTOCOLS.contains(p))
            .max()
            .ok_or_else(|| {
                format!(
                    "it speaks protocol {}; this envup speaks {}",
                    list(&d.protocols),
                    list(protocol::PROTOCOLS)
                )
            })?;
        if let Some(s) = &d.options_schema
            && !schema::well_formed(s)
        {
            return Err("its `options_schema` is not a JSON Schema object".into());
        }
        let strs = |v: &[String]| -> &'static [&'static str] {
            Box::leak(
                v.iter()
                    .map(|s| keep(s))
                    .collect::<Vec<_>>()
                    .into_boxed_slice(),
            )
        };
        let providers: Vec<VagrantProvider> = d
            .vagrant_providers
            .iter()
            .map(|p| VagrantProvider {
                name: keep(&p.name),
                artifact: keep(&p.artifact),
                user: keep(&p.user),
                first_login: None,
            })
            .collect();
        Ok(Described {
            artifacts: strs(&d.artifacts),
            providers: Box::leak(providers.into_boxed_slice()),
            restart_applies: strs(&d.restart_applies),
            protocol,
            description: d,
        })
    }

    /// Call `op` with `request`; its `ok` value, or the plugin's error in
    /// envup's words.
    fn call(&self, op: &str, request: Value) -> Result<Value, BackendError> {
        let protocol = self.described()?.protocol;
        self.run(op, protocol, request)
            .map_err(|e| self.error(op, e))
    }

    /// Call an operation a plugin need not have: None when it answers
    /// `unsupported`.
    fn call_optional(&self, op: &str, request: Value) -> Result<Option<Value>, BackendError> {
        let protocol = self.described()?.protocol;
        match self.run(op, protocol, request) {
            Ok(v) => Ok(Some(v)),
            Err(CallError::Fault(f)) if f.kind == "unsupported" => Ok(None),
            Err(e) => Err(self.error(op, e)),
        }
    }

    /// One request, in protocol version `protocol`, with its deadline.
    fn run(&self, op: &str, protocol: u32, request: Value) -> Result<Value, CallError> {
        protocol::call(
            &self.path,
            op,
            protocol,
            into_map(request),
            protocol::deadline(op),
        )
    }

    fn error(&self, op: &str, e: CallError) -> BackendError {
        if let CallError::Fault(f) = &e {
            match f.kind.as_str() {
                "not_running" => return BackendError::NotRunning,
                "unsupported" if op.starts_with("snapshot") => {
                    return BackendError::NoSnapshots(self.name);
                }
                _ => {}
            }
        }
        BackendError::Plugin {
            plugin: self.name.to_owned(),
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    /// A reply's value as `T`, or an error naming the plugin.
    fn reply<T: serde::de::DeserializeOwned>(&self, op: &str, v: Value) -> Result<T, BackendError> {
        serde_json::from_value(v).map_err(|e| BackendError::Plugin {
            plugin: self.name.to_owned(),
            path: self.path.clone(),
            message: format!("its reply to `{op}` is not the protocol's JSON ({e})"),
        })
    }

    /// The directory the plugin keeps a machine's files in.
    fn dir(&self, state: &MachineState) -> Result<PathBuf, BackendError> {
        Ok(super::machine_dir(state)?.join("plugin"))
    }

    /// The box as the protocol describes it: its artifacts in the store,
    /// and its rootfs unpacked by envup for a plugin that runs `rootfs`.
    fn box_spec(
        &self,
        stored: &crate::boxes::StoredBox,
    ) -> Result<protocol::BoxSpec, BackendError> {
        let artifacts: std::collections::BTreeMap<String, PathBuf> = stored
            .manifest
            .artifacts
            .keys()
            .filter_map(|a| Some((a.clone(), stored.artifact(a)?)))
            .collect();
        let mut unpacked = std::collections::BTreeMap::new();
        if self.artifacts().contains(&"rootfs") && artifacts.contains_key("rootfs") {
            unpacked.insert("rootfs".to_owned(), super::rootfs::lower_dir(stored)?);
        }
        let formats = stored
            .manifest
            .artifacts
            .iter()
            .filter_map(|(a, art)| Some((a.clone(), art.format.clone()?)))
            .collect();
        Ok(protocol::BoxSpec {
            unpacked,
            formats,
            name: stored.manifest.name.clone(),
            version: stored.manifest.version.clone(),
            digest: stored.digest.to_string(),
            dir: stored.dir.clone(),
            user: stored.manifest.ssh_user.clone(),
            artifacts,
            boot: stored
                .manifest
                .boot
                .as_ref()
                .and_then(|b| serde_json::to_value(b).ok()),
        })
    }

    /// The box the machine was made from, from the store (never a path
    /// the plugin kept): what `start` and `snapshot_restore` run on.
    fn box_of(&self, state: &MachineState) -> Result<Value, BackendError> {
        let spec = self.box_spec(&super::stored_box(state)?)?;
        Ok(serde_json::to_value(spec).expect("JSON"))
    }

    /// What every call about an existing machine carries: among it the
    /// name envup gives the machine on the host, which a plugin names
    /// what it makes there with (the same for the machine's whole life).
    fn about(&self, state: &MachineState) -> Result<Map<String, Value>, BackendError> {
        Ok(into_map(json!({
            "name": state.name,
            "host_name": super::host_name(state, "plugin")?,
            "dir": self.dir(state)?,
            "id": state.id,
            "ssh": state.ssh.as_ref().map(|s| json!({"host": s.host, "port": s.port, "user": s.user})),
        })))
    }

    fn machine(&self, m: &Machine) -> Value {
        let options = m
            .options
            .get(self.name)
            .and_then(|t| serde_json::to_value(t).ok())
            .unwrap_or_else(|| json!({}));
        let spec = protocol::MachineSpec {
            name: m.name.clone(),
            hostname: m.hostname.clone(),
            cpus: m.cpus,
            memory: m.memory.bytes(),
            disk: m.disk.bytes(),
            forwards: m
                .forwards
                .iter()
                .map(|f| protocol::ForwardSpec {
                    guest: f.guest,
                    host: f.host,
                    host_ip: f.host_ip.to_string(),
                    protocol: serde_json::to_value(f.protocol)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                })
                .collect(),
            shares: m
                .shares
                .iter()
                .map(|s| protocol::ShareSpec {
                    host: s.host.clone(),
                    guest: s.guest.clone(),
                    read_only: s.read_only,
                })
                .collect(),
            options,
        };
        serde_json::to_value(spec).expect("JSON encodes")
    }

    /// Take what `create` or `start` answered into the state: the id and
    /// SSH endpoint, each checked (a plugin's words are not trusted to be
    /// well formed).
    fn take(&self, op: &str, v: Value, state: &mut MachineState) -> Result<(), BackendError> {
        let made: protocol::Made = self.reply(op, v)?;
        let bad = |what: String| BackendError::Plugin {
            plugin: self.name.to_owned(),
            path: self.path.clone(),
            message: format!("its reply to `{op}` has {what}"),
        };
        if let Some(id) = made.id {
            if id.len() > 512 || id.chars().any(char::is_control) {
                return Err(bad(
                    "an `id` that is too long or has control characters".into()
                ));
            }
            state.id = Some(id);
        }
        if let Some(ssh) = made.ssh {
            if ssh.host.parse::<std::net::IpAddr>().is_err() {
                return Err(bad(format!(
                    "`ssh.host` `{}`, which is not an IP address",
                    crate::ident::printable(&ssh.host)
                )));
            }
            if ssh.port == 0 || !crate::ident::is_user_name(&ssh.user) {
                return Err(bad(
                    "an `ssh` port of 0 or a user name that is not one".into()
                ));
            }
            state.ssh = Some(SshEndpoint {
                host: ssh.host,
                port: ssh.port,
                user: ssh.user,
            });
        }
        Ok(())
    }
}

fn into_map(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn list(ps: &[u32]) -> String {
    ps.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
}

impl Backend for Plugin {
    fn name(&self) -> &'static str {
        self.name
    }

    fn artifacts(&self) -> &'static [&'static str] {
        self.described().map_or(&[], |d| d.artifacts)
    }

    fn vagrant_providers(&self) -> &'static [VagrantProvider] {
        self.described().map_or(&[], |d| d.providers)
    }

    fn ready(&self) -> Result<(), BackendError> {
        self.described().map(|_| ())
    }

    fn probe(&self) -> (bool, Vec<Check>) {
        let d = match self.described() {
            Ok(d) => d,
            Err(e) => {
                return (
                    false,
                    vec![Check::missing(
                        "plugin",
                        e.to_string(),
                        "fix or remove the plugin (`envup plugin list` shows where it is)",
                    )],
                );
            }
        };
        let mut checks = vec![Check::ok(
            "plugin",
            format!(
                "{} {}, protocol {}",
                self.path.display(),
                crate::ident::printable(&d.description.version),
                d.protocol
            ),
        )];
        match self
            .call("probe", json!({}))
            .and_then(|v| self.reply::<protocol::Probe>("probe", v))
        {
            Ok(p) => {
                checks.extend(p.checks.into_iter().map(|c| Check {
                    what: c.what,
                    ok: c.ok,
                    detail: c.detail,
                    fix: c.fix,
                }));
                (p.ready, checks)
            }
            Err(e) => {
                checks.push(Check::missing("probe", e.to_string(), "fix the plugin"));
                (false, checks)
            }
        }
    }

    fn check_options(&self, table: toml::de::ValueDeserializer<'_>) -> Result<(), toml::de::Error> {
        use serde::de::Error;
        let d = self
            .described()
            .map_err(|e| toml::de::Error::custom(e.to_string()))?;
        match &d.description.options_schema {
            Some(s) => schema::check(s, table),
            None => Ok(()),
        }
    }

    fn check(&self, m: &Machine) -> Result<(), BackendError> {
        self.call_optional("check", json!({"machine": self.machine(m)}))
            .map(|_| ())
    }

    fn create(
        &self,
        m: &Machine,
        stored: &StoredBox,
        keys: &MachineKeys,
        state: &mut MachineState,
    ) -> Result<(), BackendError> {
        let dir = self.dir(state)?;
        crate::state::create_private_dir(&dir).map_err(super::io_err("create", &dir))?;
        let boxed = self.box_spec(stored)?;
        let keys = protocol::KeySpec {
            authorized_key: keys.authorized_key(),
            host_key: keys.host_private_pem(),
            host_public_key: keys
                .host_public()
                .to_openssh()
                .expect("ed25519 public keys encode"),
        };
        let mut request = self.about(state)?;
        request.insert("machine".into(), self.machine(m));
        request.insert("box".into(), serde_json::to_value(boxed).expect("JSON"));
        request.insert("keys".into(), serde_json::to_value(keys).expect("JSON"));
        request.insert("ssh_port".into(), super::ssh_port()?.into());
        let v = self.call("create", Value::Object(request))?;
        self.take("create", v, state)
    }

    fn start(&self, m: &Machine, state: &mut MachineState) -> Result<(), BackendError> {
        let mut request = self.about(state)?;
        request.insert("machine".into(), self.machine(m));
        request.insert("box".into(), self.box_of(state)?);
        let v = self.call("start", Value::Object(request))?;
        self.take("start", v, state)
    }

    fn restart_applies(&self) -> &'static [&'static str] {
        self.described().map_or(&[], |d| d.restart_applies)
    }

    fn stop(&self, state: &MachineState, force: bool) -> Result<(), BackendError> {
        let mut request = self.about(state)?;
        request.insert("force".into(), force.into());
        self.call("stop", Value::Object(request)).map(|_| ())
    }

    fn destroy(&self, state: &MachineState) -> Result<(), BackendError> {
        self.call("destroy", Value::Object(self.about(state)?))
            .map(|_| ())
    }

    fn status(&self, state: &MachineState) -> Result<Status, BackendError> {
        let v = self.call("status", Value::Object(self.about(state)?))?;
        let s: protocol::StatusReply = self.reply("status", v)?;
        Ok(match s.status {
            PluginStatus::Running => Status::Running,
            PluginStatus::Stopped => Status::Stopped,
            PluginStatus::NotCreated => Status::NotCreated,
        })
    }

    fn last_words(&self, state: &MachineState) -> Option<String> {
        let v = self
            .call_optional("last_words", Value::Object(self.about(state).ok()?))
            .ok()??;
        let text = v.get("text")?.as_str()?;
        Some(crate::ident::printable(text).into_owned())
    }

    fn snapshot_save(&self, state: &MachineState, name: &str) -> Result<(), BackendError> {
        let mut request = self.about(state)?;
        request.insert("snapshot".into(), name.into());
        self.call("snapshot_save", Value::Object(request))
            .map(|_| ())
    }

    fn snapshot_restore(
        &self,
        m: &Machine,
        state: &mut MachineState,
        name: &str,
    ) -> Result<(), BackendError> {
        let mut request = self.about(state)?;
        request.insert("snapshot".into(), name.into());
        request.insert("machine".into(), self.machine(m));
        request.insert("box".into(), self.box_of(state)?);
        let v = self.call("snapshot_restore", Value::Object(request))?;
        self.take("snapshot_restore", v, state)
    }

    fn snapshot_list(&self, state: &MachineState) -> Result<Vec<String>, BackendError> {
        let v = self.call("snapshot_list", Value::Object(self.about(state)?))?;
        #[derive(serde::Deserialize)]
        struct Names {
            snapshots: Vec<String>,
        }
        let names: Names = self.reply("snapshot_list", v)?;
        Ok(names.snapshots)
    }

    fn snapshot_delete(&self, state: &MachineState, name: &str) -> Result<(), BackendError> {
        let mut request = self.about(state)?;
        request.insert("snapshot".into(), name.into());
        self.call("snapshot_delete", Value::Object(request))
            .map(|_| ())
    }
}
