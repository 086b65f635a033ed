//! A cgroup per jail with its cpus, memory and pids limits, on cgroup v1
//! (one hierarchy per controller) or v2 (one unified hierarchy).

use std::path::{Path, PathBuf};

use super::probe::CgroupLayout;

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
    /// The cgroup directories `name` has (or would have) on this host.
    pub fn dirs_for(name: &str) -> Vec<PathBuf> {
        let layout = CgroupLayout::from_mountinfo(
            &std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default(),
        );
        let mut dirs: Vec<PathBuf> = Vec::new();
        for c in ["memory", "pids", "cpu", "freezer"] {
            if let Some((_, mount)) = layout.v1.iter().find(|(ctl, _)| ctl == c) {
                let d = Path::new(mount).join("envup").join(name);
                if !dirs.contains(&d) {
                    dirs.push(d);
                }
            }
        }
        if dirs.is_empty()
            && let Some(v2) = &layout.v2
        {
            dirs.push(Path::new(v2).join("envup").join(name));
        }
        dirs
    }

    /// Create the jail's cgroup and set its limits.
    pub fn create(name: &str, cpus: u32, memory: u64, pids: u64) -> Result<Cgroup, CgroupError> {
        let dirs = Self::dirs_for(name);
        if dirs.is_empty() {
            return Err(CgroupError::NoHierarchy);
        }
        for d in &dirs {
            let parent = d.parent().expect("under envup/");
            std::fs::create_dir_all(d).map_err(|e| CgroupError::Create(d.clone(), e))?;
            let hierarchy = parent.parent().expect("under a mount").to_path_buf();
            let is_v2 =
                hierarchy.join("cgroup.controllers").exists() && !hierarchy.join("tasks").exists();
            if is_v2 {
                // Hand the controllers down to envup/ and to the jail.
                let _ = write(
                    &hierarchy.join("cgroup.subtree_control"),
                    "+memory +pids +cpu",
                );
                let _ = write(&parent.join("cgroup.subtree_control"), "+memory +pids +cpu");
                write(&d.join("memory.max"), &memory.to_string())?;
                write(&d.join("pids.max"), &pids.to_string())?;
                write(
                    &d.join("cpu.max"),
                    &format!("{} 100000", u64::from(cpus) * 100_000),
                )?;
                continue;
            }
            if d.join("memory.limit_in_bytes").exists() {
                write(&d.join("memory.limit_in_bytes"), &memory.to_string())?;
            }
            if d.join("pids.max").exists() {
                write(&d.join("pids.max"), &pids.to_string())?;
            }
            if d.join("cpu.cfs_quota_us").exists() {
                write(&d.join("cpu.cfs_period_us"), "100000")?;
                write(
                    &d.join("cpu.cfs_quota_us"),
                    &(u64::from(cpus) * 100_000).to_string(),
                )?;
            }
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

    /// SIGKILL every process in the jail's cgroup, and wait until it is empty.
    pub fn kill_all(name: &str) {
        for d in Self::dirs_for(name) {
            for _ in 0..100 {
                let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
                let pids: Vec<i32> = procs
                    .lines()
                    .filter_map(|l| l.trim().parse().ok())
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

    /// Remove the jail's cgroup directories (they must be empty of processes).
    pub fn remove_dirs(name: &str) {
        for d in Self::dirs_for(name) {
            for _ in 0..50 {
                if std::fs::remove_dir(&d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            // envup/ itself goes once no jail uses it (it fails while one does).
            if let Some(parent) = d.parent() {
                let _ = std::fs::remove_dir(parent);
            }
        }
    }
}
