//! Hostile input, tried as an attacker would: boxes, catalogs, HTTP
//! servers, `Envfile.lock`, envup's own state files, templates and root
//! inside a machine. Each case checks three things: a victim directory
//! outside the project and the store is untouched, nothing is left
//! behind, and the error names the input at fault.
//!
//! The cases that bring a jail up are ignored, with the reason, where
//! jails cannot run. Add a case here for every new way in.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::boxes::{RawBox, make_box, manifest_for, rootfs_bytes};
use common::http::{Mode, Server};
use common::{Project, check};
use libtest_mimic::{Arguments, Failed, Trial};

use common::victim::Victim;

/// What a failed command must look like: this exit code, and every one of
/// `words` in its error.
fn refused(out: &common::Done, code: i32, words: &[&str]) -> Result<(), Failed> {
    check(
        out.code() == code,
        format!("exit {} instead of {code}: {}", out.code(), out.stderr()),
    )?;
    for w in words {
        check(
            out.stderr().contains(w),
            format!("the error lacks {w:?}: {}", out.stderr()),
        )?;
    }
    check(
        !out.stderr().contains("panicked"),
        format!("envup panicked: {}", out.stderr()),
    )
}

/// Nothing is left in the store: no box, no unpacking, no part file.
fn store_clean(p: &Project) -> Result<(), Failed> {
    store_entries_except(p, &[])
}

fn envfile(text: &str) -> Project {
    Project::with_envfile(text)
}

// ---- lock files, catalogs and HTTP servers ----

/// A lock file whose sha256 is a path: never a file name.
fn lock_digest_is_a_path() -> Result<(), Failed> {
    let v = Victim::new();
    let p = envfile("[machines.web]\nbox = \"tiny\"\nbackend = \"container\"\n");
    let rel = format!("../../../../../../../../..{}/x", v.path().display());
    p.write(
        "Envfile.lock",
        &format!(
            "version = 1\n[machines.web]\nbox = \"tiny\"\nversion = \"1\"\nurl = \"http://127.0.0.1:9/b.box\"\nsha256 = \"{rel}\"\n"
        ),
    );
    let out = p.cmd(&["up"]).env("PATH", "/nonexistent").out();
    refused(&out, 1, &["Envfile.lock", "not a sha256"])?;
    // A version that would steer the terminal.
    let digest = "ab".repeat(32);
    p.write(
        "Envfile.lock",
        &format!(
            "version = 1\n[machines.web]\nbox = \"tiny\"\nversion = \"1\\u001b[2J\"\nurl = \"http://127.0.0.1:9/b.box\"\nsha256 = \"{digest}\"\n"
        ),
    );
    let out = p.cmd(&["up"]).env("PATH", "/nonexistent").out();
    refused(&out, 1, &["Envfile.lock", "`web`", "not usable"])?;
    check(
        !out.stderr().contains('\u{1b}'),
        "an escape was printed raw",
    )?;
    v.untouched()?;
    store_clean(&p)
}

fn catalog(name: &str, url: &str, checksum: &str) -> Vec<u8> {
    format!(
        r#"{{"name": "{name}", "versions": [{{"version": "1.0.0", "providers": [
        {{"name": "envup", "url": "{url}", "checksum_type": "sha256", "checksum": "{checksum}"}}]}}]}}"#
    )
    .into_bytes()
}

/// A catalog's checksum that is a path, a server's catalog that points at
/// a file on this host, and a name that would steer the terminal.
fn hostile_catalogs() -> Result<(), Failed> {
    let v = Victim::new();
    let s = Server::start();
    let p = Project::new();
    let good = "ab".repeat(32);
    let secret = v.path().join("x.part");
    let cases = [
        (
            catalog(
                "a/b",
                "http://127.0.0.1:9/b.box",
                &format!("../../../../../..{}/x", v.path().display()),
            ),
            vec!["not a sha256"],
        ),
        (
            catalog("a/b", &format!("file://{}", secret.display()), &good),
            vec!["not an http(s) URL"],
        ),
        (
            catalog("a/../b\\u001b[2J", "http://127.0.0.1:9/b.box", &good),
            vec!["name `a/../b\\u{1b}[2J`"],
        ),
    ];
    for (i, (bytes, words)) in cases.into_iter().enumerate() {
        let url = s.put(&format!("/c{i}.json"), bytes, Mode::Normal);
        let out = p.cmd(&["box", "add", &url]).out();
        let mut w = vec!["catalog"];
        w.extend(words);
        refused(&out, 1, &w)?;
        check(
            !out.stderr().contains('\u{1b}'),
            "an escape sequence was printed raw",
        )?;
    }
    v.untouched()?;
    store_clean(&p)
}

/// A catalog larger than envup reads is refused without reading it all.
fn oversized_catalog() -> Result<(), Failed> {
    let p = Project::new();
    let s = Server::start();
    let url = s.put("/big.json", Vec::new(), Mode::Endless);
    let started = Instant::now();
    let out = p.cmd(&["box", "add", &url]).out();
    refused(&out, 1, &["larger than 16.0 MiB"])?;
    check(
        started.elapsed() < Duration::from_secs(20),
        "reading a huge catalog took too long",
    )?;
    store_clean(&p)
}

/// A server that stalls after its headers: the download fails within the
/// read timeout, naming the URL and the bytes received, and keeps them to
/// resume.
fn stalled_download() -> Result<(), Failed> {
    let p = Project::new();
    let s = Server::start();
    let url = s.put("/slow.box", vec![7u8; 4096], Mode::StallAfter(1000));
    let started = Instant::now();
    let out = p
        .cmd(&["box", "add", &url])
        .env("ENVUP_READ_TIMEOUT", "1")
        .out();
    refused(&out, 1, &[&url, "sent nothing for 1 s after 1000 bytes"])?;
    check(
        started.elapsed() < Duration::from_secs(30),
        format!("a stalled server held envup for {:?}", started.elapsed()),
    )?;
    let parts: Vec<u64> = std::fs::read_dir(p.home.path().join("boxes-v1/downloads"))
        .map(|d| d.flatten().map(|e| e.metadata().unwrap().len()).collect())
        .unwrap_or_default();
    check(parts == [1000], format!("part files: {parts:?}"))
}

/// A server that sends a byte now and then: slower than the minimum rate
/// over the window, the attempt fails, saying the rate and the window; no
/// `box add` waits for ever.
fn trickling_download() -> Result<(), Failed> {
    let p = Project::new();
    let s = Server::start();
    let url = s.put("/trickle.box", vec![7u8; 4096], Mode::Trickle(300));
    let started = Instant::now();
    let out = p
        .cmd(&["box", "add", &url])
        .env("ENVUP_MIN_RATE", "100")
        .env("ENVUP_MIN_RATE_TIME", "2")
        .out();
    refused(
        &out,
        1,
        &[&url, "slower than the 100 bytes a second over 2 s"],
    )?;
    check(
        started.elapsed() < Duration::from_secs(30),
        format!("a trickling server held envup for {:?}", started.elapsed()),
    )
}

/// An endless body, and one that announces more than the cap: refused at
/// the cap, and no part file is kept.
fn unbounded_downloads() -> Result<(), Failed> {
    let p = Project::new();
    let s = Server::start();
    let endless = s.put("/endless.box", Vec::new(), Mode::Endless);
    let out = p
        .cmd(&["box", "add", &endless])
        .env("ENVUP_MAX_DOWNLOAD", "2000000")
        .out();
    refused(&out, 1, &[&endless, "more than the 2000000 bytes"])?;
    store_clean(&p)?;
    let huge = s.put("/huge.box", Vec::new(), Mode::Announces(1 << 40));
    let out = p
        .cmd(&["box", "add", &huge])
        .env("ENVUP_MAX_DOWNLOAD", "2000000")
        .out();
    refused(&out, 1, &[&huge, "offers 1099511627776 bytes"])?;
    store_clean(&p)
}

/// A download that fails before any byte leaves no empty part file.
fn no_empty_part_files() -> Result<(), Failed> {
    let p = Project::new();
    let s = Server::start();
    let url = s.put("/gone.box", Vec::new(), Mode::Status(404));
    refused(&p.cmd(&["box", "add", &url]).out(), 1, &[&url, "404"])?;
    store_clean(&p)
}

// ---- boxes ----

/// Names, versions and users in box.toml that would be paths, escape
/// sequences or SSH options.
fn hostile_box_names_and_users() -> Result<(), Failed> {
    let p = Project::new();
    let rootfs = rootfs_bytes("x");
    let base = manifest_for(&[("rootfs", "rootfs.tar", &rootfs)]);
    let cases = [
        (
            base.replace("name = \"evil\"", "name = \"a/../../b\""),
            "name `a/../../b`",
        ),
        (
            base.replace("version = \"1.0.0\"", "version = \"1\\u001b[2J\""),
            "version `1\\u{1b}[2J`",
        ),
        (
            format!("ssh_user = \"root\\nProxyCommand touch /tmp/envup-pwned\"\n{base}"),
            "ssh_user `root\\nProxyCommand touch /tmp/envup-pwned`",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (i, (manifest, words)) in cases.into_iter().enumerate() {
        let path = dir.path().join(format!("{i}.box"));
        RawBox::new()
            .file("box.toml", manifest.as_bytes())
            .file("rootfs.tar", &rootfs)
            .write(&path);
        let out = p.cmd(&["box", "add", path.to_str().unwrap()]).out();
        refused(&out, 1, &["box.toml", words])?;
        check(!out.stderr().contains('\u{1b}'), "escape printed raw")?;
    }
    let good = make_box(
        dir.path(),
        "ok",
        "1.0.0",
        &[("rootfs", "rootfs.tar", &rootfs)],
    );
    let out = p
        .cmd(&["box", "add", good.to_str().unwrap(), "--name", "x/../y"])
        .out();
    refused(&out, 1, &["name `x/../y`"])?;
    check(!Path::new("/tmp/envup-pwned").exists(), "an SSH option ran")?;
    store_clean(&p)
}

/// A small box that declares (and holds) more than the cap: refused before
/// anything is written, and nothing is left.
fn box_bomb() -> Result<(), Failed> {
    let p = Project::new();
    let dir = tempfile::tempdir().unwrap();
    let zeros = vec![0u8; 8 << 20];
    let b = make_box(
        dir.path(),
        "bomb",
        "1.0.0",
        &[("rootfs", "rootfs.tar", &zeros)],
    );
    let small = std::fs::metadata(&b).unwrap().len();
    check(small < 64 << 10, format!("the bomb is {small} bytes"))?;
    let out = p
        .cmd(&["box", "add", b.to_str().unwrap()])
        .env("ENVUP_MAX_BOX", "1000000")
        .out();
    refused(&out, 1, &["unpacks to 8.0 MiB", "ENVUP_MAX_BOX"])?;
    store_clean(&p)?;
    // Past the last artifact: a stream that goes on for ever.
    let rootfs = rootfs_bytes("x");
    let path = dir.path().join("trailing.box");
    RawBox::new()
        .file(
            "box.toml",
            manifest_for(&[("rootfs", "rootfs.tar", &rootfs)]).as_bytes(),
        )
        .file("rootfs.tar", &rootfs)
        .trailing(4 << 20)
        .write(&path);
    let out = p.cmd(&["box", "add", path.to_str().unwrap()]).out();
    refused(&out, 1, &["after its last artifact"])?;
    store_clean(&p)
}

/// A box that would leave the disk with less than envup keeps free is
/// refused before it is unpacked; a small one still fits. (A 300 MiB tmpfs
/// as ENVUP_HOME, so only root runs it.)
fn disk_space_is_checked() -> Result<(), Failed> {
    let p = Project::new();
    let mount = |args: &[&str]| {
        std::process::Command::new(args[0])
            .args(&args[1..])
            .status()
            .unwrap()
            .success()
    };
    let home = p.home.path().to_str().unwrap().to_owned();
    check(
        mount(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            "size=300m",
            "envup-test",
            &home,
        ]),
        "cannot mount a tmpfs",
    )?;
    let dir = tempfile::tempdir().unwrap();
    let big = make_box(
        dir.path(),
        "big",
        "1.0.0",
        &[("rootfs", "rootfs.tar", &vec![0u8; 64 << 20])],
    );
    let small = make_box(
        dir.path(),
        "small",
        "1.0.0",
        &[("rootfs", "rootfs.tar", &rootfs_bytes("x"))],
    );
    let refused_big = p.cmd(&["box", "add", big.to_str().unwrap()]).out();
    let took_small = p.cmd(&["box", "add", small.to_str().unwrap()]).out();
    let clean = store_entries_except(&p, &["small"]);
    mount(&["umount", &home]);
    refused(
        &refused_big,
        1,
        &["not enough free space", "64.0 MiB needed"],
    )?;
    check(
        took_small.code() == 0,
        format!("a small box did not fit: {}", took_small.stderr()),
    )?;
    clean
}

/// Nothing in the store but the boxes named.
fn store_entries_except(p: &Project, keep: &[&str]) -> Result<(), Failed> {
    let root = p.home.path().join("boxes-v1");
    let mut left = Vec::new();
    for sub in [root.clone(), root.join("tmp"), root.join("downloads")] {
        for e in std::fs::read_dir(&sub).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let meta = std::fs::read_to_string(e.path().join("meta.json")).unwrap_or_default();
            let kept = keep
                .iter()
                .any(|k| meta.contains(&format!("\"name\": \"{k}\"")));
            if !matches!(name.as_str(), "tmp" | "downloads") && !kept {
                left.push(e.path());
            }
        }
    }
    check(left.is_empty(), format!("left in the store: {left:?}"))
}

/// The store is its owner's alone: nobody else reaches a setuid file a box
/// unpacks there.
fn store_is_private() -> Result<(), Failed> {
    use std::os::unix::fs::PermissionsExt;
    let p = Project::new();
    let dir = tempfile::tempdir().unwrap();
    let b = make_box(
        dir.path(),
        "ok",
        "1.0.0",
        &[("rootfs", "rootfs.tar", &rootfs_bytes("x"))],
    );
    p.cmd(&["box", "add", b.to_str().unwrap()]).out().status(0);
    let mode = std::fs::metadata(p.home.path().join("boxes-v1"))
        .unwrap()
        .permissions()
        .mode();
    check(
        mode & 0o077 == 0,
        format!("the store is {:o}", mode & 0o777),
    )?;
    // The project's state too, even when something made it 0755.
    let p = envfile("[machines.web]\nbox = \"tiny\"\nbackend = \"container\"\n");
    let state = common::state(&p);
    std::fs::create_dir_all(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    let _ = p.cmd(&["up"]).env("PATH", "/nonexistent").out();
    let mode = std::fs::metadata(&state).unwrap().permissions().mode();
    check(
        mode & 0o077 == 0,
        format!("the project's state is {:o}", mode & 0o777),
    )
}

// ---- the Envfile's own bounds ----

fn validate(text: &str) -> common::Done {
    envfile(text).cmd(&["validate"]).out()
}

const M: &str = "[machines.web]\nbox = \"tiny\"\nbackend = \"jail\"\n";

/// A short template that renders a line of megabytes, used where it is
/// wrong: the error names its place and stays small (its lines cut), as
/// does every error envup prints.
fn template_error_is_bounded() -> Result<(), Failed> {
    let out = validate(&format!("{M}hostname = \"{{{{ 'a' * 58000000 }}}}\"\n"));
    refused(&out, 2, &["Envfile:4", "hostname"])?;
    let size = out.0.stderr.len() + out.0.stdout.len();
    check(size < 16 << 10, format!("the error is {size} bytes long"))
}

/// What a machine prints cannot drive the terminal (a title, a cleared
/// screen): envup shows it escaped; the machine's log keeps the bytes.
fn machine_output_is_escaped() -> Result<(), Failed> {
    let p = envfile(&format!(
        "{M}memory = \"128MiB\"\n\
         provision = [{{ shell = \"printf 'a\\\\033]0;owned\\\\007b\\\\033[2Jc\\\\n'\" }}]\n"
    ));
    let out = in_jail_home(&p, &["up"]);
    let shown = out.stdout() + &out.stderr();
    let logged =
        std::fs::read(common::state(&p).join("machines/web/provision.log")).unwrap_or_default();
    let ids = common::jail_ids(&p);
    in_jail_home(&p, &["destroy", "--force"]).status(0);
    check(out.code() == 0, format!("up failed: {shown}"))?;
    check(
        !shown.contains('\u{1b}') && !shown.contains('\u{7}'),
        format!("raw control characters reached the terminal: {shown:?}"),
    )?;
    check(
        shown.contains("\\u{1b}]0;owned"),
        format!("the machine's output is not shown escaped: {shown:?}"),
    )?;
    check(
        logged.windows(2).any(|w| w == b"\x1b]"),
        "the log lost the machine's raw bytes",
    )?;
    common::nothing_left(&p, &ids)
}

/// Templates that would take minutes and gigabytes, durations that
/// overflow, a non-UTF-8 file: each an Envfile error with its place, fast.
fn envfile_bounds() -> Result<(), Failed> {
    let started = Instant::now();
    refused(
        &validate(&format!("{M}hostname = \"{{{{ [1] * 99999999 }}}}\"\n")),
        2,
        &["Envfile:4", "cannot be printed"],
    )?;
    refused(
        &validate(&format!(
            "{{% for i in range(100000) %}}{{% for j in range(100000) %}}{{% endfor %}}{{% endfor %}}\n{M}"
        )),
        2,
        &["Envfile:1", "more work than envup allows"],
    )?;
    refused(
        &validate(&format!("{M}hostname = \"{{{{ 'ab' * 999999999 }}}}\"\n")),
        2,
        &["Envfile:4", "more work than envup allows"],
    )?;
    check(
        started.elapsed() < Duration::from_secs(30),
        format!("bounded templates took {:?}", started.elapsed()),
    )?;
    for d in ["18446744073709551615s1s", "9999999999999999h", "31d"] {
        let out = validate(&format!("{M}boot_timeout = \"{d}\"\n"));
        check(out.code() == 2, format!("{d}: exit {}", out.code()))?;
        check(
            out.stderr().contains("Envfile:4:16"),
            format!("{d}: {}", out.stderr()),
        )?;
    }
    let p = Project::new();
    std::fs::write(
        p.path().join("Envfile"),
        b"[machines.web]\nbox = \"t\"\n\xff\xfe = 1\n",
    )
    .unwrap();
    refused(
        &p.cmd(&["validate"]).out(),
        2,
        &["not UTF-8", "Envfile:3:1"],
    )
}

/// File provisioners take regular files and directories: a FIFO or a
/// device would be read for ever by `plan`.
fn file_provisioner_special_files() -> Result<(), Failed> {
    let p = envfile(&format!(
        "{M}provision = [{{ file = \"pipe\", to = \"/tmp/p\" }}]\n"
    ));
    nix::unistd::mkfifo(
        &p.path().join("pipe"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let started = Instant::now();
    refused(
        &p.cmd(&["plan"]).out(),
        2,
        &["`pipe` is not a regular file or a directory", "Envfile:4"],
    )?;
    refused(
        &validate(&format!(
            "{M}provision = [{{ file = \"/dev/zero\", to = \"/tmp/z\" }}]\n"
        )),
        2,
        &["/dev/zero"],
    )?;
    check(
        started.elapsed() < Duration::from_secs(10),
        "a special file was read",
    )
}

/// A share's guest path may not climb out with `..`.
fn share_guest_dotdot() -> Result<(), Failed> {
    refused(
        &validate(&format!(
            "{M}share = [{{ host = \".\", guest = \"/srv/../../etc\" }}]\n"
        )),
        2,
        &["may not contain `..`", "Envfile:4"],
    )
}

/// `init` writes the Envfile alone: nothing through a symlinked
/// .gitignore (or anything else it finds in the project).
fn init_through_symlink() -> Result<(), Failed> {
    let v = Victim::new();
    let p = Project::new();
    std::os::unix::fs::symlink(v.path().join("x.part"), p.path().join(".gitignore")).unwrap();
    let out = p.cmd(&["init"]).out();
    check(out.code() == 0, format!("init failed: {}", out.stderr()))?;
    v.untouched()
}

// ---- envup's own state, damaged or edited ----

/// A machine's state whose recorded ids point at things envup did not
/// create: `destroy` leaves them alone and says so.
fn state_points_elsewhere() -> Result<(), Failed> {
    use std::os::unix::fs::PermissionsExt;
    let v = Victim::new();
    // A stand-in engine that records what it is asked to do.
    let bin = tempfile::tempdir().unwrap();
    let log = bin.path().join("calls");
    let docker = bin.path().join("docker");
    // It knows no container (as an engine knows none of envup's here).
    std::fs::write(
        &docker,
        format!(
            "#!/bin/sh\necho \"$@\" >> {}\n[ \"$1\" = inspect ] && exit 1\nexit 0\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&docker, std::fs::Permissions::from_mode(0o755)).unwrap();
    let p = envfile(
        "[machines.web]\nbox = \"tiny\"\nbackend = \"container\"\n\
         [machines.jl]\nbox = \"tiny\"\nbackend = \"jail\"\n",
    );
    let project = envup::state::ProjectState::of(p.home.path(), p.path());
    for (name, kind) in [
        (
            "web",
            envup::envfile::BackendName::new("container").unwrap(),
        ),
        ("jl", envup::envfile::BackendName::new("jail").unwrap()),
    ] {
        let mut st = envup::state::MachineState::new(name, kind);
        st.apply(envup::state::Event::BeginCreate).unwrap();
        st.apply(envup::state::Event::Created).unwrap();
        st.id = Some("docker:someone-elses".into());
        project.save(&st).unwrap();
    }
    let dir = |m: &str| common::state(&p).join("machines").join(m);
    std::fs::write(
        dir("web").join("container.json"),
        r#"{"engine": "docker", "name": "someone-elses", "args": []}"#,
    )
    .unwrap();
    std::fs::create_dir_all(dir("jl").join("jail")).unwrap();
    let victim = v.path().display().to_string();
    std::fs::write(
        dir("jl").join("jail/jail.json"),
        format!(
            r#"{{"lower": "{victim}", "upper": "{victim}", "work": "{victim}", "merged": "{victim}",
            "hostname": "x", "cpus": 1, "memory": 1, "pids": 1, "network": "private",
            "ssh_port": 1, "forwards": [], "shares": [], "id": "../../../{victim}"}}"#
        ),
    )
    .unwrap();
    let path = format!("{}:/usr/bin:/bin", bin.path().display());
    let out = p.cmd(&["destroy", "--force"]).env("PATH", &path).out();
    // envup's own files go; what they named stays, and the user is told.
    refused(&out, 0, &["someone-elses", "leaves"])?;
    check(
        !common::state(&p).join("machines/web").exists(),
        "the machine's own files are left",
    )?;
    let calls = std::fs::read_to_string(&log).unwrap_or_default();
    check(
        !calls.contains("someone-elses"),
        format!("the engine was asked about what the record named: {calls}"),
    )?;
    v.untouched()
}

// ---- root inside a machine, and boxes, against a real jail ----

fn tiny_home() -> &'static tempfile::TempDir {
    static HOME: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    HOME.get_or_init(|| common::boxes::home_with(&["tiny"]))
}

fn in_jail_home(p: &Project, args: &[&str]) -> common::Done {
    p.cmd(args)
        .env("ENVUP_HOME", tiny_home().path().to_str().unwrap())
        .out()
}

/// tiny's rootfs, rewritten (see `rewrite_rootfs`).
fn tiny_rootfs_with(
    edit: impl Fn(&str, &mut Vec<u8>),
    links: &[(&str, tar::EntryType, &str)],
) -> Vec<u8> {
    let stored = common::boxes::stored_dir(tiny_home().path(), "tiny").join("rootfs.tar");
    common::boxes::rewrite_rootfs(&stored, edit, links)
        .into_inner()
        .unwrap()
}

fn add_box(p: &Project, name: &str, rootfs: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let b = make_box(
        dir.path(),
        name,
        "1.0.0",
        &[("rootfs", "rootfs.tar", rootfs)],
    );
    in_jail_home(p, &["-q", "box", "add", b.to_str().unwrap()]).status(0);
}

/// `destroy --force`, then nothing of the project's jails is left: no
/// mount, process, cgroup, namespace or state.
fn destroy_leaves_nothing(p: &Project) -> Result<(), Failed> {
    let ids = common::jail_ids(p);
    in_jail_home(p, &["destroy", "--force"]).status(0);
    common::nothing_left(p, &ids)
}

/// A box whose SSH user's home climbs out of the root: the key lands
/// inside the machine, never on the host.
fn passwd_home_escapes() -> Result<(), Failed> {
    let v = Victim::new();
    let home_field = format!("/../../../../../../../..{}/sub", v.path().display());
    let rootfs = tiny_rootfs_with(
        |path, data| {
            if path == "etc/passwd" {
                let text =
                    String::from_utf8_lossy(data).replace(":/root:", &format!(":{home_field}:"));
                *data = text.into_bytes();
            }
        },
        &[],
    );
    let p =
        envfile("[machines.web]\nbox = \"evil-home\"\nbackend = \"jail\"\nmemory = \"128MiB\"\n");
    add_box(&p, "evil-home", &rootfs);
    let out = in_jail_home(&p, &["up"]);
    v.untouched()?;
    check(out.code() == 0, format!("up failed: {}", out.stderr()))?;
    // The home is the path inside the machine, with `..` stopped at
    // its root, as the machine's own kernel would resolve it.
    let inside = common::exec_in(
        tiny_home().path(),
        &p,
        "web",
        &format!(
            "cat {}/sub/.ssh/authorized_keys | wc -l",
            v.path().display()
        ),
    );
    check(
        inside.trim() == "1",
        format!("the key is not inside: {inside}"),
    )?;

    destroy_leaves_nothing(&p)?;
    in_jail_home(&p, &["-q", "box", "remove", "evil-home", "--force"]).status(0);
    v.untouched()
}

/// A box whose /srv climbs to the host's /tmp, and a share mounted at
/// /srv/VICTIM/app: on the host that is the victim directory; inside the
/// machine it is the machine's own /tmp, where the target is made.
fn share_through_box_symlink() -> Result<(), Failed> {
    let v = Victim::new();
    let up = "../".repeat(30);
    let host_tmp = v.path().parent().unwrap().display().to_string();
    let link = format!("{up}{}", host_tmp.trim_start_matches('/'));
    let name = v.path().file_name().unwrap().to_str().unwrap().to_owned();
    let rootfs = tiny_rootfs_with(|_, _| {}, &[("srv", tar::EntryType::Symlink, &link)]);
    let p = envfile(&format!(
        "[machines.web]\nbox = \"evil-srv\"\nbackend = \"jail\"\nmemory = \"128MiB\"\n\
         share = [{{ host = \"data\", guest = \"/srv/{name}/app\" }}]\n",
    ));
    p.write("data/hello", "shared\n");
    add_box(&p, "evil-srv", &rootfs);
    let out = in_jail_home(&p, &["up"]);
    v.untouched()?;
    check(out.code() == 0, format!("up failed: {}", out.stderr()))?;
    let seen = common::exec_in(
        tiny_home().path(),
        &p,
        "web",
        &format!("cat {host_tmp}/{name}/app/hello"),
    );
    check(
        seen == "shared\n",
        format!("the share is not inside the machine: {seen}"),
    )?;
    destroy_leaves_nothing(&p)?;
    in_jail_home(&p, &["-q", "box", "remove", "evil-srv", "--force"]).status(0);
    v.untouched()
}

/// Root in a running jail turns a share's parent and /dev into symlinks to
/// a host directory; the next start makes and mounts nothing there (it
/// resolves them inside the jail, and refuses a /dev that leads nowhere).
fn root_in_the_jail_plants_symlinks() -> Result<(), Failed> {
    let v = Victim::new();
    let p = envfile(
        "[machines.web]\nbox = \"tiny\"\nbackend = \"jail\"\nmemory = \"128MiB\"\nboot_timeout = \"15s\"\n\
         share = [{ host = \"data\", guest = \"/mnt/app\" }]\n",
    );
    p.write("data/hello", "shared\n");
    in_jail_home(&p, &["up"]).status(0);
    // The share and /dev are locked mounts: root can move the share's
    // parent aside, not take the mounts away.
    let said = common::exec_in(
        tiny_home().path(),
        &p,
        "web",
        &format!(
            "umount /mnt/app 2>/dev/null && echo UNMOUNTED; mv /mnt /mnt.old && ln -s {0} /mnt; \
             umount -l /dev/pts /dev/shm /dev 2>/dev/null && echo UNMOUNTED; \
             rm -rf /dev 2>/dev/null; ln -s {0} /dev 2>/dev/null; true",
            v.path().display()
        ),
    );
    check(
        !said.contains("UNMOUNTED"),
        format!("root in the jail unmounted a share or /dev: {said}"),
    )?;
    in_jail_home(&p, &["halt"]).status(0);
    let out = in_jail_home(&p, &["up"]);
    v.untouched()?;
    if out.code() == 0 {
        // /mnt resolved inside the jail: to the victim's path in its root.
        let seen = common::exec_in(
            tiny_home().path(),
            &p,
            "web",
            &format!("cat {}/app/hello", v.path().display()),
        );
        check(seen == "shared\n", format!("the share moved: {seen}"))?;
    }
    destroy_leaves_nothing(&p)?;
    v.untouched()
}

/// A file envup makes inside a machine (the names of `/etc/hosts`, when
/// the machine has none) belongs to the machine's root, not to a host id
/// it cannot own.
fn files_made_inside_are_the_machines() -> Result<(), Failed> {
    let p = envfile(&format!("{M}memory = \"128MiB\"\n"));
    in_jail_home(&p, &["up"]).status(0);
    common::exec_in(tiny_home().path(), &p, "web", "rm -f /etc/hosts");
    in_jail_home(&p, &["halt"]).status(0);
    in_jail_home(&p, &["up"]).status(0);
    let owner = common::exec_in(
        tiny_home().path(),
        &p,
        "web",
        "stat -c '%u %g' /etc/hosts; grep -c web /etc/hosts",
    );
    check(
        owner == "0 0\n1\n",
        format!("/etc/hosts, as envup made it: {owner:?}"),
    )?;
    destroy_leaves_nothing(&p)
}

/// A project whose state an earlier envup kept in its `.envup/`: the
/// first command moves it out (with the claims and the index that name
/// it), the machine keeps its name on the host and comes up again; while a
/// machine is recorded as running, the state stays and `up` refuses; a
/// `.envup` envup did not make (a checkout's) is left alone.
fn state_moves_out_of_the_project() -> Result<(), Failed> {
    let p = envfile(&format!("{M}memory = \"128MiB\"\n"));
    in_jail_home(&p, &["up"]).status(0);
    in_jail_home(&p, &["halt"]).status(0);
    let state = common::state(&p);
    let id_of = |dir: &Path| -> String {
        let cfg: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.join("machines/web/jail/jail.json")).unwrap(),
        )
        .unwrap();
        cfg["id"].as_str().unwrap().to_owned()
    };
    let id = id_of(&state);
    // As an earlier envup left it: in the project, named by the host's
    // claims and the index.
    let legacy = p.path().join(".envup");
    std::fs::rename(&state, &legacy).unwrap();
    let name_legacy = |file: &Path| {
        let text = std::fs::read(file).unwrap_or_default();
        let (from, to) = (
            state.as_os_str().as_encoded_bytes(),
            legacy.as_os_str().as_encoded_bytes(),
        );
        if text.starts_with(from) {
            let mut new = to.to_vec();
            new.extend_from_slice(&text[from.len()..]);
            std::fs::write(file, new).unwrap();
        }
    };
    for dir in ["/var/lib/envup/ids", "/var/lib/envup/networks"] {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            name_legacy(&e.path());
        }
    }
    let index = tiny_home().path().join("machines.json");
    let text = std::fs::read_to_string(&index).unwrap();
    std::fs::write(
        &index,
        text.replace(&state.display().to_string(), &legacy.display().to_string()),
    )
    .unwrap();
    // Recorded as running: the state stays, and `up` starts nothing.
    let st_path = legacy.join("machines/web/state.json");
    let st = std::fs::read_to_string(&st_path).unwrap();
    std::fs::write(&st_path, st.replace("\"stopped\"", "\"running\"")).unwrap();
    refused(
        &in_jail_home(&p, &["up"]),
        1,
        &["still in", ".envup", "envup halt"],
    )?;
    check(
        legacy.exists(),
        "the state moved while a machine was recorded running",
    )?;
    // (That `up` found the machine stopped, and recorded it so.)
    let out = in_jail_home(&p, &["halt"]).status(0);
    check(
        out.stderr().contains("moved this project's state"),
        format!("halt did not say it moved the state: {}", out.stderr()),
    )?;
    check(!legacy.exists(), ".envup is still in the project")?;
    check(state.exists(), "the state is not under ENVUP_HOME")?;
    check(
        id_of(&state) == id,
        "the machine's name on the host changed",
    )?;
    in_jail_home(&p, &["up"]).status(0);
    let seen = common::exec_in(tiny_home().path(), &p, "web", "hostname");
    check(seen == "web\n", format!("the moved machine: {seen}"))?;
    // A checked-out `.envup` (not a private directory of the user's).
    let checkout = p.path().join(".envup");
    std::fs::create_dir(&checkout).unwrap();
    std::fs::set_permissions(
        &checkout,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(checkout.join("planted"), "x").unwrap();
    let out = in_jail_home(&p, &["status"]).status(0);
    check(
        out.stderr().contains("not a directory envup made"),
        format!(
            "status said nothing of the checkout's .envup: {}",
            out.stderr()
        ),
    )?;
    check(
        checkout.join("planted").exists(),
        "the checkout's .envup was touched",
    )?;
    destroy_leaves_nothing(&p)
}

/// The Envfile's table for a machine of `backend` on `tiny`.
fn backend_table(backend: &str) -> String {
    match backend {
        "docker" | "podman" => {
            format!("backend = \"container\"\ncontainer = {{ engine = \"{backend}\" }}\n")
        }
        other => format!("backend = \"{other}\"\n"),
    }
}

/// Shares as root in a machine finds them, on each backend: a read-only
/// share stays read-only (remounting, unmounting or writing it changes
/// nothing on the host), what the machine writes through a read-write one
/// is never host root's set-uid file or a device node (where the backend
/// can ensure it; Docker and Podman cannot, and `plan` says so), and a
/// share of the project shows none of envup's state. In a jail, the masks
/// over /proc and /sys cannot be taken away either.
fn shares_hold(backend: &'static str) -> Result<(), Failed> {
    let p = envfile(&format!(
        "[machines.web]\nbox = \"tiny\"\n{}memory = \"256MiB\"\n\
         share = [{{ host = \"ro\", guest = \"/ro\", read_only = true }}, \
         {{ host = \"rw\", guest = \"/rw\" }}, {{ host = \".\", guest = \"/src\", read_only = true }}]\n",
        backend_table(backend)
    ));
    p.write("ro/hello", "ro\n");
    p.write("rw/hello", "rw\n");
    // A user's directory: the machine writes there as that user.
    std::os::unix::fs::chown(p.path().join("rw"), Some(1000), Some(1000)).unwrap();
    in_jail_home(&p, &["up"]).status(0);
    let engine = matches!(backend, "docker" | "podman");
    let said = common::exec_in(
        tiny_home().path(),
        &p,
        "web",
        "mount -o remount,rw,bind /ro 2>/dev/null && echo REMOUNTED; \
         mount -o remount,rw /ro 2>/dev/null && echo REMOUNTED; \
         touch /ro/planted 2>/dev/null; \
         umount /ro 2>/dev/null && echo UNMOUNTED; umount -l /ro 2>/dev/null && echo UNMOUNTED; \
         cp /bin/busybox /rw/suid && chmod 6755 /rw/suid; \
         mknod /rw/null c 1 3 2>/dev/null; \
         echo SRC; ls -a /src; find /src -name 'id_ed25519*' -o -name state.json -o -name network.json; \
         true",
    );
    let host = |rel: &str| p.path().join(rel);
    let mut problems = Vec::new();
    if host("ro/planted").exists() {
        problems.push("a file was written through the read-only share".to_owned());
    }
    // A VM's kernel is its own: root there unmounts what it likes, and the
    // host's side of the share stays read-only.
    if backend != "qemu" && said.contains("UNMOUNTED") {
        problems.push("root in the machine unmounted a share".to_owned());
    }
    if said.contains("REMOUNTED") && backend != "qemu" {
        problems.push("root in the machine remounted the read-only share".to_owned());
    }
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    match std::fs::metadata(host("rw/suid")) {
        Ok(md) if !engine && md.uid() == 0 && md.mode() & 0o6000 != 0 => problems.push(format!(
            "host root owns a set-uid file the machine made ({:o})",
            md.mode()
        )),
        Ok(md) if matches!(backend, "jail" | "lxc") && md.uid() != 1000 => problems.push(format!(
            "the machine's root wrote as uid {}, not as the directory's owner",
            md.uid()
        )),
        Ok(_) => {}
        // (A guest that cannot mount the share has a copy of it.)
        Err(e) => problems.push(format!("the machine's file is not on the host: {e}")),
    }
    if let Ok(md) = std::fs::symlink_metadata(host("rw/null"))
        && (md.file_type().is_char_device() || md.file_type().is_block_device())
    {
        problems.push("the machine made a device node on the host".to_owned());
    }
    let src = said.split("SRC").nth(1).unwrap_or("");
    if src.contains(".envup") || src.contains("id_ed25519") || src.contains("state.json") {
        problems.push(format!(
            "the share of the project shows envup's state: {src}"
        ));
    }
    if backend == "jail" {
        let masks = common::exec_in(
            tiny_home().path(),
            &p,
            "web",
            "umount /proc/keys 2>/dev/null && echo M; umount -l /sys/firmware 2>/dev/null && echo M; \
             mount -o remount,rw /proc/sys 2>/dev/null && echo M; \
             mount -o remount,rw,bind /proc/sys 2>/dev/null && echo M; true",
        );
        if masks.contains('M') {
            problems.push(format!("root in the jail took a mask away: {masks}"));
        }
    }
    if engine {
        let plan = in_jail_home(&p, &["plan"]).status(0).stdout();
        if !plan.contains("share") || !plan.contains("root on the host") {
            problems.push(format!(
                "plan does not warn of the read-write share: {plan}"
            ));
        }
    }
    let ids = common::jail_ids(&p);
    in_jail_home(&p, &["destroy", "--force"]).status(0);
    let _ = std::fs::remove_dir_all(p.path().join("rw"));
    common::nothing_left(&p, &ids)?;
    check(problems.is_empty(), problems.join("; "))
}

/// A jail.json edited between two starts to share a host directory into
/// the jail: the jail starts with the Envfile's shares, not the file's.
fn edited_state_grants_nothing() -> Result<(), Failed> {
    let v = Victim::new();
    let p = envfile("[machines.web]\nbox = \"tiny\"\nbackend = \"jail\"\nmemory = \"128MiB\"\n");
    in_jail_home(&p, &["up"]).status(0);
    in_jail_home(&p, &["halt"]).status(0);
    let cfg_path = common::state(&p).join("machines/web/jail/jail.json");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    cfg["shares"] = serde_json::json!([
        { "host": v.path(), "guest": "/mnt/host", "read_only": false }
    ]);
    std::fs::write(&cfg_path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    in_jail_home(&p, &["up"]).status(0);
    let seen = common::exec_in(
        tiny_home().path(),
        &p,
        "web",
        "ls /mnt/host 2>&1; touch /mnt/host/planted 2>&1; true",
    );
    check(
        !seen.contains("x.part"),
        format!("the host directory is shared into the jail: {seen}"),
    )?;
    // The jail's ids edited to the host's own (root in the jail would be
    // host root), or to another block: refused by name, the jail not run.
    in_jail_home(&p, &["halt"]).status(0);
    let ids_path = common::state(&p).join("machines/web/jail/ids.json");
    let ids: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&ids_path).unwrap()).unwrap();
    let mut refusals = Vec::new();
    for uid in [0, ids["uid"].as_u64().unwrap() + 65536] {
        std::fs::write(
            &ids_path,
            serde_json::json!({ "uid": uid, "gid": uid, "shifted": true }).to_string(),
        )
        .unwrap();
        refusals.push(refused(
            &in_jail_home(&p, &["up"]),
            1,
            &["ids.json", "not this machine's block"],
        ));
    }
    std::fs::write(&ids_path, ids.to_string()).unwrap();
    destroy_leaves_nothing(&p)?;
    for r in refusals {
        r?;
    }
    v.untouched()
}

/// LXC: a share works; a share whose target the box symlinks out lands
/// inside the container (the link is followed inside it), nothing on the
/// host; a container config edited to run a hook on the host, or to share
/// a host directory, is written again from the Envfile at the next start.
fn lxc_shares_and_config() -> Result<(), Failed> {
    let v = Victim::new();
    let machine = |b: &str| {
        format!(
            "[machines.web]\nbox = \"{b}\"\nbackend = \"container\"\nmemory = \"128MiB\"\n\
             container = {{ engine = \"lxc\" }}\n\
             share = [{{ host = \"data\", guest = \"/srv/app\" }}]\n"
        )
    };
    let p = envfile(&machine("tiny"));
    p.write("data/hello", "shared\n");
    in_jail_home(&p, &["up"]).status(0);
    let seen = common::exec_in(tiny_home().path(), &p, "web", "cat /srv/app/hello");
    let shared = check(seen == "shared\n", format!("the share: {seen}"));
    in_jail_home(&p, &["halt"]).status(0);
    let dir = common::state(&p).join("machines/web/lxc");
    // LXC's own files for the container, named in the machine's state.
    let st: serde_json::Value = serde_json::from_slice(
        &std::fs::read(common::state(&p).join("machines/web/state.json")).unwrap(),
    )
    .unwrap();
    let name = st["id"]
        .as_str()
        .unwrap()
        .trim_start_matches("lxc:")
        .to_owned();
    let config = Path::new("/run/envup-lxc")
        .join(&name)
        .join(&name)
        .join("config");
    let planted = v.path().join("hook-ran");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "lxc.hook.pre-start = /bin/sh -c 'touch {}'\nlxc.mount.entry = {} mnt none bind,create=dir 0 0\n",
        planted.display(),
        v.path().display()
    ));
    std::fs::write(&config, text).unwrap();
    in_jail_home(&p, &["up"]).status(0);
    let mnt = common::exec_in(tiny_home().path(), &p, "web", "ls /mnt; true");
    // The `lower` link (the box's rootfs under the machine's own layer)
    // edited to name a host directory: not followed (the lower layer is
    // the store's rootfs of the machine's box).
    in_jail_home(&p, &["halt"]).status(0);
    let lower = dir.join("lower");
    std::fs::remove_file(&lower).unwrap();
    std::os::unix::fs::symlink(v.path(), &lower).unwrap();
    in_jail_home(&p, &["up"]).status(0);
    let root_seen = common::exec_in(tiny_home().path(), &p, "web", "ls /; true");
    let edited = check(
        !root_seen.contains("x.part") && root_seen.contains("etc"),
        format!("the machine's root is not the box's: {root_seen}"),
    );
    destroy_leaves_nothing(&p)?;
    shared?;
    edited?;
    check(
        !planted.exists(),
        "a hook from the edited config ran on the host",
    )?;
    check(
        !mnt.contains("x.part"),
        format!("a host directory is shared: {mnt}"),
    )?;
    // A box whose /srv climbs out: refused, nothing made on the host.
    let up = "../".repeat(30);
    let host_tmp = v.path().parent().unwrap().display().to_string();
    let link = format!("{up}{}", host_tmp.trim_start_matches('/'));
    let rootfs = tiny_rootfs_with(|_, _| {}, &[("srv", tar::EntryType::Symlink, &link)]);
    let p = envfile(&machine("evil-lxc"));
    p.write("data/hello", "shared\n");
    add_box(&p, "evil-lxc", &rootfs);
    let out = in_jail_home(&p, &["up"]);
    let seen = common::exec_in(tiny_home().path(), &p, "web", "cat /srv/app/hello");
    in_jail_home(&p, &["destroy", "--force"]).status(0);
    in_jail_home(&p, &["-q", "box", "remove", "evil-lxc", "--force"]).status(0);
    check(out.code() == 0, format!("up: {}", out.stderr()))?;
    check(
        seen == "shared\n",
        format!("the share through the box's link: {seen}"),
    )?;
    check(
        !Path::new(&host_tmp).join("app").exists(),
        "a share target was made on the host",
    )?;
    v.untouched()
}

/// A damaged state.json: `destroy --force` still ends the running jail and
/// removes what envup made for it.
fn damaged_state_still_destroys() -> Result<(), Failed> {
    let p = envfile("[machines.web]\nbox = \"tiny\"\nbackend = \"jail\"\nmemory = \"128MiB\"\n");
    in_jail_home(&p, &["up"]).status(0);
    let ids = common::jail_ids(&p);
    std::fs::write(
        common::state(&p).join("machines/web/state.json"),
        "{ this is not json",
    )
    .unwrap();
    let out = in_jail_home(&p, &["destroy", "--force"]);
    check(
        out.code() == 0 && out.stderr().contains("damaged"),
        format!("destroy: exit {} {}", out.code(), out.stderr()),
    )?;
    common::nothing_left(&p, &ids)
}

/// An emptied host index (`machines.json`) is made again from the
/// projects' states: `global-status`, `up` and `destroy -f` work, and
/// the machine's going is recorded in the new index.
fn damaged_index_is_made_again() -> Result<(), Failed> {
    let p = envfile("[machines.web]\nbox = \"tiny\"\nbackend = \"jail\"\nmemory = \"128MiB\"\n");
    in_jail_home(&p, &["up"]).status(0);
    let ids = common::jail_ids(&p);
    let index = tiny_home().path().join("machines.json");
    std::fs::write(&index, "").unwrap();
    let listed = |out: &common::Done| {
        out.stdout()
            .lines()
            .any(|l| l.contains(&*p.path().to_string_lossy()) && l.contains("web"))
    };
    let global = in_jail_home(&p, &["global-status"]);
    check(
        global.code() == 0 && listed(&global),
        format!("global-status: {} {}", global.stdout(), global.stderr()),
    )?;
    let up = in_jail_home(&p, &["up"]);
    check(up.code() == 0, format!("up: {}", up.stderr()))?;
    let out = in_jail_home(&p, &["destroy", "--force"]);
    check(out.code() == 0, format!("destroy: {}", out.stderr()))?;
    let global = in_jail_home(&p, &["global-status"]);
    check(
        global.code() == 0 && !listed(&global),
        format!("global-status after destroy: {}", global.stdout()),
    )?;
    common::nothing_left(&p, &ids)
}

/// `ssh-config` in a project whose path has a space works with `ssh -F`;
/// a state whose user carries an SSH option is refused, not written.
fn ssh_config_is_quoted_and_checked() -> Result<(), Failed> {
    let outer = tempfile::tempdir().unwrap();
    let dir = outer.path().join("my proj");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(
        dir.join("Envfile"),
        "[machines.web]\nbox = \"tiny\"\nbackend = \"jail\"\nmemory = \"128MiB\"\n",
    )
    .unwrap();
    let p = Project::new();
    let run = |args: &[&str]| {
        p.cmd(args)
            .cwd(&dir)
            .env("ENVUP_HOME", tiny_home().path().to_str().unwrap())
            .out()
    };
    run(&["up"]).status(0);
    let cfg = run(&["ssh-config"]).status(0).stdout();
    let cfg_path = outer.path().join("ssh config");
    std::fs::write(&cfg_path, &cfg).unwrap();
    let o = std::process::Command::new("ssh")
        .arg("-F")
        .arg(&cfg_path)
        .args(["-o", "BatchMode=yes", "web", "echo", "reached"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let reached = String::from_utf8_lossy(&o.stdout).contains("reached");
    let state = envup::state::ProjectState::of(tiny_home().path(), &dir)
        .machine_dir("web")
        .join("state.json");
    let text = std::fs::read_to_string(&state).unwrap();
    std::fs::write(
        &state,
        text.replace(
            "\"user\": \"root\"",
            "\"user\": \"root\\n  ProxyCommand touch /tmp/envup-pwned\"",
        ),
    )
    .unwrap();
    let out = run(&["ssh-config"]);
    let injected = refused(&out, 1, &["not a user name"]);
    run(&["destroy", "--force"]).status(0);
    check(
        reached,
        format!(
            "ssh -F with a quoted path failed: {}\n{cfg}",
            String::from_utf8_lossy(&o.stderr)
        ),
    )?;
    injected?;
    check(!Path::new("/tmp/envup-pwned").exists(), "an SSH option ran")
}

type TestFn = fn() -> Result<(), Failed>;

fn main() {
    let args = Arguments::from_args();
    let plain: Vec<(&str, TestFn)> = vec![
        ("lock_digest_is_a_path", lock_digest_is_a_path),
        ("hostile_catalogs", hostile_catalogs),
        ("oversized_catalog", oversized_catalog),
        ("stalled_download", stalled_download),
        ("trickling_download", trickling_download),
        ("unbounded_downloads", unbounded_downloads),
        ("no_empty_part_files", no_empty_part_files),
        ("hostile_box_names_and_users", hostile_box_names_and_users),
        ("box_bomb", box_bomb),
        ("store_is_private", store_is_private),
        ("envfile_bounds", envfile_bounds),
        ("template_error_is_bounded", template_error_is_bounded),
        (
            "file_provisioner_special_files",
            file_provisioner_special_files,
        ),
        ("share_guest_dotdot", share_guest_dotdot),
        ("init_through_symlink", init_through_symlink),
        ("state_points_elsewhere", state_points_elsewhere),
    ];
    let jail: Vec<(&str, TestFn)> = vec![
        ("passwd_home_escapes", passwd_home_escapes),
        ("share_through_box_symlink", share_through_box_symlink),
        (
            "root_in_the_jail_plants_symlinks",
            root_in_the_jail_plants_symlinks,
        ),
        ("damaged_state_still_destroys", damaged_state_still_destroys),
        ("damaged_index_is_made_again", damaged_index_is_made_again),
        ("edited_state_grants_nothing", edited_state_grants_nothing),
        ("lxc_shares_and_config", lxc_shares_and_config),
        ("machine_output_is_escaped", machine_output_is_escaped),
        (
            "files_made_inside_are_the_machines",
            files_made_inside_are_the_machines,
        ),
        (
            "state_moves_out_of_the_project",
            state_moves_out_of_the_project,
        ),
        (
            "ssh_config_is_quoted_and_checked",
            ssh_config_is_quoted_and_checked,
        ),
    ];
    let mut trials: Vec<Trial> = Vec::new();
    for backend in ["jail", "lxc", "docker", "podman", "qemu"] {
        let why = match backend {
            "jail" => common::jails_unavailable(),
            "lxc" => common::jails_unavailable()
                .or_else(|| common::host_lacks("lxc-start").then(|| "lxc-start is missing".into())),
            "qemu" => common::qemu::unavailable(),
            engine => common::engine_unavailable(engine),
        };
        let name = format!("shares_hold_on_{backend}");
        if let Some(why) = &why {
            eprintln!("skipping {name}: {why}");
        }
        trials.push(
            Trial::test(name, move || shares_hold(backend))
                .with_ignored_flag(why.is_some())
                .with_kind(why.unwrap_or_default()),
        );
    }
    let skip = common::jails_unavailable();
    if let Some(why) = &skip {
        eprintln!("skipping the hostile cases that need a jail: {why}");
    }
    trials.extend(plain.into_iter().map(|(name, f)| Trial::test(name, f)));
    let root = nix::unistd::geteuid().is_root();
    if !root {
        eprintln!("skipping disk_space_is_checked: it mounts a tmpfs, which needs root");
    }
    trials
        .push(Trial::test("disk_space_is_checked", disk_space_is_checked).with_ignored_flag(!root));
    for (name, f) in jail {
        // Beyond jails, two cases need a program of their own.
        let why = skip.clone().or_else(|| {
            let needs = match name {
                "lxc_shares_and_config" => "lxc-start",
                "ssh_config_is_quoted_and_checked" => "ssh",
                _ => return None,
            };
            common::host_lacks(needs).then(|| format!("{needs} is missing"))
        });
        if let (Some(why), None) = (&why, &skip) {
            eprintln!("skipping {name}: {why}");
        }
        let t = Trial::test(name, f);
        trials.push(match why {
            Some(why) => t.with_ignored_flag(true).with_kind(why),
            None => t,
        });
    }
    libtest_mimic::run(&args, trials).exit();
}
