//! The jail backend on FreeBSD, over jail(8), rctl(8) and nullfs/unionfs.
//!
//! What a machine needs is turned into plain data here — the jail(8)
//! parameters, the rctl(8) rules, the mounts and the command lines that
//! apply them — so it is unit-tested on every platform. Nothing runs these
//! commands yet: the backend is not wired into `envup up` on FreeBSD, and
//! none of it has run on a real FreeBSD host (see docs/backends/jail.md).

use std::path::PathBuf;

use super::JailConfig;
use crate::backend::rootfs::Network as JailNetwork;

/// One mount, as a line of fstab(5) (jail(8)'s `mount` parameter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FstabLine {
    pub source: PathBuf,
    pub target: PathBuf,
    pub fstype: &'static str,
    pub options: &'static str,
}

impl std::fmt::Display for FstabLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {} {} 0 0",
            self.source.display(),
            self.target.display(),
            self.fstype,
            self.options
        )
    }
}

/// Everything `jail -c` and `rctl -a` are given for one machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The jail's name (also its rctl subject).
    pub name: String,
    /// `key=value` parameters for `jail -c`, in order.
    pub params: Vec<String>,
    /// Rules for `rctl -a`.
    pub rctl: Vec<String>,
    /// Mounts made before the jail starts, in order (and removed in
    /// reverse after it stops): the box's root read-only, the machine's own
    /// layer over it, then the shares.
    pub mounts: Vec<FstabLine>,
    /// Where SSH reaches the machine.
    pub ssh: (String, u16),
}

/// The loopback address a private jail gets: 127.0.1.N on `lo1`, N from the
/// jail's id, so two jails can each listen on the same port.
pub fn private_address(id: &str) -> String {
    let n = id
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    format!("127.0.1.{}", 2 + n % 250)
}

fn quote(value: &str) -> String {
    if !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:,".contains(&b))
    {
        value.to_owned()
    } else {
        format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// The parameters, rules and mounts for one machine.
pub fn plan(cfg: &JailConfig) -> Plan {
    let root = &cfg.merged;
    let mut mounts = vec![
        FstabLine {
            source: cfg.lower.clone(),
            target: root.clone(),
            fstype: "nullfs",
            options: "ro",
        },
        FstabLine {
            source: cfg.upper.clone(),
            target: root.clone(),
            fstype: "unionfs",
            options: "rw,noatime",
        },
    ];
    for s in &cfg.shares {
        mounts.push(FstabLine {
            source: s.host.clone(),
            target: root.join(s.guest.trim_start_matches('/')),
            fstype: "nullfs",
            options: if s.read_only { "ro" } else { "rw" },
        });
    }
    let mut params = vec![
        format!("name={}", cfg.id),
        format!("path={}", quote(&root.display().to_string())),
        format!("host.hostname={}", quote(&cfg.hostname)),
        "persist".to_owned(),
        "mount.devfs".to_owned(),
        // The stock ruleset for jails: no disks, no kernel memory.
        "devfs_ruleset=4".to_owned(),
        "enforce_statfs=2".to_owned(),
        "children.max=0".to_owned(),
        "allow.raw_sockets=0".to_owned(),
        "allow.mount=0".to_owned(),
        "securelevel=2".to_owned(),
        "exec.clean".to_owned(),
        "exec.start=\"/bin/sh /etc/rc\"".to_owned(),
        "exec.stop=\"/bin/sh /etc/rc.shutdown jail\"".to_owned(),
        format!("stop.timeout={}", super::HALT_DEADLINE.as_secs()),
    ];
    let ssh = match cfg.network {
        JailNetwork::Private => {
            let addr = private_address(&cfg.id);
            params.push(format!("ip4.addr=lo1|{addr}/32"));
            params.push("ip6=disable".to_owned());
            (addr, 22)
        }
        JailNetwork::Host => {
            params.push("ip4=inherit".to_owned());
            params.push("ip6=inherit".to_owned());
            ("127.0.0.1".to_owned(), 22)
        }
    };
    let subject = format!("jail:{}", cfg.id);
    let rctl = vec![
        format!("{subject}:memoryuse:deny={}", cfg.memory),
        format!("{subject}:maxproc:deny={}", cfg.pids),
        format!("{subject}:pcpu:deny={}", u64::from(cfg.cpus) * 100),
    ];
    Plan {
        name: cfg.id.clone(),
        params,
        rctl,
        mounts,
        ssh,
    }
}

/// The command lines that bring the jail up, in order.
pub fn start_commands(p: &Plan) -> Vec<Vec<String>> {
    let mut cmds = Vec::new();
    for m in &p.mounts {
        cmds.push(vec![
            "mount".into(),
            "-t".into(),
            m.fstype.into(),
            "-o".into(),
            m.options.into(),
            m.source.display().to_string(),
            m.target.display().to_string(),
        ]);
    }
    let mut jail = vec!["jail".to_owned(), "-c".to_owned()];
    jail.extend(p.params.iter().cloned());
    cmds.push(jail);
    for r in &p.rctl {
        cmds.push(vec!["rctl".into(), "-a".into(), r.clone()]);
    }
    cmds
}

/// The command lines that take it down again, in order.
pub fn stop_commands(p: &Plan) -> Vec<Vec<String>> {
    let mut cmds = vec![
        vec!["jail".to_owned(), "-r".to_owned(), p.name.clone()],
        vec!["rctl".into(), "-r".into(), format!("jail:{}", p.name)],
    ];
    for m in p.mounts.iter().rev() {
        cmds.push(vec!["umount".into(), m.target.display().to_string()]);
    }
    cmds
}

/// Whether `jls` lists the jail as running.
pub fn listed(jls_names: &str, name: &str) -> bool {
    jls_names.lines().any(|l| l.trim() == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envfile::config::Share;

    fn cfg(network: JailNetwork) -> JailConfig {
        JailConfig {
            lower: "/store/abc/rootfs".into(),
            upper: "/p/.envup/machines/web/jail/upper".into(),
            work: "/p/.envup/machines/web/jail/work".into(),
            merged: "/p/.envup/machines/web/jail/merged".into(),
            hostname: "web".into(),
            cpus: 2,
            memory: 512 << 20,
            pids: 1024,
            network,
            ssh_port: 2222,
            forwards: vec![],
            shares: vec![
                Share {
                    host: "/home/me/src".into(),
                    guest: "/src".into(),
                    read_only: true,
                },
                Share {
                    host: "/home/me/out dir".into(),
                    guest: "/out".into(),
                    read_only: false,
                },
            ],
            id: "envup-0123456789ab".into(),
            privileged: false,
            login: (0, 0),
        }
    }

    #[test]
    fn private_jail_parameters() {
        let p = plan(&cfg(JailNetwork::Private));
        let addr = private_address("envup-0123456789ab");
        assert_eq!(
            p.params,
            vec![
                "name=envup-0123456789ab".to_owned(),
                "path=/p/.envup/machines/web/jail/merged".into(),
                "host.hostname=web".into(),
                "persist".into(),
                "mount.devfs".into(),
                "devfs_ruleset=4".into(),
                "enforce_statfs=2".into(),
                "children.max=0".into(),
                "allow.raw_sockets=0".into(),
                "allow.mount=0".into(),
                "securelevel=2".into(),
                "exec.clean".into(),
                "exec.start=\"/bin/sh /etc/rc\"".into(),
                "exec.stop=\"/bin/sh /etc/rc.shutdown jail\"".into(),
                "stop.timeout=10".into(),
                format!("ip4.addr=lo1|{addr}/32"),
                "ip6=disable".into(),
            ]
        );
        assert_eq!(p.ssh, (addr, 22));
        assert_eq!(
            p.rctl,
            vec![
                "jail:envup-0123456789ab:memoryuse:deny=536870912",
                "jail:envup-0123456789ab:maxproc:deny=1024",
                "jail:envup-0123456789ab:pcpu:deny=200",
            ]
        );
    }

    #[test]
    fn host_network_inherits_the_stack() {
        let p = plan(&cfg(JailNetwork::Host));
        assert!(p.params.contains(&"ip4=inherit".to_owned()));
        assert!(p.params.contains(&"ip6=inherit".to_owned()));
        assert!(!p.params.iter().any(|x| x.starts_with("ip4.addr")));
        assert_eq!(p.ssh, ("127.0.0.1".to_owned(), 22));
    }

    #[test]
    fn mounts_layer_the_machine_over_the_box_then_shares() {
        let p = plan(&cfg(JailNetwork::Private));
        let lines: Vec<String> = p.mounts.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            vec![
                "/store/abc/rootfs /p/.envup/machines/web/jail/merged nullfs ro 0 0",
                "/p/.envup/machines/web/jail/upper /p/.envup/machines/web/jail/merged unionfs rw,noatime 0 0",
                "/home/me/src /p/.envup/machines/web/jail/merged/src nullfs ro 0 0",
                "/home/me/out dir /p/.envup/machines/web/jail/merged/out nullfs rw 0 0",
            ]
        );
        let start = start_commands(&p);
        assert_eq!(start[0][..5], ["mount", "-t", "nullfs", "-o", "ro"]);
        assert_eq!(start[4][..2], ["jail", "-c"]);
        assert_eq!(start.last().unwrap()[..2], ["rctl", "-a"]);
        let stop = stop_commands(&p);
        assert_eq!(stop[0], ["jail", "-r", "envup-0123456789ab"]);
        // Unmounted in reverse: shares first, the box's root last.
        assert_eq!(
            stop.last().unwrap(),
            &["umount", "/p/.envup/machines/web/jail/merged"]
        );
        assert_eq!(
            stop[2],
            ["umount", "/p/.envup/machines/web/jail/merged/out"]
        );
    }

    #[test]
    fn values_with_spaces_are_quoted() {
        let mut c = cfg(JailNetwork::Private);
        c.merged = "/home/me/my project/.envup/m".into();
        let p = plan(&c);
        assert_eq!(p.params[1], "path=\"/home/me/my project/.envup/m\"");
    }

    #[test]
    fn private_addresses_differ_and_stay_on_lo1_range() {
        let a = private_address("envup-aaaaaaaaaaaa");
        let b = private_address("envup-bbbbbbbbbbbb");
        assert_ne!(a, b);
        for x in [a, b] {
            let last: u32 = x.rsplit('.').next().unwrap().parse().unwrap();
            assert!((2..252).contains(&last), "{x}");
        }
    }

    #[test]
    fn jls_listing() {
        assert!(listed("other\nenvup-0123456789ab\n", "envup-0123456789ab"));
        assert!(!listed("envup-0123456789abc\n", "envup-0123456789ab"));
    }
}
