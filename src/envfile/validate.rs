//! From the raw Envfile to a `Config`: defaults merged into machines, every
//! value checked, every problem collected with the path of the value at
//! fault so it can be shown at its line.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use indexmap::IndexMap;

use super::config::{
    BackendName, Config, Forward, Machine, ProjectNetwork, ProvisionKind, Provisioner, Share, Size,
    parse_duration,
};
use super::diag::{KeyPath, Problem, Spans, did_you_mean};
use super::schema::{Protocol, RawEnvfile, RawForward, RawMachine, RawProvision, RawShare};
use crate::backend::Registry;

pub const DEFAULT_CPUS: u32 = 1;
pub const DEFAULT_MEMORY: Size = Size(Size::GIB);
pub const DEFAULT_DISK: Size = Size(8 * Size::GIB);
pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(120);
const MIN_MEMORY: Size = Size(32 * Size::MIB);
const MIN_DISK: Size = Size(64 * Size::MIB);
const MAX_CPUS: i64 = 1024;

struct Ctx<'a> {
    spans: &'a Spans<'a>,
    registry: &'a Registry,
    root: &'a Path,
    problems: Vec<Problem>,
}

impl Ctx<'_> {
    fn at_value(&mut self, path: &KeyPath, message: String, help: Option<String>) {
        let span = self.spans.value(path);
        self.push(Problem {
            message,
            span,
            help,
        });
    }

    fn at_key(&mut self, path: &KeyPath, message: String, help: Option<String>) {
        let span = self.spans.key(path);
        self.push(Problem {
            message,
            span,
            help,
        });
    }

    /// Problems in `[defaults]` are found once per machine; keep one.
    fn push(&mut self, p: Problem) {
        if !self
            .problems
            .iter()
            .any(|q| q.span == p.span && q.message == p.message)
        {
            self.problems.push(p);
        }
    }
}

/// A value and where it was written (in the machine or in `[defaults]`).
fn pick<'a, T>(
    m: &'a Option<T>,
    d: &'a Option<T>,
    mpath: &KeyPath,
    dpath: &KeyPath,
    key: &str,
) -> Option<(&'a T, KeyPath)> {
    match (m, d) {
        (Some(v), _) => Some((v, mpath.key(key))),
        (None, Some(v)) => Some((v, dpath.key(key))),
        (None, None) => None,
    }
}

/// List items from `[defaults]` first, then the machine's, each with its path.
fn concat<'a, T>(
    m: &'a Option<Vec<T>>,
    d: &'a Option<Vec<T>>,
    mpath: &KeyPath,
    dpath: &KeyPath,
    key: &str,
) -> Vec<(&'a T, KeyPath)> {
    let from = |list: &'a Option<Vec<T>>, base: &KeyPath| -> Vec<(&'a T, KeyPath)> {
        list.iter()
            .flatten()
            .enumerate()
            .map(|(i, v)| (v, base.key(key).idx(i)))
            .collect()
    };
    let mut out = from(d, dpath);
    out.extend(from(m, mpath));
    out
}

pub fn valid_machine_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && name.len() <= 63
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn valid_project_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && name.len() <= 63
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

/// A project name made from a directory name.
pub fn project_name_from_dir(dir: &str) -> String {
    let mut s: String = dir
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    s = s.trim_start_matches(['-', '_', '.']).to_owned();
    s.truncate(63);
    if s.is_empty() { "project".into() } else { s }
}

pub fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

fn valid_env_name(k: &str) -> bool {
    let mut chars = k.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

pub fn validate(
    raw: &RawEnvfile,
    spans: &Spans<'_>,
    path: &Path,
    root: &Path,
    registry: &Registry,
) -> Result<Config, Vec<Problem>> {
    let mut ctx = Ctx {
        spans,
        registry,
        root,
        problems: Vec::new(),
    };

    let project = match &raw.project.name {
        Some(name) if valid_project_name(name) => name.clone(),
        Some(name) => {
            ctx.at_value(
                &KeyPath::root().key("project").key("name"),
                format!("invalid project name `{name}`"),
                Some("use letters, digits, `-`, `_` and `.`, starting with a letter or digit (at most 63 characters)".into()),
            );
            String::new()
        }
        None => project_name_from_dir(
            &root
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        ),
    };

    if raw.machines.is_empty() {
        ctx.push(Problem {
            message: "the Envfile defines no machines".into(),
            span: None,
            help: Some(
                "add a machine, for example:\n\n    [machines.dev]\n    box = \"tiny\"\n".into(),
            ),
        });
    }

    let dpath = KeyPath::root().key("defaults");
    let mut machines = IndexMap::new();
    for (name, m) in &raw.machines {
        let mpath = KeyPath::root().key("machines").key(name);
        if !valid_machine_name(name) {
            ctx.at_key(
                &mpath,
                format!("invalid machine name `{name}`"),
                Some("use letters, digits, `-` and `_`, starting with a letter (at most 63 characters)".into()),
            );
        }
        if let Some(machine) = build_machine(&mut ctx, name, m, &raw.defaults, &mpath, &dpath) {
            machines.insert(name.clone(), machine);
        }
    }

    let npath = KeyPath::root().key("project").key("network");
    let network = match raw.project.network.as_deref() {
        Some("none") => ProjectNetwork::None,
        Some(n) => match n.parse::<crate::network::Subnet>() {
            Ok(s) => ProjectNetwork::Subnet(s),
            Err(e) => {
                ctx.at_value(
                    &npath,
                    e,
                    Some("a private network such as \"10.20.0.0/24\", or \"none\"".into()),
                );
                ProjectNetwork::Pick
            }
        },
        None => ProjectNetwork::Pick,
    };

    let mut network_at = network;
    if ctx.problems.is_empty() {
        check_across_machines(&mut ctx, raw, &machines, &dpath);
        network_at = check_addresses(&mut ctx, network, &machines);
    }

    if ctx.problems.is_empty() {
        Ok(Config {
            path: path.to_owned(),
            root: root.to_owned(),
            project,
            network: network_at,
            machines,
        })
    } else {
        Err(ctx.problems)
    }
}

fn build_machine(
    ctx: &mut Ctx<'_>,
    name: &str,
    m: &RawMachine,
    d: &RawMachine,
    mpath: &KeyPath,
    dpath: &KeyPath,
) -> Option<Machine> {
    let before = ctx.problems.len();

    let box_ = match pick(&m.box_, &d.box_, mpath, dpath, "box") {
        Some((b, p)) if b.trim().is_empty() => {
            ctx.at_value(
                &p,
                "`box` is empty".into(),
                Some("name a box from a catalog, or a path or URL to a .box file".into()),
            );
            String::new()
        }
        Some((b, _)) => b.clone(),
        None => {
            ctx.at_key(
                mpath,
                format!("machine `{name}` has no `box`"),
                Some(format!(
                    "set `box = \"…\"` in [machines.{name}] or in [defaults]"
                )),
            );
            String::new()
        }
    };

    let box_version = match pick(&m.box_version, &d.box_version, mpath, dpath, "box_version") {
        Some((v, p)) => match semver::VersionReq::parse(v) {
            Ok(req) => Some(req),
            Err(e) => {
                ctx.at_value(
                    &p,
                    format!("`{v}` is not a version requirement: {e}"),
                    Some("write it like \">=12.0, <13\" or \"~12.8\"".into()),
                );
                None
            }
        },
        None => None,
    };

    let backend = match pick(&m.backend, &d.backend, mpath, dpath, "backend") {
        Some((b, p)) => ctx.registry.find(b).unwrap_or_else(|| {
            let names = ctx.registry.names();
            // A plugin of that name envup will not run says why.
            if let Some(f) = crate::backend::plugin::discover()
                .into_iter()
                .find(|f| f.name == *b && f.refused.is_some())
            {
                ctx.at_value(
                    &p,
                    format!(
                        "backend plugin `{b}` ({}): envup does not run it: {}",
                        f.path.display(),
                        f.refused.unwrap_or_default()
                    ),
                    Some(
                        "give the plugin and its directories to root or to you, writable by no \
                         one else"
                            .into(),
                    ),
                );
                return ctx.registry.default_backend();
            }
            let help = match did_you_mean(b, names.iter().copied()) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!(
                    "the backends are {}; no plugin `{}{b}` was found in {}",
                    names.join(", "),
                    crate::backend::plugin::PREFIX,
                    crate::backend::plugin::searched()
                ),
            };
            ctx.at_value(&p, format!("unknown backend `{b}`"), Some(help));
            ctx.registry.default_backend()
        }),
        None => ctx.registry.default_backend(),
    };
    let backend = BackendName::of(backend);

    let cpus = match pick(&m.cpus, &d.cpus, mpath, dpath, "cpus") {
        Some((&c, p)) if !(1..=MAX_CPUS).contains(&c) => {
            ctx.at_value(
                &p,
                format!("`cpus = {c}` is out of range"),
                Some(format!("use a whole number from 1 to {MAX_CPUS}")),
            );
            DEFAULT_CPUS
        }
        Some((&c, _)) => c as u32,
        None => DEFAULT_CPUS,
    };

    let mut size =
        |key: &str, raw_m: &Option<String>, raw_d: &Option<String>, default: Size, min: Size| {
            match pick(raw_m, raw_d, mpath, dpath, key) {
                Some((s, p)) => match Size::parse(s) {
                    Ok(v) if v < min => {
                        ctx.at_value(
                            &p,
                            format!("`{key} = \"{s}\"` is too small"),
                            Some(format!("a machine needs at least {min}")),
                        );
                        default
                    }
                    Ok(v) => v,
                    Err(e) => {
                        ctx.at_value(&p, format!("bad size for `{key}`: {e}"), None);
                        default
                    }
                },
                None => default,
            }
        };
    let memory = size("memory", &m.memory, &d.memory, DEFAULT_MEMORY, MIN_MEMORY);
    let disk = size("disk", &m.disk, &d.disk, DEFAULT_DISK, MIN_DISK);

    let hostname = match pick(&m.hostname, &d.hostname, mpath, dpath, "hostname") {
        Some((h, p)) if !valid_hostname(h) => {
            ctx.at_value(&p, format!("invalid hostname `{h}`"), Some("a hostname is dot-separated labels of letters, digits and `-`, each 1 to 63 characters, not starting or ending with `-`".into()));
            String::new()
        }
        Some((h, _)) => h.clone(),
        None => name.replace('_', "-").to_ascii_lowercase(),
    };

    let depends_on = pick(&m.depends_on, &d.depends_on, mpath, dpath, "depends_on")
        .map(|(v, _)| v.clone())
        .unwrap_or_default();
    let autostart = m.autostart.or(d.autostart).unwrap_or(true);
    let primary = m.primary.unwrap_or(false);
    if d.primary.is_some() {
        ctx.at_key(
            &dpath.key("primary"),
            "`primary` cannot stand in [defaults]".into(),
            Some("only one machine can be primary: set it on that machine".into()),
        );
    }

    let mut forwards = Vec::new();
    for (f, p) in concat(&m.forward, &d.forward, mpath, dpath, "forward") {
        if let Some(fw) = check_forward(ctx, f, &p) {
            if let Some(prev) = forwards
                .iter()
                .position(|o: &Forward| o.guest == fw.guest && o.protocol == fw.protocol)
            {
                ctx.at_value(
                    &p.key("guest"),
                    format!(
                        "guest port {} of machine `{name}` is forwarded twice",
                        fw.guest
                    ),
                    Some(format!(
                        "it is already forwarded to host port {}",
                        forwards[prev].host
                    )),
                );
            }
            forwards.push(fw);
        }
    }

    let shares = concat(&m.share, &d.share, mpath, dpath, "share")
        .into_iter()
        .filter_map(|(s, p)| check_share(ctx, s, &p))
        .collect();

    let mut env = IndexMap::new();
    for (src, base) in [(&d.env, dpath), (&m.env, mpath)] {
        for (k, v) in src.iter().flatten() {
            if !valid_env_name(k) {
                ctx.at_key(
                    &base.key("env").key(k),
                    format!("`{k}` is not a valid environment variable name"),
                    Some("use letters, digits and `_`, not starting with a digit".into()),
                );
            }
            env.insert(k.clone(), v.clone());
        }
    }

    let boot_timeout = match pick(
        &m.boot_timeout,
        &d.boot_timeout,
        mpath,
        dpath,
        "boot_timeout",
    ) {
        Some((v, p)) => {
            let parsed = match v {
                toml::Value::Integer(n) if *n > 0 => Ok(Duration::from_secs(*n as u64)),
                toml::Value::Integer(n) => {
                    Err(format!("`boot_timeout = {n}` must be more than zero"))
                }
                toml::Value::String(s) => parse_duration(s).and_then(|d| {
                    if d.is_zero() {
                        Err("`boot_timeout` must be more than zero".into())
                    } else {
                        Ok(d)
                    }
                }),
                other => Err(format!(
                    "`boot_timeout` must be a duration such as \"120s\", not {}",
                    other.type_str()
                )),
            };
            parsed.unwrap_or_else(|e| {
                ctx.at_value(&p, e, None);
                DEFAULT_BOOT_TIMEOUT
            })
        }
        None => DEFAULT_BOOT_TIMEOUT,
    };

    let mut provisioners: Vec<Provisioner> = Vec::new();
    for (n, (pr, p)) in concat(&m.provision, &d.provision, mpath, dpath, "provision")
        .into_iter()
        .enumerate()
    {
        if let Some(prov) = check_provision(ctx, pr, &p, n + 1, &env) {
            if provisioners.iter().any(|o| o.name == prov.name) {
                ctx.at_value(
                    &p.key("name"),
                    format!(
                        "machine `{name}` has two provisioners named `{}`",
                        prov.name
                    ),
                    Some("provisioner names must be unique within a machine".into()),
                );
            }
            provisioners.push(prov);
        }
    }

    // The backend's table: the machine's keys over `[defaults]`' (each
    // table was checked by its backend as the Envfile was read).
    let mut options: IndexMap<String, toml::Table> = d.backend_tables.clone();
    for (b, own) in &m.backend_tables {
        options.entry(b.clone()).or_default().extend(own.clone());
    }

    if let Some(p) = d.address.as_ref().map(|_| dpath.key("address")) {
        ctx.at_key(
            &p,
            "`address` cannot be a default: each machine has its own".into(),
            Some("move `address` into each `[machines.NAME]` table".into()),
        );
    }
    let address = match &m.address {
        Some(a) => match a.parse::<std::net::Ipv4Addr>() {
            Ok(a) => Some(a),
            Err(_) => {
                ctx.at_value(
                    &mpath.key("address"),
                    format!("`{a}` is not an IPv4 address"),
                    Some("write an address like \"10.20.0.10\" on the project network".into()),
                );
                None
            }
        },
        None => None,
    };

    (ctx.problems.len() == before).then(|| Machine {
        name: name.to_owned(),
        box_,
        box_version,
        backend,
        cpus,
        memory,
        disk,
        hostname,
        address,
        depends_on,
        autostart,
        primary,
        forwards,
        shares,
        env,
        boot_timeout,
        provisioners,
        options,
    })
}

fn check_port(ctx: &mut Ctx<'_>, v: i64, p: &KeyPath, what: &str) -> Option<u16> {
    match u16::try_from(v) {
        Ok(port) if port > 0 => Some(port),
        _ => {
            ctx.at_value(
                p,
                format!("{what} port {v} is out of range"),
                Some("ports run from 1 to 65535".into()),
            );
            None
        }
    }
}

fn check_forward(ctx: &mut Ctx<'_>, f: &RawForward, p: &KeyPath) -> Option<Forward> {
    let guest = check_port(ctx, f.guest, &p.key("guest"), "guest");
    let host = check_port(ctx, f.host, &p.key("host"), "host");
    let host_ip = match &f.host_ip {
        Some(ip) => match ip.parse::<IpAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                ctx.at_value(
                    &p.key("host_ip"),
                    format!("`{ip}` is not an IP address"),
                    Some("use an address such as \"127.0.0.1\" or \"0.0.0.0\"".into()),
                );
                None
            }
        },
        None => Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    };
    Some(Forward {
        guest: guest?,
        host: host?,
        host_ip: host_ip?,
        protocol: f.protocol.unwrap_or(Protocol::Tcp),
    })
}

/// envup's state a share of `host` would show a machine: `ENVUP_HOME`
/// (every project's state, the store) or the host-wide claims under
/// `/var/lib/envup`, when `host` is one of them or holds one.
fn covers_state(host: &Path) -> Option<std::path::PathBuf> {
    let host = std::fs::canonicalize(host).ok()?;
    let home = crate::state::envup_home().ok();
    [home, Some(std::path::PathBuf::from("/var/lib/envup"))]
        .into_iter()
        .flatten()
        .map(|p| std::fs::canonicalize(&p).unwrap_or(p))
        .find(|p| p.starts_with(&host))
}

fn check_share(ctx: &mut Ctx<'_>, s: &RawShare, p: &KeyPath) -> Option<Share> {
    let host = ctx.root.join(&s.host);
    let mut ok = true;
    if !host.exists() {
        ctx.at_value(
            &p.key("host"),
            format!("shared folder `{}` does not exist", s.host),
            Some(format!("looked for {}", host.display())),
        );
        ok = false;
    }
    if !s.guest.starts_with('/') {
        ctx.at_value(
            &p.key("guest"),
            format!(
                "`guest = \"{}\"` must be an absolute path in the machine",
                s.guest
            ),
            None,
        );
        ok = false;
    } else if s.guest.split('/').any(|part| part == "..") || s.guest.chars().any(char::is_control) {
        ctx.at_value(
            &p.key("guest"),
            format!(
                "`guest = \"{}\"` may not contain `..` or control characters: a share is \
                 mounted at a path inside the machine",
                s.guest.escape_default()
            ),
            None,
        );
        ok = false;
    }
    if ok && let Some(state) = covers_state(&host) {
        ctx.at_value(
            &p.key("host"),
            format!(
                "shared folder `{}` holds envup's own state ({}), which no machine may see",
                s.host,
                state.display()
            ),
            Some("share a directory that holds none of ENVUP_HOME and /var/lib/envup".into()),
        );
        ok = false;
    }
    if s.host.chars().any(char::is_control) {
        ctx.at_value(
            &p.key("host"),
            format!(
                "`host = \"{}\"` may not contain control characters",
                s.host.escape_default()
            ),
            None,
        );
        ok = false;
    }
    // `/srv//app/.` is `/srv/app`.
    let guest = format!(
        "/{}",
        crate::contained::normalize(std::path::Path::new(&s.guest)).display()
    );
    ok.then(|| Share {
        host: host.canonicalize().unwrap_or(host),
        guest,
        read_only: s.read_only,
    })
}

fn check_provision(
    ctx: &mut Ctx<'_>,
    pr: &RawProvision,
    p: &KeyPath,
    n: usize,
    machine_env: &IndexMap<String, String>,
) -> Option<Provisioner> {
    let before = ctx.problems.len();
    let given: Vec<&str> = [
        ("shell", pr.shell.is_some()),
        ("script", pr.script.is_some()),
        ("file", pr.file.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, set)| set.then_some(k))
    .collect();
    if given.is_empty() {
        ctx.at_value(
            p,
            "a provisioner needs one of `shell`, `script` or `file`".into(),
            Some("for example `{ shell = \"apt-get install -y curl\" }`".into()),
        );
        return None;
    }
    if given.len() > 1 {
        ctx.at_key(&p.key(given[1]), format!("a provisioner takes only one of `shell`, `script` and `file`, but this one has `{}`", given.join("` and `")), Some("split it into two provisioners".into()));
        return None;
    }
    let kind = given[0];
    if kind == "file" {
        if pr.to.is_none() {
            ctx.at_value(
                p,
                "a `file` provisioner needs `to`, the path to upload to".into(),
                Some("for example `{ file = \"conf/app.conf\", to = \"/etc/app.conf\" }`".into()),
            );
        }
        if pr.args.is_some() {
            ctx.at_key(
                &p.key("args"),
                "`args` is for `shell` and `script` provisioners, not `file`".into(),
                None,
            );
        }
    } else if pr.to.is_some() {
        ctx.at_key(
            &p.key("to"),
            format!("`to` is only for `file` provisioners, not `{kind}`"),
            None,
        );
    }
    if let Some(name) = &pr.name
        && (name.is_empty() || name.chars().any(|c| c.is_whitespace() || c == ','))
    {
        ctx.at_value(
            &p.key("name"),
            format!("invalid provisioner name `{name}`"),
            Some("use a word without spaces or commas".into()),
        );
    }
    let mut env = machine_env.clone();
    for (k, v) in pr.env.iter().flatten() {
        if !valid_env_name(k) {
            ctx.at_key(
                &p.key("env").key(k),
                format!("`{k}` is not a valid environment variable name"),
                Some("use letters, digits and `_`, not starting with a digit".into()),
            );
        }
        env.insert(k.clone(), v.clone());
    }
    let args = pr.args.clone().unwrap_or_default();
    let host_path = |ctx: &mut Ctx<'_>, key: &str, rel: &str, want_file: bool| {
        let abs = ctx.root.join(rel);
        match std::fs::metadata(&abs) {
            // A FIFO or a device would be read for ever (`/dev/zero`).
            Ok(md) if !(md.is_file() || (!want_file && md.is_dir())) => {
                ctx.at_value(
                    &p.key(key),
                    if want_file {
                        format!("`{rel}` is not a regular file")
                    } else {
                        format!("`{rel}` is not a regular file or a directory")
                    },
                    Some(format!("looked at {}", abs.display())),
                );
                None
            }
            Ok(_) => Some(abs),
            Err(_) => {
                ctx.at_value(
                    &p.key(key),
                    format!("{key} `{rel}` does not exist"),
                    Some(format!(
                        "paths are relative to the Envfile; looked for {}",
                        abs.display()
                    )),
                );
                None
            }
        }
    };
    let kind = match kind {
        "shell" => {
            let inline = pr.shell.clone().unwrap_or_default();
            if inline.trim().is_empty() {
                ctx.at_value(&p.key("shell"), "`shell` is empty".into(), None);
            }
            Some(ProvisionKind::Shell { inline, args })
        }
        "script" => {
            let rel = pr.script.as_deref().unwrap_or_default();
            host_path(ctx, "script", rel, true).map(|path| ProvisionKind::Script { path, args })
        }
        _ => {
            let rel = pr.file.as_deref().unwrap_or_default();
            host_path(ctx, "file", rel, false).map(|src| ProvisionKind::File {
                src,
                to: pr.to.clone().unwrap_or_default(),
            })
        }
    }?;
    if ctx.problems.len() != before {
        return None;
    }
    Some(Provisioner {
        name: pr
            .name
            .clone()
            .unwrap_or_else(|| format!("{}-{n}", kind.word())),
        kind,
        run: pr.run.unwrap_or_default(),
        env,
        privileged: pr.privileged.unwrap_or(true),
        template: pr.template.unwrap_or(false),
    })
}

/// Where a machine's list (depends_on, forward) was written.
fn list_path(machine: &str, dpath: &KeyPath, key: &str, in_machine: bool) -> KeyPath {
    if in_machine {
        KeyPath::root().key("machines").key(machine).key(key)
    } else {
        dpath.key(key)
    }
}

fn check_across_machines(
    ctx: &mut Ctx<'_>,
    raw: &RawEnvfile,
    machines: &IndexMap<String, Machine>,
    dpath: &KeyPath,
) {
    // The same host address and port forwarded twice, in one machine or two.
    let mut seen: Vec<(&str, Forward, KeyPath)> = Vec::new();
    for (name, m) in machines {
        let from_defaults = raw.defaults.forward.as_ref().map_or(0, Vec::len);
        for (i, f) in m.forwards.iter().enumerate() {
            let p = if i < from_defaults {
                dpath.key("forward").idx(i)
            } else {
                list_path(name, dpath, "forward", true).idx(i - from_defaults)
            };
            let clash = seen.iter().find(|(_, o, _)| {
                o.host == f.host
                    && o.protocol == f.protocol
                    && (o.host_ip == f.host_ip
                        || o.host_ip.is_unspecified()
                        || f.host_ip.is_unspecified())
            });
            if let Some((other, o, op)) = clash {
                let where_ = ctx
                    .spans
                    .value(op)
                    .map(|_| format!(" ({op})"))
                    .unwrap_or_default();
                ctx.at_value(
                    &p.key("host"),
                    format!("host port {} is forwarded twice", f.host),
                    Some(format!(
                        "machine `{other}` already forwards {}:{} to its port {}{where_}",
                        o.host_ip, o.host, o.guest
                    )),
                );
            } else {
                seen.push((name, *f, p));
            }
        }
    }

    // depends_on: known machines, no cycles.
    let names: Vec<&str> = machines.keys().map(String::as_str).collect();
    for (name, m) in machines {
        let in_machine = raw.machines[name].depends_on.is_some();
        let base = list_path(name, dpath, "depends_on", in_machine);
        for (i, dep) in m.depends_on.iter().enumerate() {
            if !machines.contains_key(dep) {
                let help = match did_you_mean(dep, names.iter().copied()) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!("the machines are: {}", names.join(", ")),
                };
                ctx.at_value(&base.idx(i), format!("machine `{name}` depends on `{dep}`, which is not a machine in this Envfile"), Some(help));
            }
        }
    }
    if !ctx.problems.is_empty() {
        return;
    }
    if let Some(cycle) = find_cycle(machines) {
        let first = &cycle[0];
        let in_machine = raw.machines[first].depends_on.is_some();
        let base = list_path(first, dpath, "depends_on", in_machine);
        ctx.at_value(
            &base,
            format!("`depends_on` forms a cycle: {}", cycle.join(" → ")),
            Some("a machine cannot wait for itself; remove one of these dependencies".into()),
        );
    }

    // At most one primary.
    let primaries: Vec<&str> = machines
        .values()
        .filter(|m| m.primary)
        .map(|m| m.name.as_str())
        .collect();
    if primaries.len() > 1 {
        let p = KeyPath::root()
            .key("machines")
            .key(primaries[1])
            .key("primary");
        ctx.at_value(
            &p,
            format!("more than one machine is primary: {}", primaries.join(", ")),
            Some("`envup ssh` needs one default machine; keep `primary = true` on one".into()),
        );
    }
}

/// Machines' addresses: each a machine address of the project network (the
/// Envfile's, or the /24 of the first address), none twice; and the
/// network clear of the host's routes. Returns the network the Envfile
/// asks for.
fn check_addresses(
    ctx: &mut Ctx<'_>,
    network: ProjectNetwork,
    machines: &IndexMap<String, Machine>,
) -> ProjectNetwork {
    use crate::network::Subnet;
    let apath = |name: &str| KeyPath::root().key("machines").key(name).key("address");
    let first = machines
        .values()
        .find_map(|m| m.address.map(|a| (m.name.as_str(), a)));
    let written = matches!(network, ProjectNetwork::Subnet(_));
    let (net, npath) = match (network, first) {
        (ProjectNetwork::None, Some((name, _))) => {
            ctx.at_value(
                &apath(name),
                format!("machine `{name}` has an address, but the project has no network (`[project] network = \"none\"`)"),
                Some("remove the `address`, or `[project] network`".into()),
            );
            return network;
        }
        (ProjectNetwork::None, None) => return network,
        (ProjectNetwork::Subnet(n), _) => (n, KeyPath::root().key("project").key("network")),
        (ProjectNetwork::Pick, Some((name, a))) => (Subnet::around(a), apath(name)),
        (ProjectNetwork::Pick, None) => return network,
    };
    let mut seen: Vec<(std::net::Ipv4Addr, &str)> = Vec::new();
    for m in machines.values() {
        let Some(a) = m.address else { continue };
        if !net.usable(a) {
            let why = if !net.contains(a) {
                format!("address {a} is outside the project network {net}")
            } else {
                format!(
                    "address {a} is not a machine's on {net}: the network's own, its broadcast or the host's ({})",
                    net.gateway()
                )
            };
            let help = if written {
                {
                    let (first, last) = net.machine_range();
                    format!("a machine's address on {net} is one from {first} to {last}")
                }
            } else {
                format!(
                    "without `[project] network`, the machines' addresses share the /24 of the first one ({net}); set `[project] network` for a larger one"
                )
            };
            ctx.at_value(&apath(&m.name), why, Some(help));
        } else if let Some((_, other)) = seen.iter().find(|(b, _)| *b == a) {
            ctx.at_value(
                &apath(&m.name),
                format!(
                    "address {a} is given to two machines, `{other}` and `{}`",
                    m.name
                ),
                Some("each machine needs an address of its own".into()),
            );
        } else {
            seen.push((a, &m.name));
        }
    }
    if let Some(what) = net.reserved() {
        ctx.at_value(
            &npath,
            format!("the project network {net} is {what}, not a network machines can have"),
            Some("choose a private network, such as one in 10.0.0.0/8 or 192.168.0.0/16".into()),
        );
    } else if let Some(addr) = crate::network::local_address_in(&net) {
        ctx.at_value(
            &npath,
            format!("the project network {net} takes in the host's own address {addr}"),
            Some(
                "choose a subnet that holds none of the host's addresses (`ip addr` lists them)"
                    .into(),
            ),
        );
    } else if let Some(route) =
        crate::network::route_overlapping(&net, &crate::network::host_routes())
    {
        ctx.at_value(
            &npath,
            format!("the project network {net} overlaps the host's route {route}"),
            Some("machines would not reach that network; choose a subnet no route of the host covers (`ip route` lists them)".into()),
        );
    }
    ProjectNetwork::Subnet(net)
}

/// A dependency cycle as a list of machine names, first repeated at the end.
fn find_cycle(machines: &IndexMap<String, Machine>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    fn visit<'a>(
        n: &'a str,
        machines: &'a IndexMap<String, Machine>,
        marks: &mut HashMap<&'a str, Mark>,
        stack: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        marks.insert(n, Mark::Active);
        stack.push(n);
        for dep in &machines[n].depends_on {
            match marks.get(dep.as_str()).copied().unwrap_or(Mark::New) {
                Mark::Active => {
                    let start = stack.iter().position(|s| *s == dep)?;
                    let mut cycle: Vec<String> =
                        stack[start..].iter().map(|s| s.to_string()).collect();
                    cycle.push(dep.clone());
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(c) = visit(dep, machines, marks, stack) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        marks.insert(n, Mark::Done);
        None
    }
    let mut marks = HashMap::new();
    for name in machines.keys() {
        if !marks.contains_key(name.as_str()) {
            let mut stack = Vec::new();
            if let Some(c) = visit(name, machines, &mut marks, &mut stack) {
                return Some(c);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_machine_name("web"));
        assert!(valid_machine_name("node_1-a"));
        assert!(!valid_machine_name("1web"));
        assert!(!valid_machine_name("web server"));
        assert!(!valid_machine_name(""));
        assert!(valid_hostname("web.local"));
        assert!(!valid_hostname("-web"));
        assert!(!valid_hostname("we_b"));
        assert!(!valid_hostname("a..b"));
        assert_eq!(project_name_from_dir("My Project!"), "My-Project-");
        assert_eq!(project_name_from_dir("..."), "project");
    }
}
