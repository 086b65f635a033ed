//! One container engine's command line: Docker or Podman (the two share
//! their CLI), with the extra arguments this host needs, found by trying.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ContainerError;
use super::Engine;
use crate::backend::{BackendError, run_tool};
use crate::host::{first_line, run_with_timeout, which};

/// How long an engine may take to answer `version` when probed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(8);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Docker,
    Podman,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Docker => "docker",
            Kind::Podman => "podman",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "docker" => Some(Kind::Docker),
            "podman" => Some(Kind::Podman),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct EngineCli {
    pub kind: Kind,
    pub program: PathBuf,
}

/// The repository of the images boxes become, tagged with their digests.
pub const BOX_REPO: &str = "localhost/envup-box";

/// The image a box's rootfs becomes in an engine.
pub fn box_image(digest: &str) -> String {
    format!("{BOX_REPO}:{digest}")
}

/// Where a machine's snapshots live in an engine.
pub fn snapshot_repo(container: &str) -> String {
    format!("localhost/envup-snapshot-{container}")
}

impl EngineCli {
    /// The engine an Envfile's `engine` names; for `auto`, Docker when its
    /// engine answers, then Podman. The error says what was tried.
    pub fn choose(want: Engine) -> Result<EngineCli, BackendError> {
        let kinds: &[Kind] = match want {
            Engine::Auto => &[Kind::Docker, Kind::Podman],
            // Named: installed is enough; the engine's own errors say the rest.
            Engine::Docker => return Self::named("docker"),
            Engine::Podman => return Self::named("podman"),
            Engine::Lxc => return Err(ContainerError::NotAnEngine.into()),
        };
        // Asked once per envup command: `check` and `create` both want it.
        static AUTO: std::sync::OnceLock<Result<EngineCli, String>> = std::sync::OnceLock::new();
        AUTO.get_or_init(|| {
            let mut why = Vec::new();
            for &k in kinds {
                match EngineCli::find(k) {
                    Ok(e) => return Ok(e),
                    Err(e) => why.push(crate::cli::error::chain(&e)),
                }
            }
            Err(why.join("; "))
        })
        .clone()
        .map_err(|tried| ContainerError::NoEngine(tried).into())
    }

    /// The engine `kind`, if its program is installed and it answers.
    pub fn find(kind: Kind) -> Result<EngineCli, ContainerError> {
        let program = which(kind.name()).ok_or(ContainerError::NotInstalled(kind.name()))?;
        let fmt = match kind {
            Kind::Docker => "{{.Server.Version}}",
            Kind::Podman => "{{.Client.Version}}",
        };
        match run_with_timeout(&program, &["version", "--format", fmt], PROBE_TIMEOUT) {
            Ok(o) if o.status.success() => Ok(EngineCli { kind, program }),
            Ok(o) => Err(ContainerError::NoAnswer {
                engine: kind.name(),
                said: first_line(&o),
            }),
            Err(e) => Err(ContainerError::Probe(e)),
        }
    }

    /// The engine a machine was created with, by name.
    pub fn named(name: &str) -> Result<EngineCli, BackendError> {
        let kind =
            Kind::parse(name).ok_or_else(|| ContainerError::UnknownEngine(name.to_owned()))?;
        let program =
            which(kind.name()).ok_or_else(|| ContainerError::Uninstalled(name.to_owned()))?;
        Ok(EngineCli { kind, program })
    }

    pub fn command(&self) -> Command {
        let mut c = Command::new(&self.program);
        c.stdin(Stdio::null());
        c
    }

    /// Run the engine with `args`; its stdout when it succeeds, else an
    /// error naming the command and what the engine said.
    pub fn run(&self, args: &[&str]) -> Result<String, BackendError> {
        run_tool(
            self.command().args(args),
            match self.kind {
                Kind::Docker => "apt-get install docker.io",
                Kind::Podman => "apt-get install podman",
            },
        )
    }

    /// Remove a container, running or not, at once (Podman would otherwise
    /// wait its stop timeout first).
    pub fn remove_container(&self, name: &str) -> Result<String, BackendError> {
        match self.kind {
            Kind::Docker => self.run(&["rm", "--force", name]),
            Kind::Podman => self.run(&["rm", "--force", "--time", "0", name]),
        }
    }

    /// Whether the engine has `image`.
    pub fn has_image(&self, image: &str) -> bool {
        self.command()
            .args(["image", "inspect", image])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Import a box's rootfs tar as `image`, labelled with the box's digest.
    pub fn import(&self, rootfs: &Path, image: &str, digest: &str) -> Result<(), BackendError> {
        let label = format!("LABEL envup.box={digest}");
        let rootfs = rootfs.to_string_lossy();
        self.run(&[
            "import",
            "--change",
            "CMD [\"/sbin/init\"]",
            "--change",
            &label,
            &rootfs,
            image,
        ])?;
        Ok(())
    }

    /// Arguments every `create` on this host needs, found once by starting
    /// `image` with each candidate until one works, and kept in
    /// `$ENVUP_HOME/engines/<engine>.json` (for this engine's version).
    pub fn host_args(&self, image: &str) -> Result<Vec<String>, BackendError> {
        if self.kind == Kind::Docker {
            return Ok(Vec::new());
        }
        // Found again whenever the engine's program changes.
        let io = crate::backend::io_err("read the metadata of", &self.program);
        let meta = std::fs::metadata(&self.program).map_err(io)?;
        let version = format!("{} {:?}", meta.len(), meta.modified().ok());
        let cache = crate::state::envup_home()?
            .join("engines")
            .join(format!("{}.json", self.kind.name()));
        #[derive(Serialize, Deserialize)]
        struct Found {
            version: String,
            args: Vec<String>,
        }
        let candidates = host_arg_candidates(which("runc").is_some(), which("crun").is_some());
        // Used only when it is one of the candidates: a damaged or edited
        // file adds nothing to a container's command line.
        if let Ok(Some(f)) = crate::state::read_json::<Found>(&cache)
            && f.version == version
            && candidates.contains(&f.args)
        {
            return Ok(f.args);
        }
        let mut tried = Vec::new();
        for args in candidates {
            let mut cmd: Vec<&str> = vec!["run", "--rm"];
            cmd.extend(args.iter().map(String::as_str));
            cmd.extend([image, "/bin/true"]);
            match self.run(&cmd) {
                Ok(_) => {
                    let found = Found {
                        version,
                        args: args.clone(),
                    };
                    crate::state::write_json(&cache, &found)?;
                    if !args.is_empty() {
                        tracing::info!("{} needs {:?} on this host", self.kind.name(), args);
                    }
                    return Ok(args);
                }
                Err(e) => tried.push(format!("[{}]: {e}", args.join(" "))),
            }
        }
        Err(ContainerError::NoHostArgs {
            engine: self.kind.name(),
            tried: tried.join("; "),
        }
        .into())
    }
}

/// What Podman may need on a host, in the order tried: nothing; explicit
/// resource limits (its defaults raise limits some hosts refuse); runc in
/// place of crun (crun refuses hybrid cgroup hosts); both.
pub fn host_arg_candidates(has_runc: bool, has_crun: bool) -> Vec<Vec<String>> {
    let ulimits: Vec<String> = [
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=4096:4096",
    ]
    .map(String::from)
    .to_vec();
    let runc: Vec<String> = vec!["--runtime".into(), "runc".into()];
    let mut c = vec![Vec::new(), ulimits.clone()];
    if has_runc && has_crun {
        c.push(runc.clone());
        c.push([runc, ulimits].concat());
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_try_runc_only_when_both_runtimes_exist() {
        assert_eq!(host_arg_candidates(true, false).len(), 2);
        let c = host_arg_candidates(true, true);
        assert_eq!(c.len(), 4);
        assert!(c[0].is_empty());
        assert_eq!(c[2], ["--runtime", "runc"]);
        assert_eq!(c[3][..2], ["--runtime".to_owned(), "runc".to_owned()]);
    }

    #[test]
    fn image_names() {
        assert_eq!(box_image("ab12"), "localhost/envup-box:ab12");
        assert_eq!(
            snapshot_repo("envup-0123"),
            "localhost/envup-snapshot-envup-0123"
        );
    }
}
