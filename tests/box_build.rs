//! Box recipes built for real with the host's package tools: `tiny` (twice,
//! to check the build repeats), its SSH server answering envup's own client
//! with envup's keys, a TCG boot to SSH, and `debian-bookworm`. Ignored,
//! with the reason, where the host cannot build boxes.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use common::sshd::free_port;
use common::{Project, check};
use libtest_mimic::{Arguments, Failed, Trial};

fn unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("box builds need root".into());
    }
    for (tool, pkg) in [
        ("apt-get", "apt"),
        ("dpkg-deb", "dpkg"),
        ("depmod", "kmod"),
        ("mkfs.ext4", "e2fsprogs"),
        ("debugfs", "e2fsprogs"),
        ("qemu-img", "qemu-utils"),
        ("xz", "xz-utils"),
    ] {
        if envup::host::which(tool).is_none() {
            return Some(format!("{tool} is missing (apt-get install {pkg})"));
        }
    }
    None
}

/// One build of `tiny`, shared by the tests: (project, box file).
fn tiny() -> &'static (Project, PathBuf) {
    static TINY: OnceLock<(Project, PathBuf)> = OnceLock::new();
    TINY.get_or_init(|| {
        let p = Project::new();
        let out = p.path().join("tiny.box");
        p.cmd(&["box", "build", "tiny", "-o", out.to_str().unwrap()])
            .out()
            .status(0)
            .stdout_has("built tiny");
        (p, out)
    })
}

fn unpack(boxfile: &Path, into: &Path) {
    let f = std::fs::File::open(boxfile).unwrap();
    tar::Archive::new(zstd::Decoder::new(f).unwrap())
        .unpack(into)
        .unwrap();
}

fn tiny_builds_and_repeats() -> Result<(), Failed> {
    let (p, first) = tiny();
    let second = p.path().join("again.box");
    p.cmd(&["box", "build", "tiny", "-o", second.to_str().unwrap()])
        .out()
        .status(0);
    let (a, b) = (common::boxes::sha256(first), common::boxes::sha256(&second));
    check(a == b, format!("two builds differ: {a} vs {b}"))?;
    let j = p.cmd(&["--json", "box", "list"]).out().status(0).json();
    check(
        j[0]["name"] == "tiny"
            && j[0]["backends"] == serde_json::json!(["qemu", "jail", "container", "lxc"]),
        j.to_string(),
    )?;
    let dir = tempfile::tempdir().unwrap();
    unpack(first, dir.path());
    let manifest = std::fs::read_to_string(dir.path().join("box.toml")).unwrap();
    for a in [
        "[artifacts.rootfs]",
        "[artifacts.disk]",
        "[artifacts.kernel]",
        "[artifacts.initrd]",
        "cmdline",
    ] {
        check(
            manifest.contains(a),
            format!("box.toml lacks {a}:\n{manifest}"),
        )?;
    }
    let rootfs = dir.path().join("r");
    std::fs::create_dir(&rootfs).unwrap();
    tar::Archive::new(std::fs::File::open(dir.path().join("rootfs.tar")).unwrap())
        .unpack(&rootfs)
        .unwrap();
    for f in [
        "bin/busybox",
        "bin/sh",
        "sbin/init",
        "usr/sbin/dropbear",
        "usr/bin/dropbearconvert",
        "etc/init.d/rcS",
        "etc/passwd",
        "etc/shells",
    ] {
        check(
            rootfs.join(f).exists() || rootfs.join(f).is_symlink(),
            format!("rootfs lacks {f}"),
        )?;
    }
    Ok(())
}

/// tiny's dropbear, started the way its init starts it, in a chroot with
/// envup's keys for the machine: envup's client logs in, checks the host
/// key, runs a command and uploads a directory.
fn tiny_answers_envups_ssh() -> Result<(), Failed> {
    let (_, boxfile) = tiny();
    let dir = tempfile::tempdir().unwrap();
    unpack(boxfile, dir.path());
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let mut a = tar::Archive::new(std::fs::File::open(dir.path().join("rootfs.tar")).unwrap());
    a.set_preserve_permissions(true);
    a.unpack(&root).unwrap();
    let keys_dir = dir.path().join("keys");
    let keys = envup::ssh::MachineKeys::ensure(&keys_dir, "t").unwrap();
    std::fs::write(
        root.join("etc/ssh/ssh_host_ed25519_key"),
        keys.host_private_pem(),
    )
    .unwrap();
    std::fs::write(
        root.join("root/.ssh/authorized_keys"),
        keys.authorized_key() + "\n",
    )
    .unwrap();
    let port = free_port();
    // A /dev for the chroot, unmounted when this test ends.
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let dev = root.join("dev");
    check(
        Command::new("mount")
            .args(["--bind", "/dev"])
            .arg(&dev)
            .status()
            .unwrap()
            .success(),
        "bind /dev",
    )?;
    let _unmount = Unmount(dev);
    let mut child = Command::new("unshare")
        .args(["--mount", "--pid", "--uts", "--fork", "--kill-child"])
        .arg(format!("--mount-proc={}", root.join("proc").display()))
        .arg("chroot")
        .arg(&root)
        .args(["/bin/sh", "-c", &format!("/etc/init.d/rcS; exec /usr/sbin/dropbear -F -E -s -p {port} -r /etc/dropbear/dropbear_ed25519_host_key")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ep = envup::state::machine::SshEndpoint {
        host: "127.0.0.1".into(),
        port,
        user: "root".into(),
    };
    let result = (|| {
        let ssh = envup::ssh::Ssh::wait(
            &ep,
            None,
            &keys,
            Duration::from_secs(15),
            envup::ssh::Watch::default(),
        )
        .map_err(|e| Failed::from(e.to_string()))?;
        let out = ssh
            .run("hostname", "cat /etc/hostname", None)
            .map_err(|e| Failed::from(e.to_string()))?;
        check(
            String::from_utf8_lossy(&out).trim() == "tiny",
            "wrong hostname",
        )?;
        let up = tempfile::tempdir().unwrap();
        std::fs::write(up.path().join("f.txt"), "hello").unwrap();
        ssh.upload(up.path(), "/tmp/up", false)
            .map_err(|e| Failed::from(e.to_string()))?;
        let out = ssh
            .run("cat", "cat /tmp/up/f.txt", None)
            .map_err(|e| Failed::from(e.to_string()))?;
        check(out == b"hello", "upload did not arrive")
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// tiny boots to SSH under TCG: uncompressed kernel (PVH), its initramfs,
/// the disk as a qcow2 overlay. (The time is measured in bench/.)
fn tiny_boots_under_tcg() -> Result<(), Failed> {
    let (_, boxfile) = tiny();
    let dir = tempfile::tempdir().unwrap();
    unpack(boxfile, dir.path());
    common::qemu::boot_to_banner(dir.path(), Duration::from_secs(90))
        .map(|_| ())
        .map_err(Failed::from)
}

fn debian_bookworm_builds() -> Result<(), Failed> {
    // Built once for all the tests that need it (the backends' too).
    let out = common::boxes::built_box("debian-bookworm");
    let dir = tempfile::tempdir().unwrap();
    unpack(&out, dir.path());
    let names: Vec<String> =
        tar::Archive::new(std::fs::File::open(dir.path().join("rootfs.tar")).unwrap())
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
    for f in [
        "usr/sbin/sshd",
        "etc/ssh/sshd_config.d/envup.conf",
        "usr/bin/sudo",
        "usr/sbin/init",
    ] {
        check(names.iter().any(|n| n == f), format!("rootfs lacks {f}"))?;
    }
    check(
        !names.iter().any(|n| n.starts_with("etc/ssh/ssh_host_")),
        "the box ships host keys",
    )?;
    check(
        dir.path().join("disk.qcow2").exists() && dir.path().join("initrd.img").exists(),
        "no VM artifacts",
    )
}

type TestFn = fn() -> Result<(), Failed>;

fn main() {
    let args = Arguments::from_args();
    let skip = unavailable();
    if let Some(why) = &skip {
        eprintln!("skipping the box build tests: {why}");
    }
    let qemu_missing = envup::host::which("qemu-system-x86_64").is_none()
        || !Path::new("/usr/share/qemu/qboot.rom").exists();
    let debootstrap_missing = envup::host::which("debootstrap").is_none();
    if qemu_missing {
        eprintln!(
            "skipping tiny_boots_under_tcg: qemu-system-x86_64 is missing (apt-get install qemu-system-x86)"
        );
    }
    if debootstrap_missing {
        eprintln!(
            "skipping debian_bookworm_builds: debootstrap is missing (apt-get install debootstrap)"
        );
    }
    let tests: Vec<(&str, TestFn, bool)> = vec![
        ("tiny_builds_and_repeats", tiny_builds_and_repeats, false),
        ("tiny_answers_envups_ssh", tiny_answers_envups_ssh, false),
        ("tiny_boots_under_tcg", tiny_boots_under_tcg, qemu_missing),
        (
            "debian_bookworm_builds",
            debian_bookworm_builds,
            debootstrap_missing,
        ),
    ];
    let trials = tests
        .into_iter()
        .map(|(name, f, extra_skip)| {
            Trial::test(name, f).with_ignored_flag(skip.is_some() || extra_skip)
        })
        .collect();
    libtest_mimic::run(&args, trials).exit();
}
