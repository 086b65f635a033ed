//! Every machine's own SSH keys: an ed25519 key pair envup logs in with, and
//! an ed25519 host key the machine serves, both made by envup before the
//! machine first boots, so the host key is known before the first connection.

use std::path::{Path, PathBuf};

use ssh_key::{Algorithm, HashAlg, LineEnding, PrivateKey, PublicKey};

use crate::state::{StateError, write_atomic};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot make an SSH key")]
    Generate(#[source] ssh_key::Error),
    #[error("SSH key {} is damaged", .0.display())]
    Damaged(PathBuf, #[source] ssh_key::Error),
    #[error(transparent)]
    Io(#[from] StateError),
}

const CLIENT: &str = "id_ed25519";
const HOST: &str = "ssh_host_ed25519_key";

/// The key files in a machine's state directory.
#[derive(Debug, Clone)]
pub struct MachineKeys {
    dir: PathBuf,
    client: PrivateKey,
    host: PrivateKey,
}

fn load_or_make(path: &Path, comment: &str) -> Result<PrivateKey, KeyError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            PrivateKey::from_openssh(text).map_err(|e| KeyError::Damaged(path.to_owned(), e))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = PrivateKey::random(&mut rand_core::OsRng, Algorithm::Ed25519)
                .map_err(KeyError::Generate)?;
            key.set_comment(comment);
            let pem = key.to_openssh(LineEnding::LF).map_err(KeyError::Generate)?;
            write_atomic(path, pem.as_bytes())?;
            set_private(path)?;
            let public = key.public_key().to_openssh().map_err(KeyError::Generate)?;
            write_atomic(
                &path.with_extension("pub"),
                format!("{public}\n").as_bytes(),
            )?;
            Ok(key)
        }
        Err(e) => Err(StateError::Read(path.to_owned(), e).into()),
    }
}

fn set_private(path: &Path) -> Result<(), StateError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| StateError::Write(path.to_owned(), e))
}

impl MachineKeys {
    /// The machine's keys, made on first use and read back after.
    pub fn ensure(dir: &Path, machine: &str) -> Result<Self, KeyError> {
        let client = load_or_make(&dir.join(CLIENT), &format!("envup@{machine}"))?;
        let host = load_or_make(&dir.join(HOST), &format!("host@{machine}"))?;
        Ok(Self {
            dir: dir.to_owned(),
            client,
            host,
        })
    }

    /// Path of the private key envup logs in with.
    pub fn client_key_path(&self) -> PathBuf {
        self.dir.join(CLIENT)
    }

    /// The line for the machine's `authorized_keys`.
    pub fn authorized_key(&self) -> String {
        self.client
            .public_key()
            .to_openssh()
            .expect("ed25519 public keys encode")
    }

    pub(crate) fn client_private_pem(&self) -> String {
        self.client
            .to_openssh(LineEnding::LF)
            .expect("ed25519 keys encode")
            .to_string()
    }

    /// The host key in OpenSSH's private key format, for the machine's sshd.
    pub fn host_private_pem(&self) -> String {
        self.host
            .to_openssh(LineEnding::LF)
            .expect("ed25519 keys encode")
            .to_string()
    }

    pub fn host_public(&self) -> &PublicKey {
        self.host.public_key()
    }

    /// The host key's fingerprint, as `ssh-keygen -l` shows it.
    pub fn host_fingerprint(&self) -> String {
        self.host
            .public_key()
            .fingerprint(HashAlg::Sha256)
            .to_string()
    }

    /// A `known_hosts` file naming the host key under `alias`; written next
    /// to the keys and returned.
    pub fn known_hosts(&self, alias: &str) -> Result<PathBuf, KeyError> {
        let path = self.dir.join("known_hosts");
        let line = format!(
            "{alias} {}\n",
            self.host
                .public_key()
                .to_openssh()
                .expect("ed25519 public keys encode")
        );
        write_atomic(&path, line.as_bytes())?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_made_once_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = MachineKeys::ensure(dir.path(), "web").unwrap();
        let b = MachineKeys::ensure(dir.path(), "web").unwrap();
        assert_eq!(a.authorized_key(), b.authorized_key());
        assert_eq!(a.host_fingerprint(), b.host_fingerprint());
        assert!(a.authorized_key().starts_with("ssh-ed25519 "));
        let mode = std::fs::metadata(a.client_key_path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let other = tempfile::tempdir().unwrap();
        let c = MachineKeys::ensure(other.path(), "web").unwrap();
        assert_ne!(a.host_fingerprint(), c.host_fingerprint(), "no shared keys");
    }
}
