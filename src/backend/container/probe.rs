//! What `doctor` says about the container engines.

use std::time::Duration;

use crate::backend::Check;
use crate::host::{first_line, run_with_timeout, which};

/// Which engines answer. The backend is usable when any one does.
pub fn probe() -> (bool, Vec<Check>) {
    let timeout = Duration::from_secs(8);
    let mut checks = Vec::new();

    checks.push(match which("docker") {
        None => Check::missing("docker", "not found on PATH", "apt-get install docker.io"),
        Some(p) => {
            match run_with_timeout(&p, &["version", "--format", "{{.Server.Version}}"], timeout) {
                Ok(o) if o.status.success() => {
                    Check::ok("docker", format!("engine {} answers", first_line(&o)))
                }
                Ok(o) => Check::missing(
                    "docker",
                    format!(
                        "the client is installed but the engine does not answer: {}",
                        first_line(&o)
                    ),
                    "start the engine: systemctl start docker (or dockerd)",
                ),
                Err(e) => Check::missing(
                    "docker",
                    crate::cli::error::chain(&e),
                    "start the engine: systemctl start docker (or dockerd)",
                ),
            }
        }
    });

    checks.push(match which("podman") {
        None => Check::missing("podman", "not found on PATH", "apt-get install podman runc"),
        Some(p) => {
            match run_with_timeout(&p, &["version", "--format", "{{.Client.Version}}"], timeout) {
                Ok(o) if o.status.success() => {
                    let runc = if which("runc").is_some() {
                        "runc present"
                    } else {
                        "runc missing (apt-get install runc)"
                    };
                    Check::ok("podman", format!("{}; {runc}", first_line(&o)))
                }
                Ok(o) => Check::missing(
                    "podman",
                    format!("podman fails: {}", first_line(&o)),
                    "apt-get install --reinstall podman runc",
                ),
                Err(e) => Check::missing(
                    "podman",
                    crate::cli::error::chain(&e),
                    "apt-get install --reinstall podman runc",
                ),
            }
        }
    });

    let ready = checks.iter().any(|c| c.ok);
    (ready, checks)
}
