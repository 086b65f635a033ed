//! Running the built `envup` in a temp project with its own ENVUP_HOME.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub struct Project {
    pub dir: tempfile::TempDir,
    pub home: tempfile::TempDir,
}

impl Project {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            home: tempfile::tempdir().unwrap(),
        }
    }

    /// A project in a directory whose name starts with `prefix` (for
    /// names with spaces, commas and quotes) and a byte that is not UTF-8.
    pub fn with_envfile_in(prefix: &str, text: &str) -> Self {
        use std::os::unix::ffi::OsStringExt;
        let mut name = prefix.as_bytes().to_vec();
        name.extend(b"\xff\xfe");
        let p = Self {
            dir: tempfile::Builder::new()
                .prefix(&std::ffi::OsString::from_vec(name))
                .tempdir()
                .unwrap(),
            home: tempfile::tempdir().unwrap(),
        };
        p.write("Envfile", text);
        p
    }

    pub fn with_envfile(text: &str) -> Self {
        let p = Self::new();
        p.write("Envfile", text);
        p
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    pub fn cmd(&self, args: &[&str]) -> Run {
        let mut c = Command::new(env!("CARGO_BIN_EXE_envup"));
        c.args(args)
            .current_dir(self.dir.path())
            .env("ENVUP_HOME", self.home.path())
            .env_remove("NO_COLOR")
            .stdin(Stdio::null());
        Run(c)
    }
}

/// The ENVUP_HOMEs tests share between projects (`boxes::home_with`).
static HOMES: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

pub fn register_home(home: &Path) {
    HOMES.lock().unwrap().push(home.to_owned());
}

/// The project's state directory (under `$ENVUP_HOME/projects/`): in the
/// shared home it was used with, or in its own.
pub fn state(p: &Project) -> PathBuf {
    let key = envup::state::project_key(p.path());
    let homes = HOMES.lock().unwrap().clone();
    homes
        .iter()
        .map(PathBuf::as_path)
        .chain([p.home.path()])
        .map(|h| h.join("projects").join(&key))
        .find(|d| d.exists())
        .unwrap_or_else(|| p.home.path().join("projects").join(&key))
}

/// Where envup may run the plugin programs of `dir` from: `dir` itself
/// when it and every directory above it are root's (or the user's) and
/// closed to others, as envup requires of a plugin's; otherwise a copy of
/// them in such a place (a checkout in /tmp, say), made once per `dir`.
pub fn trusted_plugins(dir: &Path) -> PathBuf {
    if envup::backend::plugin::strict_modes(dir).is_ok() {
        return dir.to_owned();
    }
    static COPIES: std::sync::Mutex<Vec<(PathBuf, PathBuf)>> = std::sync::Mutex::new(Vec::new());
    let mut copies = COPIES.lock().unwrap();
    if let Some((_, copy)) = copies.iter().find(|(d, _)| d == dir) {
        return copy.clone();
    }
    let base = if nix::unistd::geteuid().is_root() {
        PathBuf::from("/run/envup-tests")
    } else {
        PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/envup-tests")
    };
    let copy = base.join(format!("{}-{}", std::process::id(), copies.len()));
    std::fs::create_dir_all(&copy).unwrap();
    for d in [&base, &copy] {
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_type().is_ok_and(|t| t.is_file()) {
            std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
        }
    }
    copies.push((dir.to_owned(), copy.clone()));
    copy
}

pub struct Run(pub Command);

impl Run {
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.0.env(k, v);
        self
    }

    pub fn cwd(mut self, dir: &Path) -> Self {
        self.0.current_dir(dir);
        self
    }

    pub fn out(mut self) -> Done {
        let o = self.0.output().unwrap();
        Done(o)
    }
}

pub struct Done(pub Output);

impl Done {
    pub fn code(&self) -> i32 {
        self.0.status.code().unwrap_or(-1)
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }

    /// Assert the exit code, showing the output when it is wrong.
    pub fn status(self, code: i32) -> Self {
        assert_eq!(
            self.code(),
            code,
            "exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout(),
            self.stderr()
        );
        self
    }

    pub fn stderr_has(self, text: &str) -> Self {
        assert!(
            self.stderr().contains(text),
            "stderr lacks {text:?}:\n{}",
            self.stderr()
        );
        self
    }

    pub fn stdout_has(self, text: &str) -> Self {
        assert!(
            self.stdout().contains(text),
            "stdout lacks {text:?}:\n{}",
            self.stdout()
        );
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.0.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout()))
    }
}

/// Machines on the container backend. Tests that run `up` on them hide
/// every container engine (`NO_ENGINES`), so nothing is made.
pub const TWO_MACHINES: &str = r#"
[defaults]
box = "tiny"
backend = "container"

[machines.db]
forward = [{ guest = 5432, host = 15432 }]

[machines.web]
depends_on = ["db"]
primary = true
forward = [{ guest = 80, host = 8080 }]
provision = [{ shell = "echo hi", name = "hello" }]

[machines.extra]
autostart = false
"#;
/// A test step that fails with `what` unless `cond` holds.
pub fn check(cond: bool, what: impl Into<String>) -> Result<(), libtest_mimic::Failed> {
    if cond {
        Ok(())
    } else {
        Err(what.into().into())
    }
}

/// `envup exec MACHINE -- sh -c SCRIPT` with `home` as ENVUP_HOME; its
/// stdout (the command must succeed).
pub fn exec_in(home: &Path, p: &Project, machine: &str, script: &str) -> String {
    p.cmd(&["exec", machine, "--", "sh", "-c", script])
        .env("ENVUP_HOME", home.to_str().unwrap())
        .out()
        .status(0)
        .stdout()
}

/// A PATH on which no container engine (nor anything else) is found.
pub const NO_ENGINES: (&str, &str) = ("PATH", "/nonexistent");

pub mod boxes;
pub mod http;
pub mod libvirt;
pub mod qemu;

/// Why jails cannot run on this host, if they cannot.
pub fn jails_unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("jails need root".into());
    }
    for (tool, pkg) in [
        ("slirp4netns", "slirp4netns"),
        ("unshare", "util-linux"),
        ("apt-get", "apt"),
        ("mkfs.ext4", "e2fsprogs"),
    ] {
        if host_lacks(tool) {
            return Some(format!("{tool} is missing (apt-get install {pkg})"));
        }
    }
    None
}

/// The LXC container of a machine's directory: its own directory under
/// `lxc/`, the one with a config.
pub fn lxc_names(machine: &Path) -> Vec<String> {
    if !machine.join("lxc").is_dir() {
        return Vec::new();
    }
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(machine.join("state.json")).unwrap_or_default())
            .unwrap_or_default();
    state["id"]
        .as_str()
        .and_then(|id| id.strip_prefix("lxc:"))
        .map(str::to_owned)
        .into_iter()
        .collect()
}

/// Why `engine` (docker, podman, lxc) cannot run machines here, if it cannot.
pub fn engine_unavailable(engine: &str) -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("box builds need root".into());
    }
    if engine == "lxc" {
        return host_lacks("lxc-start")
            .then(|| "lxc is not installed (apt-get install lxc)".into());
    }
    envup::backend::container::engine::EngineCli::find(match engine {
        "docker" => envup::backend::container::engine::Kind::Docker,
        _ => envup::backend::container::engine::Kind::Podman,
    })
    .err()
    .map(|e| envup::cli::error::chain(&e))
}

/// The engine's names of the project's containers: Docker's and Podman's
/// from the machine's `container.json`, LXC's from the container
/// directories under its `lxc/` (those with a `config`).
pub fn containers(p: &Project) -> Vec<String> {
    let dir = state(p).join("machines");
    let names = |machine: std::path::PathBuf| -> Vec<String> {
        if let Ok(b) = std::fs::read(machine.join("container.json")) {
            let v: serde_json::Value = serde_json::from_slice(&b).unwrap_or_default();
            return v["name"].as_str().map(str::to_owned).into_iter().collect();
        }
        lxc_names(&machine)
    };
    std::fs::read_dir(&dir)
        .map(|d| d.flatten().flat_map(|e| names(e.path())).collect())
        .unwrap_or_default()
}

/// Which of the containers `names` engine `engine` (`docker`, `podman`)
/// still has; none for any other backend.
pub fn engine_containers_left(engine: &str, names: &[String]) -> Vec<String> {
    if !matches!(engine, "docker" | "podman") {
        return Vec::new();
    }
    names
        .iter()
        .filter(|n| {
            let o = std::process::Command::new(engine)
                .args(["ps", "-a", "-q", "--filter", &format!("name=^{n}$")])
                .output()
                .unwrap();
            !o.stdout.is_empty()
        })
        .cloned()
        .collect()
}

/// The host names (cgroup, netns) of the project's jails and LXC
/// containers.
pub fn jail_ids(p: &Project) -> Vec<String> {
    let dir = state(p).join("machines");
    let ids = |machine: PathBuf| -> Vec<String> {
        if let Ok(b) = std::fs::read(machine.join("jail/jail.json")) {
            let v: serde_json::Value = serde_json::from_slice(&b).unwrap_or_default();
            return v["id"].as_str().map(str::to_owned).into_iter().collect();
        }
        lxc_names(&machine)
    };
    std::fs::read_dir(&dir)
        .map(|d| d.flatten().flat_map(|e| ids(e.path())).collect())
        .unwrap_or_default()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Whether anything is mounted at or below `dir` (as /proc/mounts writes
/// paths: a space, tab, newline and backslash as octal escapes).
pub fn mounted_below(dir: &Path) -> bool {
    let mut escaped = Vec::new();
    for &b in dir.as_os_str().as_encoded_bytes() {
        match b {
            b' ' | b'\t' | b'\n' | b'\\' => escaped.extend(format!("\\{b:03o}").as_bytes()),
            _ => escaped.push(b),
        }
    }
    let mounts = std::fs::read("/proc/mounts").unwrap();
    contains(&mounts, &escaped)
}

/// The command lines of the processes (envup's tests aside) whose command
/// line holds `bytes`.
pub fn processes_naming(bytes: &[u8]) -> Vec<String> {
    let me = std::process::id();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if contains(&cmdline, bytes) {
            found.push(format!(
                "{pid}: {}",
                String::from_utf8_lossy(&cmdline).replace('\0', " ")
            ));
        }
    }
    found
}

/// What runc hides or freezes in a container's /proc and /sys is hidden or
/// frozen in the machine (`exec` runs a script in it): the host's sysctls cannot be written (the test
/// writes back the value it read, never another), nor the SysRq trigger;
/// the kernel's memory image and the firmware tables show nothing.
pub fn kernel_paths_guarded(exec: &dyn Fn(&str) -> String) -> Result<(), libtest_mimic::Failed> {
    let said = exec(
        "v=$(cat /proc/sys/kernel/core_pattern); \
         if printf '%s\\n' \"$v\" > /proc/sys/kernel/core_pattern; then echo written; else echo refused; fi 2>/dev/null",
    );
    check(said == "refused\n", format!("a host sysctl: {said:?}"))?;
    let said = exec(
        "if echo h > /proc/sysrq-trigger; then echo written; else echo refused; fi 2>/dev/null",
    );
    check(
        said == "refused\n",
        format!("/proc/sysrq-trigger: {said:?}"),
    )?;
    let said = exec("head -c 16 /proc/kcore | wc -c");
    check(
        said.trim() == "0",
        format!("/proc/kcore gives {said:?} bytes"),
    )?;
    let said = exec("ls -A /sys/firmware | wc -l");
    check(
        said.trim() == "0",
        format!("/sys/firmware holds {said:?} entries"),
    )?;
    let said = exec("grep '^Seccomp:' /proc/self/status");
    check(
        said.split_whitespace().nth(1) == Some("2"),
        format!("no seccomp filter: {said:?}"),
    )
}

/// The seccomp filter: keyctl (250 on x86_64; the keyrings are the host
/// kernel's) answers EPERM. Asked from perl, which debian/bookworm has.
pub fn keyctl_refused(exec: &dyn Fn(&str) -> String) -> Result<(), libtest_mimic::Failed> {
    let errno = exec("perl -e '$! = 0; syscall(250, 0, 0, 0, 0, 0); print $! + 0'");
    check(
        errno == "1",
        format!("keyctl gave errno {errno:?}, not EPERM"),
    )
}

/// Nothing of the machines is left on the host.
pub fn nothing_left(p: &Project, ids: &[String]) -> Result<(), libtest_mimic::Failed> {
    let dir = state(p).join("machines");
    for m in ["web", "a", "b", "many"] {
        check(
            !dir.join(m).exists(),
            format!("state directory of {m} left"),
        )?;
    }
    check(!mounted_below(p.path()), "a mount is left")?;
    let procs = processes_naming(state(p).as_os_str().as_encoded_bytes());
    check(procs.is_empty(), format!("processes left: {procs:?}"))?;
    for id in ids {
        check(
            !Path::new("/run/netns").join(id).exists(),
            format!("netns {id} left"),
        )?;
        // Also a name hidden under a later mount of /run/netns.
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        check(
            !mounts.contains(&format!("/run/netns/{id} ")),
            format!("netns {id} left mounted"),
        )?;
        check(
            std::fs::symlink_metadata(Path::new("/run/envup/lxc").join(id)).is_err(),
            format!("LXC's link /run/envup/lxc/{id} left"),
        )?;
        check(
            std::fs::symlink_metadata(Path::new("/run/envup-lxc").join(id)).is_err(),
            format!("LXC's directory /run/envup-lxc/{id} left"),
        )?;
        // The network helper names the namespace, not the project.
        let helpers = std::process::Command::new("pgrep")
            .args(["-af", id])
            .output()
            .unwrap();
        check(
            helpers.stdout.is_empty(),
            format!(
                "processes left: {}",
                String::from_utf8_lossy(&helpers.stdout)
            ),
        )?;
        // In every hierarchy (v1 controllers, v1's named ones, v2).
        let hierarchies = std::fs::read_dir("/sys/fs/cgroup")
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .chain([PathBuf::from("/sys/fs/cgroup")]);
        for h in hierarchies {
            let d = h.join("envup").join(id);
            check(!d.exists(), format!("cgroup {} left", d.display()))?;
        }
    }
    // No block of ids stays claimed for the project's machines.
    let state_dir = state(p);
    let project = state_dir.as_os_str().as_encoded_bytes();
    for claim in std::fs::read_dir("/var/lib/envup/ids")
        .into_iter()
        .flatten()
        .flatten()
    {
        let text = std::fs::read(claim.path()).unwrap_or_default();
        check(
            !text.starts_with(project),
            format!("ids claim {} left", claim.path().display()),
        )?;
    }
    network_gone(p)
}

/// Nothing of the project's network is left: no record, no claim naming
/// the project, and no project bridge on the host whose subnet no project
/// claims (one envup lost track of).
pub fn network_gone(p: &Project) -> Result<(), libtest_mimic::Failed> {
    check(!state(p).join("network.json").exists(), "network.json left")?;
    let state_dir = state(p);
    let project = state_dir.as_os_str().as_encoded_bytes();
    let claims: Vec<(String, Vec<u8>)> = std::fs::read_dir(envup::network::CLAIMS_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap_or_default(),
            )
        })
        .collect();
    for (name, holder) in &claims {
        check(
            !holder.starts_with(project),
            format!("network claim {name} left"),
        )?;
    }
    let claimed: Vec<String> = claims
        .iter()
        .map(|(_, holder)| {
            use std::os::unix::ffi::OsStrExt;
            envup::network::bridge_of(Path::new(std::ffi::OsStr::from_bytes(holder)))
        })
        .collect();
    // No firewall rule for the project's bridge, not even a second copy.
    let br = envup::network::bridge_of(&state_dir);
    if let Ok(o) = std::process::Command::new("iptables")
        .args(["-w", "-S", "ENVUP-FORWARD"])
        .output()
    {
        let rules = String::from_utf8_lossy(&o.stdout);
        check(
            !rules.lines().any(|l| l.contains(&format!("-i {br} "))),
            format!("a firewall rule for {br} left"),
        )?;
    }
    for link in std::fs::read_dir("/sys/class/net").unwrap().flatten() {
        let name = link.file_name().to_string_lossy().into_owned();
        if name.starts_with("envup") && name != "envupprobe0" {
            check(
                claimed.contains(&name),
                format!("bridge {name} left, claimed by no project"),
            )?;
        }
    }
    Ok(())
}

/// A fork storm started as a systemd service with no limit of its own
/// (TasksMax=infinity), in a machine whose pids cgroup on the host is `cg`:
/// it stays inside the machine's cgroup and stops at 1024 processes (bash
/// retries a fork that fails, so it stays at the limit until it is ended
/// from the host).
pub fn storm_held(exec: &dyn Fn(&str) -> String, cg: &Path) -> Result<(), libtest_mimic::Failed> {
    exec(
        "systemd-run --unit=storm -p TasksMax=infinity bash -c \
         'for i in $(seq 1 1500); do sleep 60 & done; wait' >/dev/null 2>&1",
    );
    std::thread::sleep(std::time::Duration::from_secs(5));
    let current: u64 = std::fs::read_to_string(cg.join("pids.current"))
        .unwrap_or_default()
        .trim()
        .parse()
        .unwrap_or(0);
    // The storm's unit, in every hierarchy that has it (systemd may track
    // it in another than pids): killed until it is empty, then the machine
    // has its processes back (its SSH server must fork again).
    let root = Path::new("/sys/fs/cgroup");
    let hierarchies: Vec<PathBuf> = std::fs::read_dir(root)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .chain([root.to_path_buf()])
        .collect();
    let rel = hierarchies
        .iter()
        .find_map(|h| cg.strip_prefix(h).ok())
        .unwrap_or(cg)
        .to_path_buf();
    for _ in 0..50 {
        let mut killed = 0;
        for h in &hierarchies {
            let procs = h.join(&rel).join("system.slice/storm.service/cgroup.procs");
            for pid in std::fs::read_to_string(&procs).unwrap_or_default().lines() {
                if let Ok(pid) = pid.trim().parse() {
                    killed += 1;
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        if killed == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    for _ in 0..100 {
        let now: u64 = std::fs::read_to_string(cg.join("pids.current"))
            .unwrap_or_default()
            .trim()
            .parse()
            .unwrap_or(0);
        if now < 200 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    check(
        current > 1024 - 30 && current <= 1024,
        format!(
            "{} counts {current} processes (pids.max 1024)",
            cg.display()
        ),
    )
}

/// From inside a machine as root: what a user namespace, a cgroup
/// namespace and the filters keep it from. `other` names another machine's
/// cgroup (it must not show), `other_pid` is a host process outside the
/// machine (another machine's init): signalling it must fail.
pub fn root_is_confined(
    exec: &dyn Fn(&str) -> String,
    other: &str,
    other_pid: u32,
) -> Result<(), libtest_mimic::Failed> {
    // Root in the machine is an unprivileged host uid.
    let map = exec("cat /proc/self/uid_map");
    let f: Vec<u64> = map
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    check(
        f.len() == 3 && f[0] == 0 && f[1] >= 65536 && f[2] == 65536,
        format!("root's uid map is {map:?}"),
    )?;
    // The host's init is not there to read.
    let host_env = std::fs::read("/proc/1/environ").unwrap_or_default();
    let seen = exec("cat /proc/1/environ 2>/dev/null | tr '\\0' '\\n'");
    check(
        seen.contains("container=") && (host_env.is_empty() || seen.as_bytes() != host_env),
        format!("/proc/1/environ in the machine: {seen:?}"),
    )?;
    check(
        exec("mknod /tmp/sda b 8 0 2>/dev/null && echo made || echo refused") == "refused\n",
        "mknod of a block device worked",
    )?;
    check(
        exec(
            "mkdir -p /tmp/d && mount -t devtmpfs none /tmp/d 2>/dev/null && echo mounted || echo refused",
        ) == "refused\n",
        "devtmpfs mounted",
    )?;
    // A cgroup file system mounted inside shows the machine's own cgroup
    // at its top, nothing of the host's or another machine's, and its
    // limits cannot be raised or its freezer used.
    let said = exec(
        "mkdir -p /tmp/cg && if mount -t cgroup -o memory,freezer none /tmp/cg 2>/dev/null \
           || mount -t cgroup -o memory none /tmp/cg 2>/dev/null || mount -t cgroup2 none /tmp/cg 2>/dev/null; then \
           ls /tmp/cg; for f in memory.limit_in_bytes memory.max freezer.state cgroup.freeze; do \
             [ -e /tmp/cg/$f ] || continue; v=$(cat /tmp/cg/$f); \
             if (echo 0 > /tmp/cg/$f) 2>/dev/null; then echo \"wrote $f\"; fi; \
             [ \"$(cat /tmp/cg/$f)\" = \"$v\" ] || echo \"changed $f\"; done; \
           umount /tmp/cg; else echo refused; fi",
    );
    check(
        !said.contains("envup")
            && !said.contains(other)
            && !said.contains("wrote")
            && !said.contains("changed"),
        format!("a cgroup file system inside shows or allows: {said}"),
    )?;
    // Processes outside are not there to signal (by their host pid).
    check(
        other_pid > 1,
        format!("no host process to try: pid {other_pid}"),
    )?;
    let said = exec(&format!(
        "kill -STOP {other_pid} 2>/dev/null && echo sent || echo refused"
    ));
    check(
        said == "refused\n",
        format!("SIGSTOP to host pid {other_pid}: {said}"),
    )?;
    Ok(())
}

/// True when `program` is not on PATH.
pub fn host_lacks(program: &str) -> bool {
    envup::host::which(program).is_none()
}
pub mod sshd;
pub mod victim;
