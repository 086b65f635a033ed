//! The content hash that decides whether a `run = "once"` provisioner runs
//! again.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::envfile::config::{ProvisionKind, Provisioner};

/// A hash of everything that makes a provisioner do what it does: its kind,
/// script text or bytes, arguments, environment, privilege, destination, and
/// for uploads every file's relative path, mode and bytes.
pub fn content_hash(p: &Provisioner) -> io::Result<String> {
    let mut h = Sha256::new();
    let mut field = |tag: &str, bytes: &[u8]| {
        h.update(tag.as_bytes());
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    field("kind", p.kind.word().as_bytes());
    field("privileged", &[u8::from(p.privileged)]);
    field("template", &[u8::from(p.template)]);
    for (k, v) in &p.env {
        field("env", format!("{k}={v}").as_bytes());
    }
    match &p.kind {
        ProvisionKind::Shell { inline, args } => {
            field("inline", inline.as_bytes());
            args.iter().for_each(|a| field("arg", a.as_bytes()));
        }
        ProvisionKind::Script { path, args } => {
            field("script", &std::fs::read(path)?);
            args.iter().for_each(|a| field("arg", a.as_bytes()));
        }
        ProvisionKind::File { src, to } => {
            field("to", to.as_bytes());
            hash_tree(src, Path::new(""), &mut field)?;
        }
    }
    let digest = h.finalize();
    Ok(digest.iter().map(|b| format!("{b:02x}")).collect())
}

fn hash_tree(path: &Path, rel: &Path, field: &mut dyn FnMut(&str, &[u8])) -> io::Result<()> {
    let md = std::fs::symlink_metadata(path)?;
    field("path", rel.as_os_str().as_encoded_bytes());
    field("mode", &md.permissions().mode().to_le_bytes());
    if md.file_type().is_symlink() {
        field(
            "link",
            std::fs::read_link(path)?.as_os_str().as_encoded_bytes(),
        );
    } else if md.is_dir() {
        let mut names: Vec<_> = std::fs::read_dir(path)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        names.sort();
        for name in names {
            hash_tree(&path.join(&name), &rel.join(&name), field)?;
        }
    } else if md.is_file() {
        field("bytes", &std::fs::read(path)?);
    } else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is not a regular file, a directory or a symlink",
                path.display()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envfile::config::RunPolicy;

    fn prov(kind: ProvisionKind) -> Provisioner {
        Provisioner {
            name: "p".into(),
            kind,
            run: RunPolicy::Once,
            env: Default::default(),
            privileged: true,
            template: false,
        }
    }

    #[test]
    fn one_byte_changes_the_hash() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("s.sh");
        std::fs::write(&script, "echo a\n").unwrap();
        let p = prov(ProvisionKind::Script {
            path: script.clone(),
            args: vec![],
        });
        let a = content_hash(&p).unwrap();
        assert_eq!(a, content_hash(&p).unwrap());
        std::fs::write(&script, "echo b\n").unwrap();
        assert_ne!(a, content_hash(&p).unwrap());
    }

    #[test]
    fn directory_modes_count() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("conf");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join("x"), "1").unwrap();
        let p = prov(ProvisionKind::File {
            src: sub.clone(),
            to: "/etc/conf".into(),
        });
        let a = content_hash(&p).unwrap();
        std::fs::set_permissions(sub.join("x"), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_ne!(a, content_hash(&p).unwrap());
    }
}
