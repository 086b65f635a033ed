//! A cgroup per jail with its cpus, memory and pids limits, on cgroup v1
//! (one hierarchy per controller) or v2 (one unified hierarchy).

use std::path::{Path, PathBuf};

use super::probe::CgroupLayout;

/// What a jail may use.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub cpus: u32,
    pub memory: u64,
    pub pids: u64,
}

impl Limits {
    /// The files that set these limits, with their values, in cgroup v2 or v1.
    fn files(&self, v2: bool) -> Vec<(&'static str, String)> {
        let quota = u64::from(self.cpus) * 100_000;
        if v2 {
            vec![
                ("memory.max", self.memory.to_string()),
                ("pids.max", self.pids.to_string()),
                ("cpu.max", format!("{quota} 100000")),
            ]
        } else {
            vec![
                ("memory.limit_in_bytes", self.memory.to_string()),
                ("pids.max", self.pids.to_string()),
                ("cpu.cfs_period_us", "100000".into()),
                ("cpu.cfs_quota_us", quota.to_string()),
            ]
        }
    }
}

#[derive(Debug, Clone)]
pub struct Cgroup {
    /// The jail's directory in each hierarchy it is limited in.
    dirs: Vec<PathBuf>,
}

/// What can go wrong with a jail's cgroup.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup hierarchy with the memory, pids and cpu controllers is mounted")]
    NoHierarchy,
    #[error("cannot create cgroup {}", .0.display())]
    Create(PathBuf, #[source] std::io::Error),
    #[error("cannot write {value:?} to {}", .path.display())]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot hand {} to the jail's root", .0.display())]
    Delegate(PathBuf, #[source] std::io::Error),
    #[error("the cgroup freezer did not finish in 10 s")]
    FreezeTimeout,
    #[error("this host's cgroups have no freezer for the jail")]
    NoFreezer,
}

impl crate::backend::OwnError for CgroupError {}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.to_owned(),
        value: value.to_owned(),
        source,
    })
}

/// Poll `done` for up to 10 s.
fn wait_for(done: impl Fn() -> bool) -> Result<(), CgroupError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !done() {
        if std::time::Instant::now() > deadline {
            return Err(CgroupError::FreezeTimeout);
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Ok(())
}

impl Cgroup {
    /// The cgroup directories `name` has (or would have) on this host: one
    /// in every hierarchy, so that everything the jail runs stays below it
    /// (cgroup v1 controllers, v1's named `systemd` hierarchy, and v2).
    pub fn dirs_for(name: &str) -> Vec<PathBuf> {
        let layout = CgroupLayout::from_mountinfo(
            &std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default(),
        );
        let mut dirs: Vec<PathBuf> = Vec::new();
        for mount in layout.v1_mounts.iter().chain(&layout.v2) {
            let d = Path::new(mount).join("envup").join(name);
            if !dirs.contains(&d) {
                dirs.push(d);
            }
        }
        dirs
    }

    /// Create the jail's cgroup and set its limits. With `owner` (the host
    /// ids of the jail's root), the jail's own directories are delegated
    /// to it: its root may make cgroups below them (systemd does), never
    /// change their limits.
    pub fn create(
        name: &str,
        limits: Limits,
        owner: Option<(u32, u32)>,
    ) -> Result<Cgroup, CgroupError> {
        let dirs = Self::dirs_for(name);
        let mut limited = false;
        for d in &dirs {
            let parent = d.parent().expect("under envup/");
            let hierarchy = parent.parent().expect("under a mount");
            std::fs::create_dir_all(d).map_err(|e| CgroupError::Create(d.clone(), e))?;
            if hierarchy.join("cpuset.cpus").exists() {
                // A new v1 cpuset has no cpus and takes no process: it
                // gets its parent's, and hands them to its children.
                for f in ["cpuset.cpus", "cpuset.mems"] {
                    for (from, to) in [(hierarchy, parent), (parent, d.as_path())] {
                        let value = std::fs::read_to_string(from.join(f)).unwrap_or_default();
                        if std::fs::read_to_string(to.join(f))
                            .unwrap_or_default()
                            .trim()
                            .is_empty()
                        {
                            write(&to.join(f), value.trim())?;
                        }
                    }
                }
                write(&d.join("cgroup.clone_children"), "1")?;
            }
            let is_v2 = hierarchy.join("cgroup.controllers").exists();
            if is_v2 {
                // Hand the controllers down to envup/ and to the jail (a
                // hybrid host's v2 has none to hand).
                let _ = write(
                    &hierarchy.join("cgroup.subtree_control"),
                    "+memory +pids +cpu",
                );
                let _ = write(&parent.join("cgroup.subtree_control"), "+memory +pids +cpu");
            }
            for (file, value) in limits.files(is_v2) {
                if d.join(file).exists() {
                    write(&d.join(file), &value)?;
                    limited |= file.starts_with("memory.");
                }
            }
            if let Some((uid, gid)) = owner {
                for f in [
                    "",
                    "cgroup.procs",
                    "tasks",
                    "cgroup.clone_children",
                    "cgroup.subtree_control",
                    "cgroup.threads",
                ] {
                    let p = d.join(f);
                    match std::os::unix::fs::chown(&p, Some(uid), Some(gid)) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            return Err(CgroupError::Delegate(p, e));
                        }
                        _ => {}
                    }
                }
            }
        }
        if !limited {
            return Err(CgroupError::NoHierarchy);
        }
        Ok(Cgroup { dirs })
    }

    /// Put process `pid` (and so everything it starts) into the cgroup.
    pub fn add(&self, pid: i32) -> Result<(), CgroupError> {
        for d in &self.dirs {
            write(&d.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Freeze (or thaw) every process of the jail: v1's freezer controller
    /// or v2's cgroup.freeze, waiting until the kernel says it holds.
    pub fn freeze(name: &str, frozen: bool) -> Result<(), CgroupError> {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        for d in Self::dirs_for(name) {
            let v1 = d.join("freezer.state");
            if v1.exists() {
                let want = if frozen { "FROZEN" } else { "THAWED" };
                write(&v1, want)?;
                return wait_for(|| read(&v1).trim() == want);
            }
            let v2 = d.join("cgroup.freeze");
            if v2.exists() {
                write(&v2, if frozen { "1" } else { "0" })?;
                let want = format!("frozen {}", u8::from(frozen));
                let events = d.join("cgroup.events");
                return wait_for(|| read(&events).lines().any(|l| l == want));
            }
        }
        Err(CgroupError::NoFreezer)
    }

    /// SIGKILL every process in the jail's cgroups (and the cgroups made
    /// below them), and wait until they are empty.
    pub fn kill_all(name: &str) {
        for d in Self::dirs_for(name) {
            for _ in 0..100 {
                let pids: Vec<i32> = below(&d)
                    .iter()
                    .flat_map(|c| {
                        let procs =
                            std::fs::read_to_string(c.join("cgroup.procs")).unwrap_or_default();
                        procs
                            .lines()
                            .filter_map(|l| l.trim().parse().ok())
                            .collect::<Vec<_>>()
                    })
                    .collect();
                if pids.is_empty() {
                    break;
                }
                for pid in pids {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }

    /// Remove the jail's cgroup directories and those made below them
    /// (they must be empty of processes).
    pub fn remove_dirs(name: &str) {
        for d in Self::dirs_for(name) {
            // Deepest first: a cgroup with children cannot go.
            for c in below(&d).iter().rev() {
                for _ in 0..50 {
                    if std::fs::remove_dir(c).is_ok() || !c.exists() {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
            }
            // envup/ itself goes once no jail uses it (it fails while one does).
            if let Some(parent) = d.parent() {
                let _ = std::fs::remove_dir(parent);
            }
        }
    }
}

/// `top` and every cgroup below it, parents before children. Only real
/// directories are followed (a cgroup file system has no links).
fn below(top: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut next = vec![top.to_owned()];
    while let Some(d) = next.pop() {
        if !std::fs::symlink_metadata(&d).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        if let Ok(entries) = std::fs::read_dir(&d) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    next.push(e.path());
                }
            }
        }
        out.push(d);
    }
    out
}
