//! Running provisioners on one machine over one SSH session.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use crate::envfile::config::{ProvisionKind, Provisioner};
use crate::envfile::render::{RenderError, render_plain};
use crate::envfile::{Config, Machine};
use crate::ssh::{Ssh, SshError, sh_quote};
use crate::state::MachineState;
use crate::ui::{Reporter, Stream};

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("provisioner `{name}`: cannot read {}", .path.display())]
    Read {
        name: String,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("provisioner `{name}`: {}", .detail.message)]
    Template { name: String, detail: RenderError },
    #[error("provisioner `{name}`")]
    Ssh {
        name: String,
        #[source]
        source: SshError,
    },
    #[error("provisioner `{name}` failed with exit code {code}")]
    Failed { name: String, code: i32 },
}

/// The template scope of `template = true` provisioners: `machine` (this
/// one) and `machines` (every machine by name), each with its name,
/// hostname, backend, SSH address, forwarded ports and address on the
/// project network; and `project`, with its `network`.
pub fn template_context(
    config: &Config,
    states: &[(String, Option<MachineState>)],
    network: Option<&crate::network::Record>,
    this: &str,
) -> minijinja::Value {
    let describe = |m: &Machine| {
        let state = states
            .iter()
            .find(|(n, _)| n == &m.name)
            .and_then(|(_, s)| s.as_ref());
        let ssh = state.and_then(|s| s.ssh.as_ref());
        minijinja::context! {
            name => m.name.clone(),
            hostname => m.hostname.clone(),
            backend => m.backend.to_string(),
            ssh_host => ssh.map(|e| e.host.clone()),
            ssh_port => ssh.map(|e| e.port),
            address => network.and_then(|r| r.machines.get(&m.name)).map(|a| a.to_string()),
            forwards => m.forwards.iter().map(|f| minijinja::context! {
                guest => f.guest, host => f.host, host_ip => f.host_ip.to_string(),
            }).collect::<Vec<_>>(),
        }
    };
    let machines: std::collections::BTreeMap<String, minijinja::Value> = config
        .machines
        .values()
        .map(|m| (m.name.clone(), describe(m)))
        .collect();
    minijinja::context! {
        machine => describe(&config.machines[this]),
        machines => machines,
        project => minijinja::context! {
            name => config.project.clone(),
            root => config.root.display().to_string(),
            network => network.map(|r| r.subnet.to_string()),
        },
    }
}

/// Splits a byte stream into lines for the reporter and the log.
struct Lines {
    partial: [Vec<u8>; 2],
}

impl Lines {
    fn feed(&mut self, stream: Stream, bytes: &[u8], emit: &mut dyn FnMut(Stream, &str)) {
        let buf = &mut self.partial[stream as usize];
        buf.extend_from_slice(bytes);
        while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let text = String::from_utf8_lossy(&line[..line.len() - 1]);
            emit(stream, text.trim_end_matches('\r'));
        }
    }

    fn flush(&mut self, emit: &mut dyn FnMut(Stream, &str)) {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let buf = std::mem::take(&mut self.partial[stream as usize]);
            if !buf.is_empty() {
                emit(stream, &String::from_utf8_lossy(&buf));
            }
        }
    }
}

/// Runs one machine's provisioners over one SSH session.
pub struct Runner<'a> {
    pub ssh: &'a Ssh,
    pub machine: &'a Machine,
    pub reporter: &'a dyn Reporter,
    /// The template scope, for `template = true`.
    pub scope: minijinja::Value,
    /// The machine's provisioning log, appended to.
    pub log: Option<File>,
}

impl Runner<'_> {
    /// The provisioning log: it holds what provisioners print (secrets,
    /// often), so it is the user's alone.
    pub fn open_log(path: &Path) -> Option<File> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(path)
            .ok()?;
        let _ = f.set_permissions(std::fs::Permissions::from_mode(0o600));
        Some(f)
    }

    fn text(
        &self,
        p: &Provisioner,
        raw: Vec<u8>,
        path: Option<&Path>,
    ) -> Result<Vec<u8>, ProvisionError> {
        if !p.template {
            return Ok(raw);
        }
        let src = String::from_utf8(raw).map_err(|e| ProvisionError::Read {
            name: p.name.clone(),
            path: path.map(Path::to_path_buf).unwrap_or_default(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })?;
        render_plain(&src, &self.scope)
            .map(String::into_bytes)
            .map_err(|detail| ProvisionError::Template {
                name: p.name.clone(),
                detail,
            })
    }

    /// Run one provisioner; its output goes to the reporter and the log.
    pub fn run(&mut self, p: &Provisioner) -> Result<(), ProvisionError> {
        let ssh_err = |source| ProvisionError::Ssh {
            name: p.name.clone(),
            source,
        };
        let sudo = p.privileged && self.ssh.endpoint.user != "root";
        let env: String = p
            .env
            .iter()
            .map(|(k, v)| format!("{k}={} ", sh_quote(v)))
            .collect();
        let runner = match (sudo, env.is_empty()) {
            (true, _) => format!("sudo -n env {env}"),
            (false, false) => format!("env {env}"),
            (false, true) => String::new(),
        };
        let (script, run_line) = match &p.kind {
            ProvisionKind::File { src, to } => {
                if p.template && src.is_file() {
                    let bytes = std::fs::read(src).map_err(|source| ProvisionError::Read {
                        name: p.name.clone(),
                        path: src.clone(),
                        source,
                    })?;
                    let rendered = self.text(p, bytes, Some(src))?;
                    let tmp =
                        tempfile::NamedTempFile::new().map_err(|source| ProvisionError::Read {
                            name: p.name.clone(),
                            path: src.clone(),
                            source,
                        })?;
                    std::fs::write(tmp.path(), rendered).map_err(|source| {
                        ProvisionError::Read {
                            name: p.name.clone(),
                            path: src.clone(),
                            source,
                        }
                    })?;
                    let mode = std::fs::metadata(src).map(|m| m.permissions()).ok();
                    if let Some(mode) = mode {
                        let _ = std::fs::set_permissions(tmp.path(), mode);
                    }
                    return self.ssh.upload(tmp.path(), to, sudo).map_err(ssh_err);
                }
                return self.ssh.upload(src, to, sudo).map_err(ssh_err);
            }
            ProvisionKind::Shell { inline, args } => {
                let args: Vec<String> = args.iter().map(|a| sh_quote(a)).collect();
                (
                    self.text(p, inline.clone().into_bytes(), None)?,
                    format!("{runner}/bin/sh -e \"$f\" {}", args.join(" ")),
                )
            }
            ProvisionKind::Script { path, args } => {
                let bytes = std::fs::read(path).map_err(|source| ProvisionError::Read {
                    name: p.name.clone(),
                    path: path.clone(),
                    source,
                })?;
                let args: Vec<String> = args.iter().map(|a| sh_quote(a)).collect();
                (
                    self.text(p, bytes, Some(path))?,
                    format!("chmod 700 \"$f\" && {runner}\"$f\" {}", args.join(" ")),
                )
            }
        };
        // One round trip: the script arrives on stdin, lands in a temp file,
        // and runs with stdin closed, so it cannot eat itself; under the
        // machine's provisioning lock, so that one an interrupted envup
        // left running is waited for, never run beside.
        let command = format!(
            "{PROVISION_LOCK}f=$(mktemp) && cat > \"$f\" && {{ {run_line} < /dev/null; rc=$?; rm -f \"$f\"; rm -rf \"$l\"; exit $rc; }}"
        );
        let machine = self.machine.name.clone();
        let reporter = self.reporter;
        let log = &mut self.log;
        let mut lines = Lines {
            partial: [Vec::new(), Vec::new()],
        };
        let mut emit = |stream: Stream, text: &str| {
            reporter.line(&machine, stream, text);
            if let Some(f) = log.as_mut() {
                let tag = if stream == Stream::Stderr { "!" } else { "|" };
                let _ = writeln!(f, "{} {tag} {text}", p.name);
            }
        };
        let mut stdin: &[u8] = &script;
        let code = self
            .ssh
            .exec(&command, Some(&mut stdin), &mut |s, b| {
                lines.feed(s, b, &mut emit);
            })
            .map_err(ssh_err)?;
        lines.flush(&mut emit);
        if code != 0 {
            return Err(ProvisionError::Failed {
                name: p.name.clone(),
                code,
            });
        }
        Ok(())
    }
}

/// The machine's provisioning lock, taken before a provisioner runs: a
/// directory in /tmp holding the pid of the shell that runs it. One whose
/// shell still runs (`/proc/PID`; a provisioner of another user cannot be
/// signalled to ask) is waited for; one whose shell is gone is taken over.
/// POSIX sh, for busybox too; leaves the lock's path in `$l`.
const PROVISION_LOCK: &str = "l=/tmp/.envup-provisioning; n=0; said=; \
while ! mkdir \"$l\" 2>/dev/null; do \
p=$(cat \"$l/pid\" 2>/dev/null); \
if [ -n \"$p\" ] && [ -d \"/proc/$p\" ]; then \
[ -n \"$said\" ] || echo \"envup: waiting for a provisioner an interrupted envup left running (pid $p)\" >&2; \
said=1; sleep 1; \
elif [ -z \"$p\" ] && [ $n -lt 3 ]; then n=$((n+1)); sleep 1; \
else rm -rf \"$l\" 2>/dev/null || { echo \"envup: cannot take the lock $l\" >&2; exit 125; }; n=0; fi; \
done; echo $$ > \"$l/pid\"; ";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_across_chunks() {
        let mut lines = Lines {
            partial: [Vec::new(), Vec::new()],
        };
        let mut got = Vec::new();
        let mut emit = |s: Stream, t: &str| got.push((s, t.to_owned()));
        lines.feed(Stream::Stdout, b"hel", &mut emit);
        lines.feed(Stream::Stderr, b"err\r\n", &mut emit);
        lines.feed(Stream::Stdout, b"lo\nwor", &mut emit);
        lines.flush(&mut emit);
        assert_eq!(
            got,
            [
                (Stream::Stderr, "err".to_owned()),
                (Stream::Stdout, "hello".to_owned()),
                (Stream::Stdout, "wor".to_owned()),
            ]
        );
    }
}
