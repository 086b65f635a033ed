//! What `doctor` says about qemu, qemu-img and KVM.

use std::time::Duration;

use crate::backend::Check;
use crate::host::{first_line, run_with_timeout, which};

nix::ioctl_none_bad!(kvm_get_api_version, 0xAE00);

/// qemu-system, qemu-img, and whether KVM or only TCG can run guests.
pub fn probe() -> (bool, Vec<Check>) {
    let mut checks = Vec::new();
    let mut ready = true;
    for (prog, pkg) in [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("qemu-img", "qemu-utils"),
    ] {
        match which(prog) {
            Some(path) => {
                let v = run_with_timeout(&path, &["--version"], Duration::from_secs(5))
                    .map(|o| first_line(&o))
                    .unwrap_or_else(|e| crate::cli::error::chain(&e));
                checks.push(Check::ok(prog, v));
            }
            None => {
                ready = false;
                checks.push(Check::missing(
                    prog,
                    "not found on PATH",
                    format!("apt-get install {pkg}"),
                ));
            }
        }
    }
    checks.push(kvm_check());
    if ready {
        checks.push(Check::ok(
            "tcg",
            "software emulation is always available (slower than KVM)",
        ));
    }
    (ready, checks)
}

/// How to get KVM, from why /dev/kvm would not open: a device that is
/// there but refused is a matter of group membership, not firmware.
fn kvm_fix(e: &std::io::Error) -> String {
    use std::os::unix::fs::MetadataExt;
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        let group = std::fs::metadata("/dev/kvm")
            .ok()
            .and_then(|m| nix::unistd::Group::from_gid(m.gid().into()).ok().flatten())
            .map_or_else(|| "kvm".to_owned(), |g| g.name);
        return format!(
            "join the `{group}` group that owns /dev/kvm (`sudo usermod -aG {group} $USER`, then log in again)"
        );
    }
    "enable virtualisation in the firmware or the host VM, and load kvm_intel or kvm_amd".into()
}

fn kvm_check() -> Check {
    use std::os::fd::AsRawFd;
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(f) => f,
        Err(e) => {
            return Check::missing(
                "kvm",
                format!("/dev/kvm cannot be opened ({e}); guests will run under TCG"),
                kvm_fix(&e),
            );
        }
    };
    // SAFETY: KVM_GET_API_VERSION takes no argument and only returns a number.
    let version = unsafe { kvm_get_api_version(file.as_raw_fd()) };
    match version {
        Ok(12) => match super::kvm_answer() {
            Some(true) => Check::ok(
                "kvm",
                "/dev/kvm opens (API 12) and a test boot under KVM worked: `accel = \"auto\"` uses KVM",
            ),
            Some(false) => Check::missing(
                "kvm",
                "/dev/kvm opens (API 12), but a test boot under KVM printed nothing (nested virtualisation?): `accel = \"auto\"` uses TCG",
                "run on a host where KVM guests boot, or accept TCG (slower)",
            ),
            None => Check::ok(
                "kvm",
                "/dev/kvm opens (API 12); the first VM's `up` test-boots its kernel under KVM and `accel = \"auto\"` uses KVM only if that works",
            ),
        },
        Ok(v) => Check::missing(
            "kvm",
            format!("/dev/kvm reports API {v}, expected 12"),
            "update the host kernel",
        ),
        Err(e) => Check::missing(
            "kvm",
            format!("/dev/kvm does not answer ({e})"),
            "load kvm_intel or kvm_amd",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_hint_names_the_group_when_access_is_denied() {
        let denied = kvm_fix(&std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        assert!(denied.starts_with("join the `"), "{denied}");
        assert!(denied.contains("usermod -aG"), "{denied}");
        let missing = kvm_fix(&std::io::Error::from(std::io::ErrorKind::NotFound));
        assert!(missing.contains("firmware"), "{missing}");
    }
}
