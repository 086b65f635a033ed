//! The cloud-init NoCloud seed envup writes for each VM: a small FAT disk
//! labelled `cidata` holding `meta-data` and `user-data` (so a stock cloud
//! image with cloud-init boots with the machine's hostname and keys), and
//! the same facts as plain files under `envup/` for envup's own boxes.

use std::io::{Cursor, Write};
use std::path::Path;

use crate::ssh::MachineKeys;

/// The seed disk's size: FAT12 with room to spare.
const SEED_BYTES: usize = 2 << 20;

/// What the seed says.
pub struct Seed<'a> {
    pub instance_id: &'a str,
    pub hostname: &'a str,
    pub user: &'a str,
    pub keys: SeedKeys,
}

/// The machine's keys as the seed writes them.
pub struct SeedKeys {
    /// The line for the user's `authorized_keys`.
    pub authorized_key: String,
    /// The SSH host key, OpenSSH private key format, and its public half.
    pub host_private: String,
    pub host_public: String,
}

impl From<&MachineKeys> for SeedKeys {
    fn from(k: &MachineKeys) -> Self {
        Self {
            authorized_key: k.authorized_key(),
            host_private: k.host_private_pem(),
            host_public: k.host_public().to_openssh().unwrap_or_default(),
        }
    }
}

impl Seed<'_> {
    pub fn meta_data(&self) -> String {
        format!(
            "instance-id: {}\nlocal-hostname: {}\n",
            self.instance_id, self.hostname
        )
    }

    pub fn user_data(&self) -> String {
        let key = &self.keys.authorized_key;
        let host_private = indent(&self.keys.host_private, 4);
        let host_public = &self.keys.host_public;
        let mut s = format!(
            "#cloud-config\n\
             hostname: {host}\n\
             manage_etc_hosts: true\n\
             ssh_pwauth: false\n\
             disable_root: false\n\
             ssh_deletekeys: true\n\
             ssh_genkeytypes: []\n\
             ssh_authorized_keys:\n  - {key}\n\
             ssh_keys:\n  ed25519_private: |\n{host_private}  ed25519_public: {host_public}\n",
            host = self.hostname,
        );
        if self.user != "root" {
            s.push_str(&format!(
                "users:\n  - default\n  - name: {user}\n    sudo: ALL=(ALL) NOPASSWD:ALL\n    shell: /bin/bash\n    ssh_authorized_keys:\n      - {key}\n",
                user = self.user
            ));
        }
        s
    }

    /// Write the seed disk to `path` (a raw image).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let mut disk = Cursor::new(vec![0u8; SEED_BYTES]);
        fatfs::format_volume(
            &mut disk,
            fatfs::FormatVolumeOptions::new().volume_label(*b"CIDATA     "),
        )?;
        {
            let fs = fatfs::FileSystem::new(&mut disk, fatfs::FsOptions::new())?;
            let root = fs.root_dir();
            let put = |dir: &fatfs::Dir<'_, &mut Cursor<Vec<u8>>>, name: &str, text: &str| {
                let mut f = dir.create_file(name)?;
                f.truncate()?;
                f.write_all(text.as_bytes())
            };
            put(&root, "meta-data", &self.meta_data())?;
            put(&root, "user-data", &self.user_data())?;
            let envup = root.create_dir("envup")?;
            put(&envup, "hostname", &format!("{}\n", self.hostname))?;
            put(
                &envup,
                "authorized_keys",
                &format!("{}\n", self.keys.authorized_key),
            )?;
            put(&envup, "ssh_host_ed25519_key", &self.keys.host_private)?;
            put(&envup, "user", &format!("{}\n", self.user))?;
        }
        crate::state::write_atomic(path, disk.get_ref())
            .map_err(|e| std::io::Error::other(e.to_string()))
    }
}

fn indent(text: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    text.lines().map(|l| format!("{pad}{l}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn seed_is_a_cidata_fat_disk_with_cloud_init_and_envup_files() {
        let dir = tempfile::tempdir().unwrap();
        let keys = MachineKeys::ensure(dir.path(), "web").unwrap();
        let seed = Seed {
            instance_id: "envup-abc",
            hostname: "web",
            user: "root",
            keys: (&keys).into(),
        };
        let path = dir.path().join("seed.img");
        seed.write(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), SEED_BYTES);
        let mut c = Cursor::new(bytes);
        let fs = fatfs::FileSystem::new(&mut c, fatfs::FsOptions::new()).unwrap();
        assert_eq!(fs.volume_label().trim(), "CIDATA");
        let read = |p: &str| {
            let mut s = String::new();
            fs.root_dir()
                .open_file(p)
                .unwrap()
                .read_to_string(&mut s)
                .unwrap();
            s
        };
        assert_eq!(
            read("meta-data"),
            "instance-id: envup-abc\nlocal-hostname: web\n"
        );
        let ud = read("user-data");
        assert!(ud.starts_with("#cloud-config\n"));
        assert!(ud.contains(&keys.authorized_key()));
        assert!(ud.contains("    -----BEGIN OPENSSH PRIVATE KEY-----"));
        assert_eq!(read("envup/ssh_host_ed25519_key"), keys.host_private_pem());
        assert_eq!(read("envup/hostname"), "web\n");
    }

    #[test]
    fn a_non_root_user_gets_an_account_with_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let keys = MachineKeys::ensure(dir.path(), "web").unwrap();
        let ud = Seed {
            instance_id: "i",
            hostname: "web",
            user: "debian",
            keys: (&keys).into(),
        }
        .user_data();
        assert!(ud.contains("  - name: debian\n"), "{ud}");
    }
}
