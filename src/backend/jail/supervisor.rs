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

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

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

/// The most shares a jail takes (they travel to it in one message).
pub const MAX_SHARES: usize = 60;

/// The detached mounts the supervisor hands the jail, in this order in
/// one message: its root (the overlay), the host's /sys when the jail
/// shares the host's network, its shares. The root is attached on the
/// jail's working directory, which is the machine's `merged` directory
/// (the supervisor's when it cloned the jail, seen in the jail's own mount
/// namespace; the jail's root may not be able to reach it by path).
struct Handed {
    root: OwnedFd,
    sys: Option<OwnedFd>,
    shares: Vec<OwnedFd>,
}

/// Receive the jail's mounts (none when the jail makes its own); no message
/// (the supervisor died) means do not start.
fn receive(sock: &OwnedFd) -> Option<Vec<OwnedFd>> {
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; MAX_SHARES + 3]);
    let msg = nix::sys::socket::recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        nix::sys::socket::MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .ok()?;
    let mut fds = Vec::new();
    for c in msg.cmsgs().ok()? {
        if let nix::sys::socket::ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: SCM_RIGHTS installed these descriptors in this
            // process for it alone; each is owned once.
            fds.extend(
                raw.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    Some(fds)
}

impl Handed {
    fn from_fds(fds: Vec<OwnedFd>, host_sys: bool) -> Option<Handed> {
        let mut fds = fds.into_iter();
        Some(Handed {
            root: fds.next()?,
            sys: if host_sys { Some(fds.next()?) } else { None },
            shares: fds.collect(),
        })
    }
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
fn enter(
    cfg: &JailConfig,
    sock: OwnedFd,
    filter: &seccompiler::BpfProgram,
    userns: Userns,
) -> isize {
    // If the supervisor dies, so does the jail: no orphaned jails.
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    // Wait until the supervisor has mapped our ids and put us in the
    // cgroup and the network, and has our mounts ready.
    let Some(fds) = receive(&sock) else {
        return 125;
    };
    drop(sock);
    let rootless = matches!(userns, Userns::Rootless(_));
    let set_up = become_root(!matches!(userns, Userns::None))
        .and_then(|()| {
            // Rootless, only root of the jail's user namespace can make
            // its mounts: it makes them itself.
            if rootless {
                prepare_mounts(cfg, None, true)
            } else {
                Handed::from_fds(fds, cfg.network == JailNetwork::Host).ok_or(SetupError::Io {
                    what: "the jail's mounts did not arrive".into(),
                    source: std::io::ErrorKind::InvalidData.into(),
                })
            }
        })
        .and_then(|handed| {
            // A cgroup namespace rooted at the jail's own cgroup.
            nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP)
                .map(|()| handed)
                .map_err(|source| SetupError::Sys {
                    step: "making the cgroup namespace",
                    source,
                })
        })
        .and_then(|handed| setup_root(cfg, handed))
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

fn setup_root(cfg: &JailConfig, handed: Handed) -> Result<(), SetupError> {
    let e = |step: &'static str| move |source: nix::Error| SetupError::Sys { step, source };
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(e("making mounts private"))?;
    detached::attach_here(&handed.root).map_err(io("cannot attach the jail's root"))?;
    // From here on every path in the jail's root is the machine's to
    // choose (the box's and its root user's symlinks): each mount target
    // is resolved inside the root and mounted through its descriptor.
    let root = Root::from_fd(handed.root);
    let dir = |rel: &str| {
        root.mkdir_all(Path::new(rel), 0o755, Some((0, 0)))
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
        // The host's network's /sys: only the supervisor could mount it.
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
    nix::unistd::fchdir(root.fd()).map_err(e("entering the root"))?;
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
/// it shares the host's network. With a user namespace (`/proc/PID` of
/// the jail's init), the box's rootfs and the shares are id-mapped into
/// it: a file owned by host uid N is seen as the jail's uid N, and what the
/// jail's root writes is owned by host root, as without the namespace.
/// `rootless`: made by the jail's root in its own user namespace, where
/// nothing is id-mapped (the files already have the user's ids).
fn prepare_mounts(
    cfg: &JailConfig,
    userns_of: Option<&Path>,
    rootless: bool,
) -> Result<Handed, SetupError> {
    let userns = match userns_of {
        Some(p) => Some(
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
    let sys = if cfg.network == JailNetwork::Host {
        // A user namespace may copy /sys only with the mounts below it.
        Some(detached::tree(Path::new("/sys"), rootless, true, None)?)
    } else {
        None
    };
    let shares = cfg
        .shares
        .iter()
        .map(|s| detached::tree(&s.host, true, s.read_only, userns.as_ref()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Handed { root, sys, shares })
}

/// Send the jail its mounts (if it does not make its own), which also lets
/// it start.
fn hand_over(sock: &OwnedFd, h: Option<&Handed>) -> nix::Result<()> {
    let fds: Vec<std::os::fd::RawFd> = h
        .into_iter()
        .flat_map(|h| std::iter::once(&h.root).chain(&h.sys).chain(&h.shares))
        .map(AsRawFd::as_raw_fd)
        .collect();
    let rights = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
    let cmsg: &[nix::sys::socket::ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    nix::sys::socket::sendmsg::<()>(
        sock.as_raw_fd(),
        &[std::io::IoSlice::new(b"x")],
        cmsg,
        nix::sys::socket::MsgFlags::empty(),
        None,
    )
    .map(drop)
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

/// Run one jail until it ends. Returns the process exit code.
pub fn supervise(dir: &Path) -> i32 {
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
    let cfg = match JailConfig::load(dir) {
        Ok(c) => c,
        Err(e) => {
            say!("{e}");
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
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC;
    if cfg.network == JailNetwork::Private {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    if !matches!(ids, Userns::None) {
        flags |= CloneFlags::CLONE_NEWUSER;
    }
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
    let rootless = matches!(ids, Userns::Rootless(_));
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
    // Rootless, the jail makes its own mounts: the message only lets it go.
    let handed = if rootless {
        None
    } else {
        let mapped = matches!(ids, Userns::Claimed(_)).then_some(proc_dir.as_path());
        match prepare_mounts(&cfg, mapped, false) {
            Ok(h) => Some(h),
            Err(e) => return fail(e),
        }
    };
    if let Err(e) = hand_over(&sock, handed.as_ref()) {
        return fail(SetupError::Release(e));
    }
    drop(handed);
    let me = std::process::id() as i32;
    let started = crate::backend::start_time(me).unwrap_or(0);
    let pidfile = dir.join("supervisor.pid");
    if let Err(e) = crate::state::write_atomic(&pidfile, format!("{me} {started}\n").as_bytes()) {
        return fail(e.into());
    }

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
