//! Snapshots of a machine whose root is an overlay (a jail, an LXC
//! container): copies of the machine's own layer, `DIR/upper`, kept in
//! `DIR/snapshots/NAME`. The box's rootfs below never changes, so the
//! layer is the whole difference. A running machine is frozen while its
//! layer is copied, so the copy is consistent; a restore needs the machine
//! stopped, and puts the copy in place with one atomic rename.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::backend::{BackendError, io_err, run_tool};
use crate::userns::remove_all;

fn snapshot_dir(dir: &Path, name: &str) -> PathBuf {
    dir.join("snapshots").join(name)
}

/// Where a copy is made before it is complete (snapshot names never start
/// with a dot, so this cannot be one).
fn partial(dir: &Path, name: &str) -> PathBuf {
    dir.join("snapshots").join(format!(".{name}.part"))
}

/// `cp -a`: copies with owners, modes, links, devices and xattrs as they
/// are (rootless, in the user namespace that can give those owners).
fn copy_tree(from: &Path, to: &Path) -> Result<(), BackendError> {
    let copied = if crate::userns::rootless() {
        crate::userns::run("copy", &[from.as_os_str(), to.as_os_str()])
            .map_err(io_err("copy", from))
    } else {
        run_tool(
            Command::new("cp").arg("-a").arg(from).arg(to),
            "apt-get install coreutils",
        )
        .map(drop)
    };
    if copied.is_err() {
        let _ = remove_all(to);
    }
    copied
}

/// The file in the machine's directory that says `save` froze the machine:
/// made and locked before the freeze, removed after the thaw. Found
/// unlocked, it is what a killed `save` left, and [`recover`] thaws.
const FROZEN: &str = ".frozen";

/// Thaw a machine that a `save` cut short left frozen (`thaw` does it),
/// if one did; a `save` at work is left alone.
pub(crate) fn recover(
    dir: &Path,
    thaw: impl FnOnce() -> Result<(), BackendError>,
) -> Result<(), BackendError> {
    let marker = dir.join(FROZEN);
    let Ok(f) = std::fs::File::open(&marker) else {
        return Ok(());
    };
    if f.try_lock().is_err() {
        return Ok(());
    }
    thaw()?;
    std::fs::remove_file(&marker).map_err(io_err("remove", &marker))
}

/// Copy the machine's layer to snapshot `name`; `freeze(true)` before and
/// `freeze(false)` after when the machine is running.
pub(crate) fn save(
    dir: &Path,
    name: &str,
    running: bool,
    freeze: impl Fn(bool) -> Result<(), BackendError>,
) -> Result<(), BackendError> {
    let target = snapshot_dir(dir, name);
    let snapshots = dir.join("snapshots");
    std::fs::create_dir_all(&snapshots).map_err(io_err("make", snapshots))?;
    let tmp = partial(dir, name);
    let _ = remove_all(&tmp);
    let mut marker = None;
    if running {
        let path = dir.join(FROZEN);
        let f = std::fs::File::create(&path).map_err(io_err("create", &path))?;
        f.lock().map_err(io_err("lock", &path))?;
        marker = Some((f, path));
        freeze(true)?;
        crate::fault::point("snapshot:frozen");
    }
    let copied = copy_tree(&dir.join("upper"), &tmp);
    if let Some((_lock, path)) = marker {
        freeze(false)?;
        std::fs::remove_file(&path).map_err(io_err("remove", &path))?;
    }
    copied?;
    std::fs::rename(&tmp, &target).map_err(io_err("rename to its place", tmp))
}

/// Put snapshot `name` in place of the machine's layer. The machine must
/// be stopped; its current layer is gone afterwards.
///
/// The copy is made beside the layer, then the two trade places in one
/// atomic rename (`RENAME_EXCHANGE`): a kill at any instant leaves `upper`
/// whole, the old layer or the new, and what is beside it is only ever a
/// copy to throw away ([`recover_layer`] does, at the next start or
/// restore).
pub(crate) fn restore(dir: &Path, name: &str) -> Result<(), BackendError> {
    let snap = snapshot_dir(dir, name);
    if !snap.is_dir() {
        return Err(BackendError::NoSnapshot(name.to_owned()));
    }
    recover_layer(dir)?;
    let upper = dir.join("upper");
    let fresh = dir.join(RESTORING);
    copy_tree(&snap, &fresh)?;
    crate::fault::point("snapshot:copied");
    nix::fcntl::renameat2(
        nix::fcntl::AT_FDCWD,
        &fresh,
        nix::fcntl::AT_FDCWD,
        &upper,
        nix::fcntl::RenameFlags::RENAME_EXCHANGE,
    )
    .map_err(|e| io_err("swap into place", &fresh)(e.into()))?;
    crate::fault::point("snapshot:swapped");
    remove_all(&fresh).map_err(io_err("remove", &fresh))
}

/// Where a restore puts the snapshot's copy, and where the layer it
/// replaced is left until it is removed.
const RESTORING: &str = "upper.restoring";
/// Where an earlier envup's restore moved the layer aside.
const MOVED_ASIDE: &str = "upper.old";

/// Make the machine's layer whole after a restore that was cut short:
/// an earlier envup's restore killed between its two renames left no
/// `upper` and the layer in `upper.old`, which is put back; a copy left
/// beside the layer (half a snapshot's, or the layer a restore replaced)
/// is removed. The only copy of the machine's files is never removed.
pub(crate) fn recover_layer(dir: &Path) -> Result<(), BackendError> {
    let upper = dir.join("upper");
    let aside = dir.join(MOVED_ASIDE);
    if std::fs::symlink_metadata(&upper).is_err() && aside.is_dir() {
        std::fs::rename(&aside, &upper).map_err(io_err("put back", &aside))?;
    }
    for left in [aside, dir.join(RESTORING)] {
        if std::fs::symlink_metadata(&left).is_ok() {
            remove_all(&left).map_err(io_err("remove", &left))?;
        }
    }
    Ok(())
}

/// Whether snapshot `name` exists.
pub(crate) fn exists(dir: &Path, name: &str) -> bool {
    snapshot_dir(dir, name).is_dir()
}

pub(crate) fn list(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("snapshots"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

pub(crate) fn delete(dir: &Path, name: &str) -> Result<(), BackendError> {
    let snap = snapshot_dir(dir, name);
    if !snap.is_dir() {
        return Err(BackendError::NoSnapshot(name.to_owned()));
    }
    remove_all(&snap).map_err(io_err("remove", snap))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_restore_list_delete() {
        let d = tempfile::tempdir().unwrap();
        let upper = d.path().join("upper");
        std::fs::create_dir_all(&upper).unwrap();
        std::fs::write(upper.join("f"), "one").unwrap();
        save(d.path(), "v1.2", false, |_| unreachable!("not running")).unwrap();
        std::fs::write(upper.join("f"), "two").unwrap();
        std::fs::write(upper.join("g"), "new").unwrap();
        assert_eq!(list(d.path()), ["v1.2"]);
        assert!(exists(d.path(), "v1.2"));
        restore(d.path(), "v1.2").unwrap();
        assert_eq!(std::fs::read_to_string(upper.join("f")).unwrap(), "one");
        assert!(!upper.join("g").exists());
        assert!(restore(d.path(), "nope").is_err());
        delete(d.path(), "v1.2").unwrap();
        assert!(list(d.path()).is_empty());
    }

    #[test]
    fn a_restore_cut_short_leaves_the_layer_whole() {
        let d = tempfile::tempdir().unwrap();
        let upper = d.path().join("upper");
        // An earlier envup killed between its two renames: no layer, the
        // machine's files moved aside, a whole copy of the snapshot beside.
        std::fs::create_dir_all(d.path().join(MOVED_ASIDE)).unwrap();
        std::fs::write(d.path().join(MOVED_ASIDE).join("f"), "mine").unwrap();
        std::fs::create_dir_all(d.path().join(RESTORING)).unwrap();
        recover_layer(d.path()).unwrap();
        assert_eq!(std::fs::read_to_string(upper.join("f")).unwrap(), "mine");
        assert!(!d.path().join(MOVED_ASIDE).exists());
        assert!(!d.path().join(RESTORING).exists());
        // A leftover beside a whole layer goes; the layer stays.
        std::fs::create_dir_all(d.path().join(MOVED_ASIDE)).unwrap();
        recover_layer(d.path()).unwrap();
        assert_eq!(std::fs::read_to_string(upper.join("f")).unwrap(), "mine");
        // And a restore after it works.
        save(d.path(), "s", false, |_| unreachable!("not running")).unwrap();
        std::fs::write(upper.join("f"), "changed").unwrap();
        restore(d.path(), "s").unwrap();
        assert_eq!(std::fs::read_to_string(upper.join("f")).unwrap(), "mine");
        assert!(!d.path().join(RESTORING).exists());
    }

    #[test]
    fn a_running_machine_is_frozen_while_copied() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("upper")).unwrap();
        let calls = std::cell::RefCell::new(Vec::new());
        save(d.path(), "s", true, |f| {
            calls.borrow_mut().push(f);
            Ok(())
        })
        .unwrap();
        assert_eq!(*calls.borrow(), [true, false]);
    }
}
