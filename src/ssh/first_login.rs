//! The first login to a machine whose box lets envup in only with a key
//! everyone knows: a Vagrant box, which has Vagrant's published insecure
//! key in its user's `authorized_keys` and no way to take the machine's own
//! keys before it boots. envup logs in once with that key, puts the
//! machine's login key, host key and hostname in place, removes the
//! insecure key, and has the SSH server take the new host key; from then on
//! it logs in only with the machine's key and checks the host key, as for
//! every other machine. This is what Vagrant does on a box's first `up`.
//!
//! The host key cannot be checked during that one login (the box's own is
//! not known yet): the connection goes to the port the backend forwarded
//! from 127.0.0.1 to this machine and nowhere else.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Ssh, SshError, sh_quote};
use crate::backend::Dial;
use crate::ssh::MachineKeys;
use crate::state::machine::SshEndpoint;

/// How a box lets envup in before the machine's own keys are in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FirstLogin {
    /// With Vagrant's insecure keys (ed25519, then RSA).
    VagrantInsecureKey,
}

/// Vagrant's insecure key pairs, private halves (see `vagrant/README.md`).
const VAGRANT_PRIVATE: [&str; 2] = [
    include_str!("vagrant/insecure_ed25519"),
    include_str!("vagrant/insecure_rsa"),
];

/// Their public halves, as a Vagrant box's `authorized_keys` holds them.
pub const VAGRANT_PUBLIC: [&str; 2] = [
    include_str!("vagrant/insecure_ed25519.pub"),
    include_str!("vagrant/insecure_rsa.pub"),
];

/// What runs on the machine, as its SSH user, in that one login. The
/// machine's login key replaces the user's `authorized_keys` (so the
/// insecure key goes); the host key comes on stdin. Root's part goes
/// through `sudo -n` when the user is not root, as Vagrant's boxes allow.
/// The SSH server is asked to reload: systemd's unit where systemd runs,
/// else the process in OpenSSH's pid file.
const SCRIPT: &str = r#"set -eu
umask 077
key=$1 host_public=$2 name=$3
if [ "$(id -u)" = 0 ]; then as_root() { "$@"; }; else as_root() { sudo -n "$@"; }; fi
mkdir -p "$HOME/.ssh"
chmod 700 "$HOME/.ssh"
printf '%s\n' "$key" > "$HOME/.ssh/authorized_keys.envup"
mv -f "$HOME/.ssh/authorized_keys.envup" "$HOME/.ssh/authorized_keys"
as_root sh -c 'umask 077; mkdir -p /etc/ssh; cat > /etc/ssh/ssh_host_ed25519_key.envup; mv -f /etc/ssh/ssh_host_ed25519_key.envup /etc/ssh/ssh_host_ed25519_key'
printf '%s\n' "$host_public" | as_root sh -c 'umask 022; cat > /etc/ssh/ssh_host_ed25519_key.pub'
if [ -d /etc/ssh/sshd_config.d ]; then
  echo 'HostKey /etc/ssh/ssh_host_ed25519_key' | as_root sh -c 'umask 022; cat > /etc/ssh/sshd_config.d/00-envup-host-key.conf'
fi
printf '%s\n' "$name" | as_root sh -c 'umask 022; cat > /etc/hostname'
as_root hostname "$name" 2>/dev/null || true
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  as_root systemctl reload ssh 2>/dev/null || as_root systemctl reload sshd 2>/dev/null || true
else
  for f in /run/sshd.pid /var/run/sshd.pid; do
    if [ -s "$f" ]; then as_root kill -HUP "$(cat "$f")"; break; fi
  done
fi
"#;

/// The command line that runs [`SCRIPT`] with the machine's facts.
fn command(keys: &MachineKeys, hostname: &str) -> String {
    let host_public = keys
        .host_public()
        .to_openssh()
        .expect("ed25519 public keys encode");
    format!(
        "sh -c {} envup-first-login {} {} {}",
        sh_quote(SCRIPT),
        sh_quote(&keys.authorized_key()),
        sh_quote(&host_public),
        sh_quote(hostname)
    )
}

/// Put the machine's keys and hostname in place through the box's first
/// login, waiting up to `deadline` for the machine to let envup in; then
/// wait (in what is left of it) for a login with the machine's own keys.
/// The machine's own key is tried first, so a first login that was
/// interrupted after it replaced the insecure key is finished all the same.
pub fn place_keys(
    how: FirstLogin,
    ep: &SshEndpoint,
    dial: Option<&Dial>,
    keys: &MachineKeys,
    hostname: &str,
    deadline: Duration,
    watch: super::Watch<'_>,
) -> Result<Ssh, SshError> {
    let start = std::time::Instant::now();
    let FirstLogin::VagrantInsecureKey = how;
    let own = keys.client_private_pem();
    let own_public = keys.authorized_key();
    let mut candidates: Vec<(Option<&str>, &str)> = vec![(Some(&own_public), &own)];
    candidates.extend(VAGRANT_PRIVATE.iter().map(|k| (None, *k)));
    let first = Ssh::retry(
        ep,
        deadline,
        watch,
        |_| false,
        |t| {
            let ssh = Ssh::open(ep, dial, t, false)?;
            ssh.log_in(&candidates)?;
            ssh.session
                .set_timeout(super::IO_TIMEOUT.as_millis() as u32);
            Ok(ssh)
        },
    )?;
    first.run(
        "putting the machine's keys in place",
        &command(keys, hostname),
        Some(&mut keys.host_private_pem().as_bytes()),
    )?;
    drop(first);
    // The SSH server may serve its old host key for a moment while it
    // reloads: only a wrong key at the end of the wait counts.
    let left = deadline.saturating_sub(start.elapsed());
    Ssh::retry(
        ep,
        left,
        watch,
        |_| false,
        |t| Ssh::connect(ep, dial, keys, t),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_insecure_keys_are_vagrants() {
        let ed = ssh_key::PrivateKey::from_openssh(VAGRANT_PRIVATE[0]).unwrap();
        let public = ssh_key::PublicKey::from_openssh(VAGRANT_PUBLIC[0].trim_end()).unwrap();
        assert_eq!(ed.public_key().key_data(), public.key_data());
        // Vagrant's own published fingerprint of its ed25519 key.
        assert!(VAGRANT_PUBLIC[0].starts_with(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIN1YdxBpNlzxDqfJyw/QKow1F+wvG9hXGoqiysfJOn5Y"
        ));
        assert!(VAGRANT_PRIVATE[1].starts_with("-----BEGIN RSA PRIVATE KEY-----\n"));
        assert!(VAGRANT_PUBLIC[1].starts_with("ssh-rsa AAAAB3NzaC1yc2EAAAABIwAAAQEA6NF8iallvQVp"));
    }

    #[test]
    fn the_script_is_posix_shell_and_carries_the_machine_facts() {
        let dir = tempfile::tempdir().unwrap();
        let keys = MachineKeys::ensure(dir.path(), "web").unwrap();
        let cmd = command(&keys, "web");
        assert!(cmd.contains(&keys.authorized_key()));
        assert!(!cmd.contains("PRIVATE KEY"), "the host key goes on stdin");
        let o = std::process::Command::new("sh")
            .args(["-n", "-c", SCRIPT])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
}
