//! A real OpenSSH server on 127.0.0.1 for the tests, with a host key and an
//! authorized key that envup made, and a project whose machine `web` is
//! recorded as running behind it (as a backend would leave it).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use envup::envfile::BackendName;
use envup::ssh::MachineKeys;
use envup::state::machine::SshEndpoint;
use envup::state::{Event, MachineState, ProjectState};

pub const SSHD: &str = "/usr/sbin/sshd";

/// Why these tests cannot run here, if they cannot.
pub fn unavailable() -> Option<String> {
    if !Path::new(SSHD).exists() {
        return Some("sshd is not installed (apt-get install openssh-server)".into());
    }
    if !nix::unistd::geteuid().is_root() {
        return Some("the test sshd logs in as root, so the tests must run as root".into());
    }
    None
}

pub struct Sshd {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Sshd {
    /// Start sshd serving `host_key_pem`, letting in `authorized_key` as root.
    pub fn start(host_key_pem: &str, authorized_key: &str) -> Sshd {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("host_key"), host_key_pem).unwrap();
        std::fs::set_permissions(d.join("host_key"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        std::fs::write(d.join("authorized_keys"), format!("{authorized_key}\n")).unwrap();
        std::fs::create_dir_all("/run/sshd").unwrap();
        let port = free_port();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\n\
             PidFile {d}/sshd.pid\nUsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nLogLevel ERROR\nMaxStartups 100\n",
            d = d.display()
        );
        std::fs::write(d.join("sshd_config"), config).unwrap();
        let child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "sshd did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Sshd {
            child,
            port,
            _dir: dir,
        }
    }
}

/// Record machine `name` of the project at `root` (its state under `home`)
/// as running behind `port`, and return its keys (made by envup, as for
/// any machine).
pub fn running_machine(home: &Path, root: &Path, name: &str, port: u16) -> MachineKeys {
    let project = ProjectState::of(home, root);
    project.ensure().unwrap();
    let dir = project.machine_dir(name);
    std::fs::create_dir_all(&dir).unwrap();
    let keys = MachineKeys::ensure(&dir, name).unwrap();
    // Recorded on a backend this envup does not have, so that nothing
    // second-guesses the recorded state (envup asks a backend it has
    // whether its machine is still alive).
    let mut st = MachineState::new(name, BackendName::new("elsewhere").unwrap());
    st.apply(Event::BeginCreate).unwrap();
    st.apply(Event::Created).unwrap();
    st.apply(Event::Started).unwrap();
    st.ssh = Some(SshEndpoint {
        host: "127.0.0.1".into(),
        port,
        user: "root".into(),
    });
    project.save(&st).unwrap();
    keys
}

pub fn machine_dir(home: &Path, root: &Path, name: &str) -> PathBuf {
    ProjectState::of(home, root).machine_dir(name)
}
