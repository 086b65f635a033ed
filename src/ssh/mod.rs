//! envup's SSH client, over libssh2 (the ssh2 crate). Every backend hands
//! this layer an endpoint; nothing here knows which backend it was.
//!
//! Host keys are checked strictly against the key envup made for the
//! machine; errors name the step that failed.

pub mod first_login;
pub mod keys;

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

pub use keys::MachineKeys;

use crate::backend::Dial;
use crate::state::machine::SshEndpoint;
use crate::ui::Stream;

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("cannot connect to {addr}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("SSH handshake with {addr} failed")]
    Handshake {
        addr: String,
        #[source]
        source: ssh2::Error,
    },
    #[error(
        "{addr} presented host key {got}, but this machine's host key is {expected}; refusing to connect (something else answers on that port, or the machine was replaced outside envup)"
    )]
    HostKey {
        addr: String,
        expected: String,
        got: String,
    },
    #[error("{addr} did not accept envup's key for user `{user}`")]
    Auth {
        addr: String,
        user: String,
        #[source]
        source: ssh2::Error,
    },
    #[error("cannot open an SSH channel")]
    Channel(#[source] ssh2::Error),
    #[error("cannot start the command over SSH")]
    Exec(#[source] ssh2::Error),
    #[error("the SSH connection failed while the command ran")]
    Transfer(#[source] std::io::Error),
    #[error("{what} failed with exit code {code}{}", stderr_tail(.stderr))]
    Status {
        what: String,
        code: i32,
        stderr: String,
    },
    #[error("the command was killed by signal {0}")]
    Signal(String),
    #[error(
        "no SSH login on {addr} within {}s; the last attempt: {last}{console}",
        .after.as_secs(),
    )]
    Timeout {
        addr: String,
        after: Duration,
        last: String,
        /// Where the console log is and its last lines, when there is one.
        console: String,
    },
    #[error("the machine stopped while envup waited for SSH on {addr}: {why}{console}")]
    Stopped {
        addr: String,
        why: String,
        console: String,
    },
}

/// What a wait for SSH watches besides the port: the machine's console log
/// (its last lines go into the error when the wait times out), and whether
/// the machine still runs: `stopped` answers with what the machine left to
/// say once it has stopped, which ends the wait at once.
#[derive(Clone, Copy, Default)]
pub struct Watch<'a> {
    pub console: Option<&'a Path>,
    pub stopped: Option<&'a dyn Fn() -> Option<String>>,
}

/// How often a wait asks whether the machine still runs.
const STOPPED_EVERY: Duration = Duration::from_millis(500);

/// Where a console log is, and its last lines, for an error message.
fn console_note(path: &Path) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect();
    let mut note = format!("; the machine's console log is {}", path.display());
    if lines.is_empty() {
        // Whatever SSH said last, the machine never got far enough to
        // print anything: no kernel started.
        note.push_str(", and it stayed empty: nothing booted (check the box's kernel and the machine's accelerator)");
    } else {
        note.push_str("\nits last lines:");
        for l in &lines[lines.len().saturating_sub(12)..] {
            note.push_str(&format!("\n  | {l}"));
        }
    }
    note
}

fn stderr_tail(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        String::new()
    } else {
        format!(": {}", lines[lines.len().saturating_sub(3)..].join(" / "))
    }
}

impl SshError {
    /// A few words for "the last attempt was …".
    fn short(&self) -> String {
        match self {
            SshError::Connect { source, .. } => match source.kind() {
                ErrorKind::ConnectionRefused => "connection refused".into(),
                ErrorKind::ConnectionReset => "connection reset".into(),
                ErrorKind::TimedOut | ErrorKind::WouldBlock => "connection timed out".into(),
                _ => format!("connect failed ({source})"),
            },
            SshError::Handshake { source, .. } => {
                format!("handshake failed ({})", source.message())
            }
            SshError::Auth { .. } => "authentication failed".into(),
            other => other.to_string(),
        }
    }
}

/// Put `s` in single quotes for a POSIX shell.
pub fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:@%+,".contains(&b))
    {
        return s.to_owned();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// A logged-in SSH session to one machine.
pub struct Ssh {
    session: ssh2::Session,
    tcp: TcpStream,
    pub endpoint: SshEndpoint,
}

const IO_TIMEOUT: Duration = Duration::from_secs(30);

impl Ssh {
    /// Connect (through `dial` when the machine's backend gives one, else
    /// to the endpoint's address), check the host key, log in: one attempt.
    pub fn connect(
        ep: &SshEndpoint,
        dial: Option<&Dial>,
        keys: &MachineKeys,
        timeout: Duration,
    ) -> Result<Ssh, SshError> {
        let ssh = Ssh::open(ep, dial, timeout, true)?;
        ssh.check_host_key(keys)?;
        ssh.log_in(&[(Some(&keys.authorized_key()), &keys.client_private_pem())])?;
        ssh.session.set_timeout(IO_TIMEOUT.as_millis() as u32);
        Ok(ssh)
    }

    fn addr(ep: &SshEndpoint) -> String {
        format!("{}:{}", ep.host, ep.port)
    }

    /// Connect and make the SSH handshake, asking for the ed25519 host key
    /// (the only kind envup gives machines) when `ed25519_only`.
    fn open(
        ep: &SshEndpoint,
        dial: Option<&Dial>,
        timeout: Duration,
        ed25519_only: bool,
    ) -> Result<Ssh, SshError> {
        let addr = Ssh::addr(ep);
        let connect_err = |source| SshError::Connect {
            addr: addr.clone(),
            source,
        };
        let handshake_err = |source| SshError::Handshake {
            addr: addr.clone(),
            source,
        };
        let sock = (ep.host.as_str(), ep.port)
            .to_socket_addrs()
            .map_err(connect_err)?
            .next()
            .ok_or_else(|| connect_err(std::io::Error::new(ErrorKind::NotFound, "no address")))?;
        let tcp = match dial {
            Some(dial) => dial(timeout),
            None => TcpStream::connect_timeout(&sock, timeout),
        }
        .map_err(connect_err)?;
        tcp.set_nodelay(true).ok();
        let mut session = ssh2::Session::new().map_err(handshake_err)?;
        session.set_tcp_stream(tcp.try_clone().map_err(connect_err)?);
        session.set_timeout(u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX));
        if ed25519_only {
            session
                .method_pref(ssh2::MethodType::HostKey, "ssh-ed25519")
                .map_err(handshake_err)?;
        }
        session.handshake().map_err(handshake_err)?;
        Ok(Ssh {
            session,
            tcp,
            endpoint: ep.clone(),
        })
    }

    /// Refuse a machine whose host key is not the one envup made for it.
    fn check_host_key(&self, keys: &MachineKeys) -> Result<(), SshError> {
        let expected = keys
            .host_public()
            .to_bytes()
            .expect("ed25519 public keys encode");
        let got = self
            .session
            .host_key()
            .map(|(k, _)| k.to_vec())
            .unwrap_or_default();
        if got == expected {
            return Ok(());
        }
        let got = ssh_key::PublicKey::from_bytes(&got)
            .map(|k| k.fingerprint(ssh_key::HashAlg::Sha256).to_string())
            .unwrap_or_else(|_| "(unreadable)".into());
        Err(SshError::HostKey {
            addr: Ssh::addr(&self.endpoint),
            expected: keys.host_fingerprint(),
            got,
        })
    }

    /// Log in as the endpoint's user with the first of `keys` (public key
    /// line if known, private key text) the machine accepts.
    fn log_in(&self, keys: &[(Option<&str>, &str)]) -> Result<(), SshError> {
        let mut last = None;
        for (public, private) in keys {
            match self
                .session
                .userauth_pubkey_memory(&self.endpoint.user, *public, private, None)
            {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
        }
        Err(SshError::Auth {
            addr: Ssh::addr(&self.endpoint),
            user: self.endpoint.user.clone(),
            source: last.unwrap_or_else(ssh2::Error::unknown),
        })
    }

    /// Try to log in until it works or `deadline` passes. A wrong host key
    /// ends the wait at once: trying again would not make it right.
    pub fn wait(
        ep: &SshEndpoint,
        dial: Option<&Dial>,
        keys: &MachineKeys,
        deadline: Duration,
        watch: Watch<'_>,
    ) -> Result<Ssh, SshError> {
        Ssh::retry(
            ep,
            deadline,
            watch,
            |e| matches!(e, SshError::HostKey { .. }),
            |t| Ssh::connect(ep, dial, keys, t),
        )
    }

    /// Make `attempt` (given the time it may take) until it works, it fails
    /// in a way that `is_final` says trying again cannot mend, or
    /// `deadline` passes.
    fn retry(
        ep: &SshEndpoint,
        deadline: Duration,
        watch: Watch<'_>,
        is_final: impl Fn(&SshError) -> bool,
        mut attempt: impl FnMut(Duration) -> Result<Ssh, SshError>,
    ) -> Result<Ssh, SshError> {
        let start = Instant::now();
        let console = watch.console;
        let mut asked = Instant::now();
        // Refused connections cost next to nothing: ask often, so that a
        // machine is seen at most 50 ms after it answers.
        let mut pause = Duration::from_millis(5);
        loop {
            let left = deadline.saturating_sub(start.elapsed());
            match attempt(left.clamp(Duration::from_millis(200), Duration::from_secs(10))) {
                Ok(s) => return Ok(s),
                Err(e) if is_final(&e) => return Err(e),
                Err(e) if start.elapsed() + pause >= deadline => {
                    return Err(SshError::Timeout {
                        addr: Ssh::addr(ep),
                        after: deadline,
                        last: e.short(),
                        console: console.map(console_note).unwrap_or_default(),
                    });
                }
                Err(_)
                    if asked.elapsed() >= STOPPED_EVERY
                        && let Some(why) = watch.stopped.and_then(|f| {
                            asked = Instant::now();
                            f()
                        }) =>
                {
                    return Err(SshError::Stopped {
                        addr: Ssh::addr(ep),
                        why,
                        console: console.map(console_note).unwrap_or_default(),
                    });
                }
                Err(e) => {
                    tracing::debug!("waiting for SSH on {}: {}", Ssh::addr(ep), e.short());
                    std::thread::sleep(pause);
                    pause = (pause * 3 / 2).min(Duration::from_millis(50));
                }
            }
        }
    }

    /// Run `command` (a shell command line), feeding it `stdin` if given and
    /// handing its output to `sink` as it comes. Returns the exit code.
    pub fn exec(
        &self,
        command: &str,
        mut stdin: Option<&mut dyn Read>,
        sink: &mut dyn FnMut(Stream, &[u8]),
    ) -> Result<i32, SshError> {
        self.session.set_blocking(true);
        let mut ch = self.session.channel_session().map_err(SshError::Channel)?;
        ch.exec(command).map_err(SshError::Exec)?;
        let mut input_done = stdin.is_none();
        let mut eof_sent = false;
        let mut pending: Vec<u8> = Vec::new();
        let mut sent = 0usize;
        let mut buf = vec![0u8; 64 * 1024];
        self.session.set_blocking(false);
        let result = (|| -> Result<(), std::io::Error> {
            loop {
                let mut progressed = false;
                if !input_done {
                    if sent == pending.len() {
                        pending.resize(64 * 1024, 0);
                        let n = stdin
                            .as_mut()
                            .expect("stdin while input is open")
                            .read(&mut pending)?;
                        pending.truncate(n);
                        sent = 0;
                        input_done = n == 0;
                    }
                    if sent < pending.len() {
                        match ch.write(&pending[sent..]) {
                            Ok(n) => {
                                sent += n;
                                progressed = true;
                            }
                            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                            Err(e) => return Err(e),
                        }
                    }
                }
                if input_done && !eof_sent {
                    match ch.send_eof() {
                        Ok(()) => eof_sent = true,
                        Err(e) if e.code() == ssh2::ErrorCode::Session(-37) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                for (stream, id) in [(Stream::Stdout, 0), (Stream::Stderr, 1)] {
                    loop {
                        match ch.stream(id).read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => {
                                sink(stream, &buf[..n]);
                                progressed = true;
                            }
                            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                            Err(e) => return Err(e),
                        }
                    }
                }
                if ch.eof() && !progressed {
                    return Ok(());
                }
                if !progressed {
                    self.wait_socket();
                }
            }
        })();
        self.session.set_blocking(true);
        result.map_err(SshError::Transfer)?;
        ch.wait_close().map_err(|e| SshError::Transfer(e.into()))?;
        if let Ok(sig) = ch.exit_signal()
            && let Some(name) = sig.exit_signal
        {
            return Err(SshError::Signal(name));
        }
        ch.exit_status().map_err(|e| SshError::Transfer(e.into()))
    }

    /// Sleep until the socket can move data the way libssh2 wants, or a
    /// short while passes.
    fn wait_socket(&self) {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let dirs = self.session.block_directions();
        let mut flags = PollFlags::empty();
        if matches!(
            dirs,
            ssh2::BlockDirections::Inbound | ssh2::BlockDirections::Both
        ) {
            flags |= PollFlags::POLLIN;
        }
        if matches!(
            dirs,
            ssh2::BlockDirections::Outbound | ssh2::BlockDirections::Both
        ) {
            flags |= PollFlags::POLLOUT;
        }
        if flags.is_empty() {
            flags = PollFlags::POLLIN;
        }
        let mut fds = [PollFd::new(self.tcp.as_fd(), flags)];
        let _ = poll(&mut fds, PollTimeout::from(10u16));
    }

    /// Run `command`; fail unless it exits 0. Returns its stdout.
    pub fn run(
        &self,
        what: &str,
        command: &str,
        stdin: Option<&mut dyn Read>,
    ) -> Result<Vec<u8>, SshError> {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let code = self.exec(command, stdin, &mut |s, b| match s {
            Stream::Stdout => out.extend_from_slice(b),
            Stream::Stderr => err.extend_from_slice(b),
        })?;
        if code != 0 {
            return Err(SshError::Status {
                what: what.into(),
                code,
                stderr: String::from_utf8_lossy(&err).into_owned(),
            });
        }
        Ok(out)
    }

    /// Copy a host file or directory to `remote` on the machine, modes kept.
    /// A file lands at `remote`; a directory's contents land in `remote`.
    /// With `sudo`, the copy is made as root.
    pub fn upload(&self, local: &Path, remote: &str, sudo: bool) -> Result<(), SshError> {
        let md = std::fs::metadata(local).map_err(SshError::Transfer)?;
        let (dir, name) = if md.is_dir() {
            (remote.trim_end_matches('/'), None)
        } else {
            let (d, n) = remote.rsplit_once('/').unwrap_or((".", remote));
            (d, Some(n.to_owned()))
        };
        let dir = if dir.is_empty() { "/" } else { dir };
        let script = format!("mkdir -p {d} && tar -x -o -f - -C {d}", d = sh_quote(dir));
        let command = if sudo {
            format!("sudo -n sh -c {}", sh_quote(&script))
        } else {
            script
        };
        let (mut reader, writer) = std::io::pipe().map_err(SshError::Transfer)?;
        let local = local.to_owned();
        let builder = std::thread::spawn(move || -> std::io::Result<()> {
            let mut tar = tar::Builder::new(writer);
            tar.follow_symlinks(false);
            match name {
                Some(n) => tar.append_path_with_name(&local, n)?,
                None => tar.append_dir_all(".", &local)?,
            }
            tar.into_inner()?.flush()
        });
        let result = self.run(&format!("upload to {remote}"), &command, Some(&mut reader));
        drop(reader);
        let built = builder.join().expect("tar thread");
        result?;
        built.map_err(SshError::Transfer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(sh_quote("plain-word_1.txt"), "plain-word_1.txt");
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), "'it'\\''s'");
        assert_eq!(sh_quote(""), "''");
        assert_eq!(sh_quote("$HOME"), "'$HOME'");
    }

    #[test]
    fn an_empty_console_says_nothing_booted() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        std::fs::write(&log, b"\n  \n").unwrap();
        assert!(console_note(&log).contains("stayed empty: nothing booted"));
        std::fs::write(&log, b"Linux version 6.1\n").unwrap();
        let note = console_note(&log);
        assert!(!note.contains("nothing booted") && note.contains("| Linux version 6.1"));
    }

    #[test]
    fn timeout_message_names_the_last_error_and_console() {
        let e = SshError::Timeout {
            addr: "127.0.0.1:2222".into(),
            after: Duration::from_secs(5),
            last: "connection refused".into(),
            console: "; the machine's console log is /p/console.log".into(),
        };
        assert_eq!(
            e.to_string(),
            "no SSH login on 127.0.0.1:2222 within 5s; the last attempt: connection refused; the machine's console log is /p/console.log"
        );
    }
}
