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

use std::os::fd::OwnedFd;

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};

use super::cgroup::{Cgroup, Limits};
use super::{HALT_DEADLINE, JailConfig};
use crate::backend::rootfs::Network as JailNetwork;
use crate::backend::rootfs::detached;
use crate::backend::rootfs::ids::{Claims, SubIds};
use crate::backend::rootfs::net::{self, forget_netns, name_netns};
use crate::contained::{Root, fd_path};

/// Write a line to the supervisor's log (its stderr, and the jail's before
/// init starts). A log that cannot be written (a full disk) loses the
/// line; the jail does not go down with it, as it would with `eprintln!`.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

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
    Mount(#[from] detached::MountError),
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

/// The detached mounts a jail's root is put together from: its root (the
/// overlay), the host's /sys when a rootless jail shares the host's
/// network, its shares.
struct Handed {
    root: OwnedFd,
    sys: Option<OwnedFd>,
    shares: Vec<OwnedFd>,
}

/// Wait for the supervisor's word to go on; none (the supervisor died)
/// means do not start.
fn wait_for_go(sock: &OwnedFd) -> bool {
    let mut byte = [0u8; 1];
    matches!(nix::unistd::read(sock, &mut byte), Ok(1))
}

/// The jail's user namespace.
#[derive(Clone, Copy)]
enum Userns {
    /// None: the privileged jail's ids are the host's.
    None,
    /// The machine's own block of host ids, claimed by envup as root.
    Claimed(crate::backend::rootfs::ids::IdMap),
    /// Rootless: the user's map, written by newuidmap.
    Rootless(SubIds),
}

/// Inside the new namespaces: the root filesystem, then init.
///
/// As root (the jail's own ids or, privileged, the host's), the supervisor
/// has put the jail's root together in the mount namespace the jail was
/// cloned into, which belongs to the host's user namespace; the jail takes
/// a mount namespace of its own, owned by its user namespace, which copies
/// every mount locked (the kernel's `MNT_LOCK_*`): root in the jail can
/// neither remount a read-only share or mask writable nor unmount or move
/// one. Rootless, only root of the jail's user namespace can make its
/// mounts: it makes them itself, and they are not locked.
fn enter(
    cfg: &JailConfig,
    sock: OwnedFd,
    filter: &seccompiler::BpfProgram,
    userns: Userns,
) -> isize {
    // If the supervisor dies, so does the jail: no orphaned jails.
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    // The supervisor's standard output is envup's pipe; the jail writes to
    // its log, as on its standard error.
    // SAFETY: dup2 on descriptors this process holds.
    unsafe {
        nix::libc::dup2(2, 1);
    }
    // Wait until the supervisor has mapped our ids and put us in the
    // cgroup and the network, and has our root ready.
    if !wait_for_go(&sock) {
        return 125;
    }
    drop(sock);
    let set_up = match userns {
        Userns::Rootless(_) => become_root(true).and_then(|()| {
            let e = |step: &'static str| move |source: nix::Error| SetupError::Sys { step, source };
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .map_err(e("making mounts private"))?;
            let handed = prepare_mounts(cfg, None, true)?;
            let root = assemble(cfg, handed, None)?;
            pivot_into(root)
        }),
        Userns::Claimed(_) => lock_and_enter(cfg).and_then(|()| become_root(true)),
        Userns::None => lock_and_enter(cfg),
    }
    .and_then(|()| {
        // A cgroup namespace rooted at the jail's own cgroup.
        nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP).map_err(|source| SetupError::Sys {
            step: "making the cgroup namespace",
            source,
        })
    })
    .and_then(|()| {
        nix::unistd::sethostname(&cfg.hostname).map_err(|source| SetupError::Sys {
            step: "setting the hostname",
            source,
        })
    })
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
            say!("cannot start {init} in the jail: {err:?}");
            127
        }
        Err(e) => {
            say!(
                "cannot set up the jail's root: {}",
                crate::cli::error::chain(&e)
            );
            126
        }
    }
}

/// Take a mount namespace of the jail's own, a copy of the one the
/// supervisor put the jail's root together in (every mount in it locked,
/// as the jail's user namespace is not that namespace's), and make the
/// jail's root its root. Run before the jail takes its root's ids, while
/// it can still pass through the host's directories to its root.
fn lock_and_enter(cfg: &JailConfig) -> Result<(), SetupError> {
    let e = |step: &'static str| move |source: nix::Error| SetupError::Sys { step, source };
    nix::sched::unshare(CloneFlags::CLONE_NEWNS).map_err(e("making the mount namespace"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(e("making mounts private"))?;
    // pivot_root takes no locked mount as the new root: a recursive bind
    // of the root onto itself is one that is not, with everything below it
    // still locked.
    mount(
        Some(&cfg.merged),
        &cfg.merged,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(e("binding the jail's root"))?;
    let root = nix::fcntl::open(
        &cfg.merged,
        nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(e("opening the jail's root"))?;
    pivot_into(root)
}

/// Make the directory `root` the root, and let go of the old one.
fn pivot_into(root: OwnedFd) -> Result<(), SetupError> {
    let e = |step: &'static str| move |source: nix::Error| SetupError::Sys { step, source };
    let old = nix::fcntl::open(
        "/",
        nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(e("opening the old root"))?;
    nix::unistd::fchdir(&root).map_err(e("entering the root"))?;
    nix::unistd::pivot_root(".", ".").map_err(e("pivot_root"))?;
    // The old root is now stacked on the new one: detach it, and nothing
    // of the host stays in the jail's mount namespace.
    nix::unistd::fchdir(&old).map_err(e("entering the old root"))?;
    mount(
        None::<&str>,
        ".",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(e("keeping the old root's mounts"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(e("detaching the host's root"))?;
    nix::unistd::chdir("/").map_err(e("chdir /"))?;
    Ok(())
}

/// In a user namespace, take the namespace's uid and gid 0 (the host ids
/// of the jail's root), with no supplementary groups.
fn become_root(userns: bool) -> Result<(), SetupError> {
    if !userns {
        return Ok(());
    }
    let e = |step: &'static str| move |source: nix::Error| SetupError::Sys { step, source };
    let (uid, gid) = (nix::unistd::Uid::from_raw(0), nix::unistd::Gid::from_raw(0));
    nix::unistd::setresgid(gid, gid, gid).map_err(e("taking gid 0"))?;
    nix::unistd::setgroups(&[]).map_err(e("dropping groups"))?;
    nix::unistd::setresuid(uid, uid, uid).map_err(e("taking uid 0"))?;
    // A change of uid clears the parent-death signal.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(e("asking for SIGKILL"))?;
    Ok(())
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

/// Put the jail's root together on the working directory (the machine's
/// `merged` directory): the overlay, the shares, a fresh /proc and /sys
/// with what runc hides hidden, a small /dev. Returns the root. `base`:
/// the host ids of the jail's root, when the mounts are made by the
/// host's root for a jail in a user namespace (the owners of /dev and the
/// tty group of /dev/pts are the jail's).
fn assemble(
    cfg: &JailConfig,
    handed: Handed,
    base: Option<(u32, u32)>,
) -> Result<OwnedFd, SetupError> {
    let e = |step: &'static str| move |source: nix::Error| SetupError::Sys { step, source };
    detached::attach_here(&handed.root).map_err(io("cannot attach the jail's root"))?;
    // From here on every path in the jail's root is the machine's to
    // choose (the box's and its root user's symlinks): each mount target
    // is resolved inside the root and mounted through its descriptor.
    let root = Root::from_fd(handed.root);
    let owner = base.unwrap_or((0, 0));
    let dir = |rel: &str| {
        root.mkdir_all(Path::new(rel), 0o755, Some(owner))
            .map_err(io(format!("cannot make /{rel} in the jail")))
    };
    for (s, tree) in cfg.shares.iter().zip(&handed.shares) {
        detached::attach(tree, &dir(&s.guest)?)
            .map_err(io(format!("cannot attach share {}", s.guest)))?;
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
    match &handed.sys {
        // A rootless jail on the host's network: the host's /sys, which
        // only the supervisor could mount.
        Some(sys) => detached::attach(sys, &dir("sys")?).map_err(io("cannot attach /sys"))?,
        None => mount(
            Some("sysfs"),
            &fd_path(&dir("sys")?),
            Some("sysfs"),
            nosuid | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(e("mounting /sys"))?,
    }
    if !cfg.privileged {
        mask_kernel_paths(&root)?;
    }
    let ids = |opts: &str| match base {
        Some((u, g)) => format!("{opts},uid={u},gid={g}"),
        None => opts.to_owned(),
    };
    mount(
        Some("tmpfs"),
        &fd_path(&dir("dev")?),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some(ids("mode=755,size=65536k").as_str()),
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
    let tty = base.map_or(5, |(_, g)| g + 5);
    mount(
        Some("devpts"),
        &dev.join("pts"),
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some(format!("newinstance,ptmxmode=0666,mode=620,gid={tty}").as_str()),
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
        Some(ids("mode=1777").as_str()),
    )
    .map_err(e("mounting /dev/shm"))?;
    if let Some((u, g)) = base {
        for d in [&dev.join("pts"), &dev.join("shm")] {
            let _ = std::os::unix::fs::lchown(d, Some(u), Some(g));
        }
    }
    root.fd()
        .try_clone_to_owned()
        .map_err(io("cannot keep the jail's root open"))
}

/// The mount namespace a jail's root is put together in, as root: the
/// supervisor's own, unshared from the host's (whose mounts still reach
/// it; none of its own reach the host), which the jail is cloned into.
/// The supervisor itself goes back to the host's namespace at once (it
/// names network namespaces there).
struct Assembly {
    host: OwnedFd,
    jail: OwnedFd,
}

impl Assembly {
    fn make() -> nix::Result<Assembly> {
        let open = |p: &str| {
            nix::fcntl::open(
                p,
                nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
        };
        let host = open("/proc/self/ns/mnt")?;
        nix::sched::unshare(CloneFlags::CLONE_NEWNS)?;
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_SLAVE,
            None::<&str>,
        )?;
        let jail = open("/proc/self/ns/mnt")?;
        Ok(Assembly { host, jail })
    }

    /// Back to the host's mount namespace.
    fn leave(&self) -> nix::Result<()> {
        nix::sched::setns(&self.host, CloneFlags::CLONE_NEWNS)
    }

    /// Put the jail's root together (see [`assemble`]) in the assembly
    /// namespace, as root, from a process in the jail's pid namespace (its
    /// /proc is the jail's) and network namespace (its /sys too).
    fn assemble(
        &self,
        cfg: &JailConfig,
        child: Pid,
        handed: Handed,
        base: Option<(u32, u32)>,
    ) -> Result<(), SetupError> {
        let e = |step: &'static str| move |source: nix::Error| SetupError::Sys { step, source };
        let open = |p: String| {
            nix::fcntl::open(
                p.as_str(),
                nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
        };
        let own_pid = open("/proc/self/ns/pid".into()).map_err(e("opening the pid namespace"))?;
        let jail_pid =
            open(format!("/proc/{child}/ns/pid")).map_err(e("opening the jail's pid namespace"))?;
        let jail_net = if cfg.network == JailNetwork::Private {
            Some(open(format!("/proc/{child}/ns/net")).map_err(e("opening the jail's network"))?)
        } else {
            None
        };
        nix::sched::setns(&jail_pid, CloneFlags::CLONE_NEWPID)
            .map_err(e("entering the jail's pid namespace"))?;
        // SAFETY: the supervisor has no other threads; the child only makes
        // system calls and ends with _exit.
        let forked = unsafe { nix::unistd::fork() };
        let back = nix::sched::setns(&own_pid, CloneFlags::CLONE_NEWPID);
        match forked.map_err(e("forking"))? {
            nix::unistd::ForkResult::Child => {
                let done = (|| {
                    nix::sched::setns(&self.jail, CloneFlags::CLONE_NEWNS)
                        .map_err(e("entering the jail's mount namespace"))?;
                    if let Some(net) = &jail_net {
                        nix::sched::setns(net, CloneFlags::CLONE_NEWNET)
                            .map_err(e("entering the jail's network"))?;
                    }
                    nix::unistd::chdir(&cfg.merged).map_err(e("entering the jail's root"))?;
                    assemble(cfg, handed, base).map(drop)
                })();
                let code = match done {
                    Ok(()) => 0,
                    Err(err) => {
                        say!("{}", crate::cli::error::chain(&err));
                        1
                    }
                };
                // SAFETY: ends this forked process without running the
                // supervisor's exit handlers.
                unsafe { nix::libc::_exit(code) }
            }
            nix::unistd::ForkResult::Parent { child: helper } => {
                back.map_err(e("leaving the jail's pid namespace"))?;
                match waitpid(helper, None) {
                    Ok(WaitStatus::Exited(_, 0)) => Ok(()),
                    _ => Err(SetupError::Io {
                        what: "cannot put the jail's root together".into(),
                        source: std::io::ErrorKind::Other.into(),
                    }),
                }
            }
        }
    }
}

/// The jail's network namespace as its helper joins it (and the user
/// namespace it belongs to, rootless): by its name, given here, as root;
/// rootless, no name can be given (/run/netns is root's), so through the
/// jail's init.
type Netns = (std::path::PathBuf, Option<std::path::PathBuf>);

fn netns_of(
    cfg: &JailConfig,
    child: Pid,
    rootless: bool,
) -> Result<Netns, crate::backend::rootfs::net::NetError> {
    let proc_dir = Path::new("/proc").join(child.as_raw().to_string());
    Ok(if rootless {
        (proc_dir.join("ns/net"), Some(proc_dir.join("ns/user")))
    } else {
        (name_netns(child.as_raw(), &cfg.id)?, None)
    })
}

/// Connect the jail's network: slirp4netns, with SSH and the forwards
/// listening once this returns.
fn connect_network(
    cfg: &JailConfig,
    (ns, userns): &Netns,
    dir: &Path,
) -> Result<Child, crate::backend::rootfs::net::NetError> {
    net::connect(
        ns,
        userns.as_deref(),
        &cfg.id,
        &dir.join("net.log"),
        &net::host_fwds(cfg.ssh_port, &cfg.forwards),
        net::Lifetime::WithParent,
    )
}

/// The jail's root and shares as detached mounts, and the host's /sys when
/// a rootless jail shares the host's network. `mapped`: the jail's user
/// namespace (`/proc/PID` of its init) and its block of host ids, when the
/// supervisor makes them for a jail in one: the box's rootfs is id-mapped
/// into it (a file owned by host uid N is seen as the jail's uid N), and
/// each share through [`detached::share_userns`] (the jail's login user is
/// the shared directory's owner there, and nobody in the jail is host
/// root). Rootless, the jail's root makes them in its own user namespace,
/// where nothing is id-mapped (the files already have the user's ids).
fn prepare_mounts(
    cfg: &JailConfig,
    mapped: Option<(&Path, crate::backend::rootfs::ids::IdMap)>,
    rootless: bool,
) -> Result<Handed, SetupError> {
    let userns = match mapped {
        Some((p, _)) => Some(
            nix::fcntl::open(
                &p.join("ns/user"),
                nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .map_err(|source| SetupError::Sys {
                step: "opening the jail's user namespace",
                source,
            })?,
        ),
        None => None,
    };
    let lower = detached::tree(&cfg.lower, false, true, userns.as_ref())?;
    let root = detached::overlay(&lower, &cfg.upper, &cfg.work, rootless)?;
    let sys = if rootless && cfg.network == JailNetwork::Host {
        // A user namespace may copy /sys only with the mounts below it.
        Some(detached::tree(Path::new("/sys"), true, true, None)?)
    } else {
        None
    };
    let mut shares = Vec::new();
    for s in &cfg.shares {
        let map = match &mapped {
            Some((_, ids)) => detached::share_userns(&s.host, ids, cfg.login)?,
            None => None,
        };
        shares.push(detached::tree(&s.host, true, s.read_only, map.as_ref())?);
    }
    Ok(Handed { root, sys, shares })
}

/// Let the jail go on: its ids are mapped, it is in its cgroup and network,
/// and its root is ready (or, rootless, it makes its own).
fn let_go(sock: &OwnedFd) -> nix::Result<()> {
    nix::unistd::write(sock, b"x").map(drop)
}

/// The file a jail's supervisor holds locked from its first instant to its
/// last, with its pid and start time in it: while it is locked, a
/// supervisor of the jail runs (or still cleans up), and no other starts.
pub const LOCK: &str = "supervisor.lock";

/// Lock the jail's [`LOCK`] and write who holds it; `None` if another
/// supervisor holds it.
fn hold_lock(dir: &Path) -> std::io::Result<Option<std::fs::File>> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK))?;
    match f.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
        Err(std::fs::TryLockError::Error(e)) => return Err(e),
    }
    let me = std::process::id() as i32;
    let started = crate::backend::start_time(me).unwrap_or(0);
    f.set_len(0)?;
    f.write_all(format!("{me} {started}\n").as_bytes())?;
    Ok(Some(f))
}

/// Run one jail until it ends, with the config on standard input. Returns
/// the process exit code.
pub fn supervise(dir: &Path, id: &str) -> i32 {
    // First of all: from here on the next envup finds this supervisor.
    let _lock = match hold_lock(dir) {
        Ok(Some(f)) => f,
        Ok(None) => {
            say!("another supervisor runs this jail");
            return 1;
        }
        Err(e) => {
            say!("cannot lock {}: {e}", dir.join(LOCK).display());
            return 1;
        }
    };
    // The config comes from the envup that starts the jail, made from the
    // Envfile for this start; no file is read for it.
    let cfg = match JailConfig::from_reader(std::io::stdin().lock(), dir, id) {
        Ok(c) => c,
        Err(e) => {
            say!("{}", crate::cli::error::chain(&e));
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
    let ids = if crate::userns::rootless() {
        match SubIds::of_user() {
            Ok(ids) if !cfg.privileged => Userns::Rootless(ids),
            Ok(_) => {
                say!("a privileged jail needs root");
                return 1;
            }
            Err(e) => {
                say!("{e}");
                return 1;
            }
        }
    } else if cfg.privileged {
        Userns::None
    } else {
        // Checked against the host's claims: a damaged ids.json maps
        // nothing that is not this jail's block.
        match Claims::host().ids_of(dir) {
            Ok(ids) if ids.shifted => Userns::Claimed(ids),
            Ok(_) => {
                say!("the jail's layer is not yet owned by its ids; `envup up` shifts it");
                return 1;
            }
            Err(e) => {
                say!("{}", crate::cli::error::chain(&e));
                return 1;
            }
        }
    };
    // Whatever an earlier supervisor of this jail left running goes first.
    Cgroup::kill_all(&cfg.id);
    clean_up(&cfg);
    let limits = Limits {
        cpus: cfg.cpus,
        memory: cfg.memory,
        pids: cfg.pids,
    };
    let owner = match ids {
        Userns::Claimed(i) => Some((i.uid, i.gid)),
        _ => None,
    };
    let cg = if matches!(ids, Userns::Rootless(_)) {
        // The cgroup tree is root's: a rootless jail runs in the user's.
        say!(
            "rootless: the jail has no cgroup of its own; its cpus, memory and pids limits \
             are not applied"
        );
        None
    } else {
        match Cgroup::create(&cfg.id, limits, owner) {
            Ok(c) => Some(c),
            Err(e) => {
                say!("{}", crate::cli::error::chain(&e));
                clean_up(&cfg);
                return 1;
            }
        }
    };
    let (sock, child_sock) = match socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    ) {
        Ok(p) => p,
        Err(e) => {
            say!("socketpair: {e}");
            return 1;
        }
    };
    let rootless = matches!(ids, Userns::Rootless(_));
    let mut flags = CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC;
    if cfg.network == JailNetwork::Private {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    if !matches!(ids, Userns::None) {
        flags |= CloneFlags::CLONE_NEWUSER;
    }
    // As root, the jail is cloned into the namespace its root is put
    // together in, and makes its own mount namespace from it once it is;
    // rootless, it has one of its own from the start.
    let assembly = if rootless {
        flags |= CloneFlags::CLONE_NEWNS;
        None
    } else {
        match Assembly::make() {
            Ok(a) => Some(a),
            Err(e) => {
                say!("cannot make a mount namespace for the jail's root: {e}");
                clean_up(&cfg);
                return 1;
            }
        }
    };
    let filter = match crate::backend::rootfs::seccomp::program() {
        Ok(f) => f,
        Err(e) => {
            say!("{e}");
            return 1;
        }
    };
    let mut stack = vec![0u8; 1 << 20];
    let mut child_sock = Some(child_sock);
    let child_cfg = cfg.clone();
    let userns = ids;
    if let Err(e) = nix::unistd::chdir(&cfg.merged) {
        say!("cannot enter {}: {e}", cfg.merged.display());
        return 1;
    }
    // SAFETY: the supervisor has no other threads, and without CLONE_VM the
    // child gets its own copy of memory, as after fork.
    let child = unsafe {
        nix::sched::clone(
            Box::new(move || {
                enter(
                    &child_cfg,
                    child_sock.take().expect("entered once"),
                    &filter,
                    userns,
                )
            }),
            &mut stack,
            flags,
            Some(Signal::SIGCHLD as i32),
        )
    };
    // (The parent's copy of the child's end went with the closure.)
    if let Some(a) = &assembly
        && let Err(e) = a.leave()
    {
        say!("cannot go back to the host's mount namespace: {e}");
        if let Ok(c) = &child {
            let _ = kill(*c, Signal::SIGKILL);
        }
        clean_up(&cfg);
        return 1;
    }
    let _ = nix::unistd::chdir("/");
    let child = match child {
        Ok(c) => c,
        Err(e) => {
            say!("cannot create the jail's namespaces: {e}");
            clean_up(&cfg);
            return 1;
        }
    };
    let fail = |e: SetupError| {
        say!("{}", crate::cli::error::chain(&e));
        let _ = kill(child, Signal::SIGKILL);
        let _ = waitpid(child, None);
        clean_up(&cfg);
        1
    };
    let proc_dir = Path::new("/proc").join(child.as_raw().to_string());
    match ids {
        Userns::Claimed(ids) => {
            for (file, line) in [("uid_map", ids.uid_line()), ("gid_map", ids.gid_line())] {
                if let Err(e) = crate::backend::rootfs::ids::write_map(&proc_dir.join(file), &line)
                {
                    return fail(SetupError::Io {
                        what: format!("cannot write the jail's {file}"),
                        source: e,
                    });
                }
            }
        }
        Userns::Rootless(ids) => {
            if let Err(e) = ids.map(child.as_raw()) {
                return fail(SetupError::Io {
                    what: "cannot map the jail's ids".into(),
                    source: e,
                });
            }
        }
        Userns::None => {}
    }
    if let Some(cg) = &cg
        && let Err(e) = cg.add(child.as_raw())
    {
        return fail(e.into());
    }
    let mut helper = None;
    if cfg.network == JailNetwork::Private {
        match netns_of(&cfg, child, rootless).and_then(|ns| {
            let p = connect_network(&cfg, &ns, dir)?;
            Ok((ns, p))
        }) {
            Ok((ns, p)) => helper = Some((ns, p)),
            Err(e) => return fail(e.into()),
        }
    }
    // Rootless, the jail makes its own mounts; as root, they are made in
    // the assembly namespace now.
    if let Some(a) = &assembly {
        let mapped = match ids {
            Userns::Claimed(i) => Some((proc_dir.as_path(), i)),
            _ => None,
        };
        let base = mapped.map(|(_, i)| (i.uid, i.gid));
        let made = prepare_mounts(&cfg, mapped, false)
            .and_then(|handed| a.assemble(&cfg, child, handed, base));
        if let Err(e) = made {
            return fail(e);
        }
    }
    drop(assembly);
    if let Err(e) = let_go(&sock) {
        return fail(SetupError::Release(e));
    }
    let me = std::process::id() as i32;
    let started = crate::backend::start_time(me).unwrap_or(0);
    // Ready: said to the envup that started it on standard output (a
    // pipe), which needs no disk; the pid file is for people and tools.
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let told = writeln!(out, "{me} {started}").and_then(|()| out.flush());
        if let Err(e) = told {
            return fail(SetupError::Io {
                what: "cannot tell envup the jail started".into(),
                source: e,
            });
        }
    }
    // Nothing more goes to the pipe, whose reader is gone with envup.
    // SAFETY: dup2 on descriptors this process holds.
    unsafe {
        nix::libc::dup2(2, 1);
    }
    let pidfile = dir.join("supervisor.pid");
    let _ = crate::state::write_atomic(&pidfile, format!("{me} {started}\n").as_bytes());

    // Wait for init; pass halt requests on; start the network helper
    // again if it dies under the jail (its SSH and forwards with it).
    let mut asked_at: Option<Instant> = None;
    let mut next_try = Instant::now();
    let code = loop {
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, c)) => break c,
            Ok(WaitStatus::Signaled(..)) => break 0,
            _ => {}
        }
        if let Some((ns, p)) = helper.as_mut()
            && REQUEST.load(Ordering::SeqCst) == 0
            && Instant::now() >= next_try
            && let Ok(Some(st)) = p.try_wait()
        {
            say!("the network helper stopped ({st}); starting it again");
            match connect_network(&cfg, ns, dir) {
                Ok(again) => *p = again,
                Err(e) => {
                    say!("{}", crate::cli::error::chain(&e));
                    next_try = Instant::now() + Duration::from_secs(1);
                }
            }
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
    if let Some((_, mut p)) = helper {
        let _ = p.kill();
        let _ = p.wait();
    }
    clean_up(&cfg);
    let _ = std::fs::remove_file(&pidfile);
    code
}
