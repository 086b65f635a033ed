//! Work in progress in the store: a directory in `tmp/` where a box (or a
//! box's unpacked rootfs) is put together before it is renamed into place.
//! Its maker holds a lock file beside it, `tmp/NAME.alive`, for as long as
//! it lives, so what a killed envup left (the lock free, or never made) is
//! told apart from another envup's work: `box verify` names it as partial,
//! and `box prune` and the next staging remove it.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// How old a staging directory without its lock file must be before it is
/// taken for a leftover (its maker may be between making the two).
const GRACE: Duration = Duration::from_secs(60);

/// A staging directory, removed on drop unless kept.
pub struct Staging {
    dir: Option<PathBuf>,
    lock: PathBuf,
    _held: std::fs::File,
}

impl Staging {
    /// A new staging directory under `store/tmp`, after removing what
    /// killed envups left there.
    pub fn new(store: &Path) -> std::io::Result<Staging> {
        let tmp = store.join("tmp");
        crate::state::ensure_private_dir(store)?;
        crate::state::create_private_dir(&tmp)?;
        let _ = remove_leftovers(store);
        let dir = tempfile::Builder::new()
            .prefix("unpack-")
            .tempdir_in(&tmp)?
            .keep();
        let lock = lock_of(&dir);
        let held =
            std::fs::File::create(&lock).and_then(|f| f.try_lock().map(|()| f).map_err(Into::into));
        match held {
            Ok(f) => Ok(Staging {
                dir: Some(dir),
                lock,
                _held: f,
            }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    pub fn path(&self) -> &Path {
        self.dir
            .as_deref()
            .expect("gone only by rename_to, which takes it")
    }

    /// Rename the directory to `dest`, holding the lock until it is
    /// there; on failure it stays here, and goes on drop.
    pub fn rename_to(&mut self, dest: &Path) -> std::io::Result<()> {
        std::fs::rename(self.path(), dest)?;
        self.dir = None;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Some(d) = self.dir.take() {
            // A rootless user's rootfs holds files only its helper removes.
            let _ = crate::userns::remove_all(&d);
        }
        let _ = std::fs::remove_file(&self.lock);
    }
}

fn lock_of(dir: &Path) -> PathBuf {
    let mut name = dir.as_os_str().to_owned();
    name.push(".alive");
    PathBuf::from(name)
}

/// What killed envups left in `store/tmp`: staging directories whose maker
/// is gone, and lock files without a directory.
pub fn leftovers(store: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(store.join("tmp")) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for e in entries.flatten() {
        let p = e.path();
        let is_lock = p.extension().is_some_and(|x| x == "alive");
        let dead = if is_lock {
            !p.with_extension("").exists() && unlocked(&p)
        } else {
            let lock = lock_of(&p);
            if lock.exists() {
                unlocked(&lock)
            } else {
                e.metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > GRACE)
            }
        };
        if dead {
            found.push(p);
        }
    }
    found.sort();
    found
}

/// Whether nobody holds the lock file `p`.
fn unlocked(p: &Path) -> bool {
    std::fs::File::open(p).is_ok_and(|f| f.try_lock().is_ok())
}

/// Remove [`leftovers`]; how many went.
pub fn remove_leftovers(store: &Path) -> std::io::Result<usize> {
    let found = leftovers(store);
    for p in &found {
        if p.is_dir() {
            crate::userns::remove_all(p)?;
            let _ = std::fs::remove_file(lock_of(p));
        } else {
            match std::fs::remove_file(p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
    }
    Ok(found.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_staging_is_no_leftover_and_a_dead_one_is() {
        let store = tempfile::tempdir().unwrap();
        let live = Staging::new(store.path()).unwrap();
        std::fs::write(live.path().join("f"), b"x").unwrap();
        assert!(leftovers(store.path()).is_empty());
        // What a kill leaves: the directory, its lock file no longer held.
        let dead = Staging::new(store.path()).unwrap();
        let dead_dir = dead.path().to_owned();
        std::mem::forget(dead);
        // (The forgotten file's descriptor still holds the lock: drop it
        // by hand as a dying process would.)
        let lock = lock_of(&dead_dir);
        std::fs::remove_file(&lock).unwrap();
        std::fs::File::create(&lock).unwrap();
        assert_eq!(leftovers(store.path()), vec![dead_dir.clone()]);
        assert_eq!(remove_leftovers(store.path()).unwrap(), 1);
        assert!(!dead_dir.exists() && !lock.exists());
        assert!(live.path().join("f").exists());
        let mut live = live;
        let dest = store.path().join("done");
        live.rename_to(&dest).unwrap();
        drop(live);
        assert!(dest.join("f").exists());
        assert!(
            std::fs::read_dir(store.path().join("tmp"))
                .unwrap()
                .next()
                .is_none()
        );
    }
}
