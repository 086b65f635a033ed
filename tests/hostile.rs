//! Hostile input, tried as an attacker would: boxes, catalogs, HTTP
//! servers, `Envfile.lock`, envup's own state files, templates and root
//! inside a machine. Each case checks three things: a victim directory
//! outside the project and the store is untouched, nothing is left
//! behind, and the error names the input at fault.
//!
//! The cases that bring a jail up are ignored, with the reason, where
//! jails cannot run. Add a case here for every new way in.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::boxes::{RawBox, make_box, manifest_for, rootfs_bytes};
use common::http::{Mode, Server};
use common::{Project, check};
use libtest_mimic::{Arguments, Failed, Trial};

/// A directory outside the project and the store, with a file in it, and
/// a fingerprint of everything below it.
struct Victim {
    dir: tempfile::TempDir,
    before: BTreeMap<PathBuf, Vec<u8>>,
}

fn fingerprint(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            let content = if md.is_dir() {
                todo.push(p.clone());
                b"<dir>".to_vec()
            } else if md.is_file() {
                std::fs::read(&p).unwrap()
            } else {
                b"<other>".to_vec()
            };
            out.insert(p, content);
        }
    }
    out
}

impl Victim {
    fn new() -> Victim {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x.part"), "the victim's own bytes").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let before = fingerprint(dir.path());
        Victim { dir, before }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn untouched(&self) -> Result<(), Failed> {
        let after = fingerprint(self.path());
        check(
            after == self.before,
            format!(
                "the victim directory changed: {:?}",
                after.keys().collect::<Vec<_>>()
            ),
        )
    }
}

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
    // The project's state too, even when an older envup made it 0755.
    let p = envfile("[machines.web]\nbox = \"tiny\"\nbackend = \"container\"\n");
    std::fs::create_dir(p.path().join(".envup")).unwrap();
    std::fs::set_permissions(
        p.path().join(".envup"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let _ = p.cmd(&["up"]).env("PATH", "/nonexistent").out();
    let mode = std::fs::metadata(p.path().join(".envup"))
        .unwrap()
        .permissions()
        .mode();
    check(mode & 0o077 == 0, format!(".envup is {:o}", mode & 0o777))
}

// ---- the Envfile's own bounds ----

fn validate(text: &str) -> common::Done {
    envfile(text).cmd(&["validate"]).out()
}

const M: &str = "[machines.web]\nbox = \"tiny\"\nbackend = \"jail\"\n";

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

/// `init` does not append to whatever a symlinked .gitignore points at.
fn init_through_symlink() -> Result<(), Failed> {
    let v = Victim::new();
    let p = Project::new();
    std::os::unix::fs::symlink(v.path().join("x.part"), p.path().join(".gitignore")).unwrap();
    let out = p.cmd(&["init"]).out();
    check(out.code() == 0, format!("init failed: {}", out.stderr()))?;
    check(
        out.stderr().contains("symlink"),
        format!("init did not say why: {}", out.stderr()),
    )?;
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
    std::fs::write(
        &docker,
        format!("#!/bin/sh\necho \"$@\" >> {}\nexit 0\n", log.display()),
    )
    .unwrap();
    std::fs::set_permissions(&docker, std::fs::Permissions::from_mode(0o755)).unwrap();
    let p = envfile(
        "[machines.web]\nbox = \"tiny\"\nbackend = \"container\"\n\
         [machines.jl]\nbox = \"tiny\"\nbackend = \"jail\"\n",
    );
    let project = envup::state::ProjectState::new(p.path().join(".envup"));
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
    let dir = |m: &str| p.path().join(".envup/machines").join(m);
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
        !p.path().join(".envup/machines/web").exists(),
        "the machine's own files are left",
    )?;
    let calls = std::fs::read_to_string(&log).unwrap_or_default();
    check(
        !calls.contains("rm"),
        format!("the engine was told to remove: {calls}"),
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
    common::exec_in(
        tiny_home().path(),
        &p,
        "web",
        &format!(
            "umount /mnt/app; rm -rf /mnt && ln -s {0} /mnt && \
             umount -l /dev/pts /dev/shm /dev; rm -rf /dev && ln -s {0} /dev",
            v.path().display()
        ),
    );
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

/// A jail.json edited between two starts to share a host directory into
/// the jail: the jail starts with the Envfile's shares, not the file's.
fn edited_state_grants_nothing() -> Result<(), Failed> {
    let v = Victim::new();
    let p = envfile("[machines.web]\nbox = \"tiny\"\nbackend = \"jail\"\nmemory = \"128MiB\"\n");
    in_jail_home(&p, &["up"]).status(0);
    in_jail_home(&p, &["halt"]).status(0);
    let cfg_path = p.path().join(".envup/machines/web/jail/jail.json");
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
    let ids_path = p.path().join(".envup/machines/web/jail/ids.json");
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
    let dir = p.path().join(".envup/machines/web/lxc");
    // LXC's own files for the container, named in the machine's state.
    let st: serde_json::Value = serde_json::from_slice(
        &std::fs::read(p.path().join(".envup/machines/web/state.json")).unwrap(),
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
    // edited to name a host directory: refused, by name.
    in_jail_home(&p, &["halt"]).status(0);
    let lower = dir.join("lower");
    std::fs::remove_file(&lower).unwrap();
    std::os::unix::fs::symlink(v.path(), &lower).unwrap();
    let edited = refused(
        &in_jail_home(&p, &["up"]),
        1,
        &["lxc/lower", "damaged or was edited"],
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
        p.path().join(".envup/machines/web/state.json"),
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
    let state = dir.join(".envup/machines/web/state.json");
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
        ("unbounded_downloads", unbounded_downloads),
        ("no_empty_part_files", no_empty_part_files),
        ("hostile_box_names_and_users", hostile_box_names_and_users),
        ("box_bomb", box_bomb),
        ("store_is_private", store_is_private),
        ("envfile_bounds", envfile_bounds),
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
        ("edited_state_grants_nothing", edited_state_grants_nothing),
        ("lxc_shares_and_config", lxc_shares_and_config),
        (
            "ssh_config_is_quoted_and_checked",
            ssh_config_is_quoted_and_checked,
        ),
    ];
    let skip = common::jails_unavailable();
    if let Some(why) = &skip {
        eprintln!("skipping the hostile cases that need a jail: {why}");
    }
    let mut trials: Vec<Trial> = plain
        .into_iter()
        .map(|(name, f)| Trial::test(name, f))
        .collect();
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
