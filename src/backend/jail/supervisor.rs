//! The jail supervisor: `envup __jail-supervise DIR`. It creates the jail's
//! cgroup, clones the jail's init into new namespaces, connects the private
//! network (slirp4netns), waits for init, and cleans up after it. SIGTERM halts
//! the jail gracefully (init is asked to power off, then killed after a
//! deadline); SIGINT kills it at once.

use std::path::Path;
use std::process::Child;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::CloneFlags;
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, kill, sigaction};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::cgroup::Cgroup;
use super::{HALT_DEADLINE, JailConfig};
use crate::backend::rootfs::Network as JailNetwork;
use crate::backend::rootfs::net::{self, forget_netns, name_netns};
use crate::contained::{Root, fd_path};

/// What can stop a jail from starting, as its supervisor logs it.
#[derive(Debug, thiserror::Error)]
enum SetupError {
    #[error("{step}")]
    Sys {
        step: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot drop {0}")]
    Cap(&'static str, #[source] nix::Error),
    #[error(transparent)]
    Net(#[from] crate::backend::rootfs::net::NetError),
    #[error(transparent)]
    Cgroup(#[from] super::cgroup::CgroupError),
    #[error("cannot release the jail's init")]
    Release(#[source] nix::Error),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Seccomp(#[from] crate::backend::rootfs::seccomp::SeccompError),
}

fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> SetupError {
    let what = what.to_string();
    move |source| SetupError::Io { what, source }
}

/// 0: run; 1: halt gracefully; 2: kill now.
static REQUEST: AtomicU8 = AtomicU8::new(0);

extern "C" fn on_signal(sig: i32) {
    let want = if sig == Signal::SIGINT as i32 { 2 } else { 1 };
    REQUEST.fetch_max(want, Ordering::SeqCst);
}

/// Remove what a jail leaves on the host: its netns name and cgroup.
pub fn clean_up(cfg: &JailConfig) {
    forget_netns(&cfg.id);
    Cgroup::remove_dirs(&cfg.id);
}

/// Inside the new namespaces: the root filesystem, then init.
fn enter(cfg: &JailConfig, ready: std::os::fd::OwnedFd, filter: &seccompiler::BpfProgram) -> isize {
    // If the supervisor dies, so does the jail: no orphaned jails.
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    // Wait until the supervisor has put us in the cgroup and the network.
    let mut b = [0u8; 1];
    let _ = nix::unistd::read(&ready, &mut b);
    let set_up = setup_root(cfg)
        .and_then(|()| drop_capabilities(cfg.network))
        .and_then(|()| {
            if cfg.privileged {
                return Ok(());
            }
            crate::backend::rootfs::seccomp::install(filter).map_err(SetupError::from)
        });
    match set_up {
        Ok(()) => {
            let init = ["/sbin/init", "/usr/sbin/init", "/lib/systemd/systemd"]
                .into_iter()
                .find(|p| Path::new(p).exists())
                .unwrap_or("/sbin/init");
            let env = [
                c"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                c"container=envup",
                c"TERM=linux",
            ];
            let path = std::ffi::CString::new(init).expect("no NUL");
            let err = nix::unistd::execve(&path, &[&path], &env);
            eprintln!("cannot start {init} in the jail: {err:?}");
            127
        }
        Err(e) => {
            eprintln!(
                "cannot set up the jail's root: {}",
                crate::cli::error::chain(&e)
            );
            126
        }
    }
}

/// Capabilities taken from the jail's bounding set before init starts, so
/// no process in the jail ever has them (docs/backends/jail.md says why
/// each goes and why the rest stay).
pub const DROPPED_CAPS: [(u32, &str); 15] = [
    (2, "CAP_DAC_READ_SEARCH"),
    (9, "CAP_LINUX_IMMUTABLE"),
    (16, "CAP_SYS_MODULE"),
    (17, "CAP_SYS_RAWIO"),
    (20, "CAP_SYS_PACCT"),
    (25, "CAP_SYS_TIME"),
    (26, "CAP_SYS_TTY_CONFIG"),
    (27, "CAP_MKNOD"),
    (30, "CAP_AUDIT_CONTROL"),
    (32, "CAP_MAC_OVERRIDE"),
    (33, "CAP_MAC_ADMIN"),
    (34, "CAP_SYSLOG"),
    (35, "CAP_WAKE_ALARM"),
    (36, "CAP_BLOCK_SUSPEND"),
    (39, "CAP_BPF"),
];
/// Also dropped when the jail shares the host's network.
const CAP_NET_ADMIN: u32 = 12;

fn drop_capabilities(network: JailNetwork) -> Result<(), SetupError> {
    let extra = (network == JailNetwork::Host).then_some((CAP_NET_ADMIN, "CAP_NET_ADMIN"));
    for (cap, name) in DROPPED_CAPS.into_iter().chain(extra) {
        // SAFETY: PR_CAPBSET_DROP takes an integer and touches no memory.
        let r = unsafe {
            nix::libc::prctl(
                nix::libc::PR_CAPBSET_DROP,
                nix::libc::c_ulong::from(cap),
                0,
                0,
                0,
            )
        };
        // EINVAL: a capability this kernel does not know; nothing to drop.
        if r != 0 && nix::errno::Errno::last() != nix::errno::Errno::EINVAL {
            return Err(SetupError::Cap(name, nix::errno::Errno::last()));
        }
    }
    Ok(())
}

/// A path as a value in overlayfs's mount options: a backslash escapes a
/// comma (which would end the option) and a colon (which separates lower
/// layers), as overlayfs reads them; byte for byte.
fn overlay_path(p: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for &b in p.as_os_str().as_encoded_bytes() {
        if matches!(b, b'\\' | b',' | b':') {
            out.push(b'\\');
        }
        out.push(b);
    }
    out
}

/// What runc hides from a container in the `/proc` and `/sys` it mounts
/// (the OCI runtime's defaults): files a bind of /dev/null covers,
/// directories an empty read-only tmpfs does.
const MASKED: [&str; 11] = [
    "proc/acpi",
    "proc/asound",
    "proc/kcore",
    "proc/keys",
    "proc/latency_stats",
    "proc/timer_list",
    "proc/timer_stats",
    "proc/sched_debug",
    "proc/scsi",
    "sys/firmware",
    "sys/devices/virtual/powercap",
];

/// What runc leaves readable but not writable: the kernel's settings for
/// the whole host (`/proc/sys`), its interrupt and bus controls, and the
/// magic SysRq key.
const READ_ONLY: [&str; 5] = [
    "proc/bus",
    "proc/fs",
    "proc/irq",
    "proc/sys",
    "proc/sysrq-trigger",
];

/// Hide and freeze, in the jail's fresh `/proc` and `/sys`, what runc does
/// in a container's. The paths are the kernel's own (nothing of the
/// machine's is in those file systems yet); one that this kernel does not
/// have is skipped.
fn mask_kernel_paths(root: &Root) -> Result<(), SetupError> {
    let e = |step: &'static str| move |source: nix::Error| SetupError::Sys { step, source };
    let fresh = |fs: &str| {
        root.open_dir(Path::new(fs))
            .map_err(io(format!("cannot open /{fs} in the jail")))
    };
    let (proc, sys) = (fresh("proc")?, fresh("sys")?);
    let at = |rel: &str| {
        let (fs, rest) = rel.split_once('/').expect("a path below /proc or /sys");
        fd_path(if fs == "proc" { &proc } else { &sys }).join(rest)
    };
    let kernel_flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    for rel in MASKED {
        let target = at(rel);
        let Ok(md) = std::fs::symlink_metadata(&target) else {
            continue;
        };
        if md.is_dir() {
            mount(
                Some("tmpfs"),
                &target,
                Some("tmpfs"),
                kernel_flags | MsFlags::MS_RDONLY,
                Some("size=0,mode=0555"),
            )
            .map_err(e("masking a kernel directory"))?;
        } else {
            mount(
                Some("/dev/null"),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(e("masking a kernel file"))?;
        }
    }
    for rel in READ_ONLY {
        let target = at(rel);
        if std::fs::symlink_metadata(&target).is_err() {
            continue;
        }
        mount(
            Some(&target),
            &target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(e("binding a kernel path"))?;
        mount(
            None::<&str>,
            &target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | kernel_flags,
            None::<&str>,
        )
        .map_err(e("making a kernel path read-only"))?;
    }
    Ok(())
}

fn setup_root(cfg: &JailConfig) -> Result<(), SetupError> {
    let m = &cfg.merged;
    let e = |step: &'static str| move |source: nix::Error| SetupError::Sys { step, source };
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(e("making mounts private"))?;
    let mut opts = b"lowerdir=".to_vec();
    opts.extend(overlay_path(&cfg.lower));
    opts.extend(b",upperdir=");
    opts.extend(overlay_path(&cfg.upper));
    opts.extend(b",workdir=");
    opts.extend(overlay_path(&cfg.work));
    mount(
        Some("overlay"),
        m,
        Some("overlay"),
        MsFlags::empty(),
        Some(opts.as_slice()),
    )
    .map_err(e("mounting the overlay"))?;
    // From here on every path in the jail's root is the machine's to
    // choose (the box's and its root user's symlinks): each mount target
    // is resolved inside the root and mounted through its descriptor.
    let root = Root::open(m).map_err(io(format!("cannot open {}", m.display())))?;
    let dir = |rel: &str| {
        root.mkdir_all(Path::new(rel), 0o755, Some((0, 0)))
            .map_err(io(format!("cannot make /{rel} in the jail")))
    };
    for s in &cfg.shares {
        let fd = dir(&s.guest)?;
        let target = fd_path(&fd);
        mount(
            Some(&s.host),
            &target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(e("binding a share"))?;
        if s.read_only {
            // The descriptor is of the directory under the new mount;
            // the remount needs the mount itself, found again by path
            // (nothing runs in the jail yet to change it).
            let mounted = root
                .open_dir(Path::new(&s.guest))
                .map_err(io(format!("cannot open share {}", s.guest)))?;
            mount(
                None::<&str>,
                &fd_path(&mounted),
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            )
            .map_err(e("making a share read-only"))?;
        }
    }
    for d in ["tmp", "run"] {
        let _ = dir(d);
    }
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(
        Some("proc"),
        &fd_path(&dir("proc")?),
        Some("proc"),
        nosuid,
        None::<&str>,
    )
    .map_err(e("mounting /proc"))?;
    mount(
        Some("sysfs"),
        &fd_path(&dir("sys")?),
        Some("sysfs"),
        nosuid | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .map_err(e("mounting /sys"))?;
    if !cfg.privileged {
        mask_kernel_paths(&root)?;
    }
    mount(
        Some("tmpfs"),
        &fd_path(&dir("dev")?),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=755,size=65536k"),
    )
    .map_err(e("mounting /dev"))?;
    // The fresh tmpfs now on /dev holds nothing the machine made: paths
    // below it are envup's own.
    let dev_fd = root
        .open_dir(Path::new("dev"))
        .map_err(io("cannot open /dev in the jail"))?;
    let dev = fd_path(&dev_fd);
    for node in ["null", "zero", "full", "random", "urandom", "tty"] {
        let target = dev.join(node);
        std::fs::write(&target, b"").map_err(io(format!("cannot make /dev/{node}")))?;
        mount(
            Some(&Path::new("/dev").join(node)),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(e("binding a device"))?;
    }
    std::fs::create_dir_all(dev.join("pts")).map_err(io("cannot make /dev/pts"))?;
    mount(
        Some("devpts"),
        &dev.join("pts"),
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=620,gid=5"),
    )
    .map_err(e("mounting /dev/pts"))?;
    std::os::unix::fs::symlink("pts/ptmx", dev.join("ptmx"))
        .map_err(io("cannot link /dev/ptmx"))?;
    std::fs::create_dir_all(dev.join("shm")).map_err(io("cannot make /dev/shm"))?;
    mount(
        Some("tmpfs"),
        &dev.join("shm"),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )
    .map_err(e("mounting /dev/shm"))?;
    nix::unistd::sethostname(&cfg.hostname).map_err(e("setting the hostname"))?;
    nix::unistd::chdir(m).map_err(e("entering the root"))?;
    dir(".envup-oldroot")?;
    if !std::fs::symlink_metadata(".envup-oldroot").is_ok_and(|md| md.is_dir()) {
        return Err(SetupError::Io {
            what: "/.envup-oldroot in the jail is not a directory".into(),
            source: std::io::ErrorKind::NotADirectory.into(),
        });
    }
    nix::unistd::pivot_root(".", ".envup-oldroot").map_err(e("pivot_root"))?;
    nix::unistd::chdir("/").map_err(e("chdir /"))?;
    umount2("/.envup-oldroot", MntFlags::MNT_DETACH).map_err(e("detaching the host's root"))?;
    let _ = std::fs::remove_dir("/.envup-oldroot");
    Ok(())
}

/// Give the jail's network namespace a name and connect it: slirp4netns,
/// with SSH and the forwards listening once this returns.
fn connect_network(
    cfg: &JailConfig,
    child: Pid,
    dir: &Path,
) -> Result<Child, crate::backend::rootfs::net::NetError> {
    let ns = name_netns(child.as_raw(), &cfg.id)?;
    net::connect(
        &ns,
        &cfg.id,
        &dir.join("net.log"),
        &net::host_fwds(cfg.ssh_port, &cfg.forwards),
        net::Lifetime::WithParent,
    )
}

/// Run one jail until it ends. Returns the process exit code.
pub fn supervise(dir: &Path) -> i32 {
    let cfg = match JailConfig::load(dir) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    let handler = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    for (signal, action) in [
        (Signal::SIGTERM, &handler),
        (Signal::SIGINT, &handler),
        (Signal::SIGHUP, &ignore),
    ] {
        // SAFETY: the handler only stores into an atomic; ignoring a
        // signal runs nothing.
        let _ = unsafe { sigaction(signal, action) };
    }
    // Whatever an earlier supervisor of this jail left running goes first.
    Cgroup::kill_all(&cfg.id);
    clean_up(&cfg);
    let cg = match Cgroup::create(&cfg.id, cfg.cpus, cfg.memory, cfg.pids) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    let (ready_r, ready_w) = match nix::unistd::pipe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("pipe: {e}");
            return 1;
        }
    };
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC;
    if cfg.network == JailNetwork::Private {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    let filter = match crate::backend::rootfs::seccomp::program() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    let mut stack = vec![0u8; 1 << 20];
    let mut ready_r = Some(ready_r);
    let child_cfg = cfg.clone();
    // SAFETY: the supervisor has no other threads, and without CLONE_VM the
    // child gets its own copy of memory, as after fork.
    let child = unsafe {
        nix::sched::clone(
            Box::new(move || enter(&child_cfg, ready_r.take().expect("entered once"), &filter)),
            &mut stack,
            flags,
            Some(Signal::SIGCHLD as i32),
        )
    };
    let child = match child {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot create the jail's namespaces: {e}");
            clean_up(&cfg);
            return 1;
        }
    };
    let fail = |e: SetupError| {
        eprintln!("{}", crate::cli::error::chain(&e));
        let _ = kill(child, Signal::SIGKILL);
        let _ = waitpid(child, None);
        clean_up(&cfg);
        1
    };
    if let Err(e) = cg.add(child.as_raw()) {
        return fail(e.into());
    }
    let mut helper = None;
    if cfg.network == JailNetwork::Private {
        match connect_network(&cfg, child, dir) {
            Ok(p) => helper = Some(p),
            Err(e) => return fail(e.into()),
        }
    }
    if let Err(e) = nix::unistd::write(&ready_w, b"x") {
        return fail(SetupError::Release(e));
    }
    drop(ready_w);
    let me = std::process::id() as i32;
    let started = crate::backend::start_time(me).unwrap_or(0);
    let pidfile = dir.join("supervisor.pid");
    if let Err(e) = crate::state::write_atomic(&pidfile, format!("{me} {started}\n").as_bytes()) {
        return fail(e.into());
    }

    // Wait for init; pass halt requests on.
    let mut asked_at: Option<Instant> = None;
    let code = loop {
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, c)) => break c,
            Ok(WaitStatus::Signaled(..)) => break 0,
            _ => {}
        }
        match REQUEST.load(Ordering::SeqCst) {
            2 => {
                let _ = kill(child, Signal::SIGKILL);
            }
            1 if asked_at.is_none() => {
                // Power off: busybox init on SIGUSR2, systemd on SIGRTMIN+4.
                let _ = kill(child, Signal::SIGUSR2);
                let rtmin4 = nix::libc::SIGRTMIN() + 4;
                // SAFETY: sending a signal number to a pid we own.
                unsafe {
                    nix::libc::kill(child.as_raw(), rtmin4);
                }
                asked_at = Some(Instant::now());
            }
            1 if asked_at.is_some_and(|t| t.elapsed() > HALT_DEADLINE) => {
                let _ = kill(child, Signal::SIGKILL);
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if let Some(mut p) = helper {
        let _ = p.kill();
        let _ = p.wait();
    }
    clean_up(&cfg);
    let _ = std::fs::remove_file(&pidfile);
    code
}
