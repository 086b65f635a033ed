//! The host ids a machine's user namespace maps to: a block of 65536 uids
//! and gids per machine, so root in the machine is an unprivileged host
//! uid and no two machines share ids.
//!
//! Blocks come from the range `/etc/subuid` and `/etc/subgid` give the user
//! running envup, or else from the top of the range systemd sets aside for
//! container ids ([`DEFAULT_POOL`]). A machine claims block N with a file
//! `N` in a host-wide directory naming the machine's directory; a claim
//! whose machine is gone (its directory no longer records that block) is
//! taken again. The machine records its block in `ids.json` beside its
//! layer, with whether its own layer's files are already shifted into it.

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backend::{BackendError, io_err};

/// Ids per machine: uid 0–65535 in the machine.
pub const BLOCK: u32 = 65536;
/// Without a subuid entry: the top of systemd's range for container ids
/// (524288–1879048191), above the ranges shadow's `useradd` hands to users
/// (100000–600100000 by default), so no user's rootless containers share
/// ids with a machine. `scripts/install-deps` reserves it for root.
pub const DEFAULT_POOL: Pool = Pool {
    uid: 1_073_741_824,
    gid: 1_073_741_824,
    count: 1_879_048_192 - 1_073_741_824,
};

/// Where claims are kept when envup runs as root.
pub const CLAIMS_DIR: &str = "/var/lib/envup/ids";

/// What can go wrong with a machine's ids.
#[derive(Debug, thiserror::Error)]
pub enum IdError {
    #[error("every block of {BLOCK} ids in {0} is claimed by a machine")]
    Exhausted(String),
    #[error(
        "{} names ids that are not this machine's block (uid {uid}, gid {gid}): \
         it is damaged or was edited",
        .path.display()
    )]
    NotOurs { path: PathBuf, uid: u32, gid: u32 },
    #[error(
        "/etc/subuid and /etc/subgid reserve no range of {BLOCK} ids for this user, which a \
         rootless machine's users need (as root: usermod --add-subuids N-M --add-subgids N-M USER)"
    )]
    NoSubIds,
}

impl crate::backend::OwnError for IdError {}

/// The ids a machine's root and users are on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMap {
    /// The host uid of the machine's uid 0.
    pub uid: u32,
    /// The host gid of the machine's gid 0.
    pub gid: u32,
    /// Whether the machine's own layer is owned by these ids yet.
    #[serde(default)]
    pub shifted: bool,
}

impl IdMap {
    /// `uid_map` / `gid_map` lines for a user namespace.
    pub fn uid_line(&self) -> String {
        format!("0 {} {BLOCK}\n", self.uid)
    }
    pub fn gid_line(&self) -> String {
        format!("0 {} {BLOCK}\n", self.gid)
    }

    /// The id map a share of a directory owned by `owner` (uid, gid) is
    /// seen through by the machine whose login user is `login`: that user
    /// reads and writes the directory's files as their owner; every other
    /// id of the machine, root's among them, is one of the machine's own
    /// host ids, as on its own files. So nothing the machine writes through
    /// a share belongs to host root (a directory of root's stays root's:
    /// the machine sees its files as nobody's). `None`: no mapping is
    /// needed (a plain bind mount shows the same).
    pub fn share_map(&self, owner: (u32, u32), login: (u32, u32)) -> Option<(String, String)> {
        let lines = |base: u32, owner: u32, login: u32| -> Option<String> {
            // Root's directory, or one of the machine's own: as they are.
            if owner == 0 || owner.wrapping_sub(base) < BLOCK || login >= BLOCK {
                return None;
            }
            let mut text = format!("{owner} {} 1\n", base + login);
            if login > 0 {
                text.push_str(&format!("{base} {base} {login}\n"));
            }
            if login + 1 < BLOCK {
                let from = base + login + 1;
                text.push_str(&format!("{from} {from} {}\n", BLOCK - login - 1));
            }
            Some(text)
        };
        let identity = |base: u32| format!("{base} {base} {BLOCK}\n");
        match (
            lines(self.uid, owner.0, login.0),
            lines(self.gid, owner.1, login.1),
        ) {
            (None, None) => None,
            (u, g) => Some((
                u.unwrap_or_else(|| identity(self.uid)),
                g.unwrap_or_else(|| identity(self.gid)),
            )),
        }
    }
}

/// The host's range of ids for machines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    pub uid: u32,
    pub gid: u32,
    pub count: u32,
}

impl Pool {
    /// The range for the user running envup: `/etc/subuid` and
    /// `/etc/subgid` (their first entry for the user's name or uid), else
    /// [`DEFAULT_POOL`].
    pub fn of_host() -> Pool {
        Pool::reserved().unwrap_or(DEFAULT_POOL)
    }

    /// The range `/etc/subuid` and `/etc/subgid` reserve for the user
    /// running envup, if they reserve one of at least a block.
    pub fn reserved() -> Option<Pool> {
        let uid = nix::unistd::geteuid();
        let name = nix::unistd::User::from_uid(uid)
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_default();
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        match (
            sub_range(&read("/etc/subuid"), &name, uid.as_raw()),
            sub_range(&read("/etc/subgid"), &name, uid.as_raw()),
        ) {
            (Some((u, uc)), Some((g, gc))) if uc.min(gc) >= BLOCK => Some(Pool {
                uid: u,
                gid: g,
                count: uc.min(gc),
            }),
            _ => None,
        }
    }

    fn blocks(&self) -> u32 {
        self.count / BLOCK
    }

    fn block(&self, n: u32) -> IdMap {
        IdMap {
            uid: self.uid + n * BLOCK,
            gid: self.gid + n * BLOCK,
            shifted: false,
        }
    }

    /// The block `ids` is, if it is one of this pool's.
    fn index_of(&self, ids: &IdMap) -> Option<u32> {
        let n = ids.uid.checked_sub(self.uid)? / BLOCK;
        (n < self.blocks() && self.block(n).uid == ids.uid && self.block(n).gid == ids.gid)
            .then_some(n)
    }

    fn describe(&self) -> String {
        format!(
            "uids {}+{} and gids {}+{}",
            self.uid, self.count, self.gid, self.count
        )
    }
}

/// The ids of a rootless machine (envup run by a user other than root):
/// the machine's uid and gid 0 are the user's own, its ids 1–65535 the
/// start of the range `/etc/subuid` and `/etc/subgid` reserve for the
/// user. Every rootless machine of the user shares this map, as rootless
/// Podman's containers do; the kernel lets only the setuid `newuidmap` and
/// `newgidmap` (Debian's `uidmap`) write it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubIds {
    pub uid: u32,
    pub gid: u32,
    pub sub_uid: u32,
    pub sub_gid: u32,
}

/// The ids of a rootless machine other than 0.
const SUB_COUNT: u32 = BLOCK - 1;

impl SubIds {
    /// The running user's map, or why there is none.
    pub fn of_user() -> Result<SubIds, IdError> {
        let pool = Pool::reserved().ok_or(IdError::NoSubIds)?;
        Ok(SubIds {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            sub_uid: pool.uid,
            sub_gid: pool.gid,
        })
    }

    /// Whether the tools that write the map are installed.
    pub fn tools_present() -> bool {
        ["newuidmap", "newgidmap"]
            .iter()
            .all(|t| crate::host::which(t).is_some())
    }

    /// Write the map of the user namespace process `pid` is in.
    pub fn map(&self, pid: i32) -> std::io::Result<()> {
        for (prog, own, sub) in [
            ("newuidmap", self.uid, self.sub_uid),
            ("newgidmap", self.gid, self.sub_gid),
        ] {
            let out = std::process::Command::new(prog)
                .arg(pid.to_string())
                .args(["0", &own.to_string(), "1"])
                .args(["1", &sub.to_string(), &SUB_COUNT.to_string()])
                .stdin(std::process::Stdio::null())
                .output()
                .map_err(|e| std::io::Error::new(e.kind(), format!("cannot run {prog}: {e}")))?;
            if !out.status.success() {
                return Err(std::io::Error::other(format!(
                    "{prog} failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }
        Ok(())
    }

    /// The machine's ids of a file the host sees owned by `uid` and `gid`
    /// (65534, nobody, for an id outside the map).
    pub fn inside(&self, uid: u32, gid: u32) -> (u32, u32) {
        let one = |id: u32, own: u32, sub: u32| {
            if id == own {
                0
            } else if id.wrapping_sub(sub) < SUB_COUNT {
                id - sub + 1
            } else {
                65534
            }
        };
        (
            one(uid, self.uid, self.sub_uid),
            one(gid, self.gid, self.sub_gid),
        )
    }
}

/// The first `name:start:count` line of a subuid file for `name` or `uid`.
fn sub_range(text: &str, name: &str, uid: u32) -> Option<(u32, u32)> {
    text.lines().find_map(|line| {
        let mut f = line.trim().split(':');
        let (who, start, count) = (f.next()?, f.next()?, f.next()?);
        if who != name && who != uid.to_string() {
            return None;
        }
        let (start, count): (u32, u32) = (start.parse().ok()?, count.parse().ok()?);
        // A range that would reach the host's own ids or wrap is no range.
        (start >= BLOCK && start.checked_add(count).is_some()).then_some((start, count))
    })
}

/// A machine's id blocks, claimed in `claims` for the machine directory
/// `dir`, which records its block in `dir/ids.json`.
pub struct Claims {
    dir: PathBuf,
    pool: Pool,
}

impl Claims {
    /// The host's claims directory (root's) and pool.
    pub fn host() -> Claims {
        Claims::new(Path::new(CLAIMS_DIR), Pool::of_host())
    }

    pub fn new(dir: &Path, pool: Pool) -> Claims {
        Claims {
            dir: dir.to_owned(),
            pool,
        }
    }

    /// The ids `machine` has, claiming a free block if it has none; `Ok`
    /// only for a block of the pool that is claimed for `machine`.
    pub fn ids_of(&self, machine: &Path) -> Result<IdMap, BackendError> {
        let file = machine.join("ids.json");
        std::fs::create_dir_all(&self.dir).map_err(io_err("make", &self.dir))?;
        let lock_path = self.dir.join(".lock");
        let lock = std::fs::File::create(&lock_path).map_err(io_err("open", &lock_path))?;
        lock.lock().map_err(io_err("lock", &lock_path))?;
        if let Some(ids) = read_ids(&file) {
            let n = self.pool.index_of(&ids).ok_or_else(|| IdError::NotOurs {
                path: file.clone(),
                uid: ids.uid,
                gid: ids.gid,
            })?;
            match self.holder(n) {
                Some(holder) if holder == machine => return Ok(ids),
                // The claim was lost (the claims were wiped): take it again.
                None => {
                    self.claim(n, machine)?;
                    return Ok(ids);
                }
                Some(_) => {
                    return Err(IdError::NotOurs {
                        path: file,
                        uid: ids.uid,
                        gid: ids.gid,
                    }
                    .into());
                }
            }
        }
        // The record lost (emptied by a full disk or a kill) while the
        // claim stays: the block claimed for this machine, which its layer
        // is owned by (shifted again at the start, which leaves what is).
        if let Some(n) = self.claimed_by(machine) {
            let ids = self.pool.block(n);
            write_ids(&file, &ids)?;
            return Ok(ids);
        }
        for n in 0..self.pool.blocks() {
            if self.holder(n).is_none() {
                let ids = self.pool.block(n);
                // The machine's record first: a claim never names a
                // machine that does not know its block.
                write_ids(&file, &ids)?;
                self.claim(n, machine)?;
                return Ok(ids);
            }
        }
        Err(IdError::Exhausted(self.pool.describe()).into())
    }

    /// Give up `machine`'s block (at destroy, or when it becomes privileged).
    pub fn release(&self, machine: &Path) {
        while let Some(n) = self.claimed_by(machine) {
            if std::fs::remove_file(self.dir.join(n.to_string())).is_err() {
                break;
            }
        }
    }

    /// The block whose claim names `machine`, whatever its record says
    /// (found by the claim, so that a lost record loses no block).
    fn claimed_by(&self, machine: &Path) -> Option<u32> {
        let entries = std::fs::read_dir(&self.dir).ok()?;
        entries.filter_map(Result::ok).find_map(|e| {
            let n: u32 = e.file_name().to_str()?.parse().ok()?;
            let text = std::fs::read(e.path()).ok()?;
            (n < self.pool.blocks() && text == machine.as_os_str().as_bytes()).then_some(n)
        })
    }

    /// Claims that name a directory under `from` name the same directory
    /// under `to` (a project's state moved, `relocate`).
    pub fn rehome(&self, from: &Path, to: &Path) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.filter_map(Result::ok) {
            let Ok(text) = std::fs::read(e.path()) else {
                continue;
            };
            let held = PathBuf::from(std::ffi::OsStr::from_bytes(&text));
            if let Some(now) = crate::relocate::rehomed(&held, from, to) {
                let _ = crate::state::write_atomic(&e.path(), now.as_os_str().as_bytes());
            }
        }
    }

    /// The machine holding block `n`, if its claim is live: its directory
    /// still records that block.
    fn holder(&self, n: u32) -> Option<PathBuf> {
        let text = std::fs::read(self.dir.join(n.to_string())).ok()?;
        let machine = PathBuf::from(std::ffi::OsStr::from_bytes(&text));
        let ids = read_ids(&machine.join("ids.json"))?;
        (self.pool.index_of(&ids) == Some(n)).then_some(machine)
    }

    fn claim(&self, n: u32, machine: &Path) -> Result<(), BackendError> {
        crate::state::write_atomic(
            &self.dir.join(n.to_string()),
            machine.as_os_str().as_bytes(),
        )?;
        Ok(())
    }
}

impl Claims {
    /// Before a start: the machine's own layer `upper` owned by its block
    /// of ids (claimed if it has none), or, `privileged`, by the host's own
    /// ids again (and the block given up). A shift cut short is finished
    /// by the next call.
    pub fn settle(
        &self,
        machine: &Path,
        upper: &Path,
        privileged: bool,
    ) -> Result<Option<IdMap>, BackendError> {
        let file = machine.join("ids.json");
        // A shifted layer is owned by ids of the block the file names: a
        // file edited to name another (free) block is refused before it is
        // claimed.
        if let Some(ids) = read_ids(&file).filter(|i| i.shifted) {
            let md = std::fs::symlink_metadata(upper).map_err(io_err("read", upper))?;
            let inside = |id: u32, base: u32| id.wrapping_sub(base) < BLOCK;
            if !inside(md.uid(), ids.uid) || !inside(md.gid(), ids.gid) {
                return Err(IdError::NotOurs {
                    path: file,
                    uid: ids.uid,
                    gid: ids.gid,
                }
                .into());
            }
        }
        if privileged {
            if read_ids(&file).is_some() {
                let ids = self.ids_of(machine)?;
                shift_tree(upper, (ids.uid, ids.gid), (0, 0))?;
                self.release(machine);
                std::fs::remove_file(&file).map_err(io_err("remove", &file))?;
            }
            return Ok(None);
        }
        let mut ids = self.ids_of(machine)?;
        if !ids.shifted {
            shift_tree(upper, (0, 0), (ids.uid, ids.gid))?;
            ids.shifted = true;
            write_ids(&file, &ids)?;
        }
        Ok(Some(ids))
    }
}

/// After a machine's layer was replaced (a snapshot restored): shift it
/// again at the next start (a shift of what is already shifted leaves it).
pub fn layer_replaced(machine: &Path) -> Result<(), BackendError> {
    let file = machine.join("ids.json");
    match read_ids(&file) {
        Some(ids) if ids.shifted => write_ids(
            &file,
            &IdMap {
                shifted: false,
                ..ids
            },
        ),
        _ => Ok(()),
    }
}

/// The ids a machine directory records, if it records any readable ones.
pub fn read_ids(file: &Path) -> Option<IdMap> {
    serde_json::from_slice(&std::fs::read(file).ok()?).ok()
}

pub fn write_ids(file: &Path, ids: &IdMap) -> Result<(), BackendError> {
    let mut text = serde_json::to_vec(ids).expect("ids serialize");
    text.push(b'\n');
    crate::state::write_atomic(file, &text)?;
    Ok(())
}

/// Move the owners of everything under `top` (not following symlinks)
/// from block `from` to block `to` (0 is the host's own ids): an id inside
/// `from`'s block is moved, any other is left, so running it again after
/// an interruption finishes the job. Setuid and setgid bits, which a
/// change of owner clears, are put back.
pub fn shift_tree(top: &Path, from: (u32, u32), to: (u32, u32)) -> Result<(), BackendError> {
    let shift =
        |id: u32, from: u32, to: u32| (id >= from && id - from < BLOCK).then(|| id - from + to);
    // A file with several links is met more than once: the second time its
    // owner is outside `from` and it is left.
    let mut stack = vec![top.to_owned()];
    while let Some(path) = stack.pop() {
        let md = std::fs::symlink_metadata(&path).map_err(io_err("read", &path))?;
        let (uid, gid) = (shift(md.uid(), from.0, to.0), shift(md.gid(), from.1, to.1));
        if uid.is_some() || gid.is_some() {
            std::os::unix::fs::lchown(&path, uid, gid)
                .map_err(io_err("change the owner of", &path))?;
            let special = md.mode() & 0o6000;
            if special != 0 && md.is_file() {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(
                    &path,
                    std::fs::Permissions::from_mode(md.mode() & 0o7777),
                )
                .map_err(io_err("restore the mode of", &path))?;
            }
        }
        if md.is_dir() {
            for entry in std::fs::read_dir(&path).map_err(io_err("read", &path))? {
                stack.push(entry.map_err(io_err("read", &path))?.path());
            }
        }
    }
    Ok(())
}

/// Write a whole `uid_map` or `gid_map`.
pub fn write_map(path: &Path, line: &str) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .write_all(line.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subuid_lines() {
        let text = "alice:100000:65536\nroot:1000000:1000000000\n";
        assert_eq!(sub_range(text, "root", 0), Some((1_000_000, 1_000_000_000)));
        assert_eq!(sub_range(text, "bob", 1001), None);
        assert_eq!(
            sub_range("1001:200000:65536\n", "bob", 1001),
            Some((200_000, 65536))
        );
        // A range over the host's own ids, or past the end, is refused.
        assert_eq!(sub_range("root:0:65536\n", "root", 0), None);
        assert_eq!(sub_range("root:4294901760:65537\n", "root", 0), None);
    }

    #[test]
    fn claims_give_distinct_blocks_and_refuse_edits() {
        let tmp = tempfile::tempdir().unwrap();
        let claims = Claims::new(&tmp.path().join("ids"), DEFAULT_POOL);
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let ia = claims.ids_of(&a).unwrap();
        let ib = claims.ids_of(&b).unwrap();
        assert_ne!(ia.uid, ib.uid);
        assert_eq!(claims.ids_of(&a).unwrap(), ia);
        // b edited to a's block: refused by name.
        write_ids(&b.join("ids.json"), &ia).unwrap();
        let e = claims.ids_of(&b).unwrap_err().to_string();
        assert!(
            e.contains("b/ids.json") && e.contains("not this machine's"),
            "{e}"
        );
        // An id outside the pool (host root) is refused too.
        write_ids(
            &b.join("ids.json"),
            &IdMap {
                uid: 0,
                gid: 0,
                shifted: true,
            },
        )
        .unwrap();
        let e = claims.ids_of(&b).unwrap_err().to_string();
        assert!(e.contains("not this machine's block"), "{e}");
        // A released block is free again; a machine gone frees its block.
        claims.release(&a);
        std::fs::remove_dir_all(&b).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let c = tmp.path().join("c");
        std::fs::create_dir_all(&c).unwrap();
        assert_eq!(claims.ids_of(&c).unwrap().uid, ia.uid);
        assert_eq!(claims.ids_of(&b).unwrap().uid, ib.uid);
    }

    /// A share of a user's directory maps the machine's login user to that
    /// user and every other id to the machine's own; root's directory, or
    /// one the machine's own ids own, needs no map.
    #[test]
    fn share_maps_never_reach_host_root() {
        let ids = IdMap {
            uid: 1_073_741_824,
            gid: 1_073_741_824,
            shifted: true,
        };
        let (u, g) = ids.share_map((1000, 1000), (1000, 1000)).unwrap();
        assert_eq!(
            u,
            "1000 1073742824 1\n1073741824 1073741824 1000\n1073742825 1073742825 64535\n"
        );
        assert_eq!(u, g);
        // Root logs in: root writes as the directory's owner.
        let (u, _) = ids.share_map((1000, 100), (0, 0)).unwrap();
        assert_eq!(u, "1000 1073741824 1\n1073741825 1073741825 65535\n");
        let (u, _) = ids.share_map((1000, 0), (0, 0)).unwrap();
        assert!(!u.lines().any(|l| l.split(' ').nth(1) == Some("0")));
        assert_eq!(ids.share_map((0, 0), (1000, 1000)), None);
        assert_eq!(ids.share_map((1_073_741_900, 0), (0, 0)), None);
        // No inside id is 0 (host root) in any map.
        let (u, g) = ids.share_map((0, 1000), (1000, 1000)).unwrap();
        for l in u.lines().chain(g.lines()) {
            assert_ne!(l.split(' ').next(), Some("0"), "{l}");
        }
    }

    #[test]
    fn rootless_ids_inside() {
        let ids = SubIds {
            uid: 1000,
            gid: 1001,
            sub_uid: 100_000,
            sub_gid: 200_000,
        };
        assert_eq!(ids.inside(1000, 1001), (0, 0));
        assert_eq!(ids.inside(100_000, 200_000), (1, 1));
        assert_eq!(ids.inside(100_000 + 65534, 200_999), (65535, 1000));
        assert_eq!(ids.inside(100_000 + 65535, 0), (65534, 65534));
        assert_eq!(ids.inside(0, 99_999), (65534, 65534));
    }

    #[test]
    fn shifting_twice_is_shifting_once() {
        let tmp = tempfile::tempdir().unwrap();
        let top = tmp.path().join("upper");
        std::fs::create_dir_all(top.join("etc")).unwrap();
        std::fs::write(top.join("etc/f"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", top.join("link")).unwrap();
        std::os::unix::fs::lchown(top.join("etc/f"), Some(1000), Some(1000)).unwrap();
        let base = (DEFAULT_POOL.uid, DEFAULT_POOL.gid);
        shift_tree(&top, (0, 0), base).unwrap();
        shift_tree(&top, (0, 0), base).unwrap();
        let owner = |p: &str| {
            let md = std::fs::symlink_metadata(top.join(p)).unwrap();
            (md.uid(), md.gid())
        };
        assert_eq!(owner("etc/f"), (base.0 + 1000, base.1 + 1000));
        assert_eq!(owner("link"), base);
        assert_eq!(std::fs::metadata("/etc/passwd").unwrap().uid(), 0);
        shift_tree(&top, base, (0, 0)).unwrap();
        assert_eq!(owner("etc/f"), (1000, 1000));
        assert_eq!(owner(""), (0, 0));
    }
}
