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

/// qemu processes still running for this project.
fn qemus(p: &Project) -> String {
    let o = std::process::Command::new("pgrep")
        .args(["-af", &format!("qemu-system.*{}", p.path().display())])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn destroyed_cleanly(p: &Project, machines: &[&str]) -> Result<(), Failed> {
    envup(p, &["destroy", "-f"]).status(0);
    check(qemus(p).is_empty(), format!("qemu left: {}", qemus(p)))?;
    for m in machines {
        let dir = p.path().join(".envup/machines").join(m);
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
    let overlay = p.path().join(".envup/machines/vm/qemu/disk.qcow2");
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

/// A box laid out as vagrant-libvirt makes them (`metadata.json`,
/// `box.img`, a `Vagrantfile`, its kernel and initramfs beside them), that
/// boots only through the kernel, initramfs and command line its
/// Vagrantfile names and logs in as the user it names: made here from
/// tiny's files (tiny's disk has no boot loader).
fn vagrant_libvirt_box() -> Result<(), Failed> {
    let tiny = common::boxes::stored_dir(home().path(), "tiny");
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
         \x20 config.ssh.username = \"root\"\n\
         \x20 config.vm.provider :libvirt do |libvirt|\n\
         \x20   libvirt.kernel = File.join(File.dirname(__FILE__), \"{kernel}\")\n\
         \x20   libvirt.initrd = File.join(File.dirname(__FILE__), \"{initrd}\")\n\
         \x20   libvirt.cmd_line = \"{cmdline}\"\n\
         \x20   libvirt.memory = 256\n\
         \x20 end\n\
         end\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tiny-libvirt.box");
    let mut b = tar::Builder::new(std::fs::File::create(&file).unwrap());
    let meta = br#"{"provider": "libvirt", "format": "qcow2", "virtual_size": 1}"#;
    for (name, from) in [
        ("metadata.json", None),
        ("Vagrantfile", None),
        ("box.img", Some(tiny.join(path_of("disk")))),
        (kernel.as_str(), Some(tiny.join(&kernel))),
        (initrd.as_str(), Some(tiny.join(&initrd))),
    ] {
        let data = match (name, from) {
            ("metadata.json", _) => meta.to_vec(),
            ("Vagrantfile", _) => vagrantfile.clone().into_bytes(),
            (_, Some(path)) => std::fs::read(path).unwrap(),
            _ => unreachable!(),
        };
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, data.as_slice()).unwrap();
    }
    b.finish().unwrap();
    // In a home of its own, with nothing but this box.
    let p = Project::with_envfile(
        "[machines.vm]\nbox = \"vagrant/tiny-libvirt\"\nbackend = \"qemu\"\nmemory = \"256MiB\"\nboot_timeout = \"60s\"\n",
    );
    let run = |args: &[&str]| p.cmd(args).out();
    let name = "vagrant/tiny-libvirt";
    run(&["-q", "box", "add", file.to_str().unwrap(), "--name", name]).status(0);
    let up = run(&["up"]);
    let seen = (up.code() == 0).then(|| common::exec_in(p.home.path(), &p, "vm", "id -un"));
    run(&["destroy", "-f"]).status(0);
    check(up.code() == 0, format!("up failed: {}", up.stderr()))?;
    let seen = seen.unwrap_or_default();
    check(seen == "root\n", format!("logged in as {seen:?}"))
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
    ];
    let trials = tests
        .into_iter()
        .map(|(n, f)| Trial::test(n, f).with_ignored_flag(skip.is_some()))
        .collect();
    libtest_mimic::run(&args, trials).exit();
}
