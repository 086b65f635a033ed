//! The seccomp filter of jails and LXC containers: the system calls that
//! Docker's default profile refuses to a container which, like these,
//! keeps CAP_SYS_ADMIN, CAP_SYS_PTRACE and CAP_SYS_BOOT. They reach what a namespace does not
//! cover: the kernel's keyrings, its modules and its image (kexec), the
//! clock, swap, accounting, raw I/O ports, files by handle, performance
//! counters and BPF programs (both read the host's kernel), userfaultfd.
//! Each answers EPERM, as under Docker, so software that probes for them
//! (systemd asks for a keyring for every service) carries on without.
//!
//! For a jail the program is compiled with seccompiler and installed
//! without `no_new_privs` (the jail still holds CAP_SYS_ADMIN when it
//! installs it), so setuid programs in the machine, sudo among them, keep
//! working. For LXC the same list is written as an LXC seccomp profile.

use nix::libc;
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter};

/// The refused calls, by name (for the docs and the tests) and number.
pub const REFUSED: &[(&str, libc::c_long)] = &[
    ("acct", libc::SYS_acct),
    ("add_key", libc::SYS_add_key),
    ("keyctl", libc::SYS_keyctl),
    ("request_key", libc::SYS_request_key),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("clock_settime", libc::SYS_clock_settime),
    ("settimeofday", libc::SYS_settimeofday),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("lookup_dcookie", libc::SYS_lookup_dcookie),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("nfsservctl", libc::SYS_nfsservctl),
    #[cfg(target_arch = "x86_64")]
    ("iopl", libc::SYS_iopl),
    #[cfg(target_arch = "x86_64")]
    ("ioperm", libc::SYS_ioperm),
    #[cfg(target_arch = "x86_64")]
    ("uselib", libc::SYS_uselib),
    #[cfg(target_arch = "x86_64")]
    ("ustat", libc::SYS_ustat),
    #[cfg(target_arch = "x86_64")]
    ("sysfs", libc::SYS_sysfs),
    #[cfg(target_arch = "x86_64")]
    ("_sysctl", libc::SYS__sysctl),
];

/// The list as an LXC seccomp profile (version 2: a deny list, each call
/// answering EPERM).
pub fn lxc_profile() -> String {
    let mut p = String::from("2\ndenylist\n[all]\n");
    for (name, _) in REFUSED {
        p.push_str(&format!("{name} errno {}\n", libc::EPERM));
    }
    p
}

/// Why the filter cannot be made or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot build the jail's seccomp filter: {0}")]
    Build(String),
    #[error("cannot install the jail's seccomp filter")]
    Install(#[source] std::io::Error),
}

/// The filter, compiled for this machine's architecture.
pub fn program() -> Result<BpfProgram, SeccompError> {
    let build = |e: &dyn std::fmt::Display| SeccompError::Build(e.to_string());
    let arch = std::env::consts::ARCH.try_into().map_err(|e| build(&e))?;
    let rules = REFUSED.iter().map(|&(_, nr)| (nr, Vec::new())).collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(|e| build(&e))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| build(&e))
}

/// Install `program` on this process (and so on everything it runs).
/// Needs CAP_SYS_ADMIN, which spares it `no_new_privs`.
pub fn install(program: &BpfProgram) -> Result<(), SeccompError> {
    let prog = libc::sock_fprog {
        len: u16::try_from(program.len())
            .map_err(|_| SeccompError::Build("the filter is too long".into()))?,
        filter: program.as_ptr().cast_mut().cast(),
    };
    // SAFETY: seccomp(2) copies the program it is pointed at (which lives
    // for the call) and keeps no reference to it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &prog as *const libc::sock_fprog,
        )
    };
    if r != 0 {
        return Err(SeccompError::Install(std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lxc_profile_denies_each_call_with_eperm() {
        let p = lxc_profile();
        assert!(p.starts_with("2\ndenylist\n[all]\n"), "{p}");
        assert!(p.contains("\nkeyctl errno 1\n"), "{p}");
        assert_eq!(p.lines().count(), 3 + REFUSED.len());
    }

    #[test]
    fn the_filter_compiles_for_this_machine() {
        let p = program().unwrap();
        assert!(p.len() > REFUSED.len(), "{} instructions", p.len());
    }

    /// In a child process with the filter (installed as the jail does,
    /// without no_new_privs, which needs root): keyctl answers EPERM;
    /// getpid still works.
    #[test]
    fn a_refused_call_answers_eperm() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let p = program().unwrap();
        // SAFETY: the child only makes system calls and exits.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let code = match install(&p) {
                    Err(_) => 2,
                    Ok(()) => {
                        // SAFETY: keyctl with integer arguments touches no memory.
                        let r = unsafe { libc::syscall(libc::SYS_keyctl, 0, 0, 0, 0, 0) };
                        let errno = std::io::Error::last_os_error().raw_os_error();
                        if r == -1 && errno == Some(libc::EPERM) && std::process::id() > 0 {
                            0
                        } else {
                            3
                        }
                    }
                };
                // SAFETY: ends the child at once, as after fork.
                unsafe { libc::_exit(code) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let st = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(st, nix::sys::wait::WaitStatus::Exited(child, 0));
            }
        }
    }
}
