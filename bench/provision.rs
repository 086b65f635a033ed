//! What provisioning costs beyond the SSH handshake, against a real sshd on
//! 127.0.0.1, measured in one run:
//!
//! - the handshake (connect, key exchange, host key check, login) alone;
//! - OpenSSH's own `ssh host true`, a raw baseline for one remote command;
//! - a bare `true` over an open session: the raw baseline for one command
//!   (it includes the remote login shell's start-up, which envup does not
//!   control: on a host whose ~/.bashrc is slow, this is slow too);
//! - one no-op provisioner over an open session, and what it costs beyond
//!   the bare command (target: <= 30 ms);
//! - `envup provision` with 1 and with 10 no-op provisioners: the
//!   difference is 9 provisioners, not 9 more handshakes, because one
//!   session serves all of a machine's provisioners.
//!
//! Run with `cargo bench --bench provision` (as root, with openssh-server).

#[path = "../tests/common/sshd.rs"]
mod sshd;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use envup::provision::Runner;
use envup::ssh::{MachineKeys, Ssh};
use envup::ui::Human;

fn mean<F: FnMut()>(runs: usize, mut f: F) -> Duration {
    f();
    let t = Instant::now();
    for _ in 0..runs {
        f();
    }
    t.elapsed() / runs as u32
}

fn ms(d: Duration) -> String {
    format!("{:8.2} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    if let Some(why) = sshd::unavailable() {
        println!("provision bench skipped: {why}");
        return;
    }
    let bin = env!("CARGO_BIN_EXE_envup");
    let root = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let dir = sshd::machine_dir(home.path(), root.path(), "web");
    std::fs::create_dir_all(&dir).unwrap();
    let keys = MachineKeys::ensure(&dir, "web").unwrap();
    let server = sshd::Sshd::start(&keys.host_private_pem(), &keys.authorized_key());
    sshd::running_machine(home.path(), root.path(), "web", server.port);
    let state = envup::state::ProjectState::of(home.path(), root.path())
        .load("web")
        .unwrap()
        .unwrap();
    let ep = state.ssh.unwrap();

    let handshake = mean(30, || {
        Ssh::connect(&ep, None, &keys, Duration::from_secs(5)).unwrap();
    });

    let envfile = |n: usize| {
        let mut s = String::from("[machines.web]\nbox = \"tiny\"\n");
        for i in 0..n {
            s.push_str(&format!(
                "[[machines.web.provision]]\nname = \"p{i}\"\nrun = \"always\"\nshell = \"true\"\n"
            ));
        }
        s
    };
    std::fs::write(root.path().join("Envfile"), envfile(1)).unwrap();
    let config = envup::envfile::load(&root.path().join("Envfile")).unwrap();
    let machine = &config.machines["web"];
    let ssh = Ssh::connect(&ep, None, &keys, Duration::from_secs(5)).unwrap();
    let quiet = Human::new(true, false);
    let mut runner = Runner {
        ssh: &ssh,
        machine,
        reporter: &quiet,
        scope: minijinja::Value::UNDEFINED,
        log: None,
    };
    let one = mean(30, || runner.run(&machine.provisioners[0]).unwrap());
    let bare = mean(30, || {
        ssh.exec("true", None, &mut |_, _| {}).unwrap();
    });

    let cfg = Command::new(bin)
        .args(["ssh-config", "web"])
        .current_dir(root.path())
        .env("ENVUP_HOME", home.path())
        .output()
        .unwrap();
    let cfg_path = root.path().join("ssh_config");
    std::fs::write(&cfg_path, &cfg.stdout).unwrap();
    let openssh = mean(20, || {
        let ok = Command::new("ssh")
            .args([
                "-F",
                cfg_path.to_str().unwrap(),
                "-o",
                "BatchMode=yes",
                "web",
                "true",
            ])
            .stdin(Stdio::null())
            .status()
            .unwrap();
        assert!(ok.success());
    });

    let cli = |n: usize| {
        std::fs::write(root.path().join("Envfile"), envfile(n)).unwrap();
        mean(10, || {
            let out = Command::new(bin)
                .args(["-q", "provision", "web"])
                .current_dir(root.path())
                .env("ENVUP_HOME", home.path())
                .stdin(Stdio::null())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        })
    };
    let cli1 = cli(1);
    let cli10 = cli(10);

    println!("SSH provisioning, sshd on 127.0.0.1 (means)");
    println!("  handshake + login (envup, libssh2)     {}", ms(handshake));
    println!("  `ssh host true` (OpenSSH, raw baseline) {}", ms(openssh));
    let cost = one.saturating_sub(bare);
    println!("  bare `true`, open session (baseline)    {}", ms(bare));
    println!("  one no-op provisioner, open session     {}", ms(one));
    println!(
        "  provisioner beyond the bare command     {}   ({:.2}x the baseline; target <= 30 ms: {})",
        ms(cost),
        one.as_secs_f64() / bare.as_secs_f64(),
        if cost <= Duration::from_millis(30) {
            "met"
        } else {
            "NOT met"
        }
    );
    println!("  `envup provision`, 1 provisioner        {}", ms(cli1));
    println!("  `envup provision`, 10 provisioners      {}", ms(cli10));
    let per = (cli10.saturating_sub(cli1)) / 9;
    println!(
        "  each extra provisioner in the CLI       {}   (over an open session: {}; a login per provisioner would add {} each)",
        ms(per),
        ms(one).trim(),
        ms(handshake).trim()
    );
}
