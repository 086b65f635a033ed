//! A QMP connection to one running qemu, every call bounded by a timeout.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use qapi::qmp;

/// How long any QMP call may take.
pub const QMP_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Monitor {
    stream: UnixStream,
}

type Qmp<'a> = qapi::Qmp<qapi::Stream<std::io::BufReader<&'a UnixStream>, &'a UnixStream>>;

impl Monitor {
    /// Connect and negotiate capabilities.
    pub fn connect(socket: &Path) -> std::io::Result<Monitor> {
        let stream = UnixStream::connect(socket)?;
        stream.set_read_timeout(Some(QMP_TIMEOUT))?;
        stream.set_write_timeout(Some(QMP_TIMEOUT))?;
        let m = Monitor { stream };
        m.qmp().handshake().map_err(std::io::Error::from)?;
        Ok(m)
    }

    fn qmp(&self) -> Qmp<'_> {
        qapi::Qmp::from_stream(&self.stream)
    }

    /// Whether the guest's CPUs run (false when paused or shut down).
    pub fn running(&self) -> std::io::Result<bool> {
        let st = self
            .qmp()
            .execute(&qmp::query_status {})
            .map_err(std::io::Error::from)?;
        Ok(st.running)
    }

    /// Press the ACPI power button.
    pub fn powerdown(&self) -> std::io::Result<()> {
        self.qmp()
            .execute(&qmp::system_powerdown {})
            .map(|_| ())
            .map_err(std::io::Error::from)
    }

    /// End qemu now.
    pub fn quit(&self) -> std::io::Result<()> {
        self.qmp()
            .execute(&qmp::quit {})
            .map(|_| ())
            .map_err(std::io::Error::from)
    }

    /// A monitor command (savevm, loadvm, delvm); its output, which is
    /// where qemu reports their errors.
    pub fn human(&self, command: &str) -> std::io::Result<String> {
        self.qmp()
            .execute(&qmp::human_monitor_command {
                command_line: command.to_owned(),
                cpu_index: None,
            })
            .map_err(std::io::Error::from)
    }
}
