//! The SSH layer against a real OpenSSH server on 127.0.0.1: provisioners,
//! exec, upload, ssh-config, host key checking, waiting. Reported as
//! ignored (with the reason) where sshd cannot run.

mod common;

use std::time::{Duration, Instant};

use common::sshd::{Sshd, free_port, machine_dir, running_machine, unavailable};
use common::{Project, check};
use libtest_mimic::{Arguments, Failed, Trial};

/// A project with machine `web` running behind a fresh sshd.
struct Fixture {
    p: Project,
    _sshd: Sshd,
}

fn fix(envfile: &str) -> Fixture {
    fix_in(Project::with_envfile(envfile))
}

fn fix_in(p: Project) -> Fixture {
    // Make the keys first, start sshd with them, then record its port.
    let dir = machine_dir(p.home.path(), p.path(), "web");
    std::fs::create_dir_all(&dir).unwrap();
    let keys = envup::ssh::MachineKeys::ensure(&dir, "web").unwrap();
    let sshd = Sshd::start(&keys.host_private_pem(), &keys.authorized_key());
    running_machine(p.home.path(), p.path(), "web", sshd.port);
    Fixture { p, _sshd: sshd }
}

const WEB: &str = "[machines.web]\nbox = \"tiny\"\nenv = { GREETING = \"hello\" }\n";

fn provision_runs_and_streams() -> Result<(), Failed> {
    let f = fix(&format!(
        "{WEB}provision = [{{ name = \"hi\", shell = \"echo \\\"$GREETING $1\\\"; echo oops >&2\", args = [\"world\"] }}]\n"
    ));
    let out = f.p.cmd(&["provision", "web"]).out().status(0);
    check(
        out.stderr().contains("web | hello world"),
        format!("no tagged output:\n{}", out.stderr()),
    )?;
    check(out.stderr().contains("web | oops"), "stderr line missing")?;
    let log = std::fs::read_to_string(
        machine_dir(f.p.home.path(), f.p.path(), "web").join("provision.log"),
    )
    .unwrap();
    check(
        log.contains("hi | hello world") && log.contains("hi ! oops"),
        format!("log: {log}"),
    )
}

fn failing_script_names_provisioner_and_code() -> Result<(), Failed> {
    let f = fix(&format!(
        "{WEB}[[machines.web.provision]]\nname = \"bad\"\nscript = \"fail.sh\"\n[[machines.web.provision]]\nname = \"after\"\nshell = \"touch /tmp/envup-test-after-$$\"\n"
    ));
    f.p.write("fail.sh", "#!/bin/sh\necho failing\nexit 3\n");
    f.p.cmd(&["provision", "web"])
        .out()
        .status(1)
        .stderr_has("provisioner `bad` failed with exit code 3")
        .stderr_has("1 of 1 machines could not be provisioned");
    let st = envup::state::ProjectState::of(f.p.home.path(), f.p.path())
        .load("web")
        .unwrap()
        .unwrap();
    check(
        st.provisioned.is_empty(),
        "nothing recorded after a failure",
    )
}

fn once_and_always() -> Result<(), Failed> {
    let f = fix(&format!(
        "{WEB}[[machines.web.provision]]\nname = \"s\"\nscript = \"s.sh\"\n[[machines.web.provision]]\nname = \"a\"\nrun = \"always\"\nshell = \"echo always-ran\"\n"
    ));
    f.p.write("s.sh", "#!/bin/sh\necho once-ran\n");
    let first = f.p.cmd(&["provision", "web"]).out().status(0);
    check(
        first.stderr().contains("once-ran") && first.stderr().contains("always-ran"),
        first.stderr(),
    )?;
    let second = f.p.cmd(&["provision", "web"]).out().status(0);
    check(
        !second.stderr().contains("once-ran"),
        "unchanged script ran again",
    )?;
    check(second.stderr().contains("always-ran"), "always did not run")?;
    f.p.write("s.sh", "#!/bin/sh\necho once-ran!\n");
    let third = f.p.cmd(&["provision", "web"]).out().status(0);
    check(
        third.stderr().contains("once-ran!"),
        "changed script did not run",
    )?;
    let named =
        f.p.cmd(&["provision", "web", "--with", "s"])
            .out()
            .status(0);
    check(
        named.stderr().contains("once-ran!") && !named.stderr().contains("always-ran"),
        named.stderr(),
    )?;
    f.p.cmd(&["provision", "web", "--with", "nope"])
        .out()
        .status(2)
        .stderr_has("no provisioner named `nope`");
    Ok(())
}

fn directory_upload_keeps_modes() -> Result<(), Failed> {
    let f = fix(&format!(
        "{WEB}provision = [{{ file = \"conf\", to = \"/tmp/envup-upload-test\" }}, {{ file = \"one.txt\", to = \"/tmp/envup-upload-one/renamed.txt\" }}]\n"
    ));
    use std::os::unix::fs::PermissionsExt;
    let run = f.p.write("conf/bin/run.sh", "#!/bin/sh\n");
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o750)).unwrap();
    let secret = f.p.write("conf/secret", "s");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    f.p.write("one.txt", "one");
    f.p.cmd(&["provision", "web"]).out().status(0);
    let out =
        f.p.cmd(&[
            "exec",
            "web",
            "--",
            "stat",
            "-c",
            "%a %n",
            "/tmp/envup-upload-test/bin/run.sh",
            "/tmp/envup-upload-test/secret",
        ])
        .out()
        .status(0);
    check(
        out.stdout()
            .contains("750 /tmp/envup-upload-test/bin/run.sh"),
        out.stdout(),
    )?;
    check(
        out.stdout().contains("600 /tmp/envup-upload-test/secret"),
        out.stdout(),
    )?;
    f.p.cmd(&[
        "exec",
        "web",
        "--",
        "cat",
        "/tmp/envup-upload-one/renamed.txt",
    ])
    .out()
    .status(0)
    .stdout_has("one");
    let _ = std::fs::remove_dir_all("/tmp/envup-upload-test");
    let _ = std::fs::remove_dir_all("/tmp/envup-upload-one");
    Ok(())
}

fn exec_passes_exit_codes_and_keeps_streams_apart() -> Result<(), Failed> {
    let f = fix(WEB);
    for code in [0, 1, 42] {
        f.p.cmd(&["exec", "web", "--", "sh", "-c", &format!("exit {code}")])
            .out()
            .status(code);
    }
    let out =
        f.p.cmd(&[
            "exec",
            "web",
            "--",
            "sh",
            "-c",
            "echo to-out; echo to-err >&2",
        ])
        .out()
        .status(0);
    check(
        out.stdout() == "to-out\n",
        format!("stdout {:?}", out.stdout()),
    )?;
    check(
        out.stderr() == "to-err\n",
        format!("stderr {:?}", out.stderr()),
    )?;
    let out =
        f.p.cmd(&["exec", "web", "--", "echo", "a b", "$HOME"])
            .out()
            .status(0);
    check(
        out.stdout() == "a b $HOME\n",
        format!("arguments were not kept as words: {:?}", out.stdout()),
    )
}

fn wrong_host_key_is_refused() -> Result<(), Failed> {
    let p = Project::with_envfile(WEB);
    let dir = machine_dir(p.home.path(), p.path(), "web");
    std::fs::create_dir_all(&dir).unwrap();
    let keys = envup::ssh::MachineKeys::ensure(&dir, "web").unwrap();
    let impostor = tempfile::tempdir().unwrap();
    let other = envup::ssh::MachineKeys::ensure(impostor.path(), "web").unwrap();
    let sshd = Sshd::start(&other.host_private_pem(), &keys.authorized_key());
    running_machine(p.home.path(), p.path(), "web", sshd.port);
    p.cmd(&["exec", "web", "--", "true"])
        .out()
        .status(1)
        .stderr_has("presented host key")
        .stderr_has(&keys.host_fingerprint())
        .stderr_has("refusing to connect");
    Ok(())
}

fn waiting_times_out_with_the_last_error() -> Result<(), Failed> {
    let p = Project::with_envfile(&format!(
        "{WEB}boot_timeout = \"1s\"\nprovision = [{{ shell = \"true\" }}]\n"
    ));
    let port = free_port();
    running_machine(p.home.path(), p.path(), "web", port);
    std::fs::write(
        machine_dir(p.home.path(), p.path(), "web").join("console.log"),
        "boot…\n",
    )
    .unwrap();
    let t = Instant::now();
    p.cmd(&["provision", "web"])
        .out()
        .status(1)
        .stderr_has("no SSH login on 127.0.0.1:")
        .stderr_has("within 1s")
        .stderr_has("connection refused")
        .stderr_has("console.log");
    check(
        t.elapsed() < Duration::from_secs(5),
        "the wait overran its deadline",
    )
}

fn ssh_config_works_with_openssh() -> Result<(), Failed> {
    if envup::host::which("ssh").is_none() {
        return Err("ssh client missing".into());
    }
    // In a project directory whose name holds a space, quotes and bytes
    // that are not UTF-8: the key paths in the config are that directory's.
    let f = fix_in(Project::with_envfile_in("ssh 'cfg' ", WEB));
    let out = f.p.cmd(&["ssh-config", "web"]).out().status(0);
    let cfg = f.p.path().join("ssh_config");
    std::fs::write(&cfg, &out.0.stdout).unwrap();
    let res = std::process::Command::new("ssh")
        .arg("-F")
        .arg(&cfg)
        .args(["-o", "BatchMode=yes", "web", "echo", "via-openssh"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    check(
        res.status.success(),
        String::from_utf8_lossy(&res.stderr).into_owned(),
    )?;
    check(
        String::from_utf8_lossy(&res.stdout) == "via-openssh\n",
        "wrong output",
    )?;
    // `envup ssh -- CMD` goes through the same client and passes the code on.
    f.p.cmd(&["ssh", "web", "--", "exit", "7"]).out().status(7);
    Ok(())
}

fn upload_command() -> Result<(), Failed> {
    let f = fix(WEB);
    f.p.write("data/a.txt", "alpha");
    f.p.cmd(&["upload", "web", "data", "/tmp/envup-upload-cmd"])
        .out()
        .status(0);
    f.p.cmd(&["exec", "web", "--", "cat", "/tmp/envup-upload-cmd/a.txt"])
        .out()
        .status(0)
        .stdout_has("alpha");
    let _ = std::fs::remove_dir_all("/tmp/envup-upload-cmd");
    f.p.cmd(&["upload", "web", "missing", "/tmp/x"])
        .out()
        .status(2);
    Ok(())
}

fn template_provisioner_sees_machines() -> Result<(), Failed> {
    // Inline code is inside the Envfile, which is rendered first: it
    // needs {% raw %}. A script file needs nothing.
    let f = fix(&format!(
        "{WEB}forward = [{{ guest = 80, host = 18080 }}]\n[[machines.web.provision]]\ntemplate = true\n\
         shell = \"{{% raw %}}echo name={{{{ machine.name }}}} port={{{{ machines.web.forwards[0].host }}}}{{% endraw %}}\"\n\
         [[machines.web.provision]]\ntemplate = true\nscript = \"t.sh\"\n"
    ));
    f.p.write(
        "t.sh",
        "#!/bin/sh\necho host={{ machine.hostname }} project={{ project.name }}\n",
    );
    let out = f.p.cmd(&["provision", "web"]).out().status(0);
    check(out.stderr().contains("name=web port=18080"), out.stderr())?;
    check(out.stderr().contains("host=web project="), out.stderr())
}

type TestFn = fn() -> Result<(), Failed>;

fn main() {
    let args = Arguments::from_args();
    let skip = unavailable();
    if let Some(why) = &skip {
        eprintln!("skipping the SSH tests: {why}");
    }
    let tests: Vec<(&str, TestFn)> = vec![
        ("provision_runs_and_streams", provision_runs_and_streams),
        (
            "failing_script_names_provisioner_and_code",
            failing_script_names_provisioner_and_code,
        ),
        ("once_and_always", once_and_always),
        ("directory_upload_keeps_modes", directory_upload_keeps_modes),
        (
            "exec_passes_exit_codes_and_keeps_streams_apart",
            exec_passes_exit_codes_and_keeps_streams_apart,
        ),
        ("wrong_host_key_is_refused", wrong_host_key_is_refused),
        (
            "waiting_times_out_with_the_last_error",
            waiting_times_out_with_the_last_error,
        ),
        (
            "ssh_config_works_with_openssh",
            ssh_config_works_with_openssh,
        ),
        ("upload_command", upload_command),
        (
            "template_provisioner_sees_machines",
            template_provisioner_sees_machines,
        ),
    ];
    let trials = tests
        .into_iter()
        .map(|(name, f)| Trial::test(name, f).with_ignored_flag(skip.is_some()))
        .collect();
    libtest_mimic::run(&args, trials).exit();
}
