//! The qemu backend for real (under TCG where KVM guests cannot boot):
//! `tiny` up, provisioned, exec, snapshots, halt, up, destroy; a
//! `debian/bookworm` VM with systemd; a boot that times out; two VMs from
//! one box at once; a Vagrant libvirt box that boots through the kernel
//! its Vagrantfile names. Ignored, with the reason, where qemu cannot run.

mod common;

use std::sync::OnceLock;

use common::{Project, check};
use libtest_mimic::{Arguments, Failed, Trial};

fn unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("box builds need root".into());
    }
    for (tool, pkg) in [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("qemu-img", "qemu-utils"),
    ] {
        if common::host_lacks(tool) {
            return Some(format!("{tool} is missing (apt-get install {pkg})"));
        }
    }
    None
}

fn home() -> &'static tempfile::TempDir {
    static HOME: OnceLock<tempfile::TempDir> = OnceLock::new();
    HOME.get_or_init(|| common::boxes::home_with(&["tiny"]))
}

fn with_debian() {
    static ADDED: OnceLock<()> = OnceLock::new();
    ADDED.get_or_init(|| {
        let b = common::boxes::built_box("debian-bookworm");
        envup(&Project::new(), &["-q", "box", "add", b.to_str().unwrap()]).status(0);
    });
}

fn envup(p: &Project, args: &[&str]) -> common::Done {
    p.cmd(args)
        .env("ENVUP_HOME", home().path().to_str().unwrap())
        .out()
}

fn exec(p: &Project, machine: &str, script: &str) -> String {
    common::exec_in(home().path(), p, machine, script)
}

/// qemu processes still running for this project (its pid file is in the
/// project, named byte for byte).
fn qemus(p: &Project) -> String {
    common::processes_naming(common::state(p).as_os_str().as_encoded_bytes())
        .into_iter()
        .filter(|c| c.contains("qemu-system"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn destroyed_cleanly(p: &Project, machines: &[&str]) -> Result<(), Failed> {
    envup(p, &["destroy", "-f"]).status(0);
    check(qemus(p).is_empty(), format!("qemu left: {}", qemus(p)))?;
    for m in machines {
        let dir = common::state(p).join("machines").join(m);
        check(!dir.exists(), format!("{} left", dir.display()))?;
    }
    Ok(())
}

const TINY: &str = "[machines.vm]\nbox = \"tiny\"\nbackend = \"qemu\"\nmemory = \"256MiB\"\n";

fn tiny_lifecycle() -> Result<(), Failed> {
    // In a directory whose name holds a space, a comma, a colon and quotes:
    // qemu's option lists end a value at a comma unless it is doubled, and
    // a colon could read as a protocol prefix.
    let p = Project::with_envfile_in(
        "envup a,b:'q' ",
        &format!(
            "{TINY}provision = [{{ name = \"hi\", shell = \"echo provisioned > /root/p\" }}]\n"
        ),
    );
    envup(&p, &["up"]).status(0);
    // What checks that no qemu is left finds this one.
    check(!qemus(&p).is_empty(), "the running qemu is not found")?;
    check(
        exec(&p, "vm", "cat /root/p") == "provisioned\n",
        "provisioner did not run",
    )?;
    check(
        exec(&p, "vm", "hostname") == "vm\n",
        "hostname from the seed",
    )?;
    let j = envup(&p, &["--json", "status"]).status(0).json();
    check(
        j["machines"][0]["details"]["accel"].is_string(),
        format!("status does not say the accelerator: {j}"),
    )?;
    // The disk is an overlay on the stored image.
    let overlay = common::state(&p).join("machines/vm/qemu/disk.qcow2");
    let info = std::process::Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(&overlay)
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    check(
        info["backing-filename"]
            .as_str()
            .is_some_and(|b| b.starts_with(home().path().to_str().unwrap())),
        format!("overlay backing file: {}", info["backing-filename"]),
    )?;
    exec(&p, "vm", "echo kept > /root/data; sync");
    envup(&p, &["snapshot", "save", "vm", "before"]).status(0);
    exec(&p, "vm", "echo changed > /root/data; sync");
    envup(&p, &["snapshot", "list", "vm"])
        .status(0)
        .stdout_has("before");
    envup(&p, &["snapshot", "restore", "vm", "before"]).status(0);
    check(
        exec(&p, "vm", "cat /root/data") == "kept\n",
        "the snapshot did not undo the change",
    )?;
    envup(&p, &["halt"]).status(0);
    let j = envup(&p, &["--json", "status"]).status(0).json();
    check(j["machines"][0]["status"] == "stopped", j.to_string())?;
    check(qemus(&p).is_empty(), "qemu still runs after halt")?;
    envup(&p, &["up"]).status(0);
    check(
        exec(&p, "vm", "cat /root/data") == "kept\n",
        "data lost across halt and up",
    )?;
    destroyed_cleanly(&p, &["vm"])
}

fn debian_lifecycle() -> Result<(), Failed> {
    with_debian();
    let p = Project::with_envfile(
        "[machines.vm]\nbox = \"debian/bookworm\"\nbackend = \"qemu\"\nmemory = \"1GiB\"\nboot_timeout = \"180s\"\n\
         provision = [{ name = \"hi\", shell = \"echo provisioned > /root/p\" }]\n",
    );
    envup(&p, &["up"]).status(0);
    check(
        exec(&p, "vm", "cat /root/p") == "provisioned\n",
        "provisioner did not run",
    )?;
    check(
        exec(&p, "vm", "cat /proc/1/comm") == "systemd\n",
        "systemd is not init",
    )?;
    check(
        exec(&p, "vm", "hostname") == "vm\n",
        "hostname from the seed",
    )?;
    destroyed_cleanly(&p, &["vm"])
}

/// A guest that never answers SSH (tiny's kernel told to mount a root that
/// is not there, so its initramfs gives up and drops to a shell): `up`
/// times out with the console's last lines in the error.
fn boot_timeout_shows_the_console() -> Result<(), Failed> {
    let digest = common::boxes::stored_digest(home().path(), "tiny");
    let stored = home().path().join("boxes-v1").join(&digest);
    let mut m = envup::boxes::manifest::Manifest::parse(
        &std::fs::read_to_string(stored.join("box.toml")).unwrap(),
    )
    .unwrap();
    m.name = "broken".into();
    m.artifacts.shift_remove("rootfs");
    m.boot = Some(envup::boxes::manifest::Boot {
        cmdline: "root=/dev/vdz console=ttyS0".into(),
    });
    let p = Project::with_envfile(
        "[machines.vm]\nbox = \"broken\"\nbackend = \"qemu\"\nmemory = \"256MiB\"\nboot_timeout = \"25s\"\n",
    );
    let out = p.path().join("broken.box");
    envup::boxes::archive::pack(&m, &stored, &out).unwrap();
    envup(&p, &["-q", "box", "add", out.to_str().unwrap()]).status(0);
    let err = envup(&p, &["up"]).status(1).stderr();
    check(err.contains("no SSH login"), err.clone())?;
    check(
        err.contains("its last lines:") && err.contains("cannot mount /dev/vdz"),
        format!("the console's last lines are not in: {err}"),
    )?;
    destroyed_cleanly(&p, &["vm"])?;
    envup(&p, &["-q", "box", "remove", "broken"]).status(0);
    Ok(())
}

fn two_vms_from_one_box() -> Result<(), Failed> {
    let p = Project::with_envfile(
        "[defaults]\nbox = \"tiny\"\nbackend = \"qemu\"\nmemory = \"256MiB\"\n[machines.a]\n[machines.b]\n",
    );
    envup(&p, &["up", "--jobs", "2"]).status(0);
    check(exec(&p, "a", "hostname") == "a\n", "a")?;
    check(exec(&p, "b", "hostname") == "b\n", "b")?;
    destroyed_cleanly(&p, &["a", "b"])
}

type TestFn = fn() -> Result<(), Failed>;

/// A box file laid out as vagrant-libvirt makes them (`metadata.json`,
/// `box.img`, a `Vagrantfile`, its kernel and initramfs beside them) from
/// the kernel and initramfs of the stored box `from` and the qcow2 `disk`,
/// whose Vagrantfile names them, that box's kernel command line and `user`
/// as the SSH user.
fn vagrant_libvirt_file(
    dir: &std::path::Path,
    from: &str,
    disk: &std::path::Path,
    user: &str,
) -> String {
    let tiny = common::boxes::stored_dir(home().path(), from);
    let manifest: toml::Table =
        toml::from_str(&std::fs::read_to_string(tiny.join("box.toml")).unwrap()).unwrap();
    let path_of = |a: &str| {
        manifest["artifacts"][a]["path"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (kernel, initrd) = (path_of("kernel"), path_of("initrd"));
    let cmdline = manifest["boot"]["cmdline"].as_str().unwrap();
    let vagrantfile = format!(
        "Vagrant.configure(\"2\") do |config|\n\
         \x20 config.ssh.username = \"{user}\"\n\
         \x20 config.vm.provider :libvirt do |libvirt|\n\
         \x20   libvirt.kernel = File.join(File.dirname(__FILE__), \"{kernel}\")\n\
         \x20   libvirt.initrd = File.join(File.dirname(__FILE__), \"{initrd}\")\n\
         \x20   libvirt.cmd_line = \"{cmdline}\"\n\
         \x20   libvirt.memory = 256\n\
         \x20 end\n\
         end\n"
    );
    let file = dir.join("libvirt.box");
    let mut b = tar::Builder::new(std::fs::File::create(&file).unwrap());
    let meta = br#"{"provider": "libvirt", "format": "qcow2", "virtual_size": 1}"#;
    for (name, data) in [
        ("metadata.json", meta.to_vec()),
        ("Vagrantfile", vagrantfile.into_bytes()),
        ("box.img", std::fs::read(disk).unwrap()),
        (kernel.as_str(), std::fs::read(tiny.join(&kernel)).unwrap()),
        (initrd.as_str(), std::fs::read(tiny.join(&initrd)).unwrap()),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, data.as_slice()).unwrap();
    }
    b.finish().unwrap();
    file.to_str().unwrap().to_owned()
}

/// Up `file` (a Vagrant libvirt box) as machine `vm` in a project of its
/// own; run `then` on it if it came up, and destroy it.
fn up_vagrant_box(
    file: &str,
    name: &str,
    then: impl FnOnce(&Project) -> Result<(), Failed>,
) -> Result<(), Failed> {
    up_vagrant_box_with(
        file,
        name,
        "memory = \"256MiB\"\nboot_timeout = \"60s\"\n",
        then,
    )
}

fn up_vagrant_box_with(
    file: &str,
    name: &str,
    settings: &str,
    then: impl FnOnce(&Project) -> Result<(), Failed>,
) -> Result<(), Failed> {
    let p = Project::with_envfile(&format!(
        "[machines.vm]\nbox = \"{name}\"\nbackend = \"qemu\"\n{settings}",
    ));
    envup(&p, &["-q", "box", "add", file, "--name", name]).status(0);
    let up = envup(&p, &["up"]);
    let seen = (up.code() == 0).then(|| then(&p));
    envup(&p, &["destroy", "-f"]).status(0);
    envup(&p, &["-q", "box", "remove", name]).status(0);
    check(up.code() == 0, format!("up failed: {}", up.stderr()))?;
    seen.unwrap_or(Ok(()))
}

/// A Vagrant libvirt box that boots only through the kernel, initramfs
/// and command line its Vagrantfile names and logs in as the user it
/// names: made here from tiny's files (tiny's disk has no boot loader).
fn vagrant_libvirt_box() -> Result<(), Failed> {
    let tiny = common::boxes::stored_dir(home().path(), "tiny");
    let dir = tempfile::tempdir().unwrap();
    let file = vagrant_libvirt_file(dir.path(), "tiny", &tiny.join("disk.qcow2"), "root");
    up_vagrant_box(&file, "vagrant/tiny-libvirt", |p| {
        let seen = exec(p, "vm", "id -un");
        check(seen == "root\n", format!("logged in as {seen:?}"))
    })
}

/// The raw copy at `raw` of the stored box `from`'s qcow2 disk.
fn raw_disk_of(from: &str, raw: &std::path::Path) {
    let disk = common::boxes::stored_dir(home().path(), from).join("disk.qcow2");
    qemu_img(&["convert", "-O", "raw"], &disk, raw);
}

/// `qemu-img ARGS FROM TO`.
fn qemu_img(args: &[&str], from: &std::path::Path, to: &std::path::Path) {
    let st = std::process::Command::new("qemu-img")
        .args(args)
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success(), "qemu-img {args:?}");
}

/// Put `files` (text, path in the image, st_mode, owner uid and gid) in the
/// ext4 image `raw`, replacing what is there.
fn put_files(raw: &std::path::Path, files: &[(&str, &str, &str, u32)]) {
    let dir = tempfile::tempdir().unwrap();
    for (i, (text, to, mode, owner)) in files.iter().enumerate() {
        let _ = std::process::Command::new("debugfs")
            .args(["-w", "-R", &format!("rm {to}")])
            .arg(raw)
            .output();
        if mode.starts_with("040") {
            debugfs(raw, &format!("mkdir {to}"));
        } else {
            let local = dir.path().join(i.to_string());
            std::fs::write(&local, text).unwrap();
            debugfs(raw, &format!("write {} {to}", local.display()));
        }
        debugfs(raw, &format!("sif {to} mode {mode}"));
        debugfs(raw, &format!("sif {to} uid {owner}"));
        debugfs(raw, &format!("sif {to} gid {owner}"));
    }
}

/// After the first login to machine `vm`: its login user's
/// `authorized_keys` is the machine's own key alone (the insecure key is
/// gone) and its hostname is set.
fn keys_placed(p: &Project) -> Result<(), Failed> {
    let keys = exec(p, "vm", "cat ~/.ssh/authorized_keys");
    let own = std::fs::read_to_string(common::state(p).join("machines/vm/id_ed25519.pub")).unwrap();
    check(
        keys == own,
        format!("authorized_keys after the first login: {keys:?}"),
    )?;
    check(exec(p, "vm", "hostname") == "vm\n", "hostname not set")
}

/// Run debugfs `commands` on the ext4 image `image`.
fn debugfs(image: &std::path::Path, commands: &str) -> String {
    let o = std::process::Command::new("debugfs")
        .args(["-w", "-R", commands])
        .arg(image)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "debugfs {commands}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A Vagrant libvirt box as Vagrant's own boxes are: no seed is read, and
/// the only key that logs in is Vagrant's published insecure key. Made
/// from tiny's disk: its start-up no longer reads the seed, root's
/// `authorized_keys` holds the insecure ed25519 key, and its SSH server
/// writes OpenSSH's pid file and takes /etc/ssh's host key when it starts
/// again (a HUP ends dropbear; init starts it again). envup logs in once
/// with the insecure key, puts the machine's keys and hostname in place,
/// and never uses that key again.
fn vagrant_insecure_key_first_login() -> Result<(), Failed> {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = d.join("disk.raw");
    raw_disk_of("tiny", &raw);
    // tiny's start-up without the loop that reads the seed.
    let rcs = debugfs(&raw, "cat /etc/init.d/rcS");
    let (head, rest) = rcs
        .split_once("for d in /dev/vd[b-z]; do")
        .expect("tiny reads its seed");
    let (_, tail) = rest.split_once("\ndone\n").unwrap();
    let sshd = "#!/bin/sh\n\
         [ -f /etc/ssh/ssh_host_ed25519_key ] && dropbearconvert openssh dropbear \
         /etc/ssh/ssh_host_ed25519_key /etc/dropbear/dropbear_ed25519_host_key >/dev/null 2>&1\n\
         exec /usr/sbin/dropbear -F -E -s -p 22 -P /run/sshd.pid -r /etc/dropbear/dropbear_ed25519_host_key\n";
    put_files(
        &raw,
        &[
            (&format!("{head}{tail}"), "/etc/init.d/rcS", "0100755", 0),
            (sshd, "/etc/init.d/sshd", "0100755", 0),
            (
                envup::ssh::first_login::VAGRANT_PUBLIC[0],
                "/root/.ssh/authorized_keys",
                "0100600",
                0,
            ),
        ],
    );
    let disk = d.join("box.qcow2");
    qemu_img(&["convert", "-O", "qcow2"], &raw, &disk);
    let file = vagrant_libvirt_file(d, "tiny", &disk, "root");
    up_vagrant_box(&file, "vagrant/insecure-key", |p| {
        keys_placed(p)?;
        let state =
            std::fs::read_to_string(common::state(p).join("machines/vm/state.json")).unwrap();
        check(
            !state.contains("first_login"),
            format!("first login still recorded: {state}"),
        )?;
        // Halt and up: logged in with the machine's keys alone.
        envup(p, &["halt"]).status(0);
        envup(p, &["up"]).status(0);
        check(
            exec(p, "vm", "hostname") == "vm\n",
            "hostname lost across halt and up",
        )
    })
}

/// A Vagrant libvirt box as Vagrant's Debian boxes are: user `vagrant`
/// with password-less sudo and only Vagrant's insecure RSA key, a host key
/// baked into the box (every machine from it would share it), OpenSSH
/// under systemd, no seed read. Made from debian/bookworm's disk. envup
/// logs in once as `vagrant` with the RSA key and, through sudo, puts the
/// machine's own host key in place and has sshd reload it.
fn vagrant_debian_box_with_sudo() -> Result<(), Failed> {
    with_debian();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = d.join("disk.raw");
    raw_disk_of("debian/bookworm", &raw);
    let baked = d.join("baked");
    let st = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "baked", "-f"])
        .arg(&baked)
        .status()
        .unwrap();
    assert!(st.success());
    let read = |f: &str| debugfs(&raw, &format!("cat {f}"));
    let (passwd, shadow, group) = (read("/etc/passwd"), read("/etc/shadow"), read("/etc/group"));
    let _ = std::process::Command::new("debugfs")
        .args([
            "-w",
            "-R",
            "rm /etc/systemd/system/multi-user.target.wants/envup-seed.service",
        ])
        .arg(&raw)
        .output();
    put_files(
        &raw,
        &[
            (
                &format!("{passwd}vagrant:x:1000:1000:vagrant:/home/vagrant:/bin/bash\n"),
                "/etc/passwd",
                "0100644",
                0,
            ),
            (
                &format!("{shadow}vagrant:*:19000:0:99999:7:::\n"),
                "/etc/shadow",
                "0100640",
                0,
            ),
            (
                &format!("{group}vagrant:x:1000:\n"),
                "/etc/group",
                "0100644",
                0,
            ),
            (
                "vagrant ALL=(ALL) NOPASSWD:ALL\n",
                "/etc/sudoers.d/vagrant",
                "0100440",
                0,
            ),
            (
                &std::fs::read_to_string(&baked).unwrap(),
                "/etc/ssh/ssh_host_ed25519_key",
                "0100600",
                0,
            ),
            ("", "/home/vagrant", "040755", 1000),
            ("", "/home/vagrant/.ssh", "040700", 1000),
            (
                envup::ssh::first_login::VAGRANT_PUBLIC[1],
                "/home/vagrant/.ssh/authorized_keys",
                "0100600",
                1000,
            ),
        ],
    );
    let disk = d.join("box.qcow2");
    qemu_img(&["convert", "-O", "qcow2"], &raw, &disk);
    let file = vagrant_libvirt_file(d, "debian/bookworm", &disk, "vagrant");
    let settings = "memory = \"1GiB\"\nboot_timeout = \"180s\"\n";
    up_vagrant_box_with(&file, "vagrant/debian-insecure-key", settings, |p| {
        keys_placed(p)?;
        check(
            exec(p, "vm", "id -un") == "vagrant\n",
            "not logged in as vagrant",
        )?;
        // envup checked the host key on every login after the first; the
        // baked one is gone from the machine.
        let served = exec(p, "vm", "sudo -n cat /etc/ssh/ssh_host_ed25519_key.pub");
        check(
            !served.contains("baked"),
            format!("the box's host key is still served: {served}"),
        )
    })
}

fn main() {
    let args = Arguments::from_args();
    let skip = unavailable();
    if let Some(why) = &skip {
        eprintln!("skipping the qemu tests: {why}");
    }
    let tests: Vec<(&str, TestFn)> = vec![
        ("tiny_lifecycle", tiny_lifecycle),
        ("debian_lifecycle", debian_lifecycle),
        (
            "boot_timeout_shows_the_console",
            boot_timeout_shows_the_console,
        ),
        ("two_vms_from_one_box", two_vms_from_one_box),
        ("vagrant_libvirt_box", vagrant_libvirt_box),
        (
            "vagrant_insecure_key_first_login",
            vagrant_insecure_key_first_login,
        ),
        ("vagrant_debian_box_with_sudo", vagrant_debian_box_with_sudo),
    ];
    let trials = tests
        .into_iter()
        .map(|(n, f)| Trial::test(n, f).with_ignored_flag(skip.is_some()))
        .collect();
    libtest_mimic::run(&args, trials).exit();
}
