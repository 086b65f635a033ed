//! The backend plugin protocol, version 1: one JSON request on a plugin's
//! stdin, one JSON reply on its stdout, one run of the plugin per request.
//! `docs/plugins.md` is the contract; `plugins/protocol-v1.schema.json`
//! is its JSON Schema. Unknown fields are ignored both ways, so either
//! side can grow without breaking the other.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The protocol versions this envup speaks.
pub const PROTOCOLS: &[u32] = &[1];

/// The most a plugin may print on stdout for one reply, and the most of
/// its stderr kept for an error.
const MAX_REPLY: usize = 4 << 20;
const MAX_STDERR: usize = 64 << 10;

/// What a plugin says of itself (`describe`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Description {
    pub name: String,
    pub version: String,
    pub protocols: Vec<u32>,
    /// The box artifacts it runs, by preference.
    #[serde(default)]
    pub artifacts: Vec<String>,
    #[serde(default)]
    pub vagrant_providers: Vec<Provider>,
    /// A JSON Schema of its `[machines.X.NAME]` table.
    #[serde(default)]
    pub options_schema: Option<Value>,
    #[serde(default)]
    pub snapshots: bool,
    /// Settings a start of a stopped machine applies (keys of `plan`'s
    /// settings: `cpus`, `memory`, `forwards`…).
    #[serde(default)]
    pub restart_applies: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Provider {
    pub name: String,
    pub artifact: String,
    #[serde(default = "root")]
    pub user: String,
}

fn root() -> String {
    "root".into()
}

/// What the host has of what the plugin needs (`probe`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Probe {
    pub ready: bool,
    #[serde(default)]
    pub checks: Vec<ProbeCheck>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeCheck {
    pub what: String,
    pub ok: bool,
    #[serde(default)]
    pub detail: String,
    #[serde(default)]
    pub fix: Option<String>,
}

/// A machine as the Envfile gives it, as a plugin sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MachineSpec {
    pub name: String,
    pub hostname: String,
    pub cpus: u32,
    /// Bytes.
    pub memory: u64,
    pub disk: u64,
    pub forwards: Vec<ForwardSpec>,
    pub shares: Vec<ShareSpec>,
    /// Its `[machines.NAME.<plugin>]` table over `[defaults.<plugin>]`.
    pub options: Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForwardSpec {
    pub guest: u16,
    pub host: u16,
    pub host_ip: String,
    pub protocol: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShareSpec {
    pub host: PathBuf,
    pub guest: String,
    pub read_only: bool,
}

/// The stored box a machine is made from: read-only, shared by machines.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BoxSpec {
    pub name: String,
    pub version: String,
    pub digest: String,
    pub dir: PathBuf,
    /// The user its SSH server lets in.
    pub user: String,
    /// Artifact name → path.
    pub artifacts: BTreeMap<String, PathBuf>,
    /// Artifact name → format, where the box says (`disk`: `qcow2` or
    /// `raw`).
    #[serde(default)]
    pub formats: BTreeMap<String, String>,
    /// Artifacts envup unpacked for the plugin, read-only and shared by
    /// every machine of the box: `rootfs`, the rootfs tar's tree (unpacked
    /// with every path kept inside it, bounded in size), when the plugin
    /// runs `rootfs`.
    pub unpacked: BTreeMap<String, PathBuf>,
    /// How a disk box boots (`kernel`, `initrd`, `cmdline`), when it says.
    pub boot: Option<Value>,
}

/// The keys to place before the machine's first boot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeySpec {
    /// The line for the SSH user's `authorized_keys`.
    pub authorized_key: String,
    /// The machine's SSH host key, OpenSSH private key format (ed25519).
    pub host_key: String,
    pub host_public_key: String,
}

/// Where envup's SSH client reaches the machine.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SshSpec {
    pub host: String,
    pub port: u16,
    pub user: String,
}

/// What a plugin answers `create` and `start` with.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Made {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub ssh: Option<SshSpec>,
}

/// A machine's status as `status` answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginStatus {
    NotCreated,
    Stopped,
    Running,
}

#[derive(Debug, Clone, Deserialize)]
pub struct StatusReply {
    pub status: PluginStatus,
    #[serde(default)]
    pub details: BTreeMap<String, String>,
}

/// An error a plugin answers with: a kind envup acts on, and a message
/// for the user.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PluginFault {
    pub kind: String,
    pub message: String,
    /// For `missing_tool`: how to get it.
    #[serde(default)]
    pub fix: Option<String>,
}

/// Why a call to a plugin did not give an answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("cannot run {}", .0.display())]
    Spawn(PathBuf, #[source] std::io::Error),
    #[error("it did not answer `{op}` within {} s, and was killed", .limit.as_secs())]
    Hung { op: String, limit: Duration },
    #[error("it {status} on `{op}` without a reply{}", stderr_tail(.stderr))]
    Crashed {
        op: String,
        status: String,
        stderr: String,
    },
    #[error("its reply to `{op}` is not the protocol's JSON ({why}){}", stderr_tail(.stderr))]
    Garbage {
        op: String,
        why: String,
        stderr: String,
    },
    #[error("{}", .0.message)]
    Fault(PluginFault),
}

fn stderr_tail(stderr: &str) -> String {
    let s = stderr.trim();
    if s.is_empty() {
        return String::new();
    }
    let lines: Vec<&str> = s.lines().collect();
    let tail = lines[lines.len().saturating_sub(5)..].join("\n  ");
    format!("; it said:\n  {}", crate::ident::printable(&tail))
}

/// The reply envelope.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Reply {
    #[serde(default)]
    ok: Option<Value>,
    #[serde(default)]
    error: Option<PluginFault>,
    /// Room for the protocol to grow: fields envup does not know.
    #[serde(flatten)]
    _rest: BTreeMap<String, Value>,
}

/// How long envup waits for each operation before it kills the plugin:
/// `ENVUP_PLUGIN_TIMEOUT` seconds when set, for every operation.
pub fn deadline(op: &str) -> Duration {
    if let Some(secs) = std::env::var("ENVUP_PLUGIN_TIMEOUT")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|s| *s > 0)
    {
        return Duration::from_secs(secs);
    }
    Duration::from_secs(match op {
        "describe" | "probe" | "check" | "status" | "last_words" | "snapshot_list" => 30,
        "stop" => 180,
        _ => 900,
    })
}

/// Run the plugin at `path` for one request: `request` (with `op` and
/// `protocol` added) on its stdin, its reply's `ok` value back. The plugin
/// runs in a process group of its own, killed whole when it overruns
/// `limit`; a reply is read once the plugin exits, even if something it
/// started still holds its stdout.
pub fn call(
    path: &Path,
    op: &str,
    protocol: u32,
    mut request: serde_json::Map<String, Value>,
    limit: Duration,
) -> Result<Value, CallError> {
    request.insert("protocol".into(), protocol.into());
    request.insert("op".into(), op.into());
    let body = serde_json::to_vec(&Value::Object(request)).expect("JSON encodes");
    end_orphaned_requests();
    let parent = nix::unistd::getpid();
    let mut cmd = Command::new(path);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // SAFETY: prctl and getppid are async-signal-safe. The plugin dies
    // with envup (what it started in its group is ended by the next envup,
    // below); a parent already gone before the prctl is seen, and the
    // plugin not run.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::other("envup is gone"));
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| CallError::Spawn(path.to_owned(), e))?;
    let _noted = Noted::new(child.id() as i32);
    let started = Instant::now();
    // A request is small; a plugin that does not read it gets EPIPE, not us
    // a hang (the write fails, and the reply says what it did).
    {
        let mut stdin = child.stdin.take().expect("piped");
        let _ = stdin.write_all(&body);
    }
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let (mut out_open, mut err_open) = (true, true);
    let status = loop {
        let left = limit.saturating_sub(started.elapsed());
        if left.is_zero() {
            kill_group(&mut child);
            return Err(CallError::Hung {
                op: op.into(),
                limit,
            });
        }
        if !out_open && !err_open {
            // Both closed: the plugin is done or about to be.
            match child.try_wait() {
                Ok(Some(s)) => break s,
                _ => std::thread::sleep(Duration::from_millis(1)),
            }
            continue;
        }
        // Wake for output, or every 20 ms to see whether the plugin exited
        // while something it started keeps a pipe open.
        let wait = left.min(Duration::from_millis(20));
        let ready = poll_read(&out, out_open, &err, err_open, wait);
        if ready.0 {
            out_open = drain(&mut out, &mut stdout, MAX_REPLY, false);
        }
        if ready.1 {
            err_open = drain(&mut err, &mut stderr, MAX_STDERR, false);
        }
        if stdout.len() >= MAX_REPLY {
            kill_group(&mut child);
            return Err(CallError::Garbage {
                op: op.into(),
                why: format!("more than {} MiB", MAX_REPLY >> 20),
                stderr: String::new(),
            });
        }
        if !ready.0
            && !ready.1
            && let Ok(Some(s)) = child.try_wait()
        {
            set_nonblocking(&out);
            set_nonblocking(&err);
            drain(&mut out, &mut stdout, MAX_REPLY, true);
            drain(&mut err, &mut stderr, MAX_STDERR, true);
            break s;
        }
    };
    let stderr = String::from_utf8_lossy(&stderr).into_owned();
    let text = String::from_utf8_lossy(&stdout);
    let status = exited(status);
    if text.trim().is_empty() {
        return Err(CallError::Crashed {
            op: op.into(),
            status,
            stderr,
        });
    }
    let reply: Reply = serde_json::from_str(text.trim()).map_err(|e| CallError::Garbage {
        op: op.into(),
        why: format!(
            "{e}; it printed {:?}",
            text.chars().take(80).collect::<String>()
        ),
        stderr: stderr.clone(),
    })?;
    match (reply.ok, reply.error) {
        (_, Some(fault)) => Err(CallError::Fault(fault)),
        (Some(v), None) if status == "exited 0" => Ok(v),
        (Some(_), None) => Err(CallError::Crashed {
            op: op.into(),
            status,
            stderr,
        }),
        (None, None) => Err(CallError::Garbage {
            op: op.into(),
            why: "neither `ok` nor `error`".into(),
            stderr,
        }),
    }
}

/// How a plugin ended, in words.
fn exited(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited {c}"),
        (None, Some(s)) => format!(
            "was killed by signal {s}{}",
            nix::sys::signal::Signal::try_from(s)
                .map(|n| format!(" ({n})"))
                .unwrap_or_default()
        ),
        _ => "ended".into(),
    }
}

/// Which of the two pipes has something to read (or was closed).
fn poll_read(
    out: &impl AsFd,
    out_open: bool,
    err: &impl AsFd,
    err_open: bool,
    wait: Duration,
) -> (bool, bool) {
    use nix::poll::{PollFd, PollFlags, PollTimeout};
    let flags = |open: bool| {
        if open {
            PollFlags::POLLIN
        } else {
            PollFlags::empty()
        }
    };
    let mut fds = [
        PollFd::new(out.as_fd(), flags(out_open)),
        PollFd::new(err.as_fd(), flags(err_open)),
    ];
    let ms = PollTimeout::from(wait.as_millis().min(1000) as u16);
    if nix::poll::poll(&mut fds, ms).unwrap_or(0) <= 0 {
        return (false, false);
    }
    let hit = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
    (out_open && hit(&fds[0]), err_open && hit(&fds[1]))
}

/// Read what is there: one read (a readable pipe does not block), or,
/// with `all` on a non-blocking pipe, until it is empty. False once the
/// pipe is closed.
fn drain(pipe: &mut impl Read, into: &mut Vec<u8>, max: usize, all: bool) -> bool {
    let mut buf = [0u8; 16384];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => {
                let keep = n.min(max.saturating_sub(into.len()));
                into.extend_from_slice(&buf[..keep]);
                if !all || into.len() >= max {
                    return true;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
}

fn set_nonblocking(fd: &impl AsFd) {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    if let Ok(flags) = fcntl(fd.as_fd(), FcntlArg::F_GETFL) {
        let _ = fcntl(
            fd.as_fd(),
            FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
        );
    }
}

/// Kill the plugin and everything in its process group, and reap it.
/// Where the requests running now are noted, one file per request named
/// after its process group: `$ENVUP_HOME/requests/PGID`, holding the pid
/// and start time of the envup that made it and its leader's start time.
/// A request whose envup was killed is ended by the next request's envup.
fn requests_dir() -> Option<PathBuf> {
    crate::state::envup_home().ok().map(|h| h.join("requests"))
}

/// A request noted as running, until it is dropped.
struct Noted(Option<PathBuf>);

impl Noted {
    fn new(leader: i32) -> Noted {
        let start = crate::backend::start_time;
        let me = std::process::id() as i32;
        let noted = (|| {
            let dir = requests_dir()?;
            std::fs::create_dir_all(&dir).ok()?;
            let path = dir.join(leader.to_string());
            let text = format!("{me} {} {}", start(me)?, start(leader)?);
            std::fs::write(&path, text).ok()?;
            Some(path)
        })();
        Noted(noted)
    }
}

impl Drop for Noted {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// End the requests whose envup is gone: the plugin's process group, as
/// long as it is that request's (its leader runs with the noted start
/// time, or is gone: Linux gives no process a group's number while the
/// group has members).
fn end_orphaned_requests() {
    let Some(dir) = requests_dir() else { return };
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    let start = crate::backend::start_time;
    for e in entries.filter_map(Result::ok) {
        let Some(pgid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        let f: Vec<u64> = text
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        let [envup, envup_start, leader_start] = f[..] else {
            let _ = std::fs::remove_file(e.path());
            continue;
        };
        let Ok(envup) = i32::try_from(envup) else {
            continue;
        };
        if start(envup) == Some(envup_start) || pgid <= 1 {
            continue;
        }
        if start(pgid).is_none_or(|s| s == leader_start) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pgid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = std::fs::remove_file(e.path());
    }
}

fn kill_group(child: &mut std::process::Child) {
    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
    let _ = child.wait();
}
