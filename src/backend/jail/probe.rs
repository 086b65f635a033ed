//! What the jail backend needs from the host (`envup doctor`).

use std::time::Duration;

use crate::backend::Check;
use crate::host::{run_with_timeout, which};

/// Which cgroup hierarchies the host mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupLayout {
    /// Where cgroup2 is mounted, if it is.
    pub v2: Option<String>,
    /// v1 controllers and where each is mounted.
    pub v1: Vec<(String, String)>,
    /// Every v1 hierarchy's mount point, named ones (`name=systemd`) too.
    pub v1_mounts: Vec<String>,
}

impl CgroupLayout {
    /// Read `/proc/self/mountinfo`-formatted text.
    pub fn from_mountinfo(text: &str) -> Self {
        let mut v2 = None;
        let mut v1 = Vec::new();
        let mut v1_mounts = Vec::new();
        for line in text.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let mount_point = left.split(' ').nth(4).unwrap_or("");
            let mut r = right.split(' ');
            let fstype = r.next().unwrap_or("");
            let options = r.nth(1).unwrap_or("");
            match fstype {
                "cgroup2" => v2 = Some(mount_point.to_owned()),
                "cgroup" => {
                    v1_mounts.push(mount_point.to_owned());
                    for opt in options.split(',') {
                        if matches!(
                            opt,
                            "memory" | "pids" | "cpu" | "cpuset" | "cpuacct" | "freezer"
                        ) {
                            v1.push((opt.to_owned(), mount_point.to_owned()));
                        }
                    }
                }
                _ => {}
            }
        }
        Self { v2, v1, v1_mounts }
    }

    pub fn describe(&self) -> String {
        let v1: Vec<&str> = self.v1.iter().map(|(c, _)| c.as_str()).collect();
        match (&self.v2, v1.is_empty()) {
            (Some(p), true) => format!("cgroup v2 at {p}"),
            (Some(p), false) => format!(
                "hybrid: v1 controllers {} with cgroup2 at {p}",
                v1.join(",")
            ),
            (None, false) => format!("cgroup v1 controllers {}", v1.join(",")),
            (None, true) => "no cgroup hierarchy mounted".into(),
        }
    }

    /// Controllers envup limits with, available in v1 or at the v2 root.
    pub fn has(&self, controller: &str, v2_controllers: &str) -> bool {
        self.v1.iter().any(|(c, _)| c == controller)
            || v2_controllers.split_whitespace().any(|c| c == controller)
    }
}

/// Root, namespaces, overlayfs, cgroup controllers for cpus, memory, pids.
pub fn probe() -> (bool, Vec<Check>) {
    let mut checks = Vec::new();
    let root = nix::unistd::geteuid().is_root();
    checks.push(if root {
        Check::ok(
            "root",
            "running as root: each jail gets a block of host ids of its own",
        )
    } else {
        rootless_check()
    });

    // Rootless, namespaces come with a user namespace of their own.
    let user: &[&str] = if root {
        &[]
    } else {
        &["--user", "--map-root-user"]
    };
    let args: Vec<&str> = user
        .iter()
        .copied()
        .chain([
            "--mount", "--pid", "--uts", "--ipc", "--net", "--fork", "true",
        ])
        .collect();
    checks.push(match which("unshare") {
        Some(unshare) => match run_with_timeout(&unshare, &args, Duration::from_secs(5)) {
            Ok(o) if o.status.success() => Check::ok("namespaces", "mount, pid, uts, ipc and net namespaces can be created"),
            Ok(o) => Check::missing(
                "namespaces",
                format!("cannot create namespaces: {}", String::from_utf8_lossy(&o.stderr).trim()),
                "run as root on a kernel with namespaces enabled (and outside a container that forbids them)",
            ),
            Err(e) => Check::missing("namespaces", crate::cli::error::chain(&e), "check that unshare(1) works on this host"),
        },
        None => Check::missing("namespaces", "unshare(1) not found to test with", "apt-get install util-linux"),
    });

    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    checks.push(
        if filesystems
            .lines()
            .any(|l| l.trim_end().ends_with("\toverlay") || l.trim() == "nodev\toverlay")
        {
            Check::ok("overlayfs", "overlay filesystem available")
        } else {
            Check::missing(
                "overlayfs",
                "overlay is not in /proc/filesystems",
                "modprobe overlay",
            )
        },
    );

    let layout = CgroupLayout::from_mountinfo(
        &std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default(),
    );
    let v2_controllers = layout
        .v2
        .as_ref()
        .and_then(|p| std::fs::read_to_string(format!("{p}/cgroup.controllers")).ok())
        .unwrap_or_default();
    let missing: Vec<&str> = ["cpu", "memory", "pids"]
        .into_iter()
        .filter(|c| !layout.has(c, &v2_controllers))
        .collect();
    checks.push(if !root {
        Check::ok(
            "cgroups",
            "rootless: a jail has no cgroup of its own, so its cpus, memory and pids limits are not applied",
        )
    } else if missing.is_empty() {
        Check::ok("cgroups", format!("{}; cpu, memory and pids controllers present", layout.describe()))
    } else {
        Check::missing(
            "cgroups",
            format!("{}; missing controllers: {}", layout.describe(), missing.join(", ")),
            "enable the cpu, memory and pids cgroup controllers (kernel command line cgroup_enable=memory)",
        )
    });

    if root {
        checks.push(idmap_check());
        checks.push(Check::ok(
            "rootless",
            format!(
                "run by a user with a range in /etc/subuid and /etc/subgid, envup brings jails up \
                 without root; this host {} unprivileged user namespaces",
                if userns_allowed() {
                    "allows"
                } else {
                    "forbids"
                }
            ),
        ));
    }
    checks.push(crate::backend::rootfs::net::check());
    let ready = checks.iter().all(|c| c.ok);
    (ready, checks)
}

/// Try what every jail's start does: a user namespace with a block of ids,
/// and an id-mapped copy of a mount into it.
fn idmap_check() -> Check {
    let ids = crate::backend::rootfs::ids::IdMap {
        uid: 1_073_741_824,
        gid: 1_073_741_824,
        shifted: false,
    };
    let tried = crate::backend::rootfs::detached::userns_with(&ids).and_then(|ns| {
        crate::backend::rootfs::detached::tree(std::path::Path::new("/"), false, true, Some(&ns))
    });
    match tried {
        Ok(_) => Check::ok(
            "user namespaces",
            "a jail's user namespace and id-mapped mounts work",
        ),
        Err(e) => Check::missing(
            "user namespaces",
            crate::cli::error::chain(&e),
            "use a kernel with user namespaces and id-mapped mounts (5.19 or later), or `privileged = true`",
        ),
    }
}

fn userns_allowed() -> bool {
    let read = |p: &str| std::fs::read_to_string(p).ok().map(|t| t.trim().to_owned());
    read("/proc/sys/kernel/unprivileged_userns_clone").is_none_or(|v| v == "1")
        && read("/proc/sys/user/max_user_namespaces").is_none_or(|v| v != "0")
}

/// Run by a user other than root: whether a rootless jail can come up,
/// tried as its start does it (a user namespace mapped by newuidmap).
fn rootless_check() -> Check {
    let name = "rootless";
    if !userns_allowed() {
        return Check::missing(
            name,
            "this host forbids unprivileged user namespaces",
            "sysctl kernel.unprivileged_userns_clone=1 (and user.max_user_namespaces > 0), or run envup as root",
        );
    }
    let ids = match crate::backend::rootfs::ids::SubIds::of_user() {
        Ok(ids) => ids,
        Err(e) => {
            return Check::missing(
                name,
                e.to_string(),
                "usermod --add-subuids N-M --add-subgids N-M USER (as root)",
            );
        }
    };
    if !crate::backend::rootfs::ids::SubIds::tools_present() {
        return Check::missing(
            name,
            "newuidmap and newgidmap are missing",
            "apt-get install uidmap",
        );
    }
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun");
    if let Err(e) = tun {
        return Check::missing(
            name,
            format!("/dev/net/tun cannot be opened ({e}), which a private network needs"),
            "chmod 0666 /dev/net/tun (as root), or network = \"host\"",
        );
    }
    match crate::userns::run("nothing", &[]) {
        Ok(()) => Check::ok(
            name,
            format!(
                "jails run rootless: their root is uid {}, their uids 1-65535 are {}-{}",
                ids.uid,
                ids.sub_uid,
                ids.sub_uid + 65534
            ),
        ),
        Err(e) => Check::missing(
            name,
            e.to_string(),
            "check /etc/subuid, /etc/subgid and the uidmap package",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hybrid_layout() {
        let text = "\
30 25 0:26 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate
31 25 0:27 / /sys/fs/cgroup/memory rw,nosuid shared:11 - cgroup cgroup rw,memory
32 25 0:28 / /sys/fs/cgroup/pids rw,nosuid shared:12 - cgroup cgroup rw,pids
33 25 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:13 - cgroup cgroup rw,cpu,cpuacct
";
        let l = CgroupLayout::from_mountinfo(text);
        assert_eq!(l.v2.as_deref(), Some("/sys/fs/cgroup/unified"));
        assert!(l.has("memory", ""));
        assert!(l.has("cpu", ""));
        assert!(l.describe().starts_with("hybrid"));
    }

    #[test]
    fn pure_v2_layout() {
        let text = "30 25 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let l = CgroupLayout::from_mountinfo(text);
        assert!(l.has("memory", "cpuset cpu io memory pids"));
        assert!(!l.has("memory", ""));
        assert_eq!(l.describe(), "cgroup v2 at /sys/fs/cgroup");
    }
}
