//! Rootless file work: what envup, run by a user other than root, must do
//! to files owned by the ids of its machines' user namespace (a box's
//! rootfs unpacked with its owners, a machine's layer removed or copied,
//! owners given to the files envup writes for a machine). The host lets
//! the user do none of it directly; a short-lived helper, envup itself run
//! as `envup __userns OP ARGS`, does it as root of a user namespace with
//! the machines' map ([`SubIds`]).

use std::ffi::{OsStr, OsString};
use std::io::{BufRead, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::backend::rootfs::ids::SubIds;

/// The hidden first argument that makes envup the helper.
pub const HELPER: &str = "__userns";

/// Whether envup runs rootless (as a user other than root).
pub fn rootless() -> bool {
    !nix::unistd::geteuid().is_root()
}

/// Run `op` with `args` in a helper inside a user namespace mapped as the
/// user's rootless machines are; its error is what the helper said.
pub fn run(op: &str, args: &[&OsStr]) -> std::io::Result<()> {
    let ids = SubIds::of_user().map_err(std::io::Error::other)?;
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .arg(HELPER)
        .arg(op)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    let mut out = std::io::BufReader::new(child.stdout.take().expect("piped"));
    let mapped = out
        .read_line(&mut line)
        .and_then(|_| {
            if line.trim() == "ready" {
                ids.map(child.id() as i32)
            } else {
                Err(std::io::Error::other("it did not start"))
            }
        })
        .and_then(|()| child.stdin.take().expect("piped").write_all(b"go\n"));
    if let Err(e) = mapped {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    let done = child.wait_with_output()?;
    if done.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&done.stderr);
    Err(std::io::Error::other(format!(
        "as root of a user namespace, {op}: {}",
        said.lines().last().unwrap_or("it failed").trim()
    )))
}

/// Remove the tree at `path` (nothing there is fine), through the helper
/// when it holds files the user cannot remove.
pub fn remove_all(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied && rootless() => {
            run("remove", &[path.as_os_str()])
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Give files under `top` (paths relative to it, made by envup) the owners
/// they have inside the machine.
pub fn chown(top: &Path, owners: &[(PathBuf, u32, u32)]) -> std::io::Result<()> {
    if owners.is_empty() {
        return Ok(());
    }
    let mut args: Vec<OsString> = vec![top.into()];
    for (rel, uid, gid) in owners {
        args.push(format!("{uid}:{gid}").into());
        args.push(rel.into());
    }
    let refs: Vec<&OsStr> = args.iter().map(OsString::as_os_str).collect();
    run("chown", &refs)
}

/// The helper's side: enter a user namespace, wait to be mapped, become
/// its root, do the one job. Returns the exit code.
pub fn helper_main(args: &[OsString]) -> u8 {
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER) {
        eprintln!("cannot make a user namespace: {e}");
        return 1;
    }
    println!("ready");
    let _ = std::io::stdout().flush();
    let mut go = String::new();
    if std::io::stdin().lock().read_line(&mut go).is_err() || go.trim() != "go" {
        return 1;
    }
    let root = || -> nix::Result<()> {
        let (uid, gid) = (nix::unistd::Uid::from_raw(0), nix::unistd::Gid::from_raw(0));
        nix::unistd::setresgid(gid, gid, gid)?;
        nix::unistd::setgroups(&[])?;
        nix::unistd::setresuid(uid, uid, uid)
    };
    if let Err(e) = root() {
        eprintln!("cannot become root of the user namespace: {e}");
        return 1;
    }
    match job(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

fn job(args: &[OsString]) -> std::io::Result<()> {
    let bad = || std::io::Error::other("bad arguments");
    let (op, rest) = args.split_first().ok_or_else(bad)?;
    let path = |i: usize| rest.get(i).map(Path::new).ok_or_else(bad);
    match op.as_bytes() {
        b"nothing" => Ok(()),
        b"unpack" => crate::backend::rootfs::unpack_rootfs(path(0)?, path(1)?),
        b"remove" => std::fs::remove_dir_all(path(0)?),
        b"copy" => {
            let st = Command::new("cp")
                .arg("-a")
                .arg(path(0)?)
                .arg(path(1)?)
                .status()?;
            st.success()
                .then_some(())
                .ok_or_else(|| std::io::Error::other(format!("cp -a: {st}")))
        }
        b"chown" => {
            // Each path is resolved inside the layer (a symlink on the way
            // stays in it) and the file itself is not followed.
            let top = crate::contained::Root::open(path(0)?)?;
            for pair in rest[1..].chunks(2) {
                let [owner, rel] = pair else {
                    return Err(bad());
                };
                let (uid, gid): (u32, u32) = owner
                    .to_str()
                    .and_then(|o| o.split_once(':'))
                    .and_then(|(u, g)| Some((u.parse().ok()?, g.parse().ok()?)))
                    .ok_or_else(bad)?;
                let rel = crate::contained::normalize(Path::new(rel));
                let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
                    return Err(bad());
                };
                let dir = top.open_dir(parent)?;
                nix::unistd::fchownat(
                    &dir,
                    name,
                    Some(uid.into()),
                    Some(gid.into()),
                    nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .map_err(|e| {
                    std::io::Error::new(
                        std::io::Error::from(e).kind(),
                        format!("chown {}: {e}", rel.display()),
                    )
                })?;
            }
            Ok(())
        }
        _ => Err(bad()),
    }
}
