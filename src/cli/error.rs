//! The one error type commands return, its exit code, and printing it once.

use crate::backend::BackendError;
use crate::envfile::LoadError;
use crate::state::StateError;

/// A process exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitCode(pub u8);

impl ExitCode {
    pub const SUCCESS: ExitCode = ExitCode(0);
    pub const FAILURE: ExitCode = ExitCode(1);
    pub const USAGE: ExitCode = ExitCode(2);
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Ssh(#[from] crate::ssh::SshError),
    #[error(transparent)]
    Box(#[from] crate::boxes::BoxError),
    #[error(transparent)]
    Lock(#[from] crate::boxes::lock::LockError),
    /// The command line names something that is not there (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The command ran and did not succeed (exit 1).
    #[error("{0}")]
    Failed(String),
    #[error("cannot {what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A feature that has not been built yet (exit 1).
    #[error("{0} is not available in this build of envup yet")]
    NotBuilt(&'static str),
}

impl CliError {
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> CliError {
        let what = what.into();
        move |source| CliError::Io { what, source }
    }

    pub fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Load(LoadError::Invalid(_) | LoadError::NotFound(_)) | CliError::Usage(_) => {
                ExitCode::USAGE
            }
            _ => ExitCode::FAILURE,
        }
    }
}

/// The error and its causes, on one line each.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

/// Print an error and its causes on stderr, once.
/// Every line escaped and bounded (`ident::shown`): an error may carry
/// what a machine, a plugin, a server or a template produced.
pub fn print(e: &CliError) {
    use crate::ui::style::ERROR;
    let shown = crate::ident::shown;
    anstream::eprintln!("{ERROR}error{ERROR:#}: {}", shown(&e.to_string()));
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        anstream::eprintln!("  caused by: {}", shown(&s.to_string()));
        source = s.source();
    }
}
