//! A directory outside the project and the store, which no attack may
//! change.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use libtest_mimic::Failed;

/// A directory outside the project and the store, with a file in it, and
/// a fingerprint of everything below it.
pub struct Victim {
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
    pub fn new() -> Victim {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x.part"), "the victim's own bytes").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let before = fingerprint(dir.path());
        Victim { dir, before }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn untouched(&self) -> Result<(), Failed> {
        let after = fingerprint(self.path());
        super::check(
            after == self.before,
            format!(
                "the victim directory changed: {:?}",
                after.keys().collect::<Vec<_>>()
            ),
        )
    }
}
