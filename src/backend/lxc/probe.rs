//! What `doctor` says about LXC.

use std::time::Duration;

use crate::backend::Check;
use crate::host::{first_line, run_with_timeout, which};

/// lxc-start, run as root, and the private network's helper.
pub fn probe() -> (bool, Vec<Check>) {
    let timeout = Duration::from_secs(8);
    let mut checks = Vec::new();
    let net = crate::backend::rootfs::net::check();
    checks.push(match which("lxc-start") {
        None => Check::missing("lxc", "lxc-start not found on PATH", "apt-get install lxc"),
        Some(p) => match run_with_timeout(&p, &["--version"], timeout) {
            Ok(_) if !nix::unistd::geteuid().is_root() => Check::missing(
                "lxc",
                "envup runs the lxc tools as root only",
                "run envup as root, or use backend = \"container\"",
            ),
            Ok(_) if !net.ok => Check::missing(
                "lxc",
                format!(
                    "envup connects LXC containers' networks with {}: {}",
                    net.what, net.detail
                ),
                net.fix.clone().unwrap_or_default(),
            ),
            Ok(o) if o.status.success() => Check::ok("lxc", format!("lxc {}", first_line(&o))),
            Ok(o) => Check::missing(
                "lxc",
                format!("lxc-start fails: {}", first_line(&o)),
                "apt-get install --reinstall lxc",
            ),
            Err(e) => Check::missing(
                "lxc",
                crate::cli::error::chain(&e),
                "apt-get install --reinstall lxc",
            ),
        },
    });

    checks.push(
        match crate::backend::rootfs::ids::Pool::reserved() {
            Some(p) => Check::ok(
                "lxc ids",
                format!("ids {}+{} reserved for root in /etc/subuid and /etc/subgid", p.uid, p.count),
            ),
            None => Check::missing(
                "lxc ids",
                "no ids are reserved for root in /etc/subuid and /etc/subgid: LXC's newuidmap maps only reserved ones",
                "usermod --add-subuids 1073741824-1879048191 --add-subgids 1073741824-1879048191 root (scripts/install-deps does)",
            ),
        },
    );
    checks.push(net);
    let ready = checks.iter().all(|c| c.ok);
    (ready, checks)
}
